//! Starting a child the way ACR's connected-registry container starts: from environment
//! variables only. `ACR_REGISTRY_CONNECTION_STRING`
//! (`ConnectedRegistryName=…;SyncTokenName=…;SyncTokenPassword=…;ParentGatewayEndpoint=…;ParentEndpointProtocol=https|http`)
//! names the node, its parent and its sync token; `ACR_REGISTRY_LOGIN_SERVER` the host clients
//! use; `ACR_PARENT_GATEWAY_ENDPOINT` overrides the parent; `ACR_REGISTRY_CERTIFICATE_VOLUME` is
//! where `tls.crt` and `tls.key` are looked for (`ACR_REGISTRY_DATA_VOLUME` is read by the CLI).
//!
//! With a connection string and no `parent.sync.repositories`, the child syncs every repository
//! its sync token may read (`**`): as in ACR, the scope lives in the parent's token.

use std::collections::HashMap;
use std::path::PathBuf;

use super::{Config, ConfigError, ParentConfig, SyncConfig, SyncToken, TlsConfig};

pub const CONNECTION_STRING: &str = "ACR_REGISTRY_CONNECTION_STRING";
pub const LOGIN_SERVER: &str = "ACR_REGISTRY_LOGIN_SERVER";
pub const PARENT_GATEWAY_ENDPOINT: &str = "ACR_PARENT_GATEWAY_ENDPOINT";
pub const CERTIFICATE_VOLUME: &str = "ACR_REGISTRY_CERTIFICATE_VOLUME";

/// The parts of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub registry_name: String,
    pub sync_token_name: String,
    pub sync_token_password: String,
    pub parent_gateway_endpoint: String,
    pub parent_protocol: String,
}

impl ConnectionString {
    pub fn parse(text: &str) -> Result<ConnectionString, ConfigError> {
        let invalid = |rule: String| ConfigError::Invalid {
            field: CONNECTION_STRING,
            rule,
        };
        let mut parts: HashMap<&str, &str> = HashMap::new();
        for part in text.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| invalid(format!("{:?} is not Key=Value", short(part))))?;
            parts.insert(key.trim(), value.trim());
        }
        if parts.contains_key("ManagedIdentityClientId") {
            return Err(invalid(
                "managed-identity connection strings are not supported; use a sync token".into(),
            ));
        }
        let required = |key: &str| {
            parts
                .get(key)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string())
                .ok_or_else(|| invalid(format!("{key} is missing")))
        };
        let protocol = parts
            .get("ParentEndpointProtocol")
            .copied()
            .unwrap_or("https")
            .to_ascii_lowercase();
        if protocol != "https" && protocol != "http" {
            return Err(invalid(format!(
                "ParentEndpointProtocol must be https or http, not {protocol:?}"
            )));
        }
        Ok(ConnectionString {
            registry_name: required("ConnectedRegistryName")?,
            sync_token_name: required("SyncTokenName")?,
            sync_token_password: required("SyncTokenPassword")?,
            parent_gateway_endpoint: required("ParentGatewayEndpoint")?,
            parent_protocol: protocol,
        })
    }

    /// The string itself, as `get-settings` prints it.
    pub fn render(&self) -> String {
        format!(
            "ConnectedRegistryName={};SyncTokenName={};SyncTokenPassword={};ParentGatewayEndpoint={};ParentEndpointProtocol={}",
            self.registry_name,
            self.sync_token_name,
            self.sync_token_password,
            self.parent_gateway_endpoint,
            self.parent_protocol
        )
    }
}

fn short(s: &str) -> &str {
    // Never echo a whole part: it may hold the password.
    match s.split_once('=') {
        Some((key, _)) => key,
        // At most 20 characters, cut on a character boundary.
        None => s.char_indices().nth(20).map_or(s, |(i, _)| &s[..i]),
    }
}

/// Fill `config` from the environment (`env` looks a variable up). A value in the
/// configuration file wins over the environment, except that a connection string's parent,
/// name and token fill only what the file leaves out.
/// Whether the environment carries a connection string (the node's configuration then comes
/// from the environment when no file is given).
pub fn has_environment(env: impl Fn(&str) -> Option<String>) -> bool {
    env(CONNECTION_STRING).is_some_and(|t| !t.trim().is_empty())
}

pub fn apply_environment(
    config: &mut Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(text) = env(CONNECTION_STRING).filter(|t| !t.trim().is_empty()) {
        let cs = ConnectionString::parse(&text)?;
        config.name.get_or_insert(cs.registry_name.clone());
        let gateway = env(PARENT_GATEWAY_ENDPOINT)
            .filter(|g| !g.is_empty())
            .unwrap_or(cs.parent_gateway_endpoint.clone());
        let endpoint = format!("{}://{}", cs.parent_protocol, gateway.trim_end_matches('/'));
        let parent = config.parent.get_or_insert_with(|| ParentConfig {
            endpoint: endpoint.clone(),
            sync_token: None,
            ca_certificate: None,
            sync: SyncConfig::default(),
        });
        parent.sync_token.get_or_insert(SyncToken {
            name: cs.sync_token_name.clone(),
            password: cs.sync_token_password.clone(),
        });
        if parent.sync.repositories.is_empty() {
            parent.sync.repositories = vec!["**".to_owned()];
        }
    }
    if let Some(login) = env(LOGIN_SERVER).filter(|l| !l.is_empty()) {
        config.login_server.get_or_insert(login);
    }
    if let Some(dir) = env(CERTIFICATE_VOLUME).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        if config.tls.is_none() && cert.exists() && key.exists() {
            config.tls = Some(TlsConfig::from_files(cert, key));
        }
    }
    config.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &str = "ConnectedRegistryName=factorya;SyncTokenName=factorya;SyncTokenPassword=s3cr3t=x;ParentGatewayEndpoint=parent.local:8443;ParentEndpointProtocol=https";

    #[test]
    fn a_connection_string_makes_a_child() {
        let cs = ConnectionString::parse(CS).unwrap();
        assert_eq!(cs.sync_token_password, "s3cr3t=x");
        assert_eq!(cs.render(), CS);
        let mut config = Config::default();
        let env = |k: &str| match k {
            CONNECTION_STRING => Some(CS.to_owned()),
            LOGIN_SERVER => Some("10.0.0.5:8080".to_owned()),
            _ => None,
        };
        apply_environment(&mut config, env).unwrap();
        assert_eq!(config.name.as_deref(), Some("factorya"));
        let parent = config.parent.unwrap();
        assert_eq!(parent.endpoint, "https://parent.local:8443");
        assert_eq!(parent.sync_token.unwrap().password, "s3cr3t=x");
        assert_eq!(parent.sync.repositories, ["**"]);
        assert_eq!(config.login_server.as_deref(), Some("10.0.0.5:8080"));
    }

    /// Found by `cargo fuzz` (fuzz/fuzz_targets/connection_string.rs): a part without `=`
    /// whose 20th byte falls inside a multi-byte character panicked while naming it.
    #[test]
    fn a_part_cut_inside_a_character_is_named_without_panicking() {
        for pad in 0..3 {
            // A part of "x"s then "é"s: for one of the paddings byte 20 is inside an "é".
            let text = format!(
                "ConnectedRegistryName=a;{}{}",
                "x".repeat(pad),
                "\u{e9}".repeat(15)
            );
            let e = ConnectionString::parse(&text).unwrap_err().to_string();
            assert!(e.contains("is not Key=Value"), "{e}");
        }
    }

    #[test]
    fn bad_connection_strings_name_the_part_and_never_the_password() {
        for (text, says) in [
            ("ConnectedRegistryName=a", "SyncTokenName is missing"),
            ("garbage", "is not Key=Value"),
            (&CS.replace("https", "ftp"), "ParentEndpointProtocol"),
            (
                "ManagedIdentityClientId=x;ConnectedRegistryName=a",
                "managed-identity",
            ),
        ] {
            let e = ConnectionString::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }
}
