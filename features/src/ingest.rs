//! Durable event ingest: validate → deduplicate by event id → append to the write-ahead log → sync (one sync for
//! every batch that arrived meanwhile) → acknowledge → apply to the feature store, in log order.
//!
//! One writer thread owns the log and the set of ids seen, so two concurrent sends of one event cannot both get
//! in. The store is updated by an applier task that retries while the store is unreachable: the log keeps every
//! acknowledged event, and updates are idempotent per sequence number, so a crash at any point loses nothing and
//! applies nothing twice. Ids are remembered for [`EventLimits::max_age_ms`] (older events are refused anyway):
//! those in the log are recovered from it, those of shipped segments from `dedupe.redb`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{oneshot, watch};

use crate::event::{Event, EventError, EventLimits, ServedRequest};
use crate::log::{EventLog, LogError, ShipReport};
use crate::store::{FeatureStore, Sequenced, StoreError};
use crate::wal::{Wal, WalEntry, WalError, WalRecord, remove_segment, segments};

/// Ids of shipped events (first 16 bytes of their sha256) → event time.
const SHIPPED_IDS: TableDefinition<u128, i64> = TableDefinition::new("shipped_ids");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Names this node's log: sequence numbers are per node, and the store remembers per node what it applied.
    /// Default: `node-<host name>`, different per machine (and per container, which gets a host name of its own),
    /// so two nodes left on the default do not share one log's numbering.
    pub node_id: String,
    pub limits: EventLimits,
    /// A segment is closed (and may be shipped) at this size.
    pub segment_bytes: u64,
    /// Events per store update.
    pub apply_batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            limits: EventLimits::default(),
            segment_bytes: 16 << 20,
            apply_batch: 2000,
        }
    }
}

/// `node-<host name>`: lower-case letters, digits and `-` of the kernel's host name, at most 48 of them
/// (`node-1` where the host name cannot be read).
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    node_id_for(&host)
}

fn node_id_for(host: &str) -> String {
    let clean: String = host
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(48)
        .collect();
    let clean = clean.trim_matches('-');
    if clean.is_empty() {
        "node-1".into()
    } else {
        format!("node-{clean}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(#[from] EventError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the deduplication index {path}: {message}")]
    Dedupe { path: PathBuf, message: String },
    #[error("the ingest has stopped")]
    Stopped,
}

/// What became of an accepted batch: every event in it is durable (new ones in the log, duplicates earlier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub accepted: usize,
    /// Events whose id was seen before; they were not written again.
    pub duplicates: usize,
    /// The sequence number of the last record written, if any: the store has applied the batch once
    /// [`Ingest::applied`] reaches it.
    pub last_seq: Option<u64>,
}

/// Figures for monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestStats {
    pub durable_seq: u64,
    pub applied_seq: u64,
    pub apply_failures: u64,
    pub last_apply_error: Option<String>,
}

enum Command {
    Append {
        events: Vec<Event>,
        served: Vec<ServedRequest>,
        reply: oneshot::Sender<Result<Ack, IngestError>>,
    },
    Roll(oneshot::Sender<Result<(), IngestError>>),
}

fn id_key(id: &str) -> u128 {
    let hash = Sha256::digest(id.as_bytes());
    u128::from_le_bytes(hash[..16].try_into().expect("16 bytes"))
}

/// The ids of shipped events, remembered for deduplication once their segment is gone.
#[derive(Debug)]
struct ShippedIds {
    db: Database,
    path: PathBuf,
}

impl ShippedIds {
    fn error(&self, e: impl std::fmt::Display) -> IngestError {
        IngestError::Dedupe {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Opens (or creates) the index at `path`, forgets ids older than `oldest`, and returns those left.
    fn open(path: PathBuf, oldest: i64) -> Result<(Self, HashMap<u128, i64>), IngestError> {
        let db = edgerec_storage::create_database(&path).map_err(|e| IngestError::Dedupe {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let index = Self { db, path };
        let mut seen = HashMap::new();
        let txn = index.db.begin_write().map_err(|e| index.error(e))?;
        {
            let mut table = txn.open_table(SHIPPED_IDS).map_err(|e| index.error(e))?;
            table
                .retain(|_, time| time >= oldest)
                .map_err(|e| index.error(e))?;
            for entry in table.iter().map_err(|e| index.error(e))? {
                let (key, time) = entry.map_err(|e| index.error(e))?;
                seen.insert(key.value(), time.value());
            }
        }
        txn.commit().map_err(|e| index.error(e))?;
        Ok((index, seen))
    }

    /// Durably records the event ids of `records`.
    fn remember(&self, records: &[WalRecord]) -> Result<(), IngestError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(SHIPPED_IDS).map_err(|e| self.error(e))?;
            for record in records {
                if let WalEntry::Event(event) = &record.entry {
                    table
                        .insert(id_key(&event.id), event.time_ms)
                        .map_err(|e| self.error(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.error(e))
    }
}

/// Durable ingest into a store `S`.
#[derive(Debug)]
pub struct Ingest<S> {
    config: IngestConfig,
    dir: PathBuf,
    store: Arc<S>,
    commands: mpsc::Sender<Command>,
    applied: watch::Receiver<u64>,
    stats: Arc<std::sync::Mutex<IngestStats>>,
    shipped_ids: ShippedIds,
    shipping: tokio::sync::Mutex<()>,
    writer: Option<std::thread::JoinHandle<()>>,
    applier: Option<tokio::task::JoinHandle<()>>,
}

impl<S: FeatureStore> Ingest<S> {
    /// Opens the log in `dir` and starts the writer thread and the applier task (on the current Tokio runtime).
    /// Records already in the log are re-applied first; the store skips what it had applied.
    pub fn open(dir: &Path, config: IngestConfig, store: Arc<S>) -> Result<Self, IngestError> {
        let (wal, replay) = Wal::open(dir, config.segment_bytes)?;
        let (shipped_ids, mut seen) = ShippedIds::open(
            dir.join("dedupe.redb"),
            crate::now_ms() - config.limits.max_age_ms,
        )?;
        let mut pending = Vec::new();
        for record in &replay {
            if let WalEntry::Event(event) = &record.entry {
                seen.insert(id_key(&event.id), event.time_ms);
                pending.push(Sequenced {
                    seq: record.seq,
                    event: event.clone(),
                });
            }
        }
        let durable = wal.next_seq() - 1;
        let already_applied = replay.first().map_or(durable, |r| r.seq - 1);
        let (applied_tx, applied) = watch::channel(already_applied);
        let stats = Arc::new(std::sync::Mutex::new(IngestStats {
            durable_seq: durable,
            ..IngestStats::default()
        }));
        let (to_applier, from_writer) = tokio::sync::mpsc::unbounded_channel();
        if !replay.is_empty() {
            let _ = to_applier.send((pending, durable));
        }
        let applier = tokio::spawn(apply_loop(
            store.clone(),
            config.node_id.clone(),
            config.apply_batch,
            from_writer,
            applied_tx,
            stats.clone(),
        ));
        let (commands, receiver) = mpsc::channel();
        let writer = {
            let stats = stats.clone();
            let max_age = config.limits.max_age_ms;
            std::thread::Builder::new()
                .name("edgerec-wal".into())
                .spawn(move || write_loop(wal, seen, max_age, receiver, to_applier, stats))
                .map_err(|e| {
                    IngestError::Wal(WalError::Io {
                        path: dir.to_owned(),
                        source: e,
                    })
                })?
        };
        Ok(Self {
            config,
            dir: dir.to_owned(),
            store,
            commands,
            applied,
            stats,
            shipped_ids,
            shipping: tokio::sync::Mutex::new(()),
            writer: Some(writer),
            applier: Some(applier),
        })
    }

    /// Validates `events` (all or none are accepted), writes the new ones durably and acknowledges.
    pub async fn ingest(&self, events: Vec<Event>) -> Result<Ack, IngestError> {
        self.config.limits.check(&events, crate::now_ms())?;
        self.send(events, Vec::new()).await
    }

    /// Hands served requests (the serving log; they go to the event log with the events) to the log writer now
    /// and returns a future of their durable acknowledgement, so that an answer need not wait for the sync: the
    /// records are in the writer's queue, ahead of any later roll or shutdown, before this returns.
    pub fn queue_served(
        &self,
        served: Vec<ServedRequest>,
    ) -> Result<impl Future<Output = Result<Ack, IngestError>> + use<S>, IngestError> {
        self.enqueue(Vec::new(), served)
    }

    async fn send(
        &self,
        events: Vec<Event>,
        served: Vec<ServedRequest>,
    ) -> Result<Ack, IngestError> {
        self.enqueue(events, served)?.await
    }

    fn enqueue(
        &self,
        events: Vec<Event>,
        served: Vec<ServedRequest>,
    ) -> Result<impl Future<Output = Result<Ack, IngestError>> + use<S>, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append {
                events,
                served,
                reply,
            })
            .map_err(|_| IngestError::Stopped)?;
        Ok(async move { answer.await.map_err(|_| IngestError::Stopped)? })
    }

    /// The highest sequence number up to which the store has applied everything.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the store has applied everything up to `seq`.
    pub async fn wait_applied(&self, seq: u64) -> Result<(), IngestError> {
        let mut applied = self.applied.clone();
        applied
            .wait_for(|&a| a >= seq)
            .await
            .map(|_| ())
            .map_err(|_| IngestError::Stopped)
    }

    pub fn stats(&self) -> IngestStats {
        IngestStats {
            applied_seq: self.applied(),
            ..self.stats.lock().expect("stats lock").clone()
        }
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Closes the active segment, so that everything written so far can be shipped.
    pub async fn roll(&self) -> Result<(), IngestError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Roll(reply))
            .map_err(|_| IngestError::Stopped)?;
        answer.await.map_err(|_| IngestError::Stopped)?
    }

    /// Ships every closed segment the store has applied to the event log, then removes it. With `everything`, the
    /// active segment is closed first and the store awaited, so all that was acknowledged gets shipped.
    ///
    /// Order per segment: Parquet files written and confirmed (their names depend only on the segment, so a retry
    /// rewrites the same files: no duplicate rows) → the store made durable → the segment's ids recorded for
    /// deduplication → the segment removed. A crash anywhere in between ships the segment again later.
    pub async fn ship(&self, log: &EventLog, everything: bool) -> Result<ShipReport, IngestError> {
        let _one_at_a_time = self.shipping.lock().await;
        if everything {
            self.roll().await?;
            let durable = self.stats().durable_seq;
            self.wait_applied(durable).await?;
        }
        let all = segments(&self.dir)?;
        let Some((_active, closed)) = all.split_last() else {
            return Ok(ShipReport::default());
        };
        let applied = self.applied();
        let mut report = ShipReport::default();
        let mut synced = false;
        for (i, segment) in closed.iter().enumerate() {
            let next_first = all[i + 1].first_seq;
            if next_first - 1 > applied {
                break;
            }
            if !synced {
                self.store.sync().await?;
                synced = true;
            }
            let (records, _) = crate::wal::read_segment(&segment.path, false)?;
            report.add(
                log.ship_segment(&self.config.node_id, segment.first_seq, &records)
                    .await?,
            );
            self.shipped_ids.remember(&records)?;
            remove_segment(segment)?;
            report.segments += 1;
        }
        Ok(report)
    }

    /// Stops taking events, waits for the store to apply everything written, and stops.
    pub async fn close(mut self) -> Result<(), IngestError> {
        let durable = self.stats().durable_seq;
        let result = self.wait_applied(durable).await;
        drop(std::mem::replace(&mut self.commands, mpsc::channel().0));
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        if let Some(applier) = self.applier.take() {
            let _ = applier.await;
        }
        result
    }
}

impl<S> Drop for Ingest<S> {
    fn drop(&mut self) {
        if let Some(applier) = self.applier.take() {
            applier.abort();
        }
    }
}

/// Largest number of queued batches written under one sync.
const MAX_GROUP: usize = 256;

fn write_loop(
    mut wal: Wal,
    mut seen: HashMap<u128, i64>,
    max_age_ms: i64,
    commands: mpsc::Receiver<Command>,
    applier: tokio::sync::mpsc::UnboundedSender<(Vec<Sequenced>, u64)>,
    stats: Arc<std::sync::Mutex<IngestStats>>,
) {
    let mut prune_at = seen.len().max(100_000) * 2;
    let mut failed: Option<String> = None;
    while let Ok(first) = commands.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match commands.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut replies = Vec::new();
        let mut to_apply = Vec::new();
        for command in group {
            match command {
                Command::Roll(reply) => {
                    let result = match &failed {
                        Some(reason) => Err(WalError::Poisoned(reason.clone()).into()),
                        None => wal.roll().map_err(IngestError::from),
                    };
                    let _ = reply.send(result);
                }
                Command::Append {
                    events,
                    served,
                    reply,
                } => {
                    if let Some(reason) = &failed {
                        let _ = reply.send(Err(WalError::Poisoned(reason.clone()).into()));
                        continue;
                    }
                    let total = events.len();
                    let mut fresh = Vec::with_capacity(total);
                    let mut keys = Vec::with_capacity(total);
                    for event in events {
                        let key = id_key(&event.id);
                        if let std::collections::hash_map::Entry::Vacant(slot) = seen.entry(key) {
                            slot.insert(event.time_ms);
                            keys.push(key);
                            fresh.push(event);
                        }
                    }
                    let accepted = fresh.len();
                    let entries: Vec<WalEntry> = fresh
                        .iter()
                        .cloned()
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
                        Ok(first_seq) => {
                            let last_seq = first_seq + entries.len() as u64 - 1;
                            to_apply.extend(fresh.into_iter().enumerate().map(|(i, event)| {
                                Sequenced {
                                    seq: first_seq + i as u64,
                                    event,
                                }
                            }));
                            replies.push((
                                reply,
                                Ack {
                                    accepted,
                                    duplicates: total - accepted,
                                    last_seq: Some(last_seq),
                                },
                            ));
                        }
                        Err(e) => {
                            for key in keys {
                                seen.remove(&key);
                            }
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
            }
        }
        if replies.is_empty() {
            continue;
        }
        if let Err(e) = wal.sync() {
            // After a failed sync the kernel may have dropped the written pages: nothing written since the last
            // good sync can be trusted, so the log refuses everything until a restart re-reads it.
            let reason = e.to_string();
            failed = Some(reason.clone());
            for (reply, _) in replies {
                let _ = reply.send(Err(WalError::Poisoned(reason.clone()).into()));
            }
            continue;
        }
        let durable = wal.next_seq() - 1;
        stats.lock().expect("stats lock").durable_seq = durable;
        let _ = applier.send((to_apply, durable));
        for (reply, ack) in replies {
            let _ = reply.send(Ok(ack));
        }
        if seen.len() > prune_at {
            let oldest = crate::now_ms() - max_age_ms;
            seen.retain(|_, &mut time| time >= oldest);
            prune_at = seen.len().max(100_000) * 2;
        }
    }
}

async fn apply_loop<S: FeatureStore>(
    store: Arc<S>,
    node: String,
    batch: usize,
    mut from_writer: tokio::sync::mpsc::UnboundedReceiver<(Vec<Sequenced>, u64)>,
    applied: watch::Sender<u64>,
    stats: Arc<std::sync::Mutex<IngestStats>>,
) {
    while let Some((mut events, mut upto)) = from_writer.recv().await {
        while events.len() < batch {
            match from_writer.try_recv() {
                Ok((more, more_upto)) => {
                    events.extend(more);
                    upto = more_upto;
                }
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match store.apply(&node, &events).await {
                Ok(()) => break,
                Err(e) => {
                    {
                        let mut stats = stats.lock().expect("stats lock");
                        stats.apply_failures += 1;
                        stats.last_apply_error = Some(e.to_string());
                    }
                    eprintln!(
                        "feature store update failed ({e}); retrying in {} ms (the events are safe in the write-ahead log)",
                        backoff.as_millis()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let _ = applied.send(upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_node_id_comes_from_the_host_name() {
        assert_eq!(
            node_id_for("edge-7.example.com\n"),
            "node-edge-7-example-com"
        );
        assert_eq!(node_id_for("  Pod_3F  "), "node-pod-3f");
        assert_eq!(node_id_for(""), "node-1");
        assert_eq!(node_id_for("---"), "node-1");
        assert!(node_id_for(&"x".repeat(300)).len() <= 5 + 48);
    }
}
