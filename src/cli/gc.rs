//! `connected-registry gc [--dry-run]`: garbage collection of a stopped node's data directory,
//! printing every manifest and blob it frees with its size. A running node collects on its own
//! schedule (`garbageCollection.schedule`) and on the `gc` direct method; its data directory is
//! locked while it runs, and this command says so.

use std::path::PathBuf;

use anyhow::Context;
use connected_registry::config::Config;
use connected_registry::node::gc::Collector;
use connected_registry::store::Store;

#[derive(clap::Args)]
pub struct GcArgs {
    /// Only print what would be freed.
    #[arg(long)]
    dry_run: bool,
    /// Configuration file (for `dataDir` and `garbageCollection.gracePeriod`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where blobs and metadata live [default: ./data].
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME")]
    data_dir: Option<PathBuf>,
}

pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    }
    let gc = config.garbage_collection()?;
    let upload_max_age = config.limits()?.upload_session_max_age;
    let metadata_cache = config.metadata_cache()?;
    super::logging::init(&config, super::logging::LogFormat::Text, "warn")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let dir = config.data_dir();
        let store = Store::open_with_cache(&dir, metadata_cache).with_context(|| {
            format!(
                "cannot open {dir:?}; if a node is running on it, it collects garbage on its own \
                 schedule (or call its `gc` direct method under IoT Edge)"
            )
        })?;
        store.set_grace_period(gc.grace_period);
        let report = Collector::new(store.clone(), upload_max_age)
            .run(args.dry_run)
            .await?;
        let verb = if args.dry_run { "would free" } else { "freed" };
        for (repo, digest) in &report.manifests {
            println!("manifest  {repo}@{digest}");
        }
        for (digest, size) in &report.blobs {
            println!("blob      {digest}  {size} bytes ({})", connected_registry::store::usage::human_bytes(*size));
        }
        println!(
            "{verb} {} in {} blob file(s); {} untagged manifest(s), {} blob link(s), {} manifest record(s); {:.1}s",
            connected_registry::store::usage::human_bytes(report.freed_bytes()),
            report.blobs.len(),
            report.manifests.len(),
            report.blob_links,
            report.manifest_records,
            report.elapsed.as_secs_f64()
        );
        anyhow::Ok(())
    })
}
