//! The wallets engine's routes: signer nodes and committees, wallets,
//! signing and resharing requests, freezing.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::engines::wallets::signing::{self, SignInput};
use crate::engines::wallets::{self, Protocol, Wallet};
use crate::kernel::auth::Caller;
use crate::kernel::db::{new_id, now_ms};
use crate::kernel::error::{AppError, AppResult, ErrorKind};
use crate::kernel::gate;
use crate::kernel::state::AppState;

use crate::http::openapi::{schema_from, Pending};
use crate::http::{
    audit_event, audited_read, authorize, check_name, optional_body, record, timed, ApiJson,
    ApiRouter,
};

/// The wallets engine's routes: nodes, wallets, signing requests,
/// freezing, and share backups (`backup_routes`).
pub fn routes() -> ApiRouter {
    let timed_routes = timed(
        ApiRouter::new()
            .routes(routes!(list_nodes))
            .routes(routes!(create_wallet, list_wallets))
            .routes(routes!(get_wallet))
            .routes(routes!(wallet_address))
            .routes(routes!(sign))
            .routes(routes!(reshare))
            .routes(routes!(freeze_wallet))
            .routes(routes!(unfreeze_wallet))
            .routes(routes!(get_signing_request)),
    );
    // Preparing an ECDSA committee generates Paillier keys: minutes.
    let slow = ApiRouter::new().routes(routes!(prepare_committee, list_committees));
    timed_routes
        .merge(slow)
        .merge(super::backup_routes::routes())
}

/// What a signing or resharing request answers (`request_answer`).
const REQUEST_ANSWER: &str = "The request: `{requestId, kind, walletId, status, approvalId?, \
    error?, createdAt, updatedAt}` and, once signed, the result's fields (`signature`, \
    `digest`, `rawTransaction`...)";

/// Signer nodes and their health.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes",
    responses(
        (status = 200, description = "`{items: [{id, name, peerId, address, status, lastSeen}]}`; \
            status is `healthy`, `unreachable` or `unknown`", body = Value),
    ))]
async fn list_nodes(State(state): State<Arc<AppState>>, caller: Caller) -> AppResult<Json<Value>> {
    audited_read(&state, &caller, "node.read", "node:*").await?;
    Ok(Json(
        json!({"items": state.registry.views(&state.db).await?}),
    ))
}

/// ECDSA committees and their aux-info preparation: ready, runs tried, the
/// last failure.
///
/// Every committee with its aux-info preparation (ready, runs tried, the
/// last failure, since when it runs).
#[utoipa::path(get, path = "/api/v1/nodes/committees", tag = "nodes",
    responses(
        (status = 200, description = "`{items: [{nodes, ready, runs, lastError, preparingSince, \
            updatedAt}]}`", body = Value),
    ))]
async fn list_committees(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> AppResult<Json<Value>> {
    audited_read(&state, &caller, "node.read", "node:*").await?;
    Ok(Json(
        json!({"items": crate::engines::wallets::nodes::committees(&state.db, &state.registry).await?}),
    ))
}

/// The nodes of an ECDSA committee.
#[derive(Deserialize, ToSchema)]
#[schema(as = CommitteeRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CommitteeBody {
    /// Node names, at least 2, each once.
    nodes: Vec<String>,
}

fn resolve_nodes(state: &AppState, names: &[String]) -> AppResult<Vec<custos_protocol::PartyId>> {
    let mut parties = Vec::new();
    for name in names {
        let node = state
            .registry
            .find(name)
            .ok_or_else(|| AppError::invalid("unknown_node", format!("no node named {name}")))?;
        if parties.contains(&node.party) {
            return Err(AppError::invalid(
                "duplicate_node",
                format!("{name} is named twice"),
            ));
        }
        parties.push(node.party);
    }
    parties.sort();
    Ok(parties)
}

/// Prepare ECDSA aux info for a committee (minutes; a failed run is tried
/// again under a fresh run id).
#[utoipa::path(post, path = "/api/v1/nodes/committees", tag = "nodes",
    request_body = CommitteeBody,
    responses(
        (status = 200, description = "`{nodes, ready: true}`", body = Value),
    ))]
async fn prepare_committee(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CommitteeBody>,
) -> AppResult<Json<Value>> {
    let committee = resolve_nodes(&state, &body.nodes)?;
    if committee.len() < 2 {
        return Err(AppError::invalid(
            "invalid_committee",
            "a committee has at least 2 nodes",
        ));
    }
    // Aux info costs every node minutes of CPU: platform admins only.
    if !caller.platform_admin {
        return Err(AppError::forbidden(
            "forbidden",
            "only a platform admin prepares committees",
        ));
    }
    authorize(&state, &caller, "node.committee", "node:*").await?;
    crate::engines::wallets::nodes::prepare_committee(&state.db, &state.coordinator()?, &committee)
        .await?;
    audit_event(
        &state,
        &caller,
        "node.committee",
        "node:*",
        "allowed",
        "success",
        json!({"nodes": body.nodes}),
    )
    .await?;
    Ok(Json(json!({"nodes": body.nodes, "ready": true})))
}

// ---- Wallets ----

/// A new wallet: its protocol, threshold and holders.
#[derive(Deserialize, ToSchema)]
#[schema(as = WalletRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WalletBody {
    /// The wallet's name, unique in the org.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    name: String,
    #[schema(schema_with = protocol_schema)]
    protocol: String,
    #[serde(default)]
    #[schema(schema_with = chain_schema)]
    chain: Option<String>,
    /// Signers needed: 2 to the number of holders.
    #[schema(minimum = 2, maximum = 65535)]
    threshold: u16,
    /// Holders; without `nodes`, that many registered nodes (healthy ones
    /// first).
    #[serde(default)]
    #[schema(minimum = 2, maximum = 65535)]
    parties: Option<u16>,
    /// Node names of the holders.
    #[serde(default)]
    nodes: Option<Vec<String>>,
}

/// The protocols `Protocol::parse` knows.
fn protocol_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema_from(json!({
        "type": "string",
        "enum": ["cggmp21", "frost-taproot", "frost-ed25519"],
        "description": "cggmp21 (ECDSA), frost-taproot or frost-ed25519",
    }))
}

/// The chains `Chain::parse` knows.
fn chain_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    schema_from(json!({
        "type": ["string", "null"],
        "enum": ["ethereum", "polygon", "bitcoin", "bitcoin-testnet", "solana", null],
        "description": "The chain whose addresses and transactions it makes; default: the \
            protocol's own",
    }))
}

/// Create an MPC wallet (DKG).
#[utoipa::path(post, path = "/api/v1/wallets", tag = "wallets",
    request_body = WalletBody,
    responses(
        (status = 201, description = "The new wallet", body = wallets::WalletView),
    ))]
async fn create_wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<WalletBody>,
) -> AppResult<(StatusCode, Json<wallets::WalletView>)> {
    check_name(&body.name, "wallet")?;
    let protocol = Protocol::parse(&body.protocol)?;
    let chain = match &body.chain {
        Some(name) => crate::engines::wallets::chain::Chain::parse(name)
            .map_err(|error| AppError::invalid(error.code(), error.to_string()))?,
        None => protocol.default_chain(),
    };
    if !protocol.supports(chain) {
        return Err(AppError::invalid(
            "unsupported_chain",
            format!(
                "{} wallets do not sign for {}",
                protocol.name(),
                chain.name()
            ),
        ));
    }
    let committee = match &body.nodes {
        Some(names) => {
            let committee = resolve_nodes(&state, names)?;
            if body
                .parties
                .is_some_and(|parties| usize::from(parties) != committee.len())
            {
                return Err(AppError::invalid(
                    "invalid_parties",
                    "parties differs from the number of nodes named",
                ));
            }
            committee
        }
        None => {
            let parties = usize::from(body.parties.unwrap_or(0));
            if parties < 2 || parties > state.registry.nodes().len() {
                return Err(AppError::invalid(
                    "invalid_parties",
                    format!(
                        "parties is between 2 and the {} registered nodes",
                        state.registry.nodes().len()
                    ),
                ));
            }
            let all: Vec<_> = state
                .registry
                .nodes()
                .iter()
                .map(|node| node.party)
                .collect();
            let ordered = state.registry.healthy_first(&all).await;
            let mut chosen: Vec<_> = ordered.into_iter().take(parties).collect();
            chosen.sort();
            chosen
        }
    };
    // A threshold of 1 would let any single node sign alone: no wallet
    // protocol here accepts it (and FROST's DKG fails on it).
    if body.threshold < 2 || usize::from(body.threshold) > committee.len() {
        return Err(AppError::invalid(
            "invalid_threshold",
            "threshold is between 2 and parties",
        ));
    }
    let resource = format!("wallet:{}", body.name);
    authorize(&state, &caller, "wallet.create", &resource).await?;
    for party in &committee {
        if !state.registry.is_healthy(party).await {
            return Err(AppError::unavailable(
                "node_unavailable",
                format!("node {} is not reachable", state.registry.name_of(party)),
            ));
        }
    }
    if protocol == Protocol::Cggmp21
        && !crate::engines::wallets::nodes::committee_ready(&state.db, &committee).await?
    {
        return Err(AppError::conflict(
            "ecdsa_committee_not_ready",
            "aux info for this committee is not ready: POST /api/v1/nodes/committees first",
        ));
    }
    if wallets::name_taken(&state.db, &caller.org, &body.name).await? {
        return Err(wallets::name_conflict(&body.name));
    }
    let id = new_id("wal");
    let wallet_id = custos_protocol::WalletId(crate::kernel::db::id_bytes(&id).unwrap_or_default());
    let mut request = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut request);
    let started = std::time::Instant::now();
    let created = state
        .coordinator()?
        .create_wallet(
            custos_protocol::RequestId(request),
            wallet_id,
            protocol.curve(),
            &committee,
            body.threshold,
        )
        .await;
    let key = match created {
        Ok(key) => key,
        Err(error) => {
            audit_event(
                &state,
                &caller,
                "wallet.create",
                &resource,
                "allowed",
                "failed",
                json!({"error": error.to_string()}),
            )
            .await?;
            return Err(AppError::unavailable(
                "keygen_failed",
                format!("key generation failed: {error}"),
            ));
        }
    };
    request[0] ^= 0xff;
    let key_info = state
        .coordinator()?
        .key_info(
            custos_protocol::RequestId(request),
            &committee,
            wallet_id,
            protocol.curve(),
            custos_protocol::KeyGeneration(0),
        )
        .await
        .map_err(|error| {
            AppError::unavailable(
                "keygen_failed",
                format!("reading the new key failed: {error}"),
            )
        })?;
    metrics::histogram!("custos_wallet_creation_seconds", "protocol" => protocol.name())
        .record(started.elapsed().as_secs_f64());
    let wallet = Wallet {
        id: id.clone(),
        org: caller.org.clone(),
        name: body.name.clone(),
        protocol,
        chain,
        raw_public_key: key.public_key.clone(),
        key_info,
        threshold: body.threshold,
        committee: committee.clone(),
        generation: 0,
        created_at: now_ms(),
        frozen: false,
    };
    // The key the chain sees must follow from the public data the nodes
    // reported, or the wallet is refused.
    let view = wallet.view(&state.registry)?;
    let mut tx = state.db.begin().await?;
    wallets::insert(&mut tx, &wallet, &key.chain_code).await?;
    record(&state, &mut tx, &caller, "wallet.create", &resource, "allowed", "success", json!({"walletId": id, "protocol": protocol.name(), "threshold": body.threshold, "parties": committee.len(), "publicKey": view.public_key})).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// List wallets.
#[utoipa::path(get, path = "/api/v1/wallets", tag = "wallets",
    responses(
        (status = 200, description = "`{items: [Wallet]}`", body = Value),
    ))]
async fn list_wallets(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> AppResult<Json<Value>> {
    audited_read(&state, &caller, "wallet.read", "wallet:*").await?;
    let mut items = Vec::new();
    for wallet in wallets::list(&state.db, &caller.org).await? {
        items.push(wallet.view(&state.registry)?);
    }
    Ok(Json(json!({"items": items})))
}

/// Get a wallet.
#[utoipa::path(get, path = "/api/v1/wallets/{id}", tag = "wallets",
    params(("id" = String, Path, description = "The wallet's id")),
    responses(
        (status = 200, description = "The wallet", body = wallets::WalletView),
    ))]
async fn get_wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<wallets::WalletView>> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    audited_read(
        &state,
        &caller,
        "wallet.read",
        &format!("wallet:{}", wallet.name),
    )
    .await?;
    Ok(Json(wallet.view(&state.registry)?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AddressQuery {
    /// Non-hardened derivation path, `m/0/5`; default `m` (the wallet's
    /// own key).
    #[serde(default)]
    path: Option<String>,
}

/// Child address (?path=m/0/5, non-hardened).
#[utoipa::path(get, path = "/api/v1/wallets/{id}/address", tag = "wallets",
    params(("id" = String, Path, description = "The wallet's id"), AddressQuery),
    responses(
        (status = 200, description = "`{path, publicKey, address}`", body = Value),
    ))]
async fn wallet_address(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<AddressQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<Value>> {
    let Query(query) =
        query.map_err(|error| AppError::invalid("invalid_query", error.body_text()))?;
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let text = query.path.unwrap_or_else(|| "m".into());
    let path = wallets::parse_path(&text)?;
    audited_read(
        &state,
        &caller,
        "wallet.read",
        &format!("wallet:{}", wallet.name),
    )
    .await?;
    let public_key = wallets::chain_public_key(wallet.protocol, &wallet.key_info, &path)?;
    let address = wallets::address(wallet.protocol, wallet.chain, &public_key)?;
    Ok(Json(
        json!({"path": text, "publicKey": hex::encode(public_key), "address": address}),
    ))
}

fn request_answer(view: &signing::RequestView) -> (StatusCode, Json<Value>) {
    let body = serde_json::to_value(view).unwrap_or(Value::Null);
    let status = if view.status == "signed" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(body))
}

/// Sign a transaction, message or digest under policy.
#[utoipa::path(post, path = "/api/v1/wallets/{id}/sign", tag = "wallets",
    request_body = SignInput,
    params(("id" = String, Path, description = "The wallet's id")),
    responses(
        (status = 200, description = REQUEST_ANSWER, body = Value),
        (status = 202, description = "Not signed yet (`status` `pending_approval` with its \
            `approvalId`, or `queued` / `signing`): the same shape; follow it at \
            `GET /api/v1/signing-requests/{id}`", body = Value),
    ))]
async fn sign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<SignInput>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let plan = signing::plan(&wallet, &input)?;
    let submitted = signing::submit(
        &state,
        &caller,
        signing::NewRequest {
            wallet: &wallet,
            kind: "sign",
            action: "wallet.sign",
            plan,
            idempotency_key: input.idempotency_key.as_deref(),
        },
    )
    .await?;
    finish_request(&state, &caller, submitted).await
}

/// Runs a just-accepted request at once and answers its state.
async fn finish_request(
    state: &Arc<AppState>,
    caller: &Caller,
    submitted: signing::Submitted,
) -> AppResult<(StatusCode, Json<Value>)> {
    let id = submitted.view.request_id.clone();
    if !submitted.replayed && submitted.view.status == "queued" {
        signing::execute_reserved(state, &id).await?;
    }
    let view = signing::view(state.db.pool(), &caller.org, &id).await?;
    if view.status == "failed" {
        let detail = view.error.clone().unwrap_or(Value::Null);
        return Err(AppError::new(
            ErrorKind::BadGateway,
            "signing_failed",
            format!(
                "signing request {id} failed: {}",
                detail["message"].as_str().unwrap_or("unknown error")
            ),
        ));
    }
    Ok(request_answer(&view))
}

/// The new holders and threshold.
#[derive(Deserialize, ToSchema)]
#[schema(as = ReshareRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReshareBody {
    /// Signers needed: 2 to the number of nodes.
    #[schema(minimum = 2, maximum = 65535)]
    threshold: u16,
    /// Node names of the new holders.
    nodes: Vec<String>,
    /// Same key, same request: the first result is returned.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Reshare to other nodes or threshold (approval).
#[utoipa::path(post, path = "/api/v1/wallets/{id}/reshare", tag = "wallets",
    request_body = ReshareBody,
    params(("id" = String, Path, description = "The wallet's id")),
    responses(
        (status = 200, description = REQUEST_ANSWER, body = Value),
        (status = 202, description = "Not done yet (`status` `pending_approval` with its \
            `approvalId`, or `queued` / `signing`): the same shape; follow it at \
            `GET /api/v1/signing-requests/{id}`", body = Value),
    ))]
async fn reshare(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReshareBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let committee = resolve_nodes(&state, &body.nodes)?;
    // Refused before it goes to approval: a 1-of-n key signs with any one
    // node alone.
    if body.threshold < 2 || usize::from(body.threshold) > committee.len() {
        return Err(AppError::invalid(
            "invalid_threshold",
            "threshold is between 2 and the number of nodes",
        ));
    }
    if wallet.protocol == Protocol::Cggmp21
        && !crate::engines::wallets::nodes::committee_ready(&state.db, &committee).await?
    {
        return Err(AppError::conflict(
            "ecdsa_committee_not_ready",
            "aux info for the new committee is not ready: POST /api/v1/nodes/committees first",
        ));
    }
    let nodes: Vec<String> = committee.iter().map(|party| hex::encode(party.0)).collect();
    let request_body = json!({"type": "reshare", "nodes": nodes, "threshold": body.threshold, "fromGeneration": wallet.generation});
    let submitted = signing::submit(
        &state,
        &caller,
        signing::NewRequest {
            wallet: &wallet,
            kind: "reshare",
            action: "wallet.reshare",
            plan: signing::reshare_plan(request_body),
            idempotency_key: body.idempotency_key.as_deref(),
        },
    )
    .await?;
    finish_request(&state, &caller, submitted).await
}

/// A signing request's progress.
#[utoipa::path(get, path = "/api/v1/signing-requests/{id}", tag = "wallets",
    params(("id" = String, Path, description = "The signing request's id")),
    responses(
        (status = 200, description = REQUEST_ANSWER, body = Value),
    ))]
async fn get_signing_request(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let view = signing::view(state.db.pool(), &caller.org, &id).await?;
    audited_read(
        &state,
        &caller,
        "signing.read",
        &format!("signing-request:{id}"),
    )
    .await?;
    Ok(Json(serde_json::to_value(view).unwrap_or(Value::Null)))
}

/// Why the wallet is frozen (the body may be left out).
#[derive(Deserialize, Default, ToSchema)]
#[schema(as = FreezeRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FreezeBody {
    /// At most 1000 bytes.
    #[serde(default)]
    reason: Option<String>,
}

/// Freeze a wallet at once: it signs and reshares nothing, approved
/// requests included.
///
/// Freezes a wallet at once (`wallet.freeze`, no approval by default: a
/// freeze only stops things). From then on the wallet signs and reshares
/// nothing, including requests approved or queued before: they are refused
/// when they would run.
#[utoipa::path(post, path = "/api/v1/wallets/{id}/freeze", tag = "wallets",
    request_body(content = Option<FreezeBody>, description = "Optional: an empty body freezes \
        without a reason"),
    params(("id" = String, Path, description = "The wallet's id")),
    responses(
        (status = 200, description = "`{walletId, frozen: true, freeze: {at, by, reason?}}`",
            body = Value),
    ))]
async fn freeze_wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    request: Request,
) -> AppResult<Json<Value>> {
    let body: FreezeBody = optional_body(request).await?;
    if body
        .reason
        .as_ref()
        .is_some_and(|reason| reason.len() > 1000)
    {
        return Err(AppError::invalid(
            "invalid_body",
            "reason over 1000 characters",
        ));
    }
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let resource = format!("wallet:{}", wallet.name);
    let verdict = gate::allow(&state, &caller, gate::Ask::new("wallet.freeze", &resource)).await?;
    let mut tx = state.db.begin().await?;
    let changed = wallets::freeze(
        &mut tx,
        &caller.org,
        &wallet.id,
        &caller.identity,
        body.reason.as_deref(),
    )
    .await?;
    let mut detail = verdict.detail();
    detail["wallet"] = json!(wallet.id);
    detail["alreadyFrozen"] = json!(!changed);
    record(
        &state,
        &mut tx,
        &caller,
        "wallet.freeze",
        &resource,
        "allowed",
        "success",
        detail,
    )
    .await?;
    tx.commit().await?;
    let frozen = wallets::frozen_view(state.db.pool(), &caller.org, &wallet.id).await?;
    Ok(Json(
        json!({"walletId": wallet.id, "frozen": true, "freeze": frozen}),
    ))
}

/// Unfreeze a wallet (202 with an approval under the default policy).
///
/// Unfreezes a wallet (`wallet.unfreeze`: one admin's approval by
/// default, so that whoever froze a wallet in an incident is not the only
/// one who decides it is safe again).
#[utoipa::path(post, path = "/api/v1/wallets/{id}/unfreeze", tag = "wallets",
    params(("id" = String, Path, description = "The wallet's id")),
    responses(
        (status = 200, description = "Unfrozen at once: `{walletId, frozen: false}`", body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
async fn unfreeze_wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let resource = format!("wallet:{}", wallet.name);
    let body = json!({"walletId": wallet.id});
    match crate::kernel::operations::gate(&state, &caller, "wallet.unfreeze", &resource, &body)
        .await?
    {
        crate::kernel::operations::Gate::Pending(answer) => {
            Ok((StatusCode::ACCEPTED, Json(answer)))
        }
        crate::kernel::operations::Gate::Proceed(verdict) => {
            let mut tx = state.db.begin().await?;
            let changed = wallets::unfreeze(&mut tx, &caller.org, &wallet.id).await?;
            let mut detail = verdict.detail();
            detail["wallet"] = json!(wallet.id);
            detail["wasFrozen"] = json!(changed);
            record(
                &state,
                &mut tx,
                &caller,
                "wallet.unfreeze",
                &resource,
                "allowed",
                "success",
                detail,
            )
            .await?;
            tx.commit().await?;
            Ok((
                StatusCode::OK,
                Json(json!({"walletId": wallet.id, "frozen": false})),
            ))
        }
    }
}
