//! `connected-registry serve`: put the configuration together (file, environment, command line,
//! and under IoT Edge the module twin), open the store, start the node and serve until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use connected_registry::api::Api;
use connected_registry::auth::Authenticator;
use connected_registry::config::{self, Config};
use connected_registry::edge::{self, ModuleEnvironment};
use connected_registry::node::{initial_status, ConfigSource, Node, NodeOptions};
use connected_registry::server;
use connected_registry::status::StatusHandle;
use connected_registry::store::Store;

use super::logging::{self, LogFormat};

#[derive(clap::Args)]
pub struct ServeArgs {
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
    /// Under IoT Edge: serve HTTPS with a certificate the workload API issues (signed by the
    /// edge CA), renewed before it expires.
    #[arg(long, conflicts_with = "tls_cert")]
    tls_from_workload: bool,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// What the command line pins, whatever the configuration says.
#[derive(Clone)]
struct Overrides {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    tls: Option<config::TlsConfig>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = Some(listen.to_string());
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = Some(dir.clone());
        }
        if let Some(tls) = &self.tls {
            config.tls = Some(tls.clone());
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    config::limits::raise_open_files_limit();
    let env = |k: &str| std::env::var(k).ok();
    let module = ModuleEnvironment::from_env(env)?;
    let file_config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        tls: match (args.tls_cert.clone(), args.tls_key.clone()) {
            (Some(certificate), Some(key)) => Some(config::TlsConfig::from_files(certificate, key)),
            _ if args.tls_from_workload => Some(config::TlsConfig {
                from_workload: true,
                ..Default::default()
            }),
            _ => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Under IoT Edge the parent is trusted through the edge CA, and the last configuration
        // the twin gave is used until edgeHub answers again.
        let trust_bundle = match &module {
            Some(module) => module.trust_bundle_at_start().await,
            None => None,
        };
        let complete = {
            let overrides = overrides.clone();
            let module = module.clone();
            move |c: &mut Config| {
                config::bootstrap::apply_environment(c, |k| std::env::var(k).ok())?;
                overrides.apply(c);
                if let Some(module) = &module {
                    edge::complete_config(c, module, trust_bundle.as_deref())?;
                }
                Ok(())
            }
        };
        let mut config = file_config.clone();
        overrides.apply(&mut config);
        // Before the store opens, so what opening says (a migration, a clean-up after an
        // unclean stop) is logged; a level saved by the twin applies once it is read.
        let log_level = logging::init(&config, args.log_format, "info")?;
        let opening_logging = config.logging.clone();
        let data_dir = config.data_dir();
        let opened_with = config.metadata_cache()?;
        let mut store = Store::open_with_cache(&data_dir, opened_with)?;
        let mut source = if args.config.is_some() {
            ConfigSource::File
        } else {
            ConfigSource::Default
        };
        if module.is_some() {
            if let Some(saved) = edge::saved_config(&store) {
                config = saved;
                source = ConfigSource::Twin;
            }
        }
        complete(&mut config)?;
        if config::bootstrap::has_environment(|k| std::env::var(k).ok())
            && source == ConfigSource::Default
        {
            source = ConfigSource::Environment;
        }
        config.validate()?;
        // The twin's configuration is kept in the store, so a metadata cache it sets is known
        // only once the store is open: open it again with that size.
        let metadata_cache = config.metadata_cache()?;
        if metadata_cache != opened_with {
            drop(store);
            store = reopen(&data_dir, metadata_cache).await?;
        }
        tracing::info!(
            metadata_cache = %bytesize::ByteSize::b(store.metadata_cache()).to_string_as(true),
            "metadata index open"
        );
        let limits = config.limits()?;
        if let (Some(set), Some(logging)) = (&log_level, &config.logging) {
            if opening_logging.as_ref() != Some(logging) {
                set(&logging.level).map_err(|e| anyhow::anyhow!("logging.level: {e}"))?;
            }
        }

        let addr = config.listen_addr()?;
        if let Err(refused) = server::check_anonymous_allowed(addr, &config) {
            // A module's credentials come from its twin, which is read after the start.
            if module.is_none() {
                return Err(refused);
            }
            tracing::warn!(
                %addr,
                "no client credentials yet: every request is refused until the module twin gives clientTokens or anonymousPull"
            );
        }
        let tls = match &config.tls {
            None => None,
            Some(t) => match (t.files(), &module) {
                (Some((cert, key)), _) => Some(server::tls_acceptor(cert, key)?),
                (None, Some(module)) => {
                    let workload = module.workload().cloned().context(
                        "tls.fromWorkload needs the IoT Edge runtime's workload API (IOTEDGE_WORKLOADURI)",
                    )?;
                    let name = t
                        .common_name
                        .clone()
                        .or_else(|| {
                            let login = config.login_server.as_deref()?;
                            Some(login.rsplit_once(':').map_or(login, |(h, _)| h).to_owned())
                        })
                        .unwrap_or_else(|| module.gateway_hostname.clone());
                    let cert = edge::server_cert::start(workload, name).await?;
                    Some(server::tls_acceptor_for(cert))
                }
                (None, None) => anyhow::bail!(
                    "tls.fromWorkload needs the IoT Edge runtime (the IOTEDGE_* variables are not set)"
                ),
            },
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(
            %addr,
            tls = tls.is_some(),
            data_dir = %config.data_dir().display(),
            version = env!("CARGO_PKG_VERSION"),
            module = module.is_some(),
            "registry listening"
        );
        // A ReadWrite child records its clients' pushes and deletes for the parent.
        store.set_upstream(
            config.parent.is_some() && config.effective_mode() == config::Mode::ReadWrite,
        );
        let status = StatusHandle::new(initial_status(&config, addr));
        let loopback = addr.ip().is_loopback();
        let auth = Arc::new(Authenticator::new(&config, loopback));
        let service = config
            .login_server
            .clone()
            .or_else(|| config.name.clone())
            .unwrap_or_else(|| "connected-registry".to_owned());
        let api = Arc::new(
            Api::new(store.clone(), status)
                .mode(config.effective_mode())
                .auth(auth.clone(), service, tls.is_some())
                .limits(limits),
        );
        let node = Node::start(
            config.clone(),
            NodeOptions {
                source,
                store: store.clone(),
                api: api.clone(),
                auth,
                loopback,
                log_level,
                complete: Box::new(complete),
            },
        )?;
        if let Some(path) = args.config.clone() {
            // `connected-registry token …` and any edit of the file apply without a restart.
            let node = node.clone();
            config::watch::spawn_file_watch(path, file_config, move |new: &Config| {
                let node = node.clone();
                let new = new.clone();
                tokio::spawn(async move {
                    let _ = node.apply(new, ConfigSource::File).await;
                });
            });
        }
        let (stop_edge, edge_stopped) = tokio::sync::watch::channel(false);
        let edge = module.map(|module| edge::spawn(module, node.clone(), edge_stopped));
        connected_registry::store::changes::spawn_pruner(store.clone());
        connected_registry::store::sweep::spawn_sweeper(
            store.clone(),
            limits.upload_session_max_age,
        );
        let stopping = api.clone();
        let shutdown = async move {
            server::shutdown_signal().await;
            stopping.stop_long_polls();
        };
        server::serve(listener, tls, api, limits, shutdown).await?;
        node.stop().await;
        let _ = stop_edge.send(true);
        if let Some(edge) = edge {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), edge).await;
        }
        store.flush().await?;
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    })
}

/// Open the store at `data_dir` again, just after dropping it. A background walk of the blob
/// files may hold the old store for an instant (it upgrades a weak reference to count what it
/// found), and sled refuses a second opener meanwhile: retry for a moment.
async fn reopen(data_dir: &std::path::Path, metadata_cache: u64) -> anyhow::Result<Arc<Store>> {
    let mut attempts = 0;
    loop {
        match Store::open_with_cache(data_dir, metadata_cache) {
            Ok(store) => return Ok(store),
            Err(e) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(error = %e, "reopening the store");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
