//! The real client programs as the tests drive them: OCI layouts written by hand and copied with
//! skopeo, a runnable static-busybox image, podman/buildah storage flags, a private containerd
//! for `ctr`, Docker image clean-up, and the `oras` Python SDK script.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::peers::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST};
use super::{require, run, sha256, Registry};

// ---- OCI layouts -----------------------------------------------------------------------------

/// A hand-written OCI image layout directory.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn create(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// Store `bytes` as a blob and return its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::write(self.dir.join("blobs/sha256").join(hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// Store a JSON document as a blob (its serialised bytes are what gets hashed).
    pub fn json_blob(&self, media_type: &str, doc: &Value) -> (Value, Vec<u8>) {
        let bytes = serde_json::to_vec(doc).unwrap();
        (self.blob(media_type, &bytes), bytes)
    }

    /// Write `index.json` naming `descriptor` under `tag`.
    pub fn tag(&self, descriptor: &Value, tag: &str) {
        let mut d = descriptor.clone();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [d]});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    /// A single-platform image whose one uncompressed layer is `layer_tar`. Returns the manifest
    /// descriptor and bytes.
    pub fn image(&self, arch: &str, layer_tar: &[u8], entrypoint: &[&str]) -> (Value, Vec<u8>) {
        let layer = self.blob(OCI_LAYER_TAR, layer_tar);
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            "history": [{"created_by": "tests/clients.rs"}],
        });
        let (config, _) = self.json_blob(OCI_CONFIG, &config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [layer],
        });
        self.json_blob(OCI_MANIFEST, &manifest)
    }

    /// Every blob file, by digest, after checking each file's name is the digest of its bytes.
    pub fn blobs(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(self.dir.join("blobs/sha256")).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let digest = format!("sha256:{}", path.file_name().unwrap().to_str().unwrap());
            assert_eq!(sha256(&bytes), digest, "corrupt blob file {path:?}");
            out.insert(digest, bytes);
        }
        out
    }

    /// The blobs reachable from `descriptor` (an index, a manifest, or a plain blob), by digest:
    /// what a copy of that one image must hold. Panics if one is missing.
    pub fn reachable(&self, descriptor: &Value) -> BTreeMap<String, Vec<u8>> {
        let all = self.blobs();
        let mut out = BTreeMap::new();
        let mut todo = vec![descriptor.clone()];
        while let Some(d) = todo.pop() {
            let digest = d["digest"].as_str().unwrap().to_owned();
            let bytes = all
                .get(&digest)
                .unwrap_or_else(|| panic!("blob {digest} missing from {:?}", self.dir))
                .clone();
            assert_eq!(
                d["size"].as_u64(),
                Some(bytes.len() as u64),
                "size of {digest}"
            );
            let media_type = d["mediaType"].as_str().unwrap_or("");
            if media_type == OCI_INDEX || media_type == OCI_MANIFEST {
                let doc: Value = serde_json::from_slice(&bytes).unwrap();
                for key in ["manifests", "layers"] {
                    if let Some(list) = doc[key].as_array() {
                        todo.extend(list.iter().cloned());
                    }
                }
                if doc["config"].is_object() {
                    todo.push(doc["config"].clone());
                }
            }
            out.insert(digest, bytes);
        }
        out
    }

    /// The descriptor `index.json` gives for `tag`.
    pub fn tagged(&self, tag: &str) -> Value {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("no tag {tag} in {index}"))
            .clone()
    }

    /// `oci:<dir>:<tag>` for skopeo.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }
}

/// A tar of `files` (path, bytes, mode), owned by root, with fixed times.
pub fn tar(work: &Path, files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    require("tar");
    let root = work.join(format!("tar-root-{}", files.len()));
    for (path, bytes, mode) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let out = Command::new("tar")
        .args([
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mtime=@0",
            "-C",
        ])
        .arg(&root)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar failed: {out:?}");
    std::fs::remove_dir_all(&root).unwrap();
    out.stdout
}

/// The host's architecture in OCI words.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn busybox_bytes() -> Vec<u8> {
    require("busybox");
    let path = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed as /bin/busybox");
    std::fs::read(path).unwrap()
}

/// A runnable image holding only a static busybox at /bin/busybox, as an OCI layout tagged `tag`.
/// Returns the layout and the manifest's digest.
pub fn busybox_layout(work: &Path, tag: &str) -> (Layout, String) {
    let layout = Layout::create(&work.join("busybox-layout"));
    let busybox = busybox_bytes();
    let layer = tar(work, &[("bin/busybox", &busybox, 0o755)]);
    let (manifest, _) = layout.image(host_arch(), &layer, &["/bin/busybox"]);
    layout.tag(&manifest, tag);
    let digest = manifest["digest"].as_str().unwrap().to_owned();
    (layout, digest)
}

pub fn skopeo_push(layout: &Layout, tag: &str, dest: &str, all: bool) {
    let mut cmd = Command::new(require("skopeo"));
    cmd.args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if all {
        cmd.arg("--all");
    }
    run(cmd
        .arg(layout.reference(tag))
        .arg(format!("docker://{dest}")));
}

pub fn skopeo_pull(src: &str, layout_dir: &Path, tag: &str, all: bool) -> Layout {
    let mut cmd = Command::new(require("skopeo"));
    cmd.args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
    ]);
    if all {
        cmd.arg("--all");
    }
    run(cmd
        .arg(format!("docker://{src}"))
        .arg(format!("oci:{}:{tag}", layout_dir.display())));
    Layout {
        dir: layout_dir.to_path_buf(),
    }
}

/// Assert the image under `pushed_tag` and `pulled_tag` is the same, every manifest and blob byte for
/// byte, and that the pulled layout holds nothing else.
pub fn assert_same_image(pushed: &Layout, pulled: &Layout, pushed_tag: &str, pulled_tag: &str) {
    let a = pushed.reachable(&pushed.tagged(pushed_tag));
    let b = pulled.reachable(&pulled.tagged(pulled_tag));
    assert_eq!(
        pulled.blobs().len(),
        b.len(),
        "pulled layout holds blobs the image does not use"
    );
    let a_keys: Vec<_> = a.keys().collect();
    let b_keys: Vec<_> = b.keys().collect();
    assert_eq!(a_keys, b_keys, "pulled layout holds different blobs");
    for (digest, bytes) in &a {
        assert!(
            b[digest] == *bytes,
            "blob {digest} differs after the round trip"
        );
    }
}

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// The registry log without ANSI colour codes.
pub fn plain_log(reg: &Registry) -> String {
    let text = reg.log_text();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn storage_args(root: &Path) -> Vec<String> {
    vec![
        "--root".into(),
        root.join("root").display().to_string(),
        "--runroot".into(),
        root.join("run").display().to_string(),
        "--storage-driver".into(),
        "vfs".into(),
    ]
}

/// A private containerd (own root, state and sockets in a temp dir; CRI disabled), stopped on drop.
pub struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        let containerd = require("containerd");
        require("runc");
        let config = dir.join("config.toml");
        let socket = dir.join("containerd.sock");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{dir}/debug.sock"
[metrics]
  address = ""
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
                dir = dir.display(),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new("ctr")
                .arg("-a")
                .arg(&c.socket)
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return c;
            }
            if let Some(status) = c.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({status}):\n{}", c.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes the Docker images a test created, whatever happens.
pub struct DockerImages(pub Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker")
                .args(["rmi", "--force", image])
                .output();
        }
    }
}

pub fn oras_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oras_client.py")
}

pub fn oras(reg: &Registry, mode: &str, work: &Path) -> Value {
    oras_as(reg, mode, work, None)
}

/// [`oras`] logged in as `credentials` (name, password).
pub fn oras_as(
    reg: &Registry,
    mode: &str,
    work: &Path,
    credentials: Option<(&str, &str)>,
) -> Value {
    let python = require("python3");
    let check = Command::new(&python)
        .args(["-c", "import oras"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the oras Python package is not installed (scripts/test.sh installs oras==0.2.43)"
    );
    let mut cmd = Command::new(&python);
    cmd.arg(oras_script()).arg(reg.host()).arg(mode).arg(work);
    if let Some((user, password)) = credentials {
        cmd.env("ORAS_USER", user).env("ORAS_PASSWORD", password);
    }
    let out = run(&mut cmd);
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("oras script printed no JSON ({e}):\n{out}"))
}
