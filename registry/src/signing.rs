//! ed25519 signatures over manifest digests: the registry signs each version it accepts, and edge nodes configured
//! with its public key refuse any manifest whose signature does not verify.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use edgerec_core::Digest;

/// Why a key could not be loaded or a signature checked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SigningError {
    #[error("signing key {path}: {message}")]
    Key { path: String, message: String },
    #[error("`{0}` is not an ed25519 public key (64 hex characters)")]
    PublicKey(String),
    #[error("the signature does not verify against the registry's public key")]
    BadSignature,
}

/// The registry's signing key.
#[derive(Debug)]
pub struct ManifestSigner {
    key: SigningKey,
}

impl ManifestSigner {
    /// Loads the key from `path` (hex of the 32-byte secret), creating it with owner-only permissions if missing.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningError> {
        let error = |message: String| SigningError::Key {
            path: path.display().to_string(),
            message,
        };
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret)
                .map_err(|_| error("not 64 hex characters".into()))?;
            return Ok(Self {
                key: SigningKey::from_bytes(&secret),
            });
        }
        let key = SigningKey::generate(&mut rand_core::OsRng);
        // Readable by its owner only from its first byte, and durable before it is used to sign anything.
        edgerec_storage::write_durably(
            path,
            hex::encode(key.to_bytes()).as_bytes(),
            edgerec_storage::Access::OwnerOnly,
        )
        .map_err(|e| error(e.to_string()))?;
        Ok(Self { key })
    }

    /// The public key, hex: what edge nodes are configured with.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// The signature of a manifest digest, hex.
    pub fn sign(&self, manifest_digest: &Digest) -> String {
        hex::encode(self.key.sign(manifest_digest.as_bytes()).to_bytes())
    }
}

/// Checks `signature_hex` over `manifest_digest` against `public_key_hex`.
pub fn verify_manifest_signature(
    public_key_hex: &str,
    manifest_digest: &Digest,
    signature_hex: &str,
) -> Result<(), SigningError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(public_key_hex.trim(), &mut key)
        .map_err(|_| SigningError::PublicKey(public_key_hex.chars().take(80).collect()))?;
    let key = VerifyingKey::from_bytes(&key)
        .map_err(|_| SigningError::PublicKey(public_key_hex.chars().take(80).collect()))?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(signature_hex.trim(), &mut signature)
        .map_err(|_| SigningError::BadSignature)?;
    key.verify(
        manifest_digest.as_bytes(),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| SigningError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifies_and_keeps_its_key() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("signing.key");
        let signer = ManifestSigner::load_or_create(&path).expect("creates a key");
        let digest = Digest::of(b"manifest");
        let signature = signer.sign(&digest);
        verify_manifest_signature(&signer.public_key_hex(), &digest, &signature).expect("verifies");
        assert_eq!(
            verify_manifest_signature(&signer.public_key_hex(), &Digest::of(b"other"), &signature),
            Err(SigningError::BadSignature)
        );
        let mut tampered = signature.clone().into_bytes();
        tampered[0] = if tampered[0] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(
            verify_manifest_signature(&signer.public_key_hex(), &digest, &tampered),
            Err(SigningError::BadSignature)
        );
        let reloaded = ManifestSigner::load_or_create(&path).expect("loads the key");
        assert_eq!(reloaded.public_key_hex(), signer.public_key_hex());
        assert!(matches!(
            verify_manifest_signature("zz", &digest, &signature),
            Err(SigningError::PublicKey(_))
        ));
    }
}
