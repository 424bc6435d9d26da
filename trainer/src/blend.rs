//! What the trainer exports: the sequence model alone, or blended with two cheap terms inside the ONNX graph, or
//! those terms without the model, whichever ranks the validation targets best. Every ranker (ONNX Runtime, tract
//! natively and in Wasm) runs the result, because it is one ordinary graph.
//!
//! The two terms, from the user's window (the last `max_len` items the model sees):
//! - **transitions** (T): for each of the last [`TRANSITION_WINDOW`] items, its successors' shares of what
//!   followed it in training, weighted 1, 1/2, 1/3, ... from the most recent back: the transitions baseline;
//! - **co-occurrence** (C): the mean over the window's items of their item-kNN similarities: the item-kNN
//!   baseline, as a mean so its scale does not grow with the history.
//!
//! Each item keeps its K strongest successors or neighbours ([`neighbours_kept`]), in two `[items, K]` tables
//! (ids and weights) that the graph gathers by the window's ids and adds onto the scores with
//! `ScatterElements(reduction = "add")`. Scores are `model + α·T + β·C`; without the model, a popularity
//! tie-break far below any term replaces it. The candidates' validation figures are computed by a mirror of the
//! graph in Rust over the model's ONNX Runtime scores (one model run per user for every candidate); the chosen
//! blend is then exported and scored on the test targets by ONNX Runtime itself.

use std::collections::BTreeMap;

use edgerec_core::{
    ElemType, FeatureSpec, MetricsAccumulator, Padding, RankingMetrics, Scorer, TensorData,
    target_rank,
};
use edgerec_onnxruntime::OrtScorer;
use serde::Serialize;

use crate::baseline::{ItemKnn, TRANSITION_WINDOW, Transitions, tie_break};
use crate::graph::{Attr, GraphBuilder, Value};
use crate::model::{Architecture, BuildError, Parameters, serving_scores};
use crate::runtime::RuntimeError;
use crate::split::{Split, Stage};
use crate::train::TrainError;

/// The most successors or neighbours an item keeps in the exported tables: enough to hold nearly all of a
/// transition share or a neighbourhood's similarity on our data sets.
pub const EXPORT_NEIGHBOURS: usize = 20;
/// The fewest kept, however large the catalogue.
pub const MIN_EXPORT_NEIGHBOURS: usize = 4;
/// The most bytes one term's tables (ids and weights, 4 bytes each per entry) may add to the bundle.
pub const TERM_BUDGET_BYTES: usize = 1_500_000;

/// K for a catalogue of `rows` model indices: [`EXPORT_NEIGHBOURS`], fewer where a term's tables would pass
/// [`TERM_BUDGET_BYTES`] (from about 9,400 items), never below [`MIN_EXPORT_NEIGHBOURS`].
pub fn neighbours_kept(rows: usize) -> usize {
    (TERM_BUDGET_BYTES / (8 * rows.max(1))).clamp(MIN_EXPORT_NEIGHBOURS, EXPORT_NEIGHBOURS)
}

/// The weights the candidates try for each term: from a nudge to a term that dominates the model's logits.
pub const TERM_WEIGHTS: [f32; 6] = [0.0, 0.25, 1.0, 4.0, 16.0, 64.0];

/// One way of scoring: `model + transitions·T + co_occurrence·C`, the model's logits replaced by a popularity
/// tie-break where `model` is false.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Blend {
    pub model: bool,
    pub transitions: f32,
    pub co_occurrence: f32,
}

impl Blend {
    pub const MODEL: Blend = Blend {
        model: true,
        transitions: 0.0,
        co_occurrence: 0.0,
    };

    /// The candidates in the order ties are settled (the earlier wins): the model alone, the model with the
    /// terms, the terms without the model.
    pub fn candidates() -> Vec<Blend> {
        let mut candidates = vec![Blend::MODEL];
        for &transitions in &TERM_WEIGHTS {
            for &co_occurrence in &TERM_WEIGHTS {
                if transitions > 0.0 || co_occurrence > 0.0 {
                    candidates.push(Blend {
                        model: true,
                        transitions,
                        co_occurrence,
                    });
                }
            }
        }
        for (transitions, co_occurrence) in
            [(1.0, 0.0), (0.0, 1.0), (1.0, 0.25), (1.0, 1.0), (1.0, 4.0)]
        {
            candidates.push(Blend {
                model: false,
                transitions,
                co_occurrence,
            });
        }
        candidates
    }

    /// A name for reports, e.g. `model + 4 × transitions`.
    pub fn name(&self) -> String {
        let mut parts = Vec::new();
        if self.model {
            parts.push("model".to_string());
        }
        for (weight, term) in [
            (self.transitions, "transitions"),
            (self.co_occurrence, "co-occurrence"),
        ] {
            match weight {
                0.0 => {}
                1.0 => parts.push(term.to_string()),
                w => parts.push(format!("{w} × {term}")),
            }
        }
        if parts.is_empty() {
            "popularity".into()
        } else {
            parts.join(" + ")
        }
    }
}

/// Per item (model index; row 0 is padding), its `k` strongest successors or neighbours and their weights,
/// padded with `(0, 0.0)`, which adds nothing to any eligible item.
#[derive(Debug, Clone)]
pub struct NeighbourTable {
    k: usize,
    ids: Vec<u32>,
    weights: Vec<f32>,
}

impl NeighbourTable {
    fn from_lists(k: usize, lists: impl Iterator<Item = Vec<(u32, f32)>>) -> Self {
        let (mut ids, mut weights) = (Vec::new(), Vec::new());
        for mut list in lists {
            list.sort_unstable_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            list.resize(k, (0, 0.0));
            ids.extend(list.iter().map(|&(id, _)| id));
            weights.extend(list.iter().map(|&(_, weight)| weight));
        }
        Self { k, ids, weights }
    }

    fn row(&self, item: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let start = item as usize * self.k;
        let end = start + self.k;
        self.ids[start..end]
            .iter()
            .copied()
            .zip(self.weights[start..end].iter().copied())
    }

    fn rows(&self) -> i64 {
        (self.ids.len() / self.k) as i64
    }

    /// The two tables as graph constants. Ids are stored as float32, exact below 2^24, at half the bytes of
    /// int64, and cast back in the graph.
    fn constants(&self, g: &mut GraphBuilder, name: &str) -> (Value, Value) {
        let dims = [self.rows(), self.k as i64];
        let ids = g.f32_tensor(
            &format!("{name}_items"),
            &dims,
            self.ids.iter().map(|&id| id as f32).collect(),
        );
        let weights = g.f32_tensor(&format!("{name}_weights"), &dims, self.weights.clone());
        (ids, weights)
    }
}

/// The terms fitted on the training part of a stage.
#[derive(Debug, Clone)]
pub struct Terms {
    transitions: NeighbourTable,
    co_occurrence: NeighbourTable,
    tie_break: Vec<f32>,
}

impl Terms {
    pub fn fit(split: &Split, stage: Stage) -> Self {
        let items = split.items.len() as u32 + 1;
        let k = neighbours_kept(items as usize);
        let transitions = Transitions::fit(split, stage);
        let knn = ItemKnn::fit(split, stage);
        Self {
            transitions: NeighbourTable::from_lists(k, (0..items).map(|i| transitions.shares(i))),
            co_occurrence: NeighbourTable::from_lists(
                k,
                (0..items).map(|i| knn.neighbours(i).to_vec()),
            ),
            tie_break: tie_break(split, stage),
        }
    }

    /// Adds `blend`'s terms for the model input `window` (the left-padded ids the graph sees) onto `scores`, in
    /// the order and float arithmetic of the exported graph.
    fn add(&self, blend: &Blend, window: &[u32], scores: &mut [f32]) {
        if blend.transitions != 0.0 {
            let recent = &window[window.len() - TRANSITION_WINDOW.min(window.len())..];
            for (position, &item) in recent.iter().enumerate() {
                let weight = age_weight(blend.transitions, recent.len() - 1 - position);
                for (next, share) in self.transitions.row(item) {
                    scores[next as usize] += share * weight;
                }
            }
        }
        if blend.co_occurrence != 0.0 {
            let present = window.iter().filter(|&&item| item > 0).count() as f32;
            let scale = blend.co_occurrence / present.max(1.0);
            for &item in window {
                for (next, similarity) in self.co_occurrence.row(item) {
                    scores[next as usize] += similarity * scale;
                }
            }
        }
    }
}

/// The transition weight of the item `age` places back from the most recent.
fn age_weight(transitions: f32, age: usize) -> f32 {
    transitions / (age + 1) as f32
}

/// The serving graph of `blend`: the model's scores (built from `arch` and `params`) or the tie-break, plus the
/// terms with non-zero weight.
pub fn blended_graph(
    spec: &FeatureSpec,
    arch: &Architecture,
    params: &Parameters,
    blend: &Blend,
    terms: &Terms,
) -> Result<Vec<u8>, BuildError> {
    if spec.sequence.padding != Padding::Left {
        return Err(BuildError::Unsupported(
            "blended terms read the most recent items at the end of a left-padded sequence".into(),
        ));
    }
    let mut g = GraphBuilder::new("edgerec-sasrec");
    let length = spec.sequence.max_len as i64;
    let mut scores = if blend.model {
        serving_scores(&mut g, spec, arch, params)?
    } else {
        g.input(&spec.sequence.input, ElemType::I64, &[1, length]);
        let n = terms.tie_break.len() as i64;
        g.f32_tensor("popularity_tie_break", &[1, n], terms.tie_break.clone())
    };
    let ids = Value(spec.sequence.input.clone());
    if blend.transitions != 0.0 {
        let recent = (TRANSITION_WINDOW as i64).min(length);
        let (starts, ends, axes) = (g.i64s(&[length - recent]), g.i64s(&[length]), g.i64s(&[1]));
        let last = g.op("Slice", &[&ids, &starts, &ends, &axes], &[]);
        let ages: Vec<f32> = (0..recent as usize)
            .map(|position| age_weight(blend.transitions, recent as usize - 1 - position))
            .collect();
        let ages = g.f32_tensor("transition_age_weights", &[1, recent, 1], ages);
        let table = terms.transitions.constants(&mut g, "transition");
        scores = scatter_add(&mut g, scores, &last, table, &ages);
    }
    if blend.co_occurrence != 0.0 {
        let zero = g.i64_constant(&[], vec![0]);
        let present = g.op("Greater", &[&ids, &zero], &[]);
        let present = g.op("Cast", &[&present], &[Attr::Int("to", 1)]);
        let axis = g.i64s(&[1]);
        let count = g.op("ReduceSum", &[&present, &axis], &[Attr::Int("keepdims", 1)]); // [1, 1]
        let one = g.f32_scalar(1.0);
        let count = g.op("Max", &[&count, &one], &[]);
        let weight = g.f32_scalar(blend.co_occurrence);
        let scale = g.op("Div", &[&weight, &count], &[]);
        let shape = g.i64s(&[1, 1, 1]);
        let scale = g.op("Reshape", &[&scale, &shape], &[]);
        let table = terms.co_occurrence.constants(&mut g, "co_occurrence");
        scores = scatter_add(&mut g, scores, &ids, table, &scale);
    }
    g.output(&scores, &spec.output.name);
    Ok(g.to_bytes())
}

/// `scores[ids[j]] += weights[j] · scale` over the table rows of `items` (`[1, m]`), `scale` broadcasting over
/// `[1, m, K]`.
fn scatter_add(
    g: &mut GraphBuilder,
    scores: Value,
    items: &Value,
    (ids, weights): (Value, Value),
    scale: &Value,
) -> Value {
    let ids = g.op("Gather", &[&ids, items], &[Attr::Int("axis", 0)]);
    let ids = g.op("Cast", &[&ids], &[Attr::Int("to", 7)]);
    let weights = g.op("Gather", &[&weights, items], &[Attr::Int("axis", 0)]);
    let weights = g.op("Mul", &[&weights, scale], &[]);
    let flat = g.i64s(&[1, -1]);
    let ids = g.op("Reshape", &[&ids, &flat], &[]);
    let weights = g.op("Reshape", &[&weights, &flat], &[]);
    g.op(
        "ScatterElements",
        &[&scores, &ids, &weights],
        &[Attr::Int("axis", 1), Attr::Str("reduction", "add")],
    )
}

/// Ranks every evaluated user's target at `stage` under each of `candidates`, with the model's scores from the
/// serving graph `model` on ONNX Runtime (run once per user) and `terms` fitted for `stage`.
pub fn evaluate_candidates(
    split: &Split,
    spec: &FeatureSpec,
    model: &[u8],
    terms: &Terms,
    candidates: &[Blend],
    stage: Stage,
    threads: usize,
) -> Result<Vec<RankingMetrics>, TrainError> {
    edgerec_onnxruntime::init().map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
    let mut scorer =
        OrtScorer::load(spec, model, threads).map_err(|e| RuntimeError::Session(e.to_string()))?;
    let mut metrics = vec![MetricsAccumulator::default(); candidates.len()];
    let no_context = BTreeMap::new();
    for user in &split.users {
        let Some((history, target)) = stage.history_and_target(user) else {
            continue;
        };
        let inputs = spec
            .encode(history, &no_context)
            .map_err(|e| RuntimeError::Run(e.to_string()))?;
        let window: Vec<u32> = match &inputs[0].data {
            TensorData::I64(ids) => ids.iter().map(|&id| id as u32).collect(),
            TensorData::F32(_) => unreachable!("the sequence input holds item ids"),
        };
        let model_scores = if candidates.iter().any(|c| c.model) {
            scorer
                .score(&inputs)
                .map_err(|e| RuntimeError::Run(e.to_string()))?
        } else {
            Vec::new()
        };
        for (candidate, accumulator) in candidates.iter().zip(&mut metrics) {
            let mut scores = if candidate.model {
                model_scores.clone()
            } else {
                terms.tie_break.clone()
            };
            terms.add(candidate, &window, &mut scores);
            accumulator.add(target_rank(&scores, target, history));
        }
    }
    Ok(metrics.iter().map(MetricsAccumulator::finish).collect())
}

/// Each candidate's validation figures, and which one is exported.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    pub candidates: Vec<CandidateResult>,
    pub chosen: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CandidateResult {
    pub name: String,
    pub blend: Blend,
    pub validation: RankingMetrics,
}

impl Selection {
    /// The candidate with the best validation NDCG@10, the earlier on a tie.
    pub fn best(candidates: Vec<CandidateResult>) -> Self {
        let mut chosen = 0;
        for (i, candidate) in candidates.iter().enumerate() {
            if candidate.validation.ndcg_at_10 > candidates[chosen].validation.ndcg_at_10 {
                chosen = i;
            }
        }
        Self { candidates, chosen }
    }

    pub fn chosen(&self) -> &CandidateResult {
        &self.candidates[self.chosen]
    }

    /// The model alone (always the first candidate).
    pub fn model_alone(&self) -> &CandidateResult {
        &self.candidates[0]
    }
}

/// Scores [`Blend::candidates`] on the validation targets (terms fitted on the training part before them) and
/// picks the best.
pub fn select(
    split: &Split,
    spec: &FeatureSpec,
    model: &[u8],
    threads: usize,
) -> Result<Selection, TrainError> {
    let candidates = Blend::candidates();
    let terms = Terms::fit(split, Stage::Validation);
    let metrics = evaluate_candidates(
        split,
        spec,
        model,
        &terms,
        &candidates,
        Stage::Validation,
        threads,
    )?;
    Ok(Selection::best(
        candidates
            .into_iter()
            .zip(metrics)
            .map(|(blend, validation)| CandidateResult {
                name: blend.name(),
                blend,
                validation,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use edgerec_core::TractScorer;

    use super::*;
    use crate::baseline::Reference;
    use crate::data::Interaction;
    use crate::rng::SplitMix;
    use crate::train::sequence_spec;

    /// Users wander over 25 items, mostly a step or two forward, sometimes anywhere: successors with several
    /// shares, and neighbourhoods of every size.
    fn wandering(users: usize) -> Split {
        let mut rng = SplitMix::new(11);
        let mut log = Vec::new();
        for user in 0..users {
            let mut item = rng.below(25);
            for step in 0..5 + rng.below(9) {
                log.push(Interaction::from_good_ids(
                    &format!("u{user}"),
                    &format!("i{item}"),
                    step as i64,
                ));
                item = match rng.below(4) {
                    0 => rng.below(25),
                    r => (item + r) % 25,
                };
            }
        }
        Split::leave_last_out(&log)
    }

    fn scores(scorer: &mut impl Scorer, spec: &FeatureSpec, history: &[u32]) -> Vec<f32> {
        let inputs = spec.encode(history, &BTreeMap::new()).expect("encodes");
        scorer.score(&inputs).expect("scores")
    }

    /// The exported graph (on ONNX Runtime and on tract) scores as the mirror the candidates are chosen by.
    #[test]
    fn the_exported_graph_scores_as_its_mirror() {
        let split = wandering(60);
        let spec = sequence_spec(&split, 6);
        let arch = Architecture {
            dim: 8,
            blocks: 1,
            ffn_dim: 16,
        };
        let params = Parameters::init(&spec, &arch, 5).expect("initialises");
        let terms = Terms::fit(&split, Stage::Test);
        edgerec_onnxruntime::init().expect("ONNX Runtime loads");
        let plain = crate::model::inference_graph(&spec, &arch, &params).expect("builds");
        let mut model = OrtScorer::load(&spec, &plain, 1).expect("loads");
        for blend in [
            Blend {
                model: true,
                transitions: 4.0,
                co_occurrence: 0.25,
            },
            Blend {
                model: false,
                transitions: 1.0,
                co_occurrence: 1.0,
            },
            Blend {
                model: false,
                transitions: 0.0,
                co_occurrence: 1.0,
            },
        ] {
            let graph = blended_graph(&spec, &arch, &params, &blend, &terms).expect("builds");
            let mut ort = OrtScorer::load(&spec, &graph, 1).expect("ONNX Runtime loads the blend");
            let mut tract = TractScorer::load(&spec, &graph).expect("tract loads the blend");
            // Short and long histories: padding in the window, and items beyond it.
            for user in split.users.iter().take(20) {
                let (history, _) = Stage::Test.history_and_target(user).expect("evaluated");
                for history in [&history[history.len() - 1..], history] {
                    let inputs = spec.encode(history, &BTreeMap::new()).expect("encodes");
                    let window: Vec<u32> = match &inputs[0].data {
                        TensorData::I64(ids) => ids.iter().map(|&id| id as u32).collect(),
                        TensorData::F32(_) => unreachable!(),
                    };
                    let mut mirror = if blend.model {
                        scores(&mut model, &spec, history)
                    } else {
                        terms.tie_break.clone()
                    };
                    terms.add(&blend, &window, &mut mirror);
                    let exported = scores(&mut ort, &spec, history);
                    let in_tract = scores(&mut tract, &spec, history);
                    for i in 1..mirror.len() {
                        assert!(
                            (mirror[i] - exported[i]).abs() <= 1e-5 * mirror[i].abs().max(1.0)
                                && (in_tract[i] - exported[i]).abs()
                                    <= 1e-4 * exported[i].abs().max(1.0),
                            "{}: item {i}: mirror {}, ONNX Runtime {}, tract {}",
                            blend.name(),
                            mirror[i],
                            exported[i],
                            in_tract[i]
                        );
                    }
                }
            }
        }
    }

    /// Where no item has more than [`EXPORT_NEIGHBOURS`] successors, the transitions term alone is the
    /// transitions baseline.
    #[test]
    fn the_transitions_term_alone_ranks_as_the_baseline() {
        // Each item is followed by one of 5 others.
        let mut rng = SplitMix::new(12);
        let mut log = Vec::new();
        for user in 0..80 {
            let mut item = rng.below(25);
            for step in 0..5 + rng.below(9) {
                log.push(Interaction::from_good_ids(
                    &format!("u{user}"),
                    &format!("i{item}"),
                    step as i64,
                ));
                item = (item + [1, 2, 3, 5, 7][rng.below(5)]) % 25;
            }
        }
        let split = Split::leave_last_out(&log);
        let spec = sequence_spec(&split, 6);
        let params = Parameters::default();
        let terms = Terms::fit(&split, Stage::Validation);
        let alone = Blend {
            model: false,
            transitions: 1.0,
            co_occurrence: 0.0,
        };
        let graph = blended_graph(&spec, &Architecture::default(), &params, &alone, &terms)
            .expect("builds without the model");
        let exported = evaluate_candidates(
            &split,
            &spec,
            &graph,
            &terms,
            &[Blend::MODEL],
            Stage::Validation,
            1,
        )
        .expect("evaluates");
        let mirrored = evaluate_candidates(
            &split,
            &spec,
            &graph,
            &terms,
            &[alone],
            Stage::Validation,
            1,
        )
        .expect("evaluates");
        let baseline = Reference::Transitions
            .evaluate(&split, Stage::Validation)
            .expect("fits");
        assert_eq!(exported[0], mirrored[0]);
        assert_eq!(exported[0], baseline);
    }

    #[test]
    fn large_catalogues_keep_fewer_neighbours_within_the_budget() {
        assert_eq!(neighbours_kept(3_707), EXPORT_NEIGHBOURS);
        assert_eq!(neighbours_kept(9_067), EXPORT_NEIGHBOURS);
        assert_eq!(neighbours_kept(20_000), 9);
        assert!(8 * 20_000 * neighbours_kept(20_000) <= TERM_BUDGET_BYTES);
        assert_eq!(neighbours_kept(1_000_000), MIN_EXPORT_NEIGHBOURS);
    }

    #[test]
    fn candidates_start_with_the_model_and_are_named() {
        let candidates = Blend::candidates();
        assert_eq!(candidates[0], Blend::MODEL);
        assert_eq!(candidates.len(), 1 + 35 + 5);
        let names: std::collections::HashSet<String> = candidates.iter().map(Blend::name).collect();
        assert_eq!(
            names.len(),
            candidates.len(),
            "every candidate has its own name"
        );
        assert!(names.contains("model + 4 × transitions + 0.25 × co-occurrence"));
        assert!(names.contains("co-occurrence"));
    }

    #[test]
    fn the_best_validation_ndcg_wins_and_the_earlier_on_a_tie() {
        let result = |name: &str, ndcg_at_10| CandidateResult {
            name: name.into(),
            blend: Blend::MODEL,
            validation: RankingMetrics {
                ndcg_at_10,
                ..RankingMetrics::default()
            },
        };
        let selection = Selection::best(vec![result("a", 0.2), result("b", 0.3), result("c", 0.3)]);
        assert_eq!(selection.chosen().name, "b");
    }
}
