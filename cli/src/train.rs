//! `edgerec train`: trains the sequence model on a dataset's leave-last-out split and exports it as a bundle,
//! with a JSON report, the training curve and checkpoints beside it.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use edgerec_core::{RankingMetrics, load_tract_ranker};
use edgerec_trainer::adapt::{Choice, DataShape, adapted_config};
use edgerec_trainer::blend::CandidateResult;
use edgerec_trainer::export::{BundleInfo, write_bundle};
use edgerec_trainer::report::training_curve_svg;
use edgerec_trainer::runtime::Device;
use edgerec_trainer::train::{Progress, TrainConfig, train};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::data::DatasetArgs;
use crate::processes::Processes;
use crate::train_export::{
    ExportChoice, ReferenceFigures, export, print_comparison, print_test_table, reference_figures,
};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Where the run goes: bundle/ (manifest.json, model.onnx), report.json, training-curve.svg, checkpoints/.
    /// Default: runs/<dataset>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A JSON file of training settings (any subset of the fields `edgerec train --print-config` shows): it
    /// overrides the defaults chosen from the data, and flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective settings for this data as JSON (stdout) with the reason for each one the data decides
    /// (stderr), and exit.
    #[arg(long)]
    print_config: bool,
    /// Continue from the checkpoint in <out>/checkpoints.
    #[arg(long)]
    resume: bool,
    /// cpu, or cuda (the CUDA execution provider of the onnxruntime-gpu library).
    #[arg(long)]
    device: Option<Device>,
    /// The run's length in optimiser steps (the learning rate's cosine ends there).
    #[arg(long)]
    max_steps: Option<u64>,
    /// A cap in epochs (the schedule then ends at the cap).
    #[arg(long)]
    max_epochs: Option<usize>,
    /// Stop after this many optimiser steps without a better validation NDCG@10.
    #[arg(long)]
    patience_steps: Option<u64>,
    /// Validate at the first whole epoch past every this many optimiser steps.
    #[arg(long)]
    evaluate_every_steps: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    learning_rate: Option<f64>,
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long)]
    dim: Option<usize>,
    #[arg(long)]
    blocks: Option<usize>,
    #[arg(long)]
    dropout: Option<f32>,
    /// Softmax against this many sampled negatives instead of the whole catalogue (0: whole catalogue).
    #[arg(long)]
    sampled_negatives: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// ONNX Runtime threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// What to export: the best candidate on validation (the model, the model blended with transition and
    /// co-occurrence terms, or the terms alone), or the model alone.
    #[arg(long, value_enum, default_value_t = ExportChoice::Best)]
    export: ExportChoice,
    /// Publish the exported bundle to the registry (--registry / EDGEREC_REGISTRY, --token / EDGEREC_TOKEN).
    #[arg(long)]
    publish: bool,
    #[command(flatten)]
    registry: crate::registry::RegistryAddress,
    /// With the dataset `event-log`: the features configuration naming the log (default: embedded, under
    /// --log-data).
    #[arg(long)]
    log_config: Option<PathBuf>,
    /// With the dataset `event-log`: the features data folder whose `log/` is read.
    #[arg(long)]
    log_data: Option<PathBuf>,
    /// With the dataset `event-log`: read the last this many days of the log.
    #[arg(long, default_value_t = 30)]
    log_days: i64,
}

/// The split of a time range of the event log, with the range and the files read (and their digests) as lineage.
fn load_event_log(args: &TrainArgs) -> Result<crate::data::LoadedDataset> {
    let mut config = edgerec_features::config::FeaturesConfig::load(args.log_config.as_deref())
        .map_err(anyhow::Error::msg)?;
    if let Some(dir) = &args.log_data {
        config.data_dir = dir.clone();
    }
    let to_ms = edgerec_features::now_ms() + 3600 * 1000;
    let from_ms = to_ms - (args.log_days + 1) * 24 * 3600 * 1000;
    let slice = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(config.event_log().read(from_ms, to_ms))?;
    if slice.events.is_empty() {
        bail!(
            "the event log ({}) holds no events from the last {} days: ingest and ship some first (`edgerec events ingest`, `edgerec events ship`)",
            match &config.aws {
                Some(aws) => format!("s3://{}", aws.bucket),
                None => config.data_dir.join("log").display().to_string(),
            },
            args.log_days
        );
    }
    let data = edgerec_trainer::log_data::from_log(&slice);
    eprintln!(
        "event log: {} events and {} served requests in {} files; {} users, {} items; {} targets learnt from logged histories",
        slice.events.len(),
        slice.served.len(),
        slice.files.len(),
        data.split.users.len(),
        data.split.items.len(),
        data.logged_histories
    );
    Ok(crate::data::LoadedDataset {
        name: "event-log".into(),
        interactions_sha256: crate::data::interactions_digest(&data.interactions),
        split: data.split,
        source: Some(serde_json::json!({
            "from_ms": from_ms,
            "to_ms": to_ms,
            "events": slice.events.len(),
            "served_requests": slice.served.len(),
            "logged_histories": data.logged_histories,
            "files": slice.files,
        })),
        catalogue: Default::default(),
    })
}

impl TrainArgs {
    /// The defaults chosen from the data, overridden by the `--config` file, then by flags; with the reason for
    /// each setting the data decided (or the note that it was overridden).
    fn config(&self, shape: &DataShape) -> Result<(TrainConfig, Vec<Choice>)> {
        let (adapted, mut choices) = adapted_config(shape);
        let adapted = serde_json::to_value(&adapted)?;
        let mut value = adapted.clone();
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            if !file.is_object() {
                bail!(
                    "{} is not a training configuration (a JSON object)",
                    path.display()
                );
            }
            merge(&mut value, file);
        }
        let mut config: TrainConfig =
            serde_json::from_value(value).with_context(|| match &self.config {
                Some(path) => format!("{} is not a training configuration", path.display()),
                None => "the adapted defaults are not a training configuration".to_string(),
            })?;
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(value) = self.$field { config.$field = value; })*};
        }
        set!(
            device,
            max_steps,
            max_epochs,
            patience_steps,
            evaluate_every_steps,
            batch_size,
            learning_rate,
            max_len,
            dim,
            blocks,
            dropout,
            sampled_negatives,
            seed,
            threads
        );
        let effective = serde_json::to_value(&config)?;
        for choice in &mut choices {
            let pointer = format!("/{}", choice.setting.replace('.', "/"));
            // Compared as serialised, where a float32 setting reads the same on both sides.
            if let Some(set) = effective
                .pointer(&pointer)
                .filter(|v| Some(*v) != adapted.pointer(&pointer))
            {
                choice.reason = format!(
                    "set by --config or a flag (the data's rule gave {}: {})",
                    choice.value, choice.reason
                );
                choice.value = set.clone();
            }
        }
        Ok((config, choices))
    }

    /// The dataset, or the event log's time range, split.
    fn load(&self) -> Result<crate::data::LoadedDataset> {
        if self.dataset.dataset == "event-log" {
            load_event_log(self)
        } else {
            self.dataset.load()
        }
    }
}

/// `file`'s fields over `base`'s, objects merged field by field (a file may set one field of `optimiser`).
fn merge(base: &mut serde_json::Value, file: serde_json::Value) {
    match (base, file) {
        (serde_json::Value::Object(base), serde_json::Value::Object(file)) => {
            for (key, value) in file {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, file) => *base = file,
    }
}

/// The settings the data decided, one line each.
fn print_choices(choices: &[Choice]) {
    for choice in choices {
        eprintln!(
            "  {:<24} {:<8} {}",
            choice.setting,
            choice.value.to_string(),
            choice.reason
        );
    }
}

#[derive(Serialize)]
struct Report<'a> {
    dataset: &'a str,
    interactions_sha256: String,
    protocol: &'static str,
    config: &'a TrainConfig,
    /// The settings the data decided, and why.
    config_choices: &'a [Choice],
    epochs: &'a [edgerec_trainer::train::EpochRecord],
    best_epoch: usize,
    /// The sequence model's best validation figures.
    validation: RankingMetrics,
    /// The exported graph's test figures.
    test: RankingMetrics,
    /// What was exported, every candidate's validation figures, and the reference rankers on the same split.
    exported: &'a str,
    candidates: &'a [CandidateResult],
    baselines: &'a [ReferenceFigures],
    training_seconds: f64,
    code_version: String,
}

pub fn run(args: TrainArgs) -> Result<()> {
    if args.print_config {
        let loaded = args.load()?;
        let (config, choices) = args.config(&DataShape::of(&loaded.split))?;
        println!("{}", serde_json::to_string_pretty(&config)?);
        eprintln!("chosen from the data:");
        print_choices(&choices);
        return Ok(());
    }
    let processes = Processes::join()?;
    match run_as(&args, &processes) {
        Err(error) if processes.collective().size() > 1 => {
            // Each process reports before MPI is finalised: the first to exit makes the launcher stop the rest.
            processes.end_job_on(&error);
            drop(processes);
            std::process::exit(1)
        }
        result => result,
    }
}

/// `edgerec train` as one of `processes`: each trains its shard; rank 0 alone prints progress, evaluates on the
/// test targets and writes the run.
fn run_as(args: &TrainArgs, processes: &Processes) -> Result<()> {
    let collective = processes.collective();
    let leader = collective.rank() == 0;
    // A public dataset is fetched on first use: one process per machine fetches it while the others wait.
    let fetches = collective.local_rank() == 0;
    if !fetches {
        collective.barrier();
    }
    let loaded = args.load()?;
    if fetches {
        collective.barrier();
    }
    let (config, choices) = args.config(&DataShape::of(&loaded.split))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&loaded.name));
    let checkpoints = out.join("checkpoints");
    if leader && !args.resume && checkpoints.join("checkpoint.json").exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        );
    }
    if leader {
        eprintln!(
            "training on {} ({} users, up to {} recent items), {}, {}; writing to {}",
            config.device,
            loaded.split.users.len(),
            config.max_len,
            if config.dropout > 0.0 {
                "with dropout"
            } else {
                "without dropout"
            },
            match (collective.size(), config.threads) {
                (1, 0) => "on all cores".to_string(),
                (1, threads) => format!("on {threads} thread(s)"),
                (size, 0) => format!(
                    "as {size} processes sharing each batch of {} ({} per machine share its cores)",
                    config.batch_size,
                    collective.local_size()
                ),
                (size, threads) => format!(
                    "as {size} processes sharing each batch of {}, {threads} thread(s) each",
                    config.batch_size
                ),
            },
            out.display()
        );
        eprintln!("settings chosen from the data (`--print-config` shows them all):");
        print_choices(&choices);
    }

    let bar = if leader {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} batches  {msg}  ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let trained = train(
        &loaded.split,
        &config,
        Some(&checkpoints),
        args.resume,
        collective,
        &mut |event| {
            match event {
                Progress::EpochStarted { epoch, batches } => {
                    bar.reset();
                    bar.set_length(batches as u64);
                    bar.set_prefix(format!("epoch {epoch}"));
                }
                Progress::Step {
                    batch,
                    loss,
                    examples_per_second,
                } => {
                    bar.set_position(batch as u64);
                    bar.set_message(format!("loss {loss:.4}  {examples_per_second:.0} sequences/s"));
                }
                Progress::Evaluating => bar.set_message("evaluating on the validation targets"),
                Progress::EpochFinished(_) | Progress::Annealing { .. } if !leader => {}
                Progress::Annealing {
                    steps_done,
                    steps,
                    learning_rate,
                    final_learning_rate,
                } => bar.suspend(|| {
                    eprintln!(
                        "validation NDCG@10 has not gained {}% in {} steps: the learning rate falls from \
                         {learning_rate:.2e} to {final_learning_rate:.2e} over the next {steps} steps from step \
                         {steps_done}, then training ends",
                        config.min_improvement * 100.0,
                        config.patience_steps
                    )
                }),
                Progress::EpochFinished(record) => bar.suspend(|| eprintln!(
                    "epoch {:>3}  step {:>6}  loss {:.4}  validation HR@10 {:.4}  NDCG@10 {:.4}  lr {:.2e}  \
                     {:.1} s ({:.0} examples/s; {:.2} s preparing inputs{})",
                    record.epoch,
                    record.steps,
                    record.train_loss,
                    record.validation.hr_at_10,
                    record.validation.ndcg_at_10,
                    record.learning_rate,
                    record.seconds,
                    record.examples_per_second,
                    record.host_seconds,
                    match collective.size() {
                        1 => String::new(),
                        _ => format!(", {:.2} s summing gradients", record.exchange_seconds),
                    }
                )),
            }
            ControlFlow::Continue(())
        },
    )?;
    bar.finish_and_clear();
    if !leader {
        return Ok(());
    }

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "fitting the reference rankers (popularity, transitions, item-kNN, EASE) on the same split"
    );
    let references = reference_figures(&loaded.split);
    eprintln!("scoring the export candidates on the validation targets");
    let export = export(&loaded.split, &trained, args.export, threads)?;
    print_comparison(&export, &references);
    let (model, test) = (&export.model, export.test);
    let code_version = format!(
        "edgerec {} ({})",
        env!("CARGO_PKG_VERSION"),
        option_env!("EDGEREC_REVISION").unwrap_or("unknown revision")
    );
    let exported = export
        .selection
        .candidates
        .iter()
        .position(|c| c.blend == export.chosen)
        .expect("the export is a candidate");
    let mut metrics = BTreeMap::from([
        ("test_hr@10".to_string(), test.hr_at_10),
        ("test_ndcg@10".to_string(), test.ndcg_at_10),
        ("test_recall@20".to_string(), test.recall_at_20),
        ("test_mrr".to_string(), test.mrr),
        (
            "validation_ndcg@10".to_string(),
            export.selection.candidates[exported].validation.ndcg_at_10,
        ),
    ]);
    for candidate in &export.selection.candidates {
        let m = &candidate.validation;
        for (figure, value) in [("hr@10", m.hr_at_10), ("ndcg@10", m.ndcg_at_10)] {
            metrics.insert(
                format!("candidate {}: validation_{figure}", candidate.name),
                value,
            );
        }
    }
    for reference in &references {
        for (stage, figures) in [
            ("validation", &reference.validation),
            ("test", &reference.test),
        ] {
            if let Some(m) = figures {
                for (figure, value) in [("hr@10", m.hr_at_10), ("ndcg@10", m.ndcg_at_10)] {
                    metrics.insert(
                        format!("baseline {}: {stage}_{figure}", reference.name),
                        value,
                    );
                }
            }
        }
    }
    let mut lineage = BTreeMap::from([
        ("dataset".to_string(), serde_json::json!(loaded.name)),
        (
            "interactions_sha256".to_string(),
            serde_json::json!(loaded.interactions_sha256),
        ),
        (
            "split".to_string(),
            serde_json::json!(
                "leave-last-out by timestamp; trained on history before each validation target"
            ),
        ),
        ("config".to_string(), serde_json::to_value(&config)?),
        (
            "config_choices".to_string(),
            serde_json::to_value(&choices)?,
        ),
        (
            "best_epoch".to_string(),
            serde_json::json!(trained.best_epoch),
        ),
        (
            "export".to_string(),
            serde_json::json!({
                "exported": export.selection.candidates[exported].name,
                "blend": export.chosen,
                "chosen_by": "validation NDCG@10",
                "candidates": export.selection.candidates,
                "baselines": references,
            }),
        ),
        ("code_version".to_string(), serde_json::json!(code_version)),
    ]);
    if let Some(source) = &loaded.source {
        lineage.insert("event_log".to_string(), source.clone());
    }
    let bundle_dir = out.join("bundle");
    let manifest = write_bundle(
        &bundle_dir,
        BundleInfo {
            name: format!("{}-sasrec", loaded.name),
            version: format!("1.0.{}", trained.best_epoch),
            spec: trained.spec.clone(),
            items: loaded.split.items.clone(),
            metrics,
            lineage,
        },
        model,
    )?;
    // What the edge will do with it: load in the tract ranker, which verifies and probes the model.
    let manifest_json = std::fs::read(bundle_dir.join("manifest.json"))?;
    load_tract_ranker(&manifest_json, model)
        .context("the exported bundle does not load in tract")?;

    let report = Report {
        dataset: &loaded.name,
        interactions_sha256: loaded.interactions_sha256.clone(),
        protocol: "leave-last-out; full ranking over all items minus the user's seen items",
        config: &config,
        config_choices: &choices,
        epochs: &trained.history,
        best_epoch: trained.best_epoch,
        validation: trained.validation,
        test,
        exported: &export.selection.candidates[exported].name,
        candidates: &export.selection.candidates,
        baselines: &references,
        training_seconds: trained.seconds,
        code_version,
    };
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(
        out.join("training-curve.svg"),
        training_curve_svg(
            &format!("{} sequence model", loaded.name),
            &trained.history,
            trained.best_epoch,
        ),
    )?;
    print_test_table(&export, &references);
    println!(
        "best epoch {} of {} (step {}); exported {}: test HR@10 {:.4}  NDCG@10 {:.4}  Recall@20 {:.4}  MRR {:.4}  ({} users, {:.0} s in all)",
        trained.best_epoch,
        trained.history.last().map_or(0, |r| r.epoch),
        trained
            .history
            .iter()
            .find(|r| r.epoch == trained.best_epoch)
            .map_or(0, |r| r.steps),
        export.selection.candidates[exported].name,
        test.hr_at_10,
        test.ndcg_at_10,
        test.recall_at_20,
        test.mrr,
        test.users,
        started.elapsed().as_secs_f64()
    );
    println!(
        "bundle {} ({} items, model {} bytes); report.json and training-curve.svg in {}",
        bundle_dir.display(),
        manifest.items.len(),
        model.len(),
        out.display()
    );
    if args.publish {
        let (version, _) = args
            .registry
            .client()
            .publish_bundle(&bundle_dir)
            .with_context(|| format!("publishing to {}", args.registry.registry))?;
        println!(
            "published {} {} to {} (manifest sha256:{})",
            version.model, version.version, args.registry.registry, version.manifest_digest
        );
    }
    Ok(())
}
