//! The loop itself: set-up (settings checked, step graph built, state restored), epochs of steps, validation
//! on the schedule, the anneal once the patience runs out, and the best parameters at the end.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use edgerec_core::FeatureSpec;

use super::agree::{agree, agree_on_graph, share_from_rank_0, shared_error};
use super::batches::{Examples, fill_dropout_mask, negatives, row_inputs, shuffled};
use super::checkpoint::{
    CheckpointMeta, Restored, flatten, load_checkpoint, save_checkpoint, unflatten,
};
use super::evaluate::{evaluate, parameters_with_shapes};
use super::{EpochRecord, Progress, TrainConfig, TrainError, Trained, sequence_spec};
use crate::collective::Collective;
use crate::model::{Architecture, Parameters};
use crate::runtime::Device;
use crate::schedule::{Anneal, Schedule, last_real_improvement};
use crate::split::{Split, Stage};
use crate::step::{StepGraph, step_graph};
use crate::stepper::{ModelState, StepRunner};

/// Trains on `split` with `config`. With `checkpoints`, state is saved there after every epoch, and `resume`
/// continues from what is saved. `progress` sees every step and epoch; answering `Break` to an
/// [`Progress::EpochFinished`] ends the run there (after its checkpoint), as an interruption would.
///
/// With several `processes`, each calls this with the same arguments and gets the same result; only rank 0 uses
/// `checkpoints`, and rank 0's answer to `EpochFinished` decides for all. A process of its own trains as
/// [`TrainConfig::replicas_in`] replicas on threads ([`crate::replicas`]), which share each batch as processes
/// do; `progress` sees rank 0's.
pub fn train(
    split: &Split,
    config: &TrainConfig,
    checkpoints: Option<&Path>,
    resume: bool,
    processes: &dyn Collective,
    progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<Trained, TrainError> {
    let job = Job {
        split,
        config,
        checkpoints,
        resume,
    };
    let replicas = config.replicas_in(processes.size());
    if replicas <= 1 {
        return job.train_replica(processes, progress);
    }
    if processes.size() > 1 || config.device != Device::Cpu {
        return Err(TrainError::Config(format!(
            "replicas = {replicas} trains on CPU in a process of its own; an MPI job's processes (or a GPU) \
             already share the work: leave replicas at 0 or 1"
        )));
    }
    // Before any thread starts: a thousand replicas would otherwise all start to find the same error.
    check_batch_shared(config, replicas, "replicas")?;
    crate::replicas::run_replicas(
        replicas,
        |replica| job.train_replica(replica, &mut |_| ControlFlow::Continue(())),
        |leader| job.train_replica(leader, progress),
    )
}

/// What every process and replica of a run trains on.
#[derive(Clone, Copy)]
struct Job<'a> {
    split: &'a Split,
    config: &'a TrainConfig,
    checkpoints: Option<&'a Path>,
    resume: bool,
}

impl<'a> Job<'a> {
    /// [`train`] as one process or replica of a group.
    fn train_replica(
        self,
        processes: &'a dyn Collective,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Trained, TrainError> {
        let started = Instant::now();
        let mut run = Run::start(self, processes)?;
        while run.meta.epochs_done < run.schedule.last_epoch {
            let phase = run.phase(progress)?;
            if phase == Phase::Over {
                break;
            }
            let epoch = run.meta.epochs_done + 1;
            run.train_epoch(epoch, phase, progress)?;
            let anneal_over = matches!(phase, Phase::Annealing(a) if a.is_over(run.step));
            if !run.schedule.evaluates_after(epoch) && !anneal_over {
                continue;
            }
            if run.validate(epoch, progress)?.is_break() {
                break;
            }
        }
        let best_epoch = run.meta.best_epoch.unwrap_or(run.meta.epochs_done);
        Ok(Trained {
            parameters: parameters_with_shapes(&run.spec, &run.arch, run.best)?,
            validation: best_record(&run.meta)
                .map(|r| r.validation)
                .unwrap_or_default(),
            spec: run.spec,
            architecture: run.arch,
            history: run.meta.history,
            best_epoch,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Which learning rate the next epoch trains at.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The main schedule's warm-up and long cosine.
    Main,
    /// The patience ran out: the rate falls to the floor, then the run ends.
    Annealing(Anneal),
    Over,
}

/// A run in progress: what it trains on, its state, and what the epochs since the last validation add up to.
struct Run<'a> {
    split: &'a Split,
    config: &'a TrainConfig,
    checkpoints: Option<&'a Path>,
    processes: &'a dyn Collective,
    spec: FeatureSpec,
    arch: Architecture,
    examples: Examples,
    schedule: Schedule,
    /// Rows of each batch per process (the whole batch for one); the last shard is padded when the batch does
    /// not divide evenly.
    shard_rows: usize,
    threads: usize,
    runner: StepRunner,
    meta: CheckpointMeta,
    state: ModelState,
    best: BTreeMap<String, Vec<f32>>,
    step: u64,
    round: Round,
}

/// What the epochs since the last validation add up to.
struct Round {
    started: Instant,
    epochs: usize,
    training: Duration,
    batching: Duration,
    batches: usize,
    loss_sum: f64,
    learning_rate: f64,
}

impl Round {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            epochs: 0,
            training: Duration::ZERO,
            batching: Duration::ZERO,
            batches: 0,
            loss_sum: 0.0,
            learning_rate: 0.0,
        }
    }
}

impl<'a> Run<'a> {
    fn start(job: Job<'a>, processes: &'a dyn Collective) -> Result<Self, TrainError> {
        let Job {
            split,
            config,
            checkpoints,
            resume,
        } = job;
        check_settings(split, config, resume, processes)?;
        let threads = config.threads(processes.local_size());
        let spec = sequence_spec(split, config.max_len);
        let arch = config.architecture();
        let examples = Examples::new(split, config.max_len);
        if examples.rows() == 0 {
            return Err(TrainError::NoExamples);
        }
        let (meta, state, best) = restore(&spec, &arch, config, checkpoints, resume, processes)?;
        // A run resumed inside its anneal goes on with the anneal's batches.
        let annealing = meta.anneal_from.is_some();
        let (shard_rows, runner) =
            step_runner(&spec, &arch, config, annealing, processes, threads, &state)?;
        let main = Schedule::new(config, examples.rows());
        Ok(Self {
            split,
            config,
            checkpoints,
            processes,
            schedule: if annealing {
                main.annealing(config, examples.rows())
            } else {
                main
            },
            spec,
            arch,
            examples,
            shard_rows,
            threads,
            runner,
            step: meta.steps_done,
            meta,
            state,
            best,
            round: Round::new(),
        })
    }

    /// The phase the next epoch trains in. Starts the anneal (or ends the run, with no anneal) once the patience
    /// is out.
    fn phase(
        &mut self,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Phase, TrainError> {
        let config = self.config;
        if self.meta.anneal_from.is_none() && patience_exhausted(&self.meta, config) {
            if config.anneal_steps == 0 {
                return Ok(Phase::Over);
            }
            self.meta.anneal_from = Some(self.step);
            if config.batch_rows(true) != config.batch_rows(false) {
                self.take_anneal_batches()?;
            }
            let anneal = anneal_of(&self.meta, config).expect("just set");
            let total = self.schedule.total_steps;
            let _ = progress(Progress::Annealing {
                steps_done: self.step,
                steps: anneal.steps,
                batch_rows: config.batch_rows(true),
                learning_rate: anneal.learning_rate_at(config, self.step, total),
                final_learning_rate: anneal.learning_rate_at(
                    config,
                    self.step + anneal.steps,
                    total,
                ),
            });
        }
        Ok(match anneal_of(&self.meta, config) {
            None => Phase::Main,
            Some(anneal) if anneal.is_over(self.step) => Phase::Over,
            Some(anneal) => {
                match anneal.gave_up(validations(&self.meta), config.anneal_must_gain_within) {
                    Some(best_ndcg_at_10) => {
                        let _ = progress(Progress::AnnealGaveUp {
                            steps_done: self.step,
                            share: config.anneal_must_gain_within,
                            best_ndcg_at_10,
                        });
                        Phase::Over
                    }
                    None => Phase::Annealing(anneal),
                }
            }
        })
    }

    /// From here on, batches of the anneal's rows: the step graph is built for them and continues from the
    /// state (parameters and moments) the main schedule's steps reached.
    fn take_anneal_batches(&mut self) -> Result<(), TrainError> {
        self.take_rank_0_state()?;
        (self.shard_rows, self.runner) = step_runner(
            &self.spec,
            &self.arch,
            self.config,
            true,
            self.processes,
            self.threads,
            &self.state,
        )?;
        self.schedule = self.schedule.annealing(self.config, self.examples.rows());
        Ok(())
    }

    /// One pass over the shuffled windows, a step per batch.
    fn train_epoch(
        &mut self,
        epoch: usize,
        phase: Phase,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<(), TrainError> {
        let config = self.config;
        let (rank, size) = (self.processes.rank(), self.processes.size());
        let epoch_started = Instant::now();
        let _ = progress(Progress::EpochStarted {
            epoch,
            batches: self.schedule.batches_per_epoch,
        });
        let order = shuffled(self.examples.rows(), config.seed, epoch);
        let rows = config.batch_rows(matches!(phase, Phase::Annealing(_)));
        let mut examples = 0;
        for (index, chunk) in order.chunks(rows).enumerate() {
            self.step += 1;
            let step = self.step;
            let batch_started = Instant::now();
            let whole = self.examples.batch(self.split, &self.spec, chunk, rows)?;
            let first_row = rank * self.shard_rows;
            let mut batch = if size == 1 {
                whole
            } else {
                whole.rows(first_row, self.shard_rows, config.max_len)
            };
            batch.negatives = negatives(config, self.spec.output.num_items, step);
            self.round.batching += batch_started.elapsed();
            let total = self.schedule.total_steps;
            let learning_rate = match phase {
                Phase::Annealing(anneal) => anneal.learning_rate_at(config, step, total),
                Phase::Main | Phase::Over => config.learning_rate_at(step, total),
            };
            self.round.learning_rate = learning_rate;
            let step_size = config.optimiser.step_size(learning_rate, step);
            let decay = (learning_rate * f64::from(config.optimiser.weight_decay)) as f32;
            let mask_offset = first_row * config.max_len * config.dim;
            let (loss, _norm) = self.runner.step(
                &batch,
                |site, mask| fill_dropout_mask(config, site, step, mask_offset, mask),
                step_size,
                decay,
                self.processes,
            )?;
            if !loss.is_finite() {
                return Err(TrainError::Diverged { epoch, step, loss });
            }
            self.round.loss_sum += f64::from(loss);
            self.round.batches += 1;
            examples += self.examples.windows_in(chunk);
            let _ = progress(Progress::Step {
                batch: index + 1,
                loss,
                examples_per_second: examples as f64 / epoch_started.elapsed().as_secs_f64(),
            });
        }
        self.round.training += epoch_started.elapsed();
        self.round.epochs += 1;
        self.meta.epochs_done = epoch;
        Ok(())
    }

    /// Validates after `epoch`: records the figures, keeps the parameters if they are the best, saves the
    /// checkpoint, and asks `progress` (rank 0's answer decides) whether to go on.
    fn validate(
        &mut self,
        epoch: usize,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, TrainError> {
        let (rank, size) = (self.processes.rank(), self.processes.size());
        let timings = self.runner.take_timings();
        let _ = progress(Progress::Evaluating);
        self.take_rank_0_state()?;
        let validation = evaluate(
            self.processes,
            self.split,
            &self.spec,
            &self.arch,
            &self.state.parameters,
            Stage::Validation,
            self.threads,
        )?;
        let round = std::mem::replace(&mut self.round, Round::new());
        let mut record = EpochRecord {
            epoch,
            steps: self.step,
            train_loss: round.loss_sum / round.batches.max(1) as f64,
            learning_rate: round.learning_rate,
            validation,
            seconds: round.started.elapsed().as_secs_f64(),
            examples_per_second: (self.examples.windows() * round.epochs) as f64
                / round.training.as_secs_f64(),
            host_seconds: (round.batching + timings.preparing).as_secs_f64(),
            exchange_seconds: timings.exchanging.as_secs_f64(),
        };
        if size > 1 {
            // Rank 0's record (its timings, and metrics summed in its order) decides for every process.
            let mut bytes = serde_json::to_vec(&record).map_err(|e| shared_error(&e))?;
            self.processes.broadcast_bytes(&mut bytes);
            record = serde_json::from_slice(&bytes).map_err(|e| shared_error(&e))?;
        }
        let improved = best_record(&self.meta)
            .is_none_or(|b| record.validation.ndcg_at_10 > b.validation.ndcg_at_10);
        if improved {
            self.meta.best_epoch = Some(epoch);
            self.best = self.state.parameters.clone();
        }
        self.meta.history.push(record.clone());
        self.meta.steps_done = self.step;
        if let (Some(dir), 0) = (self.checkpoints, rank) {
            save_checkpoint(dir, &mut self.meta, &self.state, &self.best)?;
        }
        let mut stop = progress(Progress::EpochFinished(record)).is_break();
        if size > 1 {
            let mut decision = vec![u8::from(stop)];
            self.processes.broadcast_bytes(&mut decision);
            stop = decision == [1];
        }
        Ok(if stop {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }

    /// Every process continues from rank 0's state, so floating-point differences between machines cannot make
    /// the processes drift apart.
    fn take_rank_0_state(&mut self) -> Result<(), TrainError> {
        let rank = self.processes.rank();
        if rank == 0 {
            self.state = self.runner.state()?;
        }
        if self.processes.size() > 1 {
            let mut values = flatten(&self.state);
            self.processes.broadcast_f32(&mut values);
            unflatten(&mut self.state, &values);
            if rank > 0 {
                self.runner.set_state(&self.state)?;
            }
        }
        Ok(())
    }
}

/// The settings, checked the same way by every process: agreement first, so that after it every process meets
/// the same configuration errors.
fn check_settings(
    split: &Split,
    config: &TrainConfig,
    resume: bool,
    processes: &dyn Collective,
) -> Result<(), TrainError> {
    let size = processes.size();
    if size > 1 {
        agree(processes, split, config, resume)?;
    }
    config.check()?;
    check_batch_shared(config, size, "processes")
}

/// Each of `parts` (processes or replicas) needs at least one row of every batch, the anneal's included.
fn check_batch_shared(config: &TrainConfig, parts: usize, what: &str) -> Result<(), TrainError> {
    let smallest = config.smallest_batch();
    if smallest < parts {
        let setting = if smallest == config.batch_size {
            "batch_size"
        } else {
            "anneal_batch_size"
        };
        return Err(TrainError::Config(format!(
            "{setting} {smallest} is smaller than the {parts} {what} sharing each batch"
        )));
    }
    Ok(())
}

/// The step graph of one process's shard of each batch, the same on every process.
fn build_step_graph(
    spec: &FeatureSpec,
    arch: &Architecture,
    config: &TrainConfig,
    shard_rows: usize,
    processes: &dyn Collective,
) -> Result<StepGraph, TrainError> {
    let size = processes.size();
    let graph = step_graph(
        spec,
        arch,
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
    Ok(graph)
}

/// The rows of one process's shard of a batch of the phase (`annealing` or not), and the step over them on this
/// process's device, starting from `state`.
fn step_runner(
    spec: &FeatureSpec,
    arch: &Architecture,
    config: &TrainConfig,
    annealing: bool,
    processes: &dyn Collective,
    threads: usize,
    state: &ModelState,
) -> Result<(usize, StepRunner), TrainError> {
    let shard_rows = config.batch_rows(annealing).div_ceil(processes.size());
    let graph = build_step_graph(spec, arch, config, shard_rows, processes)?;
    let gpu = match config.device {
        Device::Cuda => {
            crate::runtime::gpu_of(processes.local_rank(), crate::runtime::visible_gpus())
        }
        Device::Cpu => 0,
    };
    let runner = StepRunner::new(
        &graph,
        &row_inputs(spec),
        config.max_len,
        config.dim,
        state,
        config.device,
        gpu,
        threads,
    )?;
    Ok((shard_rows, runner))
}

/// The run's starting point: fresh parameters, or (with `resume`) rank 0's checkpoint, shared with every process.
fn restore(
    spec: &FeatureSpec,
    arch: &Architecture,
    config: &TrainConfig,
    checkpoints: Option<&Path>,
    resume: bool,
    processes: &dyn Collective,
) -> Result<Restored, TrainError> {
    let mut state = initial_state(spec, arch, config.seed)?;
    let mut meta = CheckpointMeta {
        config: config.clone(),
        spec: spec.clone(),
        epochs_done: 0,
        steps_done: 0,
        history: vec![],
        best_epoch: None,
        anneal_from: None,
        layout: vec![],
    };
    let mut best = state.parameters.clone();
    if resume && processes.rank() == 0 {
        let dir = checkpoints.ok_or(TrainError::ResumeWithoutCheckpoints)?;
        (meta, state, best) = load_checkpoint(dir, config, spec)?;
    }
    if processes.size() > 1 {
        share_from_rank_0(processes, &mut meta, &mut state, &mut best)?;
    }
    Ok((meta, state, best))
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

/// The run's validations so far, as (step, NDCG@10).
fn validations(meta: &CheckpointMeta) -> impl Iterator<Item = (u64, f64)> + '_ {
    meta.history
        .iter()
        .map(|r| (r.steps, r.validation.ndcg_at_10))
}

fn patience_exhausted(meta: &CheckpointMeta, config: &TrainConfig) -> bool {
    last_real_improvement(validations(meta), config.min_improvement)
        .is_some_and(|last| meta.steps_done >= last + config.patience_steps.max(1))
}

fn anneal_of(meta: &CheckpointMeta, config: &TrainConfig) -> Option<Anneal> {
    meta.anneal_from.map(|from_step| Anneal {
        from_step,
        steps: config.anneal_steps,
    })
}

#[cfg(test)]
mod tests;
