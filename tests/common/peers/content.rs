//! Content built by hand: pseudo-random blobs, single-platform images with shared layers,
//! two-platform indexes and artifacts with a `subject`; written as OCI layouts and pushed or
//! pulled with `skopeo`.

use super::*;

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
