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
