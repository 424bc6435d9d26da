//! `edgerec bench outage`: a node's resident memory while its feature store is unreachable under steady ingest.
//!
//! The store is DynamoDB at an address where nothing listens (every update is refused, as when the endpoint is
//! down), so the ingest acknowledges events into its write-ahead log, retries the store with back-off and keeps
//! a backlog on disk. The benchmark samples the process's resident memory and the backlog as the outage goes on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgerec_aws::AwsConfig;
use edgerec_features::dynamodb::DynamoFeatureStore;
use edgerec_features::event::ClientEvent;
use edgerec_features::ingest::{Ingest, IngestConfig, IngestError};
use edgerec_features::store::FeatureSettings;

use crate::bench_features::event;

#[derive(clap::Args, Debug)]
pub struct OutageBenchArgs {
    /// How long the outage lasts.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Events per second sent throughout, in batches of `--batch`.
    #[arg(long, default_value_t = 2000)]
    rate: usize,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    every: u64,
    /// Where the write-ahead log goes (a temporary folder here by default: on the disk being measured).
    #[arg(long)]
    data: Option<PathBuf>,
}

/// This process's resident memory in KiB (Linux).
fn resident_kib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// An address on this machine where nothing listens: connections to it are refused.
fn closed_endpoint() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(format!("http://127.0.0.1:{port}"))
}

pub fn run(args: OutageBenchArgs) -> Result<()> {
    if args.batch == 0 || args.rate < args.batch || args.every == 0 || args.minutes <= 0.0 {
        bail!("--batch, --every and --minutes must be positive and --rate at least --batch");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

struct Sample {
    seconds: f64,
    acknowledged: usize,
    refused_batches: usize,
    backlog_records: u64,
    wal_mib: f64,
    resident_mib: f64,
}

async fn bench(args: OutageBenchArgs) -> Result<()> {
    let scratch = match &args.data {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir_in("."),
    }
    .context("a scratch folder for the benchmark")?;
    let endpoint = closed_endpoint()?;
    let config = AwsConfig {
        region: "us-east-1".into(),
        dynamodb_endpoint: Some(endpoint.clone()),
        s3_endpoint: None,
        table: "edgerec-outage".into(),
        bucket: String::new(),
        access_key_id: Some("edgerecbench".into()),
        secret_access_key: Some("edgerecbench".into()),
    };
    let store = std::sync::Arc::new(DynamoFeatureStore::connect(
        &config,
        FeatureSettings::default(),
    ));
    let ingest = Ingest::open(&scratch.path().join("wal"), IngestConfig::default(), store)
        .await
        .context("opening the ingest")?;
    println!(
        "store outage: DynamoDB at {endpoint} (nothing listens), {} events/s in batches of {} for {} min; \
         resident memory of this process",
        args.rate, args.batch, args.minutes
    );
    println!(
        "| time | acknowledged | refused batches | backlog (records) | log on disk | resident memory |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let per_batch = Duration::from_secs_f64(args.batch as f64 / args.rate as f64);
    let length = Duration::from_secs_f64(args.minutes * 60.0);
    let every = Duration::from_secs(args.every);
    let started = Instant::now();
    let (mut sent, mut acknowledged, mut refused) = (0usize, 0usize, 0usize);
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    while started.elapsed() < length {
        if started.elapsed() >= next_sample {
            let stats = ingest.stats();
            let sample = Sample {
                seconds: started.elapsed().as_secs_f64(),
                acknowledged,
                refused_batches: refused,
                backlog_records: stats.backlog_records,
                wal_mib: stats.wal_bytes as f64 / f64::from(1 << 20),
                resident_mib: resident_kib()? as f64 / 1024.0,
            };
            println!(
                "| {:.0} s | {} | {} | {} | {:.1} MiB | {:.1} MiB |",
                sample.seconds,
                sample.acknowledged,
                sample.refused_batches,
                sample.backlog_records,
                sample.wal_mib,
                sample.resident_mib
            );
            samples.push(sample);
            next_sample += every;
        }
        tokio::time::sleep_until((started + per_batch * (sent / args.batch) as u32).into()).await;
        let time_ms = edgerec_features::now_ms();
        let batch: Vec<ClientEvent> = (sent..sent + args.batch)
            .map(|i| event(i, time_ms))
            .collect();
        sent += args.batch;
        match ingest.ingest(batch).await {
            Ok(ack) => acknowledged += ack.accepted,
            Err(IngestError::Backlog { .. }) => refused += 1,
            Err(e) => {
                return Err(e).context("an event refused for another reason than the backlog");
            }
        }
    }
    let stats = ingest.stats();
    if stats.applied_seq > 0 {
        bail!("the store applied events: it was not unreachable");
    }
    summarise(&samples, acknowledged, stats.apply_failures)?;
    // The backlog stays in the log: closing would wait for a store that never comes back.
    drop(ingest);
    Ok(())
}

/// Resident memory from the first minute on (start-up and the first allocations are over by then).
fn summarise(samples: &[Sample], acknowledged: usize, failures: u64) -> Result<()> {
    let settled = samples
        .iter()
        .find(|s| s.seconds >= 60.0)
        .or_else(|| samples.last())
        .context("no sample taken")?;
    let last = samples.last().context("no sample taken")?;
    let peak = samples.iter().map(|s| s.resident_mib).fold(0.0, f64::max);
    let events = last.acknowledged.saturating_sub(settled.acknowledged);
    println!(
        "{acknowledged} events acknowledged, {failures} failed store updates retried; resident memory {:.1} MiB at \
         {:.0} s, {:.1} MiB at the end (peak {peak:.1} MiB): {:+.1} MiB over the last {events} events",
        settled.resident_mib,
        settled.seconds,
        last.resident_mib,
        last.resident_mib - settled.resident_mib
    );
    Ok(())
}
