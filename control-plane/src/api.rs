//! The HTTP API (`../shared/design/api.md`): the router, the middleware
//! stack, extractors and handlers. Handlers convert between HTTP DTOs
//! (camelCase JSON) and the domain modules; serialization happens here.
//!
//! Middleware, outermost first: request id (set, then echoed as
//! `x-request-id`), error bodies (`finish_errors`), trace, catch-panic,
//! metrics, body limit, timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::audit::{self, AuditEvent, AuditFilter};
use crate::auth::Caller;
use crate::db::{new_id, now_ms};
use crate::error::{AppError, AppResult, ErrorBody};
use crate::gate;
use crate::policy;
use crate::signing::{self, SignInput};
use crate::state::AppState;
use crate::wallets::{self, Protocol, Wallet};

mod backups;
mod identities;
mod keys;
mod secrets;
mod sys;
mod transit;

/// The router over `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let timed = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/orgs", post(create_org))
        .route("/api/v1/orgs/{id}/policies/reseal", post(reseal_policies))
        .route("/api/v1/policies", post(create_policy).get(list_policies))
        .route("/api/v1/policies/{id}", get(get_policy).put(update_policy))
        .route("/api/v1/approvals", get(list_approvals))
        .route("/api/v1/approvals/{id}", get(get_approval))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/reject", post(reject))
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/audit/verify", get(verify_audit))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/wallets", post(create_wallet).get(list_wallets))
        .route("/api/v1/wallets/{id}", get(get_wallet))
        .route("/api/v1/wallets/{id}/address", get(wallet_address))
        .route("/api/v1/wallets/{id}/sign", post(sign))
        .route("/api/v1/wallets/{id}/reshare", post(reshare))
        .route("/api/v1/wallets/{id}/freeze", post(freeze_wallet))
        .route("/api/v1/wallets/{id}/unfreeze", post(unfreeze_wallet))
        .route("/api/v1/signing-requests/{id}", get(get_signing_request))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(180),
        ));
    // Preparing an ECDSA committee generates Paillier keys: minutes.
    let slow = Router::new().route("/api/v1/nodes/committees", post(prepare_committee));
    timed
        .merge(slow)
        .merge(sys::routes())
        .merge(identities::routes())
        .merge(transit::routes())
        .merge(secrets::routes())
        .merge(keys::routes())
        .merge(backups::routes())
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

/// The client's IP: the socket peer (no proxy headers are trusted).
fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> AppResult<Caller> {
        let request_id = request_id_of(&parts.extensions, &parts.headers);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        // Vault clients send their token in `X-Vault-Token`: a Custos token
        // works there too (the Vault-compatible transit routes).
        let vault_token = parts
            .headers
            .get("x-vault-token")
            .and_then(|value| value.to_str().ok());
        let Some(token) = header
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .or(vault_token)
        else {
            return Err(AppError::unauthenticated(
                "unauthenticated",
                "send Authorization: Bearer <token> (from POST /api/v1/auth/token)",
            ));
        };
        let mut caller = state
            .tokens
            .authenticate(
                &state.db,
                &state.keyring,
                token.trim(),
                client_ip(parts),
                &request_id,
            )
            .await?;
        caller.totp = totp_header(&parts.headers).map(str::to_string);
        if !state.limiter.allow(&caller.identity) {
            return Err(AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this identity; slow down",
            ));
        }
        Ok(caller)
    }
}

/// The caller's current TOTP code (`X-Custos-TOTP`), for rules that
/// require MFA.
fn totp_header(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("x-custos-totp")
        .and_then(|value| value.to_str().ok())
}

/// The request id and client IP, for handlers without a caller.
struct Context {
    request_id: String,
    ip: IpAddr,
}

impl<S: Send + Sync> FromRequestParts<S> for Context {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> AppResult<Context> {
        Ok(Context {
            request_id: request_id_of(&parts.extensions, &parts.headers),
            ip: client_ip(parts),
        })
    }
}

/// A JSON body whose rejections become API errors with stable codes.
pub struct ApiJson<T>(pub T);

/// Drops quoted input values from serde messages (they may be secrets),
/// keeping field names.
fn sanitize_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quote = false;
    for character in message.chars() {
        match (character, in_quote) {
            ('"', false) => {
                in_quote = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                in_quote = false;
                out.push('"');
            }
            (_, true) => {}
            (character, false) => out.push(character),
        }
    }
    out
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> AppResult<Self> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(error) => {
                    AppError::invalid("invalid_body", sanitize_serde_message(&error.body_text()))
                }
                JsonRejection::JsonSyntaxError(_) => {
                    AppError::bad_request("malformed_json", "the body is not valid JSON")
                }
                JsonRejection::MissingJsonContentType(_) => AppError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send JSON with content-type application/json",
                ),
                JsonRejection::BytesRejection(error) => {
                    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        AppError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "payload_too_large",
                            "request body too large",
                        )
                    } else {
                        AppError::bad_request("bad_body", "the body could not be read")
                    }
                }
                _ => AppError::bad_request("bad_body", "the body could not be read"),
            }),
        }
    }
}

/// Decides an action that has no approval flow of its own through the one
/// authorisation path (`gate::allow`: role, policy, MFA; refusals audited).
async fn authorize(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
) -> AppResult<()> {
    gate::allow(state, caller, gate::Ask::new(action, resource)).await?;
    Ok(())
}

async fn audit_event(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
    approved: &str,
    outcome: &str,
    detail: Value,
) -> AppResult<()> {
    let mut tx = state.db.begin().await?;
    record(
        state, &mut tx, caller, action, resource, approved, outcome, detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Appends the caller's audit record inside `tx`.
#[allow(clippy::too_many_arguments)]
async fn record(
    state: &AppState,
    tx: &mut crate::db::Tx,
    caller: &Caller,
    action: &str,
    resource: &str,
    approved: &str,
    outcome: &str,
    detail: Value,
) -> AppResult<()> {
    audit::append(
        &state.db,
        tx,
        &AuditEvent {
            org: &caller.org,
            action,
            resource,
            identity: &caller.identity,
            ip: &caller.ip.to_string(),
            approved,
            outcome,
            request_id: &caller.request_id,
            detail,
        },
    )
    .await?;
    Ok(())
}

/// Authorizes a read and records it (a read is audited before it answers;
/// if the record cannot be written, the read fails).
async fn audited_read(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
) -> AppResult<()> {
    authorize(state, caller, action, resource).await?;
    audit_event(
        state,
        caller,
        action,
        resource,
        "allowed",
        "success",
        json!({}),
    )
    .await
}

// ---- System ----

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    match &state.metrics {
        Some(handle) => handle.render().into_response(),
        None => {
            AppError::unavailable("metrics_disabled", "metrics are not enabled").into_response()
        }
    }
}

// ---- Identity and access ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OrgBody {
    name: String,
}

fn check_name(name: &str, what: &str) -> AppResult<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(AppError::invalid(
            "invalid_name",
            format!("{what} names are 1-64 characters of A-Z a-z 0-9 - _ ."),
        ))
    }
}

async fn create_org(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<OrgBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    if !caller.platform_admin {
        return Err(AppError::forbidden(
            "forbidden",
            "only a platform admin creates orgs",
        ));
    }
    check_name(&body.name, "org")?;
    let mut tx = state.db.begin().await?;
    let id = crate::orgs::create_org(&state.db, &mut tx, &body.name).await?;
    crate::orgs::seal_policies(&state.keyring, &mut tx, &id).await?;
    let resource = format!("org:{}", body.name);
    for org in [caller.org.as_str(), id.as_str()] {
        audit::append(
            &state.db,
            &mut tx,
            &AuditEvent {
                org,
                action: "org.create",
                resource: &resource,
                identity: &caller.identity,
                ip: &caller.ip.to_string(),
                approved: "allowed",
                outcome: "success",
                request_id: &caller.request_id,
                detail: json!({"org": id}),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "name": body.name})),
    ))
}

/// Reseals an org's policies as they are now: the break-glass after the
/// org's policy rows were changed behind the control plane's back (its
/// policies then deny everything). A platform admin only, after reviewing
/// the policies (`GET /api/v1/policies` as the org's admin shows them, or
/// the database); not held by the org's policy, which denies everything at
/// that point; audited in both orgs with the policies it sealed.
async fn reseal_policies(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(org): Path<String>,
) -> AppResult<Json<Value>> {
    if !caller.platform_admin {
        audit_event(
            &state,
            &caller,
            "org.reseal",
            &format!("org:{org}"),
            "denied",
            "denied",
            json!({"reason": "platform_admin_only"}),
        )
        .await?;
        return Err(AppError::forbidden(
            "forbidden",
            "only a platform admin reseals an org's policies",
        ));
    }
    let exists = sqlx::query("SELECT id FROM orgs WHERE id = $1")
        .bind(&org)
        .fetch_optional(state.db.pool())
        .await?;
    if exists.is_none() {
        return Err(AppError::not_found("org"));
    }
    let mut tx = state.db.begin().await?;
    crate::orgs::seal_policies(&state.keyring, &mut tx, &org).await?;
    let sealed = crate::orgs::policies(&mut tx, &org).await?;
    let summary: Vec<Value> = sealed
        .iter()
        .map(|policy| json!({"id": policy.id, "name": policy.name, "priority": policy.priority, "rules": policy.rules.len()}))
        .collect();
    let mut orgs = vec![caller.org.clone()];
    if org != caller.org {
        orgs.push(org.clone());
    }
    for audit_org in &orgs {
        audit::append(
            &state.db,
            &mut tx,
            &AuditEvent {
                org: audit_org,
                action: "org.reseal",
                resource: &format!("org:{org}"),
                identity: &caller.identity,
                ip: &caller.ip.to_string(),
                approved: "platform_admin",
                outcome: "success",
                request_id: &caller.request_id,
                detail: json!({"org": org, "policies": summary}),
            },
        )
        .await?;
    }
    tx.commit().await?;
    state.policies.invalidate(&org);
    Ok(Json(
        json!({"org": org, "resealed": true, "policies": summary}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyBody {
    name: String,
    #[serde(default)]
    priority: Option<i64>,
    rules: Vec<policy::Rule>,
}

/// Runs a policy change that `operations::gate` allowed now, with its
/// audit record, and drops this replica's cached copy of the org's
/// policies once it committed.
async fn change_policy(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
    body: &Value,
    verdict: gate::Verdict,
) -> AppResult<Value> {
    let mut tx = state.db.begin().await?;
    let result = if action == "policy.create" {
        crate::orgs::create_stored(&mut tx, &caller.org, body).await?
    } else {
        crate::orgs::update_stored(&mut tx, &caller.org, body).await?
    };
    crate::orgs::seal_policies(&state.keyring, &mut tx, &caller.org).await?;
    let mut detail = verdict.detail();
    detail["policyId"] = result["id"].clone();
    detail["rules"] = json!(body["rules"].as_array().map_or(0, Vec::len));
    record(
        state, &mut tx, caller, action, resource, "allowed", "success", detail,
    )
    .await?;
    tx.commit().await?;
    state.policies.invalidate(&caller.org);
    Ok(result)
}

/// A policy change goes through `operations::gate`: by default it waits
/// for one admin's approval (separation of duties: one admin alone cannot
/// rewrite the rules that ask for approvals).
async fn create_policy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<PolicyBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    check_name(&body.name, "policy")?;
    policy::validate_rules(&body.rules)
        .map_err(|error| AppError::invalid(error.code(), error.to_string()))?;
    let resource = format!("policy:{}", body.name);
    let stored =
        json!({"name": body.name, "priority": body.priority.unwrap_or(100), "rules": body.rules});
    match crate::operations::gate(&state, &caller, "policy.create", &resource, &stored).await? {
        crate::operations::Gate::Pending(answer) => Ok((StatusCode::ACCEPTED, Json(answer))),
        crate::operations::Gate::Proceed(verdict) => {
            let created = change_policy(
                &state,
                &caller,
                "policy.create",
                &resource,
                &stored,
                verdict,
            )
            .await?;
            Ok((StatusCode::CREATED, Json(created)))
        }
    }
}

async fn update_policy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PolicyBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    policy::validate_rules(&body.rules)
        .map_err(|error| AppError::invalid(error.code(), error.to_string()))?;
    let existing = crate::orgs::policy(&state.db, &caller.org, &id).await?;
    let resource = format!("policy:{}", existing.name);
    let stored = json!({"id": id, "priority": body.priority, "rules": body.rules});
    match crate::operations::gate(&state, &caller, "policy.update", &resource, &stored).await? {
        crate::operations::Gate::Pending(answer) => Ok((StatusCode::ACCEPTED, Json(answer))),
        crate::operations::Gate::Proceed(verdict) => {
            change_policy(
                &state,
                &caller,
                "policy.update",
                &resource,
                &stored,
                verdict,
            )
            .await?;
            Ok((
                StatusCode::OK,
                Json(
                    serde_json::to_value(crate::orgs::policy(&state.db, &caller.org, &id).await?)
                        .unwrap_or(Value::Null),
                ),
            ))
        }
    }
}

async fn list_policies(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> AppResult<Json<Value>> {
    audited_read(&state, &caller, "policy.read", "policy:*").await?;
    let mut connection = state.db.pool().acquire().await?;
    let items = crate::orgs::policies(&mut connection, &caller.org).await?;
    Ok(Json(json!({"items": items})))
}

async fn get_policy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<crate::orgs::Policy>> {
    let found = crate::orgs::policy(&state.db, &caller.org, &id).await?;
    audited_read(
        &state,
        &caller,
        "policy.read",
        &format!("policy:{}", found.name),
    )
    .await?;
    Ok(Json(found))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalQuery {
    #[serde(default)]
    status: Option<String>,
}

async fn list_approvals(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<ApprovalQuery>,
) -> AppResult<Json<Value>> {
    if let Some(status) = &query.status {
        if !["pending", "approved", "rejected", "expired"].contains(&status.as_str()) {
            return Err(AppError::invalid(
                "invalid_query",
                "status is pending, approved, rejected or expired",
            ));
        }
    }
    audited_read(&state, &caller, "approval.read", "approval:*").await?;
    let items = signing::list_approvals(&state.db, &caller.org, query.status.as_deref()).await?;
    Ok(Json(json!({"items": items})))
}

async fn get_approval(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let found = signing::approval_view(&state.db, &caller.org, &id).await?;
    audited_read(&state, &caller, "approval.read", &format!("approval:{id}")).await?;
    Ok(Json(found))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VoteBody {
    #[serde(default)]
    totp: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

/// An optional JSON body: an empty body is the default.
async fn optional_body<T: serde::de::DeserializeOwned + Default>(request: Request) -> AppResult<T> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|_| {
        AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body too large",
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let ApiJson(body) = ApiJson::<T>::from_request(request, &()).await?;
    Ok(body)
}

async fn vote_body(request: Request) -> AppResult<VoteBody> {
    let body: VoteBody = optional_body(request).await?;
    if body
        .comment
        .as_ref()
        .is_some_and(|comment| comment.len() > 1000)
    {
        return Err(AppError::invalid(
            "invalid_body",
            "comment over 1000 characters",
        ));
    }
    Ok(body)
}

async fn approve(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<Json<Value>> {
    let body = vote_body(request).await?;
    authorize(
        &state,
        &caller,
        "approval.approve",
        &format!("approval:{id}"),
    )
    .await?;
    Ok(Json(
        signing::vote(&state, &caller, &id, true, body.totp.as_deref()).await?,
    ))
}

async fn reject(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<Json<Value>> {
    let body = vote_body(request).await?;
    authorize(
        &state,
        &caller,
        "approval.reject",
        &format!("approval:{id}"),
    )
    .await?;
    Ok(Json(
        signing::vote(&state, &caller, &id, false, body.totp.as_deref()).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    from: Option<i64>,
    #[serde(default)]
    to: Option<i64>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

async fn list_audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<Value>> {
    let Query(query) =
        query.map_err(|error| AppError::invalid("invalid_query", error.body_text()))?;
    let after = match &query.cursor {
        Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| {
            AppError::invalid(
                "invalid_cursor",
                "cursor is the nextCursor of a previous page",
            )
        })?),
        None => None,
    };
    audited_read(&state, &caller, "audit.read", "audit:*").await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let filter = AuditFilter {
        action: query.action,
        resource: query.resource,
        identity: query.identity,
        from: query.from,
        to: query.to,
        after,
        limit,
    };
    let items = audit::list(&state.db, &caller.org, &filter).await?;
    let next_cursor = if i64::try_from(items.len()).unwrap_or(0) == limit {
        items.last().map(|record| record.seq.to_string())
    } else {
        None
    };
    Ok(Json(json!({"items": items, "nextCursor": next_cursor})))
}

async fn verify_audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> AppResult<Json<audit::VerifyReport>> {
    audited_read(&state, &caller, "audit.verify", "audit:*").await?;
    let trust = state.checkpoints.trust(&state.db, &state.keyring).await?;
    Ok(Json(
        audit::verify(&state.db, Some(&caller.org), &trust).await?,
    ))
}

// ---- Nodes ----

async fn list_nodes(State(state): State<Arc<AppState>>, caller: Caller) -> AppResult<Json<Value>> {
    audited_read(&state, &caller, "node.read", "node:*").await?;
    Ok(Json(
        json!({"items": state.registry.views(&state.db).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CommitteeBody {
    nodes: Vec<String>,
}

fn resolve_nodes(state: &AppState, names: &[String]) -> AppResult<Vec<custos_protocol::PartyId>> {
    let mut parties = Vec::new();
    for name in names {
        let node = state
            .registry
            .find(name)
            .ok_or_else(|| AppError::invalid("unknown_node", format!("no node named {name}")))?;
        if parties.contains(&node.party) {
            return Err(AppError::invalid(
                "duplicate_node",
                format!("{name} is named twice"),
            ));
        }
        parties.push(node.party);
    }
    parties.sort();
    Ok(parties)
}

async fn prepare_committee(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CommitteeBody>,
) -> AppResult<Json<Value>> {
    let committee = resolve_nodes(&state, &body.nodes)?;
    if committee.len() < 2 {
        return Err(AppError::invalid(
            "invalid_committee",
            "a committee has at least 2 nodes",
        ));
    }
    // Aux info costs every node minutes of CPU: platform admins only.
    if !caller.platform_admin {
        return Err(AppError::forbidden(
            "forbidden",
            "only a platform admin prepares committees",
        ));
    }
    authorize(&state, &caller, "node.committee", "node:*").await?;
    crate::nodes::prepare_committee(&state.db, &state.coordinator()?, &committee).await?;
    audit_event(
        &state,
        &caller,
        "node.committee",
        "node:*",
        "allowed",
        "success",
        json!({"nodes": body.nodes}),
    )
    .await?;
    Ok(Json(json!({"nodes": body.nodes, "ready": true})))
}

// ---- Wallets ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WalletBody {
    name: String,
    protocol: String,
    #[serde(default)]
    chain: Option<String>,
    threshold: u16,
    #[serde(default)]
    parties: Option<u16>,
    #[serde(default)]
    nodes: Option<Vec<String>>,
}

async fn create_wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<WalletBody>,
) -> AppResult<(StatusCode, Json<wallets::WalletView>)> {
    check_name(&body.name, "wallet")?;
    let protocol = Protocol::parse(&body.protocol)?;
    let chain = match &body.chain {
        Some(name) => crate::chain::Chain::parse(name)
            .map_err(|error| AppError::invalid(error.code(), error.to_string()))?,
        None => protocol.default_chain(),
    };
    if !protocol.supports(chain) {
        return Err(AppError::invalid(
            "unsupported_chain",
            format!(
                "{} wallets do not sign for {}",
                protocol.name(),
                chain.name()
            ),
        ));
    }
    let committee = match &body.nodes {
        Some(names) => {
            let committee = resolve_nodes(&state, names)?;
            if body
                .parties
                .is_some_and(|parties| usize::from(parties) != committee.len())
            {
                return Err(AppError::invalid(
                    "invalid_parties",
                    "parties differs from the number of nodes named",
                ));
            }
            committee
        }
        None => {
            let parties = usize::from(body.parties.unwrap_or(0));
            if parties < 2 || parties > state.registry.nodes().len() {
                return Err(AppError::invalid(
                    "invalid_parties",
                    format!(
                        "parties is between 2 and the {} registered nodes",
                        state.registry.nodes().len()
                    ),
                ));
            }
            let all: Vec<_> = state
                .registry
                .nodes()
                .iter()
                .map(|node| node.party)
                .collect();
            let ordered = state.registry.healthy_first(&all).await;
            let mut chosen: Vec<_> = ordered.into_iter().take(parties).collect();
            chosen.sort();
            chosen
        }
    };
    // A threshold of 1 would let any single node sign alone: no wallet
    // protocol here accepts it (and FROST's DKG fails on it).
    if body.threshold < 2 || usize::from(body.threshold) > committee.len() {
        return Err(AppError::invalid(
            "invalid_threshold",
            "threshold is between 2 and parties",
        ));
    }
    let resource = format!("wallet:{}", body.name);
    authorize(&state, &caller, "wallet.create", &resource).await?;
    for party in &committee {
        if !state.registry.is_healthy(party).await {
            return Err(AppError::unavailable(
                "node_unavailable",
                format!("node {} is not reachable", state.registry.name_of(party)),
            ));
        }
    }
    if protocol == Protocol::Cggmp21
        && !crate::nodes::committee_ready(&state.db, &committee).await?
    {
        return Err(AppError::conflict(
            "ecdsa_committee_not_ready",
            "aux info for this committee is not ready: POST /api/v1/nodes/committees first",
        ));
    }
    let exists = sqlx::query("SELECT id FROM wallets WHERE org_id = $1 AND name = $2")
        .bind(&caller.org)
        .bind(&body.name)
        .fetch_optional(state.db.pool())
        .await?;
    if exists.is_some() {
        return Err(AppError::conflict(
            "already_exists",
            format!("a wallet named {} exists", body.name),
        ));
    }
    let id = new_id("wal");
    let wallet_id = custos_protocol::WalletId(crate::db::id_bytes(&id).unwrap_or_default());
    let mut request = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut request);
    let started = std::time::Instant::now();
    let created = state
        .coordinator()?
        .create_wallet(
            custos_protocol::RequestId(request),
            wallet_id,
            protocol.curve(),
            &committee,
            body.threshold,
        )
        .await;
    let key = match created {
        Ok(key) => key,
        Err(error) => {
            audit_event(
                &state,
                &caller,
                "wallet.create",
                &resource,
                "allowed",
                "failed",
                json!({"error": error.to_string()}),
            )
            .await?;
            return Err(AppError::unavailable(
                "keygen_failed",
                format!("key generation failed: {error}"),
            ));
        }
    };
    request[0] ^= 0xff;
    let key_info = state
        .coordinator()?
        .key_info(
            custos_protocol::RequestId(request),
            &committee,
            wallet_id,
            protocol.curve(),
            custos_protocol::KeyGeneration(0),
        )
        .await
        .map_err(|error| {
            AppError::unavailable(
                "keygen_failed",
                format!("reading the new key failed: {error}"),
            )
        })?;
    metrics::histogram!("custos_wallet_creation_seconds", "protocol" => protocol.name())
        .record(started.elapsed().as_secs_f64());
    let wallet = Wallet {
        id: id.clone(),
        org: caller.org.clone(),
        name: body.name.clone(),
        protocol,
        chain,
        raw_public_key: key.public_key.clone(),
        key_info,
        threshold: body.threshold,
        committee: committee.clone(),
        generation: 0,
        created_at: now_ms(),
        frozen: false,
    };
    // The key the chain sees must follow from the public data the nodes
    // reported, or the wallet is refused.
    let view = wallet.view(&state.registry)?;
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO wallets (id, org_id, name, protocol, chain, public_key, chain_code, key_info, \
         threshold, committee, generation, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11)",
    )
    .bind(&wallet.id)
    .bind(&wallet.org)
    .bind(&wallet.name)
    .bind(protocol.name())
    .bind(chain.name())
    .bind(wallet.raw_public_key.clone())
    .bind(key.chain_code.to_vec())
    .bind(wallet.key_info.clone())
    .bind(i64::from(wallet.threshold))
    .bind(wallets::committee_json(&committee)?)
    .bind(wallet.created_at)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return Err(AppError::conflict(
                "already_exists",
                format!("a wallet named {} exists", body.name),
            ))
        }
        Err(error) => return Err(error.into()),
    }
    record(&state, &mut tx, &caller, "wallet.create", &resource, "allowed", "success", json!({"walletId": id, "protocol": protocol.name(), "threshold": body.threshold, "parties": committee.len(), "publicKey": view.public_key})).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_wallets(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> AppResult<Json<Value>> {
    audited_read(&state, &caller, "wallet.read", "wallet:*").await?;
    let rows = sqlx::query("SELECT * FROM wallets WHERE org_id = $1 ORDER BY created_at")
        .bind(&caller.org)
        .fetch_all(state.db.pool())
        .await?;
    let mut items = Vec::new();
    for row in rows {
        items.push(Wallet::from_row(&row)?.view(&state.registry)?);
    }
    Ok(Json(json!({"items": items})))
}

async fn get_wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<wallets::WalletView>> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    audited_read(
        &state,
        &caller,
        "wallet.read",
        &format!("wallet:{}", wallet.name),
    )
    .await?;
    Ok(Json(wallet.view(&state.registry)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressQuery {
    #[serde(default)]
    path: Option<String>,
}

async fn wallet_address(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<AddressQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<Value>> {
    let Query(query) =
        query.map_err(|error| AppError::invalid("invalid_query", error.body_text()))?;
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let text = query.path.unwrap_or_else(|| "m".into());
    let path = wallets::parse_path(&text)?;
    audited_read(
        &state,
        &caller,
        "wallet.read",
        &format!("wallet:{}", wallet.name),
    )
    .await?;
    let public_key = wallets::chain_public_key(wallet.protocol, &wallet.key_info, &path)?;
    let address = wallets::address(wallet.protocol, wallet.chain, &public_key)?;
    Ok(Json(
        json!({"path": text, "publicKey": hex::encode(public_key), "address": address}),
    ))
}

fn request_answer(view: &signing::RequestView) -> (StatusCode, Json<Value>) {
    let body = serde_json::to_value(view).unwrap_or(Value::Null);
    let status = if view.status == "signed" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(body))
}

async fn sign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<SignInput>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let plan = signing::plan(&wallet, &input)?;
    let submitted = signing::submit(
        &state,
        &caller,
        signing::NewRequest {
            wallet: &wallet,
            kind: "sign",
            action: "wallet.sign",
            plan,
            idempotency_key: input.idempotency_key.as_deref(),
        },
    )
    .await?;
    finish_request(&state, &caller, submitted).await
}

/// Runs a just-accepted request at once and answers its state.
async fn finish_request(
    state: &Arc<AppState>,
    caller: &Caller,
    submitted: signing::Submitted,
) -> AppResult<(StatusCode, Json<Value>)> {
    let id = submitted.view.request_id.clone();
    if !submitted.replayed && submitted.view.status == "queued" {
        signing::execute_reserved(state, &id).await?;
    }
    let view = signing::view(state.db.pool(), &caller.org, &id).await?;
    if view.status == "failed" {
        let detail = view.error.clone().unwrap_or(Value::Null);
        return Err(AppError::new(
            StatusCode::BAD_GATEWAY,
            "signing_failed",
            format!(
                "signing request {id} failed: {}",
                detail["message"].as_str().unwrap_or("unknown error")
            ),
        ));
    }
    Ok(request_answer(&view))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReshareBody {
    threshold: u16,
    nodes: Vec<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

async fn reshare(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReshareBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let committee = resolve_nodes(&state, &body.nodes)?;
    // Refused before it goes to approval: a 1-of-n key signs with any one
    // node alone.
    if body.threshold < 2 || usize::from(body.threshold) > committee.len() {
        return Err(AppError::invalid(
            "invalid_threshold",
            "threshold is between 2 and the number of nodes",
        ));
    }
    if wallet.protocol == Protocol::Cggmp21
        && !crate::nodes::committee_ready(&state.db, &committee).await?
    {
        return Err(AppError::conflict(
            "ecdsa_committee_not_ready",
            "aux info for the new committee is not ready: POST /api/v1/nodes/committees first",
        ));
    }
    let nodes: Vec<String> = committee.iter().map(|party| hex::encode(party.0)).collect();
    let request_body = json!({"type": "reshare", "nodes": nodes, "threshold": body.threshold, "fromGeneration": wallet.generation});
    let submitted = signing::submit(
        &state,
        &caller,
        signing::NewRequest {
            wallet: &wallet,
            kind: "reshare",
            action: "wallet.reshare",
            plan: signing::reshare_plan(request_body),
            idempotency_key: body.idempotency_key.as_deref(),
        },
    )
    .await?;
    finish_request(&state, &caller, submitted).await
}

async fn get_signing_request(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let view = signing::view(state.db.pool(), &caller.org, &id).await?;
    audited_read(
        &state,
        &caller,
        "signing.read",
        &format!("signing-request:{id}"),
    )
    .await?;
    Ok(Json(serde_json::to_value(view).unwrap_or(Value::Null)))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FreezeBody {
    #[serde(default)]
    reason: Option<String>,
}

/// Freezes a wallet at once (`wallet.freeze`, no approval by default: a
/// freeze only stops things). From then on the wallet signs and reshares
/// nothing, including requests approved or queued before: they are refused
/// when they would run.
async fn freeze_wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<Json<Value>> {
    let body: FreezeBody = optional_body(request).await?;
    if body
        .reason
        .as_ref()
        .is_some_and(|reason| reason.len() > 1000)
    {
        return Err(AppError::invalid(
            "invalid_body",
            "reason over 1000 characters",
        ));
    }
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let resource = format!("wallet:{}", wallet.name);
    let verdict = gate::allow(&state, &caller, gate::Ask::new("wallet.freeze", &resource)).await?;
    let mut tx = state.db.begin().await?;
    let changed = wallets::freeze(
        &mut tx,
        &caller.org,
        &wallet.id,
        &caller.identity,
        body.reason.as_deref(),
    )
    .await?;
    let mut detail = verdict.detail();
    detail["wallet"] = json!(wallet.id);
    detail["alreadyFrozen"] = json!(!changed);
    record(
        &state,
        &mut tx,
        &caller,
        "wallet.freeze",
        &resource,
        "allowed",
        "success",
        detail,
    )
    .await?;
    tx.commit().await?;
    let frozen = wallets::frozen_view(state.db.pool(), &caller.org, &wallet.id).await?;
    Ok(Json(
        json!({"walletId": wallet.id, "frozen": true, "freeze": frozen}),
    ))
}

/// Unfreezes a wallet (`wallet.unfreeze`: one admin's approval by
/// default, so that whoever froze a wallet in an incident is not the only
/// one who decides it is safe again).
async fn unfreeze_wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let resource = format!("wallet:{}", wallet.name);
    let body = json!({"walletId": wallet.id});
    match crate::operations::gate(&state, &caller, "wallet.unfreeze", &resource, &body).await? {
        crate::operations::Gate::Pending(answer) => Ok((StatusCode::ACCEPTED, Json(answer))),
        crate::operations::Gate::Proceed(verdict) => {
            let mut tx = state.db.begin().await?;
            let changed = wallets::unfreeze(&mut tx, &caller.org, &wallet.id).await?;
            let mut detail = verdict.detail();
            detail["wallet"] = json!(wallet.id);
            detail["wasFrozen"] = json!(changed);
            record(
                &state,
                &mut tx,
                &caller,
                "wallet.unfreeze",
                &resource,
                "allowed",
                "success",
                detail,
            )
            .await?;
            tx.commit().await?;
            Ok((
                StatusCode::OK,
                Json(json!({"walletId": wallet.id, "frozen": false})),
            ))
        }
    }
}
