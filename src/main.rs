//! The `connected-registry` command line. Parsing and wiring only; the work lives in the library
//! (and the smaller commands in [`cli`]).

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use connected_registry::api::Api;
use connected_registry::auth::Authenticator;
use connected_registry::config::{self, Config};
use connected_registry::server;
use connected_registry::status::{self, Status, StatusHandle};
use connected_registry::store::Store;

#[derive(Parser)]
#[command(
    name = "connected-registry",
    version,
    about = "An on-premises OCI registry that syncs with a parent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve(ServeArgs),
    /// Show a running node's status (or, with --children, its children) as a table.
    Status(cli::remote::StatusArgs),
    /// Run one sync pass with the parent (progress bar and summary), then exit; non-zero if
    /// anything failed. The data directory must not be in use by a running `serve`.
    Sync(SyncArgs),
    /// Client tokens and children's sync tokens: create, list, delete, enable, disable.
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
    /// Let another instance of child NAME activate at this (parent) node.
    Deactivate(cli::remote::DeactivateArgs),
    /// On a parent: the settings (connection string) a child NAME starts from, creating its
    /// sync token the first time.
    GetSettings(cli::settings::GetSettingsArgs),
}

#[derive(clap::Args)]
struct SyncArgs {
    /// One pass, then exit (a running `serve` syncs continuously by itself).
    #[arg(long, required = true)]
    once: bool,
    /// Configuration file with the `parent` section.
    #[arg(long)]
    config: PathBuf,
    /// Where blobs and metadata live [default: ./data].
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML or JSON).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where blobs and metadata live [default: ./data].
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME")]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain; serves HTTPS (HTTP/2 and HTTP/1.1) when given with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Status(args) => cli::remote::show_status(args),
        Command::Sync(args) => sync_once(args),
        Command::Token(command) => cli::token::run(command),
        Command::Deactivate(args) => cli::remote::deactivate(args),
        Command::GetSettings(args) => cli::settings::run(args),
    }
}

fn sync_once(args: SyncArgs) -> anyhow::Result<()> {
    let _ = args.once;
    let mut config = Config::from_file(&args.config)?;
    if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    }
    let parent = config
        .parent
        .clone()
        .context("the configuration has no `parent` section: there is nothing to sync from")?;
    init_logging_at(&config, LogFormat::Text, "warn")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let failed = runtime.block_on(async move {
        let store = Store::open(&config.data_dir())?;
        let status = StatusHandle::new(initial_status(&config, config.listen_addr()?));
        let (engine, _schedule) = connected_registry::sync::setup::build(&parent, store.clone(), status)?;
        let started = std::time::Instant::now();
        let result = connected_registry::sync::setup::run_once(&engine).await;
        store.flush().await?;
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(summary) => {
                let p = &summary.progress;
                println!(
                    "sync finished in {elapsed:.1}s: repositories {}/{}, manifests {}/{}, blobs {}/{}, {} downloaded, {} failure(s)",
                    p.repositories.done, p.repositories.total, p.manifests.done, p.manifests.total,
                    p.blobs.done, p.blobs.total, bytesize::ByteSize(p.bytes.done), summary.failures.len()
                );
                for failure in &summary.failures {
                    println!("  failed: {failure}");
                }
                anyhow::Ok(!summary.failures.is_empty())
            }
            Err(e) => {
                println!("sync failed after {elapsed:.1}s [{}]: {e}", e.code());
                anyhow::Ok(true)
            }
        }
    })?;
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    // ACR's container variables (ACR_REGISTRY_CONNECTION_STRING, …) fill what the file leaves out.
    config::bootstrap::apply_environment(&mut config, |k| std::env::var(k).ok())?;
    if let Some(listen) = args.listen {
        config.listen = Some(listen.to_string());
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    }
    if let (Some(certificate), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(config::TlsConfig { certificate, key });
    }
    config.validate()?;
    let limits = config.limits()?;
    init_logging(&config, args.log_format)?;

    let addr = config.listen_addr()?;
    server::check_anonymous_allowed(addr, &config)?;
    let tls = config
        .tls
        .as_ref()
        .map(|t| server::tls_acceptor(&t.certificate, &t.key))
        .transpose()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let data_dir = config.data_dir();
        let store = Store::open(&data_dir)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(
            %addr,
            tls = tls.is_some(),
            data_dir = %data_dir.display(),
            version = env!("CARGO_PKG_VERSION"),
            "registry listening"
        );
        // A ReadWrite child records its clients' pushes and deletes for the parent.
        store.set_upstream(
            config.parent.is_some() && config.effective_mode() == config::Mode::ReadWrite,
        );
        let status = StatusHandle::new(initial_status(&config, addr));
        let loopback = addr.ip().is_loopback();
        let auth = Arc::new(Authenticator::new(&config, loopback));
        if let Some(path) = args.config.clone() {
            // Token changes (`connected-registry token …`) apply without a restart.
            let auth = auth.clone();
            config::watch::spawn_file_watch(path, config.clone(), move |new: &Config| {
                auth.reconfigure(new, loopback);
            });
        }
        let service = config
            .login_server
            .clone()
            .or_else(|| config.name.clone())
            .unwrap_or_else(|| "connected-registry".to_owned());
        let api = Arc::new(
            Api::new(store.clone(), status)
                .mode(config.effective_mode())
                .auth(auth, service, tls.is_some())
                .limits(limits),
        );
        connected_registry::store::changes::spawn_pruner(store.clone());
        connected_registry::store::sweep::spawn_sweeper(
            store.clone(),
            limits.upload_session_max_age,
        );
        let (stop_sync, sync_stopped) = tokio::sync::watch::channel(false);
        let sync = match &config.parent {
            Some(parent) => Some(connected_registry::sync::setup::spawn(
                parent,
                config.name.clone().map(|n| (n, config.effective_mode())),
                store.clone(),
                api.status().clone(),
                sync_stopped,
            )?),
            None => None,
        };
        let stopping = api.clone();
        let shutdown = async move {
            server::shutdown_signal().await;
            stopping.stop_long_polls();
        };
        server::serve(listener, tls, api, limits, shutdown).await?;
        let _ = stop_sync.send(true);
        if let Some(sync) = sync {
            let _ = sync.await;
        }
        store.flush().await?;
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    })
}

/// What the node knows about itself at start; the parts update the rest as they run.
fn initial_status(config: &Config, addr: SocketAddr) -> Status {
    let now = chrono::Utc::now();
    let is_root = config.parent.is_none();
    let mode = config.effective_mode().as_str();
    Status {
        name: config.name.clone().unwrap_or_else(|| "root".to_owned()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: mode.to_owned(),
        activation: status::Activation {
            status: if is_root { "Active" } else { "Inactive" }.to_owned(),
            since: is_root.then_some(now),
        },
        connection_state: if is_root { "Online" } else { "Offline" }.to_owned(),
        last_activity_time: None,
        login_server: status::LoginServer {
            host: config
                .login_server
                .clone()
                .unwrap_or_else(|| addr.to_string()),
            tls: status::TlsStatus {
                status: if config.tls.is_some() {
                    "Enabled"
                } else {
                    "Disabled"
                }
                .to_owned(),
            },
        },
        parent: config.parent.as_ref().map(|p| status::ParentStatus {
            endpoint: p.endpoint.clone(),
            last_sync_time: None,
        }),
        ..Status::default()
    }
}

fn init_logging(config: &Config, format: LogFormat) -> anyhow::Result<()> {
    init_logging_at(config, format, "info")
}

fn init_logging_at(config: &Config, format: LogFormat, default_level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(f).context("invalid RUST_LOG")?,
        _ => {
            let level = match &config.logging {
                Some(l) => config::tracing_filter(&l.level)?,
                None => default_level,
            };
            EnvFilter::new(format!("warn,connected_registry={level}"))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
