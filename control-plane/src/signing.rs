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
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::audit::{self, AuditEvent};
use crate::auth::{Caller, Role};
use crate::chain::{self, Eip1559Transaction, EvmTransactionInput};
use crate::db::{id_bytes, new_id, now_ms, Tx};
use crate::error::{AppError, AppResult};
use crate::gate::{self, Verdict};
use crate::policy::{self, Decision, Movement, PayloadKind, RequestFacts, ValueFacts};
use crate::state::AppState;
use crate::wallets::{self, Protocol, Wallet};

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

/// The body of `POST /api/v1/wallets/{id}/sign`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignInput {
    /// An EVM EIP-1559 transaction.
    #[serde(default)]
    pub transaction: Option<EvmTransactionInput>,
    /// A message: UTF-8 text unless `encoding` says hex or base64.
    #[serde(default)]
    pub message: Option<String>,
    /// `utf8` (default), `hex` or `base64`.
    #[serde(default)]
    pub encoding: Option<String>,
    /// A bare 32-byte digest, 0x-hex.
    #[serde(default)]
    pub digest: Option<String>,
    /// Non-hardened HD path, `m/0/5`.
    #[serde(default)]
    pub derivation_path: Option<String>,
    /// Same key, same request: the first result is returned.
    #[serde(default)]
    pub idempotency_key: Option<String>,
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
    match crate::evm_calls::movements(&transaction.to, &transaction.value, &transaction.data) {
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

/// An approval rule's requirement, as stored with the approval.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// Approvals needed.
    pub count: u32,
    /// Roles that may approve.
    pub roles: Vec<String>,
    /// Approvers must give a TOTP code.
    pub require_mfa: bool,
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
            insert_approval(
                state,
                &mut tx,
                &NewApproval {
                    org: &caller.org,
                    subject: SUBJECT_SIGNING,
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
pub const SUBJECT_SIGNING: &str = "signing";
/// `approvals.subject` of an approval of a stored operation
/// (`crate::operations`).
pub const SUBJECT_OPERATION: &str = "operation";

/// An approval to create.
pub struct NewApproval<'a> {
    /// The org.
    pub org: &'a str,
    /// [`SUBJECT_SIGNING`] or [`SUBJECT_OPERATION`].
    pub subject: &'a str,
    /// The signing request's or the operation's id.
    pub request_id: &'a str,
    /// The action approved.
    pub action: &'a str,
    /// Its resource.
    pub resource: &'a str,
    /// The hash of the exact request.
    pub request_hash: &'a str,
    /// Who must approve.
    pub requirement: &'a Requirement,
    /// The rule that asked for it.
    pub rule: Option<&'a policy::RuleRef>,
    /// The requester (who may not approve).
    pub requested_by: &'a str,
}

/// Stores a pending approval inside `tx`; returns its id.
pub async fn insert_approval(
    state: &AppState,
    tx: &mut Tx,
    approval: &NewApproval<'_>,
) -> AppResult<String> {
    let approval_id = new_id("apr");
    let now = now_ms();
    sqlx::query(
        "INSERT INTO approvals (id, org_id, request_id, action, resource, request_hash, \
         required, roles, require_mfa, rule, requested_by, status, expires_at, created_at, \
         subject) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12, $13, $14)",
    )
    .bind(&approval_id)
    .bind(approval.org)
    .bind(approval.request_id)
    .bind(approval.action)
    .bind(approval.resource)
    .bind(approval.request_hash)
    .bind(i64::from(approval.requirement.count))
    .bind(serde_json::to_string(&approval.requirement.roles).unwrap_or_default())
    .bind(i64::from(approval.requirement.require_mfa))
    .bind(serde_json::to_string(&approval.rule).unwrap_or_default())
    .bind(approval.requested_by)
    .bind(now + i64::try_from(state.config.approval_ttl_secs).unwrap_or(86_400) * 1000)
    .bind(now)
    .bind(approval.subject)
    .execute(&mut **tx)
    .await?;
    Ok(approval_id)
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

fn error_json(code: &str, message: &str) -> String {
    json!({"code": code, "message": message}).to_string()
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
        if let Err(why) = recheck_approval(
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

/// The keyring record kind of vote seals.
const VOTE_RECORD: &str = "approval_vote";

/// What a vote's seal covers: everything that makes it count.
fn vote_content(
    approval_id: &str,
    identity: &str,
    decision: &str,
    mfa: bool,
    request_hash: &str,
) -> Vec<u8> {
    json!({
        "approval": approval_id,
        "identity": identity,
        "decision": decision,
        "mfa": mfa,
        "requestHash": request_hash,
    })
    .to_string()
    .into_bytes()
}

/// The approval a vote belongs to, as [`count_valid_votes`] needs it.
pub struct Ballot<'a> {
    /// The approval's id.
    pub approval_id: &'a str,
    /// Its org.
    pub org: &'a str,
    /// The hash of the request it approves.
    pub request_hash: &'a str,
    /// The requester.
    pub requested_by: &'a str,
    /// When the approval was made (the start of the request's window).
    pub window_start: i64,
}

/// Counts the valid approving votes of an approval: sealed by the keyring
/// for exactly this approval, identity, decision and request (a vote a
/// database writer added or changed does not count), not by the
/// requester, by an active identity holding one of `roles`, with MFA when
/// required. Separation of duties: identities created during the
/// approval's window (since the request was made) count once per creator,
/// and not at all when the requester created them; so one admin who makes
/// identities to approve a request gets at most one vote out of them.
pub async fn count_valid_votes(
    state: &AppState,
    tx: &mut Tx,
    ballot: &Ballot<'_>,
    requirement: &Requirement,
) -> AppResult<i64> {
    let votes = sqlx::query(
        "SELECT v.identity_id, v.mfa, v.seal, i.id, i.org_id, i.role, i.platform_admin, \
         i.status, i.created_by, i.created_at, i.authority \
         FROM approval_votes v JOIN identities i ON i.id = v.identity_id \
         WHERE v.approval_id = $1 AND v.decision = 'approve'",
    )
    .bind(ballot.approval_id)
    .fetch_all(&mut **tx)
    .await?;
    let mut principals: Vec<String> = Vec::new();
    for vote in votes {
        let voter: String = vote.try_get("identity_id")?;
        let role: String = vote.try_get("role")?;
        let status: String = vote.try_get("status")?;
        let created_by: String = vote.try_get("created_by")?;
        let created_at: i64 = vote.try_get("created_at")?;
        let mfa = vote.try_get::<i64, _>("mfa")? == 1;
        let seal: Option<Vec<u8>> = vote.try_get("seal")?;
        let made_in_window = created_at >= ballot.window_start;
        if voter == ballot.requested_by
            || (made_in_window && created_by == ballot.requested_by)
            || status != "active"
            || !requirement.roles.contains(&role)
            || (requirement.require_mfa && !mfa)
        {
            continue;
        }
        let sealed_as_stored = match seal {
            Some(seal) => state
                .keyring
                .open_record(
                    tx,
                    ballot.org,
                    VOTE_RECORD,
                    &format!("{}/{voter}", ballot.approval_id),
                    &seal,
                )
                .await
                .is_ok_and(|content| {
                    content.as_slice()
                        == vote_content(
                            ballot.approval_id,
                            &voter,
                            "approve",
                            mfa,
                            ballot.request_hash,
                        )
                        .as_slice()
                }),
            None => false,
        };
        let authority = crate::authority::Authority::from_row(&vote, "")?;
        let authority_seal: Option<Vec<u8>> = vote.try_get("authority")?;
        let sealed_as_stored = sealed_as_stored
            && crate::authority::holds(&state.keyring, tx, &authority, authority_seal.as_deref())
                .await;
        if !sealed_as_stored {
            tracing::warn!(
                approval = ballot.approval_id,
                identity = %voter,
                "a vote whose seal does not match its row is not counted"
            );
            continue;
        }
        let principal = if made_in_window {
            format!("creator:{created_by}")
        } else {
            voter
        };
        if !principals.contains(&principal) {
            principals.push(principal);
        }
    }
    Ok(i64::try_from(principals.len()).unwrap_or(i64::MAX))
}

/// Re-checks an approval under a row lock when what it approved runs:
/// approved, for this exact request, not expired, and still carried by
/// enough valid votes ([`count_valid_votes`]) for the requirement stored
/// with it and for `now_required`, what the policy asks today (if
/// stricter). `Ok(Err(why))` when the approval does not allow execution.
pub async fn recheck_approval(
    state: &AppState,
    tx: &mut Tx,
    approval_id: &str,
    request_hash: &str,
    requested_by: &str,
    now_required: Option<&Requirement>,
) -> AppResult<Result<(), String>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM approvals WHERE id = $1{}",
        state.db.for_update()
    )))
    .bind(approval_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(Err("the approval is missing".into()));
    };
    let status: String = row.try_get("status")?;
    if status != "approved" {
        return Ok(Err(format!("the approval is {status}")));
    }
    if row.try_get::<String, _>("request_hash")? != request_hash {
        return Ok(Err("the approval was given for another request".into()));
    }
    if row.try_get::<String, _>("requested_by")? != requested_by {
        return Ok(Err("the approval names another requester".into()));
    }
    if row.try_get::<i64, _>("expires_at")? <= now_ms() {
        return Ok(Err("the approval expired before the request ran".into()));
    }
    let stored = Requirement {
        count: u32::try_from(row.try_get::<i64, _>("required")?).unwrap_or(u32::MAX),
        roles: serde_json::from_str(&row.try_get::<String, _>("roles")?).unwrap_or_default(),
        require_mfa: row.try_get::<i64, _>("require_mfa")? == 1,
    };
    let org: String = row.try_get("org_id")?;
    let ballot = Ballot {
        approval_id,
        org: &org,
        request_hash,
        requested_by,
        window_start: row.try_get("created_at")?,
    };
    for requirement in std::iter::once(&stored).chain(now_required) {
        let valid = count_valid_votes(state, tx, &ballot, requirement).await?;
        if valid < i64::from(requirement.count) {
            return Ok(Err(format!(
                "{valid} valid approvals of {} required (roles {})",
                requirement.count,
                requirement.roles.join(", ")
            )));
        }
    }
    Ok(Ok(()))
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
        Ok(signature) => match crate::signatures::result(
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
            .map(|party| crate::nodes::parse_party(party))
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

/// Approves or rejects an approval. Returns the approval afterwards.
pub async fn vote(
    state: &AppState,
    caller: &Caller,
    approval_id: &str,
    approve: bool,
    totp: Option<&str>,
) -> AppResult<Value> {
    let db = &state.db;
    let now = now_ms();
    let mut tx = db.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM approvals WHERE id = $1 AND org_id = $2{}",
        db.for_update()
    )))
    .bind(approval_id)
    .bind(&caller.org)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| AppError::not_found("approval"))?;
    let status: String = row.try_get("status")?;
    let requested_by: String = row.try_get("requested_by")?;
    let request_id: String = row.try_get("request_id")?;
    let subject: String = row.try_get("subject")?;
    let resource: String = row.try_get("resource")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    let roles: Vec<String> =
        serde_json::from_str(&row.try_get::<String, _>("roles")?).unwrap_or_default();
    let require_mfa = row.try_get::<i64, _>("require_mfa")? == 1;
    let required: i64 = row.try_get("required")?;
    let refuse = |error: AppError| Err::<Value, AppError>(error);
    if status != "pending" {
        return refuse(AppError::conflict(
            "approval_not_pending",
            format!("the approval is {status}"),
        ));
    }
    if expires_at <= now {
        expire_one(state, &mut tx, approval_id).await?;
        tx.commit().await?;
        return refuse(AppError::conflict(
            "approval_expired",
            "the approval has expired",
        ));
    }
    if caller.identity == requested_by {
        return refuse(AppError::forbidden(
            "self_approval",
            "the requester cannot approve or reject their own request",
        ));
    }
    if !roles
        .iter()
        .any(|role| Role::parse(role) == Some(caller.role))
    {
        return refuse(AppError::forbidden(
            "role_not_allowed",
            format!("this approval needs one of the roles {}", roles.join(", ")),
        ));
    }
    let mut mfa = false;
    if require_mfa && approve {
        crate::mfa::check(state, &mut tx, caller, totp).await?;
        mfa = true;
    } else if let Some(code) = totp {
        crate::mfa::check(state, &mut tx, caller, Some(code)).await?;
        mfa = true;
    }
    let requirement = Requirement {
        count: u32::try_from(required).unwrap_or(u32::MAX),
        roles: roles.clone(),
        require_mfa,
    };
    let window_start: i64 = row.try_get("created_at")?;
    if approve {
        let voter = sqlx::query("SELECT created_by, created_at FROM identities WHERE id = $1")
            .bind(&caller.identity)
            .fetch_one(&mut *tx)
            .await?;
        let created_by: String = voter.try_get("created_by")?;
        if voter.try_get::<i64, _>("created_at")? >= window_start && created_by == requested_by {
            return refuse(AppError::forbidden(
                "approver_not_independent",
                "an identity the requester created after the request cannot approve it",
            ));
        }
    }
    let decision = if approve { "approve" } else { "reject" };
    let request_hash: String = row.try_get("request_hash")?;
    let seal = state
        .keyring
        .seal_record(
            &mut tx,
            &caller.org,
            VOTE_RECORD,
            &format!("{approval_id}/{}", caller.identity),
            &vote_content(approval_id, &caller.identity, decision, mfa, &request_hash),
        )
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO approval_votes (approval_id, identity_id, decision, mfa, created_at, seal) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(approval_id)
    .bind(&caller.identity)
    .bind(decision)
    .bind(i64::from(mfa))
    .bind(now)
    .bind(seal)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return refuse(AppError::conflict(
                "already_voted",
                "this identity already voted",
            ))
        }
        Err(error) => return Err(error.into()),
    }
    let ballot = Ballot {
        approval_id,
        org: &caller.org,
        request_hash: &request_hash,
        requested_by: &requested_by,
        window_start,
    };
    let approvals = count_valid_votes(state, &mut tx, &ballot, &requirement).await?;
    let new_status = if !approve {
        "rejected"
    } else if approvals >= required {
        "approved"
    } else {
        "pending"
    };
    if new_status != "pending" {
        sqlx::query("UPDATE approvals SET status = $1 WHERE id = $2")
            .bind(new_status)
            .bind(approval_id)
            .execute(&mut *tx)
            .await?;
        let (request_status, error) = if new_status == "approved" {
            ("queued", None)
        } else {
            (
                "rejected",
                Some(error_json("rejected", "an approver rejected the request")),
            )
        };
        if subject == SUBJECT_OPERATION {
            crate::operations::decided(&mut tx, &caller.org, &request_id, new_status, error)
                .await?;
        } else {
            sqlx::query(
                "UPDATE signing_requests SET status = $1, error = $2, updated_at = $3 \
                 WHERE id = $4 AND org_id = $5 AND status = 'pending_approval'",
            )
            .bind(request_status)
            .bind(error)
            .bind(now)
            .bind(&request_id)
            .bind(&caller.org)
            .execute(&mut *tx)
            .await?;
        }
    }
    audit::append(
        db,
        &mut tx,
        &AuditEvent {
            org: &caller.org,
            action: if approve { "approval.approve" } else { "approval.reject" },
            resource: &format!("approval:{approval_id}"),
            identity: &caller.identity,
            ip: &caller.ip.to_string(),
            approved: new_status,
            outcome: "success",
            request_id: &caller.request_id,
            detail: json!({subject_key(&subject): request_id, "resource": resource, "mfa": mfa, "approvals": approvals}),
        },
    )
    .await?;
    tx.commit().await?;
    if new_status == "approved" {
        if subject == SUBJECT_OPERATION {
            // The approver's answer carries the outcome; a failure is
            // recorded on the operation (and retried by the worker if the
            // process dies first), not returned as this vote's error.
            crate::operations::execute(state, &request_id).await?;
        } else {
            state.wake_worker();
        }
    }
    approval_view(db, &caller.org, approval_id).await
}

async fn expire_one(state: &AppState, tx: &mut Tx, approval_id: &str) -> AppResult<()> {
    let now = now_ms();
    let row = sqlx::query("SELECT org_id, request_id, subject FROM approvals WHERE id = $1")
        .bind(approval_id)
        .fetch_one(&mut **tx)
        .await?;
    let org: String = row.try_get("org_id")?;
    let request_id: String = row.try_get("request_id")?;
    let subject: String = row.try_get("subject")?;
    let updated =
        sqlx::query("UPDATE approvals SET status = 'expired' WHERE id = $1 AND status = 'pending'")
            .bind(approval_id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    if updated == 0 {
        return Ok(());
    }
    let error = error_json(
        "approval_expired",
        "the approval expired before enough approvers approved",
    );
    if subject == SUBJECT_OPERATION {
        crate::operations::decided(tx, &org, &request_id, "expired", Some(error)).await?;
    } else {
        sqlx::query(
            "UPDATE signing_requests SET status = 'rejected', error = $1, updated_at = $2 \
             WHERE id = $3 AND status = 'pending_approval'",
        )
        .bind(error)
        .bind(now)
        .bind(&request_id)
        .execute(&mut **tx)
        .await?;
    }
    audit::append(
        &state.db,
        tx,
        &AuditEvent {
            org: &org,
            action: "approval.expire",
            resource: &format!("approval:{approval_id}"),
            identity: "system",
            ip: "",
            approved: "expired",
            outcome: "success",
            request_id: &request_id,
            detail: json!({}),
        },
    )
    .await?;
    Ok(())
}

/// The field that names an approval's subject: `signingRequestId` or
/// `operationId`.
fn subject_key(subject: &str) -> &'static str {
    if subject == SUBJECT_OPERATION {
        "operationId"
    } else {
        "signingRequestId"
    }
}

/// An approval as the API shows it.
pub async fn approval_view(db: &crate::db::Db, org: &str, id: &str) -> AppResult<Value> {
    let row = sqlx::query("SELECT * FROM approvals WHERE id = $1 AND org_id = $2")
        .bind(id)
        .bind(org)
        .fetch_optional(db.pool())
        .await?
        .ok_or_else(|| AppError::not_found("approval"))?;
    approval_json(db, &row).await
}

async fn approval_json(db: &crate::db::Db, row: &sqlx::any::AnyRow) -> AppResult<Value> {
    let id: String = row.try_get("id")?;
    let votes = sqlx::query(
        "SELECT identity_id, decision, mfa, created_at FROM approval_votes \
         WHERE approval_id = $1 ORDER BY created_at",
    )
    .bind(&id)
    .fetch_all(db.pool())
    .await?;
    let mut approvals = Vec::new();
    for vote in votes {
        approvals.push(json!({
            "identity": vote.try_get::<String, _>("identity_id")?,
            "decision": vote.try_get::<String, _>("decision")?,
            "mfa": vote.try_get::<i64, _>("mfa")? == 1,
            "at": vote.try_get::<i64, _>("created_at")?,
        }));
    }
    let roles: Vec<String> =
        serde_json::from_str(&row.try_get::<String, _>("roles")?).unwrap_or_default();
    let rule: Value =
        serde_json::from_str(&row.try_get::<String, _>("rule")?).unwrap_or(Value::Null);
    let subject: String = row.try_get("subject")?;
    Ok(json!({
        "id": id,
        subject_key(&subject): row.try_get::<String, _>("request_id")?,
        "action": row.try_get::<String, _>("action")?,
        "resource": row.try_get::<String, _>("resource")?,
        "requestedBy": row.try_get::<String, _>("requested_by")?,
        "requestHash": row.try_get::<String, _>("request_hash")?,
        "required": {"count": row.try_get::<i64, _>("required")?, "roles": roles, "requireMFA": row.try_get::<i64, _>("require_mfa")? == 1},
        "rule": rule,
        "approvals": approvals,
        "status": row.try_get::<String, _>("status")?,
        "expiresAt": row.try_get::<i64, _>("expires_at")?,
        "createdAt": row.try_get::<i64, _>("created_at")?,
    }))
}

/// Approvals of `org`, optionally by status.
pub async fn list_approvals(
    db: &crate::db::Db,
    org: &str,
    status: Option<&str>,
) -> AppResult<Vec<Value>> {
    let rows = match status {
        Some(status) => {
            sqlx::query(
                "SELECT * FROM approvals WHERE org_id = $1 AND status = $2 ORDER BY created_at",
            )
            .bind(org)
            .bind(status)
            .fetch_all(db.pool())
            .await?
        }
        None => {
            sqlx::query("SELECT * FROM approvals WHERE org_id = $1 ORDER BY created_at")
                .bind(org)
                .fetch_all(db.pool())
                .await?
        }
    };
    let mut items = Vec::new();
    for row in rows {
        items.push(approval_json(db, &row).await?);
    }
    Ok(items)
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

/// One pass of the background worker: expire approvals, then run what is
/// runnable (at most `limit` requests, concurrently).
pub async fn work_once(state: &Arc<AppState>, limit: i64) -> AppResult<usize> {
    let now = now_ms();
    let expired = sqlx::query(
        "SELECT id FROM approvals WHERE status = 'pending' AND expires_at <= $1 LIMIT 100",
    )
    .bind(now)
    .fetch_all(state.db.pool())
    .await?;
    for row in expired {
        let id: String = row.try_get("id")?;
        let mut tx = state.db.begin().await?;
        expire_one(state, &mut tx, &id).await?;
        tx.commit().await?;
    }
    crate::operations::execute_approved(state).await?;
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

/// The worker loop: wakes every second or when notified.
pub async fn worker(state: Arc<AppState>) {
    loop {
        // Sealed: nothing runs until an operator unseals (which wakes this).
        if state.keyring.is_sealed() {
            tokio::select! {
                _ = state.worker_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        if let Err(error) = work_once(&state, 64).await {
            tracing::warn!(%error, "signing worker pass failed");
        }
        tokio::select! {
            _ = state.worker_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
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
