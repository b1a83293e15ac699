//! Test harness: starts the real `connected-registry` binary on a free loopback port with its own
//! data directory, and finds the real client programs the tests drive. A missing tool fails the
//! test (no silent skips): `scripts/test.sh` installs them all.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_connected-registry");

/// A free TCP port on 127.0.0.1 for a server a test starts (a node, distribution, a container's
/// published port). Ports come from one counter for the whole test process, below the kernel's
/// ephemeral range (where `bind(0)` and outgoing connections take theirs), and each is handed
/// out once: a port merely found free with `bind(0)` and released could be handed to two tests
/// running at once, and one would talk to the other's server.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Another test process on the machine starts elsewhere in the range.
    let offset = std::process::id().wrapping_mul(7_919) % COUNT;
    loop {
        let taken = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            taken < COUNT,
            "no free test port left in {FIRST}..{}",
            FIRST + COUNT
        );
        let port = u16::try_from(FIRST + (offset + taken) % COUNT).expect("below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether process `pid` holds a TCP socket listening on `port` (IPv4 or IPv6): the inodes of
/// the listening sockets in `/proc/net/tcp{,6}` against the `socket:[inode]` links in
/// `/proc/<pid>/fd`.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inode| inodes.iter().any(|i| i == inode))
        })
    })
}

/// Inodes of the sockets listening on TCP `port`, from `/proc/net/tcp` and `/proc/net/tcp6`
/// (columns: `sl local_address rem_address st … inode`; `st` 0A is LISTEN).
fn listening_inodes(port: u16) -> Vec<String> {
    let wanted = format!("{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state == "0A" && local.rsplit(':').next() == Some(wanted.as_str()) {
                inodes.push((*inode).to_owned());
            }
        }
    }
    inodes
}

/// Who listens on TCP `port`, as `ss -ltnp` says (for a failure message).
pub fn listeners_of(port: u16) -> String {
    let out = match Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => return format!("(cannot run ss: {e})"),
    };
    if out.trim().is_empty() {
        "nobody".to_owned()
    } else {
        out.trim().to_owned()
    }
}

/// Raise this process's soft open-files limit to the hard one (a test holding a thousand
/// connections), and fail clearly when even that is too low.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 4096,
        "the open-files limit is {}; this test needs 4096 (ulimit -n)",
        limit.rlim_cur
    );
    limit.rlim_cur
}

/// Panics unless `tool` is on PATH.
pub fn require(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "required tool `{tool}` is not installed; run scripts/test.sh, which installs every test peer"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Output of a command that may fail: (success, stdout + stderr).
pub fn attempt(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Run a command, panicking with its output if it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How a start ended (anything else fails the test where it happened).
enum Started {
    Listening,
    /// The registry exited and another program listens on its port (`ss` says who).
    PortTaken(String),
}

/// A running registry process.
pub struct Registry {
    pub port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Registry {
    /// Start a registry with a fresh data directory.
    pub fn start() -> Registry {
        Self::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> Registry {
        Self::start_with_env(extra_args, &[])
    }

    /// Start with extra arguments and environment variables (ACR's container variables).
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Registry {
        Self::start_in(None, extra_args, env)
    }

    /// Start with its data in `data_dir` (else a fresh temporary directory).
    pub fn start_in(
        data_dir: Option<PathBuf>,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Registry {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = data_dir.unwrap_or_else(|| tmp.path().join("data"));
        let mut r = Registry {
            port: free_port(),
            data_dir,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: tmp.path().join("registry.log"),
            _tmp: Some(tmp),
        };
        // A port another program took between `free_port` and the bind (the registry exits,
        // refused it) is not the test's business: start again on another one, and say so.
        for _ in 0..3 {
            match r.spawn() {
                Started::Listening => return r,
                Started::PortTaken(who) => {
                    eprintln!(
                        "port {} was taken before the registry could listen ({who}); another port",
                        r.port
                    );
                    r.port = free_port();
                }
            }
        }
        panic!("three ports in a row were taken before the registry could listen on them");
    }

    fn spawn(&mut self) -> Started {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            // A test's own environment wins (an empty RUST_LOG leaves the level to the config).
            .env("RUST_LOG", "connected_registry=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn connected-registry");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Wait until the process this harness started listens on its port. A TCP connect is not
    /// proof: another program holding the port (a leaked server, a container's published port)
    /// accepts it too, and the registry, refused the port, exits a moment later; the test's
    /// requests then meet "connection refused". So readiness is read from /proc: a listening
    /// socket on the port that is one of the child's own descriptors.
    fn wait_ready(&mut self) -> Started {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pid = self.pid();
            if listens_on(pid, self.port) {
                return Started::Listening;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                if !listening_inodes(self.port).is_empty() {
                    return Started::PortTaken(listeners_of(self.port));
                }
                panic!(
                    "registry exited early ({status}); who listens on {port}: {who}\nlog:\n{log}",
                    port = self.port,
                    who = listeners_of(self.port),
                    log = self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "registry did not start listening on {port}; who listens there: {who}\nlog:\n{log}",
                port = self.port,
                who = listeners_of(self.port),
                log = self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident set size of the server process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Peak resident set size (VmHWM) of the server process, in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// `kill -9` the server.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe_kill(child.id(), "TERM");
        child.wait().unwrap()
    }

    /// Start the server again on the same port and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        if let Started::PortTaken(who) = self.spawn() {
            panic!(
                "the registry cannot listen on {} again: taken by {who}",
                self.port
            );
        }
    }

    pub fn data_path(&self, rel: &str) -> PathBuf {
        self.data_dir.join(rel)
    }
}

/// A registry serving TLS (HTTP/2 and HTTP/1.1 by ALPN) with a self-signed certificate for
/// `localhost` and `127.0.0.1`.
pub struct TlsRegistry {
    pub reg: Registry,
    /// The certificate, PEM: the root a client trusts.
    pub cert_pem: String,
    _dir: tempfile::TempDir,
}

impl TlsRegistry {
    pub fn start() -> TlsRegistry {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        let reg = Registry::start_with(&[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ]);
        TlsRegistry {
            reg,
            cert_pem: cert.cert.pem(),
            _dir: dir,
        }
    }

    /// `https://localhost:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.reg.port)
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

impl Drop for Registry {
    fn drop(&mut self) {
        // A test that failed shows what the node said last (whether it still ran, what it
        // answered): the test's own message rarely has it.
        if std::thread::panicking() {
            let running = match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => "running".to_owned(),
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Err(e)) => format!("unknown: {e}"),
                None => "stopped by the test".to_owned(),
            };
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- registry on port {} ({running}), last lines of its log:\n{}",
                self.port,
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        self.kill9();
        // A panic in the server is a bug even when the client got an answer (the server turns
        // a handler's panic into a 500): every test that starts a registry fails on one.
        if !std::thread::panicking() {
            self.assert_no_panic();
        }
    }
}

impl Registry {
    /// Fail if the registry's log shows a panic: Rust's `… panicked at …` line, or the server's
    /// `request handler panicked`.
    pub fn assert_no_panic(&self) {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        // Each panic with the two lines after it (Rust prints the message on the next line).
        let panics: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("panicked at") || l.contains("request handler panicked"))
            .take(5)
            .map(|(i, _)| lines[i..(i + 3).min(lines.len())].join("\n"))
            .collect();
        assert!(
            panics.is_empty(),
            "the registry panicked:\n{}",
            panics.join("\n---\n")
        );
    }
}

/// The sha256 digest string of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Walk a directory and return every file path under it.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

impl Registry {
    /// Send SIGTERM without waiting, so a test can watch the shutdown happen.
    pub fn send_sigterm(&self) {
        unsafe_kill(self.pid(), "TERM");
    }

    /// Wait up to `timeout` for the process to exit; `None` if it is still running (it is then
    /// still owned, so dropping the registry kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub mod clients;
pub mod credentials;
pub mod edge;
pub mod hostile_child;
pub mod hostile_parent;
pub mod images;
pub mod manifests;
pub mod peers;
pub mod proxy;
pub mod raw;
pub mod support;
