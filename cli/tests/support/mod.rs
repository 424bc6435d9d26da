//! What the `edgerec` command's test files share.

// Not every test file drives nodes.
#[allow(dead_code)]
pub mod nodes;

use std::net::TcpListener;
use std::process::{Command, Output};

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
