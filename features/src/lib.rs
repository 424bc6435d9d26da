//! The data half of EdgeRec: what users did becomes features the next ranking reads, and a log the trainer learns
//! from.
//!
//! - [`event`]: the event and served-request records, and their validation.
//! - [`user`], [`item`]: the feature functions (no I/O): how events change a user's recent-item sequence and
//!   counters, and an item's decayed popularity. The store applies them per event; the trainer applies the same
//!   functions when it rebuilds histories from the log, so both compute the same thing.
//! - [`store`]: the [`FeatureStore`](store::FeatureStore) trait, with the [`embedded`] (redb, one file) and
//!   [`dynamodb`] backends.
//! - [`wal`], [`ingest`]: validation, deduplication, a write-ahead log synced in groups before anything is
//!   acknowledged, then the store; replay after a crash applies nothing twice.
//! - [`log`]: WAL segments shipped as time-partitioned Parquet files to a folder or S3, and read back by time range.
//! - [`catalogue`]: item metadata from catalogue files and popularity recomputed from the log.
//! - [`ab_report`]: each A/B variant's click-through and hit rate from the log, with confidence intervals.

pub mod ab_report;
pub mod catalogue;
pub mod config;
pub mod dedupe;
pub mod dynamodb;
pub mod embedded;
pub mod event;
pub mod ingest;
pub mod item;
pub mod log;
pub mod store;
pub mod user;
pub mod wal;

pub use edgerec_storage::now_ms;
