//! The `connected-registry` command line. Parsing and wiring only; the work lives in the library
//! (and the smaller commands in [`cli`]).

mod cli;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use connected_registry::config::Config;
use connected_registry::status::StatusHandle;
use connected_registry::store::Store;

/// jemalloc replaces malloc for the whole process (linked unprefixed: Rust's system allocator and
/// the C code both use it; as Rust's global allocator instead, zeroed allocations lost their
/// fold into `calloc` and sled's 20 MiB of metric histograms were written out at start). Under
/// glibc a waiting long-poll held 15 KB (jemalloc: 11 KB: untouched pages of a connection's
/// buffers stay untouched), a fifth of a busy root's CPU went to glibc's arena locks and free
/// lists, and tens of MiB of freed blocks stayed after a burst of load (BENCHMARKS.md, "Scale").
use tikv_jemalloc_sys as _;

/// jemalloc's options, read before `main`: a background thread hands freed pages back to the
/// system within about a second (`dirty_decay_ms`, `muzzy_decay_ms`), so a node is small again
/// soon after a burst of pulls without anything in the request path doing it. `MALLOC_CONF`
/// in the environment is applied after these.
#[export_name = "malloc_conf"]
static JEMALLOC_OPTIONS: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
    Serve(cli::serve::ServeArgs),
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
    /// Free unreferenced blobs and untagged manifests of a stopped node's data directory.
    Gc(cli::gc::GcArgs),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Status(args) => cli::remote::show_status(args),
        Command::Sync(args) => sync_once(args),
        Command::Token(command) => cli::token::run(command),
        Command::Deactivate(args) => cli::remote::deactivate(args),
        Command::GetSettings(args) => cli::settings::run(args),
        Command::Gc(args) => cli::gc::run(args),
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
    cli::logging::init(&config, cli::logging::LogFormat::Text, "warn")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let failed = runtime.block_on(async move {
        let store = Store::open_with_cache(&config.data_dir(), config.metadata_cache()?)?;
        let status = StatusHandle::new(connected_registry::node::initial_status(&config, config.listen_addr()?));
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
                    p.blobs.done, p.blobs.total, connected_registry::store::usage::human_bytes(p.bytes.done), summary.failures.len()
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
