//! Listings: tags (`/v2/<name>/tags/list`), the catalog (`/v2/_catalog`) and referrers
//! (`/v2/<name>/referrers/<digest>`), with `n`/`last` pagination and `Link` headers.

use hyper::body::Incoming;
use hyper::header::LINK;
use hyper::{Request, StatusCode};
use serde::Serialize;

use super::response::{Reply, OCI_FILTERS_APPLIED};
use super::{query, query_value};
use crate::oci::manifest::{ReferrerDescriptor, OCI_INDEX};
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result};
use crate::store::Store;

/// Page size when the client gives none (the whole list, as distribution does, up to this).
const DEFAULT_PAGE: usize = 10_000;

struct Page {
    n: Option<usize>,
    last: Option<String>,
}

fn page(req: &Request<Incoming>) -> Result<Page> {
    let q = query(req);
    let n = query_value(&q, "n")
        .map(|n| {
            n.parse::<usize>().map_err(|_| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!("n={n:?} must be a non-negative integer"),
                )
            })
        })
        .transpose()?;
    Ok(Page {
        n,
        last: query_value(&q, "last").map(str::to_owned),
    })
}

/// Fetch one more than asked to learn whether a next page exists.
fn paginate(
    path: &str,
    page: &Page,
    fetch: impl FnOnce(usize, Option<&str>) -> Result<Vec<String>>,
) -> Result<(Vec<String>, Option<String>)> {
    let n = page.n.unwrap_or(DEFAULT_PAGE);
    let mut items = fetch(n.saturating_add(1), page.last.as_deref())?;
    let link = if items.len() > n {
        items.truncate(n);
        items.last().map(|last| {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("n", &n.to_string())
                .append_pair("last", last)
                .finish();
            format!("<{path}?{q}>; rel=\"next\"")
        })
    } else {
        None
    };
    Ok((items, link))
}

pub fn tags(store: &Store, repo: &RepositoryName, req: &Request<Incoming>) -> Result<Reply> {
    #[derive(Serialize)]
    struct TagList<'a> {
        name: &'a str,
        tags: Vec<String>,
    }
    let page = page(req)?;
    let (tags, link) = paginate(&format!("/v2/{repo}/tags/list"), &page, |n, last| {
        store.list_tags(repo, Some(n), last)
    })?;
    Ok(with_link(Reply::new(StatusCode::OK), link).json(&TagList {
        name: repo.as_str(),
        tags,
    }))
}

pub fn catalog(store: &Store, req: &Request<Incoming>) -> Result<Reply> {
    #[derive(Serialize)]
    struct Catalog {
        repositories: Vec<String>,
    }
    let page = page(req)?;
    let (repositories, link) = paginate("/v2/_catalog", &page, |n, last| {
        store.list_repositories(Some(n), last)
    })?;
    Ok(with_link(Reply::new(StatusCode::OK), link).json(&Catalog { repositories }))
}

pub fn referrers(
    store: &Store,
    repo: &RepositoryName,
    digest: &str,
    req: &Request<Incoming>,
) -> Result<Reply> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Index {
        schema_version: u32,
        media_type: &'static str,
        manifests: Vec<ReferrerDescriptor>,
    }
    let subject: Digest = digest.parse()?;
    let q = query(req);
    let artifact_type = query_value(&q, "artifactType");
    let manifests = store.referrers(repo, &subject, artifact_type)?;
    let body = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests,
    })
    .expect("index serialises");
    let mut reply = Reply::new(StatusCode::OK);
    if artifact_type.is_some() {
        reply = reply.header(OCI_FILTERS_APPLIED, "artifactType");
    }
    Ok(reply.bytes(OCI_INDEX, body))
}

fn with_link(reply: Reply, link: Option<String>) -> Reply {
    match link {
        Some(link) => reply.header(LINK, link),
        None => reply,
    }
}
