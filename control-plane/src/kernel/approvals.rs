//! # Approvals: the control-group pattern for every engine
//!
//! An action that policy sends for approval (`gate::check` answers
//! [`Verdict::Approval`](crate::kernel::gate::Verdict)) is stored by the engine that
//! owns it (a signing request, a stored operation) together with an
//! approval row made here ([`insert`]). Approvers vote ([`vote`]); each
//! vote is sealed by the org's keyring for exactly that approval, voter,
//! decision and request hash, so a vote written into the table by hand
//! never counts ([`count_valid_votes`]). When what was approved runs, its
//! engine re-checks the approval under a row lock ([`recheck`]).
//!
//! This module names no engine. What an approval is *of* is a [`Subject`]
//! (`approvals.subject`): the engine that owns it is told when its request
//! is decided (inside the vote's transaction) and when it is released (after
//! the commit), through the subjects registered in
//! [`Engines`](crate::kernel::engine::Engines).
//!
//! Separation of duties: the requester never votes; identities created
//! during an approval's window count once per creator and not at all when
//! the requester made them; a role outside the approval's roles is refused.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::{Caller, Role};
use crate::kernel::db::{new_id, now_ms, Tx};
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::policy;
use crate::kernel::state::AppState;

/// How an approval ended, as its subject is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Enough valid approvals: the request may run.
    Approved,
    /// An approver rejected it.
    Rejected,
    /// It expired before enough approvers approved.
    Expired,
}

impl Outcome {
    /// The approval's status for this outcome.
    pub fn status(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Expired => "expired",
        }
    }

    /// The error recorded on the request (none when approved).
    pub fn error(self) -> Option<String> {
        match self {
            Outcome::Approved => None,
            Outcome::Rejected => Some(error_json("rejected", "an approver rejected the request")),
            Outcome::Expired => Some(error_json(
                "approval_expired",
                "the approval expired before enough approvers approved",
            )),
        }
    }
}

/// `{"code", "message"}` as stored in a request's `error` column.
pub fn error_json(code: &str, message: &str) -> String {
    json!({"code": code, "message": message}).to_string()
}

/// What an approval can be of: implemented by the engine that stores such
/// requests, registered in [`Engines`](crate::kernel::engine::Engines).
pub trait Subject: Send + Sync + 'static {
    /// The `approvals.subject` value.
    fn name(&self) -> &'static str;

    /// The field that names the request in an approval's view and audit
    /// detail (`signingRequestId`, `operationId`).
    fn id_field(&self) -> &'static str;

    /// Records how the approval of `request_id` ended, inside the
    /// transaction that decided it.
    fn decided<'a>(
        &'a self,
        tx: &'a mut Tx,
        org: &'a str,
        request_id: &'a str,
        outcome: Outcome,
    ) -> BoxFuture<'a, AppResult<()>>;

    /// After an approval's commit: lets the approved request run (at once,
    /// or by waking the engine's worker). A failure of the run itself is
    /// recorded on the request, not returned.
    fn released<'a>(
        &'a self,
        state: &'a AppState,
        request_id: &'a str,
    ) -> BoxFuture<'a, AppResult<()>>;
}

/// The registered subject named `name` (a stored approval of an unknown
/// subject is a bug or a downgrade: it fails closed).
fn subject<'a>(state: &'a AppState, name: &str) -> AppResult<&'a dyn Subject> {
    state.engines.subject_named(name).ok_or_else(|| {
        AppError::internal(
            "approval",
            format!("no engine owns approvals of subject {name}"),
        )
    })
}

/// The field naming an approval's request in views: the subject's, or
/// `requestId` for a subject no engine registers.
fn id_field(state: &AppState, name: &str) -> &'static str {
    state
        .engines
        .subject_named(name)
        .map_or("requestId", |subject| subject.id_field())
}

/// An approval rule's requirement, as stored with the approval.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// Approvals needed.
    pub count: u32,
    /// Roles that may approve.
    pub roles: Vec<String>,
    /// Approvers must give a TOTP code.
    pub require_mfa: bool,
}

/// An approval to create.
pub struct NewApproval<'a> {
    /// The org.
    pub org: &'a str,
    /// The [`Subject`]'s name.
    pub subject: &'a str,
    /// The signing request's or the operation's id.
    pub request_id: &'a str,
    /// The action approved.
    pub action: &'a str,
    /// Its resource.
    pub resource: &'a str,
    /// The hash of the exact request.
    pub request_hash: &'a str,
    /// Who must approve.
    pub requirement: &'a Requirement,
    /// The rule that asked for it.
    pub rule: Option<&'a policy::RuleRef>,
    /// The requester (who may not approve).
    pub requested_by: &'a str,
}

/// Stores a pending approval inside `tx`; returns its id.
pub async fn insert(
    state: &AppState,
    tx: &mut Tx,
    approval: &NewApproval<'_>,
) -> AppResult<String> {
    let approval_id = new_id("apr");
    let now = now_ms();
    sqlx::query(
        "INSERT INTO approvals (id, org_id, request_id, action, resource, request_hash, \
         required, roles, require_mfa, rule, requested_by, status, expires_at, created_at, \
         subject) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12, $13, $14)",
    )
    .bind(&approval_id)
    .bind(approval.org)
    .bind(approval.request_id)
    .bind(approval.action)
    .bind(approval.resource)
    .bind(approval.request_hash)
    .bind(i64::from(approval.requirement.count))
    .bind(serde_json::to_string(&approval.requirement.roles).unwrap_or_default())
    .bind(i64::from(approval.requirement.require_mfa))
    .bind(serde_json::to_string(&approval.rule).unwrap_or_default())
    .bind(approval.requested_by)
    .bind(now + i64::try_from(state.config.approval_ttl_secs).unwrap_or(86_400) * 1000)
    .bind(now)
    .bind(approval.subject)
    .execute(&mut **tx)
    .await?;
    Ok(approval_id)
}

/// The keyring record kind of vote seals.
const VOTE_RECORD: &str = "approval_vote";

/// What a vote's seal covers: everything that makes it count.
fn vote_content(
    approval_id: &str,
    identity: &str,
    decision: &str,
    mfa: bool,
    request_hash: &str,
) -> Vec<u8> {
    json!({
        "approval": approval_id,
        "identity": identity,
        "decision": decision,
        "mfa": mfa,
        "requestHash": request_hash,
    })
    .to_string()
    .into_bytes()
}

/// The approval a vote belongs to, as [`count_valid_votes`] needs it.
pub struct Ballot<'a> {
    /// The approval's id.
    pub approval_id: &'a str,
    /// Its org.
    pub org: &'a str,
    /// The hash of the request it approves.
    pub request_hash: &'a str,
    /// The requester.
    pub requested_by: &'a str,
    /// When the approval was made (the start of the request's window).
    pub window_start: i64,
}

/// Counts the valid approving votes of an approval: sealed by the keyring
/// for exactly this approval, identity, decision and request (a vote a
/// database writer added or changed does not count), not by the
/// requester, by an active identity holding one of `roles`, with MFA when
/// required. Separation of duties: identities created during the
/// approval's window (since the request was made) count once per creator,
/// and not at all when the requester created them; so one admin who makes
/// identities to approve a request gets at most one vote out of them.
pub async fn count_valid_votes(
    state: &AppState,
    tx: &mut Tx,
    ballot: &Ballot<'_>,
    requirement: &Requirement,
) -> AppResult<i64> {
    let votes = sqlx::query(
        "SELECT v.identity_id, v.mfa, v.seal, i.id, i.org_id, i.role, i.platform_admin, \
         i.status, i.created_by, i.created_at, i.authority \
         FROM approval_votes v JOIN identities i ON i.id = v.identity_id \
         WHERE v.approval_id = $1 AND v.decision = 'approve'",
    )
    .bind(ballot.approval_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut principals: Vec<String> = Vec::new();
    for vote in votes {
        let voter: String = vote.try_get("identity_id")?;
        let role: String = vote.try_get("role")?;
        let status: String = vote.try_get("status")?;
        let created_by: String = vote.try_get("created_by")?;
        let created_at: i64 = vote.try_get("created_at")?;
        let mfa = vote.try_get::<i64, _>("mfa")? == 1;
        let seal: Option<Vec<u8>> = vote.try_get("seal")?;
        let made_in_window = created_at >= ballot.window_start;
        if voter == ballot.requested_by
            || (made_in_window && created_by == ballot.requested_by)
            || status != "active"
            || !requirement.roles.contains(&role)
            || (requirement.require_mfa && !mfa)
        {
            continue;
        }
        let sealed_as_stored = match seal {
            Some(seal) => state
                .keyring
                .open_record(
                    tx,
                    ballot.org,
                    VOTE_RECORD,
                    &format!("{}/{voter}", ballot.approval_id),
                    &seal,
                )
                .await
                .is_ok_and(|content| {
                    content.as_slice()
                        == vote_content(
                            ballot.approval_id,
                            &voter,
                            "approve",
                            mfa,
                            ballot.request_hash,
                        )
                        .as_slice()
                }),
            None => false,
        };
        let authority = crate::kernel::authority::Authority::from_row(&vote, "")?;
        let authority_seal: Option<Vec<u8>> = vote.try_get("authority")?;
        let sealed_as_stored = sealed_as_stored
            && crate::kernel::authority::holds(
                &state.keyring,
                tx,
                &authority,
                authority_seal.as_deref(),
            )
            .await;
        if !sealed_as_stored {
            tracing::warn!(
                approval = ballot.approval_id,
                identity = %voter,
                "a vote whose seal does not match its row is not counted"
            );
            continue;
        }
        let principal = if made_in_window {
            format!("creator:{created_by}")
        } else {
            voter
        };
        if !principals.contains(&principal) {
            principals.push(principal);
        }
    }
    Ok(i64::try_from(principals.len()).unwrap_or(i64::MAX))
}

/// Re-checks an approval under a row lock when what it approved runs:
/// approved, for this exact request, not expired, and still carried by
/// enough valid votes ([`count_valid_votes`]) for the requirement stored
/// with it and for `now_required`, what the policy asks today (if
/// stricter). `Ok(Err(why))` when the approval does not allow execution.
pub async fn recheck(
    state: &AppState,
    tx: &mut Tx,
    approval_id: &str,
    request_hash: &str,
    requested_by: &str,
    now_required: Option<&Requirement>,
) -> AppResult<Result<(), String>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM approvals WHERE id = $1{}",
        state.db.for_update()
    )))
    .bind(approval_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(Err("the approval is missing".into()));
    };
    let status: String = row.try_get("status")?;
    if status != "approved" {
        return Ok(Err(format!("the approval is {status}")));
    }
    if row.try_get::<String, _>("request_hash")? != request_hash {
        return Ok(Err("the approval was given for another request".into()));
    }
    if row.try_get::<String, _>("requested_by")? != requested_by {
        return Ok(Err("the approval names another requester".into()));
    }
    if row.try_get::<i64, _>("expires_at")? <= now_ms() {
        return Ok(Err("the approval expired before the request ran".into()));
    }
    let stored = Requirement {
        count: u32::try_from(row.try_get::<i64, _>("required")?).unwrap_or(u32::MAX),
        roles: serde_json::from_str(&row.try_get::<String, _>("roles")?).unwrap_or_default(),
        require_mfa: row.try_get::<i64, _>("require_mfa")? == 1,
    };
    let org: String = row.try_get("org_id")?;
    let ballot = Ballot {
        approval_id,
        org: &org,
        request_hash,
        requested_by,
        window_start: row.try_get("created_at")?,
    };
    for requirement in std::iter::once(&stored).chain(now_required) {
        let valid = count_valid_votes(state, tx, &ballot, requirement).await?;
        if valid < i64::from(requirement.count) {
            return Ok(Err(format!(
                "{valid} valid approvals of {} required (roles {})",
                requirement.count,
                requirement.roles.join(", ")
            )));
        }
    }
    Ok(Ok(()))
}

/// Approves or rejects an approval. Returns the approval afterwards.
pub async fn vote(
    state: &AppState,
    caller: &Caller,
    approval_id: &str,
    approve: bool,
    totp: Option<&str>,
) -> AppResult<Value> {
    let db = &state.db;
    let now = now_ms();
    let mut tx = db.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM approvals WHERE id = $1 AND org_id = $2{}",
        db.for_update()
    )))
    .bind(approval_id)
    .bind(&caller.org)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("approval"))?;
    let status: String = row.try_get("status")?;
    let requested_by: String = row.try_get("requested_by")?;
    let request_id: String = row.try_get("request_id")?;
    let subject_name: String = row.try_get("subject")?;
    let owner = subject(state, &subject_name)?;
    let resource: String = row.try_get("resource")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    let roles: Vec<String> =
        serde_json::from_str(&row.try_get::<String, _>("roles")?).unwrap_or_default();
    let require_mfa = row.try_get::<i64, _>("require_mfa")? == 1;
    let required: i64 = row.try_get("required")?;
    let refuse = |error: AppError| Err::<Value, AppError>(error);
    if status != "pending" {
        return refuse(AppError::conflict(
            "approval_not_pending",
            format!("the approval is {status}"),
        ));
    }
    if expires_at <= now {
        expire_one(state, &mut tx, approval_id).await?;
        tx.commit().await?;
        return refuse(AppError::conflict(
            "approval_expired",
            "the approval has expired",
        ));
    }
    if caller.identity == requested_by {
        return refuse(AppError::forbidden(
            "self_approval",
            "the requester cannot approve or reject their own request",
        ));
    }
    if !roles
        .iter()
        .any(|role| Role::parse(role) == Some(caller.role))
    {
        return refuse(AppError::forbidden(
            "role_not_allowed",
            format!("this approval needs one of the roles {}", roles.join(", ")),
        ));
    }
    let mut mfa = false;
    if require_mfa && approve {
        crate::kernel::mfa::check(state, &mut tx, caller, totp).await?;
        mfa = true;
    } else if let Some(code) = totp {
        crate::kernel::mfa::check(state, &mut tx, caller, Some(code)).await?;
        mfa = true;
    }
    let requirement = Requirement {
        count: u32::try_from(required).unwrap_or(u32::MAX),
        roles: roles.clone(),
        require_mfa,
    };
    let window_start: i64 = row.try_get("created_at")?;
    if approve {
        let voter = sqlx::query("SELECT created_by, created_at FROM identities WHERE id = $1")
            .bind(&caller.identity)
            .fetch_one(&mut *tx)
            .await?;
        let created_by: String = voter.try_get("created_by")?;
        if voter.try_get::<i64, _>("created_at")? >= window_start && created_by == requested_by {
            return refuse(AppError::forbidden(
                "approver_not_independent",
                "an identity the requester created after the request cannot approve it",
            ));
        }
    }
    let decision = if approve { "approve" } else { "reject" };
    let request_hash: String = row.try_get("request_hash")?;
    let seal = state
        .keyring
        .seal_record(
            &mut tx,
            &caller.org,
            VOTE_RECORD,
            &format!("{approval_id}/{}", caller.identity),
            &vote_content(approval_id, &caller.identity, decision, mfa, &request_hash),
        )
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO approval_votes (approval_id, identity_id, decision, mfa, created_at, seal) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(approval_id)
    .bind(&caller.identity)
    .bind(decision)
    .bind(i64::from(mfa))
    .bind(now)
    .bind(seal)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return refuse(AppError::conflict(
                "already_voted",
                "this identity already voted",
            ))
        }
        Err(error) => return Err(error.into()),
    }
    let ballot = Ballot {
        approval_id,
        org: &caller.org,
        request_hash: &request_hash,
        requested_by: &requested_by,
        window_start,
    };
    let approvals = count_valid_votes(state, &mut tx, &ballot, &requirement).await?;
    let outcome = if !approve {
        Some(Outcome::Rejected)
    } else if approvals >= required {
        Some(Outcome::Approved)
    } else {
        None
    };
    let new_status = outcome.map_or("pending", Outcome::status);
    if let Some(outcome) = outcome {
        sqlx::query("UPDATE approvals SET status = $1 WHERE id = $2")
            .bind(new_status)
            .bind(approval_id)
            .execute(&mut *tx)
            .await?;
        owner
            .decided(&mut tx, &caller.org, &request_id, outcome)
            .await?;
    }
    audit::append(
        db,
        &mut tx,
        &AuditEvent {
            org: &caller.org,
            action: if approve { "approval.approve" } else { "approval.reject" },
            resource: &format!("approval:{approval_id}"),
            identity: &caller.identity,
            ip: &caller.ip.to_string(),
            approved: new_status,
            outcome: "success",
            request_id: &caller.request_id,
            detail: json!({owner.id_field(): request_id, "resource": resource, "mfa": mfa, "approvals": approvals}),
        },
    )
    .await?;
    tx.commit().await?;
    if outcome == Some(Outcome::Approved) {
        owner.released(state, &request_id).await?;
    }
    view(state, &caller.org, approval_id).await
}

/// Expires the pending approval `approval_id` inside `tx` and tells its
/// subject.
async fn expire_one(state: &AppState, tx: &mut Tx, approval_id: &str) -> AppResult<()> {
    let row = sqlx::query("SELECT org_id, request_id, subject FROM approvals WHERE id = $1")
        .bind(approval_id)
        .fetch_one(&mut **tx)
        .await?;
    let org: String = row.try_get("org_id")?;
    let request_id: String = row.try_get("request_id")?;
    let subject_name: String = row.try_get("subject")?;
    let updated =
        sqlx::query("UPDATE approvals SET status = 'expired' WHERE id = $1 AND status = 'pending'")
            .bind(approval_id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    if updated == 0 {
        return Ok(());
    }
    subject(state, &subject_name)?
        .decided(tx, &org, &request_id, Outcome::Expired)
        .await?;
    audit::append(
        &state.db,
        tx,
        &AuditEvent {
            org: &org,
            action: "approval.expire",
            resource: &format!("approval:{approval_id}"),
            identity: "system",
            ip: "",
            approved: "expired",
            outcome: "success",
            request_id: &request_id,
            detail: json!({}),
        },
    )
    .await?;
    Ok(())
}

/// An approval as the API shows it.
pub async fn view(state: &AppState, org: &str, id: &str) -> AppResult<Value> {
    let row = sqlx::query("SELECT * FROM approvals WHERE id = $1 AND org_id = $2")
        .bind(id)
        .bind(org)
        .fetch_optional(state.db.pool())
        .await?
        .ok_or_else(|| AppError::not_found("approval"))?;
    view_of(state, &row).await
}

async fn view_of(state: &AppState, row: &sqlx::any::AnyRow) -> AppResult<Value> {
    let id: String = row.try_get("id")?;
    let votes = sqlx::query(
        "SELECT identity_id, decision, mfa, created_at FROM approval_votes \
         WHERE approval_id = $1 ORDER BY created_at",
    )
    .bind(&id)
    .fetch_all(state.db.pool())
    .await?;
    let mut approvals = Vec::new();
    for vote in votes {
        approvals.push(json!({
            "identity": vote.try_get::<String, _>("identity_id")?,
            "decision": vote.try_get::<String, _>("decision")?,
            "mfa": vote.try_get::<i64, _>("mfa")? == 1,
            "at": vote.try_get::<i64, _>("created_at")?,
        }));
    }
    let roles: Vec<String> =
        serde_json::from_str(&row.try_get::<String, _>("roles")?).unwrap_or_default();
    let rule: Value =
        serde_json::from_str(&row.try_get::<String, _>("rule")?).unwrap_or(Value::Null);
    let subject: String = row.try_get("subject")?;
    Ok(json!({
        "id": id,
        id_field(state, &subject): row.try_get::<String, _>("request_id")?,
        "action": row.try_get::<String, _>("action")?,
        "resource": row.try_get::<String, _>("resource")?,
        "requestedBy": row.try_get::<String, _>("requested_by")?,
        "requestHash": row.try_get::<String, _>("request_hash")?,
        "required": {"count": row.try_get::<i64, _>("required")?, "roles": roles, "requireMFA": row.try_get::<i64, _>("require_mfa")? == 1},
        "rule": rule,
        "approvals": approvals,
        "status": row.try_get::<String, _>("status")?,
        "expiresAt": row.try_get::<i64, _>("expires_at")?,
        "createdAt": row.try_get::<i64, _>("created_at")?,
    }))
}

/// Approvals of `org`, optionally by status.
pub async fn list(state: &AppState, org: &str, status: Option<&str>) -> AppResult<Vec<Value>> {
    let rows = match status {
        Some(status) => {
            sqlx::query(
                "SELECT * FROM approvals WHERE org_id = $1 AND status = $2 ORDER BY created_at",
            )
            .bind(org)
            .bind(status)
            .fetch_all(state.db.pool())
            .await?
        }
        None => {
            sqlx::query("SELECT * FROM approvals WHERE org_id = $1 ORDER BY created_at")
                .bind(org)
                .fetch_all(state.db.pool())
                .await?
        }
    };
    let mut items = Vec::new();
    for row in rows {
        items.push(view_of(state, &row).await?);
    }
    Ok(items)
}

/// Expires every pending approval whose time ran out (at most 100 a
/// pass; the worker calls this each pass). Returns how many.
pub async fn expire_due(state: &AppState) -> AppResult<usize> {
    let expired = sqlx::query(
        "SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= $1 LIMIT 100",
    )
    .bind(now_ms())
    .fetch_all(state.db.pool())
    .await?;
    for row in &expired {
        let id: String = row.try_get("id")?;
        let mut tx = state.db.begin().await?;
        expire_one(state, &mut tx, &id).await?;
        tx.commit().await?;
    }
    Ok(expired.len())
}
