//! What the `edgerec` command's test files share.

use std::net::TcpListener;

/// A port nothing listens on right now (the service started on it binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
