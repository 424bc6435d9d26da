//! What the node does per request, apart from HTTP: pick the variant, read features, rank (or fall back), log the
//! answer; and take events into the durable ingest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use edgerec_core::serving::{
    CheckedRequest, RequestError, by_popularity, fed_request, unknown_items,
};
use edgerec_core::{ItemId, RankError, RankRequest, Ranking, RequestId, ScoredItem, Surface};
use edgerec_features::event::{ClientEvent, ServedRequest};
use edgerec_features::ingest::{Ack, Ingest, IngestError};
use edgerec_features::store::FeatureStore;
use edgerec_registry_api::records::Variant;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Authenticator, Caller, Scope};
use crate::catalogue::CatalogueCache;
use crate::config::RequestLimits;
use crate::deployment::{Assigned, Deployment, Deployments};
use crate::features::{FeatureSource, Popularity, UserFeatureReader};
use crate::host::HostError;
use crate::metrics::NodeMetrics;
use crate::model::LoadedModel;
use crate::rate::ClientLimits;

pub use edgerec_core::serving::{Degraded, RecommendRequest, RecommendResponse};

/// `POST /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    pub events: Vec<ClientEvent>,
}

/// A request the node did not answer.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{message}")]
    BadRequest { kind: String, message: String },
    /// 413: the request would cost more than a limit allows.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("this node does not serve surface `{0}`")]
    UnknownSurface(String),
    #[error("no verified model is loaded for surface `{0}` yet")]
    NotReady(String),
    #[error("{0}")]
    NotServed(String),
    #[error(
        "this node has not settled on the registry's signing key yet (the registry has not answered)"
    )]
    NoKeyYet,
    /// The store's own error is logged, not answered.
    #[error("the feature store did not answer")]
    FeatureStore,
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl ServiceError {
    fn bad(kind: &str, message: impl Into<String>) -> Self {
        ServiceError::BadRequest {
            kind: kind.into(),
            message: message.into(),
        }
    }

    pub fn kind(&self) -> &str {
        match self {
            ServiceError::BadRequest { kind, .. } => kind,
            ServiceError::TooLarge(_) => "request_too_large",
            ServiceError::Auth(e) => e.kind(),
            ServiceError::UnknownSurface(_) => "unknown_surface",
            ServiceError::NotReady(_) | ServiceError::NoKeyYet => "not_ready",
            ServiceError::NotServed(_) => "not_found",
            ServiceError::FeatureStore => "feature_store_unavailable",
            ServiceError::Ingest(IngestError::Invalid(_)) => "invalid_events",
            ServiceError::Ingest(IngestError::Backlog { .. }) => "backlog_full",
            ServiceError::Ingest(e) if e.is_no_space() => "insufficient_storage",
            ServiceError::Ingest(_) => "ingest_unavailable",
        }
    }
}

/// Everything a request needs, shared by the HTTP workers.
pub struct NodeState<S> {
    pub(crate) node_id: String,
    pub(crate) surfaces: Vec<Surface>,
    pub(crate) limits: RequestLimits,
    pub(crate) access_log: bool,
    pub(crate) deployments: Arc<Deployments>,
    pub(crate) features: UserFeatureReader<S>,
    pub(crate) popularity: Arc<Popularity>,
    pub(crate) ingest: Arc<Ingest<S>>,
    pub(crate) metrics: NodeMetrics,
    pub(crate) auth: Authenticator,
    pub(crate) rate: ClientLimits,
    pub(crate) catalogue: CatalogueCache,
    /// Request ids are `<node>-<boot time>-<counter>`: unique across nodes and restarts without coordination.
    pub(crate) boot_ms: i64,
    pub(crate) requests: AtomicU64,
    /// When each surface's plan was last confirmed with the registry.
    pub(crate) plan_health: Arc<crate::plan_health::PlanHealth>,
}

impl<S> std::fmt::Debug for NodeState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl<S: FeatureStore> NodeState<S> {
    /// Surfaces with no deployment yet (empty: ready).
    pub fn unready_surfaces(&self) -> Vec<Surface> {
        self.surfaces
            .iter()
            .filter(|s| self.deployments.get(s).is_none())
            .cloned()
            .collect()
    }

    fn next_request_id(&self) -> RequestId {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        RequestId::parse(format!("{}-{:x}-{n:x}", self.node_id, self.boot_ms)).expect(
            "a node id of the name rule (checked with the configuration) makes a good request id",
        )
    }

    /// The request with its ids parsed, if it is within the limits; run once the caller is known to be allowed to
    /// name its user, so a caller without the right learns nothing about the rest of the request.
    fn check(&self, request: RecommendRequest) -> Result<CheckedRequest, ServiceError> {
        request
            .check(&self.limits.recommend())
            .map_err(|e| match e {
                RequestError::Bad { kind, message } => ServiceError::bad(kind, message),
                RequestError::TooLarge(message) => ServiceError::TooLarge(message),
            })
    }

    /// The deployment serving `surface`.
    pub fn deployment(&self, surface: &str) -> Result<Arc<Deployment>, ServiceError> {
        if !self.surfaces.iter().any(|s| s == surface) {
            return Err(ServiceError::UnknownSurface(surface.to_string()));
        }
        self.deployments
            .get(surface)
            .ok_or_else(|| ServiceError::NotReady(surface.to_string()))
    }

    /// Answers `request` for `caller`, who must be allowed to name its user (before anything is read).
    pub async fn recommend(
        &self,
        caller: &Caller,
        request: RecommendRequest,
    ) -> Result<RecommendResponse, ServiceError> {
        caller.may_act_for(request.user_id.as_deref(), Scope::Recommend)?;
        let request = self.check(request)?;
        let deployment = self.deployment(&request.surface)?;
        let request_id = self.next_request_id();
        let (variant, revoked) =
            match deployment.variant_for(request.user.as_deref().unwrap_or(&request_id)) {
                Assigned::Own(variant) => (variant, None),
                Assigned::Reassigned { serving, revoked } => (serving, Some(revoked)),
                Assigned::NoneServing(own) => {
                    return self.by_popularity_alone(request, &deployment, own, request_id);
                }
            };
        let model = &variant.model;
        self.check_record_bound(&request, model)?;

        let (history, mut degraded) = self.stored_history(&request).await;
        let unknown_items = unknown_items(&request.recent_items, |item| model.knows(item));
        let surface = request.surface;
        let user = request.user;
        // What the model is fed, and what the serving log records as fed.
        let rank_request = fed_request(
            history,
            &request.recent_items,
            request.exclude,
            request.k,
            request.context,
            |item| model.knows(item),
            model.max_len(),
        );
        let (items, rank_request) = if degraded.is_some() && rank_request.recent_items.is_empty() {
            (self.by_popularity(model, &rank_request), rank_request)
        } else {
            let (ranked, rank_request) = self.rank(model, rank_request, &surface).await?;
            match ranked {
                Ok(items) => (items, rank_request),
                Err(fault) => {
                    degraded = Some(fault);
                    (self.by_popularity(model, &rank_request), rank_request)
                }
            }
        };
        // A fault of the serving variant says more than the reassignment it answered for.
        let degraded = degraded.or_else(|| {
            revoked.map(|own| Degraded::revoked(&own.name, &own.model, &own.version, &variant.name))
        });
        if let Some(degraded) = &degraded {
            self.metrics
                .fallbacks
                .with_label_values(&[degraded.reason.as_str()])
                .inc();
        }
        self.metrics
            .recommendations
            .with_label_values(&[surface.as_str(), &variant.name, model.version()])
            .inc();
        self.log_served(ServedRequest {
            request_id: request_id.clone(),
            time_ms: edgerec_features::now_ms(),
            user,
            surface: deployment.plan.surface.clone(),
            history: rank_request.recent_items,
            context: rank_request.context,
            model_version: model.version().clone(),
            variant: variant.name.clone(),
            items: items.iter().map(|s| s.item.clone()).collect(),
            scores: items.iter().map(|s| s.score).collect(),
            degraded: degraded.as_ref().map(|d| d.reason.clone()),
        });
        Ok(RecommendResponse {
            request_id,
            items,
            model: model.model().clone(),
            model_version: model.version().clone(),
            variant: variant.name.clone(),
            plan_revision: deployment.plan.revision,
            degraded,
            unknown_items,
        })
    }

    /// Refuses a request whose serving-log record could pass the limit, before anything is read.
    fn check_record_bound(
        &self,
        request: &CheckedRequest,
        model: &LoadedModel,
    ) -> Result<(), ServiceError> {
        let bound = served_record_bound(
            request.user.as_deref(),
            model.max_len(),
            &request.context,
            request.k,
            model.longest_id(),
        );
        if bound > self.limits.max_served_record_bytes {
            return Err(ServiceError::TooLarge(format!(
                "this request could add up to {bound} bytes to the serving log, more than the limit of {}",
                self.limits.max_served_record_bytes
            )));
        }
        Ok(())
    }

    /// The user's stored recent items (none for an anonymous request), or none and why, when the store cannot be
    /// read: the answer is then made from the request's own items, or by popularity.
    async fn stored_history(&self, request: &CheckedRequest) -> (Vec<ItemId>, Option<Degraded>) {
        let Some(user) = &request.user else {
            return (Vec::new(), None);
        };
        let reads = &self.metrics.feature_reads;
        match self.features.recent_items(user).await {
            Ok((items, source)) => {
                let outcome = match source {
                    FeatureSource::Cache => "cache_hit",
                    FeatureSource::Store => "store",
                };
                reads.with_label_values(&[outcome]).inc();
                (items.to_vec(), None)
            }
            Err(e) => {
                reads.with_label_values(&["unavailable"]).inc();
                crate::log_line("features", serde_json::json!({ "error": e.to_string() }));
                let own_items = !request.recent_items.is_empty();
                let degraded = Degraded {
                    reason: "feature_store_unavailable".into(),
                    fallback: if own_items { "recent_items" } else { "popularity" }.into(),
                    message: if own_items {
                        "the user's stored history could not be read; ranked from this request's items"
                    } else {
                        "the user's stored history could not be read; ranked by popularity"
                    }
                    .into(),
                };
                (Vec::new(), Some(degraded))
            }
        }
    }

    /// Ranks `request` with `model` off the HTTP workers (a ranking holds its thread for its whole deadline): the
    /// items, or the fault that sends the answer to popularity; a request error is refused.
    async fn rank(
        &self,
        model: &Arc<LoadedModel>,
        request: RankRequest,
        surface: &str,
    ) -> Result<(Result<Vec<ScoredItem>, Degraded>, RankRequest), ServiceError> {
        let ranker = model.clone();
        let ranked = actix_web::web::block(move || {
            let (ranked, took) = ranker.rank_timed(&request);
            (ranked, request, took)
        })
        .await;
        let Ok((ranked, request, took)) = ranked else {
            return Err(ServiceError::NotReady(surface.to_string()));
        };
        if let Some(took) = took {
            self.metrics
                .rank_seconds
                .with_label_values(&[surface])
                .observe(took.as_secs_f64());
        }
        let answer = model_answer(ranked)?.map(|ranking| ranking.items);
        if let Err(fault) = &answer {
            self.metrics
                .errors
                .with_label_values(&[fault.reason.as_str()])
                .inc();
        }
        Ok((answer, request))
    }

    /// Queues the record for the write-ahead log before the answer leaves, but the answer does not wait for the
    /// log's sync: that wait tripled the latency under load (docs/benchmarks.md). A crash can lose the last few
    /// milliseconds of served requests; events quoting them are then learnt from rebuilt histories. A failed write
    /// is counted and logged, never turned into a failed answer.
    fn log_served(&self, served: ServedRequest) {
        let metrics = self.metrics.clone();
        let id = served.request_id.clone();
        let report = move |e: IngestError| {
            metrics.errors.with_label_values(&["serving_log"]).inc();
            crate::log_line(
                "serving_log",
                serde_json::json!({"request_id": id, "error": e.to_string()}),
            );
        };
        match self.ingest.queue_served(vec![served]) {
            Ok(ack) => {
                actix_web::rt::spawn(async move {
                    if let Err(e) = ack.await {
                        report(e);
                    }
                });
            }
            Err(e) => report(e),
        }
    }

    /// The answer when every variant of the plan is revoked: the node's live popularity, without any model (the
    /// answer names the user's own variant, flagged `revoked`).
    fn by_popularity_alone(
        &self,
        request: CheckedRequest,
        deployment: &Deployment,
        own: &Variant,
        request_id: RequestId,
    ) -> Result<RecommendResponse, ServiceError> {
        let bound = served_record_bound(
            request.user.as_deref(),
            request.recent_items.len(),
            &request.context,
            request.k,
            edgerec_core::id::MAX_ID_BYTES,
        );
        if bound > self.limits.max_served_record_bytes {
            return Err(ServiceError::TooLarge(format!(
                "this request could add up to {bound} bytes to the serving log, more than the limit of {}",
                self.limits.max_served_record_bytes
            )));
        }
        // No variant serves, so no model's vocabulary limits what live popularity answers.
        let items = by_popularity(
            self.popularity.ranked().iter(),
            &request.recent_items,
            &request.exclude,
            request.k,
            |_| true,
        );
        let degraded = Degraded {
            reason: "revoked".into(),
            fallback: "popularity".into(),
            message: format!(
                "every variant of the plan of `{}` serves a version the registry revoked; ranked by popularity",
                deployment.plan.surface
            ),
        };
        self.metrics.fallbacks.with_label_values(&["revoked"]).inc();
        self.log_served(ServedRequest {
            request_id: request_id.clone(),
            time_ms: edgerec_features::now_ms(),
            user: request.user,
            surface: deployment.plan.surface.clone(),
            history: request.recent_items,
            context: request.context,
            model_version: own.version.clone(),
            variant: own.name.clone(),
            items: items.iter().map(|s| s.item.clone()).collect(),
            scores: items.iter().map(|s| s.score).collect(),
            degraded: Some(degraded.reason.clone()),
        });
        Ok(RecommendResponse {
            request_id,
            items,
            model: own.model.clone(),
            model_version: own.version.clone(),
            variant: own.name.clone(),
            plan_revision: deployment.plan.revision,
            degraded: Some(degraded),
            unknown_items: Vec::new(),
        })
    }

    /// The most popular items the model knows, not in `history` or `exclude`, topped up from the model's
    /// no-history ranking when fewer than `k` items have popularity figures (a new catalogue, a fresh node).
    fn by_popularity(&self, model: &LoadedModel, request: &RankRequest) -> Vec<ScoredItem> {
        by_popularity(
            self.popularity.ranked().iter().chain(model.prior()),
            &request.recent_items,
            &request.exclude,
            request.k,
            |item| model.knows(item),
        )
    }

    /// Takes `batch` for `caller`, who must be allowed to name every event's user (before anything is written).
    pub async fn ingest(&self, caller: &Caller, batch: EventBatch) -> Result<Ack, ServiceError> {
        for event in &batch.events {
            caller.may_act_for(Some(&event.user), Scope::Events)?;
        }
        match self.ingest.ingest(batch.events).await {
            Ok(ack) => {
                let events = &self.metrics.events;
                events
                    .with_label_values(&["accepted"])
                    .inc_by(ack.accepted as u64);
                events
                    .with_label_values(&["duplicate"])
                    .inc_by(ack.duplicates as u64);
                Ok(ack)
            }
            Err(e) => {
                self.metrics.events.with_label_values(&["refused"]).inc();
                Err(e.into())
            }
        }
    }
}

/// What a ranking attempt means for the answer: the ranking; a refusal of the request (the caller's error); or a
/// fault of the model or ranker (deadline, trap, non-finite scores), answered by popularity and flagged.
fn model_answer(
    ranked: Result<Ranking, HostError>,
) -> Result<Result<Ranking, Degraded>, ServiceError> {
    match ranked {
        Ok(ranking) => Ok(Ok(ranking)),
        Err(HostError::Guest(report))
            if RankError::REQUEST_KINDS.contains(&report.kind.as_str()) =>
        {
            Err(ServiceError::BadRequest {
                kind: report.kind,
                message: report.message,
            })
        }
        Err(e) => {
            // A busy pool is counted, not logged: under overload that would be a line per request.
            if !matches!(e, HostError::Busy(_)) {
                crate::log_line("ranker", serde_json::json!({ "error": e.to_string() }));
            }
            let by_popularity = |reason: &str, message: &str| Degraded {
                reason: reason.into(),
                fallback: "popularity".into(),
                message: message.into(),
            };
            Ok(Err(match e {
                HostError::DeadlineExceeded(_) => by_popularity(
                    "deadline_exceeded",
                    "the model did not answer within its deadline; ranked by popularity",
                ),
                HostError::Busy(_) => by_popularity(
                    "busy",
                    "every ranker instance was busy; ranked by popularity",
                ),
                _ => Degraded::ranker_error(),
            }))
        }
    }
}

/// The most bytes the serving-log record of a request can take: its fixed fields (ids, times, names: at most
/// 1 KiB), the user, the history fed (at most `max_len` of the model's ids), the context and `k` answers (an id
/// of the model's longest and a score each).
fn served_record_bound(
    user: Option<&str>,
    max_len: usize,
    context: &BTreeMap<String, f64>,
    k: u32,
    longest_id: usize,
) -> usize {
    const FIXED: usize = 1024;
    const PER_VALUE: usize = 32;
    FIXED
        + user.map_or(0, str::len)
        + max_len * (longest_id + 3)
        + context
            .keys()
            .map(|key| key.len() + PER_VALUE)
            .sum::<usize>()
        + k as usize * (longest_id + 3 + PER_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_faults_fall_back_and_request_errors_are_refused() {
        use edgerec_core::ErrorReport;
        let fault = |e: HostError| match model_answer(Err(e)) {
            Ok(Err(degraded)) => degraded,
            other => panic!("expected a fallback, got {other:?}"),
        };
        let late = fault(HostError::DeadlineExceeded(
            std::time::Duration::from_millis(50),
        ));
        assert_eq!(
            (late.reason.as_str(), late.fallback.as_str()),
            ("deadline_exceeded", "popularity")
        );
        assert_eq!(
            fault(HostError::Trap("unreachable".into())).reason,
            "ranker_error"
        );
        assert_eq!(
            fault(HostError::Guest(ErrorReport::new(
                "non_finite_score",
                "NaN"
            )))
            .reason,
            "ranker_error"
        );
        match model_answer(Err(HostError::Guest(ErrorReport::new(
            "invalid_features",
            "bad context",
        )))) {
            Err(ServiceError::BadRequest { kind, .. }) => assert_eq!(kind, "invalid_features"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let ranking = Ranking {
            items: Vec::new(),
            unknown_items: ItemId::parse_all(["x"]).expect("an item id"),
        };
        assert!(matches!(model_answer(Ok(ranking.clone())), Ok(Ok(r)) if r == ranking));
    }
}
