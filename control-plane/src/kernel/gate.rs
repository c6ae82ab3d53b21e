//! The one authorisation path (invariant 10): every call, through
//! whichever route (the native API, the Vault-compatible transit routes,
//! approvals, signing), is decided here in the same order:
//!
//! 1. **role**: the caller's role may attempt the action at all
//!    (`auth::role_allows`); a refusal is audited;
//! 2. **policy**: the org's policies are evaluated on the request's facts
//!    (`policy::evaluate`: deny wins, unknown facts fail closed); a denial
//!    is audited in a transaction of its own, so it is recorded even though
//!    the call does nothing;
//! 3. **MFA**: an `allow` with `requireMFA` needs the caller's TOTP code
//!    (`X-Custos-TOTP`), accepted once;
//! 4. **approval**: a `require_approval` decision goes back to the caller,
//!    which stores the exact request for approval (signing, operations) or
//!    refuses when the action has no approval flow.
//!
//! What passes is audited by the caller, in the transaction of its effect
//! (or through the audit group commit for the transit data plane).
//!
//! Policies are read through a per-replica cache ([`PolicyCache`]): a
//! replica re-reads an org's policies when its copy is older than
//! [`POLICY_TTL`] (one caller re-reads, the others keep deciding on the
//! copy meanwhile), and a policy change on this replica drops the copy at
//! once. So the transit data plane decides without a database round trip,
//! and a policy changed on another replica is in force within about a
//! second. Whatever runs later than the call that asked for it (a signing
//! request when it is claimed, an approved operation) is decided again on
//! policies read in its own transaction, not from the cache.
//!
//! Platform administrators seed orgs: the approval that the default policy
//! asks for `identity.*` and `policy.*` changes does not hold them
//! (break-glass, audited as `platformAdmin`); deny rules and every other
//! approval do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kernel::approvals::Requirement;
use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::{role_allows, Caller};
use crate::kernel::db::{now_ms, Db, Tx};
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::policy::{self, Decision, PayloadKind, RequestFacts, Rule, RuleRef, ValueFacts};
use crate::kernel::state::AppState;

/// How long a replica decides on its copy of an org's policies.
pub const POLICY_TTL: Duration = Duration::from_secs(1);

/// An org's policies in evaluation order: (policy id, rules).
pub type Policies = Vec<(String, Vec<Rule>)>;

/// What a call asks to do, for [`check`].
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// `<kind>.<verb>`.
    pub action: &'a str,
    /// `<kind>:<name>`.
    pub resource: &'a str,
    /// What the request moves (not applicable unless it signs).
    pub value: ValueFacts,
    /// What a signing request signs.
    pub payload_kind: Option<PayloadKind>,
}

impl<'a> Ask<'a> {
    /// An action that moves no value.
    pub fn new(action: &'a str, resource: &'a str) -> Ask<'a> {
        Ask {
            action,
            resource,
            value: ValueFacts::NotApplicable,
            payload_kind: None,
        }
    }
}

/// What [`check`] decided for a call that may go on.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Go on now.
    Allowed {
        /// The rule that allowed it (`None`: no policy applies, e.g. a
        /// platform administrator's seeding).
        rule: Option<RuleRef>,
        /// The caller gave a valid TOTP code for it.
        mfa: bool,
        /// A platform administrator went past an approval requirement.
        platform_admin: bool,
    },
    /// Store the exact request for approval first.
    Approval {
        /// The rule that asked for it.
        rule: RuleRef,
        /// Who must approve.
        requirement: Requirement,
    },
}

impl Verdict {
    /// Audit detail naming what decided.
    pub fn detail(&self) -> Value {
        match self {
            Verdict::Allowed {
                rule,
                mfa,
                platform_admin,
            } => json!({"rule": rule, "mfa": mfa, "platformAdmin": platform_admin}),
            Verdict::Approval { rule, .. } => json!({"rule": rule}),
        }
    }
}

/// The facts of `ask` by `caller` now.
pub fn facts(caller: &Caller, ask: &Ask<'_>) -> RequestFacts {
    RequestFacts {
        action: ask.action.to_string(),
        resource: ask.resource.to_string(),
        ip: Some(caller.ip),
        value: ask.value.clone(),
        payload_kind: ask.payload_kind,
        unix_seconds: now_ms() / 1000,
    }
}

/// Actions whose approval requirement a platform administrator is not held
/// by: seeding an org's identities and policies.
fn platform_admin_seeds(action: &str) -> bool {
    action.starts_with("identity.") || action.starts_with("policy.")
}

/// Decides `ask` for `caller`: role, policy, MFA (see the module
/// documentation). Refusals are audited and answered as errors:
/// `403 forbidden` (role), `403 policy_denied`, `403 mfa_required` /
/// `invalid_totp`.
pub async fn check(state: &AppState, caller: &Caller, ask: Ask<'_>) -> AppResult<Verdict> {
    if !role_allows(caller.role, ask.action) {
        refuse(state, caller, &ask, json!({"reason": "role"})).await?;
        return Err(AppError::forbidden(
            "forbidden",
            format!("role {} may not {}", caller.role.name(), ask.action),
        ));
    }
    let policies = state
        .policies
        .get(&state.db, &state.keyring, &caller.org)
        .await?;
    let decision = policy::evaluate(&policies, &facts(caller, &ask));
    match decision {
        Decision::Deny { rule, reason } => {
            refuse(
                state,
                caller,
                &ask,
                json!({"reason": "policy", "rule": rule, "why": reason}),
            )
            .await?;
            let named = rule
                .as_ref()
                .map(|rule| format!(" (policy {} rule {})", rule.policy_id, rule.rule_index))
                .unwrap_or_default();
            Err(AppError::forbidden(
                "policy_denied",
                format!("denied by policy: {reason}{named}"),
            ))
        }
        Decision::Allow { rule, require_mfa } => {
            if require_mfa {
                verify_mfa(state, caller, &ask).await?;
            }
            Ok(Verdict::Allowed {
                rule: Some(rule),
                mfa: require_mfa,
                platform_admin: false,
            })
        }
        Decision::RequireApproval { .. }
            if caller.platform_admin && platform_admin_seeds(ask.action) =>
        {
            Ok(Verdict::Allowed {
                rule: decision.rule().cloned(),
                mfa: false,
                platform_admin: true,
            })
        }
        Decision::RequireApproval {
            rule,
            count,
            roles,
            require_mfa,
        } => Ok(Verdict::Approval {
            rule,
            requirement: Requirement {
                count,
                roles,
                require_mfa,
            },
        }),
    }
}

/// [`check`] for an action that has no approval flow: an approval
/// requirement is a refusal (`403 approval_required`, audited).
pub async fn allow(state: &AppState, caller: &Caller, ask: Ask<'_>) -> AppResult<Verdict> {
    let verdict = check(state, caller, ask.clone()).await?;
    if let Verdict::Approval { rule, .. } = &verdict {
        refuse(
            state,
            caller,
            &ask,
            json!({"reason": "approval_required", "rule": rule}),
        )
        .await?;
        return Err(AppError::forbidden(
            "approval_required",
            format!(
                "policy requires an approval for {}, which has no approval flow",
                ask.action
            ),
        ));
    }
    Ok(verdict)
}

/// Checks the caller's TOTP code in a transaction of its own: the code is
/// used up even if the call fails later, and a wrong code is counted.
async fn verify_mfa(state: &AppState, caller: &Caller, ask: &Ask<'_>) -> AppResult<()> {
    let mut tx = state.db.begin().await?;
    match crate::kernel::mfa::check(state, &mut tx, caller, caller.totp.as_deref()).await {
        Ok(()) => {
            tx.commit().await?;
            Ok(())
        }
        Err(error) => {
            tx.rollback().await?;
            refuse(
                state,
                caller,
                ask,
                json!({"reason": "mfa", "code": error.code}),
            )
            .await?;
            Err(error)
        }
    }
}

/// Records a refused call in a transaction of its own.
async fn refuse(state: &AppState, caller: &Caller, ask: &Ask<'_>, detail: Value) -> AppResult<()> {
    audit::append_alone(
        &state.db,
        &AuditEvent {
            org: &caller.org,
            action: ask.action,
            resource: ask.resource,
            identity: &caller.identity,
            ip: &caller.ip.to_string(),
            approved: "denied",
            outcome: "denied",
            request_id: &caller.request_id,
            detail,
        },
    )
    .await
    .map_err(|error| AppError::internal("audit", error))?;
    Ok(())
}

/// The org's policies read inside `tx`, in evaluation order: for decisions
/// made again when something runs (never from the cache).
pub async fn policies_in(state: &AppState, tx: &mut Tx, org: &str) -> AppResult<Policies> {
    Ok(evaluable(
        crate::kernel::orgs::sealed_policies(&state.keyring, tx, org).await?,
    ))
}

/// Policies to evaluate: the sealed ones, or, when an org's policies do not
/// match their seal, one rule that denies everything (fail closed).
fn evaluable(sealed: Option<Vec<crate::kernel::orgs::Policy>>) -> Policies {
    match sealed {
        Some(policies) => policies
            .into_iter()
            .map(|policy| (policy.id, policy.rules))
            .collect(),
        None => vec![(
            TAMPERED_POLICIES.to_string(),
            vec![Rule {
                action: "*".into(),
                resource: "*".into(),
                conditions: None,
                effect: policy::Effect::Deny,
                approvals: None,
            }],
        )],
    }
}

/// The policy id a refusal names when the org's policies do not match
/// their seal.
pub const TAMPERED_POLICIES: &str = "policies-do-not-match-their-seal";

/// One org's policies as this replica last read them.
struct Cached {
    policies: Arc<Policies>,
    read_at: Instant,
    /// One caller re-reads a stale copy; the others use it meanwhile.
    refreshing: AtomicBool,
}

/// The per-replica cache of org policies (see the module documentation).
#[derive(Default)]
pub struct PolicyCache {
    entries: RwLock<HashMap<String, Arc<Cached>>>,
}

/// Clears a cached copy's `refreshing` flag however the re-read ends.
struct RefreshGuard<'a>(&'a AtomicBool);

impl Drop for RefreshGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl PolicyCache {
    /// The policies of `org`, from the cache when fresh enough.
    pub async fn get(
        &self,
        db: &Db,
        keyring: &crate::kernel::keyring::Keyring,
        org: &str,
    ) -> AppResult<Arc<Policies>> {
        let cached = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(org)
            .cloned();
        let _refreshing = match &cached {
            Some(entry) if entry.read_at.elapsed() < POLICY_TTL => {
                return Ok(entry.policies.clone());
            }
            Some(entry) => {
                if entry.refreshing.swap(true, Ordering::AcqRel) {
                    // Another caller is re-reading: decide on this copy,
                    // at most one more re-read's time out of date.
                    return Ok(entry.policies.clone());
                }
                Some(RefreshGuard(&entry.refreshing))
            }
            None => None,
        };
        let mut conn = db.pool().acquire().await?;
        let policies = Arc::new(evaluable(
            crate::kernel::orgs::sealed_policies(keyring, &mut conn, org).await?,
        ));
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                org.to_string(),
                Arc::new(Cached {
                    policies: policies.clone(),
                    read_at: Instant::now(),
                    refreshing: AtomicBool::new(false),
                }),
            );
        Ok(policies)
    }

    /// Drops `org`'s copy (its policies changed on this replica).
    pub fn invalidate(&self, org: &str) {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(org);
    }

    /// Drops every copy (at seal).
    pub fn clear(&self) {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}
