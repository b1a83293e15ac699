//! Tokens as the configuration holds them: client tokens (what local clients log in with) and
//! sync tokens (what children present here), each a name, a salted password hash, a status and
//! ACR's action strings.
//!
//! This module owns the parsed form of an action ([`Action`]) so that the configuration can be
//! validated whole — the limits of ACR (20 client tokens per node, 500 repository permissions
//! per token) included — before anything uses it; `auth` only reads it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// ACR's limit on client tokens per connected registry.
pub const MAX_CLIENT_TOKENS: usize = 20;
/// ACR's limit on repository permissions per scope map (here: per token).
pub const MAX_REPOSITORY_PERMISSIONS: usize = 500;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// An argon2 PHC string (`$argon2id$v=19$…`); never the password itself.
    pub password_hash: String,
    #[serde(default)]
    pub status: TokenStatus,
    /// ACR action strings, e.g. `repositories/apps/*/content/read`, `gateway/factorya/message/read`.
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    #[default]
    Enabled,
    Disabled,
}

/// What a repository permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepositoryAction {
    ContentRead,
    ContentWrite,
    ContentDelete,
    MetadataRead,
    MetadataWrite,
}

/// What a gateway permission allows (on the node-to-node endpoints of one child).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayAction {
    ConfigRead,
    ConfigWrite,
    MessageRead,
    MessageWrite,
}

/// Which repositories a permission covers: one name, or every name under a prefix
/// (`apps/*`), or all (`*`). As in ACR, a wildcard may only end the pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RepositoryPattern {
    Exact(String),
    /// Names starting with this (empty: every name).
    Prefix(String),
}

impl RepositoryPattern {
    pub fn matches(&self, repository: &str) -> bool {
        match self {
            RepositoryPattern::Exact(name) => name == repository,
            RepositoryPattern::Prefix(prefix) => repository.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for RepositoryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepositoryPattern::Exact(name) => f.write_str(name),
            RepositoryPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// One parsed ACR action string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    Repository {
        pattern: RepositoryPattern,
        action: RepositoryAction,
    },
    Gateway {
        /// A connected registry's name, or `*` for every child.
        child: String,
        action: GatewayAction,
    },
}

impl RepositoryAction {
    pub const ALL: [RepositoryAction; 5] = [
        RepositoryAction::ContentRead,
        RepositoryAction::ContentWrite,
        RepositoryAction::ContentDelete,
        RepositoryAction::MetadataRead,
        RepositoryAction::MetadataWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RepositoryAction::ContentRead => "content/read",
            RepositoryAction::ContentWrite => "content/write",
            RepositoryAction::ContentDelete => "content/delete",
            RepositoryAction::MetadataRead => "metadata/read",
            RepositoryAction::MetadataWrite => "metadata/write",
        }
    }

    fn parse(s: &str) -> Option<RepositoryAction> {
        RepositoryAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl GatewayAction {
    pub const ALL: [GatewayAction; 4] = [
        GatewayAction::ConfigRead,
        GatewayAction::ConfigWrite,
        GatewayAction::MessageRead,
        GatewayAction::MessageWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GatewayAction::ConfigRead => "config/read",
            GatewayAction::ConfigWrite => "config/write",
            GatewayAction::MessageRead => "message/read",
            GatewayAction::MessageWrite => "message/write",
        }
    }

    fn parse(s: &str) -> Option<GatewayAction> {
        GatewayAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Repository { pattern, action } => {
                write!(f, "repositories/{pattern}/{}", action.as_str())
            }
            Action::Gateway { child, action } => write!(f, "gateway/{child}/{}", action.as_str()),
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    /// `repositories/<pattern>/<content|metadata>/<verb>` or `gateway/<child>/<config|message>/<verb>`.
    fn from_str(s: &str) -> Result<Action, String> {
        let bad = || {
            format!(
                "{s:?} is not an action: expected repositories/<name or prefix/*>/content/read|content/write|content/delete|metadata/read|metadata/write or gateway/<registry>/config/read|config/write|message/read|message/write"
            )
        };
        // The last two components are the action; what lies between the kind and them is the
        // pattern (which may itself contain slashes).
        let (rest, verb) = s.rsplit_once('/').ok_or_else(bad)?;
        let (rest, noun) = rest.rsplit_once('/').ok_or_else(bad)?;
        let (kind, target) = rest.split_once('/').ok_or_else(bad)?;
        let action = format!("{noun}/{verb}");
        match kind {
            "repositories" => {
                let action = RepositoryAction::parse(&action).ok_or_else(bad)?;
                let pattern = match target.strip_suffix('*') {
                    Some(prefix) if prefix.is_empty() || prefix.ends_with('/') => {
                        RepositoryPattern::Prefix(prefix.to_owned())
                    }
                    Some(_) => {
                        return Err(format!(
                            "{s:?}: a wildcard may only stand for whole trailing components (`apps/*` or `*`)"
                        ))
                    }
                    None => {
                        target
                            .parse::<crate::oci::RepositoryName>()
                            .map_err(|e| format!("{s:?}: {e}"))?;
                        RepositoryPattern::Exact(target.to_owned())
                    }
                };
                if let RepositoryPattern::Prefix(p) = &pattern {
                    if p.contains('*') {
                        return Err(format!("{s:?}: only one trailing wildcard is allowed"));
                    }
                }
                Ok(Action::Repository { pattern, action })
            }
            "gateway" => {
                let action = GatewayAction::parse(&action).ok_or_else(bad)?;
                let valid = target == "*"
                    || (!target.is_empty() && target.bytes().all(|b| b.is_ascii_alphanumeric()));
                if !valid {
                    return Err(format!(
                        "{s:?}: the gateway is a connected registry's name (letters and digits) or *"
                    ));
                }
                Ok(Action::Gateway {
                    child: target.to_owned(),
                    action,
                })
            }
            _ => Err(bad()),
        }
    }
}

impl TokenConfig {
    /// The parsed actions; an invalid one is refused by its string.
    pub fn parsed_actions(&self) -> Result<Vec<Action>, String> {
        self.actions.iter().map(|a| a.parse()).collect()
    }
}

/// Validate a list of tokens (`field` is `clientTokens` or `syncTokens`).
pub fn validate_tokens(
    field: &'static str,
    tokens: &[TokenConfig],
    max_tokens: Option<usize>,
) -> Result<(), ConfigError> {
    let invalid = |rule: String| ConfigError::Invalid { field, rule };
    if let Some(max) = max_tokens {
        if tokens.len() > max {
            return Err(invalid(format!(
                "{} tokens configured; a node accepts at most {max} client tokens",
                tokens.len()
            )));
        }
    }
    let mut names = std::collections::HashSet::new();
    for token in tokens {
        let name = &token.name;
        let ok = (1..=50).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(invalid(format!(
                "token name {name:?} must be 1 to 50 letters, digits, '-' or '_'"
            )));
        }
        if !names.insert(name.as_str()) {
            return Err(invalid(format!("token name {name:?} appears twice")));
        }
        if argon2::PasswordHash::new(&token.password_hash).is_err() {
            return Err(invalid(format!(
                "token {name:?}: passwordHash is not a password hash (create tokens with `connected-registry token create`)"
            )));
        }
        let actions = token
            .parsed_actions()
            .map_err(|e| invalid(format!("token {name:?}: {e}")))?;
        let repository_permissions = actions
            .iter()
            .filter(|a| matches!(a, Action::Repository { .. }))
            .count();
        if repository_permissions > MAX_REPOSITORY_PERMISSIONS {
            return Err(invalid(format!(
                "token {name:?} has {repository_permissions} repository permissions; a token holds at most {MAX_REPOSITORY_PERMISSIONS}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_print_back() {
        for s in [
            "repositories/apps/*/content/read",
            "repositories/*/metadata/read",
            "repositories/a/b/c/content/delete",
            "gateway/factorya/message/read",
            "gateway/*/config/write",
        ] {
            let a: Action = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        let a: Action = "repositories/apps/*/content/read".parse().unwrap();
        let Action::Repository { pattern, .. } = a else {
            panic!()
        };
        assert!(pattern.matches("apps/web"));
        assert!(pattern.matches("apps/web/x"));
        assert!(!pattern.matches("apps"));
        assert!(!pattern.matches("appsx/web"));
        for bad in [
            "repositories/apps*/content/read",
            "repositories/a/*/b/content/read",
            "repositories/apps/content/push",
            "repositories/UPPER/content/read",
            "gateway/a-b/config/read",
            "registry/x/content/read",
            "content/read",
            "",
        ] {
            assert!(bad.parse::<Action>().is_err(), "{bad}");
        }
    }
}
