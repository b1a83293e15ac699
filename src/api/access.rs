//! Which permission each request needs, and the answer when it is missing: a 401 with the
//! docker token-flow challenge (`WWW-Authenticate: Bearer realm=…/acr/oauth2/token,service,scope`)
//! or a 403 `DENIED` naming the missing ACR action.
//!
//! The mapping lives here, beside the routes; whether an identity holds a permission is
//! `auth`'s business, and the handlers never see credentials.

use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::Method;

use super::route::Route;
use crate::auth::{docker_action, Decision, Identity};
use crate::config::{Action, GatewayAction, RepositoryAction};
use crate::oci::{Error, ErrorCode, Result};

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Need<'a> {
    /// Nothing: the request is answered with an error (or is the token endpoint) anyway.
    Nothing,
    /// Any valid credentials (`GET /v2/`, this node's status).
    Authenticated,
    /// The catalog (then filtered by `metadata/read`).
    Catalog,
    Repository(&'a str, RepositoryAction),
    /// A gateway action on some child's node-to-node endpoints.
    Gateway(&'a str, GatewayAction),
}

impl<'a> Need<'a> {
    /// The permission a `/v2` request needs.
    pub(super) fn of(route: &Route<'a>, method: &Method) -> Need<'a> {
        let read = method == Method::GET || method == Method::HEAD;
        match *route {
            Route::Base => Need::Authenticated,
            Route::Catalog => Need::Catalog,
            Route::Tags { name } if read => Need::Repository(name, RepositoryAction::MetadataRead),
            Route::Referrers { name, .. } if read => {
                Need::Repository(name, RepositoryAction::ContentRead)
            }
            Route::Manifest { name, .. } | Route::Blob { name, .. } => {
                if read {
                    Need::Repository(name, RepositoryAction::ContentRead)
                } else if method == Method::DELETE {
                    Need::Repository(name, RepositoryAction::ContentDelete)
                } else {
                    Need::Repository(name, RepositoryAction::ContentWrite)
                }
            }
            Route::UploadStart { name } | Route::Upload { name, .. } => {
                Need::Repository(name, RepositoryAction::ContentWrite)
            }
            _ => Need::Nothing,
        }
    }

    /// The docker scope a bearer token needs for this (for the challenge).
    fn scope(&self) -> Option<String> {
        match self {
            Need::Catalog => Some("registry:catalog:*".to_owned()),
            Need::Repository(name, action) => Some(match docker_action(*action) {
                "pull" => format!("repository:{name}:pull"),
                other => format!("repository:{name}:pull,{other}"),
            }),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Need::Repository(name, action) => Action::Repository {
                pattern: crate::config::tokens::RepositoryPattern::Exact((*name).to_owned()),
                action: *action,
            }
            .to_string(),
            Need::Gateway(child, action) => format!("gateway/{child}/{}", action.as_str()),
            Need::Catalog => "the catalog".to_owned(),
            Need::Authenticated | Need::Nothing => "credentials".to_owned(),
        }
    }
}

/// Check `need` for `identity`: `Ok` to go on, else the 401 or 403 to answer with.
pub(super) fn check(identity: &Identity, need: &Need<'_>) -> Result<()> {
    let decision = match need {
        Need::Nothing => Decision::Allowed,
        Need::Authenticated => identity.authenticated(),
        Need::Catalog => identity.catalog(),
        Need::Repository(name, action) => identity.repository(name, *action),
        Need::Gateway(child, action) => identity.gateway(child, *action),
    };
    match decision {
        Decision::Allowed => Ok(()),
        Decision::Challenge => Err(Error::new(
            ErrorCode::Unauthorized,
            match identity.name() {
                Some(_) => format!(
                    "the bearer token does not cover {}: fetch one that does",
                    need.describe()
                ),
                None => match need {
                    Need::Authenticated | Need::Nothing => {
                        "authentication required: log in with a token's name and password"
                            .to_owned()
                    }
                    _ => format!(
                        "authentication required: {} needs credentials",
                        need.describe()
                    ),
                },
            },
        )),
        Decision::Denied => Err(Error::new(
            ErrorCode::Denied,
            format!(
                "token {:?} lacks {}",
                identity.name().unwrap_or_default(),
                need.describe()
            ),
        )),
    }
}

/// Where clients fetch bearer tokens and what the challenge calls this registry.
#[derive(Debug, Clone)]
pub(crate) struct Realm {
    /// `service` of the challenge (the login server, or the node's name).
    pub service: String,
    /// Whether clients reach this node over TLS (for the realm's scheme).
    pub tls: bool,
}

/// The parts of a request a challenge is built from, kept before the request is consumed.
pub(super) struct ChallengeContext {
    host: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
    authority: Option<String>,
}

impl ChallengeContext {
    pub(super) fn capture(headers: &HeaderMap, uri: &hyper::Uri) -> ChallengeContext {
        // Copies, not `clone`s: a cloned value shares the connection's read buffer and would
        // keep all of it (8 KiB or more) alive while the request waits, e.g. in a long-poll.
        let owned = |name| {
            headers
                .get(name)
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        };
        ChallengeContext {
            host: owned(HOST.as_str()),
            forwarded_host: owned("x-forwarded-host"),
            forwarded_proto: owned("x-forwarded-proto"),
            authority: uri.authority().map(|a| a.to_string()),
        }
    }

    /// The `WWW-Authenticate` value for a 401 on `path` with `method`. Behind the IoT Edge API
    /// proxy, `X-Forwarded-Host`/`-Proto` name the address clients used.
    pub(super) fn challenge(&self, realm: &Realm, path: &str, method: &Method) -> String {
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(',').next().unwrap_or("").trim().to_owned())
                .filter(|s| is_host(s))
        };
        let host = text(&self.forwarded_host)
            .or_else(|| text(&self.host))
            .or_else(|| self.authority.clone().filter(|s| is_host(s)))
            .unwrap_or_else(|| realm.service.clone());
        let scheme = match text(&self.forwarded_proto).as_deref() {
            Some("https") => "https",
            Some("http") => "http",
            _ if realm.tls => "https",
            _ => "http",
        };
        let mut value = format!(
            "Bearer realm=\"{scheme}://{host}/acr/oauth2/token\",service=\"{}\"",
            realm.service
        );
        let route = Route::parse(path);
        if let Some(scope) = Need::of(&route, method).scope() {
            value.push_str(&format!(",scope=\"{scope}\""));
        }
        value
    }
}

/// A host name or address with an optional port, nothing that could break out of the quoted
/// challenge value.
fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_actions_acr_names() {
        let need = |path: &'static str, m: Method| Need::of(&Route::parse(path), &m);
        use RepositoryAction::*;
        assert_eq!(
            need("/v2/a/b/manifests/v1", Method::GET),
            Need::Repository("a/b", ContentRead)
        );
        assert_eq!(
            need("/v2/a/manifests/v1", Method::PUT),
            Need::Repository("a", ContentWrite)
        );
        assert_eq!(
            need("/v2/a/manifests/v1", Method::DELETE),
            Need::Repository("a", ContentDelete)
        );
        assert_eq!(
            need("/v2/a/blobs/uploads/", Method::POST),
            Need::Repository("a", ContentWrite)
        );
        assert_eq!(
            need("/v2/a/blobs/uploads/x", Method::GET),
            Need::Repository("a", ContentWrite)
        );
        assert_eq!(
            need("/v2/a/tags/list", Method::GET),
            Need::Repository("a", MetadataRead)
        );
        assert_eq!(need("/v2/_catalog", Method::GET), Need::Catalog);
        assert_eq!(need("/v2/", Method::GET), Need::Authenticated);
        assert_eq!(need("/v2/a/tags/list", Method::POST), Need::Nothing);
    }

    #[test]
    fn challenges_name_realm_service_and_scope() {
        let realm = Realm {
            service: "node1".into(),
            tls: false,
        };
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("reg.local:5000"));
        let ctx = ChallengeContext::capture(&headers, &"/v2/".parse().unwrap());
        assert_eq!(
            ctx.challenge(&realm, "/v2/apps/web/blobs/uploads/", &Method::POST),
            r#"Bearer realm="http://reg.local:5000/acr/oauth2/token",service="node1",scope="repository:apps/web:pull,push""#
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("gw:8000"));
        headers.insert(HOST, HeaderValue::from_static("bad\"host"));
        let ctx = ChallengeContext::capture(&headers, &"/v2/".parse().unwrap());
        assert_eq!(
            ctx.challenge(&realm, "/v2/", &Method::GET),
            r#"Bearer realm="https://gw:8000/acr/oauth2/token",service="node1""#
        );
        headers.remove("x-forwarded-host");
        let ctx = ChallengeContext::capture(&headers, &"/v2/".parse().unwrap());
        assert!(ctx
            .challenge(&realm, "/v2/", &Method::GET)
            .starts_with("Bearer realm=\"https://node1/"));
    }
}
