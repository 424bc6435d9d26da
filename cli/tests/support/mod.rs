//! What the `edgerec` command's test files share.

// Not every test file drives nodes.
#[allow(dead_code)]
pub mod nodes;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A port nothing listens on right now (the service started on it binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs `command` to the end and requires success; a failure shows what it printed.
pub fn succeeds(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Compiles the WASI ranker into the machine's module cache (`~/.cache/edgerec/modules`) once per test run, before
/// the first registry, node or demo starts. Each of them loads the ranker from that cache; on a machine where it is
/// empty each would compile it itself (about 35 s of one core here), several at once while other tests run, past
/// the time a test gives a service to answer.
pub fn warm_module_cache() {
    // The outcome is kept, so that every test after a failed warm-up says why rather than that a `Once` was
    // poisoned.
    static WARMED: OnceLock<Result<(), String>> = OnceLock::new();
    let warmed = WARMED.get_or_init(|| {
        let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/bundle");
        let output = Command::new(env!("CARGO_BIN_EXE_edgerec"))
            .args(["rank", "--runtime", "wasmtime", "--k", "1", "--bundle"])
            .arg(bundle)
            .output()
            .map_err(|e| format!("cannot run edgerec: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(why) = warmed {
        panic!(
            "ranking once in wasmtime, to compile the WASI ranker into the module cache, failed ({why})"
        );
    }
}
