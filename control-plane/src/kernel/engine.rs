//! # What an engine gives the core
//!
//! The core (approvals, stored operations, the worker) names no engine. An
//! engine that stores requests for approval registers a
//! [`Subject`](crate::kernel::approvals::Subject); an engine whose actions can wait
//! for an approval as stored operations registers an [`Executor`] for
//! them; an engine with background work registers a [`Job`]. The one list
//! of engines is [`crate::engines::registry`].
//!
//! The traits return boxed futures so that the core can hold them as
//! trait objects (`async fn` in a trait is not object safe).

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::kernel::approvals::Subject;
use crate::kernel::db::Tx;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::state::AppState;

/// On whose behalf an engine's change runs: the caller, or the requester
/// of an approved operation.
pub struct Actor<'a> {
    /// The org.
    pub org: &'a str,
    /// The identity that asked for it.
    pub identity: &'a str,
}

/// An approved operation, opened (what [`Executor::run`] gets).
pub struct Approved {
    /// Its id.
    pub id: String,
    /// The org.
    pub org: String,
    /// The action (`secret.delete`, ...).
    pub action: String,
    /// The resource.
    pub resource: String,
    /// The requester, on whose behalf it runs.
    pub requested_by: String,
    /// The stored request.
    pub body: Value,
    /// The approval that released it.
    pub approval_id: String,
}

/// Runs an engine's stored operations once they are approved.
pub trait Executor: Send + Sync + 'static {
    /// The actions it runs (exact names, such as `secret.delete`).
    fn actions(&self) -> &'static [&'static str];

    /// Whether `action` acts outside the database (an HSM token, the
    /// nodes): it then runs through [`Executor::run_outside`], claimed in a
    /// transaction of its own and run without one, at most once.
    fn is_outside(&self, _action: &str) -> bool {
        false
    }

    /// Runs `operation` inside `tx` (the transaction that records it
    /// executed); answers the operation's result.
    fn run<'a>(
        &'a self,
        state: &'a AppState,
        tx: &'a mut Tx,
        operation: &'a Approved,
    ) -> BoxFuture<'a, AppResult<Value>>;

    /// Runs an operation whose action [`is_outside`](Executor::is_outside).
    fn run_outside<'a>(
        &'a self,
        _state: &'a AppState,
        operation: &'a Approved,
    ) -> BoxFuture<'a, AppResult<Value>> {
        Box::pin(async move { Err(no_executor(&operation.action)) })
    }

    /// After the commit of a successful run (caches, outside clean-up).
    fn after_commit<'a>(
        &'a self,
        _state: &'a AppState,
        _operation: &'a Approved,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Background work of an engine, run by every replica's worker each pass
/// (at most once at a time per replica; several replicas run it at once,
/// so it claims what it works on).
pub trait Job: Send + Sync + 'static {
    /// A name for logs.
    fn name(&self) -> &'static str;

    /// One pass; answers how many items it handled.
    fn pass<'a>(&'a self, state: &'a Arc<AppState>) -> BoxFuture<'a, AppResult<usize>>;
}

/// The refusal of a stored action that no engine runs.
pub fn no_executor(action: &str) -> AppError {
    AppError::internal(
        "operation",
        format!("no executor for stored action {action}"),
    )
}

/// What the engines registered.
#[derive(Default)]
pub struct Engines {
    subjects: Vec<Arc<dyn Subject>>,
    executors: Vec<Arc<dyn Executor>>,
    jobs: Vec<Arc<dyn Job>>,
}

impl Engines {
    /// Registers a subject of approvals.
    #[must_use]
    pub fn subject(mut self, subject: impl Subject) -> Self {
        assert!(
            self.subject_named(subject.name()).is_none(),
            "two engines register approvals of subject {}",
            subject.name()
        );
        self.subjects.push(Arc::new(subject));
        self
    }

    /// Registers the executor of some stored actions.
    #[must_use]
    pub fn executor(mut self, executor: impl Executor) -> Self {
        for action in executor.actions() {
            assert!(
                self.executor_of(action).is_none(),
                "two engines run the stored action {action}"
            );
        }
        self.executors.push(Arc::new(executor));
        self
    }

    /// Registers a background job.
    #[must_use]
    pub fn job(mut self, job: impl Job) -> Self {
        self.jobs.push(Arc::new(job));
        self
    }

    /// The subject named `name`.
    pub fn subject_named(&self, name: &str) -> Option<&dyn Subject> {
        self.subjects
            .iter()
            .find(|subject| subject.name() == name)
            .map(|subject| subject.as_ref())
    }

    /// The executor of `action`.
    pub fn executor_of(&self, action: &str) -> Option<&dyn Executor> {
        self.executors
            .iter()
            .find(|executor| executor.actions().contains(&action))
            .map(|executor| executor.as_ref())
    }

    /// The background jobs, in registration order.
    pub fn jobs(&self) -> &[Arc<dyn Job>] {
        &self.jobs
    }
}
