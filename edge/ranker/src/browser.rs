//! The browser API (wasm-bindgen).

use std::collections::BTreeMap;

use edgerec_core::{ErrorReport, IdError, ItemId, RankRequest, TractScorer, load_tract_ranker};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** What to rank for the visitor. */
export interface RecommendOptions {
  /** The visitor's recent item ids, oldest first. Ids the model does not know are skipped. */
  recentItems?: string[];
  /** How many items to return (at least 1). */
  k: number;
  /** Item ids never to return. */
  exclude?: string[];
  /** Rank only these item ids (all known to the model); the whole catalogue when absent. */
  candidates?: string[];
  /** Context feature values by name, for models that take them. */
  context?: Record<string, number>;
  /** Leave the recent items out of the results (default true). */
  excludeSeen?: boolean;
}

/** One recommended item. */
export interface ScoredItem {
  item: string;
  score: number;
}

/** Errors thrown by the ranker carry a stable `kind` (for example "invalid_bundle", "invalid_k"). */
export interface RankerError extends Error {
  kind: string;
}
"#;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecommendOptions {
    /// From the page's storage, which anyone can edit: an entry that is not an item id is skipped, as one the model
    /// does not know is (`exclude` and `candidates` come from the page's code and are held to the rule).
    #[serde(default)]
    recent_items: Vec<String>,
    k: u32,
    #[serde(default)]
    exclude: Vec<ItemId>,
    #[serde(default)]
    candidates: Option<Vec<ItemId>>,
    #[serde(default)]
    context: BTreeMap<String, f64>,
    #[serde(default = "default_true")]
    exclude_seen: bool,
}

fn default_true() -> bool {
    true
}

/// A model bundle loaded into the page, ranking on the device.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Ranker {
    inner: edgerec_core::Ranker<TractScorer>,
}

#[wasm_bindgen]
impl Ranker {
    /// Verifies a bundle (`manifest.json` and `model.onnx` bytes: every digest, the feature specification, the
    /// model's inputs) and loads it. Throws a `RankerError` if anything does not check out.
    pub fn load(manifest: &[u8], model: &[u8]) -> Result<Ranker, JsValue> {
        let inner =
            load_tract_ranker(manifest, model).map_err(|e| js_error(&ErrorReport::from(&e)))?;
        Ok(Ranker { inner })
    }

    /// Model name from the bundle manifest.
    #[wasm_bindgen(getter, js_name = modelName)]
    pub fn model_name(&self) -> String {
        self.inner.model_name().to_string()
    }

    /// Model version from the bundle manifest.
    #[wasm_bindgen(getter, js_name = modelVersion)]
    pub fn model_version(&self) -> String {
        self.inner.model_version().to_string()
    }

    /// Number of items the model can recommend.
    #[wasm_bindgen(getter, js_name = itemCount)]
    pub fn item_count(&self) -> usize {
        self.inner.vocab().len()
    }

    /// Every item id the model can recommend, in the model's order.
    #[wasm_bindgen(unchecked_return_type = "string[]")]
    pub fn items(&self) -> Result<JsValue, JsValue> {
        let ids = serde_json::to_string(self.inner.vocab().ids())
            .map_err(|e| js_error(&ErrorReport::new("internal", e)))?;
        js_sys::JSON::parse(&ids)
            .map_err(|_| js_error(&ErrorReport::new("internal", "item ids are not JSON")))
    }

    /// The top-k items for the visitor, best first.
    #[wasm_bindgen(unchecked_return_type = "ScoredItem[]")]
    pub fn recommend(
        &mut self,
        #[wasm_bindgen(unchecked_param_type = "RecommendOptions")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        if !options.is_object() {
            return Err(js_error(&ErrorReport::new(
                "invalid_request",
                "recommend() takes an options object",
            )));
        }
        // One JSON string across the boundary is much cheaper than converting a thousand JS strings one by one,
        // and serde_json refuses misspelt options the way the JSON APIs do.
        let json = js_sys::JSON::stringify(&options).map_err(|_| {
            js_error(&ErrorReport::new(
                "invalid_request",
                "recommend() options are not JSON-serialisable",
            ))
        })?;
        let options: RecommendOptions = serde_json::from_str(&String::from(json))
            .map_err(|e| js_error(&ErrorReport::new("invalid_request", e)))?;
        let request = RankRequest {
            recent_items: options
                .recent_items
                .into_iter()
                .filter_map(|id| ItemId::parse(id).ok())
                .collect(),
            k: options.k,
            exclude: options.exclude,
            candidates: options.candidates,
            context: options.context,
            exclude_seen: options.exclude_seen,
        };
        let ranking = self
            .inner
            .rank(&request)
            .map_err(|e| js_error(&ErrorReport::from(&e)))?;
        let answer = serde_json::to_string(&ranking.items)
            .map_err(|e| js_error(&ErrorReport::new("internal", e)))?;
        js_sys::JSON::parse(&answer)
            .map_err(|_| js_error(&ErrorReport::new("internal", "answer is not JSON")))
    }
}

/// The index of the plan variant that serves `user`, given each variant's weight in percent and whether it may
/// serve (`serving[i]` 0 when its version is revoked): the same assignment edge nodes make, the user's own variant
/// when it may serve, else another by weight (`undefined` when none may, or the weights cover no bucket).
#[wasm_bindgen(js_name = assignVariant)]
pub fn assign_variant(salt: &str, user: &str, weights: &[u32], serving: &[u8]) -> Option<usize> {
    let serving: Vec<bool> = serving.iter().map(|&s| s != 0).collect();
    edgerec_core::ab::assign_serving(salt, user, weights, &serving)?.serving
}

/// `history` (oldest first) with `item` added by core's recent-items rule (each item once, at its latest
/// position; the newest `capacity` kept), as the feature store and edge nodes keep histories. Throws a
/// `RankerError` (`invalid_request`) if `item` is not an item id by the rule every endpoint applies; entries of
/// `history` that are not are dropped (it comes from the page's storage, which anyone can edit).
#[wasm_bindgen(js_name = rememberItem)]
pub fn remember_item(
    history: Vec<String>,
    item: String,
    capacity: usize,
) -> Result<Vec<String>, JsValue> {
    let invalid = |e: IdError| js_error(&ErrorReport::new("invalid_request", e));
    let item = ItemId::parse(item).map_err(invalid)?;
    let mut history: Vec<ItemId> = history
        .into_iter()
        .filter_map(|id| ItemId::parse(id).ok())
        .collect();
    edgerec_core::recent::remember_all(&mut history, &[item], capacity);
    Ok(history.into_iter().map(ItemId::into_string).collect())
}

/// The sha256 of `bytes` in hex, as version records and manifests write digests.
#[wasm_bindgen(js_name = sha256Digest)]
pub fn sha256_digest(bytes: &[u8]) -> String {
    edgerec_core::Digest::of(bytes).to_string()
}

fn js_error(report: &ErrorReport) -> JsValue {
    let error = js_sys::Error::new(&report.message);
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(
        &error,
        &JsValue::from_str("kind"),
        &JsValue::from_str(&report.kind),
    );
    error.into()
}
