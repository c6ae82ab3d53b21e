//! The share store: key shares, aux info, the prime pool and small records
//! of other modules, encrypted at rest, written atomically, restart-safe.
//!
//! # Envelope encryption
//!
//! Every value is one file (a *blob*) with its own fresh data key:
//!
//! ```text
//! "CSTB" | version (1) | wrapped key length (u16 BE) | wrapped data key | sealed value
//! ```
//!
//! * the value is sealed under the data key with [`custos_protocol::seal`],
//!   bound to its kind, this node, and the wallet and generation where they
//!   apply;
//! * the data key is wrapped by the node [`MasterKey`] (a key file or a
//!   PKCS#11 token), bound to the blob's *logical name*, for instance
//!   `custos/store/v1/share/<holder>/<wallet>/<generation>/<curve>`. A blob
//!   copied or renamed to another wallet, generation, committee or record key
//!   does not open, and neither does a blob of another node.
//!
//! One data key seals exactly one value, so GCM's random-nonce bound never
//! comes near, and a compromised data key exposes one value.
//!
//! # Layout
//!
//! ```text
//! <root>/LOCK                                   exclusive lock of the owning process
//! <root>/shares/<wallet hex>/<generation>.<curve>.blob
//! <root>/aux/<committee digest hex>.blob
//! <root>/prime-pool.blob
//! <root>/records/<namespace>/<key digest hex>.blob
//! ```
//!
//! Directories are created with mode 0700 and files with 0600.
//!
//! # Crash safety
//!
//! A write goes to a temporary file `.<name>.<random>.tmp` in the target's
//! directory, is flushed to disk, renamed over the target and the directory
//! is flushed. A crash at any point leaves the old or the new value, plus
//! possibly a temporary file, which [`ShareStore::open`] deletes. A share of
//! a new generation is a new file; old generations stay until
//! [`ShareStore::delete_share`] (the resharing two-phase commit deletes them
//! only after every new holder confirmed).
//!
//! All methods do blocking file I/O (and, with a PKCS#11 master key, token
//! calls): call them from a blocking thread in async code.

use std::fmt;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use custos_protocol::primes::PrimePool;
use custos_protocol::seal::{self, SealContext, SealedKind, SealingKey};
use custos_protocol::share::{AuxInfo, KeyCurve, KeyShare};
use custos_protocol::{Committee, Ed25519, KeyGeneration, PartyId, Secp256k1, WalletId};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::master_key::{MasterKey, MasterKeyError};

/// Magic bytes at the start of every blob.
pub const BLOB_MAGIC: [u8; 4] = *b"CSTB";
/// The blob format this build writes and reads.
pub const BLOB_VERSION: u8 = 1;
/// Prefix of every wrap context; bump the version with the layout.
const DOMAIN: &str = "custos/store/v1";
const BLOB_SUFFIX: &str = ".blob";
const TEMP_SUFFIX: &str = ".tmp";
const LOCK_FILE: &str = "LOCK";
const SHARES_DIR: &str = "shares";
const AUX_DIR: &str = "aux";
const RECORDS_DIR: &str = "records";
const PRIME_POOL_FILE: &str = "prime-pool.blob";
/// Longest record namespace accepted.
pub const MAX_NAMESPACE_LEN: usize = 64;
/// Every curve a stored share can be on.
const KNOWN_CURVES: [&str; 2] = [<Secp256k1 as KeyCurve>::NAME, <Ed25519 as KeyCurve>::NAME];

/// A wallet this node holds shares of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWallet {
    /// The wallet.
    pub wallet: WalletId,
    /// Its curve ([`KeyCurve::NAME`]).
    pub curve: &'static str,
    /// The generations stored, ascending.
    pub generations: Vec<KeyGeneration>,
}

/// Errors of the share store. Messages name files and reasons, never the
/// content of a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("share store: {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Another store (in this or another process) has the root open.
    #[error("share store {path} is in use by another process (lock file held)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A blob is not in the blob format (truncated, wrong magic or version).
    #[error("share store: {path} is not a valid blob: {reason}")]
    Format {
        /// The blob.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A blob does not decrypt: the master key is not the one that wrote it,
    /// the blob was moved from another name, or its bytes were changed. The
    /// store never returns a value in that case.
    #[error(
        "share store: {path} does not open: wrong master key, blob moved from another name, or tampered"
    )]
    Unseal {
        /// The blob.
        path: PathBuf,
    },
    /// The master key failed for a reason other than a bad blob (a token
    /// error, for instance).
    #[error("share store: master key: {0}")]
    MasterKey(#[source] MasterKeyError),
    /// A blob decrypted but its content does not decode.
    #[error("share store: {path} decrypted but does not decode: {source}")]
    Decode {
        /// The blob.
        path: PathBuf,
        /// The protocol crate's error.
        #[source]
        source: custos_protocol::Error,
    },
    /// A value could not be serialised or sealed.
    #[error("share store: cannot encode {what}: {source}")]
    Encode {
        /// What was being stored.
        what: &'static str,
        /// The protocol crate's error.
        #[source]
        source: custos_protocol::Error,
    },
    /// A blob decoded to a value that does not belong where it was found.
    #[error("share store: {path}: {reason}")]
    Mismatch {
        /// The blob.
        path: PathBuf,
        /// What does not match.
        reason: &'static str,
    },
    /// The share of this wallet and generation is on another curve than
    /// the caller asked for.
    #[error(
        "share store: wallet {wallet} generation {generation} is a {stored} key, not {requested}"
    )]
    WrongCurve {
        /// The wallet, in hex.
        wallet: String,
        /// The generation.
        generation: u32,
        /// The curve of the stored share.
        stored: String,
        /// The curve asked for.
        requested: &'static str,
    },
    /// The caller passed something the store refuses.
    #[error("share store: {0}")]
    InvalidArgument(&'static str),
}

/// Where a blob lives and the name its data key is bound to.
struct BlobName {
    dir: PathBuf,
    file: String,
    /// The wrap context: the blob's logical name.
    context: String,
}

impl BlobName {
    fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }
}

/// The node's encrypted share store. `Send + Sync`; concurrent writes of one
/// name are safe (each uses its own temporary file; the last rename wins).
pub struct ShareStore {
    root: PathBuf,
    master: Arc<MasterKey>,
    me: PartyId,
    /// Held (with an exclusive `flock`) for the store's lifetime: one process
    /// owns a root, so `open`'s removal of temporary files never races
    /// another process's write.
    _lock: File,
}

impl fmt::Debug for ShareStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareStore")
            .field("root", &self.root)
            .field("master", &self.master.describe())
            .field("me", &self.me)
            .finish()
    }
}

impl ShareStore {
    /// Opens (creating if needed, with mode 0700) the store at `root` for the
    /// node `me`, takes its lock, and deletes temporary files a crash left.
    pub fn open(root: &Path, master: Arc<MasterKey>, me: PartyId) -> Result<Self, StoreError> {
        let root_existed = root.is_dir();
        create_dir(root)?;
        if !root_existed {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        warn_if_open_permissions(root);
        let lock_path = root.join(LOCK_FILE);
        let lock = open_options_0600(OpenMode::CreateOrOpen)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        lock.try_lock().map_err(|error| match error {
            fs::TryLockError::WouldBlock => StoreError::Locked {
                path: lock_path.clone(),
            },
            fs::TryLockError::Error(source) => io_error(&lock_path)(source),
        })?;
        for dir in [SHARES_DIR, AUX_DIR, RECORDS_DIR] {
            create_dir(&root.join(dir))?;
        }
        sync_dir(root)?;
        let store = Self {
            root: root.to_path_buf(),
            master,
            me,
            _lock: lock,
        };
        let removed = store.remove_stale_temp_files()?;
        tracing::info!(
            root = %root.display(),
            master_key = %store.master.describe(),
            stale_temp_files_removed = removed,
            "share store opened"
        );
        Ok(store)
    }

    /// Stores this node's share of a wallet generation. A share of the same
    /// wallet and generation is replaced atomically; other generations are
    /// left alone. Refuses a share held by another party.
    pub fn put_share<E: KeyCurve>(&self, share: &KeyShare<E>) -> Result<(), StoreError> {
        if share.holder() != Some(self.me) {
            return Err(StoreError::InvalidArgument(
                "the share is held by another party than this node",
            ));
        }
        let bytes = share.to_bytes().map_err(|source| StoreError::Encode {
            what: "key share",
            source,
        })?;
        let name = self.share_name(share.wallet, share.generation, E::NAME);
        self.write_blob(
            &name,
            &(self.share_context(share.wallet, share.generation)),
            &bytes,
        )?;
        tracing::info!(
            wallet = %hex::encode(share.wallet.0),
            generation = share.generation.0,
            curve = E::NAME,
            "key share stored"
        );
        Ok(())
    }

    /// This node's share of a wallet generation, if stored. Errors when the
    /// blob does not open (never returns a wrong share) or holds a share of
    /// another curve than `E`.
    pub fn share<E: KeyCurve>(
        &self,
        wallet: WalletId,
        generation: KeyGeneration,
    ) -> Result<Option<KeyShare<E>>, StoreError> {
        let name = self.share_name(wallet, generation, E::NAME);
        let Some(bytes) = self.read_blob(&name, &(self.share_context(wallet, generation)))? else {
            if let Some(stored) = self.share_curve(wallet, generation)? {
                return Err(StoreError::WrongCurve {
                    wallet: hex::encode(wallet.0),
                    generation: generation.0,
                    stored,
                    requested: E::NAME,
                });
            }
            return Ok(None);
        };
        let path = name.path();
        let share = KeyShare::<E>::from_bytes(&bytes).map_err(|source| StoreError::Decode {
            path: path.clone(),
            source,
        })?;
        // The associated data already binds these; checking the decoded value
        // as well costs nothing and catches a writer bug.
        if share.wallet != wallet || share.generation != generation {
            return Err(StoreError::Mismatch {
                path,
                reason: "the share belongs to another wallet or generation",
            });
        }
        if share.holder() != Some(self.me) {
            return Err(StoreError::Mismatch {
                path,
                reason: "the share is held by another party",
            });
        }
        Ok(Some(share))
    }

    /// The generations of a wallet stored here, ascending (empty for an
    /// unknown wallet).
    pub fn generations(&self, wallet: WalletId) -> Result<Vec<KeyGeneration>, StoreError> {
        let mut generations: Vec<KeyGeneration> = self
            .share_files(wallet)?
            .into_iter()
            .map(|(generation, _)| generation)
            .collect();
        generations.sort_unstable();
        generations.dedup();
        Ok(generations)
    }

    /// Deletes this node's share of a wallet generation and makes the
    /// deletion durable. Temporary files of writes of that share (an
    /// interrupted write leaves one until the next [`ShareStore::open`])
    /// go too: after the deletion no file of the store holds the share.
    /// Deleting a share that is not there succeeds, so a retried commit can
    /// delete again.
    pub fn delete_share(
        &self,
        wallet: WalletId,
        generation: KeyGeneration,
    ) -> Result<(), StoreError> {
        let dir = self.wallet_dir(wallet);
        let share_files: Vec<String> = KNOWN_CURVES
            .into_iter()
            .map(|curve| share_file_name(generation, curve))
            .collect();
        // A temporary file of this generation can only be a leftover: the
        // node writes a generation once (keygen, resharing or restore) and
        // deletes it only once a newer one committed.
        let mut deleted = false;
        for name in list_dir(&dir)? {
            let of_this_share = share_files
                .iter()
                .any(|file| name == *file || is_temp_name_of(&name, file));
            if !of_this_share {
                continue;
            }
            let path = dir.join(&name);
            match fs::remove_file(&path) {
                Ok(()) => deleted = true,
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(&path)(error)),
            }
        }
        if deleted {
            sync_dir(&dir)?;
            tracing::info!(
                wallet = %hex::encode(wallet.0),
                generation = generation.0,
                "key share deleted"
            );
        }
        Ok(())
    }

    /// Every wallet with at least one stored share, ordered by wallet id.
    pub fn wallets(&self) -> Result<Vec<StoredWallet>, StoreError> {
        let shares_dir = self.root.join(SHARES_DIR);
        let mut wallets = Vec::new();
        for name in list_dir(&shares_dir)? {
            let Some(wallet) = parse_wallet_dir_name(&name) else {
                if !is_temp_name(&name) {
                    tracing::warn!(
                        dir = %shares_dir.display(),
                        entry = %name,
                        "ignoring unexpected entry in share store"
                    );
                }
                continue;
            };
            let files = self.share_files(wallet)?;
            let Some(&(_, curve)) = files.first() else {
                // Every generation was deleted. The directory stays behind:
                // removing it could race with a put into the same wallet.
                continue;
            };
            if files.iter().any(|&(_, other)| other != curve) {
                return Err(StoreError::Mismatch {
                    path: self.wallet_dir(wallet),
                    reason: "shares of one wallet on two different curves",
                });
            }
            let mut generations: Vec<KeyGeneration> = files
                .into_iter()
                .map(|(generation, _)| generation)
                .collect();
            generations.sort_unstable();
            generations.dedup();
            wallets.push(StoredWallet {
                wallet,
                curve,
                generations,
            });
        }
        wallets.sort_by_key(|stored| stored.wallet);
        Ok(wallets)
    }

    /// Stores this node's aux info for its committee (one per committee,
    /// replaced atomically). Refuses aux info of another party.
    pub fn put_aux(&self, aux: &AuxInfo) -> Result<(), StoreError> {
        if aux.committee.member(aux.index) != Some(self.me) {
            return Err(StoreError::InvalidArgument(
                "the aux info belongs to another party than this node",
            ));
        }
        let bytes = aux.to_bytes().map_err(|source| StoreError::Encode {
            what: "aux info",
            source,
        })?;
        let name = self.aux_name(&aux.committee);
        self.write_blob(&name, &(self.node_context(SealedKind::AuxInfo)), &bytes)?;
        tracing::info!(
            committee = %committee_digest_hex(&aux.committee),
            n = aux.committee.n(),
            "aux info stored"
        );
        Ok(())
    }

    /// This node's aux info for `committee`, if stored.
    pub fn aux(&self, committee: &Committee) -> Result<Option<AuxInfo>, StoreError> {
        let name = self.aux_name(committee);
        let Some(bytes) = self.read_blob(&name, &(self.node_context(SealedKind::AuxInfo)))? else {
            return Ok(None);
        };
        let path = name.path();
        let aux = AuxInfo::from_bytes(&bytes).map_err(|source| StoreError::Decode {
            path: path.clone(),
            source,
        })?;
        if aux.committee != *committee || aux.committee.member(aux.index) != Some(self.me) {
            return Err(StoreError::Mismatch {
                path,
                reason: "the aux info belongs to another committee or party",
            });
        }
        Ok(Some(aux))
    }

    /// Stores the prime pool, replacing the previous one atomically.
    pub fn put_prime_pool(&self, pool: &PrimePool) -> Result<(), StoreError> {
        let bytes = pool.to_bytes().map_err(|source| StoreError::Encode {
            what: "prime pool",
            source,
        })?;
        self.write_blob(
            &self.prime_pool_name(),
            &(self.node_context(SealedKind::PrimePool)),
            &bytes,
        )?;
        tracing::debug!(primes = pool.len(), "prime pool stored");
        Ok(())
    }

    /// The stored prime pool; an empty pool if none was stored.
    pub fn prime_pool(&self) -> Result<PrimePool, StoreError> {
        let name = self.prime_pool_name();
        let Some(bytes) = self.read_blob(&name, &(self.node_context(SealedKind::PrimePool)))?
        else {
            return Ok(PrimePool::new());
        };
        PrimePool::from_bytes(&bytes).map_err(|source| StoreError::Decode {
            path: name.path(),
            source,
        })
    }

    /// Stores a sealed record of another module (job results, replay
    /// records) under `namespace` (1 to 64 characters of `[a-z_]`) and any
    /// `key`, replacing a previous value atomically.
    pub fn put_record(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let name = self.record_name(namespace, key)?;
        self.write_blob(&name, &self.node_context(SealedKind::NodeRecord), value)
    }

    /// The record stored under `namespace` and `key`, if any.
    pub fn record(
        &self,
        namespace: &str,
        key: &[u8],
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let name = self.record_name(namespace, key)?;
        self.read_blob(&name, &self.node_context(SealedKind::NodeRecord))
    }

    /// Visits every record of `namespace`, in no particular order, and
    /// replaces (atomically, each on its own) the value of every record for
    /// which `update` returns a new one; returns how many were replaced.
    /// This is how a module rewrites its records when their format changes,
    /// for instance to drop a field that must no longer be kept. A record
    /// that does not open stops the walk with its error: nothing is skipped
    /// silently.
    pub fn update_records(
        &self,
        namespace: &str,
        mut update: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<usize, StoreError> {
        check_namespace(namespace)?;
        let dir = self.root.join(RECORDS_DIR).join(namespace);
        let context = self.node_context(SealedKind::NodeRecord);
        let mut replaced = 0;
        for file in list_dir(&dir)? {
            let Some(digest) = parse_record_file_name(&file) else {
                if !is_temp_name(&file) {
                    tracing::warn!(
                        dir = %dir.display(),
                        entry = %file,
                        "ignoring unexpected entry in share store"
                    );
                }
                continue;
            };
            let name = self.record_name_of_digest(namespace, digest);
            // A record deleted since the listing is simply not there.
            let Some(value) = self.read_blob(&name, &context)? else {
                continue;
            };
            if let Some(new_value) = update(&value) {
                let new_value = Zeroizing::new(new_value);
                self.write_blob(&name, &context, &new_value)?;
                replaced += 1;
            }
        }
        Ok(replaced)
    }

    /// How many records `namespace` holds (for status output).
    pub fn records(&self, namespace: &str) -> Result<usize, StoreError> {
        check_namespace(namespace)?;
        Ok(list_dir(&self.root.join(RECORDS_DIR).join(namespace))?
            .iter()
            .filter(|name| !is_temp_name(name) && name.ends_with(BLOB_SUFFIX))
            .count())
    }

    // ---- names -------------------------------------------------------------

    fn me_hex(&self) -> String {
        hex::encode(self.me.0)
    }

    fn wallet_dir(&self, wallet: WalletId) -> PathBuf {
        self.root.join(SHARES_DIR).join(hex::encode(wallet.0))
    }

    fn share_name(&self, wallet: WalletId, generation: KeyGeneration, curve: &str) -> BlobName {
        BlobName {
            dir: self.wallet_dir(wallet),
            file: share_file_name(generation, curve),
            context: format!(
                "{DOMAIN}/share/{}/{}/{}/{curve}",
                self.me_hex(),
                hex::encode(wallet.0),
                generation.0
            ),
        }
    }

    fn share_context(&self, wallet: WalletId, generation: KeyGeneration) -> SealContext {
        SealContext {
            kind: SealedKind::KeyShare,
            wallet,
            party: self.me,
            generation,
        }
    }

    /// Seal context of per-node values (aux info, prime pool): no wallet, no
    /// generation. The committee of aux info is bound by the wrap context.
    fn node_context(&self, kind: SealedKind) -> SealContext {
        SealContext {
            kind,
            wallet: WalletId([0; 16]),
            party: self.me,
            generation: KeyGeneration(0),
        }
    }

    fn aux_name(&self, committee: &Committee) -> BlobName {
        let digest = committee_digest_hex(committee);
        BlobName {
            dir: self.root.join(AUX_DIR),
            file: format!("{digest}{BLOB_SUFFIX}"),
            context: format!("{DOMAIN}/aux/{}/{digest}", self.me_hex()),
        }
    }

    fn prime_pool_name(&self) -> BlobName {
        BlobName {
            dir: self.root.clone(),
            file: PRIME_POOL_FILE.to_owned(),
            context: format!("{DOMAIN}/prime-pool/{}", self.me_hex()),
        }
    }

    /// The blob name of a record. Its value is sealed as a
    /// [`SealedKind::NodeRecord`] of this node; the namespace and key are
    /// bound through the wrap context of its data key.
    fn record_name(&self, namespace: &str, key: &[u8]) -> Result<BlobName, StoreError> {
        check_namespace(namespace)?;
        let digest = hex::encode(
            Sha256::new()
                .chain_update(format!("{DOMAIN}/record-key"))
                .chain_update(key)
                .finalize(),
        );
        Ok(self.record_name_of_digest(namespace, &digest))
    }

    /// The blob name of the record whose key digest (in hex, as in its file
    /// name) is `digest`; the namespace is checked by the caller.
    fn record_name_of_digest(&self, namespace: &str, digest: &str) -> BlobName {
        let logical = format!("{}/{namespace}/{digest}", self.me_hex());
        BlobName {
            dir: self.root.join(RECORDS_DIR).join(namespace),
            file: format!("{digest}{BLOB_SUFFIX}"),
            context: format!("{DOMAIN}/record/{logical}"),
        }
    }

    /// The share files of a wallet: (generation, curve) per file, in no
    /// particular order. Unexpected names are logged and skipped.
    fn share_files(
        &self,
        wallet: WalletId,
    ) -> Result<Vec<(KeyGeneration, &'static str)>, StoreError> {
        let dir = self.wallet_dir(wallet);
        let mut files = Vec::new();
        for name in list_dir(&dir)? {
            match parse_share_file_name(&name) {
                Some(file) => files.push(file),
                None if is_temp_name(&name) => {}
                None => {
                    tracing::warn!(
                        dir = %dir.display(),
                        entry = %name,
                        "ignoring unexpected entry in share store"
                    )
                }
            }
        }
        Ok(files)
    }

    /// The curve of the stored share of `wallet` at `generation`, if any.
    fn share_curve(
        &self,
        wallet: WalletId,
        generation: KeyGeneration,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .share_files(wallet)?
            .into_iter()
            .find(|(stored, _)| *stored == generation)
            .map(|(_, curve)| curve.to_owned()))
    }

    // ---- blobs -------------------------------------------------------------

    fn write_blob(
        &self,
        name: &BlobName,
        context: &SealContext,
        plaintext: &[u8],
    ) -> Result<(), StoreError> {
        let data_key = SealingKey::generate(&mut OsRng);
        let sealed = seal::seal(&data_key, context, plaintext, &mut OsRng).map_err(|source| {
            StoreError::Encode {
                what: "sealed value",
                source,
            }
        })?;
        let wrapped = self
            .master
            .wrap(&data_key, name.context.as_bytes())
            .map_err(StoreError::MasterKey)?;
        let wrapped_len = u16::try_from(wrapped.len())
            .map_err(|_| StoreError::InvalidArgument("wrapped data key is too long"))?;
        let mut blob = Vec::with_capacity(BLOB_MAGIC.len() + 1 + 2 + wrapped.len() + sealed.len());
        blob.extend_from_slice(&BLOB_MAGIC);
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&wrapped_len.to_be_bytes());
        blob.extend_from_slice(&wrapped);
        blob.extend_from_slice(&sealed);
        write_atomic(&name.dir, &name.file, &blob)
    }

    /// Reads and opens a blob; `None` if there is no file.
    fn read_blob(
        &self,
        name: &BlobName,
        context: &SealContext,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let path = name.path();
        let blob = match fs::read(&path) {
            Ok(blob) => blob,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&path)(error)),
        };
        let (wrapped, sealed) = parse_blob(&blob).map_err(|reason| StoreError::Format {
            path: path.clone(),
            reason,
        })?;
        let data_key = self
            .master
            .unwrap(wrapped, name.context.as_bytes())
            .map_err(|error| match error {
                MasterKeyError::Unwrap => StoreError::Unseal { path: path.clone() },
                other => StoreError::MasterKey(other),
            })?;
        seal::open(&data_key, context, sealed)
            .map(Some)
            .map_err(|_| StoreError::Unseal { path })
    }

    /// Deletes temporary files of interrupted writes; returns how many.
    fn remove_stale_temp_files(&self) -> Result<usize, StoreError> {
        let mut dirs = vec![
            self.root.clone(),
            self.root.join(SHARES_DIR),
            self.root.join(AUX_DIR),
            self.root.join(RECORDS_DIR),
        ];
        for parent in [SHARES_DIR, RECORDS_DIR] {
            let parent = self.root.join(parent);
            for name in list_dir(&parent)? {
                let path = parent.join(&name);
                if !is_temp_name(&name) && path.is_dir() {
                    dirs.push(path);
                }
            }
        }
        let mut removed = 0;
        for dir in dirs {
            let mut removed_here = 0;
            for name in list_dir(&dir)?
                .into_iter()
                .filter(|name| is_temp_name(name))
            {
                let path = dir.join(&name);
                match fs::remove_file(&path) {
                    Ok(()) => removed_here += 1,
                    Err(error) if error.kind() == ErrorKind::NotFound => {}
                    Err(error) => return Err(io_error(&path)(error)),
                }
            }
            if removed_here > 0 {
                sync_dir(&dir)?;
                tracing::warn!(
                    dir = %dir.display(),
                    removed = removed_here,
                    "removed temporary files of interrupted writes"
                );
            }
            removed += removed_here;
        }
        Ok(removed)
    }
}

// ---- blob format ---------------------------------------------------------

/// Splits a blob into the wrapped data key and the sealed value.
fn parse_blob(blob: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let (magic, rest) = blob
        .split_first_chunk::<4>()
        .ok_or("shorter than its header")?;
    if *magic != BLOB_MAGIC {
        return Err("wrong magic bytes");
    }
    let (&version, rest) = rest.split_first().ok_or("shorter than its header")?;
    if version != BLOB_VERSION {
        return Err("unsupported blob version");
    }
    let (length, rest) = rest
        .split_first_chunk::<2>()
        .ok_or("shorter than its header")?;
    let length = usize::from(u16::from_be_bytes(*length));
    if rest.len() < length {
        return Err("wrapped key is truncated");
    }
    Ok(rest.split_at(length))
}

// ---- names ---------------------------------------------------------------

/// SHA-256 over the committee's members in index order, in hex: the file name
/// of its aux info. Length-prefixed so two committees never hash alike.
fn committee_digest_hex(committee: &Committee) -> String {
    let mut hash = Sha256::new();
    hash.update(format!("{DOMAIN}/committee"));
    hash.update((committee.members().len() as u32).to_be_bytes());
    for member in committee.members() {
        hash.update(member.0);
    }
    hex::encode(hash.finalize())
}

fn share_file_name(generation: KeyGeneration, curve: &str) -> String {
    format!("{}.{curve}{BLOB_SUFFIX}", generation.0)
}

/// Parses `<generation>.<curve>.blob`; the generation must be canonical
/// decimal, so one generation has exactly one file name.
fn parse_share_file_name(name: &str) -> Option<(KeyGeneration, &'static str)> {
    let (generation, curve) = name.strip_suffix(BLOB_SUFFIX)?.split_once('.')?;
    let parsed: u32 = generation.parse().ok()?;
    if parsed.to_string() != generation {
        return None;
    }
    let curve = KNOWN_CURVES.into_iter().find(|known| *known == curve)?;
    Some((KeyGeneration(parsed), curve))
}

/// Parses a wallet directory name: 32 lowercase hex digits.
fn parse_wallet_dir_name(name: &str) -> Option<WalletId> {
    if name.len() != 32 || name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        return None;
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(name, &mut id).ok()?;
    Some(WalletId(id))
}

/// Parses `<key digest hex>.blob`, a record's file name: 64 lowercase hex
/// digits, as [`ShareStore::record_name`] writes them.
fn parse_record_file_name(name: &str) -> Option<&str> {
    let digest = name.strip_suffix(BLOB_SUFFIX)?;
    let canonical = digest.len() == 64
        && digest
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    canonical.then_some(digest)
}

/// Whether `name` is a temporary file of an atomic write of `file_name`
/// (`.<file_name>.<random hex>.tmp`, see [`write_atomic`]).
fn is_temp_name_of(name: &str, file_name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(file_name))
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(TEMP_SUFFIX))
        .is_some_and(|random| !random.is_empty() && random.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

fn check_namespace(namespace: &str) -> Result<(), StoreError> {
    let valid = !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE_LEN
        && namespace
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(
            "record namespace must be 1 to 64 characters of [a-z_]",
        ))
    }
}

// ---- file system ---------------------------------------------------------

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

enum OpenMode {
    CreateNew,
    CreateOrOpen,
}

fn open_options_0600(mode: OpenMode) -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true);
    match mode {
        OpenMode::CreateNew => options.create_new(true),
        OpenMode::CreateOrOpen => options.create(true).truncate(false),
    };
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Writes `bytes` to `dir/file_name` so that a crash leaves either the
/// old or the new content: temporary file, fsync, rename, fsync of the
/// directory.
fn write_atomic(dir: &Path, file_name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    ensure_dir(dir)?;
    let mut suffix = [0u8; 8];
    OsRng.fill_bytes(&mut suffix);
    let temp = dir.join(format!(".{file_name}.{}{TEMP_SUFFIX}", hex::encode(suffix)));
    let target = dir.join(file_name);
    let result = (|| {
        let mut file = open_options_0600(OpenMode::CreateNew)
            .open(&temp)
            .map_err(io_error(&temp))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&temp))?;
        drop(file);
        fs::rename(&temp, &target).map_err(io_error(&target))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: `open` removes whatever is left after a crash.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates `dir` and its missing parents with mode 0700.
fn create_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// Creates a directory below the store's top-level directories (a wallet or
/// a record namespace) and makes its entry durable before anything is
/// written into it.
fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    create_dir(dir)?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Flushes a directory's entries (new, renamed or removed files) to disk.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(dir))
}

/// Names in `dir` (empty if it does not exist); non-UTF-8 names are skipped,
/// since the store never writes one.
fn list_dir(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(dir)(error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// The content is encrypted, so open permissions on the root are not a
/// leak of secrets, but they let others delete or swap shares: say so.
fn warn_if_open_permissions(root: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = fs::metadata(root) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    root = %root.display(),
                    mode = format!("{mode:03o}"),
                    "share store directory is accessible by group or others; chmod 700 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = root;
}
