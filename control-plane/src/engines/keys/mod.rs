//! The key registry (`/api/v1/keys`): named keys with one usage each,
//! versions, scheduled rotation, crypto-shredding, and client-side
//! encryption keys with an expiry and a retention period.
//!
//! * Software keys keep each version's material sealed by the org's keyring
//!   (kind `registry_key`, record id `<key id>/<version>`); `backend: "hsm"`
//!   keys live in the PKCS#11 token as non-extractable objects (`hsm`),
//!   and the database holds only their object id and public key.
//! * Symmetric ciphertexts are `custos:v<N>:<base64>`, AES-256-GCM with
//!   associated data binding org, key id, version, purpose (`encrypt` or
//!   `wrap`) and the caller's context: a ciphertext made under another key,
//!   org or purpose does not open.
//! * Encryption budgets: every encryption or wrap under an AES-256 key (both
//!   backends) is counted on its version (`registry_key_versions.
//!   encryptions`) in the transaction of the operation and its audit
//!   record. No version makes more than `[keys] encryptions_per_version`
//!   (2^30); the call whose count reaches it rotates the key in the same
//!   transaction, once, audited as `system` (`key.rotate`, reason
//!   `budget`). This rotation is the system's own and needs no approval;
//!   a manual `key.rotate` still goes through the policy.
//! * Destroy (after the approval the default policy asks for) removes the
//!   sealed material and the token objects; afterwards every use answers
//!   `410 key_destroyed`. The key's row and public keys stay for the audit.
//!   It is all-or-nothing across the database and the token: a software
//!   key is wiped in one transaction; a key with token objects is first
//!   committed `destroying` (as unusable as `destroyed`), then its objects
//!   are deleted, then its rows are wiped and it is `destroyed`
//!   ([`finish_destroy`]). A failure or crash in between leaves it
//!   `destroying` with its object ids, and the scheduler finishes it.
//! * Client-side encryption keys (`purpose: "client_side_encryption"`,
//!   RSA with `ENCRYPT_DECRYPT`): the public key is readable, decryption
//!   only through the API; after `expiresAt` (30 days by default) the key is
//!   `deprecated` and still decrypts, after the retention (90 more days) the
//!   scheduler destroys it; at most 5 keys per subject per 24 hours.
//!
//! Every operation is blocking (RSA, the token) and runs in
//! `spawn_blocking`; material is opened per call and wiped after it, so
//! the registry caches no key material. At `sys/seal` the token store is
//! locked (`AppState::lock_token_keys`) and at unseal logged in again
//! (`AppState::unlock_token_keys`).
//!
//! Locks: every transaction that changes a key or counts on it locks the
//! key's row (`FOR UPDATE` on PostgreSQL; SQLite's write transactions are
//! serial) before its versions, and uses lock it shared, so a destruction
//! waits for the uses in flight and no use follows it.

pub mod engine;
mod routes;
pub mod rsa;

pub use routes::routes;

use std::sync::Arc;

use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};
use zeroize::Zeroizing;

use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::db::{new_id, now_ms, Dialect, Tx};
use crate::kernel::error::{AppError, AppResult, ErrorKind};
use crate::kernel::hsm::{self, HsmKeyId};
use crate::kernel::state::AppState;
use engine::{KeyError, KeyType, Material, Signed, Usage, VersionKey};

/// The keyring record kind of software key material.
const MATERIAL_RECORD: &str = "registry_key";
/// Ciphertext prefix.
const PREFIX: &str = "custos:v";
/// `purpose` of client-side encryption keys.
pub const CLIENT_SIDE_ENCRYPTION: &str = "client_side_encryption";
const DAY_MS: i64 = 86_400_000;
/// The state of a key whose destruction committed and whose token objects
/// may still exist: unusable, finished by [`finish_destroy`].
pub const DESTROYING: &str = "destroying";
/// The state of a key whose material is gone everywhere.
pub const DESTROYED: &str = "destroyed";

/// The API error of an engine error.
pub fn key_error(error: KeyError) -> AppError {
    match &error {
        KeyError::Material => AppError::internal("key material", &error),
        KeyError::Hsm(hsm::HsmError::Unavailable { .. } | hsm::HsmError::NotLoggedIn) => {
            AppError::unavailable("hsm_unavailable", "the HSM does not answer")
        }
        KeyError::Hsm(hsm::HsmError::Locked) => AppError::unavailable(
            "hsm_locked",
            "the HSM key store is locked: the control plane was sealed",
        ),
        KeyError::Hsm(hsm::HsmError::UnsupportedMechanism { .. }) => AppError::invalid(
            "hsm_mechanism_unsupported",
            "the HSM does not implement this operation for this key type",
        ),
        _ => AppError::bad_request(error.code(), error.to_string()),
    }
}

/// A key as stored.
#[derive(Clone, Debug)]
pub struct KeyRow {
    /// Id.
    pub id: String,
    /// Its org.
    pub org: String,
    /// Name (unique in the org).
    pub name: String,
    /// Type.
    pub key_type: KeyType,
    /// Usage.
    pub usage: Usage,
    /// `software` or `hsm`.
    pub backend: String,
    /// `enabled`, `deprecated`, `destroying` or `destroyed`.
    pub state: String,
    /// The version new operations use.
    pub latest_version: i64,
    /// Scheduled rotation period, days.
    pub rotation_days: Option<i64>,
    /// When the scheduler rotates it next (unix ms).
    pub next_rotation: Option<i64>,
    /// `client_side_encryption` or none.
    pub purpose: Option<String>,
    /// The subject (device) of a client-side encryption key.
    pub subject: Option<String>,
    /// When it is deprecated (unix ms).
    pub expires_at: Option<i64>,
    /// When the scheduler destroys it (unix ms).
    pub destroy_at: Option<i64>,
    /// Creation (unix ms).
    pub created_at: i64,
}

impl KeyRow {
    /// Reads a `registry_keys` row.
    pub fn from_row(row: &sqlx::any::AnyRow) -> AppResult<KeyRow> {
        let type_name: String = row.try_get("key_type")?;
        let usage_name: String = row.try_get("usage")?;
        Ok(KeyRow {
            id: row.try_get("id")?,
            org: row.try_get("org_id")?,
            name: row.try_get("name")?,
            key_type: KeyType::parse(&type_name)
                .ok_or_else(|| AppError::internal("keys", "unknown stored key type"))?,
            usage: Usage::parse(&usage_name)
                .ok_or_else(|| AppError::internal("keys", "unknown stored usage"))?,
            backend: row.try_get("backend")?,
            state: row.try_get("state")?,
            latest_version: row.try_get("latest_version")?,
            rotation_days: row.try_get("rotation_days")?,
            next_rotation: row.try_get("next_rotation")?,
            purpose: row.try_get("purpose")?,
            subject: row.try_get("subject")?,
            expires_at: row.try_get("expires_at")?,
            destroy_at: row.try_get("destroy_at")?,
            created_at: row.try_get("created_at")?,
        })
    }

    /// The policy resource: `key:<name>`.
    pub fn resource(&self) -> String {
        format!("key:{}", self.name)
    }

    /// Whether the key's destruction committed (`destroying` or
    /// `destroyed`): it is never usable again.
    pub fn is_destroyed(&self) -> bool {
        self.state == DESTROYING || self.state == DESTROYED
    }

    fn destroyed_error(&self) -> AppError {
        AppError::new(
            ErrorKind::Gone,
            "key_destroyed",
            "the key was destroyed: its material no longer exists",
        )
    }

    /// The key as the API shows it (with the latest public key, PEM).
    pub fn to_json(&self, public_key: Option<&[u8]>) -> Value {
        let mut view = json!({
            "id": self.id,
            "name": self.name,
            "type": self.key_type.as_str(),
            "usage": self.usage.as_str(),
            "backend": self.backend,
            "state": self.state,
            "version": self.latest_version,
            "createdAt": self.created_at,
        });
        if let Some(map) = view.as_object_mut() {
            let mut put = |name: &str, value: Value| {
                if !value.is_null() {
                    map.insert(name.to_string(), value);
                }
            };
            put("publicKey", json!(public_key.and_then(engine::public_pem)));
            put(
                "rotation",
                json!(self.rotation_days.map(|days| json!({"periodDays": days}))),
            );
            put("nextRotationAt", json!(self.next_rotation));
            put("purpose", json!(self.purpose));
            put("subject", json!(self.subject));
            put("expiresAt", json!(self.expires_at));
            put("destroyAt", json!(self.destroy_at));
        }
        view
    }
}

/// Every key of `org`, oldest first.
pub async fn list(db: &crate::kernel::db::Db, org: &str) -> AppResult<Vec<KeyRow>> {
    let rows = sqlx::query("SELECT * FROM registry_keys WHERE org_id = $1 ORDER BY created_at")
        .bind(org)
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(KeyRow::from_row).collect()
}

/// Loads a key of `org` by id (or 404).
pub async fn load(conn: &mut AnyConnection, org: &str, id: &str) -> AppResult<KeyRow> {
    let row = sqlx::query("SELECT * FROM registry_keys WHERE id = $1 AND org_id = $2")
        .bind(id)
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| AppError::not_found("key"))?;
    KeyRow::from_row(&row)
}

/// How [`current`] locks the key's row on PostgreSQL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RowLock {
    /// A use: a destruction or rotation waits for it.
    Share,
    /// A change, or counting an encryption: one at a time per key.
    Update,
}

/// Loads a key of `org` by id inside a transaction, its row locked.
async fn locked(
    state: &AppState,
    conn: &mut AnyConnection,
    org: &str,
    id: &str,
    lock: RowLock,
) -> AppResult<KeyRow> {
    let clause = match (state.db.dialect(), lock) {
        (Dialect::Postgres, RowLock::Share) => " FOR SHARE",
        (Dialect::Postgres, RowLock::Update) => " FOR UPDATE",
        (Dialect::Sqlite, _) => "",
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM registry_keys WHERE id = $1 AND org_id = $2{clause}"
    )))
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| AppError::not_found("key"))?;
    KeyRow::from_row(&row)
}

/// The key's row as it is now, read in the operation's transaction (the
/// route loaded it before opening it, and a rotation or destruction may
/// have committed since): `410 key_destroyed` once its destruction
/// committed.
async fn current(
    state: &AppState,
    conn: &mut AnyConnection,
    key: &KeyRow,
    lock: RowLock,
) -> AppResult<KeyRow> {
    let key = locked(state, conn, &key.org, &key.id, lock).await?;
    if key.is_destroyed() {
        return Err(key.destroyed_error());
    }
    Ok(key)
}

/// The public key (SPKI DER) of `version`.
pub async fn public_key(
    conn: &mut AnyConnection,
    key: &KeyRow,
    version: i64,
) -> AppResult<Option<Vec<u8>>> {
    let row = sqlx::query(
        "SELECT public_key FROM registry_key_versions WHERE key_id = $1 AND version = $2",
    )
    .bind(&key.id)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(row) => row.try_get("public_key")?,
        None => None,
    })
}

/// A new key's settings.
pub struct NewKey {
    /// Name.
    pub name: String,
    /// Type.
    pub key_type: KeyType,
    /// Usage.
    pub usage: Usage,
    /// HSM-backed.
    pub hsm: bool,
    /// Rotation period, days.
    pub rotation_days: Option<i64>,
    /// Client-side encryption: the subject.
    pub subject: Option<String>,
    /// Client-side encryption: days until deprecation.
    pub expires_in_days: Option<i64>,
}

/// What a new version is made of.
struct NewMaterial {
    sealed: Option<Vec<u8>>,
    hsm_id: Option<String>,
    public_key: Option<Vec<u8>>,
}

/// Makes the material of `version` of key `key_id` (in software or in the
/// token) and seals software material under the keyring.
async fn make_version(
    state: &AppState,
    conn: &mut AnyConnection,
    org: &str,
    key_id: &str,
    key_type: KeyType,
    hsm: bool,
    version: i64,
) -> AppResult<NewMaterial> {
    if hsm {
        let store = state.hsm_keys.clone().ok_or_else(hsm_not_configured)?;
        let label = format!("custos/{org}/{key_id}/v{version}");
        let (id, public_key) =
            tokio::task::spawn_blocking(move || engine::generate_hsm(&store, key_type, &label))
                .await
                .map_err(|_| AppError::internal("keys", "key generation stopped"))?
                .map_err(key_error)?;
        return Ok(NewMaterial {
            sealed: None,
            hsm_id: Some(id.to_string()),
            public_key,
        });
    }
    let generated = tokio::task::spawn_blocking(move || engine::generate_software(key_type))
        .await
        .map_err(|_| AppError::internal("keys", "key generation stopped"))?
        .map_err(key_error)?;
    let (material, public_key) = (generated.material, generated.public_der);
    let sealed = state
        .keyring
        .seal_record(
            conn,
            org,
            MATERIAL_RECORD,
            &format!("{key_id}/{version}"),
            &material,
        )
        .await?;
    Ok(NewMaterial {
        sealed: Some(sealed),
        hsm_id: None,
        public_key,
    })
}

/// The same code and status as share backups without a token: the request
/// is well formed, this server's configuration cannot serve it.
fn hsm_not_configured() -> AppError {
    AppError::conflict(
        "hsm_not_configured",
        "this control plane has no PKCS#11 token for keys ([keys.pkcs11])",
    )
}

async fn insert_version(
    conn: &mut AnyConnection,
    key_id: &str,
    version: i64,
    material: NewMaterial,
    now: i64,
) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO registry_key_versions (key_id, version, material, hsm_id, public_key, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(key_id)
    .bind(version)
    .bind(material.sealed)
    .bind(material.hsm_id)
    .bind(material.public_key)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Creates a key at version 1 inside `tx`. Client-side encryption keys
/// are counted against their subject's daily limit first.
pub async fn create(
    state: &AppState,
    tx: &mut Tx,
    org: &str,
    identity: &str,
    new: &NewKey,
) -> AppResult<(KeyRow, Option<Vec<u8>>)> {
    let settings = &state.config.keys;
    let now = now_ms();
    let (purpose, expires_at, destroy_at) = match &new.subject {
        Some(subject) => {
            let recent: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM registry_keys \
                 WHERE org_id = $1 AND subject = $2 AND created_at > $3",
            )
            .bind(org)
            .bind(subject)
            .bind(now - DAY_MS)
            .fetch_one(&mut **tx)
            .await?
            .try_get("n")?;
            if recent >= i64::from(settings.cse_keys_per_subject_per_day) {
                return Err(AppError::new(
                    ErrorKind::RateLimited,
                    "key_generation_limited",
                    format!(
                        "at most {} keys per subject in 24 hours",
                        settings.cse_keys_per_subject_per_day
                    ),
                ));
            }
            let expires = now
                + new
                    .expires_in_days
                    .unwrap_or(i64::from(settings.cse_expiry_days))
                    * DAY_MS;
            let destroy = expires + i64::from(settings.cse_retention_days) * DAY_MS;
            (Some(CLIENT_SIDE_ENCRYPTION), Some(expires), Some(destroy))
        }
        None => (None, None, None),
    };
    let id = new_id("key");
    let inserted = sqlx::query(
        "INSERT INTO registry_keys (id, org_id, name, key_type, usage, backend, state, \
         latest_version, rotation_days, next_rotation, purpose, subject, expires_at, destroy_at, \
         created_by, created_at, updated_at, destroyed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'enabled', 1, $7, $8, $9, $10, $11, $12, $13, $14, $14, NULL)",
    )
    .bind(&id)
    .bind(org)
    .bind(&new.name)
    .bind(new.key_type.as_str())
    .bind(new.usage.as_str())
    .bind(if new.hsm { "hsm" } else { "software" })
    .bind(new.rotation_days)
    .bind(new.rotation_days.map(|days| now + days * DAY_MS))
    .bind(purpose)
    .bind(new.subject.clone())
    .bind(expires_at)
    .bind(destroy_at)
    .bind(identity)
    .bind(now)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return Err(AppError::conflict(
                "key_exists",
                "a key of that name exists in this org",
            ))
        }
        Err(error) => return Err(error.into()),
    }
    let material = make_version(state, tx, org, &id, new.key_type, new.hsm, 1).await?;
    let public = material.public_key.clone();
    insert_version(tx, &id, 1, material, now).await?;
    Ok((load(tx, org, &id).await?, public))
}

/// Adds a version (rotation) inside `tx`. Returns the key afterwards.
pub async fn rotate(
    state: &AppState,
    tx: &mut Tx,
    org: &str,
    id: &str,
) -> AppResult<(KeyRow, Option<Vec<u8>>)> {
    let key = locked(state, tx, org, id, RowLock::Update).await?;
    if key.is_destroyed() {
        return Err(key.destroyed_error());
    }
    let version = key.latest_version + 1;
    let now = now_ms();
    let material = make_version(
        state,
        tx,
        org,
        &key.id,
        key.key_type,
        key.backend == "hsm",
        version,
    )
    .await?;
    let public = material.public_key.clone();
    insert_version(tx, &key.id, version, material, now).await?;
    sqlx::query(
        "UPDATE registry_keys SET latest_version = $1, next_rotation = $2, updated_at = $3 \
         WHERE id = $4",
    )
    .bind(version)
    .bind(key.rotation_days.map(|days| now + days * DAY_MS))
    .bind(now)
    .bind(&key.id)
    .execute(&mut **tx)
    .await?;
    Ok((load(tx, org, id).await?, public))
}

/// Crypto-shreds a key inside `tx`, or starts to. A key without token
/// objects (software) loses its material and is `destroyed` in `tx`. A key
/// with token objects only becomes `destroying` in `tx` (unusable from the
/// commit on): once `tx` committed, the caller runs [`finish_destroy`]
/// (the routes and the operations executor do; the scheduler finishes
/// what they could not). Idempotent.
pub async fn destroy(state: &AppState, tx: &mut Tx, org: &str, id: &str) -> AppResult<KeyRow> {
    let key = locked(state, tx, org, id, RowLock::Update).await?;
    if key.is_destroyed() {
        return Ok(key);
    }
    let objects: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM registry_key_versions WHERE key_id = $1 AND hsm_id IS NOT NULL",
    )
    .bind(&key.id)
    .fetch_one(&mut **tx)
    .await?
    .try_get("n")?;
    let now = now_ms();
    if objects == 0 {
        wipe(tx, &key.id, now).await?;
    } else {
        sqlx::query(
            "UPDATE registry_keys SET state = $1, updated_at = $2, next_rotation = NULL \
             WHERE id = $3",
        )
        .bind(DESTROYING)
        .bind(now)
        .bind(&key.id)
        .execute(&mut **tx)
        .await?;
    }
    load(tx, org, id).await
}

/// Forgets every version's material and token object id and records the
/// key `destroyed`.
async fn wipe(conn: &mut AnyConnection, key_id: &str, now: i64) -> AppResult<()> {
    sqlx::query(
        "UPDATE registry_key_versions SET material = NULL, hsm_id = NULL WHERE key_id = $1",
    )
    .bind(key_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE registry_keys SET state = $1, destroyed_at = $2, updated_at = $2, \
         next_rotation = NULL WHERE id = $3",
    )
    .bind(DESTROYED)
    .bind(now)
    .bind(key_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Finishes the destruction of a `destroying` key: deletes its token
/// objects (an object already gone counts as deleted: a retry finishes
/// what a failed attempt left), then in one transaction wipes its rows,
/// records it `destroyed` and appends the audit record (`system`,
/// `key.destroy`). Until that commits the object ids stay in the
/// database, so a failure (the token unreachable, a crash) leaves a
/// `destroying` key that a later call or the scheduler finishes; nothing
/// is left half-destroyed. A key in any other state is answered as it is.
pub async fn finish_destroy(state: &AppState, org: &str, id: &str) -> AppResult<KeyRow> {
    let key = {
        let mut conn = state.db.pool().acquire().await?;
        load(&mut conn, org, id).await?
    };
    if key.state != DESTROYING {
        return Ok(key);
    }
    // No version is added to a `destroying` key (`rotate` refuses it), so
    // these are all of its objects.
    let rows = sqlx::query(
        "SELECT hsm_id FROM registry_key_versions WHERE key_id = $1 AND hsm_id IS NOT NULL",
    )
    .bind(&key.id)
    .fetch_all(state.db.pool())
    .await?;
    let mut ids = Vec::new();
    for row in rows {
        let text: String = row.try_get("hsm_id")?;
        ids.push(HsmKeyId::from_hex(&text).map_err(|error| key_error(error.into()))?);
    }
    let versions = ids.len();
    let deleted = if ids.is_empty() {
        0
    } else {
        let store = state.hsm_keys.clone().ok_or_else(hsm_not_configured)?;
        tokio::task::spawn_blocking(move || {
            ids.iter().try_fold(0, |deleted, id| {
                Ok::<_, KeyError>(deleted + engine::destroy_hsm(&store, id)?)
            })
        })
        .await
        .map_err(|_| AppError::internal("keys", "destroy stopped"))?
        .map_err(key_error)?
    };
    let mut tx = state.db.begin().await?;
    let key = locked(state, &mut tx, org, id, RowLock::Update).await?;
    if key.state != DESTROYING {
        // Another replica finished it meanwhile.
        return Ok(key);
    }
    wipe(&mut tx, &key.id, now_ms()).await?;
    audit::append(
        &state.db,
        &mut tx,
        &AuditEvent {
            org,
            action: "key.destroy",
            resource: &key.resource(),
            identity: "system",
            ip: "",
            approved: "not_required",
            outcome: "success",
            request_id: &key.id,
            detail: json!({"state": DESTROYED, "versions": versions, "tokenObjectsDeleted": deleted}),
        },
    )
    .await?;
    tx.commit().await?;
    let mut conn = state.db.pool().acquire().await?;
    load(&mut conn, org, id).await
}

/// [`finish_destroy`] after the transaction of a `key.destroy` (its
/// stored body, `{"id": ...}`) committed. Never fails: the destruction is
/// committed, and a failure to finish it now is logged and left to the
/// scheduler. Answers the key's view afterwards, if it could be read.
pub async fn finish_destroy_stored(state: &AppState, org: &str, body: &Value) -> Option<Value> {
    let body: TargetBody = serde_json::from_value(body.clone()).ok()?;
    match finish_destroy(state, org, &body.id).await {
        Ok(key) => Some(key.to_json(None)),
        Err(error) => {
            tracing::warn!(key = %body.id, code = error.code, message = %error.message, "key left destroying: the scheduler finishes it");
            None
        }
    }
}

/// Counts one encryption (or wrap) on the key's latest version inside
/// `tx` and answers the key as it is now and that version. The key's row
/// is locked first, so the counts are exact on both databases and one call
/// per key at a time gets here. The call whose count reaches the budget
/// rotates the key in the same transaction, audited as `system`: exactly
/// once, since no other call counts on that version meanwhile and every
/// later one finds the new version. A version found already spent (the
/// budget was lowered) is rotated the same way first. A rotation that
/// fails fails the call, which then counts nothing.
async fn count_encryption(state: &AppState, tx: &mut Tx, key: &KeyRow) -> AppResult<(KeyRow, i64)> {
    let budget = state.config.keys.encryptions_per_version;
    let mut key = current(state, tx, key, RowLock::Update).await?;
    // Twice at most: a spent version is rotated once, and its successor
    // has a fresh budget of at least one.
    for _ in 0..2 {
        let version = key.latest_version;
        let counted = sqlx::query(
            "UPDATE registry_key_versions SET encryptions = encryptions + 1 \
             WHERE key_id = $1 AND version = $2 AND encryptions < $3 RETURNING encryptions",
        )
        .bind(&key.id)
        .bind(version)
        .bind(budget)
        .fetch_optional(&mut **tx)
        .await?;
        match counted {
            Some(row) => {
                let count: i64 = row.try_get("encryptions")?;
                if count >= budget {
                    rotate_for_budget(state, tx, &key).await?;
                }
                return Ok((key, version));
            }
            None => key = rotate_for_budget(state, tx, &key).await?,
        }
    }
    Err(AppError::conflict(
        "encryption_budget_exhausted",
        "the key's latest version made all the encryptions it may",
    ))
}

/// Rotates `key`, whose latest version spent its encryption budget, and
/// audits it as the system's own rotation (no approval: the budget is a
/// safety limit, not a choice).
async fn rotate_for_budget(state: &AppState, tx: &mut Tx, key: &KeyRow) -> AppResult<KeyRow> {
    let (rotated, _) = rotate(state, tx, &key.org, &key.id).await?;
    audit::append(
        &state.db,
        tx,
        &AuditEvent {
            org: &key.org,
            action: "key.rotate",
            resource: &key.resource(),
            identity: "system",
            ip: "",
            approved: "not_required",
            outcome: "success",
            request_id: &key.id,
            detail: json!({
                "reason": "budget",
                "from": key.latest_version,
                "version": rotated.latest_version,
                "encryptionsPerVersion": state.config.keys.encryptions_per_version,
            }),
        },
    )
    .await?;
    tracing::info!(key = %key.id, from = key.latest_version, version = rotated.latest_version, "registry key version reached its encryption budget: rotated");
    Ok(rotated)
}

/// One opened version, owned (for `spawn_blocking`).
struct Opened {
    key_type: KeyType,
    material: Material,
    public_der: Option<Vec<u8>>,
    hsm: Option<hsm::HsmKeyStore>,
}

impl Opened {
    fn as_version_key(&self) -> VersionKey<'_> {
        VersionKey {
            key_type: self.key_type,
            material: match &self.material {
                Material::Software(bytes) => Material::Software(bytes.clone()),
                Material::Hsm(id) => Material::Hsm(*id),
            },
            public_der: self.public_der.clone(),
            hsm: self.hsm.as_ref(),
        }
    }
}

/// Opens `version` of `key` (as [`current`] read it) for an operation,
/// refusing destroyed keys.
async fn open(
    state: &AppState,
    conn: &mut AnyConnection,
    key: &KeyRow,
    version: i64,
    need_secret: bool,
) -> AppResult<Opened> {
    if key.is_destroyed() {
        return Err(key.destroyed_error());
    }
    if version < 1 || version > key.latest_version {
        return Err(AppError::bad_request(
            "invalid_key_version",
            format!("the key has versions 1 to {}", key.latest_version),
        ));
    }
    let row = sqlx::query(
        "SELECT material, hsm_id, public_key FROM registry_key_versions \
         WHERE key_id = $1 AND version = $2",
    )
    .bind(&key.id)
    .bind(version)
    .fetch_one(&mut *conn)
    .await?;
    let public_der: Option<Vec<u8>> = row.try_get("public_key")?;
    let sealed: Option<Vec<u8>> = row.try_get("material")?;
    let hsm_id: Option<String> = row.try_get("hsm_id")?;
    let material = match (sealed, hsm_id) {
        (Some(sealed), _) if need_secret => Material::Software(
            state
                .keyring
                .open_record(
                    conn,
                    &key.org,
                    MATERIAL_RECORD,
                    &format!("{}/{version}", key.id),
                    &sealed,
                )
                .await?,
        ),
        (_, Some(id)) => {
            Material::Hsm(HsmKeyId::from_hex(&id).map_err(|error| key_error(error.into()))?)
        }
        (Some(_), None) => Material::Software(Zeroizing::new(Vec::new())),
        (None, None) => return Err(key.destroyed_error()),
    };
    Ok(Opened {
        key_type: key.key_type,
        material,
        public_der,
        hsm: state.hsm_keys.clone(),
    })
}

async fn blocking<T: Send + 'static>(
    opened: Opened,
    run: impl FnOnce(&VersionKey<'_>) -> Result<T, KeyError> + Send + 'static,
) -> AppResult<T> {
    tokio::task::spawn_blocking(move || run(&opened.as_version_key()))
        .await
        .map_err(|_| AppError::internal("keys", "the operation stopped"))?
        .map_err(key_error)
}

/// Refuses an operation the key's usage does not allow.
pub fn require_usage(key: &KeyRow, usage: Usage) -> AppResult<()> {
    if key.usage != usage {
        return Err(AppError::bad_request(
            "usage_not_allowed",
            format!("this key's usage is {}", key.usage.as_str()),
        ));
    }
    Ok(())
}

/// The associated data of a symmetric ciphertext.
fn aad(key: &KeyRow, version: i64, purpose: &str, context: &[u8]) -> Vec<u8> {
    let mut out = b"custos/registry-key/v1".to_vec();
    for part in [
        key.org.as_bytes(),
        key.id.as_bytes(),
        &version.to_be_bytes(),
        purpose.as_bytes(),
        context,
    ] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// `custos:v<N>:<base64>`.
pub fn format_ciphertext(version: i64, bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "{PREFIX}{version}:{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Parses a ciphertext: `custos:v<N>:<base64>`, or bare base64 (what a
/// client made with an RSA public key) at `default_version`.
pub fn parse_ciphertext(
    text: &str,
    default_version: i64,
    max_bytes: usize,
) -> AppResult<(i64, Vec<u8>)> {
    use base64::Engine as _;
    if text.len() > max_bytes.saturating_mul(4) / 3 + PREFIX.len() + 24 {
        return Err(AppError::new(
            ErrorKind::TooLarge,
            "ciphertext_too_large",
            format!("a ciphertext is at most {max_bytes} bytes"),
        ));
    }
    let (version, body) = match text.strip_prefix(PREFIX) {
        Some(rest) => {
            let (version, body) = rest.split_once(':').ok_or_else(|| {
                AppError::bad_request("invalid_ciphertext", "expected custos:v<N>:<base64>")
            })?;
            let version: i64 = version.parse().map_err(|_| {
                AppError::bad_request("invalid_ciphertext", "the version is not a number")
            })?;
            (version, body)
        }
        None => (default_version, text),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| AppError::bad_request("invalid_ciphertext", "not base64"))?;
    if bytes.len() > max_bytes {
        return Err(AppError::new(
            ErrorKind::TooLarge,
            "ciphertext_too_large",
            format!("a ciphertext is at most {max_bytes} bytes"),
        ));
    }
    Ok((version, bytes))
}

/// Signs with the latest version. Returns (signature, version).
pub async fn sign(
    state: &AppState,
    conn: &mut AnyConnection,
    key: &KeyRow,
    signed: Signed,
) -> AppResult<(Vec<u8>, i64)> {
    require_usage(key, Usage::SignVerify)?;
    let key = &current(state, conn, key, RowLock::Share).await?;
    if key.state == "deprecated" {
        return Err(deprecated());
    }
    let version = key.latest_version;
    let opened = open(state, conn, key, version, true).await?;
    let signature = blocking(opened, move |version_key| {
        engine::sign(version_key, signed.input())
    })
    .await?;
    Ok((signature, version))
}

fn deprecated() -> AppError {
    AppError::new(
        ErrorKind::Gone,
        "key_deprecated",
        "the key expired: it still decrypts until its retention ends, but makes nothing new",
    )
}

/// Verifies with `version` (default: the latest).
pub async fn verify(
    state: &AppState,
    conn: &mut AnyConnection,
    key: &KeyRow,
    version: Option<i64>,
    signed: Signed,
    signature: Vec<u8>,
) -> AppResult<(bool, i64)> {
    require_usage(key, Usage::SignVerify)?;
    let key = &current(state, conn, key, RowLock::Share).await?;
    let version = version.unwrap_or(key.latest_version);
    let opened = open(state, conn, key, version, false).await?;
    let valid = blocking(opened, move |version_key| {
        engine::verify(version_key, signed.input(), &signature)
    })
    .await?;
    Ok((valid, version))
}

/// Encrypts (`purpose` `encrypt`) or wraps (`wrap`) with the latest
/// version inside `tx`, the transaction of the call's audit record. An
/// AES-256 key counts the encryption against the version's budget first
/// (and may rotate: see the module docs). Returns the `custos:v<N>:`
/// ciphertext and its version.
pub async fn seal(
    state: &AppState,
    tx: &mut Tx,
    key: &KeyRow,
    purpose: &'static str,
    plaintext: Zeroizing<Vec<u8>>,
    context: Vec<u8>,
) -> AppResult<(String, i64)> {
    require_usage(key, usage_of(purpose))?;
    let (key, version) = if key.key_type == KeyType::Aes256 {
        count_encryption(state, tx, key).await?
    } else {
        // RSA-OAEP pads with fresh randomness: no nonce to run out of.
        let key = current(state, tx, key, RowLock::Share).await?;
        let version = key.latest_version;
        (key, version)
    };
    if key.state == "deprecated" {
        return Err(deprecated());
    }
    let opened = open(state, tx, &key, version, true).await?;
    let aad = aad(&key, version, purpose, &context);
    let sealed = blocking(opened, move |version_key| {
        engine::encrypt(version_key, &plaintext, &aad)
    })
    .await?;
    Ok((format_ciphertext(version, &sealed), version))
}

fn usage_of(purpose: &str) -> Usage {
    if purpose == "wrap" {
        Usage::WrapUnwrap
    } else {
        Usage::EncryptDecrypt
    }
}

/// Decrypts or unwraps a ciphertext of [`seal`] (or a client's RSA-OAEP
/// ciphertext, bare base64, at `version` or the latest).
pub async fn open_ciphertext(
    state: &AppState,
    conn: &mut AnyConnection,
    key: &KeyRow,
    purpose: &'static str,
    ciphertext: &str,
    version: Option<i64>,
    context: Vec<u8>,
) -> AppResult<Zeroizing<Vec<u8>>> {
    require_usage(key, usage_of(purpose))?;
    let key = &current(state, conn, key, RowLock::Share).await?;
    let (version, bytes) = parse_ciphertext(
        ciphertext,
        version.unwrap_or(key.latest_version),
        state.config.keys.max_ciphertext_bytes,
    )?;
    let opened = open(state, conn, key, version, true).await?;
    let aad = aad(key, version, purpose, &context);
    blocking(opened, move |version_key| {
        engine::decrypt(version_key, &bytes, &aad)
    })
    .await
}

/// The scheduler's pass: finishes destructions left `destroying`, rotates
/// keys whose rotation is due, deprecates expired client-side encryption
/// keys and destroys those past retention. Each change is audited as the
/// `system` identity. Returns how many keys changed. A destruction that
/// cannot finish yet (the token unreachable) is logged and tried again at
/// the next pass.
pub async fn run_schedule(state: &AppState) -> AppResult<usize> {
    let now = now_ms();
    let due = sqlx::query(
        "SELECT id, org_id, name, state, next_rotation, expires_at, destroy_at FROM registry_keys \
         WHERE state = 'destroying' OR (state <> 'destroyed' \
         AND ((next_rotation IS NOT NULL AND next_rotation <= $1) \
         OR (state = 'enabled' AND expires_at IS NOT NULL AND expires_at <= $1) \
         OR (destroy_at IS NOT NULL AND destroy_at <= $1))) LIMIT 100",
    )
    .bind(now)
    .fetch_all(state.db.pool())
    .await?;
    let mut changed = 0;
    for row in due {
        let id: String = row.try_get("id")?;
        let org: String = row.try_get("org_id")?;
        let name: String = row.try_get("name")?;
        let key_state: String = row.try_get("state")?;
        if key_state == DESTROYING {
            match finish_destroy(state, &org, &id).await {
                Ok(key) if key.state == DESTROYED => changed += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(key = %id, code = error.code, message = %error.message, "a destroying key could not be finished yet");
                }
            }
            continue;
        }
        let destroy_at: Option<i64> = row.try_get("destroy_at")?;
        let expires_at: Option<i64> = row.try_get("expires_at")?;
        let mut tx = state.db.begin().await?;
        let (action, detail) = if destroy_at.is_some_and(|at| at <= now) {
            destroy(state, &mut tx, &org, &id).await?;
            ("key.destroy", json!({"reason": "retention ended"}))
        } else if expires_at.is_some_and(|at| at <= now) {
            sqlx::query(
                "UPDATE registry_keys SET state = 'deprecated', updated_at = $1 \
                 WHERE id = $2 AND state = 'enabled'",
            )
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            ("key.deprecate", json!({"reason": "expired"}))
        } else {
            let (key, _) = rotate(state, &mut tx, &org, &id).await?;
            (
                "key.rotate",
                json!({"reason": "scheduled", "version": key.latest_version}),
            )
        };
        audit::append(
            &state.db,
            &mut tx,
            &AuditEvent {
                org: &org,
                action,
                resource: &format!("key:{name}"),
                identity: "system",
                ip: "",
                approved: "not_required",
                outcome: "success",
                request_id: &id,
                detail,
            },
        )
        .await?;
        tx.commit().await?;
        if action == "key.destroy" {
            // Its token objects, if any (else nothing to do).
            finish_destroy_stored(state, &org, &json!({ "id": id })).await;
        }
        changed += 1;
    }
    Ok(changed)
}

/// Runs [`run_schedule`] until the process stops (idle while sealed).
pub async fn scheduler(state: Arc<AppState>) {
    loop {
        if !state.keyring.is_sealed() {
            if let Err(error) = run_schedule(&state).await {
                tracing::warn!(code = error.code, message = %error.message, "key schedule pass failed");
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(
            state.config.keys.schedule_poll_ms,
        ))
        .await;
    }
}

/// The stored request of `key.rotate` and `key.destroy`: `{"id": "..."}`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct TargetBody {
    /// The key's id.
    pub id: String,
}

/// Runs a stored `key.rotate` (approved) inside `tx`.
pub async fn rotate_stored(
    state: &AppState,
    tx: &mut Tx,
    org: &str,
    body: &Value,
) -> AppResult<Value> {
    let body: TargetBody = serde_json::from_value(body.clone())
        .map_err(|_| AppError::internal("keys", "a stored key request is malformed"))?;
    let (key, public) = rotate(state, tx, org, &body.id).await?;
    Ok(key.to_json(public.as_deref()))
}

/// Runs a stored `key.destroy` (approved) inside `tx`.
pub async fn destroy_stored(
    state: &AppState,
    tx: &mut Tx,
    org: &str,
    body: &Value,
) -> AppResult<Value> {
    let body: TargetBody = serde_json::from_value(body.clone())
        .map_err(|_| AppError::internal("keys", "a stored key request is malformed"))?;
    let key = destroy(state, tx, org, &body.id).await?;
    Ok(key.to_json(None))
}

/// The key registry's stored operations (rotation and destruction that
/// waited for an approval).
pub struct StoredOperations;

impl crate::kernel::engine::Executor for StoredOperations {
    fn actions(&self) -> &'static [&'static str] {
        &["key.rotate", "key.destroy"]
    }

    fn run<'a>(
        &'a self,
        state: &'a AppState,
        tx: &'a mut Tx,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, AppResult<Value>> {
        Box::pin(async move {
            match operation.action.as_str() {
                "key.rotate" => rotate_stored(state, tx, &operation.org, &operation.body).await,
                "key.destroy" => destroy_stored(state, tx, &operation.org, &operation.body).await,
                other => Err(crate::kernel::engine::no_executor(other)),
            }
        })
    }

    /// A key with token objects was committed `destroying` with the
    /// operation: the objects go now (or at the key scheduler's pass).
    fn after_commit<'a>(
        &'a self,
        state: &'a AppState,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if operation.action == "key.destroy" {
                finish_destroy_stored(state, &operation.org, &operation.body).await;
            }
        })
    }
}
