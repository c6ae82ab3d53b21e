//! `/api/v1/secrets/*` (the KV store of `crate::engines::secrets`), the operations
//! that approvals release (`/api/v1/operations/{id}`) and the webhook
//! routes (`/api/v1/webhooks/*`).
//!
//! Every change goes through `operations::gate`: it happens at once when
//! the org's policy allows it (`200`/`201`), or is stored for approval
//! (`202 {status: "pending_approval", operationId, approvalId}`). Every
//! read of a value is audited in the transaction that reads it, before the
//! answer leaves. Names with `/` are percent-encoded in the path
//! (`payments%2Fstripe-key`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engines::secrets::{self, Actor, CreateBody, TargetBody, WriteBody};
use crate::http::{audited_read, authorize, record, ApiJson};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult, ErrorKind};
use crate::kernel::operations::{self, Gate};
use crate::kernel::state::AppState;
use crate::kernel::webhooks;

/// The secrets, operations and webhook routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/secrets", post(create).get(list))
        .route(
            "/api/v1/secrets/{name}",
            get(read).put(update).delete(delete),
        )
        .route("/api/v1/secrets/{name}/versions", get(versions))
        .route("/api/v1/secrets/{name}/rotate", post(rotate))
        .route("/api/v1/secrets/{name}/restore", post(restore))
        .route("/api/v1/secrets/{name}/destroy", post(destroy))
        .route("/api/v1/operations/{id}", get(get_operation))
        .route(
            "/api/v1/webhooks/signing-secret",
            get(webhook_signing_secret),
        )
        .route("/api/v1/webhooks/deliveries/{id}", get(get_delivery))
}

fn body_json(body: &impl serde::Serialize) -> AppResult<Value> {
    serde_json::to_value(body).map_err(|_| AppError::internal("secrets", "request body"))
}

/// A change through the policy: runs `apply` at once when allowed, in one
/// transaction with its audit record, or stores it for approval.
async fn change(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
    body: Value,
    done: StatusCode,
) -> AppResult<(StatusCode, Json<Value>)> {
    match operations::gate(state, caller, action, resource, &body).await? {
        Gate::Pending(answer) => Ok((StatusCode::ACCEPTED, Json(answer))),
        Gate::Proceed(_) => {
            let actor = Actor {
                org: &caller.org,
                identity: &caller.identity,
            };
            let mut tx = state.db.begin().await?;
            let answer = secrets::apply(state, &mut tx, &actor, action, &body).await?;
            let mut detail = answer.clone();
            if let Some(map) = detail.as_object_mut() {
                map.remove("name");
                map.remove("environment");
            }
            record(
                state, &mut tx, caller, action, resource, "allowed", "success", detail,
            )
            .await?;
            tx.commit().await?;
            Ok((done, Json(answer)))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    name: String,
    value: String,
    environment: String,
    #[serde(default)]
    tags: Vec<String>,
}

async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    secrets::check_name(&request.name)?;
    secrets::check_environment(&request.environment)?;
    secrets::check_value(&request.value)?;
    let tags = secrets::normalize_tags(&request.tags)?;
    if secrets::exists(&state.db, &caller.org, &request.environment, &request.name).await? {
        return Err(AppError::conflict(
            "secret_exists",
            "a secret of that name exists in that environment (write a new version with PUT)",
        ));
    }
    let resource = secrets::resource(&request.environment, &request.name);
    let body = body_json(&CreateBody {
        name: request.name,
        environment: request.environment,
        value: request.value,
        tags,
    })?;
    change(
        &state,
        &caller,
        "secret.create",
        &resource,
        body,
        StatusCode::CREATED,
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    tags: Option<String>,
    #[serde(default)]
    include_deleted: Option<bool>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> AppResult<Json<Value>> {
    if let Some(environment) = &query.environment {
        secrets::check_environment(environment)?;
    }
    let tags: Vec<String> = query
        .tags
        .as_deref()
        .map(|tags| {
            tags.split(',')
                .map(str::trim)
                .filter(|tag| !tag.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let tags = secrets::normalize_tags(&tags)?;
    let resource = format!("secret:{}/*", query.environment.as_deref().unwrap_or("*"));
    audited_read(&state, &caller, "secret.list", &resource).await?;
    let items = secrets::list(
        &state.db,
        &caller.org,
        query.environment.as_deref(),
        &tags,
        query.include_deleted.unwrap_or(false),
    )
    .await?;
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReadQuery {
    environment: Option<String>,
    #[serde(default)]
    version: Option<i64>,
}

fn environment_of(environment: Option<String>) -> AppResult<String> {
    let environment = environment.ok_or_else(|| {
        AppError::bad_request("missing_environment", "give ?environment= (or in the body)")
    })?;
    secrets::check_environment(&environment)?;
    Ok(environment)
}

async fn read(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<ReadQuery>,
) -> AppResult<Json<Value>> {
    secrets::check_name(&name)?;
    let environment = environment_of(query.environment)?;
    if query.version.is_some_and(|version| version < 1) {
        return Err(AppError::bad_request(
            "invalid_version",
            "versions start at 1",
        ));
    }
    let resource = secrets::resource(&environment, &name);
    authorize(&state, &caller, "secret.read", &resource).await?;
    let mut tx = state.db.begin().await?;
    let opened = secrets::read(
        &state,
        &mut tx,
        &caller.org,
        &environment,
        &name,
        query.version,
    )
    .await?;
    let version = opened.meta.get("version").cloned().unwrap_or(Value::Null);
    record(
        &state,
        &mut tx,
        &caller,
        "secret.read",
        &resource,
        "allowed",
        "success",
        json!({ "version": version }),
    )
    .await?;
    tx.commit().await?;
    let mut answer = opened.meta;
    if let Some(map) = answer.as_object_mut() {
        map.insert("value".into(), json!(opened.value.as_str()));
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvironmentQuery {
    environment: Option<String>,
}

async fn versions(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<EnvironmentQuery>,
) -> AppResult<Json<Value>> {
    secrets::check_name(&name)?;
    let environment = environment_of(query.environment)?;
    let resource = secrets::resource(&environment, &name);
    audited_read(&state, &caller, "secret.list", &resource).await?;
    Ok(Json(
        secrets::versions(&state.db, &caller.org, &environment, &name).await?,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateRequest {
    value: String,
    environment: String,
    /// Check-and-set: the version this write replaces.
    #[serde(default)]
    cas: Option<i64>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The version a write replaces: `cas` if given (refused at once when it
/// is already stale), else the current one.
async fn expected_version(
    state: &AppState,
    caller: &Caller,
    environment: &str,
    name: &str,
    cas: Option<i64>,
) -> AppResult<i64> {
    let current = secrets::current_version(&state.db, &caller.org, environment, name).await?;
    match cas {
        Some(cas) if cas != current => Err(AppError::conflict(
            "cas_mismatch",
            format!("the secret is at version {current}, not at the expected version {cas}"),
        )),
        _ => Ok(current),
    }
}

async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    secrets::check_name(&name)?;
    secrets::check_environment(&request.environment)?;
    secrets::check_value(&request.value)?;
    let tags = request
        .tags
        .as_deref()
        .map(secrets::normalize_tags)
        .transpose()?;
    let expected =
        expected_version(&state, &caller, &request.environment, &name, request.cas).await?;
    let resource = secrets::resource(&request.environment, &name);
    let body = body_json(&WriteBody {
        name,
        environment: request.environment,
        value: request.value,
        expected_version: expected,
        tags,
        notify_webhook: None,
        rotation: false,
    })?;
    change(
        &state,
        &caller,
        "secret.update",
        &resource,
        body,
        StatusCode::OK,
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateRequest {
    new_value: String,
    environment: String,
    #[serde(default)]
    notify_webhook: Option<String>,
    #[serde(default)]
    cas: Option<i64>,
}

async fn rotate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<RotateRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    secrets::check_name(&name)?;
    secrets::check_environment(&request.environment)?;
    secrets::check_value(&request.new_value)?;
    if let Some(url) = &request.notify_webhook {
        webhooks::check_target(url, &state.config.webhooks, state.config.dev_mode).await?;
    }
    let expected =
        expected_version(&state, &caller, &request.environment, &name, request.cas).await?;
    let resource = secrets::resource(&request.environment, &name);
    let body = body_json(&WriteBody {
        name,
        environment: request.environment,
        value: request.new_value,
        expected_version: expected,
        tags: None,
        notify_webhook: request.notify_webhook,
        rotation: true,
    })?;
    change(
        &state,
        &caller,
        "secret.rotate",
        &resource,
        body,
        StatusCode::OK,
    )
    .await
}

/// A change of a whole secret (delete, restore, destroy) named by path and
/// environment.
async fn target_change(
    state: &AppState,
    caller: &Caller,
    action: &str,
    name: String,
    environment: Option<String>,
    versions: Vec<i64>,
) -> AppResult<(StatusCode, Json<Value>)> {
    secrets::check_name(&name)?;
    let environment = environment_of(environment)?;
    if !secrets::exists(&state.db, &caller.org, &environment, &name).await? {
        return Err(AppError::new(
            ErrorKind::NotFound,
            "secret_not_found",
            "no secret of that name in that environment",
        ));
    }
    if versions.iter().any(|version| *version < 1) {
        return Err(AppError::bad_request(
            "invalid_version",
            "versions start at 1",
        ));
    }
    let resource = secrets::resource(&environment, &name);
    let body = body_json(&TargetBody {
        name,
        environment,
        versions,
    })?;
    change(state, caller, action, &resource, body, StatusCode::OK).await
}

async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<EnvironmentQuery>,
) -> AppResult<(StatusCode, Json<Value>)> {
    target_change(
        &state,
        &caller,
        "secret.delete",
        name,
        query.environment,
        Vec::new(),
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetRequest {
    environment: String,
    #[serde(default)]
    versions: Vec<i64>,
}

async fn restore(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<TargetRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    if !request.versions.is_empty() {
        return Err(AppError::bad_request(
            "unexpected_versions",
            "restore takes the whole secret back; it has no versions",
        ));
    }
    target_change(
        &state,
        &caller,
        "secret.restore",
        name,
        Some(request.environment),
        Vec::new(),
    )
    .await
}

async fn destroy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<TargetRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    target_change(
        &state,
        &caller,
        "secret.destroy",
        name,
        Some(request.environment),
        request.versions,
    )
    .await
}

async fn get_operation(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let view = operations::view(&state, &caller.org, &id).await?;
    audited_read(
        &state,
        &caller,
        "operation.read",
        &format!("operation:{id}"),
    )
    .await?;
    Ok(Json(view))
}

async fn webhook_signing_secret(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> AppResult<Json<Value>> {
    let resource = "webhook:signing-secret";
    authorize(&state, &caller, "webhook.secret.read", resource).await?;
    let mut tx = state.db.begin().await?;
    let secret = webhooks::signing_secret(&state, &mut tx, &caller.org).await?;
    record(
        &state,
        &mut tx,
        &caller,
        "webhook.secret.read",
        resource,
        "allowed",
        "success",
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "signingSecret": hex::encode(&*secret),
        "algorithm": "HMAC-SHA256",
        "signatureHeader": "x-custos-signature",
        "signedContent": "<x-custos-timestamp>.<body>",
    })))
}

async fn get_delivery(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let view = webhooks::view(&state, &caller.org, &id).await?;
    audited_read(
        &state,
        &caller,
        "webhook.read",
        &format!("webhook-delivery:{id}"),
    )
    .await?;
    Ok(Json(view))
}
