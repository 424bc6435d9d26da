//! The conformance suite's tests: one test binary (one link of the crates they share), a module per area.

mod bad_models;
mod conformance;
mod model_builder;
mod trained_export;
