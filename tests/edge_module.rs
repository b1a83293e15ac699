//! The node as an IoT Edge module under the edge runtime stand-in (`edge-standin`: the
//! workload API and a real mosquitto as edgeHub): configured by its twin, syncing from a parent,
//! reporting status as reported properties and events as telemetry, answering direct methods,
//! refusing a bad configuration whole, and riding out a broker restart while clients pull.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::edge::{EdgeOptions, EdgeStandin};
use common::peers::{
    self, manifest_digest, poll_every, push_image, random_bytes, wait_for_tag, Image, Node,
};
use common::Registry;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

/// A module process started with `env` (what the IoT Edge runtime gives it), the level left
/// to its configuration.
fn start_module(env: Vec<(String, String)>) -> Registry {
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("RUST_LOG", ""));
    Registry::start_with_env(&[], &env)
}

/// An HTTPS client whose only root is the stand-in's edge CA.
fn trusting_only_the_edge_ca(standin: &EdgeStandin) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(standin.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap()
}

fn kinds(telemetry: &[Value]) -> Vec<String> {
    telemetry
        .iter()
        .map(|m| {
            m["properties"]["eventType"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

fn position(telemetry: &[Value], pred: impl Fn(&Value) -> bool) -> Option<usize> {
    telemetry.iter().position(pred)
}

fn is_event(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |m: &Value| m["properties"]["eventType"] == kind
}

fn detail_codes(reported: &Value) -> Vec<String> {
    reported["statusDetails"]
        .as_object()
        .map(|o| {
            o.values()
                .filter_map(|d| d["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_twin_configures_the_module_which_syncs_reports_and_answers_methods() {
    let root = Node::with_config(json!({"name": "rootnode"}));
    let one = Image::new("linux/amd64", &[random_bytes(1, 150_000)]);
    let two = Image::new("linux/amd64", &[random_bytes(2, 120_000)]);
    assert_eq!(push_image(&root.base(), "apps/one", "v1", &one).status, 201);
    assert_eq!(push_image(&root.base(), "apps/two", "v1", &two).status, 201);

    let standin = EdgeStandin::start(EdgeOptions {
        desired: Some(json!({
            "name": "edgenode",
            "parent": {"endpoint": root.base(), "sync": {"repositories": ["apps/one"]}},
            "logging": {"level": "Information"}
        })),
        ..EdgeOptions::default()
    });
    let module = start_module(standin.edge_env());
    let base = module.url("");

    // The twin's configuration runs: activation at the parent, a first pass, all reported.
    let reported = standin.wait_for_reported(WAIT, |r| {
        r["activation"]["status"] == "Active"
            && r["sync"]["state"] == "Succeeded"
            && r["connectionState"] == "Online"
    });
    assert_eq!(reported["name"], "edgenode");
    assert_eq!(reported["config"]["source"], "twin");
    // From the first patch on, the hub sees the node as its twin configured it: never the
    // unnamed default it starts as before the twin arrives.
    let patches = standin.reported_patches();
    let first = &patches.first().expect("a reported patch")["patch"];
    assert_eq!(first["name"], "edgenode", "first patch: {first:#}");
    assert_eq!(first["config"]["source"], "twin", "first patch: {first:#}");
    for applied in &patches {
        let patch = &applied["patch"];
        assert!(
            patch.get("name").is_none_or(|n| n == "edgenode"),
            "a patch named the node otherwise: {patch:#}"
        );
    }
    assert!(
        reported["sync"]["progress"]["manifests"]["done"].as_u64() >= Some(1),
        "{reported:#}"
    );
    assert!(reported["storage"].is_object() && reported["statusDetails"].is_object());
    assert_eq!(
        manifest_digest(&base, "apps/one", "v1"),
        Some(one.digest.clone())
    );
    assert_eq!(manifest_digest(&base, "apps/two", "v1"), None);

    // Connected as the SDKs connect; every reported patch passed edgeHub's rules.
    let connection = standin.wait_for_module_connection(WAIT);
    assert_eq!(connection["clientId"], "dev1/connected-registry");
    assert_eq!(connection["protocol"], "p2", "MQTT 3.1.1: {connection}");
    assert_eq!(connection["cleanSession"], false, "{connection}");
    let username = connection["username"].as_str().unwrap();
    assert!(
        username.starts_with("myhub.azure-devices.net/dev1/connected-registry/?api-version=2019-10-01&DeviceClientType="),
        "{username}"
    );
    let workload = standin.workload_counts();
    assert!(
        workload.to_string().contains("sign"),
        "the token was signed by the runtime: {workload}"
    );
    standin.assert_no_violations();

    // Telemetry, in order, encoded as edgeHub expects.
    standin.wait_for_telemetry(WAIT, is_event("syncCompleted"));
    let telemetry = standin.telemetry();
    let applied = position(&telemetry, is_event("configApplied")).expect("configApplied");
    let started = position(&telemetry, is_event("syncStarted")).expect("syncStarted");
    let completed = position(&telemetry, is_event("syncCompleted")).expect("syncCompleted");
    assert!(
        position(&telemetry, is_event("activation")).is_some(),
        "{:?}",
        kinds(&telemetry)
    );
    assert!(
        applied < started && started < completed,
        "{:?}",
        kinds(&telemetry)
    );
    for message in &telemetry {
        assert_eq!(message["output"], "telemetry", "{message}");
        assert_eq!(
            message["properties"]["$.ct"], "application/json",
            "{message}"
        );
        assert_eq!(message["properties"]["$.ce"], "utf-8", "{message}");
        assert_eq!(
            message["body"]["eventType"],
            message["properties"]["eventType"]
        );
    }
    assert_eq!(telemetry[completed]["body"]["state"], "Succeeded");

    // A patch: one repository added, the other removed (pruned), the log level changed.
    let version_before = reported["config"]["version"].as_u64().unwrap();
    standin.patch_desired(json!({
        "parent": {"sync": {"repositories": ["apps/two"]}},
        "logging": {"level": "Debug"}
    }));
    assert!(
        poll_every(Duration::from_millis(200), WAIT, || {
            manifest_digest(&base, "apps/two", "v1") == Some(two.digest.clone())
                && manifest_digest(&base, "apps/one", "v1").is_none()
        }),
        "the new repository syncs and the old one is pruned; log:\n{}",
        module.log_text()
    );
    let reported = standin.wait_for_reported(WAIT, |r| {
        r["config"]["version"].as_u64() > Some(version_before) && r["sync"]["state"] == "Succeeded"
    });
    assert_eq!(reported["sync"]["trigger"], "ConfigUpdate", "{reported:#}");
    assert!(
        module.log_text().contains("log level changed"),
        "{}",
        module.log_text()
    );

    // A bad patch is refused whole and reported; the node keeps serving.
    standin.patch_desired(json!({"parent": {"sync": {"concurrency": 0}}}));
    let reported = standin.wait_for_reported(WAIT, |r| r["config"]["error"].is_string());
    assert!(
        reported["config"]["error"]
            .as_str()
            .unwrap()
            .contains("concurrency"),
        "{reported:#}"
    );
    assert!(
        detail_codes(&reported).contains(&"ConfigError".to_owned()),
        "{reported:#}"
    );
    standin.wait_for_telemetry(WAIT, is_event("configRejected"));
    assert_eq!(
        manifest_digest(&base, "apps/two", "v1"),
        Some(two.digest.clone())
    );
    standin.patch_desired(json!({"parent": {"sync": {"concurrency": null}}}));
    standin.wait_for_reported(WAIT, |r| r["config"]["error"].is_null());

    // A client token given by the twin works at once (and anonymous access ends).
    let password = "line1-secret-password";
    let hash = connected_registry::auth::password::hash(password).unwrap();
    standin.patch_desired(json!({"clientTokens": [{
        "name": "line1", "passwordHash": hash,
        "actions": ["repositories/apps/*/content/read", "repositories/apps/*/metadata/read"]
    }]}));
    let path = "/v2/apps/two/manifests/v1";
    let accept = "application/vnd.oci.image.manifest.v1+json";
    assert!(
        poll_every(Duration::from_millis(500), WAIT, || {
            common::support::client()
                .get(module.url(path))
                .header("Accept", accept)
                .basic_auth("line1", Some(password))
                .send()
                .is_ok_and(|r| r.status() == 200)
        }),
        "the twin's client token works"
    );
    let anonymous = common::support::client()
        .get(module.url(path))
        .send()
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Direct methods.
    standin.clear_telemetry();
    let reply = standin
        .call_method("sync", json!({}), Duration::from_secs(30))
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply);
    assert_eq!(reply.payload["trigger"], "ManualResync");
    let started = standin.wait_for_telemetry(WAIT, is_event("syncStarted"));
    assert_eq!(started["body"]["trigger"], "ManualResync", "{started}");
    let status = standin
        .call_method("status", json!({}), Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        (status.status, &status.payload["name"]),
        (200, &json!("edgenode"))
    );
    // Garbage collection on demand: a dry run reports what a real run then frees.
    let dry = standin
        .call_method("gc", json!({"dryRun": true}), Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        (dry.status, &dry.payload["dryRun"]),
        (200, &json!(true)),
        "{dry:?}"
    );
    let gc = standin
        .call_method("gc", json!({}), Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        (gc.status, &gc.payload["dryRun"]),
        (200, &json!(false)),
        "{gc:?}"
    );
    assert_eq!(
        gc.payload["blobs"], dry.payload["blobs"],
        "{gc:?} after {dry:?}"
    );
    assert_eq!(
        gc.payload["freedBytes"], dry.payload["freedBytes"],
        "{gc:?}"
    );
    let unknown = standin
        .call_method("reboot", json!({}), Duration::from_secs(30))
        .unwrap();
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(
        unknown.payload["message"]
            .as_str()
            .unwrap()
            .contains("sync"),
        "{unknown:?}"
    );

    // A parent that does not answer is a failed sync, in the reported properties and as an
    // event; what is here stays served.
    standin.patch_desired(json!({"parent": {"endpoint": "http://127.0.0.1:1"}}));
    let failed = standin.wait_for_telemetry(WAIT, is_event("syncFailed"));
    assert_eq!(
        failed["body"]["error"]["code"], "ParentUnreachable",
        "{failed}"
    );
    standin.wait_for_reported(WAIT, |r| r["connectionState"] == "Offline");
    let still = common::support::client()
        .get(module.url(path))
        .header("Accept", accept)
        .basic_auth("line1", Some(password))
        .send()
        .unwrap();
    assert_eq!(still.status(), 200);
    standin.assert_no_violations();
}

#[test]
fn a_broker_restart_mid_sync_is_ridden_out_and_the_last_twin_config_survives_a_restart() {
    let root = Node::with_config(json!({"name": "rootnode"}));
    let small = Image::new("linux/amd64", &[random_bytes(3, 50_000)]);
    assert_eq!(
        push_image(&root.base(), "apps/small", "v1", &small).status,
        201
    );
    let standin = EdgeStandin::start(EdgeOptions {
        desired: Some(json!({
            "name": "edgenode",
            "parent": {"endpoint": root.base(), "sync": {
                "repositories": ["apps/*"], "bandwidthLimit": "4MiB/s"
            }},
            // Read when the store opens, which is before the saved twin is: applied by a restart.
            "storage": {"metadataCache": "48MiB"}
        })),
        ..EdgeOptions::default()
    });
    // The development fallback: a connection string with the module's key and the CA file.
    let mut module = start_module(standin.fallback_env());
    let base = module.url("");
    standin.wait_for_reported(WAIT, |r| r["sync"]["state"] == "Succeeded");
    assert_eq!(
        manifest_digest(&base, "apps/small", "v1"),
        Some(small.digest.clone())
    );
    // The twin's metadata cache came after the store opened: the module says it needs a restart.
    let reported = standin.wait_for_reported(WAIT, |r| {
        detail_codes(r).iter().any(|c| c == "RestartRequired")
    });
    assert!(
        reported["statusDetails"]
            .to_string()
            .contains("storage.metadataCache"),
        "{reported:#}"
    );

    // Clients pull all along.
    let stop = Arc::new(AtomicBool::new(false));
    let pulls = Arc::new(AtomicU64::new(0));
    let puller = {
        let (stop, pulls, base, digest) = (
            stop.clone(),
            pulls.clone(),
            base.clone(),
            small.digest.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(
                    manifest_digest(&base, "apps/small", "v1"),
                    Some(digest.clone())
                );
                pulls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // A 24 MiB image at 4 MiB/s: the broker restarts in the middle of its sync.
    let big = Image::new(
        "linux/amd64",
        &[random_bytes(4, 12 << 20), random_bytes(5, 12 << 20)],
    );
    assert_eq!(push_image(&root.base(), "apps/big", "v1", &big).status, 201);
    let connections_before = standin.module_connections().len();
    standin.restart_broker();
    assert!(
        poll_every(Duration::from_millis(200), WAIT, || {
            standin.module_connections().len() > connections_before
        }),
        "the module reconnects after the broker restart: {:#?}",
        standin.connections()
    );
    // The sync finishes across the broker restart.
    wait_for_tag(&module, "apps/big", "v1", &big.digest, WAIT);
    // Reported again after the reconnect, and the events raised meanwhile arrive.
    let reported = standin.wait_for_reported(WAIT, |r| {
        r["sync"]["state"] == "Succeeded" && r["connectionState"] == "Online"
    });
    assert_eq!(reported["config"]["source"], "twin");
    // The events raised meanwhile arrive too: a manual pass now sees both repositories.
    standin.clear_telemetry();
    let reply = standin
        .call_method("sync", json!({}), Duration::from_secs(30))
        .unwrap();
    assert_eq!(reply.status, 200);
    let completed = standin.wait_for_telemetry(WAIT, is_event("syncCompleted"));
    assert_eq!(
        completed["body"]["progress"]["repositories"]["done"], 2,
        "{completed}"
    );
    stop.store(true, Ordering::Relaxed);
    puller.join().expect("no pull failed");
    assert!(pulls.load(Ordering::Relaxed) > 10);
    standin.assert_no_violations();

    // edgeHub away and the module restarted: it serves with the configuration the twin gave,
    // and the events of its start wait for edgeHub.
    standin.stop_broker();
    standin.clear_telemetry();
    assert!(module.terminate().success());
    module.restart();
    let status = peers::status(&base);
    assert_eq!(status["config"]["source"], "twin", "{status:#}");
    assert_eq!(status["name"], "edgenode");
    let log = module.log_text();
    assert!(
        log.contains("metadata_cache=48.0 MiB"),
        "the restarted module did not open its store with the twin's metadata cache:\n{log}"
    );
    assert_eq!(
        manifest_digest(&base, "apps/big", "v1"),
        Some(big.digest.clone())
    );
    assert!(
        poll_every(Duration::from_millis(200), WAIT, || {
            peers::status(&base)["sync"]["state"] == "Succeeded"
        }),
        "the restarted module syncs without edgeHub"
    );
    standin.start_broker();
    let completed = standin.wait_for_telemetry(WAIT, is_event("syncCompleted"));
    assert!(completed["body"]["endTime"].is_string(), "{completed}");
    standin.wait_for_telemetry(WAIT, is_event("configApplied"));
}

#[test]
fn the_listener_serves_tls_with_a_certificate_from_the_workload_api() {
    let standin = EdgeStandin::start(EdgeOptions::default());
    let mut env: Vec<(&str, &str)> = Vec::new();
    let edge_env = standin.edge_env();
    env.extend(edge_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let module = Registry::start_with_env(&["--tls-from-workload"], &env);
    // Trusting only the edge CA, a client reaches the module by the gateway's host name.
    let client = trusting_only_the_edge_ca(&standin);
    let url = format!("https://localhost:{}/v2/", module.port);
    let mut answer = None;
    poll_every(Duration::from_millis(200), WAIT, || {
        answer = client.get(&url).send().ok().map(|r| r.status().as_u16());
        answer.is_some()
    });
    assert_eq!(
        answer,
        Some(200),
        "HTTPS with the edge CA's certificate; log:\n{}",
        module.log_text()
    );
    let counts = standin.workload_counts();
    assert!(
        counts.to_string().contains("certificate/server"),
        "{counts}"
    );
    let plain = common::support::client().get(module.url("/v2/")).send();
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "no plain HTTP beside TLS"
    );
}

/// A lower layer: the parent (the parent device's API proxy in a real deployment) presents a
/// certificate from the edge CA; the twin names it `https://$IOTEDGE_PARENTHOSTNAME:PORT`, with
/// no `caCertificate`: the module trusts the runtime's trust bundle and syncs.
#[test]
fn a_nested_module_reaches_its_parent_by_the_parent_hostname_trusting_the_edge_ca() {
    let standin = EdgeStandin::start(EdgeOptions::default());
    let (status, issued) = standin.workload_request(
        "POST",
        "/modules/connected-registry/genid/gen1/certificate/server?api-version=2019-01-30",
        Some(r#"{"commonName":"localhost","expiration":"2030-01-01T00:00:00Z"}"#),
    );
    assert_eq!(status, 201, "{issued}");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("parent.crt"), dir.path().join("parent.key"));
    std::fs::write(&cert, issued["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&key, issued["privateKey"]["bytes"].as_str().unwrap()).unwrap();
    let parent = Registry::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let image = Image::new("linux/amd64", &[random_bytes(7, 80_000)]);
    let parent_client = trusting_only_the_edge_ca(&standin);
    let parent_base = format!("https://localhost:{}", parent.port);
    for blob in image.all_blobs().values() {
        let r = parent_client
            .post(format!(
                "{parent_base}/v2/apps/nested/blobs/uploads/?digest={}",
                blob.digest
            ))
            .header("Content-Type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "blob to the TLS parent");
    }
    let r = parent_client
        .put(format!("{parent_base}/v2/apps/nested/manifests/v1"))
        .header("Content-Type", image.media_type.as_str())
        .body(image.bytes.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);

    standin.put_desired(json!({
        "name": "lowerlayer",
        "parent": {
            "endpoint": format!("https://$IOTEDGE_PARENTHOSTNAME:{}", parent.port),
            "sync": {"repositories": ["apps/nested"]}
        }
    }));
    let mut env = standin.edge_env();
    env.push(("IOTEDGE_PARENTHOSTNAME".into(), "localhost".into()));
    let module = start_module(env);
    let reported = standin.wait_for_reported(WAIT, |r| r["sync"]["state"] == "Succeeded");
    assert_eq!(
        reported["parent"]["endpoint"],
        format!("https://localhost:{}", parent.port),
        "{reported:#}"
    );
    assert_eq!(
        manifest_digest(&module.url(""), "apps/nested", "v1"),
        Some(image.digest.clone())
    );
}

/// A token lives `CONNECTED_REGISTRY_SAS_TTL_SECONDS` (the SDKs' `sastoken_ttl`); before it
/// expires the module signs a new one and reconnects with it, and the twin keeps working.
#[test]
fn the_sas_token_is_renewed_before_it_expires() {
    let standin = EdgeStandin::start(EdgeOptions {
        desired: Some(json!({"name": "renewing"})),
        ..EdgeOptions::default()
    });
    let mut env = standin.edge_env();
    env.push(("CONNECTED_REGISTRY_SAS_TTL_SECONDS".into(), "60".into()));
    let _module = start_module(env);
    standin.wait_for_reported(WAIT, |r| r["name"] == "renewing");
    let signs = |counts: &Value| {
        counts
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(route, _)| route.contains("sign"))
                    .filter_map(|(_, n)| n.as_u64())
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    let first_signs = signs(&standin.workload_counts());
    assert!(first_signs >= 1);
    assert!(
        poll_every(Duration::from_millis(500), WAIT, || {
            standin.module_connections().len() >= 2
        }),
        "no renewal: {:#?}",
        standin.connections()
    );
    assert!(
        signs(&standin.workload_counts()) > first_signs,
        "a fresh token was signed"
    );
    let before = standin.twin()["reported"]["config"]["version"]
        .as_u64()
        .unwrap();
    standin.patch_desired(json!({"logging": {"level": "Warning"}}));
    standin.wait_for_reported(WAIT, |r| r["config"]["version"].as_u64() > Some(before));
    standin.assert_no_violations();
}

/// A named module whose sync window is closed says nothing to its parent, until the operator
/// asks for a pass with the `sync` direct method: it then activates and syncs at once.
#[test]
fn the_sync_method_syncs_a_named_module_outside_its_window() {
    use chrono::Timelike;
    let root = Node::with_config(json!({"name": "rootnode"}));
    let image = peers::Image::new("linux/amd64", &[random_bytes(77, 4096)]);
    push_image(&root.base(), "apps/late", "v1", &image);
    // A daily one-hour window twelve hours away.
    let hour = (chrono::Utc::now().hour() + 12) % 24;
    let standin = EdgeStandin::start(EdgeOptions {
        desired: Some(json!({
            "name": "windowed",
            "anonymousPull": true,
            "parent": {"endpoint": root.base(), "sync": {"repositories": ["apps/*"],
                "schedule": format!("0 {hour} * * *"), "window": "PT1H"}}
        })),
        ..EdgeOptions::default()
    });
    let module = start_module(standin.env());
    let base = module.url("");
    standin.wait_for_reported(WAIT, |r| r["sync"]["nextWindowStart"].is_string());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(manifest_digest(&base, "apps/late", "v1"), None);
    assert!(
        !root.log_text().contains("child activated"),
        "activated outside its window:\n{}",
        root.log_text()
    );
    let reply = standin
        .call_method("sync", json!({}), Duration::from_secs(30))
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    // The sync method syncs outside the window.
    wait_for_tag(&module, "apps/late", "v1", &image.digest, WAIT);
}
