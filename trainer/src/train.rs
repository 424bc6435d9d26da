//! The training loop: examples from the split (encoded by the feature specification, exactly as serving encodes a
//! history), seeded shuffling and dropout, the step graph on ONNX Runtime, validation NDCG@10 on the exported
//! graph after every epoch, early stopping, checkpoints and resume.
//!
//! Everything random is derived from the seed and the epoch or step number, so a run resumed from a checkpoint
//! continues exactly as the uninterrupted run would have.
//!
//! Data parallelism ([`Collective`] with more than one process): every process builds the same batches and
//! trains on its shard of rows of each, with the loss weights of the whole batch; the split step sums the
//! gradients across processes, so every process applies the update of the whole batch. Dropout masks are drawn
//! by batch row, so the shards see the rows of the one-process masks. Rank 0 reads and writes checkpoints and
//! sends its state to the others at the start and after every epoch; evaluation is shared out by user.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use edgerec_core::{
    FEATURE_SPEC_VERSION, FeatureSpec, MetricsAccumulator, OutputSpec, Padding, RankingMetrics,
    Scorer, SequenceSpec, TensorData,
};
use edgerec_onnxruntime::OrtScorer;
use serde::{Deserialize, Serialize};

use crate::collective::Collective;
use crate::model::{Architecture, BuildError, Parameters, inference_graph};
use crate::rng::SplitMix;
use crate::runtime::{Device, RuntimeError};
use crate::schedule::Schedule;
use crate::split::{Fnv1a, LoggedHistory, Split, Stage};
use crate::step::{AdamW, StepGraph, StepProgram, step_graph};
use crate::stepper::{Batch, ModelState, StepRunner};

/// Everything that decides a training run. Read from a JSON config file and overridden by flags; every field has a
/// default that works without per-dataset tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Recent items the model sees (the feature specification's `max_len`).
    pub max_len: usize,
    pub dim: usize,
    pub blocks: usize,
    pub ffn_dim: usize,
    pub dropout: f32,
    /// 0: softmax over the whole catalogue. Otherwise the softmax of each target runs against this many
    /// negatives drawn uniformly per batch (for catalogues too large to score whole at every step).
    pub sampled_negatives: usize,
    pub batch_size: usize,
    /// The run's length in optimiser steps: the learning rate's cosine ends here. Early stopping usually ends the
    /// run sooner. Counted in steps, not epochs, so that a small data set (a dozen steps an epoch) gets as many
    /// updates as a large one.
    pub max_steps: u64,
    /// A cap in epochs besides `max_steps` (the schedule then ends at the cap).
    pub max_epochs: usize,
    /// Validation runs after the first whole epoch at or past each multiple of this many steps.
    pub evaluate_every_steps: u64,
    /// Steps without a better validation NDCG@10 before stopping.
    pub patience_steps: u64,
    pub learning_rate: f64,
    /// Linear warm-up over this many steps, then the learning rate decays with a cosine to
    /// `final_learning_rate_fraction` of its peak at the end of the schedule.
    pub warmup_steps: u64,
    pub final_learning_rate_fraction: f64,
    pub optimiser: AdamW,
    pub seed: u64,
    /// ONNX Runtime intra-op threads (0: all cores, shared out between the processes of a job on one machine).
    pub threads: usize,
    pub device: Device,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_len: 50,
            dim: 64,
            blocks: 2,
            ffn_dim: 128,
            dropout: 0.2,
            sampled_negatives: 0,
            batch_size: 128,
            max_steps: 35_000,
            max_epochs: 10_000,
            evaluate_every_steps: 150,
            patience_steps: 1_000,
            learning_rate: 1e-3,
            warmup_steps: 100,
            final_learning_rate_fraction: 0.1,
            optimiser: AdamW::default(),
            seed: 42,
            threads: 0,
            device: Device::Cpu,
        }
    }
}

impl TrainConfig {
    pub fn architecture(&self) -> Architecture {
        Architecture {
            dim: self.dim,
            blocks: self.blocks,
            ffn_dim: self.ffn_dim,
        }
    }

    fn check(&self) -> Result<(), TrainError> {
        let bad = |message: String| Err(TrainError::Config(message));
        if self.max_len == 0
            || self.batch_size == 0
            || self.max_epochs == 0
            || self.max_steps == 0
            || self.evaluate_every_steps == 0
        {
            return bad(
                "max_len, batch_size, max_steps, max_epochs and evaluate_every_steps must be at least 1".into(),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), not {}", self.dropout));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!(
                "learning_rate must be positive, not {}",
                self.learning_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.final_learning_rate_fraction) {
            return bad("final_learning_rate_fraction must be in [0, 1]".into());
        }
        Ok(())
    }

    /// Threads for one of `local_processes` processes on this machine.
    fn threads(&self, local_processes: usize) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / local_processes.max(1)).max(1)
        }
    }

    /// The learning rate at optimiser step `step` (1-based) of a run of `total` steps.
    pub fn learning_rate_at(&self, step: u64, total: u64) -> f64 {
        if step <= self.warmup_steps {
            return self.learning_rate * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.final_learning_rate_fraction;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.learning_rate * (floor + (1.0 - floor) * cosine)
    }
}

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(
        "no training examples: every user has fewer than 2 interactions before the validation target"
    )]
    NoExamples,
    #[error("the loss became {loss} at epoch {epoch}, step {step}: lower the learning rate")]
    Diverged { epoch: usize, step: u64, loss: f32 },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "the processes of this job were not started alike: rank(s) {ranks} differ from rank 0 ({here}); start \
         every rank with the same command, data and edgerec build"
    )]
    Disagreement { ranks: String, here: String },
    #[error("--resume needs a checkpoint folder")]
    ResumeWithoutCheckpoints,
    #[error("exchanging training state between processes: {0}")]
    Exchange(String),
}

impl TrainError {
    /// Whether every process of a job meets this error at the same point (they agree on settings and data
    /// first, and the loss is the whole batch's), so each can report it and end; any other error leaves the
    /// other processes waiting for this one, and the job must be ended for them.
    pub fn reached_by_every_process(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::Disagreement { .. } | Self::NoExamples | Self::Diverged { .. }
        )
    }
}

/// The feature specification of a sequence model over `split`'s items.
pub fn sequence_spec(split: &Split, max_len: usize) -> FeatureSpec {
    FeatureSpec {
        version: FEATURE_SPEC_VERSION,
        sequence: SequenceSpec {
            input: "item_ids".into(),
            max_len,
            padding: Padding::Left,
        },
        item_features: vec![],
        context: vec![],
        output: OutputSpec {
            name: "scores".into(),
            num_items: split.items.len() + 1,
        },
    }
}

/// A training window: up to `max_len` consecutive items of one user and the item after each, or one logged
/// history and the item that followed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Sequence { user: u32, start: u32, end: u32 },
    Logged(u32),
}

/// Cuts each user's training items (everything before the validation target) into windows of `max_len`
/// predictions, newest first, so every training interaction is a target exactly once per epoch: in a sequence
/// window, or, when serving logged its history, in a window of that history alone.
fn windows(split: &Split, max_len: usize) -> Vec<Window> {
    let mut windows = Vec::new();
    for (user, sequence) in split.users.iter().enumerate() {
        let items = Stage::Validation.training_items(sequence);
        // Histories end at index `end` (exclusive); the target of the last one is `items[end]`.
        let mut end = items.len().saturating_sub(1);
        while end > 0 {
            let start = end.saturating_sub(max_len);
            windows.push(Window::Sequence {
                user: user as u32,
                start: start as u32,
                end: end as u32,
            });
            end = start;
        }
    }
    for (i, logged) in split.logged.iter().enumerate() {
        if is_logged_training_target(split, logged) {
            windows.push(Window::Logged(i as u32));
        }
    }
    windows
}

/// The (user, position) of every target learnt from a logged history, which sequence windows leave out.
fn logged_targets(split: &Split) -> HashSet<(u32, u32)> {
    split
        .logged
        .iter()
        .filter(|l| is_logged_training_target(split, l))
        .map(|l| (l.user, l.position))
        .collect()
}

/// Whether a logged history's target is a training interaction (not a held-out one) with a history to learn from.
fn is_logged_training_target(split: &Split, logged: &LoggedHistory) -> bool {
    let Some(sequence) = split.users.get(logged.user as usize) else {
        return false;
    };
    let training = Stage::Validation.training_items(sequence).len();
    logged.position > 0 && (logged.position as usize) < training && !logged.history.is_empty()
}

/// The results at a validation: the epochs trained since the previous one and the validation metrics after them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: u64,
    pub train_loss: f64,
    pub learning_rate: f64,
    pub validation: RankingMetrics,
    pub seconds: f64,
    pub examples_per_second: f64,
    /// Seconds this epoch's steps spent on the host preparing their inputs: building the batches, drawing the
    /// dropout masks, filling the input tensors and (on CUDA) copying them to the device.
    #[serde(default)]
    pub host_seconds: f64,
    /// Seconds this epoch's steps spent summing gradients across processes (0 for one process).
    #[serde(default)]
    pub exchange_seconds: f64,
}

/// What the CLI shows while training.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    EpochStarted {
        epoch: usize,
        batches: usize,
    },
    Step {
        batch: usize,
        loss: f32,
        examples_per_second: f64,
    },
    Evaluating,
    EpochFinished(EpochRecord),
}

/// The state a checkpoint restores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckpointMeta {
    config: TrainConfig,
    spec: FeatureSpec,
    epochs_done: usize,
    steps_done: u64,
    history: Vec<EpochRecord>,
    best_epoch: Option<usize>,
    /// Tensor names and lengths, in the order the state and best-parameter files hold them.
    layout: Vec<(String, usize)>,
}

const CHECKPOINT_META: &str = "checkpoint.json";
/// The state and best parameters after epoch `epoch`: each save writes new files, so a save that never
/// finishes leaves the files the metadata names untouched.
fn state_file(epoch: usize) -> String {
    format!("state-{epoch}.bin")
}
fn best_file(epoch: usize) -> String {
    format!("best-{epoch}.bin")
}

/// A finished run: the parameters of the best validation epoch and the history.
#[derive(Debug, Clone)]
pub struct Trained {
    pub spec: FeatureSpec,
    pub architecture: Architecture,
    pub parameters: Parameters,
    pub history: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub validation: RankingMetrics,
    pub seconds: f64,
}

/// Trains on `split` with `config`. With `checkpoints`, state is saved there after every epoch, and `resume`
/// continues from what is saved. `progress` sees every step and epoch; answering `Break` to an
/// [`Progress::EpochFinished`] ends the run there (after its checkpoint), as an interruption would.
///
/// With several `processes`, each calls this with the same arguments and gets the same result; only rank 0 uses
/// `checkpoints`, and rank 0's answer to `EpochFinished` decides for all.
pub fn train(
    split: &Split,
    config: &TrainConfig,
    checkpoints: Option<&Path>,
    resume: bool,
    processes: &dyn Collective,
    progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<Trained, TrainError> {
    let (rank, size) = (processes.rank(), processes.size());
    // Agreement first: after it, every process meets the same configuration errors.
    if size > 1 {
        agree(processes, split, config, resume)?;
    }
    config.check()?;
    if config.batch_size < size {
        return Err(TrainError::Config(format!(
            "batch_size {} is smaller than the {size} processes sharing each batch",
            config.batch_size
        )));
    }
    let threads = config.threads(processes.local_size());
    let started = Instant::now();
    let spec = sequence_spec(split, config.max_len);
    let arch = config.architecture();
    let windows = windows(split, config.max_len);
    let logged_targets = logged_targets(split);
    if windows.is_empty() {
        return Err(TrainError::NoExamples);
    }
    let schedule = Schedule::new(config, windows.len());
    let batches_per_epoch = schedule.batches_per_epoch;
    // Rows of each batch per process (the whole batch for one); the last shard is padded when the batch does not
    // divide evenly.
    let shard_rows = config.batch_size.div_ceil(size);
    let graph = step_graph(
        &spec,
        &arch,
        shard_rows,
        config.dropout > 0.0,
        config.sampled_negatives,
        &config.optimiser,
        size > 1,
    )?;
    if size > 1 {
        agree_on_graph(processes, &graph)?;
    }
    // One MPI message carries the state (parameters and two moments, and the best parameters): its count is an
    // `int`.
    let state_values = 4 * (graph.gradient_len() - 1);
    if size > 1 && state_values > i32::MAX as usize {
        return Err(TrainError::Config(format!(
            "{state_values} values of state are too many for one MPI message (at most {}): a smaller model or \
             item table",
            i32::MAX
        )));
    }

    let mut state = initial_state(&spec, &arch, config.seed)?;
    let mut meta = CheckpointMeta {
        config: config.clone(),
        spec: spec.clone(),
        epochs_done: 0,
        steps_done: 0,
        history: vec![],
        best_epoch: None,
        layout: vec![],
    };
    let mut best = state.parameters.clone();
    if resume && rank == 0 {
        let dir = checkpoints.ok_or(TrainError::ResumeWithoutCheckpoints)?;
        (meta, state, best) = load_checkpoint(dir, config, &spec)?;
    }
    if size > 1 {
        share_from_rank_0(processes, &mut meta, &mut state, &mut best)?;
    }

    let inputs: Vec<String> = std::iter::once(spec.sequence.input.clone())
        .chain(spec.item_features.iter().map(|f| f.input.clone()))
        .collect();
    let mut runner = StepRunner::new(
        &graph,
        &inputs,
        config.max_len,
        config.dim,
        &state,
        config.device,
        match config.device {
            Device::Cuda => {
                crate::runtime::gpu_of(processes.local_rank(), crate::runtime::visible_gpus())
            }
            Device::Cpu => 0,
        },
        threads,
    )?;
    let mut step = meta.steps_done;
    // What the epochs since the last validation add up to.
    let (mut round_started, mut round_epochs, mut training_time) =
        (Instant::now(), 0usize, std::time::Duration::ZERO);
    let (mut loss_sum, mut learning_rate) = (0.0, 0.0);
    let mut batching = std::time::Duration::ZERO;
    while meta.epochs_done < schedule.last_epoch && !patience_exhausted(&meta, config) {
        let epoch = meta.epochs_done + 1;
        let epoch_started = Instant::now();
        let _ = progress(Progress::EpochStarted {
            epoch,
            batches: batches_per_epoch,
        });
        let order = shuffled(windows.len(), config.seed, epoch);
        for (index, chunk) in order.chunks(config.batch_size).enumerate() {
            step += 1;
            let batch_started = Instant::now();
            let whole = make_batch(
                split,
                &spec,
                &windows,
                &logged_targets,
                chunk,
                config.batch_size,
            )?;
            let first_row = rank * shard_rows;
            let mut batch = if size == 1 {
                whole
            } else {
                whole.rows(first_row, shard_rows, config.max_len)
            };
            batch.negatives = negatives(config, spec.output.num_items, step);
            batching += batch_started.elapsed();
            learning_rate = config.learning_rate_at(step, schedule.total_steps);
            let step_size = config.optimiser.step_size(learning_rate, step);
            let decay = (learning_rate * f64::from(config.optimiser.weight_decay)) as f32;
            let mask_offset = first_row * config.max_len * config.dim;
            let (loss, _norm) = runner.step(
                &batch,
                |site, mask| fill_dropout_mask(config, site, step, mask_offset, mask),
                step_size,
                decay,
                processes,
            )?;
            if !loss.is_finite() {
                return Err(TrainError::Diverged { epoch, step, loss });
            }
            loss_sum += f64::from(loss);
            let examples = ((index + 1) * config.batch_size) as f64;
            let _ = progress(Progress::Step {
                batch: index + 1,
                loss,
                examples_per_second: examples / epoch_started.elapsed().as_secs_f64(),
            });
        }
        training_time += epoch_started.elapsed();
        round_epochs += 1;
        meta.epochs_done = epoch;
        if !schedule.evaluates_after(epoch) {
            continue;
        }
        let timings = runner.take_timings();
        let _ = progress(Progress::Evaluating);
        if rank == 0 {
            state = runner.state()?;
        }
        if size > 1 {
            // Every process continues from rank 0's state, so floating-point differences between machines
            // cannot make the processes drift apart.
            let mut values = flatten(&state);
            processes.broadcast_f32(&mut values);
            unflatten(&mut state, &values);
            if rank > 0 {
                runner.set_state(&state)?;
            }
        }
        let validation = evaluate(
            processes,
            split,
            &spec,
            &arch,
            &state.parameters,
            Stage::Validation,
            threads,
        )?;
        let mut record = EpochRecord {
            epoch,
            steps: step,
            train_loss: loss_sum / (batches_per_epoch * round_epochs) as f64,
            learning_rate,
            validation,
            seconds: round_started.elapsed().as_secs_f64(),
            examples_per_second: (windows.len() * round_epochs) as f64
                / training_time.as_secs_f64(),
            host_seconds: (batching + timings.preparing).as_secs_f64(),
            exchange_seconds: timings.exchanging.as_secs_f64(),
        };
        (round_started, round_epochs, training_time) =
            (Instant::now(), 0, std::time::Duration::ZERO);
        (loss_sum, batching) = (0.0, std::time::Duration::ZERO);
        if size > 1 {
            // Rank 0's record (its timings, and metrics summed in its order) decides for every process.
            let mut bytes = serde_json::to_vec(&record).map_err(|e| shared_error(&e))?;
            processes.broadcast_bytes(&mut bytes);
            record = serde_json::from_slice(&bytes).map_err(|e| shared_error(&e))?;
        }
        let improved = best_record(&meta)
            .is_none_or(|b| record.validation.ndcg_at_10 > b.validation.ndcg_at_10);
        if improved {
            meta.best_epoch = Some(epoch);
            best = state.parameters.clone();
        }
        meta.history.push(record.clone());
        meta.steps_done = step;
        if let (Some(dir), 0) = (checkpoints, rank) {
            save_checkpoint(dir, &mut meta, &state, &best)?;
        }
        let mut stop = progress(Progress::EpochFinished(record)).is_break();
        if size > 1 {
            let mut decision = vec![u8::from(stop)];
            processes.broadcast_bytes(&mut decision);
            stop = decision == [1];
        }
        if stop {
            break;
        }
    }
    let best_epoch = meta.best_epoch.unwrap_or(meta.epochs_done);
    Ok(Trained {
        parameters: parameters_with_shapes(&spec, &arch, best)?,
        validation: best_record(&meta).map(|r| r.validation).unwrap_or_default(),
        spec,
        architecture: arch,
        history: meta.history,
        best_epoch,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Parameters drawn from `seed`, moments zero.
fn initial_state(
    spec: &FeatureSpec,
    arch: &Architecture,
    seed: u64,
) -> Result<ModelState, TrainError> {
    let mut state = ModelState {
        parameters: Parameters::init(spec, arch, seed)?
            .0
            .into_iter()
            .map(|(name, (_, data))| (name, data))
            .collect(),
        ..Default::default()
    };
    for (name, data) in &state.parameters {
        state
            .first_moments
            .insert(name.clone(), vec![0.0; data.len()]);
        state
            .second_moments
            .insert(name.clone(), vec![0.0; data.len()]);
    }
    Ok(state)
}

/// The record of the best validation so far.
fn best_record(meta: &CheckpointMeta) -> Option<&EpochRecord> {
    let best = meta.best_epoch?;
    meta.history.iter().find(|r| r.epoch == best)
}

fn patience_exhausted(meta: &CheckpointMeta, config: &TrainConfig) -> bool {
    best_record(meta)
        .is_some_and(|best| meta.steps_done >= best.steps + config.patience_steps.max(1))
}

/// A permutation of `0..n` for `epoch`.
fn shuffled(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = SplitMix::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Uniformly drawn negative item indices for `step` (padding excluded).
fn negatives(config: &TrainConfig, num_items: usize, step: u64) -> Vec<i64> {
    let mut rng = SplitMix::new(config.seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407));
    (0..config.sampled_negatives)
        .map(|_| 1 + rng.below(num_items - 1) as i64)
        .collect()
}

/// Fills the inverted-dropout mask of `site` at `step` from element `first` of the whole batch's mask on: each
/// element is kept with probability `1 - p` and scaled by `1 / (1 - p)`. A process's shard of rows gets exactly
/// those rows of the one-process mask.
fn fill_dropout_mask(config: &TrainConfig, site: usize, step: u64, first: usize, mask: &mut [f32]) {
    let keep = 1.0 - config.dropout;
    let scale = 1.0 / keep;
    // Compare 32-bit draws with a threshold: two mask elements per random word.
    let threshold = (f64::from(keep) * f64::from(u32::MAX)) as u32;
    let mut rng =
        SplitMix::new(config.seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (site as u64) << 56);
    rng.skip((first / 2) as u64);
    let value = |draw: u32| if draw < threshold { scale } else { 0.0 };
    // A shard starting at an odd element takes the high half of its first word alone.
    let rest = match (first % 2, mask.split_first_mut()) {
        (1, Some((head, rest))) => {
            *head = value((rng.next_u64() >> 32) as u32);
            rest
        }
        _ => mask,
    };
    let mut pairs = rest.chunks_exact_mut(2);
    for pair in &mut pairs {
        let word = rng.next_u64();
        pair[0] = value(word as u32);
        pair[1] = value((word >> 32) as u32);
    }
    if let [last] = pairs.into_remainder() {
        *last = value(rng.next_u64() as u32);
    }
}

/// Whether every process was started with the same settings and data as rank 0, by the same version; every
/// process learns which ranks differ, and each says how it differs.
fn agree(
    processes: &dyn Collective,
    split: &Split,
    config: &TrainConfig,
    resume: bool,
) -> Result<(), TrainError> {
    agree_on(
        processes,
        &serde_json::json!({
            "edgerec": env!("CARGO_PKG_VERSION"),
            // Threads are each process's own business: they change how ONNX Runtime rounds within a step, not
            // what is computed, and rank 0's state replaces every process's after each epoch.
            "config": TrainConfig { threads: 0, ..config.clone() },
            "resume": resume,
            "data": format!("{:016x}", split.fingerprint()),
        }),
    )
}

/// Whether every process built the same step graphs, byte for byte: two builds of one version that differ in
/// the model code would otherwise exchange gradients of different layouts.
fn agree_on_graph(processes: &dyn Collective, graph: &StepGraph) -> Result<(), TrainError> {
    let mut digest = Fnv1a::default();
    match &graph.program {
        StepProgram::Fused(onnx) => digest.write(onnx),
        StepProgram::Split { gradients, update } => {
            digest.write(gradients);
            digest.write(update);
        }
    }
    agree_on(
        processes,
        &serde_json::json!({
            "step graphs": format!("{:016x}", digest.0),
            "parameters": graph.parameters,
        }),
    )
}

/// Compares `description` with rank 0's on every process.
fn agree_on(processes: &dyn Collective, description: &serde_json::Value) -> Result<(), TrainError> {
    let size = processes.size();
    // Both sides compared as parsed from text, so that numbers read as written (0.3, not 0.30000001192092896).
    let text = serde_json::to_vec(description).map_err(|e| shared_error(&e))?;
    let mine: serde_json::Value = serde_json::from_slice(&text).map_err(|e| shared_error(&e))?;
    let mut bytes = text;
    processes.broadcast_bytes(&mut bytes);
    let rank_0: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| shared_error(&e))?;
    let mut differences = Vec::new();
    json_differences("", &rank_0, &mine, &mut differences);
    let mut flags = vec![0.0; size];
    if !differences.is_empty() {
        flags[processes.rank()] = 1.0;
    }
    processes.sum_f64(&mut flags);
    let ranks: Vec<String> = (0..size)
        .filter(|&r| flags[r] > 0.0)
        .map(|r| r.to_string())
        .collect();
    if ranks.is_empty() {
        return Ok(());
    }
    Err(TrainError::Disagreement {
        ranks: ranks.join(", "),
        here: if differences.is_empty() {
            "their messages say how".into()
        } else {
            format!("rank {}: {}", processes.rank(), differences.join(", "))
        },
    })
}

/// `path: theirs on rank 0, mine here` for every leaf where `mine` differs from `rank_0`.
fn json_differences(
    path: &str,
    rank_0: &serde_json::Value,
    mine: &serde_json::Value,
    out: &mut Vec<String>,
) {
    match (rank_0, mine) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let null = serde_json::Value::Null;
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                json_differences(
                    &child,
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path} is {b} here but {a} on rank 0")),
        _ => {}
    }
}

fn shared_error(e: &serde_json::Error) -> TrainError {
    TrainError::Exchange(e.to_string())
}

/// Gives every process rank 0's progress, state and best parameters (from its checkpoint, when resuming).
fn share_from_rank_0(
    processes: &dyn Collective,
    meta: &mut CheckpointMeta,
    state: &mut ModelState,
    best: &mut BTreeMap<String, Vec<f32>>,
) -> Result<(), TrainError> {
    let mut bytes = serde_json::to_vec(&*meta).map_err(|e| shared_error(&e))?;
    processes.broadcast_bytes(&mut bytes);
    *meta = serde_json::from_slice(&bytes).map_err(|e| shared_error(&e))?;
    let mut values = flatten(state);
    values.extend(best.values().flatten());
    processes.broadcast_f32(&mut values);
    let rest = unflatten(state, &values);
    overwrite(best, rest);
    Ok(())
}

/// Parameters, then first moments, then second moments, each in name order: the layout of checkpoints and of the
/// state sent between processes.
fn tensors(state: &ModelState) -> impl Iterator<Item = &Vec<f32>> {
    [
        &state.parameters,
        &state.first_moments,
        &state.second_moments,
    ]
    .into_iter()
    .flat_map(|map| map.values())
}

/// [`tensors`] end to end.
fn flatten(state: &ModelState) -> Vec<f32> {
    tensors(state).flatten().copied().collect()
}

/// Overwrites `state` (whose tensors have their lengths already) from the start of `values`, laid out as
/// [`flatten`] lays it out; returns the values that follow.
fn unflatten<'a>(state: &mut ModelState, values: &'a [f32]) -> &'a [f32] {
    let mut rest = values;
    for map in [
        &mut state.parameters,
        &mut state.first_moments,
        &mut state.second_moments,
    ] {
        rest = overwrite(map, rest);
    }
    rest
}

/// Overwrites each tensor of `map` in name order from the start of `values`; returns the values that follow.
fn overwrite<'a>(map: &mut BTreeMap<String, Vec<f32>>, values: &'a [f32]) -> &'a [f32] {
    let mut rest = values;
    for tensor in map.values_mut() {
        let (head, tail) = rest.split_at(tensor.len());
        tensor.copy_from_slice(head);
        rest = tail;
    }
    rest
}

/// Lays out the windows `chunk` (indices into `windows`) as a batch of `batch_size` rows; missing rows are
/// padding with weight 0. Histories are encoded by the feature specification, as serving encodes them.
fn make_batch(
    split: &Split,
    spec: &FeatureSpec,
    windows: &[Window],
    logged_targets: &HashSet<(u32, u32)>,
    chunk: &[usize],
    batch_size: usize,
) -> Result<Batch, TrainError> {
    let len = spec.sequence.max_len;
    let mut inputs: Vec<(String, Vec<i64>)> = std::iter::once(spec.sequence.input.clone())
        .chain(spec.item_features.iter().map(|f| f.input.clone()))
        .map(|name| (name, vec![0; batch_size * len]))
        .collect();
    let mut targets = vec![0i64; batch_size * len];
    for (row, &w) in chunk.iter().enumerate() {
        let (history, row_targets): (&[u32], Vec<i64>) = match windows[w] {
            Window::Sequence { user, start, end } => {
                let items = &split.users[user as usize].items;
                let (start, end) = (start as usize, end as usize);
                // A target whose logged history has a window of its own is not learnt twice.
                let targets = (start + 1..=end)
                    .map(|p| {
                        if logged_targets.contains(&(user, p as u32)) {
                            0
                        } else {
                            i64::from(items[p])
                        }
                    })
                    .collect();
                (&items[start..end], targets)
            }
            Window::Logged(i) => {
                let logged = &split.logged[i as usize];
                let history = &logged.history[logged.history.len().saturating_sub(len)..];
                let target = split.users[logged.user as usize].items[logged.position as usize];
                let mut targets = vec![0; history.len()];
                if let Some(last) = targets.last_mut() {
                    *last = i64::from(target);
                }
                (history, targets)
            }
        };
        let encoded = spec
            .encode(history, &BTreeMap::new())
            .map_err(|e| TrainError::Config(format!("encoding a training history: {e}")))?;
        for ((_, rows), tensor) in inputs.iter_mut().zip(&encoded) {
            let TensorData::I64(values) = &tensor.data else {
                return Err(TrainError::Config(format!(
                    "input `{}` is not int64",
                    tensor.name
                )));
            };
            rows[row * len..(row + 1) * len].copy_from_slice(values);
        }
        let pad = len - history.len();
        targets[row * len + pad..(row + 1) * len].copy_from_slice(&row_targets);
    }
    let count = targets.iter().filter(|&&t| t > 0).count().max(1);
    let weights = targets
        .iter()
        .map(|&t| if t > 0 { 1.0 / count as f32 } else { 0.0 })
        .collect();
    Ok(Batch {
        inputs,
        targets,
        weights,
        negatives: vec![],
    })
}

fn parameters_with_shapes(
    spec: &FeatureSpec,
    arch: &Architecture,
    values: BTreeMap<String, Vec<f32>>,
) -> Result<Parameters, TrainError> {
    let mut values = values;
    let mut parameters = Parameters::default();
    for (name, dims) in crate::model::parameter_shapes(spec, arch)? {
        let data = values.remove(&name).unwrap_or_default();
        parameters.0.insert(name, (dims, data));
    }
    Ok(parameters)
}

/// Ranks every evaluated user's target at `stage` with the serving graph built from `values`, on ONNX Runtime,
/// the users shared out between `processes` (each evaluates its share; the sums are added up).
pub fn evaluate(
    processes: &dyn Collective,
    split: &Split,
    spec: &FeatureSpec,
    arch: &Architecture,
    values: &BTreeMap<String, Vec<f32>>,
    stage: Stage,
    threads: usize,
) -> Result<RankingMetrics, TrainError> {
    let parameters = parameters_with_shapes(spec, arch, values.clone())?;
    let onnx = inference_graph(spec, arch, &parameters)?;
    let mut sums = evaluate_model_shard(
        split,
        spec,
        &onnx,
        stage,
        threads,
        processes.rank(),
        processes.size(),
    )?
    .sums();
    processes.sum_f64(&mut sums);
    Ok(MetricsAccumulator::from_sums(sums).finish())
}

/// Ranks every evaluated user's target at `stage` with the serving model `onnx`, on ONNX Runtime.
pub fn evaluate_model(
    split: &Split,
    spec: &FeatureSpec,
    onnx: &[u8],
    stage: Stage,
    threads: usize,
) -> Result<RankingMetrics, TrainError> {
    Ok(evaluate_model_shard(split, spec, onnx, stage, threads, 0, 1)?.finish())
}

/// [`evaluate_model`] over shard `shard` of `shards` of the users, unaveraged.
fn evaluate_model_shard(
    split: &Split,
    spec: &FeatureSpec,
    onnx: &[u8],
    stage: Stage,
    threads: usize,
    shard: usize,
    shards: usize,
) -> Result<MetricsAccumulator, TrainError> {
    edgerec_onnxruntime::init().map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
    let mut scorer =
        OrtScorer::load(spec, onnx, threads).map_err(|e| RuntimeError::Session(e.to_string()))?;
    let mut failure = None;
    let metrics = split.evaluate_shard(stage, shard, shards, |history| {
        let scored = spec
            .encode(history, &BTreeMap::new())
            .map_err(|e| e.to_string())
            .and_then(|inputs| scorer.score(&inputs).map_err(|e| e.to_string()));
        match scored {
            Ok(scores) => scores,
            Err(message) => {
                failure.get_or_insert(message);
                vec![0.0; spec.output.num_items]
            }
        }
    });
    match failure {
        Some(message) => Err(RuntimeError::Run(message).into()),
        None => Ok(metrics),
    }
}

fn checkpoint_error(path: &Path, message: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn write_tensors(path: &Path, tensors: &[&Vec<f32>]) -> Result<(), TrainError> {
    let temporary = path.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&temporary).map_err(|e| checkpoint_error(&temporary, e))?,
    );
    for tensor in tensors {
        for value in tensor.iter() {
            file.write_all(&value.to_le_bytes())
                .map_err(|e| checkpoint_error(&temporary, e))?;
        }
    }
    file.flush().map_err(|e| checkpoint_error(&temporary, e))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(|e| checkpoint_error(path, e))
}

/// The `len` values of the file at `path`.
fn read_values(path: &Path, len: usize) -> Result<Vec<f32>, TrainError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| checkpoint_error(path, e))?;
    let expected = len * 4;
    if bytes.len() != expected {
        return Err(checkpoint_error(
            path,
            format!("{} bytes where the layout needs {expected}", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Writes the state and the best parameters to files of this epoch, then the metadata that names them through a
/// rename, then removes the previous epoch's files: a save interrupted anywhere (a process killed, a disk
/// full) leaves the previous checkpoint whole and usable.
fn save_checkpoint(
    dir: &Path,
    meta: &mut CheckpointMeta,
    state: &ModelState,
    best: &BTreeMap<String, Vec<f32>>,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| checkpoint_error(dir, e))?;
    meta.layout = state
        .parameters
        .iter()
        .map(|(name, data)| (name.clone(), data.len()))
        .collect();
    let (state_name, best_name) = (state_file(meta.epochs_done), best_file(meta.epochs_done));
    write_tensors(&dir.join(&state_name), &tensors(state).collect::<Vec<_>>())?;
    write_tensors(&dir.join(&best_name), &best.values().collect::<Vec<_>>())?;
    let path = dir.join(CHECKPOINT_META);
    let temporary = path.with_extension("partial");
    let json = serde_json::to_vec_pretty(meta).map_err(|e| checkpoint_error(&path, e))?;
    std::fs::write(&temporary, json).map_err(|e| checkpoint_error(&temporary, e))?;
    std::fs::rename(&temporary, &path).map_err(|e| checkpoint_error(&path, e))?;
    // Earlier epochs' files (and any left by an interrupted save) are no longer named by the metadata.
    let entries = std::fs::read_dir(dir).map_err(|e| checkpoint_error(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("state-") || name.starts_with("best-");
        if ours && name != state_name && name != best_name {
            std::fs::remove_file(entry.path()).map_err(|e| checkpoint_error(&entry.path(), e))?;
        }
    }
    Ok(())
}

type Restored = (CheckpointMeta, ModelState, BTreeMap<String, Vec<f32>>);

fn load_checkpoint(
    dir: &Path,
    config: &TrainConfig,
    spec: &FeatureSpec,
) -> Result<Restored, TrainError> {
    let path = dir.join(CHECKPOINT_META);
    let json = std::fs::read(&path).map_err(|e| checkpoint_error(&path, e))?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&json).map_err(|e| checkpoint_error(&path, e))?;
    // The run may be given more epochs or patience; everything that shapes the numbers must match.
    let comparable = |c: &TrainConfig| TrainConfig {
        max_epochs: 0,
        patience_steps: 0,
        threads: 0,
        ..c.clone()
    };
    if comparable(&meta.config) != comparable(config) {
        return Err(checkpoint_error(
            &path,
            "was written with a different configuration (only max_epochs, patience_steps and threads may change)",
        ));
    }
    if &meta.spec != spec {
        return Err(checkpoint_error(
            &path,
            "was written for different data (another item vocabulary)",
        ));
    }
    // The layout is in name order, as the state's maps hold the tensors.
    let expected: Vec<(String, usize)> =
        crate::model::parameter_shapes(spec, &config.architecture())?
            .into_iter()
            .map(|(name, dims)| (name, dims.iter().product::<i64>() as usize))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
    if meta.layout != expected {
        return Err(checkpoint_error(
            &path,
            "holds tensors other than this model's parameters",
        ));
    }
    let state_path = dir.join(state_file(meta.epochs_done));
    if !state_path.exists() && dir.join("state.bin").exists() {
        return Err(checkpoint_error(
            dir,
            "was written by an earlier edgerec (state.bin), which this version does not resume: train again",
        ));
    }
    let zeros = || -> BTreeMap<String, Vec<f32>> {
        meta.layout
            .iter()
            .map(|(name, len)| (name.clone(), vec![0.0; *len]))
            .collect()
    };
    let mut state = ModelState {
        parameters: zeros(),
        first_moments: zeros(),
        second_moments: zeros(),
    };
    let total: usize = meta.layout.iter().map(|(_, len)| len).sum();
    unflatten(&mut state, &read_values(&state_path, 3 * total)?);
    let mut best = zeros();
    overwrite(
        &mut best,
        &read_values(&dir.join(best_file(meta.epochs_done)), total)?,
    );
    Ok((meta, state, best))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::SingleProcess;
    use crate::data::Interaction;

    /// Users walk a cycle of 40 items (item `i` is followed by `i + 1`), each from a random start.
    fn planted_pattern(users: usize) -> Split {
        let mut rng = SplitMix::new(3);
        let mut interactions = Vec::new();
        for user in 0..users {
            let start = rng.below(40);
            let length = 6 + rng.below(10);
            for step in 0..length {
                interactions.push(Interaction {
                    user: format!("u{user}"),
                    item: format!("i{}", (start + step) % 40),
                    timestamp: step as i64,
                    value: None,
                });
            }
        }
        Split::leave_last_out(&interactions)
    }

    /// Trains as one process, to the end.
    fn train_alone(
        split: &Split,
        config: &TrainConfig,
        checkpoints: Option<&Path>,
        resume: bool,
    ) -> Result<Trained, TrainError> {
        train(
            split,
            config,
            checkpoints,
            resume,
            &SingleProcess,
            &mut |_| ControlFlow::Continue(()),
        )
    }

    fn small_config() -> TrainConfig {
        TrainConfig {
            max_len: 8,
            dim: 16,
            blocks: 1,
            ffn_dim: 32,
            dropout: 0.1,
            batch_size: 32,
            max_epochs: 12,
            patience_steps: 10_000,
            evaluate_every_steps: 1,
            learning_rate: 1e-2,
            warmup_steps: 5,
            threads: 1,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn learns_a_planted_sequential_pattern() {
        let split = planted_pattern(200);
        let trained = train_alone(&split, &small_config(), None, false).expect("trains");
        let first = trained.history[0].validation.hr_at_10;
        let test = evaluate(
            &SingleProcess,
            &split,
            &trained.spec,
            &trained.architecture,
            &trained
                .parameters
                .0
                .iter()
                .map(|(name, (_, data))| (name.clone(), data.clone()))
                .collect(),
            Stage::Test,
            1,
        )
        .expect("evaluates");
        assert!(
            trained.validation.hr_at_10 > 0.95 && test.hr_at_10 > 0.95,
            "validation {:?}, test {test:?} (first epoch HR@10 {first})",
            trained.validation
        );
        assert!(test.mrr > 0.8, "{test:?}");
        let losses: Vec<f64> = trained.history.iter().map(|r| r.train_loss).collect();
        assert!(
            losses.last() < losses.first(),
            "loss did not fall: {losses:?}"
        );
    }

    /// On a tiny data set (one or two steps an epoch) the run lasts the schedule's steps, not a handful of
    /// epochs, and validates by steps.
    #[test]
    fn a_tiny_data_set_trains_for_the_scheduled_steps() {
        let split = planted_pattern(30);
        let config = TrainConfig {
            max_steps: 120,
            max_epochs: 10_000,
            evaluate_every_steps: 40,
            ..small_config()
        };
        let windows = windows(&split, config.max_len).len();
        let schedule = Schedule::new(&config, windows);
        assert!(schedule.batches_per_epoch <= 2, "{schedule:?}");
        let trained = train_alone(&split, &config, None, false).expect("trains");
        let steps: Vec<u64> = trained.history.iter().map(|r| r.steps).collect();
        assert!(*steps.last().expect("validated") >= 120, "{steps:?}");
        assert!(
            steps.windows(2).all(|w| w[1] - w[0] >= 40) && steps[0] >= 40,
            "validations {steps:?} come every 40 steps or more"
        );
        assert!(steps.len() >= 3, "{steps:?}");
        assert!(
            trained.history.last().expect("validated").epoch >= 60,
            "{} epochs",
            trained.history.len()
        );
    }

    #[test]
    fn learns_the_pattern_with_sampled_softmax_too() {
        let split = planted_pattern(200);
        let config = TrainConfig {
            sampled_negatives: 8,
            ..small_config()
        };
        let trained = train_alone(&split, &config, None, false).expect("trains");
        assert!(
            trained.validation.hr_at_10 > 0.9,
            "{:?}",
            trained.validation
        );
    }

    #[test]
    fn resuming_gives_the_parameters_of_an_uninterrupted_run() {
        let split = planted_pattern(60);
        let config = TrainConfig {
            max_epochs: 4,
            patience_steps: 10_000,
            evaluate_every_steps: 1,
            ..small_config()
        };
        let whole = tempfile::tempdir().expect("test step succeeds");
        let uninterrupted =
            train_alone(&split, &config, Some(whole.path()), false).expect("trains");

        let parts = tempfile::tempdir().expect("test step succeeds");
        let interrupt_after_two = &mut |p| match p {
            Progress::EpochFinished(record) if record.epoch == 2 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        };
        let first_half = train(
            &split,
            &config,
            Some(parts.path()),
            false,
            &SingleProcess,
            interrupt_after_two,
        )
        .expect("first half");
        assert_eq!(first_half.history.len(), 2);
        let mut epochs_seen = vec![];
        let resumed = train(
            &split,
            &config,
            Some(parts.path()),
            true,
            &SingleProcess,
            &mut |p| {
                if let Progress::EpochStarted { epoch, .. } = p {
                    epochs_seen.push(epoch);
                }
                ControlFlow::Continue(())
            },
        )
        .expect("resumes");
        assert_eq!(epochs_seen, vec![3, 4], "resumed at the wrong epoch");
        assert_eq!(resumed.history, {
            // Timings differ between runs; everything else must not.
            let mut expected = uninterrupted.history.clone();
            for (e, r) in expected.iter_mut().zip(&resumed.history) {
                e.seconds = r.seconds;
                e.examples_per_second = r.examples_per_second;
                e.host_seconds = r.host_seconds;
                e.exchange_seconds = r.exchange_seconds;
            }
            expected
        });
        assert_eq!(resumed.parameters, uninterrupted.parameters);
        let final_state =
            |dir: &Path| std::fs::read(dir.join(state_file(4))).expect("test step succeeds");
        assert_eq!(final_state(parts.path()), final_state(whole.path()));
        let mut files: Vec<String> = std::fs::read_dir(parts.path())
            .expect("test step succeeds")
            .map(|e| {
                e.expect("test step succeeds")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["best-4.bin", "checkpoint.json", "state-4.bin"],
            "earlier epochs' files are removed"
        );
    }

    #[test]
    fn resume_refuses_a_checkpoint_of_another_configuration() {
        let split = planted_pattern(30);
        let config = TrainConfig {
            max_epochs: 1,
            ..small_config()
        };
        let dir = tempfile::tempdir().expect("test step succeeds");
        train_alone(&split, &config, Some(dir.path()), false).expect("trains");
        let other = TrainConfig {
            dim: 8,
            ..config.clone()
        };
        let error =
            train_alone(&split, &other, Some(dir.path()), true).expect_err("must be refused");
        assert!(
            error.to_string().contains("different configuration"),
            "{error}"
        );
        let missing = tempfile::tempdir().expect("test step succeeds");
        let error =
            train_alone(&split, &config, Some(missing.path()), true).expect_err("must be refused");
        assert!(error.to_string().contains("checkpoint.json"), "{error}");

        // A layout naming other tensors (another model's code) is refused before any state is read.
        let meta_path = dir.path().join(CHECKPOINT_META);
        let original = std::fs::read_to_string(&meta_path).expect("test step succeeds");
        std::fs::write(&meta_path, original.replace("\"b0_bk\"", "\"b0_bias\""))
            .expect("test step succeeds");
        let error =
            train_alone(&split, &config, Some(dir.path()), true).expect_err("must be refused");
        assert!(
            error.to_string().contains("other than this model's"),
            "{error}"
        );
        // The single state file of earlier versions is named as such.
        std::fs::write(&meta_path, &original).expect("test step succeeds");
        std::fs::rename(dir.path().join(state_file(1)), dir.path().join("state.bin"))
            .expect("test step succeeds");
        let error =
            train_alone(&split, &config, Some(dir.path()), true).expect_err("must be refused");
        assert!(error.to_string().contains("earlier edgerec"), "{error}");
    }

    #[test]
    fn users_with_one_interaction_give_no_examples() {
        let interactions: Vec<Interaction> = (0..5)
            .map(|u| Interaction {
                user: format!("u{u}"),
                item: format!("i{u}"),
                timestamp: 0,
                value: None,
            })
            .collect();
        let split = Split::leave_last_out(&interactions);
        let error = train_alone(&split, &small_config(), None, false).expect_err("must be refused");
        assert!(matches!(error, TrainError::NoExamples), "{error}");
    }

    #[test]
    fn windows_cover_every_training_target_once() {
        let mut split = planted_pattern(20);
        // Serving logged the history of user 0's third and user 1's second interactions; one log points at a
        // held-out target and is not trained on.
        let held_out = split.users[2].items.len() as u32 - 1;
        split.logged = vec![
            LoggedHistory {
                user: 0,
                position: 2,
                history: vec![7, 8, 9],
            },
            LoggedHistory {
                user: 1,
                position: 1,
                history: vec![5],
            },
            LoggedHistory {
                user: 2,
                position: held_out,
                history: vec![1],
            },
        ];
        let windows = windows(&split, 4);
        let spec = sequence_spec(&split, 4);
        let all: Vec<usize> = (0..windows.len()).collect();
        let batch = make_batch(
            &split,
            &spec,
            &windows,
            &logged_targets(&split),
            &all,
            windows.len(),
        )
        .expect("batch");
        // (user, target) of every nonzero target, from each row's window.
        let mut covered = Vec::new();
        for (row, window) in windows.iter().enumerate() {
            let targets = &batch.targets[row * 4..(row + 1) * 4];
            match *window {
                Window::Sequence { user, start, end } => {
                    assert!(end > start && end - start <= 4);
                    let items = &split.users[user as usize].items;
                    for p in start + 1..=end {
                        let t = targets[4 - (end - p) as usize - 1];
                        if t != 0 {
                            assert_eq!(t, i64::from(items[p as usize]));
                            covered.push((user, p));
                        }
                    }
                }
                Window::Logged(i) => {
                    let logged = &split.logged[i as usize];
                    let target = split.users[logged.user as usize].items[logged.position as usize];
                    assert_eq!(targets[..3], [0, 0, 0]);
                    assert_eq!(targets[3], i64::from(target));
                    let history = &batch.inputs[0].1[row * 4..(row + 1) * 4];
                    let padded: Vec<i64> = std::iter::repeat_n(0, 4 - logged.history.len())
                        .chain(logged.history.iter().map(|&h| i64::from(h)))
                        .collect();
                    assert_eq!(
                        history,
                        padded.as_slice(),
                        "the logged history, as serving fed it"
                    );
                    covered.push((logged.user, logged.position));
                }
            }
        }
        covered.sort_unstable();
        let expected: Vec<(u32, u32)> = split
            .users
            .iter()
            .enumerate()
            .flat_map(|(u, s)| {
                (1..Stage::Validation.training_items(s).len() as u32).map(move |p| (u as u32, p))
            })
            .collect();
        assert_eq!(covered, expected, "each training target once");
        assert_eq!(
            windows
                .iter()
                .filter(|w| matches!(w, Window::Logged(_)))
                .count(),
            2
        );
    }

    /// The pair of graphs data parallelism runs computes the fused step's update: here over the whole batch in
    /// one process, so only the order of floating-point additions may differ (the two-process sum is checked
    /// through `mpirun` in the CLI's tests). A state set on a runner is the state it then holds.
    #[test]
    fn the_split_step_updates_as_the_fused_step_does() {
        let split = planted_pattern(60);
        let config = TrainConfig {
            sampled_negatives: 0,
            ..small_config()
        };
        let (spec, arch) = (sequence_spec(&split, config.max_len), config.architecture());
        let windows = windows(&split, config.max_len);
        let logged = logged_targets(&split);
        let start = initial_state(&spec, &arch, config.seed).expect("initial state");
        let inputs = vec![spec.sequence.input.clone()];
        let runner = |graph: &crate::step::StepGraph| {
            StepRunner::new(
                graph,
                &inputs,
                config.max_len,
                config.dim,
                &start,
                Device::Cpu,
                0,
                1,
            )
            .expect("runner")
        };
        let b = config.batch_size;
        let optimiser = &config.optimiser;
        let mut fused =
            runner(&step_graph(&spec, &arch, b, true, 0, optimiser, false).expect("graph"));
        let mut split_step =
            runner(&step_graph(&spec, &arch, b, true, 0, optimiser, true).expect("graphs"));
        let order = shuffled(windows.len(), config.seed, 1);
        for (step, chunk) in (1..=3).zip(order.chunks(b)) {
            let batch = make_batch(&split, &spec, &windows, &logged, chunk, b).expect("batch");
            let mask = |site, mask: &mut [f32]| fill_dropout_mask(&config, site, step, 0, mask);
            let size = config.optimiser.step_size(1e-2, step);
            let one = fused
                .step(&batch, mask, size, 1e-4, &SingleProcess)
                .expect("fused step");
            let other = split_step
                .step(&batch, mask, size, 1e-4, &SingleProcess)
                .expect("split step");
            assert!(
                (one.0 - other.0).abs() < 1e-5 && (one.1 - other.1).abs() < 1e-4,
                "loss and gradient norm: {one:?} against {other:?}"
            );
        }
        let (a, b) = (
            fused.state().expect("state"),
            split_step.state().expect("state"),
        );
        let moved = flatten(&start)
            .iter()
            .zip(flatten(&a))
            .map(|(s, a)| (s - a).abs())
            .fold(0f32, f32::max);
        let differ = flatten(&a)
            .iter()
            .zip(flatten(&b))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(moved > 1e-3, "the steps moved the parameters by {moved}");
        assert!(differ < 1e-5, "the split step's state differs by {differ}");
        // Another process's state, taken whole (as every process takes rank 0's after each epoch).
        split_step.set_state(&a).expect("set state");
        assert_eq!(split_step.state().expect("state"), a);
        split_step.set_state(&start).expect("set state");
        assert_eq!(split_step.state().expect("state"), start);
    }

    #[test]
    fn learning_rate_warms_up_then_decays_to_the_floor() {
        let config = TrainConfig {
            learning_rate: 1.0,
            warmup_steps: 10,
            final_learning_rate_fraction: 0.1,
            ..TrainConfig::default()
        };
        assert!((config.learning_rate_at(5, 110) - 0.5).abs() < 1e-12);
        assert!((config.learning_rate_at(10, 110) - 1.0).abs() < 1e-12);
        assert!((config.learning_rate_at(60, 110) - 0.55).abs() < 1e-12);
        assert!((config.learning_rate_at(110, 110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn dropout_masks_keep_the_expected_share_and_repeat_per_step() {
        let config = TrainConfig {
            batch_size: 4,
            max_len: 10,
            dim: 50,
            dropout: 0.2,
            ..TrainConfig::default()
        };
        let masks_at = |step: u64| -> Vec<Vec<f32>> {
            (0..3)
                .map(|site| {
                    let mut mask = vec![f32::NAN; 2000];
                    fill_dropout_mask(&config, site, step, 0, &mut mask);
                    mask
                })
                .collect()
        };
        let masks = masks_at(7);
        assert_eq!(masks.len(), 3);
        let kept = masks[0].iter().filter(|&&v| v > 0.0).count() as f64 / 2000.0;
        assert!((kept - 0.8).abs() < 0.04, "kept {kept}");
        assert!(
            masks[0]
                .iter()
                .all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6)
        );
        assert_ne!(masks[0], masks[1]);
        assert_eq!(masks, masks_at(7));
        assert_ne!(masks, masks_at(8));
        // A shard starting at any element, odd or even, gets those elements of the whole mask.
        for first in [1, 2, 999] {
            let mut tail = vec![f32::NAN; 2000 - first];
            fill_dropout_mask(&config, 1, 7, first, &mut tail);
            assert_eq!(tail, masks[1][first..], "from element {first}");
        }
    }
}
