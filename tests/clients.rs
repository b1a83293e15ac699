//! Real clients against the real binary: skopeo (+ umoci), podman/buildah, containerd's `ctr`, the
//! Docker engine and the `oras` Python SDK push to and pull from a running `connected-registry`,
//! and every test checks what came back byte for byte (digests, blob bytes, status codes).
//!
//! Each test starts its own registry on a free loopback port with its own temp data directory,
//! uses its own temp dirs for client storage and unique image names, and cleans up the processes
//! (containerd) and Docker images it creates, so the tests run in parallel.

use crate::common;

use std::process::Command;

use common::clients::{
    assert_same_image, busybox_bytes, busybox_layout, oras, plain_log, skopeo_pull, skopeo_push,
    storage_args, tar, unique, Containerd, DockerImages, Layout,
};
use common::{require, run, sha256, Registry};
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

// ---- HTTP ------------------------------------------------------------------------------------

struct Http {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn http(method: reqwest::Method, reg: &Registry, path: &str) -> Http {
    let resp = reqwest::blocking::Client::new()
        .request(method, reg.url(path))
        .header("Accept", ACCEPT_ALL)
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().unwrap().to_vec();
    Http {
        status,
        headers,
        body,
    }
}

fn get(reg: &Registry, path: &str) -> Http {
    http(reqwest::Method::GET, reg, path)
}

/// GET a manifest, asserting 200, the media type and that the bytes hash to the digest header.
fn get_manifest(reg: &Registry, repo: &str, reference: &str, media_type: &str) -> Http {
    let r = get(reg, &format!("/v2/{repo}/manifests/{reference}"));
    assert_eq!(
        r.status,
        200,
        "GET manifest {repo}:{reference}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some(media_type));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(sha256(&r.body).as_str()),
        "Docker-Content-Digest must be the digest of the bytes served"
    );
    r
}

/// Every blob a manifest names (config and layers) is served from `repo` with exactly the bytes
/// its digest promises. Returns the number of blobs checked.
fn assert_blobs_served(reg: &Registry, repo: &str, manifest: &Value) -> usize {
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    for d in &descriptors {
        let digest = d["digest"].as_str().unwrap();
        let r = get(reg, &format!("/v2/{repo}/blobs/{digest}"));
        assert_eq!(r.status, 200, "blob {digest} in {repo}");
        assert_eq!(sha256(&r.body), digest, "blob bytes of {digest}");
        assert_eq!(r.body.len() as u64, d["size"].as_u64().unwrap());
    }
    descriptors.len()
}

// ---- 1. skopeo + umoci -----------------------------------------------------------------------

/// An image built by umoci (no daemon) is pushed with `skopeo copy --preserve-digests` and pulled
/// back into a fresh layout: the same manifest digest and every blob byte-identical; the
/// registry serves the manifest bytes under the tag, and skopeo sees the tag.
#[test]
fn skopeo_push_pull_umoci_image_byte_identical() {
    let umoci = require("umoci");
    require("skopeo");
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("layout");
    let bundle = tmp.path().join("bundle");
    let image = format!("{}:v1", src.display());
    run(Command::new(&umoci).args(["init", "--layout"]).arg(&src));
    run(Command::new(&umoci).args(["new", "--image", &image]));
    run(Command::new(&umoci)
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    std::fs::write(bundle.join("rootfs/hello.txt"), b"hello from umoci\n").unwrap();
    std::fs::create_dir_all(bundle.join("rootfs/app")).unwrap();
    std::fs::write(bundle.join("rootfs/app/data.bin"), vec![7u8; 300_000]).unwrap();
    run(Command::new(&umoci)
        .args(["repack", "--image", &image])
        .arg(&bundle));
    // `umoci config` must come after `repack` (test-peers.md §2).
    run(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/sh",
        "--author",
        "tests/clients.rs",
    ]));
    let pushed = Layout { dir: src };
    let manifest_desc = pushed.tagged("v1");
    let digest = manifest_desc["digest"].as_str().unwrap();

    let dest = format!("{}/skopeo/umoci", reg.host());
    skopeo_push(&pushed, "v1", &format!("{dest}:v1"), false);

    let served = get_manifest(&reg, "skopeo/umoci", "v1", OCI_MANIFEST);
    assert_eq!(served.header("docker-content-digest"), Some(digest));
    assert_eq!(
        served.body,
        pushed.blobs()[digest],
        "manifest bytes changed"
    );
    assert_eq!(
        assert_blobs_served(&reg, "skopeo/umoci", &served.json()),
        2,
        "config + one layer"
    );
    // The same bytes by digest.
    let by_digest = get_manifest(&reg, "skopeo/umoci", digest, OCI_MANIFEST);
    assert_eq!(by_digest.body, served.body);

    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{dest}:v1"),
    ]));
    assert_eq!(
        raw.as_bytes(),
        served.body.as_slice(),
        "skopeo inspect --raw"
    );
    let tags: Value = serde_json::from_str(&run(Command::new("skopeo").args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ])))
    .unwrap();
    assert_eq!(tags["Tags"], json!(["v1"]));

    let pulled = skopeo_pull(&format!("{dest}:v1"), &tmp.path().join("out"), "v1", false);
    assert_eq!(pulled.tagged("v1")["digest"], manifest_desc["digest"]);
    assert_same_image(&pushed, &pulled, "v1", "v1");
}

// ---- 2. a two-platform index -----------------------------------------------------------------

/// A hand-built linux/amd64 + linux/arm64 OCI index is pushed with `skopeo copy --all
/// --preserve-digests` and pulled back the same way: every manifest and blob byte-identical; the
/// registry serves the index under its tag with the index media type and exact bytes, and each
/// platform manifest by digest.
#[test]
fn skopeo_multi_platform_index_round_trip() {
    require("skopeo");
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::create(&tmp.path().join("layout"));
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let text = format!("built for linux/{arch}\n");
        let filler: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(31) ^ arch.len() as u32) as u8)
            .collect();
        let layer = tar(
            tmp.path(),
            &[
                ("etc/platform", text.as_bytes(), 0o644),
                ("data/filler.bin", &filler, 0o644),
            ],
        );
        let (mut desc, _) = layout.image(arch, &layer, &["/bin/true"]);
        desc["platform"] = json!({"architecture": arch, "os": "linux"});
        children.push(desc);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children,
        "annotations": {"org.opencontainers.image.description": "two platforms"},
    });
    let (index_desc, index_bytes) = layout.json_blob(OCI_INDEX, &index);
    layout.tag(&index_desc, "multi");
    let index_digest = index_desc["digest"].as_str().unwrap();
    assert_eq!(
        layout.blobs().len(),
        7,
        "index + 2 × (manifest, config, layer)"
    );

    let dest = format!("{}/multi/app:1", reg.host());
    skopeo_push(&layout, "multi", &dest, true);

    let served = get_manifest(&reg, "multi/app", "1", OCI_INDEX);
    assert_eq!(
        served.body, index_bytes,
        "index bytes must come back exactly"
    );
    assert_eq!(served.header("docker-content-digest"), Some(index_digest));
    let head = http(reqwest::Method::HEAD, &reg, "/v2/multi/app/manifests/1");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some(OCI_INDEX));
    assert_eq!(head.header("docker-content-digest"), Some(index_digest));
    assert_eq!(
        head.header("content-length"),
        Some(index_bytes.len().to_string().as_str())
    );
    let blobs = layout.blobs();
    for child in index["manifests"].as_array().unwrap() {
        let digest = child["digest"].as_str().unwrap();
        let r = get_manifest(&reg, "multi/app", digest, OCI_MANIFEST);
        assert_eq!(r.body, blobs[digest], "platform manifest {digest}");
        assert_eq!(assert_blobs_served(&reg, "multi/app", &r.json()), 2);
    }

    let pulled = skopeo_pull(&dest, &tmp.path().join("out"), "1", true);
    assert_eq!(pulled.tagged("1")["digest"], index_desc["digest"]);
    assert_eq!(pulled.tagged("1")["mediaType"], OCI_INDEX);
    assert_same_image(&layout, &pulled, "multi", "1");
}

// ---- 3. buildah + podman ---------------------------------------------------------------------

/// buildah builds an image from scratch holding /bin/busybox and pushes it; podman (in its own
/// vfs storage) pulls it and reports the pushed manifest digest and config (image id), then
/// pushes it to another repository, which the registry serves under podman's reported digest.
#[test]
fn buildah_push_podman_pull_and_push_busybox() {
    let buildah = require("buildah");
    let podman = require("podman");
    let busybox = require("busybox");
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let b_store = storage_args(&tmp.path().join("buildah"));
    let p_store = storage_args(&tmp.path().join("podman"));
    let buildah_cmd = || {
        let mut c = Command::new(&buildah);
        c.args(&b_store);
        c
    };
    let podman_cmd = || {
        let mut c = Command::new(&podman);
        c.args(&p_store).args(["--cgroup-manager", "cgroupfs"]);
        c
    };

    let container = run(buildah_cmd().args(["from", "scratch"]))
        .trim()
        .to_owned();
    run(buildah_cmd()
        .arg("copy")
        .arg(&container)
        .arg(std::fs::canonicalize(&busybox).unwrap())
        .arg("/bin/busybox"));
    run(buildah_cmd().args([
        "config",
        "--entrypoint",
        r#"["/bin/busybox"]"#,
        "--label",
        "org.example.test=clients",
        &container,
    ]));
    let image_id = run(buildah_cmd().args(["commit", "-q", &container, "localhost/bb:1"]))
        .trim()
        .to_owned();
    let digestfile = tmp.path().join("buildah.digest");
    let dest = format!("{}/podman/busybox:1", reg.host());
    run(buildah_cmd()
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .arg("localhost/bb:1")
        .arg(format!("docker://{dest}")));
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    let pushed = pushed.trim();
    assert!(pushed.starts_with("sha256:"), "digestfile: {pushed:?}");

    let served = get(&reg, "/v2/podman/busybox/manifests/1");
    assert_eq!(served.status, 200);
    assert_eq!(
        sha256(&served.body),
        pushed,
        "served bytes hash to the pushed digest"
    );
    assert_eq!(served.header("docker-content-digest"), Some(pushed));
    let manifest = served.json();
    assert_eq!(
        manifest["config"]["digest"].as_str().unwrap(),
        format!("sha256:{image_id}"),
        "config digest is buildah's image id"
    );
    assert_eq!(assert_blobs_served(&reg, "podman/busybox", &manifest), 2);

    let pull_out = run(podman_cmd().args(["pull", "--tls-verify=false", &dest]));
    assert_eq!(pull_out.trim(), image_id, "podman pull prints the image id");
    let inspect: Value = serde_json::from_str(&run(podman_cmd().args(["image", "inspect", &dest])))
        .expect("podman image inspect prints JSON");
    let img = &inspect[0];
    assert_eq!(
        img["Digest"], pushed,
        "podman sees the pushed manifest digest"
    );
    assert_eq!(img["Id"], image_id.as_str());
    let repo_digest = format!("{}/podman/busybox@{pushed}", reg.host());
    assert!(
        img["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == &repo_digest),
        "RepoDigests {} lacks {repo_digest}",
        img["RepoDigests"]
    );
    assert_eq!(img["Config"]["Entrypoint"], json!(["/bin/busybox"]));
    assert_eq!(img["Labels"]["org.example.test"], "clients");

    // podman push to another repository: the registry serves exactly what podman says it pushed.
    let digestfile = tmp.path().join("podman.digest");
    let dest2 = format!("{}/podman/copy:2", reg.host());
    run(podman_cmd()
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .arg(&dest)
        .arg(format!("docker://{dest2}")));
    let pushed2 = std::fs::read_to_string(&digestfile).unwrap();
    let served2 = get(&reg, "/v2/podman/copy/manifests/2");
    assert_eq!(served2.status, 200);
    assert_eq!(sha256(&served2.body), pushed2.trim());
    let manifest2 = served2.json();
    assert_eq!(manifest2["config"]["digest"], manifest["config"]["digest"]);
    assert_eq!(assert_blobs_served(&reg, "podman/copy", &manifest2), 2);
}

// ---- 4. containerd + ctr ---------------------------------------------------------------------

/// A busybox image pushed with skopeo is pulled by `ctr --plain-http` into a private containerd,
/// which reports the manifest digest we built, runs it (the unpacked layer is whole), and pushes
/// a re-tagged copy to another repository that the HTTP API then serves with every blob.
#[test]
fn containerd_ctr_pull_run_and_push() {
    require("ctr");
    require("skopeo");
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (layout, digest) = busybox_layout(tmp.path(), "1");
    let src = format!("{}/ctr/busybox:1", reg.host());
    skopeo_push(&layout, "1", &src, false);

    let ctd = Containerd::start(&tmp.path().join("containerd"));
    let out = run(ctd.ctr().args(["images", "pull", "--plain-http", &src]));
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(
        out.contains(&format!("manifest-sha256:{hex}")),
        "ctr pull output lacks the manifest digest {digest}:\n{out}"
    );
    let ls = run(ctd.ctr().args(["images", "ls"]));
    let line = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(src.as_str()))
        .unwrap_or_else(|| panic!("ctr images ls lacks {src}:\n{ls}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], OCI_MANIFEST, "{line}");
    assert_eq!(cols[2], digest, "{line}");
    let check = run(ctd.ctr().args(["images", "check"]));
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(&src) && l.contains("complete (2/2)")),
        "ctr images check:\n{check}"
    );

    // The unpacked snapshot runs: the layer arrived whole.
    let id = unique("ctr-run");
    let said = run(ctd.ctr().args([
        "run",
        "--rm",
        &src,
        &id,
        "/bin/busybox",
        "echo",
        "hello-from-ctr",
    ]));
    assert_eq!(said.trim(), "hello-from-ctr");

    // Re-tag and push to another repository of the same registry.
    let retagged = format!("{}/ctr/retagged:2", reg.host());
    run(ctd.ctr().args(["images", "tag", &src, &retagged]));
    run(ctd
        .ctr()
        .args(["images", "push", "--plain-http", &retagged]));
    let served = get_manifest(&reg, "ctr/retagged", "2", OCI_MANIFEST);
    assert_eq!(
        served.header("docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        served.body,
        layout.blobs()[&digest],
        "ctr pushed the same bytes"
    );
    assert_eq!(assert_blobs_served(&reg, "ctr/retagged", &served.json()), 2);
    let tags = get(&reg, "/v2/ctr/retagged/tags/list");
    assert_eq!(tags.status, 200);
    assert_eq!(tags.json()["tags"], json!(["2"]));
}

// ---- 5. Docker engine ------------------------------------------------------------------------

/// `docker import` of a tar holding a static busybox, `docker push` to the registry, remove the
/// local image, `docker pull` it back (same digest as pushed, served by the registry as a Docker
/// schema 2 manifest) and `docker run --rm` it.
#[test]
fn docker_push_pull_run() {
    let docker = require("docker");
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let busybox = busybox_bytes();
    let rootfs = tar(tmp.path(), &[("bin/busybox", &busybox, 0o755)]);
    let tar_path = tmp.path().join("rootfs.tar");
    std::fs::write(&tar_path, &rootfs).unwrap();
    let repo = format!("docker/{}", unique("bb"));
    let image = format!("{}/{repo}:t1", reg.host());
    let _cleanup = DockerImages(vec![image.clone()]);

    run(Command::new(&docker)
        .args(["import", "-c", r#"ENTRYPOINT ["/bin/busybox"]"#])
        .arg(&tar_path)
        .arg(&image));
    let push = run(Command::new(&docker).args(["push", &image]));
    let pushed = push
        .lines()
        .find_map(|l| l.strip_prefix("t1: digest: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{push}"))
        .to_owned();

    let served = get_manifest(&reg, &repo, "t1", DOCKER_MANIFEST);
    assert_eq!(
        served.header("docker-content-digest"),
        Some(pushed.as_str())
    );
    let manifest = served.json();
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(assert_blobs_served(&reg, &repo, &manifest), 2);

    run(Command::new(&docker).args(["rmi", &image]));
    let gone = Command::new(&docker)
        .args(["image", "inspect", &image])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "image still present after rmi");

    let pull = run(Command::new(&docker).args(["pull", &image]));
    assert!(
        pull.lines().any(|l| l == format!("Digest: {pushed}")),
        "docker pull digest differs from pushed {pushed}:\n{pull}"
    );
    let repo_digests = run(Command::new(&docker).args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &image,
    ]));
    let repo_digests: Value = serde_json::from_str(repo_digests.trim()).unwrap();
    assert!(
        repo_digests
            .as_array()
            .unwrap()
            .contains(&json!(format!("{}/{repo}@{pushed}", reg.host()))),
        "RepoDigests {repo_digests}"
    );

    let said = run(Command::new(&docker).args([
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "echo",
        "hello-from-docker",
    ]));
    assert_eq!(said.trim(), "hello-from-docker");
}

// ---- 6. oras ---------------------------------------------------------------------------------

/// oras pushes an artifact (custom layer and config media types), then a second artifact whose
/// `subject` is the first. The referrers API lists it with the right digest, media type,
/// artifactType and annotations, unfiltered and filtered by artifactType (with
/// `OCI-Filters-Applied`), and an unrelated filter yields an empty list. oras pulls the first
/// artifact back byte-identical.
#[test]
fn oras_push_referrer_and_pull() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let repo = "artifacts/deploy";
    let deployment = br#"{"apiVersion":"apps/v1","kind":"Deployment","replicas":3}"#;
    std::fs::write(work.join("repo"), repo).unwrap();
    std::fs::write(work.join("deployment.json"), deployment).unwrap();
    std::fs::write(work.join("config.json"), br#"{"created-by":"tests"}"#).unwrap();
    std::fs::write(work.join("signature.txt"), b"signed: yes\n").unwrap();

    let out = oras(&reg, "referrer", work);
    let artifact = out["artifact"]["digest"].as_str().unwrap().to_owned();
    let referrer = out["referrer"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        out["referrer"]["subject"], artifact,
        "PUT of a manifest with a subject answers OCI-Subject"
    );
    assert_eq!(out["artifact"]["subject"], Value::Null);
    // The SDK re-serialises the manifest it GETs to compute the subject digest: equal only if the
    // registry returned the pushed bytes exactly.
    assert_eq!(out["subject_from_sdk"]["digest"], artifact);
    assert_eq!(out["tags"], json!(["sig", "v1"]));

    let served = get_manifest(&reg, repo, "v1", OCI_MANIFEST);
    assert_eq!(
        served.header("docker-content-digest"),
        Some(artifact.as_str())
    );
    let manifest = served.json();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.example.deployment.config.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.example.deployment+json"
    );
    assert_eq!(manifest["layers"][0]["digest"], sha256(deployment));
    assert_blobs_served(&reg, repo, &manifest);
    let sig = get_manifest(&reg, repo, &referrer, OCI_MANIFEST);
    assert_eq!(sig.json()["subject"]["digest"], artifact);
    assert_blobs_served(&reg, repo, &sig.json());

    let sig_type = "application/vnd.example.signature.config.v1+json";
    let expected = json!({
        "mediaType": OCI_MANIFEST,
        "digest": referrer,
        "size": sig.body.len(),
        "artifactType": sig_type,
        "annotations": {"org.example.signed-by": "tests"},
    });
    let list = get(&reg, &format!("/v2/{repo}/referrers/{artifact}"));
    assert_eq!(list.status, 200);
    assert_eq!(list.header("content-type"), Some(OCI_INDEX));
    assert_eq!(list.header("oci-filters-applied"), None);
    let index = list.json();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(index["manifests"], json!([expected.clone()]));

    let filtered = get(
        &reg,
        // `+` must be sent as %2B: in a query string a bare `+` means a space.
        &format!(
            "/v2/{repo}/referrers/{artifact}?artifactType={}",
            sig_type.replace('+', "%2B")
        ),
    );
    assert_eq!(filtered.status, 200);
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(filtered.json()["manifests"], json!([expected]));

    let other = get(
        &reg,
        &format!("/v2/{repo}/referrers/{artifact}?artifactType=application/vnd.example.other"),
    );
    assert_eq!(other.status, 200);
    assert_eq!(other.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(other.json()["manifests"], json!([]));

    // Nothing refers to the referrer itself.
    let none = get(&reg, &format!("/v2/{repo}/referrers/{referrer}"));
    assert_eq!(none.status, 200);
    assert_eq!(none.json()["manifests"], json!([]));

    let pulled = std::fs::read(work.join("pulled/deployment.json")).unwrap();
    assert_eq!(pulled, deployment, "oras pulled different bytes");
    assert_eq!(
        out["pulled"],
        json!([work.join("pulled/deployment.json").display().to_string()])
    );
}

/// oras pushes a ~3 MiB file as a chunked upload (1 MiB PATCHes); the registry stores exactly
/// those bytes, and oras pulls them back identical.
#[test]
fn oras_chunked_push_and_pull() {
    let reg = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let repo = "artifacts/big";
    // 3 MiB + a bit, not a multiple of the chunk size, so the last chunk is short.
    let big: Vec<u8> = (0..(3 << 20) + 12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(work.join("repo"), repo).unwrap();
    std::fs::write(work.join("big.bin"), &big).unwrap();

    let out = oras(&reg, "chunked", work);
    let digest = out["artifact"]["digest"].as_str().unwrap();
    let served = get_manifest(&reg, repo, "chunked", OCI_MANIFEST);
    assert_eq!(served.header("docker-content-digest"), Some(digest));
    let manifest = served.json();
    assert_eq!(manifest["layers"][0]["digest"], sha256(&big));
    assert_eq!(manifest["layers"][0]["size"], big.len());
    assert_eq!(
        manifest["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "big.bin"
    );
    assert_blobs_served(&reg, repo, &manifest);

    // The upload really went in chunks: at least 4 PATCHes on an upload session of this repo.
    let log = plain_log(&reg);
    let patches = log
        .lines()
        .filter(|l| {
            l.contains("method=PATCH")
                && l.contains(&format!("path=/v2/{repo}/blobs/uploads/"))
                && l.contains("status=202")
        })
        .count();
    assert!(
        patches >= 4,
        "expected ≥ 4 chunk PATCHes, saw {patches}:\n{log}"
    );

    let pulled = std::fs::read(work.join("pulled/big.bin")).unwrap();
    assert!(pulled == big, "oras pulled different bytes");
}
