//! `edgerec train`: trains the sequence model on a data set's leave-last-out split and exports it as a bundle,
//! with a JSON report, the training curve and checkpoints beside it (the trainer's pipeline), then publishes it
//! when asked.

use std::path::PathBuf;

use anyhow::{Context, Result};
use edgerec_trainer::adapt::{Choice, DataShape};
use edgerec_trainer::pipeline::{
    self, EVENT_LOG, ExportChoice, Job, LoadedDataset, Settings, Source,
};
use edgerec_trainer::runtime::Device;
use edgerec_trainer::train::TrainConfig;
use serde::Serialize;

use crate::data::DatasetArgs;
use crate::processes::Processes;
use crate::train_view::{ProgressView, print_comparison, print_test_table};

/// What `edgerec train` exports.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExportArg {
    /// Whichever candidate ranks the validation targets best: the model, the model blended with the transition
    /// and co-occurrence terms, or the terms alone.
    #[default]
    Best,
    /// The sequence model alone.
    Model,
}

/// Training settings over the defaults chosen from the data (and over a `--config` file); named as the fields
/// of the configuration they set.
#[derive(clap::Args, Debug, Default, Serialize)]
pub struct SettingFlags {
    /// cpu, or cuda (the CUDA execution provider of the onnxruntime-gpu library).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    /// The run's length in optimiser steps (the learning rate's cosine ends there).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// A cap in epochs (the schedule then ends at the cap).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<usize>,
    /// Stop after this many optimiser steps without a better validation NDCG@10.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patience_steps: Option<u64>,
    /// Validate at the first whole epoch past every this many optimiser steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluate_every_steps: Option<u64>,
    /// Rows in a batch while the learning rate follows the main schedule.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Rows in a batch during the anneal (0: the same as --batch-size).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anneal_batch_size: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f32>,
    /// Softmax against this many sampled negatives instead of the whole catalogue (0: whole catalogue).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled_negatives: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// ONNX Runtime threads of each replica (default: the cores shared out between the replicas).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Replicas of the training loop in this process, sharing each batch (default: one per core on CPU, while
    /// each keeps at least 32 rows of a batch; 1 under mpirun or on CUDA).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
}

impl SettingFlags {
    /// The flags given, as configuration fields.
    pub fn overrides(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self).expect("flags serialise") {
            serde_json::Value::Object(fields) => fields,
            _ => unreachable!("a struct serialises as an object"),
        }
    }
}

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
    #[command(flatten)]
    settings: SettingFlags,
    /// What to export: the best candidate on validation (the model, the model blended with transition and
    /// co-occurrence terms, or the terms alone), or the model alone.
    #[arg(long, value_enum, default_value_t = ExportArg::Best)]
    export: ExportArg,
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

impl TrainArgs {
    /// The data set, or the event log's time range.
    fn source(&self) -> Source {
        if self.dataset.dataset == EVENT_LOG {
            Source::EventLog {
                config: self.log_config.clone(),
                data_dir: self.log_data.clone(),
                days: self.log_days,
            }
        } else {
            self.dataset.source()
        }
    }

    /// The defaults chosen from the data, overridden by the `--config` file, then by flags; with the reason for
    /// each setting the data decided (or the note that it was overridden).
    fn config(&self, data: &LoadedDataset) -> Result<(TrainConfig, Vec<Choice>)> {
        let settings = Settings {
            file: self.config.clone(),
            overrides: self.settings.overrides(),
        };
        Ok(settings.resolve(&DataShape::of(&data.split))?)
    }
}

/// The settings the data decided, one line each.
pub fn print_choices(choices: &[Choice]) {
    for choice in choices {
        eprintln!(
            "  {:<24} {:<8} {}",
            choice.setting,
            choice.value.to_string(),
            choice.reason
        );
    }
}

/// This build, as the lineage names it.
pub fn code_version() -> String {
    format!(
        "edgerec {} ({})",
        env!("CARGO_PKG_VERSION"),
        option_env!("EDGEREC_REVISION").unwrap_or("unknown revision")
    )
}

pub fn run(args: TrainArgs) -> Result<()> {
    if args.print_config {
        let loaded = args.source().load()?;
        eprintln!("{}", loaded.summary());
        let (config, choices) = args.config(&loaded)?;
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
    let loaded = args.source().load_in(collective)?;
    if leader {
        eprintln!("{}", loaded.summary());
    }
    let (config, choices) = args.config(&loaded)?;
    let job = Job {
        data: &loaded,
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&loaded.name)),
        resume: args.resume,
        export: match args.export {
            ExportArg::Best => ExportChoice::Best,
            ExportArg::Model => ExportChoice::Model,
        },
        code_version: code_version(),
        config,
        choices,
    };
    if leader {
        print_start(&job, collective.size(), collective.local_size());
    }
    let Some(outcome) = run_job(&job, collective)? else {
        return Ok(());
    };
    if args.publish {
        let (version, _) = args
            .registry
            .client()
            .publish_bundle(&outcome.bundle_dir)
            .with_context(|| format!("publishing to {}", args.registry.registry))?;
        println!(
            "published {} {} to {} (manifest sha256:{})",
            version.model, version.version, args.registry.registry, version.manifest_digest
        );
    }
    Ok(())
}

/// Runs `job` as one of the processes of `collective` with its progress shown on rank 0, and prints the outcome
/// there.
pub fn run_job(
    job: &Job,
    collective: &dyn edgerec_trainer::collective::Collective,
) -> Result<Option<pipeline::Outcome>> {
    let leader = collective.rank() == 0;
    let view = ProgressView::new(
        leader,
        collective.size(),
        job.config.min_improvement,
        job.config.patience_steps,
    );
    let outcome = pipeline::run(job, collective, &mut |event| view.show(event));
    view.finish();
    if let Ok(Some(outcome)) = &outcome {
        print_outcome(outcome);
    }
    Ok(outcome?)
}

/// What the run will do and where, and the settings the data decided.
pub fn print_start(job: &Job, processes: usize, per_machine: usize) {
    let config = &job.config;
    eprintln!(
        "training on {} ({} users, up to {} recent items), {}, {}; writing to {}",
        config.device,
        job.data.split.users.len(),
        config.max_len,
        if config.dropout > 0.0 {
            "with dropout"
        } else {
            "without dropout"
        },
        match (processes, config.replicas_in(processes), config.threads) {
            (1, 1, 0) => "on all cores".to_string(),
            (1, 1, threads) => format!("on {threads} thread(s)"),
            (1, replicas, 0) => format!(
                "as {replicas} replicas sharing each batch of {}, the cores shared out between them",
                config.batch_size
            ),
            (1, replicas, threads) => format!(
                "as {replicas} replicas sharing each batch of {}, {threads} thread(s) each",
                config.batch_size
            ),
            (size, _, 0) => format!(
                "as {size} processes sharing each batch of {} ({per_machine} per machine share its cores)",
                config.batch_size,
            ),
            (size, _, threads) => format!(
                "as {size} processes sharing each batch of {}, {threads} thread(s) each",
                config.batch_size
            ),
        },
        job.out.display()
    );
    eprintln!("settings chosen from the data (`--print-config` shows them all):");
    print_choices(&job.choices);
}

/// The comparison on validation, the test table and where the run went.
fn print_outcome(outcome: &pipeline::Outcome) {
    let (export, trained) = (&outcome.export, &outcome.trained);
    print_comparison(export, &outcome.references);
    print_test_table(export, &outcome.references);
    let test = export.test;
    println!(
        "best epoch {} of {} (step {}); exported {}: test HR@10 {:.4}  NDCG@10 {:.4}  Recall@20 {:.4}  MRR {:.4}  ({} users, {:.0} s in all)",
        trained.best_epoch,
        trained.history.last().map_or(0, |r| r.epoch),
        trained
            .history
            .iter()
            .find(|r| r.epoch == trained.best_epoch)
            .map_or(0, |r| r.steps),
        export.chosen_candidate().name,
        test.hr_at_10,
        test.ndcg_at_10,
        test.recall_at_20,
        test.mrr,
        test.users,
        outcome.seconds
    );
    println!(
        "bundle {} ({} items, model {} bytes); report.json and training-curve.svg in {}",
        outcome.bundle_dir.display(),
        outcome.manifest.items.len(),
        export.model.len(),
        outcome
            .report_path
            .parent()
            .map_or_else(Default::default, |p| p.display().to_string())
    );
}
