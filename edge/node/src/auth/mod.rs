//! Who may name a user in a request. Browsers and CDN workers are untrusted: a request that names a user (the
//! `user_id` of `/v1/recommend`, the `user` of an event) carries a visitor token whose subject is that user — a JWT
//! the site's backend signs ([`visitor`]), or an anonymous one this node issues itself ([`session`]) — or an API
//! key of a server-to-server caller ([`api_keys`]), which may name any user. Requests that name no user rank only
//! the items they carry and need no credential.

pub mod api_keys;
pub mod session;
pub mod visitor;
mod watched;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::api_keys::ApiKeyFile;
use crate::auth::session::SessionIssuer;
use crate::auth::visitor::{VisitorClaims, VisitorKeys};

/// What a credential may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /v1/events` for the user.
    Events,
    /// `POST /v1/recommend` naming the user (reads what is stored for them).
    Recommend,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Events, Scope::Recommend];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Events => "events",
            Scope::Recommend => "recommend",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Who sent a request, as its credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential: may rank its own recent items, may name no user.
    Nobody,
    /// A visitor token: may name its subject only, for its scopes.
    Visitor { subject: String, scopes: Vec<Scope> },
    /// An API key: may name any user, for its scopes.
    Service { key_id: String, scopes: Vec<Scope> },
    /// A node run with `--insecure-no-auth`: anything goes.
    Unchecked,
}

impl Caller {
    /// Whether this caller may act for `user` (`None`: the request names no user) with `scope`.
    pub fn may_act_for(&self, user: Option<&str>, scope: Scope) -> Result<(), AuthError> {
        let Some(user) = user else {
            return Ok(());
        };
        match self {
            Caller::Unchecked => Ok(()),
            Caller::Nobody => Err(AuthError::Unauthenticated(format!(
                "this request names a user: send `Authorization: Bearer <visitor token>` whose subject is that \
                 user (or an API key with the `{}` scope)",
                scope.as_str()
            ))),
            Caller::Visitor { subject, scopes } => {
                if !scopes.contains(&scope) {
                    Err(AuthError::Forbidden(format!(
                        "the visitor token does not allow `{}`",
                        scope.as_str()
                    )))
                } else if subject != user {
                    Err(AuthError::Forbidden(
                        "the visitor token is for another user".into(),
                    ))
                } else {
                    Ok(())
                }
            }
            Caller::Service { key_id, scopes } => {
                if scopes.contains(&scope) {
                    Ok(())
                } else {
                    Err(AuthError::Forbidden(format!(
                        "API key `{key_id}` does not allow `{}`",
                        scope.as_str()
                    )))
                }
            }
        }
    }
}

/// A refused credential. Both are answered before the request body is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 401: missing, malformed, expired, wrongly signed, unknown `kid`, unknown or revoked key.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a valid credential that does not allow this (another user, a missing scope).
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated(_) => "unauthenticated",
            AuthError::Forbidden(_) => "forbidden",
        }
    }
}

/// How the node checks visitors and server-to-server callers (the `auth` section of its configuration).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Visitor tokens signed by the site's backend.
    pub visitor_tokens: visitor::VisitorTokenConfig,
    /// Anonymous visitor tokens this node issues at `POST /v1/session`.
    pub anonymous_sessions: session::SessionConfig,
    /// The API keys file `edgerec edge key create|list|revoke` writes (default: `node/api-keys.json` in the
    /// data folder). Re-read when it changes, so a revoked key is refused at once.
    pub api_keys_file: Option<PathBuf>,
}

impl AuthConfig {
    /// Whether any visitor can be named at all (site keys or anonymous sessions); API keys alone only serve
    /// server-to-server callers.
    pub fn names_visitors(&self) -> bool {
        self.visitor_tokens.has_keys() || self.anonymous_sessions.enabled
    }
}

/// Why the authentication configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
}

/// Every credential check of a node, built once at start.
#[derive(Debug)]
pub struct Authenticator {
    /// `None`: `--insecure-no-auth`.
    checks: Option<Checks>,
}

#[derive(Debug)]
struct Checks {
    visitors: VisitorKeys,
    sessions: Option<SessionIssuer>,
    api_keys: ApiKeyFile,
}

/// API keys start with this, so a bearer credential is told apart from a JWT without parsing it.
pub const API_KEY_PREFIX: &str = "edk_";

impl Authenticator {
    /// Loads keys, the session secret (created under `node_dir` on first start unless configured) and the API
    /// keys file.
    pub fn new(config: &AuthConfig, node_dir: &Path) -> Result<Self, AuthSetupError> {
        if config.anonymous_sessions.enabled
            && config.anonymous_sessions.ttl_s > config.visitor_tokens.max_lifetime_s
        {
            return Err(AuthSetupError::Config(format!(
                "auth.anonymous_sessions.ttl_s ({}) is longer than auth.visitor_tokens.max_lifetime_s ({}): every \
                 session would be refused",
                config.anonymous_sessions.ttl_s, config.visitor_tokens.max_lifetime_s
            )));
        }
        let sessions = if config.anonymous_sessions.enabled {
            Some(SessionIssuer::open(&config.anonymous_sessions, node_dir)?)
        } else {
            None
        };
        let visitors = VisitorKeys::load(&config.visitor_tokens, sessions.as_ref())?;
        // A file that exists but does not parse is a configuration error now, not a 401 later.
        let api_keys = ApiKeyFile::open(
            config
                .api_keys_file
                .clone()
                .unwrap_or_else(|| api_keys::default_path(node_dir)),
        )?;
        Ok(Self {
            checks: Some(Checks {
                visitors,
                sessions,
                api_keys,
            }),
        })
    }

    /// A node that checks nothing (`--insecure-no-auth`).
    pub fn insecure() -> Self {
        Self { checks: None }
    }

    /// The issuer of anonymous sessions, if enabled.
    pub fn sessions(&self) -> Option<&SessionIssuer> {
        self.checks.as_ref().and_then(|c| c.sessions.as_ref())
    }

    /// Whether `bearer` looks like an API key (checked before the per-address rate limit: a valid key is limited
    /// per key instead).
    pub fn is_api_key(bearer: &str) -> bool {
        bearer.starts_with(API_KEY_PREFIX)
    }

    /// The caller an API key proves.
    pub fn api_key(&self, bearer: &str) -> Result<Caller, AuthError> {
        let Some(checks) = &self.checks else {
            return Ok(Caller::Unchecked);
        };
        let key = checks.api_keys.find(bearer)?;
        Ok(Caller::Service {
            key_id: key.id,
            scopes: key.scopes,
        })
    }

    /// The caller a visitor token (or none) proves.
    pub fn visitor(&self, bearer: Option<&str>) -> Result<Caller, AuthError> {
        let Some(checks) = &self.checks else {
            return Ok(Caller::Unchecked);
        };
        let Some(token) = bearer else {
            return Ok(Caller::Nobody);
        };
        let VisitorClaims { sub, scope, .. } = checks.visitors.verify(token)?;
        Ok(Caller::Visitor {
            subject: sub,
            scopes: scope.map_or_else(|| Scope::ALL.to_vec(), |s| s.scopes()),
        })
    }
}

/// The credential of an `Authorization: Bearer ...` header: `Ok(None)` without one.
pub fn bearer(
    header: Option<&actix_web::http::header::HeaderValue>,
) -> Result<Option<&str>, AuthError> {
    let Some(value) = header else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Unauthenticated("the Authorization header is not ASCII".into()))?;
    match value.split_once(' ') {
        Some((scheme, credential)) if scheme.eq_ignore_ascii_case("bearer") => {
            let credential = credential.trim();
            if credential.is_empty() {
                Err(AuthError::Unauthenticated(
                    "the bearer credential is empty".into(),
                ))
            } else {
                Ok(Some(credential))
            }
        }
        _ => Err(AuthError::Unauthenticated(
            "the Authorization header must be `Bearer <token>`".into(),
        )),
    }
}

/// Writes a new random secret (32 bytes, hex, readable by its owner only) to `path` unless a file is there.
pub fn create_secret_file(path: &Path) -> Result<(), AuthSetupError> {
    // Two nodes starting on one folder end up with the same secret (whoever came first), never each with its own.
    ensure_parent(path)?;
    edgerec_storage::create_durably(
        path,
        random_hex(32).as_bytes(),
        edgerec_storage::Access::OwnerOnly,
    )
    .map(drop)
    .map_err(|source| AuthSetupError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn ensure_parent(path: &Path) -> Result<(), AuthSetupError> {
    match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|source| AuthSetupError::Write {
            path: dir.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

/// 32 random bytes from the operating system, hex: secrets, visitor ids, API keys.
pub(crate) fn random_hex(bytes: usize) -> String {
    use rand_core::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand_core::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

/// Writes `bytes` to `path` whole or not at all, readable by its owner only: never a torn secret or key file.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthSetupError> {
    ensure_parent(path)?;
    edgerec_storage::write_durably(path, bytes, edgerec_storage::Access::OwnerOnly).map_err(
        |source| AuthSetupError::Write {
            path: path.to_path_buf(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visitor(subject: &str, scopes: &[Scope]) -> Caller {
        Caller::Visitor {
            subject: subject.into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn callers_act_only_for_whom_their_credential_allows() {
        let kind = |r: Result<(), AuthError>| r.map_err(|e| e.kind());
        // Naming no user needs nothing.
        assert_eq!(
            kind(Caller::Nobody.may_act_for(None, Scope::Recommend)),
            Ok(())
        );
        assert_eq!(
            kind(Caller::Nobody.may_act_for(Some("u1"), Scope::Recommend)),
            Err("unauthenticated")
        );
        let alice = visitor("alice", &Scope::ALL);
        assert_eq!(
            kind(alice.may_act_for(Some("alice"), Scope::Events)),
            Ok(())
        );
        assert_eq!(
            kind(alice.may_act_for(Some("bob"), Scope::Events)),
            Err("forbidden")
        );
        let reader = visitor("alice", &[Scope::Recommend]);
        assert_eq!(
            kind(reader.may_act_for(Some("alice"), Scope::Events)),
            Err("forbidden")
        );
        let importer = Caller::Service {
            key_id: "k1".into(),
            scopes: vec![Scope::Events],
        };
        assert_eq!(
            kind(importer.may_act_for(Some("anyone"), Scope::Events)),
            Ok(())
        );
        assert_eq!(
            kind(importer.may_act_for(Some("anyone"), Scope::Recommend)),
            Err("forbidden")
        );
        assert_eq!(
            kind(Caller::Unchecked.may_act_for(Some("x"), Scope::Events)),
            Ok(())
        );
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        use actix_web::http::header::HeaderValue;
        let parse = |v: &str| {
            bearer(Some(&HeaderValue::from_str(v).expect("header"))).map(|o| o.map(String::from))
        };
        assert_eq!(parse("Bearer abc"), Ok(Some("abc".into())));
        assert_eq!(parse("bearer  abc "), Ok(Some("abc".into())));
        assert!(parse("Basic abc").is_err());
        assert!(parse("Bearer ").is_err());
        assert!(parse("abc").is_err());
        assert_eq!(bearer(None), Ok(None));
    }
}
