//! Bearer tokens of the docker token flow: short-lived JWTs (HS256, with a key that lives only in
//! this process) that name the token they were issued to and carry the access they grant, in
//! the docker shape `access: [{type, name, actions}]`.
//!
//! A JWT proves who asked and what was granted then; every request is still checked against the
//! token's *current* permissions, so a token disabled or removed stops working at once.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// How long an issued bearer token is valid.
pub const LIFETIME_SECS: u64 = 300;
/// Most scopes a token request may name (each one is checked against the token's actions).
pub const MAX_SCOPES: usize = 64;

const ISSUER: &str = "connected-registry";

/// One granted (or requested) scope, as docker spells it: `repository:apps/web:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// Parse one docker scope (`type:name:actions`; the name may itself hold `:` for a
    /// registry host with a port). `None` for anything else.
    pub fn parse(scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() || actions.is_empty() {
            return None;
        }
        Some(Access {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions.split(',').map(str::to_owned).collect(),
        })
    }

    /// The scope string for this access.
    pub fn scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }

    pub fn allows(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action || a == "*")
    }
}

/// Scopes from a token request: several `scope` parameters, each possibly space-separated.
pub fn parse_scopes<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<Access>, String> {
    let mut out = Vec::new();
    for scope in values.flat_map(|v| v.split(' ')).filter(|s| !s.is_empty()) {
        if out.len() == MAX_SCOPES {
            return Err(format!("at most {MAX_SCOPES} scopes per token request"));
        }
        let access = Access::parse(scope).ok_or_else(|| {
            format!(
                "invalid scope {:?}: expected type:name:actions",
                short(scope)
            )
        })?;
        out.push(access);
    }
    Ok(out)
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(100) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The token name; empty for an anonymous pull token.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<Access>,
}

/// Issues and checks this node's bearer tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Default for Signer {
    fn default() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.validate_aud = false;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Signer {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
        }
    }
}

impl Signer {
    /// A signed token for `subject` granting `access`, valid for [`LIFETIME_SECS`].
    pub fn issue(&self, subject: &str, service: &str, access: Vec<Access>) -> String {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let mut jti = [0u8; 16];
        OsRng.fill_bytes(&mut jti);
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: subject.to_owned(),
            aud: service.to_owned(),
            exp: now + LIFETIME_SECS,
            nbf: now.saturating_sub(5),
            iat: now,
            jti: hex::encode(jti),
            access,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of a token this node issued that has not expired.
    pub fn check(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse() {
        let a = Access::parse("repository:apps/web:pull,push").unwrap();
        assert_eq!(a.kind, "repository");
        assert_eq!(a.name, "apps/web");
        assert_eq!(a.actions, ["pull", "push"]);
        assert_eq!(a.scope(), "repository:apps/web:pull,push");
        let a = Access::parse("repository:host:5000/x:pull").unwrap();
        assert_eq!(a.name, "host:5000/x");
        assert!(Access::parse("registry:catalog:*")
            .unwrap()
            .allows("anything"));
        for bad in [
            "",
            "repository",
            "repository:x",
            "repository::pull",
            ":x:pull",
        ] {
            assert!(Access::parse(bad).is_none(), "{bad}");
        }
        let all =
            parse_scopes(["repository:a:pull repository:b:push", "registry:catalog:*"].into_iter())
                .unwrap();
        assert_eq!(all.len(), 3);
        let many = vec!["repository:a:pull"; MAX_SCOPES + 1].join(" ");
        assert!(parse_scopes([many.as_str()].into_iter()).is_err());
    }

    #[test]
    fn tokens_verify_only_when_issued_here_and_unexpired() {
        let signer = Signer::default();
        let access = vec![Access::parse("repository:a:pull").unwrap()];
        let token = signer.issue("line1", "svc", access.clone());
        let claims = signer.check(&token).unwrap();
        assert_eq!(claims.sub, "line1");
        assert_eq!(claims.access, access);
        assert!(Signer::default().check(&token).is_none(), "another key");
        let mut tampered = token.clone();
        tampered.pop();
        assert!(signer.check(&tampered).is_none());
        assert!(signer.check("not.a.jwt").is_none());
        assert!(signer.check("").is_none());
    }
}
