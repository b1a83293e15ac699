//! How the test process reaches a node in the field: its published port and the credentials
//! used there, with requests that report a refused or dropped connection instead of panicking
//! (nodes are killed and cut off while the scenarios watch them).

use std::time::Duration;

use serde_json::Value;

use crate::common::credentials::basic;

/// How a node is reached from the test process, and as whom.
#[derive(Clone)]
pub struct Endpoint {
    pub base: String,
    pub host: String,
    pub user: String,
    pub password: String,
}

impl Endpoint {
    pub fn authorization(&self) -> String {
        basic(&self.user, &self.password)
    }

    /// A request that reports a refused or dropped connection instead of panicking (nodes are
    /// killed and cut off while the scenarios watch them).
    pub fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String> {
        self.try_send_as(method, path, body, &self.authorization())
    }

    fn try_send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        authorization: &str,
    ) -> Result<Answer, String> {
        let mut req = http()
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Authorization", authorization)
            .header("Accept", crate::common::peers::ACCEPT_ALL);
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .map_err(|e| format!("{method} {path} body: {e}"))?;
        Ok(Answer {
            status,
            headers,
            body: body.to_vec(),
        })
    }

    pub fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        self.try_send(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A request with another `Authorization` than the endpoint's own.
    pub fn send_with(&self, method: reqwest::Method, path: &str, authorization: &str) -> Answer {
        self.try_send_as(method, path, None, authorization)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None)
    }

    /// The node's own status document.
    pub fn status(&self) -> Value {
        let r = self.get("/acr/connected-registry/v1/status");
        assert_eq!(r.status, 200, "status: {}", r.text());
        r.json()
    }

    /// The digest `repo:tag` resolves to here, if it is served (and the node answers).
    pub fn tag_digest(&self, repo: &str, tag: &str) -> Option<String> {
        let r = self
            .try_send(
                reqwest::Method::HEAD,
                &format!("/v2/{repo}/manifests/{tag}"),
                None,
            )
            .ok()?;
        (r.status == 200).then(|| {
            r.header("Docker-Content-Digest")
                .unwrap_or_default()
                .to_owned()
        })
    }

    /// The tags of `repo` (empty when the repository is not here).
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let r = self.get(&format!("/v2/{repo}/tags/list"));
        if r.status == 404 {
            return vec![];
        }
        assert_eq!(r.status, 200, "tags/list {repo}: {}", r.text());
        let mut tags: Vec<String> = r.json()["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// Requests answered by route (`connected_registry_http_requests_total`), from `/metrics`.
    pub fn requests_by_route(&self) -> Vec<(String, u64)> {
        let text = self.get("/metrics").text();
        text.lines()
            .filter(|l| l.starts_with("connected_registry_http_requests_total{"))
            .filter_map(|l| {
                let route = l.split("route=\"").nth(1)?.split('"').next()?.to_owned();
                let count = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
                Some((route, count))
            })
            .collect()
    }
}

/// A response.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}
