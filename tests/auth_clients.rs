//! Real clients with credentials against the real binary: `docker login` then push and pull,
//! `skopeo --creds`, `podman login`, `ctr --user` and oras, each allowed with the right token and
//! refused without credentials or with a token that lacks the action.

use crate::common;

use common::attempt;
use common::credentials::{create_token, send_as, SecuredNode};
use reqwest::Method;
use serde_json::json;

/// docker login + push/pull, skopeo --creds, podman login, ctr --user and oras, each allowed
/// with the right token and refused without credentials or with a token lacking the action.
#[test]
fn real_clients_log_in_push_and_pull() {
    use common::clients::{
        busybox_bytes, busybox_layout, oras_as, storage_args, tar, unique, Containerd, DockerImages,
    };
    use common::{require, run};
    use std::process::Command;

    let docker = require("docker");
    let skopeo = require("skopeo");
    let podman = require("podman");
    require("ctr");
    let (mut ci, mut puller) = (String::new(), String::new());
    let node = SecuredNode::start(json!({"name": "clientsnode"}), |config| {
        ci = create_token(
            config,
            "ci",
            &[
                "--repository",
                "apps/*",
                "content/read",
                "content/write",
                "metadata/read",
            ],
        );
        puller = create_token(
            config,
            "puller",
            &["--repository", "apps/*", "content/read", "metadata/read"],
        );
    });
    let host = node.reg.host();
    let tmp = tempfile::tempdir().unwrap();

    // Docker engine, with its own client configuration so logins stay in this test.
    let docker_config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    let docker_cmd = || {
        let mut c = Command::new(&docker);
        c.arg("--config").arg(&docker_config);
        c
    };
    let login = |user: &str, password: &str| {
        let mut c = docker_cmd();
        c.args(["login", &host, "-u", user, "--password", password]);
        attempt(&mut c)
    };
    let rootfs = tar(tmp.path(), &[("bin/busybox", &busybox_bytes(), 0o755)]);
    std::fs::write(tmp.path().join("rootfs.tar"), &rootfs).unwrap();
    let image = format!("{host}/apps/{}:1", unique("dk"));
    let denied_image = format!("{host}/apps/{}:1", unique("dk-denied"));
    let _cleanup = DockerImages(vec![image.clone(), denied_image.clone()]);
    run(docker_cmd()
        .arg("import")
        .arg(tmp.path().join("rootfs.tar"))
        .arg(&image));
    let (ok, out) = login("ci", "not-the-password");
    assert!(!ok && out.contains("invalid username or password"), "{out}");
    let (ok, out) = login("ci", &ci);
    assert!(ok, "{out}");
    run(docker_cmd().args(["push", &image]));
    run(docker_cmd().args(["rmi", &image]));
    run(docker_cmd().args(["logout", &host]));
    let (ok, out) = attempt(docker_cmd().args(["pull", &image]));
    assert!(
        !ok && out.contains("credentials required"),
        "anonymous pull: {out}"
    );
    assert!(login("puller", &puller).0);
    run(docker_cmd().args(["pull", &image]));
    run(docker_cmd().args(["tag", &image, &denied_image]));
    let (ok, out) = attempt(docker_cmd().args(["push", &denied_image]));
    assert!(
        !ok && out.contains("lacks repositories/apps/"),
        "push as puller: {out}"
    );
    assert!(out.contains("content/write"), "{out}");

    // skopeo with --dest-creds / --src-creds.
    let (layout, digest) = busybox_layout(tmp.path(), "1");
    let dest = format!("docker://{host}/apps/sk:1");
    let copy = |creds: Option<(&str, &str)>| {
        let mut c = Command::new(&skopeo);
        c.args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = creds {
            c.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        c.arg(layout.reference("1")).arg(&dest);
        attempt(&mut c)
    };
    let (ok, out) = copy(None);
    assert!(!ok && out.contains("credentials required"), "{out}");
    let (ok, out) = copy(Some(("puller", &puller)));
    assert!(
        !ok && out.contains("lacks repositories/apps/sk/content/write"),
        "{out}"
    );
    let (ok, out) = copy(Some(("ci", &ci)));
    assert!(ok, "{out}");
    let inspect = run(Command::new(&skopeo).args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("puller:{puller}"),
        &dest,
    ]));
    let inspected: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspected["Digest"], digest.as_str());

    // podman login, then pull into its own storage.
    let authfile = tmp.path().join("podman-auth.json");
    let podman_cmd = || {
        let mut c = Command::new(&podman);
        c.args(storage_args(&tmp.path().join("podman")));
        c
    };
    run(podman_cmd()
        .args([
            "login",
            "--tls-verify=false",
            "-u",
            "puller",
            "-p",
            &puller,
            "--authfile",
        ])
        .arg(&authfile)
        .arg(&host));
    let pulled = run(podman_cmd()
        .args(["pull", "--tls-verify=false", "--authfile"])
        .arg(&authfile)
        .arg(format!("{host}/apps/sk:1")));
    assert!(!pulled.trim().is_empty());
    let digest_seen = run(podman_cmd().args([
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &format!("{host}/apps/sk:1"),
    ]));
    assert_eq!(digest_seen.trim(), digest);

    // containerd's ctr with --user (it tries the OAuth POST first, then GET).
    let ctd = Containerd::start(&tmp.path().join("containerd"));
    let reference = format!("{host}/apps/sk:1");
    let (ok, out) = attempt(
        ctd.ctr()
            .args(["images", "pull", "--plain-http", &reference]),
    );
    assert!(!ok, "anonymous ctr pull: {out}");
    let out = run(ctd.ctr().args([
        "images",
        "pull",
        "--plain-http",
        "--user",
        &format!("puller:{puller}"),
        &reference,
    ]));
    assert!(out.contains(&format!("manifest-{digest}")), "{out}");

    // oras (Python SDK) with Basic credentials at the realm.
    let work = tmp.path().join("oras");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("repo"), "apps/oras").unwrap();
    std::fs::write(work.join("deployment.json"), br#"{"kind":"Deployment"}"#).unwrap();
    let out = oras_as(&node.reg, "simple", &work, Some(("ci", &ci)));
    assert_eq!(out["artifact"]["status"], 201, "{out}");
    assert!(out.get("pull_error").is_none(), "{out}");
    // (Refusals are not driven through oras: its SDK retries a refused request with backoff
    // for minutes; the other clients above show them.)
    let r = send_as(
        Method::GET,
        &node.base(),
        "/v2/apps/oras/manifests/v1",
        None,
        None,
    );
    assert_eq!(r.status, 401);

    // No password in the node's log.
    let log = node.reg.log_text();
    assert!(
        !log.contains(&ci) && !log.contains(&puller),
        "a password in the log"
    );
}

/// With `anonymousPull` and tokens, `GET /v2/` still challenges: clients decide there whether
/// to send credentials, so a push with credentials works and an anonymous pull fetches an
/// anonymous token.
#[test]
fn anonymous_pull_beside_tokens_still_lets_clients_send_their_credentials() {
    use common::clients::{busybox_layout, unique};
    use common::{require, run};
    use std::process::Command;

    let skopeo = require("skopeo");
    let mut ci = String::new();
    let node = SecuredNode::start(
        json!({"name": "openpull", "anonymousPull": true}),
        |config| {
            ci = create_token(
                config,
                "ci",
                &[
                    "--repository",
                    "apps/*",
                    "content/read",
                    "content/write",
                    "metadata/read",
                ],
            );
        },
    );
    let host = node.reg.host();
    let base = send_as(Method::GET, &node.base(), "/v2/", None, None);
    assert_eq!(base.status, 401, "GET /v2/ challenges anonymous clients");
    let tmp = tempfile::tempdir().unwrap();
    let (layout, digest) = busybox_layout(tmp.path(), "1");
    let repo = format!("apps/{}", unique("open"));
    run(Command::new(&skopeo).args([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("ci:{ci}"),
        &layout.reference("1"),
        &format!("docker://{host}/{repo}:1"),
    ]));
    let pulled = tmp.path().join("pulled");
    run(Command::new(&skopeo).args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{host}/{repo}:1"),
        &format!("oci:{}:1", pulled.display()),
    ]));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pulled.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        digest.as_str(),
        "anonymous pull"
    );
    let write = send_as(
        Method::DELETE,
        &node.base(),
        &format!("/v2/{repo}/manifests/{digest}"),
        None,
        None,
    );
    assert_eq!(write.status, 401, "anonymous access stays pull-only");
}
