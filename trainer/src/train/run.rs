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
            let phase = run.phase(progress);
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
        let shard_rows = config.batch_size.div_ceil(processes.size());
        let graph = build_step_graph(&spec, &arch, config, shard_rows, processes)?;
        let (meta, state, best) = restore(&spec, &arch, config, checkpoints, resume, processes)?;
        let inputs = row_inputs(&spec);
        let gpu = match config.device {
            Device::Cuda => {
                crate::runtime::gpu_of(processes.local_rank(), crate::runtime::visible_gpus())
            }
            Device::Cpu => 0,
        };
        let runner = StepRunner::new(
            &graph,
            &inputs,
            config.max_len,
            config.dim,
            &state,
            config.device,
            gpu,
            threads,
        )?;
        Ok(Self {
            split,
            config,
            checkpoints,
            processes,
            schedule: Schedule::new(config, examples.rows()),
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
    fn phase(&mut self, progress: &mut dyn FnMut(Progress) -> ControlFlow<()>) -> Phase {
        let config = self.config;
        if self.meta.anneal_from.is_none() && patience_exhausted(&self.meta, config) {
            if config.anneal_steps == 0 {
                return Phase::Over;
            }
            self.meta.anneal_from = Some(self.step);
            let anneal = anneal_of(&self.meta, config).expect("just set");
            let total = self.schedule.total_steps;
            let _ = progress(Progress::Annealing {
                steps_done: self.step,
                steps: anneal.steps,
                learning_rate: anneal.learning_rate_at(config, self.step, total),
                final_learning_rate: anneal.learning_rate_at(
                    config,
                    self.step + anneal.steps,
                    total,
                ),
            });
        }
        match anneal_of(&self.meta, config) {
            None => Phase::Main,
            Some(anneal) if anneal.is_over(self.step) => Phase::Over,
            Some(anneal) => Phase::Annealing(anneal),
        }
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
        let mut examples = 0;
        for (index, chunk) in order.chunks(config.batch_size).enumerate() {
            self.step += 1;
            let step = self.step;
            let batch_started = Instant::now();
            let whole = self
                .examples
                .batch(self.split, &self.spec, chunk, config.batch_size)?;
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
            train_loss: round.loss_sum / (self.schedule.batches_per_epoch * round.epochs) as f64,
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

/// Each of `parts` (processes or replicas) needs at least one row of every batch.
fn check_batch_shared(config: &TrainConfig, parts: usize, what: &str) -> Result<(), TrainError> {
    if config.batch_size < parts {
        return Err(TrainError::Config(format!(
            "batch_size {} is smaller than the {parts} {what} sharing each batch",
            config.batch_size
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

fn patience_exhausted(meta: &CheckpointMeta, config: &TrainConfig) -> bool {
    let validations = meta
        .history
        .iter()
        .map(|r| (r.steps, r.validation.ndcg_at_10));
    last_real_improvement(validations, config.min_improvement)
        .is_some_and(|last| meta.steps_done >= last + config.patience_steps.max(1))
}

fn anneal_of(meta: &CheckpointMeta, config: &TrainConfig) -> Option<Anneal> {
    meta.anneal_from.map(|from_step| Anneal {
        from_step,
        steps: config.anneal_steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::SingleProcess;
    use crate::data::Interaction;
    use crate::train::evaluate;
    use crate::train::fixtures::{planted_pattern, small_config, train_alone};

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
        let schedule = Schedule::new(&config, Examples::new(&split, config.max_len).rows());
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

    /// Two replicas on threads train what one does: the same steps on halves of each batch, the gradients
    /// summed, so the runs differ only by reassociated sums. Adam divides each gradient by its own running size,
    /// so where a gradient is nearly zero that rounding can move a parameter by up to the learning rate; hence
    /// the losses and metrics must agree closely, nearly every parameter within 1e-6 and every one within 1e-2.
    #[test]
    fn replicas_on_threads_reach_the_parameters_of_one() {
        let split = planted_pattern(120);
        let config = |replicas| TrainConfig {
            max_epochs: 2,
            learning_rate: 5e-3,
            replicas,
            ..small_config()
        };
        let one = train_alone(&split, &config(1), None, false).expect("one replica trains");
        let two = train_alone(&split, &config(2), None, false).expect("two replicas train");
        assert_eq!(one.history.len(), 2);
        for (a, b) in one.history.iter().zip(&two.history) {
            // Each step's loss is an f32 sum of the shards' (one ulp near 3.7 is 2.4e-7).
            assert!((a.train_loss - b.train_loss).abs() < 1e-6, "{a:?} {b:?}");
            assert!((a.validation.ndcg_at_10 - b.validation.ndcg_at_10).abs() < 1e-9);
        }
        assert!(
            two.history.iter().all(|r| r.exchange_seconds > 0.0),
            "summed"
        );
        let (mut values, mut close, mut largest) = (0usize, 0usize, 0f32);
        for (name, (_, ours)) in &one.parameters.0 {
            for (a, b) in ours.iter().zip(&two.parameters.0[name].1) {
                values += 1;
                close += usize::from((a - b).abs() < 1e-6);
                largest = largest.max((a - b).abs());
            }
        }
        assert!(
            close * 100 >= values * 99,
            "{close} of {values} within 1e-6"
        );
        assert!(largest < 1e-2, "largest difference {largest}");
    }

    /// Replicas the run cannot use are refused before any thread starts, with the setting named.
    #[test]
    fn replicas_it_cannot_use_are_refused() {
        let split = planted_pattern(20);
        for (config, expected) in [
            (
                TrainConfig {
                    replicas: 2,
                    device: Device::Cuda,
                    ..small_config()
                },
                "replicas = 2 trains on CPU",
            ),
            (
                TrainConfig {
                    replicas: 33,
                    ..small_config()
                },
                "batch_size 32 is smaller than the 33 replicas sharing each batch",
            ),
        ] {
            let error = train_alone(&split, &config, None, false).expect_err("refused");
            assert!(
                matches!(&error, TrainError::Config(m) if m.contains(expected)),
                "{error}"
            );
        }
    }

    /// Once validation stops gaining, the learning rate falls to the floor over `anneal_steps`, the last epoch
    /// is validated, and the run ends long before its schedule would.
    #[test]
    fn a_plateau_anneals_then_ends() {
        let split = planted_pattern(60);
        let config = TrainConfig {
            max_epochs: 400,
            patience_steps: 6,
            min_improvement: 0.01,
            anneal_steps: 12,
            ..small_config()
        };
        let per_epoch = Schedule::new(&config, Examples::new(&split, config.max_len).rows())
            .batches_per_epoch as u64;
        let mut annealing = vec![];
        let trained = train(&split, &config, None, false, &SingleProcess, &mut |p| {
            if let Progress::Annealing {
                steps_done,
                steps,
                learning_rate,
                final_learning_rate,
            } = p
            {
                annealing.push((steps_done, steps, learning_rate, final_learning_rate));
            }
            ControlFlow::Continue(())
        })
        .expect("trains");
        let [(from, steps, start, end)] = annealing[..] else {
            panic!("annealed {annealing:?}");
        };
        assert_eq!(steps, 12);
        let floor = config.learning_rate * config.final_learning_rate_fraction;
        assert!(
            (end - floor).abs() < 1e-12 && start > end,
            "{start} → {end}"
        );
        let last = trained.history.last().expect("validated");
        assert!(
            last.steps >= from + 12 && last.steps < from + 12 + per_epoch,
            "ended at step {} after annealing from {from}",
            last.steps
        );
        assert!(last.epoch < 400, "ran the whole schedule");
        assert!(
            (last.learning_rate - floor).abs() < 1e-9,
            "{}",
            last.learning_rate
        );
        let annealed: Vec<f64> = trained
            .history
            .iter()
            .filter(|r| r.steps > from)
            .map(|r| r.learning_rate)
            .collect();
        assert!(
            annealed.len() >= 2 && annealed.windows(2).all(|w| w[1] <= w[0]),
            "{annealed:?}"
        );
        // The patience ran out on a validation `patience_steps` past the last real gain.
        let validations = trained
            .history
            .iter()
            .filter(|r| r.steps <= from)
            .map(|r| (r.steps, r.validation.ndcg_at_10));
        let gain = last_real_improvement(validations, 0.01).expect("validated");
        assert!(
            from >= gain + 6 && from < gain + 6 + per_epoch,
            "{gain} → {from}"
        );
    }

    /// With `anneal_steps` 0 the run ends where the patience does, at the rate the main schedule had.
    #[test]
    fn without_an_anneal_the_run_ends_with_the_patience() {
        let split = planted_pattern(60);
        let config = TrainConfig {
            max_epochs: 400,
            patience_steps: 6,
            anneal_steps: 0,
            ..small_config()
        };
        let per_epoch = Schedule::new(&config, Examples::new(&split, config.max_len).rows())
            .batches_per_epoch as u64;
        let mut annealed = false;
        let trained = train(&split, &config, None, false, &SingleProcess, &mut |p| {
            annealed |= matches!(p, Progress::Annealing { .. });
            ControlFlow::Continue(())
        })
        .expect("trains");
        assert!(!annealed);
        let last = trained.history.last().expect("validated");
        assert!(last.epoch < 400, "ran the whole schedule");
        let gain = last_real_improvement(
            trained
                .history
                .iter()
                .map(|r| (r.steps, r.validation.ndcg_at_10)),
            config.min_improvement,
        )
        .expect("validated");
        assert!(
            last.steps >= gain + 6 && last.steps < gain + 6 + per_epoch,
            "last real gain at {gain}, ended at {}",
            last.steps
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
        let examples = Examples::new(&split, config.max_len);
        let start = initial_state(&spec, &arch, config.seed).expect("initial state");
        let inputs = row_inputs(&spec);
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
        let order = shuffled(examples.rows(), config.seed, 1);
        for (step, chunk) in (1..=3).zip(order.chunks(b)) {
            let batch = examples.batch(&split, &spec, chunk, b).expect("batch");
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
}
