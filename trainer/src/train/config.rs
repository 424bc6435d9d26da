//! Everything that decides a training run, with defaults that work without per-dataset tuning.

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::model::Architecture;
use crate::runtime::Device;
use crate::schedule::half_cosine;
use crate::step::AdamW;

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
    /// Rows in a batch while the learning rate follows the main schedule.
    pub batch_size: usize,
    /// Rows in a batch during the anneal (0: `batch_size`). A larger batch lowers the gradient noise as the falling
    /// rate does; its larger steps cost more only in the anneal (docs/benchmarks.md: not the default).
    pub anneal_batch_size: usize,
    /// The run's length in optimiser steps: the learning rate's cosine ends here. Early stopping usually ends the
    /// run sooner. Counted in steps, not epochs, so that a small data set (a dozen steps an epoch) gets as many
    /// updates as a large one.
    pub max_steps: u64,
    /// A cap in epochs besides `max_steps` (the schedule then ends at the cap).
    pub max_epochs: usize,
    /// Validation runs after the first whole epoch at or past each multiple of this many steps.
    pub evaluate_every_steps: u64,
    /// Steps without a validation NDCG@10 better by `min_improvement` before the learning rate anneals.
    pub patience_steps: u64,
    /// The relative gain in validation NDCG@10 that restarts the patience (a smaller gain is still kept as the
    /// best model).
    pub min_improvement: f64,
    /// Once the patience runs out, the learning rate falls from where it is to the floor over this many steps,
    /// then the run ends (0: it ends at once).
    pub anneal_steps: u64,
    /// The share of the anneal by which one of its validations must beat the best before it; otherwise the run
    /// ends at the first validation past that share (1: the anneal always runs to its end). Where the plateau
    /// was already overfitting, the falling rate does not bring validation back, and the rest would be wasted.
    pub anneal_must_gain_within: f64,
    pub learning_rate: f64,
    /// Linear warm-up over this many steps, then the learning rate decays with a cosine to
    /// `final_learning_rate_fraction` of its peak at the end of the schedule.
    pub warmup_steps: u64,
    pub final_learning_rate_fraction: f64,
    pub optimiser: AdamW,
    pub seed: u64,
    /// ONNX Runtime intra-op threads of each replica (0: all cores, shared out between the replicas and the
    /// processes of a job on one machine).
    pub threads: usize,
    /// Replicas of the training loop on threads of this process, each training its share of every batch
    /// (0: one per core on CPU in a process of its own, while each keeps at least [`MIN_REPLICA_ROWS`] rows of a
    /// batch; 1 on CUDA and in an MPI job, whose processes already share the cores out).
    pub replicas: usize,
    pub device: Device,
}

/// The fewest rows of a batch an automatic replica trains: below, a step's fixed costs outweigh the core.
pub const MIN_REPLICA_ROWS: usize = 32;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_len: 50,
            dim: 64,
            blocks: 2,
            ffn_dim: 256,
            dropout: 0.2,
            sampled_negatives: 0,
            batch_size: 128,
            anneal_batch_size: 0,
            max_steps: 35_000,
            max_epochs: 10_000,
            evaluate_every_steps: 150,
            patience_steps: 1_000,
            min_improvement: 0.01,
            anneal_steps: 1_000,
            anneal_must_gain_within: 0.5,
            // Measured against 1e-3 with the same schedule on ML-1M, ML-100k and Amazon Instant Video: as good or
            // better on each, and a third to half of the steps (docs/benchmarks.md).
            learning_rate: 2e-3,
            warmup_steps: 100,
            final_learning_rate_fraction: 0.1,
            optimiser: AdamW::default(),
            seed: 42,
            threads: 0,
            replicas: 0,
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

    pub(super) fn check(&self) -> Result<(), TrainError> {
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
        if !(self.min_improvement >= 0.0 && self.min_improvement.is_finite()) {
            return bad(format!(
                "min_improvement must be zero or positive, not {}",
                self.min_improvement
            ));
        }
        if !(self.anneal_must_gain_within > 0.0 && self.anneal_must_gain_within <= 1.0) {
            return bad(format!(
                "anneal_must_gain_within must be in (0, 1], not {}",
                self.anneal_must_gain_within
            ));
        }
        if !(0.0..=1.0).contains(&self.final_learning_rate_fraction) {
            return bad("final_learning_rate_fraction must be in [0, 1]".into());
        }
        Ok(())
    }

    /// Rows in a batch: the anneal's while `annealing`, the main schedule's otherwise.
    pub fn batch_rows(&self, annealing: bool) -> usize {
        if annealing && self.anneal_batch_size > 0 {
            self.anneal_batch_size
        } else {
            self.batch_size
        }
    }

    /// The smaller of the two batches, which every replica and process must share.
    pub(super) fn smallest_batch(&self) -> usize {
        self.batch_rows(false).min(self.batch_rows(true))
    }

    /// Replicas of the training loop in one of a job's `processes`: what [`TrainConfig::replicas`] says.
    pub fn replicas_in(&self, processes: usize) -> usize {
        match (self.replicas, self.device) {
            (0, Device::Cpu) if processes == 1 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                cores.min(self.smallest_batch() / MIN_REPLICA_ROWS).max(1)
            }
            (0, _) => 1,
            (replicas, _) => replicas,
        }
    }

    /// Threads for one of `local_processes` processes (or replicas) on this machine.
    pub(super) fn threads(&self, local_processes: usize) -> usize {
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
        let floor = self.learning_rate * self.final_learning_rate_fraction;
        half_cosine(self.learning_rate, floor, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        assert!(TrainConfig::default().check().is_ok());
        for (config, named) in [
            (
                TrainConfig {
                    min_improvement: -0.01,
                    ..TrainConfig::default()
                },
                "min_improvement",
            ),
            (
                TrainConfig {
                    min_improvement: f64::NAN,
                    ..TrainConfig::default()
                },
                "min_improvement",
            ),
            (
                TrainConfig {
                    learning_rate: 0.0,
                    ..TrainConfig::default()
                },
                "learning_rate",
            ),
            (
                TrainConfig {
                    dropout: 1.0,
                    ..TrainConfig::default()
                },
                "dropout",
            ),
            (
                TrainConfig {
                    anneal_must_gain_within: 0.0,
                    ..TrainConfig::default()
                },
                "anneal_must_gain_within",
            ),
            (
                TrainConfig {
                    anneal_must_gain_within: 1.5,
                    ..TrainConfig::default()
                },
                "anneal_must_gain_within",
            ),
        ] {
            let error = config.check().expect_err(named).to_string();
            assert!(error.contains(named), "{error}");
        }
        // No anneal is a valid choice: the run ends when the patience does.
        assert!(
            TrainConfig {
                anneal_steps: 0,
                min_improvement: 0.0,
                ..TrainConfig::default()
            }
            .check()
            .is_ok()
        );
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
}
