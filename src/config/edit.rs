//! Changes to a configuration file made by the command line (`connected-registry token …`):
//! add, remove, enable or disable a token, keeping the rest of the file as its author wrote it
//! (TOML comments and order survive through `toml_edit`; JSON is rewritten pretty-printed).
//!
//! Every change is validated as a whole configuration before it is written, so the file is never
//! left holding something `serve` would refuse, and it is written crash-safely (a temporary file,
//! fsync, rename, fsync of the directory): a running node that re-reads the file sees the old
//! file or the new one, never half of either.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

use super::tokens::{TokenConfig, TokenStatus};
use super::{without_values, Config};

/// Which list of the configuration a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `clientTokens`: local clients.
    Client,
    /// `syncTokens`: children syncing from this node.
    Sync,
}

impl TokenKind {
    pub fn field(self) -> &'static str {
        match self {
            TokenKind::Client => "clientTokens",
            TokenKind::Sync => "syncTokens",
        }
    }
}

/// One edit of a configuration document.
pub enum TokenEdit<'a> {
    Add(TokenKind, &'a TokenConfig),
    Remove(&'a str),
    SetStatus(&'a str, TokenStatus),
    /// A new password hash (a password rotated by `get-settings --generate-password`).
    SetPasswordHash(&'a str, &'a str),
}

/// Apply `edit` to the configuration file at `path` (created if missing). Fails, leaving the
/// file untouched, when the token to change does not exist, the name is taken, or the result
/// would not be a valid configuration.
pub fn edit_tokens(path: &Path, edit: TokenEdit<'_>) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    let current: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        Config::from_file(path)?
    };
    let exists = |name: &str| {
        current
            .client_tokens
            .iter()
            .chain(&current.sync_tokens)
            .any(|t| t.name == name)
    };
    match &edit {
        TokenEdit::Add(_, token) if exists(&token.name) => {
            bail!(
                "a token named {:?} already exists in {}",
                token.name,
                path.display()
            )
        }
        TokenEdit::Remove(name)
        | TokenEdit::SetStatus(name, _)
        | TokenEdit::SetPasswordHash(name, _)
            if !exists(name) =>
        {
            bail!("no token named {name:?} in {}", path.display())
        }
        _ => {}
    }
    let new_text = if is_json {
        edit_json(&text, &edit)?
    } else {
        edit_toml(&text, &edit)?
    };
    // The edited file may hold secrets: its parse errors are reported without the values
    // (toml's `Display` would quote the whole line).
    let parsed: Config = if is_json {
        serde_json::from_str(&new_text)
            .map_err(|e| anyhow::anyhow!(without_values(&e.to_string())))?
    } else {
        toml::from_str(&new_text).map_err(|e| anyhow::anyhow!(without_values(e.message())))?
    };
    parsed.validate()?;
    write_atomically(path, new_text.as_bytes())
}

fn edit_json(text: &str, edit: &TokenEdit<'_>) -> anyhow::Result<String> {
    let mut doc: serde_json::Value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!(without_values(&e.to_string())))?
    };
    let root = doc
        .as_object_mut()
        .context("the configuration is not a JSON object")?;
    match edit {
        TokenEdit::Add(kind, token) => {
            let list = root
                .entry(kind.field())
                .or_insert_with(|| serde_json::json!([]));
            list.as_array_mut()
                .with_context(|| format!("`{}` is not a list", kind.field()))?
                .push(serde_json::to_value(token)?);
        }
        TokenEdit::Remove(name)
        | TokenEdit::SetStatus(name, _)
        | TokenEdit::SetPasswordHash(name, _) => {
            for kind in [TokenKind::Client, TokenKind::Sync] {
                let Some(list) = root.get_mut(kind.field()).and_then(|l| l.as_array_mut()) else {
                    continue;
                };
                let found = list
                    .iter()
                    .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(name));
                match (found, edit) {
                    (Some(i), TokenEdit::Remove(_)) => {
                        list.remove(i);
                    }
                    (Some(i), TokenEdit::SetStatus(_, status)) => {
                        list[i]["status"] = serde_json::to_value(status)?;
                    }
                    (Some(i), TokenEdit::SetPasswordHash(_, hash)) => {
                        list[i]["passwordHash"] = serde_json::Value::from(*hash);
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(serde_json::to_string_pretty(&doc)? + "\n")
}

fn edit_toml(text: &str, edit: &TokenEdit<'_>) -> anyhow::Result<String> {
    use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table};
    let mut doc: DocumentMut = text
        .parse()
        .context("the configuration is not valid TOML")?;
    match edit {
        TokenEdit::Add(kind, token) => {
            let mut table = Table::new();
            table["name"] = value(token.name.as_str());
            table["passwordHash"] = value(token.password_hash.as_str());
            table["status"] = value(status_str(token.status));
            let actions: Array = token.actions.iter().map(String::as_str).collect();
            table["actions"] = value(actions);
            let item = doc
                .entry(kind.field())
                .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
            match item {
                Item::ArrayOfTables(list) => list.push(table),
                Item::Value(toml_edit::Value::Array(list)) => {
                    list.push(table.into_inline_table());
                }
                _ => bail!("`{}` is not a list of tokens", kind.field()),
            }
        }
        TokenEdit::Remove(name)
        | TokenEdit::SetStatus(name, _)
        | TokenEdit::SetPasswordHash(name, _) => {
            for kind in [TokenKind::Client, TokenKind::Sync] {
                let Some(item) = doc.get_mut(kind.field()) else {
                    continue;
                };
                if let Item::ArrayOfTables(list) = item {
                    let found = list
                        .iter()
                        .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(*name));
                    match (found, edit) {
                        (Some(i), TokenEdit::Remove(_)) => list.remove(i),
                        (Some(i), TokenEdit::SetStatus(_, status)) => {
                            if let Some(t) = list.get_mut(i) {
                                t["status"] = value(status_str(*status));
                            }
                        }
                        (Some(i), TokenEdit::SetPasswordHash(_, hash)) => {
                            if let Some(t) = list.get_mut(i) {
                                t["passwordHash"] = value(*hash);
                            }
                        }
                        _ => {}
                    }
                } else if let Item::Value(toml_edit::Value::Array(list)) = item {
                    let found = list.iter().position(|t| {
                        t.as_inline_table()
                            .and_then(|t| t.get("name"))
                            .and_then(|n| n.as_str())
                            == Some(*name)
                    });
                    match (found, edit) {
                        (Some(i), TokenEdit::Remove(_)) => {
                            list.remove(i);
                        }
                        (Some(i), TokenEdit::SetStatus(_, status)) => {
                            if let Some(t) = list.get_mut(i).and_then(|t| t.as_inline_table_mut()) {
                                t.insert("status", status_str(*status).into());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(doc.to_string())
}

fn status_str(status: TokenStatus) -> &'static str {
    match status {
        TokenStatus::Enabled => "enabled",
        TokenStatus::Disabled => "disabled",
    }
}

/// Replace `path` with `bytes` so that a crash at any moment leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .context("the configuration path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str) -> TokenConfig {
        TokenConfig {
            name: name.to_owned(),
            // A fixed argon2id PHC string (the password is irrelevant to these tests).
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3HqDzYzyCCBRt3yhsJuQ3rOXHqtnKjE1q6gzUujrOsc".to_owned(),
            status: TokenStatus::Enabled,
            actions: vec!["repositories/apps/*/content/read".to_owned()],
        }
    }

    #[test]
    fn toml_edits_keep_comments_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "# my node\nname = \"factorya\"\n").unwrap();
        edit_tokens(&path, TokenEdit::Add(TokenKind::Client, &token("line1"))).unwrap();
        edit_tokens(&path, TokenEdit::Add(TokenKind::Sync, &token("child1"))).unwrap();
        let err = edit_tokens(&path, TokenEdit::Add(TokenKind::Client, &token("line1")));
        assert!(err.unwrap_err().to_string().contains("already exists"));
        edit_tokens(&path, TokenEdit::SetStatus("line1", TokenStatus::Disabled)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# my node\n"), "{text}");
        let config = Config::from_file(&path).unwrap();
        assert_eq!(config.client_tokens[0].status, TokenStatus::Disabled);
        assert_eq!(config.sync_tokens[0].name, "child1");
        edit_tokens(&path, TokenEdit::Remove("line1")).unwrap();
        assert!(Config::from_file(&path).unwrap().client_tokens.is_empty());
        assert!(edit_tokens(&path, TokenEdit::Remove("line1")).is_err());
    }

    #[test]
    fn json_edits_and_the_client_token_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        for i in 0..20 {
            edit_tokens(
                &path,
                TokenEdit::Add(TokenKind::Client, &token(&format!("t{i}"))),
            )
            .unwrap();
        }
        let err = edit_tokens(&path, TokenEdit::Add(TokenKind::Client, &token("t20"))).unwrap_err();
        assert!(
            format!("{err:#}").contains("at most 20 client tokens"),
            "{err:#}"
        );
        assert_eq!(Config::from_file(&path).unwrap().client_tokens.len(), 20);
    }
}
