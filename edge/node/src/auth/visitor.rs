//! Visitor tokens: JWTs whose subject is the visitor, signed by the site's backend with an HS256 secret or an
//! EdDSA (Ed25519) or ES256 (P-256) key whose public half is in a JWKS file, several `kid`s at once for rotation;
//! and the node's own anonymous session tokens ([`super::session`]), under a `kid` of their own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use super::session::{SESSION_ISSUER, SESSION_KID, SessionIssuer};
use super::watched::WatchedFile;
use super::{AuthError, AuthSetupError, Scope};

/// Longest token accepted: far above any real one, so a header cannot make the node parse megabytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest visitor id (a token's `sub`), as for user ids in events.
pub const MAX_SUBJECT_BYTES: usize = 128;
/// Shortest HS256 secret accepted (RFC 7518 asks for at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VisitorTokenConfig {
    /// HS256 secrets shared with the site's backend, each under its `kid`.
    pub hs256: Vec<SharedSecret>,
    /// Public keys in a JWKS file (`{"keys": [...]}`): Ed25519 (`"kty": "OKP"`, alg EdDSA) and P-256
    /// (`"kty": "EC"`, alg ES256), each with a `kid`. Re-read when the file changes, so keys rotate without a
    /// restart.
    pub jwks_file: Option<PathBuf>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Longest lifetime (`exp - iat`) accepted, in seconds: visitor tokens are short-lived.
    pub max_lifetime_s: u64,
    /// Clock skew allowed on `exp` and `iat`, in seconds.
    pub leeway_s: u64,
}

impl Default for VisitorTokenConfig {
    fn default() -> Self {
        Self {
            hs256: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            max_lifetime_s: 24 * 3600,
            leeway_s: 30,
        }
    }
}

impl VisitorTokenConfig {
    pub fn has_keys(&self) -> bool {
        !self.hs256.is_empty() || self.jwks_file.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedSecret {
    pub kid: String,
    /// A file holding the secret (surrounding whitespace ignored; at least 32 bytes).
    pub secret_file: PathBuf,
}

/// A visitor token's claims.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorClaims {
    /// The visitor: the user id requests may name.
    pub sub: String,
    /// Expiry and issue time, seconds since the Unix epoch.
    pub exp: u64,
    pub iat: u64,
    /// Absent: every scope. `"events recommend"` (RFC 8693) or `["events", "recommend"]`; names other than
    /// ours are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    pub fn scopes(&self) -> Vec<Scope> {
        let names: Vec<&str> = match self {
            ScopeClaim::Text(text) => text.split_whitespace().collect(),
            ScopeClaim::List(list) => list.iter().map(String::as_str).collect(),
        };
        let mut scopes: Vec<Scope> = names.into_iter().filter_map(Scope::parse).collect();
        scopes.dedup();
        scopes
    }
}

struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({:?})", self.algorithm)
    }
}

/// Every key a visitor token may be signed with, by `kid`.
#[derive(Debug)]
pub struct VisitorKeys {
    secrets: HashMap<String, Arc<VerifyingKey>>,
    jwks: Option<WatchedFile<HashMap<String, Arc<VerifyingKey>>>>,
    session: Option<Arc<VerifyingKey>>,
    /// The checks of a site token of each algorithm, and of a session token, built once.
    site_checks: [(Algorithm, Validation); 3],
    session_check: Validation,
    max_lifetime_s: u64,
    leeway_s: u64,
}

/// What every token must carry, with `leeway_s` of clock skew allowed.
fn validation(algorithm: Algorithm, leeway_s: u64) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "iat", "sub"]);
    validation.leeway = leeway_s;
    validation.validate_aud = false;
    validation
}

impl VisitorKeys {
    pub fn load(
        config: &VisitorTokenConfig,
        sessions: Option<&SessionIssuer>,
    ) -> Result<Self, AuthSetupError> {
        let mut secrets = HashMap::new();
        for SharedSecret { kid, secret_file } in &config.hs256 {
            check_kid(kid, secret_file)?;
            let text =
                std::fs::read_to_string(secret_file).map_err(|source| AuthSetupError::Read {
                    path: secret_file.clone(),
                    source,
                })?;
            let secret = text.trim();
            if secret.len() < MIN_SECRET_BYTES {
                return Err(AuthSetupError::Invalid {
                    path: secret_file.clone(),
                    message: format!(
                        "the HS256 secret of kid `{kid}` has {} bytes; use at least {MIN_SECRET_BYTES}",
                        secret.len()
                    ),
                });
            }
            let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| {
                AuthSetupError::Invalid {
                    path: secret_file.clone(),
                    message: e.to_string(),
                }
            })?;
            if secrets
                .insert(
                    kid.clone(),
                    Arc::new(VerifyingKey {
                        algorithm: Algorithm::HS256,
                        key,
                    }),
                )
                .is_some()
            {
                return Err(AuthSetupError::Config(format!(
                    "kid `{kid}` is configured twice"
                )));
            }
        }
        let jwks = match &config.jwks_file {
            Some(path) => {
                let watched = WatchedFile::open(path.clone(), parse_jwks)?;
                if let Some(kid) = watched
                    .current()
                    .keys()
                    .find(|kid| secrets.contains_key(*kid))
                {
                    return Err(AuthSetupError::Config(format!(
                        "kid `{kid}` is both an HS256 secret and a key in {}",
                        path.display()
                    )));
                }
                Some(watched)
            }
            None => None,
        };
        let site_check = |algorithm| {
            let mut check = validation(algorithm, config.leeway_s);
            if let Some(issuer) = &config.issuer {
                check.set_issuer(&[issuer]);
            }
            if let Some(audience) = &config.audience {
                check.set_audience(&[audience]);
                check.validate_aud = true;
            }
            (algorithm, check)
        };
        let mut session_check = validation(Algorithm::HS256, config.leeway_s);
        session_check.set_issuer(&[SESSION_ISSUER]);
        Ok(Self {
            secrets,
            jwks,
            session: sessions.map(|s| {
                Arc::new(VerifyingKey {
                    algorithm: Algorithm::HS256,
                    key: s.decoding_key().clone(),
                })
            }),
            site_checks: [Algorithm::HS256, Algorithm::EdDSA, Algorithm::ES256].map(site_check),
            session_check,
            max_lifetime_s: config.max_lifetime_s,
            leeway_s: config.leeway_s,
        })
    }

    fn site_key(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, AuthError> {
        // A shared secret is found without looking at the JWKS file.
        if let Some(key) = kid.and_then(|kid| self.secrets.get(kid)) {
            return Ok(key.clone());
        }
        let jwks = self.jwks.as_ref().map(|w| w.current());
        match kid {
            Some(kid) => jwks
                .as_ref()
                .and_then(|keys| keys.get(kid))
                .cloned()
                .ok_or_else(|| {
                    AuthError::Unauthenticated(format!(
                        "the visitor token's kid `{}` is not a key this node knows",
                        kid.chars().take(64).collect::<String>()
                    ))
                }),
            None => {
                let mut all = self
                    .secrets
                    .values()
                    .chain(jwks.iter().flat_map(|k| k.values()));
                match (all.next(), all.next()) {
                    (Some(only), None) => Ok(only.clone()),
                    (None, _) => Err(AuthError::Unauthenticated(
                        "this node accepts no site-signed visitor tokens".into(),
                    )),
                    _ => Err(AuthError::Unauthenticated(
                        "the visitor token has no kid and this node has several keys".into(),
                    )),
                }
            }
        }
    }

    /// The claims of a valid token: known key, the algorithm of that key, good signature, not expired, not issued
    /// in the future, not living longer than allowed, a subject of the right size.
    pub fn verify(&self, token: &str) -> Result<VisitorClaims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Unauthenticated(format!(
                "the visitor token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Unauthenticated("the bearer credential is not a JWT".into()))?;
        let session = header.kid.as_deref() == Some(SESSION_KID);
        let key = if session {
            self.session.clone().ok_or_else(|| {
                AuthError::Unauthenticated("this node issues no anonymous sessions".into())
            })?
        } else {
            self.site_key(header.kid.as_deref())?
        };
        // The key decides the algorithm, never the token (no HS256 made with a public key, no `none`).
        if header.alg != key.algorithm {
            return Err(AuthError::Unauthenticated(format!(
                "the visitor token is signed with {:?} but its key is for {:?}",
                header.alg, key.algorithm
            )));
        }
        let validation = if session {
            &self.session_check
        } else {
            self.site_checks
                .iter()
                .find(|(algorithm, _)| *algorithm == key.algorithm)
                .map(|(_, check)| check)
                .expect("every key's algorithm has its checks")
        };
        let claims = jsonwebtoken::decode::<VisitorClaims>(token, &key.key, validation)
            .map_err(|e| AuthError::Unauthenticated(describe(e.kind())))?
            .claims;
        self.check_claims(&claims, jsonwebtoken::get_current_timestamp())?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &VisitorClaims, now: u64) -> Result<(), AuthError> {
        let refuse = |m: String| Err(AuthError::Unauthenticated(m));
        if claims.iat > now + self.leeway_s {
            return refuse("the visitor token is issued in the future".into());
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_lifetime_s {
            return refuse(format!(
                "the visitor token lives longer than this node allows ({} s)",
                self.max_lifetime_s
            ));
        }
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_BYTES {
            return refuse(format!(
                "the visitor token's sub must be 1 to {MAX_SUBJECT_BYTES} bytes"
            ));
        }
        Ok(())
    }
}

fn check_kid(kid: &str, path: &Path) -> Result<(), AuthSetupError> {
    if kid.is_empty() || kid == SESSION_KID {
        return Err(AuthSetupError::Invalid {
            path: path.to_path_buf(),
            message: format!("kid `{kid}` is empty or reserved for the node's anonymous sessions"),
        });
    }
    Ok(())
}

/// The verifying keys of a JWKS document.
fn parse_jwks(
    path: &Path,
    bytes: &[u8],
) -> Result<Arc<HashMap<String, Arc<VerifyingKey>>>, AuthSetupError> {
    let invalid = |message: String| AuthSetupError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a JWKS document: {e}")))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| invalid("every key needs a `kid`".into()))?;
        check_kid(&kid, path)?;
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => {
                return Err(invalid(format!(
                    "key `{kid}`: only Ed25519 (OKP) and P-256 (EC) public keys are accepted"
                )));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key `{kid}`: {e}")))?;
        if keys
            .insert(kid.clone(), Arc::new(VerifyingKey { algorithm, key }))
            .is_some()
        {
            return Err(invalid(format!("kid `{kid}` appears twice")));
        }
    }
    Ok(Arc::new(keys))
}

/// A refusal's reason, without echoing the token.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the visitor token has expired",
        ErrorKind::InvalidSignature => "the visitor token's signature does not verify",
        ErrorKind::InvalidIssuer => "the visitor token's iss is not the configured issuer",
        ErrorKind::InvalidAudience => "the visitor token's aud is not the configured audience",
        ErrorKind::MissingRequiredClaim(_) => "the visitor token lacks sub, iat or exp",
        ErrorKind::InvalidAlgorithm => "the visitor token's algorithm is not its key's",
        _ => "the visitor token is malformed",
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "a-site-secret-of-at-least-32-bytes!!";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(sub: &str, iat: u64, exp: u64) -> VisitorClaims {
        VisitorClaims {
            sub: sub.into(),
            exp,
            iat,
            scope: None,
            iss: None,
        }
    }

    fn hs256(kid: Option<&str>, claims: &VisitorClaims, secret: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(secret.as_bytes()).expect("key"),
        )
        .expect("signs")
    }

    fn keys(dir: &Path, jwks: Option<&serde_json::Value>) -> VisitorKeys {
        let secret_file = dir.join("site.secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).expect("writes");
        let jwks_file = jwks.map(|set| {
            let path = dir.join("keys.jwks");
            std::fs::write(&path, set.to_string()).expect("writes");
            path
        });
        let config = VisitorTokenConfig {
            hs256: vec![SharedSecret {
                kid: "site-1".into(),
                secret_file,
            }],
            jwks_file,
            max_lifetime_s: 3600,
            ..VisitorTokenConfig::default()
        };
        VisitorKeys::load(&config, None).expect("loads")
    }

    fn refused(keys: &VisitorKeys, token: &str) -> String {
        match keys.verify(token) {
            Err(AuthError::Unauthenticated(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn hs256_tokens_are_checked_claim_by_claim() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = keys(dir.path(), None);
        let t = now();
        let good = hs256(Some("site-1"), &claims("alice", t, t + 600), SECRET);
        assert_eq!(keys.verify(&good).expect("valid").sub, "alice");
        // One key configured: a token without kid uses it.
        assert!(
            keys.verify(&hs256(None, &claims("alice", t, t + 600), SECRET))
                .is_ok()
        );

        let expired = hs256(Some("site-1"), &claims("alice", t - 7200, t - 3600), SECRET);
        assert!(refused(&keys, &expired).contains("expired"));
        let forged = hs256(
            Some("site-1"),
            &claims("alice", t, t + 600),
            "another-secret-of-32-bytes-or-more!!",
        );
        assert!(refused(&keys, &forged).contains("signature"));
        let unknown = hs256(Some("site-9"), &claims("alice", t, t + 600), SECRET);
        assert!(refused(&keys, &unknown).contains("kid"));
        let long_lived = hs256(Some("site-1"), &claims("alice", t, t + 7200), SECRET);
        assert!(refused(&keys, &long_lived).contains("longer"));
        let future = hs256(Some("site-1"), &claims("alice", t + 600, t + 900), SECRET);
        assert!(refused(&keys, &future).contains("future"));
        let nobody = hs256(Some("site-1"), &claims("", t, t + 600), SECRET);
        assert!(refused(&keys, &nobody).contains("sub"));
        assert!(refused(&keys, "not.a.token").contains("JWT"));
        assert!(refused(&keys, &"x".repeat(MAX_TOKEN_BYTES + 1)).contains("longer"));
        // The `none` algorithm and a token whose header claims another algorithm than its key's.
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","kid":"site-1"}"#),
            b64(serde_json::to_string(&claims("alice", t, t + 600))
                .expect("json")
                .as_bytes())
        );
        assert!(keys.verify(&unsigned).is_err());
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn public_keys_from_a_jwks_file_verify_eddsa_tokens_and_rotate() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let dir = tempfile::tempdir().expect("temp dir");
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let der = signing.to_pkcs8_der().expect("pkcs8");
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let x = b64(signing.verifying_key().as_bytes());
        let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed-1", "x": x });
        let keys = keys(dir.path(), Some(&serde_json::json!({ "keys": [jwk] })));
        let t = now();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed-1".into());
        let token =
            jsonwebtoken::encode(&header, &claims("bob", t, t + 60), &encoding).expect("signs");
        assert_eq!(keys.verify(&token).expect("valid").sub, "bob");
        // The same token relabelled HS256 (signed with the public key as a secret) is refused.
        let mut confused = Header::new(Algorithm::HS256);
        confused.kid = Some("ed-1".into());
        let forged = jsonwebtoken::encode(
            &confused,
            &claims("bob", t, t + 60),
            &EncodingKey::from_secret(x.as_bytes()).expect("key"),
        )
        .expect("signs");
        assert!(refused(&keys, &forged).contains("EdDSA"));
        // With two keys, a token without kid cannot choose.
        let anonymous = hs256(None, &claims("alice", t, t + 60), SECRET);
        assert!(refused(&keys, &anonymous).contains("no kid"));
        // Rotation: the JWKS file replaced by one without `ed-1` refuses its tokens from then on.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("keys.jwks"), r#"{"keys": []}"#).expect("rewrites");
        keys.jwks.as_ref().expect("jwks").force_recheck();
        assert!(refused(&keys, &token).contains("kid"));
    }

    /// A fixed P-256 test key: its PKCS#8 document and the public point (base64url), as a JWK carries it.
    const P256_PKCS8: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b02010104201f2e3d4c5b6a79880796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0a1440342000456ccd8b8b16d196ae4d31f57ef9008cff4eb4caaa38f48a1c8c0e05c400f2246083a4aee1c1266c0c1e46d1682a86ae19c7bf7a885412f1b359f4fbbbc677433";
    const P256_X: &str = "VszYuLFtGWrk0x9X75AIz_TrTKqjj0ihyMDgXEAPIkY";
    const P256_Y: &str = "CDpK7hwSZsDB5G0Wgqhq4Zx796iFQS8bNZ9Pu7xndDM";

    #[test]
    fn es256_tokens_verify_with_their_jwks_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ec-1", "x": P256_X, "y": P256_Y,
        });
        let keys = keys(dir.path(), Some(&serde_json::json!({ "keys": [jwk] })));
        let der = hex::decode(P256_PKCS8).expect("hex");
        let signing = EncodingKey::from_ec_der(&der);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-1".into());
        let t = now();
        let token =
            jsonwebtoken::encode(&header, &claims("carol", t, t + 60), &signing).expect("signs");
        assert_eq!(keys.verify(&token).expect("valid").sub, "carol");
        // Another subject under the same signature: refused.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = b64(serde_json::to_string(&claims("mallory", t, t + 60))
            .expect("json")
            .as_bytes());
        assert!(refused(&keys, &parts.join(".")).contains("signature"));
        // An EdDSA header on the ES256 key: refused whatever it carries.
        let mut confused = Header::new(Algorithm::EdDSA);
        confused.kid = Some("ec-1".into());
        let forged = format!(
            "{}.{}.{}",
            b64(serde_json::to_string(&confused).expect("json").as_bytes()),
            parts[1],
            parts[2]
        );
        assert!(refused(&keys, &forged).contains("ES256"));
    }

    #[test]
    fn bad_key_files_are_refused_at_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let short = dir.path().join("short.secret");
        std::fs::write(&short, "tiny").expect("writes");
        let config = VisitorTokenConfig {
            hs256: vec![SharedSecret {
                kid: "k".into(),
                secret_file: short,
            }],
            ..VisitorTokenConfig::default()
        };
        let error = VisitorKeys::load(&config, None).expect_err("short secret");
        assert!(error.to_string().contains("at least 32"), "{error}");

        let jwks = dir.path().join("bad.jwks");
        std::fs::write(
            &jwks,
            r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}"#,
        )
        .expect("writes");
        let config = VisitorTokenConfig {
            jwks_file: Some(jwks),
            ..VisitorTokenConfig::default()
        };
        let error = VisitorKeys::load(&config, None).expect_err("no kid");
        assert!(error.to_string().contains("kid"), "{error}");
    }

    #[test]
    fn scope_claims_read_as_text_or_list() {
        let text: ScopeClaim = serde_json::from_str(r#""events other""#).expect("text");
        assert_eq!(text.scopes(), vec![Scope::Events]);
        let list: ScopeClaim = serde_json::from_str(r#"["recommend", "events"]"#).expect("list");
        assert_eq!(list.scopes(), vec![Scope::Recommend, Scope::Events]);
    }
}
