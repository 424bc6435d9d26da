//! EdgeRec's model registry: ML teams publish verified, signed, content-addressed model versions and roll them
//! out per surface through deployment plans with weighted variants; edge nodes follow the plans.
//!
//! [`service::Registry`] holds the rules over any [`store::Store`]; [`embedded::EmbeddedStore`] is the default
//! backend (a folder and a redb file). What crosses its API (records, the client, signature checks) is in
//! `edgerec-registry-api`, which edge nodes and tools use without this server.

pub mod aws;
pub mod embedded;
pub mod http;
pub mod server;
pub mod service;
pub mod signing;
pub mod store;

/// Writes one JSON log line (`at_ms`, `target`, then `fields`) to stderr. A log that cannot be written (stderr sent
/// to a file on a full disk) loses the line, not the answer: `eprintln!` would panic.
pub(crate) fn log_line(target: &str, mut fields: serde_json::Value) {
    if let Some(map) = fields.as_object_mut() {
        map.insert("at_ms".into(), edgerec_storage::now_ms().into());
        map.insert(
            "target".into(),
            format!("edgerec_registry::{target}").into(),
        );
    }
    let _ = std::io::Write::write_fmt(&mut std::io::stderr().lock(), format_args!("{fields}\n"));
}
