//! Hostile and broken connections against the running binary: sockets that say nothing, HTTP/2
//! connections that go silent or idle, more connections than the cap, request bodies that stall
//! half-way (during requests and during a stop), an oversized manifest announced with
//! `Expect: 100-continue`; and a soak that holds a few hundred of them while real clients push
//! and pull. Every bound asserted is the configured timeout plus a generous margin.

use crate::common;

use std::thread;
use std::time::{Duration, Instant};

use common::peers::{get, random_bytes, request, skopeo_pull, skopeo_seed, Image, KIB, MIB};
use common::raw::{self, Closed};
use common::{sha256, Registry};
use reqwest::Method;
use serde_json::{json, Value};

/// Slack on top of a configured timeout before a test calls it missed.
const MARGIN: Duration = Duration::from_secs(10);

/// A registry whose configuration file has this `limits` section.
fn registry_with_limits(limits: Value) -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, json!({ "limits": limits }).to_string()).unwrap();
    let reg = Registry::start_with(&["--config", cfg.to_str().unwrap()]);
    (reg, dir)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Start an upload session; returns its absolute URL.
fn start_upload(base: &str, repo: &str) -> String {
    let r = request(
        Method::POST,
        base,
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        None,
    );
    assert_eq!(r.status, 202, "POST upload: {}", r.text());
    let location = r.header("location").unwrap();
    if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location.to_owned()
    }
}

fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_owned()
}

/// A PATCH on `session` declaring `declared` bytes that sends only `sent`, then nothing.
fn stalled_patch(host: &str, session: &str, declared: usize, sent: &[u8]) -> std::net::TcpStream {
    let mut s = raw::connect(host);
    raw::send_http1(
        &mut s,
        "PATCH",
        &path_of(session),
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", &declared.to_string()),
        ],
        sent,
    );
    s
}

fn log_lines(reg: &Registry, needle: &str) -> usize {
    reg.log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn assert_no_panic(reg: &Registry) {
    let log = reg.log_text();
    assert!(!log.contains("panicked"), "a handler panicked:\n{log}");
}

#[test]
fn idle_connections_of_every_kind_are_closed_within_the_idle_timeout() {
    let idle = secs(3);
    let (reg, _cfg) = registry_with_limits(json!({"connectionIdleTimeout": "PT3S"}));
    let host = reg.host();
    let bound = idle + MARGIN;

    let silent = {
        let host = host.clone();
        thread::spawn(move || raw::wait_closed(&mut raw::connect(&host), bound + MARGIN))
    };
    let preface_only = {
        let host = host.clone();
        thread::spawn(move || {
            let mut s = raw::connect(&host);
            std::io::Write::write_all(&mut s, raw::H2_PREFACE).unwrap();
            raw::wait_closed(&mut s, bound + MARGIN)
        })
    };
    let partial_head = {
        let host = host.clone();
        thread::spawn(move || {
            let mut s = raw::connect(&host);
            std::io::Write::write_all(&mut s, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
            raw::wait_closed(&mut s, bound + MARGIN)
        })
    };
    let keep_alive = {
        let host = host.clone();
        thread::spawn(move || {
            let mut s = raw::connect(&host);
            raw::send_http1(&mut s, "GET", "/v2/", &[], b"");
            let (head, _) = raw::read_head(&mut s, MARGIN).expect("a response to GET /v2/");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            raw::wait_closed(&mut s, bound + MARGIN)
        })
    };
    let h2_idle = {
        let host = host.clone();
        thread::spawn(move || raw::h2_request_then_idle(&host, "/v2/", bound + MARGIN))
    };

    for (what, handle) in [
        ("a connection that sent nothing", silent),
        ("an HTTP/2 preface then silence", preface_only),
        ("half a request head", partial_head),
        (
            "an HTTP/1.1 keep-alive connection after one request",
            keep_alive,
        ),
    ] {
        let closed: Option<Closed> = handle.join().unwrap();
        let closed = closed.unwrap_or_else(|| panic!("{what} was never closed"));
        assert!(
            closed.after <= bound,
            "{what} was closed only after {:?}",
            closed.after
        );
    }
    let h2 = h2_idle.join().unwrap();
    assert!(h2.status_200 && h2.response_complete, "{h2:?}");
    let after = h2
        .closed_after
        .unwrap_or_else(|| panic!("an idle HTTP/2 connection was never closed: {h2:?}"));
    assert!(
        after <= bound,
        "an idle HTTP/2 connection (answering pings) was closed only after {after:?}: {h2:?}"
    );
    assert_eq!(get(&reg.url(""), "/v2/").status, 200);
    assert_no_panic(&reg);
}

#[test]
fn connections_past_the_cap_are_refused_politely_and_quietly() {
    let (reg, _cfg) = registry_with_limits(json!({
        "maxConnections": 50,
        "connectionIdleTimeout": "PT3S"
    }));
    let host = reg.host();
    let mut sockets: Vec<_> = (0..200).map(|_| raw::connect(&host)).collect();
    let mut refused = 0;
    let mut closed_idle = 0;
    for s in &mut sockets {
        let closed = raw::wait_closed(s, secs(3) + MARGIN).expect("every socket closed");
        let text = closed.text();
        if closed.received.is_empty() {
            closed_idle += 1;
            continue;
        }
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(json["errors"][0]["code"], "TOOMANYREQUESTS", "{text}");
        refused += 1;
    }
    assert!(closed_idle <= 50, "{closed_idle} connections were served");
    assert!(
        refused >= 100,
        "only {refused} of 200 connections were refused"
    );
    // Once the idle ones are closed, the registry serves again.
    assert_eq!(get(&reg.url(""), "/v2/").status, 200);
    let lines = log_lines(&reg, "refusing") + log_lines(&reg, "accept failed");
    assert!(
        lines <= 5,
        "{lines} log lines for {refused} refusals:\n{}",
        reg.log_text()
    );
    assert_no_panic(&reg);
}

#[test]
fn a_stalled_patch_is_cut_and_its_session_resumes() {
    let body_idle = secs(2);
    let (reg, _cfg) = registry_with_limits(json!({
        "bodyIdleTimeout": "PT2S",
        "connectionIdleTimeout": "PT5S"
    }));
    let base = reg.url("");
    let host = reg.host();
    let blob = random_bytes(61, MIB);
    let session = start_upload(&base, "stall/app");

    let started = Instant::now();
    let mut s = stalled_patch(&host, &session, MIB, &blob[..100 * KIB]);
    let (head, rest) = raw::read_head(&mut s, body_idle + MARGIN).unwrap_or_else(|| {
        panic!(
            "a stalled PATCH was not cut within {:?}",
            body_idle + MARGIN
        )
    });
    assert!(started.elapsed() <= body_idle + MARGIN);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert!(
        rest.contains("BLOB_UPLOAD_INVALID") && rest.contains("sent nothing for 2 s"),
        "{rest}"
    );
    drop(s);

    // The bytes that arrived stayed, and the session continues from there.
    let r = get(&base, &path_of(&session));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("range"), Some("0-102399"));
    let r = request(
        Method::PATCH,
        &base,
        &session,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &format!("{}-{}", 100 * KIB, MIB - 1)),
        ],
        Some(blob[100 * KIB..].to_vec()),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let location = r.header("location").unwrap().to_owned();
    let digest = sha256(&blob);
    let r = request(
        Method::PUT,
        &base,
        &format!("{location}?digest={digest}"),
        &[],
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = get(&base, &format!("/v2/stall/app/blobs/{digest}"));
    assert_eq!(r.status, 200);
    assert!(
        r.body == blob,
        "the resumed blob reads back different bytes"
    );

    // A DELETE of a session whose PATCH is stalled does not wait on it for ever.
    let other = start_upload(&base, "stall/app");
    let _stalled = stalled_patch(&host, &other, MIB, &blob[..10 * KIB]);
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let r = request(Method::DELETE, &base, &other, &[], None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(
        started.elapsed() <= body_idle + MARGIN,
        "DELETE took {:?}",
        started.elapsed()
    );
    assert_eq!(get(&base, &path_of(&other)).status, 404);
    assert_no_panic(&reg);
}

#[test]
fn a_stop_does_not_wait_its_drain_for_a_stalled_body() {
    // Default limits: the body idle timeout (30 s) equals the drain; a stop cuts stalled bodies
    // sooner.
    let mut reg = Registry::start();
    let base = reg.url("");
    let session = start_upload(&base, "stall/stop");
    let _stalled = stalled_patch(&reg.host(), &session, MIB, &random_bytes(7, 10 * KIB));
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    reg.send_sigterm();
    let status = reg
        .wait_exit(secs(15))
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", reg.log_text()));
    assert!(status.success(), "{status}: {}", reg.log_text());
    assert!(reg.log_text().contains("stopped cleanly"));
    eprintln!("stopped {:?} after SIGTERM", started.elapsed());
}

#[test]
fn an_oversized_manifest_is_refused_before_100_continue() {
    let reg = Registry::start();
    let mut s = raw::connect(&reg.host());
    raw::send_http1(
        &mut s,
        "PUT",
        "/v2/big/app/manifests/v1",
        &[
            ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
            ("Content-Length", "100000000"),
            ("Expect", "100-continue"),
        ],
        b"",
    );
    // No body byte is ever sent: the answer must come anyway, and the connection close.
    let closed = raw::wait_closed(&mut s, MARGIN).unwrap_or_else(|| {
        panic!("no answer without the body (the server waits for the body it said 100 to)")
    });
    let text = closed.text();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.contains("SIZE_INVALID"), "{text}");
    assert_eq!(get(&reg.url(""), "/v2/").status, 200);
}

#[test]
fn soak_clients_push_and_pull_while_hundreds_of_connections_stall() {
    const EACH: usize = 100;
    let reg = Registry::start();
    let base = reg.url("");
    let host = reg.host();
    let sessions: Vec<String> = (0..EACH)
        .map(|_| start_upload(&base, "soak/stall"))
        .collect();

    let stalled_at = Instant::now();
    let silent: Vec<_> = (0..EACH).map(|_| raw::connect(&host)).collect();
    let prefaces: Vec<_> = (0..EACH)
        .map(|_| {
            let mut s = raw::connect(&host);
            std::io::Write::write_all(&mut s, raw::H2_PREFACE).unwrap();
            s
        })
        .collect();
    let chunk = random_bytes(3, 64 * KIB);
    let mut patches: Vec<_> = sessions
        .iter()
        .map(|session| stalled_patch(&host, session, MIB, &chunk))
        .collect();

    // Real clients, while all of that is held.
    let work = tempfile::tempdir().unwrap();
    let image = Image::new(
        "linux/amd64",
        &[random_bytes(11, 2 * MIB), random_bytes(12, 300 * KIB)],
    );
    skopeo_seed(work.path(), &host, "soak/app", &[("v1", &image)]);
    let pulled = skopeo_pull(&host, "soak/app", "v1", &work.path().join("pulled"));
    assert_eq!(pulled, image.digest);
    let getters: Vec<_> = (0..4)
        .map(|t| {
            let base = base.clone();
            let expected = image.bytes.clone();
            let digest = image.digest.clone();
            thread::spawn(move || {
                for i in 0..75 {
                    let reference = if (i + t) % 2 == 0 { "v1" } else { &digest };
                    let r = get(&base, &format!("/v2/soak/app/manifests/{reference}"));
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert!(r.body == expected);
                }
            })
        })
        .collect();
    for g in getters {
        g.join().unwrap();
    }
    let busy_for = stalled_at.elapsed();

    // The stalled bodies are cut by the default body idle timeout (30 s); the bytes they sent
    // stay in their sessions.
    let bound = Duration::from_secs(30) + MARGIN;
    for s in &mut patches {
        let left = bound.saturating_sub(stalled_at.elapsed());
        let (head, _) = raw::read_head(s, left)
            .unwrap_or_else(|| panic!("a stalled PATCH was not cut within {bound:?} of stalling"));
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    }
    let r = get(&base, &path_of(&sessions[0]));
    assert_eq!(r.header("range"), Some(&*format!("0-{}", 64 * KIB - 1)));
    assert_eq!(get(&base, "/v2/").status, 200);
    drop((silent, prefaces));
    assert_no_panic(&reg);
    assert_eq!(log_lines(&reg, "accept failed"), 0);
    eprintln!(
        "clients done {busy_for:?} after the stalls began; stalls cut by {:?}",
        stalled_at.elapsed()
    );
}
