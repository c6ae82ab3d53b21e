//! The operator endpoint: `/healthz` (the process is up), `/readyz` (the
//! network listens and the store opens), `/metrics` (Prometheus) and
//! `/status` (identity, peers, wallets, pool size as JSON).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::store::ShareStore;
use crate::transport::Network;

/// What the handlers read.
#[derive(Clone)]
pub struct OperatorState {
    /// The node's store.
    pub store: Arc<ShareStore>,
    /// The node's network handle.
    pub network: Network,
    /// Renders the Prometheus text.
    pub metrics: PrometheusHandle,
}

/// The `/status` document.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Status {
    /// Party id (Ed25519 public key), hex.
    pub party_id: String,
    /// libp2p listen addresses.
    pub listen: Vec<String>,
    /// Parties connected now, hex.
    pub connected: Vec<String>,
    /// Wallets held: (wallet hex, curve, generations).
    pub wallets: Vec<(String, String, Vec<u32>)>,
    /// Prime sets pooled.
    pub prime_pool: usize,
}

/// The operator router.
pub fn app(state: OperatorState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|State(state): State<OperatorState>| async move { state.metrics.render() }),
        )
        .route("/status", get(status))
        .with_state(state)
}

async fn ready(State(state): State<OperatorState>) -> (StatusCode, &'static str) {
    let listening = !state.network.listen_addrs().await.is_empty();
    let store_ok = state.store.wallets().is_ok();
    if listening && store_ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn status(State(state): State<OperatorState>) -> Result<Json<Status>, (StatusCode, String)> {
    let internal =
        |error: crate::store::StoreError| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string());
    let wallets = state
        .store
        .wallets()
        .map_err(internal)?
        .into_iter()
        .map(|wallet| {
            (
                hex::encode(wallet.wallet.0),
                wallet.curve.to_string(),
                wallet
                    .generations
                    .iter()
                    .map(|generation| generation.0)
                    .collect(),
            )
        })
        .collect();
    Ok(Json(Status {
        party_id: hex::encode(state.network.me().0),
        listen: state
            .network
            .listen_addrs()
            .await
            .iter()
            .map(ToString::to_string)
            .collect(),
        connected: state
            .network
            .connected()
            .await
            .iter()
            .map(|party| hex::encode(party.0))
            .collect(),
        wallets,
        prime_pool: state.store.prime_pool().map_err(internal)?.len(),
    }))
}
