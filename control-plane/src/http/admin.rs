//! The kernel's administrative routes: orgs, policies, approvals and the
//! audit chain.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::kernel::audit::{self, AuditEvent, AuditFilter};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::gate;
use crate::kernel::policy;
use crate::kernel::state::AppState;

use super::openapi::Pending;
use super::{
    audit_event, audited_read, authorize, check_name, optional_body, record, timed, ApiJson,
    ApiRouter,
};

/// Orgs, policies, approvals and audit.
pub(super) fn routes() -> ApiRouter {
    timed(
        ApiRouter::new()
            .routes(routes!(create_org))
            .routes(routes!(reseal_policies))
            .routes(routes!(create_policy, list_policies))
            .routes(routes!(get_policy, update_policy))
            .routes(routes!(list_approvals))
            .routes(routes!(get_approval))
            .routes(routes!(approve))
            .routes(routes!(reject))
            .routes(routes!(list_audit))
            .routes(routes!(verify_audit)),
    )
}

/// A policy as the API shows it.
const POLICY: &str = "`{id, name, priority, rules: [PolicyRule], createdAt}`";

/// An approval as the API shows it (`approvals::view`).
const APPROVAL: &str = "`{id, requestId | operationId, action, resource, requestedBy, \
    requestHash, required: {count, roles, requireMFA}, rule, approvals: [{identity, decision, \
    mfa, at}], status, expiresAt, createdAt}`";

/// The new org's name.
#[derive(Deserialize, ToSchema)]
#[schema(as = OrgRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OrgBody {
    /// Unique among orgs.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    name: String,
}

/// Create an org (platform admin).
#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs",
    request_body = OrgBody,
    responses(
        (status = 201, description = "`{id, name}`", body = Value),
    ))]
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
    let id = crate::kernel::orgs::create_org(&state.db, &mut tx, &body.name).await?;
    crate::kernel::orgs::seal_policies(&state.keyring, &mut tx, &id).await?;
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

/// Reseal an org's policies after a review (platform admin; the break-glass
/// when its policy rows were changed behind the control plane's back).
///
/// Reseals an org's policies as they are now: the break-glass after the
/// org's policy rows were changed behind the control plane's back (its
/// policies then deny everything). A platform admin only, after reviewing
/// the policies (`GET /api/v1/policies` as the org's admin shows them, or
/// the database); not held by the org's policy, which denies everything at
/// that point; audited in both orgs with the policies it sealed.
#[utoipa::path(post, path = "/api/v1/orgs/{id}/policies/reseal", tag = "orgs",
    params(("id" = String, Path, description = "The org's id")),
    responses(
        (status = 200, description = "`{org, resealed: true, policies: [{id, name, priority, \
            rules}]}` (`rules`: how many)", body = Value),
    ))]
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
    if !crate::kernel::orgs::exists(&state.db, &org).await? {
        return Err(AppError::not_found("org"));
    }
    let mut tx = state.db.begin().await?;
    crate::kernel::orgs::seal_policies(&state.keyring, &mut tx, &org).await?;
    let sealed = crate::kernel::orgs::policies(&mut tx, &org).await?;
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

/// A policy: its name, its place in the evaluation order and its rules.
#[derive(Deserialize, ToSchema)]
#[schema(as = PolicyRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyBody {
    /// Unique in the org (required on a replacement too, where it is not
    /// changed).
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    name: String,
    /// Lower is evaluated first; 100 when a new policy names none, kept
    /// when a replacement names none.
    #[serde(default)]
    priority: Option<i64>,
    /// The ordered rules.
    #[schema(min_items = 1, max_items = 100)]
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
        crate::kernel::orgs::create_stored(&mut tx, &caller.org, body).await?
    } else {
        crate::kernel::orgs::update_stored(&mut tx, &caller.org, body).await?
    };
    crate::kernel::orgs::seal_policies(&state.keyring, &mut tx, &caller.org).await?;
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

/// Create a policy.
///
/// A policy change goes through `operations::gate`: by default it waits
/// for one admin's approval (separation of duties: one admin alone cannot
/// rewrite the rules that ask for approvals).
#[utoipa::path(post, path = "/api/v1/policies", tag = "orgs",
    request_body = PolicyBody,
    responses(
        (status = 201, description = POLICY, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
async fn create_policy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(mut body): ApiJson<PolicyBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    check_name(&body.name, "policy")?;
    policy::normalize_rules(&mut body.rules);
    policy::validate_rules(&body.rules)
        .map_err(|error| AppError::invalid(error.code(), error.to_string()))?;
    let resource = format!("policy:{}", body.name);
    let stored =
        json!({"name": body.name, "priority": body.priority.unwrap_or(100), "rules": body.rules});
    match crate::kernel::operations::gate(&state, &caller, "policy.create", &resource, &stored)
        .await?
    {
        crate::kernel::operations::Gate::Pending(answer) => {
            Ok((StatusCode::ACCEPTED, Json(answer)))
        }
        crate::kernel::operations::Gate::Proceed(verdict) => {
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

/// Replace a policy's rules.
///
/// Like a creation, it goes through `operations::gate` (one admin's
/// approval by default).
#[utoipa::path(put, path = "/api/v1/policies/{id}", tag = "orgs",
    request_body = PolicyBody,
    params(("id" = String, Path, description = "The policy's id")),
    responses(
        (status = 200, description = POLICY, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
async fn update_policy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(mut body): ApiJson<PolicyBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    policy::normalize_rules(&mut body.rules);
    policy::validate_rules(&body.rules)
        .map_err(|error| AppError::invalid(error.code(), error.to_string()))?;
    let existing = crate::kernel::orgs::policy(&state.db, &caller.org, &id).await?;
    let resource = format!("policy:{}", existing.name);
    let stored = json!({"id": id, "priority": body.priority, "rules": body.rules});
    match crate::kernel::operations::gate(&state, &caller, "policy.update", &resource, &stored)
        .await?
    {
        crate::kernel::operations::Gate::Pending(answer) => {
            Ok((StatusCode::ACCEPTED, Json(answer)))
        }
        crate::kernel::operations::Gate::Proceed(verdict) => {
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
                    serde_json::to_value(
                        crate::kernel::orgs::policy(&state.db, &caller.org, &id).await?,
                    )
                    .unwrap_or(Value::Null),
                ),
            ))
        }
    }
}

/// List policies in evaluation order.
#[utoipa::path(get, path = "/api/v1/policies", tag = "orgs",
    responses(
        (status = 200, description = "`{items: [policy]}`, a policy being `{id, name, priority, \
            rules: [PolicyRule], createdAt}`", body = Value),
    ))]
async fn list_policies(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> AppResult<Json<Value>> {
    audited_read(&state, &caller, "policy.read", "policy:*").await?;
    let mut connection = state.db.pool().acquire().await?;
    let items = crate::kernel::orgs::policies(&mut connection, &caller.org).await?;
    Ok(Json(json!({"items": items})))
}

/// Get a policy.
#[utoipa::path(get, path = "/api/v1/policies/{id}", tag = "orgs",
    params(("id" = String, Path, description = "The policy's id")),
    responses(
        (status = 200, description = POLICY, body = Value),
    ))]
async fn get_policy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<crate::kernel::orgs::Policy>> {
    let found = crate::kernel::orgs::policy(&state.db, &caller.org, &id).await?;
    audited_read(
        &state,
        &caller,
        "policy.read",
        &format!("policy:{}", found.name),
    )
    .await?;
    Ok(Json(found))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ApprovalQuery {
    /// `pending`, `approved`, `rejected` or `expired`; every approval when
    /// left out.
    #[serde(default)]
    #[param(schema_with = approval_status_schema)]
    status: Option<String>,
}

/// The statuses `list_approvals` accepts.
fn approval_status_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    super::openapi::schema_from(json!({
        "type": "string",
        "enum": ["pending", "approved", "rejected", "expired"],
    }))
}

/// List approvals (?status=pending).
#[utoipa::path(get, path = "/api/v1/approvals", tag = "approvals",
    params(ApprovalQuery),
    responses(
        (status = 200, description = "`{items: [approval]}`", body = Value),
    ))]
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
    let items =
        crate::kernel::approvals::list(&state, &caller.org, query.status.as_deref()).await?;
    Ok(Json(json!({"items": items})))
}

/// Get an approval.
#[utoipa::path(get, path = "/api/v1/approvals/{id}", tag = "approvals",
    params(("id" = String, Path, description = "The approval's id")),
    responses(
        (status = 200, description = APPROVAL, body = Value),
    ))]
async fn get_approval(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let found = crate::kernel::approvals::view(&state, &caller.org, &id).await?;
    audited_read(&state, &caller, "approval.read", &format!("approval:{id}")).await?;
    Ok(Json(found))
}

/// A vote's TOTP code and comment (the body may be left out).
#[derive(Deserialize, Default, ToSchema)]
#[schema(as = VoteRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VoteBody {
    /// A current TOTP code, when the rule requires MFA.
    #[serde(default)]
    totp: Option<String>,
    /// At most 1000 bytes.
    #[serde(default)]
    comment: Option<String>,
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

/// Approve (TOTP when the rule requires MFA).
#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "approvals",
    request_body(content = Option<VoteBody>, description = "Optional: an empty body votes \
        without a code or comment"),
    params(("id" = String, Path, description = "The approval's id")),
    responses(
        (status = 200, description = APPROVAL, body = Value),
    ))]
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
        crate::kernel::approvals::vote(&state, &caller, &id, true, body.totp.as_deref()).await?,
    ))
}

/// Reject.
#[utoipa::path(post, path = "/api/v1/approvals/{id}/reject", tag = "approvals",
    request_body(content = Option<VoteBody>, description = "Optional: an empty body votes \
        without a code or comment"),
    params(("id" = String, Path, description = "The approval's id")),
    responses(
        (status = 200, description = APPROVAL, body = Value),
    ))]
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
        crate::kernel::approvals::vote(&state, &caller, &id, false, body.totp.as_deref()).await?,
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// One action (exact, `prefix*` or `*suffix`).
    #[serde(default)]
    action: Option<String>,
    /// Several, comma-separated: full actions, globs, or verbs alone
    /// (`create,sign,rotate,access`: a verb matches that verb of every
    /// kind, `access` the reads).
    #[serde(default)]
    actions: Option<String>,
    /// A resource: exact, or a prefix ending in `*` (`wallet:*`); not with
    /// `keyId`.
    #[serde(default)]
    resource: Option<String>,
    /// A key of the registry: its records (`key:<its name>`); not with
    /// `resource`.
    #[serde(default, rename = "keyId")]
    key_id: Option<String>,
    /// An identity's id.
    #[serde(default)]
    identity: Option<String>,
    /// Unix ms, or an RFC 3339 date or time (`2025-01-01`).
    #[serde(default)]
    from: Option<String>,
    /// Unix ms, or an RFC 3339 date (the whole day is included) or time.
    #[serde(default)]
    to: Option<String>,
    /// The `nextCursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
    /// Records per page: 1 to 1000 (values outside are clamped), 100 by
    /// default.
    #[serde(default)]
    limit: Option<i64>,
}

/// An entry of `actions`: a full action or a glob as it is; a verb alone
/// matches that verb of every kind (`sign` → `*.sign`), and `access`, the
/// seed SDKs' word for reading a key, matches the reads (`*.read`).
fn action_pattern(entry: &str) -> String {
    match entry {
        "access" => "*.read".to_string(),
        verb if !verb.contains(['.', '*']) => format!("*.{verb}"),
        other => other.to_string(),
    }
}

/// A time bound: unix ms, an RFC 3339 time, or a date (`YYYY-MM-DD`, UTC
/// midnight; as the upper bound, the next midnight, so the day is in).
fn time_bound(text: &str, field: &'static str, upper: bool) -> AppResult<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let refused = || {
        AppError::invalid(
            "invalid_query",
            format!("{field} is unix milliseconds, a date (2025-01-31) or an RFC 3339 time"),
        )
    };
    let is_date = text.len() == 10 && text.as_bytes().get(4) == Some(&b'-');
    let time = if is_date {
        humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).map_err(|_| refused())?
    } else {
        humantime::parse_rfc3339_weak(text).map_err(|_| refused())?
    };
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| refused())?
        .as_millis();
    let ms = i64::try_from(ms).map_err(|_| refused())?;
    Ok(if is_date && upper {
        ms + 86_400_000
    } else {
        ms
    })
}

/// List audit records (filters, cursor).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "`{items: [{seq, action, resource, identity, org, ip, \
            approved, outcome, requestId, detail, timestamp, prevHash, hash}], nextCursor}` \
            (`nextCursor` is null on the last page)", body = Value),
    ))]
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
    let mut actions: Vec<String> = query.action.into_iter().collect();
    actions.extend(
        query
            .actions
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(action_pattern),
    );
    let resource = match (&query.key_id, query.resource) {
        (Some(_), Some(_)) => {
            return Err(AppError::invalid(
                "invalid_query",
                "give keyId or resource, not both",
            ))
        }
        (Some(key_id), None) => {
            let mut conn = state.db.pool().acquire().await?;
            let key = crate::engines::keys::load(&mut conn, &caller.org, key_id).await?;
            Some(key.resource())
        }
        (None, resource) => resource,
    };
    let filter = AuditFilter {
        actions,
        resource,
        identity: query.identity,
        from: query
            .from
            .as_deref()
            .map(|text| time_bound(text, "from", false))
            .transpose()?,
        to: query
            .to
            .as_deref()
            .map(|text| time_bound(text, "to", true))
            .transpose()?,
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

/// Recompute the org's audit hash chain.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "The verification's report", body = audit::VerifyReport),
    ))]
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
