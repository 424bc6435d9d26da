//! `edgerec bench registry`: publish and plan-read latency of a registry on the embedded backend, over HTTP on
//! 127.0.0.1, measured through the same client the CLI and edge nodes use.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use edgerec_core::{Manifest, ModelName, VariantName, Version};
use edgerec_registry::server::{RegistryConfig, RunningServer};
use edgerec_registry_api::client::{PlanRead, RegistryClient};
use edgerec_registry_api::records::PlanRequest;
use edgerec_registry_api::records::{Scope, Variant};

use crate::bench::percentiles;

#[derive(clap::Args, Debug)]
pub struct RegistryBenchArgs {
    /// Bundle folder to publish (default: the golden SASRec-shaped model, 1.2 MB).
    #[arg(long, default_value = "testdata/golden/bundle")]
    bundle: PathBuf,
    /// Versions to publish.
    #[arg(long, default_value_t = 20)]
    publishes: usize,
    /// Plan reads of each kind.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
}

pub fn run(args: RegistryBenchArgs) -> Result<()> {
    let root = tempfile::tempdir().context("temporary registry folder")?;
    let config = RegistryConfig {
        root: root.path().to_path_buf(),
        ..RegistryConfig::default()
    };
    let registry = config.open_embedded().map_err(|e| anyhow!("{e}"))?;
    let admin =
        crate::registry::block_on(registry.create_token("bench", vec![Scope::Admin], "bench"))??;
    let server = RunningServer::start(registry, "127.0.0.1:0")?;
    let client = RegistryClient::new(&server.url(), Some(&admin.secret));

    let manifest_path = args.bundle.join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path)?)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let staging = tempfile::tempdir()?;
    for name in manifest.files.keys() {
        std::fs::copy(args.bundle.join(name), staging.path().join(name))?;
    }
    let mut publish_ms = Vec::with_capacity(args.publishes);
    for i in 0..args.publishes {
        let mut versioned = manifest.clone();
        versioned.version = format!("bench.{i}");
        std::fs::write(
            staging.path().join("manifest.json"),
            serde_json::to_vec(&versioned)?,
        )?;
        let started = Instant::now();
        client.publish_bundle(staging.path())?;
        publish_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let plan = client.deploy(
        "home",
        &PlanRequest {
            variants: vec![Variant {
                name: VariantName::parse("control").expect("a valid name"),
                model: ModelName::parse(manifest.name.as_str())?,
                version: Version::parse("bench.0").expect("a valid version"),
                weight: 100,
            }],
            salt: None,
            reason: "benchmark".into(),
        },
        None,
    )?;
    let mut full_us = Vec::with_capacity(args.reads);
    let mut unchanged_us = Vec::with_capacity(args.reads);
    for _ in 0..args.reads {
        let started = Instant::now();
        client.plan("home")?;
        full_us.push(started.elapsed().as_secs_f64() * 1e6);
        let started = Instant::now();
        let read = client.plan_if_changed("home", &plan.etag())?;
        unchanged_us.push(started.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(
            read == PlanRead::Unchanged,
            "the plan changed during the benchmark"
        );
    }
    server.stop();

    let model_bytes: u64 = manifest.files.values().map(|f| f.size).sum();
    println!(
        "registry on 127.0.0.1, embedded backend; bundle {} ({} items, {} bytes of files)",
        manifest.name,
        manifest.items.len(),
        model_bytes
    );
    let (p50, p99, mean) = percentiles(publish_ms);
    println!(
        "publish (upload files + verify + tract load and probe + sign + store), {} versions: p50 {p50:.1} ms  p99 {p99:.1} ms  mean {mean:.1} ms",
        args.publishes
    );
    let (p50, p99, mean) = percentiles(full_us);
    println!(
        "plan read, 200 with body, {} reads: p50 {p50:.0} µs  p99 {p99:.0} µs  mean {mean:.0} µs",
        args.reads
    );
    let (p50, p99, mean) = percentiles(unchanged_us);
    println!(
        "plan read, 304 Not Modified (If-None-Match): p50 {p50:.0} µs  p99 {p99:.0} µs  mean {mean:.0} µs"
    );
    Ok(())
}
