//! How the hostile parent answers: an [`Answer`] (status, headers, body, a `Range` start) and
//! the writing of it, with the misbehaviours that act on the bytes themselves (dripped, cut).

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::common::peers::OCI_INDEX;

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Arc<Vec<u8>>,
    /// Serve only `body[start..]` (a `Range` answer).
    pub(super) start: usize,
}

impl Answer {
    pub(super) fn new(status: u16, body: Vec<u8>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Arc::new(body),
            start: 0,
        }
    }

    pub(super) fn json(status: u16, value: serde_json::Value) -> Answer {
        Answer::new(status, serde_json::to_vec(&value).unwrap())
            .header("Content-Type", "application/json")
    }

    pub(super) fn error(status: u16, code: &str) -> Answer {
        Answer::json(
            status,
            json!({"errors": [{"code": code, "message": format!("hostile parent says {status}")}]}),
        )
    }

    pub(super) fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

pub(super) fn write_answer(
    stream: &mut TcpStream,
    method: &str,
    a: Answer,
    drip: Option<u64>,
    cut_after: Option<usize>,
) -> std::io::Result<()> {
    let body = &a.body[a.start.min(a.body.len())..];
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        a.status,
        body.len()
    );
    for (k, v) in &a.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    let body = match cut_after {
        Some(n) => &body[..n.min(body.len())],
        None => body,
    };
    match drip {
        Some(rate) => {
            let pause = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            for b in body {
                stream.write_all(std::slice::from_ref(b))?;
                stream.flush()?;
                std::thread::sleep(pause);
            }
        }
        None => stream.write_all(body)?,
    }
    stream.flush()?;
    if cut_after.is_some() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

/// A referrers answer: an OCI index of `manifests`.
pub(super) fn index_answer(manifests: Vec<serde_json::Value>) -> Answer {
    let doc = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    Answer::new(200, serde_json::to_vec(&doc).unwrap()).header("Content-Type", OCI_INDEX)
}
