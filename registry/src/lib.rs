//! EdgeRec's model registry: ML teams publish verified, signed, content-addressed model versions and roll them
//! out per surface through deployment plans with weighted variants; edge nodes follow the plans.
//!
//! [`service::Registry`] holds the rules over any [`store::Store`]; [`embedded::EmbeddedStore`] is the default
//! backend (a folder and a redb file).

pub mod aws;
pub mod client;
pub mod embedded;
pub mod http;
pub mod records;
pub mod server;
pub mod service;
pub mod signing;
pub mod store;
