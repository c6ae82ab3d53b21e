//! Transit keys: storage under the keyring and an in-memory cache of
//! opened key versions, so that encrypting touches the database only to
//! reserve a block of encryptions, never per item.
//!
//! Encryption budget: every version counts the encryptions reserved
//! against it (`transit_key_versions.encryptions`, in blocks of
//! [`RESERVE_BLOCK`]). The call that takes the block below
//! [`REFILL_BELOW`] reserves
//! the next one while the others go on with the rest, so the data plane
//! does not stop at the end of a block; the block stays with the version
//! when the cached key is re-read. A version whose count reached
//! [`ROTATE_AFTER_ENCRYPTIONS`] is replaced by a new version automatically,
//! far below the 2^32 random-nonce bound of AES-GCM; a crash loses at most
//! the unused rest of a block, which only makes the count conservative.
//!
//! Several replicas: a replica re-reads a key's row when its cached copy
//! is older than [`CACHE_TTL`], so a rotation elsewhere is seen within that
//! time (and the one re-read it takes); until then the replica keeps
//! encrypting under the previous version, which stays valid. One call
//! re-reads a stale key while the others use the stale copy, for at most
//! another [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand_core::OsRng;
use sqlx::{AnyConnection, Row};

use super::crypto::{KeyType, KeyVersionMaterial, TransitError};
use crate::kernel::db::{new_id, now_ms};
use crate::kernel::keyring::{Keyring, KeyringError};

/// Encryptions reserved from the database at a time. A crash loses at most
/// this many of a version's 2^30.
pub const RESERVE_BLOCK: i64 = 65_536;
/// The reserved rest below which the next block is reserved: early, so
/// that on SQLite, whose one write lock the audit writer holds most of the
/// time under load, the reservation has about a second to get the lock.
const REFILL_BELOW: i64 = RESERVE_BLOCK * 3 / 4;
/// A version is replaced after this many encryptions (2^30).
pub const ROTATE_AFTER_ENCRYPTIONS: i64 = 1 << 30;
/// How long a replica trusts its cached key metadata.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// The keyring record kind of transit key material.
const MATERIAL_RECORD: &str = "transit_key";

/// Why a transit store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No key of that name in the org.
    #[error("transit key not found")]
    NotFound,
    /// A key of that name exists.
    #[error("a transit key of that name exists")]
    Exists,
    /// Name or type not acceptable.
    #[error("{0}")]
    Invalid(&'static str),
    /// The cryptographic engine refused.
    #[error(transparent)]
    Crypto(#[from] TransitError),
    /// The keyring refused (sealed, corrupt record).
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A key as the API shows it.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// The key's name (unique in its org).
    pub name: String,
    /// Its type.
    pub key_type: KeyType,
    /// The version new encryptions and signatures use.
    pub latest_version: u32,
    /// Ciphertexts of older versions are refused.
    pub min_decryption_version: u32,
    /// Public keys of signing keys, by version.
    pub public_keys: Vec<(u32, String)>,
    /// Creation time, unix ms.
    pub created_at: i64,
}

/// An opened key: metadata and every decryptable version's material.
pub struct LoadedKey {
    /// Row id.
    pub id: String,
    /// Its org.
    pub org: String,
    /// Its name.
    pub name: String,
    /// Its type.
    pub key_type: KeyType,
    /// The newest version.
    pub latest: u32,
    /// The oldest version that still decrypts.
    pub min_decryption: u32,
    created_at: i64,
    versions: HashMap<u32, Arc<KeyVersionMaterial>>,
    /// Encryptions left in the block reserved for `latest`; shared with
    /// the next copy of the key when it is re-read at the same version.
    budget: Arc<Mutex<Budget>>,
    loaded: Instant,
    /// A call is re-reading this (stale) copy.
    reloading: AtomicBool,
}

#[derive(Default)]
struct Budget {
    left: i64,
    /// A call is reserving the next block.
    refilling: bool,
}

/// Clears [`Budget::refilling`] however a refill ends, also when the
/// calling request is dropped half-way.
struct Refilling<'a>(&'a Mutex<Budget>);

impl Drop for Refilling<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .refilling = false;
    }
}

/// What [`TransitKeys::take_reserved`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Taken from the reserved block.
    Covered,
    /// Taken, and the rest is below [`REFILL_BELOW`]: the caller reserves
    /// the next block ([`TransitKeys::refill`]).
    CoveredRefill,
    /// The block does not cover the count: reserve first
    /// ([`TransitKeys::reserve`]).
    Short,
}

impl LoadedKey {
    /// The material of `version`, if it is within the decryptable range.
    pub fn version(&self, version: u32) -> Option<Arc<KeyVersionMaterial>> {
        self.versions.get(&version).cloned()
    }

    /// What the API shows.
    pub fn info(&self) -> KeyInfo {
        let mut public_keys: Vec<(u32, String)> = self
            .versions
            .iter()
            .filter_map(|(version, material)| {
                super::crypto::public_key(self.key_type, material).map(|key| (*version, key))
            })
            .collect();
        public_keys.sort();
        KeyInfo {
            name: self.name.clone(),
            key_type: self.key_type,
            latest_version: self.latest,
            min_decryption_version: self.min_decryption,
            public_keys,
            created_at: self.created_at,
        }
    }
}

/// The per-replica cache of opened transit keys.
#[derive(Default)]
pub struct TransitKeys {
    cache: RwLock<HashMap<(String, String), Arc<LoadedKey>>>,
    /// How many times [`TransitKeys::clear`] ran; changed under the cache's
    /// write lock, so a key opened before a clear is not cached after it.
    cleared: AtomicU64,
}

/// Key names: 1 to 128 of `[A-Za-z0-9_.-]`, as Vault accepts in paths.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl TransitKeys {
    /// Creates key `name` of `key_type` in `org` with version 1.
    pub async fn create(
        &self,
        keyring: &Keyring,
        conn: &mut AnyConnection,
        org: &str,
        name: &str,
        key_type: KeyType,
    ) -> Result<Arc<LoadedKey>, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(
                "a key name is 1 to 128 letters, digits, '_', '-' or '.'",
            ));
        }
        let id = new_id("tk");
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO transit_keys (id, org_id, name, key_type, latest_version, \
             min_decryption_version, created_at, updated_at) VALUES ($1, $2, $3, $4, 1, 1, $5, $5)",
        )
        .bind(&id)
        .bind(org)
        .bind(name)
        .bind(key_type.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                return Err(StoreError::Exists)
            }
            Err(error) => return Err(error.into()),
        }
        add_version(keyring, conn, org, &id, key_type, 1).await?;
        self.forget(org, name);
        self.get(keyring, conn, org, name).await
    }

    /// Adds a version and makes it the latest. Returns the new version.
    pub async fn rotate(
        &self,
        keyring: &Keyring,
        conn: &mut AnyConnection,
        org: &str,
        name: &str,
    ) -> Result<Arc<LoadedKey>, StoreError> {
        let key = self.get(keyring, conn, org, name).await?;
        rotate_row(keyring, conn, &key, None).await?;
        self.forget(org, name);
        self.get(keyring, conn, org, name).await
    }

    /// Sets the oldest version that still decrypts (between 1 and the
    /// latest version; lowering it again is allowed, as no version is ever
    /// deleted).
    pub async fn set_min_decryption(
        &self,
        keyring: &Keyring,
        conn: &mut AnyConnection,
        org: &str,
        name: &str,
        min_decryption: u32,
    ) -> Result<Arc<LoadedKey>, StoreError> {
        self.forget(org, name);
        let key = self.get(keyring, conn, org, name).await?;
        if min_decryption == 0 || min_decryption > key.latest {
            return Err(StoreError::Invalid(
                "minDecryptionVersion is between 1 and the latest version",
            ));
        }
        sqlx::query(
            "UPDATE transit_keys SET min_decryption_version = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(i64::from(min_decryption))
        .bind(now_ms())
        .bind(&key.id)
        .execute(&mut *conn)
        .await?;
        self.forget(org, name);
        self.get(keyring, conn, org, name).await
    }

    /// Drops every opened key (`sys/seal`): the cache holds no material
    /// afterwards, and each version's material is wiped once the calls in
    /// flight that hold it end. The unused rest of each reserved block is
    /// lost, which only makes the counts conservative. After unseal keys
    /// are opened again from the store.
    /// A call that was opening a key meanwhile does not cache it.
    pub fn clear(&self) {
        let opened = {
            let mut cache = self
                .cache
                .write()
                .unwrap_or_else(|poison| poison.into_inner());
            self.cleared.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut *cache)
        };
        // Dropped outside the lock: wiping the material takes a moment.
        drop(opened);
    }

    /// How many keys the cache holds opened.
    pub fn cached_keys(&self) -> usize {
        self.cache
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .len()
    }

    fn forget(&self, org: &str, name: &str) {
        self.cache
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&(org.to_string(), name.to_string()));
    }

    /// The opened key `name` of `org` if the cache holds it fresh: no
    /// database connection needed (the data plane's common case). When the
    /// copy is stale, the first caller gets `None` and re-reads it while
    /// the others keep using the stale copy, up to twice [`CACHE_TTL`].
    pub fn cached(&self, org: &str, name: &str) -> Option<Arc<LoadedKey>> {
        let cache = self
            .cache
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let key = cache.get(&(org.to_string(), name.to_string()))?;
        let age = key.loaded.elapsed();
        if age < CACHE_TTL {
            return Some(key.clone());
        }
        let someone_reloads = key.reloading.swap(true, Ordering::AcqRel);
        (someone_reloads && age < 2 * CACHE_TTL).then(|| key.clone())
    }

    /// The opened key `name` of `org` (from the cache while fresh).
    pub async fn get(
        &self,
        keyring: &Keyring,
        conn: &mut AnyConnection,
        org: &str,
        name: &str,
    ) -> Result<Arc<LoadedKey>, StoreError> {
        if let Some(key) = self.cached(org, name) {
            return Ok(key);
        }
        let cleared = self.cleared.load(Ordering::Acquire);
        let row = sqlx::query(
            "SELECT id, key_type, latest_version, min_decryption_version, created_at \
             FROM transit_keys WHERE org_id = $1 AND name = $2",
        )
        .bind(org)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound)?;
        let id: String = row.try_get("id")?;
        let type_name: String = row.try_get("key_type")?;
        let key_type: KeyType = type_name.parse()?;
        let latest = u32::try_from(row.try_get::<i64, _>("latest_version")?)
            .map_err(|_| StoreError::Invalid("stored version out of range"))?;
        let min_decryption = u32::try_from(row.try_get::<i64, _>("min_decryption_version")?)
            .map_err(|_| StoreError::Invalid("stored version out of range"))?;
        let created_at: i64 = row.try_get("created_at")?;
        // Reuse versions already opened (material never changes), and the
        // block reserved for the same latest version.
        let (previous, previous_budget) = cached_versions(&self.cache, org, name, latest);
        let rows = sqlx::query(
            "SELECT version, material FROM transit_key_versions \
             WHERE key_id = $1 AND version >= $2 ORDER BY version",
        )
        .bind(&id)
        .bind(i64::from(min_decryption))
        .fetch_all(&mut *conn)
        .await?;
        let mut versions = HashMap::new();
        for row in rows {
            let version = u32::try_from(row.try_get::<i64, _>("version")?)
                .map_err(|_| StoreError::Invalid("stored version out of range"))?;
            if let Some(material) = previous.get(&version) {
                versions.insert(version, material.clone());
                continue;
            }
            let sealed: Vec<u8> = row.try_get("material")?;
            let bytes = keyring
                .open_record(
                    conn,
                    org,
                    MATERIAL_RECORD,
                    &material_id(&id, version),
                    &sealed,
                )
                .await?;
            versions.insert(
                version,
                Arc::new(KeyVersionMaterial::from_bytes(key_type, &bytes)?),
            );
        }
        let key = Arc::new(LoadedKey {
            id,
            org: org.to_string(),
            name: name.to_string(),
            key_type,
            latest,
            min_decryption,
            created_at,
            versions,
            budget: previous_budget.unwrap_or_default(),
            loaded: Instant::now(),
            reloading: AtomicBool::new(false),
        });
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        // Opened while a seal cleared the cache: used by this call only.
        if self.cleared.load(Ordering::Acquire) == cleared {
            cache.insert((org.to_string(), name.to_string()), key.clone());
        }
        Ok(key)
    }

    /// Takes `count` encryptions from the block reserved in memory when it
    /// covers them (no database work).
    pub fn take_reserved(&self, key: &LoadedKey, count: i64) -> Take {
        let mut budget = key
            .budget
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if budget.left < count {
            return Take::Short;
        }
        budget.left -= count;
        if budget.left < REFILL_BELOW && !budget.refilling {
            budget.refilling = true;
            return Take::CoveredRefill;
        }
        Take::Covered
    }

    /// Reserves the next block for `key`'s latest version, after
    /// [`Take::CoveredRefill`]. When the version reached its budget, it is
    /// rotated instead: calls go on with the rest of the block, then
    /// reserve under the new version.
    pub async fn refill(
        &self,
        keyring: &Keyring,
        conn: &mut AnyConnection,
        key: &LoadedKey,
    ) -> Result<(), StoreError> {
        let _refilling = Refilling(&key.budget);
        if self
            .reserve_block(keyring, conn, key, RESERVE_BLOCK)
            .await?
        {
            key.budget
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .left += RESERVE_BLOCK;
        }
        Ok(())
    }

    /// Adds `block` to the count of `key`'s latest version; `false` when
    /// that reached [`ROTATE_AFTER_ENCRYPTIONS`] and the key was rotated
    /// (and dropped from the cache) instead.
    async fn reserve_block(
        &self,
        keyring: &Keyring,
        conn: &mut AnyConnection,
        key: &LoadedKey,
        block: i64,
    ) -> Result<bool, StoreError> {
        let used: i64 = sqlx::query(
            "UPDATE transit_key_versions SET encryptions = encryptions + $1 \
             WHERE key_id = $2 AND version = $3 RETURNING encryptions",
        )
        .bind(block)
        .bind(&key.id)
        .bind(i64::from(key.latest))
        .fetch_one(&mut *conn)
        .await?
        .try_get("encryptions")?;
        if used > ROTATE_AFTER_ENCRYPTIONS {
            // Calls still holding this copy reach here again after the
            // rotation: only the version that is still the latest rotates.
            if rotate_row(keyring, conn, key, Some(key.latest))
                .await?
                .is_some()
            {
                tracing::info!(key = %key.name, version = key.latest, "transit key version reached its encryption budget: rotated");
            }
            self.forget(&key.org, &key.name);
            return Ok(false);
        }
        Ok(true)
    }

    /// Takes `count` encryptions from `key`'s latest version: from the
    /// reserved block, reserving more from the database when it runs out.
    /// Returns the key to encrypt with (a new version after an automatic
    /// rotation).
    pub async fn reserve(
        &self,
        keyring: &Keyring,
        conn: &mut AnyConnection,
        key: Arc<LoadedKey>,
        count: i64,
    ) -> Result<Arc<LoadedKey>, StoreError> {
        match self.take_reserved(&key, count) {
            Take::Covered => return Ok(key),
            Take::CoveredRefill => {
                self.refill(keyring, conn, &key).await?;
                return Ok(key);
            }
            Take::Short => {}
        }
        let block = count.max(RESERVE_BLOCK);
        if !self.reserve_block(keyring, conn, &key, block).await? {
            let rotated = self.get(keyring, conn, &key.org, &key.name).await?;
            return Box::pin(self.reserve(keyring, conn, rotated, count)).await;
        }
        key.budget
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .left += block - count;
        Ok(key)
    }
}

/// Opened key versions by number.
type Versions = HashMap<u32, Arc<KeyVersionMaterial>>;
/// A version's reserved block, shared by the copies of a key.
type SharedBudget = Arc<Mutex<Budget>>;

/// The opened versions of the cached copy of a key, and its budget when
/// that copy's latest version is still `latest`.
fn cached_versions(
    cache: &RwLock<HashMap<(String, String), Arc<LoadedKey>>>,
    org: &str,
    name: &str,
    latest: u32,
) -> (Versions, Option<SharedBudget>) {
    let cache = cache.read().unwrap_or_else(|poison| poison.into_inner());
    match cache.get(&(org.to_string(), name.to_string())) {
        Some(key) => (
            key.versions.clone(),
            (key.latest == latest).then(|| key.budget.clone()),
        ),
        None => (HashMap::new(), None),
    }
}

fn material_id(key_id: &str, version: u32) -> String {
    format!("{key_id}/{version}")
}

async fn add_version(
    keyring: &Keyring,
    conn: &mut AnyConnection,
    org: &str,
    key_id: &str,
    key_type: KeyType,
    version: u32,
) -> Result<(), StoreError> {
    let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
    let sealed = keyring
        .seal_record(
            conn,
            org,
            MATERIAL_RECORD,
            &material_id(key_id, version),
            &material.to_bytes(),
        )
        .await?;
    sqlx::query(
        "INSERT INTO transit_key_versions (key_id, version, material, encryptions, created_at) \
         VALUES ($1, $2, $3, 0, $4)",
    )
    .bind(key_id)
    .bind(i64::from(version))
    .bind(sealed)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds the next version of `key` and makes it the latest; answers it.
/// With `only_from`, nothing happens (`None`) unless that version is still
/// the latest: another call rotated it already. Two replicas rotating at
/// once: the version insert of the second fails on the primary key, and it
/// answers that error; the key stays consistent.
async fn rotate_row(
    keyring: &Keyring,
    conn: &mut AnyConnection,
    key: &LoadedKey,
    only_from: Option<u32>,
) -> Result<Option<u32>, StoreError> {
    let current: i64 = sqlx::query("SELECT latest_version FROM transit_keys WHERE id = $1")
        .bind(&key.id)
        .fetch_one(&mut *conn)
        .await?
        .try_get("latest_version")?;
    if only_from.is_some_and(|version| i64::from(version) != current) {
        return Ok(None);
    }
    let next = u32::try_from(current + 1).map_err(|_| StoreError::Invalid("too many versions"))?;
    add_version(keyring, conn, &key.org, &key.id, key.key_type, next).await?;
    sqlx::query("UPDATE transit_keys SET latest_version = $1, updated_at = $2 WHERE id = $3")
        .bind(i64::from(next))
        .bind(now_ms())
        .bind(&key.id)
        .execute(&mut *conn)
        .await?;
    Ok(Some(next))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(left: i64, age: Duration) -> Arc<LoadedKey> {
        Arc::new(LoadedKey {
            id: "tk_1".into(),
            org: "org".into(),
            name: "k".into(),
            key_type: KeyType::default(),
            latest: 1,
            min_decryption: 1,
            created_at: 0,
            versions: HashMap::new(),
            budget: Arc::new(Mutex::new(Budget {
                left,
                refilling: false,
            })),
            loaded: Instant::now().checked_sub(age).unwrap(),
            reloading: AtomicBool::new(false),
        })
    }

    fn left(key: &LoadedKey) -> i64 {
        key.budget.lock().unwrap().left
    }

    #[test]
    fn one_call_at_a_time_refills_below_the_mark_and_a_short_block_takes_nothing() {
        let keys = TransitKeys::default();
        let key = key(REFILL_BELOW + 2, Duration::ZERO);
        assert_eq!(keys.take_reserved(&key, 1), Take::Covered);
        assert_eq!(keys.take_reserved(&key, 2), Take::CoveredRefill);
        assert_eq!(
            keys.take_reserved(&key, 1),
            Take::Covered,
            "one refill at a time"
        );
        assert_eq!(left(&key), REFILL_BELOW - 2);
        assert_eq!(keys.take_reserved(&key, REFILL_BELOW), Take::Short);
        assert_eq!(
            left(&key),
            REFILL_BELOW - 2,
            "a short block is left as it was"
        );
        // The refill's guard, dropped however the refill ends (here
        // without reserving, as a request dropped half-way), lets the next
        // call below the mark refill.
        drop(Refilling(&key.budget));
        assert_eq!(keys.take_reserved(&key, 1), Take::CoveredRefill);
    }

    /// Calls in flight keep the copy of a version that reached its budget:
    /// each may reserve on it again after it was rotated. The key rotates
    /// once, not once per copy.
    #[tokio::test]
    async fn a_spent_version_rotates_once_whichever_copies_of_it_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("transit.db").display());
        let db = crate::kernel::db::Db::connect(&url).await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ('org_t', 't', 0)")
            .execute(&mut *conn)
            .await
            .unwrap();
        let keyring = Keyring::load(&mut conn, crate::kernel::config::SealMode::Env)
            .await
            .unwrap();
        keyring
            .init_env(
                &mut conn,
                custos_protocol::seal::SealingKey::generate(&mut OsRng),
            )
            .await
            .unwrap();
        keyring.ensure_org_key(&mut conn, "org_t").await.unwrap();
        let keys = TransitKeys::default();
        let spent = keys
            .create(&keyring, &mut conn, "org_t", "k", KeyType::default())
            .await
            .unwrap();
        sqlx::query("UPDATE transit_key_versions SET encryptions = $1")
            .bind(ROTATE_AFTER_ENCRYPTIONS)
            .execute(&mut *conn)
            .await
            .unwrap();
        let rotated = keys
            .reserve(&keyring, &mut conn, spent.clone(), 1)
            .await
            .unwrap();
        assert_eq!(rotated.latest, 2);
        let again = keys
            .reserve(&keyring, &mut conn, spent.clone(), 1)
            .await
            .unwrap();
        assert_eq!(again.latest, 2, "a second copy of v1 does not rotate again");
        keys.refill(&keyring, &mut conn, &spent).await.unwrap();
        assert!(!spent.budget.lock().unwrap().refilling);
        let versions: i64 = sqlx::query("SELECT COUNT(*) AS n FROM transit_key_versions")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(versions, 2);
        drop(conn);
        db.close().await;
    }

    /// `sys/seal` relies on it: after `clear` no key stays opened, and the
    /// next use opens it again from the store.
    #[tokio::test]
    async fn clearing_drops_every_opened_key_and_the_next_use_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("transit.db").display());
        let db = crate::kernel::db::Db::connect(&url).await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ('org_t', 't', 0)")
            .execute(&mut *conn)
            .await
            .unwrap();
        let keyring = Keyring::load(&mut conn, crate::kernel::config::SealMode::Env)
            .await
            .unwrap();
        keyring
            .init_env(
                &mut conn,
                custos_protocol::seal::SealingKey::generate(&mut OsRng),
            )
            .await
            .unwrap();
        keyring.ensure_org_key(&mut conn, "org_t").await.unwrap();
        let keys = TransitKeys::default();
        for name in ["a", "b"] {
            keys.create(&keyring, &mut conn, "org_t", name, KeyType::default())
                .await
                .unwrap();
        }
        assert_eq!(keys.cached_keys(), 2);
        let held = keys.cached("org_t", "a").unwrap();
        keys.clear();
        assert_eq!(keys.cached_keys(), 0);
        assert!(keys.cached("org_t", "a").is_none());
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "only the call in flight holds it"
        );
        drop(held);
        let reopened = keys.get(&keyring, &mut conn, "org_t", "a").await.unwrap();
        assert_eq!((reopened.latest, keys.cached_keys()), (1, 1));
        drop(conn);
        db.close().await;
    }

    #[test]
    fn a_stale_copy_is_re_read_by_one_call_while_the_others_use_it_for_a_while() {
        let keys = TransitKeys::default();
        let put = |key: Arc<LoadedKey>| {
            keys.cache
                .write()
                .unwrap()
                .insert(("org".into(), "k".into()), key);
        };
        put(key(0, Duration::ZERO));
        assert!(keys.cached("org", "k").is_some(), "fresh");
        assert!(keys.cached("org", "other").is_none());
        put(key(0, CACHE_TTL + Duration::from_millis(1)));
        assert!(keys.cached("org", "k").is_none(), "the first call re-reads");
        assert!(
            keys.cached("org", "k").is_some(),
            "the others use the stale copy"
        );
        put(key(0, 2 * CACHE_TTL + Duration::from_millis(1)));
        assert!(keys.cached("org", "k").is_none());
        assert!(keys.cached("org", "k").is_none(), "too stale for anyone");
    }
}
