//! The hostile parent's push side, so a ReadWrite child can push to it: upload sessions
//! (`POST`, `PATCH` chunks placed by `Content-Range`, `GET` of where a session stands, the
//! closing `PUT ?digest=` checked against what the session holds) and manifest `PUT`s, all in
//! memory. It behaves as a connected-registry parent does; the misbehaviours are the parent
//! module's rules (`Status`, `SessionHolds`, `Garble`) acting before it.

use std::collections::HashMap;
use std::sync::Arc;

use super::answer::Answer;
use super::{Content, Request};
use crate::common::sha256;

/// Upload sessions in progress: id → the bytes received so far.
#[derive(Default)]
pub(super) struct Uploads {
    sessions: HashMap<String, Vec<u8>>,
    next_id: u64,
}

/// The answer to a push (`POST`, `PATCH` or `PUT`, or the `GET` of a session); `None` for any
/// other request.
pub(super) fn answer(content: &mut Content, req: &Request) -> Option<Answer> {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let rest = path.strip_prefix("/v2/")?;
    if let Some(i) = rest.find("/blobs/uploads") {
        let repo = &rest[..i];
        let id = rest[i + "/blobs/uploads".len()..].trim_matches('/');
        return match (req.method.as_str(), id) {
            ("POST", "") => Some(start(&mut content.uploads, repo)),
            ("PATCH", id) => Some(chunk(&mut content.uploads, path, id, req)),
            ("GET", id) => Some(stands(&content.uploads, path, id)),
            ("PUT", id) => Some(finish(content, repo, id, query, &req.body)),
            _ => None,
        };
    }
    if req.method == "PUT" {
        let i = rest.rfind("/manifests/")?;
        let (repo, reference) = (&rest[..i], &rest[i + "/manifests/".len()..]);
        return Some(put_manifest(content, repo, reference, req));
    }
    None
}

/// `Range: 0-N` for a session holding `held` bytes ("0-0" for none, as distribution says it).
fn range(held: usize) -> String {
    format!("0-{}", held.saturating_sub(1))
}

fn start(uploads: &mut Uploads, repo: &str) -> Answer {
    uploads.next_id += 1;
    let id = format!("session-{}", uploads.next_id);
    uploads.sessions.insert(id.clone(), Vec::new());
    Answer::new(202, Vec::new())
        .header("Location", &format!("/v2/{repo}/blobs/uploads/{id}"))
        .header("Range", "0-0")
        .header("Docker-Upload-UUID", &id)
}

fn chunk(uploads: &mut Uploads, path: &str, id: &str, req: &Request) -> Answer {
    let Some(held) = uploads.sessions.get_mut(id) else {
        return Answer::error(404, "BLOB_UPLOAD_UNKNOWN");
    };
    match req.content_range {
        Some((first, _)) if first != held.len() as u64 => {
            return Answer::error(416, "BLOB_UPLOAD_INVALID")
                .header("Location", path)
                .header("Range", &range(held.len()));
        }
        Some((first, last)) if last + 1 - first != req.body.len() as u64 => {
            return Answer::error(400, "BLOB_UPLOAD_INVALID");
        }
        _ => {}
    }
    held.extend_from_slice(&req.body);
    Answer::new(202, Vec::new())
        .header("Location", path)
        .header("Range", &range(held.len()))
}

fn stands(uploads: &Uploads, path: &str, id: &str) -> Answer {
    match uploads.sessions.get(id) {
        Some(held) => Answer::new(204, Vec::new())
            .header("Location", path)
            .header("Range", &range(held.len())),
        None => Answer::error(404, "BLOB_UPLOAD_UNKNOWN"),
    }
}

/// The closing `PUT`: its body is the last bytes; the whole must match `digest=`. A mismatch is
/// refused and the session kept as it is (what the parent holds is its own business).
fn finish(content: &mut Content, repo: &str, id: &str, query: &str, body: &[u8]) -> Answer {
    let digest = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("digest="))
        .map(|d| d.replace("%3A", ":").replace("%3a", ":"));
    let Some(digest) = digest else {
        return Answer::error(400, "DIGEST_INVALID");
    };
    let Some(held) = content.uploads.sessions.get_mut(id) else {
        return Answer::error(404, "BLOB_UPLOAD_UNKNOWN");
    };
    held.extend_from_slice(body);
    if sha256(held) != digest {
        held.truncate(held.len() - body.len());
        return Answer::error(400, "DIGEST_INVALID");
    }
    let bytes = content.uploads.sessions.remove(id).unwrap_or_default();
    content.blobs.insert(digest.clone(), Arc::new(bytes));
    Answer::new(201, Vec::new())
        .header("Location", &format!("/v2/{repo}/blobs/{digest}"))
        .header("Docker-Content-Digest", &digest)
}

fn put_manifest(content: &mut Content, repo: &str, reference: &str, req: &Request) -> Answer {
    let digest = sha256(&req.body);
    if reference.contains(':') && reference != digest {
        return Answer::error(400, "DIGEST_INVALID");
    }
    let media_type = req.content_type.clone().unwrap_or_default();
    content
        .manifests
        .insert(digest.clone(), (media_type, Arc::new(req.body.clone())));
    let tags = content.tags.entry(repo.to_owned()).or_default();
    if !reference.contains(':') {
        tags.insert(reference.to_owned(), digest.clone());
    }
    Answer::new(201, Vec::new())
        .header("Location", &format!("/v2/{repo}/manifests/{digest}"))
        .header("Docker-Content-Digest", &digest)
}
