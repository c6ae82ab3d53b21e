//! Transit over HTTP: the Custos routes (`/api/v1/transit/*`, camelCase,
//! `../shared/design/api.md`) and the Vault-compatible routes
//! (`/v1/transit/*`, snake_case, base64 plaintexts, `{"data": …}` answers)
//! so that existing Vault clients work unchanged with a Custos token in
//! `X-Vault-Token`. Both share the operations below.
//!
//! Every call appends one audit record (key name, item counts, never a
//! plaintext or ciphertext) in the same transaction as its encryption
//! reservation.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{record, ApiJson};
use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::operations::{self, Gate};
use crate::state::AppState;
use crate::transit::crypto::{
    self, Binding, HashAlgorithm, KeyType, Marshaling, SignatureOptions, TransitError,
};
use crate::transit::store::{KeyInfo, LoadedKey, Take};

/// Items one batch may hold.
pub const MAX_BATCH: usize = 10_000;

/// The transit routes, both dialects.
pub(super) fn routes() -> Router<Arc<AppState>> {
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
            post(vault_create_key).get(vault_read_key),
        )
        .route("/v1/transit/keys/{name}/rotate", post(vault_rotate_key))
        .route("/v1/transit/keys/{name}/config", post(vault_configure))
        .route("/v1/transit/encrypt/{name}", post(vault_encrypt))
        .route("/v1/transit/decrypt/{name}", post(vault_decrypt))
        .route("/v1/transit/rewrap/{name}", post(vault_rewrap))
        .route("/v1/transit/datakey/{kind}/{name}", post(vault_datakey))
        .route("/v1/transit/sign/{name}", post(vault_sign))
        .route("/v1/transit/sign/{name}/{hash}", post(vault_sign_with))
        .route("/v1/transit/verify/{name}", post(vault_verify))
        .route("/v1/transit/verify/{name}/{hash}", post(vault_verify_with))
        .route("/v1/transit/hmac/{name}", post(vault_hmac))
        .route("/v1/transit/hmac/{name}/{algorithm}", post(vault_hmac_with))
}

// ---- errors ------------------------------------------------------------------

use crate::transit::{store_error, transit_error};

/// An item's error inside a batch answer.
fn item_error(error: &AppError) -> Value {
    json!({"code": error.code, "message": error.message})
}

// ---- the operations both dialects share ---------------------------------------

/// The one authorisation path (`gate`: role, policy with `deny`,
/// `allowedIPs`, `timeWindow` and `requireMFA`, refusals audited) for a
/// transit call on key `name`; both dialects call it from the operation
/// they share, so no route can skip it. A cached decision input: no
/// database round trip unless MFA is required or the call is refused.
async fn authorize(state: &AppState, caller: &Caller, action: &str, name: &str) -> AppResult<()> {
    super::authorize(state, caller, action, &format!("transit-key:{name}")).await
}

async fn load(
    state: &AppState,
    conn: &mut sqlx::AnyConnection,
    org: &str,
    name: &str,
) -> AppResult<Arc<LoadedKey>> {
    state
        .transit
        .get(&state.keyring, conn, org, name)
        .await
        .map_err(store_error)
}

/// [`load`] for the data plane: a cached key costs no database
/// connection (with SQLite's small pool, a connection per call would queue
/// calls behind the audit writer).
async fn load_data_plane(state: &AppState, org: &str, name: &str) -> AppResult<Arc<LoadedKey>> {
    if let Some(key) = state.transit.cached(org, name) {
        return Ok(key);
    }
    let mut conn = state.db.pool().acquire().await?;
    load(state, &mut conn, org, name).await
}

fn binding<'a>(key: &'a LoadedKey, version: u32, context: Option<&'a [u8]>) -> Binding<'a> {
    Binding {
        org_id: &key.org,
        key_name: &key.name,
        version,
        context,
    }
}

fn encrypt_one(key: &LoadedKey, plaintext: &[u8], context: Option<&[u8]>) -> AppResult<String> {
    if !key.key_type.supports_encryption() {
        return Err(transit_error(TransitError::UnsupportedOperation {
            key_type: key.key_type,
            operation: "encrypt",
        }));
    }
    let material = key
        .version(key.latest)
        .ok_or_else(|| AppError::internal("transit", "latest version not loaded"))?;
    crypto::encrypt(
        key.key_type,
        &material,
        &binding(key, key.latest, context),
        plaintext,
        &mut rand_core::OsRng,
    )
    .map_err(transit_error)
}

fn decrypt_one(
    key: &LoadedKey,
    ciphertext: &str,
    context: Option<&[u8]>,
) -> AppResult<Zeroizing<Vec<u8>>> {
    if !key.key_type.supports_encryption() {
        return Err(transit_error(TransitError::UnsupportedOperation {
            key_type: key.key_type,
            operation: "decrypt",
        }));
    }
    let (version, body) = crypto::parse_prefixed(ciphertext).map_err(transit_error)?;
    crypto::check_version(version, key.latest, key.min_decryption).map_err(transit_error)?;
    let material = key
        .version(version)
        .ok_or_else(|| transit_error(TransitError::VersionTooOld))?;
    crypto::decrypt(
        key.key_type,
        &material,
        &binding(key, version, context),
        &body,
    )
    .map_err(transit_error)
}

/// Reserves `count` encryptions on the key's latest version (rotating
/// automatically at the budget) and answers the key to use.
async fn reserve(
    state: &AppState,
    tx: &mut crate::db::Tx,
    key: Arc<LoadedKey>,
    count: usize,
) -> AppResult<Arc<LoadedKey>> {
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    state
        .transit
        .reserve(&state.keyring, tx, key, count)
        .await
        .map_err(store_error)
}

/// Reserves the next block of encryptions of `key` in a transaction of its
/// own, after [`Take::CoveredRefill`].
async fn refill(state: &AppState, key: &LoadedKey) -> AppResult<()> {
    let mut tx = state.db.begin().await?;
    state
        .transit
        .refill(&state.keyring, &mut tx, key)
        .await
        .map_err(store_error)?;
    tx.commit().await?;
    Ok(())
}

fn parse_key_type(name: Option<&str>) -> AppResult<KeyType> {
    match name {
        None => Ok(KeyType::default()),
        Some(name) => name.parse().map_err(|_| {
            AppError::invalid(
                "invalid_key_type",
                "type is one of aes256-gcm96, chacha20-poly1305, hmac, ed25519, ecdsa-p256, ecdsa-secp256k1",
            )
        }),
    }
}

/// Exactly one of a single item and a batch; answers whether it was the
/// single item, and the items.
fn one_or_batch<T>(
    single: Option<T>,
    batch: Option<Vec<T>>,
    missing: &'static str,
) -> AppResult<(bool, Vec<T>)> {
    match (single, batch) {
        (Some(item), None) => Ok((true, vec![item])),
        (None, Some(batch)) => {
            check_batch(batch.len())?;
            Ok((false, batch))
        }
        _ => Err(AppError::invalid("invalid_request", missing)),
    }
}

fn check_batch(len: usize) -> AppResult<()> {
    if len == 0 || len > MAX_BATCH {
        return Err(AppError::invalid(
            "invalid_batch",
            format!("a batch holds 1 to {MAX_BATCH} items"),
        ));
    }
    Ok(())
}

fn key_json(info: &KeyInfo) -> Value {
    info.to_json()
}

/// Text or base64 input, by `encoding` (`utf8` default, or `base64`).
fn decode_input(text: &str, encoding: Option<&str>) -> AppResult<Zeroizing<Vec<u8>>> {
    match encoding.unwrap_or("utf8") {
        "utf8" => Ok(Zeroizing::new(text.as_bytes().to_vec())),
        "base64" => BASE64.decode(text).map(Zeroizing::new).map_err(|_| {
            AppError::bad_request("invalid_encoding", "the value is not valid base64")
        }),
        _ => Err(AppError::invalid(
            "invalid_encoding",
            "encoding is utf8 or base64",
        )),
    }
}

fn encode_output(bytes: &[u8], encoding: Option<&str>) -> AppResult<String> {
    match encoding.unwrap_or("utf8") {
        "utf8" => String::from_utf8(bytes.to_vec()).map_err(|_| {
            AppError::bad_request(
                "not_utf8",
                "the plaintext is not UTF-8 text: ask with encoding base64",
            )
        }),
        _ => Ok(BASE64.encode(bytes)),
    }
}

fn vault_base64(text: &str, what: &'static str) -> AppResult<Zeroizing<Vec<u8>>> {
    BASE64
        .decode(text)
        .map(Zeroizing::new)
        .map_err(|_| AppError::bad_request("invalid_encoding", format!("{what} must be base64")))
}

async fn audit(
    state: &AppState,
    tx: &mut crate::db::Tx,
    caller: &Caller,
    action: &str,
    key: &str,
    detail: Value,
) -> AppResult<()> {
    record(
        state,
        tx,
        caller,
        action,
        &format!("transit-key:{key}"),
        "not_required",
        "success",
        detail,
    )
    .await
}

/// The audit record of a data-plane call (encrypt, decrypt), through the
/// group commit: the call answers only once its record is durable.
async fn audit_batched(
    state: &AppState,
    caller: &Caller,
    action: &str,
    key: &str,
    detail: Value,
) -> AppResult<()> {
    state
        .audit
        .record(crate::audit::OwnedAuditEvent {
            org: caller.org.clone(),
            action: action.to_string(),
            resource: format!("transit-key:{key}"),
            identity: caller.identity.clone(),
            ip: caller.ip.to_string(),
            approved: "not_required".to_string(),
            outcome: "success".to_string(),
            request_id: caller.request_id.clone(),
            detail,
        })
        .await
        .map(|_| ())
        .map_err(|error| AppError::internal("audit", error))
}

/// A plaintext or context and its bytes (kept out of memory dumps).
type Secret = Zeroizing<Vec<u8>>;

fn text_bytes(text: &str) -> Secret {
    Zeroizing::new(text.as_bytes().to_vec())
}

/// The audit detail of a batch call; `vault` marks the Vault-compatible
/// routes.
fn batch_detail<T>(results: &[AppResult<T>], vault: bool, version: Option<u32>) -> Value {
    let failed = results.iter().filter(|result| result.is_err()).count();
    let mut detail = json!({"items": results.len(), "failed": failed});
    if let Some(version) = version {
        detail["version"] = json!(version);
    }
    if vault {
        detail["vault"] = json!(true);
    }
    detail
}

/// Encrypts every item under one reservation and one audit record, in one
/// transaction: what both dialects' encrypt share. `prepare` gives an
/// item's plaintext and context; an item that does not decode is that
/// item's error. Answers the per-item results and the version used.
async fn encrypt_items<T>(
    state: &AppState,
    caller: &Caller,
    name: &str,
    items: &[T],
    vault: bool,
    prepare: impl Fn(&T) -> AppResult<(Secret, Option<Secret>)>,
) -> AppResult<(Vec<AppResult<String>>, u32)> {
    authorize(state, caller, "transit.encrypt", name).await?;
    let key = load_data_plane(state, &caller.org, name).await?;
    let count = i64::try_from(items.len()).unwrap_or(i64::MAX);
    let key = match state.transit.take_reserved(&key, count) {
        Take::Covered => key,
        Take::CoveredRefill => {
            // This call is covered: a failed refill is left to the next
            // call to try (a later `Short` reserves before encrypting).
            if let Err(error) = refill(state, &key).await {
                tracing::warn!(key = %key.name, error = %error.message, "reserving the next block of encryptions failed");
            }
            key
        }
        Take::Short => {
            let mut tx = state.db.begin().await?;
            let key = reserve(state, &mut tx, key, items.len()).await?;
            tx.commit().await?;
            key
        }
    };
    let results: Vec<AppResult<String>> = items
        .iter()
        .map(|item| {
            let (plaintext, context) = prepare(item)?;
            encrypt_one(&key, &plaintext, context.as_deref().map(Vec::as_slice))
        })
        .collect();
    let detail = batch_detail(&results, vault, Some(key.latest));
    audit_batched(state, caller, "transit.encrypt", name, detail).await?;
    Ok((results, key.latest))
}

/// Decrypts every item, with one audit record, in one transaction: what
/// both dialects' decrypt share. `prepare` gives an item's ciphertext and
/// context, `present` turns a plaintext into the answer's text.
async fn decrypt_items<'a, T>(
    state: &AppState,
    caller: &Caller,
    name: &str,
    items: &'a [T],
    vault: bool,
    prepare: impl Fn(&'a T) -> AppResult<(&'a str, Option<Secret>)>,
    present: impl Fn(Secret) -> AppResult<String>,
) -> AppResult<Vec<AppResult<String>>> {
    authorize(state, caller, "transit.decrypt", name).await?;
    let key = load_data_plane(state, &caller.org, name).await?;
    let results: Vec<AppResult<String>> = items
        .iter()
        .map(|item| {
            let (ciphertext, context) = prepare(item)?;
            present(decrypt_one(
                &key,
                ciphertext,
                context.as_deref().map(Vec::as_slice),
            )?)
        })
        .collect();
    let detail = batch_detail(&results, vault, None);
    audit_batched(state, caller, "transit.decrypt", name, detail).await?;
    Ok(results)
}

// ---- Custos routes -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKeyBody {
    name: String,
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default)]
    exportable: bool,
}

async fn create_key(
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

async fn create(
    state: &AppState,
    caller: &Caller,
    name: &str,
    key_type: Option<&str>,
    exportable: bool,
) -> AppResult<KeyInfo> {
    authorize(state, caller, "transit.key.create", name).await?;
    if exportable {
        return Err(AppError::forbidden(
            "export_blocked",
            "transit keys are never exportable",
        ));
    }
    let key_type = parse_key_type(key_type)?;
    let mut tx = state.db.begin().await?;
    let key = state
        .transit
        .create(&state.keyring, &mut tx, &caller.org, name, key_type)
        .await
        .map_err(store_error)?;
    audit(
        state,
        &mut tx,
        caller,
        "transit.key.create",
        name,
        json!({"type": key_type.as_str()}),
    )
    .await?;
    tx.commit().await?;
    Ok(key.info())
}

async fn read_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    Ok(Json(key_json(&read(&state, &caller, &name).await?)))
}

async fn read(state: &AppState, caller: &Caller, name: &str) -> AppResult<KeyInfo> {
    authorize(state, caller, "transit.read", name).await?;
    let mut tx = state.db.begin().await?;
    let key = load(state, &mut tx, &caller.org, name).await?;
    audit(state, &mut tx, caller, "transit.key.read", name, json!({})).await?;
    tx.commit().await?;
    Ok(key.info())
}

async fn rotate_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<(StatusCode, Json<Value>)> {
    Ok(match rotate(&state, &caller, &name).await? {
        Ok(info) => (StatusCode::OK, Json(key_json(&info))),
        Err(pending) => (StatusCode::ACCEPTED, Json(pending)),
    })
}

/// Rotates a key, or stores the rotation for approval (the default policy
/// asks one admin to approve `transit.rotate`): `Err` holds the `202`
/// answer.
async fn rotate(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> AppResult<Result<KeyInfo, Value>> {
    {
        // A rotation of a key that does not exist is refused before it is
        // put to approvers.
        let mut tx = state.db.begin().await?;
        load(state, &mut tx, &caller.org, name).await?;
    }
    let body = serde_json::to_value(crate::transit::RotateBody {
        name: name.to_string(),
    })
    .map_err(|_| AppError::internal("transit", "rotation body"))?;
    let resource = format!("transit-key:{name}");
    match operations::gate(state, caller, "transit.rotate", &resource, &body).await? {
        Gate::Pending(answer) => Ok(Err(answer)),
        Gate::Proceed(_) => {
            let mut tx = state.db.begin().await?;
            let info = crate::transit::rotate_key(state, &mut tx, &caller.org, name).await?;
            record(
                state,
                &mut tx,
                caller,
                "transit.rotate",
                &resource,
                "allowed",
                "success",
                json!({"latestVersion": info.latest_version}),
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(info))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigureBody {
    min_decryption_version: u32,
}

async fn configure(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ConfigureBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let settings = crate::transit::ConfigBody {
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
struct VaultConfigureBody {
    #[serde(default)]
    min_decryption_version: Option<u32>,
    #[serde(default)]
    exportable: Option<bool>,
    #[serde(default)]
    allow_plaintext_backup: Option<bool>,
    #[serde(default)]
    deletion_allowed: Option<bool>,
}

async fn vault_configure(
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
    let settings = crate::transit::ConfigBody {
        name,
        min_decryption_version,
    };
    Ok(match set_config(&state, &caller, settings).await? {
        Ok(info) => (StatusCode::OK, Json(vault_key_json(&info))),
        Err(pending) => (StatusCode::ACCEPTED, Json(pending)),
    })
}

/// Changes a key's settings through the policy (`transit.config`).
async fn set_config(
    state: &AppState,
    caller: &Caller,
    settings: crate::transit::ConfigBody,
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
                crate::transit::configure_key(state, &mut tx, &caller.org, &settings).await?;
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
struct EncryptItem {
    plaintext: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EncryptBody {
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

async fn encrypt(
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
fn answer_batch<T>(
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
struct DecryptItem {
    ciphertext: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DecryptBody {
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

async fn decrypt(
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
struct RewrapBody {
    key_name: String,
    ciphertext: String,
    #[serde(default)]
    context: Option<String>,
}

/// Decrypts and encrypts again under the latest version inside the server:
/// the plaintext never leaves, so rewrapping can be delegated.
async fn rewrap(
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

async fn rewrap_one(
    state: &AppState,
    caller: &Caller,
    name: &str,
    ciphertext: &str,
    context: Option<&[u8]>,
) -> AppResult<(String, u32)> {
    authorize(state, caller, "transit.rewrap", name).await?;
    let mut tx = state.db.begin().await?;
    let key = load(state, &mut tx, &caller.org, name).await?;
    let plaintext = decrypt_one(&key, ciphertext, context)?;
    let key = reserve(state, &mut tx, key, 1).await?;
    let rewrapped = encrypt_one(&key, &plaintext, context)?;
    audit(
        state,
        &mut tx,
        caller,
        "transit.rewrap",
        name,
        json!({"version": key.latest}),
    )
    .await?;
    tx.commit().await?;
    Ok((rewrapped, key.latest))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DatakeyBody {
    key_name: String,
    #[serde(default)]
    bits: Option<u16>,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DatakeyQuery {
    #[serde(default)]
    wrapped_only: bool,
}

async fn datakey(
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

async fn datakey_one(
    state: &AppState,
    caller: &Caller,
    name: &str,
    bits: Option<u16>,
    context: Option<&[u8]>,
    wrapped_only: bool,
) -> AppResult<(Option<Zeroizing<String>>, String, u32)> {
    authorize(state, caller, "transit.datakey", name).await?;
    let data_key = crypto::generate_data_key(bits.unwrap_or(256), &mut rand_core::OsRng)
        .map_err(transit_error)?;
    let mut tx = state.db.begin().await?;
    let key = load(state, &mut tx, &caller.org, name).await?;
    let key = reserve(state, &mut tx, key, 1).await?;
    let ciphertext = encrypt_one(&key, &data_key, context)?;
    audit(
        state,
        &mut tx,
        caller,
        "transit.datakey",
        name,
        json!({"wrappedOnly": wrapped_only, "version": key.latest}),
    )
    .await?;
    tx.commit().await?;
    let plaintext = (!wrapped_only).then(|| Zeroizing::new(BASE64.encode(data_key.as_slice())));
    Ok((plaintext, ciphertext, key.latest))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SignBody {
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

fn signature_options(
    hash: Option<&str>,
    prehashed: bool,
    marshaling: Option<&str>,
) -> AppResult<SignatureOptions> {
    Ok(SignatureOptions {
        prehashed,
        hash: match hash {
            Some(hash) => hash.parse::<HashAlgorithm>().map_err(transit_error)?,
            None => HashAlgorithm::default(),
        },
        marshaling: match marshaling {
            Some(marshaling) => marshaling.parse::<Marshaling>().map_err(transit_error)?,
            None => Marshaling::default(),
        },
    })
}

async fn sign(
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

async fn sign_one(
    state: &AppState,
    caller: &Caller,
    name: &str,
    input: &[u8],
    options: &SignatureOptions,
) -> AppResult<(String, u32)> {
    authorize(state, caller, "transit.sign", name).await?;
    let mut tx = state.db.begin().await?;
    let key = load(state, &mut tx, &caller.org, name).await?;
    let material = key
        .version(key.latest)
        .ok_or_else(|| AppError::internal("transit", "latest version not loaded"))?;
    let signature =
        crypto::sign(key.key_type, &material, key.latest, input, options).map_err(transit_error)?;
    audit(
        state,
        &mut tx,
        caller,
        "transit.sign",
        name,
        json!({"version": key.latest}),
    )
    .await?;
    tx.commit().await?;
    Ok((signature, key.latest))
}

async fn verify(
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

async fn verify_one(
    state: &AppState,
    caller: &Caller,
    name: &str,
    input: &[u8],
    signature: &str,
    options: &SignatureOptions,
) -> AppResult<bool> {
    authorize(state, caller, "transit.verify", name).await?;
    let mut tx = state.db.begin().await?;
    let key = load(state, &mut tx, &caller.org, name).await?;
    let version = crypto::prefixed_version(signature).map_err(transit_error)?;
    crypto::check_version(version, key.latest, key.min_decryption).map_err(transit_error)?;
    let material = key
        .version(version)
        .ok_or_else(|| transit_error(TransitError::VersionTooOld))?;
    let valid = crypto::verify(key.key_type, &material, version, input, signature, options)
        .map_err(transit_error)?;
    audit(
        state,
        &mut tx,
        caller,
        "transit.verify",
        name,
        json!({"valid": valid}),
    )
    .await?;
    tx.commit().await?;
    Ok(valid)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HmacBody {
    key_name: String,
    input: String,
    #[serde(default)]
    algorithm: Option<String>,
}

async fn hmac(
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

async fn hmac_one(
    state: &AppState,
    caller: &Caller,
    name: &str,
    input: &[u8],
    algorithm: Option<&str>,
) -> AppResult<String> {
    authorize(state, caller, "transit.hmac", name).await?;
    let algorithm = match algorithm {
        Some(algorithm) => algorithm.parse::<HashAlgorithm>().map_err(transit_error)?,
        None => HashAlgorithm::default(),
    };
    let mut tx = state.db.begin().await?;
    let key = load(state, &mut tx, &caller.org, name).await?;
    let material = key
        .version(key.latest)
        .ok_or_else(|| AppError::internal("transit", "latest version not loaded"))?;
    let mac = crypto::hmac(&material, key.latest, algorithm, input).map_err(transit_error)?;
    audit(
        state,
        &mut tx,
        caller,
        "transit.hmac",
        name,
        json!({"version": key.latest}),
    )
    .await?;
    tx.commit().await?;
    Ok(mac)
}

// ---- Vault-compatible routes ---------------------------------------------------

fn vault_key_json(info: &KeyInfo) -> Value {
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
struct VaultCreateKey {
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

async fn vault_create_key(
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

async fn vault_read_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    Ok(Json(vault_key_json(&read(&state, &caller, &name).await?)))
}

async fn vault_rotate_key(
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
struct VaultEncryptItem {
    plaintext: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
struct VaultEncrypt {
    #[serde(default)]
    plaintext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    batch_input: Option<Vec<VaultEncryptItem>>,
}

fn optional_base64(
    text: Option<&str>,
    what: &'static str,
) -> AppResult<Option<Zeroizing<Vec<u8>>>> {
    text.map(|text| vault_base64(text, what)).transpose()
}

async fn vault_encrypt(
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
fn vault_answer<T>(
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
struct VaultDecryptItem {
    ciphertext: String,
    #[serde(default)]
    context: Option<String>,
}

#[derive(Deserialize)]
struct VaultDecrypt {
    #[serde(default)]
    ciphertext: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    batch_input: Option<Vec<VaultDecryptItem>>,
}

async fn vault_decrypt(
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
struct VaultRewrap {
    ciphertext: String,
    #[serde(default)]
    context: Option<String>,
}

async fn vault_rewrap(
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
struct VaultDatakey {
    #[serde(default)]
    bits: Option<u16>,
    #[serde(default)]
    context: Option<String>,
}

async fn vault_datakey(
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
struct VaultSign {
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

async fn vault_sign(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    vault_sign_inner(state, caller, name, None, body).await
}

async fn vault_sign_with(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path((name, hash)): Path<(String, String)>,
    body: ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    vault_sign_inner(state, caller, name, Some(hash), body).await
}

fn vault_options(hash_in_path: Option<String>, body: &VaultSign) -> AppResult<SignatureOptions> {
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

async fn vault_sign_inner(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    name: String,
    hash: Option<String>,
    ApiJson(body): ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    let options = vault_options(hash, &body)?;
    let input = vault_base64(&body.input, "input")?;
    let (signature, version) = sign_one(&state, &caller, &name, &input, &options).await?;
    Ok(Json(
        json!({"data": {"signature": signature, "key_version": version}}),
    ))
}

async fn vault_verify(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    vault_verify_inner(state, caller, name, None, body).await
}

async fn vault_verify_with(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path((name, hash)): Path<(String, String)>,
    body: ApiJson<VaultSign>,
) -> AppResult<Json<Value>> {
    vault_verify_inner(state, caller, name, Some(hash), body).await
}

async fn vault_verify_inner(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    name: String,
    hash: Option<String>,
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
struct VaultHmac {
    input: String,
    #[serde(default)]
    algorithm: Option<String>,
}

async fn vault_hmac(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: ApiJson<VaultHmac>,
) -> AppResult<Json<Value>> {
    vault_hmac_inner(state, caller, name, None, body).await
}

async fn vault_hmac_with(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path((name, algorithm)): Path<(String, String)>,
    body: ApiJson<VaultHmac>,
) -> AppResult<Json<Value>> {
    vault_hmac_inner(state, caller, name, Some(algorithm), body).await
}

async fn vault_hmac_inner(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    name: String,
    algorithm: Option<String>,
    ApiJson(body): ApiJson<VaultHmac>,
) -> AppResult<Json<Value>> {
    let input = vault_base64(&body.input, "input")?;
    let algorithm = algorithm.or(body.algorithm);
    let mac = hmac_one(&state, &caller, &name, &input, algorithm.as_deref()).await?;
    Ok(Json(json!({"data": {"hmac": mac}})))
}
