//! What the operational endpoints ask of authentication: who may scrape `/metrics` (open when
//! the configuration says `metrics.anonymous`, or on a developer's node where everything is
//! open; else any client or sync token), and whether the configuration in force lets anyone in
//! at all (`/readyz`). Kept beside the token table so a live reconfiguration changes both for
//! the next request.

use super::{AnonymousAccess, Authenticator, Decision, Identity, Principal};

impl Authenticator {
    /// Whether `/metrics` answers without credentials.
    pub fn metrics_open(&self) -> bool {
        let table = self.table();
        table.metrics_anonymous || table.anonymous == AnonymousAccess::Everything
    }

    /// Whether any request can be let in: a token is configured or anonymous access is on.
    /// `false` only for a node still waiting for its credentials (a module before its twin).
    pub fn admits_anyone(&self) -> bool {
        let table = self.table();
        !table.tokens.is_empty() || table.anonymous != AnonymousAccess::None
    }
}

impl Identity {
    /// May scrape `/metrics` when it is not open: any client or sync token. An anonymous
    /// bearer token (from `anonymousPull`) is not enough.
    pub fn may_scrape_metrics(&self) -> Decision {
        match self.principal {
            Principal::Token(_) | Principal::Anonymous(AnonymousAccess::Everything) => {
                Decision::Allowed
            }
            Principal::Anonymous(_) => Decision::Challenge,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::auth::Authenticator;
    use crate::config::{Config, MetricsConfig};

    #[test]
    fn metrics_follow_the_configuration() {
        let closed = Config::default();
        let open = Config {
            metrics: Some(MetricsConfig { anonymous: true }),
            ..Config::default()
        };
        // A token-less loopback node is open to everything, metrics included.
        let auth = Authenticator::new(&closed, true);
        assert!(auth.metrics_open());
        assert!(auth.admits_anyone());
        auth.reconfigure(&closed, false);
        assert!(!auth.metrics_open());
        assert!(!auth.admits_anyone());
        auth.reconfigure(&open, false);
        assert!(auth.metrics_open());
    }
}
