//! `connected-registry token create|list|delete|enable|disable`: tokens in a node's
//! configuration file (or, with `--twin`, as JSON for a module twin). The password is generated
//! here, printed once, and only its hash is written.

use std::path::PathBuf;

use clap::Subcommand;
use connected_registry::config::{self, Config};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token: prints its password once and writes only its hash to the configuration
    /// file (or, with --twin, prints the JSON to put in the module twin's desired properties).
    /// Example: token create --name line1 --repository 'apps/*' content/read metadata/read
    Create(TokenCreateArgs),
    /// List the tokens of a configuration file (names, status and actions; never hashes).
    List(TokenFileArgs),
    /// Remove a token; it stops working at once on a node serving this file.
    Delete(TokenNameArgs),
    /// Let a disabled token log in again.
    Enable(TokenNameArgs),
    /// Stop a token from working (at once on a node serving this file), keeping its entry.
    Disable(TokenNameArgs),
}

#[derive(clap::Args)]
pub struct TokenFileArgs {
    /// The node's configuration file (TOML or JSON; created if missing).
    #[arg(long, env = "CONNECTED_REGISTRY_CONFIG")]
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct TokenNameArgs {
    #[arg(long)]
    name: String,
    #[command(flatten)]
    file: TokenFileArgs,
}

#[derive(clap::Args)]
pub struct TokenCreateArgs {
    /// Token name (letters, digits, '-' and '_').
    #[arg(long)]
    name: String,
    /// A repository (or `prefix/*`, or `*`) followed by its actions: content/read,
    /// content/write, content/delete, metadata/read, metadata/write. Repeatable.
    #[arg(long, num_args = 2.., value_names = ["PATTERN", "ACTION"], action = clap::ArgAction::Append)]
    repository: Vec<String>,
    /// A child connected registry (or `*`) followed by its actions: config/read, config/write,
    /// message/read, message/write. Repeatable; makes the token a sync token.
    #[arg(long, num_args = 2.., value_names = ["REGISTRY", "ACTION"], action = clap::ArgAction::Append)]
    gateway: Vec<String>,
    /// A whole ACR action string, e.g. repositories/apps/*/content/read. Repeatable.
    #[arg(long)]
    action: Vec<String>,
    /// Store it as a sync token (for a child) even without --gateway.
    #[arg(long)]
    sync: bool,
    /// Print the module twin JSON instead of writing a configuration file.
    #[arg(long, conflicts_with = "config")]
    twin: bool,
    /// The configuration file to write the hashed entry to.
    #[arg(
        long,
        env = "CONNECTED_REGISTRY_CONFIG",
        required_unless_present = "twin"
    )]
    config: Option<PathBuf>,
}

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    use config::edit::{edit_tokens, TokenEdit, TokenKind};
    match command {
        TokenCommand::Create(args) => {
            let mut actions = args.action.clone();
            let repository_verbs: Vec<&str> = config::RepositoryAction::ALL
                .iter()
                .map(|a| a.as_str())
                .collect();
            let gateway_verbs: Vec<&str> = config::GatewayAction::ALL
                .iter()
                .map(|a| a.as_str())
                .collect();
            for (kind, words, verbs) in [
                ("repositories", &args.repository, &repository_verbs),
                ("gateway", &args.gateway, &gateway_verbs),
            ] {
                // `--repository a content/read --repository b content/read` arrives as one list:
                // a word that is not an action starts the next target.
                let mut target: Option<(&str, usize)> = None;
                for word in words.iter().map(String::as_str).chain([""]) {
                    match target {
                        Some((t, n)) if verbs.contains(&word) => {
                            actions.push(format!("{kind}/{t}/{word}"));
                            target = Some((t, n + 1));
                        }
                        Some((t, 0)) => anyhow::bail!(
                            "{t:?} must be followed by its actions, and {word:?} is not one of {}",
                            verbs.join(", ")
                        ),
                        _ => target = Some((word, 0)),
                    }
                }
            }
            anyhow::ensure!(!actions.is_empty(), "give the token at least one action (--repository PATTERN ACTION… or --gateway REGISTRY ACTION…)");
            let password = connected_registry::auth::password::generate();
            let entry = config::TokenConfig {
                name: args.name.clone(),
                password_hash: connected_registry::auth::password::hash(&password)
                    .map_err(anyhow::Error::msg)?,
                status: config::TokenStatus::Enabled,
                actions,
            };
            let kind = if args.sync || !args.gateway.is_empty() {
                TokenKind::Sync
            } else {
                TokenKind::Client
            };
            // Validate the entry alone first so a bad action is reported before anything else.
            config::tokens::validate_tokens(kind.field(), std::slice::from_ref(&entry), None)?;
            match &args.config {
                Some(path) if !args.twin => {
                    edit_tokens(path, TokenEdit::Add(kind, &entry))?;
                    eprintln!(
                        "token {:?} written to {} ({}); its password, shown only now:",
                        entry.name,
                        path.display(),
                        kind.field()
                    );
                    println!("{password}");
                }
                _ => {
                    let twin = serde_json::json!({ kind.field(): [entry] });
                    eprintln!("add this to the module twin's desired properties (merge the list with the tokens already there); the password, shown only now, is {password}");
                    println!("{}", serde_json::to_string_pretty(&twin)?);
                }
            }
        }
        TokenCommand::List(args) => {
            let config = Config::from_file(&args.config)?;
            println!("{:<24} {:<7} {:<9} ACTIONS", "NAME", "KIND", "STATUS");
            for (kind, list) in [
                ("client", &config.client_tokens),
                ("sync", &config.sync_tokens),
            ] {
                for t in list {
                    let status = match t.status {
                        config::TokenStatus::Enabled => "enabled",
                        config::TokenStatus::Disabled => "disabled",
                    };
                    println!(
                        "{:<24} {:<7} {:<9} {}",
                        t.name,
                        kind,
                        status,
                        t.actions.join(" ")
                    );
                }
            }
        }
        TokenCommand::Delete(args) => {
            edit_tokens(&args.file.config, TokenEdit::Remove(&args.name))?;
            eprintln!(
                "token {:?} removed from {}",
                args.name,
                args.file.config.display()
            );
        }
        TokenCommand::Enable(args) => {
            edit_tokens(
                &args.file.config,
                TokenEdit::SetStatus(&args.name, config::TokenStatus::Enabled),
            )?;
            eprintln!("token {:?} enabled", args.name);
        }
        TokenCommand::Disable(args) => {
            edit_tokens(
                &args.file.config,
                TokenEdit::SetStatus(&args.name, config::TokenStatus::Disabled),
            )?;
            eprintln!("token {:?} disabled", args.name);
        }
    }
    Ok(())
}
