//! `edgerec bench features`: durable ingest rate, event-to-visible lag and batched feature reads, on the embedded
//! store (and DynamoDB when `--dynamodb` names one).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgerec_aws::AwsConfig;
use edgerec_core::{ItemId, UserId};
use edgerec_features::dynamodb::DynamoFeatureStore;
use edgerec_features::embedded::EmbeddedFeatureStore;
use edgerec_features::event::{ClientEvent, Event, EventKind};
use edgerec_features::ingest::{Ingest, IngestConfig};
use edgerec_features::store::{FeatureSettings, FeatureStore, Sequenced};
use futures::StreamExt;

use crate::bench::percentiles;

#[derive(clap::Args, Debug)]
pub struct FeaturesBenchArgs {
    /// Events ingested as fast as they are acknowledged.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Batches in flight (clients sending at once).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Events per second sent while measuring the event-to-visible lag.
    #[arg(long, default_value_t = 5000)]
    lag_rate: usize,
    /// Feature reads of 1 user + 100 items.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Where the write-ahead log and the store go (a temporary folder here by default: on the disk being
    /// measured, not in memory).
    #[arg(long)]
    data: Option<PathBuf>,
    /// A DynamoDB endpoint (for example DynamoDB Local) to measure reads on as well.
    #[arg(long)]
    dynamodb: Option<String>,
    #[arg(long, env = "EDGEREC_TEST_AWS_KEY", default_value = "edgerecbench")]
    aws_key: String,
    #[arg(long, env = "EDGEREC_TEST_AWS_SECRET", default_value = "edgerecbench")]
    aws_secret: String,
}

/// The `i`th event a benchmark client sends.
pub(crate) fn event(i: usize, time_ms: i64) -> ClientEvent {
    ClientEvent {
        id: format!("bench-{i}"),
        user: format!("user-{}", i % 5000),
        item: format!("item-{}", (i * 7919) % 3000),
        kind: EventKind::View,
        time_ms,
        value: None,
        request_id: None,
    }
}

pub fn run(args: FeaturesBenchArgs) -> Result<()> {
    if args.batch == 0 || args.concurrency == 0 || args.events < args.batch {
        bail!("--batch and --concurrency must be at least 1, and --events at least --batch");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: FeaturesBenchArgs) -> Result<()> {
    let scratch = match &args.data {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir_in("."),
    }
    .context("a scratch folder for the benchmark")?;
    let store = Arc::new(EmbeddedFeatureStore::open(
        &scratch.path().join("features.redb"),
        FeatureSettings::default(),
    )?);
    let ingest = Ingest::open(
        &scratch.path().join("wal"),
        IngestConfig::default(),
        store.clone(),
    )
    .await?;
    let now = edgerec_features::now_ms();

    // Throughput: batches sent as fast as they are acknowledged.
    let batches: Vec<Vec<ClientEvent>> = (0..args.events)
        .map(|i| event(i, now - 1000))
        .collect::<Vec<_>>()
        .chunks(args.batch)
        .map(<[ClientEvent]>::to_vec)
        .collect();
    let started = Instant::now();
    let mut acks = futures::stream::iter(batches)
        .map(|batch| ingest.ingest(batch))
        .buffer_unordered(args.concurrency);
    let mut last = 0;
    while let Some(ack) = acks.next().await {
        last = last.max(ack?.last_seq.unwrap_or(0));
    }
    drop(acks);
    let durable = started.elapsed();
    ingest.wait_applied(last).await?;
    let applied = started.elapsed();
    println!(
        "durable ingest: {} events in batches of {} from {} concurrent senders: {:.0} events/s acknowledged (WAL synced per group), store caught up after {:.2} s ({:.0} events/s applied)",
        args.events,
        args.batch,
        args.concurrency,
        args.events as f64 / durable.as_secs_f64(),
        applied.as_secs_f64(),
        args.events as f64 / applied.as_secs_f64()
    );

    // Lag: a steady stream; each batch timed from send to visible in the user's features.
    let per_batch = Duration::from_secs_f64(args.batch as f64 / args.lag_rate as f64);
    let batches = (args.lag_rate * 5 / args.batch).max(10);
    let ingest = Arc::new(ingest);
    let mut waits = Vec::new();
    let ticker_start = Instant::now();
    for b in 0..batches {
        tokio::time::sleep_until((ticker_start + per_batch * b as u32).into()).await;
        let batch: Vec<ClientEvent> = (0..args.batch)
            .map(|i| event(args.events + b * args.batch + i, edgerec_features::now_ms()))
            .collect();
        let ingest = ingest.clone();
        waits.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ack = ingest.ingest(batch).await?;
            ingest.wait_applied(ack.last_seq.unwrap_or(0)).await?;
            anyhow::Ok(sent.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut lags = Vec::new();
    for wait in waits {
        lags.push(wait.await??);
    }
    let (p50, p99, _) = percentiles(lags);
    println!(
        "event -> visible in user features at {} events/s: p50 {p50:.2} ms, p99 {p99:.2} ms",
        args.lag_rate
    );
    let Ok(ingest) = Arc::try_unwrap(ingest) else {
        bail!("the ingest is still shared after the lag measurement");
    };
    let records = ingest.stats().durable_seq;
    ingest.close().await?;

    // Restart: the whole log (nothing was shipped) is read once, streamed, before events are taken again; then
    // the store skips what it had applied.
    let started = Instant::now();
    let ingest = Ingest::open(
        &scratch.path().join("wal"),
        IngestConfig::default(),
        store.clone(),
    )
    .await?;
    let opened = started.elapsed();
    ingest.wait_applied(records).await?;
    println!(
        "restart with {records} records in the write-ahead log: taking events again after {:.2} s, replay checked by the store after {:.2} s",
        opened.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    ingest.close().await?;

    read_latency("embedded", store.as_ref(), args.reads).await?;
    if let Some(endpoint) = &args.dynamodb {
        let config = AwsConfig {
            region: "us-east-1".into(),
            dynamodb_endpoint: Some(endpoint.clone()),
            s3_endpoint: None,
            table: format!("edgerec-bench-{}", std::process::id()),
            bucket: String::new(),
            access_key_id: Some(args.aws_key.clone()),
            secret_access_key: Some(args.aws_secret.clone()),
        };
        let dynamo = DynamoFeatureStore::connect(&config, FeatureSettings::default());
        dynamo.ensure_created().await?;
        // The same user and items as the embedded read: one event per item.
        let events: Vec<Sequenced> = (0..100)
            .map(|i| Sequenced {
                seq: i as u64 + 1,
                event: Event::from_good_ids(
                    &format!("bench-{i}"),
                    "user-0",
                    &format!("item-{i}"),
                    EventKind::View,
                    now,
                ),
            })
            .collect();
        dynamo.apply("bench", &events).await?;
        read_latency(
            &format!("DynamoDB at {endpoint}"),
            &dynamo,
            args.reads.min(500),
        )
        .await?;
    }
    Ok(())
}

async fn read_latency<S: FeatureStore>(name: &str, store: &S, reads: usize) -> Result<()> {
    let users = UserId::parse_all(["user-0"])?;
    let items = ItemId::parse_all((0..100).map(|i| format!("item-{i}")))?;
    let mut micros = Vec::with_capacity(reads);
    for _ in 0..reads {
        let started = Instant::now();
        let (u, i) = (store.users(&users).await?, store.items(&items).await?);
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        if u[0].recent.is_empty() || i.iter().any(Option::is_none) {
            bail!("{name}: the benchmark's user or items are missing");
        }
    }
    let (p50, p99, _) = percentiles(micros);
    println!(
        "read 1 user + 100 items ({name}): p50 {p50:.0} µs, p99 {p99:.0} µs over {reads} reads"
    );
    Ok(())
}
