//! The Vault-compatible transit routes (`/v1/transit/*`): snake_case,
//! base64 plaintexts, `{"data": …}` answers, a Custos token in
//! `X-Vault-Token`, so existing Vault clients (`hvac` in the tests) work
//! unchanged. They run the same operations as the Custos routes.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::engines::transit::crypto::SignatureOptions;
use crate::engines::transit::store::KeyInfo;
use crate::http::openapi::{schema_from, Pending};
use crate::http::ApiJson;
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::state::AppState;

use super::service::{
    create, datakey_one, decrypt_items, encrypt_items, hmac_one, one_or_batch, read, rewrap_one,
    rotate, sign_one, signature_options, vault_base64, verify_one,
};

/// A hash in a Vault sign or verify path (`sign/{name}/{hash}`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the handler reads the path as text
enum PathHash {
    #[schema(rename = "sha2-256")]
    Sha2_256,
    #[schema(rename = "sha2-384")]
    Sha2_384,
    #[schema(rename = "sha2-512")]
    Sha2_512,
    #[schema(rename = "none")]
    None,
}

/// An HMAC's hash in a Vault path (`hmac/{name}/{algorithm}`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the handler reads the path as text
enum PathHmacHash {
    #[schema(rename = "sha2-256")]
    Sha2_256,
    #[schema(rename = "sha2-384")]
    Sha2_384,
    #[schema(rename = "sha2-512")]
    Sha2_512,
}

/// What a Vault data key answer holds (`datakey/{kind}/{name}`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the handler reads the path as text
enum PathDatakeyKind {
    #[schema(rename = "plaintext")]
    Plaintext,
    #[schema(rename = "wrapped")]
    Wrapped,
}

// ---- Vault-compatible routes ---------------------------------------------------

/// What the key answers show (`vault_key_json`).
pub(super) const KEY_ANSWER: &str = "`{data: {name, type, latest_version, min_decryption_version, \
    min_encryption_version, deletion_allowed, exportable, allow_plaintext_backup, derived, \
    supports_encryption, supports_decryption, supports_signing, keys}}`; `keys` maps each \
    version still decrypting to its creation time (seconds) or `{public_key}`";

/// The key types `type` accepts.
pub(super) fn key_type_schema() -> RefOr<Schema> {
    schema_from(json!({
        "type": "string",
        "enum": ["aes256-gcm96", "chacha20-poly1305", "hmac", "ed25519", "ecdsa-p256", "ecdsa-secp256k1"],
        "description": "the key type; `aes256-gcm96` when absent",
    }))
}

/// The hash algorithms signing, verifying and HMAC accept.
pub(super) fn hash_schema() -> RefOr<Schema> {
    schema_from(json!({
        "type": "string",
        "enum": ["sha2-256", "sha2-384", "sha2-512", "none"],
        "description": "`sha2-256` when absent; Ed25519 ignores it, ECDSA refuses `none`",
    }))
}

/// The HMAC algorithms.
pub(super) fn hmac_algorithm_schema() -> RefOr<Schema> {
    schema_from(json!({
        "type": "string",
        "enum": ["sha2-256", "sha2-384", "sha2-512"],
        "description": "`sha2-256` when absent",
    }))
}

/// The signature serialisations.
pub(super) fn marshaling_schema() -> RefOr<Schema> {
    schema_from(json!({
        "type": "string",
        "enum": ["asn1", "jws"],
        "description": "`asn1` when absent (DER, standard base64); `jws`: fixed-width `r || s`, base64url",
    }))
}

/// The data key sizes.
pub(super) fn bits_schema() -> RefOr<Schema> {
    schema_from(json!({
        "type": "integer",
        "enum": [128, 256, 512],
        "description": "the data key's size; 256 when absent",
    }))
}

/// Vault's `signature_algorithm`: RSA padding, accepted for compatibility.
fn signature_algorithm_schema() -> RefOr<Schema> {
    schema_from(json!({
        "type": "string",
        "enum": ["pkcs1v15", "pss"],
        "description": "RSA padding in Vault; accepted and without effect (no RSA transit keys); any other value is refused",
    }))
}

pub(super) fn vault_key_json(info: &KeyInfo) -> Value {
    let mut keys = serde_json::Map::new();
    for version in info.min_decryption_version..=info.latest_version {
        let public = info
            .public_keys
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, key)| json!({"public_key": key}));
        keys.insert(
            version.to_string(),
            public.unwrap_or(json!(info.created_at / 1000)),
        );
    }
    json!({"data": {
        "name": info.name,
        "type": info.key_type.as_str(),
        "latest_version": info.latest_version,
        "min_decryption_version": info.min_decryption_version,
        "min_encryption_version": 0,
        "deletion_allowed": false,
        "exportable": false,
        "allow_plaintext_backup": false,
        "derived": false,
        "supports_encryption": info.key_type.supports_encryption(),
        "supports_decryption": info.key_type.supports_encryption(),
        "supports_signing": info.key_type.supports_signing(),
        "keys": keys,
    }})
}

/// Vault's `keys/:name` body (optional; other Vault fields are ignored).
#[derive(Deserialize, ToSchema)]
#[schema(as = VaultTransitKeyRequest)]
pub(super) struct VaultCreateKey {
    #[serde(default, rename = "type")]
    #[schema(schema_with = key_type_schema)]
    key_type: Option<String>,
    /// `true` is refused (`403 export_blocked`): transit keys never leave Custos.
    #[serde(default)]
    exportable: Option<bool>,
    /// `true` is refused (`403 export_blocked`).
    #[serde(default)]
    allow_plaintext_backup: Option<bool>,
    /// `true` is refused (`400 unsupported_option`): Custos binds the
    /// context as associated data instead.
    #[serde(default)]
    derived: Option<bool>,
    /// `true` is refused (`400 unsupported_option`).
    #[serde(default)]
    convergent_encryption: Option<bool>,
}

/// Create a transit key (Vault dialect; the body is optional).
#[utoipa::path(post, path = "/v1/transit/keys/{name}", tag = "vault-transit",
    operation_id = "create_key",
    request_body = Option<VaultCreateKey>,
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = KEY_ANSWER, body = Value)))]
pub(super) async fn vault_create_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Option<ApiJson<VaultCreateKey>>,
) -> AppResult<Json<Value>> {
    let body = body.map(|ApiJson(body)| body).unwrap_or(VaultCreateKey {
        key_type: None,
        exportable: None,
        allow_plaintext_backup: None,
        derived: None,
        convergent_encryption: None,
    });
    if body.allow_plaintext_backup == Some(true) {
        return Err(AppError::forbidden(
            "export_blocked",
            "plaintext backups of transit keys are blocked",
        ));
    }
    if body.derived == Some(true) || body.convergent_encryption == Some(true) {
        return Err(AppError::bad_request(
            "unsupported_option",
            "derived and convergent keys are not supported: Custos binds context as associated data instead",
        ));
    }
    let info = create(
        &state,
        &caller,
        &name,
        body.key_type.as_deref(),
        body.exportable == Some(true),
    )
    .await?;
    Ok(Json(vault_key_json(&info)))
}

/// A transit key (Vault dialect).
#[utoipa::path(get, path = "/v1/transit/keys/{name}", tag = "vault-transit",
    operation_id = "read_key",
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = KEY_ANSWER, body = Value)))]
pub(super) async fn vault_read_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    Ok(Json(vault_key_json(&read(&state, &caller, &name).await?)))
}

/// Rotate a transit key (Vault dialect; 202 with an approval by default).
///
/// The default policy asks one admin to approve `transit.rotate`.
#[utoipa::path(post, path = "/v1/transit/keys/{name}/rotate", tag = "vault-transit",
    operation_id = "rotate_key",
    params(("name" = String, Path, description = "The key's name")),
    responses(
        (status = 200, description = KEY_ANSWER, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
pub(super) async fn vault_rotate_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<(StatusCode, Json<Value>)> {
    Ok(match rotate(&state, &caller, &name).await? {
        Ok(info) => (StatusCode::OK, Json(vault_key_json(&info))),
        Err(pending) => (StatusCode::ACCEPTED, Json(pending)),
    })
}

/// One item of a Vault `batch_input` to encrypt.
#[derive(Deserialize, ToSchema)]
pub(super) struct VaultEncryptItem {
    /// Base64 of the plaintext.
    plaintext: String,
    /// Base64 of the context, bound as associated data.
    #[serde(default)]
    context: Option<String>,
}

/// Vault's `encrypt/:name` body: `plaintext` (with `context`), or
/// `batch_input`, which wins when both are given. Other Vault fields are
/// ignored.
#[derive(Deserialize, ToSchema)]
#[schema(as = VaultTransitEncryptRequest)]
pub(super) struct VaultEncrypt {
    /// Base64 of the plaintext (one item; ignored when `batch_input` is
    /// given).
    #[serde(default)]
    plaintext: Option<String>,
    /// Base64 of the context of the single `plaintext`.
    #[serde(default)]
    context: Option<String>,
    /// 1 to 10000 items, answered in order in `batch_results`.
    #[serde(default)]
    #[schema(inline, min_items = 1, max_items = 10000)]
    batch_input: Option<Vec<VaultEncryptItem>>,
}

pub(super) fn optional_base64(
    text: Option<&str>,
    what: &'static str,
) -> AppResult<Option<Zeroizing<Vec<u8>>>> {
    text.map(|text| vault_base64(text, what)).transpose()
}

/// Encrypt base64 plaintext, one or a batch (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/encrypt/{name}", tag = "vault-transit",
    operation_id = "encrypt",
    request_body = VaultEncrypt,
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = "`{data: {ciphertext, key_version}}`, or for \
        `batch_input` `{data: {batch_results: [{ciphertext, key_version} | {error, code}]}}` \
        in order", body = Value)))]
pub(super) async fn vault_encrypt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VaultEncrypt>,
) -> AppResult<Json<Value>> {
    // As in Vault, batch_input wins over a single plaintext.
    let context = body.context;
    let single = match body.batch_input {
        Some(_) => None,
        None => body
            .plaintext
            .map(|plaintext| VaultEncryptItem { plaintext, context }),
    };
    let (single, items) = one_or_batch(single, body.batch_input, "missing plaintext to encrypt")?;
    let (results, version) = encrypt_items(&state, &caller, &name, &items, true, |item| {
        Ok((
            vault_base64(&item.plaintext, "plaintext")?,
            optional_base64(item.context.as_deref(), "context")?,
        ))
    })
    .await?;
    vault_answer(
        single,
        results,
        |ciphertext| json!({"ciphertext": ciphertext, "key_version": version}),
    )
}

/// Vault's shapes: `{"data": {...}}`, or `{"data": {"batch_results": [...]}}`
/// with `{"error": "..."}` items.
pub(super) fn vault_answer<T>(
    single: bool,
    results: Vec<AppResult<T>>,
    render: impl Fn(T) -> Value,
) -> AppResult<Json<Value>> {
    if single {
        if let Some(result) = results.into_iter().next() {
            return result.map(|value| Json(json!({"data": render(value)})));
        }
        return Err(AppError::invalid("invalid_request", "nothing to do"));
    }
    let batch: Vec<Value> = results
        .into_iter()
        .map(|result| match result {
            Ok(value) => render(value),
            Err(error) => json!({"error": error.message, "code": error.code}),
        })
        .collect();
    Ok(Json(json!({"data": {"batch_results": batch}})))
}

/// One item of a Vault `batch_input` to decrypt.
#[derive(Deserialize, ToSchema)]
pub(super) struct VaultDecryptItem {
    /// A `vault:v<N>:` ciphertext.
    ciphertext: String,
    /// Base64 of the context it was encrypted with.
    #[serde(default)]
    context: Option<String>,
}

/// Vault's `decrypt/:name` body: `ciphertext` (with `context`), or
/// `batch_input`, which wins when both are given. Other Vault fields are
/// ignored.
#[derive(Deserialize, ToSchema)]
#[schema(as = VaultTransitDecryptRequest)]
pub(super) struct VaultDecrypt {
    /// A `vault:v<N>:` ciphertext (one item; ignored when `batch_input` is
    /// given).
    #[serde(default)]
    ciphertext: Option<String>,
    /// Base64 of the context of the single `ciphertext`.
    #[serde(default)]
    context: Option<String>,
    /// 1 to 10000 items, answered in order in `batch_results`.
    #[serde(default)]
    #[schema(inline, min_items = 1, max_items = 10000)]
    batch_input: Option<Vec<VaultDecryptItem>>,
}

/// Decrypt to base64 plaintext, one or a batch (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/decrypt/{name}", tag = "vault-transit",
    operation_id = "decrypt",
    request_body = VaultDecrypt,
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = "`{data: {plaintext}}` (base64), or for \
        `batch_input` `{data: {batch_results: [{plaintext} | {error, code}]}}` in order",
        body = Value)))]
pub(super) async fn vault_decrypt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VaultDecrypt>,
) -> AppResult<Json<Value>> {
    let context = body.context;
    let single = match body.batch_input {
        Some(_) => None,
        None => body.ciphertext.map(|ciphertext| VaultDecryptItem {
            ciphertext,
            context,
        }),
    };
    let (single, items) = one_or_batch(single, body.batch_input, "missing ciphertext to decrypt")?;
    let results = decrypt_items(
        &state,
        &caller,
        &name,
        &items,
        true,
        |item| {
            Ok((
                item.ciphertext.as_str(),
                optional_base64(item.context.as_deref(), "context")?,
            ))
        },
        |plaintext| Ok(BASE64.encode(plaintext.as_slice())),
    )
    .await?;
    vault_answer(single, results, |plaintext| json!({"plaintext": plaintext}))
}

/// Vault's `rewrap/:name` body (one ciphertext; no `batch_input`; other
/// Vault fields are ignored).
#[derive(Deserialize, ToSchema)]
#[schema(as = VaultTransitRewrapRequest)]
pub(super) struct VaultRewrap {
    /// A `vault:v<N>:` ciphertext.
    ciphertext: String,
    /// Base64 of the context it was encrypted with.
    #[serde(default)]
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    context: Option<String>,
}

/// Re-encrypt under the latest version (Vault dialect; no plaintext out).
#[utoipa::path(post, path = "/v1/transit/rewrap/{name}", tag = "vault-transit",
    operation_id = "rewrap",
    request_body = VaultRewrap,
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = "`{data: {ciphertext, key_version}}`", body = Value)))]
pub(super) async fn vault_rewrap(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VaultRewrap>,
) -> AppResult<Json<Value>> {
    let context = optional_base64(body.context.as_deref(), "context")?;
    let (ciphertext, version) = rewrap_one(
        &state,
        &caller,
        &name,
        &body.ciphertext,
        context.as_deref().map(Vec::as_slice),
    )
    .await?;
    Ok(Json(
        json!({"data": {"ciphertext": ciphertext, "key_version": version}}),
    ))
}

/// Vault's `datakey/:type/:name` body (optional; other Vault fields are
/// ignored).
#[derive(Deserialize, ToSchema)]
#[schema(as = VaultTransitDatakeyRequest)]
pub(super) struct VaultDatakey {
    #[serde(default)]
    #[schema(schema_with = bits_schema)]
    bits: Option<u16>,
    /// Base64 of the context, bound as associated data.
    #[serde(default)]
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    context: Option<String>,
}

/// A data key, plaintext and wrapped or wrapped only (Vault dialect).
///
/// `datakey/plaintext/{name}` answers the key in base64 and wrapped,
/// `datakey/wrapped/{name}` only wrapped. The body is optional.
#[utoipa::path(post, path = "/v1/transit/datakey/{kind}/{name}", tag = "vault-transit",
    operation_id = "datakey",
    request_body = Option<VaultDatakey>,
    params(
        ("kind" = inline(PathDatakeyKind), Path, description = "`plaintext` (the answer holds the key in base64 too) \
            or `wrapped` (only its ciphertext); anything else is refused (`422`)"),
        ("name" = String, Path, description = "The key's name"),
    ),
    responses((status = 200, description = "`{data: {ciphertext, key_version, plaintext?}}`",
        body = Value)))]
pub(super) async fn vault_datakey(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
    body: Option<ApiJson<VaultDatakey>>,
) -> AppResult<Json<Value>> {
    let wrapped_only = match kind.as_str() {
        "plaintext" => false,
        "wrapped" => true,
        _ => {
            return Err(AppError::invalid(
                "invalid_request",
                "the data key type is plaintext or wrapped",
            ))
        }
    };
    let (bits, context) = match body {
        Some(ApiJson(body)) => (body.bits, body.context),
        None => (None, None),
    };
    let context = optional_base64(context.as_deref(), "context")?;
    let (plaintext, ciphertext, version) = datakey_one(
        &state,
        &caller,
        &name,
        bits,
        context.as_deref().map(Vec::as_slice),
        wrapped_only,
    )
    .await?;
    let mut data = json!({"ciphertext": ciphertext, "key_version": version});
    if let Some(plaintext) = plaintext {
        data["plaintext"] = json!(plaintext.as_str());
    }
    Ok(Json(json!({"data": data})))
}

/// Vault's `sign/:name` and `verify/:name` body (one input; no
/// `batch_input`; other Vault fields are ignored).
#[derive(Deserialize, ToSchema)]
#[schema(as = VaultTransitSignRequest)]
pub(super) struct VaultSign {
    /// Base64 of the input (of its digest when `prehashed`).
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    input: String,
    /// Ignored when the path names the hash algorithm.
    #[serde(default)]
    #[schema(schema_with = hash_schema)]
    hash_algorithm: Option<String>,
    /// The input is already a digest made with the hash algorithm (not for
    /// Ed25519).
    #[serde(default)]
    prehashed: Option<bool>,
    #[serde(default)]
    #[schema(schema_with = marshaling_schema)]
    marshaling_algorithm: Option<String>,
    /// `verify` only, where it is required: the `vault:v<N>:` signature.
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    #[schema(schema_with = signature_algorithm_schema)]
    signature_algorithm: Option<String>,
}

pub(super) fn vault_options(
    hash_in_path: Option<String>,
    body: &VaultSign,
) -> AppResult<SignatureOptions> {
    if body
        .signature_algorithm
        .as_deref()
        .is_some_and(|algorithm| algorithm != "pkcs1v15" && algorithm != "pss")
    {
        return Err(AppError::invalid(
            "invalid_request",
            "unknown signature_algorithm",
        ));
    }
    let hash = hash_in_path.or_else(|| body.hash_algorithm.clone());
    signature_options(
        hash.as_deref(),
        body.prehashed.unwrap_or(false),
        body.marshaling_algorithm.as_deref(),
    )
}

/// Sign base64 input (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/sign/{name}", tag = "vault-transit",
    operation_id = "sign",
    request_body = VaultSign,
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = "`{data: {signature, key_version}}`", body = Value)))]
pub(super) async fn vault_sign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    sign(&state, &caller, name, None, body).await
}

/// Sign base64 input, the hash algorithm in the path (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/sign/{name}/{hash}", tag = "vault-transit",
    operation_id = "sign_with_hash",
    request_body = VaultSign,
    params(
        ("name" = String, Path, description = "The key's name"),
        ("hash" = inline(PathHash), Path, description = "The hash algorithm (`sha2-256`, `sha2-384`, \
            `sha2-512`, `none`); wins over `hash_algorithm`"),
    ),
    responses((status = 200, description = "`{data: {signature, key_version}}`", body = Value)))]
pub(super) async fn vault_sign_hash(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, hash)): Path<(String, String)>,
    ApiJson(body): ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    sign(&state, &caller, name, Some(hash), body).await
}

/// Both sign routes: the hash algorithm from the path or the body.
async fn sign(
    state: &AppState,
    caller: &Caller,
    name: String,
    hash: Option<String>,
    body: VaultSign,
) -> AppResult<Json<Value>> {
    let options = vault_options(hash, &body)?;
    let input = vault_base64(&body.input, "input")?;
    let (signature, version) = sign_one(state, caller, &name, &input, &options).await?;
    Ok(Json(
        json!({"data": {"signature": signature, "key_version": version}}),
    ))
}

/// Verify a signature (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/verify/{name}", tag = "vault-transit",
    operation_id = "verify",
    request_body = VaultSign,
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = "`{data: {valid}}`", body = Value)))]
pub(super) async fn vault_verify(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    verify(&state, &caller, name, None, body).await
}

/// Verify a signature, the hash algorithm in the path (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/verify/{name}/{hash}", tag = "vault-transit",
    operation_id = "verify_with_hash",
    request_body = VaultSign,
    params(
        ("name" = String, Path, description = "The key's name"),
        ("hash" = inline(PathHash), Path, description = "The hash algorithm (`sha2-256`, `sha2-384`, \
            `sha2-512`, `none`); wins over `hash_algorithm`"),
    ),
    responses((status = 200, description = "`{data: {valid}}`", body = Value)))]
pub(super) async fn vault_verify_hash(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, hash)): Path<(String, String)>,
    ApiJson(body): ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    verify(&state, &caller, name, Some(hash), body).await
}

/// Both verify routes: the hash algorithm from the path or the body.
async fn verify(
    state: &AppState,
    caller: &Caller,
    name: String,
    hash: Option<String>,
    body: VaultSign,
) -> AppResult<Json<Value>> {
    let options = vault_options(hash, &body)?;
    let input = vault_base64(&body.input, "input")?;
    let signature = body
        .signature
        .clone()
        .ok_or_else(|| AppError::invalid("invalid_request", "signature is required"))?;
    let valid = verify_one(state, caller, &name, &input, &signature, &options).await?;
    Ok(Json(json!({"data": {"valid": valid}})))
}

/// Vault's `hmac/:name` body (one input; no `batch_input`; other Vault
/// fields are ignored).
#[derive(Deserialize, ToSchema)]
#[schema(as = VaultTransitHmacRequest)]
pub(super) struct VaultHmac {
    /// Base64 of the input.
    #[schema(
        pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
    )]
    input: String,
    /// Ignored when the path names the algorithm.
    #[serde(default)]
    #[schema(schema_with = hmac_algorithm_schema)]
    algorithm: Option<String>,
}

/// HMAC of base64 input (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/hmac/{name}", tag = "vault-transit",
    operation_id = "hmac",
    request_body = VaultHmac,
    params(("name" = String, Path, description = "The key's name")),
    responses((status = 200, description = "`{data: {hmac}}`", body = Value)))]
pub(super) async fn vault_hmac(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VaultHmac>,
) -> AppResult<Json<Value>> {
    hmac(&state, &caller, name, None, body).await
}

/// HMAC of base64 input, the algorithm in the path (Vault dialect).
#[utoipa::path(post, path = "/v1/transit/hmac/{name}/{algorithm}", tag = "vault-transit",
    operation_id = "hmac_with_algorithm",
    request_body = VaultHmac,
    params(
        ("name" = String, Path, description = "The key's name"),
        ("algorithm" = inline(PathHmacHash), Path, description = "The HMAC's hash (`sha2-256`, `sha2-384`, \
            `sha2-512`); wins over `algorithm` in the body"),
    ),
    responses((status = 200, description = "`{data: {hmac}}`", body = Value)))]
pub(super) async fn vault_hmac_algorithm(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, algorithm)): Path<(String, String)>,
    ApiJson(body): ApiJson<VaultHmac>,
) -> AppResult<Json<Value>> {
    hmac(&state, &caller, name, Some(algorithm), body).await
}

/// Both HMAC routes: the algorithm from the path, else from the body.
async fn hmac(
    state: &AppState,
    caller: &Caller,
    name: String,
    algorithm: Option<String>,
    body: VaultHmac,
) -> AppResult<Json<Value>> {
    let input = vault_base64(&body.input, "input")?;
    let algorithm = algorithm.or(body.algorithm);
    let mac = hmac_one(state, caller, &name, &input, algorithm.as_deref()).await?;
    Ok(Json(json!({"data": {"hmac": mac}})))
}
