//! The module's images (amd64, and arm64 under emulation) run as IoT Edge runs a module: the
//! runtime's variables, the workload socket mounted at `/var/run/iotedge/workload.sock`, edgeHub
//! (the stand-in's mosquitto) at the gateway host name, a data volume. The container configures
//! itself from its twin, syncs from a parent, reports, and serves `docker pull`.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::clients::busybox_layout;
use common::edge::{EdgeOptions, EdgeStandin};
use common::images::{
    docker_login, docker_pull, ensure_image, unique_name, Arch, ContainerSpec, NetworkMode, Volume,
};
use common::peers::Node;
use common::{free_port, require, run};
use serde_json::json;

/// Where the runtime mounts a module's workload socket.
const WORKLOAD_IN_CONTAINER: &str = "/var/run/iotedge/workload.sock";

#[test]
fn amd64_module_container_is_configured_by_its_twin_and_serves_docker_pull() {
    module_round_trip(Arch::Amd64, Duration::from_secs(120));
}

#[test]
fn arm64_module_container_is_configured_by_its_twin_and_serves_docker_pull() {
    module_round_trip(Arch::Arm64, Duration::from_secs(300));
}

fn module_round_trip(arch: Arch, wait: Duration) {
    let tag = ensure_image(arch);
    let skopeo = require("skopeo");
    let tmp = tempfile::tempdir().unwrap();

    // The parent holds a real (busybox) image.
    let root = Node::with_config(json!({"name": "rootnode"}));
    let (layout, digest) = busybox_layout(tmp.path(), "v1");
    run(Command::new(&skopeo)
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(layout.reference("v1"))
        .arg(format!("docker://{}/apps/busybox:v1", root.host())));

    // The twin: name, parent, what to sync, and a client token for the line's clients.
    let password = format!("line-{}", unique_name("pw"));
    let hash = connected_registry::auth::password::hash(&password).unwrap();
    let standin = EdgeStandin::start(EdgeOptions {
        desired: Some(json!({
            "name": "edgecontainer",
            "parent": {"endpoint": root.base(), "sync": {"repositories": ["apps/*"]}},
            "clientTokens": [{"name": "line1", "passwordHash": hash,
                "actions": ["repositories/apps/*/content/read", "repositories/apps/*/metadata/read"]}]
        })),
        ..EdgeOptions::default()
    });

    // Started as the runtime starts a module: its variables, its socket, the data volume.
    let volume = Volume::create("cr-module");
    let port = free_port();
    let mut spec = ContainerSpec::for_arch(arch)
        .name(&unique_name(&format!("cr-module-{}", arch.script_arg())))
        .mount(
            standin.workload_socket().to_str().unwrap(),
            WORKLOAD_IN_CONTAINER,
        )
        .mount(&volume.name, "/var/acr/data")
        .network(NetworkMode::Host)
        .args(&["serve", "--listen", &format!("127.0.0.1:{port}")]);
    for (key, value) in standin.container_env(WORKLOAD_IN_CONTAINER) {
        spec = spec.env(&key, &value);
    }
    let container = spec.start();
    assert_eq!(container.inspect("{{.Config.Image}}"), tag);

    let reported = standin.wait_for_reported(wait, |r| {
        r["name"] == "edgecontainer"
            && r["activation"]["status"] == "Active"
            && r["sync"]["state"] == "Succeeded"
    });
    assert_eq!(
        reported["config"]["source"],
        "twin",
        "{reported:#}\n{}",
        container.logs()
    );
    let connection = standin.wait_for_module_connection(wait);
    assert_eq!(connection["clientId"], "dev1/connected-registry");
    standin.assert_no_violations();

    // The line's client logs in with the twin's token and pulls with the Docker engine.
    let host = format!("127.0.0.1:{port}");
    let docker_config = tmp.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).unwrap();
    docker_login(&docker_config, &host, "line1", &password);
    let reference = format!("{host}/apps/busybox:v1");
    let pulled = docker_pull(&docker_config, &reference, wait);
    let _ = Command::new(common::images::docker())
        .args(["rmi", "-f", &reference])
        .output();
    assert_eq!(
        pulled, digest,
        "docker pull from the {arch:?} module container"
    );
    let (code, _) = container.stop(Duration::from_secs(30));
    assert_eq!(code, 0, "a clean stop; logs:\n{}", container.logs());
}
