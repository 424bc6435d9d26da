//! The feature store: hot user features and cold item features, read in batches by serving and updated by the
//! ingest. Two backends pass one conformance suite (`tests/store.rs`): [`crate::embedded`] and
//! [`crate::dynamodb`].
//!
//! Updates are idempotent: every event carries the sequence number its node's write-ahead log gave it, and each
//! user and item remembers, per node, the last sequence number it applied. Replaying a log after a crash therefore
//! applies nothing twice, on either backend, whatever was or was not committed before the crash.

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};

use edgerec_core::{ItemId, UserId};

use crate::event::Event;
use crate::item::{DEFAULT_HALF_LIFE_MS, ItemFeatures};
use crate::user::{DEFAULT_CAPACITY, UserFeatures};

/// An event with the sequence number its node's write-ahead log gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequenced {
    pub seq: u64,
    pub event: Event,
}

/// Who holds a node id: one opening of a node's write-ahead log.
///
/// Two processes started with the same node id would number their events from the same sequence and each skip the
/// other's events as already applied; a lease, taken and renewed by compare-and-swap, lets the second one notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's write-ahead-log incarnation (16 hex digits, unique per opening of a log).
    pub incarnation: String,
    /// Host name and process id of the holder, for the message that names it and to tell a dead holder on this host.
    pub host: String,
    pub pid: u32,
    pub started_ms: i64,
    /// The holder renews before this; after it the lease may be taken.
    pub expires_ms: i64,
}

impl Lease {
    /// The stored form. Backends compare leases by this text, so it must be one text per lease: serde_json writes
    /// a struct's fields in declaration order and numbers one way.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("leases serialise")
    }

    pub(crate) fn from_json(json: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(format!("a lease: {e}")))
    }
}

/// How events become features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureSettings {
    /// Recent items kept per user (the model's `max_len`).
    pub history_len: usize,
    pub popularity_half_life_ms: i64,
}

impl Default for FeatureSettings {
    fn default() -> Self {
        Self {
            history_len: DEFAULT_CAPACITY,
            popularity_half_life_ms: DEFAULT_HALF_LIFE_MS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or refused the operation; nothing was changed by the failed call beyond
    /// what a retry makes good.
    #[error("the feature store is unavailable: {0}")]
    Unavailable(String),
    #[error("the feature store holds a record it cannot read: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
}

/// Reads and idempotent updates of user and item features.
pub trait FeatureStore: Send + Sync + 'static {
    /// Applies `events` (ascending sequence numbers, all from the write-ahead log of `node`). Each user and item
    /// skips the events it has already applied for `node`.
    fn apply(
        &self,
        node: &str,
        events: &[Sequenced],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The features of each user, in order; a user never seen has the default (cold start).
    fn users(
        &self,
        ids: &[UserId],
    ) -> impl Future<Output = Result<Vec<UserFeatures>, StoreError>> + Send;

    /// The features of each item, in order; `None` for an item neither the catalogue nor an event has named.
    fn items(
        &self,
        ids: &[ItemId],
    ) -> impl Future<Output = Result<Vec<Option<ItemFeatures>>, StoreError>> + Send;

    /// Replaces the metadata, popularity and interaction count of items (the scheduled refresh). What each item
    /// has applied is kept, so later events add to the new figures.
    fn put_items(
        &self,
        items: &[(ItemId, ItemFeatures)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes every applied change durable (the ingest calls it before a write-ahead log segment may be removed).
    fn sync(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The lease on node id `node`, if one is stored, expired or not (the caller judges expiry).
    fn lease(&self, node: &str) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Replaces the lease on `node` by `new` (`None` removes it) if and only if the stored one equals `expected`
    /// exactly (`None`: no lease stored), atomically and durably. `Ok(false)`, with nothing changed, when it does
    /// not: someone else took, renewed or released the lease since `expected` was read. Only this primitive lives
    /// here; when a lease may be taken (expired, holder dead) is the caller's policy.
    fn swap_lease(
        &self,
        node: &str,
        expected: Option<&Lease>,
        new: Option<&Lease>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Features that events update: a user's or an item's.
pub(crate) trait Updated: Default {
    fn update(&mut self, event: &Event, settings: &FeatureSettings);
}

impl Updated for UserFeatures {
    fn update(&mut self, event: &Event, settings: &FeatureSettings) {
        self.apply(event, settings.history_len);
    }
}

impl Updated for ItemFeatures {
    fn update(&mut self, event: &Event, settings: &FeatureSettings) {
        self.interactions += 1;
        self.popularity
            .add(1.0, event.time_ms, settings.popularity_half_life_ms);
    }
}

/// A stored user or item: its features and, per node, the last sequence number applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Record<F> {
    pub features: F,
    pub applied: BTreeMap<String, u64>,
}

pub(crate) type UserRecord = Record<UserFeatures>;
pub(crate) type ItemRecord = Record<ItemFeatures>;

impl<F: Updated> Record<F> {
    /// Applies each event `node` has not applied yet, then records the last one. Says whether anything changed.
    pub fn apply<'a>(
        &mut self,
        node: &str,
        events: impl IntoIterator<Item = &'a Sequenced>,
        settings: &FeatureSettings,
    ) -> bool {
        let done = self.applied.get(node).copied().unwrap_or(0);
        let mut last = None;
        for sequenced in events {
            if sequenced.seq > done {
                self.features.update(&sequenced.event, settings);
                last = Some(sequenced.seq);
            }
        }
        if let Some(last) = last {
            self.applied.insert(node.to_owned(), last);
        }
        last.is_some()
    }
}

/// Events by entity id, in sequence order.
pub(crate) type Grouped<'a> = BTreeMap<&'a str, Vec<&'a Sequenced>>;

/// Events grouped by user and by item.
pub(crate) fn by_entity(events: &[Sequenced]) -> (Grouped<'_>, Grouped<'_>) {
    let mut users: BTreeMap<&str, Vec<&Sequenced>> = BTreeMap::new();
    let mut items: BTreeMap<&str, Vec<&Sequenced>> = BTreeMap::new();
    for e in events {
        users.entry(&e.event.user).or_default().push(e);
        items.entry(&e.event.item).or_default().push(e);
    }
    (users, items)
}
