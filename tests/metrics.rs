//! `/metrics` against the real binary, read by a real parser: known traffic (pushes, pulls, a
//! HEAD, 404s) is sent, the exposition is scraped in both formats and parsed by the Prometheus
//! project's Python client (`prometheus_client`: its Prometheus text parser and its strict
//! OpenMetrics parser), and every value is checked: requests by route, method and status
//! exactly, body bytes in and out exactly, the pull histogram, outbox depth, storage. Also who
//! may scrape (a token, or anyone once `metrics.anonymous` is set in the watched config file),
//! a child's sync bytes and lag with its parent's count of connected children, and the
//! manifest cache's use following `storage.manifestCache` live.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::credentials::{basic, create_sync_token, create_token, push_image_as, SecuredNode};
use common::peers::{poll_every, random_bytes, request, Image, Node, KIB};
use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What Prometheus itself sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Parses an exposition read on stdin with `prometheus_client`'s parser for the format named by
/// argv[1] and prints every sample as JSON (values as strings, so `+Inf` and `NaN` survive).
const PARSER: &str = r#"
import json, sys
if sys.argv[1] == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name,
                    "labels": s.labels, "value": repr(float(s.value))})
print(json.dumps(out))
"#;

#[derive(Debug, Clone)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One scrape, parsed.
struct Scrape {
    content_type: String,
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`; `None` if there is none,
    /// a panic if several match.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches {matching:?}"
        );
        matching.first().map(|s| s.value)
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{}", self.text))
    }

    fn kind_of(&self, name: &str) -> String {
        let s = self.samples.iter().find(|s| s.name == name).unwrap();
        format!("{}:{}", s.family, s.kind)
    }

    /// The request counts by `(route, method, status)`.
    fn requests(&self) -> BTreeMap<(String, String, String), f64> {
        self.samples
            .iter()
            .filter(|s| s.name == "connected_registry_http_requests_total")
            .map(|s| {
                let l = |k: &str| s.labels[k].clone();
                ((l("route"), l("method"), l("status")), s.value)
            })
            .collect()
    }
}

/// Parse `text` with the real parser for `format` (`prometheus` or `openmetrics`).
fn parse(text: &str, format: &str) -> Vec<Sample> {
    common::require("python3");
    let mut child = Command::new("python3")
        .args(["-c", PARSER, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client's {format} parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|s| Sample {
            family: s["family"].as_str().unwrap().to_owned(),
            kind: s["type"].as_str().unwrap().to_owned(),
            name: s["name"].as_str().unwrap().to_owned(),
            labels: serde_json::from_value(s["labels"].clone()).unwrap(),
            value: s["value"].as_str().unwrap().parse().unwrap(),
        })
        .collect()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `GET /metrics` with `accept` and `authorization`: the status and, on 200, the parse.
fn try_scrape(
    base: &str,
    authorization: Option<&str>,
    accept: &str,
) -> (u16, reqwest::header::HeaderMap, Option<Scrape>) {
    let mut req = client()
        .get(format!("{base}/metrics"))
        .header("Accept", accept);
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().unwrap();
    if status != 200 {
        return (status, headers, None);
    }
    let content_type = headers["content-type"].to_str().unwrap().to_owned();
    let format = if content_type == OPENMETRICS {
        "openmetrics"
    } else {
        "prometheus"
    };
    let samples = parse(&text, format);
    let scrape = Scrape {
        content_type,
        samples,
        text,
    };
    (status, headers, Some(scrape))
}

fn scrape(base: &str, authorization: Option<&str>, accept: &str) -> Scrape {
    let (status, _, scrape) = try_scrape(base, authorization, accept);
    assert_eq!(status, 200, "GET /metrics");
    scrape.unwrap()
}

fn key(route: &str, method: &str, status: u16) -> (String, String, String) {
    (route.to_owned(), method.to_owned(), status.to_string())
}

#[test]
fn known_traffic_is_counted_exactly_and_parsed_by_prometheus_client() {
    let reg = Registry::start();
    let base = reg.url("");
    let layers = [
        random_bytes(1, 1000),
        random_bytes(2, 20 * KIB),
        random_bytes(3, 300 * KIB),
    ];
    let image = Image::new("linux/amd64", &layers);
    let mut received_by_node = 0usize;
    let mut sent_by_node = 0usize;
    let mut send = |method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>| {
        received_by_node += body.as_ref().map_or(0, Vec::len);
        let r = request(method, &base, path, headers, body);
        sent_by_node += r.body.len();
        r
    };

    // Pushes: each blob in one monolithic POST, then the manifest.
    for blob in &image.blobs {
        let path = format!("/v2/metrics/app/blobs/uploads/?digest={}", blob.digest);
        let r = send(Method::POST, &path, &[], Some(blob.bytes.clone()));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let content_type = [("Content-Type", image.media_type.as_str())];
    let r = send(
        Method::PUT,
        "/v2/metrics/app/manifests/v1",
        &content_type,
        Some(image.bytes.clone()),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // Pulls: four manifest GETs, two blob GETs, one HEAD; then two 404s.
    const MANIFEST_PULLS: usize = 4;
    for _ in 0..MANIFEST_PULLS {
        let r = send(Method::GET, "/v2/metrics/app/manifests/v1", &[], None);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, image.bytes);
    }
    for layer in &image.blobs[1..3] {
        let r = send(
            Method::GET,
            &format!("/v2/metrics/app/blobs/{}", layer.digest),
            &[],
            None,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body, layer.bytes);
    }
    let r = send(Method::HEAD, "/v2/metrics/app/manifests/v1", &[], None);
    assert_eq!(r.status, 200);
    let r = send(Method::GET, "/v2/metrics/app/manifests/missing", &[], None);
    assert_eq!(r.status, 404);
    let r = send(Method::GET, "/no/such/endpoint", &[], None);
    assert_eq!(r.status, 404);

    // The first scrape, in the Prometheus text format (what curl and older tools get).
    let first = scrape(&base, None, "*/*");
    assert_eq!(first.content_type, PROMETHEUS_TEXT);
    let pushed = image.blobs.len() as f64;
    let expected: BTreeMap<_, _> = [
        (key("upload", "POST", 201), pushed),
        (key("manifest", "PUT", 201), 1.0),
        (key("manifest", "GET", 200), MANIFEST_PULLS as f64),
        (key("blob", "GET", 200), 2.0),
        (key("manifest", "HEAD", 200), 1.0),
        (key("manifest", "GET", 404), 1.0),
        (key("not_found", "GET", 404), 1.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(first.requests(), expected, "{}", first.text);
    assert_eq!(
        first.kind_of("connected_registry_http_requests_total"),
        "connected_registry_http_requests:counter"
    );

    // Bytes: exactly the bodies that went each way (no request had another body).
    let pushed_bytes: usize =
        image.blobs.iter().map(|b| b.bytes.len()).sum::<usize>() + image.bytes.len();
    assert_eq!(received_by_node, pushed_bytes);
    assert_eq!(
        first.must("connected_registry_http_request_body_bytes_total", &[]),
        received_by_node as f64
    );
    assert_eq!(
        first.must("connected_registry_http_response_body_bytes_total", &[]),
        sent_by_node as f64
    );

    // The pull histogram: one observation per successful GET, the buckets cumulative.
    let count = |kind: &str| {
        first.must(
            "connected_registry_pull_duration_seconds_count",
            &[("kind", kind)],
        )
    };
    assert_eq!(count("manifest"), MANIFEST_PULLS as f64);
    assert_eq!(count("blob"), 2.0);
    for kind in ["manifest", "blob"] {
        let inf = first.must(
            "connected_registry_pull_duration_seconds_bucket",
            &[("kind", kind), ("le", "+Inf")],
        );
        assert_eq!(inf, count(kind));
        let ten = first.must(
            "connected_registry_pull_duration_seconds_bucket",
            &[("kind", kind), ("le", "10")],
        );
        assert!(ten <= inf);
        let sum = first.must(
            "connected_registry_pull_duration_seconds_sum",
            &[("kind", kind)],
        );
        assert!(sum > 0.0, "{kind} pulls took some time: {sum}");
    }

    // Read at scrape time: a root with nothing waiting upstream, blobs on disk.
    assert_eq!(first.must("connected_registry_outbox_depth", &[]), 0.0);
    let used = first.must("connected_registry_storage_used_bytes", &[]);
    let blob_bytes: usize = image.blobs.iter().map(|b| b.bytes.len()).sum();
    assert!(
        used >= blob_bytes as f64,
        "storage used {used} < {blob_bytes}"
    );
    assert!(first.must("connected_registry_storage_free_bytes", &[]) > 0.0);
    assert_eq!(first.must("connected_registry_sync_bytes_total", &[]), 0.0);
    assert_eq!(
        first.must("connected_registry_gc_freed_bytes_total", &[]),
        0.0
    );
    assert_eq!(first.must("connected_registry_evictions_total", &[]), 0.0);
    // The first GET of v1 read the index; the other GETs and the HEAD were answered from
    // memory; the missing tag read the index and kept nothing.
    assert_eq!(
        first.must("connected_registry_manifest_cache_misses_total", &[]),
        2.0
    );
    assert_eq!(
        first.must("connected_registry_manifest_cache_hits_total", &[]),
        MANIFEST_PULLS as f64
    );
    let kept = first.must("connected_registry_manifest_cache_bytes", &[]);
    assert!(
        kept > image.bytes.len() as f64 && kept < (image.bytes.len() + 1024) as f64,
        "one manifest kept, counted as {kept} bytes"
    );
    assert_eq!(
        first.must("connected_registry_connected_children", &[]),
        0.0
    );
    assert_eq!(
        first.value("connected_registry_sync_lag_seconds", &[]),
        None,
        "a root has no sync lag"
    );

    // The second scrape, as Prometheus asks: OpenMetrics, parsed by the strict parser. It
    // counts the first scrape, and the first scrape's response body.
    let second = scrape(&base, None, PROMETHEUS_ACCEPT);
    assert_eq!(second.content_type, OPENMETRICS);
    assert!(second.text.ends_with("# EOF\n"));
    let mut expected = expected;
    expected.insert(key("metrics", "GET", 200), 1.0);
    assert_eq!(second.requests(), expected, "{}", second.text);
    assert_eq!(
        second.must("connected_registry_http_response_body_bytes_total", &[]),
        (sent_by_node + first.text.len()) as f64
    );
    assert_eq!(
        second.must(
            "connected_registry_pull_duration_seconds_count",
            &[("kind", "manifest")]
        ),
        MANIFEST_PULLS as f64
    );
    assert_eq!(second.must("connected_registry_outbox_depth", &[]), 0.0);

    // Repository names never become labels.
    assert!(!first.text.contains("metrics/app") && !second.text.contains("metrics/app"));
    reg.assert_no_panic();
}

/// Replace the JSON config file at `path` with `edit` applied, in one rename.
fn edit_config(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut config: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut config);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `storage.manifestCache` applies live: a pulled manifest is kept in memory (the gauge says
/// what it counts for), and the watched config file setting it to 0 empties the cache without a
/// restart, while the same pulls are served the same from the index.
#[test]
fn the_manifest_cache_follows_the_config_file_live() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"storage": {"manifestCache": "1MiB"}}"#).unwrap();
    let reg = Registry::start_with(&["--config", config.to_str().unwrap()]);
    let base = reg.url("");
    let image = Image::new("linux/amd64", &[random_bytes(4, 1000)]);
    common::peers::push_image(&base, "cache/app", "v1", &image);
    let pull = || {
        let r = request(Method::GET, &base, "/v2/cache/app/manifests/v1", &[], None);
        assert_eq!((r.status, &r.body), (200, &image.bytes));
    };
    let cache = || {
        let s = scrape(&base, None, "*/*");
        (
            s.must("connected_registry_manifest_cache_bytes", &[]),
            s.must("connected_registry_manifest_cache_hits_total", &[]),
            s.must("connected_registry_manifest_cache_misses_total", &[]),
        )
    };
    pull();
    pull();
    let (kept, hits, misses) = cache();
    assert!(kept > image.bytes.len() as f64, "kept {kept} bytes");
    assert_eq!((hits, misses), (1.0, 1.0));

    edit_config(&config, |c| c["storage"]["manifestCache"] = json!("0"));
    assert!(
        poll_every(Duration::from_millis(200), Duration::from_secs(15), || {
            cache().0 == 0.0
        }),
        "manifestCache 0 did not empty the cache; log:\n{}",
        reg.log_text()
    );
    pull();
    pull();
    assert_eq!(cache(), (0.0, 1.0, 3.0), "pulls with the cache off");
    reg.assert_no_panic();
}

#[test]
fn a_token_may_scrape_and_metrics_anonymous_opens_it_live() {
    let mut password = String::new();
    let node = SecuredNode::start(json!({"name": "metricsnode"}), |config| {
        password = create_token(
            config,
            "reader",
            &["--repository", "apps/*", "content/read"],
        );
    });
    let base = node.base();

    // No credentials: 401 with the usual challenge; wrong ones: 401; any token: 200.
    let (status, headers, _) = try_scrape(&base, None, "*/*");
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!(r#"Bearer realm="{base}/acr/oauth2/token",service="metricsnode""#)
    );
    let (status, _, _) = try_scrape(&base, Some(&basic("reader", "wrong")), "*/*");
    assert_eq!(status, 401);
    let reader = basic("reader", &password);
    let scraped = scrape(&base, Some(&reader), "*/*");
    assert_eq!(
        scraped.requests().get(&key("metrics", "GET", 401)),
        Some(&2.0)
    );

    // `metrics: {anonymous: true}` in the watched config file opens it without a restart, and
    // taking it out closes it again.
    edit_config(&node.config, |c| c["metrics"] = json!({"anonymous": true}));
    assert!(
        poll_every(Duration::from_millis(200), Duration::from_secs(15), || {
            try_scrape(&base, None, "*/*").0 == 200
        }),
        "metrics.anonymous did not open /metrics; log:\n{}",
        node.reg.log_text()
    );
    edit_config(&node.config, |c| {
        c.as_object_mut().unwrap().remove("metrics");
    });
    assert!(
        poll_every(Duration::from_millis(200), Duration::from_secs(15), || {
            try_scrape(&base, None, "*/*").0 == 401
        }),
        "removing metrics.anonymous did not close /metrics"
    );
    assert_eq!(try_scrape(&base, Some(&reader), "*/*").0, 200);
    node.reg.assert_no_panic();
}

#[test]
fn a_child_reports_sync_bytes_and_lag_and_its_parent_counts_it_connected() {
    let (mut sync_pw, mut admin_pw) = (String::new(), String::new());
    let root = SecuredNode::start(json!({"name": "rootnode"}), |config| {
        sync_pw = create_sync_token(config, "childm", "apps/*");
        admin_pw = create_token(
            config,
            "admin",
            &["--repository", "*", "content/read", "content/write"],
        );
    });
    let admin = basic("admin", &admin_pw);
    let image = Image::new(
        "linux/amd64",
        &[random_bytes(11, 64 * KIB), random_bytes(12, 8 * KIB)],
    );
    push_image_as(&root.base(), Some(&admin), "apps/web", "v1", &image).unwrap();

    // Before any child: none connected.
    let parent = scrape(&root.base(), Some(&admin), "*/*");
    assert_eq!(
        parent.must("connected_registry_connected_children", &[]),
        0.0
    );

    let child = Node::with_config(json!({
        "name": "childm",
        "parent": {
            "endpoint": root.base(),
            "syncToken": {"name": "childm", "password": sync_pw},
            "sync": {"repositories": ["apps/*"]}
        }
    }));
    // The child is open (loopback, no client tokens of its own): scraped without credentials.
    let mut synced = None;
    assert!(
        poll_every(Duration::from_millis(250), Duration::from_secs(60), || {
            let s = scrape(&child.base(), None, "*/*");
            let done = s
                .value("connected_registry_sync_lag_seconds", &[])
                .is_some();
            synced = Some(s);
            done
        }),
        "the child never reported a successful sync; log:\n{}",
        child.log_text()
    );
    let synced = synced.unwrap();
    let blob_bytes: usize = image.blobs.iter().map(|b| b.bytes.len()).sum();
    let sync_bytes = synced.must("connected_registry_sync_bytes_total", &[]);
    assert!(
        sync_bytes >= blob_bytes as f64,
        "sync bytes {sync_bytes} < the {blob_bytes} blob bytes mirrored"
    );
    let lag = synced.must("connected_registry_sync_lag_seconds", &[]);
    assert!(
        (0.0..300.0).contains(&lag),
        "lag {lag} s right after a sync"
    );
    assert_eq!(
        synced.kind_of("connected_registry_sync_lag_seconds"),
        "connected_registry_sync_lag_seconds:gauge"
    );
    assert_eq!(synced.must("connected_registry_outbox_depth", &[]), 0.0);

    // The parent counts the child once its status report says Online or Syncing.
    assert!(
        poll_every(Duration::from_millis(500), Duration::from_secs(60), || {
            scrape(&root.base(), Some(&admin), "*/*")
                .must("connected_registry_connected_children", &[])
                == 1.0
        }),
        "the parent never counted its child connected"
    );
    child.assert_no_panic();
    root.reg.assert_no_panic();
}
