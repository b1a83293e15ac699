//! Debian's `docker-registry` (CNCF distribution 2.8) as a parent.

use super::*;

/// Debian's `docker-registry` (CNCF distribution 2.8) on a free port with deletes enabled;
/// killed on drop.
pub struct Distribution {
    pub port: u16,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Distribution {
    pub fn start() -> Distribution {
        Distribution::start_with_auth(None)
    }

    /// With `Some((user, password))`: htpasswd (bcrypt) Basic authentication on every request.
    pub fn start_with_auth(auth: Option<(&str, &str)>) -> Distribution {
        let htpasswd = auth.map(|(user, password)| {
            run(Command::new(require("htpasswd")).args(["-Bbn", user, password]))
        });
        Distribution::start_with_auth_section(move |dir| match htpasswd {
            None => String::new(),
            Some(line) => {
                let file = dir.join("htpasswd");
                std::fs::write(&file, line.trim()).unwrap();
                format!(
                    "auth:\n  htpasswd: {{realm: test-realm, path: {}}}\n",
                    file.display()
                )
            }
        })
    }

    /// `auth` returns the configuration's `auth:` section (empty for none), given the
    /// registry's own temporary directory to put files in (an htpasswd file, a token CA).
    pub fn start_with_auth_section(auth: impl FnOnce(&Path) -> String) -> Distribution {
        require("docker-registry");
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = tmp.path().join("config.yml");
        let auth = auth(tmp.path());
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log: {{level: info, accesslog: {{disabled: true}}}}\n\
                 storage:\n  cache: {{blobdescriptor: inmemory}}\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                tmp.path().join("root").display()
            ),
        )
        .unwrap();
        let mut d = Distribution {
            port,
            child: None,
            config,
            log: tmp.path().join("registry.log"),
            _tmp: tmp,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(require("docker-registry"))
            .arg("serve")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let pid = child.id();
        self.child = Some(child);
        let (base, port) = (self.url(), self.port);
        // Its own listening socket, not just an answer: another program on the port answers too.
        let ok = wait_until(Duration::from_secs(20), || {
            crate::common::listens_on(pid, port)
                && reqwest::blocking::get(format!("{base}/v2/"))
                    .map(|r| matches!(r.status().as_u16(), 200 | 401))
                    .unwrap_or(false)
        });
        assert!(
            ok,
            "docker-registry did not start on {port} (who listens there: {}):\n{}",
            crate::common::listeners_of(port),
            self.log_text()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and storage.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn();
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill();
    }
}
