//! The operational endpoints outside `/v2` and `/acr` (DESIGN.md): `/healthz` (the process
//! serves), `/readyz` (the store answers and the configuration lets someone in) for Kubernetes
//! probes, both open and cheap; and `/metrics` for Prometheus, open only when the
//! configuration says `metrics.anonymous` (or on a developer's open node), else to any client
//! or sync token. Also which route label each request counts under.

use std::net::IpAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::acr::AcrRoute;
use super::response::Reply;
use super::route::Route;
use super::{children, token, Api};
use crate::auth::Decision;
use crate::metrics::{Format, NodeValues, RouteLabel};
use crate::oci::{Error, ErrorCode, Result};

/// The longest `/readyz` waits for the data directory to answer a `stat`.
const READY_STAT_TIMEOUT: Duration = Duration::from_secs(2);

/// The endpoints this module serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpsRoute {
    Health,
    Ready,
    Metrics,
}

impl OpsRoute {
    pub(super) fn parse(path: &str) -> Option<OpsRoute> {
        match path {
            "/healthz" => Some(OpsRoute::Health),
            "/readyz" => Some(OpsRoute::Ready),
            "/metrics" => Some(OpsRoute::Metrics),
            _ => None,
        }
    }
}

/// The `route` label of a request for `path`: one of a fixed set, never the path itself.
pub fn route_label(path: &str) -> RouteLabel {
    match OpsRoute::parse(path) {
        Some(OpsRoute::Metrics) => return RouteLabel::Metrics,
        Some(OpsRoute::Health | OpsRoute::Ready) => return RouteLabel::Health,
        None => {}
    }
    if token::is_token_path(path) {
        return RouteLabel::Token;
    }
    if AcrRoute::parse(path).is_some() {
        return RouteLabel::Acr;
    }
    match Route::parse(path) {
        Route::Base => RouteLabel::Base,
        Route::Catalog => RouteLabel::Catalog,
        Route::Tags { .. } => RouteLabel::Tags,
        Route::Manifest { .. } => RouteLabel::Manifest,
        Route::Blob { .. } => RouteLabel::Blob,
        Route::UploadStart { .. } | Route::Upload { .. } => RouteLabel::Upload,
        Route::Referrers { .. } => RouteLabel::Referrers,
        Route::NotFound => RouteLabel::NotFound,
    }
}

/// Answer a request for one of these endpoints.
pub(super) async fn handle(
    api: &Api,
    route: OpsRoute,
    req: Request<Incoming>,
    source: IpAddr,
) -> Result<Reply> {
    if !super::is_read(req.method()) {
        return Err(Error::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "method {} is not supported on {}",
                req.method(),
                req.uri().path()
            ),
        ));
    }
    match route {
        OpsRoute::Health => Ok(Reply::new(StatusCode::OK).bytes("text/plain; charset=utf-8", "ok")),
        OpsRoute::Ready => Ok(ready(api).await),
        OpsRoute::Metrics => {
            if !api.auth.metrics_open() {
                let identity = api.identify(&req, source).await?;
                if identity.may_scrape_metrics() != Decision::Allowed {
                    return Err(Error::new(
                        ErrorCode::Unauthorized,
                        "authentication required: /metrics needs a client or sync token (or `metrics.anonymous: true` in the configuration)",
                    ));
                }
            }
            let format = Format::negotiate(super::header(&req, hyper::header::ACCEPT)?);
            let values = node_values(api).await;
            let text = api.metrics.encode(&values, format).map_err(|e| {
                Error::new(
                    ErrorCode::Unknown,
                    format!("encoding the metrics failed: {e}"),
                )
            })?;
            Ok(Reply::new(StatusCode::OK).bytes(format.content_type(), text))
        }
    }
}

/// `/readyz`: 200 when the metadata database answers a read, the blob directory is there and
/// the configuration in force lets someone in; else 503 naming what is wrong. The node never
/// runs a configuration that did not validate (one that does not is refused whole and the
/// last good one keeps serving, so a refusal does not make it unready).
async fn ready(api: &Api) -> Reply {
    let store = match api.store.child("readiness") {
        Ok(_) => None,
        Err(e) => Some(format!("the metadata database does not answer a read: {e}")),
    };
    let blobs = api.store.root().join("blobs");
    let data = match tokio::time::timeout(READY_STAT_TIMEOUT, tokio::fs::metadata(&blobs)).await {
        Ok(Ok(m)) if m.is_dir() => None,
        Ok(Ok(_)) => Some(format!("{} is not a directory", blobs.display())),
        Ok(Err(e)) => Some(format!(
            "the blob directory {} is not reachable: {e}",
            blobs.display()
        )),
        Err(_) => Some(format!(
            "the blob directory {} did not answer within {READY_STAT_TIMEOUT:?}",
            blobs.display()
        )),
    };
    let config = (!api.auth.admits_anyone()).then(|| {
        "no credentials are configured on a non-loopback address: every request is refused until clientTokens, a sync token or anonymousPull arrive".to_owned()
    });
    let ready = store.is_none() && data.is_none() && config.is_none();
    let check = |problem: Option<String>| problem.unwrap_or_else(|| "ok".to_owned());
    let body = json!({
        "ready": ready,
        "checks": {
            "store": check(store),
            "dataDirectory": check(data),
            "configuration": check(config),
        }
    });
    if !ready {
        tracing::debug!(%body, "not ready");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply::new(status).json(&body)
}

/// What the store and the status model say now.
async fn node_values(api: &Api) -> NodeValues {
    let (used, free) = api.storage();
    let status = api.status.snapshot();
    NodeValues {
        sync_lag_seconds: NodeValues::sync_lag(
            status.parent.is_some(),
            status.sync.last_successful_sync_end_time,
            chrono::Utc::now(),
        ),
        synced_bytes: api.store.synced_bytes_total(),
        outbox_depth: api.store.outbox_len() as u64,
        storage_used_bytes: used,
        storage_free_bytes: free,
        gc_freed_bytes: api.store.freed_bytes_total(),
        evictions: api.store.evictions_total(),
        manifest_cache: api.store.manifest_cache_usage(),
        connected_children: children::connected(api)
            .inspect_err(|e| tracing::warn!(error = %e, "listing the children for /metrics failed"))
            .ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_never_carry_the_path() {
        for (path, label) in [
            ("/metrics", RouteLabel::Metrics),
            ("/healthz", RouteLabel::Health),
            ("/readyz", RouteLabel::Health),
            ("/acr/oauth2/token", RouteLabel::Token),
            ("/oauth2/token", RouteLabel::Token),
            ("/acr/connected-registry/v1/status", RouteLabel::Acr),
            ("/acr/other", RouteLabel::NotFound),
            ("/v2/", RouteLabel::Base),
            ("/v2/_catalog", RouteLabel::Catalog),
            ("/v2/a/b/tags/list", RouteLabel::Tags),
            ("/v2/a/manifests/v1", RouteLabel::Manifest),
            ("/v2/a/blobs/sha256:00", RouteLabel::Blob),
            ("/v2/a/blobs/uploads/", RouteLabel::Upload),
            ("/v2/a/blobs/uploads/x", RouteLabel::Upload),
            ("/v2/a/referrers/sha256:00", RouteLabel::Referrers),
            ("/metrics/", RouteLabel::NotFound),
            ("/anything", RouteLabel::NotFound),
        ] {
            assert_eq!(route_label(path), label, "{path}");
        }
    }
}
