//! The ids of the events a node has taken, on disk (`dedupe.redb` in the write-ahead log's folder) with a bounded
//! page cache, so memory stays flat however many events arrive. Ids are kept for the events' maximum age (older
//! events are refused anyway) and looked up before an event is written to the log.
//!
//! The index is changed in the writer's transaction for each group of batches, committed without waiting for the
//! disk (the log is the durable copy) and made durable every [`DURABLE_EVERY`] groups. It records up to which
//! sequence number of the log it holds ids, so a restart adds only the ids of records written after its last
//! durable commit.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use sha2::{Digest as _, Sha256};

/// Id key (the first 16 bytes of the id's sha256) → the event's time.
const IDS: TableDefinition<u128, i64> = TableDefinition::new("ids");
/// (event time, id key): the ids in the order they expire.
const BY_TIME: TableDefinition<(i64, u128), ()> = TableDefinition::new("ids_by_time");
/// `indexed_seq` → the last sequence number of the log whose ids are in the index.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Groups, or ids inserted, between durable commits: redb keeps what non-durable commits changed in memory until
/// a durable one, so these bound the index's memory as much as its page cache does.
const DURABLE_EVERY: u32 = 64;
const DURABLE_EVERY_IDS: u32 = 4096;
/// Expired ids removed per group at most, so pruning never stalls the writer.
const PRUNE_PER_GROUP: usize = 4096;

#[derive(Debug, Clone, thiserror::Error)]
#[error("the deduplication index {path}: {message}")]
pub struct DedupeError {
    pub path: PathBuf,
    pub message: String,
    /// The disk is full: the group is refused and a later one may succeed.
    pub no_space: bool,
}

pub fn id_key(id: &str) -> u128 {
    let hash = Sha256::digest(id.as_bytes());
    u128::from_le_bytes(hash[..16].try_into().expect("16 bytes"))
}

#[derive(Debug)]
pub struct DedupeIndex {
    db: Database,
    path: PathBuf,
    max_age_ms: i64,
    since_durable: u32,
    ids_since_durable: u32,
}

/// The changes of one group, undone by dropping it.
pub struct Group<'a> {
    index: &'a mut DedupeIndex,
    txn: WriteTransaction,
}

impl std::fmt::Debug for Group<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

impl DedupeIndex {
    /// Opens (or creates) the index at `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, max_age_ms: i64, cache_bytes: usize) -> Result<Self, DedupeError> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(cache_bytes);
        let db = edgerec_storage::create_database_with(path, builder).map_err(|e| DedupeError {
            path: path.to_owned(),
            message: e.to_string(),
            no_space: false,
        })?;
        let index = Self {
            db,
            path: path.to_owned(),
            max_age_ms,
            since_durable: 0,
            ids_since_durable: 0,
        };
        let txn = index.db.begin_write().map_err(|e| index.error(e))?;
        txn.open_table(IDS).map_err(|e| index.error(e))?;
        txn.open_table(BY_TIME).map_err(|e| index.error(e))?;
        txn.open_table(META).map_err(|e| index.error(e))?;
        txn.commit().map_err(|e| index.error(e))?;
        Ok(index)
    }

    fn error(&self, e: impl Into<redb::Error>) -> DedupeError {
        let e: redb::Error = e.into();
        let no_space = match &e {
            redb::Error::Io(io) => edgerec_storage::is_storage_full(io),
            other => other.to_string().contains("No space left"),
        };
        DedupeError {
            path: self.path.clone(),
            message: e.to_string(),
            no_space,
        }
    }

    /// The last sequence number whose ids the index holds durably.
    pub fn indexed_seq(&self) -> Result<u64, DedupeError> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = txn.open_table(META).map_err(|e| self.error(e))?;
        Ok(table
            .get("indexed_seq")
            .map_err(|e| self.error(e))?
            .map_or(0, |v| v.value()))
    }

    /// Starts the changes of one group of batches.
    pub fn group(&mut self) -> Result<Group<'_>, DedupeError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(Durability::None);
        self.since_durable += 1;
        Ok(Group { index: self, txn })
    }

    /// Makes everything committed so far durable.
    pub fn make_durable(&mut self) -> Result<(), DedupeError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))?;
        self.since_durable = 0;
        self.ids_since_durable = 0;
        Ok(())
    }
}

impl Group<'_> {
    fn error(&self, e: impl Into<redb::Error>) -> DedupeError {
        self.index.error(e)
    }

    /// Records `key` (an event of `time_ms`) unless it is known; says whether it was new.
    pub fn insert_new(&mut self, key: u128, time_ms: i64) -> Result<bool, DedupeError> {
        let mut ids = self.txn.open_table(IDS).map_err(|e| self.index.error(e))?;
        if ids.get(key).map_err(|e| self.index.error(e))?.is_some() {
            return Ok(false);
        }
        ids.insert(key, time_ms).map_err(|e| self.index.error(e))?;
        drop(ids);
        self.index.ids_since_durable += 1;
        let mut by_time = self
            .txn
            .open_table(BY_TIME)
            .map_err(|e| self.index.error(e))?;
        by_time
            .insert((time_ms, key), ())
            .map_err(|e| self.index.error(e))?;
        Ok(true)
    }

    /// Forgets `key` (an event of `time_ms`) inserted in this group, whose write to the log failed.
    pub fn remove(&mut self, key: u128, time_ms: i64) -> Result<(), DedupeError> {
        let mut ids = self.txn.open_table(IDS).map_err(|e| self.index.error(e))?;
        ids.remove(key).map_err(|e| self.index.error(e))?;
        drop(ids);
        let mut by_time = self
            .txn
            .open_table(BY_TIME)
            .map_err(|e| self.index.error(e))?;
        by_time
            .remove((time_ms, key))
            .map_err(|e| self.index.error(e))?;
        Ok(())
    }

    /// Commits the group: the index now holds the ids of every record up to `seq`. Expired ids go first.
    pub fn commit(self, seq: u64) -> Result<(), DedupeError> {
        let oldest = crate::now_ms() - self.index.max_age_ms;
        {
            let mut by_time = self.txn.open_table(BY_TIME).map_err(|e| self.error(e))?;
            let expired: Vec<(i64, u128)> = by_time
                .range(..(oldest, 0))
                .map_err(|e| self.error(e))?
                .take(PRUNE_PER_GROUP)
                .map(|entry| entry.map(|(key, _)| key.value()))
                .collect::<Result<_, _>>()
                .map_err(|e| self.error(e))?;
            let mut ids = self.txn.open_table(IDS).map_err(|e| self.error(e))?;
            for (time, key) in expired {
                by_time.remove((time, key)).map_err(|e| self.error(e))?;
                ids.remove(key).map_err(|e| self.error(e))?;
            }
            let mut meta = self.txn.open_table(META).map_err(|e| self.error(e))?;
            meta.insert("indexed_seq", seq).map_err(|e| self.error(e))?;
        }
        let durable = self.index.since_durable >= DURABLE_EVERY
            || self.index.ids_since_durable >= DURABLE_EVERY_IDS;
        let mut txn = self.txn;
        if durable {
            txn.set_durability(Durability::Immediate);
        }
        let index_path = self.index.path.clone();
        txn.commit().map_err(|e| {
            let e: redb::Error = e.into();
            DedupeError {
                path: index_path,
                no_space: e.to_string().contains("No space left"),
                message: e.to_string(),
            }
        })?;
        if durable {
            self.index.since_durable = 0;
            self.index.ids_since_durable = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_remembered_across_reopening_and_forgotten_when_old() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dedupe.redb");
        let now = crate::now_ms();
        let max_age = 3_600_000;
        {
            let mut index = DedupeIndex::open(&path, max_age, 1 << 20).expect("opens");
            let mut group = index.group().expect("starts");
            assert!(group.insert_new(id_key("a"), now).expect("inserts"));
            assert!(!group.insert_new(id_key("a"), now).expect("looks up"));
            assert!(
                group
                    .insert_new(id_key("old"), now - 2 * max_age)
                    .expect("inserts")
            );
            group.commit(2).expect("commits");
            // A group dropped without committing leaves nothing.
            let mut group = index.group().expect("starts");
            assert!(group.insert_new(id_key("b"), now).expect("inserts"));
            drop(group);
            index.make_durable().expect("syncs");
        }
        let mut index = DedupeIndex::open(&path, max_age, 1 << 20).expect("reopens");
        assert_eq!(index.indexed_seq().expect("reads"), 2);
        let mut group = index.group().expect("starts");
        assert!(!group.insert_new(id_key("a"), now).expect("looks up"));
        assert!(group.insert_new(id_key("b"), now).expect("inserts"));
        group.commit(3).expect("commits and prunes");
        let mut group = index.group().expect("starts");
        assert!(
            group
                .insert_new(id_key("old"), now - 2 * max_age)
                .expect("inserts"),
            "expired ids are forgotten"
        );
    }
}
