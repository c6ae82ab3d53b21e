//! The lifecycle of identities: create, change the role, disable, enable,
//! delete, reset MFA; list and revoke tokens; replace a client secret.
//! The HTTP routes are `api::identities`; logins and tokens `auth`; TOTP
//! `mfa`.
//!
//! * Every change that can go to an approval is a [`Change`]: the API
//!   passes it through `operations::gate` as its stored body
//!   ([`Change::to_stored`]), and [`apply`] runs it, at once or as the
//!   executor of the approved operation ([`run_stored`]). What the change
//!   assumed is checked again when it runs (the target still exists, the
//!   requester is still active and still allowed).
//! * Only a platform admin changes a platform admin (its role, status,
//!   MFA, tokens, existence), and nobody disables or deletes the last
//!   active platform admin (checked under a lock of the platform admins'
//!   rows, so two concurrent requests cannot both pass).
//! * Disabling an identity deletes its tokens in the same transaction;
//!   deleting it deletes its tokens and its row. `auth` refuses a disabled
//!   identity's login and any token of it still stored.
//! * An identity created by an approved operation has no secret yet
//!   (`secret_hash = ''`, which no secret matches): its creator, and only
//!   its creator, asks for the first secret once ([`issue_first_secret`],
//!   a conditional update), and sees it in that answer only. No secret is
//!   ever stored, sealed or not, while the request waits or after.
//!
//! Nothing here knows HTTP: refusals are [`IdentityError`]s, which the API
//! maps to answers.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;

use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::{self, Caller, Role};
use crate::kernel::db::{new_id, now_ms, Db, Tx};
use crate::kernel::state::AppState;

/// Why an identity change or read was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No such identity or org here (another org's is not found either).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The org already has an identity of that name.
    #[error("an identity named {0} exists")]
    AlreadyExists(String),
    /// A platform admin is changed only by a platform admin.
    #[error("only a platform admin changes a platform admin")]
    PlatformAdminProtected,
    /// The change would leave no active platform admin.
    #[error("the last active platform admin cannot be disabled or deleted")]
    LastPlatformAdmin,
    /// The first secret of an approved creation was already issued.
    #[error("the first client secret of this identity was already issued")]
    CredentialsIssued,
    /// The requester of a stored change is gone or disabled.
    #[error("the requester of this change is no longer an active identity")]
    RequesterInactive,
    /// The identity's authority could not be sealed.
    #[error("sealing the identity's authority failed: {0}")]
    Sealing(String),
    /// A stored change does not parse.
    #[error("a stored identity change is not valid: {0}")]
    InvalidStored(String),
    /// The store failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IdentityError {
    /// The stable API code.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::NotFound(_) => "not_found",
            IdentityError::AlreadyExists(_) => "already_exists",
            IdentityError::PlatformAdminProtected => "platform_admin_protected",
            IdentityError::LastPlatformAdmin => "last_platform_admin",
            IdentityError::CredentialsIssued => "credentials_issued",
            IdentityError::RequesterInactive => "requester_inactive",
            IdentityError::InvalidStored(_) => "invalid_stored_request",
            IdentityError::Sealing(_) => "internal",
            IdentityError::Database(_) => "internal",
        }
    }
}

type Result<T> = std::result::Result<T, IdentityError>;

/// Who asks for a change.
#[derive(Clone, Debug)]
pub struct Actor {
    /// Identity id.
    pub identity: String,
    /// Its org.
    pub org: String,
    /// Whether it is a platform admin.
    pub platform_admin: bool,
}

impl Actor {
    /// The caller of a request.
    pub fn of(caller: &Caller) -> Actor {
        Actor {
            identity: caller.identity.clone(),
            org: caller.org.clone(),
            platform_admin: caller.platform_admin,
        }
    }

    /// The requester of a stored change as it is now: still there, still
    /// active, with its current platform-admin flag.
    async fn load(tx: &mut Tx, identity: &str) -> Result<Actor> {
        let row = sqlx::query(
            "SELECT org_id, platform_admin FROM identities WHERE id = $1 AND status = 'active'",
        )
        .bind(identity)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(IdentityError::RequesterInactive)?;
        Ok(Actor {
            identity: identity.to_string(),
            org: row.try_get("org_id")?,
            platform_admin: row.try_get::<i64, _>("platform_admin")? == 1,
        })
    }
}

/// An identity as the API shows it (never its secret or TOTP secret).
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// `idn_…`.
    pub id: String,
    /// Its org.
    pub org_id: String,
    /// Unique in the org.
    pub name: String,
    /// Role name.
    pub role: String,
    /// `active` or `disabled`.
    pub status: String,
    /// `cid_…`.
    pub client_id: String,
    /// May manage orgs.
    pub platform_admin: bool,
    /// Has an active TOTP secret.
    pub mfa: bool,
    /// Has an enrolment waiting for its first code.
    pub mfa_pending: bool,
    /// The identity that created it (`system` for the bootstrap root).
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
}

const COLUMNS: &str = "id, org_id, name, role, status, client_id, platform_admin, created_by, \
     created_at, CAST(CASE WHEN totp_secret IS NULL THEN 0 ELSE 1 END AS BIGINT) AS mfa, \
     CAST(CASE WHEN totp_pending IS NULL THEN 0 ELSE 1 END AS BIGINT) AS mfa_pending";

impl Identity {
    fn from_row(row: &sqlx::any::AnyRow) -> Result<Identity> {
        Ok(Identity {
            id: row.try_get("id")?,
            org_id: row.try_get("org_id")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            status: row.try_get("status")?,
            client_id: row.try_get("client_id")?,
            platform_admin: row.try_get::<i64, _>("platform_admin")? == 1,
            mfa: row.try_get::<i64, _>("mfa")? == 1,
            mfa_pending: row.try_get::<i64, _>("mfa_pending")? == 1,
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
        })
    }

    fn active_platform_admin(&self) -> bool {
        self.platform_admin && self.status == "active"
    }

    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The identity `id` of `org`.
pub async fn get(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> Result<Identity> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM identities WHERE id = $1 AND org_id = $2"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(executor)
    .await?
    .ok_or(IdentityError::NotFound("identity"))?;
    Identity::from_row(&row)
}

/// The identities of `org`, oldest first.
pub async fn list(db: &Db, org: &str) -> Result<Vec<Identity>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM identities WHERE org_id = $1 ORDER BY created_at, id"
    )))
    .bind(org)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(Identity::from_row).collect()
}

/// Refuses a change of a platform admin by anyone else.
pub fn protect(actor: &Actor, target: &Identity) -> Result<()> {
    if target.platform_admin && !actor.platform_admin {
        return Err(IdentityError::PlatformAdminProtected);
    }
    Ok(())
}

/// Whether `target` is the last active platform admin (a read without
/// locks, to refuse early; [`apply`] decides under the lock).
pub async fn is_last_platform_admin(db: &Db, target: &Identity) -> Result<bool> {
    if !target.active_platform_admin() {
        return Ok(false);
    }
    let others: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM identities \
         WHERE platform_admin = 1 AND status = 'active' AND id <> $1",
    )
    .bind(&target.id)
    .fetch_one(db.pool())
    .await?
    .try_get("n")?;
    Ok(others == 0)
}

/// Refuses to disable or delete the last active platform admin. The
/// platform admins' rows are locked (PostgreSQL; SQLite's transaction holds
/// the database), so of two concurrent requests that would each leave one,
/// the second sees the first's effect.
async fn keep_a_platform_admin(db: &Db, tx: &mut Tx, target: &Identity) -> Result<()> {
    if !target.active_platform_admin() {
        return Ok(());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM identities WHERE platform_admin = 1 AND status = 'active' ORDER BY id{}",
        db.for_update()
    )))
    .fetch_all(&mut **tx)
    .await?;
    let mut others = 0;
    for row in &rows {
        if row.try_get::<String, _>("id")? != target.id {
            others += 1;
        }
    }
    if others == 0 {
        return Err(IdentityError::LastPlatformAdmin);
    }
    Ok(())
}

/// A change that may wait for an approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new identity (`identity.create`).
    Create {
        /// Its name.
        name: String,
        /// Its role.
        role: Role,
        /// Its org (a platform admin may name another).
        org: String,
    },
    /// A new role (`identity.update`).
    SetRole {
        /// The identity.
        identity: String,
        /// The role.
        role: Role,
    },
    /// Active again (`identity.update`).
    Enable {
        /// The identity.
        identity: String,
    },
    /// Cut off: no login, its tokens revoked (`identity.disable`).
    Disable {
        /// The identity.
        identity: String,
    },
    /// Removed with its tokens (`identity.delete`).
    Delete {
        /// The identity.
        identity: String,
    },
    /// Its MFA removed, to enrol again (`identity.mfa_reset`).
    ResetMfa {
        /// The identity.
        identity: String,
    },
}

/// The stored form of a new identity.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoredCreate {
    name: String,
    role: String,
    org_id: String,
}

/// The stored form of a change of an existing identity.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoredTarget {
    identity_id: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

impl Change {
    /// The policy action.
    pub fn action(&self) -> &'static str {
        match self {
            Change::Create { .. } => "identity.create",
            Change::SetRole { .. } | Change::Enable { .. } => "identity.update",
            Change::Disable { .. } => "identity.disable",
            Change::Delete { .. } => "identity.delete",
            Change::ResetMfa { .. } => "identity.mfa_reset",
        }
    }

    /// The body `operations::gate` stores (and approvers approve the hash
    /// of): what the change does, no secret.
    pub fn to_stored(&self) -> Value {
        match self {
            Change::Create { name, role, org } => {
                json!({"name": name, "role": role.name(), "orgId": org})
            }
            Change::SetRole { identity, role } => {
                json!({"identityId": identity, "role": role.name()})
            }
            Change::Enable { identity } => json!({"identityId": identity, "status": "active"}),
            Change::Disable { identity }
            | Change::Delete { identity }
            | Change::ResetMfa { identity } => json!({"identityId": identity}),
        }
    }

    /// The change an approved operation of `action` stored as `body`.
    pub fn from_stored(action: &str, body: &Value) -> Result<Change> {
        let invalid = |error: serde_json::Error| IdentityError::InvalidStored(error.to_string());
        let role = |name: &str| {
            Role::parse(name).ok_or_else(|| IdentityError::InvalidStored(format!("role {name}")))
        };
        if action == "identity.create" {
            let stored: StoredCreate = serde_json::from_value(body.clone()).map_err(invalid)?;
            return Ok(Change::Create {
                role: role(&stored.role)?,
                name: stored.name,
                org: stored.org_id,
            });
        }
        let stored: StoredTarget = serde_json::from_value(body.clone()).map_err(invalid)?;
        let identity = stored.identity_id;
        Ok(
            match (action, stored.role.as_deref(), stored.status.as_deref()) {
                ("identity.update", Some(name), None) => Change::SetRole {
                    identity,
                    role: role(name)?,
                },
                ("identity.update", None, Some("active")) => Change::Enable { identity },
                ("identity.disable", None, None) => Change::Disable { identity },
                ("identity.delete", None, None) => Change::Delete { identity },
                ("identity.mfa_reset", None, None) => Change::ResetMfa { identity },
                _ => {
                    return Err(IdentityError::InvalidStored(format!(
                        "{action} with this body"
                    )))
                }
            },
        )
    }
}

/// What [`apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// The identity changed (or created, or deleted).
    pub identity: String,
    /// Its view afterwards (for the answer and the operation's result).
    pub result: Value,
    /// Whose cached tokens this replica must drop once committed.
    pub cut_off: Option<String>,
    /// Another org whose chain records the change too (an identity a
    /// platform admin created there).
    pub other_org: Option<String>,
}

/// Runs `change` for `actor` inside `tx`. A new identity gets
/// `secret_hash` (the hash of the secret its creator sees in this answer),
/// or, with `None` (an approved operation), no secret until its creator
/// asks for the first one.
pub async fn apply(
    db: &Db,
    tx: &mut Tx,
    actor: &Actor,
    change: &Change,
    secret_hash: Option<&str>,
) -> Result<Applied> {
    let target = match change {
        Change::Create { name, role, org } => {
            return create(tx, actor, name, *role, org, secret_hash).await;
        }
        Change::SetRole { identity, .. }
        | Change::Enable { identity }
        | Change::Disable { identity }
        | Change::Delete { identity }
        | Change::ResetMfa { identity } => get(&mut **tx, &actor.org, identity).await?,
    };
    protect(actor, &target)?;
    let id = target.id.clone();
    let mut cut_off = None;
    let result = match change {
        Change::SetRole { role, .. } => {
            set_column(tx, &id, "role", role.name()).await?;
            get(&mut **tx, &actor.org, &id).await?.to_json()
        }
        Change::Enable { .. } => {
            set_column(tx, &id, "status", "active").await?;
            get(&mut **tx, &actor.org, &id).await?.to_json()
        }
        Change::Disable { .. } => {
            keep_a_platform_admin(db, tx, &target).await?;
            set_column(tx, &id, "status", "disabled").await?;
            let revoked = revoke(tx, &id, None).await?;
            cut_off = Some(id.clone());
            let mut view = get(&mut **tx, &actor.org, &id).await?.to_json();
            view["revokedTokens"] = json!(revoked.len());
            view
        }
        Change::Delete { .. } => {
            keep_a_platform_admin(db, tx, &target).await?;
            let revoked = revoke(tx, &id, None).await?;
            sqlx::query("DELETE FROM identities WHERE id = $1 AND org_id = $2")
                .bind(&id)
                .bind(&actor.org)
                .execute(&mut **tx)
                .await?;
            cut_off = Some(id.clone());
            json!({"id": id, "name": target.name, "deleted": true, "revokedTokens": revoked.len()})
        }
        Change::ResetMfa { .. } => {
            crate::kernel::mfa::reset(tx, &actor.org, &id).await?;
            get(&mut **tx, &actor.org, &id).await?.to_json()
        }
        // Returned above.
        Change::Create { .. } => Value::Null,
    };
    Ok(Applied {
        identity: id,
        result,
        cut_off,
        other_org: None,
    })
}

/// `column` of identity `id` set to `value` (a fixed column name).
async fn set_column(tx: &mut Tx, id: &str, column: &'static str, value: &str) -> Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE identities SET {column} = $1 WHERE id = $2"
    )))
    .bind(value)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn create(
    tx: &mut Tx,
    actor: &Actor,
    name: &str,
    role: Role,
    org: &str,
    secret_hash: Option<&str>,
) -> Result<Applied> {
    if org != actor.org {
        // Only a platform admin seeds another org; to anyone else the org
        // does not exist.
        if !actor.platform_admin {
            return Err(IdentityError::NotFound("org"));
        }
        let exists = sqlx::query("SELECT id FROM orgs WHERE id = $1")
            .bind(org)
            .fetch_optional(&mut **tx)
            .await?;
        if exists.is_none() {
            return Err(IdentityError::NotFound("org"));
        }
    }
    let id = new_id("idn");
    let client_id = new_id("cid");
    let row = auth::IdentityRow {
        id: &id,
        org,
        name,
        role,
        platform_admin: false,
        client_id: &client_id,
        secret_hash: secret_hash.unwrap_or(""),
        created_by: &actor.identity,
    };
    if !auth::insert_identity(tx, &row).await? {
        return Err(IdentityError::AlreadyExists(name.to_string()));
    }
    let mut result = get(&mut **tx, org, &id).await?.to_json();
    if secret_hash.is_none() {
        result["credentials"] = json!(format!("POST /api/v1/identities/{id}/credentials"));
    }
    Ok(Applied {
        identity: id,
        result,
        cut_off: None,
        other_org: (org != actor.org).then(|| org.to_string()),
    })
}

/// An approved operation's stored identity change, as
/// `operations::execute` hands it over.
#[derive(Debug)]
pub struct Stored<'a> {
    /// The operation.
    pub operation: &'a str,
    /// Its org.
    pub org: &'a str,
    /// Its requester.
    pub requested_by: &'a str,
    /// Its action.
    pub action: &'a str,
    /// Its stored body.
    pub body: &'a Value,
}

/// Runs an approved operation's identity change inside `tx`: for the
/// requester as it is now (refused when it is no longer active), with the
/// same checks as a change made at once. A new identity gets no secret:
/// its creator asks for the first one ([`issue_first_secret`]).
pub async fn run_stored(state: &AppState, tx: &mut Tx, stored: &Stored<'_>) -> Result<Value> {
    let actor = Actor::load(tx, stored.requested_by).await?;
    if actor.org != stored.org {
        return Err(IdentityError::RequesterInactive);
    }
    let change = Change::from_stored(stored.action, stored.body)?;
    let applied = apply(&state.db, tx, &actor, &change, None).await?;
    crate::kernel::authority::seal(&state.keyring, tx, &applied.identity)
        .await
        .map_err(|error| IdentityError::Sealing(error.message))?;
    if let Some(other) = &applied.other_org {
        audit::append(
            &state.db,
            tx,
            &AuditEvent {
                org: other,
                action: stored.action,
                resource: &format!("identity:{}", applied.result["name"].as_str().unwrap_or("")),
                identity: stored.requested_by,
                ip: "",
                approved: "approved",
                outcome: "success",
                request_id: stored.operation,
                detail: json!({"identityId": applied.identity, "operation": stored.operation}),
            },
        )
        .await?;
    }
    if let Some(identity) = &applied.cut_off {
        // Before the commit: a request on this replica in between may
        // cache the token again, for at most the cache's second.
        state.tokens.forget_identity(identity);
    }
    Ok(applied.result)
}

/// A token as listed (never the token itself nor its hash).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// `tok_…`.
    pub id: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub expires_at: i64,
    /// The address it was issued to.
    pub ip: String,
}

/// The unexpired tokens of `identity`, oldest first.
pub async fn tokens(db: &Db, identity: &str) -> Result<Vec<TokenInfo>> {
    let rows = sqlx::query(
        "SELECT id, created_at, expires_at, ip FROM tokens \
         WHERE identity_id = $1 AND expires_at > $2 ORDER BY created_at, id",
    )
    .bind(identity)
    .bind(now_ms())
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(TokenInfo {
                id: row.try_get("id")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                ip: row.try_get("ip")?,
            })
        })
        .collect()
}

/// Deletes `identity`'s tokens (all, or the one with id `token`) inside
/// `tx`; answers their hashes, for `auth::TokenCache::forget_tokens`.
pub async fn revoke(tx: &mut Tx, identity: &str, token: Option<&str>) -> Result<Vec<Vec<u8>>> {
    let rows = match token {
        Some(token) => {
            sqlx::query("SELECT token_hash FROM tokens WHERE identity_id = $1 AND id = $2")
                .bind(identity)
                .bind(token)
                .fetch_all(&mut **tx)
                .await?
        }
        None => {
            sqlx::query("SELECT token_hash FROM tokens WHERE identity_id = $1")
                .bind(identity)
                .fetch_all(&mut **tx)
                .await?
        }
    };
    let hashes = rows
        .iter()
        .map(|row| row.try_get::<Vec<u8>, _>("token_hash"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for hash in &hashes {
        sqlx::query("DELETE FROM tokens WHERE token_hash = $1")
            .bind(hash.clone())
            .execute(&mut **tx)
            .await?;
    }
    Ok(hashes)
}

/// The Argon2id PHC string of `identity`'s current secret.
pub async fn secret_hash(db: &Db, identity: &str) -> Result<String> {
    let row = sqlx::query("SELECT secret_hash FROM identities WHERE id = $1")
        .bind(identity)
        .fetch_optional(db.pool())
        .await?
        .ok_or(IdentityError::NotFound("identity"))?;
    Ok(row.try_get("secret_hash")?)
}

/// Replaces `identity`'s client secret by `new_hash` inside `tx`, clears
/// its failed logins and revokes all its tokens (a secret is rotated
/// because it may have leaked: whatever it bought goes with it). Answers
/// the revoked tokens' hashes.
pub async fn set_secret(tx: &mut Tx, identity: &str, new_hash: &str) -> Result<Vec<Vec<u8>>> {
    sqlx::query(
        "UPDATE identities SET secret_hash = $1, failed_attempts = 0, locked_until = 0 \
         WHERE id = $2",
    )
    .bind(new_hash)
    .bind(identity)
    .execute(&mut **tx)
    .await?;
    revoke(tx, identity, None).await
}

/// The identity `id` whose first secret `creator` may still ask for:
/// `NotFound` unless `creator` created it (in any org: a platform admin
/// seeds others), `CredentialsIssued` once it has a secret.
pub async fn first_secret_target(db: &Db, creator: &str, id: &str) -> Result<Identity> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, secret_hash FROM identities WHERE id = $1 AND created_by = $2"
    )))
    .bind(id)
    .bind(creator)
    .fetch_optional(db.pool())
    .await?
    .ok_or(IdentityError::NotFound("identity"))?;
    if !row.try_get::<String, _>("secret_hash")?.is_empty() {
        return Err(IdentityError::CredentialsIssued);
    }
    Identity::from_row(&row)
}

/// Gives identity `id`, created by `creator` through an approved
/// operation, its first secret (`secret_hash`) inside `tx`: once, by a
/// conditional update on the empty hash, so of two concurrent requests one
/// gets `CredentialsIssued`.
pub async fn issue_first_secret(
    tx: &mut Tx,
    creator: &str,
    id: &str,
    secret_hash: &str,
) -> Result<()> {
    let issued = sqlx::query(
        "UPDATE identities SET secret_hash = $1 \
         WHERE id = $2 AND created_by = $3 AND secret_hash = ''",
    )
    .bind(secret_hash)
    .bind(id)
    .bind(creator)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if issued == 1 {
        Ok(())
    } else {
        Err(IdentityError::CredentialsIssued)
    }
}

/// Identity changes that waited for an approval.
pub struct StoredOperations;

impl crate::kernel::engine::Executor for StoredOperations {
    fn actions(&self) -> &'static [&'static str] {
        &[
            "identity.create",
            "identity.update",
            "identity.disable",
            "identity.delete",
            "identity.mfa_reset",
        ]
    }

    fn run<'a>(
        &'a self,
        state: &'a AppState,
        tx: &'a mut Tx,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, crate::kernel::error::AppResult<Value>> {
        Box::pin(async move {
            let stored = Stored {
                operation: &operation.id,
                org: &operation.org,
                requested_by: &operation.requested_by,
                action: &operation.action,
                body: &operation.body,
            };
            Ok(run_stored(state, tx, &stored).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_reads_back_from_its_stored_body() {
        let changes = [
            Change::Create {
                name: "ops-bot".into(),
                role: Role::Operator,
                org: "org_1".into(),
            },
            Change::SetRole {
                identity: "idn_1".into(),
                role: Role::Approver,
            },
            Change::Enable {
                identity: "idn_1".into(),
            },
            Change::Disable {
                identity: "idn_1".into(),
            },
            Change::Delete {
                identity: "idn_1".into(),
            },
            Change::ResetMfa {
                identity: "idn_1".into(),
            },
        ];
        for change in changes {
            let stored = change.to_stored();
            assert_eq!(
                Change::from_stored(change.action(), &stored).unwrap(),
                change
            );
            assert!(!stored.to_string().contains("secret"), "{stored}");
        }
    }

    #[test]
    fn a_stored_body_that_does_not_fit_its_action_is_refused() {
        for (action, body) in [
            ("identity.update", json!({"identityId": "idn_1"})),
            (
                "identity.update",
                json!({"identityId": "idn_1", "status": "disabled"}),
            ),
            (
                "identity.disable",
                json!({"identityId": "idn_1", "role": "admin"}),
            ),
            (
                "identity.delete",
                json!({"identityId": "idn_1", "extra": 1}),
            ),
            (
                "identity.create",
                json!({"name": "x", "role": "king", "orgId": "org_1"}),
            ),
            ("identity.rename", json!({"identityId": "idn_1"})),
        ] {
            assert!(
                matches!(
                    Change::from_stored(action, &body),
                    Err(IdentityError::InvalidStored(_))
                ),
                "{action} {body}"
            );
        }
    }

    #[test]
    fn only_a_platform_admin_changes_a_platform_admin() {
        let identity = |platform_admin| Identity {
            id: "idn_1".into(),
            org_id: "org_1".into(),
            name: "root".into(),
            role: "admin".into(),
            status: "active".into(),
            client_id: "cid_1".into(),
            platform_admin,
            mfa: false,
            mfa_pending: false,
            created_by: "system".into(),
            created_at: 0,
        };
        let actor = |platform_admin| Actor {
            identity: "idn_2".into(),
            org: "org_1".into(),
            platform_admin,
        };
        assert!(matches!(
            protect(&actor(false), &identity(true)),
            Err(IdentityError::PlatformAdminProtected)
        ));
        assert!(protect(&actor(true), &identity(true)).is_ok());
        assert!(protect(&actor(false), &identity(false)).is_ok());
    }
}
