//! The embedded backend: blobs in a local folder (written to a temporary file, then renamed into place) and
//! everything else in one redb database file, where each change and its audit entry commit in one transaction.
//!
//! A full disk refuses the write at hand ([`StoreError::StorageFull`]) and nothing else: a blob is never left
//! partial, and the database, which redb closes to every later transaction after a failed write, is opened again
//! at once, so reads go on and the next write succeeds once space is freed, without a restart.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use edgerec_core::Digest;
use edgerec_registry_api::keys::KeyRotation;
use edgerec_storage::encode;
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use crate::store::{AuditDraft, Store, StoreError};
use edgerec_registry_api::records::{AuditEntry, Plan, Revocation, TokenRecord, VersionRecord};
use edgerec_storage::now_ms;

/// `model \0 version` → [`VersionRecord`] JSON.
const VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("versions");
/// `model \0 version` → [`Revocation`] JSON; entries are never removed.
const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocations");
/// sequence (1, 2, ...) → [`KeyRotation`] JSON, oldest first.
const KEY_ROTATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("key_rotations");
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
    /// Replaced by [`EmbeddedStore::recover`] after a failed write; `None` while it could not be opened again.
    /// Every transaction begins and ends under a read lock, so the write lock means none is open.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    blobs: PathBuf,
}

/// A database error as a [`StoreError`]: [`StoreError::StorageFull`] when the disk is full.
fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(e) if edgerec_storage::is_storage_full(&e) => {
            StoreError::StorageFull(format!("the registry database: {e}"))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn io(what: &Path, e: std::io::Error) -> StoreError {
    let message = format!("{}: {e}", what.display());
    if edgerec_storage::is_storage_full(&e) {
        StoreError::StorageFull(message)
    } else {
        StoreError::Unavailable(message)
    }
}

fn open_database(path: &Path) -> Result<Database, StoreError> {
    edgerec_storage::create_database(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
            "{} is in use by another process (a running registry?)",
            path.display()
        )),
        other => unavailable(other),
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    edgerec_storage::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn version_key(model: &str, version: &str) -> String {
    format!("{model}\0{version}")
}

fn plan_key(surface: &str, revision: u64) -> String {
    format!("{surface}\0{revision:020}")
}

/// Puts `revocation` on the list; [`StoreError::Conflict`] if its version is already there.
fn insert_revocation(
    txn: &redb::WriteTransaction,
    revocation: &Revocation,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(REVOCATIONS).map_err(unavailable)?;
    let key = version_key(&revocation.model, &revocation.version);
    if table.get(key.as_str()).map_err(unavailable)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "{} {} is already revoked",
            revocation.model, revocation.version
        )));
    }
    table
        .insert(key.as_str(), encode(revocation).as_slice())
        .map_err(unavailable)?;
    Ok(())
}

fn append_audit(txn: &redb::WriteTransaction, draft: AuditDraft) -> Result<AuditEntry, StoreError> {
    let mut table = txn.open_table(AUDIT).map_err(unavailable)?;
    let sequence = table
        .last()
        .map_err(unavailable)?
        .map_or(1, |(key, _)| key.value() + 1);
    let entry = AuditEntry {
        sequence,
        at: now_ms(),
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

/// Whether a failure may have come from the disk, after which the database may need opening again.
fn from_the_disk(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::StorageFull(_) | StoreError::Unavailable(_)
    )
}

impl EmbeddedStore {
    /// Opens (creating if needed) the registry under `root`. One process at a time holds the database.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| io(&blobs, e))?;
        let path = root.join("registry.redb");
        let db = open_database(&path)?;
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(VERSIONS).map_err(unavailable)?;
            txn.open_table(PLANS).map_err(unavailable)?;
            txn.open_table(PLAN_HEADS).map_err(unavailable)?;
            txn.open_table(AUDIT).map_err(unavailable)?;
            txn.open_table(TOKENS).map_err(unavailable)?;
            txn.open_table(TOKEN_SECRETS).map_err(unavailable)?;
            txn.open_table(REVOCATIONS).map_err(unavailable)?;
            txn.open_table(KEY_ROTATIONS).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            path,
            blobs,
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.to_string())
    }

    /// Runs `body` on the database, opening it first if an earlier failure left it closed.
    fn with_db<T>(
        &self,
        body: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(db) = db.as_ref() {
                return body(db);
            }
        }
        self.recover()?;
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match db.as_ref() {
            Some(db) => body(db),
            None => Err(StoreError::Unavailable(format!(
                "{} could not be opened again",
                self.path.display()
            ))),
        }
    }

    /// Once a write to its file has failed (a full disk), redb refuses every later transaction, reads included
    /// ("a previous I/O error occurred"), until the file is opened again. Opens it again if so, and says whether
    /// it did: the file still holds the last committed state, which a failed commit never replaces.
    fn recover(&self) -> Result<bool, StoreError> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = db.as_ref() {
            // No other transaction is open under the write lock, so this does not wait; dropped, it aborts.
            match current.begin_write() {
                Err(redb::TransactionError::Storage(redb::StorageError::PreviousIo)) => {}
                _ => return Ok(false),
            }
        }
        // The old handle holds the file's lock until it is gone.
        *db = None;
        *db = Some(open_database(&self.path)?);
        Ok(true)
    }

    fn read<T>(
        &self,
        body: impl Fn(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let attempt = || self.with_db(|db| body(&db.begin_read().map_err(unavailable)?));
        match attempt() {
            Err(e) if from_the_disk(&e) && self.recover()? => attempt(),
            other => other,
        }
    }

    fn write<T>(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let written = self.with_db(|db| {
            let txn = db.begin_write().map_err(unavailable)?;
            // An error drops the transaction, which aborts it: nothing of it is written.
            let value = body(&txn)?;
            txn.commit().map_err(unavailable)?;
            Ok(value)
        });
        if let Err(e) = &written
            && from_the_disk(e)
        {
            // So that reads go on, and the next write succeeds once space is freed. The caller learns of the
            // write's failure; a failure to reopen shows on the next call.
            let _ = self.recover();
        }
        written
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
        revocation: Option<&Revocation>,
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
            if let Some(revocation) = revocation {
                insert_revocation(txn, revocation)?;
            }
            append_audit(txn, audit)?;
            Ok(())
        })
    }

    async fn revoke_version(
        &self,
        revocation: &Revocation,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            let key = version_key(&revocation.model, &revocation.version);
            if txn
                .open_table(VERSIONS)
                .map_err(unavailable)?
                .get(key.as_str())
                .map_err(unavailable)?
                .is_none()
            {
                return Err(StoreError::NotFound(format!(
                    "{} {}",
                    revocation.model, revocation.version
                )));
            }
            insert_revocation(txn, revocation)?;
            append_audit(txn, audit)?;
            Ok(())
        })
    }

    async fn key_rotations(&self) -> Result<Vec<KeyRotation>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(KEY_ROTATIONS).map_err(unavailable)?;
            let mut rotations = Vec::new();
            for entry in table.iter().map_err(unavailable)? {
                let (_, value) = entry.map_err(unavailable)?;
                rotations.push(decode(value.value())?);
            }
            Ok(rotations)
        })
    }

    async fn add_key_rotation(
        &self,
        rotation: &KeyRotation,
        audit: AuditDraft,
    ) -> Result<(), StoreError> {
        self.write(|txn| {
            {
                let mut table = txn.open_table(KEY_ROTATIONS).map_err(unavailable)?;
                let last = match table.last().map_err(unavailable)? {
                    Some((sequence, value)) => {
                        Some((sequence.value(), decode::<KeyRotation>(value.value())?))
                    }
                    None => None,
                };
                let sequence = match last {
                    Some((_, last)) if last.to_key != rotation.from_key => {
                        return Err(StoreError::Conflict(
                            "the key being retired is not the registry's current key".into(),
                        ));
                    }
                    Some((sequence, _)) => sequence + 1,
                    None => 1,
                };
                table
                    .insert(sequence, encode(rotation).as_slice())
                    .map_err(unavailable)?;
            }
            append_audit(txn, audit)?;
            Ok(())
        })
    }

    async fn revocations(&self, model: Option<&str>) -> Result<Vec<Revocation>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(REVOCATIONS).map_err(unavailable)?;
            let mut revocations = Vec::new();
            // `\0` ends the model's name in a key, and `\u{1}` is the character after it.
            let (from, to) = model.map_or_else(Default::default, |model| {
                (format!("{model}\0"), format!("{model}\u{1}"))
            });
            let entries = match model {
                Some(_) => table.range(from.as_str()..to.as_str()),
                None => table.iter(),
            };
            for entry in entries.map_err(unavailable)? {
                let (_, value) = entry.map_err(unavailable)?;
                revocations.push(decode(value.value())?);
            }
            Ok(revocations)
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
