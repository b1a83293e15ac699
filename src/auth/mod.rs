//! Who is asking, and may they? Client tokens and children's sync tokens from the configuration
//! become an [`Authenticator`] that turns a request's `Authorization` header (Basic with a
//! token's name and password, or a Bearer JWT from the docker token flow) into an [`Identity`],
//! and answers whether that identity may perform one ACR action ([`Decision`]).
//!
//! It knows nothing of HTTP routes: the API decides which action a request needs. Verification
//! is cheap on the hot path (a cached MAC compare for Basic, an HMAC for Bearer); the slow
//! argon2 check runs at most twice at once, off the async threads, and a source that keeps
//! failing is refused for a while without touching anyone else.

pub mod jwt;
pub mod password;
mod scrape;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::config::{Action, Config, GatewayAction, RepositoryAction, TokenConfig, TokenStatus};
use crate::oci::{Error, ErrorCode, Result};
use jwt::Access;

/// Failed logins one source may make per [`FAILED_LOGIN_WINDOW`] before it is refused.
pub const MAX_FAILED_LOGINS: u32 = 10;
pub const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at once; past this, expired entries are dropped, then the oldest.
const MAX_TRACKED_SOURCES: usize = 10_000;
/// Password hashes checked at once (each takes ~19 MiB and tens of milliseconds).
const CONCURRENT_VERIFICATIONS: usize = 2;

/// One configured token, parsed.
#[derive(Debug, PartialEq)]
pub struct Token {
    pub name: String,
    password_hash: String,
    enabled: bool,
    actions: Vec<Action>,
}

impl Token {
    fn from_config(t: &TokenConfig) -> Token {
        Token {
            name: t.name.clone(),
            password_hash: t.password_hash.clone(),
            enabled: t.status == TokenStatus::Enabled,
            // Validated with the configuration; an unparsable action grants nothing.
            actions: t.actions.iter().filter_map(|a| a.parse().ok()).collect(),
        }
    }

    pub fn allows_repository(&self, repository: &str, action: RepositoryAction) -> bool {
        self.actions.iter().any(|a| match a {
            Action::Repository { pattern, action: a } => {
                *a == action && pattern.matches(repository)
            }
            Action::Gateway { .. } => false,
        })
    }

    pub fn allows_gateway(&self, child: &str, action: GatewayAction) -> bool {
        self.actions.iter().any(|a| match a {
            Action::Gateway {
                child: c,
                action: a,
            } => *a == action && (c == child || c == "*"),
            Action::Repository { .. } => false,
        })
    }

    /// The children whose gateway actions this token holds.
    pub fn gateways(&self, action: GatewayAction) -> impl Iterator<Item = &str> {
        self.actions.iter().filter_map(move |a| match a {
            Action::Gateway { child, action: a } if *a == action => Some(child.as_str()),
            _ => None,
        })
    }
}

/// What a request without credentials may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousAccess {
    /// Everything: a node on loopback with no tokens configured (a developer's registry).
    Everything,
    /// Pull and list every repository (`anonymousPull: true`).
    Pull,
    None,
}

/// The tokens of one configuration.
struct TokenTable {
    tokens: HashMap<String, Arc<Token>>,
    anonymous: AnonymousAccess,
    /// `metrics.anonymous`: `/metrics` is open without credentials.
    metrics_anonymous: bool,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous(AnonymousAccess),
    Token(Arc<Token>),
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub principal: Principal,
    /// For a bearer token: the access it was issued with (checked on top of the token's own
    /// permissions). `None` for Basic credentials and anonymous requests.
    pub bearer_access: Option<Vec<Access>>,
}

/// The answer to "may this identity do that?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// No credentials (or a bearer token without this scope) where some would do: answer 401
    /// with a challenge for the scope so the client logs in or fetches a wider token.
    Challenge,
    /// Credentials that lack the permission: 403 naming it.
    Denied,
}

impl Identity {
    pub fn name(&self) -> Option<&str> {
        match &self.principal {
            Principal::Token(t) => Some(&t.name),
            Principal::Anonymous(_) => None,
        }
    }

    /// Whether the principal itself holds `action` on `repository` (ignoring a bearer scope).
    pub fn holds(&self, repository: &str, action: RepositoryAction) -> bool {
        match &self.principal {
            Principal::Anonymous(AnonymousAccess::Everything) => true,
            Principal::Anonymous(AnonymousAccess::Pull) => matches!(
                action,
                RepositoryAction::ContentRead | RepositoryAction::MetadataRead
            ),
            Principal::Anonymous(AnonymousAccess::None) => false,
            Principal::Token(t) => t.allows_repository(repository, action),
        }
    }

    pub fn repository(&self, repository: &str, action: RepositoryAction) -> Decision {
        if !self.holds(repository, action) {
            return self.refusal();
        }
        match &self.bearer_access {
            Some(access) => {
                let wanted = docker_action(action);
                let scoped = access
                    .iter()
                    .any(|a| a.kind == "repository" && a.name == repository && a.allows(wanted));
                if scoped {
                    Decision::Allowed
                } else {
                    Decision::Challenge
                }
            }
            None => Decision::Allowed,
        }
    }

    /// May list the catalog (filtered by [`Identity::holds`] `metadata/read`).
    pub fn catalog(&self) -> Decision {
        match (&self.principal, &self.bearer_access) {
            (Principal::Anonymous(AnonymousAccess::None), _) => Decision::Challenge,
            (_, Some(access))
                if !access
                    .iter()
                    .any(|a| a.kind == "registry" && a.name == "catalog") =>
            {
                Decision::Challenge
            }
            _ => Decision::Allowed,
        }
    }

    pub fn gateway(&self, child: &str, action: GatewayAction) -> Decision {
        match &self.principal {
            Principal::Anonymous(AnonymousAccess::Everything) => Decision::Allowed,
            Principal::Token(t) if t.allows_gateway(child, action) => Decision::Allowed,
            _ => self.refusal(),
        }
    }

    /// Any credentials at all, an anonymous bearer token, or an open node. `GET /v2/` asks
    /// for this: clients (docker, skopeo, containerd) decide from its answer whether to send
    /// their credentials at all, so a node with tokens challenges there even when anonymous
    /// pulls are allowed (they then fetch an anonymous token).
    pub fn authenticated(&self) -> Decision {
        match (&self.principal, &self.bearer_access) {
            (Principal::Anonymous(AnonymousAccess::Everything), _) => Decision::Allowed,
            (Principal::Anonymous(_), None) => Decision::Challenge,
            _ => Decision::Allowed,
        }
    }

    fn refusal(&self) -> Decision {
        match self.principal {
            Principal::Anonymous(_) => Decision::Challenge,
            Principal::Token(_) => Decision::Denied,
        }
    }
}

/// The docker action that carries an ACR repository action in a bearer token's scope.
pub fn docker_action(action: RepositoryAction) -> &'static str {
    match action {
        RepositoryAction::ContentRead | RepositoryAction::MetadataRead => "pull",
        RepositoryAction::ContentWrite | RepositoryAction::MetadataWrite => "push",
        RepositoryAction::ContentDelete => "delete",
    }
}

/// Turns credentials into identities for the current configuration's tokens.
pub struct Authenticator {
    table: RwLock<Arc<TokenTable>>,
    verified: password::VerifiedCache,
    signer: jwt::Signer,
    verifications: tokio::sync::Semaphore,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Counts the configurations that changed access: what holds an identity for long (a
    /// change-feed stream) lets it go when this moves, and the client authenticates again.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Authenticator {
    /// `loopback`: the node listens only on a loopback address.
    pub fn new(config: &Config, loopback: bool) -> Authenticator {
        let auth = Authenticator {
            table: RwLock::new(Arc::new(TokenTable {
                tokens: HashMap::new(),
                anonymous: AnonymousAccess::None,
                metrics_anonymous: false,
            })),
            verified: password::VerifiedCache::default(),
            signer: jwt::Signer::default(),
            verifications: tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS),
            failures: Mutex::new(HashMap::new()),
            generation: tokio::sync::watch::Sender::new(0),
        };
        auth.reconfigure(config, loopback);
        auth
    }

    /// Take the tokens (and anonymous access) of a new configuration; effective for the next
    /// request, including requests that carry bearer tokens issued before.
    pub fn reconfigure(&self, config: &Config, loopback: bool) {
        let tokens: HashMap<String, Arc<Token>> = config
            .client_tokens
            .iter()
            .chain(&config.sync_tokens)
            .map(|t| (t.name.clone(), Arc::new(Token::from_config(t))))
            .collect();
        let anonymous = anonymous_access(config, loopback);
        self.verified.retain(|name| tokens.contains_key(name));
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let access_changed = table.tokens != tokens || table.anonymous != anonymous;
        *table = Arc::new(TokenTable {
            tokens,
            anonymous,
            metrics_anonymous: config.metrics_anonymous(),
        });
        drop(table);
        if access_changed {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Changes each time a configuration changes who may do what (tokens added, disabled,
    /// deleted or changed; anonymous access).
    pub fn reconfigured(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn table(&self) -> Arc<TokenTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn signer(&self) -> &jwt::Signer {
        &self.signer
    }

    /// The identity behind an `Authorization` header value (`None`: anonymous). Wrong
    /// credentials are a 401 `UNAUTHORIZED`; a source over its failed-login budget is a 429.
    pub async fn identify(&self, authorization: Option<&str>, source: IpAddr) -> Result<Identity> {
        let table = self.table();
        let Some(value) = authorization else {
            return Ok(Identity {
                principal: Principal::Anonymous(table.anonymous),
                bearer_access: None,
            });
        };
        let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let (name, password) = decode_basic(credentials)?;
            let token = self.check_password(&name, &password, source).await?;
            return Ok(Identity {
                principal: Principal::Token(token),
                bearer_access: None,
            });
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            let claims = self.signer.check(credentials).ok_or_else(|| {
                unauthorized("the bearer token is invalid or expired: log in again")
            })?;
            let principal = if claims.sub.is_empty() {
                Principal::Anonymous(table.anonymous)
            } else {
                Principal::Token(enabled_token(&table, &claims.sub)?)
            };
            return Ok(Identity {
                principal,
                bearer_access: Some(claims.access),
            });
        }
        Err(unauthorized(
            "unsupported Authorization scheme: use Basic or Bearer",
        ))
    }

    /// Check a name and password (Basic credentials, or the token endpoint's login).
    pub async fn check_password(
        &self,
        name: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<Arc<Token>> {
        let table = self.table();
        self.check_source(source)?;
        let token = table.tokens.get(name).cloned();
        let hash = token
            .as_ref()
            .map_or(password::decoy_hash(), |t| t.password_hash.as_str())
            .to_owned();
        let fast = token.is_some() && self.verified.hit(name, &hash, password);
        let matches = fast || {
            let _permit = self
                .verifications
                .acquire()
                .await
                .map_err(|_| Error::new(ErrorCode::Unavailable, "the server is stopping"))?;
            let (h, p) = (hash.clone(), password.to_owned());
            tokio::task::spawn_blocking(move || password::verify(&h, &p))
                .await
                .unwrap_or(false)
        };
        match token {
            Some(token) if matches => {
                if !fast {
                    self.verified.remember(name, &hash, password);
                }
                if !token.enabled {
                    return Err(unauthorized(format!("token {name:?} is disabled")));
                }
                Ok(token)
            }
            _ => {
                self.record_failure(source);
                Err(unauthorized("invalid username or password"))
            }
        }
    }

    /// The table's anonymous access (for the token endpoint's anonymous tokens).
    pub fn anonymous(&self) -> AnonymousAccess {
        self.table().anonymous
    }

    /// The token of a bearer subject, if it still exists and is enabled.
    pub fn token(&self, name: &str) -> Result<Arc<Token>> {
        enabled_token(&self.table(), name)
    }

    fn check_source(&self, source: IpAddr) -> Result<()> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((since, count)) = failures.get(&source) {
            let elapsed = since.elapsed();
            if *count >= MAX_FAILED_LOGINS && elapsed < FAILED_LOGIN_WINDOW {
                let wait = (FAILED_LOGIN_WINDOW - elapsed).as_secs() + 1;
                return Err(Error::new(
                    ErrorCode::TooManyRequests,
                    format!(
                        "too many failed logins from {source}: {count} in the last {} s; try again in {wait} s",
                        FAILED_LOGIN_WINDOW.as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn record_failure(&self, source: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED_SOURCES && !failures.contains_key(&source) {
            failures.retain(|_, (since, _)| since.elapsed() < FAILED_LOGIN_WINDOW);
            if failures.len() >= MAX_TRACKED_SOURCES {
                if let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| *k)
                {
                    failures.remove(&oldest);
                }
            }
        }
        let entry = failures.entry(source).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILED_LOGIN_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        if entry.1 == MAX_FAILED_LOGINS {
            tracing::warn!(%source, "too many failed logins; refusing this source for a minute");
        }
    }
}

/// Anonymous access for a configuration: everything on a token-less loopback node, pull where
/// configured, else nothing.
pub fn anonymous_access(config: &Config, loopback: bool) -> AnonymousAccess {
    if config.anonymous_pull == Some(true) {
        AnonymousAccess::Pull
    } else if loopback && !config.has_tokens() && config.anonymous_pull.is_none() {
        AnonymousAccess::Everything
    } else {
        AnonymousAccess::None
    }
}

fn enabled_token(table: &TokenTable, name: &str) -> Result<Arc<Token>> {
    match table.tokens.get(name) {
        Some(t) if t.enabled => Ok(t.clone()),
        Some(_) => Err(unauthorized(format!("token {name:?} is disabled"))),
        None => Err(unauthorized(format!("token {name:?} no longer exists"))),
    }
}

fn unauthorized(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::Unauthorized, message)
}

/// `name:password` from Basic credentials.
pub(crate) fn decode_basic(credentials: &str) -> Result<(String, String)> {
    let bad = || unauthorized("malformed Basic credentials");
    if credentials.len() > 4096 {
        return Err(bad());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (name, password) = text.split_once(':').ok_or_else(bad)?;
    Ok((name.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(actions: &[&str], status: TokenStatus) -> (Config, String) {
        let password = password::generate();
        let config = Config {
            client_tokens: vec![TokenConfig {
                name: "line1".into(),
                password_hash: password::hash(&password).unwrap(),
                status,
                actions: actions.iter().map(|s| s.to_string()).collect(),
            }],
            ..Config::default()
        };
        (config, password)
    }

    fn basic(name: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
        format!("Basic {encoded}")
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn basic_bearer_and_reconfiguration() {
        let (cfg, pw) = config(&["repositories/apps/*/content/read"], TokenStatus::Enabled);
        let auth = Authenticator::new(&cfg, true);
        let anon = auth.identify(None, HERE).await.unwrap();
        assert_eq!(
            anon.repository("apps/a", RepositoryAction::ContentRead),
            Decision::Challenge
        );
        let id = auth
            .identify(Some(&basic("line1", &pw)), HERE)
            .await
            .unwrap();
        assert_eq!(
            id.repository("apps/a", RepositoryAction::ContentRead),
            Decision::Allowed
        );
        assert_eq!(
            id.repository("apps/a", RepositoryAction::ContentWrite),
            Decision::Denied
        );
        assert_eq!(
            id.repository("other", RepositoryAction::ContentRead),
            Decision::Denied
        );
        let e = auth
            .identify(Some(&basic("line1", "wrong")), HERE)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        let e = auth
            .identify(Some(&basic("nobody", &pw)), HERE)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unauthorized);

        let jwt = auth.signer().issue(
            "line1",
            "svc",
            vec![Access::parse("repository:apps/a:pull").unwrap()],
        );
        let id = auth
            .identify(Some(&format!("Bearer {jwt}")), HERE)
            .await
            .unwrap();
        assert_eq!(
            id.repository("apps/a", RepositoryAction::ContentRead),
            Decision::Allowed
        );
        assert_eq!(
            id.repository("apps/b", RepositoryAction::ContentRead),
            Decision::Challenge
        );
        assert_eq!(id.catalog(), Decision::Challenge);

        // Disabled: Basic and the bearer token issued before both stop at once, and what
        // holds an identity for long is told (only when access changed).
        let reconfigured = auth.reconfigured();
        auth.reconfigure(&cfg, true);
        assert!(
            !reconfigured.has_changed().unwrap(),
            "the same tokens again"
        );
        let (mut disabled, _) = config(&[], TokenStatus::Disabled);
        disabled.client_tokens[0].password_hash = cfg.client_tokens[0].password_hash.clone();
        auth.reconfigure(&disabled, true);
        assert!(reconfigured.has_changed().unwrap(), "a token disabled");
        for header in [basic("line1", &pw), format!("Bearer {jwt}")] {
            let e = auth.identify(Some(&header), HERE).await.unwrap_err();
            assert!(e.to_string().contains("disabled"), "{e}");
        }
        auth.reconfigure(&Config::default(), true);
        let e = auth
            .identify(Some(&format!("Bearer {jwt}")), HERE)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no longer exists"), "{e}");
        // No tokens on loopback: open; elsewhere closed.
        let anon = auth.identify(None, HERE).await.unwrap();
        assert_eq!(
            anon.repository("x", RepositoryAction::ContentWrite),
            Decision::Allowed
        );
        auth.reconfigure(&Config::default(), false);
        let anon = auth.identify(None, HERE).await.unwrap();
        assert_eq!(
            anon.repository("x", RepositoryAction::ContentRead),
            Decision::Challenge
        );
    }

    #[tokio::test]
    async fn a_source_that_keeps_failing_is_refused_and_others_are_not() {
        let (cfg, pw) = config(&["repositories/*/content/read"], TokenStatus::Enabled);
        let auth = Authenticator::new(&cfg, true);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILED_LOGINS {
            let e = auth
                .identify(Some(&basic("line1", "bad")), HERE)
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::Unauthorized);
        }
        let e = auth
            .identify(Some(&basic("line1", &pw)), HERE)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::TooManyRequests);
        assert!(e.to_string().contains("too many failed logins"), "{e}");
        auth.identify(Some(&basic("line1", &pw)), other)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn malformed_headers_are_401s() {
        let auth = Authenticator::new(&Config::default(), false);
        for h in [
            "Basic",
            "Basic !!!",
            "Basic Zm9v",
            "Bearer",
            "Bearer x.y.z",
            "Digest x",
            "",
        ] {
            let e = auth.identify(Some(h), HERE).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::Unauthorized, "{h}");
        }
    }
}
