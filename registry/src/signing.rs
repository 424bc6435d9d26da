//! The registry's ed25519 key, which signs the digest of each manifest it accepts and each plan revision it
//! serves, and its rotations to a new key; verifiers use [`edgerec_registry_api::signature`] and
//! [`edgerec_registry_api::keys`].

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ed25519_dalek::{Signer, SigningKey};
use edgerec_core::Digest;
use edgerec_registry_api::keys::{KeyRotation, TrustedKeys, key_id};
use edgerec_registry_api::signature::verify_manifest_signature;

/// Why the signing key could not be loaded or created.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("signing key {path}: {message}")]
pub struct SigningKeyError {
    pub path: String,
    pub message: String,
}

/// The registry's signing key, and the rotations that led to it (oldest first).
#[derive(Debug)]
pub struct ManifestSigner {
    path: PathBuf,
    state: RwLock<SignerState>,
    /// When the store's chain was last compared with this key ([`ManifestSigner::due`]).
    checked: std::sync::Mutex<Option<std::time::Instant>>,
}

#[derive(Debug)]
struct SignerState {
    key: SigningKey,
    rotations: Vec<KeyRotation>,
}

/// A new key, written next to the current one, and the rotation statement the current key signed for it: in effect
/// once the store holds the statement ([`ManifestSigner::complete`]).
#[derive(Debug)]
pub struct PreparedRotation {
    pub rotation: KeyRotation,
    key: SigningKey,
}

fn read_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret)
        .map_err(|_| "not 64 hex characters".to_string())?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes `key`'s secret to `path`, readable by its owner only from its first byte, durably.
fn write_key(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    edgerec_storage::write_durably(
        path,
        hex::encode(key.to_bytes()).as_bytes(),
        edgerec_storage::Access::OwnerOnly,
    )
}

impl ManifestSigner {
    /// Loads the key from `path` (hex of the 32-byte secret), creating it with owner-only permissions if missing.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningKeyError> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::create(path)
        }
    }

    /// Loads the key at `path`, which must exist.
    pub fn load(path: &Path) -> Result<Self, SigningKeyError> {
        let key = read_key(path).map_err(|message| error(path, message))?;
        Ok(Self::with(path, key))
    }

    /// Makes a new key at `path`, which must not exist yet.
    pub fn create(path: &Path) -> Result<Self, SigningKeyError> {
        if path.exists() {
            return Err(error(
                path,
                "already exists; a key is never overwritten".into(),
            ));
        }
        let key = SigningKey::generate(&mut rand_core::OsRng);
        // Durable before it is used to sign anything.
        write_key(path, &key).map_err(|e| error(path, e.to_string()))?;
        Ok(Self::with(path, key))
    }

    fn with(path: &Path, key: SigningKey) -> Self {
        Self {
            path: path.to_path_buf(),
            state: RwLock::new(SignerState {
                key,
                rotations: Vec::new(),
            }),
            checked: std::sync::Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, SignerState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a prepared rotation's new key (`public_key_hex`) waits until the store holds its statement: a file of
    /// its own per key, so that two rotations prepared at once never overwrite each other's key.
    fn next_path(&self, public_key_hex: &str) -> PathBuf {
        let id = key_id(public_key_hex).unwrap_or_default();
        self.path.with_extension(format!("next-{id}"))
    }

    /// Whether the store's chain is due to be compared with this key again: at most every `every`.
    pub fn due(&self, every: std::time::Duration) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if checked.is_some_and(|at| now.duration_since(at) < every) {
            return false;
        }
        *checked = Some(now);
        true
    }

    /// Takes the store's rotations (oldest first), which must end at this key. When they end at another (a rotation
    /// made by another replica, or before a crash), that key is taken from the key file every replica shares, or
    /// from the prepared key a crash left beside it; otherwise this key is refused (the registry does not start, or
    /// a running one keeps the key it has, which verifies until its grace ends).
    pub fn adopt(&self, rotations: Vec<KeyRotation>) -> Result<(), SigningKeyError> {
        // Each rotation signed by the key it retires, and retiring the key the one before it named: anything else
        // in the store is not this registry's chain.
        if let Some(first) = rotations.first() {
            let chained = TrustedKeys::from_chain(&first.from_key, &rotations)
                .map_err(|e| error(&self.path, format!("the store's key rotations: {e}")))?;
            if chained.all().len() != rotations.len() + 1 {
                return Err(error(
                    &self.path,
                    "the store's key rotations do not follow one another".into(),
                ));
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        // Read before a rotation this process just completed: never go back to the shorter chain.
        if rotations.len() < state.rotations.len() {
            return Ok(());
        }
        if let Some(head) = rotations.last() {
            let own = hex::encode(state.key.verifying_key().to_bytes());
            if head.to_key != own {
                let is_head =
                    |key: &SigningKey| hex::encode(key.verifying_key().to_bytes()) == head.to_key;
                let next_path = self.next_path(&head.to_key);
                let shared = read_key(&self.path).ok().filter(is_head);
                let next = read_key(&next_path).ok().filter(is_head);
                match (shared, next) {
                    (Some(key), _) => state.key = key,
                    (None, Some(key)) => {
                        std::fs::rename(&next_path, &self.path)
                            .map_err(|e| error(&self.path, e.to_string()))?;
                        state.key = key;
                    }
                    (None, None) => {
                        return Err(error(
                            &self.path,
                            format!(
                                "holds key {}, but the registry's current key is {} (rotated {}): install that \
                                 key's file, which every replica shares",
                                key_id(&own).unwrap_or_default(),
                                key_id(&head.to_key).unwrap_or_default(),
                                head.issued_at
                            ),
                        ));
                    }
                }
            }
        }
        state.rotations = rotations;
        Ok(())
    }

    /// The public key, hex: what edge nodes are configured with.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.state().key.verifying_key().to_bytes())
    }

    /// The current key's id.
    pub fn key_id(&self) -> String {
        key_id(&self.public_key_hex()).unwrap_or_default()
    }

    /// Every rotation so far, oldest first.
    pub fn rotations(&self) -> Vec<KeyRotation> {
        self.state().rotations.clone()
    }

    /// Whether `signature_hex` over `manifest_digest` was made by this registry: by its current key or one it
    /// rotated away from. Stored records are re-signed only if it was, so a record written into the store by
    /// anyone without a key is never vouched for.
    pub fn made(&self, manifest_digest: &Digest, signature_hex: &str) -> bool {
        let state = self.state();
        let current = hex::encode(state.key.verifying_key().to_bytes());
        // Every key of the verified chain: versions published under a key rotated away keep their stored
        // signature, which is what proves them this registry's.
        std::iter::once(current.as_str())
            .chain(state.rotations.iter().map(|r| r.from_key.as_str()))
            .any(|key| verify_manifest_signature(key, manifest_digest, signature_hex).is_ok())
    }

    /// The signature of a manifest digest, hex.
    pub fn sign(&self, manifest_digest: &Digest) -> String {
        hex::encode(self.state().key.sign(manifest_digest.as_bytes()).to_bytes())
    }

    /// The signature of a plan statement ([`edgerec_registry_api::records::Plan::statement`]), hex, and the id of
    /// the key that made it.
    pub fn sign_statement(&self, statement: &str) -> (String, String) {
        let state = self.state();
        let public = hex::encode(state.key.verifying_key().to_bytes());
        let signature = hex::encode(state.key.sign(statement.as_bytes()).to_bytes());
        (key_id(&public).unwrap_or_default(), signature)
    }

    /// A new key, written durably beside the current one, and its rotation statement signed by the current key,
    /// which stays valid for `grace_ms` from `now_ms`.
    pub fn prepare(&self, grace_ms: i64, now_ms: i64) -> Result<PreparedRotation, SigningKeyError> {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let next_path = self.next_path(&hex::encode(key.verifying_key().to_bytes()));
        write_key(&next_path, &key).map_err(|e| error(&next_path, e.to_string()))?;
        let state = self.state();
        let mut rotation = KeyRotation {
            from_key: hex::encode(state.key.verifying_key().to_bytes()),
            to_key: hex::encode(key.verifying_key().to_bytes()),
            old_valid_until: now_ms.saturating_add(grace_ms),
            issued_at: now_ms,
            signature: String::new(),
        };
        rotation.signature =
            hex::encode(state.key.sign(rotation.statement().as_bytes()).to_bytes());
        Ok(PreparedRotation { rotation, key })
    }

    /// Signs with the prepared key from now on (its statement is in the store): the key file is replaced by it.
    pub fn complete(&self, prepared: PreparedRotation) -> Result<(), SigningKeyError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        // A follower ([`ManifestSigner::adopt`]) that read the chain meanwhile may have moved the key already.
        let moved = read_key(&self.path)
            .is_ok_and(|key| key.verifying_key() == prepared.key.verifying_key());
        if !moved {
            std::fs::rename(self.next_path(&prepared.rotation.to_key), &self.path)
                .map_err(|e| error(&self.path, e.to_string()))?;
        }
        state.key = prepared.key;
        if state.rotations.last() != Some(&prepared.rotation) {
            state.rotations.push(prepared.rotation);
        }
        Ok(())
    }

    /// Forgets a prepared rotation whose statement did not reach the store.
    pub fn abandon(&self, prepared: PreparedRotation) {
        let _ = std::fs::remove_file(self.next_path(&prepared.rotation.to_key));
    }
}

fn error(path: &Path, message: String) -> SigningKeyError {
    SigningKeyError {
        path: path.display().to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgerec_registry_api::signature::SignatureError;

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
