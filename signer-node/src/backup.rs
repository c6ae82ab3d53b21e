//! HSM-wrapped key-share backups: a share sealed so that neither the control
//! plane nor the node operator alone can open it.
//!
//! # Scheme
//!
//! A signer node exports a backup of one key share ([`seal_backup`]):
//!
//! ```text
//! DK  = 32 random bytes                  data key of the share
//! K1  = 32 random bytes                  control-plane half
//! K2  = DK xor K1                        recovery half
//! ciphertext = AES-256-GCM(DK, random nonce, share, aad = canonical meta)
//!
//! e   = ephemeral X25519 key, R = the operator's recovery public key
//! ss  = X25519(e, R)                     refused if all zero (low-order R)
//! KEK = HKDF-SHA256(ikm = ss, salt = e_pub || R,
//!                   info = "custos/share-backup/recovery/v1" || meta_digest)
//! wrapped_k2 = AES-256-GCM(KEK, nonce = 0^96, K2, aad = meta_digest)
//! ```
//!
//! The node returns two things:
//!
//! * a [`SealedBackup`] (`meta`, `nonce`, `ciphertext`, `e_pub`,
//!   `wrapped_k2`), serialised with [`SealedBackup::to_bytes`]: what the
//!   control plane stores in its database;
//! * a [`ControlPlaneHalf`] holding K1, which the control plane wraps at once
//!   with the org's AES key inside the HSM (associated data:
//!   [`BackupMeta::meta_digest`]) and never stores or logs in the clear.
//!
//! [`open_backup`] needs the sealed backup, K1 (unwrapped by the HSM after an
//! approval) and the operator's [`RecoveryKey`]: it derives the KEK, unwraps
//! K2, computes DK = K1 xor K2 and decrypts the share.
//!
//! The metadata ([`BackupMeta`]: backup id, wallet, party, generation, curve,
//! creation time) is public, and its canonical encoding
//! ([`BackupMeta::canonical_bytes`], tagged `custos/share-backup/v1`) is the
//! associated data of every encryption above, through its SHA-256
//! ([`BackupMeta::meta_digest`]) where a fixed-size value is wanted. A backup
//! relabelled to another wallet, party or generation, or spliced with parts of
//! another backup, does not open.
//!
//! Every key is single-use: DK seals one share (so the random nonce cannot
//! repeat under it), and the KEK comes from a fresh ephemeral key and the
//! metadata digest, which is why its nonce can be fixed at zero.
//!
//! # Threat model
//!
//! * **Database and HSM, without the recovery key** (a compromised control
//!   plane): it can recover K1, but K2 is only under the KEK, which needs the
//!   recovery secret. K1 alone is a one-time pad of DK: it says nothing of DK.
//! * **Operator with the recovery key, without the HSM**: it can recover K2
//!   from a stolen database row, but K1 is only wrapped by the org's key in
//!   the HSM. K2 alone is likewise a one-time pad of DK.
//! * **The control plane** holds K1 in memory only while it wraps it; the
//!   [`ControlPlaneHalf`] is wiped on drop and its `Debug` is redacted.
//! * **A node** must never log or return DK, K2 or the share: they exist only
//!   inside [`seal_backup`] and [`open_backup`], in zeroizing buffers, and the
//!   opened share is returned in a [`Zeroizing`] buffer to the restore code.
//! * Opening gives no oracle: a wrong recovery key, a wrong K1 and any
//!   tampering all yield the same [`BackupError::OpenFailed`].
//! * **Confidentiality, not origin**: the recovery key is public and K1 is
//!   random, so anyone (the control plane included) can seal a backup of a
//!   share of its choice. A backup that opens proves only that it was not
//!   altered since sealing; the restore path must check the opened share
//!   itself (it is a share of the wallet, party and generation in the
//!   metadata, and its public key is the wallet's) before a node uses it.
//!
//! The XOR of the halves is constant time by construction (a fixed-length
//! byte loop with no branches on the data). DK, K1, K2, the KEK, the X25519
//! secrets and the shared secret are zeroized when dropped. The HMAC states
//! inside `hkdf` are not zeroized by that crate; they live only on the stack
//! for the duration of one derivation.
//!
//! # Format
//!
//! ```text
//! version (1 byte, = 1) || postcard(meta, nonce, e_pub, wrapped_k2, ciphertext)
//! ```
//!
//! [`SealedBackup::from_bytes`] refuses unknown versions, trailing bytes,
//! non-canonical encodings (the bytes must re-encode identically), inputs
//! longer than a backup of [`MAX_SHARE_LEN`] bytes can be, and metadata that
//! [`BackupMeta::validate`] refuses.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use rand_core::{CryptoRng, OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// The serialised backup format this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u8 = 1;
/// Largest share a backup can hold, in bytes.
pub const MAX_SHARE_LEN: usize = 4 * 1024 * 1024;
/// Longest curve name in [`BackupMeta::curve`], in bytes.
pub const MAX_CURVE_LEN: usize = 32;
/// Domain tag of the canonical metadata encoding; bump with the format.
const META_DOMAIN: &[u8] = b"custos/share-backup/v1";
/// HKDF info label of the recovery KEK; the metadata digest follows it.
const RECOVERY_INFO: &[u8] = b"custos/share-backup/recovery/v1";
/// Length of every key: DK, K1, K2, KEK, X25519 keys.
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Length of the wrapped K2: ciphertext and tag.
const WRAPPED_K2_LEN: usize = KEY_LEN + TAG_LEN;
/// Room for everything of a serialised backup but the share ciphertext.
const MAX_FIXED_OVERHEAD: usize = 512;
/// Longest serialised backup accepted.
const MAX_ENCODED_LEN: usize = MAX_SHARE_LEN + TAG_LEN + MAX_FIXED_OVERHEAD;

/// Why a backup could not be sealed, parsed or opened.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup does not open: wrong recovery key, wrong control-plane
    /// half, or a tampered backup. Deliberately says no more than that.
    #[error("the backup cannot be opened")]
    OpenFailed,
    /// The serialised backup, its metadata or the share to seal is malformed
    /// or out of bounds.
    #[error("malformed backup: {0}")]
    MalformedBackup(&'static str),
    /// The serialised backup has a format version this build does not read.
    #[error("unsupported backup format version {0}")]
    UnsupportedBackupVersion(u8),
    /// A recovery key is malformed or a low-order X25519 point.
    #[error("invalid recovery key: {0}")]
    InvalidRecoveryKey(&'static str),
    /// The random number generator or a cipher failed.
    #[error("backup cryptography failed")]
    Crypto,
}

impl BackupError {
    /// A stable snake_case code for APIs, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::OpenFailed => "open_failed",
            Self::MalformedBackup(_) => "malformed_backup",
            Self::UnsupportedBackupVersion(_) => "unsupported_backup_version",
            Self::InvalidRecoveryKey(_) => "invalid_recovery_key",
            Self::Crypto => "crypto",
        }
    }
}

/// The operator's recovery key: an X25519 key pair. The operator keeps the
/// secret offline; nodes are configured with its [`RecoveryPublicKey`].
///
/// The secret is wiped on drop and `Debug` prints only the public key.
pub struct RecoveryKey {
    secret: StaticSecret,
}

impl RecoveryKey {
    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Result<Self, BackupError> {
        Self::generate_with(&mut OsRng)
    }

    /// A fresh key from `rng`.
    fn generate_with<R: RngCore + CryptoRng>(rng: &mut R) -> Result<Self, BackupError> {
        let bytes = random_key(rng)?;
        Ok(Self::from_bytes(*bytes))
    }

    /// The key with these secret bytes (the RFC 7748 scalar encoding; any 32
    /// bytes are a valid secret). Wipe the caller's copy after use.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            secret: StaticSecret::from(bytes),
        }
    }

    /// The secret bytes, in a buffer wiped on drop.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key nodes seal backups for.
    pub fn public(&self) -> RecoveryPublicKey {
        RecoveryPublicKey(PublicKey::from(&self.secret).to_bytes())
    }

    /// The X25519 shared secret with `their_public`, or `None` if it is all
    /// zero (a low-order point).
    fn agree(&self, their_public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return None;
        }
        Some(Zeroizing::new(shared.to_bytes()))
    }
}

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryKey")
            .field("public", &self.public().to_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The public half of a [`RecoveryKey`]: 32 bytes, written as 64 lowercase
/// hex digits ([`fmt::Display`], [`FromStr`], and serde as a hex string).
///
/// Every value is a valid key: the low-order X25519 points, with which the
/// shared secret would not depend on the ephemeral key, are refused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecoveryPublicKey([u8; 32]);

impl RecoveryPublicKey {
    /// The key with these bytes; refuses low-order points.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, BackupError> {
        // A clamped X25519 scalar is a multiple of the cofactor, so the
        // result is zero exactly for points of small order (on the curve or
        // its twist), for any fixed scalar that is no multiple of the prime
        // group order.
        if x25519_dalek::x25519([0x5a; 32], bytes) == [0u8; 32] {
            return Err(BackupError::InvalidRecoveryKey("low-order point"));
        }
        Ok(Self(bytes))
    }

    /// The key's bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The key's bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for RecoveryPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RecoveryPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecoveryPublicKey({self})")
    }
}

impl FromStr for RecoveryPublicKey {
    type Err = BackupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut bytes)
            .map_err(|_| BackupError::InvalidRecoveryKey("expected 64 hex digits"))?;
        Self::from_bytes(bytes)
    }
}

impl TryFrom<String> for RecoveryPublicKey {
    type Error = BackupError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RecoveryPublicKey> for String {
    fn from(key: RecoveryPublicKey) -> Self {
        key.to_string()
    }
}

/// What a backup is of. Public (stored in the clear next to the backup) but
/// bound to every encryption of it, so it cannot be changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    /// Random id of this backup.
    pub backup_id: [u8; 16],
    /// The wallet the share belongs to.
    pub wallet: [u8; 16],
    /// The party (signer identity) that held the share.
    pub party: [u8; 32],
    /// The key generation of the share (bumped by each resharing).
    pub generation: u32,
    /// The curve of the share, for instance `secp256k1` or `ed25519`: 1 to
    /// [`MAX_CURVE_LEN`] printable ASCII characters.
    pub curve: String,
    /// When the backup was made, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

impl BackupMeta {
    /// Checks the bounds of the fields: the curve name must be 1 to
    /// [`MAX_CURVE_LEN`] printable ASCII characters (no spaces or control
    /// characters, so it is safe in logs).
    pub fn validate(&self) -> Result<(), BackupError> {
        if self.curve.is_empty() || self.curve.len() > MAX_CURVE_LEN {
            return Err(BackupError::MalformedBackup("curve name length"));
        }
        if !self.curve.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BackupError::MalformedBackup("curve name characters"));
        }
        Ok(())
    }

    /// The canonical encoding: the format tag and then every field, each as
    /// `length (u64 BE) || bytes`, integers big-endian. The associated data
    /// of the share ciphertext.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let fields: [&[u8]; 7] = [
            META_DOMAIN,
            &self.backup_id,
            &self.wallet,
            &self.party,
            &self.generation.to_be_bytes(),
            self.curve.as_bytes(),
            &self.created_at_ms.to_be_bytes(),
        ];
        let len = fields.iter().map(|f| 8 + f.len()).sum();
        let mut out = Vec::with_capacity(len);
        for field in fields {
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// SHA-256 of [`Self::canonical_bytes`]: the associated data of the
    /// recovery half, and the one the HSM must use when it wraps K1.
    pub fn meta_digest(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_bytes()).into()
    }
}

/// The control plane's half of a backup (K1). Wrap it at once with the org's
/// key in the HSM, with [`BackupMeta::meta_digest`] as associated data; never
/// store or log it in the clear. Wiped on drop; `Debug` is redacted.
pub struct ControlPlaneHalf {
    k1: Zeroizing<[u8; 32]>,
}

impl ControlPlaneHalf {
    /// K1, to hand to the HSM wrap.
    pub fn k1(&self) -> &[u8; 32] {
        &self.k1
    }
}

impl fmt::Debug for ControlPlaneHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneHalf")
            .field("k1", &"<redacted>")
            .finish()
    }
}

/// A sealed share backup: what the control plane stores. Nothing in it
/// opens without both K1 and the recovery key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBackup {
    meta: BackupMeta,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
    ephemeral_public: [u8; KEY_LEN],
    wrapped_k2: [u8; WRAPPED_K2_LEN],
}

impl SealedBackup {
    /// The backup's metadata.
    pub fn meta(&self) -> &BackupMeta {
        &self.meta
    }

    /// [`BackupMeta::meta_digest`] of the metadata: the associated data the
    /// HSM wraps and unwraps K1 with.
    pub fn meta_digest(&self) -> [u8; 32] {
        self.meta.meta_digest()
    }

    /// The serialised backup: the format version byte, then postcard.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BackupError> {
        let wire = WireV1 {
            meta: WireMeta::from(&self.meta),
            nonce: self.nonce,
            ephemeral_public: self.ephemeral_public,
            wrapped_k2: self.wrapped_k2.to_vec(),
            ciphertext: self.ciphertext.clone(),
        };
        let mut out = vec![BACKUP_FORMAT_VERSION];
        postcard::to_io(&wire, &mut out)
            .map_err(|_| BackupError::MalformedBackup("cannot encode"))?;
        Ok(out)
    }

    /// Parses [`Self::to_bytes`]. Refuses unknown versions, trailing bytes,
    /// non-canonical encodings, absurd lengths and invalid metadata; it does
    /// not (cannot) check the cryptography, which [`open_backup`] does.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BackupError> {
        let (&version, body) = bytes
            .split_first()
            .ok_or(BackupError::MalformedBackup("empty"))?;
        if version != BACKUP_FORMAT_VERSION {
            return Err(BackupError::UnsupportedBackupVersion(version));
        }
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(BackupError::MalformedBackup("too long"));
        }
        let (wire, rest) = postcard::take_from_bytes::<WireV1>(body)
            .map_err(|_| BackupError::MalformedBackup("cannot decode"))?;
        if !rest.is_empty() {
            return Err(BackupError::MalformedBackup("trailing bytes"));
        }
        let wrapped_k2 = <[u8; WRAPPED_K2_LEN]>::try_from(wire.wrapped_k2.as_slice())
            .map_err(|_| BackupError::MalformedBackup("wrapped key length"))?;
        check_ciphertext_len(wire.ciphertext.len())?;
        let sealed = Self {
            meta: BackupMeta::from(wire.meta),
            nonce: wire.nonce,
            ciphertext: wire.ciphertext,
            ephemeral_public: wire.ephemeral_public,
            wrapped_k2,
        };
        sealed.meta.validate()?;
        // postcard accepts over-long varints: insist on the one encoding, so
        // a stored backup has exactly one byte string.
        if sealed.to_bytes()? != bytes {
            return Err(BackupError::MalformedBackup("non-canonical encoding"));
        }
        Ok(sealed)
    }
}

impl fmt::Debug for SealedBackup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedBackup")
            .field("meta", &self.meta)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Version 1 of the serialised backup, after the version byte. Its own types
/// so that the stored format never follows a serde change of [`BackupMeta`].
#[derive(Serialize, Deserialize)]
struct WireV1 {
    meta: WireMeta,
    nonce: [u8; NONCE_LEN],
    ephemeral_public: [u8; KEY_LEN],
    wrapped_k2: Vec<u8>,
    ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct WireMeta {
    backup_id: [u8; 16],
    wallet: [u8; 16],
    party: [u8; 32],
    generation: u32,
    curve: String,
    created_at_ms: i64,
}

impl From<&BackupMeta> for WireMeta {
    fn from(m: &BackupMeta) -> Self {
        Self {
            backup_id: m.backup_id,
            wallet: m.wallet,
            party: m.party,
            generation: m.generation,
            curve: m.curve.clone(),
            created_at_ms: m.created_at_ms,
        }
    }
}

impl From<WireMeta> for BackupMeta {
    fn from(m: WireMeta) -> Self {
        Self {
            backup_id: m.backup_id,
            wallet: m.wallet,
            party: m.party,
            generation: m.generation,
            curve: m.curve,
            created_at_ms: m.created_at_ms,
        }
    }
}

fn check_ciphertext_len(len: usize) -> Result<(), BackupError> {
    if len <= TAG_LEN || len > MAX_SHARE_LEN + TAG_LEN {
        return Err(BackupError::MalformedBackup("ciphertext length"));
    }
    Ok(())
}

/// Seals `share` for the control plane's HSM and the operator's recovery key.
///
/// Returns the backup to store and K1, which the control plane must wrap in
/// the HSM at once (see [`ControlPlaneHalf`]). Refuses an empty share or one
/// longer than [`MAX_SHARE_LEN`] and invalid metadata
/// (`malformed_backup`), and a low-order recovery key
/// (`invalid_recovery_key`).
pub fn seal_backup(
    share: &[u8],
    meta: &BackupMeta,
    recovery: &RecoveryPublicKey,
) -> Result<(SealedBackup, ControlPlaneHalf), BackupError> {
    seal_with(share, meta, recovery, &mut OsRng)
}

fn seal_with<R: RngCore + CryptoRng>(
    share: &[u8],
    meta: &BackupMeta,
    recovery: &RecoveryPublicKey,
    rng: &mut R,
) -> Result<(SealedBackup, ControlPlaneHalf), BackupError> {
    if share.is_empty() || share.len() > MAX_SHARE_LEN {
        return Err(BackupError::MalformedBackup("share length"));
    }
    meta.validate()?;
    let canonical = meta.canonical_bytes();
    let digest: [u8; 32] = Sha256::digest(&canonical).into();

    let dk = random_key(rng)?;
    let k1 = random_key(rng)?;
    let k2 = xor(&dk, k1.as_slice());
    let mut nonce = [0u8; NONCE_LEN];
    rng.try_fill_bytes(&mut nonce)
        .map_err(|_| BackupError::Crypto)?;

    // The share under DK. The buffer holds the plaintext until encryption
    // succeeds, so it is a zeroizing one with room for the tag (no
    // reallocation leaves a copy behind).
    let mut buf = Zeroizing::new(Vec::with_capacity(share.len() + TAG_LEN));
    buf.extend_from_slice(share);
    Aes256Gcm::new(dk.as_ref().into())
        .encrypt_in_place(Nonce::from_slice(&nonce), &canonical, &mut *buf)
        .map_err(|_| BackupError::Crypto)?;
    let ciphertext = std::mem::take(&mut *buf);

    // K2 for the recovery key.
    let ephemeral = RecoveryKey::generate_with(rng)?;
    let ephemeral_public = ephemeral.public().to_bytes();
    let shared = ephemeral
        .agree(recovery.as_bytes())
        .ok_or(BackupError::InvalidRecoveryKey("low-order point"))?;
    let kek = derive_kek(&shared, &ephemeral_public, recovery.as_bytes(), &digest)?;
    let mut wrapped = Zeroizing::new(Vec::with_capacity(WRAPPED_K2_LEN));
    wrapped.extend_from_slice(k2.as_ref());
    Aes256Gcm::new(kek.as_ref().into())
        .encrypt_in_place(&Nonce::default(), &digest, &mut *wrapped)
        .map_err(|_| BackupError::Crypto)?;
    let wrapped_k2 =
        <[u8; WRAPPED_K2_LEN]>::try_from(wrapped.as_slice()).map_err(|_| BackupError::Crypto)?;

    let sealed = SealedBackup {
        meta: meta.clone(),
        nonce,
        ciphertext,
        ephemeral_public,
        wrapped_k2,
    };
    Ok((sealed, ControlPlaneHalf { k1 }))
}

/// Opens a backup with K1 (unwrapped by the HSM) and the operator's recovery
/// key, returning the share in a buffer wiped on drop.
///
/// Every failure — wrong recovery key, wrong K1, any tampered field — is the
/// same [`BackupError::OpenFailed`], so a caller learns nothing about which
/// half was wrong.
pub fn open_backup(
    sealed: &SealedBackup,
    k1: &[u8; 32],
    recovery: &RecoveryKey,
) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let canonical = sealed.meta.canonical_bytes();
    let digest: [u8; 32] = Sha256::digest(&canonical).into();

    let shared = recovery
        .agree(&sealed.ephemeral_public)
        .ok_or(BackupError::OpenFailed)?;
    let recovery_public = recovery.public();
    let kek = derive_kek(
        &shared,
        &sealed.ephemeral_public,
        recovery_public.as_bytes(),
        &digest,
    )
    .map_err(|_| BackupError::OpenFailed)?;

    let mut k2_buf = Zeroizing::new(Vec::with_capacity(WRAPPED_K2_LEN));
    k2_buf.extend_from_slice(&sealed.wrapped_k2);
    Aes256Gcm::new(kek.as_ref().into())
        .decrypt_in_place(&Nonce::default(), &digest, &mut *k2_buf)
        .map_err(|_| BackupError::OpenFailed)?;
    if k2_buf.len() != KEY_LEN {
        return Err(BackupError::OpenFailed);
    }
    let dk = xor(k1, &k2_buf);

    let mut share = Zeroizing::new(Vec::with_capacity(sealed.ciphertext.len()));
    share.extend_from_slice(&sealed.ciphertext);
    Aes256Gcm::new(dk.as_ref().into())
        .decrypt_in_place(Nonce::from_slice(&sealed.nonce), &canonical, &mut *share)
        .map_err(|_| BackupError::OpenFailed)?;
    Ok(share)
}

/// The recovery KEK: HKDF-SHA256 of the X25519 shared secret, salted with
/// both public keys, bound to the metadata digest.
fn derive_kek(
    shared: &[u8; 32],
    ephemeral_public: &[u8; 32],
    recovery_public: &[u8; 32],
    meta_digest: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let mut salt = [0u8; 2 * KEY_LEN];
    let (e, r) = salt.split_at_mut(KEY_LEN);
    e.copy_from_slice(ephemeral_public);
    r.copy_from_slice(recovery_public);
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    Hkdf::<Sha256>::new(Some(&salt), shared)
        .expand_multi_info(&[RECOVERY_INFO, meta_digest], kek.as_mut())
        .map_err(|_| BackupError::Crypto)?;
    Ok(kek)
}

/// 32 random bytes in a buffer wiped on drop.
fn random_key<R: RngCore + CryptoRng>(rng: &mut R) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rng.try_fill_bytes(key.as_mut())
        .map_err(|_| BackupError::Crypto)?;
    Ok(key)
}

/// `a xor b`, in a buffer wiped on drop; `b` must be 32 bytes long (the
/// callers check). Constant time: a fixed-length loop with no data-dependent
/// branch or index.
fn xor(a: &[u8; 32], b: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    /// A deterministic test RNG: SHA-256 of a seed and a counter. Never use
    /// outside tests.
    struct TestRng {
        seed: [u8; 32],
        counter: u64,
    }

    impl TestRng {
        fn new(seed: &[u8]) -> Self {
            Self {
                seed: Sha256::digest(seed).into(),
                counter: 0,
            }
        }
    }

    impl RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            let mut b = [0u8; 4];
            self.fill_bytes(&mut b);
            u32::from_le_bytes(b)
        }
        fn next_u64(&mut self) -> u64 {
            let mut b = [0u8; 8];
            self.fill_bytes(&mut b);
            u64::from_le_bytes(b)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(32) {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_be_bytes());
                self.counter += 1;
                let block: [u8; 32] = h.finalize().into();
                chunk.copy_from_slice(&block[..chunk.len()]);
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    impl CryptoRng for TestRng {}

    fn meta() -> BackupMeta {
        BackupMeta {
            backup_id: [0x11; 16],
            wallet: [0x22; 16],
            party: [0x33; 32],
            generation: 7,
            curve: "secp256k1".to_owned(),
            created_at_ms: 1_700_000_000_000,
        }
    }

    fn share(len: usize) -> Vec<u8> {
        let mut s = vec![0u8; len];
        TestRng::new(format!("share {len}").as_bytes()).fill_bytes(&mut s);
        s
    }

    fn random32() -> [u8; 32] {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        b
    }

    fn assert_open_failed(result: Result<Zeroizing<Vec<u8>>, BackupError>) {
        match result {
            Err(e @ BackupError::OpenFailed) => assert_eq!(e.code(), "open_failed"),
            Err(e) => panic!("expected open_failed, got {e:?}"),
            Ok(_) => panic!("expected open_failed, but the backup opened"),
        }
    }

    /// K2 as the operator would recover it (the test's view of the recovery
    /// half), to check what the stored bytes do not contain.
    fn unwrap_k2(sealed: &SealedBackup, recovery: &RecoveryKey) -> [u8; 32] {
        let digest = sealed.meta_digest();
        let shared = recovery.agree(&sealed.ephemeral_public).unwrap();
        let kek = derive_kek(
            &shared,
            &sealed.ephemeral_public,
            recovery.public().as_bytes(),
            &digest,
        )
        .unwrap();
        let mut buf = sealed.wrapped_k2.to_vec();
        Aes256Gcm::new(kek.as_ref().into())
            .decrypt_in_place(&Nonce::default(), &digest, &mut buf)
            .unwrap();
        buf.try_into().unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn round_trip_1_kib_and_100_kib() {
        let recovery = RecoveryKey::generate().unwrap();
        for len in [1, 1024, 100 * 1024] {
            let s = share(len);
            let (sealed, half) = seal_backup(&s, &meta(), &recovery.public()).unwrap();
            assert_eq!(sealed.ciphertext.len(), len + TAG_LEN);
            assert_eq!(sealed.meta(), &meta());
            let opened = open_backup(&sealed, half.k1(), &recovery).unwrap();
            assert_eq!(opened.as_slice(), s.as_slice());

            // And through the stored bytes.
            let bytes = sealed.to_bytes().unwrap();
            let parsed = SealedBackup::from_bytes(&bytes).unwrap();
            assert_eq!(parsed, sealed);
            let opened = open_backup(&parsed, half.k1(), &recovery).unwrap();
            assert_eq!(opened.as_slice(), s.as_slice());
        }
    }

    #[test]
    fn each_seal_is_fresh() {
        let recovery = RecoveryKey::generate().unwrap();
        let s = share(64);
        let (a, ha) = seal_backup(&s, &meta(), &recovery.public()).unwrap();
        let (b, hb) = seal_backup(&s, &meta(), &recovery.public()).unwrap();
        assert_ne!(ha.k1(), hb.k1());
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ephemeral_public, b.ephemeral_public);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_k2, b.wrapped_k2);
        // Halves of two backups of the same share do not mix.
        assert_open_failed(open_backup(&a, hb.k1(), &recovery));
        assert_open_failed(open_backup(&b, ha.k1(), &recovery));
    }

    #[test]
    fn database_and_hsm_without_the_recovery_key_cannot_open() {
        let recovery = RecoveryKey::generate().unwrap();
        let s = share(1024);
        let (sealed, half) = seal_backup(&s, &meta(), &recovery.public()).unwrap();
        let stored = sealed.to_bytes().unwrap();
        let from_db = SealedBackup::from_bytes(&stored).unwrap();

        // The attacker has the stored row and K1 (the HSM unwraps it) but
        // only some other recovery key.
        for _ in 0..4 {
            let other = RecoveryKey::generate().unwrap();
            assert_open_failed(open_backup(&from_db, half.k1(), &other));
        }
        // The all-zero and all-one secrets are ordinary keys: no luck either.
        assert_open_failed(open_backup(
            &from_db,
            half.k1(),
            &RecoveryKey::from_bytes([0; 32]),
        ));
        assert_open_failed(open_backup(
            &from_db,
            half.k1(),
            &RecoveryKey::from_bytes([0xff; 32]),
        ));
        // K1 is not the data key (K2 is not zero).
        let mut buf = from_db.ciphertext.clone();
        assert!(Aes256Gcm::new(half.k1().into())
            .decrypt_in_place(
                Nonce::from_slice(&from_db.nonce),
                &from_db.meta.canonical_bytes(),
                &mut buf
            )
            .is_err());
        // The recovery half stripped or garbled: nothing opens it with K1.
        let mut stripped = from_db.clone();
        stripped.wrapped_k2 = [0; WRAPPED_K2_LEN];
        assert_open_failed(open_backup(&stripped, half.k1(), &recovery));
        let mut garbled = from_db.clone();
        OsRng.fill_bytes(&mut garbled.wrapped_k2);
        assert_open_failed(open_backup(&garbled, half.k1(), &recovery));
        let mut no_ephemeral = from_db.clone();
        no_ephemeral.ephemeral_public = [0; 32];
        assert_open_failed(open_backup(&no_ephemeral, half.k1(), &recovery));
        let mut fresh_ephemeral = from_db.clone();
        fresh_ephemeral.ephemeral_public = RecoveryKey::generate().unwrap().public().to_bytes();
        assert_open_failed(open_backup(&fresh_ephemeral, half.k1(), &recovery));
        // The right key still opens the untouched row.
        assert_eq!(
            open_backup(&from_db, half.k1(), &recovery)
                .unwrap()
                .as_slice(),
            s.as_slice()
        );
    }

    #[test]
    fn recovery_key_without_k1_cannot_open() {
        let recovery = RecoveryKey::generate().unwrap();
        let (sealed, half) = seal_backup(&share(1024), &meta(), &recovery.public()).unwrap();
        assert_open_failed(open_backup(&sealed, &[0; 32], &recovery));
        assert_open_failed(open_backup(&sealed, &[0xff; 32], &recovery));
        for _ in 0..4 {
            assert_open_failed(open_backup(&sealed, &random32(), &recovery));
        }
        // Every single-bit error in K1 fails too.
        for bit in 0..256 {
            let mut k1 = *half.k1();
            k1[bit / 8] ^= 1 << (bit % 8);
            assert_open_failed(open_backup(&sealed, &k1, &recovery));
        }
        // K2 is not the data key either.
        let k2 = unwrap_k2(&sealed, &recovery);
        assert_open_failed(open_backup(&sealed, &[0; 32], &recovery));
        let mut buf = sealed.ciphertext.clone();
        assert!(Aes256Gcm::new((&k2).into())
            .decrypt_in_place(
                Nonce::from_slice(&sealed.nonce),
                &sealed.meta.canonical_bytes(),
                &mut buf
            )
            .is_err());
    }

    #[test]
    fn every_tampered_field_fails_the_same_way() {
        let recovery = RecoveryKey::generate().unwrap();
        let s = share(256);
        let (sealed, half) = seal_backup(&s, &meta(), &recovery.public()).unwrap();
        let k1 = *half.k1();

        let mut cases: Vec<(&str, SealedBackup)> = Vec::new();
        let mut t = |name, f: &dyn Fn(&mut SealedBackup)| {
            let mut b = sealed.clone();
            f(&mut b);
            assert_ne!(b, sealed, "{name} did not change the backup");
            cases.push((name, b));
        };
        t("meta.backup_id", &|b| b.meta.backup_id[0] ^= 1);
        t("meta.wallet", &|b| b.meta.wallet[15] ^= 0x80);
        t("meta.party", &|b| b.meta.party[7] ^= 4);
        t("meta.generation", &|b| b.meta.generation += 1);
        t("meta.curve", &|b| b.meta.curve = "ed25519".to_owned());
        t("meta.curve case", &|b| {
            b.meta.curve = "SECP256K1".to_owned()
        });
        t("meta.created_at_ms", &|b| b.meta.created_at_ms -= 1);
        t("nonce", &|b| b.nonce[11] ^= 1);
        t("ciphertext first bit", &|b| b.ciphertext[0] ^= 1);
        t("ciphertext tag bit", &|b| {
            let last = b.ciphertext.len() - 1;
            b.ciphertext[last] ^= 0x80;
        });
        t("ciphertext truncated", &|b| {
            b.ciphertext.pop();
        });
        t("ciphertext extended", &|b| b.ciphertext.push(0));
        t("wrapped_k2 body", &|b| b.wrapped_k2[0] ^= 1);
        t("wrapped_k2 tag", &|b| b.wrapped_k2[WRAPPED_K2_LEN - 1] ^= 1);
        t("ephemeral_public", &|b| b.ephemeral_public[3] ^= 1);
        t("ephemeral_public low order", &|b| {
            b.ephemeral_public = [0; 32];
        });
        for (name, b) in &cases {
            let r = open_backup(b, &k1, &recovery);
            assert!(
                matches!(r, Err(BackupError::OpenFailed)),
                "{name}: {:?}",
                r.map(|_| ())
            );
        }
        // Every bit of the ciphertext and of the wrapped K2, not just some.
        for i in 0..sealed.ciphertext.len() * 8 {
            let mut b = sealed.clone();
            b.ciphertext[i / 8] ^= 1 << (i % 8);
            assert_open_failed(open_backup(&b, &k1, &recovery));
        }
        for i in 0..WRAPPED_K2_LEN * 8 {
            let mut b = sealed.clone();
            b.wrapped_k2[i / 8] ^= 1 << (i % 8);
            assert_open_failed(open_backup(&b, &k1, &recovery));
        }
        for i in 0..NONCE_LEN * 8 {
            let mut b = sealed.clone();
            b.nonce[i / 8] ^= 1 << (i % 8);
            assert_open_failed(open_backup(&b, &k1, &recovery));
        }
        // The untouched backup still opens.
        assert_eq!(
            open_backup(&sealed, &k1, &recovery).unwrap().as_slice(),
            s.as_slice()
        );
    }

    #[test]
    fn a_backup_moved_to_another_wallet_party_or_generation_does_not_open() {
        let recovery = RecoveryKey::generate().unwrap();
        let (sealed, half) = seal_backup(&share(512), &meta(), &recovery.public()).unwrap();
        let moves: [&dyn Fn(&mut BackupMeta); 4] = [
            &|m| m.wallet = [0x44; 16],
            &|m| m.party = [0x55; 32],
            &|m| m.generation = 8,
            &|m| m.backup_id = [0x66; 16],
        ];
        for mv in moves {
            let mut moved = sealed.clone();
            mv(&mut moved.meta);
            // Stored and read back, as a relabelled database row would be.
            let bytes = moved.to_bytes().unwrap();
            let moved = SealedBackup::from_bytes(&bytes).unwrap();
            assert_ne!(moved.meta_digest(), sealed.meta_digest());
            assert_open_failed(open_backup(&moved, half.k1(), &recovery));
        }
        // A recovery half spliced from another backup of the same share and
        // metadata does not open either.
        let (other, _) = seal_backup(&share(512), &meta(), &recovery.public()).unwrap();
        let mut spliced = sealed.clone();
        spliced.wrapped_k2 = other.wrapped_k2;
        spliced.ephemeral_public = other.ephemeral_public;
        assert_open_failed(open_backup(&spliced, half.k1(), &recovery));
    }

    #[test]
    fn meta_encoding_is_canonical_and_unambiguous() {
        let m = meta();
        let c = m.canonical_bytes();
        assert_eq!(&c[..8], &(META_DOMAIN.len() as u64).to_be_bytes());
        assert_eq!(&c[8..8 + META_DOMAIN.len()], META_DOMAIN);
        assert_eq!(
            c.len(),
            7 * 8 + META_DOMAIN.len() + 16 + 16 + 32 + 4 + m.curve.len() + 8
        );
        assert_eq!(m.meta_digest(), <[u8; 32]>::from(Sha256::digest(&c)));
        // Each field change changes the digest.
        let mut seen = std::collections::HashSet::new();
        seen.insert(m.meta_digest());
        let variants: [&dyn Fn(&mut BackupMeta); 6] = [
            &|m| m.backup_id[0] ^= 1,
            &|m| m.wallet[0] ^= 1,
            &|m| m.party[0] ^= 1,
            &|m| m.generation ^= 1,
            &|m| m.curve.push('x'),
            &|m| m.created_at_ms ^= 1,
        ];
        for v in variants {
            let mut x = meta();
            v(&mut x);
            assert!(seen.insert(x.meta_digest()));
        }
    }

    #[test]
    fn meta_is_validated() {
        let recovery = RecoveryKey::generate().unwrap().public();
        for curve in ["", "sec p256k1", "secp\n256k1", "é", &"x".repeat(33)] {
            let mut m = meta();
            m.curve = curve.to_owned();
            let e = m.validate().unwrap_err();
            assert_eq!(e.code(), "malformed_backup", "{curve:?}");
            let e = seal_backup(b"share", &m, &recovery).unwrap_err();
            assert_eq!(e.code(), "malformed_backup", "{curve:?}");
        }
        let mut m = meta();
        m.curve = "x".repeat(MAX_CURVE_LEN);
        m.validate().unwrap();
        m.curve = "ed25519".to_owned();
        m.validate().unwrap();
    }

    #[test]
    fn share_length_bounds() {
        let recovery = RecoveryKey::generate().unwrap();
        let e = seal_backup(&[], &meta(), &recovery.public()).unwrap_err();
        assert_eq!(e.code(), "malformed_backup");
        let big = vec![7u8; MAX_SHARE_LEN + 1];
        let e = seal_backup(&big, &meta(), &recovery.public()).unwrap_err();
        assert_eq!(e.code(), "malformed_backup");
        // The largest share seals, serialises, parses and opens.
        let max = vec![7u8; MAX_SHARE_LEN];
        let (sealed, half) = seal_backup(&max, &meta(), &recovery.public()).unwrap();
        let bytes = sealed.to_bytes().unwrap();
        assert!(bytes.len() <= MAX_ENCODED_LEN);
        let parsed = SealedBackup::from_bytes(&bytes).unwrap();
        assert_eq!(
            open_backup(&parsed, half.k1(), &recovery)
                .unwrap()
                .as_slice(),
            max.as_slice()
        );
    }

    #[test]
    fn serialization_round_trip_and_layout() {
        let recovery = RecoveryKey::generate().unwrap();
        let (sealed, _) = seal_backup(&share(100), &meta(), &recovery.public()).unwrap();
        let bytes = sealed.to_bytes().unwrap();
        assert_eq!(bytes[0], BACKUP_FORMAT_VERSION);
        let parsed = SealedBackup::from_bytes(&bytes).unwrap();
        assert_eq!(parsed, sealed);
        assert_eq!(parsed.to_bytes().unwrap(), bytes);
        // postcard: fixed arrays raw, the generation a varint right after
        // the three id arrays.
        assert_eq!(&bytes[1..17], &meta().backup_id);
        assert_eq!(&bytes[17..33], &meta().wallet);
        assert_eq!(&bytes[33..65], &meta().party);
        assert_eq!(bytes[65], 7);
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let recovery = RecoveryKey::generate().unwrap();
        let (sealed, _) = seal_backup(&share(8), &meta(), &recovery.public()).unwrap();
        let bytes = sealed.to_bytes().unwrap();
        assert_eq!(
            SealedBackup::from_bytes(&[]).unwrap_err().code(),
            "malformed_backup"
        );
        for len in 0..bytes.len() {
            let e = SealedBackup::from_bytes(&bytes[..len]).unwrap_err();
            assert_eq!(e.code(), "malformed_backup", "truncated to {len}");
        }
        for extra in [&[0u8][..], &[1], &[0xff; 7], &bytes[1..]] {
            let mut long = bytes.clone();
            long.extend_from_slice(extra);
            let e = SealedBackup::from_bytes(&long).unwrap_err();
            assert_eq!(e.code(), "malformed_backup", "extended by {}", extra.len());
        }
    }

    #[test]
    fn unknown_versions_are_refused() {
        let recovery = RecoveryKey::generate().unwrap();
        let (sealed, _) = seal_backup(&share(8), &meta(), &recovery.public()).unwrap();
        let bytes = sealed.to_bytes().unwrap();
        for v in [0u8, 2, 0x7f, 0xff] {
            let mut b = bytes.clone();
            b[0] = v;
            let e = SealedBackup::from_bytes(&b).unwrap_err();
            assert_eq!(e.code(), "unsupported_backup_version");
            assert!(matches!(e, BackupError::UnsupportedBackupVersion(x) if x == v));
        }
        assert_eq!(
            SealedBackup::from_bytes(&[2]).unwrap_err().code(),
            "unsupported_backup_version"
        );
    }

    #[test]
    fn garbage_and_absurd_lengths_are_refused() {
        let recovery = RecoveryKey::generate().unwrap();
        let (sealed, _) = seal_backup(&share(8), &meta(), &recovery.public()).unwrap();
        let bytes = sealed.to_bytes().unwrap();
        let code = |b: &[u8]| SealedBackup::from_bytes(b).unwrap_err().code();

        // Deterministic garbage after a valid version byte.
        let mut rng = TestRng::new(b"garbage");
        for len in [1usize, 2, 50, 65, 66, 200, 4096] {
            let mut g = vec![0u8; len];
            rng.fill_bytes(&mut g);
            g[0] = BACKUP_FORMAT_VERSION;
            assert_eq!(code(&g), "malformed_backup", "garbage of {len}");
        }
        // Longer than any backup can be: refused before decoding.
        let mut huge = vec![0u8; MAX_ENCODED_LEN + 1];
        huge[0] = BACKUP_FORMAT_VERSION;
        assert_eq!(code(&huge), "malformed_backup");
        // A ciphertext length prefix far beyond the input.
        let mut wire: WireV1 = postcard::from_bytes(&bytes[1..]).unwrap();
        wire.ciphertext.clear();
        let mut b = vec![BACKUP_FORMAT_VERSION];
        b.extend(postcard::to_stdvec(&wire).unwrap());
        let last = b.len() - 1;
        assert_eq!(b[last], 0); // the empty ciphertext's length
        b[last] = 0xff;
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0x0f]); // u32::MAX, as a varint
        assert_eq!(code(&b), "malformed_backup");
        // An empty or tag-only ciphertext, a wrong-length wrapped K2.
        for (ct_len, wk_len) in [(0, WRAPPED_K2_LEN), (TAG_LEN, WRAPPED_K2_LEN), (17, 47)] {
            let mut wire: WireV1 = postcard::from_bytes(&bytes[1..]).unwrap();
            wire.ciphertext.resize(ct_len, 0);
            wire.wrapped_k2.resize(wk_len, 0);
            let mut b = vec![BACKUP_FORMAT_VERSION];
            b.extend(postcard::to_stdvec(&wire).unwrap());
            assert_eq!(code(&b), "malformed_backup", "{ct_len} {wk_len}");
        }
        // Invalid metadata (a control character in the curve).
        let mut wire: WireV1 = postcard::from_bytes(&bytes[1..]).unwrap();
        wire.meta.curve = "secp\u{1b}[2J".to_owned();
        let mut b = vec![BACKUP_FORMAT_VERSION];
        b.extend(postcard::to_stdvec(&wire).unwrap());
        assert_eq!(code(&b), "malformed_backup");
        // A non-canonical (over-long) varint for the generation, 7.
        assert_eq!(bytes[65], 7);
        let mut b = bytes[..65].to_vec();
        b.extend_from_slice(&[0x87, 0x00]);
        b.extend_from_slice(&bytes[66..]);
        assert!(postcard::from_bytes::<WireV1>(&b[1..]).is_ok());
        assert_eq!(code(&b), "malformed_backup");
    }

    #[test]
    fn stored_bytes_and_debug_output_hold_no_secret() {
        let recovery = RecoveryKey::generate().unwrap();
        let s = share(1024);
        let (sealed, half) = seal_backup(&s, &meta(), &recovery.public()).unwrap();
        let bytes = sealed.to_bytes().unwrap();
        let k1 = *half.k1();
        let k2 = unwrap_k2(&sealed, &recovery);
        let dk = *xor(&k1, &k2);
        assert_eq!(
            open_backup(&sealed, &k1, &recovery).unwrap().as_slice(),
            s.as_slice()
        );

        let secret_key = *recovery.to_bytes();
        for (name, secret) in [
            ("k1", &k1[..]),
            ("k2", &k2[..]),
            ("dk", &dk[..]),
            ("recovery secret", &secret_key[..]),
        ] {
            // Any 8-byte window of a key would be a leak.
            for w in secret.windows(8) {
                assert!(!contains(&bytes, w), "{name} in the stored bytes");
            }
        }
        assert!(!contains(&bytes, &s));
        for w in s.chunks(16) {
            assert!(!contains(&bytes, w), "share bytes in the stored bytes");
        }

        // What would end up in logs.
        let logs = format!(
            "{sealed:?} {half:?} {recovery:?} {:?} {} {}",
            recovery.public(),
            recovery.public(),
            BackupError::OpenFailed
        );
        for secret in [&k1[..], &k2[..], &dk[..], &secret_key[..], &s[..32]] {
            assert!(!logs.contains(&hex::encode(secret)));
            assert!(!logs.contains(&format!("{secret:?}")));
        }
        assert!(logs.contains("<redacted>"));
        assert!(!format!("{half:?}").contains(&hex::encode(k1)));
    }

    /// RFC 7748, section 6.1.
    #[test]
    fn x25519_matches_rfc_7748() {
        let hex32 = |s: &str| -> [u8; 32] { hex::decode(s).unwrap().try_into().unwrap() };
        let alice = RecoveryKey::from_bytes(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = RecoveryKey::from_bytes(hex32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        let alice_pub: RecoveryPublicKey =
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
                .parse()
                .unwrap();
        let bob_pub: RecoveryPublicKey =
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
                .parse()
                .unwrap();
        let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(alice.public(), alice_pub);
        assert_eq!(bob.public(), bob_pub);
        assert_eq!(*alice.agree(bob_pub.as_bytes()).unwrap(), shared);
        assert_eq!(*bob.agree(alice_pub.as_bytes()).unwrap(), shared);
        // The secret bytes round-trip unclamped.
        assert_eq!(
            hex::encode(*alice.to_bytes()),
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
        );
        assert_eq!(
            bob_pub.to_string(),
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        );
    }

    #[test]
    fn recovery_keys_round_trip() {
        let key = RecoveryKey::generate().unwrap();
        let again = RecoveryKey::from_bytes(*key.to_bytes());
        assert_eq!(again.public(), key.public());
        let public = key.public();
        let text = public.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<RecoveryPublicKey>().unwrap(), public);
        assert_eq!(
            RecoveryPublicKey::from_bytes(public.to_bytes()).unwrap(),
            public
        );
        // Serde as a hex string (node configuration).
        let json = format!("\"{text}\"");
        let parsed: RecoveryPublicKey =
            serde_json_like::from_str(&json).expect("hex string deserialises");
        assert_eq!(parsed, public);
        assert_eq!(String::from(public), text);
        // A backup sealed for a public key parsed from text opens with the
        // secret.
        let (sealed, half) = seal_backup(b"share", &meta(), &parsed).unwrap();
        assert_eq!(
            open_backup(&sealed, half.k1(), &again).unwrap().as_slice(),
            b"share"
        );
        for bad in [
            "",
            "00",
            &"zz".repeat(32),
            &"ab".repeat(33),
            &"ab".repeat(31),
        ] {
            assert_eq!(
                bad.parse::<RecoveryPublicKey>().unwrap_err().code(),
                "invalid_recovery_key",
                "{bad:?}"
            );
        }
        assert!(format!("{key:?}").contains("<redacted>"));
        assert!(!format!("{key:?}").contains(&hex::encode(*key.to_bytes())));
    }

    /// Just enough of a deserializer to drive the `try_from = "String"`
    /// path without a JSON dependency: a quoted string.
    mod serde_json_like {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::{DeserializeOwned, IntoDeserializer};

        pub fn from_str<T: DeserializeOwned>(s: &str) -> Result<T, Error> {
            let inner = s.trim_matches('"');
            let d: StrDeserializer<'_, Error> = inner.into_deserializer();
            T::deserialize(d)
        }
    }

    #[test]
    fn low_order_recovery_keys_are_refused() {
        // The X25519 points of small order (and non-canonical encodings of
        // them), as listed by libsodium and others.
        let low_order = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "0000000000000000000000000000000000000000000000000000000000000080",
            "0100000000000000000000000000000000000000000000000000000000000080",
        ];
        for h in low_order {
            let e = h.parse::<RecoveryPublicKey>().unwrap_err();
            assert_eq!(e.code(), "invalid_recovery_key", "{h}");
            let bytes: [u8; 32] = hex::decode(h).unwrap().try_into().unwrap();
            let e = RecoveryPublicKey::from_bytes(bytes).unwrap_err();
            assert_eq!(e.code(), "invalid_recovery_key", "{h}");
            // seal_backup checks the shared secret as well, even for a key
            // that bypassed the constructor.
            let e = seal_backup(b"share", &meta(), &RecoveryPublicKey(bytes)).unwrap_err();
            assert_eq!(e.code(), "invalid_recovery_key", "{h}");
        }
        // Random keys are accepted.
        for _ in 0..16 {
            RecoveryPublicKey::from_bytes(RecoveryKey::generate().unwrap().public().to_bytes())
                .unwrap();
        }
    }

    /// Pins the format: a backup sealed with a fixed RNG has these bytes.
    /// A change here is a format change (bump the version instead).
    #[test]
    fn known_answer() {
        let recovery = RecoveryKey::generate_with(&mut TestRng::new(b"recovery")).unwrap();
        let (sealed, half) = seal_with(
            b"custos test share",
            &meta(),
            &recovery.public(),
            &mut TestRng::new(b"seal"),
        )
        .unwrap();
        let bytes = sealed.to_bytes().unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            "c6e0052c836d75f597fcc069767e2b3942fad0c6aa4b18e879548cd27d32f965"
        );
        assert_eq!(
            hex::encode(meta().meta_digest()),
            "876eb580a1494fde74a4d22e2d82e520f6fd7599d9c2103b3c2e7a2a284ced72"
        );
        assert_eq!(
            open_backup(&sealed, half.k1(), &recovery)
                .unwrap()
                .as_slice(),
            b"custos test share"
        );
    }

    #[test]
    fn error_codes_are_stable() {
        let all = [
            (BackupError::OpenFailed, "open_failed"),
            (BackupError::MalformedBackup("x"), "malformed_backup"),
            (
                BackupError::UnsupportedBackupVersion(9),
                "unsupported_backup_version",
            ),
            (BackupError::InvalidRecoveryKey("x"), "invalid_recovery_key"),
            (BackupError::Crypto, "crypto"),
        ];
        for (e, code) in all {
            assert_eq!(e.code(), code);
        }
    }
}
