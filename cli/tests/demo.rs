//! `edgerec demo` end to end on a small synthetic data set: trains, publishes, deploys, starts the registry and an
//! edge node, replays the held-out interactions, serves the web demo page, and stops everything it started.

use std::io::Write;
use std::net::TcpListener;
use std::process::Command;

use support::free_port;

mod support;

#[test]
fn demo_trains_serves_replays_and_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 60 users walking a cycle of 30 items: the next item is predictable, so the replay must hit often.
    let mut data = std::fs::File::create(dir.path().join("walks.csv")).expect("creates");
    writeln!(data, "user,item,timestamp").expect("writes");
    for user in 0..60 {
        for step in 0..12 {
            writeln!(data, "u{user},i{},{}", (user + step) % 30, 1000 + step).expect("writes");
        }
    }
    drop(data);
    std::fs::write(
        dir.path().join("tiny.json"),
        r#"{"max_len": 8, "dim": 16, "blocks": 1, "ffn_dim": 32, "dropout": 0.0, "max_epochs": 30, "patience": 30, "learning_rate": 0.01, "warmup_steps": 5, "batch_size": 32}"#,
    )
    .expect("writes the training settings");
    let (registry_port, node_port) = (free_port(), free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_edgerec"))
        .current_dir(dir.path())
        .env_remove("EDGEREC_TOKEN")
        .env_remove("EDGEREC_REGISTRY")
        .args([
            "demo",
            "--dataset",
            "walks.csv",
            "--train-config",
            "tiny.json",
        ])
        .args(["--rate", "0", "--duration", "1", "--dir", "run"])
        .args(["--registry-listen", &format!("127.0.0.1:{registry_port}")])
        .args(["--node-listen", &format!("127.0.0.1:{node_port}")])
        .output()
        .expect("runs the demo");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the demo failed:\n{log}");

    let replay = log
        .lines()
        .find(|l| l.starts_with("replay finished:"))
        .unwrap_or_else(|| panic!("no replay summary:\n{log}"));
    assert!(replay.contains("60 requests"), "{replay}");
    assert!(replay.contains("0 degraded, 0 failed"), "{replay}");
    let online: f64 = replay
        .split("online HR@10 ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|hr| hr.parse().ok())
        .unwrap_or_else(|| panic!("no hit rate in {replay}"));
    assert!(
        online > 0.5,
        "the walk is predictable; online HR@10 {online}"
    );
    assert!(
        log.contains("history: 660 events of 60 users sent"),
        "{log}"
    );

    // Everything the demo started is gone: both ports are free again.
    for port in [registry_port, node_port] {
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} still taken after the demo: {e}"));
    }
    // A port in use is refused up front, with the flag that changes it.
    let taken = TcpListener::bind("127.0.0.1:0").expect("binds");
    let busy = Command::new(env!("CARGO_BIN_EXE_edgerec"))
        .current_dir(dir.path())
        .args(["demo", "--dataset", "walks.csv", "--dir", "run"])
        .args([
            "--registry-listen",
            &taken.local_addr().expect("address").to_string(),
        ])
        .output()
        .expect("runs the demo");
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("--registry-listen"));

    // The node shipped its log when it stopped: the A/B report sees every replayed request.
    let report = Command::new(env!("CARGO_BIN_EXE_edgerec"))
        .current_dir(dir.path())
        .args([
            "ab",
            "report",
            "--surface",
            "home",
            "--json",
            "--data",
            "run/node",
        ])
        .output()
        .expect("runs the report");
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON");
    assert_eq!(report["variants"][0]["requests"], 60, "{report}");
    assert_eq!(report["variants"][0]["hit_rate"]["trials"], 60, "{report}");
}
