//! The registry's signing keys over time. Each key has an id; a rotation to a new key is a statement signed by the
//! old one, naming the new key and how long the old one stays valid. A verifier configured with one key accepts
//! the keys such statements chain to from it ([`TrustedKeys`]), each retired key until its grace ends.

use edgerec_core::Digest;
use serde::{Deserialize, Serialize};

use crate::signature::{SignatureError, verify};

/// The id of the ed25519 public key `public_key_hex`: the first 16 hex characters of the sha256 of its 32 bytes
/// (`None` when it is not a key).
pub fn key_id(public_key_hex: &str) -> Option<String> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(public_key_hex.trim(), &mut key).ok()?;
    Some(Digest::of(&key).to_string()[..16].to_string())
}

/// A rotation from one signing key to the next, signed by the key it retires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    /// The retired key, hex.
    pub from_key: String,
    /// The new key, hex: it signs everything from this rotation on.
    pub to_key: String,
    /// Until when (milliseconds since the Unix epoch) the retired key still verifies: the grace period in which
    /// what it signed before is re-signed and verifiers learn of the new key.
    pub old_valid_until: i64,
    pub issued_at: i64,
    /// ed25519 of the retired key over [`KeyRotation::statement`], hex.
    pub signature: String,
}

impl KeyRotation {
    /// What the retired key signs, one fact a line (hex and integers only, so the browser package rebuilds the
    /// same bytes).
    pub fn statement(&self) -> String {
        let id = |key: &str| key_id(key).unwrap_or_default();
        format!(
            "edgerec key rotation v1\nfrom {} {}\nto {} {}\nold_valid_until {}\nissued_at {}\n",
            id(&self.from_key),
            self.from_key,
            id(&self.to_key),
            self.to_key,
            self.old_valid_until,
            self.issued_at
        )
    }
}

/// A key a verifier accepts, and until when (`None`: the newest, valid until a rotation retires it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub public_key: String,
    pub id: String,
    pub valid_until: Option<i64>,
}

/// The keys a verifier accepts: the key it was configured with, and each key a rotation signed by an accepted key
/// names, the retired ones until their grace ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKeys {
    /// Oldest first; the last is the current one.
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// Just `public_key_hex`.
    pub fn single(public_key_hex: &str) -> Result<Self, SignatureError> {
        let key = public_key_hex.trim().to_string();
        let id = key_id(&key)
            .ok_or_else(|| SignatureError::PublicKey(key.chars().take(80).collect()))?;
        Ok(Self {
            keys: vec![TrustedKey {
                public_key: key,
                id,
                valid_until: None,
            }],
        })
    }

    /// `configured` and the keys `rotations` (oldest first, as the registry serves them) chain to from it: a
    /// rotation counts only once signed by the key it retires, which must already be accepted; rotations before
    /// the configured key are skipped. A rotation from an accepted key that does not verify is refused: the chain
    /// is not the registry's.
    pub fn from_chain(configured: &str, rotations: &[KeyRotation]) -> Result<Self, SignatureError> {
        let mut trusted = Self::single(configured)?;
        for rotation in rotations {
            let current = trusted.current();
            if rotation.from_key.trim() != current.public_key {
                continue;
            }
            verify(
                &rotation.from_key,
                rotation.statement().as_bytes(),
                &rotation.signature,
            )
            .map_err(|_| SignatureError::BadRotation(current.id.clone()))?;
            let next = Self::single(&rotation.to_key)?;
            if let Some(last) = trusted.keys.last_mut() {
                last.valid_until = Some(rotation.old_valid_until);
            }
            trusted.keys.extend(next.keys);
        }
        Ok(trusted)
    }

    /// The newest key.
    pub fn current(&self) -> &TrustedKey {
        self.keys.last().expect("at least the configured key")
    }

    /// Every key, oldest first.
    pub fn all(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Whether these keys are `earlier`'s and more: the same keys in the same order, then any later ones. A
    /// verifier never gives up a rotation it has verified for a chain that leaves it out.
    pub fn extends(&self, earlier: &TrustedKeys) -> bool {
        self.keys.len() >= earlier.keys.len()
            && self
                .keys
                .iter()
                .zip(&earlier.keys)
                .all(|(now, before)| now.public_key == before.public_key)
    }

    /// The key `id` names, if it is accepted at `now_ms`.
    pub fn valid(&self, id: &str, now_ms: i64) -> Option<&TrustedKey> {
        self.keys
            .iter()
            .find(|k| k.id == id && k.valid_until.is_none_or(|until| now_ms <= until))
    }

    /// Checks `signature_hex` over `message` against the keys valid at `now_ms`.
    pub fn verify(
        &self,
        message: &[u8],
        signature_hex: &str,
        now_ms: i64,
    ) -> Result<(), SignatureError> {
        let valid = self
            .keys
            .iter()
            .filter(|k| k.valid_until.is_none_or(|until| now_ms <= until));
        for key in valid {
            if verify(&key.public_key, message, signature_hex).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::BadSignature)
    }

    /// Checks the signature of a manifest digest against the keys valid at `now_ms`.
    pub fn verify_manifest(
        &self,
        digest: &Digest,
        signature_hex: &str,
        now_ms: i64,
    ) -> Result<(), SignatureError> {
        self.verify(digest.as_bytes(), signature_hex, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn public(key: &SigningKey) -> String {
        hex::encode(key.verifying_key().to_bytes())
    }

    fn rotation(from: &SigningKey, to: &SigningKey, until: i64) -> KeyRotation {
        let mut rotation = KeyRotation {
            from_key: public(from),
            to_key: public(to),
            old_valid_until: until,
            issued_at: until - 1_000,
            signature: String::new(),
        };
        rotation.signature = hex::encode(from.sign(rotation.statement().as_bytes()).to_bytes());
        rotation
    }

    #[test]
    fn a_verifier_follows_the_rotations_signed_from_its_key() {
        let keys: Vec<SigningKey> = (1..=3).map(|n| SigningKey::from_bytes(&[n; 32])).collect();
        let chain = [
            rotation(&keys[0], &keys[1], 10_000),
            rotation(&keys[1], &keys[2], 20_000),
        ];
        let trusted = TrustedKeys::from_chain(&public(&keys[0]), &chain).expect("a chain");
        assert_eq!(trusted.current().public_key, public(&keys[2]));
        assert_eq!(
            trusted
                .all()
                .iter()
                .map(|k| k.valid_until)
                .collect::<Vec<_>>(),
            [Some(10_000), Some(20_000), None]
        );
        // Configured with the middle key: the first rotation is not its to follow.
        let later = TrustedKeys::from_chain(&public(&keys[1]), &chain).expect("a chain");
        assert_eq!(later.all().len(), 2);
        // Each key verifies what it signed until its grace ends; then only the newer ones do.
        let message = b"a plan";
        let signed_by = |n: usize| hex::encode(keys[n].sign(message).to_bytes());
        trusted
            .verify(message, &signed_by(0), 10_000)
            .expect("within the grace");
        assert_eq!(
            trusted.verify(message, &signed_by(0), 10_001),
            Err(SignatureError::BadSignature)
        );
        trusted
            .verify(message, &signed_by(2), 1_000_000)
            .expect("the current key");
        let stranger = hex::encode(SigningKey::from_bytes(&[9; 32]).sign(message).to_bytes());
        assert_eq!(
            trusted.verify(message, &stranger, 0),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(trusted.valid(&trusted.all()[0].id, 10_001), None);
        // A document leaving out the rotations (served by whoever holds a retired key) is not an extension.
        let shortened = TrustedKeys::from_chain(&public(&keys[0]), &[]).expect("the first key");
        assert!(trusted.extends(&shortened) && !shortened.extends(&trusted));
        assert!(trusted.valid(&trusted.current().id, 10_001).is_some());
    }

    #[test]
    fn a_rotation_the_retired_key_did_not_sign_is_refused() {
        let keys: Vec<SigningKey> = (1..=3).map(|n| SigningKey::from_bytes(&[n; 32])).collect();
        // Signed by a key of the attacker's, or altered after signing (a longer grace).
        let forged = rotation(&keys[2], &keys[1], 10_000);
        let forged = KeyRotation {
            from_key: public(&keys[0]),
            ..forged
        };
        let mut stretched = rotation(&keys[0], &keys[1], 10_000);
        stretched.old_valid_until = i64::MAX;
        for chain in [[forged], [stretched]] {
            assert!(matches!(
                TrustedKeys::from_chain(&public(&keys[0]), &chain),
                Err(SignatureError::BadRotation(_))
            ));
        }
        assert!(matches!(
            TrustedKeys::single("zz"),
            Err(SignatureError::PublicKey(_))
        ));
        assert_eq!(key_id(&public(&keys[0])).map(|id| id.len()), Some(16));
    }
}
