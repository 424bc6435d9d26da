//! The ids of the events a node has taken, on disk (`ids/` in the write-ahead log's folder), so memory stays
//! small however many events arrive. Ids are kept for the events' maximum age (older events are refused anyway)
//! and looked up before an event is written to the log.
//!
//! New ids wait in memory (at most [`FLUSH_IDS`]) and are then written, sorted, as one immutable run ([`run`]):
//! one sequential write instead of a page of a B-tree rewritten for nearly every random id. A look-up asks each
//! run's filter in memory and reads a run's file only on a "maybe"; a thread of its own merges small runs into
//! larger ones ([`merge`]), and a run is deleted whole once its newest event is older than the maximum age. Each
//! run records which records of the log its ids come from, so a restart adds only the ids of later records.

mod legacy;
mod merge;
mod run;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use merge::{Merger, RunSet};
use run::{Run, RunError, RunMeta};

/// New ids kept in memory before they are written as a run (about 32 bytes each).
pub const FLUSH_IDS: usize = 1 << 16;

#[derive(Debug, Clone, thiserror::Error)]
#[error("the deduplication index {path}: {message}")]
pub struct DedupeError {
    pub path: PathBuf,
    pub message: String,
    /// The disk is full: the group is refused and a later one may succeed.
    pub no_space: bool,
}

impl From<RunError> for DedupeError {
    fn from(e: RunError) -> Self {
        let no_space = e.is_no_space();
        let (path, message) = match e {
            RunError::Io { path, source } => (path, source.to_string()),
            RunError::Damaged { path, reason } => (path, format!("damaged: {reason}")),
        };
        Self {
            path,
            message,
            no_space,
        }
    }
}

pub fn id_key(id: &str) -> u128 {
    let hash = Sha256::digest(id.as_bytes());
    u128::from_le_bytes(hash[..16].try_into().expect("16 bytes"))
}

#[derive(Debug)]
pub struct DedupeIndex {
    dir: PathBuf,
    max_age_ms: i64,
    /// Ids taken since the last flush, and the newest event time among them.
    pending: HashSet<u128>,
    pending_max_time_ms: i64,
    /// The log's records up to here have their ids in `pending` or in a run.
    covered_seq: u64,
    /// The log's records up to here have their ids in a run.
    indexed_seq: u64,
    runs: Arc<RunSet>,
    /// The runs as of `generation`, newest first (a retry is most often of a recent event).
    snapshot: (u64, Vec<Arc<Run>>),
    merger: Merger,
}

/// The ids of one group of batches; dropped without [`Group::commit`], its ids are forgotten.
#[derive(Debug)]
pub struct Group<'a> {
    index: &'a mut DedupeIndex,
    inserted: Vec<u128>,
}

fn io_error(path: &Path, e: std::io::Error) -> DedupeError {
    RunError::io(path, e).into()
}

impl DedupeIndex {
    /// Opens (or creates) the index in `dir`. A damaged run is moved aside to `dir/damaged/` with a warning: its
    /// ids are forgotten, which can only let a retried event in twice, never lose one.
    pub fn open(dir: &Path, max_age_ms: i64) -> Result<Self, DedupeError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        legacy::import(dir)?;
        let mut runs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let path = entry.map_err(|e| io_error(dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            match name {
                Some(name) if name.ends_with(".partial") => {
                    let _ = std::fs::remove_file(&path);
                }
                Some(name) if name.ends_with(".ids") => match Run::open(&path) {
                    Ok(run) => runs.push(run),
                    Err(RunError::Damaged { reason, .. }) => {
                        let aside = dir.join("damaged");
                        std::fs::create_dir_all(&aside).map_err(|e| io_error(&aside, e))?;
                        std::fs::rename(&path, aside.join(&name))
                            .map_err(|e| io_error(&path, e))?;
                        eprintln!(
                            "warning: {} is damaged ({reason}); moved to {}. Its ids are forgotten, so a retry of \
                             one of its events would be taken again",
                            path.display(),
                            aside.display()
                        );
                    }
                    Err(e) => return Err(e.into()),
                },
                _ => {}
            }
        }
        runs.sort_by_key(|r| (r.meta.first_seq, std::cmp::Reverse(r.meta.last_seq)));
        // A merge's output written before a crash removed its inputs holds all of theirs.
        let (kept, leftover): (Vec<Run>, Vec<Run>) = {
            let metas: Vec<RunMeta> = runs.iter().map(|r| r.meta).collect();
            runs.into_iter()
                .partition(|r| !metas.iter().any(|other| r.meta.within(other)))
        };
        for run in leftover {
            let _ = std::fs::remove_file(&run.path);
        }
        let indexed_seq = kept.iter().map(|r| r.meta.last_seq).max().unwrap_or(0);
        let runs = Arc::new(RunSet::new(kept.into_iter().map(Arc::new).collect()));
        let mut index = Self {
            dir: dir.to_owned(),
            max_age_ms,
            pending: HashSet::new(),
            pending_max_time_ms: i64::MIN,
            covered_seq: indexed_seq,
            indexed_seq,
            merger: Merger::start(dir.to_owned(), runs.clone(), FLUSH_IDS as u64),
            snapshot: (0, Vec::new()),
            runs,
        };
        index.forget_expired();
        index.merger.wake();
        Ok(index)
    }

    /// The last sequence number whose ids the index holds durably.
    pub fn indexed_seq(&self) -> u64 {
        self.indexed_seq
    }

    /// Starts the ids of one group of batches.
    pub fn group(&mut self) -> Group<'_> {
        Group {
            index: self,
            inserted: Vec::new(),
        }
    }

    fn stored(&mut self, key: u128) -> Result<bool, DedupeError> {
        if self.snapshot.0 != self.runs.generation() {
            let (generation, mut runs) = self.runs.snapshot();
            runs.reverse();
            self.snapshot = (generation, runs);
        }
        for run in &self.snapshot.1 {
            if run.contains(key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes the ids waiting in memory as one durable run covering the log up to `covered_seq`, and deletes the
    /// runs whose events have all expired.
    pub fn make_durable(&mut self) -> Result<(), DedupeError> {
        let mut keys: Vec<u128> = self.pending.iter().copied().collect();
        keys.sort_unstable();
        let meta = RunMeta {
            first_seq: self.indexed_seq + 1,
            last_seq: self.covered_seq,
            max_time_ms: self.pending_max_time_ms,
        };
        if let Some(run) = Run::write(&self.dir, meta, keys.into_iter().map(Ok))? {
            let run = Arc::new(run);
            self.runs.update(|runs| runs.push(run));
            self.merger.wake();
        }
        self.indexed_seq = self.covered_seq;
        self.pending.clear();
        self.pending_max_time_ms = i64::MIN;
        self.forget_expired();
        Ok(())
    }

    /// Deletes the runs whose events have all expired, except the newest run: it records how far the log is
    /// indexed, which a restart must know even when no id is left to remember.
    fn forget_expired(&mut self) {
        let oldest = crate::now_ms() - self.max_age_ms;
        let newest = self.indexed_seq;
        let expired = self.runs.update(|runs| {
            let (expired, live) = std::mem::take(runs)
                .into_iter()
                .partition(|r| r.meta.max_time_ms < oldest && r.meta.last_seq != newest);
            *runs = live;
            expired
        });
        for run in expired {
            let _ = std::fs::remove_file(&run.path);
        }
    }
}

impl Group<'_> {
    /// Records `key` (an event of `time_ms`) unless it is known; says whether it was new.
    pub fn insert_new(&mut self, key: u128, time_ms: i64) -> Result<bool, DedupeError> {
        if self.index.pending.contains(&key) || self.index.stored(key)? {
            return Ok(false);
        }
        self.index.pending.insert(key);
        // A removed id may leave this later than needed: the run is then only kept a little longer.
        self.index.pending_max_time_ms = self.index.pending_max_time_ms.max(time_ms);
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

    /// Writes every id taken before this group to disk now, as covering the log up to `seq` (the last record
    /// written before this group).
    pub fn flush(&mut self, seq: u64) -> Result<(), DedupeError> {
        let taken_here: Vec<u128> = self
            .inserted
            .iter()
            .filter(|k| self.index.pending.remove(k))
            .copied()
            .collect();
        self.index.covered_seq = self.index.covered_seq.max(seq);
        let max_time_ms = self.index.pending_max_time_ms;
        let flushed = self.index.make_durable();
        if !taken_here.is_empty() {
            self.index.pending_max_time_ms = max_time_ms;
        }
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
mod tests;
