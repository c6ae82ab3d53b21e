//! Transit's service layer, shared by both dialects: the authorisation of
//! a call on a key (the one path, `gate`), loading opened keys (cached for
//! the data plane), encryption budgets reserved in blocks, single items
//! and batches, and the audit records (one per call; the data plane's go
//! through the group commit).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::engines::transit::crypto::{
    self, Binding, HashAlgorithm, KeyType, Marshaling, SignatureOptions, TransitError,
};
use crate::engines::transit::store::{KeyInfo, LoadedKey, Take};
use crate::engines::transit::{store_error, transit_error};
use crate::kernel::auth::Caller;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::guard::record;
use crate::kernel::operations::{self, Gate};
use crate::kernel::state::AppState;

/// Items one batch may hold.
pub const MAX_BATCH: usize = 10_000;

// ---- errors ------------------------------------------------------------------

/// An item's error inside a batch answer.
pub(super) fn item_error(error: &AppError) -> Value {
    json!({"code": error.code, "message": error.message})
}

// ---- the operations both dialects share ---------------------------------------

/// The one authorisation path (`gate`: role, policy with `deny`,
/// `allowedIPs`, `timeWindow` and `requireMFA`, refusals audited) for a
/// transit call on key `name`; both dialects call it from the operation
/// they share, so no route can skip it. A cached decision input: no
/// database round trip unless MFA is required or the call is refused.
pub(super) async fn authorize(
    state: &AppState,
    caller: &Caller,
    action: &str,
    name: &str,
) -> AppResult<()> {
    crate::http::authorize(state, caller, action, &format!("transit-key:{name}")).await
}

pub(super) async fn load(
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
pub(super) async fn load_data_plane(
    state: &AppState,
    org: &str,
    name: &str,
) -> AppResult<Arc<LoadedKey>> {
    if let Some(key) = state.transit.cached(org, name) {
        return Ok(key);
    }
    let mut conn = state.db.pool().acquire().await?;
    load(state, &mut conn, org, name).await
}

pub(super) fn binding<'a>(
    key: &'a LoadedKey,
    version: u32,
    context: Option<&'a [u8]>,
) -> Binding<'a> {
    Binding {
        org_id: &key.org,
        key_name: &key.name,
        version,
        context,
    }
}

pub(super) fn encrypt_one(
    key: &LoadedKey,
    plaintext: &[u8],
    context: Option<&[u8]>,
) -> AppResult<String> {
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

pub(super) fn decrypt_one(
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
pub(super) async fn reserve(
    state: &AppState,
    tx: &mut crate::kernel::db::Tx,
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
pub(super) async fn refill(state: &AppState, key: &LoadedKey) -> AppResult<()> {
    let mut tx = state.db.begin().await?;
    state
        .transit
        .refill(&state.keyring, &mut tx, key)
        .await
        .map_err(store_error)?;
    tx.commit().await?;
    Ok(())
}

pub(super) fn parse_key_type(name: Option<&str>) -> AppResult<KeyType> {
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
pub(super) fn one_or_batch<T>(
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

pub(super) fn check_batch(len: usize) -> AppResult<()> {
    if len == 0 || len > MAX_BATCH {
        return Err(AppError::invalid(
            "invalid_batch",
            format!("a batch holds 1 to {MAX_BATCH} items"),
        ));
    }
    Ok(())
}

pub(super) fn key_json(info: &KeyInfo) -> Value {
    info.to_json()
}

/// Text or base64 input, by `encoding` (`utf8` default, or `base64`).
pub(super) fn decode_input(text: &str, encoding: Option<&str>) -> AppResult<Zeroizing<Vec<u8>>> {
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

pub(super) fn encode_output(bytes: &[u8], encoding: Option<&str>) -> AppResult<String> {
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

pub(super) fn vault_base64(text: &str, what: &'static str) -> AppResult<Zeroizing<Vec<u8>>> {
    BASE64
        .decode(text)
        .map(Zeroizing::new)
        .map_err(|_| AppError::bad_request("invalid_encoding", format!("{what} must be base64")))
}

pub(super) async fn audit(
    state: &AppState,
    tx: &mut crate::kernel::db::Tx,
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
pub(super) async fn audit_batched(
    state: &AppState,
    caller: &Caller,
    action: &str,
    key: &str,
    detail: Value,
) -> AppResult<()> {
    state
        .audit
        .record(crate::kernel::audit::OwnedAuditEvent {
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

pub(super) fn text_bytes(text: &str) -> Secret {
    Zeroizing::new(text.as_bytes().to_vec())
}

/// The audit detail of a batch call; `vault` marks the Vault-compatible
/// routes.
pub(super) fn batch_detail<T>(
    results: &[AppResult<T>],
    vault: bool,
    version: Option<u32>,
) -> Value {
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
pub(super) async fn encrypt_items<T>(
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
pub(super) async fn decrypt_items<'a, T>(
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

// ---- key management and the single-item operations ------------------------

pub(super) async fn create(
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

pub(super) async fn read(state: &AppState, caller: &Caller, name: &str) -> AppResult<KeyInfo> {
    authorize(state, caller, "transit.read", name).await?;
    let mut tx = state.db.begin().await?;
    let key = load(state, &mut tx, &caller.org, name).await?;
    audit(state, &mut tx, caller, "transit.key.read", name, json!({})).await?;
    tx.commit().await?;
    Ok(key.info())
}

/// Rotates a key, or stores the rotation for approval (the default policy
/// asks one admin to approve `transit.rotate`): `Err` holds the `202`
/// answer.
pub(super) async fn rotate(
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
    let body = serde_json::to_value(crate::engines::transit::RotateBody {
        name: name.to_string(),
    })
    .map_err(|_| AppError::internal("transit", "rotation body"))?;
    let resource = format!("transit-key:{name}");
    match operations::gate(state, caller, "transit.rotate", &resource, &body).await? {
        Gate::Pending(answer) => Ok(Err(answer)),
        Gate::Proceed(_) => {
            let mut tx = state.db.begin().await?;
            let info =
                crate::engines::transit::rotate_key(state, &mut tx, &caller.org, name).await?;
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

pub(super) async fn rewrap_one(
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

pub(super) async fn datakey_one(
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

pub(super) fn signature_options(
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

pub(super) async fn sign_one(
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

pub(super) async fn verify_one(
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

pub(super) async fn hmac_one(
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
