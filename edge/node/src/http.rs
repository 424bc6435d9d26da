//! The node's HTTP API. Public: `/v1/recommend`, `/v1/events` and `/v1/session` behind the gate ([`crate::guard`]:
//! credentials and rates); for pages that rank on the device, read-only and without a token: `/v1/plans/{surface}`,
//! `/v1/models/{model}/versions/{version}`, `/v1/blobs/{digest}` and `/v1/signing-key` (the registry's read API,
//! limited to what this node serves, so the browser package reads either), and `/v1/catalogue/{surface}`;
//! `/healthz` and `/readyz`. On the admin address only: `/metrics` and `/v1/deployments`.

use std::time::Instant;

use actix_files::NamedFile;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::JsonPayloadError;
use actix_web::http::header::ContentEncoding;
use actix_web::http::{StatusCode, header};
use actix_web::middleware::{Compress, Next};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use edgerec_core::Digest;
use edgerec_features::ingest::LeaseState;
use edgerec_features::store::FeatureStore;
// Which other sites' pages may call the API (`*` for any): the registry's rules, so a page can use either.

use crate::auth::{AuthError, Caller};
use crate::catalogue::PageQuery;
use crate::guard::{Refusal, gate};
use crate::service::{EventBatch, NodeState, RecommendRequest, ServiceError};

impl ResponseError for ServiceError {
    fn status_code(&self) -> StatusCode {
        match self {
            ServiceError::BadRequest { .. }
            | ServiceError::Ingest(edgerec_features::ingest::IngestError::Invalid(_)) => {
                StatusCode::BAD_REQUEST
            }
            ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::Auth(AuthError::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
            ServiceError::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            ServiceError::UnknownSurface(_) | ServiceError::NotServed(_) => StatusCode::NOT_FOUND,
            ServiceError::Ingest(e) if e.is_no_space() => StatusCode::INSUFFICIENT_STORAGE,
            ServiceError::NotReady(_)
            | ServiceError::NoKeyYet
            | ServiceError::Ingest(_)
            | ServiceError::FeatureStore => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            // The same answer (and WWW-Authenticate) as a refusal at the gate.
            ServiceError::Auth(e) => Refusal::Auth(e.clone()).response(),
            // The store is behind or the disk is full: nothing was written, and the same batch succeeds later.
            ServiceError::Ingest(e)
                if e.is_no_space()
                    || matches!(e, edgerec_features::ingest::IngestError::Backlog { .. }) =>
            {
                let mut response = error_body(self.status_code(), self.kind(), &self.to_string());
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from_static(INGEST_RETRY_AFTER_S),
                );
                response
            }
            _ => error_body(self.status_code(), self.kind(), &self.to_string()),
        }
    }
}

/// Seconds a sender should wait before sending refused events again.
const INGEST_RETRY_AFTER_S: &str = "5";

pub(crate) fn error_body(status: StatusCode, kind: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .json(serde_json::json!({ "error": { "kind": kind, "message": message } }))
}

type Shared<S> = web::Data<NodeState<S>>;

async fn recommend<S: FeatureStore>(
    state: Shared<S>,
    caller: web::ReqData<Caller>,
    request: web::Json<RecommendRequest>,
) -> Result<HttpResponse, ServiceError> {
    let answer = state.recommend(&caller, request.into_inner()).await?;
    Ok(HttpResponse::Ok().json(answer))
}

async fn events<S: FeatureStore>(
    state: Shared<S>,
    caller: web::ReqData<Caller>,
    batch: web::Json<EventBatch>,
) -> Result<HttpResponse, ServiceError> {
    let ack = state.ingest(&caller, batch.into_inner()).await?;
    Ok(HttpResponse::Ok().json(ack))
}

/// `POST /v1/session`: the body of a session request (`{}` for a new visitor).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    /// A previous anonymous token of this node (expired or not, within the renewal window): the new token keeps
    /// its visitor id.
    #[serde(default)]
    previous: Option<String>,
}

/// An anonymous visitor token for a new visitor, or a renewal of a previous one.
async fn session<S: FeatureStore>(
    state: Shared<S>,
    request: web::Json<SessionRequest>,
) -> Result<HttpResponse, ServiceError> {
    let Some(issuer) = state.auth.sessions() else {
        return Err(ServiceError::NotServed(
            "this node issues no anonymous sessions (auth.anonymous_sessions.enabled)".into(),
        ));
    };
    let session = issuer.issue(request.previous.as_deref())?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(session))
}

/// The plan this node carries out for `surface` (what a browser needs to pick the same variant as the node).
async fn plan<S: FeatureStore>(
    state: Shared<S>,
    surface: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    let deployment = state.deployment(&surface)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(&deployment.plan))
}

/// The version record (file digests, signature) of a version this node serves.
async fn version<S: FeatureStore>(
    state: Shared<S>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ServiceError> {
    let (model, version) = path.into_inner();
    let record = state.deployments.record(&model, &version).ok_or_else(|| {
        ServiceError::NotServed(format!("this node serves no version {model}@{version}"))
    })?;
    Ok(HttpResponse::Ok().json(record))
}

/// A bundle file of a served version, by digest. Content-addressed, so caches may keep it for good.
async fn blob<S: FeatureStore>(
    state: Shared<S>,
    digest: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    let parsed: Digest = digest.parse().map_err(|e| ServiceError::BadRequest {
        kind: "invalid_digest".into(),
        message: format!(
            "`{}` is not a sha256 digest: {e}",
            digest.chars().take(80).collect::<String>()
        ),
    })?;
    let bytes = state.deployments.blob(&parsed).ok_or_else(|| {
        ServiceError::NotServed(format!(
            "no bundle file this node serves has digest {parsed}"
        ))
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .body(web::Bytes::from_owner(bytes)))
}

/// The registry key the node verifies with and the rotations that lead to it: a page configured with an earlier
/// key follows them; a page that pins its own key checks the chain from it.
async fn signing_key<S: FeatureStore>(state: Shared<S>) -> Result<HttpResponse, ServiceError> {
    let document = state
        .deployments
        .signing_key()
        .ok_or(ServiceError::NoKeyYet)?;
    Ok(HttpResponse::Ok().json(document))
}

async fn catalogue<S: FeatureStore>(
    state: Shared<S>,
    surface: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ServiceError> {
    let page = state.catalogue_page(&surface, query.into_inner()).await?;
    Ok(HttpResponse::Ok().json(page))
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
    match not_ready(&state) {
        None => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Some(why) => HttpResponse::ServiceUnavailable().json(why),
    }
}

/// Why the node should not take traffic, as the body of its 503; `None` when it is ready. Serving goes on either
/// way: readiness only tells a load balancer where to send requests.
fn not_ready<S: FeatureStore>(state: &NodeState<S>) -> Option<serde_json::Value> {
    let body = |message: &str, field: &str, detail: serde_json::Value| serde_json::json!({ "status": "not_ready", "message": message, field: detail });
    if let LeaseState::Conflict(message) = state.ingest.stats().lease {
        return Some(serde_json::json!({ "status": "not_ready", "message": message }));
    }
    let waiting = state.unready_surfaces();
    if !waiting.is_empty() {
        return Some(body(
            "no verified model is loaded yet for these surfaces",
            "surfaces",
            serde_json::json!(waiting),
        ));
    }
    let untrusted = state.plan_health.untrusted_plans();
    if !untrusted.is_empty() {
        let plans: Vec<_> = untrusted
            .iter()
            .map(|(surface, revision, why)| {
                serde_json::json!({"surface": surface, "revision": revision, "error": why})
            })
            .collect();
        return Some(body(
            "the registry's current plan does not verify against this node's key (a key rotated without this \
             node, or answers altered on the way): the previous plan keeps serving",
            "untrusted_plans",
            serde_json::json!(plans),
        ));
    }
    let stale = state.plan_health.stale(&state.surfaces, Instant::now());
    if !stale.is_empty() {
        let plans: Vec<_> = stale
            .iter()
            .map(|(surface, age)| serde_json::json!({"surface": surface, "age_seconds": age.as_secs_f64()}))
            .collect();
        return Some(body(
            "the registry has not confirmed these surfaces' plans within registry.max_plan_age_ms (unreachable, \
             or its answers refused): the plans in service may be out of date",
            "stale_plans",
            serde_json::json!(plans),
        ));
    }
    None
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
    state.metrics.ingest_wal_bytes.set(ingest.wal_bytes as i64);
    state
        .metrics
        .node_id_conflict
        .set(i64::from(matches!(ingest.lease, LeaseState::Conflict(_))));
    state
        .metrics
        .rate_limited_clients
        .set(state.rate.tracked() as i64);
    let now = Instant::now();
    for surface in &state.surfaces {
        state
            .metrics
            .plan_age_seconds
            .with_label_values(&[surface.as_str()])
            .set(state.plan_health.age(surface, now).as_secs_f64());
    }
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

/// Static folders the node serves besides its API.
#[derive(Debug, Clone, Default)]
pub struct StaticFolders {
    /// The web demo, at `/`.
    pub web_demo: Option<std::path::PathBuf>,
    /// The browser package (ES module, types, Wasm), at `/pkg/`.
    pub browser_package: Option<std::path::PathBuf>,
}

#[derive(Debug)]
struct BrowserPackage(std::path::PathBuf);

/// A file of the browser package. A `.gz` copy next to it (build-wasm.sh writes one of the Wasm at gzip -9) is
/// sent as is to clients that accept gzip: on-the-fly compression uses a fast level, 40% larger for the Wasm.
async fn package_file(
    request: HttpRequest,
    file: web::Path<String>,
    package: web::Data<BrowserPackage>,
) -> actix_web::Result<HttpResponse> {
    let name = file.into_inner();
    if name.starts_with('.') || name.contains(['/', '\\']) {
        return Ok(error_body(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such file",
        ));
    }
    let accepts_gzip = request
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let compressed = package.0.join(format!("{name}.gz"));
    let file = if accepts_gzip && compressed.is_file() {
        let extension = name.rsplit('.').next().unwrap_or_default();
        NamedFile::open(compressed)?
            .set_content_type(actix_files::file_extension_to_mime(extension))
            .set_content_encoding(ContentEncoding::Gzip)
    } else {
        match NamedFile::open(package.0.join(&name)) {
            Ok(file) => file,
            Err(_) => {
                return Ok(error_body(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("the browser package has no file {name}"),
                ));
            }
        }
    };
    let mut response = file.into_response(&request);
    response.headers_mut().insert(
        header::VARY,
        header::HeaderValue::from_static("accept-encoding"),
    );
    Ok(response)
}

/// Cross-origin access for the pages that rank on the device: the listed origins (`*` for any) may read and send
/// JSON with a visitor token or API key. Nothing the node serves takes `PUT` or conditional requests, so neither is
/// allowed; `Retry-After` is exposed so a page backs off from a 429 or 503 as told.
fn cors(allowed_origins: &[String]) -> actix_cors::Cors {
    let cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .expose_headers([header::RETRY_AFTER])
        .max_age(3600);
    if allowed_origins.iter().any(|o| o == "*") {
        cors.allow_any_origin()
    } else {
        allowed_origins
            .iter()
            .fold(cors, |cors, origin| cors.allowed_origin(origin))
    }
}

/// Query strings that do not parse get the node's error shape.
fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error, _| {
        let response = error_body(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            &format!("the query string does not parse: {error}"),
        );
        actix_web::error::InternalError::from_response(error, response).into()
    })
}

/// Bytes of a `/v1/session` body (at most a previous token).
const MAX_SESSION_BODY: usize = 8 << 10;

/// The operator's routes, for the admin address: metrics, deployments, health.
pub fn configure_admin<S: FeatureStore>(config: &mut web::ServiceConfig, state: Shared<S>) {
    config
        .app_data(state)
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz::<S>))
        .route("/metrics", web::get().to(metrics::<S>))
        .route("/v1/deployments", web::get().to(deployments::<S>))
        .default_service(web::to(|| async {
            error_body(StatusCode::NOT_FOUND, "not_found", "no such route")
        }));
}

/// Registers every public route on `config`, and the static folders.
pub fn configure<S: FeatureStore>(
    config: &mut web::ServiceConfig,
    state: Shared<S>,
    folders: StaticFolders,
    allowed_origins: &[String],
) {
    let limits = state.limits.clone();
    config
        .app_data(state)
        .app_data(query_config())
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz::<S>))
        .service(
            web::scope("/v1")
                .wrap(cors(allowed_origins))
                .wrap(actix_web::middleware::from_fn(observe::<S>))
                .service(
                    web::resource("/recommend")
                        .app_data(json_config(limits.max_recommend_bytes))
                        .wrap(actix_web::middleware::from_fn(gate::<S>))
                        .route(web::post().to(recommend::<S>)),
                )
                .service(
                    web::resource("/events")
                        .app_data(json_config(limits.max_events_bytes))
                        .wrap(actix_web::middleware::from_fn(gate::<S>))
                        .route(web::post().to(events::<S>)),
                )
                .service(
                    web::resource("/session")
                        .app_data(json_config(MAX_SESSION_BODY))
                        .wrap(actix_web::middleware::from_fn(gate::<S>))
                        .route(web::post().to(session::<S>)),
                )
                .route("/plans/{surface}", web::get().to(plan::<S>))
                .route(
                    "/models/{model}/versions/{version}",
                    web::get().to(version::<S>),
                )
                .route("/blobs/{digest}", web::get().to(blob::<S>))
                .route("/signing-key", web::get().to(signing_key::<S>))
                .service(
                    web::resource("/catalogue/{surface}")
                        .wrap(Compress::default())
                        .wrap(actix_web::middleware::from_fn(gate::<S>))
                        .route(web::get().to(catalogue::<S>)),
                ),
        );
    // Blobs are not compressed on the fly: ONNX weights barely shrink and the files are cached for good.
    if let Some(dir) = folders.browser_package {
        config.service(
            web::resource("/pkg/{file}")
                .app_data(web::Data::new(BrowserPackage(dir)))
                .wrap(Compress::default())
                .wrap(cors(allowed_origins))
                .route(web::get().to(package_file)),
        );
    }
    if let Some(dir) = folders.web_demo {
        config.service(
            web::scope("")
                .wrap(Compress::default())
                .service(actix_files::Files::new("", dir).index_file("index.html")),
        );
    }
    config.default_service(web::to(|| async {
        error_body(StatusCode::NOT_FOUND, "not_found", "no such route")
    }));
}
