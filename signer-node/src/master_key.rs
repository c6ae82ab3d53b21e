//! The node master key: the key that wraps every per-blob data key of the
//! share store ([`crate::store`]).
//!
//! Two backends:
//!
//! * **file** (development): 32 random bytes in a file of mode 0600. The key
//!   is in the node's memory while it runs.
//! * **pkcs11**: a non-extractable AES-256 key inside a PKCS#11 token (an HSM;
//!   SoftHSM2 in tests). Wrapping and unwrapping run inside the token; the
//!   master key never enters the node's memory, only the data keys do.
//!
//! Both produce the same format, `version (1 byte) || iv (12 bytes) ||
//! ciphertext (32 bytes) || tag (16 bytes)`: AES-256-GCM of the data key
//! with a fresh random IV from the host RNG and the caller's `context` in the
//! associated data. The context names what the data key protects (for
//! instance the share's wallet, generation and curve), so a wrapped key
//! copied to another record does not unwrap. Each master key wraps one data
//! key per stored blob, far below GCM's 2^32 random-IV bound.
//!
//! Why the IV comes from the host and not from the token: PKCS#11 2.40 leaves
//! IV generation for `CKM_AES_GCM` to the caller, and SoftHSM2 takes the IV it
//! is given. `OsRng` is the same source the protocol crate seals with.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use custos_protocol::seal::SealingKey;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The wrapped format this build writes and reads.
pub const WRAP_VERSION: u8 = 1;
/// Length of a master key (AES-256) and of a data key, in bytes.
pub const KEY_LEN: usize = 32;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const TAG_BITS: u64 = 128;
/// Length of every wrapped data key: version, IV, ciphertext, tag.
pub const WRAPPED_LEN: usize = 1 + IV_LEN + KEY_LEN + TAG_LEN;
/// Domain separation of the associated data; bump with the format.
const WRAP_DOMAIN: &[u8] = b"custos/master-key/wrap/v1";

/// A PKCS#11 user PIN. `Debug` never prints it; the bytes are wiped on drop.
/// It is serialised as a plain string because it comes from the node's
/// configuration file (which must therefore be readable by the node only).
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(transparent)]
pub struct Pin(String);

impl Pin {
    /// Wraps a PIN.
    pub fn new(pin: impl Into<String>) -> Self {
        Self(pin.into())
    }

    /// The PIN, for logging in to a token. Never log or print it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl PartialEq for Pin {
    /// Constant-time in the content (the length may show): a PIN is a secret
    /// and invariant 9 asks for constant-time comparisons of secrets.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(difference) == 0
    }
}

/// Where the node master key lives (deserialised from the node's TOML
/// configuration, table `[master_key]`).
///
/// ```toml
/// [master_key]
/// backend = "pkcs11"
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// token_label = "custos"
/// pin = "1234"
/// key_label = "custos-node-master"
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum MasterKeyConfig {
    /// Development: 32 random bytes in a file created with mode 0600.
    File {
        /// The key file.
        path: PathBuf,
    },
    /// A non-extractable AES-256 key in a PKCS#11 token (SoftHSM2 in tests).
    Pkcs11 {
        /// The PKCS#11 module (shared library) to load.
        module: PathBuf,
        /// The label of the token that holds the key.
        token_label: String,
        /// The user PIN of that token.
        pin: Pin,
        /// The label (`CKA_LABEL`) of the AES key.
        key_label: String,
    },
}

/// Errors of the master key. Messages name paths, labels and PKCS#11 return
/// codes; they never contain key bytes or the PIN.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// A file operation on the key file failed.
    #[error("master key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `create` found a key already there; it never replaces one.
    #[error("master key {what} already exists; refusing to overwrite it")]
    AlreadyExists {
        /// The file path or the token and key label.
        what: String,
    },
    /// The key file is readable or writable by group or others (like ssh,
    /// the node refuses to use a key others might have read).
    #[error(
        "master key file {path} has mode {mode:03o}: it must not be accessible by group or others (chmod 600)"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold exactly 32 bytes.
    #[error(
        "master key file {path} must hold exactly 32 bytes, it holds {}",
        describe_length(.found)
    )]
    BadKeyLength {
        /// The key file.
        path: PathBuf,
        /// How many bytes were read (capped at 33).
        found: usize,
    },
    /// The key file is not a regular file.
    #[error("master key file {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// No initialised token carries the configured label.
    #[error("no PKCS#11 token labelled {token_label:?} in module {module}")]
    TokenNotFound {
        /// The module searched.
        module: PathBuf,
        /// The label looked for.
        token_label: String,
    },
    /// More than one token or key carries the configured label: the node
    /// refuses to guess which one holds its shares.
    #[error("more than one PKCS#11 {what} labelled {label:?}")]
    Ambiguous {
        /// "token" or "key".
        what: &'static str,
        /// The label.
        label: String,
    },
    /// The token has no AES secret key with the configured label.
    #[error("PKCS#11 token {token_label:?} has no AES key labelled {key_label:?}")]
    KeyNotFound {
        /// The token.
        token_label: String,
        /// The key label looked for.
        key_label: String,
    },
    /// The key in the token could leave it; the node only uses keys that
    /// cannot (`CKA_SENSITIVE` true, `CKA_EXTRACTABLE` false).
    #[error("PKCS#11 key {key_label:?} is extractable or not sensitive; refusing to use it")]
    ExtractableKey {
        /// The key label.
        key_label: String,
    },
    /// Logging in to the token failed (a wrong PIN shows as `CKR_PIN_INCORRECT`).
    #[error("login to PKCS#11 token {token_label:?} failed: {source}")]
    Login {
        /// The token.
        token_label: String,
        /// The module's answer.
        #[source]
        source: CryptokiError,
    },
    /// Another PKCS#11 call failed.
    #[error("PKCS#11 {operation} failed: {source}")]
    Pkcs11 {
        /// What the node was doing.
        operation: &'static str,
        /// The module's answer.
        #[source]
        source: CryptokiError,
    },
    /// Wrapping a data key failed.
    #[error("wrapping a data key failed")]
    Wrap,
    /// A wrapped data key does not open: wrong master key, wrong context, or
    /// the bytes were changed. Deliberately does not say which.
    #[error(
        "wrapped data key does not open under this master key and context (wrong key, moved or tampered)"
    )]
    Unwrap,
}

/// The node master key. `Send + Sync`: the PKCS#11 session, which is only
/// `Send`, sits behind a mutex.
pub struct MasterKey {
    backend: Backend,
}

enum Backend {
    File {
        key: SealingKey,
        path: PathBuf,
    },
    /// A key held only in this process's memory (the control plane's
    /// unsealed master key, rebuilt from Shamir shares).
    Memory {
        key: SealingKey,
        name: String,
    },
    Pkcs11 {
        /// One session per master key. PKCS#11 sessions must not be used from
        /// two threads at once; the mutex serialises wrap and unwrap, which
        /// are short single-part calls (a few per stored blob).
        session: Mutex<Session>,
        key: ObjectHandle,
        token_label: String,
        key_label: String,
    },
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.describe())
    }
}

impl MasterKey {
    /// Creates the key. File: writes 32 random bytes to a new file of mode
    /// 0600 and refuses to overwrite an existing file. PKCS#11: generates a
    /// non-extractable AES-256 token key with the configured label and
    /// refuses if a key with that label exists.
    pub fn create(config: &MasterKeyConfig) -> Result<Self, MasterKeyError> {
        match config {
            MasterKeyConfig::File { path } => create_file_key(path),
            MasterKeyConfig::Pkcs11 {
                module,
                token_label,
                pin,
                key_label,
            } => {
                let session = pkcs11_session(module, token_label, pin, true)?;
                if !find_keys(&session, key_label)?.is_empty() {
                    return Err(MasterKeyError::AlreadyExists {
                        what: format!("pkcs11:{token_label}/{key_label}"),
                    });
                }
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen((KEY_LEN as u64).into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    // The key only ever encrypts data keys with GCM; it has no
                    // reason to wrap other token keys, sign or derive.
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Sign(false),
                    Attribute::Verify(false),
                    Attribute::Derive(false),
                    Attribute::Label(key_label.as_bytes().to_vec()),
                ];
                // SoftHSM2 2.6.1 fails a key generation now and then while
                // other sessions of the process work (CKR_GENERAL_ERROR on a
                // valid template; seen in this crate's store tests, which
                // create keys in parallel): one generation at a time per
                // process, and that failure is retried twice. Creating a
                // master key happens once per node.
                static GENERATING: Mutex<()> = Mutex::new(());
                let _one_at_a_time = GENERATING.lock().unwrap_or_else(PoisonError::into_inner);
                let mut attempt = 0;
                let key = loop {
                    attempt += 1;
                    match session.generate_key(&Mechanism::AesKeyGen, &template) {
                        Err(cryptoki::error::Error::Pkcs11(
                            cryptoki::error::RvError::GeneralError,
                            _,
                        )) if attempt < 3 => continue,
                        generated => break generated.map_err(pkcs11_error("C_GenerateKey"))?,
                    }
                };
                tracing::info!(
                    token = %token_label,
                    key = %key_label,
                    "created PKCS#11 master key"
                );
                Ok(Self {
                    backend: Backend::Pkcs11 {
                        session: Mutex::new(session),
                        key,
                        token_label: token_label.clone(),
                        key_label: key_label.clone(),
                    },
                })
            }
        }
    }

    /// A master key held in memory only: `key` came from elsewhere (Shamir
    /// shares, an environment variable) and is gone when this value drops.
    /// `name` says where it came from, for [`MasterKey::describe`].
    pub fn in_memory(key: SealingKey, name: &str) -> Self {
        Self {
            backend: Backend::Memory {
                key,
                name: name.to_string(),
            },
        }
    }

    /// Opens an existing key. File: reads exactly 32 bytes from a file that
    /// group and others cannot access. PKCS#11: finds the token by label (the
    /// slot number is not stable: SoftHSM2 assigns large random-looking
    /// ones), logs in as the user and finds the AES key by label.
    pub fn open(config: &MasterKeyConfig) -> Result<Self, MasterKeyError> {
        match config {
            MasterKeyConfig::File { path } => open_file_key(path),
            MasterKeyConfig::Pkcs11 {
                module,
                token_label,
                pin,
                key_label,
            } => {
                let session = pkcs11_session(module, token_label, pin, false)?;
                let key = match find_keys(&session, key_label)?.as_slice() {
                    [] => {
                        return Err(MasterKeyError::KeyNotFound {
                            token_label: token_label.clone(),
                            key_label: key_label.clone(),
                        })
                    }
                    [key] => *key,
                    _ => {
                        return Err(MasterKeyError::Ambiguous {
                            what: "key",
                            label: key_label.clone(),
                        })
                    }
                };
                check_non_extractable(&session, key, key_label)?;
                Ok(Self {
                    backend: Backend::Pkcs11 {
                        session: Mutex::new(session),
                        key,
                        token_label: token_label.clone(),
                        key_label: key_label.clone(),
                    },
                })
            }
        }
    }

    /// Wraps a data key: AES-256-GCM with a fresh random 96-bit IV from the
    /// host RNG, `context` bound as associated data. Output: version byte ||
    /// IV || ciphertext || tag ([`WRAPPED_LEN`] bytes). The PKCS#11 backend
    /// runs the GCM inside the token.
    pub fn wrap(&self, data_key: &SealingKey, context: &[u8]) -> Result<Vec<u8>, MasterKeyError> {
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let aad = associated_data(context);
        let ciphertext = match &self.backend {
            Backend::File { key, .. } | Backend::Memory { key, .. } => {
                Aes256Gcm::new(key.expose_bytes().into())
                    .encrypt(
                        Nonce::from_slice(&iv),
                        Payload {
                            msg: data_key.expose_bytes(),
                            aad: &aad,
                        },
                    )
                    .map_err(|_| MasterKeyError::Wrap)?
            }
            Backend::Pkcs11 { session, key, .. } => {
                // GcmParams borrows the IV mutably (PKCS#11 3.0 lets a token
                // write a generated IV back); SoftHSM2 uses it as given.
                let mut iv_param = iv;
                let params = GcmParams::new(&mut iv_param, &aad, TAG_BITS.into())
                    .map_err(pkcs11_error("GCM parameters"))?;
                let session = lock(session);
                session
                    .encrypt(&Mechanism::AesGcm(params), *key, data_key.expose_bytes())
                    .map_err(pkcs11_error("C_Encrypt (AES-GCM wrap)"))?
            }
        };
        if ciphertext.len() != KEY_LEN + TAG_LEN {
            return Err(MasterKeyError::Wrap);
        }
        let mut wrapped = Vec::with_capacity(WRAPPED_LEN);
        wrapped.push(WRAP_VERSION);
        wrapped.extend_from_slice(&iv);
        wrapped.extend_from_slice(&ciphertext);
        Ok(wrapped)
    }

    /// Unwraps a data key from [`MasterKey::wrap`]. A wrong master key, a
    /// wrong context or any change to `wrapped` gives
    /// [`MasterKeyError::Unwrap`], never a wrong key.
    pub fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<SealingKey, MasterKeyError> {
        if wrapped.len() != WRAPPED_LEN {
            return Err(MasterKeyError::Unwrap);
        }
        let (version, rest) = wrapped.split_first().ok_or(MasterKeyError::Unwrap)?;
        if *version != WRAP_VERSION {
            return Err(MasterKeyError::Unwrap);
        }
        let (iv, ciphertext) = rest.split_at(IV_LEN);
        let aad = associated_data(context);
        let plaintext = Zeroizing::new(match &self.backend {
            Backend::File { key, .. } | Backend::Memory { key, .. } => {
                Aes256Gcm::new(key.expose_bytes().into())
                    .decrypt(
                        Nonce::from_slice(iv),
                        Payload {
                            msg: ciphertext,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| MasterKeyError::Unwrap)?
            }
            Backend::Pkcs11 { session, key, .. } => {
                let mut iv_param = [0u8; IV_LEN];
                iv_param.copy_from_slice(iv);
                let params = GcmParams::new(&mut iv_param, &aad, TAG_BITS.into())
                    .map_err(pkcs11_error("GCM parameters"))?;
                let session = lock(session);
                session
                    .decrypt(&Mechanism::AesGcm(params), *key, ciphertext)
                    .map_err(|error| match error {
                        // SoftHSM2 answers a failed tag check (wrong key, AAD
                        // or ciphertext) with CKR_GENERAL_ERROR; the standard
                        // answer is CKR_ENCRYPTED_DATA_INVALID. Both mean
                        // "does not authenticate".
                        CryptokiError::Pkcs11(
                            RvError::GeneralError
                            | RvError::EncryptedDataInvalid
                            | RvError::EncryptedDataLenRange,
                            _,
                        ) => MasterKeyError::Unwrap,
                        other => pkcs11_error("C_Decrypt (AES-GCM unwrap)")(other),
                    })?
            }
        });
        let bytes: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(
            plaintext
                .as_slice()
                .try_into()
                .map_err(|_| MasterKeyError::Unwrap)?,
        );
        Ok(SealingKey::from_bytes(*bytes))
    }

    /// `file:<path>` or `pkcs11:<token_label>/<key_label>`, for status
    /// output and logs. Never key bytes, never the PIN.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::File { path, .. } => format!("file:{}", path.display()),
            Backend::Memory { name, .. } => format!("memory:{name}"),
            Backend::Pkcs11 {
                token_label,
                key_label,
                ..
            } => format!("pkcs11:{token_label}/{key_label}"),
        }
    }
}

/// `WRAP_DOMAIN || version || context`. The domain and version have fixed
/// lengths, so the concatenation is unambiguous.
fn associated_data(context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_DOMAIN.len() + 1 + context.len());
    aad.extend_from_slice(WRAP_DOMAIN);
    aad.push(WRAP_VERSION);
    aad.extend_from_slice(context);
    aad
}

/// Locks the session. A poisoned lock is recovered: the mutex guards only a
/// session handle, and every call made under it is a single-part
/// `C_Encrypt`/`C_Decrypt` that leaves no operation active, so a panic in
/// another thread cannot leave it half-used.
fn lock(session: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

/// "31 bytes", or "more" for a file longer than a key (reading stops there).
fn describe_length(found: &usize) -> String {
    if *found > KEY_LEN {
        "more".to_owned()
    } else {
        format!("{found}")
    }
}

fn pkcs11_error(operation: &'static str) -> impl Fn(CryptokiError) -> MasterKeyError {
    move |source| MasterKeyError::Pkcs11 { operation, source }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> MasterKeyError + '_ {
    move |source| MasterKeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create_file_key(path: &Path) -> Result<MasterKey, MasterKeyError> {
    use std::io::Write;
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(io_error(parent))?;
    }
    let mut options = std::fs::OpenOptions::new();
    // create_new: an existing key file may protect shares; never replace it.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            MasterKeyError::AlreadyExists {
                what: format!("file {}", path.display()),
            }
        } else {
            io_error(path)(source)
        }
    })?;
    let key = SealingKey::generate(&mut OsRng);
    file.write_all(key.expose_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))?;
    // The new directory entry must survive a crash too.
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(parent))?;
    }
    tracing::info!(path = %path.display(), "created master key file");
    Ok(MasterKey {
        backend: Backend::File {
            key,
            path: path.to_path_buf(),
        },
    })
}

fn open_file_key(path: &Path) -> Result<MasterKey, MasterKeyError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    // Metadata of the opened file, not of the path: no window in which the
    // path could be swapped between the check and the read.
    let metadata = file.metadata().map_err(io_error(path))?;
    if !metadata.is_file() {
        return Err(MasterKeyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(MasterKeyError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    // Read one byte more than a key so that a longer file is detected.
    let mut buffer = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
    file.take((KEY_LEN + 1) as u64)
        .read_to_end(&mut buffer)
        .map_err(io_error(path))?;
    let bytes: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(buffer.as_slice().try_into().map_err(
        |_| MasterKeyError::BadKeyLength {
            path: path.to_path_buf(),
            found: buffer.len(),
        },
    )?);
    Ok(MasterKey {
        backend: Backend::File {
            key: SealingKey::from_bytes(*bytes),
            path: path.to_path_buf(),
        },
    })
}

/// Why the shared PKCS#11 context could not be had: the failed call and
/// the token's answer.
#[derive(Debug)]
pub struct Pkcs11Failure {
    /// The PKCS#11 call that failed.
    pub operation: &'static str,
    /// Its error.
    pub source: CryptokiError,
}

/// The one loaded and initialised PKCS#11 context of `module` for the whole
/// process, shared by every component that uses the module (a node's
/// master key; the control plane's keyring and key registry). PKCS#11
/// allows `C_Initialize` once per process; creating and reopening keys (a
/// restart in tests, `create` then `open` in tools) must share it. Contexts
/// are never finalised: keys are used until the process exits.
pub fn shared_pkcs11_context(module: &Path) -> Result<Pkcs11, Pkcs11Failure> {
    static CONTEXTS: OnceLock<Mutex<Vec<(PathBuf, Pkcs11)>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        // The list is only pushed to after a successful initialisation, so a
        // panic elsewhere cannot leave it inconsistent.
        .unwrap_or_else(PoisonError::into_inner);
    if let Some((_, context)) = contexts.iter().find(|(path, _)| path == module) {
        return Ok(context.clone());
    }
    let context = Pkcs11::new(module).map_err(|source| Pkcs11Failure {
        operation: "loading the module",
        source,
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Something outside this cache (a library of its own) may have
        // initialised the module; it is usable either way.
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(source) => {
            return Err(Pkcs11Failure {
                operation: "C_Initialize",
                source,
            })
        }
    }
    contexts.push((module.to_path_buf(), context.clone()));
    Ok(context)
}

/// The slots whose initialised token is labelled `token_label` (slot
/// numbers are not stable: SoftHSM2 assigns random-looking ones).
pub fn slots_with_token(context: &Pkcs11, token_label: &str) -> Result<Vec<Slot>, Pkcs11Failure> {
    let failure = |operation| move |source| Pkcs11Failure { operation, source };
    let mut found = Vec::new();
    for slot in context
        .get_slots_with_initialized_token()
        .map_err(failure("C_GetSlotList"))?
    {
        let info = context
            .get_token_info(slot)
            .map_err(failure("C_GetTokenInfo"))?;
        if info.label() == token_label {
            found.push(slot);
        }
    }
    Ok(found)
}

fn pkcs11_context(module: &Path) -> Result<Pkcs11, MasterKeyError> {
    shared_pkcs11_context(module).map_err(|failure| MasterKeyError::Pkcs11 {
        operation: failure.operation,
        source: failure.source,
    })
}

/// Opens a session on the token labelled `token_label` and logs in as the
/// user. `read_write` is needed only to create the key.
fn pkcs11_session(
    module: &Path,
    token_label: &str,
    pin: &Pin,
    read_write: bool,
) -> Result<Session, MasterKeyError> {
    let context = pkcs11_context(module)?;
    let slot = find_token(&context, module, token_label)?;
    let session = if read_write {
        context.open_rw_session(slot)
    } else {
        context.open_ro_session(slot)
    }
    .map_err(pkcs11_error("C_OpenSession"))?;
    let auth_pin = AuthPin::from(pin.expose_secret());
    match session.login(UserType::User, Some(&auth_pin)) {
        // Login state is per process and token: another session of this
        // process (an earlier MasterKey) may already be logged in. The token
        // then answers CKR_USER_ALREADY_LOGGED_IN without checking this PIN
        // (SoftHSM2 does so even for a wrong one), so only the first login of
        // a process proves the PIN; the PIN guards the token against other
        // processes, not against a second opener inside this one.
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(source) => Err(MasterKeyError::Login {
            token_label: token_label.to_owned(),
            source,
        }),
    }
}

fn find_token(context: &Pkcs11, module: &Path, token_label: &str) -> Result<Slot, MasterKeyError> {
    let found =
        slots_with_token(context, token_label).map_err(|failure| MasterKeyError::Pkcs11 {
            operation: failure.operation,
            source: failure.source,
        })?;
    match found.as_slice() {
        [] => Err(MasterKeyError::TokenNotFound {
            module: module.to_path_buf(),
            token_label: token_label.to_owned(),
        }),
        [slot] => Ok(*slot),
        _ => Err(MasterKeyError::Ambiguous {
            what: "token",
            label: token_label.to_owned(),
        }),
    }
}

fn find_keys(session: &Session, key_label: &str) -> Result<Vec<ObjectHandle>, MasterKeyError> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ])
        .map_err(pkcs11_error("C_FindObjects"))
}

/// Refuses a key that could leave the token: someone may have created a key
/// with the node's label by hand, without the attributes `create` sets.
fn check_non_extractable(
    session: &Session,
    key: ObjectHandle,
    key_label: &str,
) -> Result<(), MasterKeyError> {
    let attributes = session
        .get_attributes(key, &[AttributeType::Sensitive, AttributeType::Extractable])
        .map_err(pkcs11_error("C_GetAttributeValue"))?;
    let sensitive = attributes
        .iter()
        .any(|attribute| matches!(attribute, Attribute::Sensitive(true)));
    let non_extractable = attributes
        .iter()
        .any(|attribute| matches!(attribute, Attribute::Extractable(false)));
    if sensitive && non_extractable {
        Ok(())
    } else {
        Err(MasterKeyError::ExtractableKey {
            key_label: key_label.to_owned(),
        })
    }
}
