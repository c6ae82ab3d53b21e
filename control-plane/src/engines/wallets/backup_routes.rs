//! `/api/v1/wallets/{id}/backups/*`: HSM-wrapped key-share backups
//! (`crate::engines::wallets::backups`).
//!
//! Making and listing backups are `wallet.backup` and `wallet.read` on
//! `wallet:<name>`; restoring is `wallet.restore`, which goes through
//! `operations::gate` (one admin approval under the default policy, `202`)
//! and runs as the approved operation. Answers carry metadata only: no
//! sealed bytes, no wrapped half.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::engines::wallets;
use crate::engines::wallets::backups::{self, Requester, RestoreBody, RESTORE_ACTION};
use crate::http::{authorize, record, ApiJson, ApiRouter};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::operations::{self, Gate};
use crate::kernel::state::AppState;

/// The backup routes.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read))
        .routes(routes!(restore))
}

/// The holders to back up.
#[derive(Deserialize, Default, ToSchema)]
#[schema(as = BackupRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    /// Node names; default: every holder of the wallet.
    #[serde(default)]
    nodes: Option<Vec<String>>,
}

/// Where to restore the share.
#[derive(Deserialize, Default, ToSchema)]
#[schema(as = RestoreRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RestoreRequest {
    /// The node to restore into; default: the node the backup came from.
    #[serde(default)]
    node: Option<String>,
}

/// Back up the wallet's shares (sealed for the operators' recovery keys;
/// the other half wrapped in the HSM).
#[utoipa::path(post, path = "/api/v1/wallets/{id}/backups", tag = "backups",
    request_body = CreateRequest,
    params(("id" = String, Path, description = "The wallet's id")),
    responses(
        (status = 201, description = "`{backups: [{id, walletId, node, party, curve, generation, \
            metaDigest, sealedBytes, createdBy, createdAt, restoredAt}], failed: [{node, code, \
            message}]}`: at least one backup was made", body = Value),
    ))]
async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreateRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let resource = format!("wallet:{}", wallet.name);
    authorize(&state, &caller, "wallet.backup", &resource).await?;
    let parties = match &body.nodes {
        None => wallet.committee.clone(),
        Some(names) if names.is_empty() => {
            return Err(AppError::invalid(
                "invalid_nodes",
                "nodes names at least one holder (or is left out: every holder)",
            ))
        }
        Some(names) => {
            let mut parties = Vec::new();
            for name in names {
                let node = state.registry.find(name).ok_or_else(|| {
                    AppError::invalid("unknown_node", format!("no node named {name}"))
                })?;
                if !wallet.committee.contains(&node.party) {
                    return Err(AppError::invalid(
                        "not_a_holder",
                        format!("{name} holds no share of this wallet"),
                    ));
                }
                if !parties.contains(&node.party) {
                    parties.push(node.party);
                }
            }
            parties
        }
    };
    let ip = caller.ip.to_string();
    let answer = backups::export(
        &state,
        &Requester {
            org: &caller.org,
            identity: &caller.identity,
            ip: &ip,
            request_id: &caller.request_id,
        },
        &wallet,
        &parties,
    )
    .await?;
    let made = answer["backups"].as_array().map_or(0, Vec::len);
    if made == 0 {
        let reasons = answer["failed"]
            .as_array()
            .map(|failed| {
                failed
                    .iter()
                    .filter_map(|item| item["message"].as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        return Err(AppError::unavailable(
            "backup_failed",
            format!("no backup was made: {reasons}"),
        ));
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

/// The caller's wallet `id`, if it may read its backups; the read is
/// audited (`wallet.read` on `wallet:<name>/backups[/<id>]`) before it
/// answers.
async fn readable_wallet(
    state: &AppState,
    caller: &Caller,
    id: &str,
    backup: Option<&str>,
) -> AppResult<wallets::Wallet> {
    let wallet = wallets::load(state.db.pool(), &caller.org, id).await?;
    let resource = match backup {
        Some(backup) => format!("wallet:{}/backups/{backup}", wallet.name),
        None => format!("wallet:{}/backups", wallet.name),
    };
    crate::http::audited_read(state, caller, "wallet.read", &resource).await?;
    Ok(wallet)
}

/// The wallet's share backups (metadata only).
#[utoipa::path(get, path = "/api/v1/wallets/{id}/backups", tag = "backups",
    params(("id" = String, Path, description = "The wallet's id")),
    responses(
        (status = 200, description = "`{items: [{id, walletId, node, party, curve, generation, \
            metaDigest, sealedBytes, createdBy, createdAt, restoredAt}]}`", body = Value),
    ))]
async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let wallet = readable_wallet(&state, &caller, &id, None).await?;
    let rows = backups::list(&state, &caller.org, &wallet.id).await?;
    Ok(Json(json!({
        "items": rows.iter().map(backups::BackupRow::view).collect::<Vec<_>>(),
    })))
}

/// One share backup (metadata only).
#[utoipa::path(get, path = "/api/v1/wallets/{id}/backups/{backup}", tag = "backups",
    params(
        ("id" = String, Path, description = "The wallet's id"),
        ("backup" = String, Path, description = "The backup's id"),
    ),
    responses(
        (status = 200, description = "`{id, walletId, node, party, curve, generation, metaDigest, \
            sealedBytes, createdBy, createdAt, restoredAt}`", body = Value),
    ))]
async fn read(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, backup)): Path<(String, String)>,
) -> AppResult<Json<Value>> {
    let wallet = readable_wallet(&state, &caller, &id, Some(&backup)).await?;
    let row = backups::load(&state, &caller.org, &wallet.id, &backup).await?;
    Ok(Json(row.view()))
}

/// Restore a share into its node (202 with an approval under the default
/// policy).
#[utoipa::path(post, path = "/api/v1/wallets/{id}/backups/{backup}/restore", tag = "backups",
    request_body = RestoreRequest,
    params(
        ("id" = String, Path, description = "The wallet's id"),
        ("backup" = String, Path, description = "The backup's id"),
    ),
    responses(
        (status = 200, description = "Restored at once: `{restored: true, backupId, walletId, \
            node, generation}`", body = Value),
        (status = 202, description = "Waits for an approval", body = crate::http::openapi::Pending),
    ))]
async fn restore(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, backup)): Path<(String, String)>,
    ApiJson(body): ApiJson<RestoreRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let wallet = wallets::load(state.db.pool(), &caller.org, &id).await?;
    let row = backups::load(&state, &caller.org, &wallet.id, &backup).await?;
    let node_name = body.node.unwrap_or_else(|| row.node.clone());
    let node = state
        .registry
        .find(&node_name)
        .ok_or_else(|| AppError::invalid("unknown_node", format!("no node named {node_name}")))?;
    // Refused before anyone is asked to approve it; checked again when it
    // runs.
    backups::check_restore(&wallet, &row, node.party)?;
    let stored = serde_json::to_value(RestoreBody {
        wallet: wallet.id.clone(),
        backup: row.id.clone(),
        node: node.name.clone(),
    })
    .map_err(|error| AppError::internal("backups", error))?;
    let resource = format!("wallet:{}", wallet.name);
    match operations::gate(&state, &caller, RESTORE_ACTION, &resource, &stored).await? {
        Gate::Pending(answer) => Ok((StatusCode::ACCEPTED, Json(answer))),
        Gate::Proceed(_) => {
            let outcome = backups::restore_stored(&state, &caller.org, &stored).await;
            let mut tx = state.db.begin().await?;
            let (outcome_name, detail) = match &outcome {
                Ok(_) => ("success", json!({"backup": row.id, "node": node.name})),
                Err(error) => (
                    "failure",
                    json!({"backup": row.id, "node": node.name, "error": error.code}),
                ),
            };
            record(
                &state,
                &mut tx,
                &caller,
                RESTORE_ACTION,
                &resource,
                "allowed",
                outcome_name,
                detail,
            )
            .await?;
            tx.commit().await?;
            Ok((StatusCode::OK, Json(outcome?)))
        }
    }
}
