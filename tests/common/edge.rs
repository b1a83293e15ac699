//! Starts the IoT Edge runtime stand-in (`edge-standin`: workload API + mosquitto as edgeHub)
//! for a test and drives its control API: the twin, telemetry, direct methods, the MQTT
//! connections mosquitto saw, refused reported patches, workload API counts, and broker
//! restarts. Its MQTT port (8883 by default) is machine-wide, so stand-ins run one at a time:
//! under a process-wide lock, and under an `flock` on a file named after the port (so separate
//! test binaries, or two `cargo test` runs, wait for each other instead of colliding). A port
//! still busy after that fails the test with a clear message.
//!
//! The stand-in gets `PR_SET_PDEATHSIG`, which fires when the *thread* that started it ends:
//! keep an [`EdgeStandin`] on the test's own thread (it is killed on drop anyway).

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::peers::{poll_every, tail};

pub const STANDIN_BIN: &str = env!("CARGO_BIN_EXE_edge-standin");
/// edgeHub's MQTT port, which the Python SDK always uses.
pub const EDGE_MQTT_PORT: u16 = 8883;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_FREE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test waits for another test binary's stand-in to finish.
const MACHINE_LOCK_TIMEOUT: Duration = Duration::from_secs(900);

static EDGE_LOCK: Mutex<()> = Mutex::new(());

/// How to start a stand-in. `Default` is the stand-in's own defaults.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    pub device_id: String,
    pub module_id: String,
    pub hub_hostname: String,
    pub gateway_hostname: String,
    pub generation_id: String,
    pub mqtt_port: u16,
    /// Seeds the twin's desired properties.
    pub desired: Option<Value>,
    /// Use (and keep) this directory instead of a fresh temporary one, e.g. to restart a
    /// stand-in with the same CA and module key.
    pub dir: Option<PathBuf>,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            device_id: "dev1".into(),
            module_id: "connected-registry".into(),
            hub_hostname: "myhub.azure-devices.net".into(),
            gateway_hostname: "localhost".into(),
            generation_id: "gen1".into(),
            mqtt_port: EDGE_MQTT_PORT,
            desired: None,
            dir: None,
        }
    }
}

/// What a module answered to a direct method.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodReply {
    pub status: u16,
    pub payload: Value,
}

/// A running stand-in. Killed (with its mosquitto) on drop.
pub struct EdgeStandin {
    pub opts: EdgeOptions,
    child: Option<Child>,
    control: String,
    dir: PathBuf,
    log: PathBuf,
    http: reqwest::blocking::Client,
    _tmp: Option<tempfile::TempDir>,
    // Last, so the port is released before the next test may take the locks.
    _machine: MachineLock,
    _guard: MutexGuard<'static, ()>,
}

/// An exclusive `flock` on `$TMPDIR/edge-standin-<port>.lock`, held until dropped (closing the
/// file releases it, also when the process dies).
pub struct MachineLock {
    _file: std::fs::File,
}

impl MachineLock {
    pub fn acquire(port: u16) -> MachineLock {
        use std::io::{Read as _, Seek as _, Write as _};
        use std::os::fd::AsRawFd as _;
        let path = std::env::temp_dir().join(format!("edge-standin-{port}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let locked = poll_every(Duration::from_millis(100), MACHINE_LOCK_TIMEOUT, || {
            // SAFETY: flock on a file descriptor we own.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        });
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            panic!(
                "another edge test has held port {port} for {MACHINE_LOCK_TIMEOUT:?} ({}: {holder})",
                path.display()
            );
        }
        let exe = std::env::current_exe().unwrap_or_default();
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "pid {} ({})", std::process::id(), exe.display());
        MachineLock { _file: file }
    }
}

/// Wait until nothing listens on `port` (a previous stand-in's mosquitto may be exiting).
fn wait_port_free(port: u16) {
    let free = poll_every(Duration::from_millis(50), PORT_FREE_TIMEOUT, || {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    });
    assert!(
        free,
        "port {port} is in use (an edgeHub, a mosquitto or a leftover edge-standin?): the edge \
         tests need it free; find the owner with `ss -ltnp | grep :{port}` and stop it"
    );
}

impl EdgeStandin {
    /// Start a stand-in with the default identity (module `connected-registry` on `dev1`).
    pub fn start_default() -> EdgeStandin {
        Self::start(EdgeOptions::default())
    }

    /// Start a stand-in and wait (bounded) until it is ready.
    pub fn start(opts: EdgeOptions) -> EdgeStandin {
        let guard = EDGE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let machine = MachineLock::acquire(opts.mqtt_port);
        super::require("mosquitto");
        wait_port_free(opts.mqtt_port);
        let (tmp, dir) = match &opts.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let tmp = tempfile::tempdir().expect("temporary directory");
                let dir = tmp.path().join("edge");
                (Some(tmp), dir)
            }
        };
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("standin.log");
        let mut cmd = Command::new(STANDIN_BIN);
        cmd.arg("--dir")
            .arg(&dir)
            .args(["--device-id", &opts.device_id])
            .args(["--module-id", &opts.module_id])
            .args(["--hub-hostname", &opts.hub_hostname])
            .args(["--gateway-hostname", &opts.gateway_hostname])
            .args(["--generation-id", &opts.generation_id])
            .args(["--mqtt-port", &opts.mqtt_port.to_string()]);
        if let Some(desired) = &opts.desired {
            let path = dir.join("seed-desired.json");
            std::fs::write(&path, serde_json::to_vec(desired).unwrap()).unwrap();
            cmd.arg("--desired").arg(path);
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_LOG", "info");
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {STANDIN_BIN}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if !line.trim().is_empty() => line,
            _ => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "edge-standin did not become ready within {READY_TIMEOUT:?} (exit: {status:?}); log:\n{}\nmosquitto log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default(),
                    std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("edge-standin's ready line is not JSON ({e}): {line:?}"));
        let control = ready["control"].as_str().expect("control URL").to_owned();
        EdgeStandin {
            opts,
            child: Some(child),
            control,
            dir,
            log,
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(330))
                .build()
                .unwrap(),
            _tmp: tmp,
            _machine: machine,
            _guard: guard,
        }
    }

    pub fn control_url(&self) -> &str {
        &self.control
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn workload_socket(&self) -> PathBuf {
        self.dir.join("workload.sock")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.pem")).unwrap()
    }

    /// The module's symmetric key (what `/sign` signs with).
    pub fn module_key(&self) -> Vec<u8> {
        use base64::Engine as _;
        let text = std::fs::read_to_string(self.dir.join("module.key")).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap()
    }

    /// Everything the runtime gives the module (`module.env`), in file order.
    pub fn env(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.dir.join("module.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Only the current runtime's variables (`IOTEDGE_*`, `RuntimeLogLevel`).
    pub fn edge_env(&self) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .filter(|(k, _)| k.starts_with("IOTEDGE_") || k == "RuntimeLogLevel")
            .collect()
    }

    /// What the runtime gives a module container whose workload socket is mounted at
    /// `workload_in_container`: [`Self::edge_env`] with the workload URI pointing there.
    pub fn container_env(&self, workload_in_container: &str) -> Vec<(String, String)> {
        self.edge_env()
            .into_iter()
            .map(|(key, value)| match key.as_str() {
                "IOTEDGE_WORKLOADURI" => (key, format!("unix://{workload_in_container}")),
                _ => (key, value),
            })
            .collect()
    }

    /// Only the legacy pair (`EdgeHubConnectionString`, `EdgeModuleCACertificateFile`).
    pub fn fallback_env(&self) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .filter(|(k, _)| k == "EdgeHubConnectionString" || k == "EdgeModuleCACertificateFile")
            .collect()
    }

    /// The module's MQTT client id, `device/module`.
    pub fn client_id(&self) -> String {
        format!("{}/{}", self.opts.device_id, self.opts.module_id)
    }

    /// The stand-in's own log and mosquitto's, for failure messages.
    pub fn log_text(&self) -> String {
        format!(
            "edge-standin log:\n{}\nmosquitto log (tail):\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            tail(
                &std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default(),
                60
            )
        )
    }

    // ---- control API ---------------------------------------------------------------------

    /// A control API request; returns the status and the JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{}", self.control, path);
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            &url,
        );
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(body).unwrap());
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {url}: {e}\n{}", self.log_text()));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.request(method, path, body);
        assert_eq!(status, 200, "{method} {path} on the stand-in: {value}");
        value
    }

    /// `{"desired":{…,"$version"},"reported":{…,"$version"}}`.
    pub fn twin(&self) -> Value {
        self.ok("GET", "/twin", None)
    }

    /// Merge `patch` into the desired properties and send it to the module; returns the new
    /// desired document.
    pub fn patch_desired(&self, patch: Value) -> Value {
        self.ok("PATCH", "/twin/desired", Some(&patch))
    }

    /// Replace the desired properties (the module gets the difference as a patch).
    pub fn put_desired(&self, desired: Value) -> Value {
        self.ok("PUT", "/twin/desired", Some(&desired))
    }

    /// Telemetry in arrival order: `{"output","properties","body","topic","receivedAt",…}`.
    pub fn telemetry(&self) -> Vec<Value> {
        as_array(self.ok("GET", "/telemetry", None))
    }

    pub fn clear_telemetry(&self) {
        self.ok("DELETE", "/telemetry", None);
    }

    /// Call direct method `name`; `Err` with the stand-in's message when the module does not
    /// answer within `timeout` (at most 300 s).
    pub fn call_method(
        &self,
        name: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<MethodReply, String> {
        let path = format!("/methods/{name}?timeout={}", timeout.as_secs_f64());
        match self.request("POST", &path, Some(&payload)) {
            (200, v) => Ok(MethodReply {
                status: v["status"].as_u64().expect("status") as u16,
                payload: v["payload"].clone(),
            }),
            (504, v) => Err(v["message"].as_str().unwrap_or_default().to_owned()),
            (status, v) => panic!("POST {path}: unexpected {status}: {v}"),
        }
    }

    /// Every MQTT connection mosquitto logged: `{"clientId","protocol":"p2","cleanSession",
    /// "keepAlive","username","connected",…}`.
    pub fn connections(&self) -> Vec<Value> {
        as_array(self.ok("GET", "/connections", None))
    }

    /// The module's connections only (client id `device/module`).
    pub fn module_connections(&self) -> Vec<Value> {
        let id = self.client_id();
        self.connections()
            .into_iter()
            .filter(|c| c["clientId"] == id.as_str())
            .collect()
    }

    /// Reported patches the stand-in refused (as edgeHub would), with the rules they broke.
    /// The reported patches the stand-in applied, oldest first: `{rid, patch, receivedAt}`.
    pub fn reported_patches(&self) -> Vec<Value> {
        as_array(self.ok("GET", "/twin/reported/patches", None))
    }

    pub fn violations(&self) -> Vec<Value> {
        as_array(self.ok("GET", "/violations", None))
    }

    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "edgeHub would refuse these reported patches: {v:#?}"
        );
    }

    /// Workload API requests by route (`/sign`, `/trust-bundle`, …).
    pub fn workload_counts(&self) -> Value {
        self.ok("GET", "/workload", None)
    }

    pub fn stop_broker(&self) {
        self.ok("POST", "/broker/stop", None);
    }

    /// Start the broker; returns once the stand-in's responder listens again.
    pub fn start_broker(&self) {
        self.ok("POST", "/broker/start", None);
    }

    pub fn restart_broker(&self) {
        self.ok("POST", "/broker/restart", None);
    }

    // ---- waiting -------------------------------------------------------------------------

    /// The first telemetry message matching `pred` within `timeout`.
    pub fn wait_for_telemetry(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        poll_every(Duration::from_millis(100), timeout, || {
            found = self.telemetry().into_iter().find(|m| pred(m));
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no matching telemetry within {timeout:?}; got {:#?}\n{}",
                self.telemetry(),
                self.log_text()
            )
        })
    }

    /// The reported properties once they satisfy `pred` (within `timeout`).
    pub fn wait_for_reported(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = poll_every(Duration::from_millis(100), timeout, || {
            last = self.twin()["reported"].clone();
            pred(&last)
        });
        if !ok {
            let patches = self.reported_patches();
            panic!(
                "reported properties never matched within {timeout:?}; last: {last:#}\n\
                 last patches applied: {:#?}\nviolations: {:#?}\nMQTT connections: {:#?}",
                &patches[patches.len().saturating_sub(8)..],
                self.violations(),
                self.connections()
            );
        }
        last
    }

    /// The module's live connection, once mosquitto logs one (within `timeout`).
    pub fn wait_for_module_connection(&self, timeout: Duration) -> Value {
        let mut found = None;
        poll_every(Duration::from_millis(100), timeout, || {
            found = self
                .module_connections()
                .into_iter()
                .rev()
                .find(|c| c["connected"] == true);
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "{} did not connect within {timeout:?}; connections: {:#?}\n{}",
                self.client_id(),
                self.connections(),
                self.log_text()
            )
        })
    }

    // ---- workload API --------------------------------------------------------------------

    /// A request to the workload API over its unix socket (HTTP/1.1 with hyper), as a module
    /// makes it. Returns the status and the body (JSON when it parses, else a string).
    pub fn workload_request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        workload_request(&self.workload_socket(), method, path_and_query, body)
    }

    /// SIGTERM and wait (bounded) for a clean exit; the stand-in stops its mosquitto first.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EdgeStandin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected a JSON array, got {other}"),
    }
}

/// One HTTP/1.1 request over a unix socket with hyper (bounded to 10 s).
pub fn workload_request(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<&str>,
) -> (u16, Value) {
    use http_body_util::{BodyExt as _, Full};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = socket.to_owned();
    let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    rt.block_on(async move {
        let fut = async {
            let stream = tokio::net::UnixStream::connect(&socket)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            (status, value)
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("workload API request timed out")
    })
}
