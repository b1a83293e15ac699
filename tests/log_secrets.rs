//! No secret in any log, and logs fit for `docker logs` and journald. Each test runs the real
//! binary at its most verbose level while it handles one kind of secret: client token passwords
//! (Basic from skopeo, curl and reqwest; docker's bearer-token flow and containerd's password
//! grant, whose JWTs are secrets too), failed logins, a child's sync token (a connection string,
//! a TOML file, `sync --once`), a configuration file broken on its password line, and an IoT
//! Edge module's SAS tokens (signed by the workload API, or with the module key). Then every log
//! is searched for each secret and its derived forms (base64 of `user:password`, URL-encoded);
//! a leak fails the test with the offending line, the secret masked. Also: no ANSI colour unless
//! stderr is a terminal (never with `NO_COLOR`), and an idle child's sync passes log at debug.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::credentials::{basic, bearer, create_sync_token, create_token, push_image_as, send_as};
use common::edge::{EdgeOptions, EdgeStandin};
use common::peers::{
    self, manifest_digest, random_bytes, skopeo_seed, skopeo_seed_as, status, wait_until,
    Distribution, Image, OCI_MANIFEST,
};
use common::{require, run, Registry, BIN};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);
/// A password nobody has: what a failed login sends.
const WRONG_PASSWORD: &str = "wrong-password-Zq81hT5mW0pXc3vB";

/// The secrets a run used, each in every form it could leak in.
#[derive(Default)]
struct Secrets {
    /// (what it is, its exact text)
    known: Vec<(String, String)>,
}

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        assert!(value.len() >= 8, "{what} is too short to search for");
        self.known.push((what.to_owned(), value.to_owned()));
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        if encoded != value {
            self.known.push((format!("{what}, URL-encoded"), encoded));
        }
    }

    /// A password, and the Basic credentials it makes with `user`.
    fn password(&mut self, what: &str, user: &str, password: &str) {
        self.add(what, password);
        let credentials = STANDARD.encode(format!("{user}:{password}"));
        self.add(&format!("base64 of {user}:<{what}>"), &credentials);
    }

    /// A JWT: the whole token, and its signature alone.
    fn jwt(&mut self, what: &str, token: &str) {
        self.add(what, token);
        let signature = token.rsplit('.').next().unwrap();
        self.add(&format!("the signature of {what}"), signature);
    }

    /// Every secret in `line` replaced by its name.
    fn mask(&self, line: &str) -> String {
        let mut by_length: Vec<&(String, String)> = self.known.iter().collect();
        by_length.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        by_length
            .iter()
            .fold(line.to_owned(), |line, (what, value)| {
                line.replace(value.as_str(), &format!("<{what}>"))
            })
    }

    /// Fail, naming each leak with its line (secrets masked), if `log` holds any secret; and
    /// if it holds an ANSI escape (stderr was a file, not a terminal).
    fn assert_clean(&self, name: &str, log: &str) {
        let mut leaks = Vec::new();
        for line in log.lines() {
            for (what, value) in &self.known {
                if line.contains(value.as_str()) {
                    leaks.push(format!("  {what}: {}", self.mask(line)));
                }
            }
        }
        assert!(
            leaks.is_empty(),
            "secrets in the log of {name}:\n{}",
            leaks.join("\n")
        );
        if let Some(line) = log.lines().find(|l| l.contains('\u{1b}')) {
            panic!(
                "an ANSI escape in the log of {name}, whose stderr is a file: {:?}",
                self.mask(line)
            );
        }
    }
}

/// Fail if `log` holds anything shaped like a SAS token or its signature: the
/// `SharedAccessSignature` scheme, a `sig=` field, a module key setting, or a base64 HMAC-SHA256
/// (44 characters, one `=`; or URL-encoded).
fn assert_no_sas(name: &str, log: &str) {
    let shapes = regex::Regex::new(
        r"(?i)SharedAccessSignature|\bsig=|SharedAccessKey=|[A-Za-z0-9+/]{43}=|[A-Za-z0-9%]{43,}%3D",
    )
    .unwrap();
    let found: Vec<String> = log
        .lines()
        .filter(|l| shapes.is_match(l))
        .map(|l| format!("  {}", shapes.replace_all(l, "<masked>")))
        .take(20)
        .collect();
    assert!(
        found.is_empty(),
        "SAS material in the log of {name}:\n{}",
        found.join("\n")
    );
}

/// Write `text` to `path` through a rename, so a watcher never reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A JSON configuration file in `dir`.
fn config_file(dir: &Path, name: &str, config: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    path
}

/// `serve --config <config>` with `RUST_LOG=<rust_log>` ("" leaves the level to the file).
fn serve(config: &Path, rust_log: &str) -> Registry {
    Registry::start_with_env(
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", rust_log)],
    )
}

/// A root node at trace with an `admin` token (its password returned) and `image` pushed as
/// `apps/x:v1`; `setup` may create more tokens in its configuration file first.
fn root_with(dir: &Path, image: &Image, setup: impl FnOnce(&Path)) -> (PathBuf, String, Registry) {
    let config = config_file(dir, "root.json", &json!({"name": "rootnode"}));
    let admin = create_token(
        &config,
        "admin",
        &["--repository", "*", "content/read", "content/write"],
    );
    setup(&config);
    let root = serve(&config, "trace");
    push_image_as(
        &root.url(""),
        Some(&basic("admin", &admin)),
        "apps/x",
        "v1",
        image,
    )
    .unwrap();
    (config, admin, root)
}

/// Whether `base` serves `image` under `apps/x:v1`.
fn has_synced(base: &str, image: &Image) -> bool {
    manifest_digest(base, "apps/x", "v1") == Some(image.digest.clone())
}

#[test]
fn client_passwords_and_bearer_tokens_stay_out_of_a_trace_log() {
    let curl = require("curl");
    let skopeo = require("skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path(), "root.json", &json!({"name": "rootnode"}));
    let reading = ["--repository", "apps/*", "content/read", "metadata/read"];
    let ci = create_token(&config, "ci", &[&reading[..], &["content/write"]].concat());
    let reader = create_token(&config, "reader", &reading);
    let root = serve(&config, "trace");
    let (base, host) = (root.url(""), root.host());
    let mut secrets = Secrets::default();
    secrets.password("ci's password", "ci", &ci);
    secrets.password("reader's password", "reader", &reader);
    secrets.password("a wrong password", "reader", WRONG_PASSWORD);
    let path = "/v2/apps/x/manifests/v1";

    // skopeo pushes and reads as docker does: a 401 with a Bearer challenge, then a JWT from
    // the node's realm for the Basic credentials.
    let image = Image::new("linux/amd64", &[random_bytes(51, 20_000)]);
    skopeo_seed_as(
        tmp.path(),
        &host,
        "apps/x",
        &[("v1", &image)],
        Some(&format!("ci:{ci}")),
    );
    let raw = run(Command::new(&skopeo)
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("reader:{reader}"))
        .arg(format!("docker://{host}/apps/x:v1")));
    assert_eq!(raw.trim_end().as_bytes(), image.bytes.as_slice());

    // curl and reqwest with Basic credentials.
    let curl_as = |credentials: &str| {
        run(Command::new(&curl)
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u"])
            .arg(credentials)
            .args(["-H", &format!("Accept: {OCI_MANIFEST}")])
            .arg(format!("{base}{path}")))
    };
    assert_eq!(curl_as(&format!("reader:{reader}")), "200");
    let answer = common::support::client()
        .get(format!("{base}{path}"))
        .header("Accept", OCI_MANIFEST)
        .basic_auth("reader", Some(&reader))
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);

    // docker's token flow by hand (GET with Basic), and containerd's (POST grant_type=password):
    // the JWTs they issue are secrets as well.
    let scope = "repository:apps/x:pull";
    let jwt = bearer(&base, Some(("reader", &reader)), &[scope]).expect("a bearer token");
    secrets.jwt("the JWT from GET /acr/oauth2/token", &jwt);
    let password_grant = |password: &str| {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "password")
            .append_pair("service", "test")
            .append_pair("scope", scope)
            .append_pair("username", "reader")
            .append_pair("password", password)
            .finish();
        peers::request(
            Method::POST,
            &base,
            "/acr/oauth2/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(form.into_bytes()),
        )
    };
    let granted = password_grant(&reader);
    assert_eq!(granted.status, 200, "{}", granted.text());
    let posted_jwt = granted.json()["access_token"].as_str().unwrap().to_owned();
    secrets.jwt("the JWT from POST /acr/oauth2/token", &posted_jwt);
    for token in [&jwt, &posted_jwt] {
        let r = send_as(
            Method::GET,
            &base,
            path,
            Some(&format!("Bearer {token}")),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Failed logins, by every route: refused, and logged without what was tried.
    let wrong_basic = basic("reader", WRONG_PASSWORD);
    assert_eq!(
        send_as(Method::GET, &base, path, Some(&wrong_basic), None).status,
        401
    );
    assert_eq!(
        bearer(&base, Some(("reader", WRONG_PASSWORD)), &[scope]),
        None
    );
    assert_eq!(password_grant(WRONG_PASSWORD).status, 401);
    assert_eq!(curl_as(&format!("reader:{WRONG_PASSWORD}")), "401");

    let log = root.log_text();
    for line in ["TRACE", "bearer token issued", "request refused"] {
        assert!(
            log.contains(line),
            "no {line:?}: the trace level did not apply"
        );
    }
    secrets.assert_clean("a root node at trace", &log);
}

/// `get-settings <name>` at the root: the sync token's password and the connection string.
fn child_settings(root_config: &Path, root: &Registry, name: &str) -> (String, String) {
    let out = run(Command::new(BIN)
        .args(["get-settings", name, "--config"])
        .arg(root_config)
        .args(["--repository", "apps/*", "--parent-endpoint", &root.host()])
        .args(["--parent-protocol", "http"]));
    let settings: Value = serde_json::from_str(&out).unwrap();
    (
        settings["SYNC_TOKEN_PASSWORD"].as_str().unwrap().to_owned(),
        settings["ACR_REGISTRY_CONNECTION_STRING"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

#[test]
fn a_childs_sync_token_stays_out_of_every_log_even_from_a_broken_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let image = Image::new("linux/amd64", &[random_bytes(52, 30_000)]);
    let (root_config, admin, root) = root_with(tmp.path(), &image, |_| {});
    let mut secrets = Secrets::default();
    secrets.password("admin's password", "admin", &admin);
    let (env_password, connection) = child_settings(&root_config, &root, "factoryb");
    secrets.password("factoryb's sync password", "factoryb", &env_password);
    secrets.add("factoryb's connection string", &connection);
    let (file_password, _) = child_settings(&root_config, &root, "factoryc");
    secrets.password("factoryc's sync password", "factoryc", &file_password);

    // A child from nothing but the connection string, at trace.
    let from_env = Registry::start_with_env(
        &[],
        &[
            ("ACR_REGISTRY_CONNECTION_STRING", &connection),
            ("RUST_LOG", "trace"),
        ],
    );
    assert!(
        wait_until(WAIT, || has_synced(&from_env.url(""), &image)),
        "the child never synced: {}",
        status(&from_env.url(""))
    );

    // A child from a TOML file, at the file's `Debug` level.
    let endpoint = root.url("");
    let toml_with = |token: &str| {
        format!(
            "name = \"factoryc\"\n\n[logging]\nlevel = \"Debug\"\n\n[parent]\nendpoint = \"{endpoint}\"\n\
             {token}\n[parent.sync]\nrepositories = [\"apps/*\"]\n"
        )
    };
    let token_table = |password_line: &str| {
        format!("\n[parent.syncToken]\nname = \"factoryc\"\n{password_line}\n")
    };
    let child_toml = tmp.path().join("child.toml");
    write_atomically(
        &child_toml,
        &toml_with(&token_table(&format!("password = \"{file_password}\""))),
    );
    let from_file = serve(&child_toml, "");
    assert!(
        wait_until(WAIT, || has_synced(&from_file.url(""), &image)),
        "the child never synced: {}",
        status(&from_file.url(""))
    );

    // `sync --once` from the same file at trace, its stderr a pipe.
    let once = Command::new(BIN)
        .args(["sync", "--once", "--config"])
        .arg(&child_toml)
        .arg("--data-dir")
        .arg(tmp.path().join("once"))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let once_log = String::from_utf8_lossy(&once.stderr).into_owned();
    assert!(once.status.success(), "sync --once failed:\n{once_log}");

    // The file broken on its password line, three ways: each refused, logged, and the last
    // good configuration kept.
    let broken = [
        // An unterminated string: toml's own message would quote the line.
        toml_with(&token_table(&format!("password = \"{file_password}"))),
        // The password as the token itself: serde's message would quote the value.
        toml_with(&format!("syncToken = \"{file_password}\"\n")),
        // The same in JSON.
        json!({"parent": {"endpoint": endpoint, "syncToken": file_password}}).to_string(),
    ];
    let refusals = || {
        from_file
            .log_text()
            .matches("configuration file changed but is not valid")
            .count()
    };
    for (n, text) in broken.iter().enumerate() {
        write_atomically(&child_toml, text);
        assert!(
            wait_until(WAIT, || refusals() == n + 1),
            "broken file {n} not refused:\n{}",
            secrets.mask(&from_file.log_text())
        );
    }
    let file_log = from_file.log_text();
    assert!(
        file_log.contains("line 11, column ")
            && file_log.contains("key `parent.syncToken.password`"),
        "the refusal names the line, column and key:\n{}",
        secrets.mask(&file_log)
    );
    assert!(has_synced(&from_file.url(""), &image));

    // A wrong sync password: both sides log the refusal, neither what was tried.
    secrets.password("a wrong sync password", "factoryb", WRONG_PASSWORD);
    let wrong = Registry::start_with_env(
        &[],
        &[
            (
                "ACR_REGISTRY_CONNECTION_STRING",
                &connection.replace(&env_password, WRONG_PASSWORD),
            ),
            ("RUST_LOG", "trace"),
        ],
    );
    assert!(
        wait_until(WAIT, || wrong.log_text().contains("activation")),
        "the child with a wrong password never tried to activate"
    );
    let wrong_log = wrong.log_text();
    drop(wrong);

    for line in ["TRACE", "activated at the parent"] {
        assert!(from_env.log_text().contains(line), "no {line:?}");
    }
    assert!(file_log.contains("DEBUG") && !file_log.contains("TRACE"));
    secrets.assert_clean("the root at trace", &root.log_text());
    secrets.assert_clean(
        "the child started from the environment",
        &from_env.log_text(),
    );
    secrets.assert_clean("the child started from a TOML file", &file_log);
    secrets.assert_clean("sync --once", &once_log);
    secrets.assert_clean("the child with a wrong password", &wrong_log);
}

/// A module process with `env` (what the IoT Edge runtime gives it), logging at trace.
fn start_module(env: Vec<(String, String)>) -> Registry {
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("RUST_LOG", "trace"));
    Registry::start_with_env(&[], &env)
}

#[test]
fn an_edge_modules_sas_tokens_keys_and_sync_token_stay_out_of_its_trace_log() {
    let tmp = tempfile::tempdir().unwrap();
    let image = Image::new("linux/amd64", &[random_bytes(53, 40_000)]);
    let mut sync_password = String::new();
    let (_, _, root) = root_with(tmp.path(), &image, |config| {
        sync_password = create_sync_token(config, "edgenode", "apps/*");
    });
    let sync_token = json!({"name": "edgenode", "password": sync_password});
    let standin = EdgeStandin::start(EdgeOptions {
        desired: Some(json!({
            "name": "edgenode",
            "parent": {"endpoint": root.url(""), "syncToken": sync_token,
                       "sync": {"repositories": ["apps/*"]}},
        })),
        ..EdgeOptions::default()
    });
    let mut secrets = Secrets::default();
    secrets.password("the module's sync password", "edgenode", &sync_password);
    secrets.add("the module key", &STANDARD.encode(standin.module_key()));

    // The runtime's way: SAS tokens signed by the workload API.
    let mut module = start_module(standin.edge_env());
    standin.wait_for_reported(WAIT, |r| {
        r["activation"]["status"] == "Active"
            && r["sync"]["state"] == "Succeeded"
            && r["connectionState"] == "Online"
    });
    assert!(has_synced(&module.url(""), &image));
    standin.wait_for_module_connection(WAIT);
    let signed = standin.workload_counts();
    assert!(signed.to_string().contains("sign"), "{signed}");

    assert_eq!(module.terminate().code(), Some(0), "a clean stop");
    let first_log = module.log_text();
    // The MQTT client's own logging (the `log` crate) is in there too, at its most verbose.
    for line in ["TRACE", "connected to edgeHub", "rumqttc"] {
        assert!(first_log.contains(line), "no {line:?} in the module's log");
    }
    secrets.assert_clean("the module (workload API)", &first_log);
    assert_no_sas("the module (workload API)", &first_log);

    // The development fallback: a connection string holding the module key, signed here.
    let fallback = standin.fallback_env();
    let (_, connection) = fallback
        .iter()
        .find(|(k, _)| k == "EdgeHubConnectionString")
        .expect("the stand-in gives a connection string");
    secrets.add("EdgeHubConnectionString", connection);
    let connected_before = standin.module_connections().len();
    let second = start_module(fallback.clone());
    assert!(
        wait_until(WAIT, || standin.module_connections().len()
            > connected_before),
        "the fallback module never connected"
    );
    secrets.assert_clean("the module (connection string)", &second.log_text());
    assert_no_sas("the module (connection string)", &second.log_text());
    secrets.assert_clean("the root", &root.log_text());

    // A twin patch that puts the password where an object belongs: refused, and the refusal
    // (logged, and reported to the twin) does not quote it.
    standin.patch_desired(json!({"parent": {"syncToken": sync_password}}));
    let refused = standin.wait_for_reported(WAIT, |r| r["config"]["error"].is_string());
    secrets.assert_clean(
        "the refusal reported to the twin",
        &refused["config"]["error"].to_string(),
    );
    secrets.assert_clean("the module refusing a twin patch", &second.log_text());
}

/// Depends on the sync engine logging a pass that fetched nothing at debug (src/sync/engine).
#[test]
fn an_idle_childs_sync_passes_log_at_debug_not_info() {
    let tmp = tempfile::tempdir().unwrap();
    // A plain OCI parent: the child polls it with a full pass every few seconds.
    let parent = Distribution::start();
    let image = Image::new("linux/amd64", &[random_bytes(54, 10_000)]);
    skopeo_seed(tmp.path(), &parent.host(), "apps/x", &[("v1", &image)]);
    let config = config_file(
        tmp.path(),
        "child.json",
        &json!({
            "parent": {"endpoint": parent.url(), "sync": {"repositories": ["apps/x"]}},
            "logging": {"level": "Information"}
        }),
    );
    let child = serve(&config, "");
    let base = child.url("");
    assert!(wait_until(WAIT, || has_synced(&base, &image)));
    // Two more passes, each a new end time in the status; neither finds anything to fetch.
    let mut ends = BTreeSet::new();
    assert!(
        wait_until(WAIT, || {
            if let Some(end) = status(&base)["sync"]["lastSuccessfulSyncEndTime"].as_str() {
                ends.insert(end.to_owned());
            }
            ends.len() >= 3
        }),
        "fewer than three passes: {}",
        status(&base)
    );
    let log = child.log_text();
    let finished: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sync pass finished"))
        .collect();
    assert_eq!(
        finished.len(),
        1,
        "only the pass that fetched the image logs at info: {finished:#?}"
    );
    assert!(finished[0].contains("manifests=1"), "{}", finished[0]);
    assert!(!log.contains("DEBUG"), "the Information level applies");
    Secrets::default().assert_clean("the idle child", &log);
}

/// What `serve` writes to a terminal (through `script`, which gives it one) until it listens.
fn serve_on_a_terminal(no_color: Option<&str>) -> String {
    let script = require("script");
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("terminal.out");
    let pid_file = tmp.path().join("serve.pid");
    // The shell writes its pid, then becomes the server: the pid is the server's.
    let command = format!(
        "echo $$ > {}; exec {BIN} serve --listen 127.0.0.1:{} --data-dir {}",
        pid_file.display(),
        common::free_port(),
        tmp.path().join("data").display()
    );
    let mut cmd = Command::new(script);
    cmd.args(["--quiet", "--command", &command, "/dev/null"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::null());
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let mut child = cmd.spawn().unwrap();
    let text = || std::fs::read_to_string(&output).unwrap_or_default();
    let listening = wait_until(Duration::from_secs(30), || {
        text().contains("registry listening")
    });
    // Stop the server itself: the hangup a killed `script` leaves behind does not reach a
    // server whose SIGHUP is ignored (a test run under `nohup`), which would then outlive the
    // test.
    let server: Option<libc::pid_t> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|pid| pid.trim().parse().ok());
    if let Some(pid) = server {
        // SAFETY: kill(2) with a pid and a signal number touches no memory.
        let alive = |signal| unsafe { libc::kill(pid, signal) } == 0;
        alive(libc::SIGTERM);
        if !wait_until(Duration::from_secs(10), || !alive(0)) {
            alive(libc::SIGKILL);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listening, "serve never listened:\n{}", text());
    assert!(server.is_some(), "no pid in {}", pid_file.display());
    text()
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    assert!(
        serve_on_a_terminal(None).contains('\u{1b}'),
        "a terminal gets colour"
    );
    assert!(
        !serve_on_a_terminal(Some("1")).contains('\u{1b}'),
        "NO_COLOR=1 turns colour off"
    );
    // An empty NO_COLOR does not count (https://no-color.org).
    assert!(serve_on_a_terminal(Some("")).contains('\u{1b}'));
}
