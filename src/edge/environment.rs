//! Who this module is, from the variables the IoT Edge runtime gives every module
//! (`IOTEDGE_IOTHUBHOSTNAME`, `IOTEDGE_DEVICEID`, `IOTEDGE_MODULEID`, `IOTEDGE_GATEWAYHOSTNAME`,
//! `IOTEDGE_MODULEGENERATIONID`, `IOTEDGE_WORKLOADURI`, `IOTEDGE_APIVERSION`), or — for
//! development without the runtime, as Microsoft's SDKs allow — from `EdgeHubConnectionString`
//! (with a symmetric key) and `EdgeModuleCACertificateFile`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::sas;
use super::workload::WorkloadClient;
use super::EdgeError;

/// The runtime's variables; all are needed for the workload API path.
const RUNTIME_VARIABLES: [&str; 6] = [
    "IOTEDGE_IOTHUBHOSTNAME",
    "IOTEDGE_DEVICEID",
    "IOTEDGE_MODULEID",
    "IOTEDGE_GATEWAYHOSTNAME",
    "IOTEDGE_MODULEGENERATIONID",
    "IOTEDGE_WORKLOADURI",
];
/// The workload API version asked for when the runtime does not say (every workload route
/// accepts it).
const DEFAULT_API_VERSION: &str = "2019-01-30";
/// edgeHub's MQTT over TLS port.
pub const EDGEHUB_MQTT_PORT: u16 = 8883;
/// Not an IoT Edge variable: moves the edgeHub port, for running several stand-ins at once.
pub const MQTT_PORT_OVERRIDE: &str = "CONNECTED_REGISTRY_EDGEHUB_PORT";
/// Not an IoT Edge variable: the SAS token lifetime in seconds (default one hour, at least a
/// minute), as the SDKs' `sastoken_ttl`.
pub const SAS_TTL_OVERRIDE: &str = "CONNECTED_REGISTRY_SAS_TTL_SECONDS";
const MIN_SAS_TTL_SECONDS: u64 = 60;

#[derive(Debug, Clone)]
pub enum Credentials {
    /// The runtime signs with the module identity's key and vouches for edgeHub's certificate.
    Workload(WorkloadClient),
    /// Development: the module's key and the CA file are given directly.
    SymmetricKey { key: Vec<u8>, ca_file: PathBuf },
}

#[derive(Debug, Clone)]
pub struct ModuleEnvironment {
    pub hub_hostname: String,
    pub gateway_hostname: String,
    pub device_id: String,
    pub module_id: String,
    /// Set on nested (lower-layer) devices: the parent device's hostname.
    pub parent_hostname: Option<String>,
    pub mqtt_port: u16,
    /// Lifetime of each SAS token; a new connection with a fresh one comes at 80 % of it.
    pub token_ttl_seconds: u64,
    pub credentials: Credentials,
}

impl ModuleEnvironment {
    /// `None` when neither the runtime's variables nor the development fallback are present
    /// (the node runs as a plain process or container). Some of the runtime's variables
    /// without the rest is an error that names the missing ones.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, EdgeError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let mqtt_port = match get(MQTT_PORT_OVERRIDE) {
            Some(p) => p.parse().map_err(|_| {
                EdgeError::Environment(format!("{MQTT_PORT_OVERRIDE} {p:?} is not a port"))
            })?,
            None => EDGEHUB_MQTT_PORT,
        };
        let token_ttl_seconds = match get(SAS_TTL_OVERRIDE) {
            Some(t) => match t.parse::<u64>() {
                Ok(t) if t >= MIN_SAS_TTL_SECONDS => t,
                _ => {
                    return Err(EdgeError::Environment(format!(
                        "{SAS_TTL_OVERRIDE} {t:?} must be a number of seconds, at least {MIN_SAS_TTL_SECONDS}"
                    )))
                }
            },
            None => sas::TOKEN_TTL_SECONDS,
        };
        let present: Vec<&str> = RUNTIME_VARIABLES
            .iter()
            .copied()
            .filter(|k| get(k).is_some())
            .collect();
        if present.len() == RUNTIME_VARIABLES.len() {
            let var = |k: &str| get(k).expect("checked present");
            let api_version = get("IOTEDGE_APIVERSION").unwrap_or(DEFAULT_API_VERSION.into());
            let module_id = var("IOTEDGE_MODULEID");
            let workload = WorkloadClient::new(
                &var("IOTEDGE_WORKLOADURI"),
                &api_version,
                &module_id,
                &var("IOTEDGE_MODULEGENERATIONID"),
            )?;
            return Ok(Some(ModuleEnvironment {
                hub_hostname: var("IOTEDGE_IOTHUBHOSTNAME"),
                gateway_hostname: var("IOTEDGE_GATEWAYHOSTNAME"),
                device_id: var("IOTEDGE_DEVICEID"),
                module_id,
                parent_hostname: get("IOTEDGE_PARENTHOSTNAME"),
                mqtt_port,
                token_ttl_seconds,
                credentials: Credentials::Workload(workload),
            }));
        }
        if let Some(text) = get("EdgeHubConnectionString") {
            let ca_file = get("EdgeModuleCACertificateFile").ok_or_else(|| {
                EdgeError::Environment(
                    "EdgeHubConnectionString is set but EdgeModuleCACertificateFile is not: \
                     name the PEM file of the CA that signed edgeHub's certificate"
                        .into(),
                )
            })?;
            let mut module = Self::from_connection_string(
                &text,
                PathBuf::from(ca_file),
                get("IOTEDGE_PARENTHOSTNAME"),
                mqtt_port,
            )?;
            module.token_ttl_seconds = token_ttl_seconds;
            return Ok(Some(module));
        }
        if !present.is_empty() {
            let missing: Vec<&str> = RUNTIME_VARIABLES
                .iter()
                .copied()
                .filter(|k| !present.contains(k))
                .collect();
            return Err(EdgeError::Environment(format!(
                "{} set but {} missing: the IoT Edge runtime gives a module all of them",
                present.join(", "),
                missing.join(", ")
            )));
        }
        Ok(None)
    }

    /// `HostName=…;GatewayHostName=…;DeviceId=…;ModuleId=…;SharedAccessKey=…`.
    fn from_connection_string(
        text: &str,
        ca_file: PathBuf,
        parent_hostname: Option<String>,
        mqtt_port: u16,
    ) -> Result<ModuleEnvironment, EdgeError> {
        let mut fields = std::collections::HashMap::new();
        for part in text.split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                EdgeError::Environment(format!(
                    "EdgeHubConnectionString: {:?} is not Key=Value",
                    part.split('=').next().unwrap_or_default()
                ))
            })?;
            fields.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let field = |k: &str| {
            fields.get(k).cloned().ok_or_else(|| {
                EdgeError::Environment(format!("EdgeHubConnectionString has no {k}"))
            })
        };
        let hub_hostname = field("HostName")?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(field("SharedAccessKey")?)
            .map_err(|_| {
                EdgeError::Environment(
                    "EdgeHubConnectionString: SharedAccessKey is not base64".into(),
                )
            })?;
        Ok(ModuleEnvironment {
            gateway_hostname: fields
                .get("GatewayHostName")
                .cloned()
                .unwrap_or(hub_hostname.clone()),
            hub_hostname,
            device_id: field("DeviceId")?,
            module_id: field("ModuleId")?,
            parent_hostname,
            mqtt_port,
            token_ttl_seconds: sas::TOKEN_TTL_SECONDS,
            credentials: Credentials::SymmetricKey { key, ca_file },
        })
    }

    /// MQTT client id: `{device}/{module}`.
    pub fn client_id(&self) -> String {
        format!("{}/{}", self.device_id, self.module_id)
    }

    /// MQTT user name, as Microsoft's SDKs send it (the hub's name, not the gateway's).
    pub fn username(&self) -> String {
        format!(
            "{}/{}/?api-version=2019-10-01&DeviceClientType={}",
            self.hub_hostname,
            self.client_id(),
            sas::quote(&format!("connected-registry/{}", env!("CARGO_PKG_VERSION")))
        )
    }

    /// A fresh SAS token and its expiry (Unix seconds).
    pub async fn sas_token(&self) -> Result<(String, u64), EdgeError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let expiry = now + self.token_ttl_seconds;
        let resource = sas::module_resource(&self.hub_hostname, &self.device_id, &self.module_id);
        let message = sas::string_to_sign(&resource, expiry);
        let signature = match &self.credentials {
            Credentials::Workload(workload) => workload.sign(message.as_bytes()).await?,
            Credentials::SymmetricKey { key, .. } => sas::sign_with_key(key, message.as_bytes()),
        };
        Ok((sas::token(&resource, expiry, &signature), expiry))
    }

    /// The CA certificates that sign edgeHub's (and, nested, the parent's) certificate.
    pub async fn trust_bundle(&self) -> Result<String, EdgeError> {
        match &self.credentials {
            Credentials::Workload(workload) => workload.trust_bundle().await,
            Credentials::SymmetricKey { ca_file, .. } => {
                tokio::fs::read_to_string(ca_file).await.map_err(|e| {
                    EdgeError::Environment(format!(
                        "cannot read EdgeModuleCACertificateFile {}: {e}",
                        ca_file.display()
                    ))
                })
            }
        }
    }

    /// The trust bundle for the node's start, asked a few times (the runtime may still be
    /// starting); `None` (logged) when it cannot be had — the module client keeps trying.
    pub async fn trust_bundle_at_start(&self) -> Option<String> {
        for attempt in 1..=5u32 {
            match self.trust_bundle().await {
                Ok(pem) => return Some(pem),
                Err(e) if attempt == 5 => {
                    tracing::warn!(error = %e, "no trust bundle from the IoT Edge runtime yet");
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
            }
        }
        None
    }

    pub fn workload(&self) -> Option<&WorkloadClient> {
        match &self.credentials {
            Credentials::Workload(w) => Some(w),
            Credentials::SymmetricKey { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn runtime_variables_make_a_workload_module() {
        let env = env_of(&[
            ("IOTEDGE_IOTHUBHOSTNAME", "myhub.azure-devices.net"),
            ("IOTEDGE_DEVICEID", "dev1"),
            ("IOTEDGE_MODULEID", "connected-registry"),
            ("IOTEDGE_GATEWAYHOSTNAME", "edgehost"),
            ("IOTEDGE_MODULEGENERATIONID", "gen1"),
            (
                "IOTEDGE_WORKLOADURI",
                "unix:///var/run/iotedge/workload.sock",
            ),
        ]);
        let m = ModuleEnvironment::from_env(env).unwrap().unwrap();
        assert_eq!(m.client_id(), "dev1/connected-registry");
        assert!(m
            .username()
            .starts_with("myhub.azure-devices.net/dev1/connected-registry/?api-version=2019-10-01&DeviceClientType=connected-registry%2F"));
        assert!(m.workload().is_some());
        assert_eq!(m.mqtt_port, 8883);
    }

    #[test]
    fn nothing_set_is_not_a_module_and_half_set_names_what_is_missing() {
        assert!(ModuleEnvironment::from_env(env_of(&[])).unwrap().is_none());
        let e = ModuleEnvironment::from_env(env_of(&[("IOTEDGE_DEVICEID", "dev1")])).unwrap_err();
        assert!(e.to_string().contains("IOTEDGE_WORKLOADURI"), "{e}");
        let e = ModuleEnvironment::from_env(env_of(&[(
            "EdgeHubConnectionString",
            "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=AAAA",
        )]))
        .unwrap_err();
        assert!(e.to_string().contains("EdgeModuleCACertificateFile"), "{e}");
    }

    #[test]
    fn the_development_connection_string() {
        let m = ModuleEnvironment::from_env(env_of(&[
            (
                "EdgeHubConnectionString",
                "HostName=myhub.azure-devices.net;GatewayHostName=localhost;DeviceId=dev1;ModuleId=mod1;SharedAccessKey=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ),
            ("EdgeModuleCACertificateFile", "/tmp/ca.pem"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(m.gateway_hostname, "localhost");
        assert_eq!(m.hub_hostname, "myhub.azure-devices.net");
        assert!(matches!(m.credentials, Credentials::SymmetricKey { .. }));
    }
}
