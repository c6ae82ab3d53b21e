//! Control-plane configuration: a TOML file, with `CUSTOS_*` environment
//! variables overriding single settings.
//!
//! ```toml
//! listen = "127.0.0.1:8200"
//! data_dir = "/var/lib/custos"
//! database_url = "postgres://custos@db/custos"   # default: SQLite in data_dir
//! replica_id = "cp-1"                            # default: derived from data_dir
//!
//! token_cache_ms = 1000                          # at most 1000
//!
//! [auth]                 # login throttling (see `AuthSettings`)
//! login_per_client_per_min = 30
//! login_per_ip_per_min = 300
//!
//! [seal]
//! mode = "shamir"        # shamir (default) | hsm | env (development)
//!
//! [seal.pkcs11]          # mode = "hsm"
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token_label = "custos"
//! pin = "…"              # or CUSTOS_SEAL_PIN
//! key_label = "custos-control-plane-master"
//!
//! [[nodes]]
//! name = "node-1"
//! id = "<64 hex: the node's party id>"
//! address = "/ip4/10.0.0.2/tcp/7100"
//! http = "10.0.0.2:7180"
//! ```
//!
//! The `env` seal mode reads the master key (64 hex characters) from
//! `CUSTOS_MASTER_KEY`; it is for development and warns at start unless
//! `dev_mode = true`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Where the master key of the keyring comes from (see `keyring`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealMode {
    /// Split into Shamir shares at `sys/init`; operators unseal.
    #[default]
    Shamir,
    /// A non-extractable key in a PKCS#11 token; unseals itself at start.
    Hsm,
    /// From the `CUSTOS_MASTER_KEY` environment variable: development only.
    Env,
}

/// A secret setting: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretSetting(String);

impl SecretSetting {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSetting(redacted)")
    }
}

/// The PKCS#11 token of the `hsm` seal mode.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The token's user PIN (`CUSTOS_SEAL_PIN` overrides).
    pub pin: SecretSetting,
    /// The label of the master key in the token.
    #[serde(default = "default_key_label")]
    pub key_label: String,
}

fn default_key_label() -> String {
    "custos-control-plane-master".into()
}

/// The `[seal]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealSettings {
    /// Where the master key comes from.
    #[serde(default)]
    pub mode: SealMode,
    /// `env` mode: the master key, 64 hex characters
    /// (`CUSTOS_MASTER_KEY`).
    #[serde(default)]
    pub master_key: Option<SecretSetting>,
    /// `hsm` mode: the token.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Settings>,
}

/// The `[webhooks]` section.
///
/// ```toml
/// [webhooks]
/// allow_http = false             # http:// targets (always allowed in dev mode)
/// allow_private_targets = false  # loopback, private, link-local, … targets
/// backoff_ms = 1000
/// max_attempts = 8
/// poll_ms = 500
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Accept `http://` webhook URLs (always accepted in dev mode).
    #[serde(default)]
    pub allow_http: bool,
    /// Accept webhook targets that are not public internet addresses:
    /// loopback, private (RFC 1918, IPv6 unique local), link-local
    /// (including the cloud metadata address 169.254.169.254), CGNAT,
    /// multicast, documentation and other special-purpose ranges, directly
    /// or in an IPv4-mapped or NAT64 form (see `webhooks::non_public_range`).
    /// Off by default and not implied by `dev_mode`: a webhook is a request
    /// the control plane makes on a caller's behalf, and inside the
    /// deployment's network it could reach services the caller cannot.
    #[serde(default)]
    pub allow_private_targets: bool,
    /// The first retry's delay, milliseconds; each retry doubles it.
    #[serde(default = "default_webhook_backoff")]
    pub backoff_ms: u64,
    /// Attempts before a delivery is given up (`failed`).
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// How often the worker looks for due deliveries, milliseconds.
    #[serde(default = "default_webhook_poll")]
    pub poll_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_private_targets: false,
            backoff_ms: default_webhook_backoff(),
            max_attempts: default_webhook_attempts(),
            poll_ms: default_webhook_poll(),
        }
    }
}

fn default_webhook_backoff() -> u64 {
    1000
}
fn default_webhook_attempts() -> u32 {
    8
}
fn default_webhook_poll() -> u64 {
    500
}

/// A PKCS#11 token (module, label, user PIN).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The token's user PIN (`CUSTOS_KEYS_PIN` overrides).
    pub pin: SecretSetting,
}

/// The `[keys]` section (the key registry).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// The token of `backend: "hsm"` keys; without it such keys are refused.
    #[serde(default)]
    pub pkcs11: Option<TokenSettings>,
    /// Client-side encryption keys: days until a key is deprecated.
    #[serde(default = "default_cse_expiry")]
    pub cse_expiry_days: u32,
    /// Client-side encryption keys: days a deprecated key still decrypts
    /// before it is destroyed.
    #[serde(default = "default_cse_retention")]
    pub cse_retention_days: u32,
    /// Client-side encryption keys: keys per subject per 24 hours.
    #[serde(default = "default_cse_limit")]
    pub cse_keys_per_subject_per_day: u32,
    /// The largest ciphertext accepted for decryption, bytes.
    #[serde(default = "default_max_ciphertext")]
    pub max_ciphertext_bytes: usize,
    /// How often the scheduler looks for due rotations and expiries, ms.
    #[serde(default = "default_schedule_poll")]
    pub schedule_poll_ms: u64,
    /// AES-256 keys: encryptions and wraps one version makes before the
    /// registry rotates to a new version (2^30; 1 to 2^32, the bound of
    /// random 96-bit GCM nonces under one key). Small in tests.
    #[serde(
        default = "default_encryptions_per_version",
        deserialize_with = "encryptions_per_version"
    )]
    pub encryptions_per_version: i64,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            pkcs11: None,
            cse_expiry_days: default_cse_expiry(),
            cse_retention_days: default_cse_retention(),
            cse_keys_per_subject_per_day: default_cse_limit(),
            max_ciphertext_bytes: default_max_ciphertext(),
            schedule_poll_ms: default_schedule_poll(),
            encryptions_per_version: default_encryptions_per_version(),
        }
    }
}

fn default_cse_expiry() -> u32 {
    30
}
fn default_cse_retention() -> u32 {
    90
}
fn default_cse_limit() -> u32 {
    5
}
fn default_max_ciphertext() -> usize {
    8 * 1024
}
fn default_schedule_poll() -> u64 {
    1000
}
fn default_encryptions_per_version() -> i64 {
    1 << 30
}

/// Refuses a budget of zero (no version could encrypt) and one above 2^32
/// (NIST SP 800-38D, 8.3: random nonces under one key).
fn encryptions_per_version<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<i64, D::Error> {
    let budget = i64::deserialize(deserializer)?;
    if !(1..=1 << 32).contains(&budget) {
        return Err(serde::de::Error::custom(
            "keys.encryptions_per_version is 1 to 2^32",
        ));
    }
    Ok(budget)
}

/// The `[audit]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Seconds between rounds of signed checkpoints of the audit chains
    /// (each org whose head moved gets one; at least 1).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_secs: u64,
    /// The public key (64 hex) checkpoints must be signed with, as the
    /// verify report and the log show it once the key exists. Pinned here,
    /// it survives a restart: a key replaced in the database is refused.
    #[serde(default)]
    pub checkpoint_public_key: Option<String>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint_interval_secs: default_checkpoint_interval(),
            checkpoint_public_key: None,
        }
    }
}

fn default_checkpoint_interval() -> u64 {
    60
}

/// The `[auth]` section: how many logins (`POST /api/v1/auth/token`) a
/// replica lets through before it spends any Argon2 work on them.
///
/// ```toml
/// [auth]
/// login_per_client_per_min = 30   # per client id, known or not
/// login_per_ip_per_min = 300      # per source address (IPv6: per /64)
/// password_hash_concurrency = 4   # Argon2 checks running at once
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Login attempts per client id per minute (a burst of this many, then
    /// one every `60 / n` seconds), whether the id exists or not.
    #[serde(default = "default_login_per_client")]
    pub login_per_client_per_min: u32,
    /// Login attempts per source address per minute (IPv6 addresses count
    /// per /64 network, which one host usually holds whole).
    #[serde(default = "default_login_per_ip")]
    pub login_per_ip_per_min: u32,
    /// Argon2 checks of client secrets running at once on this replica
    /// (each holds about 19 MiB); more wait their turn.
    #[serde(default = "default_hash_concurrency")]
    pub password_hash_concurrency: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            login_per_client_per_min: default_login_per_client(),
            login_per_ip_per_min: default_login_per_ip(),
            password_hash_concurrency: default_hash_concurrency(),
        }
    }
}

fn default_login_per_client() -> u32 {
    30
}
fn default_login_per_ip() -> u32 {
    300
}
fn default_hash_concurrency() -> u32 {
    4
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
    /// How long a replica trusts a verified bearer token without reading
    /// the database again, milliseconds (0: never). At most
    /// [`MAX_TOKEN_CACHE_MS`]: a token revoked or an identity disabled on
    /// one replica must be refused by every other within a second
    /// (invariant 11); a larger value is refused at start.
    #[serde(default = "default_token_cache")]
    pub token_cache_ms: u64,
    /// Largest request body, bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit_bytes: usize,
    /// Requests per second per identity (token bucket; burst = 4×).
    #[serde(default = "default_rate")]
    pub rate_limit_per_sec: u32,
    /// How long a pending approval lives, seconds.
    #[serde(default = "default_approval_ttl")]
    pub approval_ttl_secs: u64,
    /// Development deployment (the testnet): the `env` seal mode does not
    /// warn.
    #[serde(default)]
    pub dev_mode: bool,
    /// The keyring's master key.
    #[serde(default)]
    pub seal: SealSettings,
    /// Outgoing webhooks.
    #[serde(default)]
    pub webhooks: WebhookSettings,
    /// The key registry.
    #[serde(default)]
    pub keys: KeySettings,
    /// Audit checkpoints.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Logins: throttling and the password hash's budget.
    #[serde(default)]
    pub auth: AuthSettings,
    /// Signer nodes.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
}

fn default_token_ttl() -> u64 {
    900
}
/// The longest a replica may trust a verified token without reading the
/// database again, milliseconds.
pub const MAX_TOKEN_CACHE_MS: u64 = 1000;

fn default_token_cache() -> u64 {
    MAX_TOKEN_CACHE_MS
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
            // Secrets inside the [seal] and [keys] sections.
            let nested: Option<(&str, &[&str])> = match name.as_str() {
                "CUSTOS_MASTER_KEY" => Some(("seal", &["master_key"])),
                "CUSTOS_SEAL_PIN" => Some(("seal", &["pkcs11", "pin"])),
                "CUSTOS_KEYS_PIN" => Some(("keys", &["pkcs11", "pin"])),
                _ => None,
            };
            if let Some((section, path)) = nested {
                let mut table = document
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                for (depth, key) in path.iter().enumerate() {
                    let Some(inner) = table.as_table_mut() else {
                        break;
                    };
                    if depth + 1 == path.len() {
                        inner.insert((*key).into(), toml::Value::String(value.clone()));
                        break;
                    }
                    table = inner
                        .entry(*key)
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                }
                continue;
            }
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
        if config.token_cache_ms > MAX_TOKEN_CACHE_MS {
            anyhow::bail!(
                "token_cache_ms is at most {MAX_TOKEN_CACHE_MS}: a revoked token must be \
                 refused by every replica within a second"
            );
        }
        let auth = &config.auth;
        if auth.login_per_client_per_min == 0
            || auth.login_per_ip_per_min == 0
            || auth.password_hash_concurrency == 0
        {
            anyhow::bail!("the [auth] limits are at least 1");
        }
        Ok(config)
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("custos.db").display()))
    }

    /// The PKCS#11 master key of the `hsm` seal mode, if configured.
    pub fn pkcs11_master_key(&self) -> Option<custos_signer_node::master_key::MasterKeyConfig> {
        let settings = self.seal.pkcs11.as_ref()?;
        Some(custos_signer_node::master_key::MasterKeyConfig::Pkcs11 {
            module: settings.module.clone(),
            token_label: settings.token_label.clone(),
            pin: custos_signer_node::master_key::Pin::new(settings.pin.expose()),
            key_label: settings.key_label.clone(),
        })
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

    #[test]
    fn registry_keys_rotate_after_2_pow_30_encryptions_unless_configured_within_bounds() {
        let text = "listen = \"127.0.0.1:8200\"\ndata_dir = \"/tmp/x\"\n";
        let config = Config::parse(text, []).unwrap();
        assert_eq!(config.keys.encryptions_per_version, 1 << 30);
        let small = Config::parse(&format!("{text}[keys]\nencryptions_per_version = 5\n"), []);
        assert_eq!(small.unwrap().keys.encryptions_per_version, 5);
        for refused in ["0", "-1", "4294967297"] {
            let parsed = Config::parse(
                &format!("{text}[keys]\nencryptions_per_version = {refused}\n"),
                [],
            );
            assert!(parsed.is_err(), "{refused}");
        }
    }

    #[test]
    fn a_token_cache_longer_than_a_second_is_refused() {
        let text = "listen = \"127.0.0.1:8200\"\ndata_dir = \"/tmp/x\"\n";
        let config = Config::parse(text, []).unwrap();
        assert_eq!(config.token_cache_ms, MAX_TOKEN_CACHE_MS);
        assert_eq!(config.auth, AuthSettings::default());
        assert!(Config::parse(&format!("{text}token_cache_ms = 1000\n"), []).is_ok());
        assert!(Config::parse(&format!("{text}token_cache_ms = 1001\n"), []).is_err());
        let auth = format!("{text}[auth]\nlogin_per_client_per_min = 3\n");
        assert_eq!(
            Config::parse(&auth, [])
                .unwrap()
                .auth
                .login_per_client_per_min,
            3
        );
        assert!(Config::parse(&format!("{text}[auth]\nlogin_per_ip_per_min = 0\n"), []).is_err());
    }
}
