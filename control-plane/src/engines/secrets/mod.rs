//! Secrets (KV): a secret is `(org, environment, name)`; every write is a
//! new version, and any version can be read until it is destroyed.
//!
//! * Values are sealed by the org's keyring under the record kind `secret`
//!   and the record id `<secret id>/<version>`: a value copied to another
//!   version, secret or org does not open.
//! * Check-and-set: a write names the version it replaces (`cas`, or the
//!   current version when the request was accepted, for a write that waited
//!   for an approval); a write that lost a race answers `cas_mismatch`
//!   instead of overwriting.
//! * Delete is soft (reads answer `secret_deleted`, `restore` undoes it);
//!   destroy removes the sealed values for good: of some versions, or, with
//!   no versions named, the whole secret (its name can then be reused).
//!   Both go through the approval defaults (`*.delete`, `*.destroy`).
//! * A rotation can notify a webhook: the delivery is queued in the same
//!   transaction as the new version (`crate::kernel::webhooks`), so a notice exists
//!   exactly when the rotation committed, and never carries the value.
//!
//! The functions that change a secret take the stored request body of
//! `crate::kernel::operations` (camelCase JSON), so that a change made at once and
//! a change released by an approval run the same code.

mod routes;

pub use routes::routes;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;
use zeroize::Zeroizing;

use crate::kernel::db::{new_id, now_ms, Db, Tx};
use crate::kernel::error::{AppError, AppResult, ErrorKind};
use crate::kernel::state::AppState;

/// The keyring record kind of secret values.
const VALUE_RECORD: &str = "secret";
/// The largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most tags a secret carries.
pub const MAX_TAGS: usize = 32;

pub use crate::kernel::engine::Actor;

/// Checks a secret name: 1 to 256 characters of letters, digits and
/// `_ - .`, in `/`-separated segments (`payments/stripe-key`), none empty
/// or `.`/`..`.
pub fn check_name(name: &str) -> AppResult<()> {
    let segments_ok = name
        .split('/')
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..");
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if name.is_empty() || name.len() > 256 || !segments_ok || !chars_ok {
        return Err(AppError::invalid(
            "invalid_name",
            "a secret name is 1 to 256 characters of letters, digits, '_', '-' and '.', \
             in '/'-separated segments",
        ));
    }
    Ok(())
}

/// Checks an environment name: 1 to 64 letters, digits, `_` and `-`.
pub fn check_environment(environment: &str) -> AppResult<()> {
    if environment.is_empty()
        || environment.len() > 64
        || !environment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(AppError::invalid(
            "invalid_environment",
            "an environment is 1 to 64 letters, digits, '_' and '-'",
        ));
    }
    Ok(())
}

/// Checks and normalises tags (sorted, without duplicates): at most
/// [`MAX_TAGS`], each 1 to 64 letters, digits and `_ - . :`.
pub fn normalize_tags(tags: &[String]) -> AppResult<Vec<String>> {
    let valid = |tag: &String| {
        !tag.is_empty()
            && tag.len() <= 64
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    };
    if tags.len() > MAX_TAGS || !tags.iter().all(valid) {
        return Err(AppError::invalid(
            "invalid_tags",
            format!("at most {MAX_TAGS} tags, each 1 to 64 letters, digits, '_', '-', '.' and ':'"),
        ));
    }
    let mut tags = tags.to_vec();
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// Checks a value's size.
pub fn check_value(value: &str) -> AppResult<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(AppError::new(
            ErrorKind::TooLarge,
            "value_too_large",
            format!("a secret value is at most {MAX_VALUE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The policy resource of a secret: `secret:<environment>/<name>`.
pub fn resource(environment: &str, name: &str) -> String {
    format!("secret:{environment}/{name}")
}

/// The stored request of `secret.create`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBody {
    /// Name.
    pub name: String,
    /// Environment.
    pub environment: String,
    /// The value.
    pub value: String,
    /// Tags, normalised.
    pub tags: Vec<String>,
}

/// The stored request of `secret.update` and `secret.rotate`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteBody {
    /// Name.
    pub name: String,
    /// Environment.
    pub environment: String,
    /// The new value.
    pub value: String,
    /// The version this write replaces.
    pub expected_version: i64,
    /// New tags, if they change.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// A webhook to notify of the new version.
    #[serde(default)]
    pub notify_webhook: Option<String>,
    /// `true` for a rotation (the webhook event is `secret.rotated`).
    #[serde(default)]
    pub rotation: bool,
}

/// The stored request of `secret.delete`, `secret.restore` and
/// `secret.destroy`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetBody {
    /// Name.
    pub name: String,
    /// Environment.
    pub environment: String,
    /// `secret.destroy` only: the versions to destroy; none = the whole
    /// secret.
    #[serde(default)]
    pub versions: Vec<i64>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Value) -> AppResult<T> {
    serde_json::from_value(body.clone())
        .map_err(|_| AppError::internal("secrets", "a stored secret request is malformed"))
}

/// A secret's row.
struct SecretRow {
    id: String,
    tags: Vec<String>,
    current_version: i64,
    deleted_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

fn not_found() -> AppError {
    AppError::new(
        ErrorKind::NotFound,
        "secret_not_found",
        "no secret of that name in that environment",
    )
}

fn deleted() -> AppError {
    AppError::new(
        ErrorKind::Gone,
        "secret_deleted",
        "the secret is deleted (restore it, or destroy it for good)",
    )
}

async fn load(
    conn: &mut sqlx::AnyConnection,
    db: Option<&Db>,
    org: &str,
    environment: &str,
    name: &str,
) -> AppResult<Option<SecretRow>> {
    let lock = db.map(Db::for_update).unwrap_or("");
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, tags, current_version, deleted_at, created_at, updated_at FROM secrets \
         WHERE org_id = $1 AND environment = $2 AND name = $3{lock}"
    )))
    .bind(org)
    .bind(environment)
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(SecretRow {
            id: row.try_get("id")?,
            tags: serde_json::from_str(&row.try_get::<String, _>("tags")?).unwrap_or_default(),
            current_version: row.try_get("current_version")?,
            deleted_at: row.try_get("deleted_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    })
    .transpose()
}

fn meta(name: &str, environment: &str, row: &SecretRow) -> Value {
    let mut meta = json!({
        "name": name,
        "environment": environment,
        "version": row.current_version,
        "tags": row.tags,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    });
    if let (Some(at), Some(map)) = (row.deleted_at, meta.as_object_mut()) {
        map.insert("deletedAt".into(), json!(at));
    }
    meta
}

async fn insert_version(
    state: &AppState,
    tx: &mut Tx,
    actor: &Actor<'_>,
    secret_id: &str,
    version: i64,
    value: &str,
    now: i64,
) -> AppResult<()> {
    let sealed = state
        .keyring
        .seal_record(
            tx,
            actor.org,
            VALUE_RECORD,
            &format!("{secret_id}/{version}"),
            value.as_bytes(),
        )
        .await?;
    sqlx::query(
        "INSERT INTO secret_versions (secret_id, version, value, created_by, created_at, \
         destroyed_at) VALUES ($1, $2, $3, $4, $5, NULL)",
    )
    .bind(secret_id)
    .bind(version)
    .bind(sealed)
    .bind(actor.identity)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates a secret at version 1 (`secret.create`). Returns its metadata.
pub async fn create(
    state: &AppState,
    tx: &mut Tx,
    actor: &Actor<'_>,
    body: &Value,
) -> AppResult<Value> {
    let body: CreateBody = parse(body)?;
    let now = now_ms();
    if load(tx, None, actor.org, &body.environment, &body.name)
        .await?
        .is_some()
    {
        return Err(AppError::conflict(
            "secret_exists",
            "a secret of that name exists in that environment (write a new version with PUT)",
        ));
    }
    let id = new_id("sec");
    let inserted = sqlx::query(
        "INSERT INTO secrets (id, org_id, environment, name, tags, current_version, deleted_at, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, NULL, $6, $6)",
    )
    .bind(&id)
    .bind(actor.org)
    .bind(&body.environment)
    .bind(&body.name)
    .bind(serde_json::to_string(&body.tags).unwrap_or_default())
    .bind(now)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return Err(AppError::conflict(
                "secret_exists",
                "a secret of that name exists in that environment",
            ))
        }
        Err(error) => return Err(error.into()),
    }
    insert_version(state, tx, actor, &id, 1, &body.value, now).await?;
    let row = SecretRow {
        id,
        tags: body.tags,
        current_version: 1,
        deleted_at: None,
        created_at: now,
        updated_at: now,
    };
    Ok(meta(&body.name, &body.environment, &row))
}

/// Writes a new version (`secret.update`, `secret.rotate`) if the secret is
/// still at the expected version; queues the rotation webhook. Returns the
/// metadata of the new version.
pub async fn write_version(
    state: &AppState,
    tx: &mut Tx,
    actor: &Actor<'_>,
    body: &Value,
) -> AppResult<Value> {
    let body: WriteBody = parse(body)?;
    let mut row = load(
        tx,
        Some(&state.db),
        actor.org,
        &body.environment,
        &body.name,
    )
    .await?
    .ok_or_else(not_found)?;
    if row.deleted_at.is_some() {
        return Err(deleted());
    }
    if row.current_version != body.expected_version {
        return Err(AppError::conflict(
            "cas_mismatch",
            format!(
                "the secret is at version {}, not at the expected version {}",
                row.current_version, body.expected_version
            ),
        ));
    }
    let now = now_ms();
    let version = row.current_version + 1;
    insert_version(state, tx, actor, &row.id, version, &body.value, now).await?;
    if let Some(tags) = body.tags {
        row.tags = tags;
    }
    sqlx::query(
        "UPDATE secrets SET current_version = $1, tags = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(version)
    .bind(serde_json::to_string(&row.tags).unwrap_or_default())
    .bind(now)
    .bind(&row.id)
    .execute(&mut **tx)
    .await?;
    row.current_version = version;
    row.updated_at = now;
    let mut answer = meta(&body.name, &body.environment, &row);
    if let Some(url) = &body.notify_webhook {
        let event = if body.rotation {
            "secret.rotated"
        } else {
            "secret.updated"
        };
        let notice = json!({
            "event": event,
            "name": body.name,
            "environment": body.environment,
            "version": version,
            "at": now,
        });
        let delivery = crate::kernel::webhooks::enqueue(tx, actor.org, url, event, &notice).await?;
        if let Some(map) = answer.as_object_mut() {
            map.insert("webhookDelivery".into(), json!(delivery));
        }
    }
    Ok(answer)
}

/// Soft-deletes a secret (`secret.delete`).
pub async fn delete(tx: &mut Tx, actor: &Actor<'_>, body: &Value) -> AppResult<Value> {
    let body: TargetBody = parse(body)?;
    let row = load(tx, None, actor.org, &body.environment, &body.name)
        .await?
        .ok_or_else(not_found)?;
    let now = now_ms();
    sqlx::query(
        "UPDATE secrets SET deleted_at = $1, updated_at = $1 WHERE id = $2 AND deleted_at IS NULL",
    )
    .bind(now)
    .bind(&row.id)
    .execute(&mut **tx)
    .await?;
    Ok(json!({"name": body.name, "environment": body.environment, "deleted": true}))
}

/// Undoes a soft delete (`secret.restore`).
pub async fn restore(tx: &mut Tx, actor: &Actor<'_>, body: &Value) -> AppResult<Value> {
    let body: TargetBody = parse(body)?;
    let mut row = load(tx, None, actor.org, &body.environment, &body.name)
        .await?
        .ok_or_else(not_found)?;
    let now = now_ms();
    sqlx::query("UPDATE secrets SET deleted_at = NULL, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(&row.id)
        .execute(&mut **tx)
        .await?;
    row.deleted_at = None;
    row.updated_at = now;
    Ok(meta(&body.name, &body.environment, &row))
}

/// Destroys sealed values for good (`secret.destroy`): the named versions,
/// or the whole secret when none are named.
pub async fn destroy(tx: &mut Tx, actor: &Actor<'_>, body: &Value) -> AppResult<Value> {
    let body: TargetBody = parse(body)?;
    let row = load(tx, None, actor.org, &body.environment, &body.name)
        .await?
        .ok_or_else(not_found)?;
    if body.versions.is_empty() {
        sqlx::query("DELETE FROM secret_versions WHERE secret_id = $1")
            .bind(&row.id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM secrets WHERE id = $1")
            .bind(&row.id)
            .execute(&mut **tx)
            .await?;
        return Ok(json!({"name": body.name, "environment": body.environment, "destroyed": "all"}));
    }
    let now = now_ms();
    for version in &body.versions {
        sqlx::query(
            "UPDATE secret_versions SET value = NULL, destroyed_at = $1 \
             WHERE secret_id = $2 AND version = $3 AND destroyed_at IS NULL",
        )
        .bind(now)
        .bind(&row.id)
        .bind(version)
        .execute(&mut **tx)
        .await?;
    }
    Ok(json!({"name": body.name, "environment": body.environment, "destroyed": body.versions}))
}

/// A secret's version, opened.
pub struct Opened {
    /// Metadata of the secret, with `version` set to the version read.
    pub meta: Value,
    /// The value.
    pub value: Zeroizing<String>,
}

/// Reads `version` (default: the current one) of a secret.
pub async fn read(
    state: &AppState,
    tx: &mut Tx,
    org: &str,
    environment: &str,
    name: &str,
    version: Option<i64>,
) -> AppResult<Opened> {
    let row = load(tx, None, org, environment, name)
        .await?
        .ok_or_else(not_found)?;
    if row.deleted_at.is_some() {
        return Err(deleted());
    }
    let version = version.unwrap_or(row.current_version);
    let stored = sqlx::query(
        "SELECT value, created_at FROM secret_versions WHERE secret_id = $1 AND version = $2",
    )
    .bind(&row.id)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| {
        AppError::new(
            ErrorKind::NotFound,
            "secret_version_not_found",
            format!(
                "the secret has versions 1 to {}, not {version}",
                row.current_version
            ),
        )
    })?;
    let sealed: Option<Vec<u8>> = stored.try_get("value")?;
    let Some(sealed) = sealed else {
        return Err(AppError::new(
            ErrorKind::Gone,
            "secret_version_destroyed",
            format!("version {version} was destroyed"),
        ));
    };
    let opened = state
        .keyring
        .open_record(
            tx,
            org,
            VALUE_RECORD,
            &format!("{}/{version}", row.id),
            &sealed,
        )
        .await?;
    let value = String::from_utf8(opened.to_vec())
        .map_err(|_| AppError::internal("secrets", "a stored value is not UTF-8"))?;
    let mut meta = meta(name, environment, &row);
    if let Some(map) = meta.as_object_mut() {
        map.insert("version".into(), json!(version));
        map.insert("latestVersion".into(), json!(row.current_version));
        map.insert(
            "createdAt".into(),
            json!(stored.try_get::<i64, _>("created_at")?),
        );
    }
    Ok(Opened {
        meta,
        value: Zeroizing::new(value),
    })
}

/// The current version of a live secret (for a write's expected version).
pub async fn current_version(db: &Db, org: &str, environment: &str, name: &str) -> AppResult<i64> {
    let mut conn = db.pool().acquire().await?;
    let row = load(&mut conn, None, org, environment, name)
        .await?
        .ok_or_else(not_found)?;
    if row.deleted_at.is_some() {
        return Err(deleted());
    }
    Ok(row.current_version)
}

/// Whether a secret exists (deleted or not).
pub async fn exists(db: &Db, org: &str, environment: &str, name: &str) -> AppResult<bool> {
    let mut conn = db.pool().acquire().await?;
    Ok(load(&mut conn, None, org, environment, name)
        .await?
        .is_some())
}

/// Metadata of the secrets of `org` (never values), by environment and
/// tags (a secret must carry every tag asked for); soft-deleted secrets
/// only when `include_deleted`.
pub async fn list(
    db: &Db,
    org: &str,
    environment: Option<&str>,
    tags: &[String],
    include_deleted: bool,
) -> AppResult<Vec<Value>> {
    let rows = sqlx::query(
        "SELECT name, environment, tags, current_version, deleted_at, created_at, updated_at \
         FROM secrets WHERE org_id = $1 ORDER BY environment, name",
    )
    .bind(org)
    .fetch_all(db.pool())
    .await?;
    let mut items = Vec::new();
    for row in rows {
        let env: String = row.try_get("environment")?;
        if environment.is_some_and(|wanted| wanted != env) {
            continue;
        }
        let secret = SecretRow {
            id: String::new(),
            tags: serde_json::from_str(&row.try_get::<String, _>("tags")?).unwrap_or_default(),
            current_version: row.try_get("current_version")?,
            deleted_at: row.try_get("deleted_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        };
        if secret.deleted_at.is_some() && !include_deleted {
            continue;
        }
        if !tags.iter().all(|tag| secret.tags.contains(tag)) {
            continue;
        }
        let name: String = row.try_get("name")?;
        items.push(meta(&name, &env, &secret));
    }
    Ok(items)
}

/// The versions of a secret: number, creation, creator, destroyed.
pub async fn versions(db: &Db, org: &str, environment: &str, name: &str) -> AppResult<Value> {
    let mut conn = db.pool().acquire().await?;
    let row = load(&mut conn, None, org, environment, name)
        .await?
        .ok_or_else(not_found)?;
    let rows = sqlx::query(
        "SELECT version, created_by, created_at, destroyed_at FROM secret_versions \
         WHERE secret_id = $1 ORDER BY version",
    )
    .bind(&row.id)
    .fetch_all(&mut *conn)
    .await?;
    let mut items = Vec::new();
    for version in rows {
        items.push(json!({
            "version": version.try_get::<i64, _>("version")?,
            "createdBy": version.try_get::<String, _>("created_by")?,
            "createdAt": version.try_get::<i64, _>("created_at")?,
            "destroyedAt": version.try_get::<Option<i64>, _>("destroyed_at")?,
        }));
    }
    let mut answer = meta(name, environment, &row);
    if let Some(map) = answer.as_object_mut() {
        map.insert("versions".into(), Value::Array(items));
    }
    Ok(answer)
}

/// Runs the change `action` with its stored request `body` inside `tx`:
/// the one code path of a change made at once and of one released by an
/// approval.
pub async fn apply(
    state: &AppState,
    tx: &mut Tx,
    actor: &Actor<'_>,
    action: &str,
    body: &Value,
) -> AppResult<Value> {
    match action {
        "secret.create" => create(state, tx, actor, body).await,
        "secret.update" | "secret.rotate" => write_version(state, tx, actor, body).await,
        "secret.delete" => delete(tx, actor, body).await,
        "secret.restore" => restore(tx, actor, body).await,
        "secret.destroy" => destroy(tx, actor, body).await,
        other => Err(crate::kernel::engine::no_executor(other)),
    }
}

/// The secrets engine's stored operations (changes that waited for an
/// approval), run for their requester.
pub struct StoredOperations;

impl crate::kernel::engine::Executor for StoredOperations {
    fn actions(&self) -> &'static [&'static str] {
        &[
            "secret.create",
            "secret.update",
            "secret.rotate",
            "secret.delete",
            "secret.restore",
            "secret.destroy",
        ]
    }

    fn run<'a>(
        &'a self,
        state: &'a AppState,
        tx: &'a mut Tx,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, AppResult<Value>> {
        Box::pin(async move {
            let actor = Actor {
                org: &operation.org,
                identity: &operation.requested_by,
            };
            apply(state, tx, &actor, &operation.action, &operation.body).await
        })
    }
}
