//! # MFA for people: TOTP enrolment, checks, failures and lock
//!
//! * **Enrolment is confirmed by a first code.** [`enroll`] stores a
//!   *pending* secret (`identities.totp_pending`, sealed by the org's
//!   keyring as record kind [`PENDING_RECORD`], record id = the identity's
//!   id) and answers its `otpauth://` URI; the active secret, if any, keeps
//!   working meanwhile. [`confirm`] checks a code of the pending secret and
//!   only then makes it the active one (`totp_secret`, kind
//!   [`SECRET_RECORD`]). An identity that already has MFA re-enrols only
//!   with a current code of its active secret: a stolen bearer token alone
//!   cannot move someone's second factor to another device.
//! * **A code is accepted once.** [`check`] accepts a code only through a
//!   conditional `UPDATE identities SET totp_last_step = $step WHERE id = …
//!   AND totp_last_step < $step` in the caller's transaction, and checks
//!   that it changed one row: of concurrent requests with the same code on
//!   any number of replicas, PostgreSQL's row lock lets exactly one through
//!   (the others re-evaluate the condition after it commits and change
//!   nothing), and SQLite has one writer. A step is never reused, also
//!   across re-enrolments (`totp_last_step` only grows).
//! * **Wrong codes are counted and lock.** A wrong code is counted
//!   (`totp_failures`) and audited (`identity.mfa_failed`) in a transaction
//!   of its own, committed whatever the caller's transaction does. Five in a
//!   row lock the identity's MFA for five minutes (`totp_locked_until`);
//!   while locked every check is refused before any code is compared,
//!   `403 mfa_locked` with the seconds left in the message. A success resets
//!   the count. (403 and not 429: the refusal is about this identity's
//!   second factor, not the rate of the client's requests, and it reaches
//!   the client through approvals, the gate and signing as an ordinary API
//!   error, which carries no `Retry-After` header.) A code of the right
//!   secret used a second time is refused and audited (`reason: reused`)
//!   but not counted: it is no guess.
//!
//!   The caller holds its transaction while it checks (on SQLite, the
//!   database's one write lock), so the failure's own transaction is
//!   written by a task that waits for it; until that commits, this
//!   replica's [`FailureLedger`] counts the failure, so the next check here
//!   is already refused when it would be the fifth. Other replicas see it
//!   once it commits (milliseconds later).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use sqlx::Row;

use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::Caller;
use crate::kernel::db::{now_ms, Db, Tx};
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::state::AppState;
use crate::kernel::totp::TotpSecret;

/// The keyring record kind of an identity's active TOTP secret.
pub const SECRET_RECORD: &str = "totp";
/// The keyring record kind of a TOTP secret waiting for its first code.
pub const PENDING_RECORD: &str = "totp_pending";
/// Wrong codes in a row that lock an identity's MFA.
pub const MAX_FAILURES: i64 = 5;
/// How long a lock lasts, milliseconds.
pub const LOCK_MS: i64 = 5 * 60 * 1000;
/// The issuer shown by authenticator apps.
const ISSUER: &str = "Custos";

/// Wrong codes whose count this replica has not committed yet, per
/// identity (see the module documentation). Cloning shares the counts.
///
/// A failure is in the count of the database or in the ledger, never in
/// both and never in neither: its writer commits and leaves the ledger
/// while it holds `settled`, and a check reads the row and the ledger
/// while it holds `settled` (see [`read_settled`]).
#[derive(Clone, Default)]
pub struct FailureLedger {
    pending: Arc<Mutex<HashMap<String, i64>>>,
    settled: Arc<tokio::sync::Mutex<()>>,
}

impl FailureLedger {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Failures of `identity` not committed yet.
    fn pending(&self, identity: &str) -> i64 {
        self.counts().get(identity).copied().unwrap_or(0)
    }

    /// Counts one failure of `identity` until the guard is dropped (when
    /// its transaction ended, committed or not).
    fn hold(&self, identity: &str) -> PendingFailure {
        *self.counts().entry(identity.to_string()).or_insert(0) += 1;
        PendingFailure {
            ledger: self.clone(),
            identity: identity.to_string(),
        }
    }
}

/// One failure counted by a [`FailureLedger`] until dropped.
struct PendingFailure {
    ledger: FailureLedger,
    identity: String,
}

impl Drop for PendingFailure {
    fn drop(&mut self) {
        let mut counts = self.ledger.counts();
        if let Some(count) = counts.get_mut(&self.identity) {
            *count -= 1;
            if *count <= 0 {
                counts.remove(&self.identity);
            }
        }
    }
}

/// How long an identity's MFA stays locked from `now`, if it is: the
/// stored lock, or a lock that the failures counted so far (stored and
/// still being written) are about to store.
fn locked_for(failures: i64, pending: i64, locked_until: i64, now: i64) -> Option<i64> {
    if locked_until > now {
        Some(locked_until - now)
    } else if failures.saturating_add(pending) >= MAX_FAILURES {
        Some(LOCK_MS)
    } else {
        None
    }
}

/// An identity's MFA columns.
struct MfaRow {
    name: String,
    secret: Option<Vec<u8>>,
    pending: Option<Vec<u8>>,
    failures: i64,
    locked_until: i64,
    /// Failures of this replica not committed yet (0 unless read by
    /// [`read_settled`]).
    uncommitted: i64,
}

async fn read(tx: &mut Tx, caller: &Caller) -> AppResult<MfaRow> {
    let row = sqlx::query(
        "SELECT name, totp_secret, totp_pending, totp_failures, totp_locked_until \
         FROM identities WHERE id = $1 AND org_id = $2",
    )
    .bind(&caller.identity)
    .bind(&caller.org)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| AppError::not_found("identity"))?;
    Ok(MfaRow {
        name: row.try_get("name")?,
        secret: row.try_get("totp_secret")?,
        pending: row.try_get("totp_pending")?,
        failures: row.try_get("totp_failures")?,
        uncommitted: 0,
        locked_until: row.try_get("totp_locked_until")?,
    })
}

/// The caller's MFA columns and its failures not committed yet, read
/// together under the ledger's `settled` lock. Without it, a failure
/// committed between the two reads was counted twice (a lock one code
/// early) or, the other way round, not at all.
///
/// The lock never waits on the database: a failure's writer takes it only
/// after its own statements ran, for its commit (on SQLite it already
/// holds the one write lock, so a check's transaction cannot be open; on
/// PostgreSQL its row lock is taken), and a check holds it for one read.
async fn read_settled(state: &AppState, tx: &mut Tx, caller: &Caller) -> AppResult<MfaRow> {
    let _settled = state.mfa.settled.lock().await;
    let mut row = read(tx, caller).await?;
    row.uncommitted = state.mfa.pending(&caller.identity);
    Ok(row)
}

fn refuse_if_locked(row: &MfaRow) -> AppResult<()> {
    match locked_for(row.failures, row.uncommitted, row.locked_until, now_ms()) {
        Some(left_ms) => Err(AppError::forbidden(
            "mfa_locked",
            format!(
                "MFA is locked after {MAX_FAILURES} wrong codes in a row; try again in {} seconds",
                (left_ms + 999) / 1000
            ),
        )),
        None => Ok(()),
    }
}

fn invalid_totp() -> AppError {
    AppError::forbidden(
        "invalid_totp",
        "the TOTP code is not valid (or was already used)",
    )
}

/// Why a code was refused, for the audit and the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Not a code of the secret now: counted.
    Wrong,
    /// A code of the secret whose time step was already used: not counted.
    Reused,
}

/// Records a refused code in a transaction of its own (see the module
/// documentation): a task waits for the caller's transaction to end.
fn record_failure(state: &AppState, caller: &Caller, name: &str, failure: Failure) {
    let held = (failure == Failure::Wrong).then(|| state.mfa.hold(&caller.identity));
    let ledger = state.mfa.clone();
    let db = state.db.clone();
    let failed = FailedCode {
        identity: caller.identity.clone(),
        org: caller.org.clone(),
        name: name.to_string(),
        ip: caller.ip.to_string(),
        request_id: caller.request_id.clone(),
        failure,
    };
    tokio::spawn(async move {
        if let Err(error) = failed.write(&db, &ledger, held).await {
            tracing::error!(%error, identity = %failed.identity, "a refused TOTP code could not be recorded");
        }
    });
}

/// A refused code, as the failure's own transaction writes it.
struct FailedCode {
    identity: String,
    org: String,
    name: String,
    ip: String,
    request_id: String,
    failure: Failure,
}

impl FailedCode {
    /// Writes the failure; `held` leaves the ledger as the commit lands
    /// (under the ledger's `settled` lock), or when the write failed.
    async fn write(
        &self,
        db: &Db,
        ledger: &FailureLedger,
        held: Option<PendingFailure>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = db.begin().await?;
        let now = now_ms();
        let mut locked = false;
        if self.failure == Failure::Wrong {
            // The count and the lock change in one statement; the fifth
            // failure locks and starts the count again.
            sqlx::query(
                "UPDATE identities SET \
                 totp_failures = CASE WHEN totp_failures + 1 >= $1 THEN 0 ELSE totp_failures + 1 END, \
                 totp_locked_until = CASE WHEN totp_failures + 1 >= $1 THEN $2 ELSE totp_locked_until END \
                 WHERE id = $3",
            )
            .bind(MAX_FAILURES)
            .bind(now + LOCK_MS)
            .bind(&self.identity)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query("SELECT totp_locked_until FROM identities WHERE id = $1")
                .bind(&self.identity)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                locked = row.try_get::<i64, _>("totp_locked_until")? > now;
            }
        }
        audit::append(
            db,
            &mut tx,
            &AuditEvent {
                org: &self.org,
                action: "identity.mfa_failed",
                resource: &format!("identity:{}", self.name),
                identity: &self.identity,
                ip: &self.ip,
                approved: "denied",
                outcome: "denied",
                request_id: &self.request_id,
                detail: json!({
                    "identityId": self.identity,
                    "reason": match self.failure { Failure::Wrong => "wrong_code", Failure::Reused => "reused" },
                    "locked": locked,
                }),
            },
        )
        .await?;
        let _settled = ledger.settled.lock().await;
        tx.commit().await?;
        drop(held);
        Ok(())
    }
}

/// Opens a sealed TOTP secret of the caller.
async fn open(
    state: &AppState,
    tx: &mut Tx,
    caller: &Caller,
    kind: &str,
    sealed: &[u8],
) -> AppResult<TotpSecret> {
    let bytes = state
        .keyring
        .open_record(tx, &caller.org, kind, &caller.identity, sealed)
        .await?;
    Ok(TotpSecret::from_bytes(bytes.to_vec()))
}

/// The time step of `code` under `secret`, or the refusal (a wrong code
/// is recorded).
fn step_of(
    state: &AppState,
    caller: &Caller,
    row: &MfaRow,
    secret: &TotpSecret,
    code: &str,
) -> AppResult<i64> {
    match secret.verify(code, now_ms() / 1000) {
        Some(step) => Ok(step),
        None => {
            record_failure(state, caller, &row.name, Failure::Wrong);
            Err(invalid_totp())
        }
    }
}

/// Checks the caller's TOTP code inside `tx` and uses it up: `403
/// mfa_required` without a code, `mfa_not_enrolled` without an active
/// secret, `mfa_locked`, or `invalid_totp` (wrong, or already used). The
/// code's time step is recorded in `tx`, so a caller whose transaction
/// rolls back has not used it; a wrong code is counted whatever `tx` does.
pub async fn check(
    state: &AppState,
    tx: &mut Tx,
    caller: &Caller,
    code: Option<&str>,
) -> AppResult<()> {
    let Some(code) = code else {
        return Err(AppError::forbidden(
            "mfa_required",
            "this action requires a TOTP code (X-Custos-TOTP)",
        ));
    };
    let row = read_settled(state, tx, caller).await?;
    refuse_if_locked(&row)?;
    let Some(sealed) = &row.secret else {
        return Err(AppError::forbidden(
            "mfa_not_enrolled",
            "this identity has no TOTP enrolled",
        ));
    };
    let secret = open(state, tx, caller, SECRET_RECORD, sealed).await?;
    let step = step_of(state, caller, &row, &secret, code)?;
    let used = sqlx::query(
        "UPDATE identities SET totp_last_step = $1, totp_failures = 0 \
         WHERE id = $2 AND totp_last_step < $1",
    )
    .bind(step)
    .bind(&caller.identity)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if used == 1 {
        Ok(())
    } else {
        record_failure(state, caller, &row.name, Failure::Reused);
        Err(invalid_totp())
    }
}

/// Starts (or restarts) the caller's enrolment inside `tx`: a new pending
/// secret, and its `otpauth://` URI to show once. An identity with active
/// MFA must give a current code (`code`), checked as by [`check`].
pub async fn enroll(
    state: &AppState,
    tx: &mut Tx,
    caller: &Caller,
    code: Option<&str>,
) -> AppResult<String> {
    let row = read(tx, caller).await?;
    if row.secret.is_some() {
        check(state, tx, caller, code).await?;
    }
    let secret = TotpSecret::generate();
    let sealed = state
        .keyring
        .seal_record(
            tx,
            &caller.org,
            PENDING_RECORD,
            &caller.identity,
            secret.as_bytes(),
        )
        .await?;
    sqlx::query("UPDATE identities SET totp_pending = $1 WHERE id = $2 AND org_id = $3")
        .bind(sealed)
        .bind(&caller.identity)
        .bind(&caller.org)
        .execute(&mut **tx)
        .await?;
    Ok(secret.otpauth_uri(ISSUER, &row.name))
}

/// Confirms the caller's pending enrolment with a first code, inside `tx`:
/// the pending secret becomes the active one, and the code is used up.
/// `409 mfa_not_pending` without a pending enrolment.
pub async fn confirm(state: &AppState, tx: &mut Tx, caller: &Caller, code: &str) -> AppResult<()> {
    let row = read_settled(state, tx, caller).await?;
    refuse_if_locked(&row)?;
    let Some(pending) = &row.pending else {
        return Err(AppError::conflict(
            "mfa_not_pending",
            "no MFA enrolment waits for confirmation: POST .../mfa first",
        ));
    };
    let secret = open(state, tx, caller, PENDING_RECORD, pending).await?;
    let step = step_of(state, caller, &row, &secret, code)?;
    let active = state
        .keyring
        .seal_record(
            tx,
            &caller.org,
            SECRET_RECORD,
            &caller.identity,
            secret.as_bytes(),
        )
        .await?;
    // Conditional on the very pending secret checked (a concurrent
    // re-enrolment replaces it) and on a step not used yet.
    let activated = sqlx::query(
        "UPDATE identities SET totp_secret = $1, totp_pending = NULL, totp_last_step = $2, \
         totp_failures = 0 WHERE id = $3 AND totp_pending = $4 AND totp_last_step < $2",
    )
    .bind(active)
    .bind(step)
    .bind(&caller.identity)
    .bind(pending.clone())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if activated == 1 {
        Ok(())
    } else {
        record_failure(state, caller, &row.name, Failure::Reused);
        Err(invalid_totp())
    }
}

/// Removes `identity`'s MFA (active and pending) and its failure count,
/// inside `tx` (the executor of an approved `identity.mfa_reset`). The
/// last used time step stays: codes are never accepted twice. Answers
/// whether the identity exists in `org`.
pub async fn reset(tx: &mut Tx, org: &str, identity: &str) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE identities SET totp_secret = NULL, totp_pending = NULL, totp_failures = 0, \
         totp_locked_until = 0 WHERE id = $1 AND org_id = $2",
    )
    .bind(identity)
    .bind(org)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fifth_wrong_code_locks_even_before_its_count_is_written() {
        let now = 1_000_000;
        assert_eq!(locked_for(0, 0, 0, now), None);
        assert_eq!(locked_for(4, 0, 0, now), None);
        assert_eq!(locked_for(4, 1, 0, now), Some(LOCK_MS));
        assert_eq!(locked_for(0, 5, 0, now), Some(LOCK_MS));
        assert_eq!(locked_for(0, 0, now + 1500, now), Some(1500));
        // An expired lock no longer holds.
        assert_eq!(locked_for(0, 0, now, now), None);
    }

    #[test]
    fn the_ledger_counts_a_failure_until_its_write_ends() {
        let ledger = FailureLedger::default();
        let first = ledger.hold("idn_a");
        let second = ledger.hold("idn_a");
        let other = ledger.hold("idn_b");
        assert_eq!(ledger.pending("idn_a"), 2);
        assert_eq!(ledger.pending("idn_b"), 1);
        drop(first);
        assert_eq!(ledger.pending("idn_a"), 1);
        drop(second);
        drop(other);
        assert_eq!(ledger.pending("idn_a"), 0);
        assert!(
            ledger.counts().is_empty(),
            "no identity is kept once written"
        );
    }
}
