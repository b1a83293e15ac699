//! The docker token endpoint (`/acr/oauth2/token`, also at ACR's `/oauth2/token`): the realm of
//! this node's `WWW-Authenticate` challenges.
//!
//! `GET` with Basic credentials (docker, podman, skopeo, oras) or `POST` with a
//! `grant_type=password` form (containerd tries that first) answers a short-lived bearer JWT
//! that grants, of the scopes asked for, exactly the actions the token holds. Without
//! credentials it answers an anonymous token where anonymous pull is allowed, else a 401.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use super::response::Reply;
use super::{header, Api};
use crate::auth::jwt::{self, Access};
use crate::auth::{AnonymousAccess, Identity, Principal};
use crate::config::RepositoryAction;
use crate::oci::{Error, ErrorCode, Result};

/// The largest `POST` form accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Whether `path` is the token endpoint.
pub(super) fn is_token_path(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "/acr/oauth2/token" | "/oauth2/token"
    )
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
}

pub(super) async fn handle(api: &Api, req: Request<Incoming>, source: IpAddr) -> Result<Reply> {
    let (params, identity) = match *req.method() {
        Method::GET => {
            let params = super::query(&req);
            let authorization = header(&req, hyper::header::AUTHORIZATION)?.map(str::to_owned);
            let identity = api.auth.identify(authorization.as_deref(), source).await?;
            (params, identity)
        }
        Method::POST => {
            let form = read_form(req, api).await?;
            let value = |k: &str| super::query_value(&form, k).unwrap_or_default().to_owned();
            match value("grant_type").as_str() {
                "password" => {}
                other => {
                    // No refresh tokens are issued here; containerd then falls back to GET.
                    return Err(Error::new(
                        ErrorCode::BadRequest,
                        format!("unsupported grant_type {other:?}: use password (or GET with Basic credentials)"),
                    ));
                }
            }
            let token = api
                .auth
                .check_password(&value("username"), &value("password"), source)
                .await?;
            let identity = Identity {
                principal: Principal::Token(token),
                bearer_access: None,
            };
            (form, identity)
        }
        ref m => {
            return Err(Error::new(
                ErrorCode::MethodNotAllowed,
                format!("method {m} is not supported on the token endpoint"),
            ))
        }
    };
    if matches!(
        identity.principal,
        Principal::Anonymous(AnonymousAccess::None)
    ) {
        return Err(Error::new(
            ErrorCode::Unauthorized,
            "credentials required: log in with a token's name and password",
        ));
    }
    let requested = jwt::parse_scopes(
        params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    )
    .map_err(|e| Error::new(ErrorCode::BadRequest, e))?;
    let granted: Vec<Access> = requested
        .into_iter()
        .filter_map(|access| grant(&identity, access))
        .collect();
    let subject = identity.name().unwrap_or_default();
    let token = api
        .auth
        .signer()
        .issue(subject, &api.realm.service, granted);
    tracing::debug!(token = subject, "bearer token issued");
    Ok(Reply::new(StatusCode::OK).json(&TokenResponse {
        access_token: token.clone(),
        token,
        expires_in: jwt::LIFETIME_SECS,
        issued_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}

/// For a scope asked for, what `identity` holds there (`None` if nothing). A repository scope
/// gets every action the token holds on that repository, not only those asked for: clients
/// that reuse one bearer token for a pull check and then a push (the oras SDK) would otherwise
/// be refused, and the token may do all of it anyway.
fn grant(identity: &Identity, mut access: Access) -> Option<Access> {
    match access.kind.as_str() {
        "repository" => {
            access.actions.clear();
            for (action, needs) in [
                ("pull", RepositoryAction::ContentRead),
                ("push", RepositoryAction::ContentWrite),
                ("delete", RepositoryAction::ContentDelete),
            ] {
                if identity.holds(&access.name, needs) {
                    access.actions.push(action.to_owned());
                }
            }
        }
        "registry" if access.name == "catalog" => access.actions = vec!["*".to_owned()],
        _ => access.actions.clear(),
    }
    (!access.actions.is_empty()).then_some(access)
}

/// The `application/x-www-form-urlencoded` body of a `POST`, bounded.
async fn read_form(req: Request<Incoming>, api: &Api) -> Result<Vec<(String, String)>> {
    let bytes = super::read_bounded(req, api, MAX_FORM_BYTES).await?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}
