//! What EdgeRec's workers answer, apart from HTTP: the embedded deployment's models, `/v1/recommend` as edge nodes
//! answer it (the checks, the A/B assignment and the fed history of [`crate::serving`] and [`crate::ab`]), and
//! `/healthz`. No I/O: a worker's glue (the `wasi:http` component in `edge/worker`) hands it bodies and sends its
//! answers.

use std::cell::RefCell;

use crate::embedded::{self, EmbeddedBundle, EmbeddedError, EmbeddedPlan};
use crate::serving::{
    Degraded, RecommendRequest, RecommendResponse, RequestError, by_popularity, fed_request,
    prior_request, unknown_items, warm_up_requests,
};
use crate::{
    ErrorReport, ItemId, LoadError, RankError, RankRequest, Ranker, RequestId, ScoredItem,
    TractScorer, ab, load_tract_ranker,
};
use serde::Serialize;

/// Why the embedded deployment cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Payload(#[from] EmbeddedError),
    #[error("variant `{variant}` ({model}@{version}): {source}")]
    Load {
        variant: String,
        model: String,
        version: String,
        source: Box<LoadError>,
    },
    #[error("variant `{variant}`: the bundle is {found}, the plan names {expected}")]
    Mismatch {
        variant: String,
        expected: String,
        found: String,
    },
    #[error("no variant of the plan serves (every version is revoked)")]
    NothingServes,
}

/// An HTTP answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, value: &impl Serialize) -> Self {
        Self {
            status,
            body: serde_json::to_vec(value).expect("answers serialise"),
        }
    }

    /// The error shape of every EdgeRec API: `{"error": {"kind", "message"}}`.
    pub fn error(status: u16, kind: &str, message: impl ToString) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "error": ErrorReport::new(kind, message) }),
        )
    }
}

/// One serving variant's model.
#[derive(Debug)]
struct ServingModel {
    ranker: RefCell<Ranker<TractScorer>>,
    max_len: usize,
    prior: Vec<ScoredItem>,
}

impl ServingModel {
    fn knows(&self, item: &ItemId) -> bool {
        self.ranker
            .borrow()
            .vocab()
            .index_of(item.as_str())
            .is_some()
    }
}

/// The embedded deployment, loaded: what the worker serves with.
#[derive(Debug)]
pub struct Worker {
    plan: EmbeddedPlan,
    /// By the plan's variant index; `None` for a revoked one.
    models: Vec<Option<ServingModel>>,
}

impl Worker {
    /// Loads the payload `edgerec worker build` embedded: every serving variant's bundle is verified (digests),
    /// loaded, checked against the plan's model and version and probed, and its popularity answer computed.
    pub fn load(payload: &[u8]) -> Result<Self, WorkerError> {
        let (plan, bundles) = embedded::decode(payload)?;
        let mut bundles = bundles.into_iter();
        let mut models = Vec::with_capacity(plan.variants.len());
        for variant in &plan.variants {
            if variant.revoked {
                models.push(None);
                continue;
            }
            let EmbeddedBundle { manifest, model } = bundles
                .next()
                .expect("decode checked one bundle per serving variant");
            let failed = |source| WorkerError::Load {
                variant: variant.name.to_string(),
                model: variant.model.to_string(),
                version: variant.version.to_string(),
                source: Box::new(source),
            };
            let mut ranker = load_tract_ranker(&manifest, &model).map_err(failed)?;
            let found = format!("{}@{}", ranker.model_name(), ranker.model_version());
            let expected = format!("{}@{}", variant.model, variant.version);
            if found != expected {
                return Err(WorkerError::Mismatch {
                    variant: variant.name.to_string(),
                    expected,
                    found,
                });
            }
            let prior = ranker
                .rank(&prior_request(ranker.vocab().len()))
                .map_err(|e| failed(LoadError::Probe(e)))?
                .items;
            // The warm-up nodes run before serving: a model they would refuse is not embedded either.
            let max_len = ranker.spec().sequence.max_len;
            let warm_up: Vec<RankRequest> = warm_up_requests(ranker.vocab().ids(), max_len)
                .map(|(_, request)| request)
                .collect();
            for request in &warm_up {
                ranker
                    .rank(request)
                    .map_err(|e| failed(LoadError::Probe(e)))?;
            }
            models.push(Some(ServingModel {
                max_len,
                ranker: RefCell::new(ranker),
                prior,
            }));
        }
        if models.iter().all(Option::is_none) {
            return Err(WorkerError::NothingServes);
        }
        Ok(Self { plan, models })
    }

    pub fn plan(&self) -> &EmbeddedPlan {
        &self.plan
    }

    /// `GET /healthz`: the surface and plan revision served.
    pub fn health(&self) -> Answer {
        Answer::json(
            200,
            &serde_json::json!({
                "status": "ok",
                "surface": self.plan.surface,
                "plan_revision": self.plan.revision,
                "variants": self.plan.variants.iter().map(|v| serde_json::json!({
                    "name": v.name, "weight": v.weight, "model": v.model, "version": v.version,
                    "revoked": v.revoked,
                })).collect::<Vec<_>>(),
            }),
        )
    }

    /// `POST /v1/recommend` with `body`; `request_id` names the answer (and buckets an anonymous visitor).
    pub fn recommend(&self, body: &[u8], request_id: RequestId) -> Answer {
        match self.try_recommend(body, request_id) {
            Ok(response) => Answer::json(200, &response),
            Err(refusal) => refusal,
        }
    }

    fn try_recommend(
        &self,
        body: &[u8],
        request_id: RequestId,
    ) -> Result<RecommendResponse, Answer> {
        let limit = self.plan.max_recommend_bytes;
        if body.len() > limit {
            return Err(Answer::error(
                413,
                "too_large",
                format!("the body is larger than the limit of {limit} bytes"),
            ));
        }
        let request: RecommendRequest = serde_json::from_slice(body).map_err(|e| {
            Answer::error(
                400,
                "invalid_json",
                format!("the JSON body does not parse: {e}"),
            )
        })?;
        let request = request.check(&self.plan.limits).map_err(|e| match &e {
            RequestError::Bad { kind, .. } => Answer::error(400, kind, &e),
            RequestError::TooLarge(_) => Answer::error(413, e.kind(), &e),
        })?;
        if request.surface != self.plan.surface.as_str() {
            return Err(Answer::error(
                404,
                "unknown_surface",
                format!("this worker does not serve surface `{}`", request.surface),
            ));
        }
        let key = request.user.as_deref().unwrap_or(&request_id);
        let (own, serving) = self.assign(key);
        let variant = &self.plan.variants[serving];
        let model = self.models[serving]
            .as_ref()
            .expect("assign returns a serving variant");
        let knows = |item: &ItemId| model.knows(item);
        let unknown = unknown_items(&request.recent_items, knows);
        let fed = fed_request(
            Vec::new(),
            &request.recent_items,
            request.exclude,
            request.k,
            request.context,
            knows,
            model.max_len,
        );
        let (items, degraded) = rank_or_fall_back(model, &fed)?;
        // A fault of the serving variant says more than the reassignment it answered for.
        let degraded = degraded.or_else(|| {
            (own != serving).then(|| {
                let own = &self.plan.variants[own];
                Degraded::revoked(&own.name, &own.model, &own.version, &variant.name)
            })
        });
        Ok(RecommendResponse {
            request_id,
            items,
            model: variant.model.clone(),
            model_version: variant.version.clone(),
            variant: variant.name.clone(),
            plan_revision: self.plan.revision,
            degraded,
            unknown_items: unknown,
        })
    }

    /// The variant the plan assigns `key` to, and the one that serves it (the same unless it is revoked).
    fn assign(&self, key: &str) -> (usize, usize) {
        let weights: Vec<u32> = self.plan.variants.iter().map(|v| v.weight).collect();
        let serving: Vec<bool> = self.models.iter().map(Option::is_some).collect();
        let first_serving = serving.iter().position(|&s| s).expect("load checked one");
        match ab::assign_serving(&self.plan.salt, key, &weights, &serving) {
            Some(ab::Assignment {
                own,
                serving: Some(serving),
            }) => (own, serving),
            // The registry only signs plans whose weights cover every bucket.
            _ => (first_serving, first_serving),
        }
    }
}

/// The model's ranking of `fed`; a refusal of the request (the caller's error, 400); or, for a fault of the model,
/// its popularity answer, flagged.
fn rank_or_fall_back(
    model: &ServingModel,
    fed: &RankRequest,
) -> Result<(Vec<ScoredItem>, Option<Degraded>), Answer> {
    match model.ranker.borrow_mut().rank(fed) {
        Ok(ranking) => Ok((ranking.items, None)),
        Err(e) if RankError::REQUEST_KINDS.contains(&e.kind()) => {
            Err(Answer::error(400, e.kind(), &e))
        }
        Err(_) => Ok((
            by_popularity(&model.prior, &fed.recent_items, &fed.exclude, fed.k, |_| {
                true
            }),
            Some(Degraded::ranker_error()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::embedded::{EmbeddedVariant, encode};
    use crate::serving::RecommendLimits;
    use crate::{ModelName, Surface, VariantName, Version};

    use super::*;

    fn golden() -> EmbeddedBundle {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/bundle");
        let read = |n: &str| std::fs::read(dir.join(n)).expect("golden bundle is committed");
        EmbeddedBundle {
            manifest: read("manifest.json"),
            model: read("model.onnx"),
        }
    }

    fn variant(name: &str, weight: u32, version: &str, revoked: bool) -> EmbeddedVariant {
        EmbeddedVariant {
            name: VariantName::parse(name).expect("name"),
            weight,
            model: ModelName::parse("golden-sasrec").expect("model"),
            version: Version::parse(version).expect("version"),
            revoked,
        }
    }

    fn plan(variants: Vec<EmbeddedVariant>) -> EmbeddedPlan {
        EmbeddedPlan {
            surface: Surface::parse("home").expect("surface"),
            revision: 7,
            salt: "salt-7".into(),
            variants,
            key_id: "0123456789abcdef".into(),
            events_to: None,
            limits: RecommendLimits::default(),
            max_recommend_bytes: 4096,
            max_events_bytes: 4096,
        }
    }

    fn worker(variants: Vec<EmbeddedVariant>) -> Worker {
        let bundles: Vec<EmbeddedBundle> = variants
            .iter()
            .filter(|v| !v.revoked)
            .map(|_| golden())
            .collect();
        Worker::load(&encode(&plan(variants), &bundles)).expect("loads")
    }

    fn id(n: u32) -> RequestId {
        RequestId::parse(format!("worker-{n}")).expect("id")
    }

    fn answer(worker: &Worker, body: &str) -> (u16, serde_json::Value) {
        let answer = worker.recommend(body.as_bytes(), id(1));
        let json = serde_json::from_slice(&answer.body).expect("JSON answers");
        (answer.status, json)
    }

    #[test]
    fn answers_as_the_core_ranker_ranks_the_fed_history() {
        let worker = worker(vec![variant("control", 100, "1.0.0", false)]);
        let (status, json) = answer(
            &worker,
            r#"{"surface": "home", "k": 5, "user_id": "u1", "recent_items": ["m1", "new-item", "m2"], "exclude": ["m3"]}"#,
        );
        assert_eq!(status, 200, "{json}");
        let response: RecommendResponse = serde_json::from_value(json).expect("an answer");
        let bundle = golden();
        let mut core = load_tract_ranker(&bundle.manifest, &bundle.model).expect("loads");
        let mut expected = RankRequest::new(ItemId::parse_all(["m1", "m2"]).expect("ids"), 5);
        expected.exclude = ItemId::parse_all(["m3"]).expect("ids");
        assert_eq!(response.items, core.rank(&expected).expect("ranks").items);
        assert_eq!(
            (
                response.plan_revision,
                response.variant.as_str(),
                response.degraded
            ),
            (7, "control", None)
        );
        assert_eq!(
            response.unknown_items,
            ItemId::parse_all(["new-item"]).expect("ids")
        );
    }

    #[test]
    fn bad_requests_get_the_nodes_statuses_and_kinds() {
        let worker = worker(vec![variant("control", 100, "1.0.0", false)]);
        let long = format!(
            r#"{{"surface": "home", "k": 5, "exclude": ["{}"]}}"#,
            "x".repeat(5000)
        );
        for (body, status, kind) in [
            ("not json", 400, "invalid_json"),
            (r#"{"surface": "home", "k": 0}"#, 400, "invalid_k"),
            (
                r#"{"surface": "home", "k": 5, "unknown": 1}"#,
                400,
                "invalid_json",
            ),
            (r#"{"surface": "other", "k": 5}"#, 404, "unknown_surface"),
            (
                r#"{"surface": "home", "k": 5, "recent_items": [""]}"#,
                400,
                "invalid_id",
            ),
            (
                r#"{"surface": "home", "k": 5, "context": {"hour": 99}}"#,
                400,
                "invalid_features",
            ),
            (long.as_str(), 413, "too_large"),
        ] {
            let (got, json) = answer(&worker, body);
            assert_eq!(
                (got, json["error"]["kind"].as_str()),
                (status, Some(kind)),
                "{body}"
            );
        }
    }

    #[test]
    fn visitors_keep_their_variant_and_those_of_a_revoked_one_are_reassigned() {
        let both = worker(vec![
            variant("a", 50, "1.0.0", false),
            variant("b", 50, "1.0.0", false),
        ]);
        let revoked = worker(vec![
            variant("a", 50, "1.0.0", false),
            variant("b", 50, "2.0.0", true),
        ]);
        let mut seen = std::collections::BTreeSet::new();
        for user in 0..40 {
            let body = format!(r#"{{"surface": "home", "k": 3, "user_id": "user-{user}"}}"#);
            let (_, first) = answer(&both, &body);
            let (_, again) = answer(&both, &body);
            assert_eq!(first["variant"], again["variant"], "sticky");
            let own = first["variant"].as_str().expect("variant").to_string();
            let expected =
                ab::assign("salt-7", &format!("user-{user}"), [50, 50]).expect("assigned");
            assert_eq!(own, ["a", "b"][expected]);
            let (status, answer) = answer(&revoked, &body);
            assert_eq!((status, answer["variant"].as_str()), (200, Some("a")));
            let reason = answer["degraded"]["reason"].as_str();
            assert_eq!(reason, (own == "b").then_some("revoked"), "{answer}");
            seen.insert(own);
        }
        assert_eq!(seen.len(), 2, "both variants get visitors");
    }

    #[test]
    fn a_payload_that_does_not_match_its_plan_is_refused() {
        let mut other = golden();
        other.model[200] ^= 1;
        let refused = Worker::load(&encode(
            &plan(vec![variant("a", 100, "1.0.0", false)]),
            &[other],
        ))
        .expect_err("tampered");
        assert!(matches!(refused, WorkerError::Load { .. }), "{refused}");
        let refused = Worker::load(&encode(
            &plan(vec![variant("a", 100, "9.9.9", false)]),
            &[golden()],
        ))
        .expect_err("relabelled");
        assert!(
            refused.to_string().contains("golden-sasrec@9.9.9"),
            "{refused}"
        );
        let refused = Worker::load(&encode(&plan(vec![variant("a", 100, "1.0.0", true)]), &[]))
            .expect_err("nothing serves");
        assert!(matches!(refused, WorkerError::NothingServes), "{refused}");
    }
}
