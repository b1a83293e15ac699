//! Reads mosquitto's log file as it grows and keeps the connections it reports, so the control
//! API can show what each MQTT client presented: mosquitto logs
//! `New client connected from 127.0.0.1:40000 as dev1/mod1 (p2, c0, k60, u'user').`, where `p2`
//! is MQTT 3.1.1 (`p5` is 5.0), `c0` means a persistent session and `k60` the keep-alive.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Value};

/// Most bytes read per refresh, so one huge burst of logging cannot stall a request.
const MAX_READ: u64 = 8 * 1024 * 1024;
/// Connections kept (oldest dropped first).
const MAX_CONNECTIONS: usize = 10_000;

/// One client connection as mosquitto logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub client_id: String,
    pub address: String,
    /// `p2` (MQTT 3.1.1), `p3` (3.1) or `p5` (5.0), as logged.
    pub protocol: String,
    pub clean_session: bool,
    pub keep_alive: u64,
    pub username: Option<String>,
    /// mosquitto's timestamp (Unix seconds), when the line had one.
    pub logged_at: Option<u64>,
    /// Why the connection ended, once mosquitto logged that.
    pub ended: Option<String>,
}

impl Connection {
    pub fn to_json(&self) -> Value {
        let version = match self.protocol.as_str() {
            "p2" => "3.1.1",
            "p3" => "3.1",
            "p5" => "5.0",
            _ => "unknown",
        };
        json!({
            "clientId": self.client_id,
            "address": self.address,
            "protocol": self.protocol,
            "mqttVersion": version,
            "cleanSession": self.clean_session,
            "keepAlive": self.keep_alive,
            "username": self.username,
            "loggedAt": self.logged_at,
            "connected": self.ended.is_none(),
            "ended": self.ended,
        })
    }
}

fn connect_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:(\d+): )?New client connected from (\S+) as (.*?) \((p\d+), c(\d), k(\d+)(?:, u'(.*)')?\)\.?\s*$",
        )
        .expect("valid regex")
    })
}

fn end_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:\d+: )?Client (.+?) (disconnected\b.*|closed its connection\.|has exceeded timeout, disconnecting\.|already connected, closing old connection\.)\s*$",
        )
        .expect("valid regex")
    })
}

/// Parse one `New client connected …` line.
pub fn parse_connect(line: &str) -> Option<Connection> {
    let c = connect_re().captures(line)?;
    Some(Connection {
        logged_at: c.get(1).and_then(|m| m.as_str().parse().ok()),
        address: c[2].to_owned(),
        client_id: c[3].to_owned(),
        protocol: c[4].to_owned(),
        clean_session: &c[5] == "1",
        keep_alive: c[6].parse().unwrap_or(0),
        username: c.get(7).map(|m| m.as_str().to_owned()),
        ended: None,
    })
}

/// Follows the log file from where it last stopped.
pub struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    connections: Vec<Connection>,
}

impl LogTail {
    pub fn new(path: PathBuf) -> LogTail {
        LogTail {
            path,
            offset: 0,
            partial: Vec::new(),
            connections: Vec::new(),
        }
    }

    /// Read what was appended since the last call and record its connection lines.
    pub fn refresh(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Truncated or replaced: start over.
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = (&mut file).take(MAX_READ).read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            self.line(line);
        }
    }

    fn line(&mut self, line: &str) {
        if let Some(conn) = parse_connect(line) {
            if self.connections.len() >= MAX_CONNECTIONS {
                self.connections.remove(0);
            }
            self.connections.push(conn);
        } else if let Some(c) = end_re().captures(line) {
            let id = &c[1];
            if let Some(conn) = self
                .connections
                .iter_mut()
                .rev()
                .find(|conn| conn.client_id == id && conn.ended.is_none())
            {
                conn.ended = Some(c[2].trim_end_matches('.').to_owned());
            }
        } else if line.contains("mosquitto version") && line.contains("terminating") {
            // mosquitto stopping ends every connection it had.
            for conn in self.connections.iter_mut().filter(|c| c.ended.is_none()) {
                conn.ended = Some("broker stopped".into());
            }
        }
    }

    pub fn connections(&self) -> &[Connection] {
        &self.connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        let c = parse_connect("1796220936: New client connected from 127.0.0.1:46302 as dev1/mod1 (p2, c0, k60, u'myhub.azure-devices.net/dev1/mod1/?api-version=2019-10-01&DeviceClientType=x').").unwrap();
        assert_eq!(c.client_id, "dev1/mod1");
        assert_eq!(c.address, "127.0.0.1:46302");
        assert_eq!(c.protocol, "p2");
        assert!(!c.clean_session);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(
            c.username.as_deref(),
            Some("myhub.azure-devices.net/dev1/mod1/?api-version=2019-10-01&DeviceClientType=x")
        );
        assert_eq!(c.logged_at, Some(1796220936));
        let c = parse_connect("New client connected from ::1:5 as a b (p5, c1, k0).").unwrap();
        assert_eq!(c.client_id, "a b");
        assert!(c.clean_session);
        assert_eq!(c.username, None);
        assert!(parse_connect("1: New connection from 127.0.0.1:4 on port 8883.").is_none());
    }

    #[test]
    fn tails_a_growing_file() {
        let dir = std::env::temp_dir().join(format!("connlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.log");
        std::fs::write(
            &path,
            "1: New client connected from 1.2.3.4:5 as x (p2, c0, k60, u'u').\n2: Client x dis",
        )
        .unwrap();
        let mut tail = LogTail::new(path.clone());
        tail.refresh();
        assert_eq!(tail.connections().len(), 1);
        assert!(tail.connections()[0].ended.is_none());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"connected.\n").unwrap();
        tail.refresh();
        assert_eq!(tail.connections()[0].ended.as_deref(), Some("disconnected"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
