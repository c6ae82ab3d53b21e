//! What every handler and background task shares.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use custos_signer_node::coordinator::Coordinator;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;

use crate::config::Config;
use crate::db::Db;
use crate::keyring::Keyring;
use crate::nodes::Registry;

/// Shared state.
pub struct AppState {
    /// The store.
    pub db: Db,
    /// Settings.
    pub config: Config,
    /// Drives the signer nodes; holds no share.
    pub coordinator: Arc<Coordinator>,
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
    pub transit: crate::transit::store::TransitKeys,
}

impl AppState {
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
