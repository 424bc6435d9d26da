//! The feature store's and ingest's integration tests: one test binary (one link of the crates they share), a module per area.

mod support;

mod ingest;
mod store;
