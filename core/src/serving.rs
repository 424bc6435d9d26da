//! `POST /v1/recommend` as every EdgeRec server answers it (edge nodes, the `wasi:http` worker): the request and
//! the answer, the checks a request passes before anything is read, and what the model is fed. One definition,
//! so every server refuses the same requests with the same kinds and ranks the same history the same way.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{
    IdError, ItemId, ModelName, RankRequest, RequestId, ScoredItem, UserId, VariantName, Version,
};

/// `POST /v1/recommend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    /// Known users get their recent items from the feature store (on nodes) and a sticky A/B variant.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Items the client knows the user just interacted with, oldest first (added after the stored ones).
    #[serde(default)]
    pub recent_items: Vec<String>,
    pub k: u32,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub surface: String,
    #[serde(default)]
    pub context: BTreeMap<String, f64>,
}

/// The answer to a recommendation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendResponse {
    /// Quote it in events that answer this request (`request_id`), to tie them to what was served.
    pub request_id: RequestId,
    pub items: Vec<ScoredItem>,
    pub model: ModelName,
    pub model_version: Version,
    pub variant: VariantName,
    pub plan_revision: u64,
    /// Present when the answer did not come from the model's full path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Degraded>,
    /// Items of this request's `recent_items` the model does not know (skipped). Never anything stored for the
    /// user: a request only learns about what it sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_items: Vec<ItemId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Degraded {
    /// `feature_store_unavailable`, `deadline_exceeded`, `busy` (no ranker instance free in time),
    /// `ranker_error`, or `revoked` (the user's variant serves a revoked version).
    pub reason: String,
    /// What the answer was made from instead: `recent_items` (the model, on the request's own items),
    /// `popularity`, or `other_variant` (another variant of the plan, named in the answer's `variant`).
    pub fallback: String,
    /// What happened, in words; never a backend's own error text (that goes to the server's log).
    pub message: String,
}

impl Degraded {
    /// The visitor's variant serves a version the registry revoked: answered by the plan's variant `serving`.
    pub fn revoked(
        own: &VariantName,
        model: &ModelName,
        version: &Version,
        serving: &VariantName,
    ) -> Self {
        Self {
            reason: "revoked".into(),
            fallback: "other_variant".into(),
            message: format!(
                "variant `{own}` serves {model}@{version}, which the registry revoked; answered by variant \
                 `{serving}`"
            ),
        }
    }

    /// The model failed on this request (not the request's fault): answered by popularity.
    pub fn ranker_error() -> Self {
        Self {
            reason: "ranker_error".into(),
            fallback: "popularity".into(),
            message: "the model failed on this request; ranked by popularity".into(),
        }
    }
}

/// Items kept from a model's empty-history ranking, for answers by popularity.
pub const PRIOR_LEN: u32 = 1_000;

/// The empty-history ranking a server keeps per model for answers by popularity: the top [`PRIOR_LEN`] of its
/// `items`.
pub fn prior_request(items: usize) -> RankRequest {
    let k = u32::try_from(items).unwrap_or(u32::MAX).clamp(1, PRIOR_LEN);
    RankRequest::new(Vec::new(), k)
}

/// The rankings a model must pass before it serves: histories of its own items, `max_len` at a time, covering
/// every item of its vocabulary, so a model that fails on some input (non-finite scores) is caught before a
/// visitor sees it. Each with its step's name (`history of items a..b`).
pub fn warm_up_requests(
    items: &[ItemId],
    max_len: usize,
) -> impl Iterator<Item = (String, RankRequest)> {
    let window = max_len.max(1);
    items.chunks(window).enumerate().map(move |(i, chunk)| {
        (
            format!(
                "history of items {}..{}",
                i * window,
                i * window + chunk.len()
            ),
            RankRequest::new(chunk.to_vec(), 10),
        )
    })
}

/// An answer by popularity: the first `k` items of `ranked` (most popular first) that the model `knows`, each
/// once, leaving out the `history` fed and the `exclude`d items.
pub fn by_popularity<'a>(
    ranked: impl IntoIterator<Item = &'a ScoredItem>,
    history: &[ItemId],
    exclude: &[ItemId],
    k: u32,
    knows: impl Fn(&ItemId) -> bool,
) -> Vec<ScoredItem> {
    let mut skip: HashSet<&str> = history.iter().chain(exclude).map(ItemId::as_str).collect();
    let mut answer = Vec::with_capacity(k as usize);
    for item in ranked {
        if answer.len() == k as usize {
            break;
        }
        if knows(&item.item) && skip.insert(item.item.as_str()) {
            answer.push(item.clone());
        }
    }
    answer
}

/// How large a request may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecommendLimits {
    pub max_k: u32,
    /// Recent items a request may carry (the model reads only its last `max_len`).
    pub max_recent_items: usize,
    pub max_exclude: usize,
}

impl Default for RecommendLimits {
    fn default() -> Self {
        Self {
            max_k: 500,
            max_recent_items: 500,
            max_exclude: 2_000,
        }
    }
}

/// Why a request is refused before anything is read: a bad request (400, with its kind) or one over a limit
/// (413, kind `request_too_large`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("{message}")]
    Bad { kind: &'static str, message: String },
    #[error("{0}")]
    TooLarge(String),
}

impl RequestError {
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::Bad { kind, .. } => kind,
            RequestError::TooLarge(_) => "request_too_large",
        }
    }
}

/// A [`RecommendRequest`] within the limits, with its ids parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedRequest {
    pub user: Option<UserId>,
    pub recent_items: Vec<ItemId>,
    pub k: u32,
    pub exclude: Vec<ItemId>,
    pub surface: String,
    pub context: BTreeMap<String, f64>,
}

impl RecommendRequest {
    /// The request with its ids parsed, if it is within `limits`.
    pub fn check(self, limits: &RecommendLimits) -> Result<CheckedRequest, RequestError> {
        if self.k == 0 || self.k > limits.max_k {
            return Err(RequestError::Bad {
                kind: "invalid_k",
                message: format!("k must be between 1 and {}", limits.max_k),
            });
        }
        for (field, len, max) in [
            (
                "recent_items",
                self.recent_items.len(),
                limits.max_recent_items,
            ),
            ("exclude", self.exclude.len(), limits.max_exclude),
        ] {
            if len > max {
                return Err(RequestError::TooLarge(format!(
                    "{field} has {len} entries, more than the limit of {max}"
                )));
            }
        }
        // The rule `/v1/events` applies to the same ids, so whatever one endpoint takes the other takes.
        let invalid = |e: IdError| RequestError::Bad {
            kind: "invalid_id",
            message: e.to_string(),
        };
        Ok(CheckedRequest {
            user: self
                .user_id
                .map(UserId::parse)
                .transpose()
                .map_err(invalid)?,
            recent_items: ItemId::parse_all(self.recent_items).map_err(invalid)?,
            k: self.k,
            exclude: ItemId::parse_all(self.exclude).map_err(invalid)?,
            surface: self.surface,
            context: self.context,
        })
    }
}

/// What the model is fed: the stored `history` followed by the request's `recent_items` (each item once, at its
/// latest place), only items the model `knows`, the last `max_len` of them; older ones are excluded from the
/// answer rather than fed.
pub fn fed_request(
    mut history: Vec<ItemId>,
    recent_items: &[ItemId],
    mut exclude: Vec<ItemId>,
    k: u32,
    context: BTreeMap<String, f64>,
    knows: impl Fn(&ItemId) -> bool,
    max_len: usize,
) -> RankRequest {
    crate::recent::remember_all(&mut history, recent_items, usize::MAX);
    history.retain(|item| knows(item));
    let older = history.len().saturating_sub(max_len);
    exclude.extend(history.drain(..older));
    RankRequest {
        recent_items: history,
        k,
        exclude,
        candidates: None,
        context,
        exclude_seen: true,
    }
}

/// The items of `recent` the model does not know, each once, in the request's order.
pub fn unknown_items(recent: &[ItemId], knows: impl Fn(&ItemId) -> bool) -> Vec<ItemId> {
    let mut seen = HashSet::new();
    recent
        .iter()
        .filter(|item| !knows(item) && seen.insert(item.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(ids: &[&str]) -> Vec<ItemId> {
        ItemId::parse_all(ids.iter().copied()).expect("ids")
    }

    fn request(k: u32) -> RecommendRequest {
        RecommendRequest {
            user_id: None,
            recent_items: vec!["a".into()],
            k,
            exclude: Vec::new(),
            surface: "home".into(),
            context: BTreeMap::new(),
        }
    }

    #[test]
    fn refusals_have_stable_kinds() {
        let limits = RecommendLimits::default();
        assert_eq!(
            request(0).check(&limits).expect_err("refused").kind(),
            "invalid_k"
        );
        assert_eq!(
            request(501).check(&limits).expect_err("refused").kind(),
            "invalid_k"
        );
        let mut long = request(5);
        long.exclude = vec!["x".into(); 2_001];
        assert_eq!(
            long.check(&limits).expect_err("refused").kind(),
            "request_too_large"
        );
        let mut bad_id = request(5);
        bad_id.recent_items = vec![String::new()];
        assert_eq!(
            bad_id.check(&limits).expect_err("refused").kind(),
            "invalid_id"
        );
        let checked = request(5).check(&limits).expect("valid");
        assert_eq!((checked.k, checked.recent_items), (5, items(&["a"])));
    }

    #[test]
    fn popularity_answers_skip_the_fed_history_exclusions_unknown_and_repeated_items() {
        let scored = |id: &str| ScoredItem {
            item: ItemId::parse(id).expect("id"),
            score: 1.0,
        };
        let live = [scored("a"), scored("gone"), scored("b")];
        let prior = [scored("b"), scored("c"), scored("d"), scored("e")];
        let answer = by_popularity(
            live.iter().chain(&prior),
            &items(&["c"]),
            &items(&["d"]),
            3,
            |item| item.as_str() != "gone",
        );
        let ids: Vec<&str> = answer.iter().map(|s| s.item.as_str()).collect();
        assert_eq!(ids, ["a", "b", "e"]);
    }

    #[test]
    fn warm_up_covers_every_item_and_the_prior_is_bounded() {
        let vocabulary: Vec<ItemId> = (0..7)
            .map(|i| ItemId::parse(format!("i{i}")).expect("id"))
            .collect();
        let steps: Vec<(String, RankRequest)> = warm_up_requests(&vocabulary, 3).collect();
        let covered: Vec<ItemId> = steps
            .iter()
            .flat_map(|(_, r)| r.recent_items.clone())
            .collect();
        assert_eq!(covered, vocabulary);
        assert_eq!(steps[2].0, "history of items 6..7");
        assert_eq!(prior_request(3).k, 3);
        assert_eq!(prior_request(0).k, 1);
        assert_eq!(prior_request(1 << 20).k, PRIOR_LEN);
    }

    #[test]
    fn the_model_is_fed_its_last_known_items_and_the_older_ones_are_excluded() {
        let knows = |item: &ItemId| item.as_str() != "new";
        let fed = fed_request(
            items(&["a", "b", "c"]),
            &items(&["b", "new", "d"]),
            items(&["x"]),
            10,
            BTreeMap::new(),
            knows,
            2,
        );
        assert_eq!(fed.recent_items, items(&["b", "d"]));
        assert_eq!(fed.exclude, items(&["x", "a", "c"]));
        assert_eq!(
            unknown_items(&items(&["new", "a", "new"]), knows),
            items(&["new"])
        );
    }
}
