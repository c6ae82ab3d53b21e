//! How a call authorises and audits itself (routes and engine services
//! alike): [`authorize`] is the one authorisation path (`gate::allow`:
//! role, policy, MFA; refusals audited) for actions without an approval
//! flow of their own, [`record`] appends the caller's audit record inside
//! the call's transaction, and [`audited_read`] authorises a read and
//! records it before it answers.

use serde_json::{json, Value};

use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::gate;
use crate::kernel::state::AppState;

/// Decides an action that has no approval flow of its own through the one
/// authorisation path (`gate::allow`: role, policy, MFA; refusals audited).
pub(crate) async fn authorize(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: &str,
) -> AppResult<()> {
    gate::allow(state, caller, gate::Ask::new(action, resource)).await?;
    Ok(())
}

pub(crate) async fn audit_event(
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
pub(crate) async fn record(
    state: &AppState,
    tx: &mut crate::kernel::db::Tx,
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
pub(crate) async fn audited_read(
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

pub(crate) fn check_name(name: &str, what: &str) -> AppResult<()> {
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
