//! Shared pieces of the crash and streaming tests: a deterministic, seekable pseudo-random byte
//! generator (so large blobs are never held in memory, and any range can be re-derived to check
//! it), readers over it that can pause or throttle mid-body, and checks on OCI errors and on the
//! blob files on disk.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub const MIB: u64 = 1024 * 1024;

/// A blob of `len` pseudo-random bytes determined by `seed`. Byte `i` is byte `i % 8` of
/// `splitmix64(seed, i / 8)`, so any range can be produced without producing what precedes it.
#[derive(Debug, Clone, Copy)]
pub struct Gen {
    pub seed: u64,
    pub len: u64,
}

fn word(seed: u64, index: u64) -> [u8; 8] {
    let mut z = seed
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
        .wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()
}

impl Gen {
    pub fn new(seed: u64, len: u64) -> Gen {
        Gen { seed, len }
    }

    /// Fill `buf` with the bytes starting at `pos` (the caller keeps within `len`).
    pub fn fill_at(&self, mut pos: u64, mut buf: &mut [u8]) {
        // Unaligned head.
        while !pos.is_multiple_of(8) && !buf.is_empty() {
            buf[0] = word(self.seed, pos / 8)[(pos % 8) as usize];
            buf = &mut buf[1..];
            pos += 1;
        }
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&word(self.seed, pos / 8));
            pos += 8;
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let w = word(self.seed, pos / 8);
            let n = tail.len();
            tail.copy_from_slice(&w[..n]);
        }
    }

    /// The bytes `[start, start + len)` in memory (for small pieces only).
    pub fn bytes(&self, start: u64, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        self.fill_at(start, &mut v);
        v
    }

    /// The whole blob in memory (small blobs only).
    pub fn to_vec(self) -> Vec<u8> {
        self.bytes(0, self.len)
    }

    /// `sha256:<hex>` of the whole blob, generated and hashed piece by piece.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; MIB as usize];
        let mut pos = 0;
        while pos < self.len {
            let n = (self.len - pos).min(MIB) as usize;
            self.fill_at(pos, &mut buf[..n]);
            h.update(&buf[..n]);
            pos += n as u64;
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// A reader over `[start, len)`.
    pub fn reader_from(&self, start: u64) -> GenReader {
        GenReader {
            gen: *self,
            pos: start,
            start,
            progress: Arc::new(AtomicU64::new(0)),
            pause: None,
            throttle: None,
        }
    }

    pub fn reader(&self) -> GenReader {
        self.reader_from(0)
    }

    /// A request body streaming the blob from `start` to its end, with its exact length.
    pub fn body_from(&self, start: u64) -> reqwest::blocking::Body {
        reqwest::blocking::Body::sized(self.reader_from(start), self.len - start)
    }
}

/// Lets a test hold a body at a given byte until it decides what happens next.
#[derive(Clone, Default)]
pub struct Gate {
    released: Arc<AtomicBool>,
}

impl Gate {
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

/// Reads a [`Gen`] from some position to its end. Counts what it has produced (shared through
/// [`GenReader::progress`]), can stop at a byte until a [`Gate`] opens, and can be throttled to a
/// byte rate.
pub struct GenReader {
    gen: Gen,
    pos: u64,
    start: u64,
    progress: Arc<AtomicU64>,
    /// Produce nothing past this many bytes (counted from the reader's start) until released.
    pause: Option<(u64, Gate)>,
    throttle: Option<(f64, Instant)>,
}

impl GenReader {
    /// Bytes produced so far, readable from another thread.
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// Hold the body after `after` bytes until the returned gate is released.
    pub fn pause_after(mut self, after: u64) -> (GenReader, Gate) {
        let gate = Gate::default();
        self.pause = Some((after, gate.clone()));
        (self, gate)
    }

    /// Produce at most `bytes_per_sec` on average.
    pub fn throttled(mut self, bytes_per_sec: f64) -> GenReader {
        self.throttle = Some((bytes_per_sec, Instant::now()));
        self
    }

    pub fn into_body(self) -> reqwest::blocking::Body {
        let len = self.gen.len - self.pos;
        reqwest::blocking::Body::sized(self, len)
    }
}

impl Read for GenReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.gen.len || buf.is_empty() {
            return Ok(0);
        }
        let mut want = (self.gen.len - self.pos).min(buf.len() as u64);
        let done = self.pos - self.start;
        if let Some((after, gate)) = &self.pause {
            if done >= *after {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !gate.released.load(Ordering::SeqCst) {
                    if Instant::now() > deadline {
                        return Err(io::Error::other("test gate never released"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                self.pause = None;
            } else {
                want = want.min(after - done);
            }
        }
        if let Some((rate, since)) = self.throttle {
            // Wait until the rate allows at least one more piece, then hand out what it allows.
            loop {
                let allowed = (since.elapsed().as_secs_f64() * rate) as u64;
                if allowed > done {
                    want = want.min(allowed - done).min(64 * 1024);
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let n = want as usize;
        self.gen.fill_at(self.pos, &mut buf[..n]);
        self.pos += want;
        self.progress.fetch_add(want, Ordering::SeqCst);
        Ok(n)
    }
}

/// Stream `r` to its end; returns (`sha256:<hex>`, length).
pub fn hash_reader(mut r: impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((format!("sha256:{}", hex::encode(h.finalize())), total));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// A blocking client with no overall timeout (large bodies) and no proxy.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(None)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The OCI error codes of an error body (`{"errors":[{"code":...}]}`).
pub fn oci_codes(body: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body:?}"));
    v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("error body has no errors array: {body}"))
        .iter()
        .map(|e| e["code"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Assert that `resp` has `status` and an OCI error body whose first code is `code`.
pub fn assert_oci_error(resp: reqwest::blocking::Response, status: u16, code: &str, what: &str) {
    let got = resp.status().as_u16();
    let body = resp.text().unwrap();
    assert_eq!(got, status, "{what}: status (body {body})");
    let codes = oci_codes(&body);
    assert_eq!(
        codes.first().map(String::as_str),
        Some(code),
        "{what}: error code in {body}"
    );
}

pub fn header(resp: &reqwest::blocking::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("response {} has no {name} header", resp.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Every file under `DIR/blobs` sits at `<alg>/<hh>/<hex>` and its content hashes to `<hex>`.
/// Returns how many blob files there are.
pub fn assert_blob_files_intact(data_dir: &Path) -> usize {
    let root = data_dir.join("blobs");
    let files = super::files_under(&root);
    for path in &files {
        let rel: Vec<String> = path
            .strip_prefix(&root)
            .unwrap()
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel.len(), 3, "unexpected file in the blob store: {path:?}");
        assert_eq!(rel[0], "sha256", "unexpected algorithm directory: {path:?}");
        let hex = &rel[2];
        assert_eq!(
            hex.len(),
            64,
            "blob file name is not a sha256 hex: {path:?}"
        );
        assert_eq!(
            &hex[..2],
            rel[1],
            "blob file in the wrong fan-out dir: {path:?}"
        );
        let (digest, _) = hash_reader(std::fs::File::open(path).unwrap()).unwrap();
        assert_eq!(
            digest,
            format!("sha256:{hex}"),
            "blob file {path:?} does not hash to its name: corrupt content in the store"
        );
    }
    files.len()
}

/// Size of the largest file under `dir` (0 if none).
pub fn largest_file(dir: &Path) -> u64 {
    super::files_under(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// Poll `cond` every 5 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    super::peers::poll_every(Duration::from_millis(5), timeout, cond)
}

/// Turn a `Location` header (absolute or absolute-path) into a URL on `base` (`http://host:port`).
pub fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// The upload URL that finishes a session at `location` with `digest`: a `Location` may or may
/// not carry a query already, so the parameter joins with `&` or starts one with `?`.
pub fn finish_url(location: &str, digest: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}digest={digest}")
}

/// A small tmpfs mounted for one test (a data volume that fills up), unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volume");
        std::fs::create_dir(&path).unwrap();
        crate::common::run(
            std::process::Command::new(crate::common::require("mount")).args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m"),
                "tmpfs",
                path.to_str().unwrap(),
            ]),
        );
        Tmpfs { path, _dir: dir }
    }

    /// Bytes free on it.
    pub fn available(&self) -> u64 {
        let out = crate::common::run(
            std::process::Command::new("df")
                .args(["--output=avail", "-B1"])
                .arg(&self.path),
        );
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Fill it with a file at `name` until only `leave` bytes are free.
    pub fn fill_leaving(&self, name: &str, leave: u64) {
        let size = self.available().saturating_sub(leave);
        let file = std::fs::File::create(self.path.join(name)).unwrap();
        let mut w = io::BufWriter::new(file);
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        w.flush().unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_seekable_and_deterministic() {
        let g = Gen::new(9, 1000);
        let all = g.to_vec();
        assert_eq!(all, g.to_vec());
        for start in [0u64, 1, 7, 8, 9, 500, 993] {
            assert_eq!(g.bytes(start, 7), all[start as usize..start as usize + 7]);
        }
        let mut r = g.reader_from(3);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, all[3..]);
        assert_eq!(g.digest(), crate::common::sha256(&all));
        assert_ne!(Gen::new(10, 1000).to_vec(), all);
    }

    /// The harness's readiness check: a port is "ours" only when the process holds the
    /// listening socket, on IPv4 and IPv6; another process's listener, or none, is not.
    #[test]
    fn a_listening_socket_belongs_only_to_its_process() {
        let me = std::process::id();
        let port = crate::common::free_port();
        assert!(!crate::common::listens_on(me, port), "nobody listens yet");
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert!(crate::common::listens_on(me, port));
        assert!(
            !crate::common::listens_on(1, port),
            "pid 1 does not hold it"
        );
        let connected = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        drop(listener);
        assert!(
            !crate::common::listens_on(me, port),
            "a connection left over is not a listener"
        );
        drop(connected);
        let port6 = crate::common::free_port();
        let _v6 = std::net::TcpListener::bind(("::1", port6)).unwrap();
        assert!(crate::common::listens_on(me, port6));
        assert!(crate::common::listeners_of(port6).contains(&port6.to_string()));
    }
}
