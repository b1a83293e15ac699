//! `connected-registry` nodes as children or roots: the launcher that writes `child.json`, the
//! status and CLI helpers, and the waits with what to print when a node does not get there.

use super::*;

/// A `connected-registry serve --config child.json` node (or a root, with no parent).
pub struct Node {
    pub reg: Registry,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.reg
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Registry {
        &mut self.reg
    }
}

/// `{"parent": {"endpoint": endpoint, "sync": sync}}`.
pub fn child_config(endpoint: &str, sync: Value) -> Value {
    json!({"parent": {"endpoint": endpoint, "sync": sync}})
}

impl Node {
    /// A child of `endpoint` syncing per `sync` (the `parent.sync` object).
    pub fn child(endpoint: &str, sync: Value) -> Node {
        Node::with_config(child_config(endpoint, sync))
    }

    /// A node started with `config` as its `--config` file.
    pub fn with_config(config: Value) -> Node {
        Node::with_config_in(config, None)
    }

    /// [`Node::with_config`] with its data in `data_dir` (a small filesystem, a fixture).
    /// Polling a parent with no feed backs off to at most 5 s here unless the test says
    /// otherwise, so a change is noticed within a test's patience.
    pub fn with_config_in(mut config: Value, data_dir: Option<PathBuf>) -> Node {
        if let Some(sync) = config
            .pointer_mut("/parent/sync")
            .and_then(Value::as_object_mut)
        {
            sync.entry("maxPollInterval").or_insert(json!("PT5S"));
        }
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("child.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let reg = Registry::start_in(data_dir, &["--config", config_path.to_str().unwrap()], &[]);
        Node {
            reg,
            config_path,
            _dir: dir,
        }
    }

    /// Replace the config file (takes effect at the next restart).
    pub fn rewrite_config(&self, config: Value) {
        std::fs::write(
            &self.config_path,
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    /// `http://127.0.0.1:<port>`
    pub fn base(&self) -> String {
        self.reg.url("")
    }
}

/// `GET /acr/connected-registry/v1/status` of the node at `base`.
pub fn status(base: &str) -> Value {
    let r = get(base, "/acr/connected-registry/v1/status");
    assert_eq!(r.status, 200, "status: {}", r.text());
    r.json()
}

/// The codes in `statusDetails`.
pub fn detail_codes(status: &Value) -> Vec<String> {
    status["statusDetails"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Run `connected-registry <args>` to completion (killed after `timeout`), its output read as
/// it runs (a command printing more than a pipe holds must not block and look hung).
pub fn run_cli(args: &[&str], timeout: Duration) -> Output {
    crate::common::images::run_bounded(Command::new(BIN).args(args).env("NO_COLOR", "1"), timeout)
}

/// Strip ANSI escape sequences (colours, cursor moves of a progress bar).
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

// ---- waiting for a node, and what to print when it does not get there ------------------------

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The node's status document as text, or why it could not be read (never panics: used in
/// failure messages).
pub fn status_text(node: &Registry) -> String {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(node.url("/acr/connected-registry/v1/status"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_else(|e| format!("(status unavailable: {e})"))
}

/// The node's log without the per-request lines of the API (the tests poll a lot).
pub fn sync_log(node: &Registry) -> String {
    plain(&node.log_text())
        .lines()
        .filter(|l| !l.contains("connected_registry::api:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What to print when a test fails at a node: its status and the end of its log.
pub fn diag(node: &Registry) -> String {
    format!(
        "\n--- node status ---\n{}\n--- node log (tail) ---\n{}",
        status_text(node),
        tail(&sync_log(node), 60)
    )
}

/// Wait until `node` serves `repo:reference` (a tag, or a digest) with `digest`; returns how
/// long it took. Fails the test with the node's status and log when it does not within
/// `timeout`.
pub fn wait_for_tag(
    node: &Registry,
    repo: &str,
    reference: &str,
    digest: &str,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let base = node.url("");
    let ok = wait_until(timeout, || {
        manifest_digest(&base, repo, reference).as_deref() == Some(digest)
    });
    assert!(
        ok,
        "{repo}:{reference} did not reach {digest} at {base} within {timeout:?}{}",
        diag(node)
    );
    start.elapsed()
}

/// Wait until `GET /v2/<repo>/manifests/<reference>` is a 404 at `node`.
pub fn wait_for_404(node: &Registry, repo: &str, reference: &str, timeout: Duration) {
    let base = node.url("");
    let ok = wait_until(timeout, || {
        get(&base, &format!("/v2/{repo}/manifests/{reference}")).status == 404
    });
    assert!(
        ok,
        "{repo}:{reference} is still served at {base} after {timeout:?}{}",
        diag(node)
    );
}
