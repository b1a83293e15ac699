//! Peers and content for the sync tests: Debian's `docker-registry` (CNCF distribution 2.8) as a
//! parent, images built by hand (single-platform images with shared layers, two-platform indexes,
//! artifacts with a `subject`), written as OCI layouts and pushed with `skopeo`, or pushed over
//! plain HTTP to a `connected-registry` parent; a child-node launcher that writes its
//! `child.json`; and small HTTP helpers that check what a node serves, byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, require, run, sha256, Registry, BIN};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

// ---- waiting ---------------------------------------------------------------------------------

/// Poll `cond` every 50 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(Duration::from_millis(50), timeout, cond)
}

/// Poll `cond` every `interval` until it holds (true) or `timeout` passes (false).
pub fn poll_every(interval: Duration, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

mod content;
mod distribution;
mod http;
mod nodes;

pub use content::*;
pub use distribution::*;
pub use http::*;
pub use nodes::*;
