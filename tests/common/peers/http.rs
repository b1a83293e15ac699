//! Small HTTP helpers: requests to a node or a parent, and checks of what a node serves, byte
//! for byte; pushes of blobs and images over plain HTTP.

use super::*;

pub struct Http {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.text())
    }
}

impl Http {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Send a request to `base` + `path` (base like `http://127.0.0.1:5000`).
pub fn request(
    method: reqwest::Method,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Http {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{base}{path}")
    };
    let mut req = client()
        .request(method.clone(), &url)
        .header("Accept", ACCEPT_ALL);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().unwrap().to_vec();
    Http {
        status,
        headers,
        body,
    }
}

pub fn get(base: &str, path: &str) -> Http {
    request(reqwest::Method::GET, base, path, &[], None)
}

pub fn head(base: &str, path: &str) -> Http {
    request(reqwest::Method::HEAD, base, path, &[], None)
}

pub fn delete(base: &str, path: &str) -> Http {
    request(reqwest::Method::DELETE, base, path, &[], None)
}

/// The tags `GET /v2/<repo>/tags/list` names, sorted; `None` on 404.
pub fn tags(base: &str, repo: &str) -> Option<Vec<String>> {
    let r = get(base, &format!("/v2/{repo}/tags/list"));
    if r.status == 404 {
        return None;
    }
    assert_eq!(r.status, 200, "tags/list of {repo}: {}", r.text());
    let mut tags: Vec<String> = r.json()["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    tags.sort();
    Some(tags)
}

/// The digest `GET /v2/<repo>/manifests/<reference>` serves, if 200.
pub fn manifest_digest(base: &str, repo: &str, reference: &str) -> Option<String> {
    let r = get(base, &format!("/v2/{repo}/manifests/{reference}"));
    (r.status == 200).then(|| sha256(&r.body))
}

/// Assert `base` serves `image` under `reference`: the exact manifest bytes, media type and
/// digest header, and (recursively, for an index: only the `platforms` given, or all) every
/// blob with its exact bytes. Returns the number of blobs checked.
pub fn assert_serves(
    base: &str,
    repo: &str,
    reference: &str,
    image: &Image,
    platforms: Option<&[&str]>,
) -> usize {
    let r = get(base, &format!("/v2/{repo}/manifests/{reference}"));
    assert_eq!(
        r.status,
        200,
        "GET {base}/v2/{repo}/manifests/{reference}: {}",
        r.text()
    );
    assert!(
        r.body == image.bytes,
        "manifest {repo}:{reference} bytes differ:\nserved {}\nexpected {}",
        r.text(),
        String::from_utf8_lossy(&image.bytes)
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    assert_eq!(r.header("content-type"), Some(image.media_type.as_str()));
    let mut n = 0;
    for b in &image.blobs {
        let r = get(base, &format!("/v2/{repo}/blobs/{}", b.digest));
        assert_eq!(r.status, 200, "blob {} of {repo}:{reference}", b.digest);
        assert!(r.body == b.bytes, "blob {} bytes differ", b.digest);
        n += 1;
    }
    for c in &image.children {
        let wanted = platforms.is_none_or(|p| p.contains(&c.platform.as_deref().unwrap()));
        if wanted {
            n += assert_serves(base, repo, &c.digest, c, None);
        }
    }
    n
}

/// Open an upload session in `repo` on `base`; returns its absolute URL.
pub fn start_upload(base: &str, repo: &str) -> String {
    let r = request(
        reqwest::Method::POST,
        base,
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        None,
    );
    assert_eq!(r.status, 202, "POST upload to {repo}: {}", r.text());
    crate::common::support::absolute(base, r.header("location").expect("Location"))
}

/// Push a blob to `base` (monolithic: POST then PUT with the digest).
pub fn push_blob(base: &str, repo: &str, blob: &Blob) {
    let r = head(base, &format!("/v2/{repo}/blobs/{}", blob.digest));
    if r.status == 200 {
        return;
    }
    let location = start_upload(base, repo);
    let r = request(
        reqwest::Method::PUT,
        base,
        &crate::common::support::finish_url(&location, &blob.digest),
        &[("Content-Type", "application/octet-stream")],
        Some(blob.bytes.clone()),
    );
    assert_eq!(r.status, 201, "PUT blob {}: {}", blob.digest, r.text());
}

/// Push `image` (its blobs, its children by digest, then itself) to `base` under `reference`
/// (a tag, or its digest). Returns the response headers of the final manifest PUT.
pub fn push_image(base: &str, repo: &str, reference: &str, image: &Image) -> Http {
    for b in &image.blobs {
        push_blob(base, repo, b);
    }
    for c in &image.children {
        push_image(base, repo, &c.digest, c);
    }
    let r = request(
        reqwest::Method::PUT,
        base,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", &image.media_type)],
        Some(image.bytes.clone()),
    );
    assert_eq!(
        r.status,
        201,
        "PUT manifest {repo}:{reference}: {}",
        r.text()
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.digest.as_str())
    );
    r
}

/// `DELETE /v2/<repo>/manifests/<digest>` (distribution also drops every tag on it).
pub fn delete_manifest(base: &str, repo: &str, digest: &str) {
    let r = delete(base, &format!("/v2/{repo}/manifests/{digest}"));
    assert_eq!(r.status, 202, "DELETE {repo}@{digest}: {}", r.text());
}
