//! `edgerec bench rank`: how long ranking one user takes on every runtime, measured the same way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use edgerec_core::{Bundle, ItemId, MODEL_FILE, RankRequest, Ranker, Ranking, load_tract_ranker};
use edgerec_trainer::rng::SplitMix;
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Bundle folder holding manifest.json and model.onnx (default: the golden SASRec-shaped model).
    #[arg(long, default_value = "testdata/golden/bundle")]
    bundle: PathBuf,
    /// Timed rankings per runtime and scenario (after 10% as many untimed warm-up rankings).
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Items returned per ranking.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Number of candidates in the candidate scenario.
    #[arg(long, default_value_t = 1000)]
    candidates: usize,
    /// Runtimes to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = BenchRuntime::all())]
    runtimes: Vec<BenchRuntime>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchRuntime {
    /// tract, native.
    Tract,
    /// ONNX Runtime, native, CPU execution provider, one thread.
    Ort,
    /// The WASI ranker (wasm SIMD) in wasmtime.
    Wasmtime,
    /// The WASI ranker built without wasm SIMD, in wasmtime.
    WasmtimeNosimd,
    /// The browser build (wasm-bindgen, SIMD) under Node.
    Node,
}

impl BenchRuntime {
    fn all() -> Vec<Self> {
        vec![
            Self::Tract,
            Self::Ort,
            Self::Wasmtime,
            Self::WasmtimeNosimd,
            Self::Node,
        ]
    }

    fn label(self) -> &'static str {
        match self {
            Self::Tract => "tract native",
            Self::Ort => "ONNX Runtime native (1 thread)",
            Self::Wasmtime => "wasmtime, WASI ranker, SIMD",
            Self::WasmtimeNosimd => "wasmtime, WASI ranker, no SIMD",
            Self::Node => "Node, browser build, SIMD",
        }
    }
}

/// Latency figures of one runtime in one scenario, in microseconds.
#[derive(Debug, Clone, Serialize)]
struct Figures {
    runtime: BenchRuntime,
    scenario: &'static str,
    iterations: usize,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

/// p50, p99 and mean of `samples` (not empty).
pub(crate) fn percentiles(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (
        at(0.5),
        at(0.99),
        samples.iter().sum::<f64>() / samples.len() as f64,
    )
}

fn figures(runtime: BenchRuntime, scenario: &'static str, micros: Vec<f64>) -> Figures {
    let iterations = micros.len();
    let (p50_us, p99_us, mean_us) = percentiles(micros);
    Figures {
        runtime,
        scenario,
        iterations,
        p50_us,
        p99_us,
        mean_us,
    }
}

/// Sixteen users with full histories (`max_len` items), and for the candidate scenario the same users with a
/// distinct candidate list each.
fn requests(
    ids: &[ItemId],
    max_len: usize,
    k: u32,
    candidates: usize,
) -> (Vec<RankRequest>, Vec<RankRequest>) {
    let mut rng = SplitMix::new(20_261_126);
    let full: Vec<RankRequest> = (0..16)
        .map(|_| {
            RankRequest::new(
                (0..max_len)
                    .map(|_| ids[rng.below(ids.len())].clone())
                    .collect(),
                k,
            )
        })
        .collect();
    let with_candidates = full
        .iter()
        .map(|request| {
            let mut order: Vec<usize> = (0..ids.len()).collect();
            for i in 0..candidates.min(ids.len()) {
                let j = i + rng.below(ids.len() - i);
                order.swap(i, j);
            }
            let mut request = request.clone();
            request.candidates = Some(
                order[..candidates.min(ids.len())]
                    .iter()
                    .map(|&i| ids[i].clone())
                    .collect(),
            );
            request
        })
        .collect();
    (full, with_candidates)
}

fn time_runs(
    iterations: usize,
    requests: &[RankRequest],
    mut rank: impl FnMut(&RankRequest) -> Result<Ranking>,
) -> Result<Vec<f64>> {
    for request in requests.iter().cycle().take(iterations / 10 + 1) {
        rank(request)?;
    }
    let mut micros = Vec::with_capacity(iterations);
    for request in requests.iter().cycle().take(iterations) {
        let start = Instant::now();
        let ranking = rank(request)?;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(ranking);
    }
    Ok(micros)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let (manifest, model) = crate::read_bundle(&args.bundle)?;
    let bundle =
        Bundle::verify(&manifest, &[(MODEL_FILE, &model)]).context("verifying the bundle")?;
    let ids = bundle.vocab.ids().to_vec();
    let max_len = bundle.manifest.feature_spec.sequence.max_len;
    let (full, with_candidates) = requests(&ids, max_len, args.k, args.candidates);
    let full_label: &'static str = "full catalogue";
    let candidate_label: &'static str = "candidates";
    println!(
        "ranking one user: model {} {} ({} items, history {max_len}), k = {}, {} timed rankings each",
        bundle.manifest.name,
        bundle.manifest.version,
        ids.len(),
        args.k,
        args.iterations
    );
    let mut results = Vec::new();
    for &runtime in &args.runtimes {
        eprintln!("measuring {} ...", runtime.label());
        let (a, b) = match runtime {
            BenchRuntime::Tract => {
                let mut ranker = load_tract_ranker(&manifest, &model)?;
                let mut rank = |r: &RankRequest| Ok(ranker.rank(r)?);
                (
                    time_runs(args.iterations, &full, &mut rank)?,
                    time_runs(args.iterations, &with_candidates, &mut rank)?,
                )
            }
            BenchRuntime::Ort => {
                edgerec_onnxruntime::init()?;
                let scorer =
                    edgerec_onnxruntime::OrtScorer::load(&bundle.manifest.feature_spec, &model, 1)?;
                let mut ranker = Ranker::new(&bundle, scorer);
                let mut rank = |r: &RankRequest| Ok(ranker.rank(r)?);
                (
                    time_runs(args.iterations, &full, &mut rank)?,
                    time_runs(args.iterations, &with_candidates, &mut rank)?,
                )
            }
            BenchRuntime::Wasmtime | BenchRuntime::WasmtimeNosimd => {
                let name = if runtime == BenchRuntime::Wasmtime {
                    "ranker-wasi.wasm"
                } else {
                    "ranker-wasi-nosimd.wasm"
                };
                let (_engine, mut instance, _) =
                    crate::wasi_ranker(&crate::paths::wasm_artifact(name), &manifest, &model)?;
                let mut rank = |r: &RankRequest| Ok(instance.rank(r, Duration::from_secs(1))?);
                (
                    time_runs(args.iterations, &full, &mut rank)?,
                    time_runs(args.iterations, &with_candidates, &mut rank)?,
                )
            }
            BenchRuntime::Node => node_runs(&args, &full, &with_candidates)?,
        };
        results.push(figures(runtime, full_label, a));
        results.push(figures(runtime, candidate_label, b));
    }

    println!(
        "\n{:<34} {:<16} {:>9} {:>9} {:>9}",
        "runtime", "scenario", "p50 µs", "p99 µs", "mean µs"
    );
    for f in &results {
        println!(
            "{:<34} {:<16} {:>9.1} {:>9.1} {:>9.1}",
            f.runtime.label(),
            f.scenario,
            f.p50_us,
            f.p99_us,
            f.mean_us
        );
    }
    let p50 = |runtime, scenario| {
        results
            .iter()
            .find(|f| f.runtime == runtime && f.scenario == scenario)
            .map(|f| f.p50_us)
    };
    for scenario in [full_label, candidate_label] {
        if let (Some(wasm), Some(ort)) = (
            p50(BenchRuntime::Wasmtime, scenario),
            p50(BenchRuntime::Ort, scenario),
        ) {
            println!(
                "wasmtime SIMD / ONNX Runtime p50, {scenario}: {:.2}x",
                wasm / ort
            );
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct NodeTimings {
    full: Vec<f64>,
    candidates: Vec<f64>,
}

fn node_runs(
    args: &BenchArgs,
    full: &[RankRequest],
    with_candidates: &[RankRequest],
) -> Result<(Vec<f64>, Vec<f64>)> {
    let package = crate::paths::wasm_artifact("browser/edgerec_ranker.js");
    if !package.is_file() {
        bail!(
            "{} is missing: run scripts/build-wasm.sh",
            package.display()
        );
    }
    let requests = std::env::temp_dir().join(format!("edgerec-bench-{}.json", std::process::id()));
    std::fs::write(
        &requests,
        serde_json::to_vec(&serde_json::json!({"full": full, "candidates": with_candidates}))?,
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/node/bench.mjs");
    let output = Command::new("node")
        .arg(&script)
        .arg(&package)
        .arg(&args.bundle)
        .arg(&requests)
        .arg(args.iterations.to_string())
        .output()
        .context("running node")?;
    let _ = std::fs::remove_file(&requests);
    if !output.status.success() {
        bail!(
            "the Node benchmark failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let timings: NodeTimings =
        serde_json::from_slice(&output.stdout).context("reading the Node figures")?;
    Ok((timings.full, timings.candidates))
}
