//! Keys that live inside a PKCS#11 token (an HSM; SoftHSM2 in tests) and
//! never leave it: the key registry's HSM keys (`/api/v1/keys`) and the
//! org keys that wrap the wallets' share backups. Kernel machinery, so that
//! both engines (and later the seal backends) use one token store.
//!
//! # Design
//!
//! Every private or secret key is generated inside the token with
//! `CKA_TOKEN`, `CKA_PRIVATE` and `CKA_SENSITIVE` true and `CKA_EXTRACTABLE`
//! false, so no PKCS#11 call can return its value, in clear or wrapped: the
//! token refuses `C_GetAttributeValue(CKA_VALUE)` with
//! `CKR_ATTRIBUTE_SENSITIVE` and `C_WrapKey` with `CKR_KEY_UNEXTRACTABLE`.
//! A compromised control plane can use the keys while it runs, but cannot
//! copy them. Each key also gets only the usages its kind needs (no AES key
//! can wrap token keys, no signing key can derive).
//!
//! A key is named by a random 128-bit [`HsmKeyId`] stored in `CKA_ID` on
//! every object of the key (secret key, or private and public key); the
//! caller's label goes to `CKA_LABEL` and is informational only. Operations
//! take the id and the [`HsmKeyKind`] the registry recorded, and check the
//! kind against the token's object before using it.
//!
//! | kind | generation | operations |
//! | --- | --- | --- |
//! | AES-256 | `CKM_AES_KEY_GEN` | AES-256-GCM encrypt/decrypt and data-key wrap (`CKM_AES_GCM`, 96-bit IV from the host RNG, 128-bit tag; output `iv \|\| ciphertext \|\| tag`) |
//! | P-256, secp256k1 | `CKM_EC_KEY_PAIR_GEN`, curve by OID | ECDSA over a SHA-256 digest (`CKM_ECDSA`), DER output; secp256k1 signatures are normalised to low s |
//! | Ed25519 | `CKM_EC_EDWARDS_KEY_PAIR_GEN` | pure Ed25519 over the message (`CKM_EDDSA`) |
//! | RSA-2048/3072 | `CKM_RSA_PKCS_KEY_PAIR_GEN`, e = 65537 | RSA-PSS SHA-256, MGF1-SHA256, 32-byte salt (`CKM_SHA256_RSA_PKCS_PSS` / `CKM_RSA_PKCS_PSS`); RSA-OAEP SHA-256 + MGF1-SHA256 |
//!
//! Public keys are returned as SubjectPublicKeyInfo DER, built with OpenSSL
//! from `CKA_EC_POINT` (which SoftHSM2 returns DER-wrapped in an OCTET
//! STRING; a raw point is accepted too) or from `CKA_MODULUS` and
//! `CKA_PUBLIC_EXPONENT`. OpenSSL also checks that an EC point is on its
//! curve before it is handed out.
//!
//! Public-key operations need no secret and run on the host: RSA-OAEP
//! encryption (and data-key wrapping under an RSA key) uses OpenSSL with
//! the public key read from the token. Decryption always runs in the token.
//!
//! # Data-key wrapping
//!
//! [`HsmKeyStore::wrap_data_key`] protects a caller's 32-byte data key:
//! AES-256-GCM under an AES key, RSA-OAEP under an RSA key. The caller's
//! `context` is bound as GCM associated data or OAEP label, behind a domain
//! prefix, so a wrapped key is not a valid [`HsmKeyStore::encrypt`]
//! ciphertext and the other way round. GCM is used rather than `CKM_AES_KEY_WRAP_PAD` because
//! SoftHSM2 offers key wrap only for `C_WrapKey` of token objects (the data
//! key would first have to be imported as an extractable object), and
//! because GCM binds the context.
//!
//! The GCM IVs are random (PKCS#11 2.40 leaves IV generation to the caller,
//! and SoftHSM2 takes the IV it is given), so one AES key must not seal more
//! than 2^32 messages (NIST SP 800-38D, 8.3); the registry rotates keys long
//! before that.
//!
//! # Token limitations (SoftHSM2 2.6.1)
//!
//! SoftHSM2 2.6.1 accepts `CKM_RSA_PKCS_OAEP` only with SHA-1, MGF1-SHA1 and
//! no label; it answers SHA-256 with `CKR_ARGUMENTS_BAD`. RSA decryption and
//! data-key unwrapping under an RSA key therefore fail there with
//! [`HsmError::UnsupportedMechanism`]; tokens that implement OAEP with
//! SHA-256 (the PKCS#11 2.40 standard mechanism) work. There is no
//! fallback to SHA-1 or to raw RSA with host-side unpadding.
//!
//! # Errors
//!
//! [`HsmError::code`] gives stable snake_case codes for the API. Every failed
//! decryption or unwrap (wrong key, AAD, label or context, changed or
//! truncated ciphertext; SoftHSM2 answers a bad GCM tag with
//! `CKR_GENERAL_ERROR`, the standard answer is `CKR_ENCRYPTED_DATA_INVALID`)
//! is the one opaque [`HsmError::DecryptFailed`].
//!
//! # Threads
//!
//! [`HsmKeyStore`] is `Clone + Send + Sync`. Its calls block (RSA key
//! generation takes seconds): async callers run them in
//! `tokio::task::spawn_blocking`. Each call opens its own PKCS#11 session,
//! so calls run in parallel; one further session, opened at login and kept
//! while the store is unlocked, keeps the token logged in (PKCS#11 logs the
//! application out when its last session closes).
//!
//! # Seal
//!
//! [`HsmKeyStore::lock`] (the control plane's `sys/seal`) closes the login
//! session and makes every later call of every clone of the store fail
//! with [`HsmError::Locked`] before it touches the token;
//! [`HsmKeyStore::unlock`] logs in again with the PIN (at unseal). The
//! store does not call `C_Logout`: login is per process and token, and
//! another opener in the process (the keyring's master key in the same
//! token) would be logged out with it; once no session of the process is
//! left, the token logs the process out by itself. A call already past the
//! check when the store is locked finishes.

mod public;

#[cfg(test)]
use public::unwrap_ec_point;
use public::{ecdsa_der, oaep_encrypt_on_host, public_key_der, rsa_public_key};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::context::{Function, Pkcs11};
use cryptoki::error::{Error as CryptokiError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use custos_signer_node::master_key::{shared_pkcs11_context, slots_with_token};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Length of a SHA-256 digest, in bytes.
pub const DIGEST_LEN: usize = 32;
/// Length of a data key [`HsmKeyStore::wrap_data_key`] protects, in bytes.
pub const DATA_KEY_LEN: usize = 32;
/// Length of an AES-GCM IV, in bytes.
pub const GCM_IV_LEN: usize = 12;
/// Length of an AES-GCM tag, in bytes.
pub const GCM_TAG_LEN: usize = 16;
/// Length of a [`HsmKeyId`], in bytes.
pub const KEY_ID_LEN: usize = 16;
/// Longest `CKA_LABEL` accepted, in bytes.
pub const MAX_LABEL_LEN: usize = 128;
/// PSS salt length, in bytes.
const PSS_SALT_LEN: u64 = 32;
const GCM_TAG_BITS: u64 = 128;
const AES_KEY_LEN: u64 = 32;
/// OAEP overhead for SHA-256: two digests and two bytes (RFC 8017, 7.1.1).
const OAEP_OVERHEAD: usize = 2 * DIGEST_LEN + 2;
/// Domain prefixes of the GCM associated data and OAEP labels this module
/// adds. Both have the same fixed length, so `prefix || context` is
/// unambiguous.
const ENCRYPT_DOMAIN: &[u8] = b"custos/keys/hsm/encrypt/v1";
const WRAP_DOMAIN: &[u8] = b"custos/keys/hsm/wrapkey/v1";

/// DER of the curve OIDs, the `CKA_EC_PARAMS` of each curve.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const SECP256K1_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// `PrintableString "edwards25519"`, the PKCS#11 3.0 alternative some
/// tokens store for Ed25519 keys.
const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";
/// Lengths of an uncompressed Weierstrass point and an Ed25519 key.
const EC_POINT_LEN: usize = 65;
const ED25519_POINT_LEN: usize = 32;

/// The kinds of key the store generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HsmKeyKind {
    /// AES-256 secret key (encryption, data-key wrapping).
    Aes256,
    /// ECDSA key on NIST P-256.
    EcP256,
    /// ECDSA key on secp256k1.
    EcSecp256k1,
    /// Ed25519 key.
    Ed25519,
    /// RSA-2048 key (PSS signatures, OAEP encryption).
    Rsa2048,
    /// RSA-3072 key (PSS signatures, OAEP encryption).
    Rsa3072,
}

impl HsmKeyKind {
    /// A stable name for logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256 => "aes-256",
            Self::EcP256 => "ec-p256",
            Self::EcSecp256k1 => "ec-secp256k1",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
        }
    }

    fn rsa_modulus_len(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(256),
            Self::Rsa3072 => Some(384),
            _ => None,
        }
    }

    fn is_rsa(self) -> bool {
        self.rsa_modulus_len().is_some()
    }
}

impl fmt::Display for HsmKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The random id of a key: the `CKA_ID` of each of its token objects.
/// Shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HsmKeyId([u8; KEY_ID_LEN]);

impl HsmKeyId {
    fn random() -> Self {
        let mut id = [0u8; KEY_ID_LEN];
        OsRng.fill_bytes(&mut id);
        Self(id)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    /// An id from its bytes (exactly [`KEY_ID_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HsmError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| HsmError::InvalidKeyId)
    }

    /// An id from its hex form.
    pub fn from_hex(text: &str) -> Result<Self, HsmError> {
        let bytes = hex::decode(text).map_err(|_| HsmError::InvalidKeyId)?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Display for HsmKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for HsmKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HsmKeyId({self})")
    }
}

/// A key just generated in the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HsmKey {
    /// The key's id (`CKA_ID`).
    pub id: HsmKeyId,
    /// The key's kind.
    pub kind: HsmKeyKind,
    /// The public key as SubjectPublicKeyInfo DER; `None` for AES keys.
    pub public_key_der: Option<Vec<u8>>,
}

/// Errors of the HSM key store. Messages name operations, kinds and
/// PKCS#11 return codes; never key bytes, plaintexts or the PIN.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The module could not be loaded or initialised, or the token stopped
    /// answering (no session, logged out, device error).
    #[error("HSM unavailable: {operation} failed: {source}")]
    Unavailable {
        /// What the store was doing.
        operation: &'static str,
        /// The module's answer.
        #[source]
        source: CryptokiError,
    },
    /// No initialised token carries the configured label.
    #[error("no PKCS#11 token labelled {token_label:?} in module {module}")]
    TokenNotFound {
        /// The module searched.
        module: PathBuf,
        /// The label looked for.
        token_label: String,
    },
    /// Logging in failed (a wrong PIN shows as `CKR_PIN_INCORRECT`).
    #[error("login to PKCS#11 token {token_label:?} failed: {source}")]
    Login {
        /// The token.
        token_label: String,
        /// The module's answer.
        #[source]
        source: CryptokiError,
    },
    /// More than one token carries the label, or more than one object of one
    /// class carries the key id: the store refuses to guess.
    #[error("more than one PKCS#11 {what} named {name}")]
    Ambiguous {
        /// "token" or "key object".
        what: &'static str,
        /// The token label or key id.
        name: String,
    },
    /// The store was locked because the control plane was sealed
    /// ([`HsmKeyStore::lock`]).
    #[error("the HSM key store is locked: the control plane was sealed")]
    Locked,
    /// The token's session is not logged in as the user (the token logged
    /// the process out): private objects are hidden, so the store cannot
    /// tell whether a key is there.
    #[error("the HSM session is not logged in")]
    NotLoggedIn,
    /// No key with this id is in the token (never created, or destroyed).
    #[error("no key {id} in the HSM")]
    KeyNotFound {
        /// The id looked for.
        id: HsmKeyId,
    },
    /// The key in the token is not of the kind the caller named.
    #[error("key {id} is not a {expected} key")]
    KeyKindMismatch {
        /// The key.
        id: HsmKeyId,
        /// The kind the caller named.
        expected: HsmKeyKind,
    },
    /// The token cannot generate keys of this kind.
    #[error("the HSM cannot generate {kind} keys: {source}")]
    UnsupportedKeyType {
        /// The kind asked for.
        kind: HsmKeyKind,
        /// The module's answer.
        #[source]
        source: CryptokiError,
    },
    /// The operation does not exist for this kind of key (sign with AES,
    /// encrypt with an EC key, sign a digest with Ed25519).
    #[error("{operation} is not supported for {kind} keys")]
    UnsupportedOperation {
        /// The operation.
        operation: &'static str,
        /// The key's kind.
        kind: HsmKeyKind,
    },
    /// The token does not implement the mechanism with the parameters this
    /// store uses (SoftHSM2 2.6.1: RSA-OAEP with SHA-256).
    #[error("the HSM does not support {mechanism}: {source}")]
    UnsupportedMechanism {
        /// The mechanism and parameters.
        mechanism: &'static str,
        /// The module's answer.
        #[source]
        source: CryptokiError,
    },
    /// A label that is empty or longer than [`MAX_LABEL_LEN`] bytes.
    #[error("key label must be 1 to {MAX_LABEL_LEN} bytes, got {len}")]
    InvalidLabel {
        /// The label's length.
        len: usize,
    },
    /// A key id that is not [`KEY_ID_LEN`] bytes (or their hex).
    #[error("invalid key id: {KEY_ID_LEN} bytes (hex) expected")]
    InvalidKeyId,
    /// A digest that is not 32 bytes (SHA-256) long.
    #[error("invalid digest: SHA-256 digests are 32 bytes, got {len}")]
    InvalidDigest {
        /// The digest length given.
        len: usize,
    },
    /// A data key that is not [`DATA_KEY_LEN`] bytes long.
    #[error("data keys are {DATA_KEY_LEN} bytes, got {len}")]
    InvalidDataKey {
        /// The data key length given.
        len: usize,
    },
    /// The plaintext is longer than RSA-OAEP-SHA256 allows for this key.
    #[error("plaintext of {len} bytes is too large for this key (at most {max} bytes)")]
    PlaintextTooLarge {
        /// The plaintext length.
        len: usize,
        /// The maximum for this key.
        max: usize,
    },
    /// The ciphertext or wrapped key does not open under this key and
    /// AAD, label or context. Deliberately does not say why.
    #[error("decryption failed")]
    DecryptFailed,
    /// The token returned something this store cannot use (a public key that
    /// does not parse, a signature of the wrong size).
    #[error("the HSM returned an invalid {what}")]
    InvalidTokenResponse {
        /// What was malformed.
        what: &'static str,
    },
    /// Another PKCS#11 call failed.
    #[error("PKCS#11 {operation} failed: {source}")]
    Pkcs11 {
        /// What the store was doing.
        operation: &'static str,
        /// The module's answer.
        #[source]
        source: CryptokiError,
    },
    /// OpenSSL failed on the host side (building a public key, encrypting
    /// under a public key, encoding a signature).
    #[error("OpenSSL {operation} failed: {source}")]
    Crypto {
        /// What the store was doing.
        operation: &'static str,
        /// OpenSSL's error queue.
        #[source]
        source: openssl::error::ErrorStack,
    },
}

impl HsmError {
    /// A stable snake_case code for the API's error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "hsm_unavailable",
            Self::TokenNotFound { .. } => "hsm_token_not_found",
            Self::Login { .. } => "hsm_login_failed",
            Self::Locked => "hsm_locked",
            Self::NotLoggedIn => "hsm_not_logged_in",
            Self::Ambiguous { .. } => "hsm_ambiguous",
            Self::KeyNotFound { .. } => "key_not_found",
            Self::KeyKindMismatch { .. } => "key_kind_mismatch",
            Self::UnsupportedKeyType { .. } => "unsupported_key_type",
            Self::UnsupportedOperation { .. } => "unsupported_operation",
            Self::UnsupportedMechanism { .. } => "unsupported_mechanism",
            Self::InvalidLabel { .. } => "invalid_label",
            Self::InvalidKeyId => "invalid_key_id",
            Self::InvalidDigest { .. } => "invalid_digest",
            Self::InvalidDataKey { .. } => "invalid_data_key",
            Self::PlaintextTooLarge { .. } => "plaintext_too_large",
            Self::DecryptFailed => "decrypt_failed",
            Self::InvalidTokenResponse { .. } => "hsm_invalid_response",
            Self::Pkcs11 { .. } => "hsm_error",
            Self::Crypto { .. } => "crypto_error",
        }
    }
}

/// Maps a PKCS#11 failure: the token going away (session or login lost,
/// device trouble) is [`HsmError::Unavailable`], anything else
/// [`HsmError::Pkcs11`].
fn pkcs11_error(operation: &'static str) -> impl Fn(CryptokiError) -> HsmError {
    move |source| match source {
        CryptokiError::Pkcs11(
            RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::SessionCount
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized,
            _,
        ) => HsmError::Unavailable { operation, source },
        source => HsmError::Pkcs11 { operation, source },
    }
}

fn crypto_error(operation: &'static str) -> impl Fn(openssl::error::ErrorStack) -> HsmError {
    move |source| HsmError::Crypto { operation, source }
}

/// A key store in one PKCS#11 token. Cheap to clone (the clones share the
/// login); `Send + Sync`; every method blocks (see the module docs).
#[derive(Clone)]
pub struct HsmKeyStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    context: Pkcs11,
    slot: Slot,
    module: PathBuf,
    token_label: String,
    /// Held, never used, so that the token stays logged in; `None` while
    /// the store is locked (sealed). The mutex also makes the (`Send`, not
    /// `Sync`) session shareable.
    login_session: Mutex<Option<Session>>,
}

impl fmt::Debug for HsmKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmKeyStore")
            .field("module", &self.inner.module)
            .field("token_label", &self.inner.token_label)
            .finish_non_exhaustive()
    }
}

impl HsmKeyStore {
    /// Loads `module` (once per process), finds the token labelled
    /// `token_label` and logs in as the user with `pin`. The PIN is not
    /// kept.
    ///
    /// Login state is per process and token: if another store of this
    /// process is already logged in, the token answers
    /// `CKR_USER_ALREADY_LOGGED_IN` without checking this PIN (SoftHSM2 does
    /// so even for a wrong one). The PIN guards the token against other
    /// processes, not against a second opener inside this one.
    pub fn open(module: &Path, token_label: &str, pin: &str) -> Result<Self, HsmError> {
        let context = pkcs11_context(module)?;
        let slot = find_token(&context, module, token_label)?;
        let session = login(&context, slot, token_label, pin)?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                context,
                slot,
                module: module.to_path_buf(),
                token_label: token_label.to_owned(),
                login_session: Mutex::new(Some(session)),
            }),
        })
    }

    /// Closes the login session and refuses every later call, of this
    /// store and of all its clones, with [`HsmError::Locked`] until
    /// [`HsmKeyStore::unlock`] (see "Seal" in the module docs). Idempotent.
    pub fn lock(&self) {
        let session = self
            .inner
            .login_session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Closed outside the mutex (C_CloseSession may take a moment).
        drop(session);
    }

    /// Logs in again with `pin` after [`HsmKeyStore::lock`]; nothing when
    /// the store is not locked.
    pub fn unlock(&self, pin: &str) -> Result<(), HsmError> {
        let inner = &self.inner;
        let mut slot = inner
            .login_session
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(login(&inner.context, inner.slot, &inner.token_label, pin)?);
        }
        Ok(())
    }

    /// Whether the store is locked (sealed): every call answers
    /// [`HsmError::Locked`].
    pub fn is_locked(&self) -> bool {
        self.inner
            .login_session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Generates a non-extractable key of `kind` in the token, labelled
    /// `label` (1 to [`MAX_LABEL_LEN`] bytes), under a fresh random id.
    /// Fails with [`HsmError::UnsupportedKeyType`] if the token cannot
    /// generate that kind.
    pub fn generate(&self, kind: HsmKeyKind, label: &str) -> Result<HsmKey, HsmError> {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(HsmError::InvalidLabel { len: label.len() });
        }
        // SoftHSM2 2.6.1 fails a key generation now and then while other
        // sessions of the process work (CKR_GENERAL_ERROR or
        // CKR_TEMPLATE_INCONSISTENT on a valid template, seen in this
        // file's tests under parallel load): one generation at a time per
        // process, and a failed attempt of that kind is retried under a
        // fresh id. Generation is rare; the other operations run in
        // parallel.
        static GENERATING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = GENERATING.lock().unwrap_or_else(PoisonError::into_inner);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.generate_once(kind, label) {
                Err(HsmError::Pkcs11 {
                    source:
                        CryptokiError::Pkcs11(RvError::GeneralError | RvError::TemplateInconsistent, _),
                    ..
                }) if attempt < 3 => continue,
                outcome => return outcome,
            }
        }
    }

    fn generate_once(&self, kind: HsmKeyKind, label: &str) -> Result<HsmKey, HsmError> {
        let id = HsmKeyId::random();
        let session = self.session(true)?;
        let common = KeyTemplate { id, label };
        let unsupported = |source| match source {
            CryptokiError::Pkcs11(
                RvError::MechanismInvalid
                | RvError::MechanismParamInvalid
                | RvError::CurveNotSupported
                | RvError::DomainParamsInvalid
                | RvError::KeySizeRange,
                _,
            ) => HsmError::UnsupportedKeyType { kind, source },
            source => pkcs11_error("key generation")(source),
        };
        let Some((mechanism, public_template, private_template)) = common.key_pair(kind) else {
            session
                .generate_key(&Mechanism::AesKeyGen, &common.aes())
                .map_err(unsupported)?;
            return Ok(HsmKey {
                id,
                kind,
                public_key_der: None,
            });
        };
        let (public, _private) = session
            .generate_key_pair(&mechanism, &public_template, &private_template)
            .map_err(unsupported)?;
        match public_key_der(&session, public, kind) {
            Ok(der) => Ok(HsmKey {
                id,
                kind,
                public_key_der: Some(der),
            }),
            Err(error) => {
                // Do not leave a key behind that the caller never learns of.
                let _ = destroy_all(&session, id);
                Err(error)
            }
        }
    }

    /// The public key of an asymmetric key, as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self, id: &HsmKeyId, kind: HsmKeyKind) -> Result<Vec<u8>, HsmError> {
        if kind == HsmKeyKind::Aes256 {
            return Err(HsmError::UnsupportedOperation {
                operation: "public key",
                kind,
            });
        }
        let session = self.session(false)?;
        let public = find_key(&session, id, kind, ObjectClass::PUBLIC_KEY)?;
        public_key_der(&session, public, kind)
    }

    /// Whether any object with this id is in the token.
    pub fn exists(&self, id: &HsmKeyId) -> Result<bool, HsmError> {
        let session = self.session(false)?;
        Ok(!find_objects(&session, id, None)?.is_empty())
    }

    /// Destroys every object (secret, private and public key) with this id.
    /// Afterwards every operation on the id answers
    /// [`HsmError::KeyNotFound`], as does a second `destroy`.
    pub fn destroy(&self, id: &HsmKeyId) -> Result<(), HsmError> {
        if self.purge(id)? == 0 {
            return Err(HsmError::KeyNotFound { id: *id });
        }
        Ok(())
    }

    /// Destroys every object with this id that is still in the token and
    /// answers how many there were: none is success, so a destruction
    /// retried after a failure half-way finishes what the first attempt
    /// left.
    /// A session that is not logged in (the token logged the process out)
    /// sees no private object: that is [`HsmError::NotLoggedIn`], never
    /// "nothing left".
    pub fn purge(&self, id: &HsmKeyId) -> Result<usize, HsmError> {
        let session = self.session(true)?;
        let info = session
            .get_session_info()
            .map_err(pkcs11_error("C_GetSessionInfo"))?;
        if info.session_state() != SessionState::RwUser {
            return Err(HsmError::NotLoggedIn);
        }
        destroy_all(&session, *id)
    }

    /// Signs a message. ECDSA (P-256, secp256k1): SHA-256 of the message on
    /// the host, then as [`HsmKeyStore::sign_digest`]. Ed25519: pure Ed25519
    /// of the message (64 bytes). RSA: PSS with SHA-256, MGF1-SHA256 and a
    /// 32-byte salt, hashed in the token.
    pub fn sign_message(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        message: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        match kind {
            HsmKeyKind::EcP256 | HsmKeyKind::EcSecp256k1 => {
                self.sign_digest(id, kind, &Sha256::digest(message))
            }
            HsmKeyKind::Ed25519 => {
                let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                self.sign_in_token(id, kind, &mechanism, message)
            }
            HsmKeyKind::Rsa2048 | HsmKeyKind::Rsa3072 => self.sign_in_token(
                id,
                kind,
                &Mechanism::Sha256RsaPkcsPss(pss_params()),
                message,
            ),
            HsmKeyKind::Aes256 => Err(HsmError::UnsupportedOperation {
                operation: "sign",
                kind,
            }),
        }
    }

    /// Signs a SHA-256 `digest` (exactly 32 bytes). ECDSA (`CKM_ECDSA`):
    /// DER `ECDSA-Sig-Value`; secp256k1 signatures are normalised to low s
    /// (`s <= n/2`, as Bitcoin and Ethereum require), P-256 ones are left as
    /// the token made them. RSA (`CKM_RSA_PKCS_PSS`): the same signature
    /// [`HsmKeyStore::sign_message`] makes of the digested message. Ed25519
    /// and AES: [`HsmError::UnsupportedOperation`].
    pub fn sign_digest(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        digest: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        if matches!(kind, HsmKeyKind::Ed25519 | HsmKeyKind::Aes256) {
            return Err(HsmError::UnsupportedOperation {
                operation: "sign a digest",
                kind,
            });
        }
        if digest.len() != DIGEST_LEN {
            return Err(HsmError::InvalidDigest { len: digest.len() });
        }
        if kind.is_rsa() {
            return self.sign_in_token(id, kind, &Mechanism::RsaPkcsPss(pss_params()), digest);
        }
        let raw = self.sign_in_token(id, kind, &Mechanism::Ecdsa, digest)?;
        ecdsa_der(&raw, kind)
    }

    fn sign_in_token(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        mechanism: &Mechanism,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let session = self.session(false)?;
        let private = find_key(&session, id, kind, ObjectClass::PRIVATE_KEY)?;
        session
            .sign(mechanism, private, data)
            .map_err(pkcs11_error("C_Sign"))
    }

    /// Encrypts `plaintext`. AES-256: GCM in the token with a random 96-bit
    /// IV, `aad` as associated data (behind this module's domain prefix);
    /// output `iv || ciphertext || tag`. RSA:
    /// OAEP with SHA-256 and MGF1-SHA256 on the host under the token's public
    /// key, `aad` as the OAEP label (empty: no label), at most
    /// `modulus - 66` bytes. EC and Ed25519: unsupported.
    pub fn encrypt(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        match kind {
            HsmKeyKind::Aes256 => self.gcm_seal(id, &domain_bound(ENCRYPT_DOMAIN, aad), plaintext),
            HsmKeyKind::Rsa2048 | HsmKeyKind::Rsa3072 => {
                self.oaep_encrypt(id, kind, plaintext, aad)
            }
            _ => Err(HsmError::UnsupportedOperation {
                operation: "encrypt",
                kind,
            }),
        }
    }

    /// Decrypts what [`HsmKeyStore::encrypt`] made (or, for RSA, any
    /// RSA-OAEP-SHA256 ciphertext with label `aad`), inside the token.
    /// Every failure to open is [`HsmError::DecryptFailed`].
    pub fn decrypt(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        match kind {
            HsmKeyKind::Aes256 => self.gcm_open(id, &domain_bound(ENCRYPT_DOMAIN, aad), ciphertext),
            HsmKeyKind::Rsa2048 | HsmKeyKind::Rsa3072 => {
                self.oaep_decrypt(id, kind, ciphertext, aad)
            }
            _ => Err(HsmError::UnsupportedOperation {
                operation: "decrypt",
                kind,
            }),
        }
    }

    /// Wraps a caller's [`DATA_KEY_LEN`]-byte data key: AES-256-GCM (output
    /// `iv || ciphertext || tag`, 60 bytes) or RSA-OAEP-SHA256, with
    /// `context` (what the data key protects) bound to the result.
    pub fn wrap_data_key(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        data_key: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        if data_key.len() != DATA_KEY_LEN {
            return Err(HsmError::InvalidDataKey {
                len: data_key.len(),
            });
        }
        let bound = domain_bound(WRAP_DOMAIN, context);
        match kind {
            HsmKeyKind::Aes256 => self.gcm_seal(id, &bound, data_key),
            HsmKeyKind::Rsa2048 | HsmKeyKind::Rsa3072 => {
                self.oaep_encrypt(id, kind, data_key, &bound)
            }
            _ => Err(HsmError::UnsupportedOperation {
                operation: "wrap",
                kind,
            }),
        }
    }

    /// Unwraps a data key from [`HsmKeyStore::wrap_data_key`] with the same
    /// `context`. Any failure to open, or a result that is not a data key,
    /// is [`HsmError::DecryptFailed`].
    pub fn unwrap_data_key(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, HsmError> {
        let bound = domain_bound(WRAP_DOMAIN, context);
        let plaintext = match kind {
            HsmKeyKind::Aes256 => self.gcm_open(id, &bound, wrapped)?,
            HsmKeyKind::Rsa2048 | HsmKeyKind::Rsa3072 => {
                self.oaep_decrypt(id, kind, wrapped, &bound)?
            }
            _ => {
                return Err(HsmError::UnsupportedOperation {
                    operation: "unwrap",
                    kind,
                })
            }
        };
        if plaintext.len() != DATA_KEY_LEN {
            return Err(HsmError::DecryptFailed);
        }
        let mut data_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        data_key.copy_from_slice(&plaintext);
        Ok(data_key)
    }

    fn gcm_seal(&self, id: &HsmKeyId, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        let session = self.session(false)?;
        let key = find_key(&session, id, HsmKeyKind::Aes256, ObjectClass::SECRET_KEY)?;
        let mut iv = [0u8; GCM_IV_LEN];
        OsRng.fill_bytes(&mut iv);
        // GcmParams borrows the IV mutably (PKCS#11 3.0 lets a token write
        // a generated IV back); SoftHSM2 uses it as given.
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, aad, GCM_TAG_BITS.into())
            .map_err(pkcs11_error("GCM parameters"))?;
        let sealed = session
            .encrypt(&Mechanism::AesGcm(params), key, plaintext)
            .map_err(pkcs11_error("C_Encrypt (AES-GCM)"))?;
        if sealed.len() != plaintext.len() + GCM_TAG_LEN {
            return Err(HsmError::InvalidTokenResponse {
                what: "AES-GCM ciphertext",
            });
        }
        let mut output = Vec::with_capacity(GCM_IV_LEN + sealed.len());
        output.extend_from_slice(&iv);
        output.extend_from_slice(&sealed);
        Ok(output)
    }

    fn gcm_open(
        &self,
        id: &HsmKeyId,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        if ciphertext.len() < GCM_IV_LEN + GCM_TAG_LEN {
            return Err(HsmError::DecryptFailed);
        }
        let (iv, sealed) = ciphertext.split_at(GCM_IV_LEN);
        let session = self.session(false)?;
        let key = find_key(&session, id, HsmKeyKind::Aes256, ObjectClass::SECRET_KEY)?;
        let mut iv_param = [0u8; GCM_IV_LEN];
        iv_param.copy_from_slice(iv);
        let params = GcmParams::new(&mut iv_param, aad, GCM_TAG_BITS.into())
            .map_err(pkcs11_error("GCM parameters"))?;
        session
            .decrypt(&Mechanism::AesGcm(params), key, sealed)
            .map(Zeroizing::new)
            .map_err(decrypt_error("AES-GCM"))
    }

    fn oaep_encrypt(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        plaintext: &[u8],
        label: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let session = self.session(false)?;
        let public = find_key(&session, id, kind, ObjectClass::PUBLIC_KEY)?;
        let key = rsa_public_key(&session, public)?;
        drop(session);
        let max = key.size().saturating_sub(OAEP_OVERHEAD);
        if plaintext.len() > max {
            return Err(HsmError::PlaintextTooLarge {
                len: plaintext.len(),
                max,
            });
        }
        oaep_encrypt_on_host(&key, plaintext, label).map_err(crypto_error("RSA-OAEP encrypt"))
    }

    fn oaep_decrypt(
        &self,
        id: &HsmKeyId,
        kind: HsmKeyKind,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        if Some(ciphertext.len()) != kind.rsa_modulus_len() {
            return Err(HsmError::DecryptFailed);
        }
        let session = self.session(false)?;
        let private = find_key(&session, id, kind, ObjectClass::PRIVATE_KEY)?;
        let source = if label.is_empty() {
            PkcsOaepSource::empty()
        } else {
            PkcsOaepSource::data_specified(label)
        };
        let params = PkcsOaepParams::new(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, source);
        session
            .decrypt(&Mechanism::RsaPkcsOaep(params), private, ciphertext)
            .map(Zeroizing::new)
            .map_err(decrypt_error("RSA-OAEP with SHA-256 and MGF1-SHA256"))
    }

    /// A new session on the token; it is already logged in through the
    /// store's login session. Closed when dropped.
    fn session(&self, read_write: bool) -> Result<Session, HsmError> {
        if self.is_locked() {
            return Err(HsmError::Locked);
        }
        let inner = &self.inner;
        if read_write {
            inner.context.open_rw_session(inner.slot)
        } else {
            inner.context.open_ro_session(inner.slot)
        }
        .map_err(unavailable("C_OpenSession"))
    }
}

/// A new read-only session on `slot`, logged in as the user with `pin`
/// (or already logged in through another session of the process).
fn login(context: &Pkcs11, slot: Slot, token_label: &str, pin: &str) -> Result<Session, HsmError> {
    let session = context
        .open_ro_session(slot)
        .map_err(unavailable("C_OpenSession"))?;
    match session.login(UserType::User, Some(&AuthPin::from(pin))) {
        Ok(()) | Err(CryptokiError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(source) => Err(HsmError::Login {
            token_label: token_label.to_owned(),
            source,
        }),
    }
}

fn unavailable(operation: &'static str) -> impl Fn(CryptokiError) -> HsmError {
    move |source| HsmError::Unavailable { operation, source }
}

/// Maps a `C_DecryptInit`/`C_Decrypt` failure. Parameters the token refuses
/// at init are [`HsmError::UnsupportedMechanism`]; every refusal of the
/// ciphertext itself is the opaque [`HsmError::DecryptFailed`].
fn decrypt_error(mechanism: &'static str) -> impl Fn(CryptokiError) -> HsmError {
    move |source| match source {
        CryptokiError::Pkcs11(
            RvError::ArgumentsBad | RvError::MechanismInvalid | RvError::MechanismParamInvalid,
            Function::DecryptInit,
        ) => HsmError::UnsupportedMechanism { mechanism, source },
        CryptokiError::Pkcs11(
            RvError::GeneralError
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange,
            Function::Decrypt,
        ) => HsmError::DecryptFailed,
        source => pkcs11_error("C_Decrypt")(source),
    }
}

/// `domain || data`; every domain has the same length, so the result is
/// unambiguous.
fn domain_bound(domain: &[u8], data: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(domain.len() + data.len());
    bound.extend_from_slice(domain);
    bound.extend_from_slice(data);
    bound
}

fn pss_params() -> PkcsPssParams {
    PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: PSS_SALT_LEN.into(),
    }
}

/// The generation templates shared by every kind.
struct KeyTemplate<'a> {
    id: HsmKeyId,
    label: &'a str,
}

impl KeyTemplate<'_> {
    fn naming(&self) -> [Attribute; 3] {
        [
            Attribute::Id(self.id.as_bytes().to_vec()),
            Attribute::Label(self.label.as_bytes().to_vec()),
            Attribute::Token(true),
        ]
    }

    /// Attributes of every secret and private key: in the token, usable
    /// only after login, never readable or wrappable.
    fn protected(&self) -> Vec<Attribute> {
        let mut template = self.naming().to_vec();
        template.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Derive(false),
            Attribute::Unwrap(false),
        ]);
        template
    }

    fn aes(&self) -> Vec<Attribute> {
        let mut template = self.protected();
        template.extend([
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(AES_KEY_LEN.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
        ]);
        template
    }

    /// Mechanism, public template and private template of an asymmetric
    /// kind; `None` for [`HsmKeyKind::Aes256`].
    fn key_pair(
        &self,
        kind: HsmKeyKind,
    ) -> Option<(Mechanism<'static>, Vec<Attribute>, Vec<Attribute>)> {
        let ec = |mechanism, key_type, params: &[u8]| {
            let public = vec![
                Attribute::KeyType(key_type),
                Attribute::EcParams(params.to_vec()),
            ];
            (mechanism, public, vec![Attribute::KeyType(key_type)])
        };
        let rsa = |bits: u64| {
            let public = vec![
                Attribute::KeyType(KeyType::RSA),
                Attribute::ModulusBits(bits.into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::Encrypt(true),
            ];
            let private = vec![Attribute::KeyType(KeyType::RSA), Attribute::Decrypt(true)];
            (Mechanism::RsaPkcsKeyPairGen, public, private)
        };
        let (mechanism, public_extra, private_extra) = match kind {
            HsmKeyKind::Aes256 => return None,
            HsmKeyKind::EcP256 => ec(Mechanism::EccKeyPairGen, KeyType::EC, P256_PARAMS),
            HsmKeyKind::EcSecp256k1 => ec(Mechanism::EccKeyPairGen, KeyType::EC, SECP256K1_PARAMS),
            HsmKeyKind::Ed25519 => ec(
                Mechanism::EccEdwardsKeyPairGen,
                KeyType::EC_EDWARDS,
                ED25519_PARAMS,
            ),
            HsmKeyKind::Rsa2048 => rsa(2048),
            HsmKeyKind::Rsa3072 => rsa(3072),
        };
        let mut public = self.naming().to_vec();
        public.extend([
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Private(false),
            Attribute::Verify(true),
        ]);
        public.extend(public_extra);
        let mut private = self.protected();
        private.extend([
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Sign(true),
        ]);
        private.extend(private_extra);
        Some((mechanism, public, private))
    }
}

/// Token objects with this id, of one class or of any.
fn find_objects(
    session: &Session,
    id: &HsmKeyId,
    class: Option<ObjectClass>,
) -> Result<Vec<ObjectHandle>, HsmError> {
    let mut template = vec![
        Attribute::Token(true),
        Attribute::Id(id.as_bytes().to_vec()),
    ];
    template.extend(class.map(Attribute::Class));
    session
        .find_objects(&template)
        .map_err(pkcs11_error("C_FindObjects"))
}

/// The object of `class` with this id, checked to be of `kind`. An id
/// whose objects are all of other classes (an EC key asked for as AES) is a
/// kind mismatch, not a missing key.
fn find_key(
    session: &Session,
    id: &HsmKeyId,
    kind: HsmKeyKind,
    class: ObjectClass,
) -> Result<ObjectHandle, HsmError> {
    let mismatch = HsmError::KeyKindMismatch {
        id: *id,
        expected: kind,
    };
    let object = match find_objects(session, id, Some(class))?.as_slice() {
        [] if find_objects(session, id, None)?.is_empty() => {
            return Err(HsmError::KeyNotFound { id: *id })
        }
        [] => return Err(mismatch),
        [object] => *object,
        _ => {
            return Err(HsmError::Ambiguous {
                what: "key object",
                name: id.to_string(),
            })
        }
    };
    if object_kind(session, object)? == Some(kind) {
        Ok(object)
    } else {
        Err(mismatch)
    }
}

/// The kind of a key object, read from its key type and its curve, modulus
/// or value length; `None` for a key this store does not make.
fn object_kind(session: &Session, object: ObjectHandle) -> Result<Option<HsmKeyKind>, HsmError> {
    let attributes = session
        .get_attributes(
            object,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Modulus,
                AttributeType::ValueLen,
            ],
        )
        .map_err(pkcs11_error("C_GetAttributeValue"))?;
    let mut key_type = None;
    let mut ec_params: &[u8] = &[];
    let mut size = 0usize;
    for attribute in &attributes {
        match attribute {
            Attribute::KeyType(value) => key_type = Some(*value),
            Attribute::EcParams(value) => ec_params = value,
            Attribute::Modulus(value) => size = value.len(),
            Attribute::ValueLen(value) => size = usize::from(*value),
            _ => {}
        }
    }
    Ok(match (key_type, ec_params, size) {
        (Some(KeyType::AES), _, 32) => Some(HsmKeyKind::Aes256),
        (Some(KeyType::EC), P256_PARAMS, _) => Some(HsmKeyKind::EcP256),
        (Some(KeyType::EC), SECP256K1_PARAMS, _) => Some(HsmKeyKind::EcSecp256k1),
        (Some(KeyType::EC_EDWARDS), ED25519_PARAMS | ED25519_PARAMS_NAME, _) => {
            Some(HsmKeyKind::Ed25519)
        }
        (Some(KeyType::RSA), _, 256) => Some(HsmKeyKind::Rsa2048),
        (Some(KeyType::RSA), _, 384) => Some(HsmKeyKind::Rsa3072),
        _ => None,
    })
}

/// Destroys every token object with this id; returns how many there were.
fn destroy_all(session: &Session, id: HsmKeyId) -> Result<usize, HsmError> {
    let objects = find_objects(session, &id, None)?;
    for object in &objects {
        session
            .destroy_object(*object)
            .map_err(pkcs11_error("C_DestroyObject"))?;
    }
    Ok(objects.len())
}

/// One attribute of an object, as bytes.
fn bytes_attribute(
    session: &Session,
    object: ObjectHandle,
    wanted: AttributeType,
) -> Result<Vec<u8>, HsmError> {
    let attributes = session
        .get_attributes(object, &[wanted])
        .map_err(pkcs11_error("C_GetAttributeValue"))?;
    attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::EcPoint(bytes)
            | Attribute::Modulus(bytes)
            | Attribute::PublicExponent(bytes) => Some(bytes),
            _ => None,
        })
        .ok_or(HsmError::InvalidTokenResponse {
            what: "public key attribute",
        })
}

/// The process-wide PKCS#11 context of `module`, shared with the keyring's
/// master key (PKCS#11 allows `C_Initialize` once per process).
fn pkcs11_context(module: &Path) -> Result<Pkcs11, HsmError> {
    shared_pkcs11_context(module).map_err(|failure| HsmError::Unavailable {
        operation: failure.operation,
        source: failure.source,
    })
}

/// The slot of the one initialised token labelled `token_label`.
fn find_token(context: &Pkcs11, module: &Path, token_label: &str) -> Result<Slot, HsmError> {
    let found =
        slots_with_token(context, token_label).map_err(|failure| HsmError::Unavailable {
            operation: failure.operation,
            source: failure.source,
        })?;
    match found.as_slice() {
        [] => Err(HsmError::TokenNotFound {
            module: module.to_path_buf(),
            token_label: token_label.to_owned(),
        }),
        [slot] => Ok(*slot),
        _ => Err(HsmError::Ambiguous {
            what: "token",
            name: token_label.to_owned(),
        }),
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests;
