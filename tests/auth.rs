//! Tokens and authentication on the wire, against the real binary: tokens made with the real
//! `connected-registry token` command, every repository action allowed and denied over Basic and
//! over bearer tokens from the node's own realm, catalog filtering, the change feed's gateway
//! permission, disabling and deleting a token while the node runs, ACR's limits, and the
//! failed-login limit per source.

use crate::common;

use std::time::Duration;

use common::credentials::{
    basic, bearer, create_token, error_code, error_message, push_image_as, send_as, token_command,
    SecuredNode,
};
use common::peers::{poll_every, random_bytes, wait_until, Image};
use reqwest::Method;
use serde_json::json;

/// Tokens of the matrix: what each may do on `apps/*` and `other/*`.
fn matrix_node() -> (SecuredNode, Vec<(&'static str, String)>) {
    let mut passwords = Vec::new();
    let node = SecuredNode::start(json!({"name": "rootnode"}), |config| {
        for (name, args) in [
            (
                "reader",
                &["--repository", "apps/*", "content/read", "metadata/read"][..],
            ),
            (
                "writer",
                &[
                    "--repository",
                    "apps/*",
                    "content/read",
                    "content/write",
                    "metadata/read",
                ],
            ),
            (
                "deleter",
                &["--repository", "apps/*", "content/read", "content/delete"],
            ),
            (
                "other",
                &[
                    "--repository",
                    "other/*",
                    "content/read",
                    "content/write",
                    "metadata/read",
                ],
            ),
            (
                "childa",
                &[
                    "--gateway",
                    "childa",
                    "message/read",
                    "config/read",
                    "--repository",
                    "apps/*",
                    "content/read",
                    "metadata/read",
                ],
            ),
        ] {
            passwords.push((name, create_token(config, name, args)));
        }
    });
    (node, passwords)
}

fn password<'a>(passwords: &'a [(&str, String)], name: &str) -> &'a str {
    &passwords.iter().find(|(n, _)| *n == name).unwrap().1
}

fn image(seed: u64) -> Image {
    Image::new("linux/amd64", &[random_bytes(seed, 3000)])
}

#[test]
fn every_action_is_allowed_or_denied_over_basic_and_bearer() {
    let (node, pw) = matrix_node();
    let base = node.base();
    let writer = basic("writer", password(&pw, "writer"));
    let v1 = image(1);
    push_image_as(&base, Some(&writer), "apps/web", "v1", &v1).unwrap();
    let other = basic("other", password(&pw, "other"));
    push_image_as(&base, Some(&other), "other/db", "v1", &image(2)).unwrap();

    // Anonymous: 401 with the docker challenge naming realm, service and the scope needed.
    let r = send_as(Method::GET, &base, "/v2/", None, None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!(r#"Bearer realm="{base}/acr/oauth2/token",service="rootnode""#).as_str())
    );
    let r = send_as(Method::GET, &base, "/v2/apps/web/manifests/v1", None, None);
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "UNAUTHORIZED");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .ends_with(r#"scope="repository:apps/web:pull""#));

    // The matrix, once with Basic and once with a bearer token fetched for the scopes needed.
    struct Case {
        token: &'static str,
        pull: bool,
        list: bool,
        push: bool,
        delete: bool,
    }
    let cases = [
        Case {
            token: "reader",
            pull: true,
            list: true,
            push: false,
            delete: false,
        },
        Case {
            token: "writer",
            pull: true,
            list: true,
            push: true,
            delete: false,
        },
        Case {
            token: "deleter",
            pull: true,
            list: false,
            push: false,
            delete: true,
        },
        Case {
            token: "other",
            pull: false,
            list: false,
            push: false,
            delete: false,
        },
    ];
    for (round, use_bearer) in [(0u64, false), (1, true)] {
        for (i, case) in cases.iter().enumerate() {
            let p = password(&pw, case.token);
            let auth = if use_bearer {
                let scopes = ["repository:apps/web:pull,push,delete"];
                format!(
                    "Bearer {}",
                    bearer(&base, Some((case.token, p)), &scopes).unwrap()
                )
            } else {
                basic(case.token, p)
            };
            let what = format!(
                "{} over {}",
                case.token,
                if use_bearer { "Bearer" } else { "Basic" }
            );
            let expect = |allowed: bool, r: &common::peers::Http, action: &str, ok: u16| {
                if allowed {
                    assert_eq!(r.status, ok, "{what} {action}: {}", r.text());
                } else {
                    assert_eq!(r.status, 403, "{what} {action}: {}", r.text());
                    assert_eq!(error_code(r), "DENIED");
                    let message = error_message(r);
                    assert!(
                        message.contains(&format!("repositories/apps/web/{action}")),
                        "{what}: {message}"
                    );
                }
            };
            let r = send_as(
                Method::GET,
                &base,
                "/v2/apps/web/manifests/v1",
                Some(&auth),
                None,
            );
            expect(case.pull, &r, "content/read", 200);
            if case.pull {
                assert_eq!(r.body, v1.bytes);
            }
            let r = send_as(
                Method::GET,
                &base,
                "/v2/apps/web/tags/list",
                Some(&auth),
                None,
            );
            expect(case.list, &r, "metadata/read", 200);
            let pushed = image(100 + round * 10 + i as u64);
            let tag = format!("t{round}{i}");
            let r = match push_image_as(&base, Some(&auth), "apps/web", &tag, &pushed) {
                Ok(r) | Err(r) => r,
            };
            expect(case.push, &r, "content/write", 201);
            // Delete what the writer pushed for this round (by digest).
            if case.delete {
                let victim = image(200 + round);
                push_image_as(
                    &base,
                    Some(&writer),
                    "apps/web",
                    &format!("gone{round}"),
                    &victim,
                )
                .unwrap();
                let path = format!("/v2/apps/web/manifests/{}", victim.digest);
                let r = send_as(Method::DELETE, &base, &path, Some(&auth), None);
                expect(true, &r, "content/delete", 202);
                let r = send_as(Method::GET, &base, &path, Some(&writer), None);
                assert_eq!(r.status, 404, "deleted");
            } else {
                let path = format!("/v2/apps/web/manifests/{}", v1.digest);
                let r = send_as(Method::DELETE, &base, &path, Some(&auth), None);
                expect(false, &r, "content/delete", 202);
            }
        }
    }
    // v1 survived every refused delete.
    let r = send_as(
        Method::GET,
        &base,
        "/v2/apps/web/manifests/v1",
        Some(&writer),
        None,
    );
    assert_eq!(r.body, v1.bytes);

    // A bearer token without the scope needed is a 401 challenge for that scope, not a 403;
    // a scope asked for grants everything the token holds there.
    let p = password(&pw, "writer");
    let web = bearer(&base, Some(("writer", p)), &["repository:apps/web:pull"]).unwrap();
    let claims = jwt_claims(&web);
    assert_eq!(claims["access"][0]["actions"], json!(["pull", "push"]));
    let r = push_image_as(
        &base,
        Some(&format!("Bearer {web}")),
        "apps/api",
        "x",
        &image(9),
    )
    .unwrap_err();
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .ends_with(r#"scope="repository:apps/api:pull,push""#));
    push_image_as(
        &base,
        Some(&format!("Bearer {web}")),
        "apps/web",
        "x",
        &image(9),
    )
    .unwrap();
    // The realm grants only what the token holds.
    let t = bearer(
        &base,
        Some(("reader", password(&pw, "reader"))),
        &["repository:apps/web:pull,push"],
    );
    let claims = jwt_claims(&t.unwrap());
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": "apps/web", "actions": ["pull"]}])
    );
    assert!(bearer(&base, Some(("reader", "wrong")), &[]).is_none());
    assert!(
        bearer(&base, None, &["repository:apps/web:pull"]).is_none(),
        "no anonymous tokens"
    );
}

/// The payload of a JWT, decoded without verifying (the node verifies; the test reads).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn catalog_feed_and_token_lifecycle() {
    let (node, pw) = matrix_node();
    let base = node.base();
    let writer = basic("writer", password(&pw, "writer"));
    let other = basic("other", password(&pw, "other"));
    for repo in ["apps/a", "apps/b"] {
        push_image_as(&base, Some(&writer), repo, "v1", &image(1)).unwrap();
    }
    push_image_as(&base, Some(&other), "other/c", "v1", &image(2)).unwrap();

    // The catalog shows only what the token may read (metadata/read).
    let catalog = |auth: &str| {
        let r = send_as(Method::GET, &base, "/v2/_catalog", Some(auth), None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["repositories"].clone()
    };
    let reader = basic("reader", password(&pw, "reader"));
    assert_eq!(catalog(&reader), json!(["apps/a", "apps/b"]));
    assert_eq!(catalog(&other), json!(["other/c"]));
    let r = send_as(Method::GET, &base, "/v2/_catalog?n=1", Some(&reader), None);
    assert_eq!(r.json()["repositories"], json!(["apps/a"]));
    let r = send_as(Method::GET, &base, "/v2/_catalog", None, None);
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .ends_with(r#"scope="registry:catalog:*""#));
    let catalog_token = bearer(
        &base,
        Some(("other", password(&pw, "other"))),
        &["registry:catalog:*"],
    );
    assert_eq!(
        catalog(&format!("Bearer {}", catalog_token.unwrap())),
        json!(["other/c"])
    );

    // The change feed needs the gateway's message/read and shows only readable repositories.
    let child = basic("childa", password(&pw, "childa"));
    let r = send_as(
        Method::GET,
        &base,
        "/acr/connected-registry/v1/changes?since=0",
        Some(&child),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let repos: Vec<String> = r.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["repository"].as_str().unwrap().to_owned())
        .collect();
    assert!(repos.contains(&"apps/a".to_owned()), "{repos:?}");
    assert!(repos.iter().all(|r| r.starts_with("apps/")), "{repos:?}");
    let r = send_as(
        Method::GET,
        &base,
        "/acr/connected-registry/v1/changes?since=0",
        Some(&reader),
        None,
    );
    assert_eq!(r.status, 403);
    assert!(error_message(&r).contains("message/read"), "{}", r.text());

    // Disabled with the CLI while the node runs: Basic and a bearer token issued before both
    // stop working (the node re-reads its configuration file within a second or so).
    let reader_bearer = format!(
        "Bearer {}",
        bearer(
            &base,
            Some(("reader", password(&pw, "reader"))),
            &["repository:apps/a:pull"]
        )
        .unwrap()
    );
    let pull = |auth: &str| {
        send_as(
            Method::GET,
            &base,
            "/v2/apps/a/manifests/v1",
            Some(auth),
            None,
        )
        .status
    };
    assert_eq!(pull(&reader), 200);
    assert_eq!(pull(&reader_bearer), 200);
    let out = token_command(&node.config, &["disable", "--name", "reader"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(10), || pull(&reader) == 401),
        "disabled token still works"
    );
    assert_eq!(pull(&reader_bearer), 401);
    let r = send_as(
        Method::GET,
        &base,
        "/v2/apps/a/manifests/v1",
        Some(&reader),
        None,
    );
    assert!(error_message(&r).contains("disabled"), "{}", r.text());
    let out = token_command(&node.config, &["enable", "--name", "reader"]);
    assert!(out.status.success());
    assert!(wait_until(Duration::from_secs(10), || pull(&reader) == 200));
    let out = token_command(&node.config, &["delete", "--name", "reader"]);
    assert!(out.status.success());
    assert!(
        wait_until(Duration::from_secs(10), || pull(&reader) == 401),
        "deleted token still works"
    );
    assert_eq!(pull(&reader_bearer), 401);
    // A token created while the node runs works at once too.
    let fresh = create_token(
        &node.config,
        "fresh",
        &["--repository", "apps/a", "content/read"],
    );
    let fresh = basic("fresh", &fresh);
    // (Polled slowly: each try before the node has re-read the file is a failed login, and a
    // source gets 10 of those a minute.)
    assert!(poll_every(
        Duration::from_millis(500),
        Duration::from_secs(10),
        || pull(&fresh) == 200
    ));

    // The file holds hashes only, never a password; `token list` shows no hashes.
    let text = std::fs::read_to_string(&node.config).unwrap();
    for (name, password) in &pw {
        assert!(
            !text.contains(password.as_str()),
            "password of {name} in the file"
        );
    }
    assert!(text.contains("$argon2id$"));
    let out = token_command(&node.config, &["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("childa") && listed.contains("sync"),
        "{listed}"
    );
    assert!(!listed.contains("argon2"), "{listed}");
}

#[test]
fn acr_limits_are_enforced_with_messages_that_say_which() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "# a node\nname = \"limits1\"\n").unwrap();
    for i in 0..20 {
        create_token(
            &config,
            &format!("t{i}"),
            &["--repository", "a", "content/read"],
        );
    }
    let out = token_command(
        &config,
        &[
            "create",
            "--name",
            "t20",
            "--repository",
            "a",
            "content/read",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at most 20 client tokens"), "{err}");
    // Sync tokens are not client tokens: the 21st token of that kind is fine.
    create_token(
        &config,
        "child1",
        &["--sync", "--repository", "a", "content/read"],
    );

    let many: Vec<String> = (0..501).map(|i| format!("repo{i}")).collect();
    let mut args = vec!["create", "--name", "wide"];
    for repo in &many {
        args.extend(["--repository", repo.as_str(), "content/read"]);
    }
    let out = token_command(&config, &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("501 repository permissions") && err.contains("at most 500"),
        "{err}"
    );
    let out = token_command(
        &config,
        &[
            "create",
            "--name",
            "bad",
            "--repository",
            "a",
            "content/push",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("content/push"));
    // Nothing refused reached the file, and the comment survived.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with("# a node\n"));
    assert!(
        !text.contains("\"wide\"") && !text.contains("\"t20\""),
        "{text}"
    );
}

#[test]
fn a_source_that_keeps_failing_to_log_in_is_refused_and_others_are_not() {
    let mut pw = String::new();
    let node = SecuredNode::start(json!({}), |config| {
        pw = create_token(config, "line1", &["--repository", "*", "content/read"]);
    });
    let base = node.base();
    let from = |ip: &str, auth: &str| {
        let client = reqwest::blocking::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let r = client
            .get(format!("{base}/v2/"))
            .header("Authorization", auth)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap())
    };
    let bad = basic("line1", "wrong");
    let good = basic("line1", &pw);
    for _ in 0..10 {
        assert_eq!(from("127.0.0.1", &bad).0, 401);
    }
    let (status, body) = from("127.0.0.1", &good);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too many failed logins"), "{body}");
    // Another source is not affected.
    assert_eq!(from("127.0.0.2", &good).0, 200);
    assert!(!node.reg.log_text().contains(&pw), "a password in the log");
}

#[test]
fn a_read_only_node_refuses_pushes_and_deletes_naming_its_mode() {
    let mut pw = String::new();
    let node = SecuredNode::start(json!({"mode": "ReadOnly"}), |config| {
        pw = create_token(
            config,
            "admin",
            &[
                "--repository",
                "*",
                "content/read",
                "content/write",
                "content/delete",
                "metadata/read",
            ],
        );
    });
    let auth = basic("admin", &pw);
    let r = push_image_as(&node.base(), Some(&auth), "apps/web", "v1", &image(1)).unwrap_err();
    assert_eq!(r.status, 403);
    assert_eq!(error_code(&r), "DENIED");
    assert!(error_message(&r).contains("ReadOnly"), "{}", r.text());
    let r = send_as(
        Method::DELETE,
        &node.base(),
        "/v2/apps/web/manifests/v1",
        Some(&auth),
        None,
    );
    assert_eq!(r.status, 403);
    assert!(error_message(&r).contains("ReadOnly"));
    let r = send_as(
        Method::GET,
        &node.base(),
        "/v2/apps/web/tags/list",
        Some(&auth),
        None,
    );
    assert_eq!(r.status, 404, "reads are answered: {}", r.text());
}

/// One token may have at most 32 upload bodies in flight; the 33rd is refused with 429 naming
/// the limit, another token is not affected, and the slots come back when the bodies end.
#[test]
fn concurrent_uploads_are_limited_per_token() {
    use std::io::Write;
    let (mut ci, mut other) = (String::new(), String::new());
    let node = SecuredNode::start(json!({}), |config| {
        ci = create_token(
            config,
            "ci",
            &["--repository", "apps/*", "content/write", "content/read"],
        );
        other = create_token(
            config,
            "other",
            &["--repository", "apps/*", "content/write", "content/read"],
        );
    });
    let ci_auth = basic("ci", &ci);
    let digest = common::sha256(b"never sent whole");
    let stalled: Vec<std::net::TcpStream> = (0..32)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(node.reg.host()).unwrap();
            write!(
                s,
                "POST /v2/apps/stall/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nAuthorization: {ci_auth}\r\nContent-Length: 1000\r\n\r\npartial"
            )
            .unwrap();
            s
        })
        .collect();
    let small = |auth: &str| {
        let body = b"small blob".to_vec();
        let path = format!(
            "/v2/apps/ok/blobs/uploads/?digest={}",
            common::sha256(&body)
        );
        send_as(Method::POST, &node.base(), &path, Some(auth), Some(body))
    };
    assert!(
        wait_until(Duration::from_secs(10), || small(&ci_auth).status == 429),
        "the 33rd upload of one token was not refused"
    );
    let r = small(&ci_auth);
    assert!(
        error_message(&r).contains("32 uploads in progress"),
        "{}",
        r.text()
    );
    assert_eq!(
        small(&basic("other", &other)).status,
        201,
        "another token is not affected"
    );
    drop(stalled);
    assert!(wait_until(Duration::from_secs(10), || small(&ci_auth)
        .status
        == 201));
}
