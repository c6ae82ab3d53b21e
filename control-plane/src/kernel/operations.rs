//! Operations behind an approval: the control-group pattern of
//! kms-semantics.md for everything that is not a signing request (deleting
//! and destroying secrets, rotating transit keys, ...).
//!
//! * [`gate`] evaluates the org's policy for an action. Allowed: the caller
//!   runs it at once. Approval required: the exact request is stored sealed
//!   under the org's keyring (kind `operation`, record id = the operation's
//!   id, because a request may carry a secret value), with an approval
//!   (`approvals.subject = 'operation'`), and the caller answers `202`.
//! * When the last approver approves, [`execute`] runs the stored request,
//!   not a new one, in one transaction with the move to `executed`, so it
//!   runs at most once. What a request assumed (a secret's current version)
//!   is checked again at execution: a request made stale by another change
//!   fails with `stale_request` instead of overwriting it.
//! * A process that dies between the approval and the execution leaves the
//!   operation `approved`; [`execute_approved`] (called by the worker) runs
//!   it later.
//!
//! Statuses: `pending_approval` → `approved` → `executed` | `failed`, or
//! `rejected` / `expired`. An action with effects outside the database (a
//! share restore) passes through `executing`: it is claimed in one
//! transaction and run outside any, at most once.

use futures::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::Row;

use crate::kernel::approvals::{self, NewApproval, Outcome, Requirement};
use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::Caller;
use crate::kernel::db::{new_id, now_ms, Tx};
use crate::kernel::engine::no_executor;
pub use crate::kernel::engine::Approved;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::gate::{self, Verdict};
use crate::kernel::policy::{self, Decision, RequestFacts, ValueFacts};
use crate::kernel::state::AppState;

/// `approvals.subject` of an approval of a stored operation.
pub const SUBJECT: &str = "operation";

/// The keyring record kind of stored operation bodies.
const BODY_RECORD: &str = "operation";

/// What [`gate`] decided.
#[derive(Debug)]
pub enum Gate {
    /// Run it now (what allowed it, for the audit record).
    Proceed(Verdict),
    /// Stored for approval: answer `202` with this body.
    Pending(Value),
}

/// Decides `action` on `resource` through the one authorisation path
/// (`gate::check`: role, policy, MFA; refusals audited). An approval
/// stores `body` (the complete request, as [`execute`] will run it) and
/// returns [`Gate::Pending`] with `{status, operationId, approvalId}`.
pub async fn gate(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
    body: &Value,
) -> AppResult<Gate> {
    let verdict = gate::check(state, caller, gate::Ask::new(action, resource)).await?;
    let (rule, requirement) = match verdict {
        Verdict::Allowed { .. } => return Ok(Gate::Proceed(verdict)),
        Verdict::Approval { rule, requirement } => (rule, requirement),
    };
    let ip = caller.ip.to_string();
    let mut tx = state.db.begin().await?;
    let id = new_id("op");
    let hash = request_hash(&caller.org, &caller.identity, action, resource, body);
    let sealed = state
        .keyring
        .seal_record(
            &mut tx,
            &caller.org,
            BODY_RECORD,
            &id,
            body.to_string().as_bytes(),
        )
        .await?;
    let approval_id = approvals::insert(
        state,
        &mut tx,
        &NewApproval {
            org: &caller.org,
            subject: SUBJECT,
            request_id: &id,
            action,
            resource,
            request_hash: &hash,
            requirement: &requirement,
            rule: Some(&rule),
            requested_by: &caller.identity,
        },
    )
    .await?;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO operations (id, org_id, action, resource, requested_by, body, \
         request_hash, status, approval_id, result, error, created_at, updated_at, ip, mfa) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending_approval', $8, NULL, NULL, $9, $9, $10, 0)",
    )
    .bind(&id)
    .bind(&caller.org)
    .bind(action)
    .bind(resource)
    .bind(&caller.identity)
    .bind(sealed)
    .bind(&hash)
    .bind(&approval_id)
    .bind(now)
    .bind(&ip)
    .execute(&mut *tx)
    .await?;
    audit::append(
        &state.db,
        &mut tx,
        &AuditEvent {
            org: &caller.org,
            action,
            resource,
            identity: &caller.identity,
            ip: &ip,
            approved: "pending",
            outcome: "pending",
            request_id: &caller.request_id,
            detail: json!({"rule": rule, "operation": id, "approval": approval_id, "requestHash": hash}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Gate::Pending(json!({
        "status": "pending_approval",
        "operationId": id,
        "approvalId": approval_id,
    })))
}

/// SHA-256 over the request's org, requester, action, resource and body:
/// what approvers see and approve.
fn request_hash(org: &str, identity: &str, action: &str, resource: &str, body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [org, identity, action, resource, &body.to_string()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The stored operations as a subject of approvals: a decision moves the
/// operation out of `pending_approval`; an approval runs it at once (the
/// approver's answer carries the outcome; a failure is recorded on the
/// operation, and the worker runs it if the process dies first).
pub struct Operations;

impl approvals::Subject for Operations {
    fn name(&self) -> &'static str {
        SUBJECT
    }

    fn id_field(&self) -> &'static str {
        "operationId"
    }

    fn decided<'a>(
        &'a self,
        tx: &'a mut Tx,
        org: &'a str,
        request_id: &'a str,
        outcome: Outcome,
    ) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE operations SET status = $1, error = $2, updated_at = $3 \
                 WHERE id = $4 AND org_id = $5 AND status = 'pending_approval'",
            )
            .bind(outcome.status())
            .bind(outcome.error())
            .bind(now_ms())
            .bind(request_id)
            .bind(org)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }

    fn released<'a>(
        &'a self,
        state: &'a AppState,
        request_id: &'a str,
    ) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(execute(state, request_id))
    }
}

/// Runs the approved operation `id`, if it is still `approved`, and records
/// `executed` with its result or `failed` with the error. Returns `Ok` in
/// both cases: the outcome is on the operation.
pub async fn execute(state: &AppState, id: &str) -> AppResult<()> {
    let mut tx = state.db.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM operations WHERE id = $1 AND status = 'approved'{}",
        state.db.for_update()
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let org: String = row.try_get("org_id")?;
    let sealed: Vec<u8> = row.try_get("body")?;
    let opened = state
        .keyring
        .open_record(&mut tx, &org, BODY_RECORD, id, &sealed)
        .await?;
    let body: Value = serde_json::from_slice(&opened)
        .map_err(|_| AppError::internal("operation", "a stored operation is not JSON"))?;
    let operation = Approved {
        id: id.to_string(),
        org,
        action: row.try_get("action")?,
        resource: row.try_get("resource")?,
        requested_by: row.try_get("requested_by")?,
        body,
        approval_id: row
            .try_get::<Option<String>, _>("approval_id")?
            .unwrap_or_default(),
    };
    let stored_hash: String = row.try_get("request_hash")?;
    let ip: String = row.try_get("ip")?;
    if let Err((code, message)) =
        check_at_execution(state, &mut tx, &operation, &stored_hash, &ip).await?
    {
        finish(
            &mut tx,
            id,
            "approved",
            "rejected",
            None,
            Some(json!({"code": code, "message": message}).to_string()),
        )
        .await?;
        audit::append(
            &state.db,
            &mut tx,
            &AuditEvent {
                org: &operation.org,
                action: &operation.action,
                resource: &operation.resource,
                identity: "system",
                ip: "",
                approved: "rejected",
                outcome: "denied",
                request_id: &operation.id,
                detail: json!({"operation": operation.id, "approval": operation.approval_id, "code": code, "message": message}),
            },
        )
        .await?;
        tx.commit().await?;
        return Ok(());
    }
    let event = |outcome: &'static str, detail: Value| AuditEvent {
        org: &operation.org,
        action: &operation.action,
        resource: &operation.resource,
        identity: &operation.requested_by,
        ip: "",
        approved: "approved",
        outcome,
        request_id: &operation.id,
        detail,
    };
    // An action no engine runs (a build that lost an engine) fails the
    // operation; it is never retried as if it could run.
    let executor = state.engines.executor_of(&operation.action);
    // The status the operation holds while it runs.
    let from = match executor {
        Some(executor) if executor.is_outside(&operation.action) => "executing",
        _ => "approved",
    };
    let outcome = match executor {
        None => Err(no_executor(&operation.action)),
        Some(executor) if from == "executing" => {
            // Claimed in its own transaction, then run without one: it
            // talks to the token and the nodes, and must not hold the
            // database (SQLite's write lock) meanwhile. At most once: a
            // process that dies while it runs leaves it `executing`, never
            // run again.
            finish(&mut tx, id, "approved", "executing", None, None).await?;
            tx.commit().await?;
            let outcome = executor.run_outside(state, &operation).await;
            tx = state.db.begin().await?;
            outcome
        }
        Some(executor) => executor.run(state, &mut tx, &operation).await,
    };
    match outcome {
        Ok(result) => {
            finish(
                &mut tx,
                id,
                from,
                "executed",
                Some(result.to_string()),
                None,
            )
            .await?;
            audit::append(
                &state.db,
                &mut tx,
                &event(
                    "success",
                    json!({"operation": operation.id, "approval": operation.approval_id, "result": result}),
                ),
            )
            .await?;
            tx.commit().await?;
            if let Some(executor) = executor {
                executor.after_commit(state, &operation).await;
            }
        }
        Err(error) => {
            tx.rollback().await?;
            let mut tx = state.db.begin().await?;
            let error_json = json!({"code": error.code, "message": error.message}).to_string();
            finish(&mut tx, id, from, "failed", None, Some(error_json)).await?;
            audit::append(
                &state.db,
                &mut tx,
                &event(
                    "failure",
                    json!({"operation": operation.id, "approval": operation.approval_id, "error": error.code}),
                ),
            )
            .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// What an approved operation must still satisfy when it runs, under the
/// operation's row lock: the stored body is the one approved (its hash),
/// the approval still holds (status, votes, roles, requester, expiry:
/// `approvals::recheck`), and the org's policy, read now, does not
/// deny it (a deny added after the approval stops it). `Ok(Err(..))`
/// refuses it.
async fn check_at_execution(
    state: &AppState,
    tx: &mut Tx,
    operation: &Approved,
    stored_hash: &str,
    ip: &str,
) -> AppResult<Result<(), (&'static str, String)>> {
    let recomputed = request_hash(
        &operation.org,
        &operation.requested_by,
        &operation.action,
        &operation.resource,
        &operation.body,
    );
    if recomputed != stored_hash {
        return Ok(Err((
            "request_tampered",
            "the stored operation does not match what was approved".into(),
        )));
    }
    let facts = RequestFacts {
        action: operation.action.clone(),
        resource: operation.resource.clone(),
        ip: ip.parse().ok(),
        value: ValueFacts::NotApplicable,
        payload_kind: None,
        unix_seconds: now_ms() / 1000,
    };
    let policies = gate::policies_in(state, tx, &operation.org).await?;
    let now_required = match policy::evaluate(&policies, &facts) {
        Decision::Deny { reason, .. } => {
            return Ok(Err((
                "policy_denied",
                format!("denied by policy: {reason}"),
            )));
        }
        Decision::Allow { .. } => None,
        Decision::RequireApproval {
            count,
            roles,
            require_mfa,
            ..
        } => Some(Requirement {
            count,
            roles,
            require_mfa,
        }),
    };
    match approvals::recheck(
        state,
        tx,
        &operation.approval_id,
        stored_hash,
        &operation.requested_by,
        now_required.as_ref(),
    )
    .await?
    {
        Ok(()) => Ok(Ok(())),
        Err(why) => Ok(Err(("approval_invalid", why))),
    }
}

async fn finish(
    tx: &mut Tx,
    id: &str,
    from: &str,
    status: &str,
    result: Option<String>,
    error: Option<String>,
) -> AppResult<()> {
    sqlx::query(
        "UPDATE operations SET status = $1, result = $2, error = $3, updated_at = $4 \
         WHERE id = $5 AND status = $6",
    )
    .bind(status)
    .bind(result)
    .bind(error)
    .bind(now_ms())
    .bind(id)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Runs operations left `approved` by a process that stopped before
/// executing them. Returns how many ran.
pub async fn execute_approved(state: &AppState) -> AppResult<usize> {
    let rows = sqlx::query("SELECT id FROM operations WHERE status = 'approved' LIMIT 100")
        .fetch_all(state.db.pool())
        .await?;
    for row in &rows {
        let id: String = row.try_get("id")?;
        execute(state, &id).await?;
    }
    Ok(rows.len())
}

/// An operation as the API shows it (`GET /api/v1/operations/{id}`).
pub async fn view(state: &AppState, org: &str, id: &str) -> AppResult<Value> {
    let row = sqlx::query(
        "SELECT id, action, resource, requested_by, request_hash, status, approval_id, \
         result, error, created_at, updated_at FROM operations WHERE id = $1 AND org_id = $2",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(state.db.pool())
    .await?
    .ok_or_else(|| AppError::not_found("operation"))?;
    let parse = |text: Option<String>| {
        text.and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .unwrap_or(Value::Null)
    };
    let mut view = json!({
        "id": row.try_get::<String, _>("id")?,
        "action": row.try_get::<String, _>("action")?,
        "resource": row.try_get::<String, _>("resource")?,
        "requestedBy": row.try_get::<String, _>("requested_by")?,
        "requestHash": row.try_get::<String, _>("request_hash")?,
        "status": row.try_get::<String, _>("status")?,
        "approvalId": row.try_get::<Option<String>, _>("approval_id")?,
        "createdAt": row.try_get::<i64, _>("created_at")?,
        "updatedAt": row.try_get::<i64, _>("updated_at")?,
    });
    if let Some(map) = view.as_object_mut() {
        let result = parse(row.try_get("result")?);
        if !result.is_null() {
            map.insert("result".into(), result);
        }
        let error = parse(row.try_get("error")?);
        if !error.is_null() {
            map.insert("error".into(), error);
        }
    }
    Ok(view)
}
