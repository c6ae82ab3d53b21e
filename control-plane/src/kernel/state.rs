//! What every handler and background task shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use custos_signer_node::coordinator::Coordinator;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;

use crate::engines::wallets::nodes::Registry;
use crate::kernel::config::Config;
use crate::kernel::db::Db;
use crate::kernel::keyring::Keyring;

/// Shared state.
pub struct AppState {
    /// The store.
    pub db: Db,
    /// Settings.
    pub config: Config,
    /// Drives the signer nodes; holds no share. Started once the keyring
    /// is unsealed (its key is kept under the keyring).
    pub coordinator: std::sync::RwLock<Option<Arc<Coordinator>>>,
    /// Nodes and their health.
    pub registry: Arc<Registry>,
    /// This replica's lease owner name.
    pub replica: String,
    /// Wakes the signing worker (an approval completed).
    pub worker_wake: Notify,
    /// Per-identity request budget.
    pub limiter: RateLimiter,
    /// Prometheus text rendering.
    pub metrics: Option<PrometheusHandle>,
    /// Seal state, the master key and the org root keys.
    pub keyring: Arc<Keyring>,
    /// Opened transit keys (a cache; the store is the truth).
    pub transit: crate::engines::transit::store::TransitKeys,
    /// Verified bearer tokens, for at most a second.
    pub tokens: crate::kernel::auth::TokenCache,
    /// Login throttling per client id and per address, before Argon2.
    pub logins: crate::kernel::auth::LoginThrottle,
    /// How many Argon2 hashes of client secrets run at once.
    pub hashes: crate::kernel::auth::HashBudget,
    /// Wrong TOTP codes counted on this replica but not committed yet.
    pub mfa: crate::kernel::mfa::FailureLedger,
    /// Group commit of the audit records of the transit data plane.
    pub audit: crate::kernel::audit::AuditBatcher,
    /// The audit checkpoint key pinned here and the checkpoints written here.
    pub checkpoints: crate::kernel::audit::Checkpoints,
    /// The token of HSM-backed registry keys, when configured.
    pub hsm_keys: Option<crate::kernel::hsm::HsmKeyStore>,
    /// Org policies, briefly (`gate`).
    pub policies: crate::kernel::gate::PolicyCache,
    /// What the engines registered with the core.
    pub engines: crate::kernel::engine::Engines,
}

impl AppState {
    /// The state of a replica over `db` and `keyring` (what `run` serves;
    /// tests that drive `api::app` in process build it the same way).
    pub fn new(
        config: Config,
        db: Db,
        keyring: Arc<Keyring>,
        registry: Arc<Registry>,
        hsm_keys: Option<crate::kernel::hsm::HsmKeyStore>,
        metrics: Option<PrometheusHandle>,
        pinned_checkpoint_key: Option<ed25519_dalek::VerifyingKey>,
    ) -> AppState {
        AppState {
            replica: config.replica_id(),
            limiter: RateLimiter::new(config.rate_limit_per_sec),
            tokens: crate::kernel::auth::TokenCache::new(config.token_cache_ms),
            logins: crate::kernel::auth::LoginThrottle::new(&config.auth),
            hashes: crate::kernel::auth::HashBudget::new(config.auth.password_hash_concurrency),
            mfa: Default::default(),
            coordinator: std::sync::RwLock::new(None),
            registry,
            worker_wake: Notify::new(),
            metrics,
            keyring,
            transit: Default::default(),
            audit: crate::kernel::audit::AuditBatcher::start(db.clone()),
            checkpoints: crate::kernel::audit::Checkpoints::new(pinned_checkpoint_key),
            hsm_keys,
            policies: Default::default(),
            engines: crate::engines::registry(),
            db,
            config,
        }
    }

    /// The coordinator, if started.
    pub fn coordinator_if_started(&self) -> Option<Arc<Coordinator>> {
        self.coordinator
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Drops the coordinator (at seal: its key leaves memory with it once
    /// the runs that hold it end).
    pub fn stop_coordinator(&self) {
        self.coordinator
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// The coordinator (`503 sealed` until the keyring was unsealed).
    pub fn coordinator(&self) -> crate::kernel::error::AppResult<Arc<Coordinator>> {
        self.coordinator_if_started().ok_or_else(|| {
            crate::kernel::error::AppError::unavailable(
                "sealed",
                "the coordinator starts once the control plane is unsealed",
            )
        })
    }

    /// At `sys/seal`: the token store of HSM-backed keys refuses every call
    /// until [`AppState::unlock_token_keys`]. (No engine keeps another key
    /// in memory past a call: software versions are opened per call and
    /// wiped after it; transit's cache is cleared by the seal itself.)
    pub fn lock_token_keys(&self) {
        if let Some(store) = &self.hsm_keys {
            store.lock();
        }
    }

    /// At unseal: logs the token store in again with the configured PIN. A
    /// failure is logged, and HSM keys answer `503 hsm_locked` until the
    /// next seal and unseal (or restart).
    pub async fn unlock_token_keys(&self) {
        let (Some(store), Some(token)) = (self.hsm_keys.clone(), self.config.keys.pkcs11.as_ref())
        else {
            return;
        };
        let pin = zeroize::Zeroizing::new(token.pin.expose().to_string());
        match tokio::task::spawn_blocking(move || store.unlock(&pin)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(code = error.code(), %error, "the token of HSM-backed keys did not log in again at unseal");
            }
            Err(_) => tracing::error!("the token login of HSM-backed keys stopped"),
        }
    }

    /// Wakes the signing worker now instead of at its next tick.
    pub fn wake_worker(&self) {
        self.worker_wake.notify_one();
    }
}

/// A token bucket per identity: `rate` requests per second, bursts of
/// `4 × rate`. Per replica (a deployment of N replicas allows N×).
pub struct RateLimiter {
    rate: f64,
    buckets: std::sync::Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter of `rate` requests per second.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            buckets: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `identity`'s budget; `false` when empty.
    pub fn allow(&self, identity: &str) -> bool {
        let now = Instant::now();
        let burst = self.rate * 4.0;
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs() < 60);
        }
        let (tokens, last) = buckets.entry(identity.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
