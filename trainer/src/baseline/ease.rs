//! EASE (Steck, 2019): a linear item-to-item model with a closed form. With `G = XᵀX` the item co-occurrence
//! counts of the training part (X: users × items, 1 where a user had an item) and `P = (G + λI)⁻¹`, the weights
//! are `B = I − P · diag(1 / diag(P))` with a zero diagonal; a user's scores are the sum of the rows of `B` of the
//! items in the history. The solve is dense (items × items), so the catalogue size is bounded.

use faer::Mat;
use faer::linalg::solvers::DenseSolveCore as _;

use crate::split::{Split, Stage};

/// The L2 penalty: the value the method's paper found best on its larger data sets and the usual default since;
/// one rule for every data set, not tuned per data set.
pub const EASE_LAMBDA: f64 = 500.0;
/// Largest catalogue EASE is fitted for: two dense items × items matrices of f64 take 4 GiB at this size.
pub const EASE_MAX_ITEMS: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum EaseError {
    #[error(
        "EASE solves a dense {items} × {items} system; catalogues of more than {EASE_MAX_ITEMS} items are not supported"
    )]
    TooManyItems { items: usize },
    #[error("the item co-occurrence matrix plus the penalty is not positive definite: {0}")]
    NotPositiveDefinite(String),
}

#[derive(Debug, Clone)]
pub struct Ease {
    /// Row-major `n × n` weights, `n` the item count plus the padding index 0.
    weights: Vec<f32>,
    n: usize,
    tie_break: Vec<f32>,
}

impl Ease {
    pub fn fit(split: &Split, stage: Stage, lambda: f64) -> Result<Self, EaseError> {
        let n = split.items.len() + 1;
        if n - 1 > EASE_MAX_ITEMS {
            return Err(EaseError::TooManyItems { items: n - 1 });
        }
        let mut gram = Mat::<f64>::zeros(n, n);
        for user in &split.users {
            let items = super::distinct(stage.training_items(user));
            for &a in &items {
                for &b in &items {
                    gram[(a as usize, b as usize)] += 1.0;
                }
            }
        }
        for i in 0..n {
            gram[(i, i)] += lambda;
        }
        let inverse = gram
            .as_ref()
            .llt(faer::Side::Lower)
            .map_err(|e| EaseError::NotPositiveDefinite(format!("{e:?}")))?
            .inverse();
        drop(gram);
        let mut weights = vec![0f32; n * n];
        for j in 0..n {
            let pivot = inverse[(j, j)];
            for i in 0..n {
                if i != j {
                    weights[i * n + j] = (-inverse[(i, j)] / pivot) as f32;
                }
            }
        }
        // Index 0 is padding: it never scores.
        weights[..n].fill(0.0);
        Ok(Self {
            weights,
            n,
            tie_break: super::tie_break(split, stage),
        })
    }

    pub fn score(&self, history: &[u32]) -> Vec<f32> {
        let mut scores = self.tie_break.clone();
        for item in super::distinct(history) {
            let row = &self.weights[item as usize * self.n..(item as usize + 1) * self.n];
            for (score, weight) in scores.iter_mut().zip(row) {
                *score += weight;
            }
        }
        scores
    }
}
