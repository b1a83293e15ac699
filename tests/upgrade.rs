//! Upgrades keep the data volume: a data directory written by the last binary before the data
//! format was versioned (format 1, `tests/fixtures/data-format-1.tar.gz`, made by
//! `tests/fixtures/make-data-format-1.sh` with the binary of commit fe36b63) is opened and
//! migrated in place by this one, serves every manifest and blob it held to a real client, and
//! its garbage is collected; a directory of a newer format is refused by name.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::peers::{self, get, Node};
use common::support::assert_blob_files_intact;
use serde_json::{json, Value};

const M1: &str = "sha256:219c78f3caaed0c5f898fd48d35f3f6869fcc792ea011591c034d738fe14caf1";
const M2: &str = "sha256:1269cb4f1340fb5f63843f732b9dc800f50baa811ca883e0aba765184c2e5ba0";
const SIGNATURE: &str = "sha256:2fbc8c02de6810a0802867a83e68ee18c7a843c95d562f4c806468c87076076d";

fn unpack_fixture(into: &Path) -> PathBuf {
    let data = into.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-format-1.tar.gz");
    common::run(
        Command::new(common::require("tar"))
            .arg("-xzf")
            .arg(&fixture)
            .arg("-C")
            .arg(&data),
    );
    data
}

fn format_of(data: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(data.join("format.json")).unwrap()).unwrap()
}

#[test]
fn a_format_1_directory_is_migrated_in_place_and_serves_everything_it_held() {
    let tmp = tempfile::tempdir().unwrap();
    let data = unpack_fixture(tmp.path());
    assert!(!data.join("format.json").exists());
    let config = json!({"garbageCollection": {"enabled": false, "gracePeriod": "PT0S"}});
    let mut node = Node::with_config_in(config.clone(), Some(data.clone()));
    let base = node.base();
    assert_eq!(format_of(&data)["format"], 3);
    assert!(
        node.log_text().contains("migrated the data directory"),
        "{}",
        node.log_text()
    );

    let tags = get(&base, "/v2/fixture/app/tags/list").json();
    assert_eq!(tags["tags"], json!(["v1", "v2"]));
    for (reference, digest) in [("v1", M1), (M2, M2), (SIGNATURE, SIGNATURE)] {
        let r = get(&base, &format!("/v2/fixture/app/manifests/{reference}"));
        assert_eq!(r.status, 200, "{reference}");
        assert_eq!(common::sha256(&r.body), digest);
    }
    // A record of an older format (no flag saying whether its bytes name their media type) is
    // served by tag with the type its repository was given, as by digest.
    let by_tag = get(&base, "/v2/fixture/app/manifests/v1");
    let by_digest = get(&base, &format!("/v2/fixture/app/manifests/{M1}"));
    assert!(by_tag.header("content-type").is_some());
    assert_eq!(
        by_tag.header("content-type"),
        by_digest.header("content-type")
    );
    let referrers = get(&base, &format!("/v2/fixture/app/referrers/{M1}")).json();
    assert_eq!(referrers["manifests"][0]["digest"], SIGNATURE);
    // A real client pulls both tags whole (every blob verified by skopeo).
    for tag in ["v1", "v2"] {
        let out = tmp.path().join(format!("pulled-{tag}"));
        peers::skopeo_pull(&node.host(), "fixture/app", tag, &out);
    }
    // And it takes new pushes as before.
    let image = peers::Image::new("linux/amd64", &[peers::random_bytes(1, 10_000)]);
    peers::push_image(&base, "fixture/app", "v3", &image);
    node.terminate();

    // Its garbage (an untagged manifest and the layer only it used) is collected.
    let out = peers::run_cli(
        &[
            "gc",
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            node.config_path.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("manifest  fixture/other@"), "{stdout}");
    let freed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("blob")).collect();
    assert_eq!(freed.len(), 1, "{stdout}");
    assert!(freed[0].contains(" 3000 bytes"), "{stdout}");
    assert_blob_files_intact(&data);

    // A migration interrupted before it recorded the new format simply runs again.
    std::fs::remove_file(data.join("format.json")).unwrap();
    node.restart();
    assert_eq!(format_of(&data)["format"], 3);
    peers::assert_serves(&node.base(), "fixture/app", "v3", &image, None);
    assert_eq!(
        get(&node.base(), "/v2/fixture/app/manifests/v2").status,
        200
    );
    node.assert_no_panic();
}

#[test]
fn a_directory_of_a_newer_format_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = unpack_fixture(tmp.path());
    std::fs::write(
        data.join("format.json"),
        r#"{"format": 99, "writtenBy": "9.9.9"}"#,
    )
    .unwrap();
    let before = std::fs::read(data.join("metadata/db")).unwrap();
    let port = common::free_port().to_string();
    for args in [
        vec!["serve", "--listen", &format!("127.0.0.1:{port}")],
        vec!["gc"],
    ] {
        let mut args = args.clone();
        args.extend(["--data-dir", data.to_str().unwrap()]);
        let out = peers::run_cli(&args, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must refuse");
        assert!(stderr.contains("data format 99"), "{stderr}");
        assert!(stderr.contains("9.9.9"), "{stderr}");
        assert!(stderr.contains("reads data formats up to 3"), "{stderr}");
    }
    assert_eq!(
        std::fs::read(data.join("metadata/db")).unwrap(),
        before,
        "nothing was touched"
    );
}
