//! HSM-wrapped key-share backups, the control plane's side (the scheme is
//! in `custos_signer_node::backup`).
//!
//! * **Export** ([`export`]): each chosen holder of a wallet seals its share
//!   under a one-time data key DK = K1 ⊕ K2, with K2 sealed inside the
//!   backup for the node operator's X25519 recovery key. K1 comes back here
//!   and is wrapped at once, inside the PKCS#11 token, by the org's
//!   non-extractable AES-256 backup key ([`org_wrapping_key`]), with the
//!   backup's metadata digest bound as associated data. Only the sealed
//!   backup and the wrapped K1 are stored (`share_backups`).
//! * **Restore** ([`restore_stored`]): runs as an approved operation
//!   (`wallet.restore`, one admin approval under the default policy). The
//!   token unwraps K1; the other holders of the wallet report the public
//!   key data of the backup's generation, which must carry the wallet's
//!   public key; the node opens the backup with its operator's recovery key
//!   and stores the share only if its public data is that.
//!
//! Neither the database with the token (no recovery key) nor the operator
//! (no token) can open a backup. K1 exists here in the clear only in
//! zeroizing buffers between the node's answer and the token's wrap, and
//! between the token's unwrap and the restore job; nothing logs it.
//!
//! A backup restores into the node of the same party identity only (a
//! replacement machine takes over the node's identity key); a new identity
//! needs a resharing. A backup of an older key generation (before a
//! resharing) is stale and refused.

use custos_protocol::{KeyGeneration, PartyId, RequestId, WalletId};
use custos_signer_node::backup::SealedBackup;
use custos_signer_node::job::SecretBytes;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;
use zeroize::Zeroizing;

use crate::engines::wallets::{self, Wallet};
use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::db::{id_bytes, new_id, now_ms};
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::hsm::{HsmKeyId, HsmKeyKind, HsmKeyStore};
use crate::kernel::state::AppState;

/// Domain of the associated data under which the token wraps K1.
const K1_DOMAIN: &[u8] = b"custos/share-backup/k1/v1";

/// The action that restores a backup (behind the org's policy).
pub const RESTORE_ACTION: &str = "wallet.restore";

/// A stored backup.
#[derive(Clone)]
pub struct BackupRow {
    /// `bak_...`.
    pub id: String,
    /// The org.
    pub org: String,
    /// The wallet.
    pub wallet_id: String,
    /// The party that held the share.
    pub party: PartyId,
    /// The node's name when the backup was made.
    pub node: String,
    /// `secp256k1` or `ed25519`.
    pub curve: String,
    /// The share's key generation.
    pub generation: u32,
    /// [`SealedBackup`] bytes.
    pub sealed: Vec<u8>,
    /// K1 wrapped by the org's backup key in the token.
    pub wrapped_k1: Vec<u8>,
    /// The token object (`CKA_ID`, hex) that wrapped K1.
    pub hsm_id: String,
    /// Hex SHA-256 of the backup's canonical metadata.
    pub meta_digest: String,
    /// Who made it.
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last restore.
    pub restored_at: Option<i64>,
}

impl BackupRow {
    fn from_row(row: &sqlx::any::AnyRow) -> AppResult<BackupRow> {
        let party: String = row.try_get("party")?;
        let party = crate::engines::wallets::nodes::parse_party(&party)
            .ok_or_else(|| AppError::internal("backups", "a stored party id is malformed"))?;
        let generation: i64 = row.try_get("generation")?;
        Ok(BackupRow {
            id: row.try_get("id")?,
            org: row.try_get("org_id")?,
            wallet_id: row.try_get("wallet_id")?,
            party,
            node: row.try_get("node")?,
            curve: row.try_get("curve")?,
            generation: u32::try_from(generation)
                .map_err(|_| AppError::internal("backups", "a stored generation is malformed"))?,
            sealed: row.try_get("sealed")?,
            wrapped_k1: row.try_get("wrapped_k1")?,
            hsm_id: row.try_get("hsm_id")?,
            meta_digest: row.try_get("meta_digest")?,
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
            restored_at: row.try_get("restored_at")?,
        })
    }

    /// The backup as the API shows it: metadata only.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "walletId": self.wallet_id,
            "node": self.node,
            "party": hex::encode(self.party.0),
            "curve": self.curve,
            "generation": self.generation,
            "metaDigest": self.meta_digest,
            "sealedBytes": self.sealed.len(),
            "createdBy": self.created_by,
            "createdAt": self.created_at,
            "restoredAt": self.restored_at,
        })
    }
}

/// The associated data of a wrapped K1: domain, org, backup id and the
/// backup's metadata digest, each length-prefixed.
pub fn k1_context(org: &str, backup_id: &str, meta_digest: &[u8; 32]) -> Vec<u8> {
    let mut context = Vec::with_capacity(128);
    for part in [K1_DOMAIN, org.as_bytes(), backup_id.as_bytes(), meta_digest] {
        context.extend_from_slice(&(part.len() as u32).to_be_bytes());
        context.extend_from_slice(part);
    }
    context
}

fn hsm_store(state: &AppState) -> AppResult<HsmKeyStore> {
    state.hsm_keys.clone().ok_or_else(|| {
        AppError::conflict(
            "hsm_not_configured",
            "share backups need a PKCS#11 token for the org's wrapping key ([keys.pkcs11])",
        )
    })
}

fn hsm_failure(error: crate::kernel::hsm::HsmError) -> AppError {
    AppError::unavailable(error.code(), format!("the HSM failed: {error}"))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::kernel::hsm::HsmError> + Send + 'static,
) -> AppResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| AppError::internal("backups", "an HSM call stopped"))?
        .map_err(hsm_failure)
}

/// The org's backup wrapping key: a non-extractable AES-256 key in the
/// token, made on the org's first backup.
pub async fn org_wrapping_key(state: &AppState, org: &str) -> AppResult<HsmKeyId> {
    let existing = |row: sqlx::any::AnyRow| -> AppResult<HsmKeyId> {
        let id: String = row.try_get("hsm_id")?;
        HsmKeyId::from_hex(&id).map_err(|_| AppError::internal("backups", "a stored key id"))
    };
    let find = "SELECT hsm_id FROM share_backup_keys WHERE org_id = $1";
    if let Some(row) = sqlx::query(find)
        .bind(org)
        .fetch_optional(state.db.pool())
        .await?
    {
        return existing(row);
    }
    let store = hsm_store(state)?;
    let label = format!("custos-share-backup-{org}");
    let made = {
        let store = store.clone();
        blocking(move || store.generate(HsmKeyKind::Aes256, &label)).await?
    };
    let inserted = sqlx::query(
        "INSERT INTO share_backup_keys (org_id, hsm_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id) DO NOTHING",
    )
    .bind(org)
    .bind(made.id.to_string())
    .bind(now_ms())
    .execute(state.db.pool())
    .await?
    .rows_affected();
    if inserted == 0 {
        // Another request made the org's key first: keep that one.
        let loser = made.id;
        let _ = blocking(move || store.destroy(&loser)).await;
        let row = sqlx::query(find)
            .bind(org)
            .fetch_one(state.db.pool())
            .await?;
        return existing(row);
    }
    tracing::info!(org, key = %made.id, "share backup wrapping key created in the HSM");
    Ok(made.id)
}

/// Who asks, for the audit.
pub struct Requester<'a> {
    /// The org.
    pub org: &'a str,
    /// The identity.
    pub identity: &'a str,
    /// The caller's address.
    pub ip: &'a str,
    /// The HTTP request id.
    pub request_id: &'a str,
}

impl<'a> Requester<'a> {
    /// A `wallet.backup` audit record of this requester.
    fn backup_event(&self, resource: &'a str, outcome: &'a str, detail: Value) -> AuditEvent<'a> {
        AuditEvent {
            org: self.org,
            action: "wallet.backup",
            resource,
            identity: self.identity,
            ip: self.ip,
            approved: "allowed",
            outcome,
            request_id: self.request_id,
            detail,
        }
    }
}

fn random_request() -> RequestId {
    let mut request = [0u8; 16];
    OsRng.fill_bytes(&mut request);
    RequestId(request)
}

/// Backs up `wallet`'s shares held by `parties` (holders of its current
/// generation). Each backup is stored and audited on its own; answers
/// `{backups: [...], failed: [{node, code, message}]}`.
pub async fn export(
    state: &AppState,
    requester: &Requester<'_>,
    wallet: &Wallet,
    parties: &[PartyId],
) -> AppResult<Value> {
    let store = hsm_store(state)?;
    let key_id = org_wrapping_key(state, requester.org).await?;
    let resource = format!("wallet:{}", wallet.name);
    let mut made = Vec::new();
    let mut failed = Vec::new();
    for party in parties {
        let node = state.registry.name_of(party);
        match export_one(state, &store, key_id, requester, wallet, *party, &node).await {
            Ok(row) => made.push(row.view()),
            Err(error) => {
                let mut tx = state.db.begin().await?;
                let detail = json!({"node": node, "error": error.code});
                audit::append(
                    &state.db,
                    &mut tx,
                    &requester.backup_event(&resource, "failure", detail),
                )
                .await?;
                tx.commit().await?;
                failed.push(json!({"node": node, "code": error.code, "message": error.message}));
            }
        }
    }
    Ok(json!({"backups": made, "failed": failed}))
}

async fn export_one(
    state: &AppState,
    store: &HsmKeyStore,
    key_id: HsmKeyId,
    requester: &Requester<'_>,
    wallet: &Wallet,
    party: PartyId,
    node: &str,
) -> AppResult<BackupRow> {
    let id = new_id("bak");
    let backup_id = id_bytes(&id).unwrap_or_default();
    let wallet_id = WalletId(id_bytes(&wallet.id).unwrap_or_default());
    let created_at = now_ms();
    let (sealed, k1) = state
        .coordinator()?
        .export_backup(
            random_request(),
            party,
            wallet_id,
            wallet.protocol.curve(),
            KeyGeneration(wallet.generation),
            backup_id,
            created_at,
        )
        .await
        .map_err(|error| {
            AppError::unavailable("backup_failed", format!("{node} made no backup: {error}"))
        })?;
    let k1 = Zeroizing::new(k1.0.clone());
    // The node's answer is checked before anything is kept: the metadata
    // must name this backup, wallet, holder, generation and curve.
    let parsed = SealedBackup::from_bytes(&sealed).map_err(|error| {
        AppError::unavailable(
            "backup_failed",
            format!("{node} sent a malformed backup: {error}"),
        )
    })?;
    let meta = parsed.meta();
    if meta.backup_id != backup_id
        || meta.wallet != wallet_id.0
        || meta.party != party.0
        || meta.generation != wallet.generation
        || meta.curve != wallet.protocol.curve_name()
        || k1.len() != crate::kernel::hsm::DATA_KEY_LEN
    {
        return Err(AppError::unavailable(
            "backup_failed",
            format!("{node} sent a backup of something else"),
        ));
    }
    let digest = parsed.meta_digest();
    let context = k1_context(requester.org, &id, &digest);
    let wrapped_k1 = {
        let store = store.clone();
        blocking(move || store.wrap_data_key(&key_id, HsmKeyKind::Aes256, &k1, &context)).await?
    };
    let row = BackupRow {
        id: id.clone(),
        org: requester.org.to_string(),
        wallet_id: wallet.id.clone(),
        party,
        node: node.to_string(),
        curve: wallet.protocol.curve_name().to_string(),
        generation: wallet.generation,
        sealed,
        wrapped_k1,
        hsm_id: key_id.to_string(),
        meta_digest: hex::encode(digest),
        created_by: requester.identity.to_string(),
        created_at,
        restored_at: None,
    };
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO share_backups (id, org_id, wallet_id, party, node, curve, generation, \
         sealed, wrapped_k1, hsm_id, meta_digest, created_by, created_at, restored_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL)",
    )
    .bind(&row.id)
    .bind(&row.org)
    .bind(&row.wallet_id)
    .bind(hex::encode(row.party.0))
    .bind(&row.node)
    .bind(&row.curve)
    .bind(i64::from(row.generation))
    .bind(row.sealed.clone())
    .bind(row.wrapped_k1.clone())
    .bind(&row.hsm_id)
    .bind(&row.meta_digest)
    .bind(&row.created_by)
    .bind(row.created_at)
    .execute(&mut *tx)
    .await?;
    let resource = format!("wallet:{}", wallet.name);
    let detail = json!({
        "backup": row.id,
        "node": row.node,
        "generation": row.generation,
        "metaDigest": row.meta_digest,
    });
    audit::append(
        &state.db,
        &mut tx,
        &requester.backup_event(&resource, "success", detail),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(wallet = %wallet.id, backup = %row.id, node = %row.node, "share backup stored");
    Ok(row)
}

/// The backups of a wallet, newest first.
pub async fn list(state: &AppState, org: &str, wallet_id: &str) -> AppResult<Vec<BackupRow>> {
    let rows = sqlx::query(
        "SELECT * FROM share_backups WHERE org_id = $1 AND wallet_id = $2 \
         ORDER BY created_at DESC, id",
    )
    .bind(org)
    .bind(wallet_id)
    .fetch_all(state.db.pool())
    .await?;
    rows.iter().map(BackupRow::from_row).collect()
}

/// One backup of a wallet.
pub async fn load(state: &AppState, org: &str, wallet_id: &str, id: &str) -> AppResult<BackupRow> {
    let row =
        sqlx::query("SELECT * FROM share_backups WHERE org_id = $1 AND wallet_id = $2 AND id = $3")
            .bind(org)
            .bind(wallet_id)
            .bind(id)
            .fetch_optional(state.db.pool())
            .await?
            .ok_or_else(|| AppError::not_found("backup"))?;
    BackupRow::from_row(&row)
}

/// A restore request as it is stored for approval.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreBody {
    /// The wallet.
    pub wallet: String,
    /// The backup.
    pub backup: String,
    /// The node to restore into (its name).
    pub node: String,
}

/// Checks a restore before it is asked for and again before it runs: the
/// node is the backup's party, and the backup is of the wallet's current
/// key generation.
pub fn check_restore(wallet: &Wallet, backup: &BackupRow, target: PartyId) -> AppResult<()> {
    if target != backup.party {
        return Err(AppError::conflict(
            "restore_party_mismatch",
            "a backup restores only into the node with the same identity (party id); \
             a new identity joins through a resharing",
        ));
    }
    if !wallet.committee.contains(&backup.party) {
        return Err(AppError::conflict(
            "backup_stale",
            "the backup's node no longer holds a share of this wallet",
        ));
    }
    if backup.generation != wallet.generation {
        return Err(AppError::conflict(
            "backup_stale",
            format!(
                "the backup is of key generation {}; the wallet is at generation {} \
                 (back it up again after a resharing)",
                backup.generation, wallet.generation
            ),
        ));
    }
    Ok(())
}

/// Runs an approved `wallet.restore`: unwraps K1 in the token, learns the
/// generation's public key data from the other holders, and asks the node
/// to restore. Talks to the token and the nodes: runs outside a database
/// transaction.
pub async fn restore_stored(state: &AppState, org: &str, body: &Value) -> AppResult<Value> {
    let body: RestoreBody = serde_json::from_value(body.clone())
        .map_err(|_| AppError::internal("backups", "a stored restore request is malformed"))?;
    let wallet = wallets::load(state.db.pool(), org, &body.wallet).await?;
    let backup = load(state, org, &wallet.id, &body.backup).await?;
    let target = state
        .registry
        .find(&body.node)
        .ok_or_else(|| AppError::invalid("unknown_node", format!("no node named {}", body.node)))?
        .party;
    check_restore(&wallet, &backup, target)?;
    let store = hsm_store(state)?;
    let key_id = HsmKeyId::from_hex(&backup.hsm_id)
        .map_err(|_| AppError::internal("backups", "a stored key id is malformed"))?;
    let digest: [u8; 32] = hex::decode(&backup.meta_digest)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| AppError::internal("backups", "a stored digest is malformed"))?;
    // The sealed backup must still carry the digest K1 was wrapped under.
    let sealed = SealedBackup::from_bytes(&backup.sealed)
        .map_err(|_| AppError::internal("backups", "a stored backup is malformed"))?;
    if sealed.meta_digest() != digest {
        return Err(AppError::internal(
            "backups",
            "a stored backup does not match its digest",
        ));
    }
    let context = k1_context(org, &backup.id, &digest);
    let wrapped = backup.wrapped_k1.clone();
    let k1 =
        blocking(move || store.unwrap_data_key(&key_id, HsmKeyKind::Aes256, &wrapped, &context))
            .await?;
    let wallet_id = WalletId(id_bytes(&wallet.id).unwrap_or_default());
    let expected = expected_info(state, &wallet, target, wallet_id).await?;
    let coordinator = state.coordinator()?;
    let generation = coordinator
        .restore_backup(
            random_request(),
            target,
            wallet_id,
            wallet.protocol.curve(),
            backup.sealed.clone(),
            SecretBytes(k1.to_vec()),
            expected,
        )
        .await
        .map_err(|error| {
            AppError::unavailable(
                "restore_failed",
                format!("{} did not restore the backup: {error}", body.node),
            )
        })?;
    drop(k1);
    sqlx::query("UPDATE share_backups SET restored_at = $1 WHERE id = $2 AND org_id = $3")
        .bind(now_ms())
        .bind(&backup.id)
        .bind(org)
        .execute(state.db.pool())
        .await?;
    tracing::warn!(wallet = %wallet.id, backup = %backup.id, node = %body.node, "key share restored from a backup");
    Ok(json!({
        "restored": true,
        "backupId": backup.id,
        "walletId": wallet.id,
        "node": body.node,
        "generation": generation.0,
    }))
}

/// The public key data of the wallet's current generation, as the other
/// holders report it: every holder that answers must agree, at least one
/// must answer, and the data must carry the wallet's public key (so no
/// single node can substitute another key).
async fn expected_info(
    state: &AppState,
    wallet: &Wallet,
    target: PartyId,
    wallet_id: WalletId,
) -> AppResult<Vec<u8>> {
    let coordinator = state.coordinator()?;
    let wanted = wallets::chain_public_key(wallet.protocol, &wallet.key_info, &[])?;
    let mut agreed: Option<Vec<u8>> = None;
    let mut reasons = Vec::new();
    for holder in wallet.committee.iter().filter(|party| **party != target) {
        let answer = coordinator
            .key_info(
                random_request(),
                std::slice::from_ref(holder),
                wallet_id,
                wallet.protocol.curve(),
                KeyGeneration(wallet.generation),
            )
            .await;
        let info = match answer {
            Ok(info) => info,
            Err(error) => {
                reasons.push(format!("{}: {error}", state.registry.name_of(holder)));
                continue;
            }
        };
        let carried = wallets::chain_public_key(wallet.protocol, &info, &[]).ok();
        if carried.as_deref() != Some(wanted.as_slice()) {
            return Err(AppError::conflict(
                "restore_failed",
                format!(
                    "{} reports public key data of another key",
                    state.registry.name_of(holder)
                ),
            ));
        }
        match &agreed {
            Some(first) if *first != info => {
                return Err(AppError::conflict(
                    "restore_failed",
                    "the other holders disagree on the wallet's public key data",
                ))
            }
            _ => agreed = Some(info),
        }
    }
    agreed.ok_or_else(|| {
        AppError::unavailable(
            "restore_failed",
            format!(
                "no other holder reported the wallet's public key data: {}",
                reasons.join("; ")
            ),
        )
    })
}

/// A share restore that waited for an approval: it acts on the HSM token
/// and the nodes, so it runs outside the database's transaction.
pub struct StoredOperations;

impl crate::kernel::engine::Executor for StoredOperations {
    fn actions(&self) -> &'static [&'static str] {
        &[RESTORE_ACTION]
    }

    fn is_outside(&self, _action: &str) -> bool {
        true
    }

    fn run<'a>(
        &'a self,
        _state: &'a AppState,
        _tx: &'a mut crate::kernel::db::Tx,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, AppResult<Value>> {
        Box::pin(async move { Err(crate::kernel::engine::no_executor(&operation.action)) })
    }

    fn run_outside<'a>(
        &'a self,
        state: &'a AppState,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, AppResult<Value>> {
        Box::pin(restore_stored(state, &operation.org, &operation.body))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engines::wallets::Protocol;

    fn wallet(committee: Vec<PartyId>, generation: u32) -> Wallet {
        Wallet {
            id: "wal_00".into(),
            org: "org_00".into(),
            name: "cold".into(),
            protocol: Protocol::FrostTaproot,
            chain: Protocol::FrostTaproot.default_chain(),
            raw_public_key: Vec::new(),
            key_info: Vec::new(),
            threshold: 2,
            committee,
            generation,
            created_at: 0,
            frozen: false,
        }
    }

    fn backup(party: PartyId, generation: u32) -> BackupRow {
        BackupRow {
            id: "bak_00".into(),
            org: "org_00".into(),
            wallet_id: "wal_00".into(),
            party,
            node: "node-1".into(),
            curve: "secp256k1".into(),
            generation,
            sealed: Vec::new(),
            wrapped_k1: Vec::new(),
            hsm_id: String::new(),
            meta_digest: String::new(),
            created_by: String::new(),
            created_at: 0,
            restored_at: None,
        }
    }

    #[test]
    fn a_restore_goes_to_the_same_party_of_the_current_generation_only() {
        let (a, b, c) = (PartyId([1; 32]), PartyId([2; 32]), PartyId([3; 32]));
        let current = wallet(vec![a, b], 1);
        assert!(check_restore(&current, &backup(a, 1), a).is_ok());
        let code = |result: AppResult<()>| result.unwrap_err().code;
        assert_eq!(
            code(check_restore(&current, &backup(a, 1), b)),
            "restore_party_mismatch"
        );
        // Before a resharing, or of a party that left the committee.
        assert_eq!(
            code(check_restore(&current, &backup(a, 0), a)),
            "backup_stale"
        );
        assert_eq!(
            code(check_restore(&current, &backup(c, 1), c)),
            "backup_stale"
        );
    }

    #[test]
    fn the_wrapped_half_is_bound_to_org_backup_and_metadata() {
        let base = k1_context("org_a", "bak_1", &[0; 32]);
        assert_ne!(base, k1_context("org_b", "bak_1", &[0; 32]));
        assert_ne!(base, k1_context("org_a", "bak_2", &[0; 32]));
        assert_ne!(base, k1_context("org_a", "bak_1", &[1; 32]));
        // Length prefixes: moving a byte between fields changes the context.
        assert_ne!(
            k1_context("org_ab", "ak_1", &[0; 32]),
            k1_context("org_a", "bak_1", &[0; 32])
        );
        assert!(base.starts_with(&(K1_DOMAIN.len() as u32).to_be_bytes()));
    }
}
