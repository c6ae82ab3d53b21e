//! The keyring: seal and unseal, the master key, a versioned root key per
//! org, and envelope encryption of every secret record the control plane
//! keeps.
//!
//! Hierarchy (`../shared/notes/kms-semantics.md`, "Seal / unseal"):
//!
//! ```text
//! record plaintext ─ AES-256-GCM under a fresh data key (DEK), per record
//!   DEK ─ AES-256-GCM under the org's root key, version v
//!     org root key v ─ wrapped by the master key (AES-256-GCM; inside the
//!                      token for the PKCS#11 backend)
//!       master key ─ Shamir shares (N, K to unseal), or a non-extractable
//!                    PKCS#11 key (auto-unseal), or an environment variable
//!                    (development only)
//! ```
//!
//! Every ciphertext is bound by associated data to its org, record kind,
//! record id and root-key version, so a blob copied into another row, kind
//! or org does not open. The master key's check value (a wrapped random key)
//! detects a wrong set of unseal shares: Shamir itself cannot.
//!
//! Root-key versions count the DEKs they wrap (in the same transaction as
//! the record) and a new version is created once a version reached
//! [`ROTATE_AFTER_ENCRYPTIONS`], far below the 2^32 random-nonce limit of
//! AES-GCM. Old versions stay and keep decrypting.
//!
//! Concurrency: the state sits behind a `std::sync::RwLock` held only for
//! map and state changes, never across an await. Each replica unseals on
//! its own, as in Vault.

pub mod shamir;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use custos_protocol::seal::SealingKey;
use custos_signer_node::master_key::{MasterKey, MasterKeyConfig, MasterKeyError};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use zeroize::Zeroizing;

use crate::kernel::config::SealMode;
use crate::kernel::db::now_ms;

/// A root-key version is replaced after wrapping this many data keys:
/// 2^30, a quarter of the 2^32 random-nonce bound of AES-GCM (Vault's
/// barrier rotates at 3,865,470,566).
pub const ROTATE_AFTER_ENCRYPTIONS: i64 = 1 << 30;
/// The default number of unseal shares and the threshold (Vault's).
pub const DEFAULT_SHARES: u8 = 5;
/// See [`DEFAULT_SHARES`].
pub const DEFAULT_THRESHOLD: u8 = 3;

const META_KEY: &str = "keyring";
const RECORD_FORMAT: u8 = 1;
const CHECK_CONTEXT: &[u8] = b"custos/keyring/check/v1";
const RECORD_AAD_TAG: &[u8] = b"custos/keyring/record/v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// format || root version || DEK nonce || wrapped DEK || data nonce.
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN + KEY_LEN + TAG_LEN + NONCE_LEN;

/// Why a keyring operation failed. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The keyring is sealed: nothing can be encrypted or decrypted.
    #[error("the control plane is sealed")]
    Sealed,
    /// `sys/init` has not run yet.
    #[error("the control plane is not initialized")]
    NotInitialized,
    /// `sys/init` already ran (here or on another replica).
    #[error("the control plane is already initialized")]
    AlreadyInitialized,
    /// The operation needs another seal mode than the configured one.
    #[error("this control plane is configured for {configured} seal, not {requested}")]
    ModeMismatch {
        /// The configured mode.
        configured: &'static str,
        /// What the request asked for.
        requested: &'static str,
    },
    /// Out-of-range init parameters.
    #[error("invalid seal parameters: {0}")]
    InvalidParameters(&'static str),
    /// An unseal share that does not parse.
    #[error("invalid unseal share: {0}")]
    InvalidShare(#[from] shamir::ShamirError),
    /// The same share was given twice.
    #[error("this unseal share was already given")]
    DuplicateShare,
    /// The shares do not rebuild the master key (a wrong share); the
    /// progress was reset.
    #[error("the unseal shares do not reconstruct the master key; progress was reset")]
    UnsealFailed,
    /// A stored record or key does not open: it was moved, altered or
    /// belongs to another org, kind, id or version.
    #[error("stored {0} does not open (moved, altered or of another record)")]
    Corrupt(&'static str),
    /// The master-key backend failed (token, PIN, module).
    #[error("master key: {0}")]
    MasterKey(#[from] MasterKeyError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What `sys/seal-status` and `sys/health` show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SealStatus {
    /// Whether `sys/init` ran.
    pub initialized: bool,
    /// Whether the master key is unknown to this replica.
    pub sealed: bool,
    /// `shamir`, `hsm` or `env`.
    pub mode: &'static str,
    /// Shares needed to unseal (0 when not Shamir).
    pub threshold: u8,
    /// Shares issued (0 when not Shamir).
    pub shares: u8,
    /// Shares given so far towards the next unseal.
    pub progress: u8,
}

/// The persisted description of the keyring (the `meta` row `keyring`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyringRecord {
    format: u8,
    mode: SealMode,
    shares: u8,
    threshold: u8,
    /// A random key wrapped by the master key: unwrapping it proves the
    /// master key (hex).
    check: String,
    created_at: i64,
}

enum State {
    Uninitialized,
    Sealed {
        record: KeyringRecord,
        /// Shares given so far (zeroized on drop).
        given: Vec<shamir::Share>,
    },
    Unsealed {
        record: KeyringRecord,
        master: Arc<MasterKey>,
        /// Unwrapped org root keys by (org, version); zeroized on drop.
        org_keys: HashMap<(String, u32), Arc<SealingKey>>,
    },
}

/// The keyring of one replica.
pub struct Keyring {
    mode: SealMode,
    state: RwLock<State>,
}

/// What an init produced: the unseal shares as text (Shamir only). The
/// caller shows them once and forgets them; they are never stored.
pub struct InitOutput {
    /// Base64 unseal shares (empty for the HSM and environment backends).
    pub shares: Vec<Zeroizing<String>>,
}

impl Keyring {
    /// Reads the keyring description from the store: uninitialized, or
    /// sealed. Unsealing is the caller's next step (automatic for the HSM
    /// and environment backends).
    pub async fn load(conn: &mut AnyConnection, mode: SealMode) -> Result<Self, KeyringError> {
        let state = match read_record(conn).await? {
            None => State::Uninitialized,
            Some(record) => {
                if record.mode != mode {
                    tracing::warn!(
                        stored = record.mode.as_str(),
                        configured = mode.as_str(),
                        "the keyring was initialized with another seal mode than configured"
                    );
                }
                State::Sealed {
                    record,
                    given: Vec::new(),
                }
            }
        };
        Ok(Self {
            mode,
            state: RwLock::new(state),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The configured seal mode.
    pub fn mode(&self) -> SealMode {
        self.mode
    }

    /// Whether this replica cannot encrypt or decrypt now.
    pub fn is_sealed(&self) -> bool {
        !matches!(*self.read(), State::Unsealed { .. })
    }

    /// Whether `sys/init` ran.
    pub fn is_initialized(&self) -> bool {
        !matches!(*self.read(), State::Uninitialized)
    }

    /// The seal status.
    pub fn status(&self) -> SealStatus {
        self.status_of(&self.read())
    }

    /// Initializes with a new random master key split into `n_shares`
    /// Shamir shares, `threshold` of which unseal. The keyring stays
    /// sealed: the operators unseal with the shares.
    pub async fn init_shamir(
        &self,
        conn: &mut AnyConnection,
        n_shares: u8,
        threshold: u8,
    ) -> Result<InitOutput, KeyringError> {
        self.expect_mode(SealMode::Shamir)?;
        if threshold < 2 || threshold > n_shares {
            return Err(KeyringError::InvalidParameters(
                "need 2 <= threshold <= shares <= 255",
            ));
        }
        self.expect_uninitialized()?;
        let master_key = SealingKey::generate(&mut OsRng);
        let shares = shamir::split(master_key.expose_bytes(), threshold, n_shares, &mut OsRng)?;
        let master = MasterKey::in_memory(master_key, "shamir");
        let record = new_record(SealMode::Shamir, n_shares, threshold, &master)?;
        persist_record(conn, &record).await?;
        *self.write() = State::Sealed {
            record,
            given: Vec::new(),
        };
        tracing::warn!(
            shares = n_shares,
            threshold,
            "keyring initialized with Shamir unseal shares; sealed until unsealed"
        );
        Ok(InitOutput {
            shares: shares
                .iter()
                .map(|share| Zeroizing::new(share.to_text()))
                .collect(),
        })
    }

    /// Initializes with a new non-extractable master key in the PKCS#11
    /// token of `config` and unseals at once.
    pub async fn init_hsm(
        &self,
        conn: &mut AnyConnection,
        config: &MasterKeyConfig,
    ) -> Result<InitOutput, KeyringError> {
        self.expect_mode(SealMode::Hsm)?;
        self.expect_uninitialized()?;
        let master = MasterKey::create(config)?;
        let record = new_record(SealMode::Hsm, 0, 0, &master)?;
        persist_record(conn, &record).await?;
        *self.write() = State::Unsealed {
            record,
            master: Arc::new(master),
            org_keys: HashMap::new(),
        };
        tracing::info!(master_key = %self.describe_master(), "keyring initialized in the HSM and unsealed");
        Ok(InitOutput { shares: Vec::new() })
    }

    /// Initializes with `key` from the environment (development only) and
    /// unseals at once.
    pub async fn init_env(
        &self,
        conn: &mut AnyConnection,
        key: SealingKey,
    ) -> Result<(), KeyringError> {
        self.expect_mode(SealMode::Env)?;
        self.expect_uninitialized()?;
        let master = MasterKey::in_memory(key, "env");
        let record = new_record(SealMode::Env, 0, 0, &master)?;
        persist_record(conn, &record).await?;
        *self.write() = State::Unsealed {
            record,
            master: Arc::new(master),
            org_keys: HashMap::new(),
        };
        Ok(())
    }

    /// Takes one unseal share. Unseals once the threshold is reached and
    /// the rebuilt key opens the check value; a wrong set resets the
    /// progress ([`KeyringError::UnsealFailed`]).
    pub fn unseal_share(&self, text: &str) -> Result<SealStatus, KeyringError> {
        let share = shamir::Share::from_text(text)?;
        let mut state = self.write();
        match &*state {
            State::Uninitialized => return Err(KeyringError::NotInitialized),
            State::Unsealed { .. } => return Ok(self.status_of(&state)),
            State::Sealed { record, .. } if record.mode != SealMode::Shamir => {
                return Err(KeyringError::ModeMismatch {
                    configured: record.mode.as_str(),
                    requested: "shamir",
                })
            }
            State::Sealed { .. } => {}
        }
        let State::Sealed { record, given } = &mut *state else {
            return Ok(self.status_of(&state));
        };
        if given.iter().any(|other| other.x() == share.x()) {
            return Err(KeyringError::DuplicateShare);
        }
        given.push(share);
        if given.len() < usize::from(record.threshold) {
            return Ok(self.status_of(&state));
        }
        let rebuilt = shamir::combine(given);
        let opened = rebuilt
            .ok()
            .and_then(|bytes| <[u8; KEY_LEN]>::try_from(bytes.as_slice()).ok())
            .map(|bytes| MasterKey::in_memory(SealingKey::from_bytes(bytes), "shamir"))
            .filter(|master| check_master(record, master));
        match opened {
            Some(master) => {
                let record = record.clone();
                *state = State::Unsealed {
                    record,
                    master: Arc::new(master),
                    org_keys: HashMap::new(),
                };
                tracing::info!("keyring unsealed");
                Ok(self.status_of(&state))
            }
            None => {
                given.clear();
                tracing::warn!("unseal failed: the shares do not reconstruct the master key");
                Err(KeyringError::UnsealFailed)
            }
        }
    }

    /// Forgets the shares given so far.
    pub fn reset_progress(&self) -> SealStatus {
        let mut state = self.write();
        if let State::Sealed { given, .. } = &mut *state {
            given.clear();
        }
        self.status_of(&state)
    }

    /// Unseals with the master key from the environment (start-up of the
    /// `env` backend).
    pub fn unseal_env(&self, key: SealingKey) -> Result<(), KeyringError> {
        self.expect_mode(SealMode::Env)?;
        self.unseal_with(MasterKey::in_memory(key, "env"))
    }

    /// Opens the PKCS#11 master key and unseals (auto-unseal at start).
    pub fn unseal_hsm(&self, config: &MasterKeyConfig) -> Result<(), KeyringError> {
        self.expect_mode(SealMode::Hsm)?;
        self.unseal_with(MasterKey::open(config)?)
    }

    fn unseal_with(&self, master: MasterKey) -> Result<(), KeyringError> {
        let mut state = self.write();
        let record = match &*state {
            State::Uninitialized => return Err(KeyringError::NotInitialized),
            State::Unsealed { .. } => return Ok(()),
            State::Sealed { record, .. } => record.clone(),
        };
        if !check_master(&record, &master) {
            return Err(KeyringError::UnsealFailed);
        }
        *state = State::Unsealed {
            record,
            master: Arc::new(master),
            org_keys: HashMap::new(),
        };
        tracing::info!("keyring unsealed");
        Ok(())
    }

    /// Forgets the master key and every unwrapped org key.
    pub fn seal(&self) {
        let mut state = self.write();
        let record = match &*state {
            State::Unsealed { record, .. } => record.clone(),
            _ => return,
        };
        *state = State::Sealed {
            record,
            given: Vec::new(),
        };
        tracing::warn!("keyring sealed");
    }

    fn status_of(&self, state: &State) -> SealStatus {
        let (record, sealed, progress) = match state {
            State::Uninitialized => {
                return SealStatus {
                    initialized: false,
                    sealed: true,
                    mode: self.mode.as_str(),
                    threshold: 0,
                    shares: 0,
                    progress: 0,
                }
            }
            State::Sealed { record, given } => {
                (record, true, u8::try_from(given.len()).unwrap_or(u8::MAX))
            }
            State::Unsealed { record, .. } => (record, false, 0),
        };
        SealStatus {
            initialized: true,
            sealed,
            mode: record.mode.as_str(),
            threshold: record.threshold,
            shares: record.shares,
            progress,
        }
    }

    fn expect_mode(&self, requested: SealMode) -> Result<(), KeyringError> {
        if self.mode != requested {
            return Err(KeyringError::ModeMismatch {
                configured: self.mode.as_str(),
                requested: requested.as_str(),
            });
        }
        Ok(())
    }

    fn expect_uninitialized(&self) -> Result<(), KeyringError> {
        match *self.read() {
            State::Uninitialized => Ok(()),
            _ => Err(KeyringError::AlreadyInitialized),
        }
    }

    fn master(&self) -> Result<Arc<MasterKey>, KeyringError> {
        match &*self.read() {
            State::Unsealed { master, .. } => Ok(master.clone()),
            State::Uninitialized => Err(KeyringError::NotInitialized),
            State::Sealed { .. } => Err(KeyringError::Sealed),
        }
    }

    /// `memory:<backend>` or `pkcs11:<token>/<label>`: for logs.
    pub fn describe_master(&self) -> String {
        self.master()
            .map(|master| master.describe())
            .unwrap_or_else(|_| "sealed".into())
    }

    // ---- system secrets --------------------------------------------------

    /// A 32-byte secret of the control plane itself (not of an org), named
    /// `name`, wrapped by the master key (associated data
    /// `custos/system-secret/v1/<name>`) in the `meta` row
    /// `secret/<name>`: read it, or store `create()` first. Replicas racing
    /// to create it all end with the one stored first.
    pub async fn system_secret(
        &self,
        conn: &mut AnyConnection,
        name: &str,
        create: impl FnOnce() -> SealingKey,
    ) -> Result<SealingKey, KeyringError> {
        let master = self.master()?;
        let key = format!("secret/{name}");
        let context = format!("custos/system-secret/v1/{name}");
        let read = |text: String| -> Result<SealingKey, KeyringError> {
            let blob = hex::decode(text).map_err(|_| KeyringError::Corrupt("system secret"))?;
            Ok(master.unwrap(&blob, context.as_bytes())?)
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(
            "SELECT value FROM meta WHERE key = $1".to_string(),
        ))
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            return read(row.try_get("value")?);
        }
        let value = create();
        let blob = master.wrap(&value, context.as_bytes())?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(&key)
            .bind(hex::encode(blob))
            .execute(&mut *conn)
            .await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(
            "SELECT value FROM meta WHERE key = $1".to_string(),
        ))
        .bind(&key)
        .fetch_one(&mut *conn)
        .await?;
        read(row.try_get("value")?)
    }

    // ---- org root keys ---------------------------------------------------

    /// Creates version 1 of `org`'s root key if the org has none (in the
    /// caller's transaction, so an org never exists without one).
    pub async fn ensure_org_key(
        &self,
        conn: &mut AnyConnection,
        org: &str,
    ) -> Result<(), KeyringError> {
        if latest_org_key(conn, org).await?.is_none() {
            self.create_org_key(conn, org, 1).await?;
        }
        Ok(())
    }

    /// Adds the next version of `org`'s root key; new records use it, older
    /// versions keep decrypting. Returns the new version.
    pub async fn rotate_org_key(
        &self,
        conn: &mut AnyConnection,
        org: &str,
    ) -> Result<u32, KeyringError> {
        let next = latest_org_key(conn, org)
            .await?
            .map_or(1, |(version, _)| version + 1);
        self.create_org_key(conn, org, next).await?;
        Ok(next)
    }

    async fn create_org_key(
        &self,
        conn: &mut AnyConnection,
        org: &str,
        version: u32,
    ) -> Result<(), KeyringError> {
        let master = self.master()?;
        let key = SealingKey::generate(&mut OsRng);
        let wrapped = master.wrap(&key, &org_key_context(org, version))?;
        // Another replica may create the same version at the same moment;
        // the first one wins and the other's key is never used.
        sqlx::query(
            "INSERT INTO org_root_keys (org_id, version, wrapped, encryptions, created_at) \
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (org_id, version) DO NOTHING",
        )
        .bind(org)
        .bind(i64::from(version))
        .bind(wrapped)
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
        tracing::info!(org, version, "org root key version created");
        Ok(())
    }

    /// The unwrapped root key of `org` at `version` (cached while unsealed).
    async fn org_key(
        &self,
        conn: &mut AnyConnection,
        org: &str,
        version: u32,
    ) -> Result<Arc<SealingKey>, KeyringError> {
        if let State::Unsealed { org_keys, .. } = &*self.read() {
            if let Some(key) = org_keys.get(&(org.to_string(), version)) {
                return Ok(key.clone());
            }
        }
        let master = self.master()?;
        let row =
            sqlx::query("SELECT wrapped FROM org_root_keys WHERE org_id = $1 AND version = $2")
                .bind(org)
                .bind(i64::from(version))
                .fetch_optional(&mut *conn)
                .await?
                .ok_or(KeyringError::Corrupt("org root key version"))?;
        let wrapped: Vec<u8> = row.try_get("wrapped")?;
        let key = Arc::new(
            master
                .unwrap(&wrapped, &org_key_context(org, version))
                .map_err(|_| KeyringError::Corrupt("org root key"))?,
        );
        if let State::Unsealed { org_keys, .. } = &mut *self.write() {
            org_keys.insert((org.to_string(), version), key.clone());
        }
        Ok(key)
    }

    // ---- records -----------------------------------------------------------

    /// Encrypts `plaintext` for the record `record_id` of `kind` in `org`:
    /// a fresh data key, wrapped under the org's current root key. Counts the
    /// encryption against the root-key version inside the caller's
    /// transaction and moves to a new version once the count reached
    /// [`ROTATE_AFTER_ENCRYPTIONS`].
    pub async fn seal_record(
        &self,
        conn: &mut AnyConnection,
        org: &str,
        kind: &str,
        record_id: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyringError> {
        let version = match latest_org_key(conn, org).await? {
            Some((version, encryptions)) if encryptions < ROTATE_AFTER_ENCRYPTIONS => version,
            Some((version, _)) => {
                self.create_org_key(conn, org, version + 1).await?;
                version + 1
            }
            None => {
                self.create_org_key(conn, org, 1).await?;
                1
            }
        };
        sqlx::query(
            "UPDATE org_root_keys SET encryptions = encryptions + 1 \
             WHERE org_id = $1 AND version = $2",
        )
        .bind(org)
        .bind(i64::from(version))
        .execute(&mut *conn)
        .await?;
        let root = self.org_key(conn, org, version).await?;
        let binding = RecordBinding {
            org,
            kind,
            record_id,
            version,
        };
        seal_with(&root, &binding, plaintext)
    }

    /// Decrypts a blob from [`Keyring::seal_record`] for the same org, kind
    /// and record id; anything else is [`KeyringError::Corrupt`].
    pub async fn open_record(
        &self,
        conn: &mut AnyConnection,
        org: &str,
        kind: &str,
        record_id: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
        let version = blob_version(blob).ok_or(KeyringError::Corrupt("record"))?;
        let root = self.org_key(conn, org, version).await?;
        let binding = RecordBinding {
            org,
            kind,
            record_id,
            version,
        };
        open_with(&root, &binding, blob)
    }
}

impl SealMode {
    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            SealMode::Shamir => "shamir",
            SealMode::Hsm => "hsm",
            SealMode::Env => "env",
        }
    }
}

fn new_record(
    mode: SealMode,
    shares: u8,
    threshold: u8,
    master: &MasterKey,
) -> Result<KeyringRecord, KeyringError> {
    let check = master.wrap(&SealingKey::generate(&mut OsRng), CHECK_CONTEXT)?;
    Ok(KeyringRecord {
        format: 1,
        mode,
        shares,
        threshold,
        check: hex::encode(check),
        created_at: now_ms(),
    })
}

fn check_master(record: &KeyringRecord, master: &MasterKey) -> bool {
    hex::decode(&record.check)
        .ok()
        .is_some_and(|check| master.unwrap(&check, CHECK_CONTEXT).is_ok())
}

async fn read_record(conn: &mut AnyConnection) -> Result<Option<KeyringRecord>, KeyringError> {
    let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
        .bind(META_KEY)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.try_get("value")?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|_| KeyringError::Corrupt("keyring description"))
}

async fn persist_record(
    conn: &mut AnyConnection,
    record: &KeyringRecord,
) -> Result<(), KeyringError> {
    let text =
        serde_json::to_string(record).map_err(|_| KeyringError::Corrupt("keyring description"))?;
    let inserted =
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(META_KEY)
            .bind(text)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if inserted == 0 {
        return Err(KeyringError::AlreadyInitialized);
    }
    Ok(())
}

/// The newest root-key version of `org` and its encryption count.
async fn latest_org_key(
    conn: &mut AnyConnection,
    org: &str,
) -> Result<Option<(u32, i64)>, KeyringError> {
    let row = sqlx::query(
        "SELECT version, encryptions FROM org_root_keys WHERE org_id = $1 \
         ORDER BY version DESC LIMIT 1",
    )
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let version: i64 = row.try_get("version")?;
    let encryptions: i64 = row.try_get("encryptions")?;
    let version = u32::try_from(version).map_err(|_| KeyringError::Corrupt("org root key"))?;
    Ok(Some((version, encryptions)))
}

fn org_key_context(org: &str, version: u32) -> Vec<u8> {
    format!("custos/org-root-key/v1/{org}/{version}").into_bytes()
}

/// What a record ciphertext is bound to.
struct RecordBinding<'a> {
    org: &'a str,
    kind: &'a str,
    record_id: &'a str,
    version: u32,
}

impl RecordBinding<'_> {
    /// Length-prefixed, so no two bindings encode alike; `purpose` keeps the
    /// DEK wrap and the data encryption apart.
    fn aad(&self, purpose: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            RECORD_AAD_TAG.len() + 17 + self.org.len() + self.kind.len() + self.record_id.len(),
        );
        aad.extend_from_slice(RECORD_AAD_TAG);
        for field in [self.org, self.kind, self.record_id] {
            aad.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
            aad.extend_from_slice(field.as_bytes());
        }
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad.push(purpose);
        aad
    }
}

const PURPOSE_DEK: u8 = 1;
const PURPOSE_DATA: u8 = 2;

fn seal_with(
    root: &SealingKey,
    binding: &RecordBinding<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyringError> {
    let dek = SealingKey::generate(&mut OsRng);
    let mut dek_nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut dek_nonce);
    let wrapped_dek = Aes256Gcm::new(root.expose_bytes().into())
        .encrypt(
            Nonce::from_slice(&dek_nonce),
            Payload {
                msg: dek.expose_bytes(),
                aad: &binding.aad(PURPOSE_DEK),
            },
        )
        .map_err(|_| KeyringError::Corrupt("data key"))?;
    // The data key is fresh for every record, so this nonce is its only one.
    let mut data_nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut data_nonce);
    let ciphertext = Aes256Gcm::new(dek.expose_bytes().into())
        .encrypt(
            Nonce::from_slice(&data_nonce),
            Payload {
                msg: plaintext,
                aad: &binding.aad(PURPOSE_DATA),
            },
        )
        .map_err(|_| KeyringError::Corrupt("record"))?;
    let mut blob = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    blob.push(RECORD_FORMAT);
    blob.extend_from_slice(&binding.version.to_be_bytes());
    blob.extend_from_slice(&dek_nonce);
    blob.extend_from_slice(&wrapped_dek);
    blob.extend_from_slice(&data_nonce);
    blob.extend_from_slice(&ciphertext);
    Ok(blob)
}

/// The root-key version a record blob names, if it is well-formed.
fn blob_version(blob: &[u8]) -> Option<u32> {
    if blob.len() < HEADER_LEN + TAG_LEN || blob.first() != Some(&RECORD_FORMAT) {
        return None;
    }
    let bytes: [u8; 4] = blob.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn open_with(
    root: &SealingKey,
    binding: &RecordBinding<'_>,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    let corrupt = || KeyringError::Corrupt("record");
    // The header must name the version the binding uses (the format byte
    // included): a blob relabelled to another version is refused here, not
    // only by a failing decryption.
    if blob_version(blob) != Some(binding.version) {
        return Err(corrupt());
    }
    let rest = blob.get(5..).ok_or_else(corrupt)?;
    let (dek_nonce, rest) = rest.split_at_checked(NONCE_LEN).ok_or_else(corrupt)?;
    let (wrapped_dek, rest) = rest
        .split_at_checked(KEY_LEN + TAG_LEN)
        .ok_or_else(corrupt)?;
    let (data_nonce, ciphertext) = rest.split_at_checked(NONCE_LEN).ok_or_else(corrupt)?;
    let dek = Zeroizing::new(
        Aes256Gcm::new(root.expose_bytes().into())
            .decrypt(
                Nonce::from_slice(dek_nonce),
                Payload {
                    msg: wrapped_dek,
                    aad: &binding.aad(PURPOSE_DEK),
                },
            )
            .map_err(|_| corrupt())?,
    );
    let dek: [u8; KEY_LEN] = dek.as_slice().try_into().map_err(|_| corrupt())?;
    let dek = SealingKey::from_bytes(dek);
    Aes256Gcm::new(dek.expose_bytes().into())
        .decrypt(
            Nonce::from_slice(data_nonce),
            Payload {
                msg: ciphertext,
                aad: &binding.aad(PURPOSE_DATA),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| corrupt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding<'a>(org: &'a str, kind: &'a str, id: &'a str, version: u32) -> RecordBinding<'a> {
        RecordBinding {
            org,
            kind,
            record_id: id,
            version,
        }
    }

    #[test]
    fn a_record_opens_only_under_its_own_org_kind_id_and_version() {
        let root = SealingKey::generate(&mut OsRng);
        let blob = seal_with(&root, &binding("org_a", "secret", "sec_1", 1), b"hunter2").unwrap();
        assert_eq!(blob_version(&blob), Some(1));
        assert_eq!(
            open_with(&root, &binding("org_a", "secret", "sec_1", 1), &blob)
                .unwrap()
                .as_slice(),
            b"hunter2"
        );
        for other in [
            binding("org_b", "secret", "sec_1", 1),
            binding("org_a", "totp", "sec_1", 1),
            binding("org_a", "secret", "sec_2", 1),
            binding("org_a", "secret", "sec_1", 2),
            // Length prefixes: moving a byte between fields changes the AAD.
            binding("org_as", "ecret", "sec_1", 1),
        ] {
            assert!(matches!(
                open_with(&root, &other, &blob),
                Err(KeyringError::Corrupt(_))
            ));
        }
        let other_root = SealingKey::generate(&mut OsRng);
        assert!(open_with(&other_root, &binding("org_a", "secret", "sec_1", 1), &blob).is_err());
        for index in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[index] ^= 1;
            assert!(
                open_with(&root, &binding("org_a", "secret", "sec_1", 1), &tampered).is_err(),
                "byte {index}"
            );
        }
        assert_eq!(blob_version(&blob[..HEADER_LEN]), None);
    }

    #[test]
    fn the_check_value_tells_the_right_master_key_from_a_wrong_one() {
        let master = MasterKey::in_memory(SealingKey::generate(&mut OsRng), "test");
        let record = new_record(SealMode::Shamir, 5, 3, &master).unwrap();
        assert!(check_master(&record, &master));
        let wrong = MasterKey::in_memory(SealingKey::generate(&mut OsRng), "test");
        assert!(!check_master(&record, &wrong));
    }
}
