//! The storage a registry runs on. Every backend offers the same operations with the same guarantees: a write and
//! its audit entry land together or not at all, versions are never overwritten, and a plan changes only from the
//! revision the writer read.

use edgerec_core::Digest;
use edgerec_registry_api::keys::KeyRotation;

use edgerec_registry_api::records::{AuditEntry, Plan, Revocation, TokenRecord, VersionRecord};

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The write lost a race or would overwrite something immutable.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A version is still named by a deployment plan.
    #[error("{0}")]
    Referenced(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend could not be reached or failed; nothing was written.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The disk (or quota) is full; nothing was written, and the same write succeeds once space is freed.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// Stored data does not parse.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// An audit entry before the store numbers and timestamps it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDraft {
    pub actor: String,
    pub action: &'static str,
    pub target: String,
    pub reason: String,
    pub detail: serde_json::Value,
}

/// Metadata, plans, audit log, tokens and artifacts.
#[allow(async_fn_in_trait)] // Used through generics, never as `dyn`; backends decide whether futures are `Send`.
pub trait Store {
    /// Stores `bytes` under `digest`, which the caller has checked. Storing the same blob twice is a no-op.
    async fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError>;
    async fn get_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError>;

    /// Adds a version; [`StoreError::Conflict`] if `model`/`version` exists.
    async fn insert_version(
        &self,
        record: &VersionRecord,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;
    async fn get_version(
        &self,
        model: &str,
        version: &str,
    ) -> Result<Option<VersionRecord>, StoreError>;
    /// All versions of `model` (of every model when `None`), by model then publication order.
    async fn list_versions(&self, model: Option<&str>) -> Result<Vec<VersionRecord>, StoreError>;
    /// Removes a version that no current plan names ([`StoreError::Referenced`] otherwise), putting it on the
    /// revocation list in the same write when `revocation` is given (the caller found it not yet there).
    async fn delete_version(
        &self,
        model: &str,
        version: &str,
        revocation: Option<&Revocation>,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;
    /// Puts a published version on the revocation list: [`StoreError::NotFound`] without such a version,
    /// [`StoreError::Conflict`] if it is already there. Entries are never removed.
    async fn revoke_version(
        &self,
        revocation: &Revocation,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;
    /// The revocations of `model` (of every model when `None`), by model then version.
    async fn revocations(&self, model: Option<&str>) -> Result<Vec<Revocation>, StoreError>;

    /// Every signing-key rotation, oldest first.
    async fn key_rotations(&self) -> Result<Vec<KeyRotation>, StoreError>;
    /// Appends `rotation`, which must retire the key the last one named (any key when there is none):
    /// [`StoreError::Conflict`] otherwise, or when another rotation lands first.
    async fn add_key_rotation(
        &self,
        rotation: &KeyRotation,
        audit: AuditDraft,
    ) -> Result<(), StoreError>;

    async fn get_plan(&self, surface: &str) -> Result<Option<Plan>, StoreError>;
    /// Every revision of a surface's plan, oldest first.
    async fn plan_history(&self, surface: &str) -> Result<Vec<Plan>, StoreError>;
    /// The current plan of every surface.
    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError>;
    /// Writes `plan` (whose revision is one more than the current one) if the current revision is `plan.revision -
    /// 1` (0: no plan yet); [`StoreError::Conflict`] otherwise.
    async fn put_plan(&self, plan: &Plan, audit: AuditDraft) -> Result<(), StoreError>;

    /// The newest `limit` audit entries, newest first.
    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    async fn put_token(&self, token: &TokenRecord, audit: AuditDraft) -> Result<(), StoreError>;
    async fn token_by_secret_hash(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<TokenRecord>, StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    async fn revoke_token(&self, id: &str, audit: AuditDraft) -> Result<(), StoreError>;
}
