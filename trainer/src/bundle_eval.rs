//! Scoring any bundle on a data set's split: the bundle's item vocabulary is matched to the split's by item id,
//! histories are given to the bundle in its own indices (items it does not know are left out, as serving leaves
//! them out), and its scores are carried back to the split's items, those it does not know ranked last. With a
//! bundle trained on the same data the vocabularies are the same and the figures are the trainer's own.

use std::collections::BTreeMap;

use edgerec_core::{Bundle, MetricsAccumulator, RankingMetrics, Scorer, target_rank};
use edgerec_onnxruntime::OrtScorer;

use crate::runtime::RuntimeError;
use crate::split::{Split, Stage};
use crate::train::TrainError;

/// How much of the split the bundle's vocabulary covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// Split items the bundle knows.
    pub known_items: usize,
    pub split_items: usize,
    /// Evaluated targets the bundle does not know (each counts as ranked below every known item).
    pub unknown_targets: usize,
}

/// Ranks every evaluated user's target at `stage` with `bundle` on ONNX Runtime.
pub fn evaluate_bundle(
    split: &Split,
    bundle: &Bundle<'_>,
    stage: Stage,
    threads: usize,
) -> Result<(RankingMetrics, Coverage), TrainError> {
    let spec = &bundle.manifest.feature_spec;
    edgerec_onnxruntime::init().map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
    let mut scorer = OrtScorer::load(spec, bundle.model, threads)
        .map_err(|e| RuntimeError::Session(e.to_string()))?;
    // Split index (1-based, 0 padding) → bundle index.
    let to_bundle: Vec<Option<u32>> = std::iter::once(None)
        .chain(split.items.iter().map(|id| bundle.vocab.index_of(id)))
        .collect();
    let mut coverage = Coverage {
        known_items: to_bundle.iter().flatten().count(),
        split_items: split.items.len(),
        unknown_targets: 0,
    };
    let no_context = BTreeMap::new();
    let mut metrics = MetricsAccumulator::default();
    let mut scores = vec![f32::NEG_INFINITY; split.items.len() + 1];
    for user in &split.users {
        let Some((history, target)) = stage.history_and_target(user) else {
            continue;
        };
        if to_bundle[target as usize].is_none() {
            coverage.unknown_targets += 1;
        }
        let known: Vec<u32> = history
            .iter()
            .filter_map(|&item| to_bundle[item as usize])
            .collect();
        let inputs = spec
            .encode(&known, &no_context)
            .map_err(|e| RuntimeError::Run(format!("encoding a history: {e}")))?;
        let bundle_scores = scorer
            .score(&inputs)
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        for (score, index) in scores.iter_mut().zip(&to_bundle) {
            *score = index.map_or(f32::NEG_INFINITY, |i| bundle_scores[i as usize]);
        }
        metrics.add(target_rank(&scores, target, history));
    }
    Ok((metrics.finish(), coverage))
}
