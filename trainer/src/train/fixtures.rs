//! Data and settings the training tests share.

use std::ops::ControlFlow;
use std::path::Path;

use super::{Progress, TrainConfig, TrainError, Trained, train};
use crate::collective::SingleProcess;
use crate::data::Interaction;
use crate::rng::SplitMix;
use crate::split::Split;

/// Users walk a cycle of 40 items (item `i` is followed by `i + 1`), each from a random start.
pub(crate) fn planted_pattern(users: usize) -> Split {
    let mut rng = SplitMix::new(3);
    let mut interactions = Vec::new();
    for user in 0..users {
        let start = rng.below(40);
        let length = 6 + rng.below(10);
        for step in 0..length {
            interactions.push(Interaction::from_good_ids(
                &format!("u{user}"),
                &format!("i{}", (start + step) % 40),
                step as i64,
            ));
        }
    }
    Split::leave_last_out(&interactions)
}

/// Trains as one process, to the end.
pub(crate) fn train_alone(
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

/// Resumes the run checkpointed in `dir` and trains it to the end; with the (epoch, batches) of every epoch it
/// started.
pub(crate) fn resume_to_the_end(
    split: &Split,
    config: &TrainConfig,
    dir: &Path,
) -> (Trained, Vec<(usize, usize)>) {
    let mut started = vec![];
    let trained = train(split, config, Some(dir), true, &SingleProcess, &mut |p| {
        if let Progress::EpochStarted { epoch, batches } = p {
            started.push((epoch, batches));
        }
        ControlFlow::Continue(())
    })
    .expect("resumes");
    (trained, started)
}

pub(crate) fn small_config() -> TrainConfig {
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
