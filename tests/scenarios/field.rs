//! The field as the scenarios build it: three Docker networks for the layers (`cloud`, `it`,
//! `ot`), the root on `cloud`, the top node on `it` + `cloud`, the lower node on `ot` + `it` as
//! an IoT Edge module under the stand-in (its parent given as `$IOTEDGE_PARENTHOSTNAME`, the way
//! a nested IoT Edge device gives it), and a probe container on `ot` for what a client there can
//! and cannot reach. Every node is the module's own amd64 image; every node requires tokens
//! (made with the real `connected-registry token` command), and the test process reaches each
//! node only through a port published on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::credentials::{create_read_write_sync_token, create_sync_token, create_token};
use crate::common::edge::{EdgeOptions, EdgeStandin};
use crate::common::images::{
    docker, ensure_image, run_bounded, unique_name, Arch, Container, ContainerSpec, Network,
    NetworkMode, Volume,
};
use crate::common::peers::tail;
use crate::common::{free_port, run};
pub use crate::scenarios::endpoint::{http, Endpoint};

/// Where the runtime mounts a module's workload socket.
const WORKLOAD_IN_CONTAINER: &str = "/var/run/iotedge/workload.sock";
/// The name the lower node reaches edgeHub by (the host, where the stand-in's mosquitto runs).
const EDGEHUB_HOST: &str = "edgehub.field";
/// Where a node container reads its configuration file.
const CONFIG_DIR_IN_CONTAINER: &str = "/etc/connected-registry";
/// How long a node gets to answer after its container starts.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub const ROOT: &str = "rootnode";
pub const TOP: &str = "topnode";
pub const LOWER: &str = "lowernode";

/// The three layers' networks.
pub struct Layers {
    pub cloud: Network,
    pub it: Network,
    pub ot: Network,
}

impl Layers {
    pub fn create() -> Layers {
        Layers {
            cloud: Network::create("field-cloud"),
            it: Network::create("field-it"),
            ot: Network::create("field-ot"),
        }
    }
}

/// A node in a container: its configuration directory (mounted, so a rewrite applies live), its
/// data volume, and the port published for the test process.
pub struct NodeContainer {
    pub container: Container,
    pub config_dir: tempfile::TempDir,
    pub admin: Endpoint,
}

impl NodeContainer {
    /// Start `spec` (which publishes its 8080 on `port`), reached as `admin` with `password`.
    fn start(
        spec: &ContainerSpec,
        config_dir: tempfile::TempDir,
        port: u16,
        password: String,
    ) -> Self {
        NodeContainer {
            container: spec.start(),
            config_dir,
            admin: Endpoint {
                base: format!("http://127.0.0.1:{port}"),
                host: format!("127.0.0.1:{port}"),
                user: "admin".into(),
                password,
            },
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_dir.path().join("config.json")
    }

    pub fn logs(&self) -> String {
        self.container.logs()
    }

    /// `docker kill` (SIGKILL): no clean shutdown.
    pub fn kill(&self) {
        run(Command::new(docker()).args(["kill", "--signal", "KILL", &self.container.name]));
    }

    /// Start the killed or stopped container again (same volume, same configuration).
    pub fn restart(&self) {
        run(Command::new(docker()).args(["start", &self.container.name]));
        self.wait_ready();
    }

    /// Wait for `/readyz`, not `/healthz`: a module serves before its twin arrives and
    /// refuses every credential until then, so "alive" is not yet "lets the admin in" (a
    /// status read right after `/healthz` once met 401 in CI).
    pub fn wait_ready(&self) {
        self.container.wait_http(
            &format!("{}/readyz", self.admin.base),
            &[200],
            START_TIMEOUT,
        );
    }

    /// Rewrite the configuration file (applied live by the node).
    pub fn rewrite_config(&self, config: &Value) {
        write_config(&self.config_path(), config);
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.config_path()).unwrap()).unwrap()
    }

    /// Connect the container to another network (under `alias`).
    pub fn connect(&self, network: &Network, alias: &str) {
        run(Command::new(docker()).args([
            "network",
            "connect",
            "--alias",
            alias,
            &network.name,
            &self.container.name,
        ]));
    }

    /// Cut the container off `network`.
    pub fn disconnect(&self, network: &Network) {
        run(Command::new(docker()).args([
            "network",
            "disconnect",
            "--force",
            &network.name,
            &self.container.name,
        ]));
    }
}

/// Write a configuration file atomically, readable by the image's user.
pub fn write_config(path: &Path, config: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    set_mode(&tmp, 0o644);
    std::fs::rename(&tmp, path).unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A configuration directory the container's user can read, with `config` in it, into which
/// `tokens` creates tokens with the real CLI.
fn config_dir(config: &Value, tokens: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let path = dir.path().join("config.json");
    write_config(&path, config);
    tokens(&path);
    set_mode(&path, 0o644);
    dir
}

/// The password of an admin token (everything, on every repository) created into `config`.
fn admin_token(config: &Path) -> String {
    create_token(
        config,
        "admin",
        &[
            "--gateway",
            "*",
            "config/read",
            "config/write",
            "message/read",
            "--repository",
            "*",
            "content/read",
            "content/write",
            "content/delete",
            "metadata/read",
        ],
    )
}

/// A plain node container (the root or the top) on `network` under `alias`, serving `config`;
/// `tokens` adds tokens to the file before it starts (an admin token is always made).
pub fn start_node(
    config: Value,
    network: &Network,
    alias: &str,
    data: &Volume,
    tokens: impl FnOnce(&Path),
) -> NodeContainer {
    let mut admin_password = String::new();
    let dir = config_dir(&config, |path| {
        admin_password = admin_token(path);
        tokens(path);
    });
    let port = free_port();
    let spec = ContainerSpec::for_arch(Arch::Amd64)
        .name(&unique_name(&format!("field-{alias}")))
        .network(NetworkMode::Named(network.name.clone()))
        .alias(alias)
        .publish(port, 8080)
        .mount(&data.name, "/var/acr/data")
        .mount_ro(dir.path().to_str().unwrap(), CONFIG_DIR_IN_CONTAINER)
        .env("RUST_LOG", "info")
        .args(&[
            "serve",
            "--listen",
            "0.0.0.0:8080",
            "--config",
            &format!("{CONFIG_DIR_IN_CONTAINER}/config.json"),
        ]);
    let node = NodeContainer::start(&spec, dir, port, admin_password);
    node.wait_ready();
    node
}

/// What the lower node is told by its twin besides its name and parent.
pub struct LowerOptions {
    pub mode: &'static str,
    pub sync: Value,
    /// Merged into the desired properties (e.g. `storage`, `clientTokens`).
    pub extra: Value,
    /// The data volume (e.g. a small tmpfs); a fresh named volume by default.
    pub data: Option<Volume>,
    /// Client tokens besides `line1` and `admin`.
    pub client_tokens: Vec<Value>,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            mode: "ReadOnly",
            sync: json!({"repositories": ["apps/*"]}),
            extra: json!({}),
            data: None,
            client_tokens: vec![],
        }
    }
}

/// The lower node: a module container under the IoT Edge stand-in.
pub struct Lower {
    pub node: NodeContainer,
    pub standin: EdgeStandin,
    pub data: Volume,
    pub sync_password: String,
}

/// The whole field: root → top (ReadWrite) → lower (a module), and the layers' networks.
pub struct Field {
    pub lower: Lower,
    pub top: NodeContainer,
    pub root: NodeContainer,
    pub client_password: String,
    _volumes: Vec<Volume>,
    pub layers: Layers,
    pub started_in: Duration,
}

impl Field {
    /// Build the field. The top syncs `apps/*` from the root and pushes what is pushed at it;
    /// the lower syncs what `lower` says from the top. A client token `line1` (read on
    /// `apps/*`) exists at the lower node.
    pub fn start(lower: LowerOptions) -> Field {
        let started = Instant::now();
        ensure_image(Arch::Amd64);
        let layers = Layers::create();
        let (root_data, top_data) = (Volume::create("field-root"), Volume::create("field-top"));

        let mut top_sync = String::new();
        let root = start_node(
            json!({"name": ROOT}),
            &layers.cloud,
            "root",
            &root_data,
            |p| {
                top_sync = create_read_write_sync_token(p, TOP, "apps/*");
            },
        );

        let mut lower_sync = String::new();
        let top_config = json!({
            "name": TOP, "mode": "ReadWrite",
            "parent": {
                "endpoint": "http://root:8080",
                "syncToken": {"name": TOP, "password": top_sync},
                "sync": {"repositories": ["apps/*"]}
            }
        });
        let lower_mode = lower.mode;
        let top = start_node(top_config, &layers.it, "top", &top_data, |p| {
            lower_sync = if lower_mode == "ReadWrite" {
                create_read_write_sync_token(p, LOWER, "apps/*")
            } else {
                create_sync_token(p, LOWER, "apps/*")
            };
        });
        top.connect(&layers.cloud, "top");

        let passwords = Passwords {
            client: format!("line-{}", unique_name("pw")),
            admin: format!("admin-{}", unique_name("pw")),
        };
        // A node with a sync window talks to its parent only once the window opens.
        let lower_waits = lower.sync.get("schedule").is_none();
        let lower = start_lower(&layers, lower, &lower_sync, &passwords);
        let client_password = passwords.client;
        // Ready means activated at the parent and through a first sync pass (the networks were
        // joined after the containers started, so a first attempt may have failed).
        let mut ready: Vec<&NodeContainer> = vec![&top];
        if lower_waits {
            ready.push(&lower.node);
        }
        for node in ready {
            let mut last = Value::Null;
            let ok = crate::common::peers::wait_until(START_TIMEOUT, || {
                last = node.admin.status();
                last["activation"]["status"] == "Active" && last["sync"]["state"] == "Succeeded"
            });
            assert!(
                ok,
                "{} did not activate and sync: {last:#}\n{}",
                node.container.name,
                node.logs()
            );
        }
        Field {
            lower,
            top,
            root,
            client_password,
            _volumes: vec![root_data, top_data],
            layers,
            started_in: started.elapsed(),
        }
    }

    /// The lower node as the client `line1` reaches it.
    pub fn lower_client(&self) -> Endpoint {
        Endpoint {
            user: "line1".into(),
            password: self.client_password.clone(),
            ..self.lower.node.admin.clone()
        }
    }

    /// Everything each node logged, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "--- root\n{}\n--- top\n{}\n--- lower\n{}",
            tail(&self.root.logs(), 40),
            tail(&self.top.logs(), 60),
            tail(&self.lower.node.logs(), 60)
        )
    }
}

/// The desired properties the lower node's twin starts with.
pub fn lower_desired(opts: &LowerOptions, sync_password: &str, passwords: &Passwords) -> Value {
    let hash = connected_registry::auth::password::hash(&passwords.client).unwrap();
    let admin_hash = connected_registry::auth::password::hash(&passwords.admin).unwrap();
    let mut desired = json!({
        "name": LOWER,
        "mode": opts.mode,
        "parent": {
            "endpoint": "http://$IOTEDGE_PARENTHOSTNAME:8080",
            "syncToken": {"name": LOWER, "password": sync_password},
            "sync": opts.sync,
        },
        "clientTokens": [
            {"name": "line1", "passwordHash": hash,
             "actions": ["repositories/apps/*/content/read", "repositories/apps/*/metadata/read"]},
            {"name": "admin", "passwordHash": admin_hash,
             "actions": ["gateway/*/config/read", "gateway/*/config/write",
                         "repositories/*/content/read", "repositories/*/content/write",
                         "repositories/*/content/delete", "repositories/*/metadata/read"]}
        ]
    });
    if let Some(tokens) = desired["clientTokens"].as_array_mut() {
        tokens.extend(opts.client_tokens.iter().cloned());
    }
    merge(&mut desired, &opts.extra);
    desired
}

/// A JSON merge patch (RFC 7396), as IoT Hub applies desired patches.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The passwords of the lower node's client tokens: `line1` and `admin`.
pub struct Passwords {
    pub client: String,
    pub admin: String,
}

fn start_lower(
    layers: &Layers,
    opts: LowerOptions,
    sync_password: &str,
    passwords: &Passwords,
) -> Lower {
    let desired = lower_desired(&opts, sync_password, passwords);
    let standin = EdgeStandin::start(EdgeOptions {
        device_id: "lowerdevice".into(),
        gateway_hostname: EDGEHUB_HOST.into(),
        desired: Some(desired),
        ..EdgeOptions::default()
    });
    let data = opts.data.unwrap_or_else(|| Volume::create("field-lower"));
    let port = free_port();
    // Configured by its twin only: the directory stays empty.
    let dir = config_dir(&json!({}), |_| {});
    let mut spec = ContainerSpec::for_arch(Arch::Amd64)
        .name(&unique_name("field-lower"))
        .network(NetworkMode::Named(layers.ot.name.clone()))
        .alias("lower")
        .publish(port, 8080)
        .mount(
            standin.workload_socket().to_str().unwrap(),
            WORKLOAD_IN_CONTAINER,
        )
        .mount(&data.name, "/var/acr/data")
        .env("IOTEDGE_PARENTHOSTNAME", "top")
        .env("RUST_LOG", "info")
        .extra(&["--add-host", &format!("{EDGEHUB_HOST}:host-gateway")]);
    for (key, value) in standin.container_env(WORKLOAD_IN_CONTAINER) {
        spec = spec.env(&key, &value);
    }
    let node = NodeContainer::start(&spec, dir, port, passwords.admin.clone());
    node.connect(&layers.it, "lower");
    node.wait_ready();
    Lower {
        node,
        standin,
        data,
        sync_password: sync_password.to_owned(),
    }
}

/// A probe container on `network`: a static busybox (built once from the host's
/// busybox-static) that runs `args` and returns its exit code and output.
pub fn probe(network: &Network, args: &[&str]) -> (i32, String) {
    let image = probe_image();
    let out = run_bounded(
        Command::new(docker())
            .args(["run", "--rm", "--network", &network.name, &image])
            .args(args),
        Duration::from_secs(60),
    );
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `field-probe:1`, a busybox image loaded into the engine (built once per machine).
fn probe_image() -> String {
    const TAG: &str = "field-probe:1";
    if crate::common::images::image_exists(TAG) {
        return TAG.into();
    }
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path();
    std::fs::write(ctx.join("busybox"), crate::common::clients::busybox_bytes()).unwrap();
    set_mode(&ctx.join("busybox"), 0o755);
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    )
    .unwrap();
    let out = run_bounded(
        Command::new(docker())
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "--quiet", "-t", TAG])
            .arg(ctx),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "building {TAG}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TAG.into()
}
