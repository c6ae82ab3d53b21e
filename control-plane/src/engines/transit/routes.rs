//! Transit over HTTP: the router of both dialects, and the Custos routes
//! (`/api/v1/transit/*`, camelCase, `../shared/design/api.md`). The
//! Vault-compatible routes are in `vault.rs`; both run the operations of
//! `service.rs`.
//!
//! Every call appends one audit record (key name, item counts, never a
//! plaintext or ciphertext) in the same transaction as its encryption
//! reservation.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engines::transit::store::KeyInfo;
use crate::http::{record, ApiJson};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::operations::{self, Gate};
use crate::kernel::state::AppState;

use super::service::{
    create, datakey_one, decode_input, decrypt_items, encode_output, encrypt_items, hmac_one,
    item_error, key_json, load, one_or_batch, read, rewrap_one, rotate, sign_one,
    signature_options, text_bytes, vault_base64, verify_one,
};

use super::vault::{self, vault_key_json};

/// The transit routes, both dialects.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/transit/keys", post(create_key))
        .route("/api/v1/transit/keys/{name}", get(read_key))
        .route("/api/v1/transit/keys/{name}/rotate", post(rotate_key))
        .route("/api/v1/transit/keys/{name}/config", post(configure))
        .route("/api/v1/transit/encrypt", post(encrypt))
        .route("/api/v1/transit/decrypt", post(decrypt))
        .route("/api/v1/transit/rewrap", post(rewrap))
        .route("/api/v1/transit/datakey", post(datakey))
        .route("/api/v1/transit/sign", post(sign))
        .route("/api/v1/transit/verify", post(verify))
        .route("/api/v1/transit/hmac", post(hmac))
        .route(
            "/v1/transit/keys/{name}",
            post(vault::vault_create_key).get(vault::vault_read_key),
        )
        .route(
            "/v1/transit/keys/{name}/rotate",
            post(vault::vault_rotate_key),
        )
        .route("/v1/transit/keys/{name}/config", post(vault_configure))
        .route("/v1/transit/encrypt/{name}", post(vault::vault_encrypt))
        .route("/v1/transit/decrypt/{name}", post(vault::vault_decrypt))
        .route("/v1/transit/rewrap/{name}", post(vault::vault_rewrap))
        .route(
            "/v1/transit/datakey/{kind}/{name}",
            post(vault::vault_datakey),
        )
        .route("/v1/transit/sign/{name}", post(vault::vault_sign))
        .route("/v1/transit/sign/{name}/{hash}", post(vault::vault_sign))
        .route("/v1/transit/verify/{name}", post(vault::vault_verify))
        .route(
            "/v1/transit/verify/{name}/{hash}",
            post(vault::vault_verify),
        )
        .route("/v1/transit/hmac/{name}", post(vault::vault_hmac))
        .route(
            "/v1/transit/hmac/{name}/{algorithm}",
            post(vault::vault_hmac),
        )
}

// ---- Custos routes -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateKeyBody {
    name: String,
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default)]
    exportable: bool,
}

pub(super) async fn create_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateKeyBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let info = create(
        &state,
        &caller,
        &body.name,
        body.key_type.as_deref(),
        body.exportable,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(key_json(&info))))
}

pub(super) async fn read_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    Ok(Json(key_json(&read(&state, &caller, &name).await?)))
}

pub(super) async fn rotate_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<(StatusCode, Json<Value>)> {
    Ok(match rotate(&state, &caller, &name).await? {
        Ok(info) => (StatusCode::OK, Json(key_json(&info))),
        Err(pending) => (StatusCode::ACCEPTED, Json(pending)),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ConfigureBody {
    min_decryption_version: u32,
}

pub(super) async fn configure(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ConfigureBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let settings = crate::engines::transit::ConfigBody {
        name,
        min_decryption_version: body.min_decryption_version,
    };
    Ok(match set_config(&state, &caller, settings).await? {
        Ok(info) => (StatusCode::OK, Json(key_json(&info))),
        Err(pending) => (StatusCode::ACCEPTED, Json(pending)),
    })
}

/// Vault's `keys/:name/config`: only `min_decryption_version` is
/// supported; settings that would weaken a key (`exportable`,
/// `allow_plaintext_backup`, `deletion_allowed`) are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VaultConfigureBody {
    #[serde(default)]
    min_decryption_version: Option<u32>,
    #[serde(default)]
    exportable: Option<bool>,
    #[serde(default)]
    allow_plaintext_backup: Option<bool>,
    #[serde(default)]
    deletion_allowed: Option<bool>,
}

pub(super) async fn vault_configure(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VaultConfigureBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    if body.exportable == Some(true) || body.allow_plaintext_backup == Some(true) {
        return Err(AppError::forbidden(
            "export_blocked",
            "transit keys never leave Custos: exportable and allow_plaintext_backup stay off",
        ));
    }
    if body.deletion_allowed == Some(true) {
        return Err(AppError::invalid(
            "unsupported_setting",
            "transit keys are not deleted through this route",
        ));
    }
    let Some(min_decryption_version) = body.min_decryption_version else {
        let mut tx = state.db.begin().await?;
        let key = load(&state, &mut tx, &caller.org, &name).await?;
        return Ok((StatusCode::OK, Json(vault_key_json(&key.info()))));
    };
    let settings = crate::engines::transit::ConfigBody {
        name,
        min_decryption_version,
    };
    Ok(match set_config(&state, &caller, settings).await? {
        Ok(info) => (StatusCode::OK, Json(vault_key_json(&info))),
        Err(pending) => (StatusCode::ACCEPTED, Json(pending)),
    })
}

/// Changes a key's settings through the policy (`transit.config`).
pub(super) async fn set_config(
    state: &AppState,
    caller: &Caller,
    settings: crate::engines::transit::ConfigBody,
) -> AppResult<Result<KeyInfo, Value>> {
    let key = {
        let mut tx = state.db.begin().await?;
        load(state, &mut tx, &caller.org, &settings.name).await?
    };
    if settings.min_decryption_version == 0 || settings.min_decryption_version > key.latest {
        return Err(AppError::invalid(
            "invalid_min_decryption_version",
            format!(
                "minDecryptionVersion is between 1 and the latest version ({})",
                key.latest
            ),
        ));
    }
    let body = serde_json::to_value(&settings)
        .map_err(|_| AppError::internal("transit", "settings body"))?;
    let resource = format!("transit-key:{}", settings.name);
    match operations::gate(state, caller, "transit.config", &resource, &body).await? {
        Gate::Pending(answer) => Ok(Err(answer)),
        Gate::Proceed(_) => {
            let mut tx = state.db.begin().await?;
            let info =
                crate::engines::transit::configure_key(state, &mut tx, &caller.org, &settings)
                    .await?;
            record(
                state,
                &mut tx,
                caller,
                "transit.config",
                &resource,
                "allowed",
                "success",
                json!({"minDecryptionVersion": info.min_decryption_version}),
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(info))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EncryptItem {
    plaintext: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EncryptBody {
    key_name: String,
    #[serde(default)]
    plaintext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    batch: Option<Vec<EncryptItem>>,
}

pub(super) async fn encrypt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<EncryptBody>,
) -> AppResult<Json<Value>> {
    let encoding = body.encoding.as_deref();
    let context = body.context;
    let (single, items) = one_or_batch(
        body.plaintext
            .map(|plaintext| EncryptItem { plaintext, context }),
        body.batch,
        "give plaintext or batch",
    )?;
    let (results, version) =
        encrypt_items(&state, &caller, &body.key_name, &items, false, |item| {
            Ok((
                decode_input(&item.plaintext, encoding)?,
                item.context.as_deref().map(text_bytes),
            ))
        })
        .await?;
    answer_batch(
        single,
        results,
        |ciphertext| json!({"ciphertext": ciphertext, "keyVersion": version}),
    )
}

/// One item answers itself (its error as the call's error); a batch
/// answers `{batch: [...]}` in order with per-item errors.
pub(super) fn answer_batch<T>(
    single: bool,
    results: Vec<AppResult<T>>,
    render: impl Fn(T) -> Value,
) -> AppResult<Json<Value>> {
    if single {
        if let Some(result) = results.into_iter().next() {
            return result.map(|value| Json(render(value)));
        }
        return Err(AppError::invalid("invalid_request", "nothing to do"));
    }
    let batch: Vec<Value> = results
        .into_iter()
        .map(|result| match result {
            Ok(value) => render(value),
            Err(error) => json!({"error": item_error(&error)}),
        })
        .collect();
    Ok(Json(json!({"batch": batch})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DecryptItem {
    ciphertext: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DecryptBody {
    key_name: String,
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    batch: Option<Vec<DecryptItem>>,
}

pub(super) async fn decrypt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<DecryptBody>,
) -> AppResult<Json<Value>> {
    let encoding = body.encoding.as_deref();
    let context = body.context;
    let (single, items) = one_or_batch(
        body.ciphertext.map(|ciphertext| DecryptItem {
            ciphertext,
            context,
        }),
        body.batch,
        "give ciphertext or batch",
    )?;
    let results = decrypt_items(
        &state,
        &caller,
        &body.key_name,
        &items,
        false,
        |item| {
            Ok((
                item.ciphertext.as_str(),
                item.context.as_deref().map(text_bytes),
            ))
        },
        |plaintext| encode_output(&plaintext, encoding),
    )
    .await?;
    answer_batch(single, results, |plaintext| json!({"plaintext": plaintext}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RewrapBody {
    key_name: String,
    ciphertext: String,
    #[serde(default)]
    context: Option<String>,
}

/// Decrypts and encrypts again under the latest version inside the server:
/// the plaintext never leaves, so rewrapping can be delegated.
pub(super) async fn rewrap(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<RewrapBody>,
) -> AppResult<Json<Value>> {
    let (ciphertext, version) = rewrap_one(
        &state,
        &caller,
        &body.key_name,
        &body.ciphertext,
        body.context.as_deref().map(str::as_bytes),
    )
    .await?;
    Ok(Json(
        json!({"ciphertext": ciphertext, "keyVersion": version}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DatakeyBody {
    key_name: String,
    #[serde(default)]
    bits: Option<u16>,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DatakeyQuery {
    #[serde(default)]
    wrapped_only: bool,
}

pub(super) async fn datakey(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<DatakeyQuery>,
    ApiJson(body): ApiJson<DatakeyBody>,
) -> AppResult<Json<Value>> {
    let (plaintext, ciphertext, version) = datakey_one(
        &state,
        &caller,
        &body.key_name,
        body.bits,
        body.context.as_deref().map(str::as_bytes),
        query.wrapped_only,
    )
    .await?;
    let mut answer = json!({"ciphertext": ciphertext, "keyVersion": version});
    if let Some(plaintext) = plaintext {
        answer["plaintext"] = json!(plaintext.as_str());
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SignBody {
    key_name: String,
    /// Base64 of the input.
    input: String,
    #[serde(default)]
    hash_algorithm: Option<String>,
    #[serde(default)]
    prehashed: bool,
    #[serde(default)]
    marshaling: Option<String>,
    #[serde(default)]
    signature: Option<String>,
}

pub(super) async fn sign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<SignBody>,
) -> AppResult<Json<Value>> {
    let options = signature_options(
        body.hash_algorithm.as_deref(),
        body.prehashed,
        body.marshaling.as_deref(),
    )?;
    let input = vault_base64(&body.input, "input")?;
    let (signature, version) = sign_one(&state, &caller, &body.key_name, &input, &options).await?;
    Ok(Json(json!({"signature": signature, "keyVersion": version})))
}

pub(super) async fn verify(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<SignBody>,
) -> AppResult<Json<Value>> {
    let options = signature_options(
        body.hash_algorithm.as_deref(),
        body.prehashed,
        body.marshaling.as_deref(),
    )?;
    let input = vault_base64(&body.input, "input")?;
    let signature = body
        .signature
        .ok_or_else(|| AppError::invalid("invalid_request", "signature is required"))?;
    let valid = verify_one(
        &state,
        &caller,
        &body.key_name,
        &input,
        &signature,
        &options,
    )
    .await?;
    Ok(Json(json!({"valid": valid})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HmacBody {
    key_name: String,
    input: String,
    #[serde(default)]
    algorithm: Option<String>,
}

pub(super) async fn hmac(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<HmacBody>,
) -> AppResult<Json<Value>> {
    let input = vault_base64(&body.input, "input")?;
    let mac = hmac_one(
        &state,
        &caller,
        &body.key_name,
        &input,
        body.algorithm.as_deref(),
    )
    .await?;
    Ok(Json(json!({"hmac": mac})))
}
