//! Transit: encryption as a service with named keys per org.
//!
//! `crypto` is the engine (key types, `vault:v<N>:` ciphertexts bound to
//! org, key name, version and context, sign/verify, HMAC); `store` keeps the
//! keys under the keyring and opened versions in memory. The HTTP routes,
//! Custos' own and the Vault-compatible ones, are in `api::transit`.

pub mod crypto;
mod routes;
mod service;
pub mod store;
mod vault;

pub use routes::routes;

use serde_json::{json, Value};

use crate::kernel::db::Tx;
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::state::AppState;
use crypto::TransitError;
use store::{KeyInfo, StoreError};

/// The API error of an engine error.
pub fn transit_error(error: TransitError) -> AppError {
    match error {
        TransitError::InvalidKeyMaterial => AppError::internal("transit key material", error),
        other => AppError::bad_request(other.code(), other.to_string()),
    }
}

/// The API error of a store error.
pub fn store_error(error: StoreError) -> AppError {
    match error {
        StoreError::NotFound => AppError::not_found("transit key"),
        StoreError::Exists => {
            AppError::conflict("already_exists", "a transit key of that name exists")
        }
        StoreError::Invalid(message) => AppError::invalid("invalid_request", message),
        StoreError::Crypto(error) => transit_error(error),
        StoreError::Keyring(error) => error.into(),
        StoreError::Database(error) => error.into(),
    }
}

impl KeyInfo {
    /// The key as Custos' API shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.key_type.as_str(),
            "latestVersion": self.latest_version,
            "minDecryptionVersion": self.min_decryption_version,
            "publicKeys": self.public_keys.iter().map(|(version, key)| json!({"version": version, "publicKey": key})).collect::<Vec<_>>(),
            "exportable": false,
            "createdAt": self.created_at,
        })
    }
}

/// The stored request of `transit.rotate`: `{"name": "..."}`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RotateBody {
    /// The key's name.
    pub name: String,
}

/// Rotates a transit key (`transit.rotate`), at once or once approved
/// (`crate::kernel::operations`). Returns the key.
pub async fn rotate_stored(
    state: &AppState,
    tx: &mut Tx,
    actor: &crate::kernel::engine::Actor<'_>,
    body: &Value,
) -> AppResult<Value> {
    let body: RotateBody = serde_json::from_value(body.clone())
        .map_err(|_| AppError::internal("transit", "a stored rotation is malformed"))?;
    Ok(rotate_key(state, tx, actor.org, &body.name)
        .await?
        .to_json())
}

/// Adds a version to a transit key and makes it the latest.
pub async fn rotate_key(
    state: &AppState,
    tx: &mut Tx,
    org: &str,
    name: &str,
) -> AppResult<KeyInfo> {
    let key = state
        .transit
        .rotate(&state.keyring, tx, org, name)
        .await
        .map_err(store_error)?;
    Ok(key.info())
}

/// The stored request of `transit.config`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigBody {
    /// The key's name.
    pub name: String,
    /// The oldest version that still decrypts.
    pub min_decryption_version: u32,
}

/// Changes a key's settings (`transit.config`). Returns the key.
pub async fn configure_stored(
    state: &AppState,
    tx: &mut Tx,
    actor: &crate::kernel::engine::Actor<'_>,
    body: &Value,
) -> AppResult<Value> {
    let body: ConfigBody = serde_json::from_value(body.clone())
        .map_err(|_| AppError::internal("transit", "a stored key setting is malformed"))?;
    Ok(configure_key(state, tx, actor.org, &body).await?.to_json())
}

/// Applies `body` to its key.
pub async fn configure_key(
    state: &AppState,
    tx: &mut Tx,
    org: &str,
    body: &ConfigBody,
) -> AppResult<KeyInfo> {
    let key = state
        .transit
        .set_min_decryption(
            &state.keyring,
            tx,
            org,
            &body.name,
            body.min_decryption_version,
        )
        .await
        .map_err(store_error)?;
    Ok(key.info())
}

/// Transit's stored operations (rotation and configuration that waited
/// for an approval), run for their requester.
pub struct StoredOperations;

impl crate::kernel::engine::Executor for StoredOperations {
    fn actions(&self) -> &'static [&'static str] {
        &["transit.rotate", "transit.config"]
    }

    fn run<'a>(
        &'a self,
        state: &'a AppState,
        tx: &'a mut Tx,
        operation: &'a crate::kernel::engine::Approved,
    ) -> futures::future::BoxFuture<'a, AppResult<Value>> {
        Box::pin(async move {
            let actor = crate::kernel::engine::Actor {
                org: &operation.org,
                identity: &operation.requested_by,
            };
            match operation.action.as_str() {
                "transit.rotate" => rotate_stored(state, tx, &actor, &operation.body).await,
                "transit.config" => configure_stored(state, tx, &actor, &operation.body).await,
                other => Err(crate::kernel::engine::no_executor(other)),
            }
        })
    }
}
