//! How long a run trains and when it validates, counted in optimiser steps: an epoch of a small data set is a
//! dozen steps and one of a large data set thousands, so a schedule counted in epochs stops the first before it
//! has learnt and validates the second too rarely.

use crate::train::TrainConfig;

/// A run's schedule over its training windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub batches_per_epoch: usize,
    /// Whole epochs between validations: the fewest that make at least `evaluate_every_steps` steps.
    pub epochs_per_evaluation: usize,
    /// The last epoch the run may train: the first that reaches `max_steps`, or `max_epochs`.
    pub last_epoch: usize,
    /// Steps to the end of the last epoch, where the learning rate's cosine ends.
    pub total_steps: u64,
}

impl Schedule {
    pub fn new(config: &TrainConfig, windows: usize) -> Self {
        let batches_per_epoch = windows.div_ceil(config.batch_size.max(1)).max(1);
        let per_epoch = batches_per_epoch as u64;
        let last_epoch = config
            .max_epochs
            .min(config.max_steps.div_ceil(per_epoch) as usize)
            .max(1);
        Self {
            batches_per_epoch,
            epochs_per_evaluation: config.evaluate_every_steps.div_ceil(per_epoch).max(1) as usize,
            last_epoch,
            total_steps: last_epoch as u64 * per_epoch,
        }
    }

    /// Whether validation runs after `epoch` (1-based): every `epochs_per_evaluation` epochs, and after the last.
    pub fn evaluates_after(&self, epoch: usize) -> bool {
        epoch.is_multiple_of(self.epochs_per_evaluation) || epoch >= self.last_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_steps: u64, max_epochs: usize) -> TrainConfig {
        TrainConfig {
            batch_size: 100,
            max_steps,
            max_epochs,
            evaluate_every_steps: 150,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn small_data_trains_as_many_steps_as_large_data() {
        // 12 steps an epoch: validation every 13 epochs, the run as long in steps as one of 176-step epochs.
        let small = Schedule::new(&config(35_000, 10_000), 1_150);
        assert_eq!(small.batches_per_epoch, 12);
        assert_eq!(small.epochs_per_evaluation, 13);
        assert_eq!(small.last_epoch, 2_917);
        assert_eq!(small.total_steps, 35_004);
        let large = Schedule::new(&config(35_000, 10_000), 17_550);
        assert_eq!(large.epochs_per_evaluation, 1);
        assert_eq!(large.last_epoch, 199);
        assert!(
            small.evaluates_after(13) && !small.evaluates_after(14) && small.evaluates_after(2_917)
        );
    }

    #[test]
    fn an_epoch_cap_ends_the_schedule_and_is_always_validated() {
        let capped = Schedule::new(&config(35_000, 20), 1_150);
        assert_eq!((capped.last_epoch, capped.total_steps), (20, 240));
        assert!(capped.evaluates_after(20) && !capped.evaluates_after(19));
        // Fewer windows than a batch: one step an epoch.
        let tiny = Schedule::new(&config(1_000, 10_000), 7);
        assert_eq!(
            (
                tiny.batches_per_epoch,
                tiny.epochs_per_evaluation,
                tiny.last_epoch
            ),
            (1, 150, 1_000)
        );
    }
}
