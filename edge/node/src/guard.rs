//! The gate in front of `/v1/recommend`, `/v1/events` and `/v1/session`: who is calling (their credential) and
//! whether they are within their rate, decided from the headers before the body is read. The handler gets the
//! [`Caller`]; what the caller may do with the body's user ids is checked by the service.

use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use edgerec_features::store::FeatureStore;

use crate::auth::{self, AuthError, Authenticator, Caller};
use crate::http::error_body;
use crate::rate::Limited;
use crate::service::NodeState;

/// Why a request was turned away at the gate.
#[derive(Debug)]
pub enum Refusal {
    Auth(AuthError),
    Limited(Limited),
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal::Auth(e)
    }
}

impl From<Limited> for Refusal {
    fn from(l: Limited) -> Self {
        Refusal::Limited(l)
    }
}

impl Refusal {
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Auth(e) => e.kind(),
            Refusal::Limited(_) => "rate_limited",
        }
    }

    fn limit(&self) -> &'static str {
        match self {
            Refusal::Auth(_) => "",
            Refusal::Limited(l) => l.limit,
        }
    }

    pub fn response(&self) -> HttpResponse {
        match self {
            Refusal::Auth(e) => {
                let status = match e {
                    AuthError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                    AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
                };
                let mut response = error_body(status, e.kind(), &e.to_string());
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer"),
                    );
                }
                response
            }
            Refusal::Limited(limited) => {
                let seconds = retry_after_seconds(limited.retry_after);
                let mut response = error_body(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    &format!(
                        "too many requests ({} limit); retry after {seconds} s",
                        limited.limit.replace('_', " ")
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
                response
            }
        }
    }
}

/// Whole seconds, at least one (`Retry-After` has no fractions).
fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait.is_zero())
}

/// The caller of `request`, if their credential holds and they are within their rate. A valid API key is
/// limited per key; everything else per client address first (so bad credentials cost a flood its rate too),
/// then per visitor.
fn admit<S: FeatureStore>(
    state: &NodeState<S>,
    request: &ServiceRequest,
) -> Result<Caller, Refusal> {
    let headers = request.headers();
    let address = state
        .rate
        .client_address(request.peer_addr(), headers.get_all("x-forwarded-for"));
    let bearer = match auth::bearer(headers.get(header::AUTHORIZATION)) {
        Ok(bearer) => bearer,
        Err(e) => {
            state.rate.check_address(address)?;
            return Err(e.into());
        }
    };
    if let Some(key) = bearer.filter(|b| Authenticator::is_api_key(b)) {
        return match state.auth.api_key(key) {
            Ok(caller) => {
                state.rate.check_caller(&caller)?;
                Ok(caller)
            }
            Err(e) => {
                state.rate.check_address(address)?;
                Err(e.into())
            }
        };
    }
    state.rate.check_address(address)?;
    let caller = state.auth.visitor(bearer)?;
    state.rate.check_caller(&caller)?;
    Ok(caller)
}

/// The middleware: refusals are answered here with their precise status and kind; admitted requests carry
/// their [`Caller`] to the handler.
pub async fn gate<S: FeatureStore>(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = request.app_data::<web::Data<NodeState<S>>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError(
            "the node's state is not registered",
        ));
    };
    match admit(&state, &request) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.call(request).await.map(|r| r.map_into_left_body())
        }
        Err(refusal) => {
            state
                .metrics
                .refusals
                .with_label_values(&[refusal.kind(), refusal.limit()])
                .inc();
            Ok(request
                .into_response(refusal.response())
                .map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
