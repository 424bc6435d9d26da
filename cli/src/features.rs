//! `edgerec features …` and `edgerec events …`: the feature store, the durable ingest and the event log, on the
//! embedded defaults or on DynamoDB + S3 (an `aws` section in `--config`).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use edgerec_core::{ItemId, UserId};
use edgerec_features::catalogue::{item_features, read_catalogue, write_items};
use edgerec_features::config::FeaturesConfig;
use edgerec_features::event::ClientEvent;
use edgerec_features::ingest::Ingest;
use edgerec_features::item::ItemMetadata;
use edgerec_features::store::FeatureStore;
use futures::StreamExt;

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Features configuration (JSON: `data_dir`, `ingest`, `features`, `aws`); `edgerec features print-config`
    /// shows every field.
    #[arg(long, env = "EDGEREC_FEATURES_CONFIG")]
    config: Option<PathBuf>,
    /// Where the embedded store, the write-ahead log and the local event log live (overrides the config's
    /// `data_dir`).
    #[arg(long)]
    data: Option<PathBuf>,
}

impl StoreArgs {
    fn load(&self) -> Result<FeaturesConfig> {
        let mut config =
            FeaturesConfig::load(self.config.as_deref()).map_err(anyhow::Error::msg)?;
        if let Some(data) = &self.data {
            config.data_dir = data.clone();
        }
        Ok(config)
    }
}

#[derive(Subcommand, Debug)]
pub enum FeaturesCommand {
    /// Load item metadata from a catalogue file and recompute popularity from the event log (idempotent: run it
    /// from cron or a scheduler, for example hourly).
    RefreshItems {
        #[command(flatten)]
        store: StoreArgs,
        /// movies.dat, u.item, a RecBole .item file or a CSV with an item,title,genres header.
        #[arg(long)]
        catalogue: PathBuf,
        /// Popularity of a catalogue item no event names yet, in fresh interactions.
        #[arg(long, default_value_t = 1.0)]
        prior: f64,
        /// Read the log from this many days back (events older than a few half-lives add next to nothing).
        #[arg(long, default_value_t = 60)]
        days: i64,
    },
    /// Print the features of users and items as JSON.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long = "user")]
        users: Vec<UserId>,
        #[arg(long = "item")]
        items: Vec<ItemId>,
    },
    /// Print the configuration in use, every field included.
    PrintConfig {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Ingest a file of events (JSON lines) durably, as the edge node's /v1/events does.
    Ingest {
        #[command(flatten)]
        store: StoreArgs,
        file: PathBuf,
        /// Events per batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Batches in flight at once (they share write-ahead log syncs).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Print the id of every event once it is acknowledged (durable).
        #[arg(long)]
        print_acked: bool,
    },
    /// Ship every acknowledged event to the event log (Parquet) and truncate the write-ahead log.
    Ship {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Salvage every readable record of a damaged write-ahead log (a node refuses to start on one, naming the
    /// segment and byte). Damaged segments are kept in `wal/damaged/`; the report lists what was dropped. Stop the
    /// node first.
    Repair {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Runs `$body` with `$store` bound to an `Arc` of the configured backend.
macro_rules! with_store {
    ($config:expr, |$store:ident| $body:expr) => {
        match &$config.aws {
            Some(aws) => {
                let $store = Arc::new($config.open_dynamodb(aws).await?);
                $body
            }
            None => {
                let $store = Arc::new($config.open_embedded()?);
                $body
            }
        }
    };
}

pub fn run_features(command: FeaturesCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match command {
            FeaturesCommand::RefreshItems {
                store,
                catalogue,
                prior,
                days,
            } => {
                let config = store.load()?;
                let items = read_catalogue(&catalogue)?;
                let source = catalogue.display().to_string();
                with_store!(config, |s| refresh_items(
                    &config, &*s, &items, &source, prior, days
                )
                .await)
            }
            FeaturesCommand::Show {
                store,
                users,
                items,
            } => {
                let config = store.load()?;
                with_store!(config, |s| show(s, &users, &items).await)
            }
            FeaturesCommand::PrintConfig { store } => {
                println!("{}", serde_json::to_string_pretty(&store.load()?)?);
                Ok(())
            }
        }
    })
}

pub fn run_events(command: EventsCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match command {
            EventsCommand::Ingest {
                store,
                file,
                batch,
                concurrency,
                print_acked,
            } => {
                let config = store.load()?;
                with_store!(config, |s| {
                    ingest_file(&config, s, &file, batch, concurrency, print_acked).await
                })
            }
            EventsCommand::Ship { store } => {
                let config = store.load()?;
                with_store!(config, |s| ship(&config, s).await)
            }
            EventsCommand::Repair { store } => repair(&store.load()?),
        }
    })
}

/// Writes `items`' metadata with popularity recomputed from the last `days` of the log (`prior` for items
/// without events) into `store`, and syncs it. `source` names the catalogue in the report line.
pub(crate) async fn refresh_items<S: FeatureStore>(
    config: &FeaturesConfig,
    store: &S,
    items: &BTreeMap<ItemId, ItemMetadata>,
    source: &str,
    prior: f64,
    days: i64,
) -> Result<()> {
    let log = config.event_log();
    let now = edgerec_features::now_ms();
    let slice = log
        .read(now - days * 24 * 3600 * 1000, now + 3600 * 1000)
        .await?;
    let (features, report) = item_features(items, &slice.events, &config.features, prior);
    write_items(store, &features).await?;
    store.sync().await?;
    eprintln!(
        "refreshed {} items from {} ({} with no logged events got the prior {prior}; {} logged items are not in the catalogue) and {} events in {} log files",
        report.items,
        source,
        report.cold_items,
        report.uncatalogued_items,
        report.events,
        slice.files.len()
    );
    Ok(())
}

async fn show<S: FeatureStore>(store: Arc<S>, users: &[UserId], items: &[ItemId]) -> Result<()> {
    let user_features = store.users(users).await?;
    let item_features = store.items(items).await?;
    let json = serde_json::json!({
        "users": users.iter().zip(user_features).collect::<std::collections::BTreeMap<_, _>>(),
        "items": items.iter().zip(item_features).collect::<std::collections::BTreeMap<_, _>>(),
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

async fn ingest_file<S: FeatureStore>(
    config: &FeaturesConfig,
    store: Arc<S>,
    file: &std::path::Path,
    batch: usize,
    concurrency: usize,
    print_acked: bool,
) -> Result<()> {
    if batch == 0 || concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let mut events = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: ClientEvent = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not an event", file.display(), n + 1))?;
        events.push(event);
    }
    let ingest = Ingest::open(&config.wal_dir(), config.ingest.clone(), store).await?;
    let started = std::time::Instant::now();
    let batches: Vec<Vec<ClientEvent>> =
        events.chunks(batch).map(<[ClientEvent]>::to_vec).collect();
    let mut acks = futures::stream::iter(batches)
        .map(|batch| {
            let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
            let ingest = &ingest;
            async move { (ingest.ingest(batch).await, ids) }
        })
        .buffered(concurrency);
    let (mut accepted, mut duplicates) = (0, 0);
    let stdout = std::io::stdout();
    while let Some((ack, ids)) = acks.next().await {
        let ack = ack?;
        accepted += ack.accepted;
        duplicates += ack.duplicates;
        if print_acked {
            let mut out = stdout.lock();
            for id in ids {
                writeln!(out, "{id}")?;
            }
            out.flush()?;
        }
    }
    drop(acks);
    let durable = started.elapsed();
    ingest.close().await?;
    eprintln!(
        "{accepted} events written, {duplicates} duplicates skipped; durable in {:.2} s, applied to the store in {:.2} s",
        durable.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn repair(config: &FeaturesConfig) -> Result<()> {
    let dir = config.wal_dir();
    if !dir.exists() {
        bail!("there is no write-ahead log at {}", dir.display());
    }
    let report = edgerec_features::wal::repair(&dir)?;
    for segment in &report.repaired {
        eprintln!(
            "{}: kept {} records, dropped {} damaged stretches ({} bytes, {} records missing); the damaged file is kept at {}{}",
            segment.segment.display(),
            segment.records_kept,
            segment.dropped.len(),
            segment.dropped.iter().map(|d| d.bytes).sum::<u64>(),
            segment.missing_records,
            segment.kept_copy.display(),
            if segment.new_incarnation {
                " (its header was unreadable: its records get a new incarnation and may be applied again)"
            } else {
                ""
            }
        );
    }
    eprintln!(
        "checked {} segments, repaired {}",
        report.segments_checked,
        report.repaired.len()
    );
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn ship<S: FeatureStore>(config: &FeaturesConfig, store: Arc<S>) -> Result<()> {
    let log = config.event_log();
    log.ensure_created().await?;
    let ingest = Ingest::open(&config.wal_dir(), config.ingest.clone(), store).await?;
    let report = ingest.ship(&log, true).await?;
    ingest.close().await?;
    eprintln!(
        "shipped {} segments: {} events and {} served requests in {} files",
        report.segments, report.events, report.served, report.files
    );
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum AbCommand {
    /// Per-variant click-through and hit rate of a surface from the event log, with 95% intervals and each
    /// variant's difference from the first one served (the control).
    Report {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        surface: String,
        /// How many days back to read.
        #[arg(long, default_value_t = 7.0)]
        days: f64,
        /// The variant the others are compared with (the first one served if no variant has this name).
        #[arg(long, default_value = "control")]
        control: String,
        /// A hit is the user's next interaction within this many minutes of the request.
        #[arg(long, default_value_t = 30)]
        window_minutes: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run_ab(command: AbCommand) -> Result<()> {
    let AbCommand::Report {
        store,
        surface,
        control,
        days,
        window_minutes,
        json,
    } = command;
    let config = store.load()?;
    let to = edgerec_features::now_ms() + 60_000;
    let from = to - (days * 86_400_000.0) as i64;
    let log = config.event_log();
    let slice = runtime()?
        .block_on(log.read(from, to))
        .context("reading the event log")?;
    let report =
        edgerec_features::ab_report::ab_report(&slice, &surface, &control, window_minutes * 60_000);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.variants.is_empty() {
        println!(
            "no served requests for surface `{surface}` in the last {days} days of {} ({} served requests on other surfaces)",
            log.describe(),
            slice.served.len()
        );
        return Ok(());
    }
    println!(
        "surface {surface}: {} served requests, {} events in the last {days} days (95% intervals)",
        slice.served.iter().filter(|s| s.surface == surface).count(),
        slice.events.len()
    );
    println!(
        "{:<12} {:<14} {:>8} {:>8}  {:<26} {:<26}",
        "variant", "versions", "requests", "degraded", "click-through", "hit rate"
    );
    let pct = |p: &edgerec_features::ab_report::Proportion| {
        format!(
            "{:.2}% [{:.2}, {:.2}]",
            100.0 * p.rate,
            100.0 * p.low,
            100.0 * p.high
        )
    };
    for v in &report.variants {
        println!(
            "{:<12} {:<14} {:>8} {:>8}  {:<26} {:<26}",
            v.variant,
            v.model_versions.join(","),
            v.requests,
            v.degraded,
            pct(&v.click_through),
            format!("{} of {}", pct(&v.hit_rate), v.hit_rate.trials)
        );
    }
    for v in report.variants.iter().skip(1) {
        for (what, d) in [
            ("click-through", &v.click_through_vs_control),
            ("hit rate", &v.hit_rate_vs_control),
        ] {
            if let Some(d) = d {
                println!(
                    "{} vs {}: {what} {:+.2} points [{:+.2}, {:+.2}]{}",
                    v.variant,
                    report.variants[0].variant,
                    100.0 * d.delta,
                    100.0 * d.low,
                    100.0 * d.high,
                    if d.significant() {
                        " (significant)"
                    } else {
                        " (not significant)"
                    }
                );
            }
        }
    }
    Ok(())
}
