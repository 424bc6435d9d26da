//! What the registry stores: model versions, deployment plans, the audit log and access tokens.

use std::collections::BTreeMap;

use edgerec_core::{Digest, ModelName, Surface, VariantName, Version};
use serde::{Deserialize, Serialize};

/// A published, immutable model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub model: ModelName,
    pub version: Version,
    /// sha256 of `manifest.json` exactly as published: the address edge nodes verify and the signature covers.
    pub manifest_digest: Digest,
    /// Each bundle file and its digest (the blobs to fetch).
    pub files: BTreeMap<String, Digest>,
    pub metrics: BTreeMap<String, f64>,
    pub lineage: BTreeMap<String, serde_json::Value>,
    pub items: usize,
    pub published_by: String,
    /// Milliseconds since the Unix epoch.
    pub published_at: i64,
    /// ed25519 signature of the manifest digest's 32 bytes, hex.
    pub signature: String,
}

/// One arm of a deployment plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: VariantName,
    pub model: ModelName,
    pub version: Version,
    /// Share of traffic in percent; the variants of a plan sum to 100.
    pub weight: u32,
}

/// Which model versions serve a surface (for example `home`), and how traffic splits between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub surface: Surface,
    /// 1 for the first plan of a surface, then +1 per change (rollbacks included): the plan's ETag.
    pub revision: u64,
    pub variants: Vec<Variant>,
    /// Mixed into the hash that assigns users to variants, so a new salt reshuffles assignments.
    pub salt: String,
    pub updated_by: String,
    pub updated_at: i64,
    pub reason: String,
    /// The registry's signature of this revision, added when the plan is served (stored plans carry none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<PlanSignature>,
}

/// The registry's signature over a plan revision: over [`Plan::statement`] with these digests and revocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSignature {
    /// Each variant's manifest digest, in the plan's order: a node serves a variant only from a bundle whose
    /// manifest has this digest.
    pub manifest_digests: Vec<Digest>,
    /// Every revoked or deleted version of the models the plan names, by model and version: nodes and browsers
    /// serve none of them, and send a revoked variant's traffic to the plan's other variants.
    #[serde(default)]
    pub revoked: Vec<RevokedVersion>,
    /// The id of the key that signed (`keys::key_id`): a key rotation re-signs every plan, and changes its ETag.
    #[serde(default)]
    pub key_id: String,
    /// When the registry signed this answer, milliseconds since the Unix epoch: a node counts its plan as
    /// confirmed from this time, so an old answer replayed (or a `304` from whoever sits in the middle) never
    /// makes a plan look fresh.
    #[serde(default)]
    pub served_at: i64,
    /// ed25519 over the statement's UTF-8 bytes, hex.
    pub signature: String,
}

/// A version the registry no longer vouches for, as a signed plan lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedVersion {
    pub model: ModelName,
    pub version: Version,
    pub manifest_digest: Digest,
}

impl RevokedVersion {
    /// Whether this revocation covers `model@version` or the manifest `digest` (the same bundle under any name).
    pub fn covers(&self, model: &str, version: &str, digest: &Digest) -> bool {
        self.manifest_digest == *digest || (self.model == model && self.version == version)
    }
}

/// A revocation as the registry keeps it: a version revoked (`edgerec model revoke`) or deleted. Kept for good,
/// so the list only grows, and a version once on it can never be deployed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub model: ModelName,
    pub version: Version,
    pub manifest_digest: Digest,
    /// `revoked` or `deleted`.
    pub cause: String,
    pub revoked_by: String,
    /// Milliseconds since the Unix epoch.
    pub revoked_at: i64,
    pub reason: String,
}

impl Revocation {
    pub fn listed(&self) -> RevokedVersion {
        RevokedVersion {
            model: self.model.clone(),
            version: self.version.clone(),
            manifest_digest: self.manifest_digest,
        }
    }
}

/// How fresh a signed plan is: its revision, then how many revocations it lists (a revocation changes no
/// revision, but a plan that lists fewer at the same revision is older). Ordered in that order; the plan's
/// `ETag` as `"<revision>.<revocations>"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlanTag {
    pub revision: u64,
    pub revocations: usize,
}

impl std::fmt::Display for PlanTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.revision, self.revocations)
    }
}

impl PlanTag {
    /// The plan's `ETag` without quotes, for a plan signed by key `key_id`: `<revision>.<revocations>.<key id>`.
    pub fn etag(self, key_id: &str) -> String {
        format!("{self}.{key_id}")
    }
}

impl std::str::FromStr for PlanTag {
    type Err = String;

    /// `3.1`, or `3` (no revocation), with or without the quotes and `W/` of an `ETag`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bare = text.trim().trim_start_matches("W/").trim_matches('"');
        let bad = || format!("`{bare}` is not a plan tag like \"3\" or \"3.1\"");
        let (revision, revocations) = bare.split_once('.').unwrap_or((bare, "0"));
        Ok(Self {
            revision: revision.parse().map_err(|_| bad())?,
            revocations: revocations.parse().map_err(|_| bad())?,
        })
    }
}

impl Plan {
    /// What the registry signs for this revision, one fact a line: the surface, the revision, when it was issued,
    /// when this answer was signed (`served_at`), the sha256 of the salt, each variant's name, model, version,
    /// weight and manifest digest, then how many versions of the plan's models are revoked and each of them. Every field is a name (letters, digits, `.`,
    /// `_`, `-`), a number or hex, so the lines cannot be confused and the browser package rebuilds the same bytes
    /// in JavaScript.
    pub fn statement(
        &self,
        manifest_digests: &[Digest],
        revoked: &[RevokedVersion],
        served_at: i64,
    ) -> String {
        let mut text = format!(
            "edgerec plan v2\nsurface {}\nrevision {}\nissued_at {}\nserved_at {served_at}\nsalt_sha256 {}\n",
            self.surface,
            self.revision,
            self.updated_at,
            Digest::of(self.salt.as_bytes())
        );
        for (variant, digest) in self.variants.iter().zip(manifest_digests) {
            text.push_str(&format!(
                "variant {} {} {} {} {}\n",
                variant.name, variant.model, variant.version, variant.weight, digest
            ));
        }
        text.push_str(&format!("revocations {}\n", revoked.len()));
        for version in revoked {
            text.push_str(&format!(
                "revoked {} {} {}\n",
                version.model, version.version, version.manifest_digest
            ));
        }
        text
    }

    /// The revision and the number of revocations the plan's signature lists (none when unsigned).
    pub fn tag(&self) -> PlanTag {
        PlanTag {
            revision: self.revision,
            revocations: self.signature.as_ref().map_or(0, |s| s.revoked.len()),
        }
    }

    /// The plan's `ETag`, without quotes: its tag and the id of the key that signed it,
    /// `<revision>.<revocations>.<key id>`.
    pub fn etag(&self) -> String {
        let key = self.signature.as_ref().map_or("", |s| s.key_id.as_str());
        self.tag().etag(key)
    }

    /// The revocation covering `variant` with the manifest `digest`, if the plan's signature lists one.
    pub fn revocation_of(&self, variant: &Variant, digest: &Digest) -> Option<&RevokedVersion> {
        self.signature.as_ref().and_then(|s| {
            s.revoked
                .iter()
                .find(|r| r.covers(&variant.model, &variant.version, digest))
        })
    }
}

/// An entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub sequence: u64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// What a token allows. `admin` allows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Publish,
    Deploy,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Publish, Scope::Deploy, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Publish => "publish",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| format!("unknown scope `{text}` (read, publish, deploy, admin)"))
    }
}

/// An access token as stored: only the sha256 of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub secret_sha256: String,
    pub created_at: i64,
    pub revoked: bool,
}

impl TokenRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        !self.revoked && (self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin))
    }
}

/// A desired plan as a deployer sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub salt: Option<String>,
    pub reason: String,
}

/// A newly created token: the secret is shown once and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub secret: String,
    pub token: TokenRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_from_the_wire_hold_only_valid_names() {
        let plan = |surface: &str, variant: &str, model: &str, version: &str| {
            serde_json::json!({
                "surface": surface, "revision": 3, "salt": "s", "updated_by": "carol", "updated_at": 0,
                "reason": "r",
                "variants": [{ "name": variant, "model": model, "version": version, "weight": 100 }],
            })
        };
        let good: Plan = serde_json::from_value(plan("home", "control", "ml-1m", "1.0.0"))
            .expect("a valid plan parses");
        assert_eq!(good.surface, "home");
        assert_eq!(good.variants[0].version, "1.0.0");
        for (bad, kind) in [
            (plan("../home", "control", "ml-1m", "1.0.0"), "surface"),
            (plan("home", "", "ml-1m", "1.0.0"), "variant name is empty"),
            (plan("home", "control", "ml 1m", "1.0.0"), "model name"),
            (plan("home", "control", "ml-1m", ".hidden"), "version"),
        ] {
            let error = serde_json::from_value::<Plan>(bad).expect_err("refused");
            assert!(error.to_string().contains(kind), "{error}");
        }
    }

    #[test]
    fn plan_tags_order_by_revision_then_revocations() {
        let tag = |text: &str| text.parse::<PlanTag>();
        assert_eq!(
            tag("\"3.1\""),
            Ok(PlanTag {
                revision: 3,
                revocations: 1
            })
        );
        assert_eq!(tag("W/\"3\""), tag("3.0"));
        assert_eq!(tag("3.1").expect("a tag").to_string(), "3.1");
        assert!(tag("3.0") < tag("3.1") && tag("3.9") < tag("4.0"));
        for bad in ["", "x", "3.", "3.x", "-1.0", "1.2.3"] {
            assert!(tag(bad).is_err(), "{bad}");
        }
    }
}
