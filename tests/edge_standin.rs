//! Proves the IoT Edge runtime stand-in (`edge-standin`) speaks the real protocol, so tests of
//! the module against it mean something: Microsoft's own `azure-iot-device` SDK (both its
//! workload-API mode and its connection-string fallback) connects, reads and patches the twin,
//! receives desired patches, sends output telemetry and answers a direct method; the workload
//! API is checked byte for byte over its unix socket (including the documented SAS test
//! vector); an MQTT module client in Rust sees edgeHub's refusals of bad reported patches and
//! survives a broker restart; restarts keep the CA and the module key.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::Mac as _;
use serde_json::{json, Value};

use common::edge::{EdgeOptions, EdgeStandin, MethodReply};

#[path = "edge/helpers.rs"]
mod helpers;

use helpers::{run_sdk_script, verify_chain, RawModule, SUBACK, WAIT};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn seeded() -> EdgeOptions {
    EdgeOptions {
        desired: Some(json!({"fidelity": {"seeded": "yes"}})),
        ..EdgeOptions::default()
    }
}

/// What both SDK modes must leave behind in the stand-in.
fn assert_sdk_session(standin: &EdgeStandin, steps: &[String]) {
    assert_eq!(
        steps,
        [
            "connected",
            "twin",
            "reported",
            "desired",
            "telemetry",
            "awaiting-method",
            "method-answered"
        ],
        "the SDK script's steps"
    );
    let twin = standin.twin();
    assert_eq!(
        twin["reported"]["fidelity"],
        json!({"reported": "yes", "count": 2})
    );
    assert_eq!(twin["reported"]["status"], "ok");
    assert_eq!(
        twin["reported"]["$version"], 2,
        "one reported patch: {twin}"
    );
    assert_eq!(
        twin["desired"],
        json!({"fidelity": {"seeded": "yes", "patched": 42}, "$version": 2})
    );
    standin.assert_no_violations();

    let msg = standin.wait_for_telemetry(WAIT, |m| m["output"] == "telemetry");
    assert_eq!(msg["properties"]["$.on"], "telemetry", "{msg:#}");
    assert_eq!(msg["properties"]["$.ct"], "application/json", "{msg:#}");
    assert_eq!(msg["properties"]["$.ce"], "utf-8", "{msg:#}");
    assert_eq!(
        msg["properties"]["fidelity-prop"], "a value&with=odd/chars",
        "{msg:#}"
    );
    assert_eq!(msg["body"], json!({"temperature": 21.5, "unit": "C"}));
    let topic = msg["topic"].as_str().unwrap();
    assert!(
        topic.starts_with(
            "devices/dev1/modules/connected-registry/messages/events/%24.on=telemetry&"
        ),
        "py puts `$.on` first, percent-encoded: {topic}"
    );

    let conns = standin.module_connections();
    assert!(
        !conns.is_empty(),
        "no module connection: {:#?}",
        standin.connections()
    );
    for c in &conns {
        assert_eq!(c["clientId"], "dev1/connected-registry");
        assert_eq!(c["protocol"], "p2", "MQTT 3.1.1: {c}");
        assert_eq!(c["cleanSession"], false, "persistent session: {c}");
        let user = c["username"].as_str().unwrap_or_default();
        assert!(
            user.starts_with(
                "myhub.azure-devices.net/dev1/connected-registry/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py"
            ),
            "username form: {user}"
        );
    }
}

#[test]
fn python_sdk_speaks_the_edge_protocol_through_the_workload_api() {
    let standin = EdgeStandin::start(seeded());
    let env = standin.env();
    for key in [
        "IOTEDGE_WORKLOADURI",
        "IOTEDGE_AUTHSCHEME",
        "IOTEDGE_MODULEGENERATIONID",
        "IOTEDGE_IOTHUBHOSTNAME",
        "IOTEDGE_GATEWAYHOSTNAME",
        "IOTEDGE_DEVICEID",
        "IOTEDGE_MODULEID",
        "IOTEDGE_APIVERSION",
        "RuntimeLogLevel",
        "EdgeHubConnectionString",
        "EdgeModuleCACertificateFile",
    ] {
        assert!(env.iter().any(|(k, _)| k == key), "module.env lacks {key}");
    }
    let get = |k: &str| env.iter().find(|(key, _)| key == k).unwrap().1.clone();
    assert_eq!(get("IOTEDGE_AUTHSCHEME"), "sasToken");
    assert_eq!(get("IOTEDGE_APIVERSION"), "2022-08-03");
    assert_eq!(get("IOTEDGE_GATEWAYHOSTNAME"), "localhost");
    assert_eq!(
        get("IOTEDGE_WORKLOADURI"),
        format!("unix://{}", standin.workload_socket().display())
    );
    let json_env: Value =
        serde_json::from_slice(&std::fs::read(standin.dir().join("module.json")).unwrap()).unwrap();
    assert_eq!(json_env["IOTEDGE_MODULEID"], "connected-registry");

    // The SDK gets the IOTEDGE_* variables only, so it must sign through the workload API.
    let steps = run_sdk_script(&standin, &standin.edge_env());
    assert_sdk_session(&standin, &steps);
    let counts = standin.workload_counts();
    assert!(
        counts["/sign"].as_u64().unwrap_or(0) >= 1,
        "no /sign: {counts}"
    );
    assert!(
        counts["/trust-bundle"].as_u64().unwrap_or(0) >= 1,
        "no /trust-bundle: {counts}"
    );
}

#[test]
fn python_sdk_fallback_mode_uses_the_connection_string() {
    let standin = EdgeStandin::start(seeded());
    let steps = run_sdk_script(&standin, &standin.fallback_env());
    assert_sdk_session(&standin, &steps);
    let counts = standin.workload_counts();
    assert_eq!(
        counts,
        json!({}),
        "the fallback mode never calls the workload API"
    );
}

/// The documented SAS test vector (iot-edge-protocol.md §3) through `/sign`, and every error
/// a module can meet on the workload API.
#[test]
fn workload_api_over_the_unix_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("edge");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("module.key"),
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    )
    .unwrap();
    let standin = EdgeStandin::start(EdgeOptions {
        module_id: "mod1".into(),
        dir: Some(dir),
        ..EdgeOptions::default()
    });
    let sign = "/modules/mod1/genid/gen1/sign?api-version=2019-01-30";
    let vector = r#"{"keyId":"primary","algo":"HMACSHA256","data":"bXlodWIuYXp1cmUtZGV2aWNlcy5uZXQlMkZkZXZpY2VzJTJGZGV2MSUyRm1vZHVsZXMlMkZtb2QxCjE3MDAwMDAwMDA="}"#;
    assert_eq!(
        standin.workload_request("POST", sign, Some(vector)),
        (
            200,
            json!({"digest": "ZId0CjYzILqd7GGIpC99uIpjPK4fJTkYbrDAh8qYiy8="})
        )
    );
    // Any data, checked against an independent HMAC; a leading `$` on the module is trimmed.
    let data = b"connected-registry\nsigned";
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&standin.module_key()).unwrap();
    mac.update(data);
    let expected = B64.encode(mac.finalize().into_bytes());
    let body =
        json!({"keyId": "primary", "algo": "HMACSHA256", "data": B64.encode(data)}).to_string();
    assert_eq!(
        standin.workload_request(
            "POST",
            "/modules/%24mod1/genid/gen1/sign?api-version=2022-08-03",
            Some(&body)
        ),
        (200, json!({"digest": expected}))
    );

    let errors: &[(&str, &str, Option<&str>, u16)] = &[
        ("POST", "/modules/mod1/genid/gen1/sign", Some(vector), 400),
        (
            "POST",
            "/modules/mod1/genid/gen1/sign?api-version=2017-11-01",
            Some(vector),
            400,
        ),
        (
            "POST",
            "/modules/mod1/genid/gen1/sign?api-version=banana",
            Some(vector),
            400,
        ),
        (
            "POST",
            "/modules/other/genid/gen1/sign?api-version=2019-01-30",
            Some(vector),
            404,
        ),
        (
            "POST",
            "/modules/mod1/genid/gen2/sign?api-version=2019-01-30",
            Some(vector),
            404,
        ),
        ("POST", sign, Some("{not json"), 400),
        ("POST", sign, Some(r#"{"keyId":"primary"}"#), 400),
        ("POST", sign, Some(r#"{"data":"***"}"#), 400),
        ("GET", sign, None, 405),
        ("GET", "/nothing?api-version=2019-01-30", None, 404),
        ("GET", "/trust-bundle", None, 400),
    ];
    for (method, path, body, status) in errors {
        let (got, value) = standin.workload_request(method, path, *body);
        assert_eq!(got, *status, "{method} {path}: {value}");
        assert!(
            value["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: errors carry a message: {value}"
        );
    }

    let ca = standin.ca_pem();
    assert_eq!(
        standin.workload_request("GET", "/trust-bundle?api-version=2019-01-30", None),
        (200, json!({"certificate": ca}))
    );
    assert_eq!(
        standin.workload_request("GET", "/manifest-trust-bundle?api-version=2020-07-07", None),
        (200, json!({"certificate": ""}))
    );

    // A server certificate: parses, chains to ca.pem for its common name and the module id,
    // and expires when asked (at most 90 days).
    let in_two_days = chrono::Utc::now() + chrono::Duration::days(2);
    let body =
        json!({"commonName": "registry.local", "expiration": in_two_days.to_rfc3339()}).to_string();
    let cert_path = "/modules/mod1/genid/gen1/certificate/server?api-version=2019-01-30";
    let (status, issued) = standin.workload_request("POST", cert_path, Some(&body));
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["privateKey"]["type"], "key");
    let key_pem = issued["privateKey"]["bytes"].as_str().unwrap();
    assert!(
        rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .unwrap()
            .is_some(),
        "private key PEM: {key_pem}"
    );
    let expiration =
        chrono::DateTime::parse_from_rfc3339(issued["expiration"].as_str().unwrap()).unwrap();
    assert!(
        (expiration.timestamp() - in_two_days.timestamp()).abs() <= 1,
        "{issued}"
    );
    let chain = issued["certificate"].as_str().unwrap();
    verify_chain(&ca, chain, "registry.local", 0).expect("chains to ca.pem for the common name");
    verify_chain(&ca, chain, "mod1", 0).expect("the module id is a SAN");
    assert!(
        verify_chain(&ca, chain, "elsewhere.local", 0).is_err(),
        "only its own names"
    );
    assert!(
        verify_chain(&ca, chain, "registry.local", 3).is_err(),
        "expired after two days"
    );

    let far = json!({"commonName": "10.1.2.3", "expiration": "2999-01-01T00:00:00Z"}).to_string();
    let (status, issued) = standin.workload_request("POST", cert_path, Some(&far));
    assert_eq!(status, 201, "{issued}");
    let chain = issued["certificate"].as_str().unwrap();
    verify_chain(&ca, chain, "10.1.2.3", 89).expect("an IP common name becomes an IP SAN");
    assert!(
        verify_chain(&ca, chain, "10.1.2.3", 91).is_err(),
        "capped at 90 days"
    );
    for bad in [
        r#"{"expiration":"2999-01-01T00:00:00Z"}"#,
        r#"{"commonName":"x","expiration":"soon"}"#,
    ] {
        let (status, value) = standin.workload_request("POST", cert_path, Some(bad));
        assert_eq!(status, 400, "{bad}: {value}");
    }

    let counts = standin.workload_counts();
    assert_eq!(counts["/sign"], 11, "{counts}");
    assert_eq!(counts["/trust-bundle"], 2, "{counts}");
    assert_eq!(counts["/manifest-trust-bundle"], 1, "{counts}");
    assert_eq!(counts["/certificate/server"], 4, "{counts}");
    assert_eq!(counts["other"], 1, "{counts}");
}

#[test]
fn edgehub_side_answers_a_rust_module_and_survives_a_broker_restart() {
    let standin = EdgeStandin::start(EdgeOptions {
        desired: Some(json!({"keep": 1, "gone": true})),
        ..EdgeOptions::default()
    });
    let module = RawModule::connect(&standin);
    module.expect(SUBACK);

    module.publish("$iothub/twin/GET/?$rid=1", b"");
    let (topic, body) = module.expect("$iothub/twin/res/");
    assert_eq!(topic, "$iothub/twin/res/200/?$rid=1");
    let twin: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        twin,
        json!({"desired": {"keep": 1, "gone": true, "$version": 1}, "reported": {"$version": 1}})
    );

    // edgeHub refuses the whole patch, with a message; the stand-in records why.
    let bad = br#"{"list": [1, 2], "bad.key": 1, "fine": 2}"#;
    module.publish("$iothub/twin/PATCH/properties/reported/?$rid=2", bad);
    let (topic, body) = module.expect("$iothub/twin/res/");
    assert_eq!(topic, "$iothub/twin/res/400/?$rid=2");
    let refusal: Value = serde_json::from_slice(&body).unwrap();
    let text = refusal["message"].as_str().unwrap();
    assert!(text.contains("array") && text.contains("bad.key"), "{text}");
    let violations = standin.violations();
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(violations[0]["rid"], "2");
    assert_eq!(
        violations[0]["errors"].as_array().unwrap().len(),
        2,
        "{violations:#?}"
    );
    assert_eq!(
        standin.twin()["reported"],
        json!({"$version": 1}),
        "nothing applied"
    );

    module.publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=3",
        br#"{"ok": {"nested": true}}"#,
    );
    let (topic, body) = module.expect("$iothub/twin/res/");
    assert_eq!(topic, "$iothub/twin/res/204/?$rid=3");
    assert!(body.is_empty(), "204 has an empty body");
    assert_eq!(
        standin.twin()["reported"],
        json!({"ok": {"nested": true}, "$version": 2})
    );

    // Replacing the desired properties sends the difference, with null for removed keys.
    let desired = standin.put_desired(json!({"keep": 1, "new": "x"}));
    assert_eq!(desired, json!({"keep": 1, "new": "x", "$version": 2}));
    let (topic, body) = module.expect("$iothub/twin/PATCH/properties/desired/");
    assert_eq!(topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    let patch: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(patch, json!({"gone": null, "new": "x", "$version": 2}));

    // Telemetry on the bare topic: no properties, a body that is not JSON.
    module.publish(
        "devices/dev1/modules/connected-registry/messages/events",
        b"plain text",
    );
    let msg = standin.wait_for_telemetry(WAIT, |m| m["body"] == "plain text");
    assert_eq!(msg["output"], Value::Null);
    assert_eq!(msg["properties"], json!({}));

    let err = standin
        .call_method("nobody", json!(1), Duration::from_millis(500))
        .unwrap_err();
    assert!(err.contains("did not answer"), "{err}");

    // The broker goes away and comes back: the module reconnects, and edgeHub's side answers.
    standin.restart_broker();
    module.expect(SUBACK);
    std::thread::scope(|s| {
        let call = s.spawn(|| standin.call_method("echo", json!({"n": 7}), WAIT));
        let (topic, body) = module.expect("$iothub/methods/POST/");
        let rid = topic
            .strip_prefix("$iothub/methods/POST/echo/?$rid=")
            .unwrap_or_else(|| panic!("method request topic: {topic}"));
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"n": 7})
        );
        module.publish(
            &format!("$iothub/methods/res/201/?$rid={rid}"),
            br#"{"echo": 7}"#,
        );
        assert_eq!(
            call.join().unwrap(),
            Ok(MethodReply {
                status: 201,
                payload: json!({"echo": 7})
            })
        );
    });
    let conns = standin.module_connections();
    assert!(conns.len() >= 2, "{conns:#?}");
    assert_eq!(
        conns[0]["connected"], false,
        "the first session ended: {conns:#?}"
    );
    let last = conns.last().unwrap();
    assert_eq!(last["connected"], true, "{conns:#?}");
    assert_eq!(last["protocol"], "p2");
    assert_eq!(last["cleanSession"], false);
    assert_eq!(standin.violations().len(), 1);
}

#[test]
fn restart_keeps_the_ca_and_the_module_key() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = EdgeOptions {
        dir: Some(tmp.path().join("edge")),
        ..EdgeOptions::default()
    };
    let (ca, key, env) = {
        let first = EdgeStandin::start(opts.clone());
        (first.ca_pem(), first.module_key(), first.env())
    };
    let again = EdgeStandin::start(EdgeOptions {
        gateway_hostname: "edge.local".into(),
        ..opts
    });
    assert_eq!(again.ca_pem(), ca, "the CA is kept");
    assert_eq!(again.module_key(), key, "the module key is kept");
    assert_eq!(key.len(), 32);
    let connection_string = |env: &[(String, String)]| {
        env.iter()
            .find(|(k, _)| k == "EdgeHubConnectionString")
            .unwrap()
            .1
            .clone()
    };
    assert!(connection_string(&env).ends_with(&format!("SharedAccessKey={}", B64.encode(&key))));
    assert!(connection_string(&again.env()).contains(";GatewayHostName=edge.local;"));
    // The edgeHub certificate is reissued for the new gateway name, by the same CA.
    let edgehub = std::fs::read_to_string(again.dir().join("edgehub.pem")).unwrap();
    let chain = format!("{edgehub}{ca}");
    for name in ["edge.local", "localhost", "127.0.0.1"] {
        verify_chain(&ca, &chain, name, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Run the stand-in with `args`, expecting it to fail at once; returns its stderr.
fn standin_fails(args: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::edge::STANDIN_BIN)
        .arg("--dir")
        .arg(tmp.path().join("edge"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("edge-standin {args:?} kept running instead of failing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "edge-standin {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_setup_fails_with_a_clear_message() {
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let err = standin_fails(&["--mqtt-port", &port]);
    assert!(
        err.contains(&format!("MQTT port {port} is not free")),
        "{err}"
    );

    let err = standin_fails(&["--mqtt-port", "1", "--control", "0.0.0.0:0"]);
    assert!(err.contains("loopback"), "{err}");
    let err = standin_fails(&["--module-id", "a/b"]);
    assert!(err.contains("--module-id"), "{err}");
    let err = standin_fails(&["--desired", "/nonexistent/desired.json"]);
    assert!(err.contains("cannot read --desired"), "{err}");
    let list = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(list.path(), "[1]").unwrap();
    let err = standin_fails(&["--desired", list.path().to_str().unwrap()]);
    assert!(err.contains("must hold a JSON object"), "{err}");
}
