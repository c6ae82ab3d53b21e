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
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::engines::secrets::{self, Actor, CreateBody, TargetBody, WriteBody};
use crate::http::openapi::Pending;
use crate::http::{audited_read, authorize, record, ApiJson, ApiRouter};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult, ErrorKind};
use crate::kernel::operations::{self, Gate};
use crate::kernel::state::AppState;
use crate::kernel::webhooks;

/// The secrets, operations and webhook routes.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, update, delete))
        .routes(routes!(versions))
        .routes(routes!(rotate))
        .routes(routes!(restore))
        .routes(routes!(destroy))
        .routes(routes!(get_operation))
        .routes(routes!(webhook_signing_secret))
        .routes(routes!(get_delivery))
}

/// What a secret's metadata shows (never its value).
const SECRET_ANSWER: &str =
    "`{name, environment, version, tags, createdAt, updatedAt}` (the new version's metadata)";

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

/// A secret to create (its version 1).
#[derive(Deserialize, ToSchema)]
#[schema(as = SecretCreateRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    /// 1 to 256 letters, digits, `_ - .` in `/`-separated segments.
    #[schema(
        pattern = r"^(?:(?!\.\.?(?:/|$))[A-Za-z0-9._-]+)(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._-]+)*$",
        max_length = 256
    )]
    name: String,
    /// At most 64 KiB.
    value: String,
    /// 1 to 64 letters, digits, `_` and `-`.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    environment: String,
    /// At most 32, each 1 to 64 letters, digits, `_ - . :`.
    #[serde(default)]
    tags: Vec<String>,
}

/// Create a secret (version 1).
#[utoipa::path(post, path = "/api/v1/secrets", tag = "secrets",
    request_body = CreateRequest,
    responses(
        (status = 201, description = SECRET_ANSWER, body = Value),
        (status = 202, description = "Waits for an approval (when the policy asks for one)",
            body = Pending),
    ))]
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

/// `?environment=&tags=&includeDeleted=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    /// Only this environment's secrets.
    #[serde(default)]
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    environment: Option<String>,
    /// Comma-separated tags (`a,b`): only secrets carrying every one.
    #[serde(default)]
    tags: Option<String>,
    /// Soft-deleted secrets too (they carry `deletedAt`).
    #[serde(default)]
    include_deleted: Option<bool>,
}

/// Secrets by ?environment= and ?tags=a,b (metadata, never values).
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    params(ListQuery),
    responses((status = 200, description = "`{items: [{name, environment, version, tags, \
        createdAt, updatedAt, deletedAt?}]}`", body = Value)))]
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

/// `?environment=&version=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReadQuery {
    /// The secret's environment (required: `400 missing_environment`
    /// without it).
    #[param(required = true, pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    environment: Option<String>,
    /// The version to read (from 1); the current one when absent.
    #[serde(default)]
    #[param(minimum = 1)]
    version: Option<i64>,
}

fn environment_of(environment: Option<String>) -> AppResult<String> {
    let environment = environment.ok_or_else(|| {
        AppError::bad_request("missing_environment", "give ?environment= (or in the body)")
    })?;
    secrets::check_environment(&environment)?;
    Ok(environment)
}

/// Read a secret's value (?environment=, ?version=).
#[utoipa::path(get, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(
        ("name" = String, Path, description = "The secret's name (`/` percent-encoded)"),
        ReadQuery,
    ),
    responses((status = 200, description = "`{name, environment, version, latestVersion, tags, \
        createdAt, updatedAt, value}`: `createdAt` is the version's", body = Value)))]
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

/// `?environment=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvironmentQuery {
    /// The secret's environment (required: `400 missing_environment`
    /// without it).
    #[param(required = true, pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    environment: Option<String>,
}

/// A secret's versions (?environment=).
#[utoipa::path(get, path = "/api/v1/secrets/{name}/versions", tag = "secrets",
    params(
        ("name" = String, Path, description = "The secret's name (`/` percent-encoded)"),
        EnvironmentQuery,
    ),
    responses((status = 200, description = "The secret's metadata with `versions: [{version, \
        createdBy, createdAt, destroyedAt}]`", body = Value)))]
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

/// A new version of a secret.
#[derive(Deserialize, ToSchema)]
#[schema(as = SecretUpdateRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateRequest {
    /// At most 64 KiB.
    value: String,
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    environment: String,
    /// Check-and-set: the version this write replaces.
    #[serde(default)]
    #[schema(minimum = 1)]
    cas: Option<i64>,
    /// Replaces the tags when given.
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

/// Write a new version (cas: the version it replaces); 202 with an approval when the policy asks.
#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets",
    request_body = UpdateRequest,
    params(("name" = String, Path, description = "The secret's name (`/` percent-encoded)")),
    responses(
        (status = 200, description = SECRET_ANSWER, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
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

/// A rotation: a new version, optionally announced to a webhook.
#[derive(Deserialize, ToSchema)]
#[schema(as = SecretRotateRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateRequest {
    /// At most 64 KiB.
    new_value: String,
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    environment: String,
    /// A URL to notify (`secret.rotated`, signed, never the value).
    #[serde(default)]
    notify_webhook: Option<String>,
    /// Check-and-set: the version this rotation replaces.
    #[serde(default)]
    #[schema(minimum = 1)]
    cas: Option<i64>,
}

/// Rotate: a new version, optionally announced to a signed webhook.
#[utoipa::path(post, path = "/api/v1/secrets/{name}/rotate", tag = "secrets",
    request_body = RotateRequest,
    params(("name" = String, Path, description = "The secret's name (`/` percent-encoded)")),
    responses(
        (status = 200, description = "`{name, environment, version, tags, createdAt, updatedAt, \
            webhookDelivery?}` (the new version's metadata; `webhookDelivery` with \
            `notifyWebhook`)", body = Value),
        (status = 202, description = "Waits for an approval (when the policy asks for one)",
            body = Pending),
    ))]
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

/// Soft-delete a secret (?environment=); 202 with an approval under the default policy.
#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(
        ("name" = String, Path, description = "The secret's name (`/` percent-encoded)"),
        EnvironmentQuery,
    ),
    responses(
        (status = 200, description = "`{name, environment, deleted: true}` (when the policy \
            allows it at once)", body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
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

/// A secret's environment, and for destroy the versions.
#[derive(Deserialize, ToSchema)]
#[schema(as = SecretTargetRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetRequest {
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    environment: String,
    /// Destroy: the versions to destroy; none = the whole secret. Restore
    /// refuses any (`400 unexpected_versions`).
    #[serde(default)]
    #[schema(schema_with = versions_schema)]
    versions: Vec<i64>,
}

/// Versions from 1.
fn versions_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    crate::http::openapi::schema_from(json!({
        "type": "array",
        "items": {"type": "integer", "format": "int64", "minimum": 1},
        "description": "destroy: the versions to destroy (none: the whole secret); restore refuses any (`400 unexpected_versions`)",
    }))
}

/// Undo a soft delete.
#[utoipa::path(post, path = "/api/v1/secrets/{name}/restore", tag = "secrets",
    request_body = TargetRequest,
    params(("name" = String, Path, description = "The secret's name (`/` percent-encoded)")),
    responses(
        (status = 200, description = "`{name, environment, version, tags, createdAt, updatedAt}`",
            body = Value),
        (status = 202, description = "Waits for an approval (when the policy asks for one)",
            body = Pending),
    ))]
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

/// Destroy versions (or the whole secret) for good; 202 with an approval under the default policy.
#[utoipa::path(post, path = "/api/v1/secrets/{name}/destroy", tag = "secrets",
    request_body = TargetRequest,
    params(("name" = String, Path, description = "The secret's name (`/` percent-encoded)")),
    responses(
        (status = 200, description = "`{name, environment, destroyed}`: `\"all\"` or the versions \
            (when the policy allows it at once)", body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
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

/// An operation stored for approval: status, result or error.
#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "approvals",
    params(("id" = String, Path, description = "The operation's id (`operationId` of a `202`)")),
    responses((status = 200, description = "`{id, action, resource, requestedBy, requestHash, \
        status, approvalId, createdAt, updatedAt, result?, error?}`", body = Value)))]
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

/// The org's webhook signing secret (admin).
#[utoipa::path(get, path = "/api/v1/webhooks/signing-secret", tag = "webhooks",
    responses((status = 200, description = "`{signingSecret, algorithm: \"HMAC-SHA256\", \
        signatureHeader, signedContent}`: hex secret; the signature covers \
        `<x-custos-timestamp>.<body>`", body = Value)))]
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

/// A webhook delivery: status and attempts.
#[utoipa::path(get, path = "/api/v1/webhooks/deliveries/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "The delivery's id (`webhookDelivery` of a rotation)")),
    responses((status = 200, description = "`{id, url, event, status, attempts, lastError, \
        createdAt, updatedAt}`", body = Value)))]
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
