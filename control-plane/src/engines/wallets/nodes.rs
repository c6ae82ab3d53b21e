//! The registry of signer nodes and their health, and ECDSA committees.
//!
//! Nodes come from the configuration; every replica probes each node over
//! the coordinator's libp2p channel (a signed `Health` job, which nodes
//! answer without touching shares or replay records) every few seconds and
//! records the result in `nodes`. Quorums prefer healthy nodes.
//!
//! A CGGMP21 wallet needs aux info (Paillier keys) for its committee;
//! nodes keep it per committee, and `committees` records which committees
//! are ready so that creating an ECDSA wallet is a fast DKG.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use custos_protocol::{PartyId, RequestId};
use custos_signer_node::coordinator::{Coordinator, NodeInfo};
use serde::Serialize;
use sqlx::Row;
use tokio::sync::RwLock;

use crate::kernel::config::NodeEntry;
use crate::kernel::db::{now_ms, Db};
use crate::kernel::error::{AppError, AppResult};

/// A node in the registry.
#[derive(Clone, Debug)]
pub struct RegisteredNode {
    /// Operator-facing name.
    pub name: String,
    /// Party id.
    pub party: PartyId,
    /// libp2p address.
    pub address: String,
}

/// A node as `GET /api/v1/nodes` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Name (also accepted as id).
    pub id: String,
    /// Name.
    pub name: String,
    /// Party id / libp2p identity key, hex.
    pub peer_id: String,
    /// libp2p address.
    pub address: String,
    /// `healthy`, `unreachable` or `unknown`.
    pub status: String,
    /// Unix ms of the last successful probe (0: never).
    pub last_seen: i64,
}

/// Nodes and what this replica last saw of them.
pub struct Registry {
    nodes: Vec<RegisteredNode>,
    health: RwLock<HashMap<PartyId, bool>>,
}

/// Parses a hex party id.
pub fn parse_party(hex_text: &str) -> Option<PartyId> {
    let bytes = hex::decode(hex_text).ok()?;
    Some(PartyId(bytes.try_into().ok()?))
}

impl Registry {
    /// Builds the registry from configuration.
    pub fn from_config(entries: &[NodeEntry]) -> anyhow::Result<Registry> {
        let mut nodes = Vec::new();
        for entry in entries {
            let party = parse_party(&entry.id)
                .ok_or_else(|| anyhow::anyhow!("node {}: id is not 64 hex chars", entry.name))?;
            nodes.push(RegisteredNode {
                name: entry.name.clone(),
                party,
                address: entry.address.clone(),
            });
        }
        Ok(Registry {
            nodes,
            health: RwLock::new(HashMap::new()),
        })
    }

    /// The coordinator's view of the nodes.
    pub fn node_infos(&self) -> anyhow::Result<Vec<NodeInfo>> {
        self.nodes
            .iter()
            .map(|node| {
                Ok(NodeInfo {
                    party: node.party,
                    address: node.address.parse()?,
                })
            })
            .collect()
    }

    /// All nodes.
    pub fn nodes(&self) -> &[RegisteredNode] {
        &self.nodes
    }

    /// Finds a node by name or party id hex.
    pub fn find(&self, name_or_id: &str) -> Option<&RegisteredNode> {
        self.nodes
            .iter()
            .find(|node| node.name == name_or_id || hex::encode(node.party.0) == name_or_id)
    }

    /// The name of a party.
    pub fn name_of(&self, party: &PartyId) -> String {
        self.nodes
            .iter()
            .find(|node| node.party == *party)
            .map(|node| node.name.clone())
            .unwrap_or_else(|| hex::encode(party.0))
    }

    /// Whether the last probe reached `party`.
    pub async fn is_healthy(&self, party: &PartyId) -> bool {
        self.health
            .read()
            .await
            .get(party)
            .copied()
            .unwrap_or(false)
    }

    /// `committee` reordered: healthy nodes first, each group in its
    /// original order (quorums are taken from the front).
    pub async fn healthy_first(&self, committee: &[PartyId]) -> Vec<PartyId> {
        let health = self.health.read().await;
        let (mut healthy, unhealthy): (Vec<PartyId>, Vec<PartyId>) = committee
            .iter()
            .partition(|party| health.get(*party).copied().unwrap_or(false));
        healthy.extend(unhealthy);
        healthy
    }

    /// Writes the registry into the store (names, ids, addresses).
    pub async fn sync_to_store(&self, db: &Db, http: &HashMap<String, String>) -> AppResult<()> {
        for node in &self.nodes {
            sqlx::query(
                "INSERT INTO nodes (name, party_id, address, http, status, last_seen) \
                 VALUES ($1, $2, $3, $4, 'unknown', 0) \
                 ON CONFLICT (name) DO UPDATE SET party_id = $2, address = $3, http = $4",
            )
            .bind(&node.name)
            .bind(hex::encode(node.party.0))
            .bind(&node.address)
            .bind(http.get(&node.name).cloned().unwrap_or_default())
            .execute(db.pool())
            .await?;
        }
        Ok(())
    }

    /// Probes every node once and records the outcome.
    pub async fn probe(&self, db: &Db, coordinator: &Coordinator) {
        let probes = self.nodes.iter().map(|node| async move {
            let mut request = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut request);
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                coordinator.health(node.party, RequestId(request)),
            )
            .await;
            (node, matches!(answer, Ok(Ok(_))))
        });
        let results = futures::future::join_all(probes).await;
        let mut health = self.health.write().await;
        for (node, healthy) in results {
            let was = health.insert(node.party, healthy);
            if was != Some(healthy) {
                tracing::info!(node = %node.name, healthy, "node health changed");
            }
            let status = if healthy { "healthy" } else { "unreachable" };
            let outcome = if healthy {
                sqlx::query("UPDATE nodes SET status = $1, last_seen = $2 WHERE name = $3")
                    .bind(status)
                    .bind(now_ms())
                    .bind(&node.name)
                    .execute(db.pool())
                    .await
            } else {
                sqlx::query("UPDATE nodes SET status = $1 WHERE name = $2")
                    .bind(status)
                    .bind(&node.name)
                    .execute(db.pool())
                    .await
            };
            if let Err(error) = outcome {
                tracing::warn!(%error, "recording node health failed");
            }
            metrics::gauge!("custos_node_healthy", "node" => node.name.clone()).set(if healthy {
                1.0
            } else {
                0.0
            });
        }
    }

    /// The registry as the API shows it. Health is this replica's view.
    pub async fn views(&self, db: &Db) -> AppResult<Vec<NodeView>> {
        let rows = sqlx::query("SELECT name, last_seen FROM nodes")
            .fetch_all(db.pool())
            .await?;
        let mut last_seen = HashMap::new();
        for row in rows {
            last_seen.insert(
                row.try_get::<String, _>("name")?,
                row.try_get::<i64, _>("last_seen")?,
            );
        }
        let health = self.health.read().await;
        Ok(self
            .nodes
            .iter()
            .map(|node| NodeView {
                id: node.name.clone(),
                name: node.name.clone(),
                peer_id: hex::encode(node.party.0),
                address: node.address.clone(),
                status: match health.get(&node.party) {
                    Some(true) => "healthy",
                    Some(false) => "unreachable",
                    None => "unknown",
                }
                .to_string(),
                last_seen: last_seen.get(&node.name).copied().unwrap_or(0),
            })
            .collect())
    }
}

/// The stable id of a committee: its sorted party ids.
pub fn committee_id(committee: &[PartyId]) -> String {
    let mut members: Vec<String> = committee.iter().map(|party| hex::encode(party.0)).collect();
    members.sort();
    members.join(",")
}

/// Whether aux info is ready for `committee`.
pub async fn committee_ready(db: &Db, committee: &[PartyId]) -> AppResult<bool> {
    let row = sqlx::query("SELECT aux_ready FROM committees WHERE id = $1")
        .bind(committee_id(committee))
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<i64, _>("aux_ready")? == 1,
        None => false,
    })
}

/// A committee's aux-info preparation as `GET /api/v1/nodes/committees`
/// shows it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitteeView {
    /// Member names (or party ids of nodes no longer registered).
    pub nodes: Vec<String>,
    /// Whether its aux info is ready (ECDSA wallets can be created on it).
    pub ready: bool,
    /// Aux-info runs tried by the last preparation.
    pub runs: i64,
    /// Why the last failed run failed, if one did.
    pub last_error: Option<String>,
    /// When the preparation under way started (ms since the epoch).
    pub preparing_since: Option<i64>,
    /// Last change (ms since the epoch).
    pub updated_at: i64,
}

/// Every committee the control plane prepared or prepares.
pub async fn committees(db: &Db, registry: &Registry) -> AppResult<Vec<CommitteeView>> {
    let rows = sqlx::query(
        "SELECT members, aux_ready, runs, last_error, preparing_since, updated_at \
         FROM committees ORDER BY id",
    )
    .fetch_all(db.pool())
    .await?;
    rows.into_iter()
        .map(|row| {
            let members: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("members")?)
                .map_err(|error| AppError::internal("committee members", error))?;
            Ok(CommitteeView {
                nodes: members
                    .iter()
                    .map(|member| match parse_party(member) {
                        Some(party) => registry.name_of(&party),
                        None => member.clone(),
                    })
                    .collect(),
                ready: row.try_get::<i64, _>("aux_ready")? == 1,
                runs: row.try_get("runs")?,
                last_error: row.try_get("last_error")?,
                preparing_since: row.try_get("preparing_since")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
}

/// Generates aux info for `committee` on its nodes (minutes) and records it.
/// Already-ready committees return at once.
///
/// A run that fails (a node went away, a run stalled and its nodes stopped
/// it) is tried again under a fresh run id, up to
/// [`custos_signer_node::coordinator::RUN_ATTEMPTS`] runs; each run and
/// each failure is recorded on the committee's row as it happens, so
/// `GET /api/v1/nodes/committees` (and `custos-testnet up`) tell operators
/// what happens while they wait.
pub async fn prepare_committee(
    db: &Db,
    coordinator: &Arc<Coordinator>,
    committee: &[PartyId],
) -> AppResult<()> {
    if committee_ready(db, committee).await? {
        return Ok(());
    }
    let mut request = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut request);
    let members = serde_json::to_string(
        &committee
            .iter()
            .map(|party| hex::encode(party.0))
            .collect::<Vec<_>>(),
    )
    .map_err(|error| AppError::internal("committee json", error))?;
    let id = committee_id(committee);
    let now = now_ms();
    sqlx::query(
        "INSERT INTO committees (id, members, aux_ready, runs, last_error, preparing_since, updated_at) \
         VALUES ($1, $2, 0, 0, NULL, $3, $3) \
         ON CONFLICT (id) DO UPDATE SET runs = 0, last_error = NULL, preparing_since = $3, updated_at = $3",
    )
    .bind(&id)
    .bind(&members)
    .bind(now)
    .execute(db.pool())
    .await?;
    tracing::info!(
        nodes = committee.len(),
        "generating ECDSA aux info for a committee"
    );
    let started = std::time::Instant::now();
    let attempts = custos_signer_node::coordinator::RUN_ATTEMPTS;
    for attempt in 0..attempts {
        sqlx::query("UPDATE committees SET runs = $2, updated_at = $3 WHERE id = $1")
            .bind(&id)
            .bind(i64::from(attempt) + 1)
            .bind(now_ms())
            .execute(db.pool())
            .await?;
        match coordinator
            .aux_info_run(RequestId(request), attempt, committee)
            .await
        {
            Ok(()) => break,
            Err(error) => {
                let last = attempt + 1 == attempts;
                tracing::warn!(
                    run = attempt + 1,
                    of = attempts,
                    %error,
                    "aux-info run failed{}",
                    if last { "; giving up" } else { "; trying again under a fresh run id" }
                );
                // The last failure also ends the preparation.
                sqlx::query(if last {
                    "UPDATE committees SET last_error = $2, preparing_since = NULL, updated_at = $3 WHERE id = $1"
                } else {
                    "UPDATE committees SET last_error = $2, updated_at = $3 WHERE id = $1"
                })
                .bind(&id)
                .bind(error.to_string())
                .bind(now_ms())
                .execute(db.pool())
                .await?;
                if last {
                    return Err(AppError::unavailable(
                        "aux_info_failed",
                        format!("aux-info generation failed in {attempts} runs; the last: {error}"),
                    ));
                }
            }
        }
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "aux info ready for the committee"
    );
    sqlx::query(
        "UPDATE committees SET aux_ready = 1, preparing_since = NULL, updated_at = $2 WHERE id = $1",
    )
    .bind(&id)
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}
