//! Ranking: encode the request, score, mask what must not be shown, keep the top-k.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;
use crate::id::ItemId;
use crate::spec::{FeatureError, FeatureSpec};
use crate::vocab::ItemVocabulary;
use crate::{ScoreError, Scorer};

/// Most recent items a request may carry (only the model's `max_len` last are fed to it).
pub const MAX_HISTORY: usize = 10_000;
/// Most candidates a request may carry.
pub const MAX_CANDIDATES: usize = 100_000;
/// Most excluded items a request may carry.
pub const MAX_EXCLUDE: usize = 100_000;

/// What to rank for one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankRequest {
    /// The user's recent items, oldest first. Ids the model does not know are skipped.
    #[serde(default)]
    pub recent_items: Vec<ItemId>,
    /// How many items to return (at least 1; fewer come back when fewer are eligible). A `u32`, so that a request
    /// means the same to 32-bit Wasm rankers and 64-bit hosts.
    pub k: u32,
    /// Items never to return. Ids the model does not know are ignored.
    #[serde(default)]
    pub exclude: Vec<ItemId>,
    /// Rank only these items (the whole catalogue when absent). Every candidate must be known to the model.
    #[serde(default)]
    pub candidates: Option<Vec<ItemId>>,
    /// Context feature values by name; missing ones encode as 0.
    #[serde(default)]
    pub context: BTreeMap<String, f64>,
    /// Leave the user's recent items out of the results (the default).
    #[serde(default = "default_true")]
    pub exclude_seen: bool,
}

fn default_true() -> bool {
    true
}

impl RankRequest {
    /// A request for the top `k` of the whole catalogue after `recent_items`.
    pub fn new(recent_items: Vec<ItemId>, k: u32) -> Self {
        Self {
            recent_items,
            k,
            exclude: Vec::new(),
            candidates: None,
            context: BTreeMap::new(),
            exclude_seen: true,
        }
    }
}

/// One ranked item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredItem {
    pub item: ItemId,
    pub score: f32,
}

/// The ranked items, best first (ties keep catalogue order), and what was skipped on the way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub items: Vec<ScoredItem>,
    /// Recent items the model does not know (new since it was trained), skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_items: Vec<ItemId>,
}

/// A request that could not be ranked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RankError {
    #[error("k must be at least 1")]
    ZeroK,
    #[error("{field} has {len} entries, more than the limit of {max}")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("candidate `{0}` is not in the model's item vocabulary")]
    UnknownCandidate(ItemId),
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error("the model returned {actual} scores, its specification says {expected}")]
    OutputLength { expected: usize, actual: usize },
    #[error("the model returned a non-finite score ({score}) for model index {index}")]
    NonFiniteScore { index: usize, score: f32 },
}

impl RankError {
    /// The kinds of the errors that are the request's fault. A host that sees only the kind (across the Wasm
    /// boundary) refuses these and treats every other kind as a fault of the model.
    pub const REQUEST_KINDS: [&'static str; 4] = [
        "invalid_k",
        "request_too_large",
        "unknown_candidate",
        "invalid_features",
    ];

    /// A stable machine-readable name of the error, for JSON APIs.
    pub fn kind(&self) -> &'static str {
        let [invalid_k, too_large, unknown_candidate, invalid_features] = Self::REQUEST_KINDS;
        match self {
            RankError::ZeroK => invalid_k,
            RankError::TooLarge { .. } => too_large,
            RankError::UnknownCandidate(_) => unknown_candidate,
            RankError::Feature(_) => invalid_features,
            RankError::Score(_) => "runtime_error",
            RankError::OutputLength { .. } => "model_output_mismatch",
            RankError::NonFiniteScore { .. } => "non_finite_score",
        }
    }
}

/// An error as it crosses a JSON boundary (the Wasm ABI, HTTP): a stable kind and a readable message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ErrorReport {
    pub kind: String,
    pub message: String,
}

impl ErrorReport {
    pub fn new(kind: impl Into<String>, message: impl ToString) -> Self {
        Self {
            kind: kind.into(),
            message: message.to_string(),
        }
    }
}

impl From<&RankError> for ErrorReport {
    fn from(error: &RankError) -> Self {
        ErrorReport::new(error.kind(), error)
    }
}

/// Ranks items for users with one model.
#[derive(Debug)]
pub struct Ranker<S> {
    spec: FeatureSpec,
    vocab: ItemVocabulary,
    name: String,
    version: String,
    scorer: S,
}

impl<S: Scorer> Ranker<S> {
    /// A ranker over a verified bundle and a scorer loaded from its model.
    pub fn new(bundle: &Bundle<'_>, scorer: S) -> Self {
        Self {
            spec: bundle.manifest.feature_spec.clone(),
            vocab: bundle.vocab.clone(),
            name: bundle.manifest.name.clone(),
            version: bundle.manifest.version.clone(),
            scorer,
        }
    }

    pub fn model_name(&self) -> &str {
        &self.name
    }

    pub fn model_version(&self) -> &str {
        &self.version
    }

    pub fn vocab(&self) -> &ItemVocabulary {
        &self.vocab
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// Ranks once for a user with no history: proves the model runs and gives finite scores before it serves.
    pub fn probe(&mut self) -> Result<Ranking, RankError> {
        self.rank(&RankRequest::new(Vec::new(), 10))
    }

    pub fn rank(&mut self, request: &RankRequest) -> Result<Ranking, RankError> {
        if request.k == 0 {
            return Err(RankError::ZeroK);
        }
        for (field, len, max) in [
            ("recent_items", request.recent_items.len(), MAX_HISTORY),
            ("exclude", request.exclude.len(), MAX_EXCLUDE),
            (
                "candidates",
                request.candidates.as_ref().map_or(0, Vec::len),
                MAX_CANDIDATES,
            ),
        ] {
            if len > max {
                return Err(RankError::TooLarge { field, len, max });
            }
        }

        let mut history = Vec::with_capacity(request.recent_items.len());
        let mut unknown_items = Vec::new();
        for id in &request.recent_items {
            match self.vocab.index_of(id) {
                Some(index) => history.push(index),
                None => unknown_items.push(id.clone()),
            }
        }
        let candidates = match &request.candidates {
            Some(ids) => Some(
                ids.iter()
                    .map(|id| {
                        self.vocab
                            .index_of(id)
                            .ok_or_else(|| RankError::UnknownCandidate(id.clone()))
                    })
                    .collect::<Result<Vec<u32>, _>>()?,
            ),
            None => None,
        };

        let inputs = self.spec.encode(&history, &request.context)?;
        let scores = self.scorer.score(&inputs)?;
        let expected = self.spec.output.num_items;
        if scores.len() != expected {
            return Err(RankError::OutputLength {
                expected,
                actual: scores.len(),
            });
        }

        let mut masked: HashSet<u32> = request
            .exclude
            .iter()
            .filter_map(|id| self.vocab.index_of(id))
            .collect();
        if request.exclude_seen {
            masked.extend(&history);
        }
        // Index 0 is padding, never an item.
        let eligible: Vec<u32> = match candidates {
            Some(list) => {
                let mut seen = HashSet::with_capacity(list.len());
                list.into_iter()
                    .filter(|i| !masked.contains(i) && seen.insert(*i))
                    .collect()
            }
            None => (1..expected as u32)
                .filter(|i| !masked.contains(i))
                .collect(),
        };
        let mut scored = Vec::with_capacity(eligible.len());
        for index in eligible {
            let score = scores[index as usize];
            if !score.is_finite() {
                return Err(RankError::NonFiniteScore {
                    index: index as usize,
                    score,
                });
            }
            scored.push((score, index));
        }
        let top = top_k(scored, request.k as usize);
        let items = top
            .into_iter()
            // Every eligible index came from the vocabulary, so the lookup always succeeds.
            .filter_map(|(score, index)| {
                let item = self.vocab.id_of(index)?.clone();
                Some(ScoredItem { item, score })
            })
            .collect();
        Ok(Ranking {
            items,
            unknown_items,
        })
    }
}

/// The `k` best (score, index) pairs: higher score first, lower index first on ties.
fn top_k(mut scored: Vec<(f32, u32)>, k: usize) -> Vec<(f32, u32)> {
    let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if k < scored.len() {
        scored.select_nth_unstable_by(k, order);
        scored.truncate(k);
    }
    scored.sort_unstable_by(order);
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_kinds_are_exactly_the_request_errors() {
        let request = [
            RankError::ZeroK,
            RankError::TooLarge {
                field: "exclude",
                len: 2,
                max: 1,
            },
            RankError::UnknownCandidate(strings(&["x"]).remove(0)),
        ];
        for error in &request {
            assert!(RankError::REQUEST_KINDS.contains(&error.kind()), "{error}");
        }
        let model = [
            RankError::OutputLength {
                expected: 2,
                actual: 1,
            },
            RankError::NonFiniteScore {
                index: 0,
                score: f32::NAN,
            },
        ];
        for error in &model {
            assert!(!RankError::REQUEST_KINDS.contains(&error.kind()), "{error}");
        }
    }
    use crate::bundle::{FileEntry, MANIFEST_FORMAT_VERSION, MODEL_FILE, Manifest};
    use crate::digest::Digest;
    use crate::spec::{
        FEATURE_SPEC_VERSION, ModelInputs, OutputSpec, Padding, SequenceSpec, TensorData,
    };

    /// Scores each index by a fixed table, and remembers the inputs it saw.
    struct TableScorer {
        scores: Vec<f32>,
        seen: Vec<ModelInputs>,
    }

    impl Scorer for TableScorer {
        fn score(&mut self, inputs: &ModelInputs) -> Result<Vec<f32>, ScoreError> {
            self.seen.push(inputs.clone());
            Ok(self.scores.clone())
        }
    }

    const MODEL: &[u8] = b"model";

    fn ranker(scores: Vec<f32>) -> Ranker<TableScorer> {
        let items: Vec<String> = (1..scores.len()).map(|i| format!("i{i}")).collect();
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: "table".into(),
            version: "7".into(),
            feature_spec: FeatureSpec {
                version: FEATURE_SPEC_VERSION,
                sequence: SequenceSpec {
                    input: "item_ids".into(),
                    max_len: 3,
                    padding: Padding::Left,
                },
                item_features: vec![],
                context: vec![],
                output: OutputSpec {
                    name: "scores".into(),
                    num_items: scores.len(),
                },
            },
            items,
            metrics: BTreeMap::new(),
            lineage: BTreeMap::new(),
            files: BTreeMap::from([(
                MODEL_FILE.to_string(),
                FileEntry {
                    sha256: Digest::of(MODEL),
                    size: MODEL.len() as u64,
                },
            )]),
        };
        let json = serde_json::to_vec(&manifest).expect("serialises");
        let bundle = Bundle::verify(&json, &[(MODEL_FILE, MODEL)]).expect("valid");
        Ranker::new(
            &bundle,
            TableScorer {
                scores,
                seen: vec![],
            },
        )
    }

    fn ids(ranking: &Ranking) -> Vec<&str> {
        ranking.items.iter().map(|s| s.item.as_str()).collect()
    }

    fn strings(ids: &[&str]) -> Vec<ItemId> {
        ItemId::parse_all(ids.iter().copied()).expect("item ids")
    }

    #[test]
    fn ranks_best_first_and_masks_padding_and_seen_items() {
        let mut r = ranker(vec![100.0, 0.1, 0.9, 0.5, 0.7]);
        let ranking = r
            .rank(&RankRequest::new(strings(&["i2"]), 10))
            .expect("ranks");
        assert_eq!(ids(&ranking), ["i4", "i3", "i1"]);
        assert_eq!(r.scorer.seen[0][0].data, TensorData::I64(vec![0, 0, 2]));
    }

    #[test]
    fn ties_keep_catalogue_order() {
        let mut r = ranker(vec![0.0, 0.5, 0.5, 0.9, 0.5]);
        let ranking = r.rank(&RankRequest::new(vec![], 3)).expect("ranks");
        assert_eq!(ids(&ranking), ["i3", "i1", "i2"]);
    }

    #[test]
    fn exclude_candidates_and_unknown_history() {
        let mut r = ranker(vec![0.0, 0.1, 0.9, 0.5, 0.7]);
        let mut request = RankRequest::new(strings(&["ghost", "i1"]), 10);
        request.exclude = strings(&["i2", "also-unknown"]);
        let ranking = r.rank(&request).expect("ranks");
        assert_eq!(ids(&ranking), ["i4", "i3"]);
        assert_eq!(ranking.unknown_items, strings(&["ghost"]));

        request.candidates = Some(strings(&["i3", "i1", "i3", "i2"]));
        assert_eq!(ids(&r.rank(&request).expect("ranks")), ["i3"]);

        request.candidates = Some(strings(&["i3", "nope"]));
        assert_eq!(
            r.rank(&request).err(),
            Some(RankError::UnknownCandidate(strings(&["nope"]).remove(0)))
        );
    }

    #[test]
    fn seen_items_can_be_kept() {
        let mut r = ranker(vec![0.0, 0.1, 0.9, 0.5]);
        let mut request = RankRequest::new(strings(&["i2"]), 1);
        request.exclude_seen = false;
        assert_eq!(ids(&r.rank(&request).expect("ranks")), ["i2"]);
    }

    #[test]
    fn k_zero_huge_and_oversized_requests() {
        let mut r = ranker(vec![0.0, 0.1, 0.9]);
        assert_eq!(
            r.rank(&RankRequest::new(vec![], 0)).err(),
            Some(RankError::ZeroK)
        );
        assert_eq!(
            r.rank(&RankRequest::new(vec![], u32::MAX))
                .expect("ranks")
                .items
                .len(),
            2
        );
        let huge = vec![strings(&["i1"]).remove(0); MAX_HISTORY + 1];
        assert!(matches!(
            r.rank(&RankRequest::new(huge, 1)),
            Err(RankError::TooLarge {
                field: "recent_items",
                ..
            })
        ));
    }

    #[test]
    fn non_finite_scores_and_wrong_output_length_are_errors() {
        let mut r = ranker(vec![0.0, f32::NAN, 0.3]);
        assert!(matches!(
            r.rank(&RankRequest::new(vec![], 1)),
            Err(RankError::NonFiniteScore { index: 1, .. })
        ));
        let mut r = ranker(vec![0.0, 0.1, 0.3]);
        r.scorer.scores.pop();
        assert_eq!(
            r.rank(&RankRequest::new(vec![], 1)).err(),
            Some(RankError::OutputLength {
                expected: 3,
                actual: 2
            })
        );
    }

    #[test]
    fn request_json_defaults_and_unknown_fields() {
        let request: RankRequest =
            serde_json::from_str(r#"{"k": 3}"#).expect("minimal request parses");
        assert_eq!(request, RankRequest::new(vec![], 3));
        assert!(serde_json::from_str::<RankRequest>(r#"{"k": 3, "recentItems": []}"#).is_err());
    }

    proptest::proptest! {
        #[test]
        fn top_k_is_sorted_distinct_and_matches_a_full_sort(
            scores in proptest::collection::vec(-3i8..3, 1..40), k in 1usize..50
        ) {
            let scored: Vec<(f32, u32)> = scores.iter().enumerate().map(|(i, s)| (f32::from(*s), i as u32)).collect();
            let mut full = scored.clone();
            full.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            full.truncate(k);
            proptest::prop_assert_eq!(top_k(scored, k), full);
        }
    }
}
