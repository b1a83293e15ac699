//! Parents and children, with the real binary on both sides: a named child activates at its
//! parent with its sync token, a second instance of the name is refused (and keeps serving)
//! until `connected-registry deactivate`, a clean shutdown frees the name, the parent lists its
//! children (`status --children`), and a ReadOnly parent refuses a ReadWrite child.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::credentials::{
    basic, create_sync_token, create_token, error_code, send_as, SecuredNode,
};
use common::peers::{detail_codes, get, poll_every, status, wait_for_tag, wait_until, Node};
use common::BIN;
use reqwest::Method;
use serde_json::{json, Value};

/// The root's list of children, as `admin` sees it.
fn children(root: &SecuredNode, admin: &str) -> Value {
    let r = send_as(
        Method::GET,
        &root.base(),
        "/acr/connected-registry/v1/registries",
        Some(admin),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn child_entry(list: &Value, name: &str) -> Option<Value> {
    list["registries"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

fn child_config(root: &SecuredNode, password: &str) -> Value {
    json!({
        "name": "factorya",
        "parent": {
            "endpoint": root.base(),
            "syncToken": {"name": "factorya", "password": password},
            "sync": {"repositories": ["apps/*"]}
        }
    })
}

#[test]
fn one_instance_per_name_deactivate_and_the_parents_view_of_its_children() {
    let (mut sync_pw, mut admin_pw) = (String::new(), String::new());
    let root = SecuredNode::start(json!({"name": "rootnode"}), |config| {
        sync_pw = create_sync_token(config, "factorya", "apps/*");
        admin_pw = create_token(
            config,
            "admin",
            &[
                "--gateway",
                "*",
                "config/read",
                "config/write",
                "--repository",
                "*",
                "content/write",
                "content/read",
            ],
        );
    });
    let admin = basic("admin", &admin_pw);

    // The first instance activates and reports its status.
    let mut first = Node::with_config(child_config(&root, &sync_pw));
    assert!(
        wait_until(Duration::from_secs(20), || {
            child_entry(&children(&root, &admin), "factorya").is_some_and(|c| {
                c["activation"]["status"] == "Active" && c["connectionState"] != "Offline"
            })
        }),
        "first instance not listed as active: {}",
        children(&root, &admin)
    );
    assert_eq!(status(&first.base())["activation"]["status"], "Active");

    // Killed (no clean shutdown): the name stays held, and a second instance is refused but
    // serves what it has and says why.
    first.kill9();
    let second = Node::with_config(child_config(&root, &sync_pw));
    assert!(
        wait_until(Duration::from_secs(20), || {
            let s = status(&second.base());
            s["sync"]["state"] == "NotActivated"
                && detail_codes(&s).contains(&"ALREADY_ACTIVATED".to_owned())
        }),
        "second instance not refused: {}",
        status(&second.base())
    );
    let s = status(&second.base());
    assert_eq!(s["activation"]["status"], "Inactive");
    assert_eq!(
        get(&second.base(), "/v2/").status,
        200,
        "a refused child still serves"
    );

    // `connected-registry deactivate` at the parent lets the second instance in on its next try.
    let out = Command::new(BIN)
        .args(["deactivate", "factorya", "--url", &root.base(), "--user"])
        .arg(format!("admin:{admin_pw}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("factorya deactivated"));
    assert!(
        poll_every(Duration::from_millis(500), Duration::from_secs(60), || {
            status(&second.base())["activation"]["status"] == "Active"
        }),
        "second instance never activated: {}",
        status(&second.base())
    );

    // `status --children` prints the az-style table.
    let out = Command::new(BIN)
        .args(["status", "--children", "--url", &root.base(), "--user"])
        .arg(format!("admin:{admin_pw}"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = table.lines().next().unwrap_or("");
    for column in [
        "NAME",
        "MODE",
        "CONNECTION STATE",
        "PARENT",
        "LOGIN SERVER",
        "LAST SYNC (UTC)",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("factorya"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("ReadOnly") && row.contains("rootnode") && row.contains("Active"),
        "{table}"
    );

    // A clean shutdown deactivates: the parent lists the name Inactive.
    let mut second = second;
    second.terminate();
    assert!(wait_until(Duration::from_secs(10), || {
        child_entry(&children(&root, &admin), "factorya").is_some_and(|c| {
            c["activation"]["status"] == "Inactive" && c["connectionState"] == "Offline"
        })
    }));

    // A sync token speaks only for its own registry.
    let sync = basic("factorya", &sync_pw);
    let r = send_as(
        Method::POST,
        &root.base(),
        "/acr/connected-registry/v1/registries/otherchild/activate",
        Some(&sync),
        Some(br#"{"instanceId":"x","mode":"ReadOnly"}"#.to_vec()),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(error_code(&r), "DENIED");
}

#[test]
fn a_read_only_parent_refuses_a_read_write_child() {
    let mut pw = String::new();
    let root = SecuredNode::start(json!({"name": "rootnode", "mode": "ReadOnly"}), |config| {
        pw = create_token(
            config,
            "childb",
            &["--gateway", "childb", "config/write", "message/read"],
        );
    });
    let r = send_as(
        Method::POST,
        &root.base(),
        "/acr/connected-registry/v1/registries/childb/activate",
        Some(&basic("childb", &pw)),
        Some(br#"{"instanceId":"i1","mode":"ReadWrite","version":"0.1.0"}"#.to_vec()),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(error_code(&r), "MODE_INCOMPATIBLE");
    let r = send_as(
        Method::POST,
        &root.base(),
        "/acr/connected-registry/v1/registries/childb/activate",
        Some(&basic("childb", &pw)),
        Some(br#"{"instanceId":"i1","mode":"ReadOnly","version":"0.1.0"}"#.to_vec()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send_as(
        Method::POST,
        &root.base(),
        "/acr/connected-registry/v1/registries/childb/activate",
        Some(&basic("childb", &pw)),
        Some(br#"{"instanceId":"i2","mode":"ReadOnly"}"#.to_vec()),
    );
    assert_eq!(r.status, 409);
    assert_eq!(error_code(&r), "ALREADY_ACTIVATED");
    assert!(
        r.text().contains("connected-registry deactivate childb"),
        "{}",
        r.text()
    );
}

/// `get-settings` on the parent prints ACR's settings JSON (creating the child's sync token);
/// a child started with nothing but that environment activates and syncs what its token may
/// read; rotating the password stops the old one.
#[test]
fn a_child_starts_from_nothing_but_the_environment_get_settings_printed() {
    use common::credentials::push_image_as;
    use common::peers::{assert_serves, random_bytes, Image};
    use common::Registry;

    let mut admin_pw = String::new();
    let root = SecuredNode::start(json!({"name": "rootnode"}), |config| {
        admin_pw = create_token(
            config,
            "admin",
            &[
                "--repository",
                "*",
                "content/read",
                "content/write",
                "metadata/read",
            ],
        );
    });
    let admin = basic("admin", &admin_pw);
    let wanted = Image::new("linux/amd64", &[random_bytes(7, 10_000)]);
    push_image_as(&root.base(), Some(&admin), "apps/x", "v1", &wanted).unwrap();
    push_image_as(
        &root.base(),
        Some(&admin),
        "private/y",
        "v1",
        &Image::new("linux/amd64", &[random_bytes(8, 100)]),
    )
    .unwrap();

    let get_settings = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["get-settings", "factoryb", "--config"])
            .arg(&root.config)
            .args([
                "--repository",
                "apps/*",
                "--parent-endpoint",
                &root.reg.host(),
                "--parent-protocol",
                "http",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let settings = get_settings(&[]);
    for key in [
        "SYNC_TOKEN_USER",
        "SYNC_TOKEN_PASSWORD",
        "ACR_REGISTRY_CERTIFICATE_VOLUME",
        "ACR_REGISTRY_DATA_VOLUME",
        "ACR_REGISTRY_CONNECTION_STRING",
        "ACR_REGISTRY_LOGIN_SERVER",
    ] {
        assert!(settings[key].is_string(), "{key} missing: {settings}");
    }
    let password = settings["SYNC_TOKEN_PASSWORD"].as_str().unwrap().to_owned();
    let connection = settings["ACR_REGISTRY_CONNECTION_STRING"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        connection,
        format!(
            "ConnectedRegistryName=factoryb;SyncTokenName=factoryb;SyncTokenPassword={password};ParentGatewayEndpoint={};ParentEndpointProtocol=http",
            root.reg.host()
        )
    );
    // Asked again, the password is not shown (it is not stored anywhere to show).
    assert_eq!(
        get_settings(&[])["SYNC_TOKEN_PASSWORD"],
        "<use --generate-password to generate a new password>"
    );

    // The child: no configuration file at all, only the environment.
    let child = Registry::start_with_env(&[], &[("ACR_REGISTRY_CONNECTION_STRING", &connection)]);
    wait_for_tag(
        &child,
        "apps/x",
        "v1",
        &wanted.digest,
        Duration::from_secs(30),
    );
    assert_serves(&child.url(""), "apps/x", "v1", &wanted, None);
    let s = status(&child.url(""));
    assert_eq!(s["name"], "factoryb");
    assert_eq!(s["activation"]["status"], "Active");
    assert_eq!(
        common::peers::tags(&child.url(""), "private/y"),
        None,
        "outside the token's scope"
    );
    assert!(
        !child.log_text().contains(&password),
        "the password in the child's log"
    );

    // Rotating the password: the old one stops working at the parent. (The child goes first:
    // retrying with the old password, it would use up this address's failed-login budget.)
    drop(child);
    let rotated = get_settings(&["--generate-password", "1"]);
    let new_password = rotated["SYNC_TOKEN_PASSWORD"].as_str().unwrap();
    assert_ne!(new_password, password);
    let status_with = |pw: &str| {
        send_as(
            Method::GET,
            &root.base(),
            "/v2/",
            Some(&basic("factoryb", pw)),
            None,
        )
        .status
    };
    assert!(poll_every(
        Duration::from_millis(500),
        Duration::from_secs(10),
        || status_with(&password) == 401
    ));
    assert_eq!(status_with(new_password), 200);
}
