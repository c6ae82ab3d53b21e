//! MPC wallets: protocols, public keys, chain addresses, HD children, and
//! the wallet rows in the store.
//!
//! The control plane never holds a share: it stores the public key, the
//! chain code and the public key data (`PublicKeyInfo`, as a node reported
//! it), from which it derives child public keys exactly as the nodes do.

pub mod backups;
pub mod chain;
pub mod evm_calls;
pub mod nodes;
pub mod signatures;
pub mod signing;

mod backup_routes;
mod routes;

pub use routes::routes;

use custos_protocol::share::PublicKeyInfo;
use custos_protocol::{schnorr, Ed25519, PartyId, Secp256k1};
use custos_signer_node::job::{Curve, Scheme};
use serde::Serialize;
use sqlx::Row;

use self::chain::Chain;
use crate::kernel::error::{AppError, AppResult};

/// An MPC protocol a wallet signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// CGGMP21 threshold ECDSA on secp256k1.
    Cggmp21,
    /// FROST BIP-340 with the Taproot tweak.
    FrostTaproot,
    /// FROST Ed25519.
    FrostEd25519,
}

impl Protocol {
    /// Parses the API name.
    pub fn parse(name: &str) -> AppResult<Protocol> {
        Ok(match name {
            "cggmp21" => Protocol::Cggmp21,
            "frost-taproot" => Protocol::FrostTaproot,
            "frost-ed25519" => Protocol::FrostEd25519,
            _ => {
                return Err(AppError::invalid(
                    "unsupported_protocol",
                    "protocol must be cggmp21, frost-taproot or frost-ed25519",
                ))
            }
        })
    }

    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Cggmp21 => "cggmp21",
            Protocol::FrostTaproot => "frost-taproot",
            Protocol::FrostEd25519 => "frost-ed25519",
        }
    }

    /// The key's curve.
    pub fn curve(self) -> Curve {
        match self {
            Protocol::Cggmp21 | Protocol::FrostTaproot => Curve::Secp256k1,
            Protocol::FrostEd25519 => Curve::Ed25519,
        }
    }

    /// The API name of the curve.
    pub fn curve_name(self) -> &'static str {
        match self.curve() {
            Curve::Secp256k1 => "secp256k1",
            Curve::Ed25519 => "ed25519",
        }
    }

    /// The node-level signature scheme.
    pub fn scheme(self) -> Scheme {
        match self {
            Protocol::Cggmp21 => Scheme::Ecdsa,
            Protocol::FrostTaproot => Scheme::Taproot,
            Protocol::FrostEd25519 => Scheme::Ed25519,
        }
    }

    /// The default chain.
    pub fn default_chain(self) -> Chain {
        match self {
            Protocol::Cggmp21 => Chain::Ethereum,
            Protocol::FrostTaproot => Chain::Bitcoin,
            Protocol::FrostEd25519 => Chain::Solana,
        }
    }

    /// Whether `chain` fits this protocol.
    pub fn supports(self, chain: Chain) -> bool {
        match self {
            Protocol::Cggmp21 => chain.is_evm(),
            Protocol::FrostTaproot => matches!(chain, Chain::Bitcoin | Chain::BitcoinTestnet),
            Protocol::FrostEd25519 => chain == Chain::Solana,
        }
    }
}

/// Parses `m/0/5` (or `0/5`, or empty) into non-hardened indices.
pub fn parse_path(text: &str) -> AppResult<Vec<u32>> {
    let invalid = |why: &str| AppError::invalid("invalid_derivation_path", why.to_string());
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix("m/")
        .or_else(|| (trimmed == "m").then_some(""))
        .unwrap_or(trimmed);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut path = Vec::new();
    for part in body.split('/') {
        if part.ends_with('\'') || part.ends_with('h') || part.ends_with('H') {
            return Err(invalid(
                "hardened derivation is not possible with a threshold key",
            ));
        }
        if part.is_empty() || part.len() > 10 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "a path is m/ followed by decimal indices, e.g. m/0/5",
            ));
        }
        let index: u32 = part.parse().map_err(|_| invalid("index too large"))?;
        if index >= 1 << 31 {
            return Err(invalid("indices must be below 2^31 (non-hardened)"));
        }
        path.push(index);
    }
    if path.len() > 16 {
        return Err(invalid("at most 16 levels"));
    }
    Ok(path)
}

/// The key the chain sees at `path`: 33-byte compressed (cggmp21), 32-byte
/// x-only tweaked output key (frost-taproot) or 32-byte Ed25519 key.
pub fn chain_public_key(protocol: Protocol, key_info: &[u8], path: &[u32]) -> AppResult<Vec<u8>> {
    let bad = |error: custos_protocol::Error| AppError::internal("key derivation", error);
    Ok(match protocol {
        Protocol::Cggmp21 => {
            let info = PublicKeyInfo::<Secp256k1>::from_bytes(key_info).map_err(bad)?;
            info.derive_public_key(path)
                .map_err(bad)?
                .to_bytes(true)
                .to_vec()
        }
        Protocol::FrostTaproot => {
            let info = PublicKeyInfo::<Secp256k1>::from_bytes(key_info).map_err(bad)?;
            schnorr::taproot_output_key(&info, path)
                .map_err(bad)?
                .to_vec()
        }
        Protocol::FrostEd25519 => {
            let info = PublicKeyInfo::<Ed25519>::from_bytes(key_info).map_err(bad)?;
            schnorr::ed25519_public_key(&info, path)
                .map_err(bad)?
                .to_vec()
        }
    })
}

/// The address of a chain public key.
pub fn address(protocol: Protocol, chain: Chain, public_key: &[u8]) -> AppResult<String> {
    let bad = |error: chain::ChainError| AppError::internal("address", error);
    match protocol {
        Protocol::Cggmp21 => chain::evm_address(public_key).map_err(bad),
        Protocol::FrostTaproot => {
            let key: [u8; 32] = public_key
                .try_into()
                .map_err(|_| AppError::internal("address", "x-only key length"))?;
            chain::p2tr_address(&key, chain).map_err(bad)
        }
        Protocol::FrostEd25519 => {
            let key: [u8; 32] = public_key
                .try_into()
                .map_err(|_| AppError::internal("address", "ed25519 key length"))?;
            Ok(chain::solana_address(&key))
        }
    }
}

/// A wallet row.
#[derive(Clone, Debug)]
pub struct Wallet {
    /// Id.
    pub id: String,
    /// Org.
    pub org: String,
    /// Name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Chain.
    pub chain: Chain,
    /// Root key as the nodes reported it.
    pub raw_public_key: Vec<u8>,
    /// `PublicKeyInfo` bytes.
    pub key_info: Vec<u8>,
    /// Signers needed.
    pub threshold: u16,
    /// Holders.
    pub committee: Vec<PartyId>,
    /// Key generation.
    pub generation: u32,
    /// Unix ms.
    pub created_at: i64,
    /// Frozen: it signs and reshares nothing until unfrozen, whatever was
    /// approved before (backups and restores of its shares still work: they
    /// are how nodes are recovered, also during an incident).
    pub frozen: bool,
}

/// Why and since when a wallet is frozen, as the API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrozenView {
    /// Unix ms.
    pub at: i64,
    /// The identity that froze it.
    pub by: String,
    /// Its reason, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A wallet as the API shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Wallet)]
#[serde(rename_all = "camelCase")]
pub struct WalletView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Protocol.
    pub protocol: &'static str,
    /// Curve.
    pub curve: &'static str,
    /// Chain.
    pub chain: &'static str,
    /// Hex of the key the chain sees.
    pub public_key: String,
    /// The chain address.
    pub address: String,
    /// Signers needed.
    pub threshold: u16,
    /// Holders.
    pub parties: usize,
    /// Node names.
    pub nodes: Vec<String>,
    /// Key generation (resharing increments it).
    pub generation: u32,
    /// Unix ms.
    pub created_at: i64,
    /// Whether the wallet is frozen.
    pub frozen: bool,
}

impl Wallet {
    /// The view, with node names from the registry.
    pub fn view(
        &self,
        registry: &crate::engines::wallets::nodes::Registry,
    ) -> AppResult<WalletView> {
        let public_key = chain_public_key(self.protocol, &self.key_info, &[])?;
        Ok(WalletView {
            id: self.id.clone(),
            name: self.name.clone(),
            protocol: self.protocol.name(),
            curve: self.protocol.curve_name(),
            chain: self.chain.name(),
            address: address(self.protocol, self.chain, &public_key)?,
            public_key: hex::encode(public_key),
            threshold: self.threshold,
            parties: self.committee.len(),
            nodes: self
                .committee
                .iter()
                .map(|party| registry.name_of(party))
                .collect(),
            generation: self.generation,
            created_at: self.created_at,
            frozen: self.frozen,
        })
    }

    /// Reads a row.
    pub fn from_row(row: &sqlx::any::AnyRow) -> AppResult<Wallet> {
        let protocol: String = row.try_get("protocol")?;
        let chain: String = row.try_get("chain")?;
        let committee: String = row.try_get("committee")?;
        let committee: Vec<String> = serde_json::from_str(&committee)
            .map_err(|error| AppError::internal("wallet committee", error))?;
        Ok(Wallet {
            id: row.try_get("id")?,
            org: row.try_get("org_id")?,
            name: row.try_get("name")?,
            protocol: Protocol::parse(&protocol)?,
            chain: Chain::parse(&chain)
                .map_err(|error| AppError::internal("wallet chain", error))?,
            raw_public_key: row.try_get("public_key")?,
            key_info: row.try_get("key_info")?,
            threshold: u16::try_from(row.try_get::<i64, _>("threshold")?)
                .map_err(|error| AppError::internal("wallet threshold", error))?,
            committee: committee
                .iter()
                .map(|party| {
                    crate::engines::wallets::nodes::parse_party(party)
                        .ok_or_else(|| AppError::internal("wallet committee", "bad party id"))
                })
                .collect::<AppResult<_>>()?,
            generation: u32::try_from(row.try_get::<i64, _>("generation")?)
                .map_err(|error| AppError::internal("wallet generation", error))?,
            created_at: row.try_get("created_at")?,
            frozen: row.try_get::<i64, _>("frozen")? == 1,
        })
    }
}

/// The answer to anything a frozen wallet is asked to do.
pub fn frozen_error(wallet: &Wallet) -> AppError {
    AppError::conflict(
        "wallet_frozen",
        format!(
            "wallet {} is frozen: it signs nothing until it is unfrozen",
            wallet.name
        ),
    )
}

/// Freezes a wallet inside `tx` (idempotent: freezing a frozen wallet
/// keeps the first freeze's record). Returns whether it was not frozen.
pub async fn freeze(
    tx: &mut crate::kernel::db::Tx,
    org: &str,
    id: &str,
    by: &str,
    reason: Option<&str>,
) -> AppResult<bool> {
    let changed = sqlx::query(
        "UPDATE wallets SET frozen = 1, frozen_at = $1, frozen_by = $2, frozen_reason = $3 \
         WHERE org_id = $4 AND id = $5 AND frozen = 0",
    )
    .bind(crate::kernel::db::now_ms())
    .bind(by)
    .bind(reason.map(str::to_string))
    .bind(org)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Unfreezes a wallet inside `tx` (an approved `wallet.unfreeze`).
pub async fn unfreeze(tx: &mut crate::kernel::db::Tx, org: &str, id: &str) -> AppResult<bool> {
    let changed = sqlx::query(
        "UPDATE wallets SET frozen = 0, frozen_at = NULL, frozen_by = NULL, \
         frozen_reason = NULL WHERE org_id = $1 AND id = $2 AND frozen = 1",
    )
    .bind(org)
    .bind(id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// The freeze of wallet `id`, if frozen.
pub async fn frozen_view(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> AppResult<Option<FrozenView>> {
    let row = sqlx::query(
        "SELECT frozen, frozen_at, frozen_by, frozen_reason FROM wallets \
         WHERE org_id = $1 AND id = $2",
    )
    .bind(org)
    .bind(id)
    .fetch_optional(executor)
    .await?
    .ok_or_else(|| AppError::not_found("wallet"))?;
    if row.try_get::<i64, _>("frozen")? != 1 {
        return Ok(None);
    }
    Ok(Some(FrozenView {
        at: row.try_get::<Option<i64>, _>("frozen_at")?.unwrap_or(0),
        by: row
            .try_get::<Option<String>, _>("frozen_by")?
            .unwrap_or_default(),
        reason: row.try_get("frozen_reason")?,
    }))
}

/// Whether `org` has a wallet named `name`.
pub async fn name_taken(db: &crate::kernel::db::Db, org: &str, name: &str) -> AppResult<bool> {
    let row = sqlx::query("SELECT id FROM wallets WHERE org_id = $1 AND name = $2")
        .bind(org)
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.is_some())
}

/// `409 already_exists` for a wallet name in use.
pub fn name_conflict(name: &str) -> AppError {
    AppError::conflict("already_exists", format!("a wallet named {name} exists"))
}

/// Stores a new wallet (generation 0) inside `tx`; `409 already_exists`
/// when its org has one of that name (also when another request took the
/// name since it was checked).
pub async fn insert(
    tx: &mut crate::kernel::db::Tx,
    wallet: &Wallet,
    chain_code: &[u8],
) -> AppResult<()> {
    let inserted = sqlx::query(
        "INSERT INTO wallets (id, org_id, name, protocol, chain, public_key, chain_code, key_info, \
         threshold, committee, generation, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11)",
    )
    .bind(&wallet.id)
    .bind(&wallet.org)
    .bind(&wallet.name)
    .bind(wallet.protocol.name())
    .bind(wallet.chain.name())
    .bind(wallet.raw_public_key.clone())
    .bind(chain_code.to_vec())
    .bind(wallet.key_info.clone())
    .bind(i64::from(wallet.threshold))
    .bind(committee_json(&wallet.committee)?)
    .bind(wallet.created_at)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            Err(name_conflict(&wallet.name))
        }
        Err(error) => Err(error.into()),
    }
}

/// Every wallet of `org`, oldest first.
pub async fn list(db: &crate::kernel::db::Db, org: &str) -> AppResult<Vec<Wallet>> {
    let rows = sqlx::query("SELECT * FROM wallets WHERE org_id = $1 ORDER BY created_at")
        .bind(org)
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(Wallet::from_row).collect()
}

/// The committee as stored (hex party ids).
pub fn committee_json(committee: &[PartyId]) -> AppResult<String> {
    serde_json::to_string(
        &committee
            .iter()
            .map(|party| hex::encode(party.0))
            .collect::<Vec<_>>(),
    )
    .map_err(|error| AppError::internal("committee json", error))
}

/// Loads a wallet of `org` (another org's wallet is "not found").
pub async fn load(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> AppResult<Wallet> {
    let row = sqlx::query("SELECT * FROM wallets WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(id)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| AppError::not_found("wallet"))?;
    Wallet::from_row(&row)
}

/// The wallets' stored operations: unfreezing waits for an approval.
pub struct StoredOperations;

impl crate::kernel::engine::Executor for StoredOperations {
    fn actions(&self) -> &'static [&'static str] {
        &["wallet.unfreeze"]
    }

    fn run<'a>(
        &'a self,
        _state: &'a crate::kernel::state::AppState,
        tx: &'a mut crate::kernel::db::Tx,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, AppResult<serde_json::Value>> {
        Box::pin(async move {
            let wallet = operation.body["walletId"].as_str().unwrap_or_default();
            let changed = unfreeze(tx, &operation.org, wallet).await?;
            Ok(serde_json::json!({"walletId": wallet, "frozen": false, "wasFrozen": changed}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_hardened_or_malformed_paths_are_refused() {
        assert_eq!(parse_path("m/0/5").unwrap(), vec![0, 5]);
        assert_eq!(parse_path("m").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_path("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_path("7/2147483647").unwrap(), vec![7, 2147483647]);
        for bad in [
            "m/0'",
            "m/1h",
            "m/2147483648",
            "m//1",
            "m/-1",
            "m/x",
            "m/0/",
        ] {
            assert_eq!(
                parse_path(bad).unwrap_err().code,
                "invalid_derivation_path",
                "{bad}"
            );
        }
    }
}
