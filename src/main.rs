//! The `connected-registry` command line. Parsing and wiring only; the work lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use connected_registry::api::Api;
use connected_registry::config::{self, Config};
use connected_registry::server;
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
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
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
    init_logging(&config, args.log_format)?;

    let addr = config.listen_addr()?;
    server::check_anonymous_allowed(addr)?;
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
        let api = Arc::new(Api::new(store.clone()));
        server::serve(listener, tls, api, server::shutdown_signal()).await?;
        store.flush().await?;
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    })
}

fn init_logging(config: &Config, format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::try_new(f).context("invalid RUST_LOG")?,
        _ => {
            let level = match &config.logging {
                Some(l) => config::tracing_filter(&l.level)?,
                None => "info",
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
