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

pub mod api;
pub mod audit;
pub mod auth;
pub mod chain;
pub mod config;
pub mod db;
pub mod error;
pub mod keyring;
pub mod nodes;
pub mod openapi;
pub mod orgs;
pub mod policy;
pub mod signatures;
pub mod signing;
pub mod state;
pub mod totp;
pub mod transit;
pub mod wallets;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use custos_signer_node::coordinator::Coordinator;
use ed25519_dalek::SigningKey;

use crate::config::{Config, SealMode};
use crate::db::Db;
use crate::keyring::Keyring;
use crate::nodes::Registry;
use crate::state::{AppState, RateLimiter};

/// Loads the coordinator's Ed25519 key from `path`, creating it (mode 0600)
/// when missing. Nodes pin its public key.
pub fn load_or_create_coordinator_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    use zeroize::Zeroize;
    if let Ok(mut bytes) = std::fs::read(path) {
        let mut secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
        bytes.zeroize();
        let key = SigningKey::from_bytes(&secret);
        secret.zeroize();
        return Ok(key);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let temporary = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let _ = std::fs::remove_file(&temporary);
        let mut file = options.open(&temporary)?;
        file.write_all(&key.to_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    Ok(key)
}

/// Loads the keyring and, for the backends that can, unseals it: `env`
/// (initializing it on the first start) and `hsm` (once initialized).
/// Shamir starts sealed (or uninitialized) and waits for the operators.
async fn open_keyring(config: &Config, db: &Db) -> anyhow::Result<Keyring> {
    let mut conn = db.pool().acquire().await?;
    let keyring = Keyring::load(&mut conn, config.seal.mode).await?;
    match config.seal.mode {
        SealMode::Env => {
            if !config.dev_mode {
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
            } else {
                keyring.init_env(&mut conn, key).await?;
            }
        }
        SealMode::Hsm => {
            let master = config
                .pkcs11_master_key()
                .ok_or_else(|| anyhow::anyhow!("seal mode hsm needs a [seal.pkcs11] section"))?;
            if keyring.is_initialized() {
                keyring.unseal_hsm(&master)?;
            } else {
                tracing::warn!("not initialized: POST /api/v1/sys/init with {{\"hsm\": true}}");
            }
        }
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
    let keyring = Arc::new(open_keyring(&config, &db).await?);
    let key = load_or_create_coordinator_key(&config.coordinator_key_path())?;
    let registry = Arc::new(Registry::from_config(&config.nodes)?);
    let coordinator = Arc::new(Coordinator::start(key, registry.node_infos()?)?);
    tracing::info!(coordinator = %hex::encode(coordinator.party().0), nodes = registry.nodes().len(), "coordinator started");
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
    let state = Arc::new(AppState {
        db: db.clone(),
        replica: config.replica_id(),
        limiter: RateLimiter::new(config.rate_limit_per_sec),
        config,
        coordinator: coordinator.clone(),
        registry: registry.clone(),
        worker_wake: tokio::sync::Notify::new(),
        metrics,
        keyring,
        transit: Default::default(),
    });
    signing::recover_own_leases(&state)
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let prober = {
        let (registry, db, coordinator) = (registry.clone(), db.clone(), coordinator.clone());
        tokio::spawn(async move {
            loop {
                registry.probe(&db, &coordinator).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let worker = tokio::spawn(signing::worker(state.clone()));
    let address = listener.local_addr()?;
    tracing::info!(%address, "control plane listening");
    let served = axum::serve(
        listener,
        api::app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    prober.abort();
    worker.abort();
    db.close().await;
    served?;
    Ok(())
}
