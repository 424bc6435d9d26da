//! The lease on a node id: one live node per id in a shared store. Taken at start (a node whose id another live
//! node holds is refused, with a message naming that node), renewed every third of its time to live, released at
//! a clean stop. A holder on this host whose process is gone is replaced at once, so a node restarted after a
//! crash does not wait for its old lease to run out.
//!
//! Correctness never rests on the lease: records are keyed by (node, log incarnation), so two nodes sharing an id
//! still lose nothing. The lease is there to tell an operator that two nodes were given one id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::{IngestConfig, IngestError, Shared};
use crate::store::{FeatureStore, Lease, StoreError};
use crate::wal::Incarnation;

/// Attempts of one take or renewal that keeps losing a race.
const ATTEMPTS: usize = 8;

/// Where the node stands with its id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum LeaseState {
    /// Not taken yet: the store has not answered.
    #[default]
    Pending,
    Held,
    /// Another live node holds the id (the message names it).
    Conflict(String),
}

#[derive(Debug)]
pub(super) struct Keeper<S> {
    store: Arc<S>,
    node: String,
    /// The lease as last written by this node.
    ours: Arc<Mutex<Option<Lease>>>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `current` leaves the id to `me` now.
fn free_for(current: &Lease, me: &Lease, now_ms: i64) -> bool {
    current.incarnation == me.incarnation
        || current.expires_ms < now_ms
        || (current.host == me.host && current.pid != me.pid && !pid_alive(current.pid))
}

/// What an operator needs to know about the node holding `node`.
pub(crate) fn describe_holder(node: &str, holder: &Lease, now_ms: i64) -> String {
    format!(
        "node id `{node}` is in use by another live node (host `{}`, process {}, log incarnation {}, started {} s ago, \
         lease valid {} s more): give each node its own id (`node_id` in the features config, or \
         EDGEREC_FEATURES_NODE_ID), or stop the other node",
        holder.host,
        holder.pid,
        holder.incarnation,
        (now_ms - holder.started_ms).max(0) / 1000,
        (holder.expires_ms - now_ms).max(0) / 1000,
    )
}

/// Takes or renews the lease for `me`: `Ok(Err(holder))` when another live node holds it.
async fn take<S: FeatureStore>(
    store: &S,
    node: &str,
    me: &Lease,
    ttl_ms: i64,
) -> Result<Result<Lease, Lease>, StoreError> {
    for _ in 0..ATTEMPTS {
        let current = store.lease(node).await?;
        let now = crate::now_ms();
        if let Some(current) = &current
            && !free_for(current, me, now)
        {
            return Ok(Err(current.clone()));
        }
        let renewed = Lease {
            expires_ms: now + ttl_ms,
            ..me.clone()
        };
        if store
            .swap_lease(node, current.as_ref(), Some(&renewed))
            .await?
        {
            return Ok(Ok(renewed));
        }
    }
    Err(StoreError::Unavailable(format!(
        "the lease on node id `{node}` kept changing under {ATTEMPTS} attempts to take it"
    )))
}

impl<S: FeatureStore> Keeper<S> {
    pub(super) async fn start(
        store: Arc<S>,
        shared: Arc<Shared>,
        incarnation: Incarnation,
        config: &IngestConfig,
    ) -> Result<Self, IngestError> {
        let node = config.node_id.clone();
        let ttl_ms = config.lease_ttl_ms.max(1);
        let me = Lease {
            incarnation: incarnation.to_string(),
            host: super::host_name(),
            pid: std::process::id(),
            started_ms: crate::now_ms(),
            expires_ms: 0,
        };
        let ours = Arc::new(Mutex::new(None));
        match take(&*store, &node, &me, ttl_ms).await {
            Ok(Ok(lease)) => {
                *ours.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                shared.stats().lease = LeaseState::Held;
            }
            Ok(Err(holder)) => {
                return Err(IngestError::LeaseHeld(describe_holder(
                    &node,
                    &holder,
                    crate::now_ms(),
                )));
            }
            Err(StoreError::Unavailable(e)) => {
                eprintln!(
                    "cannot take the lease on node id `{node}` yet ({e}); events are taken and kept in the \
                     write-ahead log, and the lease is taken once the store answers"
                );
            }
            Err(e) => return Err(e.into()),
        }
        let renewal = tokio::spawn({
            let (store, node, ours) = (store.clone(), node.clone(), ours.clone());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis((ttl_ms / 3).max(1) as u64)).await;
                    let state = match take(&*store, &node, &me, ttl_ms).await {
                        Ok(Ok(lease)) => {
                            *ours.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                            LeaseState::Held
                        }
                        Ok(Err(holder)) => {
                            let message = describe_holder(&node, &holder, crate::now_ms());
                            eprintln!("{message}");
                            LeaseState::Conflict(message)
                        }
                        // Kept as it was; the next renewal tries again.
                        Err(_) => continue,
                    };
                    shared.stats().lease = state;
                }
            }
        });
        Ok(Self {
            store,
            node,
            ours,
            renewal: Some(renewal),
        })
    }

    /// Stops renewing and gives the id back, so a successor need not wait for the lease to run out.
    pub(super) async fn release(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
            // Until the task is gone it holds the store (an embedded store's file stays locked).
            let _ = renewal.await;
        }
        let ours = self.ours.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(ours) = ours
            && let Err(e) = self.store.swap_lease(&self.node, Some(&ours), None).await
        {
            eprintln!(
                "could not release the lease on node id `{}`: {e}",
                self.node
            );
        }
    }
}

impl<S> Keeper<S> {
    pub(super) fn stop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}
