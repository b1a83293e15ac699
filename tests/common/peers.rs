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

// ---- content ---------------------------------------------------------------------------------

/// `len` pseudo-random bytes determined by `seed` (splitmix64), so every test has its own.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A blob: its media type, bytes and digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_owned(),
            digest: sha256(&bytes),
            bytes,
        }
    }

    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// A manifest (image or artifact) or an index, with everything it references.
#[derive(Debug, Clone)]
pub struct Image {
    pub media_type: String,
    /// The exact manifest bytes.
    pub bytes: Vec<u8>,
    pub digest: String,
    /// Config and layers (for a manifest).
    pub blobs: Vec<Blob>,
    /// Child manifests (for an index).
    pub children: Vec<Image>,
    /// `os/arch` of a platform image.
    pub platform: Option<String>,
    pub artifact_type: Option<String>,
}

impl Image {
    fn from_doc(media_type: &str, doc: &Value, blobs: Vec<Blob>, children: Vec<Image>) -> Image {
        // Pretty-printed on purpose: a registry that re-serialises would change the digest.
        let bytes = serde_json::to_vec_pretty(doc).unwrap();
        Image {
            media_type: media_type.to_owned(),
            digest: sha256(&bytes),
            bytes,
            blobs,
            children,
            platform: None,
            artifact_type: None,
        }
    }

    /// A single-platform image with a config and the given layers (uncompressed tar media type,
    /// so `skopeo --preserve-digests` pushes them as they are).
    pub fn new(os_arch: &str, layers: &[Vec<u8>]) -> Image {
        let (os, arch) = os_arch.split_once('/').unwrap();
        let layers: Vec<Blob> = layers
            .iter()
            .map(|l| Blob::new(OCI_LAYER_TAR, l.clone()))
            .collect();
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        });
        let config = Blob::new(OCI_CONFIG, serde_json::to_vec(&config).unwrap());
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let mut blobs = vec![config];
        blobs.extend(layers);
        let mut image = Image::from_doc(OCI_MANIFEST, &doc, blobs, vec![]);
        image.platform = Some(os_arch.to_owned());
        image
    }

    /// A Docker image manifest (schema 2) with gzip-typed layers.
    pub fn docker(os_arch: &str, layers: &[Vec<u8>]) -> Image {
        let (os, arch) = os_arch.split_once('/').unwrap();
        let layers: Vec<Blob> = layers
            .iter()
            .map(|l| Blob::new(DOCKER_LAYER, l.clone()))
            .collect();
        let config = json!({"architecture": arch, "os": os, "config": {},
            "rootfs": {"type": "layers", "diff_ids": []}});
        let config = Blob::new(DOCKER_CONFIG, serde_json::to_vec(&config).unwrap());
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let mut blobs = vec![config];
        blobs.extend(layers);
        let mut image = Image::from_doc(DOCKER_MANIFEST, &doc, blobs, vec![]);
        image.platform = Some(os_arch.to_owned());
        image
    }

    /// A Docker manifest list over Docker platform images.
    pub fn docker_list(children: Vec<Image>) -> Image {
        let mut list = Image::index(children);
        let mut doc: Value = serde_json::from_slice(&list.bytes).unwrap();
        doc["mediaType"] = json!(DOCKER_LIST);
        Image::from_doc(
            DOCKER_LIST,
            &doc,
            vec![],
            std::mem::take(&mut list.children),
        )
    }

    /// An OCI index over platform images.
    pub fn index(children: Vec<Image>) -> Image {
        let manifests: Vec<Value> = children
            .iter()
            .map(|c| {
                let (os, arch) = c.platform.as_deref().unwrap().split_once('/').unwrap();
                json!({
                    "mediaType": c.media_type, "digest": c.digest, "size": c.bytes.len(),
                    "platform": {"os": os, "architecture": arch},
                })
            })
            .collect();
        let doc = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        Image::from_doc(OCI_INDEX, &doc, vec![], children)
    }

    /// An artifact (e.g. a signature or an SBOM) whose `subject` is `subject`.
    pub fn artifact(subject: &Image, artifact_type: &str, payload: &[u8]) -> Image {
        let config = Blob::new(OCI_EMPTY, b"{}".to_vec());
        let layer = Blob::new("application/vnd.example.payload", payload.to_vec());
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
            "subject": subject.descriptor(),
            "annotations": {"org.example.kind": artifact_type},
        });
        let mut image = Image::from_doc(OCI_MANIFEST, &doc, vec![config, layer], vec![]);
        image.artifact_type = Some(artifact_type.to_owned());
        image
    }

    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }

    /// Every blob (not manifest) this image references, children included, by digest.
    pub fn all_blobs(&self) -> BTreeMap<String, Blob> {
        let mut out = BTreeMap::new();
        for b in &self.blobs {
            out.insert(b.digest.clone(), b.clone());
        }
        for c in &self.children {
            out.extend(c.all_blobs());
        }
        out
    }

    /// The child for `os/arch`.
    pub fn child(&self, os_arch: &str) -> &Image {
        self.children
            .iter()
            .find(|c| c.platform.as_deref() == Some(os_arch))
            .unwrap_or_else(|| panic!("no {os_arch} child"))
    }
}

// ---- OCI layouts and skopeo --------------------------------------------------------------------

/// Write `images` (tag, image) as one OCI image layout at `dir`.
pub fn write_layout(dir: &Path, images: &[(&str, &Image)]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fn put(dir: &Path, digest: &str, bytes: &[u8]) {
        let path = dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap());
        if !path.exists() {
            std::fs::write(path, bytes).unwrap();
        }
    }
    fn put_image(dir: &Path, image: &Image) {
        put(dir, &image.digest, &image.bytes);
        for b in &image.blobs {
            put(dir, &b.digest, &b.bytes);
        }
        for c in &image.children {
            put_image(dir, c);
        }
    }
    let mut manifests = Vec::new();
    for (tag, image) in images {
        put_image(dir, image);
        let mut d = image.descriptor();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        manifests.push(d);
    }
    let index = json!({"schemaVersion": 2, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Push each (tag, image) to `host/repo:tag` with `skopeo copy --all --preserve-digests`,
/// through an OCI layout written in `work`.
pub fn skopeo_seed(work: &Path, host: &str, repo: &str, images: &[(&str, &Image)]) {
    skopeo_seed_as(work, host, repo, images, None);
    // skopeo pushed the exact bytes: the parent serves every manifest and blob as built.
    for (tag, image) in images {
        assert_serves(&format!("http://{host}"), repo, tag, image, None);
    }
}

/// [`skopeo_seed`] with `user:password` credentials (no anonymous check afterwards).
pub fn skopeo_seed_as(
    work: &Path,
    host: &str,
    repo: &str,
    images: &[(&str, &Image)],
    creds: Option<&str>,
) {
    let skopeo = require("skopeo");
    let dir = work.join(format!("layout-{}", repo.replace('/', "_")));
    write_layout(&dir, images);
    for (tag, _) in images {
        run(Command::new(&skopeo)
            .args([
                "copy",
                "--quiet",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .args(creds.map(|c| format!("--dest-creds={c}")))
            .arg(format!("oci:{}:{tag}", dir.display()))
            .arg(format!("docker://{host}/{repo}:{tag}")));
    }
}

/// `skopeo copy --all` `host/repo:tag` into an OCI layout at `dir`; returns the digest of the
/// top manifest (index or image) as the layout records it, after checking it hashes right.
pub fn skopeo_pull(host: &str, repo: &str, tag: &str, dir: &Path) -> String {
    let skopeo = require("skopeo");
    run(Command::new(&skopeo)
        .args([
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{host}/{repo}:{tag}"))
        .arg(format!("oci:{}:{tag}", dir.display())));
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"))
        .clone();
    let digest = d["digest"].as_str().unwrap().to_owned();
    let bytes = std::fs::read(dir.join("blobs/sha256").join(&digest[7..])).unwrap();
    assert_eq!(
        sha256(&bytes),
        digest,
        "pulled manifest bytes hash to their digest"
    );
    digest
}

// ---- HTTP ------------------------------------------------------------------------------------

pub struct Http {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.text())
    }
}

impl Http {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Send a request to `base` + `path` (base like `http://127.0.0.1:5000`).
pub fn request(
    method: reqwest::Method,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Http {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{base}{path}")
    };
    let mut req = client()
        .request(method.clone(), &url)
        .header("Accept", ACCEPT_ALL);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().unwrap().to_vec();
    Http {
        status,
        headers,
        body,
    }
}

pub fn get(base: &str, path: &str) -> Http {
    request(reqwest::Method::GET, base, path, &[], None)
}

pub fn head(base: &str, path: &str) -> Http {
    request(reqwest::Method::HEAD, base, path, &[], None)
}

pub fn delete(base: &str, path: &str) -> Http {
    request(reqwest::Method::DELETE, base, path, &[], None)
}

/// The tags `GET /v2/<repo>/tags/list` names, sorted; `None` on 404.
pub fn tags(base: &str, repo: &str) -> Option<Vec<String>> {
    let r = get(base, &format!("/v2/{repo}/tags/list"));
    if r.status == 404 {
        return None;
    }
    assert_eq!(r.status, 200, "tags/list of {repo}: {}", r.text());
    let mut tags: Vec<String> = r.json()["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    tags.sort();
    Some(tags)
}

/// The digest `GET /v2/<repo>/manifests/<reference>` serves, if 200.
pub fn manifest_digest(base: &str, repo: &str, reference: &str) -> Option<String> {
    let r = get(base, &format!("/v2/{repo}/manifests/{reference}"));
    (r.status == 200).then(|| sha256(&r.body))
}

/// Assert `base` serves `image` under `reference`: the exact manifest bytes, media type and
/// digest header, and (recursively, for an index: only the `platforms` given, or all) every
/// blob with its exact bytes. Returns the number of blobs checked.
pub fn assert_serves(
    base: &str,
    repo: &str,
    reference: &str,
    image: &Image,
    platforms: Option<&[&str]>,
) -> usize {
    let r = get(base, &format!("/v2/{repo}/manifests/{reference}"));
    assert_eq!(
        r.status,
        200,
        "GET {base}/v2/{repo}/manifests/{reference}: {}",
        r.text()
    );
    assert!(
        r.body == image.bytes,
        "manifest {repo}:{reference} bytes differ:\nserved {}\nexpected {}",
        r.text(),
        String::from_utf8_lossy(&image.bytes)
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    assert_eq!(r.header("content-type"), Some(image.media_type.as_str()));
    let mut n = 0;
    for b in &image.blobs {
        let r = get(base, &format!("/v2/{repo}/blobs/{}", b.digest));
        assert_eq!(r.status, 200, "blob {} of {repo}:{reference}", b.digest);
        assert!(r.body == b.bytes, "blob {} bytes differ", b.digest);
        n += 1;
    }
    for c in &image.children {
        let wanted = platforms.is_none_or(|p| p.contains(&c.platform.as_deref().unwrap()));
        if wanted {
            n += assert_serves(base, repo, &c.digest, c, None);
        }
    }
    n
}

/// Open an upload session in `repo` on `base`; returns its absolute URL.
pub fn start_upload(base: &str, repo: &str) -> String {
    let r = request(
        reqwest::Method::POST,
        base,
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        None,
    );
    assert_eq!(r.status, 202, "POST upload to {repo}: {}", r.text());
    super::support::absolute(base, r.header("location").expect("Location"))
}

/// Push a blob to `base` (monolithic: POST then PUT with the digest).
pub fn push_blob(base: &str, repo: &str, blob: &Blob) {
    let r = head(base, &format!("/v2/{repo}/blobs/{}", blob.digest));
    if r.status == 200 {
        return;
    }
    let location = start_upload(base, repo);
    let r = request(
        reqwest::Method::PUT,
        base,
        &super::support::finish_url(&location, &blob.digest),
        &[("Content-Type", "application/octet-stream")],
        Some(blob.bytes.clone()),
    );
    assert_eq!(r.status, 201, "PUT blob {}: {}", blob.digest, r.text());
}

/// Push `image` (its blobs, its children by digest, then itself) to `base` under `reference`
/// (a tag, or its digest). Returns the response headers of the final manifest PUT.
pub fn push_image(base: &str, repo: &str, reference: &str, image: &Image) -> Http {
    for b in &image.blobs {
        push_blob(base, repo, b);
    }
    for c in &image.children {
        push_image(base, repo, &c.digest, c);
    }
    let r = request(
        reqwest::Method::PUT,
        base,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", &image.media_type)],
        Some(image.bytes.clone()),
    );
    assert_eq!(
        r.status,
        201,
        "PUT manifest {repo}:{reference}: {}",
        r.text()
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    r
}

/// `DELETE /v2/<repo>/manifests/<digest>` (distribution also drops every tag on it).
pub fn delete_manifest(base: &str, repo: &str, digest: &str) {
    let r = delete(base, &format!("/v2/{repo}/manifests/{digest}"));
    assert_eq!(r.status, 202, "DELETE {repo}@{digest}: {}", r.text());
}

// ---- distribution ----------------------------------------------------------------------------

/// Debian's `docker-registry` (CNCF distribution 2.8) on a free port with deletes enabled;
/// killed on drop.
pub struct Distribution {
    pub port: u16,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Distribution {
    pub fn start() -> Distribution {
        Distribution::start_with_auth(None)
    }

    /// With `Some((user, password))`: htpasswd (bcrypt) Basic authentication on every request.
    pub fn start_with_auth(auth: Option<(&str, &str)>) -> Distribution {
        let htpasswd = auth.map(|(user, password)| {
            run(Command::new(require("htpasswd")).args(["-Bbn", user, password]))
        });
        Distribution::start_with_auth_section(move |dir| match htpasswd {
            None => String::new(),
            Some(line) => {
                let file = dir.join("htpasswd");
                std::fs::write(&file, line.trim()).unwrap();
                format!(
                    "auth:\n  htpasswd: {{realm: test-realm, path: {}}}\n",
                    file.display()
                )
            }
        })
    }

    /// `auth` returns the configuration's `auth:` section (empty for none), given the
    /// registry's own temporary directory to put files in (an htpasswd file, a token CA).
    pub fn start_with_auth_section(auth: impl FnOnce(&Path) -> String) -> Distribution {
        require("docker-registry");
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = tmp.path().join("config.yml");
        let auth = auth(tmp.path());
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log: {{level: info, accesslog: {{disabled: true}}}}\n\
                 storage:\n  cache: {{blobdescriptor: inmemory}}\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                tmp.path().join("root").display()
            ),
        )
        .unwrap();
        let mut d = Distribution {
            port,
            child: None,
            config,
            log: tmp.path().join("registry.log"),
            _tmp: tmp,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(require("docker-registry"))
            .arg("serve")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let pid = child.id();
        self.child = Some(child);
        let (base, port) = (self.url(), self.port);
        // Its own listening socket, not just an answer: another program on the port answers too.
        let ok = wait_until(Duration::from_secs(20), || {
            super::listens_on(pid, port)
                && reqwest::blocking::get(format!("{base}/v2/"))
                    .map(|r| matches!(r.status().as_u16(), 200 | 401))
                    .unwrap_or(false)
        });
        assert!(
            ok,
            "docker-registry did not start on {port} (who listens there: {}):\n{}",
            super::listeners_of(port),
            self.log_text()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn();
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- connected-registry nodes ----------------------------------------------------------------

/// A `connected-registry serve --config child.json` node (or a root, with no parent).
pub struct Node {
    pub reg: Registry,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.reg
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Registry {
        &mut self.reg
    }
}

/// `{"parent": {"endpoint": endpoint, "sync": sync}}`.
pub fn child_config(endpoint: &str, sync: Value) -> Value {
    json!({"parent": {"endpoint": endpoint, "sync": sync}})
}

impl Node {
    /// A child of `endpoint` syncing per `sync` (the `parent.sync` object).
    pub fn child(endpoint: &str, sync: Value) -> Node {
        Node::with_config(child_config(endpoint, sync))
    }

    /// A node started with `config` as its `--config` file.
    pub fn with_config(config: Value) -> Node {
        Node::with_config_in(config, None)
    }

    /// [`Node::with_config`] with its data in `data_dir` (a small filesystem, a fixture).
    /// Polling a parent with no feed backs off to at most 5 s here unless the test says
    /// otherwise, so a change is noticed within a test's patience.
    pub fn with_config_in(mut config: Value, data_dir: Option<PathBuf>) -> Node {
        if let Some(sync) = config
            .pointer_mut("/parent/sync")
            .and_then(Value::as_object_mut)
        {
            sync.entry("maxPollInterval").or_insert(json!("PT5S"));
        }
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("child.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let reg = Registry::start_in(data_dir, &["--config", config_path.to_str().unwrap()], &[]);
        Node {
            reg,
            config_path,
            _dir: dir,
        }
    }

    /// Replace the config file (takes effect at the next restart).
    pub fn rewrite_config(&self, config: Value) {
        std::fs::write(
            &self.config_path,
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    /// `http://127.0.0.1:<port>`
    pub fn base(&self) -> String {
        self.reg.url("")
    }
}

/// `GET /acr/connected-registry/v1/status` of the node at `base`.
pub fn status(base: &str) -> Value {
    let r = get(base, "/acr/connected-registry/v1/status");
    assert_eq!(r.status, 200, "status: {}", r.text());
    r.json()
}

/// The codes in `statusDetails`.
pub fn detail_codes(status: &Value) -> Vec<String> {
    status["statusDetails"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Run `connected-registry <args>` to completion (killed after `timeout`), its output read as
/// it runs (a command printing more than a pipe holds must not block and look hung).
pub fn run_cli(args: &[&str], timeout: Duration) -> Output {
    super::images::run_bounded(Command::new(BIN).args(args).env("NO_COLOR", "1"), timeout)
}

/// Strip ANSI escape sequences (colours, cursor moves of a progress bar).
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
