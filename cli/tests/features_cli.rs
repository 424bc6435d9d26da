//! The features commands end to end on the embedded defaults: ingest, ship, refresh the catalogue, show, and train
//! on the log with its lineage in the bundle.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgerec"))
        .args(args)
        .current_dir(dir)
        .env_remove("EDGEREC_FEATURES_CONFIG")
        .env_remove("EDGEREC_FEATURES_DATA_DIR")
        .output()
        .expect("runs edgerec")
}

/// Runs edgerec, which must succeed.
fn edgerec(args: &[&str], dir: &Path) -> Output {
    let output = run(args, dir);
    assert!(
        output.status.success(),
        "edgerec {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn ingest_ship_refresh_show_and_train_from_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = edgerec_features::now_ms() - 3600 * 1000;
    let mut events = std::fs::File::create(dir.path().join("events.jsonl")).expect("creates");
    // 30 users walking a cycle of 12 items.
    for user in 0..30 {
        for step in 0..8 {
            let item = (user + step) % 12 + 1;
            writeln!(
                events,
                r#"{{"id":"{user}-{step}","user":"u{user}","item":"{item}","kind":"view","time_ms":{}}}"#,
                start + user * 100 + step
            )
            .expect("writes");
        }
    }
    drop(events);
    std::fs::write(
        dir.path().join("movies.dat"),
        (1..=13)
            .map(|i| format!("{i}::Movie {i} (2000)::Drama|Comedy\n"))
            .collect::<String>(),
    )
    .expect("writes the catalogue");

    let ingested = edgerec(
        &["events", "ingest", "events.jsonl", "--data", "d"],
        dir.path(),
    );
    assert!(String::from_utf8_lossy(&ingested.stderr).contains("240 events written"));
    let again = edgerec(
        &["events", "ingest", "events.jsonl", "--data", "d"],
        dir.path(),
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 events written, 240 duplicates"));
    let shipped = edgerec(&["events", "ship", "--data", "d"], dir.path());
    assert!(String::from_utf8_lossy(&shipped.stderr).contains("240 events"));
    let refreshed = edgerec(
        &[
            "features",
            "refresh-items",
            "--data",
            "d",
            "--catalogue",
            "movies.dat",
            "--prior",
            "0.5",
        ],
        dir.path(),
    );
    assert!(
        String::from_utf8_lossy(&refreshed.stderr).contains("refreshed 13 items"),
        "{}",
        String::from_utf8_lossy(&refreshed.stderr)
    );

    let shown = edgerec(
        &[
            "features", "show", "--data", "d", "--user", "u0", "--item", "1", "--item", "13",
        ],
        dir.path(),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    let recent: Vec<&str> = shown["users"]["u0"]["recent"]
        .as_array()
        .expect("recent items")
        .iter()
        .map(|r| r["item"].as_str().expect("id"))
        .collect();
    assert_eq!(recent, ["1", "2", "3", "4", "5", "6", "7", "8"]);
    assert_eq!(shown["items"]["1"]["metadata"]["title"], "Movie 1 (2000)");
    assert_eq!(
        shown["items"]["13"]["popularity"]["score"], 0.5,
        "cold item: the prior"
    );

    edgerec(
        &[
            "train",
            "event-log",
            "--log-data",
            "d",
            "--out",
            "run",
            "--max-epochs",
            "1",
            "--dim",
            "16",
            "--blocks",
            "1",
            "--max-len",
            "8",
            "--batch-size",
            "16",
            "--threads",
            "1",
        ],
        dir.path(),
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("run/bundle/manifest.json")).expect("manifest"),
    )
    .expect("JSON");
    let log = &manifest["lineage"]["event_log"];
    assert_eq!(log["events"], 240);
    let files = log["files"].as_array().expect("files");
    assert_eq!(files.len(), 1);
    let key = files[0]["key"].as_str().expect("key");
    let bytes = std::fs::read(dir.path().join("d/log").join(key)).expect("the log file");
    assert_eq!(
        files[0]["sha256"].as_str().expect("digest"),
        edgerec_core::Digest::of(&bytes).to_string()
    );
}

/// Runs edgerec, which must fail; returns its stderr.
fn edgerec_fails(args: &[&str], dir: &Path) -> String {
    let output = run(args, dir);
    assert!(!output.status.success(), "edgerec {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_events(path: &Path, user: &str, items: &[String], start: i64) {
    let mut out = std::fs::File::create(path).expect("creates");
    for (i, item) in items.iter().enumerate() {
        writeln!(
            out,
            r#"{{"id":"{user}-{item}","user":"{user}","item":"{item}","kind":"view","time_ms":{}}}"#,
            start + i as i64
        )
        .expect("writes");
    }
}

#[test]
fn a_wiped_write_ahead_log_never_hides_new_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = edgerec_features::now_ms() - 3600 * 1000;
    let items: Vec<String> = (0..200).map(|i| format!("item{i}")).collect();
    write_events(&dir.path().join("a.jsonl"), "U", &items, start);
    write_events(
        &dir.path().join("b.jsonl"),
        "U",
        &["Z".to_owned()],
        start + 1000,
    );
    edgerec(&["events", "ingest", "a.jsonl", "--data", "D"], dir.path());
    // The node's disk is replaced; the store is not.
    std::fs::remove_dir_all(dir.path().join("D/wal")).expect("wipes the log");
    let ingested = edgerec(&["events", "ingest", "b.jsonl", "--data", "D"], dir.path());
    assert!(String::from_utf8_lossy(&ingested.stderr).contains("1 events written"));
    let shown = edgerec(
        &["features", "show", "--data", "D", "--user", "U"],
        dir.path(),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    let recent = shown["users"]["U"]["recent"].to_string();
    assert!(recent.contains("\"Z\""), "Z is in U's features: {shown}");
    let shipped = edgerec(&["events", "ship", "--data", "D"], dir.path());
    assert!(
        String::from_utf8_lossy(&shipped.stderr).contains(" 1 events"),
        "{}",
        String::from_utf8_lossy(&shipped.stderr)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let logged = runtime.block_on(async {
        edgerec_features::log::EventLog::Folder(dir.path().join("D/log"))
            .read(start - 1000, start + 3600 * 1000)
            .await
            .expect("reads the log")
    });
    assert_eq!(
        logged.events.iter().filter(|e| e.event.item == "Z").count(),
        1,
        "Z is in the shipped log exactly once"
    );
}

#[test]
fn a_damaged_log_stops_the_ingest_and_repair_salvages_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let start = edgerec_features::now_ms() - 3600 * 1000;
    let items: Vec<String> = (0..40).map(|i| format!("item{i}")).collect();
    write_events(&dir.path().join("a.jsonl"), "U", &items, start);
    edgerec(
        &["events", "ingest", "a.jsonl", "--data", "D", "--batch", "1"],
        dir.path(),
    );
    let wal = dir.path().join("D/wal");
    // The segment that holds the records (the newest one is the empty segment of the last opening).
    let segment = edgerec_features::wal::segments(&wal)
        .expect("lists")
        .into_iter()
        .max_by_key(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len()))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment.path).expect("reads");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&segment.path, &bytes).expect("writes");

    let refused = edgerec_fails(&["events", "ship", "--data", "D"], dir.path());
    let name = segment
        .path
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(refused.contains(&name), "names the segment: {refused}");
    assert!(
        refused.contains("corrupt at byte"),
        "names the offset: {refused}"
    );
    assert!(
        refused.contains("events repair"),
        "says what to do: {refused}"
    );

    let nothing = edgerec_fails(&["events", "repair", "--data", "no-such-data"], dir.path());
    assert!(nothing.contains("there is no write-ahead log"), "{nothing}");
    let repaired = edgerec(&["events", "repair", "--data", "D"], dir.path());
    let report: serde_json::Value = serde_json::from_slice(&repaired.stdout).expect("json report");
    assert_eq!(report["repaired"][0]["records_kept"], 39, "{report}");
    assert_eq!(report["repaired"][0]["missing_records"], 1, "{report}");
    let shipped = edgerec(&["events", "ship", "--data", "D"], dir.path());
    assert!(
        String::from_utf8_lossy(&shipped.stderr).contains("39 events"),
        "{}",
        String::from_utf8_lossy(&shipped.stderr)
    );
}
