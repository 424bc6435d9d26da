//! The node's HTTP API: `/v1/recommend`, `/v1/events`, `/v1/deployments`, `/healthz`, `/readyz`, `/metrics`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError, web};
use edgerec_features::store::FeatureStore;

use crate::service::{EventBatch, NodeState, RecommendRequest, ServiceError};

impl ResponseError for ServiceError {
    fn status_code(&self) -> StatusCode {
        match self {
            ServiceError::BadRequest { .. }
            | ServiceError::Ingest(edgerec_features::ingest::IngestError::Invalid(_)) => {
                StatusCode::BAD_REQUEST
            }
            ServiceError::UnknownSurface(_) => StatusCode::NOT_FOUND,
            ServiceError::NotReady(_) | ServiceError::Ingest(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        error_body(self.status_code(), self.kind(), &self.to_string())
    }
}

fn error_body(status: StatusCode, kind: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .json(serde_json::json!({ "error": { "kind": kind, "message": message } }))
}

type Shared<S> = web::Data<NodeState<S>>;

async fn recommend<S: FeatureStore>(
    state: Shared<S>,
    request: web::Json<RecommendRequest>,
) -> Result<HttpResponse, ServiceError> {
    let answer = state.recommend(request.into_inner()).await?;
    Ok(HttpResponse::Ok().json(answer))
}

async fn events<S: FeatureStore>(
    state: Shared<S>,
    batch: web::Json<EventBatch>,
) -> Result<HttpResponse, ServiceError> {
    let ack = state.ingest(batch.into_inner()).await?;
    Ok(HttpResponse::Ok().json(ack))
}

async fn deployments<S: FeatureStore>(state: Shared<S>) -> HttpResponse {
    let all: Vec<_> = state
        .deployments
        .all()
        .iter()
        .map(|d| d.describe())
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "node": state.node_id, "deployments": all }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn readyz<S: FeatureStore>(state: Shared<S>) -> HttpResponse {
    let waiting = state.unready_surfaces();
    if waiting.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "not_ready",
            "message": "no verified model is loaded yet for these surfaces",
            "surfaces": waiting,
        }))
    }
}

async fn metrics<S: FeatureStore>(state: Shared<S>) -> HttpResponse {
    let ingest = state.ingest.stats();
    state
        .metrics
        .ingest_backlog
        .set(ingest.durable_seq.saturating_sub(ingest.applied_seq) as i64);
    state
        .metrics
        .ingest_apply_failures
        .set(ingest.apply_failures as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// A JSON body limited to `limit` bytes, whose errors get the node's error shape (413 past the limit).
fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |error, _| {
            let response = match &error {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => error_body(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    &format!("the body is larger than the limit of {limit} bytes"),
                ),
                _ => error_body(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("the JSON body does not parse: {error}"),
                ),
            };
            actix_web::error::InternalError::from_response(error, response).into()
        })
}

/// Times every request into the metrics, and writes an access log line when asked to.
async fn observe<S: FeatureStore>(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let path = request.path().to_string();
    let state = request.app_data::<Shared<S>>().cloned();
    let response = next.call(request).await?;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    if let Some(state) = state {
        state
            .metrics
            .requests
            .with_label_values(&[route.as_str(), &status.to_string()])
            .observe(seconds);
        if state.access_log || status >= 500 {
            crate::log_line(
                "http",
                serde_json::json!({
                    "path": path,
                    "status": status,
                    "duration_ms": (seconds * 1e6).round() / 1e3,
                }),
            );
        }
    }
    Ok(response)
}

/// Registers every route on `config`, and the static web demo at `/` when `web_demo` names its folder.
pub fn configure<S: FeatureStore>(
    config: &mut web::ServiceConfig,
    state: Shared<S>,
    web_demo: Option<std::path::PathBuf>,
) {
    let limits = state.limits.clone();
    config
        .app_data(state)
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz::<S>))
        .route("/metrics", web::get().to(metrics::<S>))
        .service(
            web::scope("/v1")
                .wrap(actix_web::middleware::from_fn(observe::<S>))
                .service(
                    web::resource("/recommend")
                        .app_data(json_config(limits.max_recommend_bytes))
                        .route(web::post().to(recommend::<S>)),
                )
                .service(
                    web::resource("/events")
                        .app_data(json_config(limits.max_events_bytes))
                        .route(web::post().to(events::<S>)),
                )
                .route("/deployments", web::get().to(deployments::<S>)),
        );
    if let Some(dir) = web_demo {
        config.service(actix_files::Files::new("/", dir).index_file("index.html"));
    }
    config.default_service(web::to(|| async {
        error_body(StatusCode::NOT_FOUND, "not_found", "no such route")
    }));
}
