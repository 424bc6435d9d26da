//! ed25519 signatures over manifest digests, as their verifiers see them: the registry signs each version it
//! accepts, and edge nodes and tools refuse any manifest whose signature does not verify against the registry's
//! public key, which `GET /v1/signing-key` serves as a [`SigningKeyDocument`].

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use edgerec_core::Digest;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyRotation, TrustedKeys, key_id};
use crate::records::Plan;

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureError {
    #[error("`{0}` is not an ed25519 public key (64 hex characters)")]
    PublicKey(String),
    #[error("the signature does not verify against the registry's public key")]
    BadSignature,
    #[error("the plan carries no signature")]
    UnsignedPlan,
    #[error("the plan's signature lists {digests} manifest digests for {variants} variants")]
    DigestCount { digests: usize, variants: usize },
    /// A key rotation from an accepted key (this id) that the key did not sign.
    #[error(
        "the rotation from key {0} is not signed by that key: the key chain is not the registry's"
    )]
    BadRotation(String),
}

/// What `GET /v1/signing-key` answers, on the registry and on edge nodes (which relay the keys they verify with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyDocument {
    /// Always `ed25519`.
    pub algorithm: String,
    /// What the key signs, in words.
    pub signs: String,
    /// The current public key, 64 hex characters.
    pub public_key: String,
    /// Its id ([`key_id`]).
    #[serde(default)]
    pub key_id: String,
    /// Every rotation so far, oldest first: a verifier configured with an earlier key follows them to this one.
    #[serde(default)]
    pub rotations: Vec<KeyRotation>,
}

impl SigningKeyDocument {
    /// The document for `public_key_hex`, reached through `rotations`.
    pub fn ed25519(public_key_hex: String, rotations: Vec<KeyRotation>) -> Self {
        Self {
            algorithm: "ed25519".into(),
            signs: "the sha256 digest of manifest.json (32 bytes), each plan revision's statement, and (the \
                    retiring key) each rotation's statement"
                .into(),
            key_id: key_id(&public_key_hex).unwrap_or_default(),
            public_key: public_key_hex,
            rotations,
        }
    }
}

/// Checks `signature_hex` over `manifest_digest` against `public_key_hex`.
pub fn verify_manifest_signature(
    public_key_hex: &str,
    manifest_digest: &Digest,
    signature_hex: &str,
) -> Result<(), SignatureError> {
    verify(public_key_hex, manifest_digest.as_bytes(), signature_hex)
}

/// Checks that `plan` carries the registry's signature over its statement ([`Plan::statement`]), with a manifest
/// digest for each variant, by one of `keys` valid at `now_ms`.
pub fn verify_plan_signature(
    keys: &TrustedKeys,
    plan: &Plan,
    now_ms: i64,
) -> Result<(), SignatureError> {
    let signed = plan
        .signature
        .as_ref()
        .ok_or(SignatureError::UnsignedPlan)?;
    if signed.manifest_digests.len() != plan.variants.len() {
        return Err(SignatureError::DigestCount {
            digests: signed.manifest_digests.len(),
            variants: plan.variants.len(),
        });
    }
    let statement = plan.statement(&signed.manifest_digests, &signed.revoked, signed.served_at);
    keys.verify(statement.as_bytes(), &signed.signature, now_ms)
}

pub(crate) fn verify(
    public_key_hex: &str,
    message: &[u8],
    signature_hex: &str,
) -> Result<(), SignatureError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(public_key_hex.trim(), &mut key)
        .map_err(|_| SignatureError::PublicKey(public_key_hex.chars().take(80).collect()))?;
    let key = VerifyingKey::from_bytes(&key)
        .map_err(|_| SignatureError::PublicKey(public_key_hex.chars().take(80).collect()))?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(signature_hex.trim(), &mut signature)
        .map_err(|_| SignatureError::BadSignature)?;
    key.verify(message, &Signature::from_bytes(&signature))
        .map_err(|_| SignatureError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TrustedKeys;
    use crate::records::RevokedVersion;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn verifies_only_the_signed_digest_with_the_signing_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = hex::encode(key.verifying_key().to_bytes());
        let digest = Digest::of(b"manifest");
        let signature = hex::encode(key.sign(digest.as_bytes()).to_bytes());
        verify_manifest_signature(&public, &digest, &signature).expect("verifies");
        assert_eq!(
            verify_manifest_signature(&public, &Digest::of(b"other"), &signature),
            Err(SignatureError::BadSignature)
        );
        let mut tampered = signature.clone().into_bytes();
        tampered[0] = if tampered[0] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(
            verify_manifest_signature(&public, &digest, &tampered),
            Err(SignatureError::BadSignature)
        );
        let other = hex::encode(SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes());
        assert_eq!(
            verify_manifest_signature(&other, &digest, &signature),
            Err(SignatureError::BadSignature)
        );
        assert!(matches!(
            verify_manifest_signature("zz", &digest, &signature),
            Err(SignatureError::PublicKey(_))
        ));
    }

    fn plan() -> Plan {
        let variant = |name: &str, version: &str, weight: u32| crate::records::Variant {
            name: edgerec_core::VariantName::parse(name).expect("a variant"),
            model: edgerec_core::ModelName::parse("m").expect("a name"),
            version: edgerec_core::Version::parse(version).expect("a version"),
            weight,
        };
        Plan {
            surface: edgerec_core::Surface::parse("home").expect("a surface"),
            revision: 4,
            variants: vec![variant("control", "1", 90), variant("treatment", "2", 10)],
            salt: "a salt with spaces\nand a newline".into(),
            updated_by: "deployer".into(),
            updated_at: 1_765_000_000_000,
            reason: "canary".into(),
            signature: None,
        }
    }

    fn revoked() -> Vec<RevokedVersion> {
        vec![RevokedVersion {
            model: edgerec_core::ModelName::parse("m").expect("a name"),
            version: edgerec_core::Version::parse("0.9").expect("a version"),
            manifest_digest: Digest::of(b"manifest 0.9"),
        }]
    }

    fn signed(mut plan: Plan, key: &SigningKey) -> Plan {
        let digests = vec![Digest::of(b"manifest 1"), Digest::of(b"manifest 2")];
        let statement = plan.statement(&digests, &revoked(), 1_765_000_000_500);
        plan.signature = Some(crate::records::PlanSignature {
            manifest_digests: digests,
            revoked: revoked(),
            key_id: String::new(),
            served_at: 1_765_000_000_500,
            signature: hex::encode(key.sign(statement.as_bytes()).to_bytes()),
        });
        plan
    }

    #[test]
    fn a_plan_statement_has_one_fact_a_line() {
        let digests = [Digest::of(b"manifest 1"), Digest::of(b"manifest 2")];
        assert_eq!(
            plan().statement(&digests, &revoked(), 1_765_000_000_500),
            format!(
                "edgerec plan v2\nsurface home\nrevision 4\nissued_at 1765000000000\nserved_at 1765000000500\n\
                 salt_sha256 {}\n\
                 variant control m 1 90 {}\nvariant treatment m 2 10 {}\nrevocations 1\nrevoked m 0.9 {}\n",
                Digest::of("a salt with spaces\nand a newline".as_bytes()),
                digests[0],
                digests[1],
                Digest::of(b"manifest 0.9")
            )
        );
        assert!(
            plan()
                .statement(&digests, &[], 0)
                .ends_with(&format!("{}\nrevocations 0\n", digests[1]))
        );
    }

    #[test]
    fn a_plan_verifies_only_as_signed() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = hex::encode(key.verifying_key().to_bytes());
        let keys = TrustedKeys::single(&public).expect("a key");
        let good = signed(plan(), &key);
        verify_plan_signature(&keys, &good, 0).expect("verifies");
        // What a proxy in the middle might change: each is refused.
        let mut changes: Vec<(&str, Plan)> = Vec::new();
        let mut replayed = good.clone();
        replayed.revision = 3;
        changes.push(("revision", replayed));
        let mut reweighted = good.clone();
        reweighted.variants[0].weight = 10;
        reweighted.variants[1].weight = 90;
        changes.push(("weights", reweighted));
        let mut relabelled = good.clone();
        relabelled.variants[1].version = edgerec_core::Version::parse("3").expect("a version");
        changes.push(("version", relabelled));
        let mut salted = good.clone();
        salted.salt = "another".into();
        changes.push(("salt", salted));
        let mut swapped = good.clone();
        if let Some(signature) = &mut swapped.signature {
            signature.manifest_digests.swap(0, 1);
        }
        changes.push(("digests", swapped));
        // A revocation taken off the list on the way (an older answer's list, replayed) does not verify either.
        let mut unrevoked = good.clone();
        if let Some(signature) = &mut unrevoked.signature {
            signature.revoked.clear();
        }
        changes.push(("revocations", unrevoked));
        // An old answer made to look new.
        let refreshed = {
            let mut plan = good.clone();
            if let Some(signature) = &mut plan.signature {
                signature.served_at += 60_000;
            }
            plan
        };
        changes.push(("served_at", refreshed));
        for (what, plan) in changes {
            assert_eq!(
                verify_plan_signature(&keys, &plan, 0),
                Err(SignatureError::BadSignature),
                "{what}"
            );
        }
        let mut stripped = good.clone();
        stripped.signature = None;
        assert_eq!(
            verify_plan_signature(&keys, &stripped, 0),
            Err(SignatureError::UnsignedPlan)
        );
        let mut short = good.clone();
        if let Some(signature) = &mut short.signature {
            signature.manifest_digests.pop();
        }
        assert_eq!(
            verify_plan_signature(&keys, &short, 0),
            Err(SignatureError::DigestCount {
                digests: 1,
                variants: 2
            })
        );
        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(
            verify_plan_signature(&keys, &signed(plan(), &other), 0),
            Err(SignatureError::BadSignature)
        );
        // The wire form: the signature travels with the plan and parses back.
        let json = serde_json::to_string(&good).expect("serialises");
        assert_eq!(serde_json::from_str::<Plan>(&json).expect("parses"), good);
    }

    #[test]
    fn the_signing_key_document_keeps_its_wire_form() {
        let document = SigningKeyDocument::ed25519("ab".repeat(32), Vec::new());
        let json = serde_json::to_value(&document).expect("serialises");
        assert_eq!(json["algorithm"], "ed25519");
        assert_eq!(json["public_key"], "ab".repeat(32));
        assert_eq!(
            serde_json::from_value::<SigningKeyDocument>(json).expect("parses"),
            document
        );
    }
}
