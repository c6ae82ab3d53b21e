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
use zeroize::Zeroizing;

use crate::engines::transit::crypto::SignatureOptions;
use crate::engines::transit::store::KeyInfo;
use crate::http::ApiJson;
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::state::AppState;

use super::service::{
    create, datakey_one, decrypt_items, encrypt_items, hmac_one, one_or_batch, read, rewrap_one,
    rotate, sign_one, signature_options, vault_base64, verify_one,
};

// ---- Vault-compatible routes ---------------------------------------------------

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

#[derive(Deserialize)]
pub(super) struct VaultCreateKey {
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default)]
    exportable: Option<bool>,
    #[serde(default)]
    allow_plaintext_backup: Option<bool>,
    #[serde(default)]
    derived: Option<bool>,
    #[serde(default)]
    convergent_encryption: Option<bool>,
}

pub(super) async fn vault_create_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Option<Json<VaultCreateKey>>,
) -> AppResult<Json<Value>> {
    let body = body.map(|Json(body)| body).unwrap_or(VaultCreateKey {
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

pub(super) async fn vault_read_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    Ok(Json(vault_key_json(&read(&state, &caller, &name).await?)))
}

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

#[derive(Deserialize)]
pub(super) struct VaultEncryptItem {
    plaintext: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct VaultEncrypt {
    #[serde(default)]
    plaintext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    batch_input: Option<Vec<VaultEncryptItem>>,
}

pub(super) fn optional_base64(
    text: Option<&str>,
    what: &'static str,
) -> AppResult<Option<Zeroizing<Vec<u8>>>> {
    text.map(|text| vault_base64(text, what)).transpose()
}

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

#[derive(Deserialize)]
pub(super) struct VaultDecryptItem {
    ciphertext: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct VaultDecrypt {
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    batch_input: Option<Vec<VaultDecryptItem>>,
}

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

#[derive(Deserialize)]
pub(super) struct VaultRewrap {
    ciphertext: String,
    #[serde(default)]
    context: Option<String>,
}

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

#[derive(Deserialize)]
pub(super) struct VaultDatakey {
    #[serde(default)]
    bits: Option<u16>,
    #[serde(default)]
    context: Option<String>,
}

pub(super) async fn vault_datakey(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
    body: Option<Json<VaultDatakey>>,
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
        Some(Json(body)) => (body.bits, body.context),
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

#[derive(Deserialize)]
pub(super) struct VaultSign {
    input: String,
    #[serde(default)]
    hash_algorithm: Option<String>,
    #[serde(default)]
    prehashed: Option<bool>,
    #[serde(default)]
    marshaling_algorithm: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    signature_algorithm: Option<String>,
}

/// The path of a Vault call on a key, with the hash or HMAC algorithm in
/// the path or not (`/v1/transit/sign/{name}[/{hash}]`,
/// `/v1/transit/hmac/{name}[/{algorithm}]`): one handler serves both routes.
#[derive(Deserialize)]
pub(super) struct KeyPath {
    name: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
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

pub(super) async fn vault_sign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(KeyPath { name, hash, .. }): Path<KeyPath>,
    ApiJson(body): ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    let options = vault_options(hash, &body)?;
    let input = vault_base64(&body.input, "input")?;
    let (signature, version) = sign_one(&state, &caller, &name, &input, &options).await?;
    Ok(Json(
        json!({"data": {"signature": signature, "key_version": version}}),
    ))
}

pub(super) async fn vault_verify(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(KeyPath { name, hash, .. }): Path<KeyPath>,
    ApiJson(body): ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    let options = vault_options(hash, &body)?;
    let input = vault_base64(&body.input, "input")?;
    let signature = body
        .signature
        .clone()
        .ok_or_else(|| AppError::invalid("invalid_request", "signature is required"))?;
    let valid = verify_one(&state, &caller, &name, &input, &signature, &options).await?;
    Ok(Json(json!({"data": {"valid": valid}})))
}

#[derive(Deserialize)]
pub(super) struct VaultHmac {
    input: String,
    #[serde(default)]
    algorithm: Option<String>,
}

pub(super) async fn vault_hmac(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(KeyPath {
        name, algorithm, ..
    }): Path<KeyPath>,
    ApiJson(body): ApiJson<VaultHmac>,
) -> AppResult<Json<Value>> {
    let input = vault_base64(&body.input, "input")?;
    let algorithm = algorithm.or(body.algorithm);
    let mac = hmac_one(&state, &caller, &name, &input, algorithm.as_deref()).await?;
    Ok(Json(json!({"data": {"hmac": mac}})))
}
