//! Credentials as users make them: tokens created with the real `connected-registry token`
//! command into a node's configuration file, Basic headers, and bearer tokens fetched from the
//! node's own realm the way docker does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;

use super::peers::{request, Http};
use super::{Registry, BIN};

/// `connected-registry token <args…> --config <file>`, whatever its outcome.
pub fn token_command(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run connected-registry token")
}

/// Create a token (`create --name NAME <args…>`) and return the password it printed.
pub fn create_token(config: &Path, name: &str, args: &[&str]) -> String {
    let mut all = vec!["create", "--name", name];
    all.extend_from_slice(args);
    let out = token_command(config, &all);
    assert!(
        out.status.success(),
        "token create {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(password.len() >= 32, "a strong password: {password:?}");
    password
}

/// Create the sync token of a ReadOnly child `child` (its gateway: `config/read`,
/// `config/write`, `message/read`; `repositories`: `content/read`, `metadata/read`) and return
/// its password.
pub fn create_sync_token(config: &Path, child: &str, repositories: &str) -> String {
    sync_token(
        config,
        child,
        repositories,
        &["content/read", "metadata/read"],
    )
}

/// Create the sync token of a ReadWrite child `child`: a ReadOnly child's actions, and on
/// `repositories` also `content/write` and `content/delete` (it pushes upstream); returns its
/// password.
pub fn create_read_write_sync_token(config: &Path, child: &str, repositories: &str) -> String {
    let actions = [
        "content/read",
        "content/write",
        "content/delete",
        "metadata/read",
    ];
    sync_token(config, child, repositories, &actions)
}

fn sync_token(config: &Path, child: &str, repositories: &str, actions: &[&str]) -> String {
    let mut args = vec![
        "--gateway",
        child,
        "config/read",
        "config/write",
        "message/read",
    ];
    args.extend(["--repository", repositories]);
    args.extend_from_slice(actions);
    create_token(config, child, &args)
}

/// The value of a Basic `Authorization` header.
pub fn basic(name: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
    format!("Basic {encoded}")
}

/// A bearer token from the node's realm for `scopes`, as docker fetches one (`None` if refused).
pub fn bearer(base: &str, credentials: Option<(&str, &str)>, scopes: &[&str]) -> Option<String> {
    let query: String = scopes
        .iter()
        .map(|s| format!("&scope={}", s.replace(' ', "%20")))
        .collect();
    let path = format!("/acr/oauth2/token?service=test{query}");
    let auth = credentials.map(|(n, p)| basic(n, p));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let r = request(reqwest::Method::GET, base, &path, &headers, None);
    (r.status == 200).then(|| r.json()["token"].as_str().unwrap().to_owned())
}

/// Send with an `Authorization` header value.
pub fn send_as(
    method: reqwest::Method,
    base: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<Vec<u8>>,
) -> Http {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(method, base, path, &headers, body)
}

/// A node serving a configuration file that tokens are created into.
pub struct SecuredNode {
    pub reg: Registry,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl SecuredNode {
    /// Write `config` (JSON), let `setup` create tokens into it, then start the node on it.
    pub fn start(config: serde_json::Value, setup: impl FnOnce(&Path)) -> SecuredNode {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        setup(&path);
        let reg = Registry::start_with(&["--config", path.to_str().unwrap()]);
        SecuredNode {
            reg,
            config: path,
            _dir: dir,
        }
    }

    pub fn base(&self) -> String {
        self.reg.url("")
    }
}

/// Push `image` under `reference` with `authorization`: each blob in one monolithic `POST`,
/// then the manifest. `Err` carries the first response that was not a success.
#[allow(clippy::result_large_err)] // a test helper: the refusal is what the caller inspects
pub fn push_image_as(
    base: &str,
    authorization: Option<&str>,
    repo: &str,
    reference: &str,
    image: &super::peers::Image,
) -> Result<Http, Http> {
    for blob in &image.blobs {
        let r = send_as(
            reqwest::Method::POST,
            base,
            &format!("/v2/{repo}/blobs/uploads/?digest={}", blob.digest),
            authorization,
            Some(blob.bytes.clone()),
        );
        if r.status != 201 {
            return Err(r);
        }
    }
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("Authorization", a)])
        .into_iter()
        .flatten()
        .chain([("Content-Type", image.media_type.as_str())])
        .collect();
    let r = request(
        reqwest::Method::PUT,
        base,
        &format!("/v2/{repo}/manifests/{reference}"),
        &headers,
        Some(image.bytes.clone()),
    );
    if r.status == 201 {
        Ok(r)
    } else {
        Err(r)
    }
}

/// The first OCI error code of a response body.
pub fn error_code(r: &Http) -> String {
    r.json()["errors"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// The first OCI error message of a response body.
pub fn error_message(r: &Http) -> String {
    r.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}
