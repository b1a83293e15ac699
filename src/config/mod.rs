//! The node's configuration: one schema whether it comes from a file (TOML or JSON), the command
//! line or (later) the module twin, validated whole before anything uses it.
//!
//! Only the parts the running code acts on are accepted; an unknown key is refused by name rather
//! than silently ignored, so a typo never turns into a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path:?} is not valid {format}: {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("configuration field `{field}`: {rule}")]
    Invalid { field: &'static str, rule: String },
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub name: Option<String>,
    pub mode: Option<Mode>,
    pub listen: Option<String>,
    pub login_server: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
    pub logging: Option<LoggingConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Mode {
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// ACR's levels (`Debug`, `Information`, `Warning`, `Error`, `None`) or tracing's.
    pub level: String,
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let is_json =
            path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        let config: Config = if is_json {
            serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                format: "JSON",
                message: e.to_string(),
            })?
        } else {
            toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                format: "TOML",
                message: e.to_string(),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.name {
            let ok =
                (5..=40).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(ConfigError::Invalid {
                    field: "name",
                    rule: format!("{name:?} must be 5 to 40 letters and digits"),
                });
            }
        }
        self.listen_addr()?;
        if let Some(level) = &self.logging {
            tracing_filter(&level.level)?;
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        listen.parse().map_err(|_| ConfigError::Invalid {
            field: "listen",
            rule: format!("{listen:?} must be an IP address and port, like 0.0.0.0:8080"),
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"))
    }
}

/// Map ACR's logging levels (and tracing's own names) to a tracing filter directive.
pub fn tracing_filter(level: &str) -> Result<&'static str, ConfigError> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "information" | "info" => "info",
        "warning" | "warn" => "warn",
        "error" => "error",
        "none" | "off" => "off",
        _ => {
            return Err(ConfigError::Invalid {
                field: "logging.level",
                rule: format!("{level:?} must be one of Debug, Information, Warning, Error, None"),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = serde_json::from_str::<Config>(r#"{"lisen":"0.0.0.0:1"}"#).unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
        let c: Config = serde_json::from_str(r#"{"listen":"nope"}"#).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`listen`"));
        let c: Config = serde_json::from_str(r#"{"name":"a-b"}"#).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`name`"));
        let c: Config = toml::from_str("listen = \"0.0.0.0:8080\"\nname = \"factorya\"").unwrap();
        c.validate().unwrap();
    }
}
