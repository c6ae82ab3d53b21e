//! The HTTP layer (`../shared/design/api.md`): the router with the
//! middleware stack, the extractors every route uses ([`extract`]), the
//! kernel's own
//! routes (system, identities, orgs, policies, approvals, audit), and the
//! OpenAPI document. Each engine's routes live beside the engine
//! (`engines/<engine>/routes.rs`) and are merged here through
//! [`crate::engines::routes`]. Handlers convert between HTTP DTOs (camelCase
//! JSON) and the domain; only this layer and the engines' routes know axum.
//!
//! Middleware, outermost first: request id (set, then echoed as
//! `x-request-id`), error bodies (`finish_errors`), trace, catch-panic,
//! metrics, body limit, the sealed gate; the routes that may wait on the
//! nodes or the database are [`timed`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::routes;

use crate::kernel::db::new_id;
use crate::kernel::error::{AppError, ErrorBody, ErrorKind};
use crate::kernel::state::AppState;

mod admin;
mod extract;
mod identities;
pub mod openapi;
mod sys;

pub(crate) use crate::kernel::guard::{audit_event, audited_read, authorize, check_name, record};
pub use extract::ApiJson;
pub(crate) use extract::{optional_body, Context};
pub use openapi::ApiRouter;

/// Every route with its documentation ([`openapi`]): the kernel's own
/// and every engine's.
pub fn api() -> ApiRouter {
    ApiRouter::with_openapi(openapi::Base::openapi())
        .routes(routes!(openapi_json))
        .routes(routes!(metrics_text))
        .merge(sys::routes())
        .merge(identities::routes())
        .merge(admin::routes())
        .merge(crate::engines::routes())
}

/// The router over `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let (router, _) = api().split_for_parts();
    router
        .fallback(|| async { AppError::not_found("route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            sys::sealed_gate,
        ))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(|_panic| {
            AppError::internal("handler", "a handler panicked").into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .layer(middleware::from_fn(finish_errors))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .with_state(state)
}

/// `router` with the API's timeout: `504` after 180 s (routes that wait on
/// the nodes or the database; preparing a committee takes minutes and is
/// not timed).
pub(crate) fn timed(router: impl Into<ApiRouter>) -> ApiRouter {
    router.into().layer(TimeoutLayer::with_status_code(
        StatusCode::GATEWAY_TIMEOUT,
        Duration::from_secs(180),
    ))
}

/// The status of each kind of error.
fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Gone => StatusCode::GONE,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = status_of(self.kind).into_response();
        response.extensions_mut().insert(ErrorBody {
            code: self.code,
            message: self.message,
        });
        response
    }
}

/// Request ids: `rq_` and 16 random bytes.
#[derive(Clone, Copy, Default)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&new_id("rq"))
            .ok()
            .map(RequestId::new)
    }
}

fn request_id_of(
    parts_extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
) -> String {
    parts_extensions
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .or_else(|| {
            headers
                .get("x-request-id")
                .and_then(|value| value.to_str().ok())
        })
        .unwrap_or_default()
        .to_string()
}

/// Writes every error response as `{"error": {code, message, requestId}}`,
/// including the framework's own plain rejections.
async fn finish_errors(request: Request, next: Next) -> Response {
    let request_id = request_id_of(request.extensions(), request.headers());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let body = response.extensions().get::<ErrorBody>().cloned();
    let (code, message) = match body {
        Some(body) => (body.code, body.message),
        None => match status {
            StatusCode::NOT_FOUND => ("not_found", "not found".to_string()),
            StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed".into()),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large".into()),
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => {
                ("timeout", "the request took too long".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "send JSON with content-type application/json".into(),
            ),
            _ if status.is_server_error() => ("internal", "internal error".into()),
            _ => ("bad_request", "bad request".into()),
        },
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = json!({"error": {"code": code, "message": message, "requestId": request_id}});
    Response::from_parts(parts, axum::body::Body::from(body.to_string()))
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("custos_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status).increment(1);
    metrics::histogram!("custos_http_request_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

// ---- System ----

/// This document: the OpenAPI 3.1 description of every route.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "sys",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Value)))]
async fn openapi_json() -> Response {
    static BODY: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| openapi::document().to_string().into());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
        .into_response()
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "sys",
    responses((status = 200, description = "The metrics", body = String,
        content_type = "text/plain")))]
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => {
            AppError::unavailable("metrics_disabled", "metrics are not enabled").into_response()
        }
    }
}
