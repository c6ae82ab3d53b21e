//! What a signed request answers, built from the nodes' raw signature, and
//! checked first with verifiers that did not produce it: k256 ECDSA (and
//! public-key recovery), k256 BIP-340, ed25519-dalek. A signature that does
//! not verify is never returned.

use k256::ecdsa::signature::hazmat::PrehashVerifier;
use serde_json::{json, Value};

use crate::engines::wallets::chain::{self, Eip1559Transaction, EvmTransactionInput};
use crate::engines::wallets::{self, Protocol, Wallet};
use crate::kernel::error::{AppError, AppResult, ErrorKind};

fn refuse(why: &str) -> AppError {
    AppError::new(
        ErrorKind::BadGateway,
        "invalid_signature",
        format!("the nodes' signature does not verify: {why}"),
    )
}

/// The result fields of a signed request (`signature`, `digest`,
/// `publicKey`, and for transactions `rawTransaction` and `txHash`).
pub fn result(
    wallet: &Wallet,
    body: &Value,
    payload: &[u8],
    path: &[u32],
    signature: &[u8],
) -> AppResult<Value> {
    let public_key = wallets::chain_public_key(wallet.protocol, &wallet.key_info, path)?;
    let kind = body["type"].as_str().unwrap_or_default();
    match wallet.protocol {
        Protocol::Cggmp21 => {
            let (rs, v) = signature
                .split_at_checked(64)
                .ok_or_else(|| refuse("length"))?;
            let recovery = *v.first().ok_or_else(|| refuse("length"))?;
            let parsed = k256::ecdsa::Signature::from_slice(rs).map_err(|_| refuse("encoding"))?;
            let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&public_key)
                .map_err(|_| refuse("public key"))?;
            key.verify_prehash(payload, &parsed)
                .map_err(|_| refuse("k256 ECDSA"))?;
            if parsed.normalize_s().is_some() {
                return Err(refuse("high s"));
            }
            let recovery_id = k256::ecdsa::RecoveryId::from_byte(recovery)
                .ok_or_else(|| refuse("recovery id"))?;
            let recovered =
                k256::ecdsa::VerifyingKey::recover_from_prehash(payload, &parsed, recovery_id)
                    .map_err(|_| refuse("recovery"))?;
            if recovered != key {
                return Err(refuse("recovery id recovers another key"));
            }
            let (r, s) = rs.split_at(32);
            let r: [u8; 32] = r.try_into().map_err(|_| refuse("length"))?;
            let s: [u8; 32] = s.try_into().map_err(|_| refuse("length"))?;
            let v = match kind {
                "message" => 27 + u64::from(recovery),
                _ => u64::from(recovery),
            };
            let mut answer = json!({
                "signature": {
                    "r": format!("0x{}", hex::encode(r)),
                    "s": format!("0x{}", hex::encode(s)),
                    "v": v,
                    "der": format!("0x{}", hex::encode(parsed.to_der().as_bytes())),
                },
                "digest": format!("0x{}", hex::encode(payload)),
                "publicKey": hex::encode(&public_key),
                "address": chain::evm_address(&public_key).map_err(|_| refuse("address"))?,
            });
            if kind == "transaction" {
                let input: EvmTransactionInput =
                    serde_json::from_value(body["transaction"].clone())
                        .map_err(|error| AppError::internal("stored transaction", error))?;
                let transaction = Eip1559Transaction::from_input(&input)
                    .map_err(|error| AppError::internal("stored transaction", error))?;
                let raw = transaction.signed_envelope(&r, &s, recovery);
                answer["rawTransaction"] = json!(format!("0x{}", hex::encode(&raw)));
                answer["txHash"] =
                    json!(format!("0x{}", hex::encode(chain::transaction_hash(&raw))));
            }
            Ok(answer)
        }
        Protocol::FrostTaproot => {
            let key = k256::schnorr::VerifyingKey::from_bytes(&public_key)
                .map_err(|_| refuse("x-only key"))?;
            let parsed =
                k256::schnorr::Signature::try_from(signature).map_err(|_| refuse("encoding"))?;
            key.verify_prehash(payload, &parsed)
                .map_err(|_| refuse("k256 BIP-340"))?;
            Ok(json!({
                "signature": hex::encode(signature),
                "digest": hex::encode(payload),
                "publicKey": hex::encode(&public_key),
            }))
        }
        Protocol::FrostEd25519 => {
            let key_bytes: [u8; 32] = public_key
                .as_slice()
                .try_into()
                .map_err(|_| refuse("key length"))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes)
                .map_err(|_| refuse("ed25519 key"))?;
            let bytes: [u8; 64] = signature.try_into().map_err(|_| refuse("length"))?;
            key.verify_strict(payload, &ed25519_dalek::Signature::from_bytes(&bytes))
                .map_err(|_| refuse("ed25519-dalek"))?;
            Ok(json!({
                "signature": hex::encode(signature),
                "message": hex::encode(payload),
                "publicKey": hex::encode(&public_key),
            }))
        }
    }
}
