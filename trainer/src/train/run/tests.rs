//! The training loop end to end on small planted data: learning, the schedule in steps, replicas, the patience,
//! the anneal and its batches, and the fused and split steps.

use super::*;
use crate::collective::SingleProcess;
use crate::data::Interaction;
use crate::train::evaluate;
use crate::train::fixtures::{planted_pattern, resume_to_the_end, small_config, train_alone};

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
        (
            TrainConfig {
                replicas: 2,
                anneal_batch_size: 1,
                ..small_config()
            },
            "anneal_batch_size 1 is smaller than the 2 replicas sharing each batch",
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
        // The whole anneal, whether it gains or not.
        anneal_must_gain_within: 1.0,
        ..small_config()
    };
    let per_epoch = Schedule::new(&config, Examples::new(&split, config.max_len).rows())
        .batches_per_epoch as u64;
    let mut annealing = vec![];
    let trained = train(&split, &config, None, false, &SingleProcess, &mut |p| {
        if let Progress::Annealing {
            steps_done,
            steps,
            batch_rows,
            learning_rate,
            final_learning_rate,
        } = p
        {
            assert_eq!(batch_rows, config.batch_size, "no anneal batch of its own");
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

/// With an anneal batch of its own, the anneal's epochs take batches of twice the rows (half the steps) and go
/// on from the state the main schedule reached; a run interrupted inside the anneal resumes with its batches
/// and ends as the uninterrupted run does.
#[test]
fn the_anneal_trains_on_batches_of_its_own_rows_and_resumes_with_them() {
    let split = planted_pattern(60);
    let config = TrainConfig {
        max_epochs: 400,
        batch_size: 8,
        anneal_batch_size: 16,
        patience_steps: 6,
        anneal_steps: 30,
        anneal_must_gain_within: 1.0,
        ..small_config()
    };
    let rows = Examples::new(&split, config.max_len).rows();
    assert!(rows > 16, "{rows} rows: too few for two batch sizes");
    // Every epoch's batches, and the step the anneal started from.
    let mut epochs = vec![];
    let mut from = None;
    let whole = tempfile::tempdir().expect("test step succeeds");
    let uninterrupted = train(
        &split,
        &config,
        Some(whole.path()),
        false,
        &SingleProcess,
        &mut |p| {
            match p {
                Progress::EpochStarted { batches, .. } => epochs.push((from.is_some(), batches)),
                Progress::Annealing {
                    steps_done,
                    batch_rows,
                    ..
                } => {
                    assert_eq!(batch_rows, 16);
                    from = Some(steps_done);
                }
                _ => {}
            }
            ControlFlow::Continue(())
        },
    )
    .expect("trains");
    let from = from.expect("annealed");
    assert!(epochs.iter().any(|&(annealing, _)| annealing));
    for (annealing, batches) in epochs {
        let expected = rows.div_ceil(if annealing { 16 } else { 8 });
        assert_eq!(batches, expected, "annealing: {annealing}");
    }
    // The anneal went on from the trained state: its loss continues the main schedule's, far below where
    // fresh parameters start.
    let loss = |pick: &dyn Fn(&&EpochRecord) -> bool| {
        uninterrupted
            .history
            .iter()
            .find(pick)
            .expect("an epoch")
            .train_loss
    };
    let (first, before, after) = (
        loss(&|_| true),
        uninterrupted
            .history
            .iter()
            .rev()
            .find(|r| r.steps <= from)
            .expect("main epochs")
            .train_loss,
        loss(&|r| r.steps > from),
    );
    assert!(
        after < before + (first - before) / 4.0,
        "loss {first} at the start, {before} before the anneal, {after} in it"
    );

    let parts = tempfile::tempdir().expect("test step succeeds");
    let interrupted = train(
        &split,
        &config,
        Some(parts.path()),
        false,
        &SingleProcess,
        &mut |p| match p {
            Progress::EpochFinished(record) if record.steps > from => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    )
    .expect("trains to the interruption");
    assert!(interrupted.history.len() < uninterrupted.history.len());
    let (resumed, started) = resume_to_the_end(&split, &config, parts.path());
    assert!(
        !started.is_empty() && started.iter().all(|&(_, b)| b == rows.div_ceil(16)),
        "{started:?}"
    );
    let figures = |history: &[EpochRecord]| -> Vec<(u64, f64, f64)> {
        history
            .iter()
            .map(|r| (r.steps, r.train_loss, r.validation.ndcg_at_10))
            .collect()
    };
    assert_eq!(figures(&resumed.history), figures(&uninterrupted.history));
    assert_eq!(resumed.parameters, uninterrupted.parameters);

    // Two replicas switch together: every anneal epoch of the leader takes the anneal's batches, and the run
    // ends its anneal as one replica does (a replica left on the main batches would sum gradients of another
    // graph and fail).
    let mut replicated = vec![];
    let mut replica_from = None;
    let two = train(
        &split,
        &TrainConfig {
            replicas: 2,
            ..config.clone()
        },
        None,
        false,
        &SingleProcess,
        &mut |p| {
            match p {
                Progress::EpochStarted { batches, .. } => {
                    replicated.push((replica_from.is_some(), batches))
                }
                Progress::Annealing { steps_done, .. } => replica_from = Some(steps_done),
                _ => {}
            }
            ControlFlow::Continue(())
        },
    )
    .expect("two replicas train");
    let replica_from = replica_from.expect("two replicas anneal");
    assert!(replicated.iter().any(|&(annealing, _)| annealing));
    for (annealing, batches) in replicated {
        assert_eq!(batches, rows.div_ceil(if annealing { 16 } else { 8 }));
    }
    let last = two.history.last().expect("validated").steps;
    assert!(
        last >= replica_from + 30,
        "ended at {last}, annealed from {replica_from}"
    );
}

/// An anneal that cannot beat the plateau (here the rate is too small to move any parameter, so every validation
/// equals the first) ends at the first validation past the share of it it had to gain within, not at its end.
#[test]
fn an_anneal_without_a_gain_gives_up_at_its_share() {
    let split = planted_pattern(60);
    let config = TrainConfig {
        max_epochs: 400,
        learning_rate: 1e-12,
        patience_steps: 6,
        anneal_steps: 40,
        anneal_must_gain_within: 0.5,
        ..small_config()
    };
    let per_epoch = Schedule::new(&config, Examples::new(&split, config.max_len).rows())
        .batches_per_epoch as u64;
    let (mut from, mut gave_up) = (None, None);
    let trained = train(&split, &config, None, false, &SingleProcess, &mut |p| {
        match p {
            Progress::Annealing { steps_done, .. } => from = Some(steps_done),
            Progress::AnnealGaveUp {
                steps_done,
                share,
                best_ndcg_at_10,
            } => gave_up = Some((steps_done, share, best_ndcg_at_10)),
            _ => {}
        }
        ControlFlow::Continue(())
    })
    .expect("trains");
    let from = from.expect("annealed");
    let (ended, share, best) = gave_up.expect("gave up");
    assert_eq!(share, 0.5);
    assert_eq!(best, trained.validation.ndcg_at_10);
    let last = trained.history.last().expect("validated").steps;
    assert_eq!(last, ended);
    // Validation after every epoch: the first at or past half the anneal's 40 steps.
    assert!(
        ended >= from + 20 && ended < from + 20 + per_epoch && ended < from + 40,
        "annealed from {from}, ended at {ended} ({per_epoch} steps an epoch)"
    );
    // Asked to gain within the whole anneal, the same run goes on to its end.
    let whole = train_alone(
        &split,
        &TrainConfig {
            anneal_must_gain_within: 1.0,
            ..config
        },
        None,
        false,
    )
    .expect("trains");
    assert!(whole.history.last().expect("validated").steps >= from + 40);
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
        .map(|u| Interaction::from_good_ids(&format!("u{u}"), &format!("i{u}"), 0))
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
    let mut fused = runner(&step_graph(&spec, &arch, b, true, 0, optimiser, false).expect("graph"));
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
