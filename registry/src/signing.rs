//! The registry's ed25519 key, which signs the digest of each manifest it accepts and each plan revision it
//! serves; verifiers use [`edgerec_registry_api::signature`].

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};
use edgerec_core::Digest;

/// Why the signing key could not be loaded or created.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("signing key {path}: {message}")]
pub struct SigningKeyError {
    pub path: String,
    pub message: String,
}

/// The registry's signing key.
#[derive(Debug)]
pub struct ManifestSigner {
    key: SigningKey,
}

impl ManifestSigner {
    /// Loads the key from `path` (hex of the 32-byte secret), creating it with owner-only permissions if missing.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningKeyError> {
        let error = |message: String| SigningKeyError {
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

    /// The signature of a plan statement ([`edgerec_registry_api::records::Plan::statement`]), hex.
    pub fn sign_statement(&self, statement: &str) -> String {
        hex::encode(self.key.sign(statement.as_bytes()).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgerec_registry_api::signature::{SignatureError, verify_manifest_signature};

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
            Err(SignatureError::BadSignature)
        );
        let mut tampered = signature.clone().into_bytes();
        tampered[0] = if tampered[0] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(
            verify_manifest_signature(&signer.public_key_hex(), &digest, &tampered),
            Err(SignatureError::BadSignature)
        );
        let reloaded = ManifestSigner::load_or_create(&path).expect("loads the key");
        assert_eq!(reloaded.public_key_hex(), signer.public_key_hex());
    }
}
