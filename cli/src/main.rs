//! `edgerec`: one command for every EdgeRec job. Subcommands grow as the system does.

mod bench;
mod bench_features;
mod bench_outage;
mod bench_registry;
mod data;
mod demo;
mod edge;
mod features;
mod paths;
mod processes;
mod registry;
mod train;
mod train_view;
mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use edgerec_core::{ItemId, RankRequest, Ranking, load_tract_ranker};

#[derive(Parser, Debug)]
#[command(
    name = "edgerec",
    version,
    about = "EdgeRec: recommendations ranked at the edge, in WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The whole system on this machine: train, publish, deploy, serve, replay MovieLens as live traffic.
    Demo(Box<demo::DemoArgs>),
    /// Rank items for one user with a model bundle.
    Rank(RankArgs),
    /// Public datasets and the leave-last-out split.
    Data {
        #[command(subcommand)]
        what: data::DataCommand,
    },
    /// Evaluate a reference ranker, or any bundle (--bundle), on a dataset's leave-last-out split.
    Eval(data::EvalArgs),
    /// Train the sequence model on a dataset and export it as a bundle.
    Train(Box<train::TrainArgs>),
    /// Run the model registry and manage its tokens.
    Registry {
        #[command(subcommand)]
        what: registry::RegistryCommand,
    },
    /// Publish, list, show and deploy models through a registry.
    Model {
        #[command(subcommand)]
        what: registry::ModelCommand,
    },
    /// The feature store: scheduled item refresh, inspection.
    Features {
        #[command(subcommand)]
        what: features::FeaturesCommand,
    },
    /// Durable event ingest and shipping to the event log.
    Events {
        #[command(subcommand)]
        what: features::EventsCommand,
    },
    /// A/B tests: what each variant achieved, from the event log.
    Ab {
        #[command(subcommand)]
        what: features::AbCommand,
    },
    /// The edge node: recommendations and events over HTTP, following the registry.
    Edge {
        #[command(subcommand)]
        what: edge::EdgeCommand,
    },
    /// CDN edge workers: a wasi:http component with a surface's deployment embedded.
    Worker {
        #[command(subcommand)]
        what: worker::WorkerCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Ranking latency of one user on every runtime: tract, wasmtime (SIMD and not), Node, ONNX Runtime.
    Rank(bench::BenchArgs),
    /// Publish and plan-read latency of a registry on the embedded backend.
    Registry(bench_registry::RegistryBenchArgs),
    /// Durable ingest rate, event-to-visible lag and batched feature reads (embedded, and DynamoDB if given).
    Features(bench_features::FeaturesBenchArgs),
    /// Resident memory and backlog of the ingest while the feature store is unreachable under steady ingest.
    Outage(bench_outage::OutageBenchArgs),
}

#[derive(clap::Args, Debug)]
struct RankArgs {
    /// Bundle folder holding manifest.json and model.onnx.
    #[arg(long)]
    bundle: PathBuf,
    /// The user's recent item ids, oldest first, comma-separated.
    #[arg(long, value_delimiter = ',')]
    recent: Vec<ItemId>,
    /// How many items to return.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Items never to return, comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<ItemId>,
    /// Context feature values, as name=value.
    #[arg(long = "context", value_parser = parse_context)]
    context: Vec<(String, f64)>,
    /// Which ranker runs the model.
    #[arg(long, value_enum, default_value_t = Runtime::Tract)]
    runtime: Runtime,
    /// The WASI ranker module, for --runtime wasmtime.
    #[arg(long, env = "EDGEREC_WASI_RANKER")]
    wasm: Option<PathBuf>,
    /// Print the ranking as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    /// tract, natively.
    Tract,
    /// The WASI ranker in wasmtime, as edge nodes run it.
    Wasmtime,
}

fn parse_context(text: &str) -> Result<(String, f64), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not name=value"))?;
    let value: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number"))?;
    Ok((name.to_string(), value))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(*args),
        Command::Rank(args) => rank(args),
        Command::Data { what } => data::run(what),
        Command::Eval(args) => data::eval(args),
        Command::Train(args) => train::run(*args),
        Command::Registry { what } => registry::run_registry(what),
        Command::Model { what } => registry::run_model(what),
        Command::Features { what } => features::run_features(what),
        Command::Events { what } => features::run_events(what),
        Command::Edge { what } => edge::run(what),
        Command::Worker { what } => worker::run(what),
        Command::Ab { what } => features::run_ab(what),
        Command::Bench {
            what: BenchCommand::Rank(args),
        } => bench::run(args),
        Command::Bench {
            what: BenchCommand::Registry(args),
        } => bench_registry::run(args),
        Command::Bench {
            what: BenchCommand::Features(args),
        } => bench_features::run(args),
        Command::Bench {
            what: BenchCommand::Outage(args),
        } => bench_outage::run(args),
    }
}

/// `manifest.json` and `model.onnx` of a bundle folder.
pub(crate) fn read_bundle(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok((read("manifest.json")?, read(edgerec_core::MODEL_FILE)?))
}

/// The WASI ranker from `wasm` in wasmtime, with the bundle loaded, as an edge node runs it. The engine comes
/// back too: it owns the compiled module.
pub(crate) fn wasi_ranker(
    wasm: &Path,
    manifest: &[u8],
    model: &[u8],
) -> Result<(
    edgerec_node::RankerEngine,
    edgerec_node::RankerInstance,
    edgerec_node::Loaded,
)> {
    if !wasm.is_file() {
        bail!(
            "no WASI ranker at {} (build it with scripts/build-wasm.sh)",
            wasm.display()
        );
    }
    let engine = edgerec_node::RankerEngine::load(wasm, &paths::module_cache_dir())?;
    let mut instance = engine.instantiate()?;
    let loaded = instance.load_bundle(manifest, model, edgerec_node::DEFAULT_LOAD_DEADLINE)?;
    Ok((engine, instance, loaded))
}

fn rank(args: RankArgs) -> Result<()> {
    let (manifest, model) = read_bundle(&args.bundle)?;
    let mut request = RankRequest::new(args.recent, args.k);
    request.exclude = args.exclude;
    request.context = args.context.into_iter().collect();
    let (ranking, version): (Ranking, String) = match args.runtime {
        Runtime::Tract => {
            let mut ranker = load_tract_ranker(&manifest, &model).context("loading the bundle")?;
            (ranker.rank(&request)?, ranker.model_version().to_string())
        }
        Runtime::Wasmtime => {
            let wasm = args
                .wasm
                .unwrap_or_else(|| paths::wasm_artifact("ranker-wasi.wasm"));
            let (_engine, mut instance, loaded) = wasi_ranker(&wasm, &manifest, &model)?;
            (
                instance.rank(&request, Duration::from_secs(5))?,
                loaded.version,
            )
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ranking)?);
        return Ok(());
    }
    println!(
        "model version {version}, top {} of {} requested:",
        ranking.items.len(),
        args.k
    );
    for (rank, item) in ranking.items.iter().enumerate() {
        println!("{:>4}. {:<24} {:>10.5}", rank + 1, item.item, item.score);
    }
    if !ranking.unknown_items.is_empty() {
        println!(
            "skipped recent items the model does not know: {}",
            ranking.unknown_items.join(", ")
        );
    }
    Ok(())
}
