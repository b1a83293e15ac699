//! The module's container images as the tests drive them: make sure an image is built (through
//! `scripts/build-images.sh`), start it with the Docker engine the way IoT Edge or an operator
//! would (environment, named volumes, bind mounts such as a unix socket, network mode,
//! published ports, an emulated platform), look at its main process from the host, stop it and
//! read its exit code. Containers, volumes and networks are removed on drop, and every wait is
//! bounded.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::peers::poll_every;
use super::{require, run};

pub const VERSION: &str = "0.1.0";
/// The user the images run as (`USER 1000:1000`).
pub const IMAGE_UID: u32 = 1000;
pub const IMAGE_GID: u32 = 1000;

/// One of the module's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// iotedgedev's platform word, the tag suffix.
    pub fn platform_word(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64v8",
        }
    }

    /// `os/arch` for `docker --platform`.
    pub fn platform(self) -> &'static str {
        match self {
            Arch::Amd64 => "linux/amd64",
            Arch::Arm64 => "linux/arm64",
        }
    }

    /// The argument `scripts/build-images.sh` takes.
    pub fn script_arg(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// `connected-registry:0.1.0-<platform>`.
    pub fn tag(self) -> String {
        format!("connected-registry:{VERSION}-{}", self.platform_word())
    }
}

/// The docker CLI, after checking the engine answers.
pub fn docker() -> PathBuf {
    let docker = require("docker");
    let out = Command::new(&docker)
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Docker engine is not running (docker info: {})",
        String::from_utf8_lossy(&out.stderr)
    );
    docker
}

pub fn image_exists(tag: &str) -> bool {
    Command::new(docker())
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Make sure the image for `arch` exists. The amd64 image is rebuilt every time from the binary
/// under test (`AMD64_BINARY`: [`image_binary`]; a cheap, cached docker build, no cargo run);
/// the arm64 image, whose cross build is slow, only when it is missing (rebuild it with
/// `scripts/build-images.sh arm64`). Panics with the script's output if the build fails.
/// One build at a time in this process: two tests that found the arm64 image missing together
/// built it together, and one removed the staging directory the other was filling.
pub fn ensure_image(arch: Arch) -> String {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _building = BUILDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tag = arch.tag();
    if arch == Arch::Amd64 || !image_exists(&tag) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-images.sh");
        let out = run_bounded(
            Command::new("bash")
                .arg(&script)
                .arg(arch.script_arg())
                .env("AMD64_BINARY", image_binary()),
            Duration::from_secs(3600),
        );
        assert!(
            out.status.success(),
            "{} {} failed ({}):\n{}\n{}",
            script.display(),
            arch.script_arg(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(image_exists(&tag), "{tag} is missing after the build");
    }
    tag
}

/// The x86_64 binary the amd64 image is built from: `CR_IMAGE_BINARY` when set (`scripts/test.sh`
/// sets the shipped build, `cargo build --profile ship`), else the binary the other tests run.
fn image_binary() -> String {
    match std::env::var("CR_IMAGE_BINARY") {
        Ok(path) => {
            assert!(
                Path::new(&path).is_file(),
                "CR_IMAGE_BINARY={path} is not a file: build it (cargo build --profile ship)"
            );
            path
        }
        Err(_) => super::BIN.to_owned(),
    }
}

/// Run `cmd` to completion, killing it after `timeout` (then panicking with what it printed).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drain the pipes on threads so a chatty command cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = out_t.join().unwrap();
            let err = err_t.join().unwrap();
            panic!(
                "{cmd:?} did not finish in {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// A unique docker object name (containers, volumes, networks).
pub fn unique_name(prefix: &str) -> String {
    super::clients::unique(prefix)
}

// ---- volumes and networks --------------------------------------------------------------------

/// A named docker volume, removed on drop.
pub struct Volume {
    pub name: String,
}

impl Volume {
    pub fn create(prefix: &str) -> Volume {
        let name = unique_name(prefix);
        run(Command::new(docker()).args(["volume", "create", &name]));
        Volume { name }
    }

    /// Where the engine keeps the volume's files on the host.
    pub fn mountpoint(&self) -> PathBuf {
        volume_mountpoint(&self.name)
    }
}

/// Where the engine keeps the files of the named volume `name` on the host.
pub fn volume_mountpoint(name: &str) -> PathBuf {
    let out =
        run(Command::new(docker()).args(["volume", "inspect", "-f", "{{.Mountpoint}}", name]));
    PathBuf::from(out.trim())
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "--force", &self.name])
            .output();
    }
}

/// A user-defined bridge network (containers on it resolve each other by name through the
/// engine's DNS, as modules do on IoT Edge's `azure-iot-edge` network), removed on drop.
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn create(prefix: &str) -> Network {
        let name = unique_name(prefix);
        run(Command::new(docker()).args(["network", "create", &name]));
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

// ---- containers ------------------------------------------------------------------------------

/// How a container is attached to the network.
#[derive(Debug, Clone)]
pub enum NetworkMode {
    /// The default bridge.
    Bridge,
    /// The host's network namespace (no published ports needed).
    Host,
    /// A user-defined network by name.
    Named(String),
}

/// What to start: the image and everything `docker run` is told.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub image: String,
    pub name: String,
    /// `--platform` (for an image of another architecture, run under emulation).
    pub platform: Option<String>,
    pub env: Vec<(String, String)>,
    /// `-v SOURCE:TARGET[:ro]`: SOURCE is a volume name or a host path (a file, a directory, a
    /// unix socket).
    pub mounts: Vec<(String, String, bool)>,
    pub network: NetworkMode,
    /// Extra network aliases (on a named network).
    pub aliases: Vec<String>,
    /// `-p 127.0.0.1:HOST:CONTAINER`.
    pub publish: Vec<(u16, u16)>,
    /// `--user` (by default the image's own USER).
    pub user: Option<String>,
    /// Arguments after the image (replace the image's CMD); empty keeps the CMD.
    pub args: Vec<String>,
    /// Anything else for `docker run` (e.g. `--add-host`, `--read-only`).
    pub extra: Vec<String>,
}

impl ContainerSpec {
    pub fn new(image: &str) -> ContainerSpec {
        ContainerSpec {
            image: image.to_owned(),
            name: unique_name("cr-test"),
            platform: None,
            env: vec![],
            mounts: vec![],
            network: NetworkMode::Bridge,
            aliases: vec![],
            publish: vec![],
            user: None,
            args: vec![],
            extra: vec![],
        }
    }

    /// The spec for one of the module's images, on its own platform.
    pub fn for_arch(arch: Arch) -> ContainerSpec {
        let mut spec = ContainerSpec::new(&arch.tag());
        spec.platform = Some(arch.platform().to_owned());
        spec.name = unique_name(&format!("cr-{}", arch.script_arg()));
        spec
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Mount a volume or host path read-write.
    pub fn mount(mut self, source: &str, target: &str) -> Self {
        self.mounts
            .push((source.to_owned(), target.to_owned(), false));
        self
    }

    /// Mount a volume or host path read-only.
    pub fn mount_ro(mut self, source: &str, target: &str) -> Self {
        self.mounts
            .push((source.to_owned(), target.to_owned(), true));
        self
    }

    pub fn network(mut self, network: NetworkMode) -> Self {
        self.network = network;
        self
    }

    pub fn alias(mut self, alias: &str) -> Self {
        self.aliases.push(alias.to_owned());
        self
    }

    pub fn publish(mut self, host_port: u16, container_port: u16) -> Self {
        self.publish.push((host_port, container_port));
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_owned());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn extra(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// The `docker run` arguments, without `-d`/`--rm` (the caller picks).
    fn run_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--name".into(), self.name.clone()];
        if let Some(p) = &self.platform {
            a.extend(["--platform".into(), p.clone()]);
        }
        for (k, v) in &self.env {
            a.extend(["--env".into(), format!("{k}={v}")]);
        }
        for (source, target, ro) in &self.mounts {
            let suffix = if *ro { ":ro" } else { "" };
            a.extend(["--volume".into(), format!("{source}:{target}{suffix}")]);
        }
        match &self.network {
            NetworkMode::Bridge => {}
            NetworkMode::Host => a.extend(["--network".into(), "host".into()]),
            NetworkMode::Named(n) => a.extend(["--network".into(), n.clone()]),
        }
        for alias in &self.aliases {
            a.extend(["--network-alias".into(), alias.clone()]);
        }
        for (host, container) in &self.publish {
            a.extend(["--publish".into(), format!("127.0.0.1:{host}:{container}")]);
        }
        if let Some(u) = &self.user {
            a.extend(["--user".into(), u.clone()]);
        }
        a.extend(self.extra.iter().cloned());
        a.push(self.image.clone());
        a.extend(self.args.iter().cloned());
        a
    }

    /// `docker run -d`: the container keeps running; it is removed when the handle drops.
    pub fn start(&self) -> Container {
        let docker = docker();
        let out = run_bounded(
            Command::new(&docker)
                .arg("run")
                .arg("-d")
                .args(self.run_args()),
            Duration::from_secs(120),
        );
        let container = Container {
            name: self.name.clone(),
        };
        assert!(
            out.status.success(),
            "docker run {} failed ({}): {}\nlogs:\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            container.logs()
        );
        container
    }

    /// `docker run --rm` to completion (killed after `timeout`): a one-shot command such as
    /// `status`. Returns its output, whatever its exit code.
    pub fn run_once(&self, timeout: Duration) -> Output {
        let docker = docker();
        let out = run_bounded(
            Command::new(&docker)
                .arg("run")
                .arg("--rm")
                .args(self.run_args()),
            timeout,
        );
        // A timed-out `docker run --rm` is killed client-side only: remove the container too.
        let _ = Command::new(&docker)
            .args(["rm", "--force", &self.name])
            .output();
        out
    }
}

/// A container started with [`ContainerSpec::start`]; `docker rm --force` on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker inspect -f FORMAT`.
    pub fn inspect(&self, format: &str) -> String {
        run(Command::new(docker()).args(["inspect", "-f", format, &self.name]))
            .trim()
            .to_owned()
    }

    pub fn is_running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    /// The host pid of the container's main process.
    pub fn pid(&self) -> u32 {
        let pid: u32 = self.inspect("{{.State.Pid}}").parse().unwrap();
        assert!(
            pid > 0,
            "container {} has no main process; logs:\n{}",
            self.name,
            self.logs()
        );
        pid
    }

    /// The (real, effective, saved, filesystem) uids and gids of the main process, read from
    /// the host's `/proc/<pid>/status` (scratch images have no shell to `docker exec`).
    pub fn main_process_ids(&self) -> (Vec<u32>, Vec<u32>) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let ids = |key: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in /proc status"))
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect()
        };
        (ids("Uid:"), ids("Gid:"))
    }

    /// `docker logs` (stdout and stderr).
    pub fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        super::peers::plain(&out)
    }

    /// The container's IP address on its network(s) (first one).
    pub fn ip(&self) -> String {
        self.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Poll `url` until it answers one of `statuses`, the container dies, or `timeout` passes
    /// (panics with the logs in the last two cases).
    pub fn wait_http(&self, url: &str, statuses: &[u16], timeout: Duration) {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut last = String::new();
        let ok = poll_every(Duration::from_millis(200), timeout, || {
            match client.get(url).send() {
                Ok(r) if statuses.contains(&r.status().as_u16()) => return true,
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            assert!(
                self.is_running(),
                "container {} exited ({}) before {url} answered; logs:\n{}",
                self.name,
                self.inspect("{{.State.ExitCode}}"),
                self.logs()
            );
            false
        });
        assert!(
            ok,
            "{url} did not answer {statuses:?} within {timeout:?} (last: {last}); logs:\n{}",
            self.logs()
        );
    }

    /// `docker stop --time GRACE` (SIGTERM, then SIGKILL after GRACE); returns the exit code
    /// and how long the stop took. The whole call is bounded by GRACE plus a minute.
    pub fn stop(&self, grace: Duration) -> (i64, Duration) {
        let started = Instant::now();
        run(Command::new(docker()).args([
            "stop",
            "--time",
            &grace.as_secs().to_string(),
            &self.name,
        ]));
        let took = started.elapsed();
        let ok = poll_every(Duration::from_millis(100), Duration::from_secs(60), || {
            !self.is_running()
        });
        assert!(
            ok,
            "container {} still running after docker stop",
            self.name
        );
        (self.inspect("{{.State.ExitCode}}").parse().unwrap(), took)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", "--volumes", &self.name])
            .output();
    }
}

// ---- pulling with the engine -----------------------------------------------------------------

/// The docker CLI with its own client configuration directory (`--config DIR`), so a
/// `docker login` in a test never touches the host's `~/.docker`.
pub fn docker_cli(config_dir: &Path) -> Command {
    let mut cmd = Command::new(docker());
    cmd.arg("--config").arg(config_dir);
    cmd
}

/// `docker login HOST` as `user` (password on stdin), stored in `config_dir`.
pub fn docker_login(config_dir: &Path, host: &str, user: &str, password: &str) {
    use std::io::Write;
    let mut child = docker_cli(config_dir)
        .args(["login", "--username", user, "--password-stdin", host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn docker login");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker login {host} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `docker pull REF` with the engine (client configuration from `config_dir`); returns the
/// `Digest:` it printed.
pub fn docker_pull(config_dir: &Path, reference: &str, timeout: Duration) -> String {
    let out = run_bounded(docker_cli(config_dir).args(["pull", reference]), timeout);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "docker pull {reference} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no digest in docker pull output:\n{text}"))
        .trim()
        .to_owned()
}
