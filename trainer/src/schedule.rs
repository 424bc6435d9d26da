//! How long a run trains and when it validates, counted in optimiser steps: an epoch of a small data set is a
//! dozen steps and one of a large data set thousands, so a schedule counted in epochs stops the first before it
//! has learnt and validates the second too rarely.
//!
//! A run ends in two phases. While validation keeps improving, the learning rate follows a long cosine. Once
//! NDCG@10 has not improved by a real margin for `patience_steps`, the rate anneals from where it is to the floor
//! over `anneal_steps` and the run ends: the drop in learning rate is what turns a noisy plateau into the best
//! model, and waiting for the long cosine to get there costs hours on large data. An anneal none of whose
//! validations beats the best before it within its first part (`anneal_must_gain_within`) ends there: it started
//! from a plateau that was already overfitting, which the falling rate does not bring back.

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
        let (batches_per_epoch, epochs_per_evaluation) = epochs_of(config, windows, false);
        let per_epoch = batches_per_epoch as u64;
        let last_epoch = config
            .max_epochs
            .min(config.max_steps.div_ceil(per_epoch) as usize)
            .max(1);
        Self {
            batches_per_epoch,
            epochs_per_evaluation,
            last_epoch,
            total_steps: last_epoch as u64 * per_epoch,
        }
    }

    /// The schedule of the anneal, whose batches hold [`TrainConfig::batch_rows`] rows: as many steps an epoch
    /// as those take and validation by the same count of steps, with the main schedule's last epoch and the
    /// length of its cosine (where the anneal's learning rate starts from).
    pub fn annealing(self, config: &TrainConfig, windows: usize) -> Self {
        let (batches_per_epoch, epochs_per_evaluation) = epochs_of(config, windows, true);
        Self {
            batches_per_epoch,
            epochs_per_evaluation,
            ..self
        }
    }

    /// Whether validation runs after `epoch` (1-based): every `epochs_per_evaluation` epochs, and after the last.
    pub fn evaluates_after(&self, epoch: usize) -> bool {
        epoch.is_multiple_of(self.epochs_per_evaluation) || epoch >= self.last_epoch
    }
}

/// Batches an epoch of `windows` rows in the phase (`annealing` or not), and the fewest whole epochs between
/// validations that make at least `evaluate_every_steps` steps.
fn epochs_of(config: &TrainConfig, windows: usize, annealing: bool) -> (usize, usize) {
    let per_epoch = windows.div_ceil(config.batch_rows(annealing).max(1)).max(1);
    let between = config
        .evaluate_every_steps
        .div_ceil(per_epoch as u64)
        .max(1);
    (per_epoch, between as usize)
}

/// The value a half cosine takes `progress` (0 to 1) of the way from `from` down to `to`: the shape of both the
/// main schedule's decay and the anneal.
pub(crate) fn half_cosine(from: f64, to: f64, progress: f64) -> f64 {
    to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// The step of the last validation that beat the one that last reset the patience by at least `min_improvement`
/// (relative), given validations as (step, NDCG@10) in order. A smaller gain is still the best model, but it
/// does not restart the patience: validation noise alone would otherwise keep a run going for thousands of
/// steps on a plateau.
pub fn last_real_improvement(
    validations: impl IntoIterator<Item = (u64, f64)>,
    min_improvement: f64,
) -> Option<u64> {
    let mut reference: Option<(u64, f64)> = None;
    for (step, ndcg) in validations {
        if reference.is_none_or(|(_, best)| ndcg > best * (1.0 + min_improvement)) {
            reference = Some((step, ndcg));
        }
    }
    reference.map(|(step, _)| step)
}

/// The last phase of a run: from `from_step`, the learning rate falls with a half cosine from where the main
/// schedule had it to the schedule's floor over `steps` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anneal {
    pub from_step: u64,
    pub steps: u64,
}

impl Anneal {
    /// The learning rate at optimiser step `step` (past `from_step`) of a run whose main schedule is `total`.
    pub fn learning_rate_at(&self, config: &TrainConfig, step: u64, total: u64) -> f64 {
        let start = config.learning_rate_at(self.from_step, total);
        let floor = (config.learning_rate * config.final_learning_rate_fraction).min(start);
        let progress =
            (step.saturating_sub(self.from_step) as f64 / self.steps.max(1) as f64).min(1.0);
        half_cosine(start, floor, progress)
    }

    /// Whether the anneal is over once `step` steps are done.
    pub fn is_over(&self, step: u64) -> bool {
        step >= self.from_step + self.steps
    }

    /// Given validations as (step, NDCG@10) in order: the best NDCG@10 before the anneal, when the last
    /// validation is at or past `share` of the anneal and none of the anneal's beat that best.
    pub fn gave_up(
        &self,
        validations: impl IntoIterator<Item = (u64, f64)>,
        share: f64,
    ) -> Option<f64> {
        let (mut best, mut best_during, mut last) = (f64::NEG_INFINITY, f64::NEG_INFINITY, None);
        for (step, ndcg) in validations {
            if step <= self.from_step {
                best = best.max(ndcg);
            } else {
                best_during = best_during.max(ndcg);
            }
            last = Some(step);
        }
        let decided = last? >= self.from_step + (self.steps as f64 * share).ceil() as u64;
        (decided && best_during <= best).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_real_gain_restarts_the_patience() {
        let validations = [
            (100, 0.10),
            (200, 0.12),
            (300, 0.1205),
            (400, 0.1211),
            (500, 0.1213),
        ];
        // 0.1205 and 0.1211 are within 1% of 0.12; 0.1213 is more than 1% above it.
        assert_eq!(last_real_improvement(validations, 0.01), Some(500));
        assert_eq!(
            last_real_improvement(validations[..4].iter().copied(), 0.01),
            Some(200)
        );
        // With no margin, every gain counts.
        assert_eq!(
            last_real_improvement(validations[..4].iter().copied(), 0.0),
            Some(400)
        );
        // A drop never counts.
        assert_eq!(last_real_improvement([(1, 0.2), (2, 0.1)], 0.0), Some(1));
        assert_eq!(last_real_improvement([], 0.01), None);
    }

    #[test]
    fn the_anneal_falls_from_the_current_rate_to_the_floor() {
        let config = TrainConfig {
            learning_rate: 1.0,
            warmup_steps: 10,
            final_learning_rate_fraction: 0.1,
            ..TrainConfig::default()
        };
        let anneal = Anneal {
            from_step: 60,
            steps: 20,
        };
        // The main cosine has 0.55 at step 60 of 110.
        assert!((anneal.learning_rate_at(&config, 60, 110) - 0.55).abs() < 1e-12);
        assert!((anneal.learning_rate_at(&config, 70, 110) - 0.325).abs() < 1e-12);
        assert!((anneal.learning_rate_at(&config, 80, 110) - 0.1).abs() < 1e-12);
        assert!((anneal.learning_rate_at(&config, 95, 110) - 0.1).abs() < 1e-12);
        assert!(!anneal.is_over(79) && anneal.is_over(80));
        // Already at the floor: it stays there.
        let late = Anneal {
            from_step: 110,
            steps: 20,
        };
        assert!((late.learning_rate_at(&config, 120, 110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn an_anneal_gives_up_only_past_its_share_and_only_without_a_gain() {
        let anneal = Anneal {
            from_step: 300,
            steps: 100,
        };
        // The best before the anneal is 0.12 at step 200; the anneal's validations come at 330, 360, 390.
        let flat = [
            (100, 0.10),
            (200, 0.12),
            (300, 0.11),
            (330, 0.115),
            (360, 0.12),
        ];
        // Before half the anneal (step 350) it goes on.
        assert_eq!(anneal.gave_up(flat[..4].iter().copied(), 0.5), None);
        // At 360, past half, nothing beat 0.12 (equal is no gain): it gives up.
        assert_eq!(anneal.gave_up(flat, 0.5), Some(0.12));
        // Asked to gain within the whole anneal, it goes on.
        assert_eq!(anneal.gave_up(flat, 1.0), None);
        // A gain anywhere in the anneal keeps it going to its end.
        let gained = [
            (200, 0.12),
            (300, 0.11),
            (330, 0.121),
            (360, 0.118),
            (390, 0.119),
        ];
        assert_eq!(anneal.gave_up(gained, 0.5), None);
        assert_eq!(anneal.gave_up([], 0.5), None);
    }

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
    fn the_anneal_takes_its_own_batches_and_keeps_the_main_cosine() {
        let doubled = TrainConfig {
            anneal_batch_size: 200,
            ..config(35_000, 10_000)
        };
        let main = Schedule::new(&doubled, 17_550);
        let anneal = main.annealing(&doubled, 17_550);
        assert_eq!(
            (main.batches_per_epoch, anneal.batches_per_epoch),
            (176, 88)
        );
        // 150 steps: every epoch of 176 steps, every second of 88.
        assert_eq!(
            (main.epochs_per_evaluation, anneal.epochs_per_evaluation),
            (1, 2)
        );
        assert_eq!(
            (anneal.last_epoch, anneal.total_steps),
            (main.last_epoch, main.total_steps)
        );
        // Without an anneal batch, the anneal's schedule is the main one.
        let same = config(35_000, 10_000);
        let main = Schedule::new(&same, 17_550);
        assert_eq!(main.annealing(&same, 17_550), main);
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
