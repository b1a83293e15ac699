//! The node's Prometheus metrics, served at `/metrics`: what the HTTP server counts as requests
//! flow ([`Metrics`]: requests by route, method and status, request and response body bytes,
//! pull latency) and what is read from the store and the status model at scrape time
//! ([`NodeValues`]: sync lag and bytes, outbox depth, storage, GC, evictions, children).
//!
//! Every label comes from a small fixed set ([`RouteLabel`], the HTTP method, the status code),
//! never from a path or a repository name, so the number of series stays bounded whatever
//! clients send. Encoding is the Prometheus org's `prometheus-client` crate, in the Prometheus
//! text format 0.0.4 or, when the scraper asks for it (Prometheus does), OpenMetrics 1.0
//! ([`Format`]). Every name starts with `connected_registry_`.

mod node;

use std::time::Duration;

use hyper::{Method, StatusCode};
use prometheus_client::encoding::{prometheus_text, text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub use node::NodeValues;

/// The prefix of every metric name.
pub const PREFIX: &str = "connected_registry";

/// Upper bounds (seconds) of the pull latency buckets: a LAN pull takes a millisecond to a few
/// seconds.
const PULL_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Which endpoint a request went to: the `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    Base,
    Catalog,
    Tags,
    Manifest,
    Blob,
    Upload,
    Referrers,
    Token,
    Acr,
    Metrics,
    Health,
    NotFound,
}

impl RouteLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::Base => "base",
            RouteLabel::Catalog => "catalog",
            RouteLabel::Tags => "tags",
            RouteLabel::Manifest => "manifest",
            RouteLabel::Blob => "blob",
            RouteLabel::Upload => "upload",
            RouteLabel::Referrers => "referrers",
            RouteLabel::Token => "token",
            RouteLabel::Acr => "acr",
            RouteLabel::Metrics => "metrics",
            RouteLabel::Health => "health",
            RouteLabel::NotFound => "not_found",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    kind: &'static str,
}

type PullHistograms = Family<PullLabels, Histogram, fn() -> Histogram>;

/// The metrics counted as requests are answered. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    received: Counter,
    sent: Counter,
    pulls: PullHistograms,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status code",
            requests.clone(),
        );
        let received = Counter::default();
        registry.register_with_unit(
            "http_request_body",
            "Request body bytes received (pushed blobs and manifests, forms, child reports)",
            Unit::Bytes,
            received.clone(),
        );
        let sent = Counter::default();
        registry.register_with_unit(
            "http_response_body",
            "Response body bytes sent",
            Unit::Bytes,
            sent.clone(),
        );
        let pulls: PullHistograms = Family::new_with_constructor(|| Histogram::new(PULL_BUCKETS));
        // Both series exist from the start, so a rate over them never begins with a gap.
        for kind in ["manifest", "blob"] {
            let _ = pulls.get_or_create(&PullLabels { kind });
        }
        registry.register_with_unit(
            "pull_duration",
            "Time to the response headers of manifest and blob GETs that succeeded, by kind",
            Unit::Seconds,
            pulls.clone(),
        );
        Metrics {
            registry,
            requests,
            received,
            sent,
            pulls,
        }
    }

    /// Count one answered request; a successful manifest or blob `GET` also records its
    /// latency (`elapsed`, up to the response headers).
    pub fn observe(
        &self,
        route: RouteLabel,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            route: route.as_str(),
            method: method_label(method),
            status: status.as_u16(),
        };
        self.requests.get_or_create(&labels).inc();
        let pull = matches!(route, RouteLabel::Manifest | RouteLabel::Blob)
            && method == Method::GET
            && (status.is_success() || status.is_redirection());
        if pull {
            self.pulls
                .get_or_create(&PullLabels {
                    kind: route.as_str(),
                })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// The counter of request body bytes (the API adds each chunk it reads).
    pub fn received_bytes(&self) -> Counter {
        self.received.clone()
    }

    /// The counter of response body bytes (the server adds each frame as it is sent).
    pub fn sent_bytes(&self) -> Counter {
        self.sent.clone()
    }

    /// The exposition of these metrics and `node`'s, in `format`.
    pub fn encode(&self, node: &NodeValues, format: Format) -> Result<String, std::fmt::Error> {
        let scraped = node.registry();
        let mut out = String::new();
        match format {
            Format::Prometheus => {
                prometheus_text::encode(&mut out, &self.registry)?;
                prometheus_text::encode(&mut out, &scraped)?;
            }
            Format::OpenMetrics => {
                text::encode_registry(&mut out, &self.registry)?;
                text::encode_registry(&mut out, &scraped)?;
                text::encode_eof(&mut out)?;
            }
        }
        Ok(out)
    }
}

/// The `method` label: the methods the registry answers, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The exposition format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (`text/plain`), for any scraper that does not ask for
    /// OpenMetrics (curl, older tools).
    Prometheus,
    /// OpenMetrics 1.0 text, which Prometheus asks for first in its `Accept` header.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` names it, else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_pulls_are_counted_with_bounded_labels() {
        let metrics = Metrics::new();
        let ms = Duration::from_millis(3);
        metrics.observe(RouteLabel::Manifest, &Method::GET, StatusCode::OK, ms);
        metrics.observe(RouteLabel::Blob, &Method::GET, StatusCode::NOT_FOUND, ms);
        metrics.observe(RouteLabel::Blob, &Method::HEAD, StatusCode::OK, ms);
        let odd = Method::from_bytes(b"BREW").unwrap();
        metrics.observe(RouteLabel::NotFound, &odd, StatusCode::NOT_FOUND, ms);
        metrics.received_bytes().inc_by(7);
        let text = metrics
            .encode(&NodeValues::default(), Format::Prometheus)
            .unwrap();
        for line in [
            r#"connected_registry_http_requests_total{route="manifest",method="GET",status="200"} 1"#,
            r#"connected_registry_http_requests_total{route="not_found",method="other",status="404"} 1"#,
            r#"connected_registry_pull_duration_seconds_count{kind="manifest"} 1"#,
            r#"connected_registry_pull_duration_seconds_count{kind="blob"} 0"#,
            r#"connected_registry_pull_duration_seconds_bucket{kind="manifest",le="0.005"} 1"#,
            "connected_registry_http_request_body_bytes_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let open = metrics
            .encode(&NodeValues::default(), Format::OpenMetrics)
            .unwrap();
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert_eq!(open.matches("# EOF").count(), 1);
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
