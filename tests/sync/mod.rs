//! Sync (issue 3, "How it is shown"): a child node keeps a chosen subset of its parent here.
//!
//! Parents are the real thing: Debian's `docker-registry` (CNCF distribution 2.8) seeded with
//! `skopeo` from hand-built OCI layouts, or another `connected-registry` node. Between child and
//! parent sits a TCP proxy the test controls (tests/common/proxy.rs): it counts every request
//! the child makes and the bytes the parent serves, and it cuts, stalls, throttles or refuses
//! connections. Every test checks bytes, digests and status codes at the child; each starts its
//! own processes on free ports with temp dirs, so they run in parallel.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peers::*;
use common::proxy::{Proxy, Request};
use common::{sha256, Registry};
use serde_json::{json, Value};

const CHANGES: &str = "/acr/connected-registry/v1/changes";

// ---- helpers ---------------------------------------------------------------------------------

/// The requests the proxy saw, one line each (the last 80), for failure messages.
fn proxy_log(proxy: &Proxy) -> String {
    let lines: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| {
            format!(
                "  [{:>6.2}s c{}] {} -> {:?} {}B{}",
                r.at.as_secs_f64(),
                r.conn,
                r.line,
                r.status,
                r.response_bytes,
                r.header("range")
                    .map(|v| format!(" (Range: {v})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!(
        "--- requests through the proxy ---\n{}",
        tail(&lines.join("\n"), 80)
    )
}

/// The status once the pass that brought the content has ended `Succeeded` (read at once: a
/// later pass starts its own counts).
fn succeeded_status(node: &Registry) -> Value {
    let base = node.url("");
    assert!(
        wait_until(Duration::from_secs(5), || status(&base)["sync"]["state"]
            == "Succeeded"),
        "the pass did not end Succeeded{}",
        diag(node)
    );
    status(&base)
}

/// A Succeeded pass's progress counts are whole: done == total for repositories, manifests,
/// blobs and bytes.
fn assert_progress_complete(s: &Value) {
    let p = &s["sync"]["progress"];
    for key in ["repositories", "manifests", "blobs", "bytes"] {
        assert_eq!(
            p[key]["done"], p[key]["total"],
            "a Succeeded pass reports {key} {} of {}: {:#}",
            p[key]["done"], p[key]["total"], s["sync"]
        );
    }
}

/// GET requests for `/v2/<repo>/blobs/<digest>` (any repo).
fn blob_gets(requests: &[Request], digest: &str) -> Vec<Request> {
    requests
        .iter()
        .filter(|r| r.method == "GET" && r.path().ends_with(&format!("/blobs/{digest}")))
        .cloned()
        .collect()
}

/// Any request whose path names `digest`.
fn mentions(requests: &[Request], digest: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.target.contains(digest))
        .map(|r| r.line.clone())
        .collect()
}

/// `Range: bytes=N-` → N.
fn range_start(r: &Request) -> Option<u64> {
    let v = r.header("range")?;
    let v = v.strip_prefix("bytes=")?;
    let (start, _) = v.split_once('-')?;
    start.trim().parse().ok()
}

/// The layers and config of a manifest document, as (digest, size).
fn blob_refs(manifest: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if manifest["config"].is_object() {
        out.push((
            manifest["config"]["digest"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            manifest["config"]["size"].as_u64().unwrap_or(0),
        ));
    }
    for l in manifest["layers"].as_array().into_iter().flatten() {
        out.push((
            l["digest"].as_str().unwrap_or("").to_owned(),
            l["size"].as_u64().unwrap_or(0),
        ));
    }
    out
}

/// What a client polling the child saw.
#[derive(Default)]
struct Watch {
    checks: u64,
    violations: Vec<String>,
}

/// Poll the child as a client would (tags/list, GET each tag's manifest, HEAD every blob it
/// names) until `stop`: every listed tag must be complete and one of the expected digests.
fn watch_child(
    base: String,
    repo: String,
    expected: BTreeMap<String, String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Watch> {
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut w = Watch::default();
        let fail = |w: &mut Watch, m: String| {
            if w.violations.len() < 20 {
                w.violations.push(m);
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let list = match http.get(format!("{base}/v2/{repo}/tags/list")).send() {
                Ok(r) if r.status() == 404 => Vec::new(),
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().unwrap_or(Value::Null);
                    v["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                }
                Ok(r) => {
                    fail(&mut w, format!("tags/list answered {}", r.status()));
                    continue;
                }
                Err(e) => {
                    fail(&mut w, format!("tags/list failed: {e}"));
                    continue;
                }
            };
            for tag in list {
                let resp = http
                    .get(format!("{base}/v2/{repo}/manifests/{tag}"))
                    .header("Accept", ACCEPT_ALL)
                    .send();
                let body = match resp {
                    Ok(r) if r.status() == 200 => r.bytes().unwrap().to_vec(),
                    Ok(r) => {
                        fail(
                            &mut w,
                            format!("listed tag {tag}: manifest answered {}", r.status()),
                        );
                        continue;
                    }
                    Err(e) => {
                        fail(
                            &mut w,
                            format!("listed tag {tag}: manifest GET failed: {e}"),
                        );
                        continue;
                    }
                };
                let digest = sha256(&body);
                if expected.get(&tag) != Some(&digest) {
                    fail(
                        &mut w,
                        format!(
                            "tag {tag} served {digest}, expected {:?}",
                            expected.get(&tag)
                        ),
                    );
                }
                let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                for (d, size) in blob_refs(&doc) {
                    match http.head(format!("{base}/v2/{repo}/blobs/{d}")).send() {
                        Ok(r) if r.status() == 200 => {
                            let len = r
                                .headers()
                                .get("content-length")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            if len != Some(size) {
                                fail(
                                    &mut w,
                                    format!(
                                        "tag {tag}: blob {d} HEAD length {len:?}, expected {size}"
                                    ),
                                );
                            }
                        }
                        Ok(r) => fail(
                            &mut w,
                            format!(
                                "tag {tag} is listed but its blob {d} answers {}",
                                r.status()
                            ),
                        ),
                        Err(e) => fail(&mut w, format!("tag {tag}: HEAD blob {d} failed: {e}")),
                    }
                }
                w.checks += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    })
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

mod download_faults;
mod from_connected;
mod from_distribution;
mod outages;
mod proxy;
mod schedule;
