//! The applier task: reads what the writer made durable back from the log on disk, a batch at a time, and applies
//! it to the store under the key of the log incarnation that wrote it, retrying while the store is unreachable.
//! Nothing is queued in memory between the writer and the store, so an outage of any length costs disk, which the
//! backlog limits bound, not memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;
use crate::store::{FeatureStore, Sequenced};
use crate::wal::{Incarnation, TailRecord, WalEntry, WalTail, log_key};

pub(super) async fn run<S: FeatureStore>(
    store: Arc<S>,
    shared: Arc<Shared>,
    batch: usize,
    mut next: u64,
) {
    let mut durable_rx = shared.durable.subscribe();
    let mut tail = Some(WalTail::new(&shared.dir));
    loop {
        let durable = *durable_rx.borrow_and_update();
        if next > durable {
            if shared.writer_done.load(Ordering::Acquire) || durable_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(mut reader) = tail.take() else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || {
            let read = reader.read(next, durable, batch.max(1));
            (reader, read)
        })
        .await;
        let Ok((reader, read)) = read else {
            eprintln!("the write-ahead log reader stopped; events are applied after a restart");
            return;
        };
        tail = Some(reader);
        let (records, after) = match read {
            Ok(read) => read,
            Err(e) => {
                note_failure(&shared, &format!("reading the write-ahead log: {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        apply(&*store, &shared, records).await;
        next = after;
        shared.applied.send_replace(after - 1);
    }
}

/// Applies `records`, a run of one incarnation at a time, retrying each until the store takes it.
async fn apply<S: FeatureStore>(store: &S, shared: &Shared, records: Vec<TailRecord>) {
    let mut runs: Vec<(Incarnation, Vec<Sequenced>)> = Vec::new();
    for TailRecord {
        incarnation,
        record,
    } in records
    {
        let WalEntry::Event(event) = record.entry else {
            continue;
        };
        let sequenced = Sequenced {
            seq: record.seq,
            event,
        };
        match runs.last_mut() {
            Some((last, events)) if *last == incarnation => events.push(sequenced),
            _ => runs.push((incarnation, vec![sequenced])),
        }
    }
    for (incarnation, events) in runs {
        let key = log_key(&shared.node, incarnation);
        let mut backoff = Duration::from_millis(50);
        while let Err(e) = store.apply(&key, &events).await {
            note_failure(shared, &e.to_string());
            eprintln!(
                "feature store update failed ({e}); retrying in {} ms (the events are safe in the write-ahead log)",
                backoff.as_millis()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

fn note_failure(shared: &Shared, error: &str) {
    let mut stats = shared.stats();
    stats.apply_failures += 1;
    stats.last_apply_error = Some(error.to_owned());
}
