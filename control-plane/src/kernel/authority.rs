//! What an identity may do, sealed: its org, role, platform-admin flag,
//! status, creator and creation time are sealed by the org's keyring
//! (`identities.authority`, record kind `identity_authority`, record id =
//! the identity's id) whenever one of them is written through the control
//! plane. Authentication and the counting of approval votes use an
//! identity only when its seal opens to exactly its row, so a database
//! writer who turns a service into an admin, a platform admin or an
//! approver, re-enables a disabled identity or backdates one, gains
//! nothing: the identity is refused (`403 identity_invalid`, logged).
//!
//! Identities written before this existed (and the bootstrap root, which
//! is created before the keyring can be opened) are sealed once, at the
//! first start or unseal with this code (`seal_unsealed_once`, marked in
//! `meta`), and so are the orgs' policy sets (`orgs::seal_policies`);
//! after that an identity or a policy set without a seal is refused like
//! one whose seal does not match. (A migration that changes identities or
//! policies must reset their seals and this mark.)

use serde_json::json;
use sqlx::{AnyConnection, Row};

use crate::kernel::db::Tx;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::keyring::Keyring;

/// The keyring record kind of authority seals.
pub const RECORD: &str = "identity_authority";

/// The `meta` key that marks every identity as sealed.
const SEALED_MARK: &str = "identity_authority_sealed";

/// The fields of an identity that decide what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// `idn_…`.
    pub id: String,
    /// Its org.
    pub org: String,
    /// Role name.
    pub role: String,
    /// May manage orgs.
    pub platform_admin: bool,
    /// `active` or `disabled`.
    pub status: String,
    /// Its creator.
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
}

impl Authority {
    /// Reads the fields from a row that selected `id, org_id, role,
    /// platform_admin, status, created_by, created_at` (under those names,
    /// or with `prefix`: `voter_id`, … for a join).
    pub fn from_row(row: &sqlx::any::AnyRow, prefix: &str) -> Result<Authority, sqlx::Error> {
        let column = |name: &str| format!("{prefix}{name}");
        Ok(Authority {
            id: row.try_get(column("id").as_str())?,
            org: row.try_get(column("org_id").as_str())?,
            role: row.try_get(column("role").as_str())?,
            platform_admin: row.try_get::<i64, _>(column("platform_admin").as_str())? == 1,
            status: row.try_get(column("status").as_str())?,
            created_by: row.try_get(column("created_by").as_str())?,
            created_at: row.try_get(column("created_at").as_str())?,
        })
    }

    fn content(&self) -> Vec<u8> {
        json!({
            "id": self.id,
            "org": self.org,
            "role": self.role,
            "platformAdmin": self.platform_admin,
            "status": self.status,
            "createdBy": self.created_by,
            "createdAt": self.created_at,
        })
        .to_string()
        .into_bytes()
    }
}

async fn read(conn: &mut AnyConnection, id: &str) -> AppResult<Option<Authority>> {
    let row = sqlx::query(
        "SELECT id, org_id, role, platform_admin, status, created_by, created_at \
         FROM identities WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|row| Authority::from_row(&row, "")).transpose()?)
}

/// Seals identity `id`'s authority as its row now says, inside `tx` (after
/// creating it, or changing its role or status). Nothing when the identity
/// is gone (deleted).
pub async fn seal(keyring: &Keyring, tx: &mut Tx, id: &str) -> AppResult<()> {
    let Some(authority) = read(tx, id).await? else {
        return Ok(());
    };
    let sealed = keyring
        .seal_record(tx, &authority.org, RECORD, id, &authority.content())
        .await?;
    sqlx::query("UPDATE identities SET authority = $1 WHERE id = $2")
        .bind(sealed)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether `seal` opens to exactly `authority`.
pub async fn holds(
    keyring: &Keyring,
    conn: &mut AnyConnection,
    authority: &Authority,
    seal: Option<&[u8]>,
) -> bool {
    let Some(seal) = seal else {
        return false;
    };
    let opened = keyring
        .open_record(conn, &authority.org, RECORD, &authority.id, seal)
        .await;
    let holds = opened.is_ok_and(|content| content.as_slice() == authority.content().as_slice());
    if !holds {
        tracing::error!(
            identity = %authority.id,
            "an identity whose sealed authority does not match its row was refused"
        );
    }
    holds
}

/// The refusal of an identity whose authority does not hold.
pub fn invalid() -> AppError {
    AppError::forbidden(
        "identity_invalid",
        "this identity's record does not match what the control plane wrote",
    )
}

/// Seals every identity that has no seal yet, once per store (at the first
/// start or unseal with this code). Answers how many were sealed.
pub async fn seal_unsealed_once(keyring: &Keyring, db: &crate::kernel::db::Db) -> AppResult<u64> {
    let mut tx = db.begin().await?;
    let marked = sqlx::query("SELECT value FROM meta WHERE key = $1")
        .bind(SEALED_MARK)
        .fetch_optional(&mut *tx)
        .await?;
    if marked.is_some() {
        tx.rollback().await?;
        return Ok(0);
    }
    let ids: Vec<String> = sqlx::query("SELECT id FROM identities WHERE authority IS NULL")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    for id in &ids {
        seal(keyring, &mut tx, id).await?;
    }
    // Orgs' policy sets too (`orgs::seal_policies`): the bootstrap's
    // platform org and orgs made before policies were sealed.
    let orgs: Vec<String> = sqlx::query("SELECT id FROM orgs WHERE policy_seal IS NULL")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    for org in &orgs {
        crate::kernel::orgs::seal_policies(keyring, &mut tx, org).await?;
    }
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
        .bind(SEALED_MARK)
        .bind(crate::kernel::db::now_ms().to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if !ids.is_empty() {
        tracing::info!(
            sealed = ids.len(),
            "sealed the authority of existing identities"
        );
    }
    Ok(u64::try_from(ids.len()).unwrap_or(u64::MAX))
}
