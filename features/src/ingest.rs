//! Durable event ingest: validate → deduplicate by event id → append to the write-ahead log → sync (one sync for
//! every batch that arrived meanwhile) → acknowledge → apply to the feature store, in log order.
//!
//! One writer thread ([`writer`]) owns the log and the index of ids seen ([`crate::dedupe`], on disk), so two
//! concurrent sends of one event cannot both get in. The store is updated by an applier task ([`applier`]) that
//! reads the log back from disk and retries while the store is unreachable: memory stays flat however long an
//! outage lasts, and the backlog is bounded (past [`IngestConfig::max_backlog_events`] or
//! [`IngestConfig::max_backlog_bytes`] new events are refused with [`IngestError::Backlog`], which nodes answer
//! with 503 and `Retry-After`). Updates are idempotent per (node, incarnation, sequence number), so a crash at any
//! point loses nothing and applies nothing twice. The node's id is leased in the store ([`lease`]) so that two
//! live nodes configured with one id are told apart at start.

mod applier;
mod lease;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::dedupe::DedupeError;
use crate::event::{ClientEvent, Event, EventError, EventLimits, ServedRequest};
use crate::log::{EventLog, LogError, ShipReport};
use crate::store::{FeatureStore, StoreError};
use crate::wal::{WalError, remove_segment, segments};

pub use lease::LeaseState;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Names this node: the store remembers per node (and log incarnation) what it applied, and leases the id to
    /// one live node at a time. Default: `node-<host name>`, different per machine (and per container, which gets
    /// a host name of its own).
    pub node_id: String,
    pub limits: EventLimits,
    /// A segment is closed (and may be shipped) at this size.
    pub segment_bytes: u64,
    /// Events per store update.
    pub apply_batch: usize,
    /// Records acknowledged but not yet applied to the store, past which new events are refused (503).
    pub max_backlog_events: u64,
    /// Bytes of write-ahead log on the node's disk (not yet shipped), past which new events are refused (503).
    pub max_backlog_bytes: u64,
    /// How long the lease on the node id lasts without renewal; it is renewed every third of it. A node that
    /// crashed holds its id this long, unless it ran on this host and its process is gone.
    pub lease_ttl_ms: i64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            limits: EventLimits::default(),
            segment_bytes: 16 << 20,
            apply_batch: 2000,
            max_backlog_events: 2_000_000,
            max_backlog_bytes: 1 << 30,
            lease_ttl_ms: 30_000,
        }
    }
}

/// `node-<host name>`: lower-case letters, digits and `-` of the kernel's host name, at most 48 of them
/// (`node-1` where the host name cannot be read).
pub fn default_node_id() -> String {
    node_id_for(&host_name())
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default()
        .trim()
        .to_owned()
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
    #[error(transparent)]
    Dedupe(#[from] DedupeError),
    /// The store has fallen too far behind (or the log cannot be shipped): the events are refused before
    /// anything is written; a retry after a while succeeds.
    #[error(
        "the node's backlog is full ({events} records not yet applied to the feature store, {bytes} bytes of write-ahead log not yet shipped; limits {max_events} and {max_bytes}): retry later"
    )]
    Backlog {
        events: u64,
        bytes: u64,
        max_events: u64,
        max_bytes: u64,
    },
    #[error("{0}")]
    LeaseHeld(String),
    #[error("the ingest has stopped")]
    Stopped,
}

impl IngestError {
    /// The disk under the log is full: nothing was written, and a retry once space returns succeeds.
    pub fn is_no_space(&self) -> bool {
        match self {
            IngestError::Wal(WalError::NoSpace { .. }) => true,
            IngestError::Dedupe(e) => e.no_space,
            _ => false,
        }
    }
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
    /// This opening of the log.
    pub incarnation: String,
    pub durable_seq: u64,
    pub applied_seq: u64,
    /// Records acknowledged but not yet applied to the store.
    pub backlog_records: u64,
    /// Bytes of write-ahead log on disk (not yet shipped).
    pub wal_bytes: u64,
    pub apply_failures: u64,
    pub last_apply_error: Option<String>,
    pub lease: LeaseState,
}

enum Command {
    Append {
        events: Vec<Event>,
        served: Vec<ServedRequest>,
        reply: oneshot::Sender<Result<Ack, IngestError>>,
    },
    Roll(oneshot::Sender<Result<(), IngestError>>),
    /// Writes the ids of everything written so far to the index on disk: before a segment is removed, the index
    /// must hold its ids, since a restart re-reads only the log.
    FlushIds(oneshot::Sender<Result<(), IngestError>>),
}

/// What the writer, the applier, the lease keeper and callers share.
#[derive(Debug)]
struct Shared {
    node: String,
    dir: PathBuf,
    durable: watch::Sender<u64>,
    applied: watch::Sender<u64>,
    /// The writer has stopped: the applier ends once it has applied everything durable.
    writer_done: std::sync::atomic::AtomicBool,
    wal_bytes: AtomicU64,
    stats: std::sync::Mutex<IngestStats>,
}

impl Shared {
    fn stats(&self) -> std::sync::MutexGuard<'_, IngestStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Durable ingest into a store `S`.
#[derive(Debug)]
pub struct Ingest<S> {
    config: IngestConfig,
    store: Arc<S>,
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    shipping: tokio::sync::Mutex<()>,
    lease: lease::Keeper<S>,
    writer: Option<std::thread::JoinHandle<()>>,
    applier: Option<tokio::task::JoinHandle<()>>,
}

impl<S: FeatureStore> Ingest<S> {
    /// Opens the log in `dir` (streaming through it once: its ids go to the deduplication index, damage is
    /// refused), takes the lease on the node id, and starts the writer thread and the applier task (on the current
    /// Tokio runtime). Records already in the log are applied again first; the store skips what it had applied.
    ///
    /// A lease held by another live node is refused ([`IngestError::LeaseHeld`], naming it). If the store cannot
    /// be reached, the ingest starts anyway and takes the lease once it can (events stay safe in the log).
    pub async fn open(
        dir: &Path,
        config: IngestConfig,
        store: Arc<S>,
    ) -> Result<Self, IngestError> {
        let (wal, first_unapplied, wal_bytes) = {
            let (dir, config) = (dir.to_owned(), config.clone());
            tokio::task::spawn_blocking(move || writer::open_log(&dir, &config))
                .await
                .map_err(|_| IngestError::Stopped)??
        };
        let (wal, index) = wal;
        let incarnation = wal.incarnation();
        let durable = wal.next_seq() - 1;
        let already_applied = first_unapplied.map_or(durable, |first| first - 1);
        let shared = Arc::new(Shared {
            node: config.node_id.clone(),
            dir: dir.to_owned(),
            durable: watch::Sender::new(durable),
            applied: watch::Sender::new(already_applied),
            writer_done: std::sync::atomic::AtomicBool::new(false),
            wal_bytes: AtomicU64::new(wal_bytes),
            stats: std::sync::Mutex::new(IngestStats {
                incarnation: incarnation.to_string(),
                durable_seq: durable,
                ..IngestStats::default()
            }),
        });
        let lease =
            lease::Keeper::start(store.clone(), shared.clone(), incarnation, &config).await?;
        let applier = tokio::spawn(applier::run(
            store.clone(),
            shared.clone(),
            config.apply_batch,
            already_applied + 1,
        ));
        let (commands, receiver) = mpsc::channel();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("edgerec-wal".into())
                .spawn(move || writer::run(wal, index, receiver, shared))
                .map_err(|e| {
                    IngestError::Wal(WalError::Io {
                        path: dir.to_owned(),
                        source: e,
                    })
                })?
        };
        Ok(Self {
            config,
            store,
            shared,
            commands,
            shipping: tokio::sync::Mutex::new(()),
            lease,
            writer: Some(writer),
            applier: Some(applier),
        })
    }

    /// Parses and validates `batch` (all or none are accepted), writes the new events durably and acknowledges.
    pub async fn ingest(&self, batch: Vec<ClientEvent>) -> Result<Ack, IngestError> {
        let events = self.config.limits.accept(batch, crate::now_ms())?;
        self.enqueue(events, Vec::new())?.await
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

    /// Refuses new records while the backlog is over its limits; this check is what keeps the node's disk and
    /// the applier's lag bounded during a store or event-log outage.
    fn check_backlog(&self) -> Result<(), IngestError> {
        let events = self.backlog_records();
        let bytes = self.shared.wal_bytes.load(Ordering::Relaxed);
        let (max_events, max_bytes) = (
            self.config.max_backlog_events,
            self.config.max_backlog_bytes,
        );
        if events >= max_events || bytes >= max_bytes {
            return Err(IngestError::Backlog {
                events,
                bytes,
                max_events,
                max_bytes,
            });
        }
        Ok(())
    }

    fn backlog_records(&self) -> u64 {
        let durable = *self.shared.durable.borrow();
        durable.saturating_sub(self.applied())
    }

    fn enqueue(
        &self,
        events: Vec<Event>,
        served: Vec<ServedRequest>,
    ) -> Result<impl Future<Output = Result<Ack, IngestError>> + use<S>, IngestError> {
        self.check_backlog()?;
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
        *self.shared.applied.borrow()
    }

    /// Waits until the store has applied everything up to `seq`.
    pub async fn wait_applied(&self, seq: u64) -> Result<(), IngestError> {
        let mut applied = self.shared.applied.subscribe();
        applied
            .wait_for(|&a| a >= seq)
            .await
            .map(|_| ())
            .map_err(|_| IngestError::Stopped)
    }

    pub fn stats(&self) -> IngestStats {
        IngestStats {
            applied_seq: self.applied(),
            backlog_records: self.backlog_records(),
            wal_bytes: self.shared.wal_bytes.load(Ordering::Relaxed),
            ..self.shared.stats().clone()
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
    /// Order per segment: Parquet files written and confirmed (their names depend only on the node, the segment's
    /// incarnation and its first number, so a retry rewrites the same files: no duplicate rows) → the store made
    /// durable → the segment removed. A crash anywhere in between ships the segment again later.
    pub async fn ship(&self, log: &EventLog, everything: bool) -> Result<ShipReport, IngestError> {
        let _one_at_a_time = self.shipping.lock().await;
        if everything {
            self.roll().await?;
            let durable = *self.shared.durable.borrow();
            self.wait_applied(durable).await?;
        }
        let all = segments(&self.shared.dir)?;
        let Some((_active, closed)) = all.split_last() else {
            return Ok(ShipReport::default());
        };
        let applied = self.applied();
        let mut report = ShipReport::default();
        let mut synced = false;
        // Segments go in order, so something ships when the oldest one is applied; its ids must be on disk first.
        if !closed.is_empty() && all[1].first_seq - 1 <= applied {
            let (reply, answer) = oneshot::channel();
            self.commands
                .send(Command::FlushIds(reply))
                .map_err(|_| IngestError::Stopped)?;
            answer.await.map_err(|_| IngestError::Stopped)??;
        }
        for (i, segment) in closed.iter().enumerate() {
            let next_first = all[i + 1].first_seq;
            if next_first - 1 > applied {
                break;
            }
            if !synced {
                self.store.sync().await?;
                synced = true;
            }
            let (incarnation, records) = {
                let segment = segment.clone();
                tokio::task::spawn_blocking(move || crate::wal::read_segment(&segment))
                    .await
                    .map_err(|_| IngestError::Stopped)??
            };
            report.add(
                log.ship_segment(
                    &self.config.node_id,
                    incarnation,
                    segment.first_seq,
                    &records,
                )
                .await?,
            );
            let size = std::fs::metadata(&segment.path).map_or(0, |m| m.len());
            remove_segment(segment)?;
            let _ =
                self.shared
                    .wal_bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bytes| {
                        Some(bytes.saturating_sub(size))
                    });
            report.segments += 1;
        }
        Ok(report)
    }

    /// Stops taking events, waits for the store to apply everything written, releases the node id and stops.
    pub async fn close(mut self) -> Result<(), IngestError> {
        let durable = *self.shared.durable.borrow();
        let result = self.wait_applied(durable).await;
        drop(std::mem::replace(&mut self.commands, mpsc::channel().0));
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        if let Some(applier) = self.applier.take() {
            let _ = applier.await;
        }
        self.lease.release().await;
        result
    }
}

impl<S> Drop for Ingest<S> {
    /// Stops without waiting for the store (as a crash would, but letting the writer finish its group and close
    /// the log and index, so the same process can open them again).
    fn drop(&mut self) {
        if let Some(applier) = self.applier.take() {
            applier.abort();
        }
        self.lease.stop();
        drop(std::mem::replace(&mut self.commands, mpsc::channel().0));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
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
