//! Orgs and their policies in the store.
//!
//! A new org gets a visible, editable policy named `default`
//! (`policy::default_rules`) at the lowest precedence (priority 1000); new
//! policies default to priority 100, so they are evaluated first. Within a
//! priority, older policies come first.

use serde::Serialize;
use sqlx::Row;

use crate::kernel::db::{new_id, now_ms, Db, Tx};
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::policy::Rule;

/// Priority of the default policy.
pub const DEFAULT_POLICY_PRIORITY: i64 = 1000;

/// Creates an org with its default policy; returns its id.
pub async fn create_org(_db: &Db, tx: &mut Tx, name: &str) -> AppResult<String> {
    let id = new_id("org");
    let inserted = sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(name)
        .bind(now_ms())
        .execute(&mut **tx)
        .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return Err(AppError::conflict(
                "already_exists",
                format!("an org named {name} exists"),
            ))
        }
        Err(error) => return Err(error.into()),
    }
    insert_policy(
        tx,
        &id,
        "default",
        DEFAULT_POLICY_PRIORITY,
        &crate::kernel::policy::default_rules(),
    )
    .await?;
    Ok(id)
}

/// A stored policy.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Id.
    pub id: String,
    /// Name, unique in the org.
    pub name: String,
    /// Lower is evaluated first.
    pub priority: i64,
    /// Ordered rules.
    pub rules: Vec<Rule>,
    /// Unix ms.
    pub created_at: i64,
}

/// Whether the org `id` exists.
pub async fn exists(db: &Db, id: &str) -> AppResult<bool> {
    let row = sqlx::query("SELECT id FROM orgs WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.is_some())
}

/// The platform org's id (the org `auth::bootstrap` creates), once there
/// is one.
pub async fn platform_id(db: &Db) -> AppResult<Option<String>> {
    let row = sqlx::query("SELECT id FROM orgs WHERE name = 'platform'")
        .fetch_optional(db.pool())
        .await?;
    Ok(row.map(|row| row.try_get("id")).transpose()?)
}

/// Stores a policy (rules already validated).
pub async fn insert_policy(
    tx: &mut Tx,
    org: &str,
    name: &str,
    priority: i64,
    rules: &[Rule],
) -> AppResult<Policy> {
    let id = new_id("pol");
    let created_at = now_ms();
    let text =
        serde_json::to_string(rules).map_err(|error| AppError::internal("policy json", error))?;
    let inserted = sqlx::query(
        "INSERT INTO policies (id, org_id, name, priority, rules, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(org)
    .bind(name)
    .bind(priority)
    .bind(text)
    .bind(created_at)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => Ok(Policy {
            id,
            name: name.to_string(),
            priority,
            rules: rules.to_vec(),
            created_at,
        }),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Err(
            AppError::conflict("already_exists", format!("a policy named {name} exists")),
        ),
        Err(error) => Err(error.into()),
    }
}

fn row_to_policy(row: &sqlx::any::AnyRow) -> AppResult<Policy> {
    let rules: String = row.try_get("rules")?;
    Ok(Policy {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        priority: row.try_get("priority")?,
        rules: serde_json::from_str(&rules)
            .map_err(|error| AppError::internal("stored policy", error))?,
        created_at: row.try_get("created_at")?,
    })
}

/// The org's policies in evaluation order.
pub async fn policies(executor: &mut sqlx::AnyConnection, org: &str) -> AppResult<Vec<Policy>> {
    let rows =
        sqlx::query("SELECT * FROM policies WHERE org_id = $1 ORDER BY priority, created_at, id")
            .bind(org)
            .fetch_all(executor)
            .await?;
    rows.iter().map(row_to_policy).collect()
}

/// One policy of the org.
pub async fn policy(db: &Db, org: &str, id: &str) -> AppResult<Policy> {
    let row = sqlx::query("SELECT * FROM policies WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(id)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| AppError::not_found("policy"))?;
    row_to_policy(&row)
}

/// Replaces a policy's rules (and optionally priority).
pub async fn update_policy(
    tx: &mut Tx,
    org: &str,
    id: &str,
    rules: &[Rule],
    priority: Option<i64>,
) -> AppResult<()> {
    let text =
        serde_json::to_string(rules).map_err(|error| AppError::internal("policy json", error))?;
    let updated = sqlx::query(
        "UPDATE policies SET rules = $1, priority = COALESCE($2, priority) \
         WHERE org_id = $3 AND id = $4",
    )
    .bind(text)
    .bind(priority)
    .bind(org)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(AppError::not_found("policy"));
    }
    Ok(())
}

/// The stored request of a policy change (`policy.create`,
/// `policy.update`), as its approval bound it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoredPolicy {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    rules: Vec<Rule>,
}

fn stored_policy(body: &serde_json::Value) -> AppResult<StoredPolicy> {
    let stored: StoredPolicy = serde_json::from_value(body.clone())
        .map_err(|_| AppError::internal("operation", "a stored policy change does not parse"))?;
    crate::kernel::policy::validate_rules(&stored.rules)
        .map_err(|error| AppError::invalid(error.code(), error.to_string()))?;
    Ok(stored)
}

/// Runs an approved (or allowed) `policy.create`: `{name, priority?, rules}`.
pub async fn create_stored(
    tx: &mut Tx,
    org: &str,
    body: &serde_json::Value,
) -> AppResult<serde_json::Value> {
    let stored = stored_policy(body)?;
    let name = stored.name.unwrap_or_default();
    let created = insert_policy(
        tx,
        org,
        &name,
        stored.priority.unwrap_or(100),
        &stored.rules,
    )
    .await?;
    serde_json::to_value(created).map_err(|error| AppError::internal("policy json", error))
}

/// Runs an approved (or allowed) `policy.update`: `{id, priority?, rules}`.
pub async fn update_stored(
    tx: &mut Tx,
    org: &str,
    body: &serde_json::Value,
) -> AppResult<serde_json::Value> {
    let stored = stored_policy(body)?;
    let id = stored.id.unwrap_or_default();
    update_policy(tx, org, &id, &stored.rules, stored.priority).await?;
    Ok(serde_json::json!({"id": id, "updated": true}))
}

/// The keyring record kind of an org's sealed policy set.
pub const POLICY_SET_RECORD: &str = "policy_set";

/// What an org's policy seal covers: every policy, in evaluation order.
fn policy_set_content(policies: &[Policy]) -> Vec<u8> {
    serde_json::to_vec(
        &policies
            .iter()
            .map(|policy| {
                serde_json::json!({
                    "id": policy.id,
                    "name": policy.name,
                    "priority": policy.priority,
                    "createdAt": policy.created_at,
                    "rules": policy.rules,
                })
            })
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default()
}

/// Seals `org`'s policies as they are now, inside `tx` (after every change
/// made through the control plane).
pub async fn seal_policies(
    keyring: &crate::kernel::keyring::Keyring,
    tx: &mut Tx,
    org: &str,
) -> AppResult<()> {
    let current = policies(tx, org).await?;
    let sealed = keyring
        .seal_record(
            tx,
            org,
            POLICY_SET_RECORD,
            org,
            &policy_set_content(&current),
        )
        .await?;
    sqlx::query("UPDATE orgs SET policy_seal = $1 WHERE id = $2")
        .bind(sealed)
        .bind(org)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `org`'s policies, if they are exactly what the control plane sealed:
/// `Ok(None)` when a row was inserted, changed or deleted behind its back
/// (or the seal is missing), which the caller must treat as "deny
/// everything".
pub async fn sealed_policies(
    keyring: &crate::kernel::keyring::Keyring,
    conn: &mut sqlx::AnyConnection,
    org: &str,
) -> AppResult<Option<Vec<Policy>>> {
    let current = policies(conn, org).await?;
    let seal: Option<Vec<u8>> = sqlx::query("SELECT policy_seal FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.try_get("policy_seal"))
        .transpose()?
        .flatten();
    let holds = match seal {
        Some(seal) => keyring
            .open_record(conn, org, POLICY_SET_RECORD, org, &seal)
            .await
            .is_ok_and(|content| content.as_slice() == policy_set_content(&current).as_slice()),
        None => false,
    };
    if holds {
        Ok(Some(current))
    } else {
        tracing::error!(
            org,
            "the org's policies do not match their seal: everything is denied until a platform admin reseals them"
        );
        Ok(None)
    }
}

/// Policy changes that waited for an approval: stored, then the org's
/// sealed policy set is written again, and this replica's cache of it is
/// dropped after the commit.
pub struct StoredOperations;

impl crate::kernel::engine::Executor for StoredOperations {
    fn actions(&self) -> &'static [&'static str] {
        &["policy.create", "policy.update"]
    }

    fn run<'a>(
        &'a self,
        state: &'a crate::kernel::state::AppState,
        tx: &'a mut Tx,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, AppResult<serde_json::Value>> {
        Box::pin(async move {
            let result = if operation.action == "policy.create" {
                create_stored(tx, &operation.org, &operation.body).await?
            } else {
                update_stored(tx, &operation.org, &operation.body).await?
            };
            seal_policies(&state.keyring, tx, &operation.org).await?;
            Ok(result)
        })
    }

    fn after_commit<'a>(
        &'a self,
        state: &'a crate::kernel::state::AppState,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, ()> {
        state.policies.invalidate(&operation.org);
        Box::pin(async {})
    }
}
