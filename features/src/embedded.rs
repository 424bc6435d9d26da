//! The embedded backend: one redb file. A batch of events (up to the ingest's `apply_batch`) commits in one durable
//! transaction, and so does a lease swap. Durable, because the database may have to be opened again after a failed
//! write (a full disk): redb would then drop every commit that had not reached the disk, and the ingest, which has
//! moved on, would not apply those events again.

use std::path::Path;

use edgerec_storage::encode;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use edgerec_core::{ItemId, UserId};

use crate::item::ItemFeatures;
use crate::store::{
    FeatureSettings, FeatureStore, ItemRecord, Lease, Sequenced, StoreError, UserRecord, by_entity,
};
use crate::user::UserFeatures;

/// user id → [`UserRecord`] JSON.
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// item id → [`ItemRecord`] JSON.
const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
/// node id → [`Lease`] JSON.
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");

#[derive(Debug)]
pub struct EmbeddedFeatureStore {
    db: Reopening,
    settings: FeatureSettings,
}

/// The database, opened again after a failed operation: once a write fails (a full disk, for one), redb refuses
/// every later transaction until the file is opened anew, and the ingest's retries must find a working store once
/// the cause is gone.
#[derive(Debug)]
struct Reopening {
    path: std::path::PathBuf,
    db: std::sync::RwLock<Option<std::sync::Arc<Database>>>,
}

impl Reopening {
    fn get(&self) -> Result<std::sync::Arc<Database>, StoreError> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(db);
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.clone() {
            return Ok(db);
        }
        let db = std::sync::Arc::new(
            edgerec_storage::create_database(&self.path)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.path.display())))?,
        );
        *slot = Some(db.clone());
        Ok(db)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.get()?.begin_write().map_err(unavailable)
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.get()?.begin_read().map_err(unavailable)
    }

    /// Passes `result` on; after a failure the database is opened again by the next operation.
    fn check<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(result, Err(StoreError::Unavailable(_))) {
            *self.db.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
        result
    }
}

fn unavailable(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    edgerec_storage::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn read<T: DeserializeOwned + Default>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key).map_err(unavailable)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

impl EmbeddedFeatureStore {
    /// Opens (or creates, with its tables) the store file at `path`.
    pub fn open(path: &Path, settings: FeatureSettings) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", parent.display())))?;
        }
        let db = edgerec_storage::create_database(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(USERS).map_err(unavailable)?;
        txn.open_table(ITEMS).map_err(unavailable)?;
        txn.open_table(LEASES).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(Self {
            db: Reopening {
                path: path.to_owned(),
                db: std::sync::RwLock::new(Some(std::sync::Arc::new(db))),
            },
            settings,
        })
    }

    fn apply_now(&self, node: &str, events: &[Sequenced]) -> Result<(), StoreError> {
        let (users, items) = by_entity(events);
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(USERS).map_err(unavailable)?;
            for (user, events) in users {
                let mut record: UserRecord = read(&table, user)?.unwrap_or_default();
                if record.apply(node, events, &self.settings) {
                    table
                        .insert(user, encode(&record).as_slice())
                        .map_err(unavailable)?;
                }
            }
            let mut table = txn.open_table(ITEMS).map_err(unavailable)?;
            for (item, events) in items {
                let mut record: ItemRecord = read(&table, item)?.unwrap_or_default();
                if record.apply(node, events, &self.settings) {
                    table
                        .insert(item, encode(&record).as_slice())
                        .map_err(unavailable)?;
                }
            }
        }
        txn.commit().map_err(unavailable)
    }

    fn read_all<T: DeserializeOwned + Default>(
        &self,
        table: TableDefinition<&'static str, &'static [u8]>,
        ids: &[impl AsRef<str>],
    ) -> Result<Vec<Option<T>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table).map_err(unavailable)?;
        ids.iter().map(|id| read(&table, id.as_ref())).collect()
    }

    fn swap_lease_now(
        &self,
        node: &str,
        expected: Option<&Lease>,
        new: Option<&Lease>,
    ) -> Result<bool, StoreError> {
        // redb runs one write transaction at a time, so the read, the comparison and the write below are one
        // atomic step against every other swap.
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let swapped = {
            let mut table = txn.open_table(LEASES).map_err(unavailable)?;
            // Compared as stored text, as the DynamoDB backend's condition does, so both answer alike.
            let matches = match (table.get(node).map_err(unavailable)?, expected) {
                (None, None) => true,
                (Some(stored), Some(expected)) => stored.value() == expected.to_json().as_bytes(),
                _ => false,
            };
            if matches {
                match new {
                    Some(lease) => {
                        table
                            .insert(node, lease.to_json().as_bytes())
                            .map_err(unavailable)?;
                    }
                    None => {
                        table.remove(node).map_err(unavailable)?;
                    }
                }
            }
            matches
        };
        if swapped {
            txn.commit().map_err(unavailable)?;
        } else {
            txn.abort().map_err(unavailable)?;
        }
        Ok(swapped)
    }
}

impl FeatureStore for EmbeddedFeatureStore {
    async fn apply(&self, node: &str, events: &[Sequenced]) -> Result<(), StoreError> {
        self.db.check(self.apply_now(node, events))
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<UserFeatures>, StoreError> {
        Ok(self
            .read_all::<UserRecord>(USERS, ids)?
            .into_iter()
            .map(|r| r.unwrap_or_default().features)
            .collect())
    }

    async fn items(&self, ids: &[ItemId]) -> Result<Vec<Option<ItemFeatures>>, StoreError> {
        Ok(self
            .read_all::<ItemRecord>(ITEMS, ids)?
            .into_iter()
            .map(|r| r.map(|r| r.features))
            .collect())
    }

    async fn put_items(&self, items: &[(ItemId, ItemFeatures)]) -> Result<(), StoreError> {
        self.db.check(self.put_items_now(items))
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // An immediate commit makes every earlier non-durable one durable too.
        self.db.check(
            self.db
                .begin_write()
                .and_then(|txn| txn.commit().map_err(unavailable)),
        )
    }

    async fn lease(&self, node: &str) -> Result<Option<Lease>, StoreError> {
        self.db.check(self.lease_now(node))
    }

    async fn swap_lease(
        &self,
        node: &str,
        expected: Option<&Lease>,
        new: Option<&Lease>,
    ) -> Result<bool, StoreError> {
        self.db.check(self.swap_lease_now(node, expected, new))
    }
}

impl EmbeddedFeatureStore {
    fn put_items_now(&self, items: &[(ItemId, ItemFeatures)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ITEMS).map_err(unavailable)?;
            for (item, features) in items {
                let mut record: ItemRecord = read(&table, item)?.unwrap_or_default();
                record.features = features.clone();
                table
                    .insert(item.as_str(), encode(&record).as_slice())
                    .map_err(unavailable)?;
            }
        }
        txn.commit().map_err(unavailable)
    }

    fn lease_now(&self, node: &str) -> Result<Option<Lease>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEASES).map_err(unavailable)?;
        match table.get(node).map_err(unavailable)? {
            Some(bytes) => Lease::from_json(bytes.value()).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_left_half_initialised_does_not_block_the_next_open() {
        let dir = tempfile::tempdir().expect("test step succeeds");
        // What a process killed inside redb's initialisation of a file leaves: a sized file without the magic
        // number. redb refuses it for good, which is why a new database is created under a temporary name.
        let half = vec![0u8; 4096];
        let raw = dir.path().join("raw.redb");
        std::fs::write(&raw, &half).expect("test step succeeds");
        assert!(
            Database::create(&raw).is_err(),
            "redb now opens such a file"
        );

        let path = dir.path().join("store.redb");
        let partial = path.with_extension("redb-partial");
        std::fs::write(&partial, &half).expect("test step succeeds");
        drop(edgerec_storage::create_database(&path).expect("creates over the leftover"));
        assert!(!partial.exists());
        let db = edgerec_storage::create_database(&path).expect("reopens");
        let txn = db.begin_write().expect("test step succeeds");
        txn.open_table(USERS).expect("test step succeeds");
        txn.commit().expect("test step succeeds");
    }
}
