//! The one module identity the stand-in serves, and the environment the IoT Edge runtime would
//! give that module (edgeAgent's `GetEnvVars`), written as `module.env` (for
//! `docker run --env-file`) and `module.json` (the same as one JSON object).

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Map, Value};

use crate::certs::write_file;

/// What aziot-edged sets `IOTEDGE_APIVERSION` to.
pub const RUNTIME_API_VERSION: &str = "2022-08-03";

/// Who the module is and where it finds the runtime.
#[derive(Debug, Clone)]
pub struct Identity {
    pub device_id: String,
    pub module_id: String,
    pub generation_id: String,
    pub hub_hostname: String,
    pub gateway_hostname: String,
    pub mqtt_port: u16,
    /// The stand-in's directory (absolute).
    pub dir: PathBuf,
}

impl Identity {
    pub fn workload_socket(&self) -> PathBuf {
        self.dir.join("workload.sock")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The module's environment, in the order a reader expects: the `IOTEDGE_*` variables, then
    /// the legacy connection-string pair the SDKs fall back to.
    pub fn module_env(&self, module_key_b64: &str) -> Vec<(String, String)> {
        let pairs = [
            (
                "IOTEDGE_WORKLOADURI",
                format!("unix://{}", self.workload_socket().display()),
            ),
            ("IOTEDGE_AUTHSCHEME", "sasToken".to_owned()),
            ("IOTEDGE_MODULEGENERATIONID", self.generation_id.clone()),
            ("IOTEDGE_IOTHUBHOSTNAME", self.hub_hostname.clone()),
            ("IOTEDGE_GATEWAYHOSTNAME", self.gateway_hostname.clone()),
            ("IOTEDGE_DEVICEID", self.device_id.clone()),
            ("IOTEDGE_MODULEID", self.module_id.clone()),
            ("IOTEDGE_APIVERSION", RUNTIME_API_VERSION.to_owned()),
            ("RuntimeLogLevel", "info".to_owned()),
            (
                "EdgeHubConnectionString",
                format!(
                    "HostName={};GatewayHostName={};DeviceId={};ModuleId={};SharedAccessKey={}",
                    self.hub_hostname,
                    self.gateway_hostname,
                    self.device_id,
                    self.module_id,
                    module_key_b64
                ),
            ),
            (
                "EdgeModuleCACertificateFile",
                self.ca_path().display().to_string(),
            ),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Write `module.env` and `module.json`; returns the path of `module.env`. The files hold
    /// the module key, so only the owner may read them.
    pub fn write_env_files(&self, module_key_b64: &str) -> Result<PathBuf> {
        let env = self.module_env(module_key_b64);
        let mut text = String::new();
        let mut object = Map::new();
        for (k, v) in &env {
            text.push_str(&format!("{k}={v}\n"));
            object.insert(k.clone(), Value::String(v.clone()));
        }
        let env_path = self.dir.join("module.env");
        write_file(&env_path, text.as_bytes(), 0o600)?;
        let json = serde_json::to_vec_pretty(&Value::Object(object))?;
        write_file(&self.dir.join("module.json"), &json, 0o600)?;
        Ok(env_path)
    }
}

/// Refuse identifiers that would break topics, paths or the env file.
pub fn check_id(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 128 {
        anyhow::bail!("{what} must be 1 to 128 characters, got {value:?}");
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#' | '=' | ';'))
    {
        anyhow::bail!(
            "{what} {value:?} contains the character {c:?}, which IoT Edge does not allow there"
        );
    }
    Ok(())
}

/// The directory as an absolute path (created if needed).
pub fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let abs = dir
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", dir.display()))?;
    // sockaddr_un holds 108 bytes including the terminating NUL.
    let socket = abs.join("workload.sock");
    if socket.as_os_str().len() > 107 {
        anyhow::bail!(
            "the workload socket path {} is longer than a unix socket allows (107 bytes); use a shorter --dir",
            socket.display()
        );
    }
    Ok(abs)
}
