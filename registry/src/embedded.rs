//! The embedded backend: blobs in a local folder (written to a temporary file, then renamed into place) and
//! everything else in one redb database file, where each change and its audit entry commit in one transaction.

use std::path::{Path, PathBuf};

use edgerec_core::Digest;
use redb::{Database, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::records::{AuditEntry, Plan, TokenRecord, VersionRecord, now_millis};
use crate::store::{AuditDraft, Store, StoreError};

/// `model \0 version` → [`VersionRecord`] JSON.
const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
/// `surface \0 revision (20 digits)` → [`Plan`] JSON, every revision.
const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");
/// `surface` → current revision.
const PLAN_HEADS: TableDefinition<&str, u64> = TableDefinition::new("plan_heads");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// token id → [`TokenRecord`] JSON.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// sha256 of the secret → token id.
const TOKEN_SECRETS: TableDefinition<&str, &str> = TableDefinition::new("token_secrets");

/// A registry stored under one folder: `registry.redb` and `blobs/sha256/<hex>`.
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Database,
    blobs: PathBuf,
}

fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

fn io(what: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", what.display()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn version_key(model: &str, version: &str) -> String {
    format!("{model}\0{version}")
}

fn plan_key(surface: &str, revision: u64) -> String {
    format!("{surface}\0{revision:020}")
}

fn append_audit(txn: &redb::WriteTransaction, draft: AuditDraft) -> Result<AuditEntry, StoreError> {
    let mut table = txn.open_table(AUDIT).map_err(unavailable)?;
    let sequence = table
        .last()
        .map_err(unavailable)?
        .map_or(1, |(key, _)| key.value() + 1);
    let entry = AuditEntry {
        sequence,
        at: now_millis(),
        actor: draft.actor,
        action: draft.action.to_string(),
        target: draft.target,
        reason: draft.reason,
        detail: draft.detail,
    };
    table
        .insert(sequence, encode(&entry).as_slice())
        .map_err(unavailable)?;
    Ok(entry)
}

impl EmbeddedStore {
    /// Opens (creating if needed) the registry under `root`. One process at a time holds the database.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| io(&blobs, e))?;
        let path = root.join("registry.redb");
        let db = edgerec_storage::create_database(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "{} is in use by another process (a running registry?)",
                path.display()
            )),
            other => unavailable(other),
        })?;
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(VERSIONS).map_err(unavailable)?;
            txn.open_table(PLANS).map_err(unavailable)?;
            txn.open_table(PLAN_HEADS).map_err(unavailable)?;
            txn.open_table(AUDIT).map_err(unavailable)?;
            txn.open_table(TOKENS).map_err(unavailable)?;
            txn.open_table(TOKEN_SECRETS).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        Ok(Self { db, blobs })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.to_string())
    }

    fn read<T>(
        &self,
        body: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        body(&txn)
    }

    fn write<T>(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        // An error drops the transaction, which aborts it: nothing of it is written.
        let value = body(&txn)?;
        txn.commit().map_err(unavailable)?;
        Ok(value)
    }
}

impl Store for EmbeddedStore {
    async fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        // Skipped only when the copy there is intact: a damaged one is replaced by this upload (whose digest the
        // caller checked).
        if let Ok(existing) = std::fs::read(&path)
            && Digest::of(&existing) == *digest
        {
            return Ok(());
        }
        // Durable before it is visible: written aside, synced, renamed into place, the folder synced.
        edgerec_storage::write_durably(&path, bytes, edgerec_storage::Access::Shared)
            .map_err(|e| io(&path, e))
    }

    async fn get_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob_path(digest);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    async fn insert_version(
        &self,
        record: &VersionRecord,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let key = version_key(&record.model, &record.version);
            {
                let mut versions = txn.open_table(VERSIONS).map_err(unavailable)?;
                if versions.get(key.as_str()).map_err(unavailable)?.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "{} {} is already published; versions are immutable",
                        record.model, record.version
                    )));
                }
                versions
                    .insert(key.as_str(), encode(record).as_slice())
                    .map_err(unavailable)?;
            }
            append_audit(txn, audit)?;
            Ok(())
        })
    }

    async fn get_version(
        &self,
        model: &str,
        version: &str,
    ) -> Result<Option<VersionRecord>, StoreError> {
        self.read(|txn| {
            let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
            match versions
                .get(version_key(model, version).as_str())
                .map_err(unavailable)?
            {
                Some(bytes) => decode(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    async fn list_versions(&self, model: Option<&str>) -> Result<Vec<VersionRecord>, StoreError> {
        let mut records: Vec<VersionRecord> = self.read(|txn| {
            let versions = txn.open_table(VERSIONS).map_err(unavailable)?;
            let mut records = Vec::new();
            for entry in versions.iter().map_err(unavailable)? {
                let (_, value) = entry.map_err(unavailable)?;
                let record: VersionRecord = decode(value.value())?;
                if model.is_none_or(|m| m == record.model) {
                    records.push(record);
                }
            }
            Ok(records)
        })?;
        records.sort_by(|a, b| (&a.model, a.published_at).cmp(&(&b.model, b.published_at)));
        Ok(records)
    }

    async fn delete_version(
        &self,
        model: &str,
        version: &str,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let heads = txn.open_table(PLAN_HEADS).map_err(unavailable)?;
            let plans = txn.open_table(PLANS).map_err(unavailable)?;
            for head in heads.iter().map_err(unavailable)? {
                let (surface, revision) = head.map_err(unavailable)?;
                let key = plan_key(surface.value(), revision.value());
                let Some(bytes) = plans.get(key.as_str()).map_err(unavailable)? else {
                    continue;
                };
                let plan: Plan = decode(bytes.value())?;
                if let Some(variant) = plan
                    .variants
                    .iter()
                    .find(|v| v.model == model && v.version == version)
                {
                    return Err(StoreError::Referenced(format!(
                        "{model} {version} serves variant `{}` of surface `{}`; deploy another version first",
                        variant.name, plan.surface
                    )));
                }
            }
            drop((heads, plans));
            let removed = txn
                .open_table(VERSIONS)
                .map_err(unavailable)?
                .remove(version_key(model, version).as_str())
                .map_err(unavailable)?
                .is_some();
            if !removed {
                return Err(StoreError::NotFound(format!("{model} {version}")));
            }
            append_audit(txn, audit)?;
            Ok(())
        })
    }

    async fn get_plan(&self, surface: &str) -> Result<Option<Plan>, StoreError> {
        self.read(|txn| {
            let heads = txn.open_table(PLAN_HEADS).map_err(unavailable)?;
            let Some(revision) = heads.get(surface).map_err(unavailable)? else {
                return Ok(None);
            };
            let plans = txn.open_table(PLANS).map_err(unavailable)?;
            let key = plan_key(surface, revision.value());
            match plans.get(key.as_str()).map_err(unavailable)? {
                Some(bytes) => decode(bytes.value()).map(Some),
                None => Err(StoreError::Corrupt(format!("plan head {key} has no plan"))),
            }
        })
    }

    async fn plan_history(&self, surface: &str) -> Result<Vec<Plan>, StoreError> {
        self.read(|txn| {
            let plans = txn.open_table(PLANS).map_err(unavailable)?;
            let (start, end) = (format!("{surface}\0"), format!("{surface}\u{1}"));
            let mut history = Vec::new();
            for entry in plans
                .range(start.as_str()..end.as_str())
                .map_err(unavailable)?
            {
                let (_, value) = entry.map_err(unavailable)?;
                history.push(decode(value.value())?);
            }
            Ok(history)
        })
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        // Heads and plans from one snapshot, so no plan is read at a revision its head has moved past.
        self.read(|txn| {
            let heads = txn.open_table(PLAN_HEADS).map_err(unavailable)?;
            let plans = txn.open_table(PLANS).map_err(unavailable)?;
            let mut current = Vec::new();
            for head in heads.iter().map_err(unavailable)? {
                let (surface, revision) = head.map_err(unavailable)?;
                let key = plan_key(surface.value(), revision.value());
                match plans.get(key.as_str()).map_err(unavailable)? {
                    Some(bytes) => current.push(decode(bytes.value())?),
                    None => {
                        return Err(StoreError::Corrupt(format!("plan head {key} has no plan")));
                    }
                }
            }
            Ok(current)
        })
    }

    async fn put_plan(&self, plan: &Plan, audit: AuditDraft) -> Result<(), StoreError> {
        self.write(|txn| {
            {
                let mut heads = txn.open_table(PLAN_HEADS).map_err(unavailable)?;
                let current = heads
                    .get(plan.surface.as_str())
                    .map_err(unavailable)?
                    .map_or(0, |r| r.value());
                if current + 1 != plan.revision {
                    return Err(StoreError::Conflict(format!(
                        "the plan of `{}` is at revision {current}, not {}",
                        plan.surface,
                        plan.revision - 1
                    )));
                }
                heads
                    .insert(plan.surface.as_str(), plan.revision)
                    .map_err(unavailable)?;
                txn.open_table(PLANS)
                    .map_err(unavailable)?
                    .insert(
                        plan_key(&plan.surface, plan.revision).as_str(),
                        encode(plan).as_slice(),
                    )
                    .map_err(unavailable)?;
            }
            append_audit(txn, audit)?;
            Ok(())
        })
    }

    async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(AUDIT).map_err(unavailable)?;
            let mut entries = Vec::new();
            for entry in table.iter().map_err(unavailable)?.rev().take(limit) {
                let (_, value) = entry.map_err(unavailable)?;
                entries.push(decode(value.value())?);
            }
            Ok(entries)
        })
    }

    async fn put_token(&self, token: &TokenRecord, audit: AuditDraft) -> Result<(), StoreError> {
        self.write(|txn| {
            {
                let mut tokens = txn.open_table(TOKENS).map_err(unavailable)?;
                if tokens
                    .get(token.id.as_str())
                    .map_err(unavailable)?
                    .is_some()
                {
                    return Err(StoreError::Conflict(format!("token {} exists", token.id)));
                }
                tokens
                    .insert(token.id.as_str(), encode(token).as_slice())
                    .map_err(unavailable)?;
                txn.open_table(TOKEN_SECRETS)
                    .map_err(unavailable)?
                    .insert(token.secret_sha256.as_str(), token.id.as_str())
                    .map_err(unavailable)?;
            }
            append_audit(txn, audit)?;
            Ok(())
        })
    }

    async fn token_by_secret_hash(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|txn| {
            let secrets = txn.open_table(TOKEN_SECRETS).map_err(unavailable)?;
            let Some(id) = secrets.get(secret_sha256).map_err(unavailable)? else {
                return Ok(None);
            };
            let tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            match tokens.get(id.value()).map_err(unavailable)? {
                Some(bytes) => decode(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|txn| {
            let tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            let mut records = Vec::new();
            for entry in tokens.iter().map_err(unavailable)? {
                let (_, value) = entry.map_err(unavailable)?;
                records.push(decode(value.value())?);
            }
            Ok(records)
        })
    }

    async fn revoke_token(&self, id: &str, audit: AuditDraft) -> Result<(), StoreError> {
        self.write(|txn| {
            {
                let mut tokens = txn.open_table(TOKENS).map_err(unavailable)?;
                let mut record: TokenRecord = match tokens.get(id).map_err(unavailable)? {
                    Some(bytes) => decode(bytes.value())?,
                    None => return Err(StoreError::NotFound(format!("token {id}"))),
                };
                record.revoked = true;
                tokens
                    .insert(id, encode(&record).as_slice())
                    .map_err(unavailable)?;
            }
            append_audit(txn, audit)?;
            Ok(())
        })
    }
}
