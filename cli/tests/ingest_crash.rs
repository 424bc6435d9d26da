//! `kill -9` at random points, 20 times over: the ingest process and the shipper die mid-work, the node's log is
//! wiped three times and once restored from an older copy, and afterwards every acknowledged event is in the store
//! and in the event log exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use edgerec_core::UserId;
use edgerec_features::event::{Event, EventKind};
use edgerec_features::log::EventLog;
use edgerec_features::store::{FeatureSettings, FeatureStore};
use edgerec_features::user::UserFeatures;

const TRIALS: usize = 20;
/// New events per trial; each trial also resends the last half of the previous trial's events.
const PER_TRIAL: usize = 2000;
const EVENTS: usize = TRIALS * PER_TRIAL;

/// A small generator so the kill times differ per run; the seed is printed for reproducing a failure.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn edgerec(args: &[&str], data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgerec"));
    command
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("EDGEREC_FEATURES_CONFIG")
        .env_remove("EDGEREC_FEATURES_DATA_DIR");
    command
}

/// Runs the ingest of `file` and kills it after `kill_after` (if given); returns the ids it acknowledged.
fn ingest(file: &Path, data: &Path, kill_after: Option<Duration>) -> Vec<String> {
    let mut child = edgerec(
        &[
            "events",
            "ingest",
            "--batch",
            "40",
            "--concurrency",
            "4",
            "--print-acked",
        ],
        data,
    )
    .arg(file)
    .stdout(Stdio::piped())
    // A run that is not killed must succeed; its stderr says why if it does not.
    .stderr(if kill_after.is_some() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .spawn()
    .expect("starts edgerec");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    match kill_after {
        Some(delay) => {
            std::thread::sleep(delay);
            let _ = child.kill();
            let _ = child.wait();
        }
        None => {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let status = child.wait().expect("waits");
            assert!(
                status.success(),
                "an ingest run that is not killed fails ({status}):\n{stderr}"
            );
        }
    }
    reader.join().expect("reader")
}

#[test]
fn acknowledged_events_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let file = dir.path().join("events.jsonl");
    let start = edgerec_features::now_ms() - 3600 * 1000;
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            Event::from_good_ids(
                &format!("ev-{i}"),
                &format!("user-{}", i % 37),
                &format!("item-{}", (i * 7) % 211),
                if i % 5 == 0 {
                    EventKind::Click
                } else {
                    EventKind::View
                },
                start + i as i64 * 10,
            )
        })
        .collect();
    let write = |path: &Path, events: &[Event]| {
        let mut out = std::fs::File::create(path).expect("creates");
        for e in events {
            writeln!(out, "{}", serde_json::to_string(e).expect("json")).expect("writes");
        }
    };
    write(&file, &events);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut random = Lcg(seed);
    // Kill times are spread over most of an uninterrupted run (process start included), measured here.
    let trial_file = dir.path().join("trial.jsonl");
    write(&trial_file, &events[..PER_TRIAL + PER_TRIAL / 2]);
    // Runs into an existing folder, as the trials are (a first run also creates the databases); the fastest of
    // three, so that a slow moment while timing does not leave most trials finishing before their kill.
    ingest(&trial_file, &dir.path().join("timing"), None);
    let mut full_ms = u64::MAX;
    for round in 1..=3 {
        write(
            &trial_file,
            &events[round * PER_TRIAL..(round + 1) * PER_TRIAL + PER_TRIAL / 2],
        );
        let timing = std::time::Instant::now();
        ingest(&trial_file, &dir.path().join("timing"), None);
        full_ms = full_ms.min(timing.elapsed().as_millis() as u64);
    }
    let mut acked = BTreeSet::new();
    // Events safe in the shipped log when the node's disk was wiped or restored: a new log has no memory of their
    // ids, so the client is taken not to send them again (it had their acknowledgement, or finds them logged).
    let mut logged_before_wipe: BTreeSet<String> = BTreeSet::new();
    let mut interrupted = 0;
    let wal = data.join("wal");
    let backup = dir.path().join("wal-backup");
    for trial in 0..TRIALS {
        if trial % 7 == 4 || trial == 15 {
            // The node's disk is replaced (or restored from an older copy) after a drain; the store is not.
            let shipped = edgerec(&["events", "ship"], &data)
                .stderr(Stdio::inherit())
                .status()
                .expect("ships");
            assert!(shipped.success());
            logged_before_wipe.extend(logged_ids(&data));
            std::fs::remove_dir_all(&wal).expect("wipes the log");
            if trial == 15 {
                copy_dir(&backup, &wal);
            }
        }
        // Each run sends new events after resending some of the previous run's: what that run wrote comes back
        // as duplicates, what it did not is new.
        let range = (trial * PER_TRIAL).saturating_sub(PER_TRIAL / 2)..(trial + 1) * PER_TRIAL;
        let to_send: Vec<Event> = events[range]
            .iter()
            .filter(|e| !logged_before_wipe.contains(e.id.as_str()))
            .cloned()
            .collect();
        let sent = to_send.len();
        write(&trial_file, &to_send);
        let delay = Duration::from_millis(full_ms / 20 + random.below(full_ms * 7 / 10));
        let this_run = ingest(&trial_file, &data, Some(delay));
        if this_run.len() < sent {
            interrupted += 1;
        }
        acked.extend(this_run);
        if trial == 6 {
            // A copy of the log as it is now, with records not yet shipped, to restore later.
            copy_dir(&wal, &backup);
        }
        if trial % 3 == 2 {
            let mut shipper = edgerec(&["events", "ship"], &data)
                .stderr(Stdio::null())
                .spawn()
                .expect("starts the shipper");
            std::thread::sleep(Duration::from_millis(20 + random.below(300)));
            let _ = shipper.kill();
            let _ = shipper.wait();
        }
    }
    println!(
        "a full run takes {full_ms} ms; {interrupted} of {TRIALS} runs were killed before finishing; {} events acknowledged before the last run",
        acked.len()
    );
    assert!(interrupted >= TRIALS / 2, "most runs are killed mid-ingest");
    // The last run sends everything: whatever no earlier run acknowledged gets in now.
    let rest: Vec<Event> = events
        .iter()
        .filter(|e| !logged_before_wipe.contains(e.id.as_str()))
        .cloned()
        .collect();
    write(&file, &rest);
    acked.extend(ingest(&file, &data, None));
    let shipped = edgerec(&["events", "ship"], &data)
        .stderr(Stdio::inherit())
        .status()
        .expect("ships");
    assert!(shipped.success());

    // The reader keeps one row per id; count raw rows to catch any duplicate the shipper wrote.
    let mut rows: BTreeMap<String, usize> = BTreeMap::new();
    for id in logged_ids(&data) {
        *rows.entry(id).or_default() += 1;
    }
    block_on(async {
        let log = EventLog::Folder(data.join("log"));
        let slice = log
            .read(start - 1000, start + 3600 * 1000)
            .await
            .expect("reads the log");
        assert_eq!(rows.len(), EVENTS, "every event is in the log");
        let twice: Vec<&str> = rows
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id.as_str())
            .collect();
        assert!(
            twice.is_empty(),
            "no event is in the log twice; {} are, the first with the files and records holding them:\n{}",
            twice.len(),
            where_logged(&data, &twice[..twice.len().min(5)])
        );
        assert!(acked.iter().all(|id| rows.contains_key(id)));
        assert_eq!(slice.events.len(), EVENTS);

        let store = edgerec_features::embedded::EmbeddedFeatureStore::open(
            &data.join("features.redb"),
            FeatureSettings::default(),
        )
        .expect("opens the store");
        let users = UserId::parse_all((0..37).map(|u| format!("user-{u}"))).expect("user ids");
        let stored = store.users(&users).await.expect("reads");
        for (user, features) in users.iter().zip(stored) {
            let mut expected = UserFeatures::default();
            for e in events.iter().filter(|e| &e.user == user) {
                expected.apply(e, FeatureSettings::default().history_len);
            }
            assert_eq!(
                features, expected,
                "{user}: every event applied exactly once"
            );
        }
    });
    // Everything shipped: only the (empty) active segment is left.
    let left = edgerec_features::wal::segments(&data.join("wal")).expect("lists");
    assert_eq!(left.len(), 1);
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

/// The id of every row of the shipped log under `data` (an id twice if two files hold it).
fn logged_ids(data: &Path) -> Vec<String> {
    block_on(async {
        let log = EventLog::Folder(data.join("log"));
        let mut ids = Vec::new();
        for key in log.list("events/").await.expect("lists") {
            ids.extend(
                log.events_of(&key)
                    .await
                    .expect("reads one file")
                    .into_iter()
                    .map(|e| e.event.id.into_string()),
            );
        }
        ids
    })
}

/// For a failure message: each of `ids` with the log files (and the log records) that hold it.
fn where_logged(data: &Path, ids: &[&str]) -> String {
    block_on(async {
        let log = EventLog::Folder(data.join("log"));
        let mut lines = Vec::new();
        for key in log.list("events/").await.expect("lists") {
            for row in log.events_of(&key).await.expect("reads one file") {
                if ids.contains(&row.event.id.as_str()) {
                    lines.push(format!("{} in {key}: {row:?}", row.event.id));
                }
            }
        }
        lines.sort();
        lines.join("\n")
    })
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}
