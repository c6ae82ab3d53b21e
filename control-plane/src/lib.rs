//! # custos-control-plane
//!
//! The Custos control plane: the HTTP API (axum), storage (sqlx over
//! PostgreSQL or SQLite), machine identities and tokens, policies and
//! approvals, the audit hash chain, MPC wallets and policy-gated signing
//! through the embedded coordinator of signer nodes.
//!
//! It never holds a share of an MPC key: it stores public keys and public
//! key data, and asks a quorum of nodes to sign what policy allowed.
//! `run` is the whole server; `main.rs` parses configuration and calls it,
//! and tests call the same `run` with their own listener and shutdown.

#![forbid(unsafe_code)]

pub mod engines;
pub mod http;
pub mod kernel;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use custos_signer_node::coordinator::Coordinator;
use ed25519_dalek::SigningKey;

use crate::engines::keys;
use crate::engines::wallets::nodes::Registry;
use crate::engines::wallets::signing;
use crate::kernel::config::{Config, SealMode};
use crate::kernel::db::Db;
use crate::kernel::keyring::Keyring;
use crate::kernel::state::AppState;
use crate::kernel::{audit, auth, authority, webhooks, worker};

/// The `meta` name of the coordinator's key under the keyring.
const COORDINATOR_SECRET: &str = "coordinator-key";

/// The coordinator's Ed25519 key (nodes pin its public key), kept under the
/// keyring: wrapped by the master key in the store, created on first use.
/// A key file of an older deployment (`legacy`, the data folder's
/// `coordinator.key`) is taken over once, so that the nodes' pin stays
/// valid, and then deleted. Needs the keyring unsealed.
pub async fn coordinator_key(
    keyring: &Keyring,
    db: &Db,
    legacy: &std::path::Path,
) -> anyhow::Result<SigningKey> {
    use zeroize::Zeroize;
    let mut conn = db.pool().acquire().await?;
    let mut from_file = None;
    if let Ok(mut bytes) = std::fs::read(legacy) {
        let secret: Result<[u8; 32], _> = bytes.as_slice().try_into();
        bytes.zeroize();
        from_file =
            Some(secret.map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", legacy.display()))?);
    }
    let imported = from_file.is_some();
    let secret = keyring
        .system_secret(&mut conn, COORDINATOR_SECRET, || match from_file {
            Some(bytes) => custos_protocol::seal::SealingKey::from_bytes(bytes),
            None => custos_protocol::seal::SealingKey::generate(&mut rand_core::OsRng),
        })
        .await?;
    let mut bytes = *secret.expose_bytes();
    let key = SigningKey::from_bytes(&bytes);
    bytes.zeroize();
    if imported {
        std::fs::remove_file(legacy)?;
        tracing::warn!(
            file = %legacy.display(),
            "the coordinator key moved under the keyring; its file is deleted"
        );
    }
    Ok(key)
}

/// The coordinator's public key (hex), for `custos coordinator-key`: opens
/// the store and the keyring as `run` would (the `env` and `hsm` backends
/// unseal here; Shamir cannot) and creates the key if missing.
pub async fn coordinator_public_key(config: &Config) -> anyhow::Result<String> {
    let database_url = config.database_url();
    if database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let db = Db::connect(&database_url).await?;
    let keyring = open_keyring(config, &db, true).await?;
    if keyring.is_sealed() {
        anyhow::bail!(
            "the keyring is sealed (seal mode {}): unseal the server and read \
             GET /api/v1/sys/coordinator-key",
            config.seal.mode.as_str()
        );
    }
    let key = coordinator_key(&keyring, &db, &config.coordinator_key_path()).await?;
    db.close().await;
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

/// Starts the coordinator once the keyring is unsealed (at start for the
/// `env` and `hsm` backends, after the operators' unseal for Shamir).
/// Idempotent.
pub async fn start_coordinator(state: &AppState) -> anyhow::Result<()> {
    if state.coordinator_if_started().is_some() {
        return Ok(());
    }
    let key = coordinator_key(
        &state.keyring,
        &state.db,
        &state.config.coordinator_key_path(),
    )
    .await?;
    let coordinator = Arc::new(Coordinator::start(key, state.registry.node_infos()?)?);
    let mut slot = state
        .coordinator
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if slot.is_none() {
        tracing::info!(coordinator = %hex::encode(coordinator.party().0), nodes = state.registry.nodes().len(), "coordinator started");
        *slot = Some(coordinator);
    }
    Ok(())
}

/// `custos audit verify`: recomputes the chains of `org` (or of every
/// org) in the store and checks them against their signed checkpoints.
/// The checkpoint key is, in order: `checkpoint_key` (hex, the operator's
/// pin), the configuration's `audit.checkpoint_public_key`, or the key
/// derived from the keyring when `config` is given and its seal mode
/// unseals here (`env`, `hsm`). Never the database alone: a database writer
/// who can cut the chain could also replace a public key stored beside it.
/// Without any of these (a Shamir-sealed store), the signatures are not
/// checked and the report says so. Writes nothing.
pub async fn verify_audit(
    config: Option<&Config>,
    database_url: Option<&str>,
    org: Option<&str>,
    checkpoint_key: Option<&str>,
) -> anyhow::Result<audit::VerifyReport> {
    let database_url = match (database_url, config) {
        (Some(url), _) => url.to_string(),
        (None, Some(config)) => config.database_url(),
        (None, None) => anyhow::bail!("give --database-url or --config"),
    };
    let parse = |text: &str| {
        audit::checkpoints::parse_public_key(text).ok_or_else(|| {
            anyhow::anyhow!("a checkpoint public key is 64 hex characters of an Ed25519 key")
        })
    };
    let mut pinned = checkpoint_key.map(parse).transpose()?;
    if let Some(configured) =
        config.and_then(|config| config.audit.checkpoint_public_key.as_deref())
    {
        let configured = parse(configured)?;
        if pinned.is_some_and(|pinned| pinned != configured) {
            anyhow::bail!("--checkpoint-key is not the configured audit.checkpoint_public_key");
        }
        pinned = Some(configured);
    }
    let db = Db::connect(&database_url).await?;
    let key = match (pinned, config) {
        (Some(key), _) => audit::KeySource::Key(key),
        (None, Some(config)) => {
            let keyring = open_keyring(config, &db, false).await?;
            if keyring.is_sealed() {
                audit::KeySource::Unchecked
            } else {
                match audit::checkpoints::stored_public_key(&db, &keyring).await {
                    Ok(Some(key)) => audit::KeySource::Key(key),
                    Ok(None) => audit::KeySource::Missing,
                    Err(audit::checkpoints::CheckpointError::Database(error)) => {
                        return Err(error.into())
                    }
                    Err(error) => {
                        tracing::error!(%error, "the audit checkpoint key does not open");
                        audit::KeySource::Missing
                    }
                }
            }
        }
        (None, None) => audit::KeySource::Unchecked,
    };
    let trust = audit::CheckpointTrust {
        key,
        known: Default::default(),
    };
    let report = audit::verify(&db, org, &trust).await;
    db.close().await;
    Ok(report?)
}

/// Loads the keyring and, for the backends that can, unseals it: `env`
/// and `hsm` (once initialized). Shamir starts sealed (or uninitialized)
/// and waits for the operators. With `server_start` (the server, or
/// `coordinator-key` which opens the store as the server would), `env`
/// initializes itself on the first start and the operator is told what
/// comes next; without it (`audit verify`), nothing is written or logged.
async fn open_keyring(config: &Config, db: &Db, server_start: bool) -> anyhow::Result<Keyring> {
    let mut conn = db.pool().acquire().await?;
    let keyring = Keyring::load(&mut conn, config.seal.mode).await?;
    match config.seal.mode {
        SealMode::Env => {
            if !config.dev_mode && server_start {
                tracing::warn!(
                    "seal mode `env` keeps the master key in an environment variable: \
                     for development only; use shamir or hsm in production"
                );
            }
            let key = config
                .seal
                .master_key
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("seal mode env needs CUSTOS_MASTER_KEY"))?;
            let key = parse_master_key(key.expose())?;
            if keyring.is_initialized() {
                keyring.unseal_env(key)?;
            } else if server_start {
                keyring.init_env(&mut conn, key).await?;
            }
        }
        SealMode::Hsm => {
            let master = config
                .pkcs11_master_key()
                .ok_or_else(|| anyhow::anyhow!("seal mode hsm needs a [seal.pkcs11] section"))?;
            if keyring.is_initialized() {
                keyring.unseal_hsm(&master)?;
            } else if server_start {
                tracing::warn!("not initialized: POST /api/v1/sys/init with {{\"hsm\": true}}");
            }
        }
        SealMode::Shamir if !server_start => {}
        SealMode::Shamir => {
            if keyring.is_initialized() {
                tracing::warn!(
                    "sealed: unseal with the operators' shares (POST /api/v1/sys/unseal)"
                );
            } else {
                tracing::warn!("not initialized: POST /api/v1/sys/init");
            }
        }
    }
    Ok(keyring)
}

/// A 32-byte master key from 64 hex characters.
fn parse_master_key(text: &str) -> anyhow::Result<custos_protocol::seal::SealingKey> {
    let bytes = zeroize::Zeroizing::new(
        hex::decode(text.trim())
            .map_err(|_| anyhow::anyhow!("CUSTOS_MASTER_KEY must be 64 hex characters"))?,
    );
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("CUSTOS_MASTER_KEY must be 64 hex characters"))?;
    Ok(custos_protocol::seal::SealingKey::from_bytes(key))
}

/// What `run` reports once it listens.
#[derive(Clone, Debug)]
pub struct Started {
    /// The bound address.
    pub address: SocketAddr,
}

/// Runs the control plane on `listener` until `shutdown` completes.
/// On the first start it prints the root credentials once on stdout as
/// `CUSTOS_ROOT_CREDENTIALS {"clientId":…,"clientSecret":…}`.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let database_url = config.database_url();
    if database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let db = Db::connect(&database_url).await?;
    let keyring = Arc::new(open_keyring(&config, &db, true).await?);
    let pinned_checkpoint_key = match &config.audit.checkpoint_public_key {
        Some(text) => Some(audit::checkpoints::parse_public_key(text).ok_or_else(|| {
            anyhow::anyhow!(
                "audit.checkpoint_public_key is not 64 hex characters of an Ed25519 key"
            )
        })?),
        None => None,
    };
    let registry = Arc::new(Registry::from_config(&config.nodes)?);
    // With Shamir or HSM seal the root credentials come from `sys/init`;
    // the development backend initializes itself, so they come from here.
    let bootstrapped = if config.seal.mode == SealMode::Env {
        auth::bootstrap(&db)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?
    } else {
        None
    };
    if let Some(credentials) = bootstrapped {
        let line = serde_json::json!({"clientId": credentials.client_id, "clientSecret": credentials.client_secret});
        println!("CUSTOS_ROOT_CREDENTIALS {line}");
        use std::io::Write;
        std::io::stdout().flush()?;
        tracing::warn!("first start: root credentials printed once on stdout; store them now");
    }
    let http: std::collections::HashMap<String, String> = config
        .nodes
        .iter()
        .map(|node| (node.name.clone(), node.http.clone().unwrap_or_default()))
        .collect();
    registry
        .sync_to_store(&db, &http)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let hsm_keys = match &config.keys.pkcs11 {
        Some(token) => {
            let (module, label, pin) = (
                token.module.clone(),
                token.token_label.clone(),
                token.pin.expose().to_string(),
            );
            let store = tokio::task::spawn_blocking(move || {
                kernel::hsm::HsmKeyStore::open(&module, &label, &pin)
            })
            .await?
            .map_err(|error| anyhow::anyhow!("the key registry's PKCS#11 token: {error}"))?;
            Some(store)
        }
        None => None,
    };
    let state = Arc::new(AppState::new(
        config,
        db.clone(),
        keyring,
        registry.clone(),
        hsm_keys,
        metrics,
        pinned_checkpoint_key,
    ));
    signing::recover_own_leases(&state)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if state.keyring.is_sealed() {
        // Sealed from the start (Shamir, or `hsm` before init): the token
        // store stays locked until the unseal, as after a `sys/seal`.
        state.lock_token_keys();
    }
    if !state.keyring.is_sealed() {
        authority::seal_unsealed_once(&state.keyring, &state.db)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        start_coordinator(&state).await?;
    }
    let prober = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                if let Some(coordinator) = state.coordinator_if_started() {
                    state.registry.probe(&state.db, &coordinator).await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let worker = tokio::spawn(worker::run(state.clone()));
    let webhook_worker = tokio::spawn(webhooks::worker(state.clone()));
    let key_scheduler = tokio::spawn(keys::scheduler(state.clone()));
    let checkpointer = tokio::spawn(audit::checkpoints::checkpoint_worker(state.clone()));
    // Login throttle keys whose budget is full again are dropped, so that
    // made-up client ids do not grow the table.
    let throttle_sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                state.logins.forget_idle();
            }
        })
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, "control plane listening");
    let served = axum::serve(
        listener,
        http::app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    prober.abort();
    worker.abort();
    webhook_worker.abort();
    key_scheduler.abort();
    checkpointer.abort();
    throttle_sweeper.abort();
    db.close().await;
    served?;
    Ok(())
}
