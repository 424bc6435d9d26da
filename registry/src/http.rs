//! The registry's HTTP API (actix-web): JSON under `/v1`, bearer tokens with scopes, conditional plan updates
//! (`ETag` / `If-Match` / `If-None-Match`), `/healthz`, Prometheus `/metrics` and `/openapi.json`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;

use edgerec_registry_api::records::{PlanRequest, PlanTag, Scope};
use edgerec_registry_api::signature::SigningKeyDocument;

use crate::service::{Registry, RegistryError, group_by_model};
use crate::store::Store;

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

impl ResponseError for RegistryError {
    fn status_code(&self) -> StatusCode {
        match self {
            RegistryError::BadRequest(_) | RegistryError::DigestMismatch { .. } => {
                StatusCode::BAD_REQUEST
            }
            RegistryError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Conflict(_) => StatusCode::CONFLICT,
            RegistryError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            RegistryError::PreconditionRequired(_) => StatusCode::PRECONDITION_REQUIRED,
            RegistryError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RegistryError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            RegistryError::Forbidden(_) => StatusCode::FORBIDDEN,
            RegistryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            RegistryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, RegistryError::Unauthenticated(_)) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(
            serde_json::json!({ "error": { "kind": self.kind(), "message": self.to_string() } }),
        )
    }
}

type Shared<S> = web::Data<Registry<S>>;

fn bearer(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The name of the token that may do `scope`, for the audit log.
async fn actor<S: Store>(
    registry: &Registry<S>,
    request: &HttpRequest,
    scope: Scope,
) -> Result<String, RegistryError> {
    registry
        .authorize(bearer(request), scope)
        .await
        .map(|token| token.name)
}

/// A plan's `ETag` header: its revision, how many revocations its signature lists and the signing key's id
/// ([`PlanTag::etag`]), so a revocation or a key rotation, which change no revision, still reach those who poll with
/// `If-None-Match`.
fn etag(bare: String) -> String {
    format!("\"{bare}\"")
}

/// The revision an `If-Match: "<revision>"` (or a plan's whole `ETag`, `"<revision>.<revocations>.<key id>"`)
/// names.
fn if_match(request: &HttpRequest) -> Result<Option<u64>, RegistryError> {
    let Some(value) = request.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let bare = text.trim().trim_start_matches("W/").trim_matches('"');
    bare.split('.')
        .next()
        .and_then(|revision| revision.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            RegistryError::BadRequest(format!(
                "If-Match `{}` is not a plan revision like \"3\"",
                text.trim()
            ))
        })
}

/// Reads a request body of at most the configured size.
async fn body<S: Store>(
    registry: &Registry<S>,
    request: &HttpRequest,
    payload: web::Payload,
) -> Result<web::Bytes, RegistryError> {
    let limit = registry.max_upload_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&size| size > limit) {
        return Err(RegistryError::TooLarge { size, limit });
    }
    payload
        .to_bytes_limited(usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| RegistryError::TooLarge {
            size: limit + 1,
            limit,
        })?
        .map_err(|e| RegistryError::BadRequest(format!("the upload broke off: {e}")))
}

async fn put_blob<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    digest: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Publish).await?;
    let bytes = body(&registry, &request, payload).await?;
    let digest = registry.upload_blob(&digest, &bytes).await?;
    Ok(HttpResponse::Created()
        .json(serde_json::json!({ "digest": format!("sha256:{digest}"), "size": bytes.len() })))
}

async fn get_blob<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    digest: web::Path<String>,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Read).await?;
    let bytes = registry.blob(&digest).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .body(bytes))
}

async fn publish<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    model: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, RegistryError> {
    let who = actor(&registry, &request, Scope::Publish).await?;
    let manifest = body(&registry, &request, payload).await?;
    let published = registry.publish(&model, &manifest, &who).await?;
    let status = if published.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(published.version))
}

async fn list_models<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Read).await?;
    let models = group_by_model(registry.store.list_versions(None).await?);
    let listing: Vec<_> = models
        .into_iter()
        .map(|(model, versions)| {
            serde_json::json!({
                "model": model,
                "versions": versions.iter().map(|v| v.version.clone()).collect::<Vec<_>>(),
                "latest": versions.last().map(|v| v.version.clone()),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(listing))
}

async fn list_versions<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    model: web::Path<String>,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Read).await?;
    let versions = registry.store.list_versions(Some(&model)).await?;
    if versions.is_empty() {
        return Err(RegistryError::NotFound(format!("no model `{model}`")));
    }
    let versions: Vec<_> = versions
        .into_iter()
        .map(|record| registry.signed_record(record))
        .collect();
    Ok(HttpResponse::Ok().json(versions))
}

async fn get_version<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Read).await?;
    let (model, version) = path.into_inner();
    Ok(HttpResponse::Ok().json(registry.version(&model, &version).await?))
}

#[derive(Debug, Deserialize)]
struct ReasonQuery {
    #[serde(default)]
    reason: String,
}

async fn delete_version<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ReasonQuery>,
) -> Result<HttpResponse, RegistryError> {
    let who = actor(&registry, &request, Scope::Admin).await?;
    let (model, version) = path.into_inner();
    registry
        .delete_version(&model, &version, &who, &query.reason)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: String,
}

/// `POST /v1/models/{model}/versions/{version}/revoke` (deploy scope): the version goes on the signed revocation
/// list for good; the answer names each current plan that still names it (its traffic goes to the plan's other
/// variants, or to popularity, until the plan changes).
async fn revoke_version<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<RevokeRequest>,
) -> Result<HttpResponse, RegistryError> {
    let who = actor(&registry, &request, Scope::Deploy).await?;
    let (model, version) = path.into_inner();
    let (revocation, named) = registry
        .revoke_version(&model, &version, &who, &body.reason)
        .await?;
    let still_named_by: Vec<serde_json::Value> = named
        .iter()
        .map(|(plan, variant)| {
            serde_json::json!({
                "surface": plan.surface, "revision": plan.revision, "variant": variant.name,
                "weight": variant.weight,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "revocation": revocation,
        "still_named_by": still_named_by,
    })))
}

async fn list_revocations<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Read).await?;
    Ok(HttpResponse::Ok().json(registry.revocations().await?))
}

async fn list_plans<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Read).await?;
    Ok(HttpResponse::Ok().json(registry.store.list_plans().await?))
}

async fn get_plan<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    surface: web::Path<String>,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Read).await?;
    registry.follow_rotations().await;
    let plan = registry
        .store
        .get_plan(&surface)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("surface `{surface}` has no plan")))?;
    let revoked = registry.revoked_for(&plan).await?;
    let tag = PlanTag {
        revision: plan.revision,
        revocations: revoked.len(),
    };
    let key_id = registry.signer.key_id();
    let full = etag(tag.etag(&key_id));
    // The whole tag, or a revision alone (`"3"`, as tags were before revocations) or with its revocations (`"3.0"`).
    let unchanged = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == full || t.parse() == Ok(tag))
        });
    let tag = full;
    if unchanged {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, tag))
            .finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, tag))
        .json(registry.sign(plan, revoked).await?))
}

async fn put_plan<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    surface: web::Path<String>,
    plan: web::Json<PlanRequest>,
) -> Result<HttpResponse, RegistryError> {
    let who = actor(&registry, &request, Scope::Deploy).await?;
    let plan = registry
        .deploy(&surface, plan.into_inner(), if_match(&request)?, &who)
        .await?;
    let plan = registry.signed(plan).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(plan.etag())))
        .json(plan))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    reason: String,
}

async fn rollback<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    surface: web::Path<String>,
    body: web::Json<RollbackRequest>,
) -> Result<HttpResponse, RegistryError> {
    let who = actor(&registry, &request, Scope::Deploy).await?;
    let plan = registry
        .rollback(&surface, &body.reason, if_match(&request)?, &who)
        .await?;
    let plan = registry.signed(plan).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(plan.etag())))
        .json(plan))
}

async fn plan_history<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    surface: web::Path<String>,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Read).await?;
    Ok(HttpResponse::Ok().json(registry.store.plan_history(&surface).await?))
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Admin).await?;
    let limit = query.limit.unwrap_or(100).min(10_000);
    Ok(HttpResponse::Ok().json(registry.store.audit(limit).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    name: String,
    scopes: Vec<Scope>,
}

async fn create_token<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    body: web::Json<TokenRequest>,
) -> Result<HttpResponse, RegistryError> {
    let who = actor(&registry, &request, Scope::Admin).await?;
    let body = body.into_inner();
    Ok(HttpResponse::Created().json(registry.create_token(&body.name, body.scopes, &who).await?))
}

async fn list_tokens<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
) -> Result<HttpResponse, RegistryError> {
    actor(&registry, &request, Scope::Admin).await?;
    Ok(HttpResponse::Ok().json(registry.store.list_tokens().await?))
}

async fn revoke_token<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, RegistryError> {
    let who = actor(&registry, &request, Scope::Admin).await?;
    registry.revoke_token(&id, &who).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the retired key stays valid for verification, in hours.
    grace_hours: u32,
}

/// `POST /v1/signing-key/rotate` (admin): a new key signs from now on; the retired key signs the rotation
/// statement, which names how long it stays valid.
async fn rotate_key<S: Store + 'static>(
    registry: Shared<S>,
    request: HttpRequest,
    body: web::Json<RotateRequest>,
) -> Result<HttpResponse, RegistryError> {
    let who = actor(&registry, &request, Scope::Admin).await?;
    let grace_ms = i64::from(body.grace_hours) * 3_600_000;
    let rotation = registry.rotate_key(grace_ms, &who).await?;
    Ok(HttpResponse::Ok().json(rotation))
}

async fn signing_key<S: Store + 'static>(registry: Shared<S>) -> HttpResponse {
    registry.follow_rotations().await;
    HttpResponse::Ok().json(SigningKeyDocument::ed25519(
        registry.signer.public_key_hex(),
        registry.signer.rotations(),
    ))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Count, total seconds and cumulative bucket counts of one series.
type Observations = (u64, f64, [u64; BUCKETS.len()]);

/// Request counts and latencies per route and status, in the Prometheus text format.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Keyed by (method, route, status).
    series: Mutex<BTreeMap<(String, String, u16), Observations>>,
}

const BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let entry = series
            .entry((method.to_string(), route.to_string(), status))
            .or_insert((0, 0.0, [0; BUCKETS.len()]));
        entry.0 += 1;
        entry.1 += seconds;
        for (bucket, bound) in entry.2.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// The Prometheus exposition.
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::from(
            "# HELP edgerec_registry_requests_total Requests by method, route and status.\n\
             # TYPE edgerec_registry_requests_total counter\n",
        );
        for ((method, route, status), (count, _, _)) in series.iter() {
            out.push_str(&format!(
                "edgerec_registry_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}\n"
            ));
        }
        out.push_str(
            "# HELP edgerec_registry_request_seconds Request latency by method and route.\n\
             # TYPE edgerec_registry_request_seconds histogram\n",
        );
        let mut by_route: BTreeMap<(&str, &str), (u64, f64, [u64; BUCKETS.len()])> =
            BTreeMap::new();
        for ((method, route, _), (count, seconds, buckets)) in series.iter() {
            let entry = by_route
                .entry((method, route))
                .or_insert((0, 0.0, [0; BUCKETS.len()]));
            entry.0 += count;
            entry.1 += seconds;
            for (total, b) in entry.2.iter_mut().zip(buckets) {
                *total += b;
            }
        }
        for ((method, route), (count, seconds, buckets)) in by_route {
            let labels = format!("method=\"{method}\",route=\"{route}\"");
            for (bound, bucket) in BUCKETS.iter().zip(buckets) {
                out.push_str(&format!(
                    "edgerec_registry_request_seconds_bucket{{{labels},le=\"{bound}\"}} {bucket}\n"
                ));
            }
            out.push_str(&format!(
                "edgerec_registry_request_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\n"
            ));
            out.push_str(&format!(
                "edgerec_registry_request_seconds_sum{{{labels}}} {seconds}\n"
            ));
            out.push_str(&format!(
                "edgerec_registry_request_seconds_count{{{labels}}} {count}\n"
            ));
        }
        out
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}

/// A request method as a metric label: the standard ones by name, any other as `other`, so a client inventing
/// methods cannot grow the metrics without bound.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(m, _)| m == method)
        .map_or("other", |(_, name)| name)
}

/// Records every request in [`Metrics`] and writes one JSON log line per request to stderr.
pub async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(request.method()).to_string();
    let path = request.path().to_string();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let metrics = request.app_data::<web::Data<Metrics>>().cloned();
    let response = next.call(request).await?;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    if let Some(metrics) = metrics {
        metrics.record(&method, &route, status, seconds);
    }
    crate::log_line(
        "http",
        serde_json::json!({
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": (seconds * 1e6).round() / 1e3,
        }),
    );
    Ok(response)
}

/// Cross-origin access for browsers: the listed origins (`*` for any) may call the API with JSON bodies and a
/// bearer token. Edge nodes use it for the pages that rank on the device.
pub fn cors(allowed_origins: &[String]) -> actix_cors::Cors {
    let cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "PUT"])
        .allowed_headers([
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::IF_NONE_MATCH,
        ])
        .expose_headers([
            actix_web::http::header::ETAG,
            actix_web::http::header::RETRY_AFTER,
        ])
        .max_age(3600);
    if allowed_origins.iter().any(|o| o == "*") {
        cors.allow_any_origin()
    } else {
        allowed_origins
            .iter()
            .fold(cors, |cors, origin| cors.allowed_origin(origin))
    }
}

/// Registers every route on `config`.
pub fn configure<S: Store + 'static>(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi))
        .service(
            web::scope("/v1")
                .route("/signing-key", web::get().to(signing_key::<S>))
                .route("/signing-key/rotate", web::post().to(rotate_key::<S>))
                .route("/blobs/{digest}", web::put().to(put_blob::<S>))
                .route("/blobs/{digest}", web::get().to(get_blob::<S>))
                .route("/models", web::get().to(list_models::<S>))
                .route(
                    "/models/{model}/versions",
                    web::get().to(list_versions::<S>),
                )
                .route("/models/{model}/versions", web::post().to(publish::<S>))
                .route(
                    "/models/{model}/versions/{version}",
                    web::get().to(get_version::<S>),
                )
                .route(
                    "/models/{model}/versions/{version}",
                    web::delete().to(delete_version::<S>),
                )
                .route(
                    "/models/{model}/versions/{version}/revoke",
                    web::post().to(revoke_version::<S>),
                )
                .route("/revocations", web::get().to(list_revocations::<S>))
                .route("/plans", web::get().to(list_plans::<S>))
                .route("/plans/{surface}", web::get().to(get_plan::<S>))
                .route("/plans/{surface}", web::put().to(put_plan::<S>))
                .route("/plans/{surface}/rollback", web::post().to(rollback::<S>))
                .route("/plans/{surface}/history", web::get().to(plan_history::<S>))
                .route("/audit", web::get().to(audit::<S>))
                .route("/tokens", web::post().to(create_token::<S>))
                .route("/tokens", web::get().to(list_tokens::<S>))
                .route("/tokens/{id}", web::delete().to(revoke_token::<S>)),
        );
}

/// JSON bodies that do not parse get the registry's error shape.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(1 << 20)
        .error_handler(|error, _| {
            RegistryError::BadRequest(format!("the JSON body does not parse: {error}")).into()
        })
}

#[cfg(test)]
mod tests {
    use actix_web::http::header;
    use actix_web::{App, HttpResponse, test, web};

    use super::{cors, method_label};

    #[test]
    async fn invented_methods_share_one_metric_label() {
        use actix_web::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"PROPFIND").expect("a method")),
            "other"
        );
        assert_eq!(
            method_label(&Method::from_bytes(b"X-RANDOM-123").expect("a method")),
            "other"
        );
    }

    /// A browser's preflight for a cross-origin GET with a bearer token: allowed for a listed origin only.
    async fn preflight(allowed: &[&str], origin: &str) -> Option<String> {
        let allowed: Vec<String> = allowed.iter().map(|o| o.to_string()).collect();
        let app = test::init_service(
            App::new()
                .wrap(cors(&allowed))
                .route("/v1/plans/home", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let request = test::TestRequest::default()
            .method(actix_web::http::Method::OPTIONS)
            .uri("/v1/plans/home")
            .insert_header((header::ORIGIN, origin))
            .insert_header((header::ACCESS_CONTROL_REQUEST_METHOD, "GET"))
            .insert_header((header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization"))
            .to_request();
        let response = test::call_service(&app, request).await;
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    #[actix_web::test]
    async fn pages_of_listed_origins_only_may_call() {
        let shop = "https://shop.example";
        assert_eq!(preflight(&[shop], shop).await.as_deref(), Some(shop));
        assert_eq!(preflight(&[shop], "https://elsewhere.example").await, None);
        assert_eq!(preflight(&[], shop).await, None);
        assert_eq!(preflight(&["*"], shop).await.as_deref(), Some(shop));
    }
}
