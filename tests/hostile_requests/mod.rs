//! What a hostile or careless client can ask for, against the running binary: lists that would
//! not fit one response (referrers with megabytes of annotations, tens of thousands of tags and
//! repositories), numbers outside every range a parameter or header accepts, upload chunks whose
//! bytes do not match their `Content-Range`, and manifests nested deeper than clients can parse.
//! Every answer is bounded, every refusal is a 4xx OCI error, and no request makes the server
//! panic (the harness fails any test whose registry log shows a panic).

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::time::Duration;

use common::peers::{get, push_blob, random_bytes, request, Blob, Http, Image, MIB, OCI_MANIFEST};
use common::{sha256, Registry};
use reqwest::Method;
use serde_json::{json, Value};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const FEED: &str = "/acr/connected-registry/v1/changes";

/// The largest manifest the registry accepts (and so the largest one referrer descriptor).
const MAX_MANIFEST: usize = 4 * MIB;

fn assert_oci_error(r: &Http, status: u16, code: &str, what: &str) -> String {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let body = r.json();
    assert_eq!(body["errors"][0]["code"], code, "{what}: {body}");
    body["errors"][0]["message"].as_str().unwrap().to_owned()
}

/// The target of `Link: <…>; rel="next"`, if any.
fn next_link(r: &Http) -> Option<String> {
    let link = r.header("link")?;
    assert!(link.ends_with("rel=\"next\""), "{link}");
    let start = link.find('<').unwrap() + 1;
    let end = link.find('>').unwrap();
    Some(link[start..end].to_owned())
}

/// Follow `Link` from `path`, returning every page.
fn walk(base: &str, path: &str) -> Vec<Http> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_owned());
    let mut seen = HashSet::new();
    while let Some(path) = next {
        assert!(seen.insert(path.clone()), "the pages loop at {path}");
        let r = get(base, &path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        next = next_link(&r);
        pages.push(r);
    }
    pages
}

fn digests_of(pages: &[Http]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| {
            assert_eq!(p.header("content-type"), Some(OCI_INDEX));
            let index = p.json();
            assert_eq!(index["schemaVersion"], 2);
            assert_eq!(index["mediaType"], OCI_INDEX);
            index["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["digest"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Reset the process's peak RSS (VmHWM) so the next peak is of what follows; false if the
/// kernel does not allow it (the peak then includes what came before, which only loosens the
/// check).
fn reset_peak_rss(reg: &Registry) -> bool {
    std::fs::write(format!("/proc/{}/clear_refs", reg.pid()), "5").is_ok()
}

mod chunks;
mod listings;
mod numbers;
