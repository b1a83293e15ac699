//! Listings: tags (`/v2/<name>/tags/list`), the catalog (`/v2/_catalog`) and referrers
//! (`/v2/<name>/referrers/<digest>`), with `n`/`last` pagination and `Link` headers.
//!
//! No answer holds more than a bounded amount of memory:
//! - with `n`, a page holds at most `n` entries, at most [`MAX_PAGE_ENTRIES`], and stops at
//!   [`PAGE_BYTES`] of entries; `Link: <…>; rel="next"` leads to the rest;
//! - tags and the catalog without `n` are the whole list, as distribution answers, streamed
//!   ([`STREAM_PIECE`] entries at a time from the store), so a long list is never held whole;
//! - referrers are always paged (the spec lets a registry page them with `Link`): at most
//!   [`REFERRERS_PAGE_ENTRIES`] (or `n`) descriptors and [`PAGE_BYTES`] of them, or a single
//!   descriptor larger than that (one is bounded by the manifest size limit, since its
//!   annotations come from its manifest, and is listed whole as the spec requires).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use hyper::body::Incoming;
use hyper::header::LINK;
use hyper::{Request, StatusCode};
use serde::Serialize;

use super::response::{Reply, OCI_FILTERS_APPLIED};
use super::{query, query_value};
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result};
use crate::store::Store;

/// Most entries in one page of tags or repositories, whatever `n` asks for.
pub const MAX_PAGE_ENTRIES: usize = 10_000;

/// Most descriptors in one page of referrers, whatever `n` asks for.
pub const REFERRERS_PAGE_ENTRIES: usize = 1000;

/// Bytes of entries after which a page stops (it always holds at least one entry).
pub const PAGE_BYTES: usize = 1 << 20;

/// Entries, and bytes of them, read from the store per piece of a streamed list.
pub const STREAM_PIECE: PageLimit = PageLimit {
    entries: 1000,
    bytes: 64 << 10,
};

/// How much one page may hold: at most `entries` entries and, once it has one, at most `bytes`
/// bytes of their JSON.
#[derive(Debug, Clone, Copy)]
pub struct PageLimit {
    pub entries: usize,
    pub bytes: usize,
}

/// A page of entries from the store, and whether more follow.
struct Page<T> {
    items: Vec<T>,
    more: bool,
}

impl<T> Page<T> {
    fn empty() -> Page<T> {
        Page {
            items: Vec::new(),
            more: false,
        }
    }
}

impl<T> From<(Vec<T>, bool)> for Page<T> {
    fn from((items, more): (Vec<T>, bool)) -> Page<T> {
        Page { items, more }
    }
}

/// Reads one page of names after a name.
type FetchNames = dyn Fn(&Store, Option<&str>, PageLimit) -> Result<Page<String>> + Send + Sync;

/// `n` and `last` as the client sent them.
struct PageQuery {
    n: Option<u64>,
    last: Option<String>,
}

fn page_query(q: &[(String, String)]) -> Result<PageQuery> {
    let n = query_value(q, "n")
        .map(|n| {
            n.parse::<u64>().map_err(|_| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!(
                        "n={n:?} must be an integer from 0 to {} (a page holds at most \
                         {MAX_PAGE_ENTRIES} entries; follow the Link header for the rest)",
                        u64::MAX
                    ),
                )
            })
        })
        .transpose()?;
    Ok(PageQuery {
        n,
        last: query_value(q, "last").map(str::to_owned),
    })
}

/// The page limit for `n` entries asked, capped at `max`.
fn limit(n: u64, max: usize) -> PageLimit {
    PageLimit {
        entries: usize::try_from(n).unwrap_or(usize::MAX).min(max),
        bytes: PAGE_BYTES,
    }
}

/// `Link: <path?query>; rel="next"` from query pairs.
fn next_link(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    format!("<{path}?{}>; rel=\"next\"", q.finish())
}

/// A page of names as a JSON reply, with `Link` when more follow.
fn names_page(
    path: &str,
    n: u64,
    page: Page<String>,
    json: impl Fn(Vec<String>) -> Reply,
) -> Reply {
    let link = match (page.more, page.items.last()) {
        (true, Some(last)) => Some(next_link(path, &[("n", &n.to_string()), ("last", last)])),
        _ => None,
    };
    let reply = json(page.items);
    match link {
        Some(link) => reply.header(LINK, link),
        None => reply,
    }
}

/// The whole list of names, `head` then the names as a JSON array then `]}`: one reply with a
/// length when the first piece is all there is, else streamed piece by piece from the store.
fn all_names(
    store: &Arc<Store>,
    head: String,
    last: Option<String>,
    fetch: Box<FetchNames>,
) -> Result<Reply> {
    let first = fetch(store, last.as_deref(), STREAM_PIECE)?;
    let mut writer = NamesWriter {
        head: Some(head),
        wrote_any: false,
    };
    if !first.more {
        let body = writer.piece(&first.items, true);
        return Ok(Reply::new(StatusCode::OK).bytes("application/json", body));
    }
    struct State {
        store: Arc<Store>,
        fetch: Box<FetchNames>,
        writer: NamesWriter,
        pending: Option<Page<String>>,
        last: Option<String>,
        done: bool,
    }
    let state = State {
        store: store.clone(),
        fetch,
        writer,
        pending: Some(first),
        last,
        done: false,
    };
    let body = stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let page = match s.pending.take() {
            Some(page) => page,
            None => match (s.fetch)(&s.store, s.last.as_deref(), STREAM_PIECE) {
                Ok(page) => page,
                Err(e) => {
                    // The status is sent: cut the body so the client cannot take a truncated
                    // list for the whole one.
                    tracing::error!(error = %e, "listing failed while streaming");
                    s.done = true;
                    return Some((Err(io::Error::other(e.to_string())), s));
                }
            },
        };
        let end = !page.more || page.items.is_empty();
        if let Some(last) = page.items.last() {
            s.last = Some(last.clone());
        }
        let bytes = s.writer.piece(&page.items, end);
        s.done = end;
        Some((Ok(bytes), s))
    });
    Ok(Reply::new(StatusCode::OK).stream_unsized("application/json", body))
}

/// Writes a JSON array of names piece by piece after a head.
struct NamesWriter {
    head: Option<String>,
    wrote_any: bool,
}

impl NamesWriter {
    fn piece(&mut self, names: &[String], end: bool) -> Bytes {
        let mut out = self.head.take().unwrap_or_default().into_bytes();
        for name in names {
            if self.wrote_any {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name).expect("strings serialise");
            self.wrote_any = true;
        }
        if end {
            out.extend_from_slice(b"]}");
        }
        Bytes::from(out)
    }
}

pub fn tags(store: &Arc<Store>, repo: &RepositoryName, req: &Request<Incoming>) -> Result<Reply> {
    #[derive(Serialize)]
    struct TagList<'a> {
        name: &'a str,
        tags: Vec<String>,
    }
    let q = page_query(&query(req))?;
    if !store.repository_exists(repo)? {
        return Err(Error::new(
            ErrorCode::NameUnknown,
            format!("repository {repo} is not known to this registry"),
        ));
    }
    let Some(n) = q.n else {
        let head = format!(
            "{{\"name\":{},\"tags\":[",
            serde_json::to_string(repo.as_str()).expect("strings serialise")
        );
        let repo = repo.clone();
        let fetch = move |store: &Store, last: Option<&str>, limit: PageLimit| -> Result<_> {
            Ok(store
                .tags_page(&repo, last, limit.entries, limit.bytes)?
                .into())
        };
        return all_names(store, head, q.last, Box::new(fetch));
    };
    let page: Page<String> = if n == 0 {
        Page::empty()
    } else {
        let limit = limit(n, MAX_PAGE_ENTRIES);
        store
            .tags_page(repo, q.last.as_deref(), limit.entries, limit.bytes)?
            .into()
    };
    Ok(names_page(
        &format!("/v2/{repo}/tags/list"),
        n,
        page,
        |tags| {
            Reply::new(StatusCode::OK).json(&TagList {
                name: repo.as_str(),
                tags,
            })
        },
    ))
}

/// The catalog, listing only the repositories `visible` accepts.
pub fn catalog(
    store: &Arc<Store>,
    req: &Request<Incoming>,
    visible: Arc<dyn Fn(&str) -> bool + Send + Sync>,
) -> Result<Reply> {
    #[derive(Serialize)]
    struct Catalog {
        repositories: Vec<String>,
    }
    let q = page_query(&query(req))?;
    let Some(n) = q.n else {
        let fetch = move |store: &Store, last: Option<&str>, limit: PageLimit| -> Result<_> {
            Ok(store
                .repositories_page(last, limit.entries, limit.bytes, &*visible)?
                .into())
        };
        let head = "{\"repositories\":[".to_owned();
        return all_names(store, head, q.last, Box::new(fetch));
    };
    let page: Page<String> = if n == 0 {
        Page::empty()
    } else {
        let limit = limit(n, MAX_PAGE_ENTRIES);
        store
            .repositories_page(q.last.as_deref(), limit.entries, limit.bytes, &*visible)?
            .into()
    };
    Ok(names_page("/v2/_catalog", n, page, |repositories| {
        Reply::new(StatusCode::OK).json(&Catalog { repositories })
    }))
}

pub fn referrers(
    store: &Store,
    repo: &RepositoryName,
    digest: &str,
    req: &Request<Incoming>,
) -> Result<Reply> {
    let subject: Digest = digest.parse()?;
    let q = query(req);
    let artifact_type = query_value(&q, "artifactType");
    let page_q = page_query(&q)?;
    if let Some(last) = &page_q.last {
        last.parse::<Digest>().map_err(|_| {
            Error::new(
                ErrorCode::BadRequest,
                format!("last={last:?} must be the digest of a referrer (as a Link gives it)"),
            )
        })?;
    }
    let page: Page<(String, Bytes)> = match page_q.n {
        Some(0) => Page::empty(),
        n => {
            let limit = limit(n.unwrap_or(u64::MAX), REFERRERS_PAGE_ENTRIES);
            let last = page_q.last.as_deref();
            store
                .referrers_page(
                    repo,
                    &subject,
                    artifact_type,
                    last,
                    limit.entries,
                    limit.bytes,
                )?
                .into()
        }
    };

    let mut body =
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":["#).into_bytes();
    for (i, (_, descriptor)) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(descriptor);
    }
    body.extend_from_slice(b"]}");

    let mut reply = Reply::new(StatusCode::OK);
    if artifact_type.is_some() {
        reply = reply.header(OCI_FILTERS_APPLIED, "artifactType");
    }
    if let (true, Some((last, _))) = (page.more, page.items.last()) {
        let n = page_q.n.map(|n| n.to_string());
        let mut pairs = Vec::new();
        if let Some(n) = &n {
            pairs.push(("n", n.as_str()));
        }
        pairs.push(("last", last.as_str()));
        if let Some(t) = artifact_type {
            pairs.push(("artifactType", t));
        }
        reply = reply.header(
            LINK,
            next_link(&format!("/v2/{repo}/referrers/{subject}"), &pairs),
        );
    }
    Ok(reply.bytes(OCI_INDEX, body))
}
