//! Control-plane configuration: a TOML file, with `CUSTOS_*` environment
//! variables overriding single settings.
//!
//! ```toml
//! listen = "127.0.0.1:8200"
//! data_dir = "/var/lib/custos"
//! database_url = "postgres://custos@db/custos"   # default: SQLite in data_dir
//! replica_id = "cp-1"                            # default: derived from data_dir
//!
//! [[nodes]]
//! name = "node-1"
//! id = "<64 hex: the node's party id>"
//! address = "/ip4/10.0.0.2/tcp/7100"
//! http = "10.0.0.2:7180"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A signer node in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Operator-facing name, unique.
    pub name: String,
    /// Party id (Ed25519 public key), hex.
    pub id: String,
    /// libp2p multiaddr.
    pub address: String,
    /// The node's operator HTTP endpoint (`/healthz`).
    #[serde(default)]
    pub http: Option<String>,
}

/// The control plane's settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Where the coordinator key and the default SQLite database live.
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; default `sqlite://DATA_DIR/custos.db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// This replica's stable name; leases it held before a crash are taken
    /// back at once on restart.
    #[serde(default)]
    pub replica_id: Option<String>,
    /// Lifetime of bearer tokens, seconds.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// Largest request body, bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Requests per second per identity (token bucket; burst = 4×).
    #[serde(default = "default_rate")]
    pub rate_limit_per_sec: u32,
    /// How long a pending approval lives, seconds.
    #[serde(default = "default_approval_ttl")]
    pub approval_ttl_secs: u64,
    /// Signer nodes.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
}

fn default_token_ttl() -> u64 {
    900
}
fn default_body_limit() -> usize {
    256 * 1024
}
fn default_rate() -> u32 {
    200
}
fn default_approval_ttl() -> u64 {
    24 * 3600
}

impl Config {
    /// Reads `path` and applies `CUSTOS_LISTEN`, `CUSTOS_DATA_DIR`,
    /// `CUSTOS_DATABASE_URL` and `CUSTOS_REPLICA_ID` from `environment`.
    pub fn load(
        path: &Path,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
        Self::parse(&text, environment)
    }

    /// Parses TOML text and applies overrides.
    pub fn parse(
        text: &str,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut document: toml::Table = toml::from_str(text)?;
        for (name, value) in environment {
            let key = match name.as_str() {
                "CUSTOS_LISTEN" => "listen",
                "CUSTOS_DATA_DIR" => "data_dir",
                "CUSTOS_DATABASE_URL" => "database_url",
                "CUSTOS_REPLICA_ID" => "replica_id",
                _ => continue,
            };
            document.insert(key.into(), toml::Value::String(value));
        }
        let config: Config = document.try_into()?;
        Ok(config)
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("custos.db").display()))
    }

    /// The coordinator's key file.
    pub fn coordinator_key_path(&self) -> PathBuf {
        self.data_dir.join("coordinator.key")
    }

    /// This replica's name.
    pub fn replica_id(&self) -> String {
        self.replica_id
            .clone()
            .unwrap_or_else(|| format!("replica-{}", self.data_dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file_and_unknown_settings_are_refused() {
        let text = "listen = \"127.0.0.1:8200\"\ndata_dir = \"/tmp/x\"\n";
        let config = Config::parse(
            text,
            [(
                "CUSTOS_DATABASE_URL".to_string(),
                "postgres://localhost/test".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(config.database_url(), "postgres://localhost/test");
        assert_eq!(config.token_ttl_secs, 900);
        assert!(Config::parse(&format!("{text}colour = 1\n"), []).is_err());
    }
}
