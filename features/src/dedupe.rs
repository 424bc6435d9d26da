//! The ids of the events a node has taken, on disk (`dedupe.redb` in the write-ahead log's folder) with a bounded
//! page cache, so memory stays flat however many events arrive. Ids are kept for the events' maximum age (older
//! events are refused anyway) and looked up before an event is written to the log.
//!
//! New ids wait in memory (at most [`FLUSH_IDS`] of them) and are written to the database together, sorted, in one
//! durable transaction: ids are random, so writing them one group at a time would rewrite a page of the index for
//! nearly every id. The index records up to which sequence number of the log it holds ids, so a restart adds only
//! the ids of records written after its last flush.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadOnlyTable, ReadableTable, TableDefinition};
use sha2::{Digest as _, Sha256};

/// Id key (the first 16 bytes of the id's sha256) → the event's time.
const IDS: TableDefinition<u128, i64> = TableDefinition::new("ids");
/// (event time, id key): the ids in the order they expire.
const BY_TIME: TableDefinition<(i64, u128), ()> = TableDefinition::new("ids_by_time");
/// `indexed_seq` → the last sequence number of the log whose ids are in the index.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// New ids kept in memory before they are written (about 40 bytes each).
pub const FLUSH_IDS: usize = 1 << 14;
/// Expired ids removed per flush at most, so pruning never stalls the writer for long.
const PRUNE_PER_FLUSH: usize = 1 << 16;

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

pub struct DedupeIndex {
    db: Database,
    path: PathBuf,
    max_age_ms: i64,
    /// Ids taken since the last flush.
    pending: HashMap<u128, i64>,
    /// The log's records up to here have their ids in `pending` or in the database.
    covered_seq: u64,
    /// A snapshot of the ids table for look-ups, taken again after each flush.
    reader: Option<ReadOnlyTable<u128, i64>>,
}

impl std::fmt::Debug for DedupeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupeIndex")
            .field("path", &self.path)
            .field("pending", &self.pending.len())
            .field("covered_seq", &self.covered_seq)
            .finish_non_exhaustive()
    }
}

/// The ids of one group of batches; dropped without [`Group::commit`], its ids are forgotten.
#[derive(Debug)]
pub struct Group<'a> {
    index: &'a mut DedupeIndex,
    inserted: Vec<u128>,
}

fn error_at(path: &Path, e: impl Into<redb::Error>) -> DedupeError {
    let e: redb::Error = e.into();
    let no_space = match &e {
        redb::Error::Io(io) => edgerec_storage::is_storage_full(io),
        other => other.to_string().contains("No space left"),
    };
    DedupeError {
        path: path.to_owned(),
        message: e.to_string(),
        no_space,
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
        let txn = db.begin_write().map_err(|e| error_at(path, e))?;
        txn.open_table(IDS).map_err(|e| error_at(path, e))?;
        txn.open_table(BY_TIME).map_err(|e| error_at(path, e))?;
        let covered_seq = {
            let meta = txn.open_table(META).map_err(|e| error_at(path, e))?;
            meta.get("indexed_seq")
                .map_err(|e| error_at(path, e))?
                .map_or(0, |v| v.value())
        };
        txn.commit().map_err(|e| error_at(path, e))?;
        Ok(Self {
            db,
            path: path.to_owned(),
            max_age_ms,
            pending: HashMap::new(),
            covered_seq,
            reader: None,
        })
    }

    /// The last sequence number whose ids the index holds durably.
    pub fn indexed_seq(&self) -> Result<u64, DedupeError> {
        let txn = self.db.begin_read().map_err(|e| error_at(&self.path, e))?;
        let table = txn.open_table(META).map_err(|e| error_at(&self.path, e))?;
        Ok(table
            .get("indexed_seq")
            .map_err(|e| error_at(&self.path, e))?
            .map_or(0, |v| v.value()))
    }

    /// Starts the ids of one group of batches.
    pub fn group(&mut self) -> Group<'_> {
        Group {
            index: self,
            inserted: Vec::new(),
        }
    }

    fn stored(&mut self, key: u128) -> Result<bool, DedupeError> {
        if self.reader.is_none() {
            let txn = self.db.begin_read().map_err(|e| error_at(&self.path, e))?;
            self.reader = Some(txn.open_table(IDS).map_err(|e| error_at(&self.path, e))?);
        }
        let ids = self.reader.as_ref().expect("opened above");
        Ok(ids.get(key).map_err(|e| error_at(&self.path, e))?.is_some())
    }

    /// Writes the ids waiting in memory, sorted, in one durable transaction that also records `covered_seq` and
    /// forgets expired ids.
    pub fn make_durable(&mut self) -> Result<(), DedupeError> {
        let path = self.path.clone();
        let at = |e: redb::Error| error_at(&path, e);
        self.reader = None;
        let txn = self.db.begin_write().map_err(|e| at(e.into()))?;
        {
            let mut pending: Vec<(u128, i64)> =
                self.pending.iter().map(|(k, t)| (*k, *t)).collect();
            pending.sort_unstable();
            let mut ids = txn.open_table(IDS).map_err(|e| at(e.into()))?;
            for (key, time) in &pending {
                ids.insert(key, time).map_err(|e| at(e.into()))?;
            }
            pending.sort_unstable_by_key(|(key, time)| (*time, *key));
            let mut by_time = txn.open_table(BY_TIME).map_err(|e| at(e.into()))?;
            for (key, time) in &pending {
                by_time
                    .insert((*time, *key), ())
                    .map_err(|e| at(e.into()))?;
            }
            let oldest = crate::now_ms() - self.max_age_ms;
            let expired: Vec<(i64, u128)> = by_time
                .range(..(oldest, 0))
                .map_err(|e| at(e.into()))?
                .take(PRUNE_PER_FLUSH)
                .map(|entry| entry.map(|(key, _)| key.value()))
                .collect::<Result<_, _>>()
                .map_err(|e| at(e.into()))?;
            for (time, key) in expired {
                by_time.remove((time, key)).map_err(|e| at(e.into()))?;
                ids.remove(key).map_err(|e| at(e.into()))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| at(e.into()))?;
            meta.insert("indexed_seq", self.covered_seq)
                .map_err(|e| at(e.into()))?;
        }
        txn.commit().map_err(|e| at(e.into()))?;
        self.pending.clear();
        Ok(())
    }
}

impl Group<'_> {
    /// Records `key` (an event of `time_ms`) unless it is known; says whether it was new.
    pub fn insert_new(&mut self, key: u128, time_ms: i64) -> Result<bool, DedupeError> {
        if self.index.pending.contains_key(&key) || self.index.stored(key)? {
            return Ok(false);
        }
        self.index.pending.insert(key, time_ms);
        self.inserted.push(key);
        Ok(true)
    }

    /// Forgets `key`, inserted in this group, whose write to the log failed.
    pub fn remove(&mut self, key: u128) {
        self.index.pending.remove(&key);
        self.inserted.retain(|k| *k != key);
    }

    /// Ends the group: the log's records up to `seq` have their ids in the index (written once enough wait).
    pub fn commit(mut self, seq: u64) -> Result<(), DedupeError> {
        self.inserted.clear();
        self.index.covered_seq = seq;
        if self.index.pending.len() >= FLUSH_IDS {
            self.index.make_durable()?;
        }
        Ok(())
    }
}

impl Group<'_> {
    /// Writes every id taken before this group to disk now, as covering the log up to `seq` (the last record
    /// written before this group).
    pub fn flush(&mut self, seq: u64) -> Result<(), DedupeError> {
        let taken_here: Vec<(u128, i64)> = self
            .inserted
            .iter()
            .filter_map(|k| self.index.pending.remove(k).map(|t| (*k, t)))
            .collect();
        self.index.covered_seq = self.index.covered_seq.max(seq);
        let flushed = self.index.make_durable();
        self.index.pending.extend(taken_here);
        flushed
    }
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        for key in &self.inserted {
            self.index.pending.remove(key);
        }
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
            let mut group = index.group();
            assert!(group.insert_new(id_key("a"), now).expect("inserts"));
            assert!(!group.insert_new(id_key("a"), now).expect("looks up"));
            assert!(
                group
                    .insert_new(id_key("old"), now - 2 * max_age)
                    .expect("inserts")
            );
            group.commit(2).expect("commits");
            // A group dropped without committing leaves nothing.
            let mut group = index.group();
            assert!(group.insert_new(id_key("b"), now).expect("inserts"));
            drop(group);
            index.make_durable().expect("writes");
        }
        let mut index = DedupeIndex::open(&path, max_age, 1 << 20).expect("reopens");
        assert_eq!(index.indexed_seq().expect("reads"), 2);
        let mut group = index.group();
        assert!(!group.insert_new(id_key("a"), now).expect("looks up"));
        assert!(group.insert_new(id_key("b"), now).expect("inserts"));
        group.commit(3).expect("commits and prunes");
        let mut group = index.group();
        assert!(
            group
                .insert_new(id_key("old"), now - 2 * max_age)
                .expect("inserts"),
            "expired ids are forgotten"
        );
    }
}
