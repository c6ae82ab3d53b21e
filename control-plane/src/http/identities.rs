//! `/api/v1/auth/token` and `/api/v1/identities/*`: logins, the lifecycle
//! of identities (`crate::kernel::identities`), their tokens, and MFA
//! (`crate::kernel::mfa`).
//!
//! Changes that can wait for an approval (create, role, enable, disable,
//! delete, MFA reset) go through `operations::gate`: at once when the
//! org's policy allows (`200`/`201`), or stored for approval (`202
//! {status: "pending_approval", operationId, approvalId}`). Everything is
//! scoped to the caller's org: another org's identity is `404`.
//! What an identity does to itself (its MFA, its secret, its tokens) needs
//! no role; what it does to another goes through `authorize`.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::openapi::{schema_from, ErrorAnswer, Pending};
use super::{
    audit_event, audited_read, authorize, check_name, optional_body, record, ApiJson, ApiRouter,
    Context,
};
use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::{self, Caller, Role};
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::identities::{self, Actor, Change, Identity, IdentityError};
use crate::kernel::operations::{self, Gate};
use crate::kernel::state::AppState;

/// The login and identity routes.
pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(token))
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
        .routes(routes!(disable))
        .routes(routes!(enable))
        .routes(routes!(rotate_secret))
        .routes(routes!(first_secret))
        .routes(routes!(list_tokens, revoke_all))
        .routes(routes!(revoke_one))
        .routes(routes!(enroll_mfa))
        .routes(routes!(confirm_mfa))
        .routes(routes!(reset_mfa))
}

/// An identity's answer after a change: its view.
const IDENTITY_VIEW: &str =
    "The identity: `{id, orgId, name, role, status, clientId, platformAdmin, mfa, mfaPending, createdBy, createdAt}`";

/// `role`: a role's name ([`Role::parse`]).
fn role_schema() -> RefOr<Schema> {
    schema_from(
        json!({"type": "string", "enum": ["admin", "operator", "approver", "service", "auditor"]}),
    )
}

impl From<IdentityError> for AppError {
    fn from(error: IdentityError) -> Self {
        let code = error.code();
        match error {
            IdentityError::NotFound(what) => AppError::not_found(what),
            IdentityError::AlreadyExists(_)
            | IdentityError::LastPlatformAdmin
            | IdentityError::CredentialsIssued
            | IdentityError::RequesterInactive => AppError::conflict(code, error.to_string()),
            IdentityError::PlatformAdminProtected => AppError::forbidden(code, error.to_string()),
            IdentityError::InvalidStored(_) | IdentityError::Sealing(_) => {
                AppError::internal("identities", &error)
            }
            IdentityError::Database(error) => error.into(),
        }
    }
}

// ---- Login ----

/// Client credentials.
#[derive(Deserialize, ToSchema)]
#[schema(as = TokenRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenBody {
    client_id: String,
    client_secret: String,
}

/// Trade client credentials for a bearer token.
///
/// A throttled or locked out
/// attempt answers `429` with `Retry-After` in seconds; a full Argon2
/// budget `503 login_busy` with `Retry-After: 1`.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "identities", request_body = TokenBody,
    responses(
        (status = 200, description = "`{accessToken, tokenType: \"Bearer\", expiresIn}` (seconds)", body = Value),
        (status = 401, description = "`invalid_credentials`", body = ErrorAnswer),
        (status = 403, description = "`identity_disabled`", body = ErrorAnswer),
        (status = 429, description = "`login_throttled` or `locked_out`", body = ErrorAnswer,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
async fn token(
    State(state): State<Arc<AppState>>,
    context: Context,
    ApiJson(body): ApiJson<TokenBody>,
) -> Response {
    let attempt = auth::LoginAttempt {
        client_id: &body.client_id,
        client_secret: &body.client_secret,
        ip: context.ip,
        request_id: &context.request_id,
    };
    let outcome = auth::login(
        &state.db,
        &state.logins,
        &state.hashes,
        &attempt,
        state.config.token_ttl_secs,
    )
    .await;
    match outcome {
        Ok(answer) => Json(answer).into_response(),
        Err(refusal) => {
            let mut response = refusal.error.into_response();
            if let Some(seconds) = refusal.retry_after_secs {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}

// ---- Lifecycle ----

fn resource(name: &str) -> String {
    format!("identity:{name}")
}

fn parse_role(name: &str) -> AppResult<Role> {
    Role::parse(name).ok_or_else(|| {
        AppError::invalid(
            "invalid_role",
            "role is admin, operator, approver, service or auditor",
        )
    })
}

/// The identity `id` of the caller's org (another org's is not found).
async fn target(state: &AppState, caller: &Caller, id: &str) -> AppResult<Identity> {
    Ok(identities::get(state.db.pool(), &caller.org, id).await?)
}

/// An empty body, or `{}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoBody {}

/// Runs `change` through `operations::gate`: stored for approval (`202`),
/// or at once with its audit record in its transaction. A new identity's
/// secret exists only in this answer.
async fn change(
    state: &AppState,
    caller: &Caller,
    change: Change,
    resource: &str,
) -> AppResult<(StatusCode, Json<Value>)> {
    let action = change.action();
    let verdict =
        match operations::gate(state, caller, action, resource, &change.to_stored()).await? {
            Gate::Pending(answer) => return Ok((StatusCode::ACCEPTED, Json(answer))),
            Gate::Proceed(verdict) => verdict,
        };
    let creates = matches!(change, Change::Create { .. });
    // Hashed before the transaction: Argon2 must not hold SQLite's lock.
    let secret = creates.then(auth::new_client_secret);
    let secret_hash = match &secret {
        Some(secret) => Some(state.hashes.hash(secret).await?),
        None => None,
    };
    let mut tx = state.db.begin().await?;
    let applied = identities::apply(
        &state.db,
        &mut tx,
        &Actor::of(caller),
        &change,
        secret_hash.as_deref(),
    )
    .await?;
    crate::kernel::authority::seal(&state.keyring, &mut tx, &applied.identity).await?;
    let mut detail = verdict.detail();
    detail["identityId"] = json!(applied.identity);
    detail["change"] = change.to_stored();
    record(
        state,
        &mut tx,
        caller,
        action,
        resource,
        "allowed",
        "success",
        detail.clone(),
    )
    .await?;
    if let Some(other) = &applied.other_org {
        audit::append(
            &state.db,
            &mut tx,
            &AuditEvent {
                org: other,
                action,
                resource,
                identity: &caller.identity,
                ip: &caller.ip.to_string(),
                approved: "allowed",
                outcome: "success",
                request_id: &caller.request_id,
                detail,
            },
        )
        .await?;
    }
    tx.commit().await?;
    if let Some(identity) = &applied.cut_off {
        state.tokens.forget_identity(identity);
    }
    let mut answer = applied.result;
    if let Some(secret) = secret {
        answer["clientSecret"] = json!(secret);
    }
    let status = if creates {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)))
}

/// A new identity.
#[derive(Deserialize, ToSchema)]
#[schema(as = IdentityRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewIdentityBody {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    name: String,
    #[schema(schema_with = role_schema)]
    role: String,
    /// Reserved: finer scopes within the role.
    #[serde(default)]
    #[allow(dead_code)]
    scopes: Option<Vec<String>>,
    /// Platform admins may create identities in another org.
    #[serde(default)]
    org_id: Option<String>,
}

/// Create a machine identity (secret shown once; 202 when it waits for an approval).
///
/// Creates an identity (`identity.create`: one admin's approval by
/// default, except for platform admins). At once: `201` with the secret,
/// shown once. After an approval: the operation's result names the
/// identity, and its creator asks for the secret once
/// (`POST .../credentials`).
#[utoipa::path(post, path = "/api/v1/identities", tag = "identities", request_body = NewIdentityBody,
    responses(
        (status = 201, description = "The identity with its `clientSecret`, shown once", body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<NewIdentityBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    check_name(&body.name, "identity")?;
    let role = parse_role(&body.role)?;
    let org = body.org_id.clone().unwrap_or_else(|| caller.org.clone());
    if org != caller.org {
        if !caller.platform_admin {
            return Err(AppError::not_found("org"));
        }
        if !crate::kernel::orgs::exists(&state.db, &org).await? {
            return Err(AppError::not_found("org"));
        }
    }
    let resource = resource(&body.name);
    change(
        &state,
        &caller,
        Change::Create {
            name: body.name,
            role,
            org,
        },
        &resource,
    )
    .await
}

/// List identities of the org.
#[utoipa::path(get, path = "/api/v1/identities", tag = "identities",
    responses((status = 200, description = "`{items}`: the org's identities", body = Value)))]
async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> AppResult<Json<Value>> {
    audited_read(&state, &caller, "identity.read", "identity:*").await?;
    let items = identities::list(&state.db, &caller.org).await?;
    Ok(Json(json!({"items": items})))
}

/// Audits a read: the identity reading itself needs no role.
async fn read_of(state: &AppState, caller: &Caller, target: &Identity) -> AppResult<()> {
    let resource = resource(&target.name);
    if target.id == caller.identity {
        audit_event(
            state,
            caller,
            "identity.read",
            &resource,
            "allowed",
            "success",
            json!({"identityId": target.id, "self": true}),
        )
        .await
    } else {
        audited_read(state, caller, "identity.read", &resource).await
    }
}

/// Get an identity (status, role, MFA; never a secret).
#[utoipa::path(get, path = "/api/v1/identities/{id}", tag = "identities",
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses((status = 200, description = "The identity", body = Identity)))]
async fn show(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Identity>> {
    let found = target(&state, &caller, &id).await?;
    read_of(&state, &caller, &found).await?;
    Ok(Json(found))
}

/// A new role.
#[derive(Deserialize, ToSchema)]
#[schema(as = IdentityUpdateRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateBody {
    #[schema(schema_with = role_schema)]
    role: String,
}

/// Refuses early, before anything is stored for approval, what would be
/// refused when it runs: a platform admin changed by someone else, the
/// last active platform admin disabled or deleted.
async fn precheck(
    state: &AppState,
    caller: &Caller,
    found: &Identity,
    removes: bool,
) -> AppResult<()> {
    identities::protect(&Actor::of(caller), found)?;
    if removes && identities::is_last_platform_admin(&state.db, found).await? {
        return Err(IdentityError::LastPlatformAdmin.into());
    }
    Ok(())
}

/// Change an identity's role (202 when it waits for an approval).
///
/// Changes an identity's role (`identity.update`: one admin's approval by
/// default).
#[utoipa::path(put, path = "/api/v1/identities/{id}", tag = "identities", request_body = UpdateBody,
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses(
        (status = 200, description = IDENTITY_VIEW, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let role = parse_role(&body.role)?;
    let found = target(&state, &caller, &id).await?;
    precheck(&state, &caller, &found, false).await?;
    let requested = Change::SetRole { identity: id, role };
    change(&state, &caller, requested, &resource(&found.name)).await
}

/// Disable an identity: no login, its tokens revoked at once.
///
/// Disables an identity at once by default (`identity.disable`): it can no
/// longer log in, and its tokens are revoked in the same transaction. An
/// empty body, or `{}`.
#[utoipa::path(post, path = "/api/v1/identities/{id}/disable", tag = "identities",
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses(
        (status = 200, description = "The identity (`status: disabled`) and its `revokedTokens`", body = Value),
        (status = 202, description = "Waits for an approval (when the org's policy asks for one)", body = Pending),
    ))]
async fn disable(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<(StatusCode, Json<Value>)> {
    let NoBody {} = optional_body(request).await?;
    let found = target(&state, &caller, &id).await?;
    precheck(&state, &caller, &found, true).await?;
    let requested = Change::Disable { identity: id };
    change(&state, &caller, requested, &resource(&found.name)).await
}

/// Enable a disabled identity (202 when it waits for an approval).
///
/// Enables a disabled identity (`identity.update`: one admin's approval by
/// default). An empty body, or `{}`.
#[utoipa::path(post, path = "/api/v1/identities/{id}/enable", tag = "identities",
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses(
        (status = 200, description = IDENTITY_VIEW, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
async fn enable(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<(StatusCode, Json<Value>)> {
    let NoBody {} = optional_body(request).await?;
    let found = target(&state, &caller, &id).await?;
    precheck(&state, &caller, &found, false).await?;
    let requested = Change::Enable { identity: id };
    change(&state, &caller, requested, &resource(&found.name)).await
}

/// Delete an identity and its tokens (202 when it waits for approvals).
///
/// Deletes an identity with its tokens (`identity.delete`: two approvals
/// by default, as every `*.delete`).
#[utoipa::path(delete, path = "/api/v1/identities/{id}", tag = "identities",
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses(
        (status = 200, description = "`{id, name, deleted: true, revokedTokens}`", body = Value),
        (status = 202, description = "Waits for approvals", body = Pending),
    ))]
async fn remove(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let found = target(&state, &caller, &id).await?;
    precheck(&state, &caller, &found, true).await?;
    let requested = Change::Delete { identity: id };
    change(&state, &caller, requested, &resource(&found.name)).await
}

/// The current secret (and a TOTP code with MFA).
#[derive(Deserialize, ToSchema)]
#[schema(as = RotateSecretRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateBody {
    /// The current secret.
    client_secret: String,
    /// A current TOTP code, when the identity has MFA (or `X-Custos-TOTP`).
    #[serde(default)]
    totp: Option<String>,
}

/// Replace the caller's own client secret (new secret shown once; its tokens revoked).
///
/// An identity replaces its own client secret: with its current secret
/// (and a TOTP code when it has MFA), so that a stolen short-lived token
/// cannot buy a lasting credential. All its tokens are revoked; the new
/// secret is in this answer only. No one sets another identity's secret:
/// whoever could would log in, and vote, as that identity (an admin cuts
/// a credential off by disabling the identity).
#[utoipa::path(post, path = "/api/v1/identities/{id}/rotate-secret", tag = "identities",
    request_body = RotateBody,
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses((status = 200, description = "`{id, clientId, clientSecret, revokedTokens}`: the new secret, shown once",
        body = Value)))]
async fn rotate_secret(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateBody>,
) -> AppResult<Json<Value>> {
    if id != caller.identity {
        return Err(AppError::forbidden(
            "forbidden",
            "an identity rotates its own secret; disable an identity to cut it off",
        ));
    }
    let found = target(&state, &caller, &id).await?;
    let resource = resource(&found.name);
    let current = identities::secret_hash(&state.db, &id).await?;
    if !state.hashes.verify(current, &body.client_secret).await? {
        audit_event(
            &state,
            &caller,
            "identity.rotate_secret",
            &resource,
            "denied",
            "denied",
            json!({"identityId": id, "reason": "invalid_credentials"}),
        )
        .await?;
        return Err(AppError::forbidden(
            "invalid_credentials",
            "clientSecret is not this identity's current secret",
        ));
    }
    let secret = auth::new_client_secret();
    let secret_hash = state.hashes.hash(&secret).await?;
    let mut tx = state.db.begin().await?;
    if found.mfa {
        let code = body.totp.as_deref().or(caller.totp.as_deref());
        crate::kernel::mfa::check(&state, &mut tx, &caller, code).await?;
    }
    let revoked = identities::set_secret(&mut tx, &id, &secret_hash).await?;
    record(
        &state,
        &mut tx,
        &caller,
        "identity.rotate_secret",
        &resource,
        "allowed",
        "success",
        json!({"identityId": id, "revokedTokens": revoked.len(), "mfa": found.mfa}),
    )
    .await?;
    tx.commit().await?;
    state.tokens.forget_identity(&id);
    Ok(Json(json!({
        "id": id,
        "clientId": found.client_id,
        "clientSecret": secret,
        "revokedTokens": revoked.len(),
    })))
}

/// The first client secret of an identity created after an approval, once, to its creator.
///
/// The first secret of an identity created by an approved operation, to
/// its creator, once (`409 credentials_issued` afterwards). An empty
/// body, or `{}`.
#[utoipa::path(post, path = "/api/v1/identities/{id}/credentials", tag = "identities",
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses((status = 200, description = "`{id, clientId, clientSecret}`, shown once", body = Value)))]
async fn first_secret(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<Json<Value>> {
    let NoBody {} = optional_body(request).await?;
    caller.require("identity.create")?;
    let found = identities::first_secret_target(&state.db, &caller.identity, &id).await?;
    let secret = auth::new_client_secret();
    let secret_hash = state.hashes.hash(&secret).await?;
    let mut tx = state.db.begin().await?;
    identities::issue_first_secret(&mut tx, &caller.identity, &id, &secret_hash).await?;
    let resource = resource(&found.name);
    let detail = json!({"identityId": id, "org": found.org_id});
    record(
        &state,
        &mut tx,
        &caller,
        "identity.credentials",
        &resource,
        "allowed",
        "success",
        detail.clone(),
    )
    .await?;
    if found.org_id != caller.org {
        audit::append(
            &state.db,
            &mut tx,
            &AuditEvent {
                org: &found.org_id,
                action: "identity.credentials",
                resource: &resource,
                identity: &caller.identity,
                ip: &caller.ip.to_string(),
                approved: "allowed",
                outcome: "success",
                request_id: &caller.request_id,
                detail,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(json!({
        "id": id,
        "clientId": found.client_id,
        "clientSecret": secret,
    })))
}

// ---- Tokens ----

/// List an identity's active tokens (ids, times, addresses; never a token).
///
/// The identity's unexpired tokens (ids, times, addresses; never a
/// token): to itself, or to whoever may read identities.
#[utoipa::path(get, path = "/api/v1/identities/{id}/tokens", tag = "identities",
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses((status = 200, description = "`{items: [{id, createdAt, expiresAt, ip}]}`, oldest first",
        body = Value)))]
async fn list_tokens(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let found = target(&state, &caller, &id).await?;
    read_of(&state, &caller, &found).await?;
    let items = identities::tokens(&state.db, &id).await?;
    Ok(Json(json!({"items": items})))
}

/// Revokes tokens of `found` (all, or `token`) at once, on every replica
/// within the token cache's second and on this one immediately. An
/// identity revokes its own; revoking another's is `identity.revoke`.
async fn revoke(
    state: &AppState,
    caller: &Caller,
    found: &Identity,
    token: Option<&str>,
) -> AppResult<Json<Value>> {
    let resource = resource(&found.name);
    if found.id != caller.identity {
        identities::protect(&Actor::of(caller), found)?;
        authorize(state, caller, "identity.revoke", &resource).await?;
    }
    let mut tx = state.db.begin().await?;
    let hashes = identities::revoke(&mut tx, &found.id, token).await?;
    if token.is_some() && hashes.is_empty() {
        return Err(AppError::not_found("token"));
    }
    record(
        state,
        &mut tx,
        caller,
        "identity.revoke",
        &resource,
        "allowed",
        "success",
        json!({"identityId": found.id, "tokenId": token, "revoked": hashes.len()}),
    )
    .await?;
    tx.commit().await?;
    state.tokens.forget_tokens(&hashes);
    Ok(Json(json!({"revoked": hashes.len()})))
}

/// Revoke every token of an identity.
#[utoipa::path(delete, path = "/api/v1/identities/{id}/tokens", tag = "identities",
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses((status = 200, description = "`{revoked}`: how many", body = Value)))]
async fn revoke_all(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let found = target(&state, &caller, &id).await?;
    revoke(&state, &caller, &found, None).await
}

/// Revoke one token of an identity.
#[utoipa::path(delete, path = "/api/v1/identities/{id}/tokens/{tokenId}", tag = "identities",
    params(
        ("id" = String, Path, description = "The identity's id (`idn_…`)"),
        ("tokenId" = String, Path, description = "The token's id (`tok_…`)"),
    ),
    responses((status = 200, description = "`{revoked: 1}`", body = Value)))]
async fn revoke_one(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, token_id)): Path<(String, String)>,
) -> AppResult<Json<Value>> {
    let found = target(&state, &caller, &id).await?;
    revoke(&state, &caller, &found, Some(&token_id)).await
}

// ---- MFA ----

/// Refuses unless the caller is the identity itself: whoever sees an
/// `otpauth` URI can produce its codes, so not even an admin may see
/// another's.
fn own_mfa(caller: &Caller, id: &str) -> AppResult<()> {
    if id == caller.identity {
        Ok(())
    } else {
        Err(AppError::forbidden(
            "forbidden",
            "an identity enrols its own MFA",
        ))
    }
}

/// A re-enrolment's current code (the body may be empty).
#[derive(Deserialize, Default, ToSchema)]
#[schema(as = MfaEnrolRequest)]
#[serde(deny_unknown_fields)]
struct EnrolBody {
    /// A current code of the active secret, when re-enrolling (or
    /// `X-Custos-TOTP`).
    #[serde(default)]
    totp: Option<String>,
}

/// Start a TOTP enrolment (pending until confirmed; a current code to re-enrol).
///
/// Starts a TOTP enrolment: `{otpauthUri}` of a pending secret, active
/// once confirmed by a first code. The body may be empty.
#[utoipa::path(post, path = "/api/v1/identities/{id}/mfa", tag = "identities",
    request_body(content = EnrolBody,
        description = "May be empty; the code may come as `X-Custos-TOTP` instead"),
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses((status = 200, description = "`{otpauthUri}` of the pending secret", body = Value)))]
async fn enroll_mfa(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<Json<Value>> {
    let body: EnrolBody = optional_body(request).await?;
    own_mfa(&caller, &id)?;
    let code = body.totp.as_deref().or(caller.totp.as_deref());
    let mut tx = state.db.begin().await?;
    let uri = crate::kernel::mfa::enroll(&state, &mut tx, &caller, code).await?;
    record(
        &state,
        &mut tx,
        &caller,
        "identity.mfa",
        &resource(&caller.name),
        "allowed",
        "success",
        json!({"identityId": id, "stage": "pending"}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({"otpauthUri": uri})))
}

/// The first code of a pending enrolment.
#[derive(Deserialize, ToSchema)]
#[schema(as = MfaConfirmRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfirmBody {
    /// A code of the pending secret.
    code: String,
}

/// Confirm a TOTP enrolment with its first code.
///
/// Confirms a pending enrolment with its first code: from then on it is
/// the identity's MFA.
#[utoipa::path(post, path = "/api/v1/identities/{id}/mfa/confirm", tag = "identities",
    request_body = ConfirmBody,
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses((status = 200, description = "`{id, mfa: true}`", body = Value)))]
async fn confirm_mfa(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ConfirmBody>,
) -> AppResult<Json<Value>> {
    own_mfa(&caller, &id)?;
    let mut tx = state.db.begin().await?;
    crate::kernel::mfa::confirm(&state, &mut tx, &caller, &body.code).await?;
    record(
        &state,
        &mut tx,
        &caller,
        "identity.mfa",
        &resource(&caller.name),
        "allowed",
        "success",
        json!({"identityId": id, "stage": "confirmed"}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({"id": id, "mfa": true})))
}

/// Remove an identity's MFA so it can enrol again (202 when it waits for an approval).
///
/// Removes an identity's MFA so that it can enrol again
/// (`identity.mfa_reset`: one admin's approval by default). An empty body,
/// or `{}`.
#[utoipa::path(post, path = "/api/v1/identities/{id}/mfa/reset", tag = "identities",
    params(("id" = String, Path, description = "The identity's id (`idn_…`)")),
    responses(
        (status = 200, description = IDENTITY_VIEW, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
async fn reset_mfa(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<(StatusCode, Json<Value>)> {
    let NoBody {} = optional_body(request).await?;
    let found = target(&state, &caller, &id).await?;
    precheck(&state, &caller, &found, false).await?;
    let requested = Change::ResetMfa { identity: id };
    change(&state, &caller, requested, &resource(&found.name)).await
}
