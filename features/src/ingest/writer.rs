//! The writer thread: deduplicates each group of batches against the on-disk index, appends it to the log, syncs
//! once, then acknowledges. The index is repaired from the log whenever one of its writes fails (a full disk), so
//! the ingest recovers by itself once space returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::{Ack, Command, IngestConfig, IngestError, Shared};
use crate::dedupe::{DedupeError, DedupeIndex, id_key};
use crate::wal::{Wal, WalEntry, WalError, WalRecord, WalTail};

/// Largest number of queued batches written under one sync.
const MAX_GROUP: usize = 256;
/// Records read back at a time when the index is rebuilt from the log.
const REINDEX_BATCH: usize = 4096;

/// Where the index lives and how it is opened.
#[derive(Debug, Clone)]
pub(super) struct IndexSettings {
    path: PathBuf,
    max_age_ms: i64,
}

impl IndexSettings {
    fn new(dir: &Path, config: &IngestConfig) -> Self {
        Self {
            path: dir.join("ids"),
            max_age_ms: config.limits.max_age_ms,
        }
    }
}

/// The opened log and index, the first record that may not be applied yet, and the log's bytes on disk.
pub(super) type OpenedLog = ((Wal, Writer), Option<u64>, u64);

/// Streams through the log once: ids the index lacks are added, damage is refused, a torn tail cut off.
pub(super) fn open_log(dir: &Path, config: &IngestConfig) -> Result<OpenedLog, IngestError> {
    std::fs::create_dir_all(dir).map_err(|e| WalError::Io {
        path: dir.to_owned(),
        source: e,
    })?;
    let settings = IndexSettings::new(dir, config);
    let mut index = DedupeIndex::open(&settings.path, settings.max_age_ms)?;
    let indexed = index.indexed_seq();
    let mut group = index.group();
    let (wal, opened) = Wal::open(dir, config.segment_bytes, |_, record: &WalRecord| {
        if record.seq > indexed
            && let WalEntry::Event(event) = &record.entry
        {
            group.insert_new(id_key(&event.id), event.time_ms)?;
        }
        Ok::<_, IngestError>(())
    })?;
    group.commit(wal.next_seq() - 1)?;
    index.make_durable()?;
    Ok((
        (
            wal,
            Writer {
                settings,
                index: Some(index),
                failed: None,
            },
        ),
        opened.first_seq,
        opened.bytes,
    ))
}

/// What the writer thread keeps besides the log.
#[derive(Debug)]
pub(super) struct Writer {
    settings: IndexSettings,
    /// `None` after a failed write, until it is reopened and caught up with the log.
    index: Option<DedupeIndex>,
    /// Set when a sync failed: nothing written since the last good sync can be trusted.
    failed: Option<String>,
}

impl Writer {
    /// The index, reopened and caught up with the log up to `durable` if a write to it failed.
    fn index(&mut self, dir: &Path, durable: u64) -> Result<&mut DedupeIndex, DedupeError> {
        if self.index.is_none() {
            let s = &self.settings;
            let mut index = DedupeIndex::open(&s.path, s.max_age_ms)?;
            let mut next = index.indexed_seq() + 1;
            let mut tail = WalTail::new(dir);
            let mut group = index.group();
            while next <= durable {
                let (records, after) =
                    tail.read(next, durable, REINDEX_BATCH)
                        .map_err(|e| DedupeError {
                            path: s.path.clone(),
                            message: format!("rebuilding from the log: {e}"),
                            no_space: false,
                        })?;
                for record in records {
                    if let WalEntry::Event(event) = &record.record.entry {
                        group.insert_new(id_key(&event.id), event.time_ms)?;
                    }
                }
                next = after;
            }
            group.commit(durable)?;
            index.make_durable()?;
            self.index = Some(index);
        }
        Ok(self.index.as_mut().expect("opened above"))
    }
}

pub(super) fn run(
    mut wal: Wal,
    mut writer: Writer,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    while let Ok(first) = commands.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match commands.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        write_group(&mut wal, &mut writer, group, &shared);
    }
    shared.writer_done.store(true, Ordering::Release);
    shared.durable.send_modify(|_| {});
}

/// Writes one group: every batch is deduplicated in one index transaction, appended, then synced once.
fn write_group(wal: &mut Wal, writer: &mut Writer, group: Vec<Command>, shared: &Shared) {
    let durable_before = wal.next_seq() - 1;
    let failed = writer.failed.clone();
    let mut replies = Vec::new();
    let mut index_broken = false;
    {
        if failed.is_none()
            && let Err(e) = writer.index(&shared.dir, durable_before)
        {
            writer.index = None;
            refuse_all(group, &e);
            return;
        }
        let mut txn = match failed {
            Some(_) => None,
            None => writer.index.as_mut().map(DedupeIndex::group),
        };
        for command in group {
            match command {
                Command::Roll(reply) => {
                    let result = match &failed {
                        Some(reason) => Err(WalError::Poisoned(reason.clone()).into()),
                        None => wal
                            .roll()
                            .map(|bytes| {
                                shared.wal_bytes.fetch_add(bytes, Ordering::Relaxed);
                            })
                            .map_err(IngestError::from),
                    };
                    let _ = reply.send(result);
                }
                Command::FlushIds(reply) => {
                    let result = match txn.as_mut().filter(|_| !index_broken) {
                        Some(txn) => txn.flush(durable_before).map_err(IngestError::from),
                        None => Err(WalError::Poisoned(
                            "the deduplication index is being rebuilt".into(),
                        )
                        .into()),
                    };
                    if result.is_err() {
                        index_broken = true;
                    }
                    let _ = reply.send(result);
                }
                Command::Append {
                    events,
                    served,
                    reply,
                } => {
                    let Some(txn) = txn.as_mut().filter(|_| !index_broken) else {
                        let reason = failed.clone().unwrap_or_else(|| {
                            "the deduplication index failed earlier in this group".into()
                        });
                        let _ = reply.send(Err(WalError::Poisoned(reason).into()));
                        continue;
                    };
                    let total = events.len();
                    let mut fresh = Vec::with_capacity(total);
                    let mut dedupe_error = None;
                    for event in events {
                        match txn.insert_new(id_key(&event.id), event.time_ms) {
                            Ok(true) => fresh.push(event),
                            Ok(false) => {}
                            Err(e) => {
                                dedupe_error = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(e) = dedupe_error {
                        // The transaction is dropped below; the index is rebuilt from the log next time.
                        index_broken = true;
                        let _ = reply.send(Err(e.into()));
                        continue;
                    }
                    let accepted = fresh.len();
                    let entries: Vec<WalEntry> = fresh
                        .into_iter()
                        .map(WalEntry::Event)
                        .chain(served.into_iter().map(WalEntry::Served))
                        .collect();
                    if entries.is_empty() {
                        let _ = reply.send(Ok(Ack {
                            accepted: 0,
                            duplicates: total,
                            last_seq: None,
                        }));
                        continue;
                    }
                    match wal.append(&entries) {
                        Ok((first_seq, bytes)) => {
                            shared.wal_bytes.fetch_add(bytes, Ordering::Relaxed);
                            replies.push((
                                reply,
                                Ack {
                                    accepted,
                                    duplicates: total - accepted,
                                    last_seq: Some(first_seq + entries.len() as u64 - 1),
                                },
                            ));
                        }
                        Err(e) => {
                            // Their ids must not count as seen: they were not written.
                            for entry in &entries {
                                if let WalEntry::Event(event) = entry {
                                    txn.remove(id_key(&event.id));
                                }
                            }
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
            }
        }
        if replies.is_empty() {
            drop(txn);
            if index_broken {
                writer.index = None;
            }
            return;
        }
        if let Err(e) = wal.sync() {
            // After a failed sync the kernel may have dropped the written pages: nothing written since the last
            // good sync can be trusted, so the log refuses everything until a restart re-reads it.
            let reason = e.to_string();
            writer.failed = Some(reason.clone());
            for (reply, _) in replies {
                let _ = reply.send(Err(WalError::Poisoned(reason.clone()).into()));
            }
            return;
        }
        let durable = wal.next_seq() - 1;
        match txn {
            Some(txn) if !index_broken => {
                if let Err(e) = txn.commit(durable) {
                    eprintln!("{e}; rebuilding it from the write-ahead log before the next batch");
                    index_broken = true;
                }
            }
            _ => {}
        }
        shared.stats().durable_seq = durable;
        shared.durable.send_replace(durable);
        for (reply, ack) in replies {
            let _ = reply.send(Ok(ack));
        }
    }
    if index_broken {
        writer.index = None;
    }
}

fn refuse_all(group: Vec<Command>, error: &DedupeError) {
    for command in group {
        match command {
            Command::Roll(reply) | Command::FlushIds(reply) => {
                let _ = reply.send(Err(error.clone().into()));
            }
            Command::Append { reply, .. } => {
                let _ = reply.send(Err(error.clone().into()));
            }
        }
    }
}
