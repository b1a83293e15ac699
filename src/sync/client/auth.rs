//! Authentication at the parent: the sync token as Basic credentials, and the docker token flow
//! (`WWW-Authenticate: Bearer realm=…` → `GET realm?service=…&scope=…` → bearer token, cached per
//! scope until shortly before it expires).
//!
//! It lives apart from the request loop because challenge parsing is the one place where the
//! parent's text drives control flow character by character; keeping it here, with its own
//! tests against garbage, keeps the request code short.

use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};

use super::{error_detail, read_body, read_whole, BodyError, ParentClient, Req, SyncError};

pub(super) struct CachedToken {
    pub(super) token: String,
    pub(super) valid_until: Instant,
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub(super) enum Auth<'a> {
    /// Basic with the sync token, when there is one.
    Basic,
    Bearer(&'a str),
    /// Nothing: a redirect target on another host never sees the sync token.
    Anonymous,
}

impl ParentClient {
    /// Send `req` with the sync token: Basic first (or a cached bearer token), then, on a
    /// `Bearer` challenge, a token from the realm and one more try. A 401/403 that persists is
    /// [`SyncError::AuthenticationFailed`].
    pub(super) async fn send(&self, req: &Req) -> Result<Response, SyncError> {
        let mut fresh: Option<String> = None;
        loop {
            let token = fresh.clone().or_else(|| self.cached_token(&req.scope));
            let auth = match token.as_deref() {
                Some(t) => Auth::Bearer(t),
                None => Auth::Basic,
            };
            let resp = self.send_retrying(req, auth).await?;
            let status = resp.status();
            if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
                return Ok(resp);
            }
            if fresh.is_none() {
                if let Some(challenge) = bearer_challenge(resp.headers()) {
                    drop(resp);
                    self.forget_token(&req.scope);
                    fresh = Some(self.fetch_token(&challenge, &req.scope).await?);
                    continue;
                }
            }
            let mut resp = resp;
            let body = read_whole(&mut resp, 64 << 10).await.unwrap_or_default();
            return Err(SyncError::AuthenticationFailed(format!(
                "{} answered {status}{}",
                req.describe(),
                error_detail(&body)
            )));
        }
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(scope)
            .filter(|t| t.valid_until > Instant::now())
            .map(|t| t.token.clone())
    }

    fn forget_token(&self, scope: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(scope);
    }

    /// The docker token flow: `GET realm?service=…&scope=…` with the sync token as Basic
    /// credentials; the token is cached under `cache_key` until shortly before it expires.
    async fn fetch_token(
        &self,
        challenge: &Challenge,
        cache_key: &str,
    ) -> Result<String, SyncError> {
        let realm = challenge.param("realm").ok_or_else(|| {
            SyncError::AuthenticationFailed("Bearer challenge without a realm".into())
        })?;
        let mut url = self.origin.join(realm).map_err(|e| {
            SyncError::AuthenticationFailed(format!("invalid token realm {realm:?}: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https")
            || (self.origin.scheme() == "https" && url.scheme() != "https")
        {
            return Err(SyncError::AuthenticationFailed(format!(
                "refusing to send the sync token to the realm {realm:?}"
            )));
        }
        let scopes: Vec<&str> = challenge
            .param("scope")
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        if challenge.param("service").is_some() || !scopes.is_empty() {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        let req = Req::new(Method::GET, url, "");
        let mut resp = self.send_retrying(&req, Auth::Basic).await?;
        let status = resp.status();
        let body = match read_body(&mut resp, 1 << 20).await {
            Ok(body) => body,
            Err(BodyError::TooLarge(_)) => {
                return Err(SyncError::Protocol("the token answer is too large".into()))
            }
            Err(BodyError::Transient(why) | BodyError::TooSlow(why)) => {
                return Err(SyncError::Transfer(format!("token request: {why}")))
            }
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(SyncError::AuthenticationFailed(format!(
                "the token service answered {status}{}",
                error_detail(&body)
            )));
        }
        if !status.is_success() {
            return Err(SyncError::AuthenticationFailed(format!(
                "the token service answered {status}{}",
                error_detail(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| SyncError::Protocol(format!("invalid token answer: {e}")))?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                SyncError::AuthenticationFailed("the token service sent no token".into())
            })?;
        // Docker's default lifetime is 60 s; stop using a token a little before it expires.
        let lifetime = answer.expires_in.unwrap_or(60).min(24 * 3600);
        let valid_for = lifetime.saturating_sub((lifetime / 10).max(5));
        if valid_for > 0 {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.retain(|_, t| t.valid_until > Instant::now());
            tokens.insert(
                cache_key.to_owned(),
                CachedToken {
                    token: token.clone(),
                    valid_until: Instant::now() + Duration::from_secs(valid_for),
                },
            );
        }
        Ok(token)
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    scheme: String,
    /// Parameter names lowercased, values unquoted.
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The first `Bearer` challenge among the `WWW-Authenticate` headers.
fn bearer_challenge(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
}

/// Parse a `WWW-Authenticate` value (RFC 9110 §11.6.1): one or more challenges, each a scheme
/// and comma-separated `name=value` parameters, values as tokens or quoted strings (which may
/// hold commas, as docker scopes do).
pub(crate) fn parse_challenges(value: &str) -> Vec<Challenge> {
    let chars: Vec<char> = value.chars().collect();
    let mut p = Cursor { s: &chars, i: 0 };
    let mut out = Vec::new();
    loop {
        p.skip(|c| c.is_whitespace() || c == ',');
        if p.done() {
            return out;
        }
        let scheme = p.token();
        if scheme.is_empty() {
            p.i += 1; // junk: skip it
            continue;
        }
        let mut challenge = Challenge {
            scheme,
            params: Vec::new(),
        };
        loop {
            p.skip(char::is_whitespace);
            let save = p.i;
            let name = p.token();
            p.skip(char::is_whitespace);
            if name.is_empty() || !p.eat('=') {
                // Not a parameter: a new challenge (or a token68, which is skipped).
                p.i = save;
                if !name.is_empty() && !challenge.params.is_empty() {
                    break;
                }
                if !name.is_empty() {
                    // token68 right after the scheme: consume it.
                    p.i += name.chars().count();
                    p.skip(|c| c == '=');
                }
                break;
            }
            p.skip(char::is_whitespace);
            let value = if p.peek() == Some('"') {
                p.quoted()
            } else {
                p.value()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
            p.skip(char::is_whitespace);
            if !p.eat(',') {
                break;
            }
        }
        out.push(challenge);
    }
}

struct Cursor<'a> {
    s: &'a [char],
    i: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip(&mut self, what: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&what) {
            self.i += 1;
        }
    }

    fn take_while(&mut self, what: impl Fn(char) -> bool) -> String {
        let start = self.i;
        self.skip(what);
        self.s[start..self.i].iter().collect()
    }

    /// An RFC 9110 token.
    fn token(&mut self) -> String {
        self.take_while(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
    }

    /// An unquoted parameter value: lenient, up to the next comma or space.
    fn value(&mut self) -> String {
        self.take_while(|c| c != ',' && c != '"' && !c.is_whitespace())
    }

    /// A quoted string, with backslash escapes.
    fn quoted(&mut self) -> String {
        let mut out = String::new();
        self.i += 1; // the opening quote
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                '"' => return out,
                '\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                c => out.push(c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn parses_docker_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "Bearer");
        assert_eq!(
            params(&c[0]),
            vec![
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:samalba/my-app:pull,push"),
            ]
        );
    }

    #[test]
    fn parses_spaces_errors_escapes_and_several_challenges() {
        let c = parse_challenges(
            r#"Basic realm="Registry Realm" , Bearer  Realm = "https://p.example/acr/oauth2/token", service=p.example,scope="repository:a:pull repository:b:pull",error="insufficient_scope",error_description="say \"hi\"""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "Basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].scheme, "Bearer");
        assert_eq!(
            c[1].param("realm"),
            Some("https://p.example/acr/oauth2/token")
        );
        assert_eq!(c[1].param("service"), Some("p.example"));
        assert_eq!(
            c[1].param("scope"),
            Some("repository:a:pull repository:b:pull")
        );
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert_eq!(c[1].param("error_description"), Some(r#"say "hi""#));

        let mut headers = HeaderMap::new();
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        assert_eq!(bearer_challenge(&headers), None);
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"bearer realm="http://h/token""#),
        );
        assert_eq!(
            bearer_challenge(&headers).and_then(|c| c.param("realm").map(str::to_owned)),
            Some("http://h/token".to_owned())
        );
    }

    #[test]
    fn survives_garbage_challenges() {
        for junk in [
            "",
            ",,,",
            "Bearer",
            "Bearer realm",
            "Bearer realm=",
            "Bearer realm=\"unterminated",
            "Negotiate abc123==",
            "\"\"\"===,,, ;;; Bearer x=\"\\",
            "Bearer a=b,,c=d",
        ] {
            let _ = parse_challenges(junk);
        }
        let c = parse_challenges("Negotiate abc123==, Bearer realm=\"r\"");
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[1].param("realm"), Some("r"));
        let c = parse_challenges("Bearer realm=http://unquoted/token,service=s");
        assert_eq!(c[0].param("realm"), Some("http://unquoted/token"));
        assert_eq!(c[0].param("service"), Some("s"));
    }
}
