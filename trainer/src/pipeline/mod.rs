//! A training run from data to a verified bundle, as one library call: the command line (`edgerec train`, one
//! process or each rank of an MPI job) and the demo both run it. Loading ([`Source`]), settings
//! ([`Settings`]), training, the reference rankers, the export choice and its test figures, the bundle with its
//! metrics and lineage, the check that tract loads it, `report.json` and the training curve.
//!
//! Publishing is not here: the trainer never knows the registry; the command line publishes the bundle it
//! wrote.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use edgerec_core::{Manifest, load_tract_ranker};

use crate::adapt::Choice;
use crate::collective::Collective;
use crate::export::{BundleInfo, ExportError, write_bundle};
use crate::model::BuildError;
use crate::report::training_curve_svg;
use crate::train::{Progress, TrainConfig, TrainError, Trained, train};

mod candidates;
mod record;
mod settings;
mod source;

pub use candidates::{Export, ExportChoice, ReferenceFigures, export, reference_figures};
pub use record::{PROTOCOL, Report, bundle_metrics, lineage};
pub use settings::{Settings, SettingsError};
pub use source::{
    EVENT_LOG, LoadedDataset, Source, SourceError, interactions_digest, known_dataset,
};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{out} already holds a run: pass --resume to continue it, or choose another --out")]
    AlreadyRun { out: PathBuf },
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("the exported bundle does not load in tract: {0}")]
    Tract(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PipelineError {
    /// Whether every process of a job meets this error at the same point, so each can report it and end (see
    /// [`TrainError::reached_by_every_process`]).
    pub fn reached_by_every_process(&self) -> bool {
        match self {
            Self::Train(e) => e.reached_by_every_process(),
            _ => false,
        }
    }
}

/// One run: its data, settings, where it goes and what it exports.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub data: &'a LoadedDataset,
    pub config: TrainConfig,
    /// The settings the data decided and why, for the report and the lineage.
    pub choices: Vec<Choice>,
    /// Where the run goes: `bundle/`, `report.json`, `training-curve.svg`, `checkpoints/`.
    pub out: PathBuf,
    /// Continue from the checkpoint in `out/checkpoints`.
    pub resume: bool,
    pub export: ExportChoice,
    /// The code that trained, written into the lineage and the report.
    pub code_version: String,
}

/// What a run reports while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Training(Progress),
    FittingReferences,
    ScoringCandidates,
}

/// A finished run, as rank 0 sees it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub trained: Trained,
    pub export: Export,
    pub references: Vec<ReferenceFigures>,
    pub bundle_dir: PathBuf,
    pub manifest: Manifest,
    pub report_path: PathBuf,
    /// Seconds from the start of training to the report written.
    pub seconds: f64,
}

impl Job<'_> {
    pub fn checkpoints(&self) -> PathBuf {
        self.out.join("checkpoints")
    }
}

/// Runs `job` as one of the processes of `collective`: each trains its shard; rank 0 alone evaluates on the
/// test targets, writes the bundle and the report and returns the outcome; the other ranks return `None`.
pub fn run(
    job: &Job,
    collective: &dyn Collective,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<Outcome>, PipelineError> {
    let leader = collective.rank() == 0;
    let checkpoints = job.checkpoints();
    if leader && !job.resume && checkpoints.join("checkpoint.json").exists() {
        return Err(PipelineError::AlreadyRun {
            out: job.out.clone(),
        });
    }
    let started = Instant::now();
    let trained = train(
        &job.data.split,
        &job.config,
        Some(&checkpoints),
        job.resume,
        collective,
        &mut |progress| {
            on_event(Event::Training(progress));
            ControlFlow::Continue(())
        },
    )?;
    if !leader {
        return Ok(None);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    on_event(Event::FittingReferences);
    let references = reference_figures(&job.data.split);
    on_event(Event::ScoringCandidates);
    let export = export(&job.data.split, &trained, job.export, threads)?;
    let (bundle_dir, manifest) = write_verified_bundle(job, &trained, &export, &references)?;
    let report_path = write_report(job, &trained, &export, &references)?;
    Ok(Some(Outcome {
        trained,
        export,
        references,
        bundle_dir,
        manifest,
        report_path,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// Writes the bundle to `out/bundle` and loads it in tract as the edge will, which verifies and probes it.
fn write_verified_bundle(
    job: &Job,
    trained: &Trained,
    export: &Export,
    references: &[ReferenceFigures],
) -> Result<(PathBuf, Manifest), PipelineError> {
    let bundle_dir = job.out.join("bundle");
    let info = BundleInfo {
        name: format!("{}-sasrec", job.data.name),
        version: format!("1.0.{}", trained.best_epoch),
        spec: trained.spec.clone(),
        items: job
            .data
            .split
            .items
            .iter()
            .map(ToString::to_string)
            .collect(),
        metrics: bundle_metrics(export, references),
        lineage: lineage(
            job.data,
            &job.config,
            &job.choices,
            trained,
            export,
            references,
            &job.code_version,
        ),
    };
    let manifest = write_bundle(&bundle_dir, info, &export.model)?;
    let manifest_path = bundle_dir.join("manifest.json");
    let manifest_json = std::fs::read(&manifest_path).map_err(|source| PipelineError::Write {
        path: manifest_path,
        source,
    })?;
    load_tract_ranker(&manifest_json, &export.model)
        .map_err(|e| PipelineError::Tract(e.to_string()))?;
    Ok((bundle_dir, manifest))
}

/// Writes `report.json` and `training-curve.svg` into `out`; returns the report's path.
fn write_report(
    job: &Job,
    trained: &Trained,
    export: &Export,
    references: &[ReferenceFigures],
) -> Result<PathBuf, PipelineError> {
    let report = Report {
        dataset: &job.data.name,
        interactions_sha256: &job.data.interactions_sha256,
        protocol: PROTOCOL,
        config: &job.config,
        config_choices: &job.choices,
        epochs: &trained.history,
        best_epoch: trained.best_epoch,
        validation: trained.validation,
        test: export.test,
        exported: &export.chosen_candidate().name,
        candidates: &export.selection.candidates,
        baselines: references,
        training_seconds: trained.seconds,
        code_version: &job.code_version,
    };
    let report_path = job.out.join("report.json");
    write(
        &report_path,
        &serde_json::to_vec_pretty(&report).expect("a report serialises"),
    )?;
    let curve = training_curve_svg(
        &format!("{} sequence model", job.data.name),
        &trained.history,
        trained.best_epoch,
    );
    write(&job.out.join("training-curve.svg"), curve.as_bytes())?;
    Ok(report_path)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    std::fs::write(path, bytes).map_err(|source| PipelineError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::SingleProcess;
    use crate::train::fixtures::{planted_pattern, small_config};

    fn planted_data() -> LoadedDataset {
        LoadedDataset {
            name: "planted".into(),
            interactions_sha256: "0".repeat(64),
            interactions: 0,
            split: planted_pattern(120),
            source: None,
            catalogue: Default::default(),
            seconds: 0.0,
        }
    }

    /// A short run of the planted data into `dir/run`.
    fn planted_job<'a>(
        data: &'a LoadedDataset,
        dir: &Path,
        epochs: usize,
        export: ExportChoice,
    ) -> Job<'a> {
        Job {
            data,
            config: TrainConfig {
                max_epochs: epochs,
                ..small_config()
            },
            choices: vec![],
            out: dir.join("run"),
            resume: false,
            export,
            code_version: "edgerec test".into(),
        }
    }

    #[test]
    fn a_run_writes_a_bundle_tract_loads_and_a_report_that_agrees_with_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = planted_data();
        let job = planted_job(&data, dir.path(), 3, ExportChoice::Best);
        let mut events = Vec::new();
        let outcome = run(&job, &SingleProcess, &mut |e| events.push(e))
            .expect("runs")
            .expect("one process is rank 0");

        let stages: Vec<&Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::Training(_)))
            .collect();
        assert_eq!(
            stages,
            [&Event::FittingReferences, &Event::ScoringCandidates]
        );
        assert!(matches!(
            events[0],
            Event::Training(Progress::EpochStarted { .. })
        ));

        let manifest = std::fs::read(outcome.bundle_dir.join("manifest.json")).expect("manifest");
        let model =
            std::fs::read(outcome.bundle_dir.join(edgerec_core::MODEL_FILE)).expect("model");
        assert_eq!(model, outcome.export.model);
        let bundle = edgerec_core::Bundle::verify(&manifest, &[(edgerec_core::MODEL_FILE, &model)])
            .expect("the bundle verifies");
        assert_eq!(bundle.manifest, outcome.manifest);
        assert_eq!(bundle.manifest.name, "planted-sasrec");
        assert_eq!(bundle.manifest.lineage["code_version"], "edgerec test");
        assert_eq!(
            bundle.manifest.lineage["export"]["exported"],
            outcome.export.chosen_candidate().name.as_str()
        );

        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&outcome.report_path).expect("report"))
                .expect("JSON");
        assert_eq!(
            report["test"]["hr@10"],
            bundle.manifest.metrics["test_hr@10"]
        );
        assert_eq!(report["dataset"], "planted");
        assert_eq!(
            report["epochs"].as_array().map(Vec::len),
            Some(outcome.trained.history.len())
        );
        assert_eq!(report["baselines"].as_array().map(Vec::len), Some(4));
        assert!(job.out.join("training-curve.svg").is_file());
    }

    #[test]
    fn a_second_run_into_the_same_folder_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = planted_data();
        let job = planted_job(&data, dir.path(), 1, ExportChoice::Model);
        run(&job, &SingleProcess, &mut |_| {}).expect("the first run");
        let report = std::fs::read(job.out.join("report.json")).expect("report");
        let mut events = 0;
        let error = run(&job, &SingleProcess, &mut |_| events += 1).expect_err("refused");
        assert!(matches!(error, PipelineError::AlreadyRun { .. }), "{error}");
        assert!(error.to_string().contains("pass --resume"), "{error}");
        assert_eq!(events, 0);
        assert_eq!(
            std::fs::read(job.out.join("report.json")).expect("report"),
            report
        );
    }
}
