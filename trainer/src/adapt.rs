//! Training defaults chosen from the data, by rules written here and never by a data set's name: the size of the
//! catalogue and how many training targets each item has. `edgerec train --print-config` shows each choice with
//! its reason.
//!
//! The rules, in short:
//! - **Schedule, in optimiser steps** (the same for every data set): 100 warm-up steps, validation at the first
//!   whole epoch past every 150 steps, anneal after 1,000 steps without a better validation NDCG@10 (over 1,000
//!   steps, given up halfway when none of its validations beats the best), the cosine ending at 35,000 steps.
//!   On ML-1M (about 155 steps an epoch) this is close to the epoch schedule it was tuned with; on a data set
//!   of a dozen steps an epoch it is hundreds of epochs, as many updates as the large data set gets. A patience of 25 epochs (400 steps) on small data sets was measured and rejected: ML latest-small
//!   learns through a long dip in validation and stopped in it (docs/benchmarks.md).
//! - **Dropout from sparsity**: 0.2 where items have at least [`DENSE_TARGETS_PER_ITEM`] training targets on
//!   average, 0.5 below (the rates published sequence recommenders use on dense MovieLens-1M and on sparse
//!   product data): with few examples per item the item table overfits first.
//! - **Weight decay from sparsity**: AdamW's 0.01 on dense data, 0.1 on sparse data, for the same reason.
//! - **Embedding size from the catalogue**: 64, smaller where the item table would pass
//!   [`ITEM_TABLE_BUDGET_BYTES`], so the bundle stays within what a browser downloads for one page; the
//!   feed-forward layer [`FFN_FACTOR`] times as wide.
//! - **Window from the histories**: `max_len` is the 90th percentile of the users' training history lengths,
//!   rounded up to a multiple of [`MAX_LEN_STEP`], at most 50: on logs of short histories attention then
//!   spans the window a history needs, not 50 positions.
//! - **Batch from the data's size**: 128 rows, or [`SMALL_DATA_BATCH_ROWS`] where an epoch holds fewer than
//!   [`SMALL_DATA_ROWS`] rows. A step of half the rows costs about half as much, and the best model comes after
//!   about as many steps, so small runs take about half the time; on ML-1M (about 19,800 rows) the large batch
//!   ends better (docs/benchmarks.md, "Half the batch on small data").
//! - **Softmax from the catalogue**: over the whole catalogue up to [`FULL_SOFTMAX_MAX_ITEMS`] items; above,
//!   against [`SAMPLED_NEGATIVES`] negatives drawn per batch, which keeps a step's cost bounded as the
//!   catalogue grows.

use serde::Serialize;

use crate::split::{Split, Stage};
use crate::train::TrainConfig;

/// Mean training targets per item at and above which the data counts as dense.
pub const DENSE_TARGETS_PER_ITEM: f64 = 100.0;
/// The most bytes the item table (items x dimension x 4) may take before the dimension is lowered.
pub const ITEM_TABLE_BUDGET_BYTES: usize = 2_500_000;
/// Catalogues up to this size train with the softmax over every item.
pub const FULL_SOFTMAX_MAX_ITEMS: usize = 8_192;
/// The window (`max_len`) is the 90th percentile of history lengths rounded up to a multiple of this.
pub const MAX_LEN_STEP: usize = 10;
/// The feed-forward layer's width as a multiple of the embedding size: the Transformer's 4×, measured on ML-1M
/// against 2× (test HR@10 0.3323 against 0.3252 at the same time to HR@10 0.30; docs/benchmarks.md).
pub const FFN_FACTOR: usize = 4;
/// Negatives per batch above [`FULL_SOFTMAX_MAX_ITEMS`].
pub const SAMPLED_NEGATIVES: usize = 2_048;
/// Data of fewer training rows an epoch than this (64 batches of 128 rows: about 400,000 training targets at a
/// 50-item window) trains in batches of [`SMALL_DATA_BATCH_ROWS`] rows.
pub const SMALL_DATA_ROWS: usize = 8_192;
/// Rows in a batch on small data.
pub const SMALL_DATA_BATCH_ROWS: usize = 64;

/// What the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DataShape {
    pub users: usize,
    pub items: usize,
    /// Training targets: each user's items before the validation target, less the first.
    pub targets: usize,
    /// The 90th percentile of the users' training sequence lengths.
    pub long_history: usize,
}

impl DataShape {
    pub fn of(split: &Split) -> Self {
        let mut lengths: Vec<usize> = split
            .users
            .iter()
            .map(|u| Stage::Validation.training_items(u).len())
            .collect();
        let targets = lengths.iter().map(|n| n.saturating_sub(1)).sum();
        lengths.sort_unstable();
        Self {
            users: split.users.len(),
            items: split.items.len(),
            targets,
            long_history: lengths
                .get(lengths.len().saturating_sub(1) * 9 / 10)
                .copied()
                .unwrap_or(0),
        }
    }

    pub fn targets_per_item(&self) -> f64 {
        self.targets as f64 / self.items.max(1) as f64
    }

    fn is_dense(&self) -> bool {
        self.targets_per_item() >= DENSE_TARGETS_PER_ITEM
    }
}

/// One setting the rules chose, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub setting: &'static str,
    pub value: serde_json::Value,
    pub reason: String,
}

/// The defaults for data of `shape`, and the reason for each setting the data decides.
pub fn adapted_config(shape: &DataShape) -> (TrainConfig, Vec<Choice>) {
    let mut config = TrainConfig::default();
    let mut choices = Vec::new();
    let mut choose = |setting: &'static str, value: serde_json::Value, reason: String| {
        choices.push(Choice {
            setting,
            value,
            reason,
        })
    };
    let per_item = shape.targets_per_item();
    let density = if shape.is_dense() {
        format!(
            "dense: {per_item:.0} training targets per item, at least {DENSE_TARGETS_PER_ITEM:.0}"
        )
    } else {
        format!(
            "sparse: {per_item:.1} training targets per item, fewer than {DENSE_TARGETS_PER_ITEM:.0}"
        )
    };
    let (dropout, decay): (f64, f64) = if shape.is_dense() {
        (0.2, 0.01)
    } else {
        (0.5, 0.1)
    };
    config.dropout = dropout as f32;
    config.optimiser.weight_decay = decay as f32;
    choose("dropout", dropout.into(), density.clone());
    choose("optimiser.weight_decay", decay.into(), density);

    let fits = ITEM_TABLE_BUDGET_BYTES / (4 * (shape.items + 1)).max(1);
    config.dim = (fits.min(64) / 8 * 8).max(8);
    config.ffn_dim = FFN_FACTOR * config.dim;
    choose(
        "dim",
        config.dim.into(),
        if config.dim == 64 {
            format!(
                "64: {} items x 64 x 4 bytes fit the item table's {ITEM_TABLE_BUDGET_BYTES}-byte budget",
                shape.items
            )
        } else {
            format!(
                "lowered from 64 so that {} items fit the item table's {ITEM_TABLE_BUDGET_BYTES}-byte budget",
                shape.items
            )
        },
    );
    choose(
        "ffn_dim",
        config.ffn_dim.into(),
        format!("{FFN_FACTOR} times the embedding size"),
    );

    if shape.items > FULL_SOFTMAX_MAX_ITEMS {
        config.sampled_negatives = SAMPLED_NEGATIVES;
        choose(
            "sampled_negatives",
            SAMPLED_NEGATIVES.into(),
            format!(
                "{} items, more than {FULL_SOFTMAX_MAX_ITEMS}: a softmax against {SAMPLED_NEGATIVES} negatives per batch",
                shape.items
            ),
        );
    } else {
        choose(
            "sampled_negatives",
            0.into(),
            format!(
                "{} items, at most {FULL_SOFTMAX_MAX_ITEMS}: the softmax runs over the whole catalogue",
                shape.items
            ),
        );
    }

    // A window longer than nearly every history buys nothing: short windows share rows (packing), but every
    // position of a row attends over the whole window, and serving reads `max_len` items a request.
    let default_len = config.max_len;
    config.max_len = shape
        .long_history
        .div_ceil(MAX_LEN_STEP)
        .saturating_mul(MAX_LEN_STEP)
        .clamp(MAX_LEN_STEP, default_len);
    choose(
        "max_len",
        config.max_len.into(),
        format!(
            "9 in 10 users have at most {} training items: the window is that, in steps of {MAX_LEN_STEP}, \
             at most {default_len}",
            shape.long_history
        ),
    );

    // Windows are packed into rows of `max_len` positions, so an epoch is about the targets in rows.
    let rows = shape.targets.div_ceil(config.max_len);
    let batch_reason = if rows < SMALL_DATA_ROWS {
        config.batch_size = SMALL_DATA_BATCH_ROWS;
        format!(
            "about {rows} rows an epoch, fewer than {SMALL_DATA_ROWS}: batches of {SMALL_DATA_BATCH_ROWS} rows, \
             half the cost of a step for about as many steps to the best model"
        )
    } else {
        format!(
            "about {rows} rows an epoch, at least {SMALL_DATA_ROWS}: batches of {} rows",
            config.batch_size
        )
    };
    choose("batch_size", config.batch_size.into(), batch_reason);

    // The schedule is the same in steps for every data set; what it amounts to here is worth showing.
    let per_epoch = rows.div_ceil(config.batch_size).max(1) as f64;
    let epochs = |steps: u64| steps as f64 / per_epoch;
    choose(
        "evaluate_every_steps",
        config.evaluate_every_steps.into(),
        format!(
            "about {per_epoch:.0} steps an epoch here: validation every {} epoch(s)",
            (config.evaluate_every_steps as f64 / per_epoch)
                .ceil()
                .max(1.0)
        ),
    );
    choose(
        "patience_steps",
        config.patience_steps.into(),
        format!(
            "anneal and stop after about {:.0} epochs without a {}% better validation NDCG@10",
            epochs(config.patience_steps),
            config.min_improvement * 100.0
        ),
    );
    choose(
        "max_steps",
        config.max_steps.into(),
        format!(
            "the learning rate's cosine ends after about {:.0} epochs",
            epochs(config.max_steps)
        ),
    );
    (config, choices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_data_keeps_the_settings_tuned_on_it_and_sparse_data_is_regularised_more() {
        // ML-1M's shape: 6,040 users, 3,706 items, about 988,000 training targets.
        let (dense, _) = adapted_config(&DataShape {
            users: 6_040,
            items: 3_706,
            targets: 988_000,
            long_history: 400,
        });
        assert_eq!(
            (
                dense.dropout,
                dense.dim,
                dense.sampled_negatives,
                dense.max_len
            ),
            (0.2, 64, 0, 50)
        );
        // About 19,800 rows an epoch: the large batch.
        assert_eq!(dense.batch_size, 128);
        assert_eq!(dense.optimiser.weight_decay, 0.01);
        // A shop's shape: 610 users, 9,700 items, 100,000 targets.
        let (sparse, choices) = adapted_config(&DataShape {
            users: 610,
            items: 9_700,
            targets: 99_000,
            long_history: 350,
        });
        assert_eq!((sparse.dropout, sparse.dim), (0.5, 64));
        assert_eq!(sparse.optimiser.weight_decay, 0.1);
        assert_eq!(sparse.sampled_negatives, SAMPLED_NEGATIVES);
        // About 2,000 rows an epoch: half the batch.
        assert_eq!(sparse.batch_size, SMALL_DATA_BATCH_ROWS);
        let reason = |setting: &str| {
            choices
                .iter()
                .find(|c| c.setting == setting)
                .map(|c| c.reason.clone())
                .unwrap_or_default()
        };
        assert!(reason("dropout").contains("10.2 training targets per item"));
        assert!(
            reason("patience_steps").contains("about 32 epochs"),
            "{}",
            reason("patience_steps")
        );
    }

    #[test]
    fn the_batch_halves_below_the_small_data_rows() {
        let batch = |targets: usize| {
            adapted_config(&DataShape {
                users: 1_000,
                items: 2_000,
                targets,
                long_history: 200,
            })
            .0
            .batch_size
        };
        // Windows of 50 positions: SMALL_DATA_ROWS rows hold 50 times as many targets.
        assert_eq!(batch(SMALL_DATA_ROWS * 50), 128);
        assert_eq!(batch((SMALL_DATA_ROWS - 1) * 50), SMALL_DATA_BATCH_ROWS);
    }

    #[test]
    fn a_large_catalogue_gets_a_smaller_item_table() {
        let (config, _) = adapted_config(&DataShape {
            users: 100_000,
            items: 60_000,
            targets: 5_000_000,
            long_history: 23,
        });
        assert_eq!((config.dim, config.ffn_dim), (8, 32));
        // Short histories: a window of 30, not 50 positions.
        assert_eq!(config.max_len, 30);
        assert!(config.dim * 4 * 60_000 <= ITEM_TABLE_BUDGET_BYTES);
    }
}
