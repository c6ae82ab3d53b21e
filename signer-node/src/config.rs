//! Node configuration: a TOML file, with `CUSTOS_SIGNER_*` environment
//! variables overriding single settings (for containers and tests).
//!
//! ```toml
//! data_dir = "/var/lib/custos-signer"
//! listen = "/ip4/0.0.0.0/tcp/7100"
//! http_listen = "127.0.0.1:7180"
//! coordinator = "<64 hex chars: the coordinator's Ed25519 public key>"
//! prime_pool_target = 4
//!
//! [master_key]
//! backend = "file"
//! path = "/var/lib/custos-signer/master.key"
//!
//! [[peers]]
//! id = "<64 hex chars>"
//! address = "/ip4/10.0.0.2/tcp/7100"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use custos_protocol::PartyId;
use serde::{Deserialize, Serialize};

use crate::master_key::MasterKeyConfig;

/// A peer node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its party id (Ed25519 public key), hex.
    #[serde(with = "hex_party")]
    pub id: PartyId,
    /// Where it listens (libp2p multiaddr).
    pub address: String,
}

/// How long each kind of protocol run may take on this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deadlines {
    /// DKG.
    pub keygen_secs: u64,
    /// Aux-info generation.
    pub aux_info_secs: u64,
    /// CGGMP21 signing.
    pub ecdsa_secs: u64,
    /// FROST signing.
    pub frost_secs: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            keygen_secs: 30,
            aux_info_secs: 600,
            ecdsa_secs: 60,
            frost_secs: 10,
        }
    }
}

impl Deadlines {
    /// As a duration.
    pub fn get(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// The longest of the deadlines: how long a frame that arrived before
    /// its session is kept for it.
    pub fn longest_secs(&self) -> u64 {
        self.keygen_secs
            .max(self.aux_info_secs)
            .max(self.ecdsa_secs)
            .max(self.frost_secs)
    }
}

/// The whole node configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity, shares, aux info, pool and records live here.
    pub data_dir: PathBuf,
    /// libp2p listen address.
    pub listen: String,
    /// Operator HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub http_listen: SocketAddr,
    /// The pinned coordinator (Ed25519 public key, hex): the only party
    /// whose jobs this node runs.
    #[serde(with = "hex_party")]
    pub coordinator: PartyId,
    /// The other signer nodes.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Where the master key lives.
    pub master_key: MasterKeyConfig,
    /// Prime sets to keep ready for aux-info generation.
    #[serde(default = "default_pool_target")]
    pub prime_pool_target: usize,
    /// Protocol deadlines.
    #[serde(default)]
    pub deadlines: Deadlines,
    /// Share backups: the operator's recovery key.
    #[serde(default)]
    pub backup: BackupConfig,
}

/// The `[backup]` section: the node operator's X25519 recovery key
/// (`crate::backup`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The recovery public key (hex) backups are sealed for; without it the
    /// node refuses to export backups.
    #[serde(default)]
    pub recovery_public_key: Option<crate::backup::RecoveryPublicKey>,
    /// A file with the recovery secret key (64 hex characters), present
    /// only while the operator restores; without it restores are refused.
    #[serde(default)]
    pub recovery_key_file: Option<PathBuf>,
}

fn default_pool_target() -> usize {
    2
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown or missing settings.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads the file at `path`, then applies `CUSTOS_SIGNER_*` overrides
    /// from `environment` (pass `std::env::vars()`).
    pub fn load(
        path: &Path,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, environment)
    }

    /// Parses TOML text and applies overrides.
    pub fn parse(
        text: &str,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut document: toml::Table =
            toml::from_str(text).map_err(|error| ConfigError::Invalid(error.to_string()))?;
        for (name, value) in environment {
            let Some(setting) = name.strip_prefix("CUSTOS_SIGNER_") else {
                continue;
            };
            let key = setting.to_ascii_lowercase();
            let value = match key.as_str() {
                "prime_pool_target" => value
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .map_err(|_| ConfigError::Invalid(format!("{name} must be a number")))?,
                "data_dir" | "listen" | "http_listen" | "coordinator" => toml::Value::String(value),
                // Secrets and nested settings are not taken from the
                // environment by name guessing; only the PIN has a variable.
                "pkcs11_pin" => {
                    if let Some(toml::Value::Table(master)) = document.get_mut("master_key") {
                        master.insert("pin".into(), toml::Value::String(value));
                    }
                    continue;
                }
                // Read by the command line, not by the configuration;
                // `faults` by the fault injection of test builds.
                "config" | "faults" => continue,
                _ => return Err(ConfigError::Invalid(format!("unknown variable {name}"))),
            };
            document.insert(key, value);
        }
        document
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Invalid(error.to_string()))
    }

    /// The file holding the node's libp2p identity key.
    pub fn identity_path(&self) -> PathBuf {
        self.data_dir.join("identity.key")
    }

    /// The share store's folder.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

mod hex_party {
    use custos_protocol::PartyId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(party: &PartyId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(party.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PartyId, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a party id is 32 bytes (64 hex characters)"))?;
        Ok(PartyId(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        data_dir = "/tmp/node"
        listen = "/ip4/127.0.0.1/tcp/7100"
        http_listen = "127.0.0.1:7180"
        coordinator = "0101010101010101010101010101010101010101010101010101010101010101"

        [master_key]
        backend = "file"
        path = "/tmp/node/master.key"

        [[peers]]
        id = "0202020202020202020202020202020202020202020202020202020202020202"
        address = "/ip4/127.0.0.1/tcp/7101"
    "#;

    #[test]
    fn config_parses_with_defaults() {
        let config = NodeConfig::parse(EXAMPLE, []).unwrap();
        assert_eq!(config.coordinator, PartyId([1; 32]));
        assert_eq!(config.peers[0].id, PartyId([2; 32]));
        assert_eq!(config.prime_pool_target, 2);
        assert_eq!(config.deadlines, Deadlines::default());
    }

    #[test]
    fn environment_overrides_settings() {
        let config = NodeConfig::parse(
            EXAMPLE,
            [
                (
                    "CUSTOS_SIGNER_LISTEN".to_string(),
                    "/ip4/0.0.0.0/tcp/9".to_string(),
                ),
                (
                    "CUSTOS_SIGNER_PRIME_POOL_TARGET".to_string(),
                    "7".to_string(),
                ),
                ("UNRELATED".to_string(), "x".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(config.listen, "/ip4/0.0.0.0/tcp/9");
        assert_eq!(config.prime_pool_target, 7);
    }

    #[test]
    fn unknown_settings_and_bad_ids_are_refused() {
        let unknown = format!("{EXAMPLE}\nsurprise = 1\n");
        assert!(NodeConfig::parse(&unknown, []).is_err());
        let bad_id = EXAMPLE.replace(
            "0101010101010101010101010101010101010101010101010101010101010101",
            "01",
        );
        assert!(NodeConfig::parse(&bad_id, []).is_err());
        let unknown_variable = [("CUSTOS_SIGNER_NOPE".to_string(), "1".to_string())];
        assert!(NodeConfig::parse(EXAMPLE, unknown_variable).is_err());
    }
}
