//! The module's container images, amd64 and arm64 (the latter under qemu emulation), as the
//! Docker engine runs them: the image metadata IoT Edge relies on, the process running as a
//! non-root user, data on a named volume that the user owns, a push with skopeo and a pull with
//! the engine that round-trips the digest, names resolved through the engine's DNS from inside
//! the image, a clean exit on `docker stop`, and the data still there for the next container.
//! The images are built by `scripts/build-images.sh` when missing (see
//! [`common::images::ensure_image`]).

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::clients::{busybox_layout, unique};
use common::credentials::{basic, create_token};
use common::images::{
    docker, docker_login, docker_pull, ensure_image, Arch, ContainerSpec, Network, NetworkMode,
    Volume, IMAGE_GID, IMAGE_UID,
};
use common::peers::{request, OCI_MANIFEST};
use common::{free_port, require, run};

const CONFIG_IN_CONTAINER: &str = "/etc/connected-registry/config.json";

/// Bounds for one architecture: emulated arm64 is several times slower than native.
struct Limits {
    start: Duration,
    stop_grace: Duration,
    command: Duration,
}

fn limits(arch: Arch) -> Limits {
    match arch {
        Arch::Amd64 => Limits {
            start: Duration::from_secs(60),
            stop_grace: Duration::from_secs(20),
            command: Duration::from_secs(60),
        },
        Arch::Arm64 => Limits {
            start: Duration::from_secs(240),
            stop_grace: Duration::from_secs(60),
            command: Duration::from_secs(240),
        },
    }
}

#[test]
fn amd64_image_runs_as_non_root_and_round_trips_an_image() {
    round_trip(Arch::Amd64);
}

#[test]
fn arm64_image_runs_under_emulation_and_round_trips_an_image() {
    round_trip(Arch::Arm64);
}

fn round_trip(arch: Arch) {
    let started = Instant::now();
    let docker = docker();
    require("skopeo");
    let tag = ensure_image(arch);
    let built = started.elapsed();
    let limits = limits(arch);

    assert_image_metadata(&tag, arch);
    assert_default_command_refuses_anonymous(arch, &limits);

    // A configuration with one token that may push and pull, made with the real `token create`
    // into the file the container reads (a token is what lets it listen on 0.0.0.0).
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.json");
    std::fs::write(&config, json!({"name": "imagetest"}).to_string()).unwrap();
    let password = create_token(
        &config,
        "pusher",
        &[
            "--repository",
            "*",
            "content/read",
            "content/write",
            "metadata/read",
            "metadata/write",
        ],
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let volume = Volume::create("cr-data");
    let network = Network::create("cr-net");
    let port = free_port();
    let serve = |name: &str| {
        ContainerSpec::for_arch(arch)
            .name(name)
            .mount(&volume.name, "/var/acr/data")
            .mount_ro(config.to_str().unwrap(), CONFIG_IN_CONTAINER)
            .network(NetworkMode::Named(network.name.clone()))
            .publish(port, 8080)
            .args(&[
                "serve",
                "--listen",
                "0.0.0.0:8080",
                "--config",
                CONFIG_IN_CONTAINER,
            ])
    };
    let name = unique(&format!("cr-{}", arch.script_arg()));
    let first = serve(&name).start();
    let base = format!("http://127.0.0.1:{port}");
    first.wait_http(&format!("{base}/v2/"), &[200, 401], limits.start);
    let ready = started.elapsed();

    // Non-root: the image says so, and the kernel agrees about the running process.
    assert_eq!(first.inspect("{{.Config.User}}"), "1000:1000");
    let (uids, gids) = first.main_process_ids();
    assert!(
        uids.iter().all(|&u| u == IMAGE_UID) && gids.iter().all(|&g| g == IMAGE_GID),
        "main process ids: uid {uids:?} gid {gids:?}"
    );

    // Push with skopeo, pull with the engine (logged in with its own client config): same digest.
    let repo = format!("images-test/{}", arch.script_arg());
    let (layout, digest) = busybox_layout(tmp.path(), "v1");
    let host = format!("127.0.0.1:{port}");
    let mut push = Command::new(require("skopeo"));
    push.args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("--dest-creds=pusher:{password}"),
    ])
    .arg(layout.reference("v1"))
    .arg(format!("docker://{host}/{repo}:v1"));
    run(&mut push);
    let auth = basic("pusher", &password);
    let get_manifest = || {
        request(
            reqwest::Method::GET,
            &base,
            &format!("/v2/{repo}/manifests/v1"),
            &[("Authorization", auth.as_str())],
            None,
        )
    };
    let served = get_manifest();
    assert_eq!(served.status, 200, "manifest after push: {served:?}");
    assert_eq!(
        served.header("docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(served.header("content-type"), Some(OCI_MANIFEST));

    let reference = format!("{host}/{repo}:v1");
    let _cleanup = common::clients::DockerImages(vec![reference.clone()]);
    let docker_config = tmp.path().join("docker-config");
    docker_login(&docker_config, &host, "pusher", &password);
    let pulled = docker_pull(&docker_config, &reference, limits.command);
    assert_eq!(pulled, digest, "docker pull digest");
    let repo_digests: Value = serde_json::from_str(&run(Command::new(&docker).args([
        "image",
        "inspect",
        "-f",
        "{{json .RepoDigests}}",
        &reference,
    ])))
    .unwrap();
    assert!(
        repo_digests
            .as_array()
            .unwrap()
            .contains(&json!(format!("{host}/{repo}@{digest}"))),
        "RepoDigests {repo_digests}"
    );

    // What the node wrote to the volume belongs to the image's user.
    let mountpoint = volume.mountpoint();
    let files = common::files_under(&mountpoint);
    assert!(!files.is_empty(), "nothing written to the volume");
    for path in std::iter::once(mountpoint.clone()).chain(files) {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (IMAGE_UID, IMAGE_GID),
            "owner of {path:?}"
        );
    }

    // Another container of the same image reaches the node by name through the engine's DNS:
    // the binary's resolver works in a scratch image (as modules reach `edgeHub`).
    let status = ContainerSpec::for_arch(arch)
        .network(NetworkMode::Named(network.name.clone()))
        .args(&[
            "status",
            "--json",
            "--url",
            &format!("http://{name}:8080"),
            "--user",
            &format!("pusher:{password}"),
        ])
        .run_once(limits.command);
    assert!(
        status.status.success(),
        "status by container name failed ({}): {}{}",
        status.status,
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    let doc: Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e})"));
    assert!(doc["version"].is_string(), "status document: {doc}");

    // SIGTERM from `docker stop`: a clean exit, well before the engine would SIGKILL.
    let (code, took) = first.stop(limits.stop_grace);
    assert_eq!(
        code,
        0,
        "exit code after docker stop; logs:\n{}",
        first.logs()
    );
    assert!(
        took < limits.stop_grace,
        "docker stop took {took:?} (grace {:?}): SIGTERM was not handled",
        limits.stop_grace
    );
    let log = first.logs();
    assert!(!log.contains("panicked"), "the node panicked:\n{log}");
    drop(first);

    // A new container on the same volume serves what the first one stored.
    let second = serve(&unique(&format!("cr-{}", arch.script_arg()))).start();
    second.wait_http(&format!("{base}/v2/"), &[200, 401], limits.start);
    let again = get_manifest();
    assert_eq!(again.status, 200, "manifest after a restart: {again:?}");
    assert_eq!(
        again.header("docker-content-digest"),
        Some(digest.as_str()),
        "image after a restart on the same volume"
    );
    let (code, _) = second.stop(limits.stop_grace);
    assert_eq!(
        code,
        0,
        "second container's exit code; logs:\n{}",
        second.logs()
    );

    eprintln!(
        "{tag}: image ready in {built:?}, serving after {ready:?}, whole test {:?}",
        started.elapsed()
    );
}

/// What IoT Edge and operators rely on in the image config.
fn assert_image_metadata(tag: &str, arch: Arch) {
    let out = run(Command::new(docker()).args(["image", "inspect", tag]));
    let doc: Value = serde_json::from_str(&out).unwrap();
    let image = &doc[0];
    let (os, architecture) = arch.platform().split_once('/').unwrap();
    assert_eq!(image["Os"], os);
    assert_eq!(image["Architecture"], architecture);
    let config = &image["Config"];
    assert_eq!(config["User"], "1000:1000");
    assert_eq!(
        config["Entrypoint"],
        json!(["/usr/local/bin/connected-registry"])
    );
    assert_eq!(config["Cmd"], json!(["serve", "--listen", "0.0.0.0:8080"]));
    assert!(
        config["ExposedPorts"].get("8080/tcp").is_some(),
        "ExposedPorts {}",
        config["ExposedPorts"]
    );
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"ACR_REGISTRY_DATA_VOLUME=/var/acr/data"),
        "Env {env:?}"
    );
}

/// The image's own command listens on 0.0.0.0:8080; with no credentials configured it refuses
/// to start, saying why, instead of serving an open registry.
fn assert_default_command_refuses_anonymous(arch: Arch, limits: &Limits) {
    let out = ContainerSpec::for_arch(arch)
        .network(NetworkMode::Named("none".into()))
        .run_once(limits.command);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "the default command started without credentials:\n{text}"
    );
    assert!(
        text.contains("0.0.0.0:8080") && !text.contains("panicked"),
        "the refusal names the address:\n{text}"
    );
}
