//! `edgerec demo` end to end on a small synthetic data set: trains, publishes, deploys, starts the registry and an
//! edge node, replays the held-out interactions, serves the web demo page (driven in headless Chromium while it
//! serves: `web-demo/tests/e2e.mjs`), and stops everything it started.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::nodes::edgerec;
use support::{free_port, succeeds};

use crate::support;

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
        r#"{"max_len": 8, "dim": 16, "blocks": 1, "ffn_dim": 32, "dropout": 0.0, "max_epochs": 30, "patience_steps": 100000, "learning_rate": 0.01, "warmup_steps": 5, "batch_size": 32}"#,
    )
    .expect("writes the training settings");
    let (registry_port, node_port, admin_port) = (free_port(), free_port(), free_port());
    let mut demo = edgerec()
        .current_dir(dir.path())
        .args([
            "demo",
            "--dataset",
            "walks.csv",
            "--train-config",
            "tiny.json",
        ])
        .args(["--rate", "0", "--duration", "600", "--dir", "run"])
        .args(["--registry-listen", &format!("127.0.0.1:{registry_port}")])
        .args(["--node-listen", &format!("127.0.0.1:{node_port}")])
        .args(["--node-admin-listen", &format!("127.0.0.1:{admin_port}")])
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs the demo");
    let stderr = demo.stderr.take().expect("piped");
    let mut demo = Interrupted(Some(demo));
    let (lines, logged) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("demo: {line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    loop {
        let line = logged
            .recv_timeout(Duration::from_secs(600))
            .unwrap_or_else(|_| panic!("the demo stopped or stalled before serving:\n{log}"));
        log.push_str(&line);
        log.push('\n');
        if line.starts_with("stopping in ") {
            break;
        }
    }

    // While it serves: the web demo in headless Chromium.
    let screenshots = dir.path().join("screenshots");
    std::fs::create_dir_all(&screenshots).expect("creates");
    let figures = browser_checks(&format!("http://127.0.0.1:{node_port}"), &screenshots);
    assert_eq!(figures["events_sent"], 5, "{figures}");
    assert!(
        figures["rank_ms_per_click"]["median"].as_f64().is_some(),
        "{figures}"
    );
    for shot in ["web-demo-desktop.png", "web-demo-phone.png"] {
        let size = std::fs::metadata(screenshots.join(shot)).map_or(0, |m| m.len());
        assert!(size > 10_000, "{shot}: {size} bytes");
    }

    // The browser package under Node: from the registry and from the node, batching, privacy, refusals.
    let node_config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("run/node.json"))
            .expect("the demo wrote the node's settings"),
    )
    .expect("JSON");
    // A visitor token the demo's site would sign (the demo wrote its secret).
    let minted = succeeds(
        edgerec()
            .current_dir(dir.path())
            .args(["edge", "mint-token", "--secret-file", "run/visitor-secret"])
            .args(["--kid", "demo-site", "--user", "package-site-visitor"]),
        "minting a visitor token",
    );
    let site_token = String::from_utf8_lossy(&minted.stdout).to_string();
    let registry_url = format!("http://127.0.0.1:{registry_port}");
    let node_url = format!("http://127.0.0.1:{node_port}");
    support::nodes::browser_package_script(
        "package.mjs",
        &[
            registry_url.as_ref(),
            node_config["registry"]["token"]
                .as_str()
                .expect("token")
                .as_ref(),
            node_url.as_ref(),
            site_token.trim().as_ref(),
        ],
        "the browser package checks",
    );

    // SIGTERM (as `kill` or a service manager sends it) stops the demo and everything it started, as Ctrl-C does.
    let status = demo.stop();
    log.extend(logged.iter().map(|line| line + "\n"));
    assert!(status.success(), "the demo failed:\n{log}");

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
    for port in [registry_port, node_port, admin_port] {
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} still taken after the demo: {e}"));
    }
    // A port in use is refused up front, with the flag that changes it.
    let taken = TcpListener::bind("127.0.0.1:0").expect("binds");
    let busy = edgerec()
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
    let report = succeeds(
        edgerec().current_dir(dir.path()).args([
            "ab",
            "report",
            "--surface",
            "home",
            "--json",
            "--data",
            "run/node",
        ]),
        "the A/B report",
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).expect("JSON");
    // The replay's 60 requests, and the browser's: 5 clicks on the device compared on the node, the node toggle
    // (the private page asks the node nothing).
    let variant = &report["variants"][0];
    assert!(
        variant["hit_rate"]["trials"].as_u64() >= Some(60),
        "{report}"
    );
    assert!(variant["requests"].as_u64() > Some(60), "{report}");
}

/// The running demo, signalled (so it stops the registry and node it started) when the test is done with it or
/// fails.
struct Interrupted(Option<std::process::Child>);

impl Interrupted {
    fn signal(&mut self, signal: &str) -> std::io::Result<std::process::ExitStatus> {
        let Some(mut child) = self.0.take() else {
            return Err(std::io::Error::other("already stopped"));
        };
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()?;
        child.wait()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM").expect("terminates the demo")
    }
}

impl Drop for Interrupted {
    fn drop(&mut self) {
        // Also while a failed assertion unwinds: nothing here may panic.
        let _ = self.signal("-INT");
    }
}

/// Runs `web-demo/tests/e2e.mjs` against the page at `base` and returns the figures it prints.
fn browser_checks(base: &str, screenshots: &Path) -> serde_json::Value {
    let tools = std::env::var("EDGEREC_PLAYWRIGHT").unwrap_or_else(|_| {
        panic!("EDGEREC_PLAYWRIGHT is not set: run the tests through scripts/test.sh (scripts/setup.sh installs playwright-core and Chromium)")
    });
    let script = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("../web-demo/tests/e2e.mjs");
    let output = succeeds(
        Command::new("node")
            .arg(&script)
            .arg(base)
            .arg("--screenshots")
            .arg(screenshots)
            .env("EDGEREC_PLAYWRIGHT", tools),
        "the browser checks",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no figures from the browser checks ({e}):\n{stdout}"))
}
