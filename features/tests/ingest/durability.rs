//! Nothing acknowledged is lost: a wiped or restored log, two nodes with one id, a store outage longer than the
//! backlog, damage in the live segment, a full disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use edgerec_core::{ItemId, UserId};
use edgerec_features::dynamodb::DynamoFeatureStore;
use edgerec_features::embedded::EmbeddedFeatureStore;
use edgerec_features::event::ClientEvent;
use edgerec_features::ingest::{Ingest, IngestConfig, IngestError, LeaseState};
use edgerec_features::item::ItemFeatures;
use edgerec_features::log::EventLog;
use edgerec_features::now_ms;
use edgerec_features::store::{FeatureSettings, FeatureStore, Lease, Sequenced, StoreError};
use edgerec_features::user::UserFeatures;
use edgerec_features::wal::{WalError, segments};

use crate::support::{self, event};

fn config(node: &str) -> IngestConfig {
    IngestConfig {
        node_id: node.into(),
        segment_bytes: 64 << 10,
        ..IngestConfig::default()
    }
}

fn embedded(dir: &Path) -> Arc<EmbeddedFeatureStore> {
    Arc::new(
        EmbeddedFeatureStore::open(&dir.join("features.redb"), FeatureSettings::default())
            .expect("opens the store"),
    )
}

fn events(prefix: &str, user: &str, n: usize, now: i64) -> Vec<ClientEvent> {
    (0..n)
        .map(|i| {
            event(
                &format!("{prefix}{i}"),
                user,
                &format!("{prefix}-item{i}"),
                now + i as i64,
            )
        })
        .collect()
}

async fn ingest_all<S: FeatureStore>(ingest: &Ingest<S>, events: Vec<ClientEvent>) {
    for batch in events.chunks(50) {
        ingest.ingest(batch.to_vec()).await.expect("ingests");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_or_restored_log_never_hides_new_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wal = dir.path().join("wal");
    let log = EventLog::Folder(dir.path().join("log"));
    let store = embedded(dir.path());
    let now = now_ms() - 60_000;

    // 200 events for U, stored; a copy of the log is kept after the first 100 (a backup, an image).
    let ingest = Ingest::open(&wal, config("edge-a"), store.clone())
        .await
        .expect("opens");
    ingest_all(&ingest, events("a", "U", 100, now)).await;
    ingest.close().await.expect("closes");
    let backup = dir.path().join("backup");
    copy_dir(&wal, &backup);
    let ingest = Ingest::open(&wal, config("edge-a"), store.clone())
        .await
        .expect("opens");
    ingest_all(&ingest, events("b", "U", 100, now + 100)).await;
    // Drained before the disk goes: what only a wiped log held cannot be shipped.
    ingest.ship(&log, true).await.expect("ships");
    ingest.close().await.expect("closes");

    // The node's disk is replaced; the store is not.
    std::fs::remove_dir_all(&wal).expect("wipes the log");
    let ingest = Ingest::open(&wal, config("edge-a"), store.clone())
        .await
        .expect("opens");
    ingest
        .ingest(vec![event("z", "U", "Z", now + 300)])
        .await
        .expect("ingests");
    ingest.ship(&log, true).await.expect("ships");
    ingest.close().await.expect("closes");
    let user = &store.users(&[support::user("U")]).await.expect("reads")[0];
    assert_eq!(user.interactions(), 201);
    assert_eq!(user.history().last().map(|i| i.as_str()), Some("Z"));

    // The node comes back from the older copy: its numbers repeat, its new events still land.
    std::fs::remove_dir_all(&wal).expect("wipes the log");
    copy_dir(&backup, &wal);
    let ingest = Ingest::open(&wal, config("edge-a"), store.clone())
        .await
        .expect("opens the restored log");
    ingest
        .ingest(vec![event("y", "U", "Y", now + 400)])
        .await
        .expect("ingests");
    ingest.ship(&log, true).await.expect("ships");
    ingest.close().await.expect("closes");
    let user = &store.users(&[support::user("U")]).await.expect("reads")[0];
    assert_eq!(
        user.interactions(),
        202,
        "the restored records were not applied twice"
    );
    assert_eq!(user.history().last().map(|i| i.as_str()), Some("Y"));

    // The shipped log has Z and Y exactly once each; nothing shipped before was overwritten.
    let slice = log
        .read(now - 1000, now + 1000)
        .await
        .expect("reads the log");
    let count = |id: &str| slice.events.iter().filter(|e| e.event.id == id).count();
    assert_eq!(
        (count("z"), count("y"), count("a5"), count("b5")),
        (1, 1, 1, 1)
    );
    assert_eq!(slice.events.len(), 202);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creates");
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copies");
        }
    }
}

/// A store whose updates fail while `down` is set, as DynamoDB during an outage.
struct Switched {
    inner: EmbeddedFeatureStore,
    down: AtomicBool,
}

impl Switched {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("connection refused".into()))
        } else {
            Ok(())
        }
    }
}

impl FeatureStore for Switched {
    async fn apply(&self, node: &str, events: &[Sequenced]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.apply(node, events).await
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<UserFeatures>, StoreError> {
        self.inner.users(ids).await
    }

    async fn items(&self, ids: &[ItemId]) -> Result<Vec<Option<ItemFeatures>>, StoreError> {
        self.inner.items(ids).await
    }

    async fn put_items(&self, items: &[(ItemId, ItemFeatures)]) -> Result<(), StoreError> {
        self.inner.put_items(items).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.sync().await
    }

    async fn lease(&self, node: &str) -> Result<Option<Lease>, StoreError> {
        self.check()?;
        self.inner.lease(node).await
    }

    async fn swap_lease(
        &self,
        node: &str,
        expected: Option<&Lease>,
        new: Option<&Lease>,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.swap_lease(node, expected, new).await
    }
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reads /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Events sent while the store is down.
const OUTAGE_EVENTS: usize = 200_000;
/// The backlog limit: past it events are refused.
const BACKLOG: u64 = 150_000;
/// Growth of resident memory allowed while the outage lasts (measured: about 11 MiB: the ids waiting to be written
/// as a run of the id index, the filters of the runs written, and allocator slack).
const RESIDENT_GROWTH_KIB: u64 = 32 << 10;
/// Growth allowed over the last 100,000 events, once caches are full: flat, where a queue of the events in memory
/// would grow with every one of them (an event held in memory takes over 100 bytes: over 10 MiB for these).
const RESIDENT_LATE_GROWTH_KIB: u64 = 12 << 10;

/// Set in the process that runs the outage alone.
const OUTAGE_ALONE: &str = "EDGEREC_TEST_OUTAGE_ALONE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_bounded_on_disk_and_loses_nothing() {
    // Resident memory is the whole process's: the test runs again in a process of its own, without the tests
    // running beside it here.
    if std::env::var_os(OUTAGE_ALONE).is_none() {
        // This test's path in the binary: its module's path without the crate's name.
        let module = module_path!().split_once("::").map_or("", |(_, path)| path);
        let name = format!("{module}::a_store_outage_is_bounded_on_disk_and_loses_nothing");
        let output = std::process::Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--exact", &name, "--nocapture"])
            .env(OUTAGE_ALONE, "1")
            .output()
            .expect("runs the test alone");
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success(),
            "the outage test failed in its own process"
        );
        // A name that matched nothing would run no test and succeed.
        assert!(
            stdout.contains("test result: ok. 1 passed"),
            "the outage test did not run in its own process (looked for {name})"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Switched {
        inner: EmbeddedFeatureStore::open(
            &dir.path().join("features.redb"),
            FeatureSettings::default(),
        )
        .expect("opens"),
        down: AtomicBool::new(false),
    });
    let ingest = Ingest::open(
        &dir.path().join("wal"),
        IngestConfig {
            max_backlog_events: BACKLOG,
            ..config("edge-a")
        },
        store.clone(),
    )
    .await
    .expect("opens");
    // Warm up (allocator, index, threads) before measuring.
    let now = now_ms() - 3_600_000;
    ingest_all(&ingest, events("warm", "w", 2000, now)).await;
    ingest
        .wait_applied(ingest.stats().durable_seq)
        .await
        .expect("applied");

    store.down.store(true, Ordering::SeqCst);
    let before = resident_kib();
    let mut at_50k = None;
    let (mut acked, mut refused) = (Vec::new(), 0usize);
    for chunk in 0..OUTAGE_EVENTS / 1000 {
        let batch: Vec<ClientEvent> = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                event(
                    &format!("o{n}"),
                    &format!("user{}", n % 1000),
                    &format!("item{}", n % 5000),
                    now + n as i64,
                )
            })
            .collect();
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        match ingest.ingest(batch).await {
            Ok(ack) => {
                assert_eq!(ack.accepted, 1000);
                acked.extend(ids);
                if acked.len() == 50_000 {
                    at_50k = Some(resident_kib());
                }
            }
            Err(IngestError::Backlog { events, .. }) => {
                assert!(events >= BACKLOG);
                refused += 1;
            }
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    let after = resident_kib();
    let growth = after.saturating_sub(before);
    let late_growth = after.saturating_sub(at_50k.expect("50,000 acknowledged"));
    eprintln!(
        "outage: {} events acknowledged, {refused} batches refused, resident memory grew {growth} KiB \
         ({late_growth} KiB after the first 50,000)",
        acked.len()
    );
    assert!(refused > 0, "the backlog limit was never reached");
    assert!(
        acked.len() as u64 >= BACKLOG - 1000 && acked.len() as u64 <= BACKLOG + 256 * 1000,
        "{} acknowledged",
        acked.len()
    );
    assert!(
        growth < RESIDENT_GROWTH_KIB,
        "resident memory grew {growth} KiB during the outage"
    );
    assert!(
        late_growth < RESIDENT_LATE_GROWTH_KIB,
        "resident memory kept growing: {late_growth} KiB over the last 100,000 events"
    );
    assert!(ingest.stats().apply_failures > 0);

    store.down.store(false, Ordering::SeqCst);
    ingest
        .wait_applied(ingest.stats().durable_seq)
        .await
        .expect("applied");
    // Every acknowledged event applied exactly once: each user's interactions add up.
    let users: Vec<_> = (0..1000)
        .map(|u| support::user(&format!("user{u}")))
        .collect();
    let read = store.users(&users).await.expect("reads");
    let total: u64 = read.iter().map(|u| u.interactions()).sum();
    assert_eq!(total, acked.len() as u64);
    // And new events are taken again.
    ingest
        .ingest(vec![event("after", "w", "x", now)])
        .await
        .expect("taken once the backlog drained");
    ingest.close().await.expect("closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_nodes_with_one_id_are_told_apart_on_both_stores() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = embedded(dir.path());
    one_id_two_nodes(dir.path(), store).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let dynamo =
        DynamoFeatureStore::connect(&support::aws_config("lease"), FeatureSettings::default());
    dynamo.ensure_created().await.expect("creates the table");
    one_id_two_nodes(dir.path(), Arc::new(dynamo)).await;
}

async fn one_id_two_nodes<S: FeatureStore>(dir: &Path, store: Arc<S>) {
    let now = now_ms() - 60_000;
    let first = Ingest::open(&dir.join("a"), config("shared-id"), store.clone())
        .await
        .expect("the first node takes the id");
    assert_eq!(first.stats().lease, LeaseState::Held);
    let Err(e) = Ingest::open(&dir.join("b"), config("shared-id"), store.clone()).await else {
        panic!("the second node is refused");
    };
    let message = e.to_string();
    assert!(matches!(e, IngestError::LeaseHeld(_)), "{message}");
    assert!(message.contains("shared-id"), "{message}");
    assert!(
        message.contains(&first.stats().incarnation),
        "names the other node: {message}"
    );
    assert!(
        message.contains(&std::process::id().to_string()),
        "{message}"
    );

    // On distinct ids both logs complete.
    let second = Ingest::open(&dir.join("b"), config("other-id"), store.clone())
        .await
        .expect("a node with its own id starts");
    ingest_all(&first, events("p", "P", 120, now)).await;
    ingest_all(&second, events("q", "P", 80, now + 500)).await;
    first.close().await.expect("closes");
    second.close().await.expect("closes");
    assert_eq!(
        store.users(&[support::user("P")]).await.expect("reads")[0].interactions(),
        200
    );
    // A clean stop gives the id back at once.
    let again = Ingest::open(&dir.join("b"), config("shared-id"), store.clone())
        .await
        .expect("the id is free after a clean stop");
    again.close().await.expect("closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_live_segment_refuses_start_and_repair_salvages_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wal = dir.path().join("wal");
    let store = embedded(dir.path());
    let now = now_ms() - 60_000;
    {
        let ingest = Ingest::open(&wal, config("edge-a"), store.clone())
            .await
            .expect("opens");
        for i in 0..20 {
            ingest
                .ingest(vec![event(
                    &format!("d{i}"),
                    "D",
                    &format!("i{i}"),
                    now + i,
                )])
                .await
                .expect("ingests");
        }
        // A crash: no clean close.
    }
    let segment = segments(&wal)
        .expect("lists")
        .last()
        .expect("a segment")
        .path
        .clone();
    let mut bytes = std::fs::read(&segment).expect("reads");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&segment, &bytes).expect("writes");

    let Err(e) = Ingest::open(&wal, config("edge-a"), store.clone()).await else {
        panic!("starts on a damaged log");
    };
    match &e {
        IngestError::Wal(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, &segment);
            assert!(
                *offset <= middle as u64 && *offset + 200 > middle as u64,
                "{e}"
            );
        }
        other => panic!("not corruption: {other}"),
    }
    assert_eq!(
        std::fs::read(&segment).expect("reads").len(),
        bytes.len(),
        "nothing cut away"
    );

    let report = edgerec_features::wal::repair(&wal).expect("repairs");
    assert_eq!(report.repaired.len(), 1);
    assert_eq!(report.repaired[0].records_kept, 19);
    // Replayed into an empty store, the salvaged log gives back every record but the damaged one.
    let fresh = tempfile::tempdir().expect("temp dir");
    let fresh = embedded(fresh.path());
    let ingest = Ingest::open(&wal, config("edge-a"), fresh.clone())
        .await
        .expect("opens after the repair");
    ingest.close().await.expect("closes");
    assert_eq!(
        fresh.users(&[support::user("D")]).await.expect("reads")[0].interactions(),
        19
    );
}

/// A small filesystem of its own (a tmpfs), unmounted when dropped: the disk a full-disk test fills.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("runs mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill it and needs root to do so (mount said {status})"
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a failed test may still hold files open there.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_events_loses_nothing_and_recovers() {
    // The ballast is what comes free: twice what the events filled, so the store can apply the backlog (redb
    // grows by whole regions) and the log and the id index can grow again.
    let disk = SmallDisk::mount(48 << 20);
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 32 << 20]).expect("writes the ballast");
    let data = disk.path().join("data");
    let store = embedded(&data);
    let ingest = Ingest::open(&data.join("wal"), config("edge-a"), store.clone())
        .await
        .expect("opens");
    let now = now_ms() - 60_000;
    let mut acked = 0u64;
    let mut refusal = None;
    for round in 0..20_000 {
        let batch: Vec<ClientEvent> = (0..50)
            .map(|i| {
                let n = round * 50 + i;
                event(
                    &format!("full-{n}-{}", "x".repeat(64)),
                    "F",
                    &format!("item-{n}"),
                    now + n as i64,
                )
            })
            .collect();
        match ingest.ingest(batch).await {
            Ok(ack) => acked += ack.accepted as u64,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk filled up");
    eprintln!("full disk: {acked} events acknowledged, then refused: {refusal}");
    assert!(refusal.is_no_space(), "not a full-disk refusal: {refusal}");
    // Space returns: the ingest recovers by itself.
    std::fs::remove_file(&ballast).expect("frees space");
    let mut recovered = false;
    for _ in 0..50 {
        match ingest
            .ingest(vec![event("after-full", "F", "y", now)])
            .await
        {
            Ok(ack) => {
                acked += ack.accepted as u64;
                recovered = true;
                break;
            }
            Err(e) if e.is_no_space() => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(recovered, "events are taken again once space returns");
    ingest
        .wait_applied(ingest.stats().durable_seq)
        .await
        .expect("applied");
    ingest.close().await.expect("closes");
    assert_eq!(
        store.users(&[support::user("F")]).await.expect("reads")[0].interactions(),
        acked
    );
    drop(store);

    // After a restart the log reads back whole: every acknowledged event, once.
    let store = embedded(&data);
    let ingest = Ingest::open(&data.join("wal"), config("edge-a"), store.clone())
        .await
        .expect("reopens");
    let log = EventLog::Folder(disk.path().join("log"));
    let report = ingest.ship(&log, true).await.expect("ships");
    assert_eq!(report.events as u64, acked);
    ingest.close().await.expect("closes");
    assert_eq!(
        store.users(&[support::user("F")]).await.expect("reads")[0].interactions(),
        acked
    );
}
