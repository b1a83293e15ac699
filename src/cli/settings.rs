//! `connected-registry get-settings NAME`: on a parent, what a child needs to start — ACR's
//! `az acr connected-registry get-settings` JSON, with the connection string. The child's sync
//! token is created in the parent's configuration file the first time (with the gateway
//! actions for NAME and the repository actions its mode needs); its password is shown only when
//! created or rotated with `--generate-password`.

use std::path::PathBuf;

use connected_registry::auth::password;
use connected_registry::config::bootstrap::ConnectionString;
use connected_registry::config::edit::{edit_tokens, TokenEdit, TokenKind};
use connected_registry::config::{Config, Mode, TokenConfig, TokenStatus};

const NO_PASSWORD: &str = "<use --generate-password to generate a new password>";

#[derive(clap::Args)]
pub struct GetSettingsArgs {
    /// The child connected registry's name (5 to 40 letters and digits).
    name: String,
    /// The parent's configuration file, where the child's sync token is kept.
    #[arg(long, env = "CONNECTED_REGISTRY_CONFIG")]
    config: PathBuf,
    /// Repositories (names or `prefix/*`) the child may sync; used when its token is created.
    #[arg(long, default_value = "*")]
    repository: Vec<String>,
    /// The child's mode: ReadWrite also gets content/write, content/delete and metadata/write.
    #[arg(long, value_parser = ["ReadOnly", "ReadWrite"], default_value = "ReadOnly")]
    mode: String,
    /// `host:port` the child reaches this parent at [default: the parent's loginServer].
    #[arg(long)]
    parent_endpoint: Option<String>,
    #[arg(long, value_parser = ["http", "https"], default_value = "https")]
    parent_protocol: String,
    /// Rotate the sync token's password (1 or 2, as ACR's two passwords; there is one here).
    #[arg(long, value_parser = ["1", "2"])]
    generate_password: Option<String>,
}

pub fn run(args: GetSettingsArgs) -> anyhow::Result<()> {
    let name = &args.name;
    anyhow::ensure!(
        connected_registry::config::is_registry_name(name),
        "{name:?} must be 5 to 40 letters and digits"
    );
    let config = if args.config.exists() {
        Config::from_file(&args.config)?
    } else {
        Config::default()
    };
    let exists = config.sync_tokens.iter().any(|t| t.name == *name);
    let mut shown = NO_PASSWORD.to_owned();
    if !exists {
        let mode = if args.mode == "ReadWrite" {
            Mode::ReadWrite
        } else {
            Mode::ReadOnly
        };
        let new_password = password::generate();
        let token = TokenConfig {
            name: name.clone(),
            password_hash: password::hash(&new_password).map_err(anyhow::Error::msg)?,
            status: TokenStatus::Enabled,
            actions: sync_actions(name, mode, &args.repository),
        };
        edit_tokens(&args.config, TokenEdit::Add(TokenKind::Sync, &token))?;
        eprintln!("sync token {name:?} created in {}", args.config.display());
        shown = new_password;
    } else if args.generate_password.is_some() {
        let new_password = password::generate();
        let hash = password::hash(&new_password).map_err(anyhow::Error::msg)?;
        edit_tokens(&args.config, TokenEdit::SetPasswordHash(name, &hash))?;
        eprintln!("sync token {name:?}: password rotated; the old one stops working now");
        shown = new_password;
    }
    let gateway = args
        .parent_endpoint
        .clone()
        .or(config.login_server.clone())
        .unwrap_or_else(|| "<parent gateway endpoint>".to_owned());
    let connection = ConnectionString {
        registry_name: name.clone(),
        sync_token_name: name.clone(),
        sync_token_password: shown.clone(),
        parent_gateway_endpoint: gateway,
        parent_protocol: args.parent_protocol.clone(),
    };
    let settings = serde_json::json!({
        "SYNC_TOKEN_USER": name,
        "SYNC_TOKEN_PASSWORD": shown,
        "ACR_REGISTRY_CERTIFICATE_VOLUME": "/var/acr/certs",
        "ACR_REGISTRY_DATA_VOLUME": "/var/acr/data",
        "ACR_REGISTRY_CONNECTION_STRING": connection.render(),
        "ACR_REGISTRY_LOGIN_SERVER": "<Optional: connected registry login server. More info at https://aka.ms/acr/connected-registry>",
    });
    println!("{}", serde_json::to_string_pretty(&settings)?);
    Ok(())
}

/// The actions a child's sync token needs: its gateway, and per repository what its mode does.
fn sync_actions(name: &str, mode: Mode, repositories: &[String]) -> Vec<String> {
    let mut actions: Vec<String> = [
        "config/read",
        "config/write",
        "message/read",
        "message/write",
    ]
    .iter()
    .map(|a| format!("gateway/{name}/{a}"))
    .collect();
    let verbs: &[&str] = match mode {
        Mode::ReadOnly => &["content/read", "metadata/read"],
        Mode::ReadWrite => &[
            "content/read",
            "content/write",
            "content/delete",
            "metadata/read",
            "metadata/write",
        ],
    };
    for repository in repositories {
        actions.extend(
            verbs
                .iter()
                .map(|v| format!("repositories/{repository}/{v}")),
        );
    }
    actions
}
