//! The registry's integration tests: one test binary (one link of the crates they share), a module per area.

mod support;

mod http;
mod service;
