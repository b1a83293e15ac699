//! The Kubernetes deployment (`deploy/kubernetes/`) is part of the product: a resource the API
//! server refuses, or a ConfigMap the node refuses, is a deployment that never starts. These
//! tests render the kustomize base and both overlays with the real `kubectl kustomize`, check
//! what the StatefulSet, Service, ConfigMap and Secret must say, validate every resource with
//! `kubernetes-validate` in strict mode (and show that a broken resource is refused, so the
//! check is no rubber stamp), then start the real binary the way the pod would: with the
//! rendered container's arguments, environment and configuration file — alone, and a root and
//! a child paired as the overlays pair them.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::credentials::{basic, push_image_as, send_as};
use common::peers::{random_bytes, wait_until, Image};
use connected_registry::config::bootstrap::{ConnectionString, CONNECTION_STRING};
use connected_registry::config::Config;
use serde_json::{json, Value};

const VARIANTS: [&str; 3] = ["base", "overlays/root", "overlays/child"];
/// The Kubernetes release the resources are validated against (kubectl here is 1.32).
const KUBERNETES_VERSION: &str = "1.32.0";
/// The example client tokens of the overlays' config.json, with the passwords README.md
/// documents for them.
const ROOT_CLIENT: (&str, &str) = ("ci-push", "0R6pwNK2kb1LEl3wU1wZkf9B75Y66euauOs8bhGT");
const CHILD_CLIENT: (&str, &str) = ("line1", "wUjhO5oyBeGGNXKjL3cPlpb30i2EkeQZGqFXmqjU");
const DATA_VOLUME: &str = "/var/acr/data";
const ARGS: [&str; 5] = [
    "serve",
    "--listen",
    "0.0.0.0:8080",
    "--config",
    "/etc/connected-registry/config.json",
];

fn kubernetes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// `kubectl kustomize` of one variant, as YAML.
fn render_yaml(variant: &str) -> String {
    common::require("kubectl");
    common::run(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(kubernetes_dir().join(variant)),
    )
}

/// Multi-document YAML as a JSON array, converted by PyYAML (no YAML crate in this project).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    common::require("python3");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    const TO_JSON: &str = "import json, sys, yaml\n\
        docs = yaml.safe_load_all(open(sys.argv[1]))\n\
        json.dump([d for d in docs if d is not None], sys.stdout)";
    let json = common::run(
        Command::new("python3")
            .args(["-c", TO_JSON])
            .arg(file.path()),
    );
    serde_json::from_str(&json).unwrap()
}

/// One variant's rendered resources.
struct Rendered {
    variant: &'static str,
    yaml: String,
    docs: Vec<Value>,
}

impl Rendered {
    fn of(variant: &'static str) -> Rendered {
        let yaml = render_yaml(variant);
        let docs = yaml_documents(&yaml);
        Rendered {
            variant,
            yaml,
            docs,
        }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// The one resource of `kind`.
    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "{}: one {kind} expected", self.variant);
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.all(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} named {name:?}", self.variant))
    }

    fn pod(&self) -> &Value {
        &self.one("StatefulSet")["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{}: one container", self.variant);
        &containers[0]
    }

    fn env(&self, name: &str) -> Option<&Value> {
        self.container()["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
    }

    /// The configuration file: `config.json` of the ConfigMap the `config` volume mounts.
    fn config_text(&self) -> String {
        let volume = self.pod()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .expect("a config volume");
        let name = volume["configMap"]["name"].as_str().unwrap();
        let text = &self.named("ConfigMap", name)["data"]["config.json"];
        text.as_str()
            .expect("config.json in the ConfigMap")
            .to_owned()
    }

    fn config(&self) -> Config {
        let text = self.config_text();
        let config: Config = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: config.json is refused: {e}\n{text}", self.variant));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{}: config.json does not validate: {e}", self.variant));
        config
    }

    /// The value a `secretKeyRef` names, decoded from the rendered Secret.
    fn secret_value(&self, reference: &Value) -> String {
        let (name, key) = (
            reference["name"].as_str().unwrap(),
            reference["key"].as_str().unwrap(),
        );
        let encoded = self.named("Secret", name)["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: Secret {name} has no key {key}", self.variant))
            .replace(char::is_whitespace, "");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        String::from_utf8(bytes).unwrap().trim_end().to_owned()
    }

    /// The connection string the container's environment takes from the Secret, if any.
    fn connection_string(&self) -> Option<ConnectionString> {
        let reference = &self.env(CONNECTION_STRING)?["valueFrom"]["secretKeyRef"];
        assert!(reference.is_object(), "{}: not from a Secret", self.variant);
        let text = self.secret_value(reference);
        Some(ConnectionString::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", self.variant)))
    }
}

/// `port` of a probe or a Service, resolved against the container's named ports.
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == *port)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port}"))
}

/// Assert that every key of `expected` (recursively) has its value in `actual`.
fn assert_holds(actual: &Value, expected: &Value, variant: &str) {
    match expected.as_object() {
        Some(fields) => {
            for (key, want) in fields {
                assert_holds(&actual[key], want, &format!("{variant}: {key}"));
            }
        }
        None => assert_eq!(actual, expected, "{variant}"),
    }
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| labels[k] == *v)
}

#[test]
fn every_variant_renders_one_hardened_node_with_probes_storage_and_a_service() {
    for variant in VARIANTS {
        let r = Rendered::of(variant);
        let sts = r.one("StatefulSet");
        let spec = &sts["spec"];
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(spec["replicas"], 1, "{variant}");
        assert!(
            selects(&spec["selector"]["matchLabels"], labels),
            "{variant}"
        );

        let c = r.container();
        assert_eq!(c["image"], "connected-registry:0.1.0-amd64", "{variant}");
        assert_eq!(c["args"], json!(ARGS), "{variant}");
        assert_eq!(container_port(c, &Value::from("http")), 8080, "{variant}");

        // The Service governs the StatefulSet and sends port 8080 to the container's 8080.
        let service = r.one("Service");
        assert_eq!(
            spec["serviceName"], service["metadata"]["name"],
            "{variant}"
        );
        assert!(selects(&service["spec"]["selector"], labels), "{variant}");
        let ports = service["spec"]["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "{variant}");
        assert_eq!(ports[0]["port"], 8080, "{variant}");
        assert_eq!(
            container_port(c, &ports[0]["targetPort"]),
            8080,
            "{variant}"
        );

        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{variant} {probe}");
            assert_eq!(container_port(c, &get["port"]), 8080, "{variant} {probe}");
        }

        let resources = json!({"requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"}});
        assert_holds(&c["resources"], &resources, variant);
        let non_root = json!({"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}});
        assert_holds(&r.pod()["securityContext"], &non_root, variant);
        assert_eq!(r.pod()["securityContext"]["fsGroup"], 1000, "{variant}");
        assert_holds(&c["securityContext"], &non_root, variant);
        let locked = json!({"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}});
        assert_holds(&c["securityContext"], &locked, variant);

        // The data directory is a claim of the StatefulSet's own, where the node looks for it.
        let claims = spec["volumeClaimTemplates"].as_array().unwrap();
        assert_eq!(claims.len(), 1, "{variant}");
        let claim = &claims[0];
        assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert!(claim["spec"]["resources"]["requests"]["storage"].is_string());
        let mounts = c["volumeMounts"].as_array().unwrap();
        let mount = |path: &str| {
            mounts
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap_or_else(|| panic!("{variant}: nothing mounted at {path}"))
        };
        assert_eq!(mount(DATA_VOLUME)["name"], claim["metadata"]["name"]);
        assert_eq!(
            r.env("ACR_REGISTRY_DATA_VOLUME").unwrap()["value"],
            DATA_VOLUME
        );
        // Every mount names a volume or the claim; the configuration is where --config says.
        let volumes = r.pod()["volumes"].as_array().unwrap();
        for m in mounts {
            assert!(
                m["name"] == claim["metadata"]["name"]
                    || volumes.iter().any(|v| v["name"] == m["name"]),
                "{variant}: mount {m} names no volume"
            );
        }
        assert_eq!(mount("/etc/connected-registry")["name"], "config");
        assert_eq!(mount("/etc/connected-registry")["readOnly"], true);
        // The node's own parser (unknown keys refused by name) and validation accept it.
        let config = r.config();
        assert_eq!(config.listen.as_deref(), Some("0.0.0.0:8080"), "{variant}");
        assert!(
            config.parent.is_none(),
            "{variant}: a parent in config.json"
        );
    }
}

#[test]
fn the_child_reads_its_connection_string_from_the_secret_and_the_root_has_none() {
    let base = Rendered::of("base");
    let root = Rendered::of("overlays/root");
    let child = Rendered::of("overlays/child");

    let placeholder = base.connection_string().expect("base: a connection string");
    assert_eq!(placeholder.parent_protocol, "https");

    assert!(root.env(CONNECTION_STRING).is_none(), "root: {}", root.yaml);
    assert!(root.all("Secret").is_empty(), "root: a Secret is left");
    let root_config = root.config();
    assert_eq!(root_config.client_tokens[0].name, ROOT_CLIENT.0);

    // The child names the root's Service as its parent, with a sync token the root accepts.
    let cs = child.connection_string().expect("child: connection string");
    assert_eq!(cs.registry_name, "factorya");
    let root_service = root.one("Service");
    assert_eq!(
        cs.parent_gateway_endpoint,
        format!(
            "{}:{}",
            root_service["metadata"]["name"].as_str().unwrap(),
            root_service["spec"]["ports"][0]["port"]
        )
    );
    assert_eq!(cs.parent_protocol, "http");
    let accepted = root_config
        .sync_tokens
        .iter()
        .find(|t| t.name == cs.sync_token_name)
        .unwrap_or_else(|| panic!("the root has no sync token {:?}", cs.sync_token_name));
    assert!(
        connected_registry::auth::password::verify(
            &accepted.password_hash,
            &cs.sync_token_password
        ),
        "the child's sync token password does not match the root's hash"
    );
    assert_eq!(child.config().client_tokens[0].name, CHILD_CLIENT.0);

    // Both can share a namespace: distinct names, and neither Service selects the other's pod.
    let name = |r: &Rendered| r.one("StatefulSet")["metadata"]["name"].clone();
    assert_ne!(name(&root), name(&child));
    let selected = |service: &Rendered, pod: &Rendered| {
        let labels = &pod.one("StatefulSet")["spec"]["template"]["metadata"]["labels"];
        selects(&service.one("Service")["spec"]["selector"], labels)
    };
    assert!(!selected(&root, &child) && !selected(&child, &root));

    // The documented example passwords are the ones the tests log in with.
    let readme = std::fs::read_to_string(kubernetes_dir().join("README.md")).unwrap();
    for (name, password) in [ROOT_CLIENT, CHILD_CLIENT] {
        let documented = readme.contains(name) && readme.contains(password);
        assert!(documented, "README.md does not give {name}'s password");
    }
}

/// `kubernetes-validate --strict` on a YAML file; (success, output).
fn kubernetes_validate(dir: &Path, name: &str, yaml: &str, strict: bool) -> (bool, String) {
    common::require("kubernetes-validate");
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = Command::new("kubernetes-validate");
    cmd.args(["--kubernetes-version", KUBERNETES_VERSION]);
    if strict {
        cmd.arg("--strict");
    }
    common::attempt(cmd.arg(&path))
}

#[test]
fn kubernetes_validate_accepts_every_rendered_resource_strictly() {
    let dir = tempfile::tempdir().unwrap();
    for variant in VARIANTS {
        let r = Rendered::of(variant);
        let (ok, text) = kubernetes_validate(dir.path(), &variant.replace('/', "-"), &r.yaml, true);
        assert!(ok, "{variant}: kubernetes-validate refused it:\n{text}");
        // Each resource was checked, not skipped.
        assert_eq!(
            text.matches("passed for resource").count(),
            r.docs.len(),
            "{variant}:\n{text}"
        );
        assert!(!text.contains("ERROR"), "{variant}:\n{text}");
    }
}

#[test]
fn kubernetes_validate_refuses_a_broken_resource() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = Rendered::of("overlays/root").yaml;
    let refused = |name: &str, from: &str, to: &str, says: &str| {
        assert!(yaml.contains(from), "{from:?} not in the rendered YAML");
        let broken = yaml.replacen(from, to, 1);
        let (ok, text) = kubernetes_validate(dir.path(), name, &broken, true);
        assert!(!ok, "{name}: the broken resource was accepted:\n{text}");
        assert!(text.contains(says), "{name}: {says:?} not in:\n{text}");
        broken
    };
    // A misspelt field: only strict mode catches it (so the strict flag matters).
    let typo = refused(
        "typo",
        "readOnlyRootFilesystem",
        "readOnlyRootFileSystem",
        "'readOnlyRootFileSystem' was unexpected",
    );
    let (lenient, text) = kubernetes_validate(dir.path(), "typo-lenient", &typo, false);
    assert!(lenient, "without --strict the typo passes:\n{text}");
    refused("type", "replicas: 1", "replicas: one", "spec.replicas");
}

/// The binary started as the pod would start it: the rendered container's arguments and
/// environment (the Secret's value included), on the rendered ConfigMap's config.json — with
/// the address moved to a free loopback port and the data volume to a temporary directory.
struct Pod {
    /// `127.0.0.1:PORT`
    host: String,
    process: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pod {
    fn start(r: &Rendered, connection: impl Fn(ConnectionString) -> ConnectionString) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", common::free_port());
        let data = dir.path().join("data");
        let config_path = dir.path().join("config.json");
        let mut config: Value = serde_json::from_str(&r.config_text()).unwrap();
        config["listen"] = Value::from(listen.clone());
        config["dataDir"] = Value::from(data.to_str().unwrap());
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

        let mut args: Vec<String> = serde_json::from_value(r.container()["args"].clone()).unwrap();
        for i in 1..args.len() {
            match args[i - 1].as_str() {
                "--listen" => args[i] = listen.clone(),
                "--config" => args[i] = config_path.to_str().unwrap().to_owned(),
                _ => {}
            }
        }
        let mut command = Command::new(common::BIN);
        // Only what the pod would have: no RUST_LOG, no stray ACR_* variables.
        command.args(&args).env_clear();
        for var in r.container()["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            let value = if name == "ACR_REGISTRY_DATA_VOLUME" {
                data.to_str().unwrap().to_owned()
            } else if let Some(value) = var["value"].as_str() {
                value.to_owned()
            } else {
                let value = r.secret_value(&var["valueFrom"]["secretKeyRef"]);
                match name {
                    CONNECTION_STRING => {
                        connection(ConnectionString::parse(&value).unwrap()).render()
                    }
                    _ => value,
                }
            };
            command.env(name, value);
        }
        let log = dir.path().join("node.log");
        let process = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn connected-registry");
        let mut pod = Pod {
            host: listen,
            process,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&pod.host).is_err() {
            let exited = pod.process.try_wait().unwrap();
            let (variant, log) = (r.variant, pod.log_text());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{variant}: the node did not start ({exited:?}):\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pod
    }

    fn base(&self) -> String {
        format!("http://{}", self.host)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`, with Basic credentials if given.
    fn get(&self, path: &str, credentials: Option<(&str, &str)>) -> common::peers::Http {
        let auth = credentials.map(|(n, p)| basic(n, p));
        send_as(
            reqwest::Method::GET,
            &self.base(),
            path,
            auth.as_deref(),
            None,
        )
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if !std::thread::panicking() {
            let log = self.log_text();
            assert!(!log.contains("panicked at"), "the node panicked:\n{log}");
        }
    }
}

/// A parent endpoint nothing listens on.
fn unreachable_parent(mut cs: ConnectionString) -> ConnectionString {
    cs.parent_gateway_endpoint = format!("127.0.0.1:{}", common::free_port());
    cs.parent_protocol = "http".to_owned();
    cs
}

#[test]
fn the_binary_starts_on_each_variants_rendered_pod_and_asks_for_credentials() {
    for (variant, client) in [
        ("base", None),
        ("overlays/root", Some(ROOT_CLIENT)),
        ("overlays/child", Some(CHILD_CLIENT)),
    ] {
        let r = Rendered::of(variant);
        let pod = Pod::start(&r, unreachable_parent);
        let anonymous = pod.get("/v2/", None);
        assert_eq!(anonymous.status, 401, "{variant}: {anonymous:?}");
        let challenge = anonymous.header("WWW-Authenticate").unwrap_or_default();
        assert!(challenge.contains("realm="), "{variant}: {challenge:?}");
        let Some(client) = client else { continue };
        // The example token's hash in config.json matches the documented password.
        let v2 = pod.get("/v2/", Some(client));
        assert_eq!(v2.status, 200, "{variant}: {v2:?}");
        let status = pod
            .get("/acr/connected-registry/v1/status", Some(client))
            .json();
        if let Some(cs) = r.connection_string() {
            // The connection string made it a child of the (unreachable) parent, still serving.
            assert_eq!(status["name"], cs.registry_name.as_str(), "{status}");
            let endpoint = status["parent"]["endpoint"].as_str().unwrap_or_default();
            assert!(endpoint.starts_with("http://127.0.0.1:"), "{status}");
            assert_eq!(status["mode"], "ReadOnly", "{status}");
        } else {
            assert_eq!(status["mode"], "ReadWrite", "{variant}: {status}");
        }
    }
}

#[test]
fn the_probe_paths_answer_without_credentials() {
    for variant in ["overlays/root", "overlays/child"] {
        let r = Rendered::of(variant);
        let pod = Pod::start(&r, unreachable_parent);
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let path = r.container()[probe]["httpGet"]["path"].as_str().unwrap();
            // The kubelet sends no credentials; a node whose store is open and whose
            // configuration is valid is alive and ready, parent or not.
            let ok = || pod.get(path, None).status == 200;
            let answered = wait_until(Duration::from_secs(10), ok);
            assert!(answered, "{variant} {probe}: {:?}", pod.get(path, None));
        }
    }
}

#[test]
fn a_child_syncs_from_a_root_as_the_overlays_pair_them() {
    let root = Rendered::of("overlays/root");
    let child = Rendered::of("overlays/child");
    let root_pod = Pod::start(&root, |cs| cs);
    let service = format!(
        "{}:8080",
        root.one("Service")["metadata"]["name"].as_str().unwrap()
    );
    // The child reaches the root where the root's Service would be.
    let child_pod = Pod::start(&child, |mut cs| {
        assert_eq!(cs.parent_gateway_endpoint, service);
        cs.parent_gateway_endpoint = root_pod.host.clone();
        cs
    });

    let image = Image::new("linux/amd64", &[random_bytes(10, 4096)]);
    let pusher = basic(ROOT_CLIENT.0, ROOT_CLIENT.1);
    push_image_as(&root_pod.base(), Some(&pusher), "apps/hello", "v1", &image).unwrap();
    let synced = wait_until(Duration::from_secs(60), || {
        let r = child_pod.get("/v2/apps/hello/manifests/v1", Some(CHILD_CLIENT));
        r.status == 200 && common::sha256(&r.body) == image.digest
    });
    assert!(
        synced,
        "the child never synced from the root:\nchild status: {}\nchild log:\n{}",
        child_pod
            .get("/acr/connected-registry/v1/status", Some(CHILD_CLIENT))
            .text(),
        child_pod.log_text()
    );
    let status = child_pod
        .get("/acr/connected-registry/v1/status", Some(CHILD_CLIENT))
        .json();
    assert_eq!(status["activation"]["status"], "Active", "{status}");
}
