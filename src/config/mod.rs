//! The node's configuration: one schema whether it comes from a file (TOML or JSON), the command
//! line or (later) the module twin, validated whole before anything uses it.
//!
//! Only the parts the running code acts on are accepted; an unknown key is refused by name rather
//! than silently ignored, so a typo never turns into a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod bootstrap;
pub mod edit;
pub mod limits;
pub mod operations;
pub mod schedule;
pub mod select;
pub mod tokens;
pub mod watch;
pub use limits::{open_files_limit, Limits, LimitsConfig};
pub use operations::{
    GarbageCollection, GarbageCollectionConfig, MetricsConfig, StorageConfig, StorageLimits,
    DEFAULT_MANIFEST_CACHE, DEFAULT_METADATA_CACHE,
};
pub use tokens::{Action, GatewayAction, RepositoryAction, TokenConfig, TokenStatus};

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
    /// No parent: this node is a root.
    pub parent: Option<ParentConfig>,
    pub logging: Option<LoggingConfig>,
    /// Timeouts and caps that protect the server (see [`Limits`]).
    pub limits: Option<LimitsConfig>,
    /// Credentials local clients log in with (at most 20).
    #[serde(default)]
    pub client_tokens: Vec<TokenConfig>,
    /// Credentials children present when they sync from this node.
    #[serde(default)]
    pub sync_tokens: Vec<TokenConfig>,
    /// Pulls (and listings) without credentials. Off unless set, except on a loopback address
    /// with no tokens configured, where everything is open (a developer's registry).
    pub anonymous_pull: Option<bool>,
    /// How much disk blobs may take (see [`operations`]).
    pub storage: Option<StorageConfig>,
    /// When unreferenced content is freed (on by default, daily).
    pub garbage_collection: Option<GarbageCollectionConfig>,
    /// Who may scrape `/metrics`.
    pub metrics: Option<MetricsConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentConfig {
    /// `https://host:port` (or `http://` for tests and trusted links).
    pub endpoint: String,
    pub sync_token: Option<SyncToken>,
    /// PEM text, or a path to a PEM file, trusted in addition to the system roots.
    pub ca_certificate: Option<String>,
    #[serde(default)]
    pub sync: SyncConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncToken {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncConfig {
    /// Cron expression (UTC); `* * * * *` is continuous.
    #[serde(default = "continuous")]
    pub schedule: String,
    /// ISO-8601 duration, 1 h – 7 d; required with a non-continuous schedule.
    pub window: Option<String>,
    /// ISO-8601 duration, 1 d – 90 d: how long the parent keeps change events for this child.
    #[serde(default = "default_ttl")]
    pub message_ttl: String,
    /// Exact names or globs (`*` within a component, `**` across components).
    #[serde(default)]
    pub repositories: Vec<String>,
    pub tags: Option<TagFilter>,
    /// `os/arch[/variant]`; empty = every platform.
    #[serde(default)]
    pub platforms: Vec<String>,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Like `20MiB/s`.
    pub bandwidth_limit: Option<String>,
    /// Against a parent with no change feed: ISO-8601 pause after each reconcile pass, PT1S – PT1H.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: String,
    /// The pause doubles after each pass that found nothing new, up to this (≥ `pollInterval`,
    /// at most PT1H), and returns to `pollInterval` once a pass fetches something.
    #[serde(default = "default_max_poll_interval")]
    pub max_poll_interval: String,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            schedule: continuous(),
            window: None,
            message_ttl: default_ttl(),
            repositories: Vec::new(),
            tags: None,
            platforms: Vec::new(),
            concurrency: default_concurrency(),
            bandwidth_limit: None,
            poll_interval: default_poll_interval(),
            max_poll_interval: default_max_poll_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TagFilter {
    pub include: Option<String>,
    pub exclude: Option<String>,
}

fn continuous() -> String {
    "* * * * *".to_owned()
}

fn default_ttl() -> String {
    "P2D".to_owned()
}

fn default_concurrency() -> usize {
    4
}

fn default_poll_interval() -> String {
    "PT5S".to_owned()
}

fn default_max_poll_interval() -> String {
    "PT5M".to_owned()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Mode {
    ReadOnly,
    ReadWrite,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReadOnly => "ReadOnly",
            Mode::ReadWrite => "ReadWrite",
        }
    }
}

/// Where the listener's certificate comes from: PEM files, or (under IoT Edge) the workload
/// API, which issues one signed by the edge CA and is asked again before it expires.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub from_workload: bool,
    /// The name the workload certificate is issued for (default: the login server's host,
    /// else `IOTEDGE_GATEWAYHOSTNAME`).
    pub common_name: Option<String>,
}

impl TlsConfig {
    pub fn from_files(certificate: PathBuf, key: PathBuf) -> TlsConfig {
        TlsConfig {
            certificate: Some(certificate),
            key: Some(key),
            ..TlsConfig::default()
        }
    }

    /// The PEM files, when the certificate comes from files.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.certificate.as_deref()?, self.key.as_deref()?))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rule = match (&self.certificate, &self.key, self.from_workload) {
            (Some(_), Some(_), false) | (None, None, true) => return Ok(()),
            (Some(_), Some(_), true) => {
                "give either certificate and key files or fromWorkload, not both"
            }
            (Some(_), None, _) | (None, Some(_), _) => "certificate and key go together",
            (None, None, false) => {
                "give certificate and key files, or fromWorkload: true under IoT Edge"
            }
        };
        Err(ConfigError::Invalid {
            field: "tls",
            rule: rule.to_owned(),
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// ACR's levels (`Debug`, `Information`, `Warning`, `Error`, `None`) or tracing's.
    pub level: String,
}

/// Read a configuration, naming the field a value of the wrong kind sits in
/// (`` `parent.sync.concurrency`: invalid type: string, expected usize ``), never the value.
pub fn deserialize_naming_the_field<'de, D>(de: D) -> Result<Config, String>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let what = without_values(&e.inner().to_string());
        if path == "." {
            what
        } else {
            format!("`{path}`: {what}")
        }
    })
}

/// serde's messages quote a value of the wrong type or shape (`invalid type: string
/// "…", expected …`, `integer `…``): only its kind is kept, the value may be a secret.
pub fn without_values(message: &str) -> String {
    static QUOTED: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let quoted = QUOTED.get_or_init(|| {
        regex::Regex::new(
            r#"(string) "(?:[^"\\]|\\.)*"|(integer|floating point|boolean|character) `[^`]*`"#,
        )
        .expect("a valid regular expression")
    });
    quoted.replace_all(message, "$1$2").trim().to_owned()
}

impl Config {
    /// Load and validate a TOML or JSON file. A parse error names the line, the column and
    /// (for TOML) the key, but never quotes the file: the offending line may hold a password,
    /// and the message is logged (the config watcher) and reported (status, module twin).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        /// The dotted key of the entry on `line` (0-based), from the table header above it and
        /// the key before `=`; only bare keys are shown, so no value can slip through.
        fn toml_key_at(text: &str, line: usize) -> Option<String> {
            static BARE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
            let bare = BARE.get_or_init(|| {
                regex::Regex::new(r"^[A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*$")
                    .expect("a valid regular expression")
            });
            let clean = |k: &str| {
                let k = k.trim();
                bare.is_match(k)
                    .then(|| k.split('.').map(str::trim).collect::<Vec<_>>().join("."))
            };
            let lines: Vec<&str> = text.lines().collect();
            let own = lines.get(line)?.trim_start();
            let table = lines[..line].iter().rev().find_map(|l| {
                let l = l.trim();
                let header = l.strip_prefix('[')?.split(']').next()?;
                clean(header.trim_start_matches('['))
            });
            let key = match own.strip_prefix('[') {
                Some(_) => None,
                None => own.split_once('=').and_then(|(k, _)| clean(k)),
            }?;
            Some(match table {
                Some(table) => format!("{table}.{key}"),
                None => key,
            })
        }

        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let is_json =
            path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        let config: Config = if is_json {
            // serde_json's message (`… at line L column C`) never quotes the input, only (see
            // above) a value of the wrong kind.
            deserialize_naming_the_field(&mut serde_json::Deserializer::from_str(&text)).map_err(
                |message| ConfigError::Parse {
                    path: path.to_owned(),
                    format: "JSON",
                    message,
                },
            )?
        } else {
            // toml's `Display` quotes the offending line: build the message from its parts.
            toml::from_str(&text).map_err(|e| {
                let what = without_values(e.message()).replace('\n', "; ");
                let message = match e.span() {
                    Some(span) => {
                        let before = &text.as_bytes()[..span.start.min(text.len())];
                        let line = before.iter().filter(|b| **b == b'\n').count();
                        let line_start = before
                            .iter()
                            .rposition(|b| *b == b'\n')
                            .map_or(0, |i| i + 1);
                        let column = String::from_utf8_lossy(&before[line_start..])
                            .chars()
                            .count()
                            + 1;
                        match toml_key_at(&text, line) {
                            Some(key) => {
                                format!("line {}, column {column}, key `{key}`: {what}", line + 1)
                            }
                            None => format!("line {}, column {column}: {what}", line + 1),
                        }
                    }
                    None => what,
                };
                ConfigError::Parse {
                    path: path.to_owned(),
                    format: "TOML",
                    message,
                }
            })?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.name {
            if !is_registry_name(name) {
                return Err(ConfigError::Invalid {
                    field: "name",
                    rule: format!("{name:?} must be 5 to 40 letters and digits"),
                });
            }
        }
        self.listen_addr()?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if let Some(parent) = &self.parent {
            parent.validate()?;
        }
        if let Some(level) = &self.logging {
            tracing_filter(&level.level)?;
        }
        self.limits()?;
        self.storage_limits()?;
        self.metadata_cache()?;
        self.manifest_cache()?;
        self.garbage_collection()?;
        tokens::validate_tokens(
            "clientTokens",
            &self.client_tokens,
            Some(tokens::MAX_CLIENT_TOKENS),
        )?;
        tokens::validate_tokens("syncTokens", &self.sync_tokens, None)?;
        if let Some(clash) = self
            .client_tokens
            .iter()
            .find(|c| self.sync_tokens.iter().any(|s| s.name == c.name))
        {
            return Err(ConfigError::Invalid {
                field: "syncTokens",
                rule: format!("token name {:?} is also a client token", clash.name),
            });
        }
        Ok(())
    }

    /// Whether any credentials are configured (then clients must authenticate).
    pub fn has_tokens(&self) -> bool {
        !self.client_tokens.is_empty() || !self.sync_tokens.is_empty()
    }

    /// The node's mode: as configured, else `ReadWrite` for a root (where pushes land) and
    /// `ReadOnly` for a child (a mirror of its parent).
    pub fn effective_mode(&self) -> Mode {
        self.mode.unwrap_or(if self.parent.is_some() {
            Mode::ReadOnly
        } else {
            Mode::ReadWrite
        })
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        listen.parse().map_err(|_| ConfigError::Invalid {
            field: "listen",
            rule: format!("{listen:?} must be an IP address and port, like 0.0.0.0:8080"),
        })
    }

    /// The server's limits with defaults filled in.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        self.limits.clone().unwrap_or_default().resolve()
    }

    /// The storage limits with defaults filled in.
    pub fn storage_limits(&self) -> Result<StorageLimits, ConfigError> {
        self.storage.clone().unwrap_or_default().resolve()
    }

    /// The metadata index's cache size in bytes (`storage.metadataCache`, read at start).
    pub fn metadata_cache(&self) -> Result<u64, ConfigError> {
        self.storage.clone().unwrap_or_default().metadata_cache()
    }

    /// The memory the manifests served by tag may keep (`storage.manifestCache`, applied live).
    pub fn manifest_cache(&self) -> Result<u64, ConfigError> {
        self.storage.clone().unwrap_or_default().manifest_cache()
    }

    /// The garbage collection settings with defaults filled in.
    pub fn garbage_collection(&self) -> Result<GarbageCollection, ConfigError> {
        self.garbage_collection
            .clone()
            .unwrap_or_default()
            .resolve()
    }

    /// Whether `/metrics` is open without credentials.
    pub fn metrics_anonymous(&self) -> bool {
        self.metrics.as_ref().is_some_and(|m| m.anonymous)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"))
    }
}

impl ParentConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, rule: String| Err(ConfigError::Invalid { field, rule });
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            return invalid(
                "parent.endpoint",
                format!("{:?} must start with https:// or http://", self.endpoint),
            );
        }
        let sync = &self.sync;
        schedule::Schedule::parse(&sync.schedule, sync.window.as_deref())?;
        schedule::parse_message_ttl(&sync.message_ttl)?;
        schedule::parse_poll_intervals(sync)?;
        if sync.repositories.is_empty() {
            return invalid(
                "parent.sync.repositories",
                "name at least one repository or pattern to sync".to_owned(),
            );
        }
        select::Selection::new(sync)?;
        if !(1..=64).contains(&sync.concurrency) {
            return invalid(
                "parent.sync.concurrency",
                format!("{} must be between 1 and 64", sync.concurrency),
            );
        }
        if let Some(limit) = &sync.bandwidth_limit {
            schedule::parse_bandwidth(limit)?;
        }
        Ok(())
    }
}

/// A connected registry's name: 5 to 40 letters and digits (ACR's rule), for this node, a
/// child activating here, and `get-settings`.
pub fn is_registry_name(name: &str) -> bool {
    (5..=40).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric())
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

    #[test]
    fn a_value_of_the_wrong_kind_is_refused_naming_its_field_not_its_value() {
        let twin = serde_json::json!({"parent": {"endpoint": "http://p:1",
            "sync": {"concurrency": "secret-ish"}}});
        let e = deserialize_naming_the_field(twin).unwrap_err();
        assert!(
            e.starts_with("`parent.sync.concurrency`: invalid type: string"),
            "{e}"
        );
        assert!(!e.contains("secret-ish"), "{e}");
        let text = r#"{"storage": {"maxSize": 5}}"#;
        let e = deserialize_naming_the_field(&mut serde_json::Deserializer::from_str(text))
            .unwrap_err();
        assert!(e.starts_with("`storage.maxSize`:"), "{e}");
    }
}
