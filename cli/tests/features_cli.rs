//! The features commands end to end on the embedded defaults: ingest, ship, refresh the catalogue, show, and train
//! on the log with its lineage in the bundle.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

fn edgerec(args: &[&str], dir: &Path) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_edgerec"))
        .args(args)
        .current_dir(dir)
        .env_remove("EDGEREC_FEATURES_CONFIG")
        .env_remove("EDGEREC_FEATURES_DATA_DIR")
        .output()
        .expect("runs edgerec");
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
