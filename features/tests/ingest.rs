//! The ingest end to end: durable acknowledgement, deduplication, replay after a restart, shipping to Parquet in
//! a folder and in S3 (s3s-fs), and the log read back by time range.

use crate::support;

#[path = "ingest/durability.rs"]
mod durability;

use std::collections::BTreeMap;
use std::sync::Arc;

use edgerec_core::{ItemId, RequestId, Surface, UserId, VariantName, Version};
use edgerec_features::embedded::EmbeddedFeatureStore;
use edgerec_features::event::{EventError, EventKind, ServedRequest};
use edgerec_features::ingest::{Ingest, IngestConfig, IngestError};
use edgerec_features::log::EventLog;
use edgerec_features::now_ms;
use edgerec_features::store::{FeatureSettings, FeatureStore};
use support::event;

/// The lease on the node id runs out quickly here: tests "crash" an ingest by dropping it, in this process.
const LEASE_TTL_MS: i64 = 300;

fn config(segment_bytes: u64) -> IngestConfig {
    IngestConfig {
        node_id: "edge-a".into(),
        segment_bytes,
        lease_ttl_ms: LEASE_TTL_MS,
        ..IngestConfig::default()
    }
}

async fn open(dir: &std::path::Path, segment_bytes: u64) -> Ingest<EmbeddedFeatureStore> {
    let store = EmbeddedFeatureStore::open(&dir.join("features.redb"), FeatureSettings::default())
        .expect("opens the store");
    reopen(dir, segment_bytes, Arc::new(store)).await
}

async fn reopen(
    dir: &std::path::Path,
    segment_bytes: u64,
    store: Arc<EmbeddedFeatureStore>,
) -> Ingest<EmbeddedFeatureStore> {
    Ingest::open(&dir.join("wal"), config(segment_bytes), store)
        .await
        .expect("opens the ingest")
}

fn served(request_id: &str, time_ms: i64) -> ServedRequest {
    ServedRequest {
        request_id: RequestId::parse(request_id).expect("a request id"),
        time_ms,
        user: Some(UserId::parse("u1").expect("a user id")),
        surface: Surface::parse("home").expect("a surface"),
        history: ItemId::parse_all(["a", "b"]).expect("item ids"),
        context: BTreeMap::from([("hour".into(), 9.0)]),
        model_version: Version::parse("v1").expect("a version"),
        variant: VariantName::parse("control").expect("a variant"),
        items: ItemId::parse_all(["c", "d"]).expect("item ids"),
        scores: vec![2.5, 1.25],
        degraded: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_applied_once_across_restarts_and_shipped_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = now_ms();
    let log = EventLog::Folder(dir.path().join("log"));
    let store = {
        let ingest = open(dir.path(), 400).await;
        let ack = ingest
            .ingest(vec![
                event("1", "u1", "a", now),
                event("2", "u1", "b", now + 1),
            ])
            .await
            .expect("ingests");
        assert_eq!((ack.accepted, ack.duplicates), (2, 0));
        // A retried batch, and a batch repeating an event inside itself.
        let ack = ingest
            .ingest(vec![
                event("2", "u1", "b", now + 1),
                event("3", "u2", "a", now + 2),
                event("3", "u2", "a", now + 2),
            ])
            .await
            .expect("ingests");
        assert_eq!((ack.accepted, ack.duplicates), (1, 2));
        ingest
            .queue_served(vec![served("r1", now)])
            .expect("queues a served request")
            .await
            .expect("logs a served request");
        ingest
            .wait_applied(ack.last_seq.expect("wrote"))
            .await
            .expect("applied");
        let users = ingest
            .store()
            .users(&[support::user("u1")])
            .await
            .expect("reads");
        assert_eq!(users[0].history(), ["a", "b"]);
        // Ship part of it, then "crash" (drop without closing).
        ingest.ship(&log, true).await.expect("ships");
        ingest
            .ingest(vec![event("4", "u1", "c", now + 3)])
            .await
            .expect("ingests");
        ingest.store().clone()
    };
    // The process that kill -9 ends is tested in the CLI's tests; here the ingest stops without closing and a
    // new one opens the same log and store, once the dropped one's lease on the node id has run out.
    tokio::time::sleep(std::time::Duration::from_millis(2 * LEASE_TTL_MS as u64)).await;
    let ingest = reopen(dir.path(), 400, store).await;
    // Ids of shipped segments and of the log are both remembered.
    let ack = ingest
        .ingest(vec![
            event("1", "u1", "a", now),
            event("4", "u1", "c", now + 3),
            event("5", "u2", "b", now + 4),
        ])
        .await
        .expect("ingests after the restart");
    assert_eq!((ack.accepted, ack.duplicates), (1, 2));
    let report = ingest.ship(&log, true).await.expect("ships everything");
    assert!(report.segments >= 1);
    let users = ingest
        .store()
        .users(&[support::user("u1"), support::user("u2")])
        .await
        .expect("reads");
    assert_eq!(users[0].counts[&EventKind::View], 3);
    assert_eq!(users[0].history(), ["a", "b", "c"]);
    assert_eq!(users[1].history(), ["a", "b"]);

    let slice = log
        .read(now - 1000, now + 1000)
        .await
        .expect("reads the log");
    let ids: Vec<&str> = slice.events.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    assert_eq!(slice.served, vec![served("r1", now)]);
    assert!(slice.files.len() >= 2);
    // The range filters by time.
    let later = log.read(now + 2, now + 1000).await.expect("reads");
    assert_eq!(later.events.len(), 3);

    // Shipping a segment again (as after a crash before its removal) rewrites the same files: no new rows.
    let (incarnation, records) = {
        let wal = edgerec_features::wal::segments(&dir.path().join("wal")).expect("lists");
        edgerec_features::wal::read_segment(&wal[0]).expect("reads")
    };
    let first = records.first().map_or(1, |r| r.seq);
    log.ship_segment("edge-a", incarnation, first, &records)
        .await
        .expect("ships again");
    log.ship_segment("edge-a", incarnation, first, &records)
        .await
        .expect("ships again");
    assert_eq!(
        log.read(now - 1000, now + 1000)
            .await
            .expect("reads")
            .events
            .len(),
        5
    );
    ingest.close().await.expect("closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_refused_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ingest = open(dir.path(), 1 << 20).await;
    let now = now_ms();
    let e = ingest
        .ingest(vec![
            event("ok", "u", "a", now),
            event("late", "u", "a", now - 30 * 24 * 3600 * 1000),
        ])
        .await
        .expect_err("refused");
    assert!(
        matches!(
            e,
            IngestError::Invalid(EventError::Invalid { index: 1, .. })
        ),
        "{e}"
    );
    let e = ingest
        .ingest(
            (0..1001)
                .map(|i| event(&i.to_string(), "u", "a", now))
                .collect(),
        )
        .await
        .expect_err("too many");
    assert!(e.to_string().contains("at most 1000"), "{e}");
    // Nothing of the refused batches was written: "ok" is new.
    let ack = ingest
        .ingest(vec![event("ok", "u", "a", now)])
        .await
        .expect("ingests");
    assert_eq!(ack.accepted, 1);
    ingest.close().await.expect("closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_ships_to_s3_and_an_unreachable_s3_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = support::aws_config("log");
    let log = EventLog::s3(&config);
    log.ensure_created().await.expect("creates the bucket");
    let ingest = open(dir.path(), 1 << 20).await;
    let now = now_ms();
    ingest
        .ingest(
            (0..50)
                .map(|i| event(&format!("s{i}"), "u", &format!("i{i}"), now + i))
                .collect(),
        )
        .await
        .expect("ingests");
    ingest
        .queue_served(vec![served("r9", now)])
        .expect("queues")
        .await
        .expect("logs");

    let mut down = config.clone();
    down.s3_endpoint = Some("http://127.0.0.1:9".into());
    let e = ingest
        .ship(&EventLog::s3(&down), true)
        .await
        .expect_err("S3 is down");
    assert!(e.to_string().contains("s3://"), "{e}");
    // The segment stays until an upload is confirmed.
    assert!(
        edgerec_features::wal::segments(&dir.path().join("wal"))
            .expect("lists")
            .len()
            >= 2
    );

    let report = ingest.ship(&log, false).await.expect("ships");
    assert_eq!((report.events, report.served), (50, 1));
    let slice = log.read(now - 1000, now + 1000).await.expect("reads back");
    assert_eq!(slice.events.len(), 50);
    assert_eq!(slice.served[0].scores, [2.5, 1.25]);
    assert!(
        slice
            .files
            .iter()
            .all(|f| f.key.starts_with("events/date=") || f.key.starts_with("served/date="))
    );
    ingest.close().await.expect("closes");
}

/// A store that is unreachable for its first `failures` updates, as DynamoDB is during an outage.
struct FlakyStore {
    inner: EmbeddedFeatureStore,
    failures: std::sync::atomic::AtomicUsize,
}

impl FlakyStore {
    /// Fails as an unreachable store does while updates are still to fail. Lease calls check it without using
    /// up a failure, so `failures` still counts the updates the ingest retries.
    fn down(&self) -> Result<(), edgerec_features::store::StoreError> {
        if self.failures.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Err(edgerec_features::store::StoreError::Unavailable(
                "connection refused".into(),
            ));
        }
        Ok(())
    }
}

impl FeatureStore for FlakyStore {
    async fn apply(
        &self,
        node: &str,
        events: &[edgerec_features::store::Sequenced],
    ) -> Result<(), edgerec_features::store::StoreError> {
        let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(edgerec_features::store::StoreError::Unavailable(
                "connection refused".into(),
            ));
        }
        self.inner.apply(node, events).await
    }

    async fn users(
        &self,
        ids: &[UserId],
    ) -> Result<Vec<edgerec_features::user::UserFeatures>, edgerec_features::store::StoreError>
    {
        self.inner.users(ids).await
    }

    async fn items(
        &self,
        ids: &[ItemId],
    ) -> Result<
        Vec<Option<edgerec_features::item::ItemFeatures>>,
        edgerec_features::store::StoreError,
    > {
        self.inner.items(ids).await
    }

    async fn put_items(
        &self,
        items: &[(ItemId, edgerec_features::item::ItemFeatures)],
    ) -> Result<(), edgerec_features::store::StoreError> {
        self.inner.put_items(items).await
    }

    async fn sync(&self) -> Result<(), edgerec_features::store::StoreError> {
        self.inner.sync().await
    }

    async fn lease(
        &self,
        node: &str,
    ) -> Result<Option<edgerec_features::store::Lease>, edgerec_features::store::StoreError> {
        self.down()?;
        self.inner.lease(node).await
    }

    async fn swap_lease(
        &self,
        node: &str,
        expected: Option<&edgerec_features::store::Lease>,
        new: Option<&edgerec_features::store::Lease>,
    ) -> Result<bool, edgerec_features::store::StoreError> {
        self.down()?;
        self.inner.swap_lease(node, expected, new).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_delays_updates_but_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(FlakyStore {
        inner: EmbeddedFeatureStore::open(
            &dir.path().join("features.redb"),
            FeatureSettings::default(),
        )
        .expect("opens"),
        failures: std::sync::atomic::AtomicUsize::new(3),
    });
    let ingest = Ingest::open(&dir.path().join("wal"), config(1 << 20), store)
        .await
        .expect("opens");
    let now = now_ms();
    // Acknowledged while the store is down: the log has them.
    let ack = ingest
        .ingest(
            (0..10)
                .map(|i| event(&format!("f{i}"), "u", &format!("i{i}"), now + i))
                .collect(),
        )
        .await
        .expect("acknowledged although the store is down");
    // Nothing may be shipped (and removed from the log) before the store has it.
    let report = ingest
        .ship(&EventLog::Folder(dir.path().join("log")), false)
        .await
        .expect("ships nothing yet");
    assert_eq!(report.segments, 0);
    ingest
        .wait_applied(ack.last_seq.expect("wrote"))
        .await
        .expect("applied after retries");
    let stats = ingest.stats();
    assert_eq!(stats.apply_failures, 3);
    assert!(
        stats
            .last_apply_error
            .expect("recorded")
            .contains("connection refused")
    );
    let user = &ingest
        .store()
        .users(&[support::user("u")])
        .await
        .expect("reads")[0];
    assert_eq!(user.interactions(), 10);
    ingest.close().await.expect("closes");
}
