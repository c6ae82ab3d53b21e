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
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::engines::transit::store::KeyInfo;
use crate::http::openapi::Pending;
use crate::http::{record, ApiJson, ApiRouter};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::operations::{self, Gate};
use crate::kernel::state::AppState;

use super::service::{
    create, datakey_one, decode_input, decrypt_items, encode_output, encrypt_items, hmac_one,
    item_error, key_json, load, one_or_batch, read, rewrap_one, rotate, sign_one,
    signature_options, text_bytes, vault_base64, verify_one,
};

use super::vault::{
    self, bits_schema, hash_schema, hmac_algorithm_schema, key_type_schema, marshaling_schema,
    vault_key_json,
};

/// The transit routes, both dialects.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create_key))
        .routes(routes!(read_key))
        .routes(routes!(rotate_key))
        .routes(routes!(configure))
        .routes(routes!(encrypt))
        .routes(routes!(decrypt))
        .routes(routes!(rewrap))
        .routes(routes!(datakey))
        .routes(routes!(sign))
        .routes(routes!(verify))
        .routes(routes!(hmac))
        .routes(routes!(vault::vault_create_key, vault::vault_read_key))
        .routes(routes!(vault::vault_rotate_key))
        .routes(routes!(vault_configure))
        .routes(routes!(vault::vault_encrypt))
        .routes(routes!(vault::vault_decrypt))
        .routes(routes!(vault::vault_rewrap))
        .routes(routes!(vault::vault_datakey))
        .routes(routes!(vault::vault_sign))
        .routes(routes!(vault::vault_sign_hash))
        .routes(routes!(vault::vault_verify))
        .routes(routes!(vault::vault_verify_hash))
        .routes(routes!(vault::vault_hmac))
        .routes(routes!(vault::vault_hmac_algorithm))
}

/// What the key answers show (`KeyInfo::to_json`).
const KEY_ANSWER: &str = "`{name, type, latestVersion, minDecryptionVersion, \
    publicKeys: [{version, publicKey}], exportable: false, createdAt}`";

/// The `encoding` of plaintexts.
fn encoding_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    crate::http::openapi::schema_from(json!({
        "type": "string",
        "enum": ["utf8", "base64"],
        "description": "how plaintexts are written: `utf8` text (when absent) or `base64`",
    }))
}

// ---- Custos routes -----------------------------------------------------------

/// A transit key to create.
#[derive(Deserialize, ToSchema)]
#[schema(as = TransitKeyRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateKeyBody {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,128}$")]
    name: String,
    #[serde(default, rename = "type")]
    #[schema(schema_with = key_type_schema)]
    key_type: Option<String>,
    /// `true` is refused (`403 export_blocked`): transit keys never leave
    /// Custos.
    #[serde(default)]
    exportable: bool,
}

/// Create a transit key (never exportable).
#[utoipa::path(post, path = "/api/v1/transit/keys", tag = "transit",
    request_body = CreateKeyBody,
    responses((status = 201, description = KEY_ANSWER, body = Value)))]
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

/// A transit key.
#[utoipa::path(get, path = "/api/v1/transit/keys/{name}", tag = "transit",
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = KEY_ANSWER, body = Value)))]
pub(super) async fn read_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    Ok(Json(key_json(&read(&state, &caller, &name).await?)))
}

/// Rotate a transit key (202 with an approval under the default policy).
#[utoipa::path(post, path = "/api/v1/transit/keys/{name}/rotate", tag = "transit",
    params(("name" = String, Path, description = "The key's name")),
    responses(
        (status = 200, description = KEY_ANSWER, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
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

/// A transit key's settings.
#[derive(Deserialize, ToSchema)]
#[schema(as = TransitConfigRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ConfigureBody {
    /// The oldest version that still decrypts: 1 to the latest version.
    #[schema(minimum = 1)]
    min_decryption_version: u32,
}

/// Set a transit key's minDecryptionVersion.
#[utoipa::path(post, path = "/api/v1/transit/keys/{name}/config", tag = "transit",
    request_body = ConfigureBody,
    params(("name" = String, Path, description = "The key's name")),
    responses(
        (status = 200, description = KEY_ANSWER, body = Value),
        (status = 202, description = "Waits for an approval (when the policy asks for one)",
            body = Pending),
    ))]
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
#[derive(Deserialize, ToSchema)]
#[schema(as = VaultTransitConfigRequest)]
#[serde(deny_unknown_fields)]
pub(super) struct VaultConfigureBody {
    /// The oldest version that still decrypts (1 to the latest version);
    /// when absent the key is answered unchanged.
    #[serde(default)]
    #[schema(minimum = 1)]
    min_decryption_version: Option<u32>,
    /// `true` is refused (`403 export_blocked`).
    #[serde(default)]
    exportable: Option<bool>,
    /// `true` is refused (`403 export_blocked`).
    #[serde(default)]
    allow_plaintext_backup: Option<bool>,
    /// `true` is refused (`422 unsupported_setting`).
    #[serde(default)]
    deletion_allowed: Option<bool>,
}

/// Set a transit key's min_decryption_version (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/keys/{name}/config", tag = "vault-transit",
    operation_id = "configure",
    request_body = VaultConfigureBody,
    params(("name" = String, Path, description = "The key's name")),
    responses(
        (status = 200, description = vault::KEY_ANSWER, body = Value),
        (status = 202, description = "Waits for an approval (when the policy asks for one)",
            body = Pending),
    ))]
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

/// One item of a `batch` to encrypt.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EncryptItem {
    /// The plaintext, as `encoding` says.
    plaintext: String,
    /// Text bound as associated data (decrypting needs the same).
    #[serde(default)]
    context: Option<String>,
}

/// Exactly one of `plaintext` (with `context`) and `batch` (`422
/// invalid_request` otherwise).
#[derive(Deserialize, ToSchema)]
#[schema(as = TransitEncryptRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct EncryptBody {
    key_name: String,
    /// One plaintext, as `encoding` says.
    #[serde(default)]
    plaintext: Option<String>,
    /// The single `plaintext`'s context: text bound as associated data
    /// (ignored with `batch`).
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    #[schema(schema_with = encoding_schema)]
    encoding: Option<String>,
    /// 1 to 10000 items, answered in order.
    #[serde(default)]
    #[schema(inline, min_items = 1, max_items = 10000)]
    batch: Option<Vec<EncryptItem>>,
}

/// Encrypt one plaintext or a batch (vault:v<N>: ciphertexts).
#[utoipa::path(post, path = "/api/v1/transit/encrypt", tag = "transit",
    request_body = EncryptBody,
    responses((status = 200, description = "`{ciphertext, keyVersion}`, or for a batch \
        `{batch: [{ciphertext, keyVersion} | {error: {code, message}}]}` in order", body = Value)))]
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

/// One item of a `batch` to decrypt.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DecryptItem {
    /// A `vault:v<N>:` ciphertext.
    ciphertext: String,
    /// The context it was encrypted with.
    #[serde(default)]
    context: Option<String>,
}

/// Exactly one of `ciphertext` (with `context`) and `batch` (`422
/// invalid_request` otherwise).
#[derive(Deserialize, ToSchema)]
#[schema(as = TransitDecryptRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DecryptBody {
    key_name: String,
    /// One `vault:v<N>:` ciphertext.
    #[serde(default)]
    ciphertext: Option<String>,
    /// The single `ciphertext`'s context (ignored with `batch`).
    #[serde(default)]
    context: Option<String>,
    /// How the plaintexts are answered.
    #[serde(default)]
    #[schema(schema_with = encoding_schema)]
    encoding: Option<String>,
    /// 1 to 10000 items, answered in order.
    #[serde(default)]
    #[schema(inline, min_items = 1, max_items = 10000)]
    batch: Option<Vec<DecryptItem>>,
}

/// Decrypt one ciphertext or a batch.
#[utoipa::path(post, path = "/api/v1/transit/decrypt", tag = "transit",
    request_body = DecryptBody,
    responses((status = 200, description = "`{plaintext}`, or for a batch \
        `{batch: [{plaintext} | {error: {code, message}}]}` in order", body = Value)))]
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

/// A ciphertext to re-encrypt.
#[derive(Deserialize, ToSchema)]
#[schema(as = TransitRewrapRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RewrapBody {
    key_name: String,
    /// A `vault:v<N>:` ciphertext.
    ciphertext: String,
    /// The context it was encrypted with (kept for the new ciphertext).
    #[serde(default)]
    context: Option<String>,
}

/// Re-encrypt under the latest version (never returns plaintext).
///
/// Decrypts and encrypts again under the latest version inside the server:
/// the plaintext never leaves, so rewrapping can be delegated.
#[utoipa::path(post, path = "/api/v1/transit/rewrap", tag = "transit",
    request_body = RewrapBody,
    responses((status = 200, description = "`{ciphertext, keyVersion}`", body = Value)))]
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

/// A data key to make under a transit key.
#[derive(Deserialize, ToSchema)]
#[schema(as = TransitDatakeyRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DatakeyBody {
    key_name: String,
    #[serde(default)]
    #[schema(schema_with = bits_schema)]
    bits: Option<u16>,
    /// Text bound as associated data of the wrapped key.
    #[serde(default)]
    context: Option<String>,
}

/// `?wrappedOnly=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(super) struct DatakeyQuery {
    /// `true`: answer the wrapped key only, without its plaintext.
    #[serde(default)]
    wrapped_only: bool,
}

/// A data key: plaintext and wrapped, or wrapped only (?wrappedOnly=true).
#[utoipa::path(post, path = "/api/v1/transit/datakey", tag = "transit",
    request_body = DatakeyBody,
    params(DatakeyQuery),
    responses((status = 200, description = "`{ciphertext, keyVersion, plaintext?}`: the data \
        key wrapped, and in base64 unless `wrappedOnly`", body = Value)))]
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

/// An input to sign, or (with `signature`) to verify.
#[derive(Deserialize, ToSchema)]
#[schema(as = TransitSignRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SignBody {
    key_name: String,
    /// Base64 of the input.
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    input: String,
    #[serde(default)]
    #[schema(schema_with = hash_schema)]
    hash_algorithm: Option<String>,
    /// The input is already a digest made with `hashAlgorithm` (not for
    /// Ed25519).
    #[serde(default)]
    prehashed: bool,
    #[serde(default)]
    #[schema(schema_with = marshaling_schema)]
    marshaling: Option<String>,
    /// Verify only, where it is required: the `vault:v<N>:` signature
    /// (ignored by sign).
    #[serde(default)]
    signature: Option<String>,
}

/// Sign base64 input.
#[utoipa::path(post, path = "/api/v1/transit/sign", tag = "transit",
    request_body = SignBody,
    responses((status = 200, description = "`{signature, keyVersion}`", body = Value)))]
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

/// Verify a signature.
#[utoipa::path(post, path = "/api/v1/transit/verify", tag = "transit",
    request_body = SignBody,
    responses((status = 200, description = "`{valid}`", body = Value)))]
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

/// An input to HMAC.
#[derive(Deserialize, ToSchema)]
#[schema(as = TransitHmacRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HmacBody {
    key_name: String,
    /// Base64 of the input.
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    input: String,
    #[serde(default)]
    #[schema(schema_with = hmac_algorithm_schema)]
    algorithm: Option<String>,
}

/// HMAC of base64 input.
#[utoipa::path(post, path = "/api/v1/transit/hmac", tag = "transit",
    request_body = HmacBody,
    responses((status = 200, description = "`{hmac}`: `vault:v<N>:` and base64", body = Value)))]
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
