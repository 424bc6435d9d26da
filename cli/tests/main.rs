//! The edgerec command's end-to-end tests: one test binary (one link of the crates they share), a module per area.

mod support;

mod demo;
mod edge_nodes;
mod edge_security;
mod features_cli;
mod ingest_crash;
mod key_rotation;
mod mpi;
mod registry_link;
mod train_choice;
mod worker;
