//! Anonymous visitor tokens the node issues itself (`POST /v1/session`): a site without logins still gets a
//! per-visitor history nobody else can read or write. A token is an HS256 JWT for a fresh random visitor id,
//! signed with the node's session secret (shared by the nodes behind one address through `secret_file`); a
//! visitor renews it with its previous token, expired or not, within `renew_within_s`, and keeps its id.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::visitor::{MIN_SECRET_BYTES, ScopeClaim, VisitorClaims};
use super::{AuthError, AuthSetupError, Scope, create_secret_file, random_hex};

/// The `kid` of session tokens (no site key may use it).
pub const SESSION_KID: &str = "edgerec-session";
/// The `iss` of session tokens.
pub const SESSION_ISSUER: &str = "edgerec-node";
/// Prefix of anonymous visitor ids, so they never collide with a site's own user ids.
pub const ANONYMOUS_PREFIX: &str = "anon-";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Issue anonymous visitor tokens at `POST /v1/session`.
    pub enabled: bool,
    /// Lifetime of one token, in seconds.
    pub ttl_s: u64,
    /// How long after its expiry a token may still be exchanged for a new one with the same visitor id.
    pub renew_within_s: u64,
    /// The signing secret (at least 32 bytes). Default: `node/session-secret` in the data folder, created on first
    /// start; nodes behind one address must share one file.
    pub secret_file: Option<PathBuf>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl_s: 3600,
            renew_within_s: 30 * 24 * 3600,
            secret_file: None,
        }
    }
}

/// A token handed to a visitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    /// The visitor id: the `user_id` and event `user` the token allows.
    pub visitor: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    /// Whether the id was kept from a previous token.
    pub renewed: bool,
}

pub struct SessionIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    renewal_check: Validation,
    ttl_s: u64,
    renew_within_s: u64,
}

impl std::fmt::Debug for SessionIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionIssuer")
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

impl SessionIssuer {
    /// Reads the secret, creating it (readable by its owner only) when the default file does not exist yet.
    pub fn open(config: &SessionConfig, node_dir: &Path) -> Result<Self, AuthSetupError> {
        if config.ttl_s == 0 {
            return Err(AuthSetupError::Config(
                "`auth.anonymous_sessions.ttl_s` must be at least 1".into(),
            ));
        }
        let path = config
            .secret_file
            .clone()
            .unwrap_or_else(|| node_dir.join("session-secret"));
        if config.secret_file.is_none() {
            create_secret_file(&path)?;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| AuthSetupError::Read {
            path: path.clone(),
            source,
        })?;
        let secret = text.trim().as_bytes().to_vec();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthSetupError::Invalid {
                path,
                message: format!("the session secret must be at least {MIN_SECRET_BYTES} bytes"),
            });
        }
        let encoding = EncodingKey::from_secret(&secret).map_err(|e| AuthSetupError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let decoding = DecodingKey::from_secret(&secret).map_err(|e| AuthSetupError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // A renewal checks everything but expiry (it is checked against the renewal window instead).
        let mut renewal_check = Validation::new(Algorithm::HS256);
        renewal_check.set_required_spec_claims(&["exp", "iat", "sub"]);
        renewal_check.set_issuer(&[SESSION_ISSUER]);
        renewal_check.validate_exp = false;
        renewal_check.validate_aud = false;
        Ok(Self {
            encoding,
            decoding,
            renewal_check,
            ttl_s: config.ttl_s,
            renew_within_s: config.renew_within_s,
        })
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// A token for a new visitor, or for the visitor of `previous` when that is one of ours, expired at most
    /// `renew_within_s` ago. A `previous` that is not ours is refused rather than silently replaced, so a client
    /// bug shows.
    pub fn issue(&self, previous: Option<&str>) -> Result<Session, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        let (visitor, renewed) = match previous {
            Some(token) => (self.renewable(token, now)?, true),
            None => (format!("{ANONYMOUS_PREFIX}{}", random_hex(16)), false),
        };
        let claims = VisitorClaims {
            sub: visitor.clone(),
            exp: now + self.ttl_s,
            iat: now,
            scope: Some(ScopeClaim::Text(Scope::ALL.map(Scope::as_str).join(" "))),
            iss: Some(SESSION_ISSUER.into()),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(SESSION_KID.into());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| AuthError::Unauthenticated(format!("cannot sign a session: {e}")))?;
        Ok(Session {
            token,
            visitor,
            expires_at: claims.exp,
            renewed,
        })
    }

    fn renewable(&self, token: &str, now: u64) -> Result<String, AuthError> {
        let refuse = |m: &str| AuthError::Unauthenticated(m.into());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refuse("the previous session is not a JWT"))?;
        if header.kid.as_deref() != Some(SESSION_KID) || header.alg != Algorithm::HS256 {
            return Err(refuse("only this node's anonymous sessions can be renewed"));
        }
        let claims =
            jsonwebtoken::decode::<VisitorClaims>(token, &self.decoding, &self.renewal_check)
                .map_err(|_| refuse("the previous session's signature does not verify"))?
                .claims;
        if claims.exp.saturating_add(self.renew_within_s) < now {
            return Err(refuse(
                "the previous session expired too long ago to be renewed",
            ));
        }
        if !claims.sub.starts_with(ANONYMOUS_PREFIX) {
            return Err(refuse("the previous session is not an anonymous one"));
        }
        Ok(claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::visitor::{VisitorKeys, VisitorTokenConfig};

    #[test]
    fn sessions_verify_for_their_own_visitor_and_renew_with_the_same_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = SessionConfig {
            enabled: true,
            ..SessionConfig::default()
        };
        let issuer = SessionIssuer::open(&config, dir.path()).expect("opens");
        let keys = VisitorKeys::load(&VisitorTokenConfig::default(), Some(&issuer)).expect("keys");
        let first = issuer.issue(None).expect("issues");
        assert!(first.visitor.starts_with(ANONYMOUS_PREFIX));
        assert_eq!(keys.verify(&first.token).expect("valid").sub, first.visitor);
        let other = issuer.issue(None).expect("issues");
        assert_ne!(
            other.visitor, first.visitor,
            "every new session is a new visitor"
        );

        let renewed = issuer.issue(Some(&first.token)).expect("renews");
        assert_eq!(
            (renewed.visitor.as_str(), renewed.renewed),
            (first.visitor.as_str(), true)
        );

        // The secret persists: a second node on the same folder verifies the first one's tokens.
        let again = SessionIssuer::open(&config, dir.path()).expect("reopens");
        let keys_again =
            VisitorKeys::load(&VisitorTokenConfig::default(), Some(&again)).expect("keys");
        assert!(keys_again.verify(&first.token).is_ok());

        // Another node's sessions are neither valid nor renewable here.
        let elsewhere = tempfile::tempdir().expect("temp dir");
        let stranger = SessionIssuer::open(&config, elsewhere.path()).expect("opens");
        let foreign = stranger.issue(None).expect("issues");
        assert!(keys.verify(&foreign.token).is_err());
        assert!(issuer.issue(Some(&foreign.token)).is_err());
        assert!(issuer.issue(Some("garbage")).is_err());
    }
}
