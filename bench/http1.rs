#![allow(dead_code)]
//! A minimal keep-alive HTTP/1.1 client for the load tools in `bench/`: thousands of these are
//! cheap (one socket and a 4 KiB buffer each), where a full client's connection pool is not.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection: requests with Content-Length bodies, responses with
/// Content-Length or chunked bodies.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub async fn connect(addr: &str) -> anyhow::Result<Conn> {
        let mut delay = Duration::from_millis(10);
        for _ in 0..10 {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(Conn {
                        stream: BufReader::with_capacity(4096, s),
                    });
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        anyhow::bail!("cannot connect to {addr}")
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        self.send_typed(method, path, body.unwrap_or(b""), "application/json")
            .await
    }

    pub async fn send_typed(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        content_type: &str,
    ) -> anyhow::Result<()> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: root\r\n");
        if method != "GET" {
            request.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.get_mut().write_all(&bytes).await?;
        Ok(())
    }

    /// `GET` with an `Accept` header.
    pub async fn send_accept(&mut self, path: &str, accept: &str) -> anyhow::Result<()> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: registry\r\nAccept: {accept}\r\n\r\n");
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        Ok(())
    }

    /// `GET` asking to switch to `protocol` (`Connection: upgrade`).
    pub async fn send_upgrade(&mut self, path: &str, protocol: &str) -> anyhow::Result<()> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: root\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        Ok(())
    }

    /// One line of an upgraded connection's line protocol, without its `\n`.
    pub async fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut line = Vec::new();
        anyhow::ensure!(
            self.stream.read_until(b'\n', &mut line).await? > 0,
            "connection closed"
        );
        anyhow::ensure!(line.pop() == Some(b'\n'), "connection closed mid-line");
        Ok(line)
    }

    pub async fn read(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let (status, body, _) = self.read_with_location().await?;
        Ok((status, body))
    }

    /// [`Conn::read`], also returning the `Location` header (a path, the origin dropped).
    pub async fn read_with_location(&mut self) -> anyhow::Result<(u16, Vec<u8>, Option<String>)> {
        let mut line = String::new();
        anyhow::ensure!(
            self.stream.read_line(&mut line).await? > 0,
            "connection closed"
        );
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        let mut location = None;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if k == "location" {
                    let path = match v.find("://") {
                        Some(i) => v[i + 3..].find('/').map_or("/", |j| &v[i + 3 + j..]),
                        None => v,
                    };
                    location = Some(path.to_owned());
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16)?;
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await?;
                body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.stream.read_exact(&mut body).await?;
        }
        Ok((status, body, location))
    }
}
