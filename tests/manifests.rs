//! The IoT Edge deployment manifests are part of the product: a manifest IoT Hub refuses, or a
//! twin the module refuses, is a deployment that never starts. These tests run
//! `scripts/check-manifests.sh` (the real iotedgedev expanding `deployment.template.json` for
//! amd64 and arm64v8, SchemaStore's deployment schema, and the real binary starting on each
//! module twin), then check in Rust what the manifests must say: the image iotedgedev resolved,
//! the bind of `/var/acr/data`, the telemetry route, the nested layers' `$upstream` images and
//! API proxy — and that a broken manifest is rejected, so the check is not a rubber stamp.

use crate::common;

use std::path::{Path, PathBuf};

use common::manifests::{
    agent, create_options, env_value, load, module, output_text, root, routes, run_check, twin,
};
use connected_registry::config::Config;
use serde_json::{json, Value};

/// The twin as the node's configuration: it must parse (unknown keys refused) and validate.
fn twin_config(manifest: &Value) -> Config {
    let text = twin(manifest)
        .to_string()
        .replace("$IOTEDGE_PARENTHOSTNAME", "parent.example");
    let config: Config = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the module twin is not a configuration: {e}\n{text}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("the module twin does not validate: {e}"));
    config
}

fn binds(options: &Value) -> Vec<String> {
    options["HostConfig"]["Binds"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn edge_manifest(name: &str) -> PathBuf {
    root().join("edge-manifests").join(name)
}

#[test]
fn the_template_expands_for_both_platforms_and_every_manifest_validates() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = run_check(&[], out_dir.path());
    let text = output_text(&out);
    assert!(out.status.success(), "check-manifests.sh failed:\n{text}");
    assert!(text.contains("check-manifests: OK"), "{text}");
    // Both generated manifests and both nested ones were started on by the binary.
    assert_eq!(
        text.matches("connected-registry starts on the module twin's configuration")
            .count(),
        4,
        "{text}"
    );

    for platform in ["amd64", "arm64v8"] {
        let path = out_dir.path().join(format!("deployment.{platform}.json"));
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(
            !raw.contains("${"),
            "{platform}: unexpanded placeholder:\n{raw}"
        );
        let manifest: Value = serde_json::from_str(&raw).unwrap();
        assert!(manifest.get("$schema-template").is_none());
        assert_eq!(agent(&manifest)["schemaVersion"], "1.1");
        assert_eq!(
            manifest["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"],
            "1.2"
        );
        assert_eq!(
            module(&manifest, "edgeAgent")["settings"]["image"],
            "mcr.microsoft.com/azureiotedge-agent:1.5"
        );

        let cr = module(&manifest, "connected-registry");
        assert_eq!(
            cr["settings"]["image"],
            format!("registry.example.com/connected-registry:0.1.0-{platform}")
        );
        assert_eq!(cr["restartPolicy"], "always");
        assert_eq!(
            env_value(&manifest, "connected-registry", "ACR_REGISTRY_DATA_VOLUME"),
            "/var/acr/data"
        );
        let options = create_options(&manifest, "connected-registry");
        assert!(
            binds(&options)
                .iter()
                .any(|b| b.ends_with(":/var/acr/data")),
            "{options}"
        );
        assert_eq!(
            options["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"],
            "8080"
        );
        for name in ["edgeAgent", "edgeHub"] {
            create_options(&manifest, name);
        }

        let r = routes(&manifest);
        assert!(
            r.iter().any(|r| r
                == "FROM /messages/modules/connected-registry/outputs/telemetry INTO $upstream"),
            "{r:?}"
        );
        let config = twin_config(&manifest);
        assert_eq!(config.name.as_deref(), Some("factorya"));
        assert_eq!(config.listen.as_deref(), Some("0.0.0.0:8080"));
        let parent = config.parent.expect("a parent");
        assert_eq!(parent.endpoint, "https://parent.example:443");
        assert_eq!(parent.sync_token.unwrap().name, "factorya-sync");
        assert_eq!(config.client_tokens.len(), 1);
    }
}

#[test]
fn the_nested_manifests_follow_the_layers() {
    let top = load(&edge_manifest("top-layer.deployment.json"));
    let lower = load(&edge_manifest("lower-layer.deployment.json"));

    for (layer, m) in [("top", &top), ("lower", &lower)] {
        let raw = m.to_string();
        assert!(!raw.contains("${"), "{layer}: unexpanded placeholder");
        // The API proxy takes 443 and hands /v2 and /acr to the module.
        let proxy = module(m, "IoTEdgeAPIProxy");
        assert!(
            proxy["settings"]["image"]
                .as_str()
                .unwrap()
                .ends_with("azureiotedge-api-proxy:1.1"),
            "{layer}: {proxy}"
        );
        assert_eq!(env_value(m, "IoTEdgeAPIProxy", "NGINX_DEFAULT_PORT"), "443");
        assert_eq!(
            env_value(m, "IoTEdgeAPIProxy", "CONNECTED_ACR_ROUTE_ADDRESS"),
            "connected-registry:8080"
        );
        let proxy_options = create_options(m, "IoTEdgeAPIProxy");
        assert_eq!(
            proxy_options["HostConfig"]["PortBindings"]["443/tcp"][0]["HostPort"],
            "443"
        );
        // So edgeHub must not publish 443 too.
        let hub_options = create_options(m, "edgeHub");
        assert!(
            hub_options["HostConfig"]["PortBindings"]
                .get("443/tcp")
                .is_none(),
            "{layer}: edgeHub and the API proxy both publish 443"
        );
        create_options(m, "edgeAgent");
        let options = create_options(m, "connected-registry");
        assert!(
            binds(&options)
                .iter()
                .any(|b| b.ends_with(":/var/acr/data")),
            "{layer}: {options}"
        );
        assert_eq!(module(m, "connected-registry")["restartPolicy"], "always");
        let config = twin_config(m);
        assert_eq!(config.listen.as_deref(), Some("0.0.0.0:8080"));
        assert!(
            !config.client_tokens.is_empty(),
            "{layer}: no client tokens"
        );
        assert!(
            routes(m)
                .iter()
                .any(|r| r == "FROM /messages/* INTO $upstream"),
            "{layer}: {:?}",
            routes(m)
        );
    }

    // Top layer: pulls from the cloud registry and syncs what the lower layer runs.
    let top_config = twin_config(&top);
    let top_parent = top_config.parent.as_ref().unwrap();
    assert_eq!(top_parent.endpoint, "https://registry.example.com:443");
    for repo in [
        "azureiotedge-agent",
        "azureiotedge-hub",
        "azureiotedge-api-proxy",
        "connected-registry",
    ] {
        assert!(
            top_parent.sync.repositories.iter().any(|r| r == repo),
            "the top layer does not sync {repo}, which the lower layer pulls"
        );
    }
    assert_eq!(
        module(&top, "connected-registry")["settings"]["image"],
        "registry.example.com/connected-registry:0.1.0-amd64"
    );

    // Lower layer: every image through the parent, the parent by $IOTEDGE_PARENTHOSTNAME.
    let lower_agent = agent(&lower);
    for group in ["systemModules", "modules"] {
        for (name, m) in lower_agent[group].as_object().unwrap() {
            let image = m["settings"]["image"].as_str().unwrap();
            assert!(
                image.starts_with("$upstream:443/"),
                "lower layer {name}: {image}"
            );
        }
    }
    let credentials = lower_agent["runtime"]["settings"]["registryCredentials"]
        .as_object()
        .unwrap();
    assert!(credentials
        .values()
        .any(|c| c["address"] == "$upstream:443"));
    assert!(env_value(&lower, "edgeAgent", "UpstreamProtocol").is_string());
    assert_eq!(
        twin(&lower)["parent"]["endpoint"],
        "https://$IOTEDGE_PARENTHOSTNAME:443"
    );

    // The lower layer's sync token is one the top node accepts, with the password it holds.
    let lower_config = twin_config(&lower);
    let sync = lower_config.parent.unwrap().sync_token.unwrap();
    let accepted = top_config
        .sync_tokens
        .iter()
        .find(|t| t.name == sync.name)
        .unwrap_or_else(|| panic!("the top layer has no sync token {:?}", sync.name));
    assert!(
        connected_registry::auth::password::verify(&accepted.password_hash, &sync.password),
        "the lower layer's sync token password does not match the top layer's hash"
    );
    // And the runtime pulls with it.
    assert!(credentials
        .values()
        .any(|c| c["username"] == sync.name.as_str() && c["password"] == sync.password.as_str()));
}

/// Write `manifest` to a file, run the check on it alone, and expect a failure that says `says`.
fn assert_rejected(dir: &Path, name: &str, manifest: &Value, says: &str) {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(manifest).unwrap()).unwrap();
    let out = run_check(&[&path], dir);
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "{name}: the broken manifest was accepted:\n{text}"
    );
    assert!(text.contains(says), "{name}: expected {says:?} in:\n{text}");
}

#[test]
fn broken_manifests_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let good = load(&edge_manifest("top-layer.deployment.json"));
    let modules = "/modulesContent/$edgeAgent/properties.desired/modules";

    // The unchanged copy passes, so each failure below is the breakage's doing.
    let path = dir.path().join("good.json");
    std::fs::write(&path, good.to_string()).unwrap();
    let out = run_check(&[&path], dir.path());
    assert!(out.status.success(), "{}", output_text(&out));

    // Schema: an enum value IoT Edge does not know.
    let mut m = good.clone();
    *m.pointer_mut(&format!("{modules}/connected-registry/restartPolicy"))
        .unwrap() = json!("sometimes");
    assert_rejected(
        dir.path(),
        "restart-policy",
        &m,
        "'sometimes' is not one of",
    );

    // Schema: createOptions left as an object in a final manifest.
    let mut m = good.clone();
    *m.pointer_mut(&format!(
        "{modules}/connected-registry/settings/createOptions"
    ))
    .unwrap() = json!({"HostConfig": {}});
    assert_rejected(
        dir.path(),
        "create-options-object",
        &m,
        "is not of type 'string'",
    );

    // IoT Edge rule outside the schema: a chunk over 512 characters.
    let mut m = good.clone();
    let long = json!({"HostConfig": {"Binds": ["/srv/connected-registry/data:/var/acr/data"]}, "Labels": {"note": "x".repeat(600)}});
    *m.pointer_mut(&format!(
        "{modules}/connected-registry/settings/createOptions"
    ))
    .unwrap() = json!(long.to_string());
    assert_rejected(dir.path(), "long-chunk", &m, "at most 512");

    // A placeholder nobody expanded.
    let mut m = good.clone();
    *m.pointer_mut("/modulesContent/connected-registry/properties.desired/name")
        .unwrap() = json!("${CONNECTED_REGISTRY_NAME}");
    assert_rejected(dir.path(), "placeholder", &m, "unexpanded placeholders");

    // A twin key IoT Hub refuses.
    let mut m = good.clone();
    m.pointer_mut("/modulesContent/connected-registry/properties.desired")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert("log.level".into(), json!("Debug"));
    assert_rejected(dir.path(), "twin-key", &m, "may not contain");

    // The node itself refuses the twin: an unknown key, and a bad value.
    let mut m = good.clone();
    m.pointer_mut("/modulesContent/connected-registry/properties.desired")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert("lisen".into(), json!("0.0.0.0:8080"));
    assert_rejected(dir.path(), "unknown-key", &m, "lisen");
    let mut m = good.clone();
    *m.pointer_mut(
        "/modulesContent/connected-registry/properties.desired/parent/sync/messageTtl",
    )
    .unwrap() = json!("P365D");
    assert_rejected(dir.path(), "bad-ttl", &m, "refused the module twin");
}

#[test]
fn a_missing_schema_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = edge_manifest("top-layer.deployment.json");
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/check-manifests.sh"))
        .arg(&path)
        .env("IOTEDGE_SCHEMA_DIR", dir.path())
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("azure-iot-edge-deployment-2.0.json") && text.contains("IOTEDGE_SCHEMA_DIR"),
        "{text}"
    );
}
