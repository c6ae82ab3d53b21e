//! `/api/v1/sys/*`: health, seal status, init, unseal and seal, and the
//! gate that keeps every other route closed while the keyring is sealed.
//!
//! Init and unseal answer without authentication, as in Vault: before
//! init there is no identity, and while sealed no token can be checked
//! against a keyring that cannot decrypt. Deployments put these routes
//! behind their network controls; every outcome is audited in the platform
//! org's chain.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::{ApiJson, ApiRouter};
use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::auth::{self, Caller};
use crate::kernel::config::SealMode;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::keyring::{self, KeyringError};
use crate::kernel::state::AppState;

/// Routes that answer while sealed (and before init).
const OPEN_WHILE_SEALED: [&str; 4] = [
    "/api/v1/sys/health",
    "/api/v1/sys/seal-status",
    "/api/v1/sys/init",
    "/api/v1/sys/unseal",
];

/// Starts the coordinator after an unseal (its key is under the keyring).
async fn start_coordinator(state: &AppState) -> AppResult<()> {
    crate::start_coordinator(state)
        .await
        .map_err(|error| AppError::internal("starting the coordinator", error))
}

/// The coordinator's public key, which signer nodes pin (`coordinator` in
/// their configuration). Public; answers once unsealed.
#[utoipa::path(get, path = "/api/v1/sys/coordinator-key", tag = "sys",
    responses((status = 200, description = "`{publicKey}`: hex of the coordinator's Ed25519 key", body = Value)))]
async fn coordinator_key(State(state): State<Arc<AppState>>) -> AppResult<Json<Value>> {
    let coordinator = state.coordinator()?;
    Ok(Json(
        json!({ "publicKey": hex::encode(coordinator.party().0) }),
    ))
}

/// The sys routes.
pub(super) fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(coordinator_key))
        .routes(routes!(health))
        .routes(routes!(seal_status))
        .routes(routes!(init))
        .routes(routes!(unseal))
        .routes(routes!(seal))
}

/// While sealed, only [`OPEN_WHILE_SEALED`] answer; everything else is
/// `503 sealed` (or `503 not_initialized` before init).
pub(super) async fn sealed_gate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.keyring.is_sealed() && !OPEN_WHILE_SEALED.contains(&request.uri().path()) {
        let error = if state.keyring.is_initialized() {
            AppError::unavailable("sealed", "the control plane is sealed: unseal it first")
        } else {
            AppError::unavailable(
                "not_initialized",
                "the control plane is not initialized: POST /api/v1/sys/init",
            )
        };
        return error.into_response();
    }
    next.run(request).await
}

/// Health (answers while sealed).
#[utoipa::path(get, path = "/api/v1/sys/health", tag = "sys",
    responses((status = 200, description = "`{status, sealed, initialized, version}`", body = Value)))]
async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let status = state.keyring.status();
    Json(json!({
        "status": if status.sealed { "sealed" } else { "ok" },
        "sealed": status.sealed,
        "initialized": status.initialized,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Seal status: initialized, sealed, threshold, progress (answers while
/// sealed).
#[utoipa::path(get, path = "/api/v1/sys/seal-status", tag = "sys",
    responses((status = 200, description = "The seal status", body = keyring::SealStatus)))]
async fn seal_status(State(state): State<Arc<AppState>>) -> Json<keyring::SealStatus> {
    Json(state.keyring.status())
}

/// Shamir shares and threshold (defaults 5 and 3), or `hsm: true`.
#[derive(Deserialize, ToSchema)]
#[schema(as = InitRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InitBody {
    #[serde(default)]
    shares: Option<u8>,
    #[serde(default)]
    threshold: Option<u8>,
    #[serde(default)]
    hsm: bool,
}

/// Initialize once: unseal shares (or HSM) and root credentials, shown
/// once.
#[utoipa::path(post, path = "/api/v1/sys/init", tag = "sys", request_body = InitBody,
    responses((status = 200, description = "`{unsealShares, rootClientId, rootClientSecret, sealed}`", body = Value)))]
async fn init(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<InitBody>,
) -> AppResult<Json<Value>> {
    let mut conn = state.db.pool().acquire().await?;
    let output = if body.hsm {
        if body.shares.is_some() || body.threshold.is_some() {
            return Err(AppError::invalid(
                "invalid_seal_parameters",
                "an HSM init takes no shares or threshold",
            ));
        }
        let config = state.config.pkcs11_master_key().ok_or_else(|| {
            AppError::from(KeyringError::ModeMismatch {
                configured: state.keyring.mode().as_str(),
                requested: "hsm",
            })
        })?;
        state.keyring.init_hsm(&mut conn, &config).await?
    } else {
        state
            .keyring
            .init_shamir(
                &mut conn,
                body.shares.unwrap_or(keyring::DEFAULT_SHARES),
                body.threshold.unwrap_or(keyring::DEFAULT_THRESHOLD),
            )
            .await?
    };
    drop(conn);
    let credentials = auth::bootstrap(&state.db).await?;
    if !state.keyring.is_sealed() {
        crate::kernel::authority::seal_unsealed_once(&state.keyring, &state.db).await?;
        start_coordinator(&state).await?;
        state.unlock_token_keys().await;
    }
    system_audit(
        &state,
        "system.init",
        "success",
        json!({
            "mode": state.keyring.mode().as_str(),
            "shares": output.shares.len(),
            "threshold": state.keyring.status().threshold,
        }),
    )
    .await?;
    let shares: Vec<&str> = output.shares.iter().map(|share| share.as_str()).collect();
    Ok(Json(json!({
        "unsealShares": shares,
        "rootClientId": credentials.as_ref().map(|c| c.client_id.clone()),
        "rootClientSecret": credentials.as_ref().map(|c| c.client_secret.clone()),
        "sealed": state.keyring.is_sealed(),
    })))
}

/// One unseal share, or `reset: true`.
#[derive(Deserialize, ToSchema)]
#[schema(as = UnsealRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UnsealBody {
    #[serde(default)]
    share: Option<String>,
    #[serde(default)]
    reset: bool,
}

/// Give one unseal share (or reset the progress).
#[utoipa::path(post, path = "/api/v1/sys/unseal", tag = "sys", request_body = UnsealBody,
    responses((status = 200, description = "`{sealed, progress, threshold}`", body = Value)))]
async fn unseal(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<UnsealBody>,
) -> AppResult<Json<Value>> {
    let status = match (body.reset, body.share) {
        (true, None) => state.keyring.reset_progress(),
        (false, Some(share)) => {
            let was_sealed = state.keyring.is_sealed();
            match state.keyring.unseal_share(&share) {
                Ok(status) => {
                    if was_sealed && !status.sealed {
                        system_audit(&state, "system.unseal", "success", json!({})).await?;
                        crate::kernel::authority::seal_unsealed_once(&state.keyring, &state.db)
                            .await?;
                        start_coordinator(&state).await?;
                        state.unlock_token_keys().await;
                        state.wake_worker();
                    }
                    status
                }
                Err(error @ KeyringError::UnsealFailed) => {
                    system_audit(
                        &state,
                        "system.unseal",
                        "failure",
                        json!({"reason": "the shares do not reconstruct the master key"}),
                    )
                    .await?;
                    return Err(error.into());
                }
                Err(error) => return Err(error.into()),
            }
        }
        _ => {
            return Err(AppError::invalid(
                "invalid_request",
                "give either a share or reset: true",
            ))
        }
    };
    Ok(Json(json!({
        "sealed": status.sealed,
        "progress": status.progress,
        "threshold": status.threshold,
    })))
}

/// Seal: forget the master key (platform admin).
#[utoipa::path(post, path = "/api/v1/sys/seal", tag = "sys",
    responses((status = 200, description = "`{sealed: true}`", body = Value)))]
async fn seal(State(state): State<Arc<AppState>>, caller: Caller) -> AppResult<Json<Value>> {
    if !caller.platform_admin {
        return Err(AppError::forbidden(
            "forbidden",
            "sealing needs a platform administrator",
        ));
    }
    if state.keyring.mode() == SealMode::Hsm || state.keyring.mode() == SealMode::Env {
        tracing::warn!(
            mode = state.keyring.mode().as_str(),
            "sealed by request; this backend unseals again at the next start"
        );
    }
    // Audit first: once sealed, nothing else can be recorded as this
    // caller.
    system_audit(
        &state,
        "system.seal",
        "success",
        json!({"identity": caller.identity}),
    )
    .await?;
    state.checkpoints.at_seal(&state.db, &state.keyring).await;
    state.keyring.seal();
    state.transit.clear();
    state.lock_token_keys();
    state.stop_coordinator();
    state.policies.clear();
    state.tokens.clear();
    Ok(Json(json!({"sealed": true})))
}

/// Appends a system event to the platform org's audit chain (the org that
/// `auth::bootstrap` created). Before bootstrap there is no chain to write.
async fn system_audit(
    state: &AppState,
    action: &str,
    outcome: &str,
    detail: Value,
) -> AppResult<()> {
    let Some(org) = crate::kernel::orgs::platform_id(&state.db).await? else {
        return Ok(());
    };
    audit::append_alone(
        &state.db,
        &AuditEvent {
            org: &org,
            action,
            resource: "system:keyring",
            identity: "system",
            ip: "",
            approved: "not_required",
            outcome,
            request_id: "",
            detail,
        },
    )
    .await?;
    Ok(())
}
