//! The training loop: examples from the split (encoded by the feature specification, exactly as serving encodes a
//! history), seeded shuffling and dropout, the step graph on ONNX Runtime, validation NDCG@10 on the exported
//! graph on a schedule counted in steps, the anneal once validation stops gaining, checkpoints and resume.
//!
//! Everything random is derived from the seed and the epoch or step number, so a run resumed from a checkpoint
//! continues exactly as the uninterrupted run would have.
//!
//! Data parallelism ([`Collective`](crate::collective::Collective) with more than one process): every process builds the same batches and
//! trains on its shard of rows of each, with the loss weights of the whole batch; the split step sums the
//! gradients across processes, so every process applies the update of the whole batch. Dropout masks are drawn
//! by batch row, so the shards see the rows of the one-process masks. Rank 0 reads and writes checkpoints and
//! sends its state to the others at the start and after every validation; evaluation is shared out by user.
//!
//! The files: `config` (the settings), `batches` (windows, batches, shuffles, negatives, dropout), `run` (the loop
//! itself), `evaluate` (validation and test figures), `checkpoint` (save and resume) and `agree` (what the
//! processes of a job must share).

use std::path::PathBuf;

use edgerec_core::{
    FEATURE_SPEC_VERSION, FeatureSpec, OutputSpec, Padding, RankingMetrics, SequenceSpec,
};
use serde::{Deserialize, Serialize};

use crate::model::{Architecture, BuildError, Parameters};
use crate::runtime::RuntimeError;
use crate::split::Split;

mod agree;
mod batches;
mod checkpoint;
mod config;
mod evaluate;
#[cfg(test)]
pub(crate) mod fixtures;
mod run;

pub use config::TrainConfig;
pub use evaluate::{evaluate, evaluate_model};
pub use run::train;

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
    /// The patience ran out after `steps_done` steps: the learning rate falls from `learning_rate` to
    /// `final_learning_rate` over `steps` steps of `batch_rows` rows, then the run ends.
    Annealing {
        steps_done: u64,
        steps: u64,
        batch_rows: usize,
        learning_rate: f64,
        final_learning_rate: f64,
    },
    /// No validation in the first `share` of the anneal beat the best before it, `best_ndcg_at_10`: the run
    /// ends after `steps_done` steps.
    AnnealGaveUp {
        steps_done: u64,
        share: f64,
        best_ndcg_at_10: f64,
    },
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
