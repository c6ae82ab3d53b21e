//! # The background worker
//!
//! Every replica runs one. Each pass (every second, or at once when woken:
//! an approval completed, the keyring was unsealed) it expires approvals
//! whose time ran out, runs stored operations left `approved` by a
//! process that stopped first, and then each engine's [`Job`] in
//! registration order. Nothing runs while the keyring is sealed. Jobs
//! claim what they work on (the claim/lease pattern), so any number of
//! replicas may run the same pass at once.
//!
//! [`Job`]: crate::kernel::engine::Job

use std::sync::Arc;
use std::time::Duration;

use crate::kernel::error::AppResult;
use crate::kernel::state::AppState;

/// One pass: approvals, stored operations, then the engines' jobs. A job
/// that fails is logged and the others still run. Answers how many items
/// the jobs handled.
pub async fn work_once(state: &Arc<AppState>) -> AppResult<usize> {
    crate::kernel::approvals::expire_due(state).await?;
    crate::kernel::operations::execute_approved(state).await?;
    let mut handled = 0;
    for job in state.engines.jobs() {
        match job.pass(state).await {
            Ok(count) => handled += count,
            Err(error) => tracing::warn!(job = job.name(), %error, "a worker pass failed"),
        }
    }
    Ok(handled)
}

/// The worker loop: wakes every second or when notified.
pub async fn run(state: Arc<AppState>) {
    loop {
        // Sealed: nothing runs until an operator unseals (which wakes this).
        if !state.keyring.is_sealed() {
            if let Err(error) = work_once(&state).await {
                tracing::warn!(%error, "worker pass failed");
            }
        }
        tokio::select! {
            _ = state.worker_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
