//! Policy-gated signing: requests, approvals, execution and the worker.
//!
//! A request's life (the `status` column):
//!
//! ```text
//! pending_approval ──approve×N──▶ queued ──claim──▶ signing ──▶ signed
//!        │                          ▲                 │
//!        └─reject / expire─▶ rejected └──retryable────┘──▶ failed
//! ```
//!
//! * What is signed is built here (`plan`): for an EVM transaction the
//!   control plane encodes the EIP-1559 payload and hashes it itself, so the
//!   policy sees the real `to` and `value`; a bare digest has an unknown
//!   amount.
//! * A request is stored (with its audit record) before anything is signed.
//!   Executing it starts with a *claim*: a conditional update that moves it
//!   to `signing` with a lease, in the same transaction that re-checks its
//!   approval under a row lock. Only the claimant calls the nodes.
//! * The nodes key their replay records by request id: a retry (after a
//!   node failure, or after this process crashed) uses attempt numbers no
//!   earlier run used (`attempts` × `ATTEMPTS_PER_CLAIM`), and a request
//!   that already succeeded on the nodes is answered with its stored
//!   signature. So one request never yields two signatures.
//! * The worker (every replica runs one) expires approvals, takes queued
//!   requests and requests whose lease ran out; on start a replica takes
//!   back its own leases, since it cannot be running them any more.

use std::sync::Arc;
use std::time::Duration;

use custos_protocol::{KeyGeneration, RequestId, WalletId};
use custos_signer_node::coordinator::CoordinatorError;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::engines::wallets::chain::{self, Eip1559Transaction, EvmTransactionInput};
use crate::engines::wallets::{self, Protocol, Wallet};
use crate::kernel::approvals::{self, error_json, NewApproval, Outcome, Requirement};
use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::Caller;
use crate::kernel::db::{id_bytes, new_id, now_ms, Tx};
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::gate::{self, Verdict};
use crate::kernel::policy::{self, Decision, Movement, PayloadKind, RequestFacts, ValueFacts};
use crate::kernel::state::AppState;

/// Attempt numbers reserved per claim of a request.
pub const ATTEMPTS_PER_CLAIM: i64 = 64;
/// How long a claim holds a request before another replica may take it.
pub const LEASE_MS: i64 = 90_000;
/// How long a request allowed at once is left to the handler that accepted
/// it before workers may take it.
pub const HANDLER_RESERVATION_MS: i64 = 5_000;

/// Claims of one request before it is marked failed (with the backoff of
/// `retry_delay_ms`, about three minutes of retrying).
pub const MAX_CLAIMS: i64 = 8;

/// How long a request waits before its next claim: 2^claims seconds,
/// at most a minute.
pub fn retry_delay_ms(claims: i64) -> i64 {
    1000 * (1i64 << claims.clamp(1, 6)).min(60)
}

/// The body of `POST /api/v1/wallets/{id}/sign`: one of `transaction`,
/// `message` or `digest`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = SignRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignInput {
    /// An EVM EIP-1559 transaction.
    #[serde(default, deserialize_with = "complete_transaction")]
    pub transaction: Option<EvmTransactionInput>,
    /// A message: UTF-8 text unless `encoding` says hex or base64.
    #[serde(default)]
    pub message: Option<String>,
    /// `utf8` (default), `hex` or `base64`.
    #[serde(default)]
    #[schema(schema_with = message_encoding_schema)]
    pub encoding: Option<String>,
    /// A bare 32-byte digest, 0x-hex.
    #[serde(default)]
    #[schema(pattern = r"^(?:0x)?[0-9a-fA-F]{64}$")]
    pub digest: Option<String>,
    /// Non-hardened HD path, `m/0/5`.
    #[serde(default)]
    pub derivation_path: Option<String>,
    /// Same key, same request: the first result is returned.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The names `encoding` takes (`decode_message`; `utf-8` and `text` are
/// `utf8`), for the OpenAPI document.
fn message_encoding_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    crate::http::openapi::schema_from(json!({
        "type": ["string", "null"],
        "enum": ["utf8", "hex", "base64", "utf-8", "text", null],
        "description": "`utf8` (default), `hex` or `base64` (`utf-8` and `text` are `utf8`)",
    }))
}

/// The fields of an EVM transaction a client must give: Custos reads no
/// chain, so it never fills in a nonce, a gas limit or fees.
const EVM_REQUIRED: [&str; 7] = [
    "chainId",
    "nonce",
    "to",
    "value",
    "gasLimit",
    "maxFeePerGas",
    "maxPriorityFeePerGas",
];

/// An EVM transaction whose missing fields are named all at once (a client
/// coming from an SDK that fills in the nonce and fees learns every field
/// it must now send), then read as [`EvmTransactionInput`].
fn complete_transaction<'de, D>(deserializer: D) -> Result<Option<EvmTransactionInput>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let Some(value) = Option::<Value>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(fields) = value.as_object() {
        let missing: Vec<&str> = EVM_REQUIRED
            .into_iter()
            .filter(|field| fields.get(*field).is_none_or(Value::is_null))
            .collect();
        if !missing.is_empty() {
            return Err(serde::de::Error::custom(format!(
                "the transaction lacks {}: Custos reads no chain, so the client gives the \
                 chain id, the nonce, the gas limit and both EIP-1559 fees",
                missing.join(", ")
            )));
        }
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// What will be signed, and what the policy sees of it.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The node-level payload: a 32-byte digest, or the Ed25519 message.
    pub payload: Vec<u8>,
    /// HD path.
    pub path: Vec<u32>,
    /// What is signed (`None` for a resharing, which signs nothing).
    pub kind: Option<PayloadKind>,
    /// The movements of value the policy sees.
    pub value: ValueFacts,
    /// The normalised request, stored and hashed. Everything above is
    /// derived from it ([`plan_body`]), again when the request runs.
    pub body: Value,
}

fn decode_message(text: &str, encoding: Option<&str>) -> AppResult<Vec<u8>> {
    let invalid = |why: &str| AppError::invalid("invalid_message", why.to_string());
    match encoding.unwrap_or("utf8") {
        "utf8" | "utf-8" | "text" => Ok(text.as_bytes().to_vec()),
        "hex" => hex::decode(text.strip_prefix("0x").unwrap_or(text))
            .map_err(|_| invalid("message is not valid hex")),
        "base64" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| invalid("message is not valid base64"))
        }
        _ => Err(AppError::invalid(
            "invalid_encoding",
            "encoding must be utf8, hex or base64",
        )),
    }
}

fn parse_digest(text: &str) -> AppResult<[u8; 32]> {
    let hex_part = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(hex_part)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| AppError::invalid("invalid_digest", "digest must be 0x-hex of 32 bytes"))
}

/// Largest message accepted for signing.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Builds the plan of a signing request for `wallet` from the API body:
/// the normalised body, then everything derived from it.
pub fn plan(wallet: &Wallet, input: &SignInput) -> AppResult<Plan> {
    let given = [
        input.transaction.is_some(),
        input.message.is_some(),
        input.digest.is_some(),
    ]
    .iter()
    .filter(|given| **given)
    .count();
    if given != 1 {
        return Err(AppError::invalid(
            "invalid_request",
            "give exactly one of transaction, message or digest",
        ));
    }
    let path = wallets::parse_path(input.derivation_path.as_deref().unwrap_or(""))?;
    let body = if let Some(transaction) = &input.transaction {
        let parsed = Eip1559Transaction::from_input(transaction).map_err(chain_error)?;
        json!({"type": "transaction", "transaction": normalized_input(&parsed), "path": path})
    } else if let Some(message) = &input.message {
        let bytes = decode_message(message, input.encoding.as_deref())?;
        json!({"type": "message", "message": hex::encode(&bytes), "path": path})
    } else {
        let digest = parse_digest(input.digest.as_deref().unwrap_or_default())?;
        json!({"type": "digest", "digest": hex::encode(digest), "path": path})
    };
    plan_body(wallet, body)
}

fn chain_error(error: chain::ChainError) -> AppError {
    AppError::invalid(error.code(), error.to_string())
}

/// Derives what is signed and what the policy sees from a normalised
/// signing body (as [`plan`] builds it and `signing_requests.body` stores
/// it). A request is planned again from its stored body when it runs, so
/// the payload the nodes sign and the facts the policy decides on both
/// follow from the body the approvals bound to.
pub fn plan_body(wallet: &Wallet, body: Value) -> AppResult<Plan> {
    let invalid = |why: &str| AppError::invalid("invalid_request", why.to_string());
    let path: Vec<u32> = serde_json::from_value(body["path"].clone())
        .map_err(|_| invalid("the request has no valid derivation path"))?;
    if path.iter().any(|index| *index >= 0x8000_0000) {
        return Err(AppError::invalid(
            "invalid_derivation_path",
            "only non-hardened derivation is possible without the private key",
        ));
    }
    let (payload, kind, value) = match body["type"].as_str() {
        Some("transaction") => {
            if wallet.protocol != Protocol::Cggmp21 || !wallet.chain.is_evm() {
                return Err(AppError::invalid(
                    "unsupported_payload",
                    "transactions are signed by cggmp21 wallets on an EVM chain",
                ));
            }
            let input: EvmTransactionInput = serde_json::from_value(body["transaction"].clone())
                .map_err(|_| invalid("the transaction is not a valid EIP-1559 body"))?;
            let parsed = Eip1559Transaction::from_input(&input).map_err(chain_error)?;
            (
                parsed.signing_digest().to_vec(),
                PayloadKind::Transaction,
                evm_value(&parsed),
            )
        }
        Some("message") => {
            let bytes = hex::decode(body["message"].as_str().unwrap_or_default())
                .map_err(|_| invalid("the message is not hex"))?;
            if bytes.len() > MAX_MESSAGE_BYTES {
                return Err(AppError::invalid(
                    "message_too_large",
                    "message over 64 KiB",
                ));
            }
            let payload = match wallet.protocol {
                Protocol::Cggmp21 => chain::eip191_digest(&bytes).to_vec(),
                Protocol::FrostTaproot => {
                    if bytes.len() != 32 {
                        return Err(AppError::invalid(
                            "invalid_message",
                            "a BIP-340 message for a Taproot wallet is 32 bytes (give it as hex)",
                        ));
                    }
                    bytes
                }
                Protocol::FrostEd25519 => bytes,
            };
            // A signed message can authorise anything (a permit, a login):
            // what it moves is unknown.
            (payload, PayloadKind::Message, ValueFacts::Unknown)
        }
        Some("digest") => {
            let digest = parse_digest(body["digest"].as_str().unwrap_or_default())?;
            // A bare digest is unknown amount, destination and asset.
            (digest.to_vec(), PayloadKind::Digest, ValueFacts::Unknown)
        }
        _ => return Err(invalid("unknown request type")),
    };
    Ok(Plan {
        payload,
        path,
        kind: Some(kind),
        value,
        body,
    })
}

/// What an EVM transaction moves, as the policy sees it: the native value
/// to `to`, and the token movements its calldata makes when the calldata
/// is understood; calldata that is not understood makes amount and
/// destination unknown.
fn evm_value(transaction: &Eip1559Transaction) -> ValueFacts {
    match crate::engines::wallets::evm_calls::movements(
        &transaction.to,
        &transaction.value,
        &transaction.data,
    ) {
        Some(movements) => ValueFacts::Known(
            movements
                .into_iter()
                .map(|movement| Movement {
                    asset: Some(movement.asset),
                    amount: movement.amount,
                    destination: Some(movement.destination),
                })
                .collect(),
        ),
        None => ValueFacts::Unknown,
    }
}

/// The plan of a resharing: it signs nothing and moves nothing.
pub fn reshare_plan(body: Value) -> Plan {
    Plan {
        payload: Vec::new(),
        path: Vec::new(),
        kind: None,
        value: ValueFacts::NotApplicable,
        body,
    }
}

fn normalized_input(transaction: &Eip1559Transaction) -> EvmTransactionInput {
    EvmTransactionInput {
        chain_id: transaction.chain_id.to_decimal(),
        nonce: transaction.nonce.to_decimal(),
        to: chain::to_checksum_address(&transaction.to),
        value: transaction.value.to_decimal(),
        data: Some(format!("0x{}", hex::encode(&transaction.data))),
        gas_limit: transaction.gas_limit.to_decimal(),
        max_fee_per_gas: transaction.max_fee_per_gas.to_decimal(),
        max_priority_fee_per_gas: transaction.max_priority_fee_per_gas.to_decimal(),
    }
}

/// The hash an approval binds to: org, wallet, requester, kind, the
/// normalised request and the payload the nodes sign (so the tamper check
/// at execution covers what is really signed, not only its description).
pub fn request_hash(
    org: &str,
    wallet: &str,
    requested_by: &str,
    kind: &str,
    body: &Value,
    payload: &[u8],
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"custos/signing-request/v2");
    for field in [
        org.as_bytes(),
        wallet.as_bytes(),
        requested_by.as_bytes(),
        kind.as_bytes(),
        body.to_string().as_bytes(),
        payload,
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hex::encode(hasher.finalize())
}

/// A request as `GET /api/v1/signing-requests/{id}` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    /// Id.
    pub request_id: String,
    /// `sign` or `reshare`.
    pub kind: String,
    /// Wallet id.
    pub wallet_id: String,
    /// Status.
    pub status: String,
    /// The approval, when one is needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The signed result's fields (signature, digest, rawTransaction…).
    #[serde(flatten)]
    pub result: Option<serde_json::Map<String, Value>>,
    /// Why it failed or was rejected: `{code, message}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

fn row_to_view(row: &sqlx::any::AnyRow) -> AppResult<RequestView> {
    let result: Option<String> = row.try_get("result")?;
    let error: Option<String> = row.try_get("error")?;
    Ok(RequestView {
        request_id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        wallet_id: row.try_get("wallet_id")?,
        status: row.try_get("status")?,
        approval_id: row.try_get("approval_id")?,
        result: result
            .and_then(|text| serde_json::from_str::<serde_json::Map<String, Value>>(&text).ok()),
        error: error.and_then(|text| serde_json::from_str(&text).ok()),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Reads a request of `org`.
pub async fn view(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    org: &str,
    id: &str,
) -> AppResult<RequestView> {
    let row = sqlx::query("SELECT * FROM signing_requests WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(id)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| AppError::not_found("signing request"))?;
    row_to_view(&row)
}

/// What `submit` answered: the request, and whether it waits for approval.
#[derive(Debug)]
pub struct Submitted {
    /// The request as stored.
    pub view: RequestView,
    /// `true` when an existing request was returned for an idempotency key.
    pub replayed: bool,
}

/// What a new signing or resharing request asks.
pub struct NewRequest<'a> {
    /// The wallet.
    pub wallet: &'a Wallet,
    /// `sign` or `reshare`.
    pub kind: &'a str,
    /// `wallet.sign` or `wallet.reshare`.
    pub action: &'a str,
    /// What is signed and what the policy sees.
    pub plan: Plan,
    /// Same key, same request.
    pub idempotency_key: Option<&'a str>,
}

/// The existing request of an idempotency key, if any: `Ok(None)` when
/// the key is new, `409 idempotency_conflict` when it named another
/// request.
async fn idempotent_replay(
    tx: &mut Tx,
    caller: &Caller,
    key: &str,
    hash: &str,
) -> AppResult<Option<RequestView>> {
    let existing = sqlx::query(
        "SELECT id, request_hash FROM signing_requests \
         WHERE org_id = $1 AND requested_by = $2 AND idempotency_key = $3",
    )
    .bind(&caller.org)
    .bind(&caller.identity)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(existing) = existing else {
        return Ok(None);
    };
    let existing_hash: String = existing.try_get("request_hash")?;
    if existing_hash != hash {
        return Err(AppError::conflict(
            "idempotency_conflict",
            "this idempotencyKey was used for a different request",
        ));
    }
    let id: String = existing.try_get("id")?;
    Ok(Some(view(&mut **tx, &caller.org, &id).await?))
}

/// The common part of signing and resharing requests: idempotency, the
/// one authorisation path (role, policy on what is really signed, MFA),
/// storing the request and its approval, and the audit record. Returns
/// the stored request; the caller executes it when it is `queued`.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    request: NewRequest<'_>,
) -> AppResult<Submitted> {
    let NewRequest {
        wallet,
        kind,
        action,
        plan,
        idempotency_key,
    } = request;
    if let Some(key) = idempotency_key {
        if key.is_empty() || key.len() > 200 {
            return Err(AppError::invalid(
                "invalid_idempotency_key",
                "idempotencyKey is 1 to 200 characters",
            ));
        }
    }
    let db = &state.db;
    let hash = request_hash(
        &caller.org,
        &wallet.id,
        &caller.identity,
        kind,
        &plan.body,
        &plan.payload,
    );
    let resource = format!("wallet:{}", wallet.name);
    if let Some(replayed) = replay(state, caller, idempotency_key, &hash, &resource).await? {
        return Ok(replayed);
    }
    let verdict = gate::check(
        state,
        caller,
        gate::Ask {
            action,
            resource: &resource,
            value: plan.value.clone(),
            payload_kind: plan.kind,
        },
    )
    .await?;
    let ip = caller.ip.to_string();
    let event = |approved: &'static str, outcome: &'static str, detail: Value| AuditEvent {
        org: &caller.org,
        action,
        resource: &resource,
        identity: &caller.identity,
        ip: &ip,
        approved,
        outcome,
        request_id: &caller.request_id,
        detail,
    };
    if wallet.frozen {
        audit::append_alone(
            db,
            &event(
                "denied",
                "denied",
                json!({"reason": "wallet_frozen", "wallet": wallet.id}),
            ),
        )
        .await?;
        return Err(wallets::frozen_error(wallet));
    }
    let (rule, mfa, requirement) = match &verdict {
        Verdict::Allowed { rule, mfa, .. } => (rule.clone(), *mfa, None),
        Verdict::Approval { rule, requirement } => {
            (Some(rule.clone()), false, Some(requirement.clone()))
        }
    };
    let status = if requirement.is_some() {
        "pending_approval"
    } else {
        "queued"
    };
    let mut tx = db.begin().await?;
    let id = new_id("req");
    let now = now_ms();
    let approval_id = match &requirement {
        Some(requirement) => Some(
            approvals::insert(
                state,
                &mut tx,
                &NewApproval {
                    org: &caller.org,
                    subject: SUBJECT,
                    request_id: &id,
                    action,
                    resource: &resource,
                    request_hash: &hash,
                    requirement,
                    rule: rule.as_ref(),
                    requested_by: &caller.identity,
                },
            )
            .await?,
        ),
        None => None,
    };
    let inserted = sqlx::query(
        "INSERT INTO signing_requests (id, org_id, wallet_id, kind, requested_by, body, \
         request_hash, payload, status, approval_id, idempotency_key, result, error, attempts, \
         lease_owner, lease_until, created_at, updated_at, ip, mfa) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, NULL, 0, NULL, $12, $13, $13, \
         $14, $15)",
    )
    .bind(&id)
    .bind(&caller.org)
    .bind(&wallet.id)
    .bind(kind)
    .bind(&caller.identity)
    .bind(plan.body.to_string())
    .bind(&hash)
    .bind(plan.payload)
    .bind(status)
    .bind(approval_id.clone())
    .bind(idempotency_key.map(str::to_string))
    // A request allowed at once is reserved for the handler that answers
    // it (it runs it right after the commit); workers take it only if that
    // handler has not claimed it within the reservation.
    .bind(if status == "queued" {
        now + HANDLER_RESERVATION_MS
    } else {
        0
    })
    .bind(now)
    .bind(&ip)
    .bind(i64::from(mfa))
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        // The same idempotency key, sent twice at once: the other request
        // won the insert; answer it (or its conflict) like a replay.
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            tx.rollback().await?;
            if let Some(replayed) = replay(state, caller, idempotency_key, &hash, &resource).await?
            {
                return Ok(replayed);
            }
            return Err(AppError::conflict(
                "idempotency_conflict",
                "this idempotencyKey is in use by a concurrent request",
            ));
        }
        Err(error) => return Err(error.into()),
    }
    let mut detail = verdict.detail();
    if let Value::Object(map) = &mut detail {
        map.insert("signingRequest".into(), json!(id));
        map.insert("approval".into(), json!(approval_id));
        map.insert("wallet".into(), json!(wallet.id));
        map.insert("requestHash".into(), json!(hash));
        map.insert(
            "payloadKind".into(),
            json!(plan.kind.map(PayloadKind::as_str)),
        );
    }
    audit::append(
        db,
        &mut tx,
        &event(
            if requirement.is_some() {
                "pending"
            } else {
                "allowed"
            },
            if requirement.is_some() {
                "pending"
            } else {
                "accepted"
            },
            detail,
        ),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("custos_signing_requests_total", "kind" => kind.to_string(), "status" => status).increment(1);
    let view = view(db.pool(), &caller.org, &id).await?;
    Ok(Submitted {
        view,
        replayed: false,
    })
}

/// Answers an idempotent replay (audited as a read), if `key` names an
/// existing request.
async fn replay(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
    hash: &str,
    resource: &str,
) -> AppResult<Option<Submitted>> {
    let Some(key) = key else {
        return Ok(None);
    };
    let mut tx = state.db.begin().await?;
    let Some(view) = idempotent_replay(&mut tx, caller, key, hash).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
    audit::append(
        &state.db,
        &mut tx,
        &AuditEvent {
            org: &caller.org,
            action: "signing.read",
            resource,
            identity: &caller.identity,
            ip: &caller.ip.to_string(),
            approved: "not_required",
            outcome: "success",
            request_id: &caller.request_id,
            detail: json!({"signingRequest": view.request_id, "idempotentReplay": true}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Submitted {
        view,
        replayed: true,
    }))
}

/// `approvals.subject` of an approval of a signing or resharing request.
pub const SUBJECT: &str = "signing";

/// Signing and resharing requests as a subject of approvals: approved,
/// a request is queued for the worker (woken now); rejected or expired, it
/// is `rejected` with the reason.
pub struct Requests;

impl approvals::Subject for Requests {
    fn name(&self) -> &'static str {
        SUBJECT
    }

    fn id_field(&self) -> &'static str {
        "signingRequestId"
    }

    fn decided<'a>(
        &'a self,
        tx: &'a mut Tx,
        org: &'a str,
        request_id: &'a str,
        outcome: Outcome,
    ) -> BoxFuture<'a, AppResult<()>> {
        Box::pin(async move {
            let status = match outcome {
                Outcome::Approved => "queued",
                Outcome::Rejected | Outcome::Expired => "rejected",
            };
            sqlx::query(
                "UPDATE signing_requests SET status = $1, error = $2, updated_at = $3 \
                 WHERE id = $4 AND org_id = $5 AND status = 'pending_approval'",
            )
            .bind(status)
            .bind(outcome.error())
            .bind(now_ms())
            .bind(request_id)
            .bind(org)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }

    fn released<'a>(
        &'a self,
        state: &'a AppState,
        _request_id: &'a str,
    ) -> BoxFuture<'a, AppResult<()>> {
        state.wake_worker();
        Box::pin(async { Ok(()) })
    }
}

/// A claimed request, ready to run on the nodes.
struct Claimed {
    id: String,
    org: String,
    wallet: Wallet,
    kind: String,
    body: Value,
    payload: Vec<u8>,
    first_attempt: u32,
    claims: i64,
}

/// Moves `id` to `signing` for this replica, re-checking its approval
/// under a lock. `None`: someone else has it, or it is not runnable.
async fn claim(state: &AppState, id: &str, reserved: bool) -> AppResult<Option<Claimed>> {
    let db = &state.db;
    let now = now_ms();
    let mut tx = db.begin().await?;
    let claimed = sqlx::query(
        "UPDATE signing_requests SET status = 'signing', lease_owner = $1, lease_until = $2, \
         attempts = attempts + 1, updated_at = $3 \
         WHERE id = $4 AND ((status = 'queued' AND (lease_until <= $3 OR $5 = 1)) \
                            OR (status = 'signing' AND lease_until < $3))",
    )
    .bind(&state.replica)
    .bind(now + LEASE_MS)
    .bind(now)
    .bind(id)
    .bind(i64::from(reserved))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let row = sqlx::query("SELECT * FROM signing_requests WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let org: String = row.try_get("org_id")?;
    let wallet_id: String = row.try_get("wallet_id")?;
    let kind: String = row.try_get("kind")?;
    let claims: i64 = row.try_get("attempts")?;
    let body_text: String = row.try_get("body")?;
    let body: Value = serde_json::from_str(&body_text)
        .map_err(|error| AppError::internal("stored request", error))?;
    let wallet = wallets::load(&mut *tx, &org, &wallet_id).await?;
    let stored = Stored {
        org: &org,
        wallet: &wallet,
        kind: &kind,
        requested_by: row.try_get("requested_by")?,
        body,
        payload: row.try_get("payload")?,
        hash: row.try_get("request_hash")?,
        approval_id: row.try_get("approval_id")?,
        ip: row.try_get("ip")?,
        mfa: row.try_get::<i64, _>("mfa")? == 1,
    };
    let plan = match check_at_execution(state, &mut tx, &stored).await? {
        Ok(plan) => plan,
        Err((code, message)) => {
            sqlx::query(
                "UPDATE signing_requests SET status = 'rejected', error = $1, lease_owner = NULL, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(error_json(code, &message))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            audit::append(
                db,
                &mut tx,
                &AuditEvent {
                    org: &org,
                    action: if kind == "reshare" {
                        "wallet.reshare.execute"
                    } else {
                        "wallet.sign.execute"
                    },
                    resource: &format!("signing-request:{id}"),
                    identity: "system",
                    ip: "",
                    approved: "rejected",
                    outcome: "denied",
                    request_id: id,
                    detail: json!({"code": code, "message": message}),
                },
            )
            .await?;
            tx.commit().await?;
            return Ok(None);
        }
    };
    tx.commit().await?;
    let first_attempt =
        u32::try_from((claims - 1).max(0) * ATTEMPTS_PER_CLAIM).unwrap_or(u32::MAX - 64);
    Ok(Some(Claimed {
        id: id.to_string(),
        org,
        wallet,
        kind,
        body: plan.body,
        payload: plan.payload,
        first_attempt,
        claims,
    }))
}

/// A stored request, as its claim reads it.
struct Stored<'a> {
    org: &'a str,
    wallet: &'a Wallet,
    kind: &'a str,
    requested_by: String,
    body: Value,
    payload: Vec<u8>,
    hash: String,
    approval_id: Option<String>,
    ip: String,
    mfa: bool,
}

/// Everything a request must still satisfy when it runs, checked under
/// the claim's lock: what the nodes will sign is what the stored body
/// says and what the approvals bound to; the wallet is not frozen; the
/// org's policy, read now, still allows it (a deny or a stricter rule
/// added since stops it); and its approval still holds (votes, roles,
/// requester, expiry). `Ok(Err((code, message)))` refuses it.
async fn check_at_execution(
    state: &AppState,
    tx: &mut Tx,
    stored: &Stored<'_>,
) -> AppResult<Result<Plan, (&'static str, String)>> {
    let plan = if stored.kind == "reshare" {
        reshare_plan(stored.body.clone())
    } else {
        match plan_body(stored.wallet, stored.body.clone()) {
            Ok(plan) => plan,
            Err(error) => return Ok(Err(("request_tampered", error.message))),
        }
    };
    let recomputed = request_hash(
        stored.org,
        &stored.wallet.id,
        &stored.requested_by,
        stored.kind,
        &plan.body,
        &plan.payload,
    );
    if plan.payload != stored.payload || recomputed != stored.hash {
        return Ok(Err((
            "request_tampered",
            "the stored request does not match what was approved".into(),
        )));
    }
    if stored.wallet.frozen {
        return Ok(Err((
            "wallet_frozen",
            format!("wallet {} is frozen", stored.wallet.name),
        )));
    }
    let facts = RequestFacts {
        action: if stored.kind == "reshare" {
            "wallet.reshare".into()
        } else {
            "wallet.sign".into()
        },
        resource: format!("wallet:{}", stored.wallet.name),
        ip: stored.ip.parse().ok(),
        value: plan.value.clone(),
        payload_kind: plan.kind,
        unix_seconds: now_ms() / 1000,
    };
    let policies = gate::policies_in(state, tx, stored.org).await?;
    let now_required = match policy::evaluate(&policies, &facts) {
        Decision::Deny { reason, .. } => {
            return Ok(Err((
                "policy_denied",
                format!("denied by policy: {reason}"),
            )));
        }
        Decision::Allow { require_mfa, .. } => {
            if require_mfa && !stored.mfa {
                return Ok(Err((
                    "mfa_required",
                    "the policy now requires MFA, which the request was made without".into(),
                )));
            }
            None
        }
        Decision::RequireApproval {
            count,
            roles,
            require_mfa,
            ..
        } => {
            if stored.approval_id.is_none() {
                return Ok(Err((
                    "approval_required",
                    "the policy now requires an approval, which the request does not have".into(),
                )));
            }
            Some(Requirement {
                count,
                roles,
                require_mfa,
            })
        }
    };
    if let Some(approval_id) = &stored.approval_id {
        if let Err(why) = approvals::recheck(
            state,
            tx,
            approval_id,
            &stored.hash,
            &stored.requested_by,
            now_required.as_ref(),
        )
        .await?
        {
            return Ok(Err(("approval_invalid", why)));
        }
    }
    Ok(Ok(plan))
}

/// Extends this replica's lease while a run is in progress; the renewal
/// stops when the guard is dropped, however the run ends: finished, failed,
/// or its handler cancelled (client gone, timeout), so a request never
/// stays `signing` past its lease because a renewer outlived its run.
struct LeaseRenewer(tokio::task::JoinHandle<()>);

impl Drop for LeaseRenewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LeaseRenewer {
    fn spawn(renewal: impl std::future::Future<Output = ()> + Send + 'static) -> LeaseRenewer {
        LeaseRenewer(tokio::spawn(renewal))
    }
}

fn keep_lease(state: &AppState, id: &str) -> LeaseRenewer {
    let db = state.db.clone();
    let replica = state.replica.clone();
    let id = id.to_string();
    LeaseRenewer::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(
                u64::try_from(LEASE_MS / 3).unwrap_or(30_000),
            ))
            .await;
            let renewed = sqlx::query(
                "UPDATE signing_requests SET lease_until = $1 \
                 WHERE id = $2 AND lease_owner = $3 AND status = 'signing'",
            )
            .bind(now_ms() + LEASE_MS)
            .bind(&id)
            .bind(&replica)
            .execute(db.pool())
            .await;
            if !matches!(renewed, Ok(result) if result.rows_affected() == 1) {
                return;
            }
        }
    })
}

/// Claims and runs request `id` if it is runnable (`None` when it was
/// not: another replica has it, or it is not due).
pub async fn execute(state: &AppState, id: &str) -> AppResult<Option<()>> {
    execute_claimed(state, id, false).await
}

/// [`execute`] by the handler that accepted the request, within its
/// reservation.
pub async fn execute_reserved(state: &AppState, id: &str) -> AppResult<Option<()>> {
    execute_claimed(state, id, true).await
}

async fn execute_claimed(state: &AppState, id: &str, reserved: bool) -> AppResult<Option<()>> {
    let Some(claimed) = claim(state, id, reserved).await? else {
        return Ok(None);
    };
    let lease = keep_lease(state, id);
    let outcome = run_on_nodes(state, &claimed).await;
    drop(lease);
    finish(state, &claimed, outcome).await?;
    Ok(Some(()))
}

/// A node-level outcome.
enum RunOutcome {
    Signed(Value),
    Reshared {
        generation: u32,
        committee: Vec<custos_protocol::PartyId>,
        threshold: u16,
    },
    Retry(String),
    Failed(&'static str, String),
}

async fn run_on_nodes(state: &AppState, claimed: &Claimed) -> RunOutcome {
    let wallet = &claimed.wallet;
    let Some(request) = id_bytes(&claimed.id) else {
        return RunOutcome::Failed("internal", "request id".into());
    };
    let Some(wallet_id) = id_bytes(&wallet.id) else {
        return RunOutcome::Failed("internal", "wallet id".into());
    };
    if claimed.kind == "reshare" {
        return reshare_on_nodes(state, claimed, RequestId(request), WalletId(wallet_id)).await;
    }
    let path: Vec<u32> = serde_json::from_value(claimed.body["path"].clone()).unwrap_or_default();
    let committee = state.registry.healthy_first(&wallet.committee).await;
    let started = std::time::Instant::now();
    let Ok(coordinator) = state.coordinator() else {
        return RunOutcome::Retry("the coordinator is not started (sealed)".into());
    };
    let signed = coordinator
        .sign_from_attempt(
            RequestId(request),
            claimed.first_attempt,
            WalletId(wallet_id),
            KeyGeneration(wallet.generation),
            wallet.protocol.scheme(),
            &committee,
            wallet.threshold,
            claimed.payload.clone(),
            path.clone(),
        )
        .await;
    metrics::histogram!("custos_signing_seconds", "protocol" => wallet.protocol.name())
        .record(started.elapsed().as_secs_f64());
    match signed {
        Ok(signature) => match crate::engines::wallets::signatures::result(
            wallet,
            &claimed.body,
            &claimed.payload,
            &path,
            &signature,
        ) {
            Ok(result) => RunOutcome::Signed(result),
            Err(error) => RunOutcome::Failed("invalid_signature", error.message),
        },
        Err(error @ (CoordinatorError::NoQuorum { .. } | CoordinatorError::Unreachable { .. })) => {
            RunOutcome::Retry(error.to_string())
        }
        Err(error) => RunOutcome::Retry(error.to_string()),
    }
}

async fn reshare_on_nodes(
    state: &AppState,
    claimed: &Claimed,
    request: RequestId,
    wallet_id: WalletId,
) -> RunOutcome {
    let wallet = &claimed.wallet;
    let parse = || -> Option<(Vec<custos_protocol::PartyId>, u16)> {
        let nodes: Vec<String> = serde_json::from_value(claimed.body["nodes"].clone()).ok()?;
        let threshold: u16 = serde_json::from_value(claimed.body["threshold"].clone()).ok()?;
        let committee = nodes
            .iter()
            .map(|party| crate::engines::wallets::nodes::parse_party(party))
            .collect::<Option<Vec<_>>>()?;
        Some((committee, threshold))
    };
    let Some((new_committee, new_threshold)) = parse() else {
        return RunOutcome::Failed("internal", "stored reshare request".into());
    };
    let committee = state.registry.healthy_first(&wallet.committee).await;
    let dealers: Vec<_> = committee
        .iter()
        .copied()
        .take(usize::from(wallet.threshold))
        .collect();
    let Ok(coordinator) = state.coordinator() else {
        return RunOutcome::Retry("the coordinator is not started (sealed)".into());
    };
    let outcome = coordinator
        .reshare(
            request,
            wallet_id,
            wallet.protocol.curve(),
            KeyGeneration(wallet.generation),
            &wallet.committee,
            &dealers,
            &new_committee,
            new_threshold,
        )
        .await;
    match outcome {
        Ok(generation) => RunOutcome::Reshared {
            generation: generation.0,
            committee: new_committee,
            threshold: new_threshold,
        },
        Err(error) => RunOutcome::Failed("reshare_failed", error.to_string()),
    }
}

async fn finish(state: &AppState, claimed: &Claimed, outcome: RunOutcome) -> AppResult<()> {
    let db = &state.db;
    let now = now_ms();
    let mut tx = db.begin().await?;
    let (status, result, error, outcome_label, detail, retry_at) = match &outcome {
        RunOutcome::Signed(result) => (
            "signed",
            Some(result.to_string()),
            None,
            "success",
            json!({}),
            0,
        ),
        RunOutcome::Reshared {
            generation,
            committee,
            threshold,
        } => {
            sqlx::query(
                "UPDATE wallets SET generation = $1, committee = $2, threshold = $3 \
                 WHERE id = $4 AND org_id = $5",
            )
            .bind(i64::from(*generation))
            .bind(wallets::committee_json(committee)?)
            .bind(i64::from(*threshold))
            .bind(&claimed.wallet.id)
            .bind(&claimed.org)
            .execute(&mut *tx)
            .await?;
            (
                "signed",
                Some(json!({"generation": generation, "threshold": threshold}).to_string()),
                None,
                "success",
                json!({"generation": generation}),
                0,
            )
        }
        RunOutcome::Retry(message) if claimed.claims < MAX_CLAIMS => {
            tracing::warn!(request = %claimed.id, %message, "signing failed; will retry");
            (
                "queued",
                None,
                Some(error_json("retrying", message)),
                "retry",
                json!({"message": message}),
                now + retry_delay_ms(claimed.claims),
            )
        }
        RunOutcome::Retry(message) => (
            "failed",
            None,
            Some(error_json("signing_failed", message)),
            "failed",
            json!({"message": message}),
            0,
        ),
        RunOutcome::Failed(code, message) => (
            "failed",
            None,
            Some(error_json(code, message)),
            "failed",
            json!({"code": code, "message": message}),
            0,
        ),
    };
    let updated = sqlx::query(
        "UPDATE signing_requests SET status = $1, result = $2, error = $3, lease_owner = NULL, \
         lease_until = $4, updated_at = $5 \
         WHERE id = $6 AND status = 'signing' AND lease_owner = $7",
    )
    .bind(status)
    .bind(result)
    .bind(error)
    .bind(retry_at)
    .bind(now)
    .bind(&claimed.id)
    .bind(&state.replica)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        // The lease was lost (this replica stalled past it); whoever holds
        // it now finishes the request, with the same nodes' answer.
        tx.rollback().await?;
        tracing::warn!(request = %claimed.id, "lease lost before finishing");
        return Ok(());
    }
    let action = if claimed.kind == "reshare" {
        "wallet.reshare.execute"
    } else {
        "wallet.sign.execute"
    };
    audit::append(
        db,
        &mut tx,
        &AuditEvent {
            org: &claimed.org,
            action,
            resource: &format!("wallet:{}", claimed.wallet.name),
            identity: "system",
            ip: "",
            approved: "approved",
            outcome: outcome_label,
            request_id: &claimed.id,
            detail: with_replica(detail, &state.replica),
        },
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("custos_signing_outcomes_total", "status" => status).increment(1);
    Ok(())
}

/// Adds the executing replica to an audit detail.
fn with_replica(mut detail: Value, replica: &str) -> Value {
    if let Value::Object(map) = &mut detail {
        map.insert("replica".into(), json!(replica));
    }
    detail
}

/// Takes back the leases this replica held before it restarted.
pub async fn recover_own_leases(state: &AppState) -> AppResult<u64> {
    let recovered = sqlx::query(
        "UPDATE signing_requests SET status = 'queued', lease_owner = NULL, lease_until = 0 \
         WHERE status = 'signing' AND lease_owner = $1",
    )
    .bind(&state.replica)
    .execute(state.db.pool())
    .await?
    .rows_affected();
    if recovered > 0 {
        tracing::info!(
            recovered,
            "took back requests this replica was signing before it stopped"
        );
    }
    Ok(recovered)
}

/// The signing worker's pass (every replica runs it): runs queued
/// requests and requests whose lease ran out, at most [`PASS_LIMIT`] at a
/// time, concurrently.
pub struct Worker;

/// Requests one pass of [`Worker`] takes at most.
pub const PASS_LIMIT: i64 = 64;

impl crate::kernel::engine::Job for Worker {
    fn name(&self) -> &'static str {
        "signing"
    }

    fn pass<'a>(&'a self, state: &'a Arc<AppState>) -> BoxFuture<'a, AppResult<usize>> {
        Box::pin(run_due(state, PASS_LIMIT))
    }
}

/// Runs what is runnable: at most `limit` requests, concurrently.
pub async fn run_due(state: &Arc<AppState>, limit: i64) -> AppResult<usize> {
    let now = now_ms();
    let runnable = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM signing_requests \
         WHERE (status = 'queued' AND lease_until <= $1) OR (status = 'signing' AND lease_until < $1) \
         ORDER BY created_at LIMIT {}",
        limit.clamp(1, 256)
    )))
    .bind(now)
    .fetch_all(state.db.pool())
    .await?;
    let ids: Vec<String> = runnable
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    let count = ids.len();
    let runs = ids.into_iter().map(|id| {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(error) = execute(&state, &id).await {
                tracing::warn!(request = %id, %error, "executing a request failed");
            }
        })
    });
    futures::future::join_all(runs).await;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::LeaseRenewer;

    /// A handler that is dropped (its client went away, or it timed out)
    /// drops its renewer with it: the lease then runs out and another
    /// worker takes the request, instead of a renewer keeping it `signing`
    /// forever.
    #[tokio::test]
    async fn a_dropped_handler_stops_renewing_its_lease() {
        let renewals = Arc::new(AtomicU64::new(0));
        let counted = renewals.clone();
        let handler = tokio::spawn(async move {
            let _lease = LeaseRenewer::spawn(async move {
                loop {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            // The run on the nodes, which never ends here.
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(renewals.load(Ordering::SeqCst) > 0, "the renewer ran");
        handler.abort();
        let _ = handler.await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after_cancel = renewals.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            renewals.load(Ordering::SeqCst),
            after_cancel,
            "the renewer outlived its cancelled handler"
        );
    }
}
