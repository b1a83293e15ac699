//! Load client for `bench/scale.sh`: many children following one root's change feed at once.
//!
//! It exists because no off-the-shelf load tool holds thousands of HTTP long-polls open and
//! tells when each one saw a given event. Each simulated child is one task on one keep-alive
//! connection that asks `GET /acr/connected-registry/v1/changes?since=…&wait=30` again as soon
//! as an answer arrives, or with `--stream` asks once with `Upgrade: cr-changes/1` and reads
//! the page lines the root writes, as a real child does. With `--status-every`, each child is also
//! activated and reports its status (`PUT …/registries/{name}/status`) on a short connection of
//! its own, spread evenly over that period.
//!
//! Phases: connect every child and let its first long-poll wait; sample the root's RSS and CPU
//! (`--pid`) over an idle window; push `--pushes` manifests one at a time, each only once every
//! child has the previous one; then push at `--rate` per second for `--rate-seconds` from
//! `--pushers` connections at once. Prints
//! one JSON object: RSS/CPU figures, and p50/p99 of the time from a push's start to a child
//! having its event (over every child and push) and to all children having it (per push).
//!
//! `cargo build --release --example feed-load`, then see `bench/scale.sh`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use http1::Conn;
use serde_json::{json, Value};

#[path = "http1.rs"]
mod http1;

const FEED: &str = "/acr/connected-registry/v1/changes";
const REPO: &str = "scale/feed";

#[derive(Parser, Clone)]
struct Args {
    /// The root, `127.0.0.1:5000`.
    #[arg(long)]
    addr: String,
    /// Simulated children.
    #[arg(long, default_value_t = 1000)]
    children: usize,
    /// Pushes made one at a time (each after every child has the previous one).
    #[arg(long, default_value_t = 20)]
    pushes: usize,
    /// Then pushes per second for `--rate-seconds` (0: skip).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    rate_seconds: u64,
    /// Connections pushing at `--rate` at once (each push waits for its answer).
    #[arg(long, default_value_t = 1)]
    pushers: usize,
    /// Seconds of idle measurement with every long-poll waiting.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// The root's process id, for RSS and CPU from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Each child also activates and reports its status this often (seconds; 0: never).
    #[arg(long, default_value_t = 0)]
    status_every: u64,
    /// Children follow the feed as a stream (`Upgrade: cr-changes/1`, as a real child does
    /// against a connected-registry root) instead of by long-polls.
    #[arg(long)]
    stream: bool,
}

/// When each push started (index = push number).
struct Pushes {
    started: Mutex<Vec<Option<Instant>>>,
    /// Children that have each push's event.
    seen: Mutex<Vec<usize>>,
}

/// What every child records: (push number, when it had the event).
type Seen = Arc<Mutex<Vec<(usize, Instant)>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut http = Conn::connect(&args.addr).await?;
    let cursor = latest_seq(&mut http).await?;
    push_config(&mut http).await?;

    let rss_before = args.pid.map(rss_kib);
    let pushes = Arc::new(Pushes {
        started: Mutex::new(Vec::new()),
        seen: Mutex::new(Vec::new()),
    });
    let waiting = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(AtomicU64::new(0));
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let connect_started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.children {
        let addr = args.addr.clone();
        let (pushes, waiting, answers, seen) = (
            pushes.clone(),
            waiting.clone(),
            answers.clone(),
            seen.clone(),
        );
        let stream = args.stream;
        tasks.push(tokio::spawn(async move {
            let follow = Follow {
                pushes,
                answers,
                seen,
            };
            let followed = match stream {
                true => stream_child(i, &addr, cursor, follow, waiting).await,
                false => child(i, &addr, cursor, follow, waiting).await,
            };
            if let Err(e) = followed {
                eprintln!("child {i}: {e:#}");
            }
        }));
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    if args.status_every > 0 {
        // A real status document: the root's own, under each child's name (read once).
        let status = Arc::new(own_status(&args.addr).await?);
        for i in 0..args.children {
            let (addr, status) = (args.addr.clone(), status.clone());
            let every = Duration::from_secs(args.status_every);
            let offset = every.mul_f64(i as f64 / args.children as f64);
            tokio::spawn(async move { report_status(i, &addr, &status, every, offset).await });
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while waiting.load(Ordering::SeqCst) < args.children {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} children got their long-poll out",
            waiting.load(Ordering::SeqCst),
            args.children
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    // Let the server take in the last requests before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_waiting, cpu_idle) = match args.pid {
        Some(pid) => {
            let rss = rss_kib(pid);
            let cpu0 = cpu_seconds(pid);
            tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
            (
                Some(rss),
                Some((cpu_seconds(pid) - cpu0) / args.idle_seconds as f64),
            )
        }
        None => (None, None),
    };

    // One at a time: each push is awaited by every child before the next.
    for n in 0..args.pushes {
        push(&mut http, &pushes, n).await?;
        wait_all(&pushes, n, args.children, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let one_at_a_time = latency_report(&pushes, &seen, 0..args.pushes, args.children);

    let mut at_rate = Value::Null;
    if args.rate > 0 {
        let first = args.pushes;
        let count = (args.rate * args.rate_seconds) as usize;
        // The pushers are the root's other clients: on a runtime (and OS thread) of their own,
        // so their requests never queue behind the simulated children's reads.
        let pushing = std::thread::spawn({
            let (pushes, args) = (pushes.clone(), args.clone());
            move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(push_at_rate(&args, pushes, first, count))
            }
        });
        let pushing_seconds = tokio::task::spawn_blocking(move || pushing.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the pushing thread panicked"))??;
        for n in first..first + count {
            wait_all(&pushes, n, args.children, Duration::from_secs(60)).await?;
        }
        let mut report = latency_report(&pushes, &seen, first..first + count, args.children);
        report["pushesPerSecondAchieved"] = json!(count as f64 / pushing_seconds);
        at_rate = report;
    }
    let out = json!({
        "children": args.children,
        "connectSeconds": connect_seconds,
        "rootRssKiBBefore": rss_before,
        "rootRssKiBWaiting": rss_waiting,
        "rootRssBytesPerLongPoll": match (rss_before, rss_waiting) {
            (Some(b), Some(w)) => json!((w.saturating_sub(b)) as f64 * 1024.0 / args.children as f64),
            _ => Value::Null,
        },
        "rootCpuWhileWaiting": cpu_idle,
        "answers": answers.load(Ordering::SeqCst),
        "oneAtATime": one_at_a_time,
        "atRate": at_rate,
        "pushers": args.pushers,
        "statusReports": if args.status_every > 0 {
            json!({
                "activated": ACTIVATED.load(Ordering::SeqCst),
                "reported": STATUS_REPORTED.load(Ordering::SeqCst),
                "failed": STATUS_FAILED.load(Ordering::SeqCst),
            })
        } else {
            Value::Null
        },
    });
    println!("{out}");
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Children activated, status reports answered 2xx, and status reports that failed.
static ACTIVATED: AtomicU64 = AtomicU64::new(0);
static STATUS_REPORTED: AtomicU64 = AtomicU64::new(0);
static STATUS_FAILED: AtomicU64 = AtomicU64::new(0);

/// What every child shares: where the pushes' arrivals are noted.
struct Follow {
    pushes: Arc<Pushes>,
    answers: Arc<AtomicU64>,
    seen: Seen,
}

impl Follow {
    /// Note each push's event in `page` as arrived now; the cursor after it.
    fn page(&self, page: &[u8], cursor: u64) -> anyhow::Result<u64> {
        self.answers.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // Parsed whole, but into borrowed fields only: ten thousand simulated children share
        // this machine's CPUs with the root they measure, so each must cost as little as it can.
        let page: FeedPage<'_> = serde_json::from_slice(page)?;
        let mut mine = Vec::new();
        for event in &page.events {
            if let Some(n) = event
                .tag
                .and_then(|t| t.strip_prefix('p'))
                .and_then(|n| n.parse::<usize>().ok())
            {
                mine.push((n, now));
            }
        }
        if !mine.is_empty() {
            let mut counts = self.pushes.seen.lock().unwrap();
            for (n, _) in &mine {
                if counts.len() <= *n {
                    counts.resize(n + 1, 0);
                }
                counts[*n] += 1;
            }
            drop(counts);
            self.seen.lock().unwrap().extend(mine);
        }
        Ok(page.next.max(cursor))
    }
}

/// A feed page as the load client reads it: the tags of its events and the cursor after it.
#[derive(serde::Deserialize)]
struct FeedPage<'a> {
    #[serde(borrow)]
    events: Vec<FeedEvent<'a>>,
    next: u64,
}

#[derive(serde::Deserialize)]
struct FeedEvent<'a> {
    #[serde(borrow, default)]
    tag: Option<&'a str>,
}

/// One child: long-poll, note each event's arrival, ask again.
async fn child(
    i: usize,
    addr: &str,
    mut cursor: u64,
    follow: Follow,
    waiting: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut conn = Conn::connect(addr).await?;
    let mut first = true;
    loop {
        let path = format!("{FEED}?since={cursor}&wait=30");
        conn.send("GET", &path, None).await?;
        if first {
            waiting.fetch_add(1, Ordering::SeqCst);
            first = false;
        }
        let (status, body) = conn.read().await?;
        anyhow::ensure!(status == 200, "child {i}: feed answered {status}");
        cursor = follow.page(&body, cursor)?;
    }
}

/// One child on a stream: ask once, then note each page's events as its line arrives.
async fn stream_child(
    i: usize,
    addr: &str,
    cursor: u64,
    follow: Follow,
    waiting: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut conn = Conn::connect(addr).await?;
    let path = format!("{FEED}?since={cursor}&heartbeat=30");
    conn.send_upgrade(&path, "cr-changes/1").await?;
    let (status, _) = conn.read().await?;
    anyhow::ensure!(
        status == 101,
        "child {i}: the feed stream request answered {status}"
    );
    waiting.fetch_add(1, Ordering::SeqCst);
    let mut cursor = cursor;
    loop {
        let line = conn.read_line().await?;
        cursor = follow.page(&line, cursor)?;
    }
}

/// After `offset` (children spread over one period, as real ones start at different times),
/// activate child `i`, retrying as a real child does when the root is busy (a 503 at its
/// connection cap), then report its status every `every`.
async fn report_status(
    i: usize,
    addr: &str,
    root_status: &Value,
    every: Duration,
    offset: Duration,
) {
    let name = format!("child{i:05}");
    let activate =
        json!({"instanceId": format!("load-{i}"), "mode": "ReadOnly", "version": "load"});
    let mut status = root_status.clone();
    status["name"] = json!(name);
    let one_shot = |method: &'static str, path: String, body: Value| {
        let addr = addr.to_owned();
        async move {
            let mut conn = Conn::connect(&addr).await?;
            conn.send(method, &path, Some(body.to_string().as_bytes()))
                .await?;
            let (status, _) = conn.read().await?;
            anyhow::ensure!(status < 300, "{method} {path}: {status}");
            anyhow::Ok(())
        }
    };
    let base = format!("/acr/connected-registry/v1/registries/{name}");
    tokio::time::sleep(offset).await;
    let mut pause = Duration::from_secs(1);
    for attempt in 1.. {
        match one_shot("POST", format!("{base}/activate"), activate.clone()).await {
            Ok(()) => {
                ACTIVATED.fetch_add(1, Ordering::SeqCst);
                break;
            }
            Err(e) if attempt >= 6 => {
                eprintln!("{name}: activation failed {attempt} times: {e:#}");
                return;
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
    loop {
        match one_shot("PUT", format!("{base}/status"), status.clone()).await {
            Ok(()) => STATUS_REPORTED.fetch_add(1, Ordering::SeqCst),
            Err(e) => {
                eprintln!("{name}: status report failed: {e:#}");
                STATUS_FAILED.fetch_add(1, Ordering::SeqCst)
            }
        };
        tokio::time::sleep(every).await;
    }
}

/// `GET /acr/connected-registry/v1/status` of the root.
async fn own_status(addr: &str) -> anyhow::Result<Value> {
    let mut conn = Conn::connect(addr).await?;
    conn.send("GET", "/acr/connected-registry/v1/status", None)
        .await?;
    let (status, body) = conn.read().await?;
    anyhow::ensure!(status == 200, "status answered {status}");
    Ok(serde_json::from_slice(&body)?)
}

/// The newest sequence number of the root's feed.
async fn latest_seq(http: &mut Conn) -> anyhow::Result<u64> {
    let mut cursor = 0;
    loop {
        http.send("GET", &format!("{FEED}?since={cursor}&wait=0"), None)
            .await?;
        let (status, body) = http.read().await?;
        anyhow::ensure!(status == 200, "feed probe answered {status}");
        let page: Value = serde_json::from_slice(&body)?;
        let next = page["next"].as_u64().unwrap_or(cursor);
        if next == cursor {
            return Ok(cursor);
        }
        cursor = next;
    }
}

const CONFIG: &[u8] = b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}";

/// Push `count` manifests from number `first` at `--rate` per second from `--pushers`
/// connections, each pushing one at a time; the seconds it took.
async fn push_at_rate(
    args: &Args,
    pushes: Arc<Pushes>,
    first: usize,
    count: usize,
) -> anyhow::Result<f64> {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // The ticks hand push numbers to `--pushers` connections, each pushing one at a time.
    let (tx, rx) = tokio::sync::mpsc::channel::<usize>(count.max(1));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut pushers = Vec::new();
    for _ in 0..args.pushers.max(1) {
        let (rx, pushes, addr) = (rx.clone(), pushes.clone(), args.addr.clone());
        pushers.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            loop {
                let next = rx.lock().await.recv().await;
                let Some(n) = next else {
                    return anyhow::Ok(());
                };
                push(&mut conn, &pushes, n).await?;
            }
        }));
    }
    let started = Instant::now();
    for n in first..first + count {
        ticks.tick().await;
        tx.send(n).await?;
    }
    drop(tx);
    for pusher in pushers {
        pusher.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn config_digest() -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(CONFIG)))
}

async fn push_config(http: &mut Conn) -> anyhow::Result<()> {
    let path = format!("/v2/{REPO}/blobs/uploads/?digest={}", config_digest());
    http.send("POST", &path, Some(CONFIG)).await?;
    let (status, _) = http.read().await?;
    anyhow::ensure!(status == 201, "config blob push answered {status}");
    Ok(())
}

/// Push manifest number `n` as tag `p<n>`.
async fn push(http: &mut Conn, pushes: &Pushes, n: usize) -> anyhow::Result<()> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest(), "size": CONFIG.len()},
        "layers": [],
        "annotations": {"n": n.to_string()},
    })
    .to_string();
    {
        let mut started = pushes.started.lock().unwrap();
        if started.len() <= n {
            started.resize(n + 1, None);
        }
        started[n] = Some(Instant::now());
    }
    http.send_typed(
        "PUT",
        &format!("/v2/{REPO}/manifests/p{n}"),
        manifest.as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await?;
    let (status, body) = http.read().await?;
    anyhow::ensure!(
        status == 201,
        "manifest push answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

async fn wait_all(
    pushes: &Pushes,
    n: usize,
    children: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = pushes.seen.lock().unwrap().get(n).copied().unwrap_or(0);
        if have >= children {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "push {n}: only {have} of {children} children had it after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn latency_report(
    pushes: &Pushes,
    seen: &Seen,
    range: std::ops::Range<usize>,
    children: usize,
) -> Value {
    let started = pushes.started.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut each = Vec::new();
    let mut last = vec![Duration::ZERO; started.len()];
    for (n, at) in seen.iter().filter(|(n, _)| range.contains(n)) {
        let d = at.saturating_duration_since(started[*n].expect("every push started"));
        each.push(d);
        last[*n] = last[*n].max(d);
    }
    let mut all: Vec<Duration> = last[range.clone()].to_vec();
    each.sort();
    all.sort();
    let ms = |v: &[Duration], q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    json!({
        "pushes": range.len(),
        "deliveries": each.len(),
        "expectedDeliveries": range.len() * children,
        "toOneChildMs": {"p50": ms(&each, 0.5), "p99": ms(&each, 0.99), "max": ms(&each, 1.0)},
        "toAllChildrenMs": {"p50": ms(&all, 0.5), "p99": ms(&all, 0.99), "max": ms(&all, 1.0)},
    })
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    (ticks(11) + ticks(12)) / 100.0
}
