//! The edgeHub stand-in's MQTT side: a real mosquitto, run as a child process with one TLS
//! listener that presents the edgeHub certificate. The stand-in writes its configuration, starts,
//! stops and restarts it on request, and makes sure it never outlives the stand-in
//! (`PR_SET_PDEATHSIG`, plus SIGTERM on shutdown).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::certs::write_file;
use crate::connlog::LogTail;

/// How long mosquitto gets to open its listener.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long mosquitto gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Broker {
    dir: PathBuf,
    port: u16,
    child: tokio::sync::Mutex<Option<Child>>,
    tail: Mutex<LogTail>,
}

impl Broker {
    /// Write `DIR/mosquitto.conf` for a TLS listener on `port`.
    pub fn new(dir: &Path, port: u16) -> Result<Arc<Broker>> {
        let broker = Broker {
            dir: dir.to_owned(),
            port,
            child: tokio::sync::Mutex::new(None),
            tail: Mutex::new(LogTail::new(dir.join("mosquitto.log"))),
        };
        broker.write_config()?;
        Ok(Arc::new(broker))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("mosquitto.log")
    }

    fn write_config(&self) -> Result<()> {
        let d = self.dir.display();
        // Run as root, mosquitto would switch to the `mosquitto` user, which can read neither
        // the 0600 key nor the stand-in's directory.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let conf = format!(
            "# Written by edge-standin: the edgeHub stand-in's broker. Changes are overwritten.\n\
             {user}\
             listener {port} 0.0.0.0\n\
             cafile {d}/ca.pem\n\
             certfile {d}/edgehub.pem\n\
             keyfile {d}/edgehub.key\n\
             allow_anonymous true\n\
             persistence false\n\
             log_dest file {d}/mosquitto.log\n\
             log_type all\n\
             log_timestamp true\n\
             connection_messages true\n",
            port = self.port
        );
        write_file(&self.dir.join("mosquitto.conf"), conf.as_bytes(), 0o644)
    }

    /// Start mosquitto unless it runs, and wait until it accepts connections.
    pub async fn start(&self) -> Result<()> {
        let mut slot = self.child.lock().await;
        if let Some(child) = slot.as_mut() {
            if child.try_wait()?.is_none() {
                return Ok(());
            }
            *slot = None;
        }
        check_port_free(self.port)?;
        let offset = std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0);
        let stderr_path = self.dir.join("mosquitto.stderr");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .with_context(|| format!("cannot open {}", stderr_path.display()))?;
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe. The signal fires when the spawning *thread*
        // exits; the stand-in spawns only from the main thread or tokio's worker threads, which
        // live as long as the process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot run mosquitto ({e}); install it (Debian: apt-get install mosquitto)"
            )
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mosquitto exited at start ({status}).\nlog:\n{}\nstderr:\n{}",
                    self.log_since(offset),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            if self.log_since(offset).contains(" running") {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                bail!(
                    "mosquitto did not start within {START_TIMEOUT:?}.\nlog:\n{}",
                    self.log_since(offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(pid = child.id(), port = self.port, "mosquitto running");
        *slot = Some(child);
        Ok(())
    }

    /// Stop mosquitto (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]); fine if it is not running.
    pub async fn stop(&self) -> Result<()> {
        let mut slot = self.child.lock().await;
        let Some(mut child) = slot.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => {
                tracing::info!("mosquitto stopped ({})", status?);
            }
            Err(_) => {
                tracing::warn!("mosquitto ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                child.kill().await?;
            }
        }
        Ok(())
    }

    pub async fn restart(&self) -> Result<()> {
        self.stop().await?;
        self.start().await
    }

    pub async fn running(&self) -> bool {
        let mut slot = self.child.lock().await;
        match slot.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Every client connection mosquitto has logged, oldest first.
    pub fn connections(&self) -> Vec<Value> {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.refresh();
        tail.connections().iter().map(|c| c.to_json()).collect()
    }

    /// Keep reading the log in the background so connections are recorded even when no one asks.
    pub fn follow_log(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(me) = me.upgrade() else { return };
                me.tail.lock().unwrap_or_else(|e| e.into_inner()).refresh();
            }
        });
    }

    /// What mosquitto logged after byte `offset` (at most 1 MiB of it).
    fn log_since(&self, offset: u64) -> String {
        use std::io::{Read as _, Seek as _};
        let mut text = Vec::new();
        if let Ok(mut f) = std::fs::File::open(self.log_path()) {
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                let _ = f.take(1 << 20).read_to_end(&mut text);
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// Fail clearly when something already listens on the MQTT port.
fn check_port_free(port: u16) -> Result<()> {
    match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "MQTT port {port} is not free ({e}): another edge-standin, edgeHub or MQTT broker is using it; stop it or pass another --mqtt-port"
        ),
    }
}
