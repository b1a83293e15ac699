//! Load tool for `bench/big.sh`: seed a registry with many repositories, tags and manifests over
//! its API, then measure what a big registry costs to list and to read.
//!
//! It exists because seeding 200,000 manifests one `curl` at a time takes an hour, and
//! listings must be walked page by page (`n`/`last`) with every page timed and checked.
//!
//! `seed`: repositories `big/r00000…`, each with one config blob, `--tags` tagged manifests
//! (`v0…`) and `--untagged` manifests pushed by digest, on `--concurrency` connections.
//! `--stride K` seeds only every K-th repository (the same bytes), for a parent holding just
//! what a child selects. `measure`: walks `_catalog` and the `tags/list` of sampled
//! repositories page by page (checking every page is complete and ordered), then GETs random
//! tagged manifests on `--concurrency` connections for `--seconds`. Prints one JSON object.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

#[path = "http1.rs"]
mod http1;
use http1::Conn;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Parser)]
struct Args {
    /// The registry, `127.0.0.1:5000`.
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = 10_000)]
    repos: usize,
    #[arg(long, default_value_t = 10)]
    tags: usize,
    #[arg(long, default_value_t = 10)]
    untagged: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Seed {
        #[arg(long, default_value_t = 1)]
        stride: usize,
    },
    Measure {
        /// Page size (`n`) of the listings.
        #[arg(long, default_value_t = 100)]
        page: usize,
        /// Repositories whose tags are listed.
        #[arg(long, default_value_t = 200)]
        tag_samples: usize,
        /// Seconds of manifest GETs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Skip the first pass, which GETs every tagged manifest once, in a scattered order,
        /// before the timed GETs (its rate is reported as the cold rate).
        #[arg(long)]
        no_first_pass: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = match &args.command {
        Command::Seed { stride } => seed(&args, *stride).await?,
        Command::Measure {
            page,
            tag_samples,
            seconds,
            no_first_pass,
        } => measure(&args, *page, *tag_samples, !*no_first_pass, *seconds).await?,
    };
    println!("{out}");
    Ok(())
}

fn repo_name(i: usize) -> String {
    format!("big/r{i:05}")
}

fn config(i: usize) -> Vec<u8> {
    format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"repo":{i}}}"#)
        .into_bytes()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn manifest(repo: usize, n: usize, config: &[u8]) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": config.len()},
        "layers": [],
        "annotations": {"repo": repo.to_string(), "n": n.to_string()},
    })
    .to_string()
    .into_bytes()
}

async fn seed(args: &Args, stride: usize) -> anyhow::Result<Value> {
    let started = Instant::now();
    let repos: Vec<usize> = (0..args.repos).step_by(stride.max(1)).collect();
    let chunks: Vec<Vec<usize>> = (0..args.concurrency)
        .map(|w| {
            repos
                .iter()
                .copied()
                .skip(w)
                .step_by(args.concurrency)
                .collect()
        })
        .collect();
    let mut workers = Vec::new();
    for mine in chunks {
        let (addr, tags, untagged) = (args.addr.clone(), args.tags, args.untagged);
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            for i in mine {
                seed_repo(&mut conn, i, tags, untagged).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let manifests = repos.len() * (args.tags + args.untagged);
    Ok(json!({
        "repositories": repos.len(),
        "tags": repos.len() * args.tags,
        "manifests": manifests,
        "seconds": seconds,
        "manifestsPerSecond": manifests as f64 / seconds,
    }))
}

async fn seed_repo(conn: &mut Conn, i: usize, tags: usize, untagged: usize) -> anyhow::Result<()> {
    let repo = repo_name(i);
    let config = config(i);
    let path = format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(&config));
    conn.send("POST", &path, Some(&config)).await?;
    let (status, _, location) = conn.read_with_location().await?;
    if status == 202 {
        // No single-POST upload (distribution): PUT the bytes to the session.
        let location = location.ok_or_else(|| anyhow::anyhow!("202 without Location"))?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", sha256(&config));
        conn.send_typed("PUT", &put, &config, "application/octet-stream")
            .await?;
        let (status, _) = conn.read().await?;
        anyhow::ensure!(status == 201, "config of {repo} (PUT): {status}");
    } else {
        anyhow::ensure!(status == 201, "config of {repo}: {status}");
    }
    for n in 0..tags + untagged {
        let body = manifest(i, n, &config);
        let reference = if n < tags {
            format!("v{n}")
        } else {
            sha256(&body)
        };
        let path = format!("/v2/{repo}/manifests/{reference}");
        conn.send_typed("PUT", &path, &body, OCI_MANIFEST).await?;
        let (status, answer) = conn.read().await?;
        anyhow::ensure!(
            status == 201,
            "{repo}:{reference}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(())
}

/// Walk a paged listing (`key` names the array), timing each page; returns every entry.
async fn walk(
    conn: &mut Conn,
    path: &str,
    key: &str,
    page: usize,
    times: &mut Vec<Duration>,
) -> anyhow::Result<Vec<String>> {
    let mut all: Vec<String> = Vec::new();
    loop {
        let mut url = format!("{path}?n={page}");
        if let Some(last) = all.last() {
            url.push_str(&format!("&last={last}"));
        }
        let t0 = Instant::now();
        conn.send("GET", &url, None).await?;
        let (status, body) = conn.read().await?;
        times.push(t0.elapsed());
        anyhow::ensure!(status == 200, "{url}: {status}");
        let doc: Value = serde_json::from_slice(&body)?;
        let entries: Vec<String> = doc[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        anyhow::ensure!(entries.len() <= page, "{url}: {} entries", entries.len());
        let done = entries.len() < page;
        all.extend(entries);
        if done {
            break;
        }
    }
    anyhow::ensure!(
        all.windows(2).all(|w| w[0] < w[1]),
        "{path}: not in order or repeated"
    );
    Ok(all)
}

async fn measure(
    args: &Args,
    page: usize,
    tag_samples: usize,
    first_pass: bool,
    seconds: u64,
) -> anyhow::Result<Value> {
    let mut conn = Conn::connect(&args.addr).await?;
    let mut catalog_times = Vec::new();
    let t0 = Instant::now();
    let names = walk(
        &mut conn,
        "/v2/_catalog",
        "repositories",
        page,
        &mut catalog_times,
    )
    .await?;
    let catalog_seconds = t0.elapsed().as_secs_f64();
    let expected: Vec<String> = (0..args.repos).map(repo_name).collect();
    anyhow::ensure!(
        names == expected,
        "the catalog lists {} names, {} expected",
        names.len(),
        expected.len()
    );
    let mut tag_times = Vec::new();
    let step = (args.repos / tag_samples.max(1)).max(1);
    for i in (0..args.repos).step_by(step) {
        let path = format!("/v2/{}/tags/list", repo_name(i));
        let tags = walk(&mut conn, &path, "tags", page, &mut tag_times).await?;
        anyhow::ensure!(tags.len() == args.tags, "{path}: {} tags", tags.len());
    }
    let (cold_gets, cold_seconds) = if first_pass {
        every_tag_once(args).await?
    } else {
        (0, 1.0)
    };
    let (gets, get_seconds) = manifest_gets(args, seconds).await?;
    Ok(json!({
        "repositories": names.len(),
        "catalogPages": catalog_times.len(),
        "catalogSeconds": catalog_seconds,
        "catalogPageMs": percentiles(&mut catalog_times),
        "tagsListPages": tag_times.len(),
        "tagsListPageMs": percentiles(&mut tag_times),
        "manifestGets": gets,
        "manifestGetsPerSecond": gets as f64 / get_seconds,
        "manifestGetsPerSecondCold": cold_gets as f64 / cold_seconds,
    }))
}

/// GET every tagged manifest once on `concurrency` connections, in a scattered order (the
/// `n`-th GET is tag `n · STRIDE mod total`, `STRIDE` a prime that divides no count used here),
/// so that neighbouring keys are not read one after the other.
async fn every_tag_once(args: &Args) -> anyhow::Result<(u64, f64)> {
    const STRIDE: u64 = 1_000_003;
    let total = (args.repos * args.tags) as u64;
    anyhow::ensure!(
        !total.is_multiple_of(STRIDE),
        "{total} tags: pick another stride"
    );
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency as u64 {
        let (addr, tags, step) = (args.addr.clone(), args.tags as u64, args.concurrency as u64);
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            let mut done = 0u64;
            for n in (w..total).step_by(step as usize) {
                let i = n * STRIDE % total;
                get_tagged(&mut conn, (i / tags) as usize, i % tags).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let total_done = sum_of(workers).await?;
    anyhow::ensure!(
        total_done == total,
        "{total_done} of {total} tags were pulled"
    );
    Ok((total_done, started.elapsed().as_secs_f64()))
}

/// GET random tagged manifests on `concurrency` connections for `seconds`.
async fn manifest_gets(args: &Args, seconds: u64) -> anyhow::Result<(u64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (addr, repos, tags) = (args.addr.clone(), args.repos, args.tags.max(1));
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            let mut done = 0u64;
            while Instant::now() < deadline {
                // xorshift: a spread of repositories and tags, the same on every run.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let repo = (state % repos as u64) as usize;
                get_tagged(&mut conn, repo, (state >> 32) % tags as u64).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let total = sum_of(workers).await?;
    Ok((total, started.elapsed().as_secs_f64()))
}

/// GET the manifest tagged `v{tag}` in repository `repo`; anything but a 200 is an error.
async fn get_tagged(conn: &mut Conn, repo: usize, tag: u64) -> anyhow::Result<()> {
    let path = format!("/v2/{}/manifests/v{tag}", repo_name(repo));
    conn.send_accept(&path, OCI_MANIFEST).await?;
    let (status, _) = conn.read().await?;
    anyhow::ensure!(status == 200, "{path}: {status}");
    Ok(())
}

/// The sum of what the workers counted; the first error if one failed.
async fn sum_of(workers: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>) -> anyhow::Result<u64> {
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    Ok(total)
}

fn percentiles(times: &mut [Duration]) -> Value {
    times.sort();
    let at = |q: f64| -> f64 {
        if times.is_empty() {
            return f64::NAN;
        }
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1000.0
    };
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}
