//! `/api/v1/keys/*`: the key registry (`crate::engines::keys`).
//!
//! Every call checks the role and the org's policy (`key.<verb>` on
//! `key:<name>`) and writes its audit record in the transaction that uses
//! the key, before answering. Rotation and destruction go through
//! `operations::gate`: under the default policy rotation waits for one
//! admin's approval and destruction for two approvals (`202`). Binary
//! values are base64; signatures are base64 (DER for ECDSA).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use zeroize::Zeroizing;

use crate::engines::keys::engine::{KeyType, Signed, Usage};
use crate::engines::keys::{self, KeyRow, NewKey};
use crate::http::openapi::{schema_from, Pending};
use crate::http::{authorize, record, ApiJson, ApiRouter};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult, ErrorKind};
use crate::kernel::operations::{self, Gate};
use crate::kernel::state::AppState;

/// The key registry's routes.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, destroy))
        .routes(routes!(public_key))
        .routes(routes!(rotate))
        .routes(routes!(sign))
        .routes(routes!(verify))
        .routes(routes!(encrypt))
        .routes(routes!(decrypt))
        .routes(routes!(wrap))
        .routes(routes!(unwrap))
}

/// A key's view, as the registry answers it.
const KEY_VIEW: &str = "The key: `{id, name, type, usage, backend, state, version, createdAt}`, \
    with `publicKey` (PEM, asymmetric keys), `rotation: {periodDays}`, `nextRotationAt`, \
    `purpose`, `subject`, `expiresAt` and `destroyAt` when they apply";

/// `usage`: a usage's name, or the seed SDKs' list of one pair's
/// operations ([`UsageField`]).
fn usage_schema() -> RefOr<Schema> {
    schema_from(json!({"oneOf": [
        {"type": "string", "enum": ["ENCRYPT_DECRYPT", "SIGN_VERIFY", "WRAP_UNWRAP"]},
        {"type": "array", "minItems": 1, "items": {"type": "string", "enum": ["encrypt", "decrypt", "sign", "verify", "wrap", "unwrap"]}, "description": "one pair's operations"},
    ]}))
}

/// `rotation`: `{periodDays}` or a duration of whole days ([`Rotation`]).
fn rotation_schema() -> RefOr<Schema> {
    schema_from(json!({"oneOf": [
        {"type": "object", "additionalProperties": false, "required": ["periodDays"],
            "properties": {"periodDays": {"type": "integer", "minimum": 1, "maximum": 3650}}},
        {"type": "string", "description": "a duration of whole days: 90d, 2w, 720h"},
    ]}))
}

/// `type`: one of [`KeyType::ALL`].
fn key_type_schema() -> RefOr<Schema> {
    schema_from(json!({"type": "string", "enum": KeyType::ALL.map(KeyType::as_str)}))
}

/// `backend`: software (the default) or hsm.
fn backend_schema() -> RefOr<Schema> {
    schema_from(json!({"type": "string", "enum": ["software", "hsm"]}))
}

/// `purpose`: only client-side encryption (or absent).
fn purpose_schema() -> RefOr<Schema> {
    schema_from(json!({"type": "string", "enum": [keys::CLIENT_SIDE_ENCRYPTION]}))
}

/// The encoding of a message or plaintext given to sign or encrypt
/// ([`decode`]).
fn input_encoding_schema() -> RefOr<Schema> {
    schema_from(json!({"type": "string", "enum": ["utf8", "base64", "hex"]}))
}

/// The encoding of a decrypted plaintext.
fn output_encoding_schema() -> RefOr<Schema> {
    schema_from(json!({"type": "string", "enum": ["utf8", "base64"]}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotationPeriod {
    period_days: i64,
}

/// A rotation period: `{"periodDays": 90}`, or a duration as the seed SDKs
/// write it (`"90d"`, `"2w"`, `"2160h"`; whole days, since the registry
/// rotates by the day).
#[derive(Deserialize)]
#[serde(untagged)]
enum Rotation {
    Days(RotationPeriod),
    Duration(String),
}

impl Rotation {
    /// The period in days, 1 to 3650.
    fn days(&self) -> AppResult<i64> {
        const DAY_SECS: u64 = 86_400;
        let refused = || {
            AppError::invalid(
                "invalid_rotation",
                "rotation is {\"periodDays\": 1 to 3650} or a duration of whole days such as \"90d\", \"2w\" or \"720h\"",
            )
        };
        let days = match self {
            Rotation::Days(period) => period.period_days,
            Rotation::Duration(text) => {
                let seconds = humantime::parse_duration(text.trim())
                    .map_err(|_| refused())?
                    .as_secs();
                if seconds % DAY_SECS != 0 {
                    return Err(refused());
                }
                i64::try_from(seconds / DAY_SECS).map_err(|_| refused())?
            }
        };
        if (1..=3650).contains(&days) {
            Ok(days)
        } else {
            Err(refused())
        }
    }
}

/// A usage: `ENCRYPT_DECRYPT`, `SIGN_VERIFY`, `WRAP_UNWRAP`, or the seed
/// SDKs' list of operations (`["sign", "verify"]`, `["encrypt",
/// "decrypt"]`, `["wrap", "unwrap"]`; one pair, either or both of it).
#[derive(Deserialize)]
#[serde(untagged)]
enum UsageField {
    Name(String),
    Operations(Vec<String>),
}

impl UsageField {
    fn usage(&self) -> AppResult<Usage> {
        let refused = || {
            AppError::invalid(
                "invalid_usage",
                "usage is ENCRYPT_DECRYPT, SIGN_VERIFY or WRAP_UNWRAP, or a list of one pair's operations: [\"encrypt\", \"decrypt\"], [\"sign\", \"verify\"], [\"wrap\", \"unwrap\"]",
            )
        };
        match self {
            UsageField::Name(name) => Usage::parse(name).ok_or_else(refused),
            UsageField::Operations(operations) => {
                let usage_of = |operation: &str| match operation {
                    "encrypt" | "decrypt" => Some(Usage::EncryptDecrypt),
                    "sign" | "verify" => Some(Usage::SignVerify),
                    "wrap" | "unwrap" => Some(Usage::WrapUnwrap),
                    _ => None,
                };
                let mut usages = operations.iter().map(|operation| usage_of(operation));
                let first = usages.next().flatten().ok_or_else(refused)?;
                if usages.all(|usage| usage == Some(first)) {
                    Ok(first)
                } else {
                    Err(refused())
                }
            }
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[schema(as = KeyCreateRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type")]
    #[schema(schema_with = key_type_schema)]
    key_type: String,
    #[schema(schema_with = usage_schema)]
    usage: UsageField,
    #[serde(default)]
    #[schema(schema_with = rotation_schema)]
    rotation: Option<Rotation>,
    #[serde(default)]
    #[schema(schema_with = backend_schema)]
    backend: Option<String>,
    #[serde(default)]
    #[schema(schema_with = purpose_schema)]
    purpose: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 365)]
    expires_in_days: Option<i64>,
}

fn check_label(text: &str, what: &'static str, code: &'static str) -> AppResult<()> {
    if text.is_empty()
        || text.len() > 128
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(AppError::invalid(
            code,
            format!("{what} is 1 to 128 letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

/// Checks a create request and turns it into [`NewKey`].
fn new_key(request: CreateRequest) -> AppResult<NewKey> {
    let key_type = KeyType::parse(&request.key_type).ok_or_else(|| {
        AppError::invalid(
            "invalid_key_type",
            format!(
                "type is one of {}",
                KeyType::ALL.map(KeyType::as_str).join(", ")
            ),
        )
    })?;
    let usage = request.usage.usage()?;
    if !key_type.allows(usage) {
        return Err(AppError::invalid(
            "invalid_usage",
            format!("a {} key cannot {}", key_type.as_str(), usage.as_str()),
        ));
    }
    let hsm = match request.backend.as_deref() {
        None | Some("software") => false,
        Some("hsm") => true,
        Some(_) => {
            return Err(AppError::invalid(
                "invalid_backend",
                "backend is software or hsm",
            ))
        }
    };
    let rotation_days = request.rotation.as_ref().map(Rotation::days).transpose()?;
    let subject = match request.purpose.as_deref() {
        None => {
            if request.subject.is_some() || request.expires_in_days.is_some() {
                return Err(AppError::invalid(
                    "invalid_purpose",
                    "subject and expiresInDays belong to purpose client_side_encryption",
                ));
            }
            None
        }
        Some(keys::CLIENT_SIDE_ENCRYPTION) => {
            if !matches!(key_type, KeyType::Rsa2048 | KeyType::Rsa3072)
                || usage != Usage::EncryptDecrypt
            {
                return Err(AppError::invalid(
                    "invalid_purpose",
                    "client-side encryption keys are RSA_2048 or RSA_3072 with ENCRYPT_DECRYPT",
                ));
            }
            if request
                .expires_in_days
                .is_some_and(|days| !(1..=365).contains(&days))
            {
                return Err(AppError::invalid(
                    "invalid_expiry",
                    "expiresInDays is 1 to 365",
                ));
            }
            let subject = request.subject.clone().ok_or_else(|| {
                AppError::invalid(
                    "missing_subject",
                    "a client-side encryption key names its subject (the device)",
                )
            })?;
            check_label(&subject, "a subject", "invalid_subject")?;
            Some(subject)
        }
        Some(_) => {
            return Err(AppError::invalid(
                "invalid_purpose",
                "purpose is client_side_encryption (or absent)",
            ))
        }
    };
    let name = match (request.name, &subject) {
        (Some(name), _) => name,
        // Client-side encryption keys are many per subject: named for it.
        (None, Some(subject)) => format!("cse-{subject}-{}", crate::kernel::db::new_id("k")),
        // The seed SDKs create keys without a name: one is made up.
        (None, None) => crate::kernel::db::new_id("key"),
    };
    check_label(&name, "a key name", "invalid_name")?;
    Ok(NewKey {
        name,
        key_type,
        usage,
        hsm,
        rotation_days,
        subject,
        expires_in_days: request.expires_in_days,
    })
}

/// Create a registry key (software or HSM; client-side encryption keys with a subject).
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateRequest,
    responses((status = 201, description = KEY_VIEW, body = Value)))]
async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateRequest>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let new = new_key(request)?;
    let resource = format!("key:{}", new.name);
    authorize(&state, &caller, "key.create", &resource).await?;
    let mut tx = state.db.begin().await?;
    let (key, public) = keys::create(&state, &mut tx, &caller.org, &caller.identity, &new).await?;
    record(
        &state,
        &mut tx,
        &caller,
        "key.create",
        &resource,
        "allowed",
        "success",
        json!({"key": key.id, "type": key.key_type.as_str(), "usage": key.usage.as_str(), "backend": key.backend}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(key.to_json(public.as_deref()))))
}

/// The org's registry keys.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",
    responses((status = 200, description = "`{items}`: every key of the org (no public keys)", body = Value)))]
async fn list(State(state): State<Arc<AppState>>, caller: Caller) -> AppResult<Json<Value>> {
    crate::http::audited_read(&state, &caller, "key.read", "key:*").await?;
    let items: Vec<Value> = keys::list(&state.db, &caller.org)
        .await?
        .iter()
        .map(|key| key.to_json(None))
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// Loads the key, checks role and policy for `action` on it, and opens a
/// transaction for the operation and its audit record.
async fn begin(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: &str,
) -> AppResult<(KeyRow, crate::kernel::db::Tx)> {
    let key = {
        let mut conn = state.db.pool().acquire().await?;
        keys::load(&mut conn, &caller.org, id).await?
    };
    authorize(state, caller, action, &key.resource()).await?;
    let tx = state.db.begin().await?;
    Ok((key, tx))
}

async fn finish(
    state: &AppState,
    caller: &Caller,
    mut tx: crate::kernel::db::Tx,
    key: &KeyRow,
    action: &str,
    detail: Value,
) -> AppResult<()> {
    record(
        state,
        &mut tx,
        caller,
        action,
        &key.resource(),
        "allowed",
        "success",
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A registry key (with its latest public key).
#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, description = KEY_VIEW, body = Value)))]
async fn read(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    let (key, mut tx) = begin(&state, &caller, &id, "key.read").await?;
    let public = keys::public_key(&mut tx, &key, key.latest_version).await?;
    finish(&state, &caller, tx, &key, "key.read", json!({})).await?;
    Ok(Json(key.to_json(public.as_deref())))
}

/// `?version=`: a version of the key (its latest when absent).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VersionQuery {
    /// The version (the latest when absent).
    #[serde(default)]
    version: Option<i64>,
}

/// A version's public key (?version=), PEM and DER.
#[utoipa::path(get, path = "/api/v1/keys/{id}/public-key", tag = "keys",
    params(("id" = String, Path, description = "The key's id (`key_…`)"), VersionQuery),
    responses((status = 200,
        description = "`{id, version, type, algorithm, publicKey, publicKeyDer}`: PEM, and base64 of the DER",
        body = Value)))]
async fn public_key(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<VersionQuery>,
) -> AppResult<Json<Value>> {
    let (key, mut tx) = begin(&state, &caller, &id, "key.read").await?;
    if !key.key_type.is_asymmetric() {
        return Err(AppError::bad_request(
            "no_public_key",
            "symmetric keys have no public key",
        ));
    }
    let version = query.version.unwrap_or(key.latest_version);
    let der = keys::public_key(&mut tx, &key, version)
        .await?
        .ok_or_else(|| AppError::not_found("key version"))?;
    finish(
        &state,
        &caller,
        tx,
        &key,
        "key.read",
        json!({"version": version}),
    )
    .await?;
    Ok(Json(json!({
        "id": key.id,
        "version": version,
        "type": key.key_type.as_str(),
        "algorithm": key.key_type.algorithm(key.usage),
        "publicKey": crate::engines::keys::engine::public_pem(&der),
        "publicKeyDer": BASE64.encode(&der),
    })))
}

/// Bytes of a message: UTF-8 text unless `encoding` is `base64` or `hex`.
fn decode(text: &str, encoding: Option<&str>, what: &str) -> AppResult<Zeroizing<Vec<u8>>> {
    let bytes = match encoding.unwrap_or("utf8") {
        "utf8" => Some(text.as_bytes().to_vec()),
        "base64" => BASE64.decode(text).ok(),
        "hex" => hex::decode(text.trim_start_matches("0x")).ok(),
        _ => {
            return Err(AppError::bad_request(
                "invalid_encoding",
                "encoding is utf8, base64 or hex",
            ))
        }
    };
    bytes.map(Zeroizing::new).ok_or_else(|| {
        AppError::bad_request(
            "invalid_encoding",
            format!("{what} is not valid {}", encoding.unwrap_or("utf8")),
        )
    })
}

fn digest(text: &str) -> AppResult<[u8; 32]> {
    hex::decode(text.trim_start_matches("0x"))
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| AppError::bad_request("invalid_digest", "digest is hex of 32 bytes"))
}

/// A sign or a verify request: `message` or `digest` (one of them);
/// `signature` and `version` for verify only.
#[derive(Deserialize, ToSchema)]
#[schema(as = KeySignRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SignRequest {
    /// The message, in `encoding` (UTF-8 text by default).
    #[serde(default)]
    message: Option<String>,
    /// Hex of a SHA-256 digest (32 bytes), instead of a message.
    #[serde(default)]
    #[schema(pattern = r"^(?:0x)*[0-9a-fA-F]{64}$")]
    digest: Option<String>,
    #[serde(default)]
    #[schema(schema_with = input_encoding_schema)]
    encoding: Option<String>,
    /// Verify only: the signature, base64.
    #[serde(default)]
    signature: Option<String>,
    /// Verify only: the version that signed (the latest when absent).
    #[serde(default)]
    version: Option<i64>,
    /// The algorithm the caller expects (`ECDSA_SHA_256`; the seed SDKs
    /// write `ECDSA_SHA256`): refused when the key signs another way.
    #[serde(default)]
    algorithm: Option<String>,
}

/// Refuses a request that names another algorithm than the key's
/// (compared without `_` and case, so `ECDSA_SHA256` is `ECDSA_SHA_256`).
fn check_algorithm(key: &KeyRow, asked: Option<&str>) -> AppResult<()> {
    let Some(asked) = asked else {
        return Ok(());
    };
    let plain = |text: &str| -> String {
        text.chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    let algorithm = key.key_type.algorithm(key.usage);
    if plain(asked) == plain(algorithm) {
        Ok(())
    } else {
        Err(AppError::invalid(
            "invalid_algorithm",
            format!("this key signs with {algorithm}"),
        ))
    }
}

/// The message or digest of a sign or verify request (exactly one).
fn signed_input(request: &SignRequest) -> AppResult<Signed> {
    match (&request.message, &request.digest) {
        (Some(message), None) => Ok(Signed::Message(
            decode(message, request.encoding.as_deref(), "message")?.to_vec(),
        )),
        (None, Some(text)) => Ok(Signed::Digest(digest(text)?)),
        _ => Err(AppError::bad_request(
            "invalid_request",
            "give message or digest (one of them)",
        )),
    }
}

/// Sign a message or a SHA-256 digest.
#[utoipa::path(post, path = "/api/v1/keys/{id}/sign", tag = "keys", request_body = SignRequest,
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, description = "`{signature, version, algorithm}`: base64 (DER for ECDSA)", body = Value)))]
async fn sign(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<SignRequest>,
) -> AppResult<Json<Value>> {
    if request.signature.is_some() || request.version.is_some() {
        return Err(AppError::bad_request(
            "invalid_request",
            "signature and version belong to verify",
        ));
    }
    let signed = signed_input(&request)?;
    let (key, mut tx) = begin(&state, &caller, &id, "key.sign").await?;
    check_algorithm(&key, request.algorithm.as_deref())?;
    let (signature, version) = keys::sign(&state, &mut tx, &key, signed).await?;
    finish(
        &state,
        &caller,
        tx,
        &key,
        "key.sign",
        json!({"version": version}),
    )
    .await?;
    Ok(Json(json!({
        "signature": BASE64.encode(&signature),
        "version": version,
        "algorithm": key.key_type.algorithm(key.usage),
    })))
}

/// Verify a signature.
#[utoipa::path(post, path = "/api/v1/keys/{id}/verify", tag = "keys", request_body = SignRequest,
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, description = "`{valid, version}`", body = Value)))]
async fn verify(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<SignRequest>,
) -> AppResult<Json<Value>> {
    let signed = signed_input(&request)?;
    let signature = request
        .signature
        .as_deref()
        .and_then(|text| BASE64.decode(text).ok())
        .ok_or_else(|| AppError::bad_request("invalid_signature", "signature is base64"))?;
    let (key, mut tx) = begin(&state, &caller, &id, "key.verify").await?;
    check_algorithm(&key, request.algorithm.as_deref())?;
    let (valid, version) =
        keys::verify(&state, &mut tx, &key, request.version, signed, signature).await?;
    finish(
        &state,
        &caller,
        tx,
        &key,
        "key.verify",
        json!({"version": version, "valid": valid}),
    )
    .await?;
    Ok(Json(json!({"valid": valid, "version": version})))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = KeyEncryptRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EncryptRequest {
    plaintext: String,
    #[serde(default)]
    #[schema(schema_with = input_encoding_schema)]
    encoding: Option<String>,
    #[serde(default)]
    context: Option<String>,
}

/// Encrypt (custos:v<N>: ciphertexts).
#[utoipa::path(post, path = "/api/v1/keys/{id}/encrypt", tag = "keys", request_body = EncryptRequest,
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, description = "`{ciphertext, version}`", body = Value)))]
async fn encrypt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<EncryptRequest>,
) -> AppResult<Json<Value>> {
    let plaintext = decode(&request.plaintext, request.encoding.as_deref(), "plaintext")?;
    let context = request.context.unwrap_or_default().into_bytes();
    let (key, mut tx) = begin(&state, &caller, &id, "key.encrypt").await?;
    let (ciphertext, version) =
        keys::seal(&state, &mut tx, &key, "encrypt", plaintext, context).await?;
    finish(&state, &caller, tx, &key, "key.encrypt", json!({})).await?;
    Ok(Json(json!({"ciphertext": ciphertext, "version": version})))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = KeyDecryptRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DecryptRequest {
    ciphertext: String,
    #[serde(default)]
    #[schema(schema_with = output_encoding_schema)]
    encoding: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    version: Option<i64>,
}

/// Decrypt (also a client's RSA-OAEP ciphertext, bare base64).
#[utoipa::path(post, path = "/api/v1/keys/{id}/decrypt", tag = "keys", request_body = DecryptRequest,
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, description = "`{plaintext}`: UTF-8 text, or base64 when asked", body = Value)))]
async fn decrypt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<DecryptRequest>,
) -> AppResult<Json<Value>> {
    let context = request.context.unwrap_or_default().into_bytes();
    let (key, mut tx) = begin(&state, &caller, &id, "key.decrypt").await?;
    let plaintext = keys::open_ciphertext(
        &state,
        &mut tx,
        &key,
        "encrypt",
        &request.ciphertext,
        request.version,
        context,
    )
    .await?;
    finish(&state, &caller, tx, &key, "key.decrypt", json!({})).await?;
    let text = match request.encoding.as_deref() {
        Some("base64") => BASE64.encode(&*plaintext),
        None | Some("utf8") => String::from_utf8(plaintext.to_vec()).map_err(|_| {
            AppError::bad_request(
                "plaintext_not_utf8",
                "the plaintext is not UTF-8 text: ask with encoding base64",
            )
        })?,
        Some(_) => {
            return Err(AppError::bad_request(
                "invalid_encoding",
                "encoding is utf8 or base64",
            ))
        }
    };
    Ok(Json(json!({ "plaintext": text })))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = KeyWrapRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WrapRequest {
    /// The data key: base64 of 16 to 64 bytes.
    /// (Canonical padded base64 of 16 to 64 bytes: 18 to 63 bytes in whole
    /// groups, or a one- or two-byte tail after 5 to 20 groups, or a
    /// one-byte tail after 21.)
    #[schema(
        pattern = r"^(?:(?:[A-Za-z0-9+/]{4}){6,21}|(?:[A-Za-z0-9+/]{4}){5,20}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)|(?:[A-Za-z0-9+/]{4}){21}[A-Za-z0-9+/][AQgw]==)$"
    )]
    key: String,
    #[serde(default)]
    context: Option<String>,
}

/// Wrap a data key.
#[utoipa::path(post, path = "/api/v1/keys/{id}/wrap", tag = "keys", request_body = WrapRequest,
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, description = "`{wrapped, version}`", body = Value)))]
async fn wrap(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<WrapRequest>,
) -> AppResult<Json<Value>> {
    let material = BASE64
        .decode(&request.key)
        .ok()
        .filter(|bytes| (16..=64).contains(&bytes.len()))
        .map(Zeroizing::new)
        .ok_or_else(|| AppError::bad_request("invalid_key", "key is base64 of 16 to 64 bytes"))?;
    let context = request.context.unwrap_or_default().into_bytes();
    let (key, mut tx) = begin(&state, &caller, &id, "key.wrap").await?;
    let (wrapped, version) = keys::seal(&state, &mut tx, &key, "wrap", material, context).await?;
    finish(&state, &caller, tx, &key, "key.wrap", json!({})).await?;
    Ok(Json(json!({"wrapped": wrapped, "version": version})))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = KeyUnwrapRequest)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UnwrapRequest {
    wrapped: String,
    #[serde(default)]
    context: Option<String>,
}

/// Unwrap a data key.
#[utoipa::path(post, path = "/api/v1/keys/{id}/unwrap", tag = "keys", request_body = UnwrapRequest,
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses((status = 200, description = "`{key}`: base64 of the data key", body = Value)))]
async fn unwrap(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UnwrapRequest>,
) -> AppResult<Json<Value>> {
    let context = request.context.unwrap_or_default().into_bytes();
    let (key, mut tx) = begin(&state, &caller, &id, "key.unwrap").await?;
    let material = keys::open_ciphertext(
        &state,
        &mut tx,
        &key,
        "wrap",
        &request.wrapped,
        None,
        context,
    )
    .await?;
    finish(&state, &caller, tx, &key, "key.unwrap", json!({})).await?;
    Ok(Json(json!({ "key": BASE64.encode(&*material) })))
}

/// Rotation and destruction: through the policy, at once or stored for
/// approval.
async fn gated(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: &str,
) -> AppResult<(StatusCode, Json<Value>)> {
    let key = {
        let mut conn = state.db.pool().acquire().await?;
        keys::load(&mut conn, &caller.org, id).await?
    };
    if key.is_destroyed() {
        return Err(AppError::new(
            ErrorKind::Gone,
            "key_destroyed",
            "the key was destroyed: its material no longer exists",
        ));
    }
    let body = json!({ "id": key.id });
    let resource = key.resource();
    match operations::gate(state, caller, action, &resource, &body).await? {
        Gate::Pending(answer) => Ok((StatusCode::ACCEPTED, Json(answer))),
        Gate::Proceed(_) => {
            let mut tx = state.db.begin().await?;
            let answer = if action == "key.rotate" {
                keys::rotate_stored(state, &mut tx, &caller.org, &body).await?
            } else {
                keys::destroy_stored(state, &mut tx, &caller.org, &body).await?
            };
            record(
                state,
                &mut tx,
                caller,
                action,
                &resource,
                "allowed",
                "success",
                json!({"version": answer.get("version")}),
            )
            .await?;
            tx.commit().await?;
            // An HSM key was committed `destroying`: its token objects go now.
            let answer = match action {
                "key.destroy" => keys::finish_destroy_stored(state, &caller.org, &body)
                    .await
                    .unwrap_or(answer),
                _ => answer,
            };
            Ok((StatusCode::OK, Json(answer)))
        }
    }
}

/// Rotate: a new version (202 with an approval under the default policy).
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses(
        (status = 200, description = KEY_VIEW, body = Value),
        (status = 202, description = "Waits for an approval", body = Pending),
    ))]
async fn rotate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Value>)> {
    gated(&state, &caller, &id, "key.rotate").await
}

/// Destroy (crypto-shred) a key; 202 with an approval under the default policy.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses(
        (status = 200, description = "The key, `state: destroyed`, its material gone", body = Value),
        (status = 202, description = "Waits for approvals", body = Pending),
    ))]
async fn destroy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Value>)> {
    gated(&state, &caller, &id, "key.destroy").await
}
