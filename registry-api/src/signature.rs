//! ed25519 signatures over manifest digests, as their verifiers see them: the registry signs each version it
//! accepts, and edge nodes and tools refuse any manifest whose signature does not verify against the registry's
//! public key, which `GET /v1/signing-key` serves as a [`SigningKeyDocument`].

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use edgerec_core::Digest;
use serde::{Deserialize, Serialize};

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureError {
    #[error("`{0}` is not an ed25519 public key (64 hex characters)")]
    PublicKey(String),
    #[error("the signature does not verify against the registry's public key")]
    BadSignature,
}

/// What `GET /v1/signing-key` answers, on the registry and on edge nodes (which relay the key they verify with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyDocument {
    /// Always `ed25519`.
    pub algorithm: String,
    /// What the key signs, in words.
    pub signs: String,
    /// The public key, 64 hex characters.
    pub public_key: String,
}

impl SigningKeyDocument {
    /// The document for `public_key_hex`.
    pub fn ed25519(public_key_hex: String) -> Self {
        Self {
            algorithm: "ed25519".into(),
            signs: "the sha256 digest of manifest.json (32 bytes)".into(),
            public_key: public_key_hex,
        }
    }
}

/// Checks `signature_hex` over `manifest_digest` against `public_key_hex`.
pub fn verify_manifest_signature(
    public_key_hex: &str,
    manifest_digest: &Digest,
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
    key.verify(
        manifest_digest.as_bytes(),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| SignatureError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn the_signing_key_document_keeps_its_wire_form() {
        let document = SigningKeyDocument::ed25519("ab".repeat(32));
        let json = serde_json::to_value(&document).expect("serialises");
        assert_eq!(json["algorithm"], "ed25519");
        assert_eq!(json["public_key"], "ab".repeat(32));
        assert_eq!(
            serde_json::from_value::<SigningKeyDocument>(json).expect("parses"),
            document
        );
    }
}
