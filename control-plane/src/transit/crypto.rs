//! Pure cryptographic core of the Transit engine (encryption as a service).
//!
//! This module is compatible with the text formats of HashiCorp Vault's
//! transit secrets engine: ciphertexts, signatures and HMACs are all
//! `vault:v<N>:<base64>`, where `N` is the key version that produced them.
//! It performs no I/O: key storage, policy, version bookkeeping and the HTTP
//! layer live elsewhere and call into the functions here.
//!
//! Custos departs from Vault in one deliberate way: every AEAD ciphertext is
//! bound, as associated data, to the organisation, key name and key version
//! that produced it (see [`Binding`]). A ciphertext therefore cannot be
//! replayed under another key, another organisation or another version, even
//! if the same key bytes were ever imported twice.

use core::fmt;
use core::str::FromStr;

use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::ChaCha20Poly1305;
use ed25519_dalek::Signer as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The prefix shared by every ciphertext, signature and HMAC text.
const PREFIX: &str = "vault:v";

/// Domain-separation tag that opens every associated-data encoding.
const AAD_DOMAIN_TAG: &[u8] = b"custos/transit/v1";

/// Length of the random AEAD nonce (96 bits, as in Vault).
pub const NONCE_LEN: usize = 12;

/// Length of the AEAD authentication tag.
pub const TAG_LEN: usize = 16;

/// Length of every secret key (main key and HMAC key) held per key version.
pub const KEY_LEN: usize = 32;

/// Version byte that opens the storage encoding of [`KeyVersionMaterial`].
const MATERIAL_FORMAT_V1: u8 = 1;

/// Length of the storage encoding: format byte, type tag, main key, HMAC key.
const MATERIAL_ENCODED_LEN: usize = 2 + 2 * KEY_LEN;

/// Errors returned by the transit cryptographic core.
///
/// Messages describe what was wrong with the request and never include key
/// bytes, plaintext or ciphertext, so they are safe to return to API callers
/// and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitError {
    /// The text does not start with `vault:v`.
    #[error("value is not prefixed with \"vault:v\"")]
    InvalidPrefix,
    /// The version part is missing, not a decimal number, zero, padded with
    /// leading zeros, or too large.
    #[error("invalid key version")]
    InvalidVersion,
    /// The payload after the version is not valid base64 (or, for a
    /// signature, not a well-formed encoded signature).
    #[error("invalid base64 or signature encoding")]
    InvalidEncoding,
    /// The ciphertext body is shorter than a nonce plus a tag.
    #[error("ciphertext is too short")]
    Truncated,
    /// Authentication failed: the ciphertext was altered, or the key, the
    /// organisation, the key version or the context does not match.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The requested key version is newer than the latest version.
    #[error("key version is newer than the latest key version")]
    VersionTooNew,
    /// The requested key version is older than the minimum version the key
    /// policy still allows.
    #[error("key version is older than the minimum allowed version")]
    VersionTooOld,
    /// The key type cannot perform the requested operation.
    #[error("key type {key_type} does not support {operation}")]
    UnsupportedOperation {
        /// The type of the key that was asked.
        key_type: KeyType,
        /// The operation that was asked for, e.g. `"encryption"`.
        operation: &'static str,
    },
    /// A request parameter is invalid; the message says which one.
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// Stored key material is malformed or does not match the key type.
    #[error("invalid key material")]
    InvalidKeyMaterial,
}

impl TransitError {
    /// Returns a stable snake_case code for this error, for API responses and
    /// metrics; unlike the message it will never change wording.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPrefix => "invalid_ciphertext_prefix",
            Self::InvalidVersion => "invalid_key_version",
            Self::InvalidEncoding => "invalid_ciphertext_encoding",
            Self::Truncated => "ciphertext_truncated",
            Self::DecryptionFailed => "decryption_failed",
            Self::VersionTooNew => "key_version_too_new",
            Self::VersionTooOld => "key_version_too_old",
            Self::UnsupportedOperation { .. } => "unsupported_operation",
            Self::InvalidInput(_) => "invalid_input",
            Self::InvalidKeyMaterial => "invalid_key_material",
        }
    }
}

/// The type of a transit key, named as in Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    /// AES-256 in GCM mode with a 96-bit random nonce (`aes256-gcm96`), the
    /// default as in Vault.
    #[default]
    Aes256Gcm96,
    /// ChaCha20-Poly1305 with a 96-bit random nonce (`chacha20-poly1305`).
    ChaCha20Poly1305,
    /// A key used only for HMAC (`hmac`).
    Hmac,
    /// Ed25519 signatures (`ed25519`).
    Ed25519,
    /// ECDSA over NIST P-256 (`ecdsa-p256`).
    EcdsaP256,
    /// ECDSA over secp256k1 (`ecdsa-secp256k1`), a Custos extension.
    EcdsaSecp256k1,
}

impl KeyType {
    /// Every key type, in a fixed order.
    pub const ALL: [KeyType; 6] = [
        KeyType::Aes256Gcm96,
        KeyType::ChaCha20Poly1305,
        KeyType::Hmac,
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::EcdsaSecp256k1,
    ];

    /// Returns the Vault name of this key type, e.g. `"aes256-gcm96"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aes256Gcm96 => "aes256-gcm96",
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
            Self::Hmac => "hmac",
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaSecp256k1 => "ecdsa-secp256k1",
        }
    }

    /// Whether keys of this type can encrypt and decrypt.
    pub fn supports_encryption(self) -> bool {
        matches!(self, Self::Aes256Gcm96 | Self::ChaCha20Poly1305)
    }

    /// Whether keys of this type can sign and verify.
    pub fn supports_signing(self) -> bool {
        matches!(self, Self::Ed25519 | Self::EcdsaP256 | Self::EcdsaSecp256k1)
    }

    /// Whether keys of this type can compute HMACs. As in Vault this is every
    /// type, because every key version carries its own HMAC key.
    pub fn supports_hmac(self) -> bool {
        true
    }

    /// A stable one-byte tag stored with the key material, so that bytes
    /// written for one key type are never loaded as another.
    fn storage_tag(self) -> u8 {
        match self {
            Self::Aes256Gcm96 => 1,
            Self::ChaCha20Poly1305 => 2,
            Self::Hmac => 3,
            Self::Ed25519 => 4,
            Self::EcdsaP256 => 5,
            Self::EcdsaSecp256k1 => 6,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = TransitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(TransitError::InvalidInput("unknown key type"))
    }
}

/// The secret material of one version of a transit key.
///
/// It holds the main key (an AEAD key, an HMAC key, an Ed25519 seed or an
/// ECDSA secret scalar, always 32 bytes) and a separate 32-byte HMAC key, as
/// every Vault key version does. Both are wiped from memory on drop, and the
/// `Debug` output never shows them.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyVersionMaterial {
    /// The key type is not secret, and it is kept so that material can never
    /// be used with an algorithm it was not generated for.
    #[zeroize(skip)]
    key_type: KeyType,
    key: [u8; KEY_LEN],
    hmac_key: [u8; KEY_LEN],
}

impl fmt::Debug for KeyVersionMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVersionMaterial")
            .field("key_type", &self.key_type)
            .field("key", &"<redacted>")
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

impl KeyVersionMaterial {
    /// Generates fresh material for a new key version of `key_type`.
    pub fn generate(key_type: KeyType, rng: &mut impl CryptoRngCore) -> KeyVersionMaterial {
        let mut material = KeyVersionMaterial {
            key_type,
            key: [0u8; KEY_LEN],
            hmac_key: [0u8; KEY_LEN],
        };
        rng.fill_bytes(&mut material.hmac_key);
        // ECDSA scalars must be non-zero and below the group order. Drawing
        // 32 uniform bytes and rejecting invalid ones is the standard way to
        // get a uniform scalar; a rejection happens with probability below
        // 2^-127, so the loop practically runs once.
        loop {
            rng.fill_bytes(&mut material.key);
            if validate_main_key(key_type, &material.key) {
                return material;
            }
        }
    }

    /// The key type this material belongs to.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Encodes the material for storage (the storage layer encrypts these
    /// bytes before writing them anywhere).
    ///
    /// The layout is: format byte `1`, key-type tag byte, 32-byte main key,
    /// 32-byte HMAC key.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(MATERIAL_ENCODED_LEN));
        out.push(MATERIAL_FORMAT_V1);
        out.push(self.key_type.storage_tag());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.hmac_key);
        out
    }

    /// Decodes material written by [`KeyVersionMaterial::to_bytes`].
    ///
    /// Fails with [`TransitError::InvalidKeyMaterial`] when the length, the
    /// format byte or the key-type tag is wrong, or when the main key is not
    /// a valid secret for `key_type` (an ECDSA scalar that is zero or not
    /// below the group order).
    pub fn from_bytes(key_type: KeyType, bytes: &[u8]) -> Result<KeyVersionMaterial, TransitError> {
        let Some(([format, tag], keys)) = bytes.split_first_chunk::<2>() else {
            return Err(TransitError::InvalidKeyMaterial);
        };
        if *format != MATERIAL_FORMAT_V1
            || *tag != key_type.storage_tag()
            || bytes.len() != MATERIAL_ENCODED_LEN
        {
            return Err(TransitError::InvalidKeyMaterial);
        }
        let (key, hmac_key) = keys
            .split_at_checked(KEY_LEN)
            .ok_or(TransitError::InvalidKeyMaterial)?;
        let mut material = KeyVersionMaterial {
            key_type,
            key: [0u8; KEY_LEN],
            hmac_key: [0u8; KEY_LEN],
        };
        material.key.copy_from_slice(key);
        material.hmac_key.copy_from_slice(hmac_key);
        if !validate_main_key(key_type, &material.key) {
            return Err(TransitError::InvalidKeyMaterial);
        }
        Ok(material)
    }

    /// The key used for the HMAC operation. As in Vault, a key of type
    /// `hmac` uses its main key (so that imported HMAC keys work), and every
    /// other type uses its separate HMAC key.
    fn mac_key(&self) -> &[u8; KEY_LEN] {
        match self.key_type {
            KeyType::Hmac => &self.key,
            _ => &self.hmac_key,
        }
    }
}

/// Whether `key` is a usable main key for `key_type`. Symmetric keys and
/// Ed25519 seeds accept any 32 bytes; ECDSA scalars must lie in `[1, n)`.
fn validate_main_key(key_type: KeyType, key: &[u8; KEY_LEN]) -> bool {
    match key_type {
        KeyType::EcdsaP256 => p256::SecretKey::from_slice(key).is_ok(),
        KeyType::EcdsaSecp256k1 => k256::SecretKey::from_slice(key).is_ok(),
        KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305 | KeyType::Hmac | KeyType::Ed25519 => true,
    }
}

/// Fails unless `material` was made for `key_type`; the caller passes the
/// key type from the key's policy, and a mismatch means storage is corrupt.
fn ensure_type(key_type: KeyType, material: &KeyVersionMaterial) -> Result<(), TransitError> {
    if material.key_type == key_type {
        Ok(())
    } else {
        Err(TransitError::InvalidKeyMaterial)
    }
}

/// Key versions start at 1, as in Vault; version 0 is never valid.
fn ensure_version(version: u32) -> Result<(), TransitError> {
    if version == 0 {
        Err(TransitError::InvalidVersion)
    } else {
        Ok(())
    }
}

/// What an AEAD ciphertext is bound to; it is authenticated as associated
/// data and must match exactly on decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The organisation that owns the key.
    pub org_id: &'a str,
    /// The name of the transit key.
    pub key_name: &'a str,
    /// The key version used (at least 1).
    pub version: u32,
    /// Vault's per-request `context`, if any. `None` and `Some(b"")` are
    /// different bindings.
    pub context: Option<&'a [u8]>,
}

impl Binding<'_> {
    /// Encodes the binding as associated data.
    ///
    /// The encoding is injective, so two different bindings never produce
    /// the same bytes. Variable-length fields are preceded by their length
    /// as a big-endian `u32`; fixed-width fields are written as they are:
    ///
    /// `len ‖ "custos/transit/v1" ‖ len ‖ org_id ‖ len ‖ key_name ‖
    /// version (u32 BE) ‖ 0x00` when there is no context, or
    /// `… ‖ 0x01 ‖ len ‖ context` when there is one.
    pub fn aad(&self) -> Result<Vec<u8>, TransitError> {
        let context_len = self.context.map_or(0, |c| 4 + c.len());
        let mut out = Vec::with_capacity(
            4 + AAD_DOMAIN_TAG.len()
                + 4
                + self.org_id.len()
                + 4
                + self.key_name.len()
                + 4
                + 1
                + context_len,
        );
        put_field(&mut out, AAD_DOMAIN_TAG)?;
        put_field(&mut out, self.org_id.as_bytes())?;
        put_field(&mut out, self.key_name.as_bytes())?;
        out.extend_from_slice(&self.version.to_be_bytes());
        match self.context {
            None => out.push(0),
            Some(context) => {
                out.push(1);
                put_field(&mut out, context)?;
            }
        }
        Ok(out)
    }
}

/// Appends `field` preceded by its length as a big-endian `u32`.
fn put_field(out: &mut Vec<u8>, field: &[u8]) -> Result<(), TransitError> {
    let len = u32::try_from(field.len())
        .map_err(|_| TransitError::InvalidInput("binding field longer than 4 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
    Ok(())
}

/// Formats `vault:v<version>:<payload>`.
fn prefixed(version: u32, payload: &str) -> String {
    format!("{PREFIX}{version}:{payload}")
}

/// Splits `vault:v<N>:<payload>` into the version and the still-encoded
/// payload.
fn split_prefixed(s: &str) -> Result<(u32, &str), TransitError> {
    let rest = s.strip_prefix(PREFIX).ok_or(TransitError::InvalidPrefix)?;
    let (digits, payload) = rest.split_once(':').ok_or(TransitError::InvalidVersion)?;
    // Only canonical decimal is accepted, so that each version has exactly
    // one spelling: no sign, no leading zeros, and not zero itself.
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TransitError::InvalidVersion);
    }
    let version = digits
        .parse::<u32>()
        .map_err(|_| TransitError::InvalidVersion)?;
    Ok((version, payload))
}

/// Parses a `vault:v<N>:<base64>` ciphertext (or HMAC) into the key version
/// and the decoded body.
///
/// Errors: [`TransitError::InvalidPrefix`] when the text does not start with
/// `vault:v`; [`TransitError::InvalidVersion`] when the version is not a
/// decimal `u32` of at least 1 without leading zeros, or the colon after it
/// is missing; [`TransitError::InvalidEncoding`] when the body is not
/// standard padded base64.
pub fn parse_prefixed(s: &str) -> Result<(u32, Vec<u8>), TransitError> {
    let (version, payload) = split_prefixed(s)?;
    let body = STANDARD
        .decode(payload)
        .map_err(|_| TransitError::InvalidEncoding)?;
    Ok((version, body))
}

/// Returns the key version named by a `vault:v<N>:` text without decoding
/// its payload; use it to pick the key version before calling [`verify`],
/// whose signatures may be base64url rather than standard base64.
pub fn prefixed_version(s: &str) -> Result<u32, TransitError> {
    split_prefixed(s).map(|(version, _)| version)
}

/// Checks that `requested` may be used given the key's `latest` version and
/// its `min_decryption` version, as Vault does before decrypting or
/// verifying.
pub fn check_version(requested: u32, latest: u32, min_decryption: u32) -> Result<(), TransitError> {
    ensure_version(requested)?;
    if requested > latest {
        return Err(TransitError::VersionTooNew);
    }
    if requested < min_decryption {
        return Err(TransitError::VersionTooOld);
    }
    Ok(())
}

/// Seals `plaintext` with any 96-bit-nonce, 128-bit-tag AEAD and returns
/// `nonce ‖ ciphertext ‖ tag`.
fn seal<A>(
    key: &[u8; KEY_LEN],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, TransitError>
where
    A: AeadInPlace<NonceSize = U12, TagSize = U16> + KeyInit,
{
    let cipher = A::new_from_slice(key).map_err(|_| TransitError::InvalidKeyMaterial)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    // The plaintext is copied into a buffer that is wiped on drop and
    // encrypted in place there, so no stray copy of it outlives this call.
    let mut buffer = Zeroizing::new(plaintext.to_vec());
    let tag = cipher
        .encrypt_in_place_detached(&nonce.into(), aad, &mut buffer)
        .map_err(|_| TransitError::InvalidInput("plaintext too long"))?;
    out.extend_from_slice(&buffer);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens `nonce ‖ ciphertext ‖ tag` sealed by [`seal`].
fn open<A>(key: &[u8; KEY_LEN], aad: &[u8], body: &[u8]) -> Result<Zeroizing<Vec<u8>>, TransitError>
where
    A: AeadInPlace<NonceSize = U12, TagSize = U16> + KeyInit,
{
    let (nonce, rest) = body
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(TransitError::Truncated)?;
    let (ciphertext, tag) = rest
        .split_last_chunk::<TAG_LEN>()
        .ok_or(TransitError::Truncated)?;
    let cipher = A::new_from_slice(key).map_err(|_| TransitError::InvalidKeyMaterial)?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    // Both AEADs check the tag before releasing anything, so on failure no
    // unauthenticated plaintext escapes; the buffer is wiped on drop anyway.
    cipher
        .decrypt_in_place_detached(&(*nonce).into(), aad, &mut buffer, &(*tag).into())
        .map_err(|_| TransitError::DecryptionFailed)?;
    Ok(buffer)
}

/// Encrypts `plaintext` and returns Vault's text form
/// `vault:v<version>:base64(nonce ‖ ciphertext ‖ tag)`, with a fresh random
/// 96-bit nonce and `binding` authenticated as associated data.
pub fn encrypt(
    key_type: KeyType,
    material: &KeyVersionMaterial,
    binding: &Binding<'_>,
    plaintext: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<String, TransitError> {
    ensure_type(key_type, material)?;
    ensure_version(binding.version)?;
    let aad = binding.aad()?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let body = match key_type {
        KeyType::Aes256Gcm96 => seal::<Aes256Gcm>(&material.key, nonce, &aad, plaintext)?,
        KeyType::ChaCha20Poly1305 => {
            seal::<ChaCha20Poly1305>(&material.key, nonce, &aad, plaintext)?
        }
        other => return Err(unsupported(other, "encryption")),
    };
    Ok(prefixed(binding.version, &STANDARD.encode(body)))
}

/// Decrypts a body returned by [`parse_prefixed`].
///
/// The caller checks the version with [`check_version`] and loads the
/// matching material first. A body shorter than nonce plus tag fails with
/// [`TransitError::Truncated`]; any authentication failure (tampering, or a
/// different key, organisation, version or context) fails with
/// [`TransitError::DecryptionFailed`].
pub fn decrypt(
    key_type: KeyType,
    material: &KeyVersionMaterial,
    binding: &Binding<'_>,
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TransitError> {
    ensure_type(key_type, material)?;
    ensure_version(binding.version)?;
    if !key_type.supports_encryption() {
        return Err(unsupported(key_type, "decryption"));
    }
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(TransitError::Truncated);
    }
    let aad = binding.aad()?;
    match key_type {
        KeyType::Aes256Gcm96 => open::<Aes256Gcm>(&material.key, &aad, body),
        KeyType::ChaCha20Poly1305 => open::<ChaCha20Poly1305>(&material.key, &aad, body),
        other => Err(unsupported(other, "decryption")),
    }
}

/// Generates a random data key of `bits` bits (128, 256 or 512), as Vault's
/// `datakey` endpoint does; the caller wraps it with [`encrypt`].
pub fn generate_data_key(
    bits: u16,
    rng: &mut impl CryptoRngCore,
) -> Result<Zeroizing<Vec<u8>>, TransitError> {
    let len = match bits {
        128 => 16,
        256 => 32,
        512 => 64,
        _ => return Err(TransitError::InvalidInput("bits must be 128, 256 or 512")),
    };
    let mut key = Zeroizing::new(vec![0u8; len]);
    rng.fill_bytes(&mut key);
    Ok(key)
}

/// A hash algorithm for signing and HMAC, named as in Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashAlgorithm {
    /// SHA-256 (`sha2-256`), the default.
    #[default]
    Sha2_256,
    /// SHA-384 (`sha2-384`).
    Sha2_384,
    /// SHA-512 (`sha2-512`).
    Sha2_512,
    /// No hashing (`none`). Ed25519 ignores the hash; ECDSA and HMAC reject
    /// it, because signing caller-chosen raw bytes as a digest is a footgun.
    None,
}

impl HashAlgorithm {
    /// Returns the Vault name, e.g. `"sha2-256"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha2_256 => "sha2-256",
            Self::Sha2_384 => "sha2-384",
            Self::Sha2_512 => "sha2-512",
            Self::None => "none",
        }
    }

    /// The digest length in bytes, or `None` for [`HashAlgorithm::None`].
    pub fn digest_len(self) -> Option<usize> {
        match self {
            Self::Sha2_256 => Some(32),
            Self::Sha2_384 => Some(48),
            Self::Sha2_512 => Some(64),
            Self::None => None,
        }
    }

    /// Hashes `input`, or returns `None` for [`HashAlgorithm::None`].
    fn digest(self, input: &[u8]) -> Option<Vec<u8>> {
        match self {
            Self::Sha2_256 => Some(Sha256::digest(input).to_vec()),
            Self::Sha2_384 => Some(Sha384::digest(input).to_vec()),
            Self::Sha2_512 => Some(Sha512::digest(input).to_vec()),
            Self::None => None,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HashAlgorithm {
    type Err = TransitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha2-256" => Ok(Self::Sha2_256),
            "sha2-384" => Ok(Self::Sha2_384),
            "sha2-512" => Ok(Self::Sha2_512),
            "none" => Ok(Self::None),
            _ => Err(TransitError::InvalidInput("unknown hash algorithm")),
        }
    }
}

/// How a signature is serialised, named as in Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Marshaling {
    /// ASN.1 DER for ECDSA, raw bytes for Ed25519; standard padded base64
    /// (`asn1`, the default).
    #[default]
    Asn1,
    /// Fixed-width `r ‖ s` for ECDSA, raw bytes for Ed25519; unpadded
    /// base64url, as used by JWS (`jws`).
    Jws,
}

impl Marshaling {
    /// Returns the Vault name, `"asn1"` or `"jws"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asn1 => "asn1",
            Self::Jws => "jws",
        }
    }

    /// Encodes signature bytes in this marshaling's base64 alphabet.
    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Self::Asn1 => STANDARD.encode(bytes),
            Self::Jws => URL_SAFE_NO_PAD.encode(bytes),
        }
    }

    /// Decodes signature bytes in this marshaling's base64 alphabet.
    fn decode(self, payload: &str) -> Result<Vec<u8>, TransitError> {
        match self {
            Self::Asn1 => STANDARD.decode(payload),
            Self::Jws => URL_SAFE_NO_PAD.decode(payload),
        }
        .map_err(|_| TransitError::InvalidEncoding)
    }
}

impl fmt::Display for Marshaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Marshaling {
    type Err = TransitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "asn1" => Ok(Self::Asn1),
            "jws" => Ok(Self::Jws),
            _ => Err(TransitError::InvalidInput("unknown marshaling algorithm")),
        }
    }
}

/// Request options for [`sign`] and [`verify`], mirroring Vault's
/// `prehashed`, `hash_algorithm` and `marshaling_algorithm` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignatureOptions {
    /// Whether the input is already a digest made with `hash`. Not allowed
    /// for Ed25519, which always signs the raw message.
    pub prehashed: bool,
    /// The hash applied to the input for ECDSA; ignored by Ed25519.
    pub hash: HashAlgorithm,
    /// How the signature is serialised.
    pub marshaling: Marshaling,
}

/// Builds the error for an operation that `key_type` cannot perform.
fn unsupported(key_type: KeyType, operation: &'static str) -> TransitError {
    TransitError::UnsupportedOperation {
        key_type,
        operation,
    }
}

/// Returns the digest that ECDSA signs: the input itself when it is already
/// prehashed (after checking its length), otherwise its hash.
fn ecdsa_digest(input: &[u8], options: &SignatureOptions) -> Result<Vec<u8>, TransitError> {
    let expected = options.hash.digest_len().ok_or(TransitError::InvalidInput(
        "hash_algorithm none is not supported for ecdsa keys",
    ))?;
    if options.prehashed {
        if input.len() != expected {
            return Err(TransitError::InvalidInput(
                "prehashed input length does not match the hash algorithm",
            ));
        }
        Ok(input.to_vec())
    } else {
        options.hash.digest(input).ok_or(TransitError::InvalidInput(
            "hash_algorithm none is not supported for ecdsa keys",
        ))
    }
}

/// Rejects `prehashed` for Ed25519, which (like Vault without ed25519ph)
/// only signs raw messages.
fn ed25519_check(options: &SignatureOptions) -> Result<(), TransitError> {
    if options.prehashed {
        Err(TransitError::InvalidInput(
            "prehashed input is not supported for ed25519 keys",
        ))
    } else {
        Ok(())
    }
}

/// Signs `input` with the given key version and returns
/// `vault:v<version>:<signature>` as Vault's transit `sign` does.
///
/// ECDSA hashes the input with `options.hash` unless it is prehashed, and
/// signs deterministically (RFC 6979); secp256k1 signatures are low-S.
/// Ed25519 signs the raw input.
pub fn sign(
    key_type: KeyType,
    material: &KeyVersionMaterial,
    version: u32,
    input: &[u8],
    options: &SignatureOptions,
) -> Result<String, TransitError> {
    ensure_type(key_type, material)?;
    ensure_version(version)?;
    let signature = match key_type {
        KeyType::Ed25519 => {
            ed25519_check(options)?;
            let signing_key = ed25519_dalek::SigningKey::from_bytes(&material.key);
            signing_key.sign(input).to_bytes().to_vec()
        }
        KeyType::EcdsaP256 => {
            let digest = ecdsa_digest(input, options)?;
            let signing_key = p256::ecdsa::SigningKey::from_slice(&material.key)
                .map_err(|_| TransitError::InvalidKeyMaterial)?;
            let signature: p256::ecdsa::Signature = signing_key
                .sign_prehash(&digest)
                .map_err(|_| TransitError::InvalidInput("digest cannot be signed"))?;
            match options.marshaling {
                Marshaling::Asn1 => signature.to_der().as_bytes().to_vec(),
                Marshaling::Jws => signature.to_bytes().to_vec(),
            }
        }
        KeyType::EcdsaSecp256k1 => {
            let digest = ecdsa_digest(input, options)?;
            let signing_key = k256::ecdsa::SigningKey::from_slice(&material.key)
                .map_err(|_| TransitError::InvalidKeyMaterial)?;
            let signature: k256::ecdsa::Signature = signing_key
                .sign_prehash(&digest)
                .map_err(|_| TransitError::InvalidInput("digest cannot be signed"))?;
            // k256 already emits low-S; normalising again makes the
            // guarantee independent of that library detail.
            let signature = signature.normalize_s().unwrap_or(signature);
            match options.marshaling {
                Marshaling::Asn1 => signature.to_der().as_bytes().to_vec(),
                Marshaling::Jws => signature.to_bytes().to_vec(),
            }
        }
        other => return Err(unsupported(other, "signing")),
    };
    Ok(prefixed(version, &options.marshaling.encode(&signature)))
}

/// Verifies a `vault:v<N>:` signature made by [`sign`] with the same
/// options.
///
/// `version` is the key version `material` belongs to (find it with
/// [`prefixed_version`]); a signature naming another version fails with
/// [`TransitError::InvalidVersion`]. A malformed signature text is an error;
/// a well-formed signature that does not match returns `Ok(false)`.
/// secp256k1 signatures with a high S are rejected as non-canonical.
pub fn verify(
    key_type: KeyType,
    material: &KeyVersionMaterial,
    version: u32,
    input: &[u8],
    signature: &str,
    options: &SignatureOptions,
) -> Result<bool, TransitError> {
    ensure_type(key_type, material)?;
    ensure_version(version)?;
    if !key_type.supports_signing() {
        return Err(unsupported(key_type, "verification"));
    }
    let (signed_version, payload) = split_prefixed(signature)?;
    if signed_version != version {
        return Err(TransitError::InvalidVersion);
    }
    let bytes = options.marshaling.decode(payload)?;
    match key_type {
        KeyType::Ed25519 => {
            ed25519_check(options)?;
            let signature = ed25519_dalek::Signature::from_slice(&bytes)
                .map_err(|_| TransitError::InvalidEncoding)?;
            let signing_key = ed25519_dalek::SigningKey::from_bytes(&material.key);
            // Strict verification rejects small-order keys and non-canonical
            // encodings, so each message has one valid signature per key.
            Ok(signing_key
                .verifying_key()
                .verify_strict(input, &signature)
                .is_ok())
        }
        KeyType::EcdsaP256 => {
            let digest = ecdsa_digest(input, options)?;
            let signature = match options.marshaling {
                Marshaling::Asn1 => p256::ecdsa::Signature::from_der(&bytes),
                Marshaling::Jws => p256::ecdsa::Signature::from_slice(&bytes),
            }
            .map_err(|_| TransitError::InvalidEncoding)?;
            let signing_key = p256::ecdsa::SigningKey::from_slice(&material.key)
                .map_err(|_| TransitError::InvalidKeyMaterial)?;
            Ok(signing_key
                .verifying_key()
                .verify_prehash(&digest, &signature)
                .is_ok())
        }
        KeyType::EcdsaSecp256k1 => {
            let digest = ecdsa_digest(input, options)?;
            let signature = match options.marshaling {
                Marshaling::Asn1 => k256::ecdsa::Signature::from_der(&bytes),
                Marshaling::Jws => k256::ecdsa::Signature::from_slice(&bytes),
            }
            .map_err(|_| TransitError::InvalidEncoding)?;
            // A high-S signature is the malleated twin of a valid low-S one;
            // rejecting it keeps exactly one valid signature per digest, as
            // k256 itself does on verification.
            if signature.normalize_s().is_some() {
                return Ok(false);
            }
            let signing_key = k256::ecdsa::SigningKey::from_slice(&material.key)
                .map_err(|_| TransitError::InvalidKeyMaterial)?;
            Ok(signing_key
                .verifying_key()
                .verify_prehash(&digest, &signature)
                .is_ok())
        }
        other => Err(unsupported(other, "verification")),
    }
}

/// Returns the public key of a signing key version as Vault shows it:
/// standard base64 of the 32 raw bytes for Ed25519, a PEM SubjectPublicKeyInfo
/// (`-----BEGIN PUBLIC KEY-----`) for ECDSA. Returns `None` for symmetric key
/// types and for material of another type.
pub fn public_key(key_type: KeyType, material: &KeyVersionMaterial) -> Option<String> {
    if material.key_type != key_type {
        return None;
    }
    match key_type {
        KeyType::Ed25519 => {
            let signing_key = ed25519_dalek::SigningKey::from_bytes(&material.key);
            Some(STANDARD.encode(signing_key.verifying_key().as_bytes()))
        }
        KeyType::EcdsaP256 => p256::ecdsa::SigningKey::from_slice(&material.key)
            .ok()?
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .ok(),
        KeyType::EcdsaSecp256k1 => k256::ecdsa::SigningKey::from_slice(&material.key)
            .ok()?
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .ok(),
        KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305 | KeyType::Hmac => None,
    }
}

/// Computes the raw HMAC of `input` under `key`.
fn mac_bytes(key: &[u8], algorithm: HashAlgorithm, input: &[u8]) -> Result<Vec<u8>, TransitError> {
    fn run<M: Mac + KeyInit>(key: &[u8], input: &[u8]) -> Result<Vec<u8>, TransitError> {
        let mut mac =
            <M as KeyInit>::new_from_slice(key).map_err(|_| TransitError::InvalidKeyMaterial)?;
        mac.update(input);
        Ok(mac.finalize().into_bytes().to_vec())
    }
    match algorithm {
        HashAlgorithm::Sha2_256 => run::<Hmac<Sha256>>(key, input),
        HashAlgorithm::Sha2_384 => run::<Hmac<Sha384>>(key, input),
        HashAlgorithm::Sha2_512 => run::<Hmac<Sha512>>(key, input),
        HashAlgorithm::None => Err(TransitError::InvalidInput("hmac requires a hash algorithm")),
    }
}

/// Computes an HMAC of `input` and returns `vault:v<version>:base64(mac)`,
/// as Vault's transit `hmac` endpoint does. Keys of type `hmac` use their
/// main key; every other type uses its separate HMAC key.
pub fn hmac(
    material: &KeyVersionMaterial,
    version: u32,
    algorithm: HashAlgorithm,
    input: &[u8],
) -> Result<String, TransitError> {
    ensure_version(version)?;
    let mac = mac_bytes(material.mac_key(), algorithm, input)?;
    Ok(prefixed(version, &STANDARD.encode(mac)))
}

/// Verifies a `vault:v<N>:` HMAC made by [`hmac`], comparing in constant
/// time.
///
/// `version` is the key version `material` belongs to; an HMAC naming
/// another version fails with [`TransitError::InvalidVersion`]. A malformed
/// text is an error; a wrong HMAC returns `Ok(false)`.
pub fn verify_hmac(
    material: &KeyVersionMaterial,
    version: u32,
    algorithm: HashAlgorithm,
    input: &[u8],
    mac: &str,
) -> Result<bool, TransitError> {
    ensure_version(version)?;
    let (mac_version, given) = parse_prefixed(mac)?;
    if mac_version != version {
        return Err(TransitError::InvalidVersion);
    }
    let expected = mac_bytes(material.mac_key(), algorithm, input)?;
    // `ct_eq` on slices of different lengths is false without comparing
    // contents; the length of a MAC is public anyway.
    Ok(bool::from(expected.ct_eq(&given)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier as _;
    use p256::pkcs8::DecodePublicKey;
    use proptest::prelude::*;
    use rand_core::OsRng;

    const ORG: &str = "org-1";
    const KEY: &str = "payments";

    fn binding(version: u32, context: Option<&[u8]>) -> Binding<'_> {
        Binding {
            org_id: ORG,
            key_name: KEY,
            version,
            context,
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Builds material from fixed bytes through the storage encoding.
    fn material_from(key_type: KeyType, key: [u8; 32], hmac_key: [u8; 32]) -> KeyVersionMaterial {
        let mut bytes = vec![MATERIAL_FORMAT_V1, key_type.storage_tag()];
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&hmac_key);
        KeyVersionMaterial::from_bytes(key_type, &bytes).unwrap()
    }

    /// Strips `vault:v<version>:` by hand, independently of the module's parser.
    fn payload(text: &str, version: u32) -> &str {
        text.strip_prefix(&format!("vault:v{version}:")).unwrap()
    }

    const AEADS: [KeyType; 2] = [KeyType::Aes256Gcm96, KeyType::ChaCha20Poly1305];

    #[test]
    fn aead_round_trip_with_and_without_context() {
        for key_type in AEADS {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let contexts: [Option<&[u8]>; 3] = [None, Some(b""), Some(b"tenant=42")];
            for context in contexts {
                for plaintext in [&b""[..], b"x", b"the quick brown fox"] {
                    let b = binding(3, context);
                    let text = encrypt(key_type, &material, &b, plaintext, &mut OsRng).unwrap();
                    assert!(text.starts_with("vault:v3:"), "{text}");
                    let (version, body) = parse_prefixed(&text).unwrap();
                    assert_eq!(version, 3);
                    assert_eq!(body.len(), NONCE_LEN + plaintext.len() + TAG_LEN);
                    let decrypted = decrypt(key_type, &material, &b, &body).unwrap();
                    assert_eq!(decrypted.as_slice(), plaintext);
                }
            }
        }
    }

    #[test]
    fn nonces_are_fresh() {
        for key_type in AEADS {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let b = binding(1, None);
            let a = encrypt(key_type, &material, &b, b"same", &mut OsRng).unwrap();
            let c = encrypt(key_type, &material, &b, b"same", &mut OsRng).unwrap();
            assert_ne!(a, c);
        }
    }

    #[test]
    fn tampering_any_byte_fails() {
        for key_type in AEADS {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let b = binding(1, Some(b"ctx"));
            let text = encrypt(key_type, &material, &b, b"attack at dawn", &mut OsRng).unwrap();
            let (_, body) = parse_prefixed(&text).unwrap();
            for i in 0..body.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut tampered = body.clone();
                    tampered[i] ^= flip;
                    assert_eq!(
                        decrypt(key_type, &material, &b, &tampered).unwrap_err(),
                        TransitError::DecryptionFailed,
                        "byte {i}"
                    );
                }
            }
            // Appending or dropping a byte also breaks authentication.
            let mut longer = body.clone();
            longer.push(0);
            assert_eq!(
                decrypt(key_type, &material, &b, &longer).unwrap_err(),
                TransitError::DecryptionFailed
            );
            assert_eq!(
                decrypt(key_type, &material, &b, &body[..body.len() - 1]).unwrap_err(),
                TransitError::DecryptionFailed
            );
        }
    }

    #[test]
    fn wrong_binding_or_key_fails() {
        for key_type in AEADS {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let good = binding(2, Some(b"ctx-a"));
            let text = encrypt(key_type, &material, &good, b"secret", &mut OsRng).unwrap();
            let (_, body) = parse_prefixed(&text).unwrap();
            assert!(decrypt(key_type, &material, &good, &body).is_ok());

            let wrong = [
                Binding {
                    context: Some(b"ctx-b"),
                    ..good
                },
                Binding {
                    context: None,
                    ..good
                },
                Binding {
                    context: Some(b""),
                    ..good
                },
                Binding {
                    key_name: "payroll",
                    ..good
                },
                Binding {
                    org_id: "org-2",
                    ..good
                },
                Binding { version: 1, ..good },
                Binding { version: 3, ..good },
            ];
            for b in wrong {
                assert_eq!(
                    decrypt(key_type, &material, &b, &body).unwrap_err(),
                    TransitError::DecryptionFailed,
                    "{b:?}"
                );
            }

            let other = KeyVersionMaterial::generate(key_type, &mut OsRng);
            assert_eq!(
                decrypt(key_type, &other, &good, &body).unwrap_err(),
                TransitError::DecryptionFailed
            );
        }
    }

    #[test]
    fn ciphertext_does_not_open_under_the_other_aead() {
        let key = [7u8; 32];
        let aes = material_from(KeyType::Aes256Gcm96, key, [1; 32]);
        let chacha = material_from(KeyType::ChaCha20Poly1305, key, [1; 32]);
        let b = binding(1, None);
        let text = encrypt(KeyType::Aes256Gcm96, &aes, &b, b"hello", &mut OsRng).unwrap();
        let (_, body) = parse_prefixed(&text).unwrap();
        assert_eq!(
            decrypt(KeyType::ChaCha20Poly1305, &chacha, &b, &body).unwrap_err(),
            TransitError::DecryptionFailed
        );
    }

    #[test]
    fn truncated_bodies_are_rejected() {
        for key_type in AEADS {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let b = binding(1, None);
            for len in 0..NONCE_LEN + TAG_LEN {
                assert_eq!(
                    decrypt(key_type, &material, &b, &vec![0u8; len]).unwrap_err(),
                    TransitError::Truncated,
                    "len {len}"
                );
            }
            // Exactly nonce plus tag is a well-formed (empty) ciphertext.
            assert_eq!(
                decrypt(key_type, &material, &b, &[0u8; NONCE_LEN + TAG_LEN]).unwrap_err(),
                TransitError::DecryptionFailed
            );
            let (_, empty) = parse_prefixed("vault:v1:").unwrap();
            assert_eq!(
                decrypt(key_type, &material, &b, &empty).unwrap_err(),
                TransitError::Truncated
            );
        }
    }

    #[test]
    fn encryption_rejects_wrong_types_and_versions() {
        let aes = KeyVersionMaterial::generate(KeyType::Aes256Gcm96, &mut OsRng);
        assert_eq!(
            encrypt(
                KeyType::ChaCha20Poly1305,
                &aes,
                &binding(1, None),
                b"x",
                &mut OsRng
            )
            .unwrap_err(),
            TransitError::InvalidKeyMaterial
        );
        assert_eq!(
            encrypt(
                KeyType::Aes256Gcm96,
                &aes,
                &binding(0, None),
                b"x",
                &mut OsRng
            )
            .unwrap_err(),
            TransitError::InvalidVersion
        );
        assert_eq!(
            decrypt(KeyType::Aes256Gcm96, &aes, &binding(0, None), &[0; 40]).unwrap_err(),
            TransitError::InvalidVersion
        );
        for key_type in [
            KeyType::Hmac,
            KeyType::Ed25519,
            KeyType::EcdsaP256,
            KeyType::EcdsaSecp256k1,
        ] {
            let m = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let err = encrypt(key_type, &m, &binding(1, None), b"x", &mut OsRng).unwrap_err();
            assert_eq!(
                err,
                TransitError::UnsupportedOperation {
                    key_type,
                    operation: "encryption"
                }
            );
            assert_eq!(err.code(), "unsupported_operation");
            assert!(matches!(
                decrypt(key_type, &m, &binding(1, None), &[0; 40]).unwrap_err(),
                TransitError::UnsupportedOperation { .. }
            ));
        }
    }

    #[test]
    fn parse_prefixed_errors() {
        let cases: [(&str, TransitError); 12] = [
            ("vault:", TransitError::InvalidPrefix),
            ("xault:v1:AAAA", TransitError::InvalidPrefix),
            ("", TransitError::InvalidPrefix),
            ("VAULT:v1:AAAA", TransitError::InvalidPrefix),
            ("vault:v0:", TransitError::InvalidVersion),
            ("vault:v01:", TransitError::InvalidVersion),
            ("vault:vx:", TransitError::InvalidVersion),
            ("vault:v:AAAA", TransitError::InvalidVersion),
            ("vault:v+1:AAAA", TransitError::InvalidVersion),
            ("vault:v1AAAA", TransitError::InvalidVersion),
            ("vault:v4294967296:AAAA", TransitError::InvalidVersion),
            ("vault:v1:!!!", TransitError::InvalidEncoding),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_prefixed(input).unwrap_err(), expected, "{input}");
        }
        // Unpadded, url-safe and whitespace-laden base64 are not Vault's
        // ciphertext encoding.
        for input in [
            "vault:v1:AAA",
            "vault:v1:AA-_",
            "vault:v1:AAAA ",
            "vault:v1:AA=A",
        ] {
            assert_eq!(
                parse_prefixed(input).unwrap_err(),
                TransitError::InvalidEncoding,
                "{input}"
            );
        }
        assert_eq!(parse_prefixed("vault:v1:AAAA").unwrap(), (1, vec![0, 0, 0]));
        assert_eq!(
            parse_prefixed("vault:v4294967295:").unwrap(),
            (u32::MAX, vec![])
        );
        assert_eq!(prefixed_version("vault:v12:-_-_").unwrap(), 12);
        assert_eq!(
            prefixed_version("vault:v012:").unwrap_err(),
            TransitError::InvalidVersion
        );
    }

    #[test]
    fn parses_vault_ciphertext() {
        // A ciphertext in the form Vault's transit engine emits; the random
        // nonce means it cannot be reproduced, but it must parse.
        let text = "vault:v1:8SDd3WHDOjf7mq69CyCqYjBXAiQQAVZRkFM13ok481zoCmHnSeDX9vyf7w==";
        let (version, body) = parse_prefixed(text).unwrap();
        assert_eq!(version, 1);
        assert_eq!(body.len(), 43);
        assert!(body.len() >= NONCE_LEN + TAG_LEN);
        // Our own output re-encodes to the same shape.
        assert_eq!(format!("vault:v1:{}", STANDARD.encode(&body)), text);
    }

    #[test]
    fn check_version_cases() {
        assert_eq!(check_version(1, 1, 1), Ok(()));
        assert_eq!(check_version(3, 5, 2), Ok(()));
        assert_eq!(check_version(5, 5, 5), Ok(()));
        assert_eq!(check_version(6, 5, 1), Err(TransitError::VersionTooNew));
        assert_eq!(check_version(1, 5, 2), Err(TransitError::VersionTooOld));
        assert_eq!(check_version(0, 5, 0), Err(TransitError::InvalidVersion));
        // Vault's default min_decryption_version of 0 allows every version.
        assert_eq!(check_version(1, 5, 0), Ok(()));
    }

    #[test]
    fn aad_layout_is_canonical_and_injective() {
        let aad = Binding {
            org_id: "o",
            key_name: "k",
            version: 258,
            context: Some(b"c"),
        }
        .aad()
        .unwrap();
        let mut expected = vec![0, 0, 0, 17];
        expected.extend_from_slice(b"custos/transit/v1");
        expected.extend_from_slice(&[
            0, 0, 0, 1, b'o', 0, 0, 0, 1, b'k', 0, 0, 1, 2, 1, 0, 0, 0, 1, b'c',
        ]);
        assert_eq!(aad, expected);

        let a = Binding {
            org_id: "a",
            key_name: "bc",
            version: 1,
            context: None,
        };
        let b = Binding {
            org_id: "ab",
            key_name: "c",
            ..a
        };
        let c = Binding {
            context: Some(b""),
            ..a
        };
        assert_ne!(a.aad().unwrap(), b.aad().unwrap());
        assert_ne!(a.aad().unwrap(), c.aad().unwrap());
        assert_eq!(*a.aad().unwrap().last().unwrap(), 0);
    }

    #[test]
    fn error_codes_are_stable_and_distinct() {
        let errors = [
            (TransitError::InvalidPrefix, "invalid_ciphertext_prefix"),
            (TransitError::InvalidVersion, "invalid_key_version"),
            (TransitError::InvalidEncoding, "invalid_ciphertext_encoding"),
            (TransitError::Truncated, "ciphertext_truncated"),
            (TransitError::DecryptionFailed, "decryption_failed"),
            (TransitError::VersionTooNew, "key_version_too_new"),
            (TransitError::VersionTooOld, "key_version_too_old"),
            (
                TransitError::UnsupportedOperation {
                    key_type: KeyType::Hmac,
                    operation: "signing",
                },
                "unsupported_operation",
            ),
            (TransitError::InvalidInput("x"), "invalid_input"),
            (TransitError::InvalidKeyMaterial, "invalid_key_material"),
        ];
        let mut codes = std::collections::HashSet::new();
        for (err, code) in &errors {
            assert_eq!(err.code(), *code);
            assert!(codes.insert(*code));
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(
            errors[7].0.to_string(),
            "key type hmac does not support signing"
        );
    }

    #[test]
    fn names_round_trip() {
        for key_type in KeyType::ALL {
            assert_eq!(key_type.as_str().parse::<KeyType>().unwrap(), key_type);
            assert_eq!(key_type.to_string(), key_type.as_str());
            assert!(key_type.supports_hmac());
            assert_ne!(
                key_type.supports_encryption(),
                key_type.supports_signing() || key_type == KeyType::Hmac
            );
        }
        assert_eq!(KeyType::default(), KeyType::Aes256Gcm96);
        assert_eq!(KeyType::default().as_str(), "aes256-gcm96");
        assert_eq!(
            "aes256-gcm".parse::<KeyType>().unwrap_err(),
            TransitError::InvalidInput("unknown key type")
        );
        for hash in [
            HashAlgorithm::Sha2_256,
            HashAlgorithm::Sha2_384,
            HashAlgorithm::Sha2_512,
            HashAlgorithm::None,
        ] {
            assert_eq!(hash.as_str().parse::<HashAlgorithm>().unwrap(), hash);
            assert_eq!(hash.to_string(), hash.as_str());
        }
        assert_eq!(HashAlgorithm::default().as_str(), "sha2-256");
        assert!("sha1".parse::<HashAlgorithm>().is_err());
        for m in [Marshaling::Asn1, Marshaling::Jws] {
            assert_eq!(m.as_str().parse::<Marshaling>().unwrap(), m);
            assert_eq!(m.to_string(), m.as_str());
        }
        assert_eq!(Marshaling::default().as_str(), "asn1");
        assert!("der".parse::<Marshaling>().is_err());
    }

    fn opts(hash: HashAlgorithm, prehashed: bool, marshaling: Marshaling) -> SignatureOptions {
        SignatureOptions {
            prehashed,
            hash,
            marshaling,
        }
    }

    #[test]
    fn p256_signatures_verify_independently() {
        let material = KeyVersionMaterial::generate(KeyType::EcdsaP256, &mut OsRng);
        let pem = public_key(KeyType::EcdsaP256, &material).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        let vk = p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).unwrap();
        let msg = b"transfer 10 BTC";

        // Default options: SHA-256, ASN.1 DER, checked through the standard
        // `Verifier`, which hashes with SHA-256 itself.
        let text = sign(
            KeyType::EcdsaP256,
            &material,
            4,
            msg,
            &SignatureOptions::default(),
        )
        .unwrap();
        let der = STANDARD.decode(payload(&text, 4)).unwrap();
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        p256::ecdsa::signature::Verifier::verify(&vk, msg, &sig).unwrap();

        for hash in [
            HashAlgorithm::Sha2_256,
            HashAlgorithm::Sha2_384,
            HashAlgorithm::Sha2_512,
        ] {
            let digest = hash.digest(msg).unwrap();
            for marshaling in [Marshaling::Asn1, Marshaling::Jws] {
                for prehashed in [false, true] {
                    let input = if prehashed { &digest[..] } else { &msg[..] };
                    let o = opts(hash, prehashed, marshaling);
                    let text = sign(KeyType::EcdsaP256, &material, 1, input, &o).unwrap();
                    let sig = match marshaling {
                        Marshaling::Asn1 => {
                            let der = STANDARD.decode(payload(&text, 1)).unwrap();
                            p256::ecdsa::Signature::from_der(&der).unwrap()
                        }
                        Marshaling::Jws => {
                            let raw = URL_SAFE_NO_PAD.decode(payload(&text, 1)).unwrap();
                            assert_eq!(raw.len(), 64);
                            p256::ecdsa::Signature::from_slice(&raw).unwrap()
                        }
                    };
                    vk.verify_prehash(&digest, &sig).unwrap();
                    assert!(verify(KeyType::EcdsaP256, &material, 1, input, &text, &o).unwrap());
                }
            }
        }
    }

    #[test]
    fn secp256k1_signatures_verify_independently_and_are_low_s() {
        let material = KeyVersionMaterial::generate(KeyType::EcdsaSecp256k1, &mut OsRng);
        let pem = public_key(KeyType::EcdsaSecp256k1, &material).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let vk = k256::ecdsa::VerifyingKey::from_public_key_pem(&pem).unwrap();

        for i in 0..64u32 {
            let msg = format!("message {i}");
            let text = sign(
                KeyType::EcdsaSecp256k1,
                &material,
                1,
                msg.as_bytes(),
                &SignatureOptions::default(),
            )
            .unwrap();
            let der = STANDARD.decode(payload(&text, 1)).unwrap();
            let sig = k256::ecdsa::Signature::from_der(&der).unwrap();
            assert!(sig.normalize_s().is_none(), "signature {i} is high-S");
            k256::ecdsa::signature::Verifier::verify(&vk, msg.as_bytes(), &sig).unwrap();

            let o = opts(HashAlgorithm::Sha2_256, false, Marshaling::Jws);
            let text = sign(KeyType::EcdsaSecp256k1, &material, 1, msg.as_bytes(), &o).unwrap();
            let raw = URL_SAFE_NO_PAD.decode(payload(&text, 1)).unwrap();
            let sig = k256::ecdsa::Signature::from_slice(&raw).unwrap();
            assert!(sig.normalize_s().is_none());
            k256::ecdsa::signature::Verifier::verify(&vk, msg.as_bytes(), &sig).unwrap();
        }

        let digest = Sha512::digest(b"m").to_vec();
        let o = opts(HashAlgorithm::Sha2_512, true, Marshaling::Asn1);
        let text = sign(KeyType::EcdsaSecp256k1, &material, 1, &digest, &o).unwrap();
        let sig =
            k256::ecdsa::Signature::from_der(&STANDARD.decode(payload(&text, 1)).unwrap()).unwrap();
        vk.verify_prehash(&digest, &sig).unwrap();
        assert!(verify(KeyType::EcdsaSecp256k1, &material, 1, &digest, &text, &o).unwrap());
    }

    #[test]
    fn secp256k1_high_s_is_rejected() {
        let material = KeyVersionMaterial::generate(KeyType::EcdsaSecp256k1, &mut OsRng);
        let o = opts(HashAlgorithm::Sha2_256, false, Marshaling::Jws);
        let text = sign(KeyType::EcdsaSecp256k1, &material, 1, b"m", &o).unwrap();
        assert!(verify(KeyType::EcdsaSecp256k1, &material, 1, b"m", &text, &o).unwrap());
        let sig =
            k256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(payload(&text, 1)).unwrap())
                .unwrap();
        let high = k256::ecdsa::Signature::from_scalars(sig.r(), -sig.s()).unwrap();
        assert!(high.normalize_s().is_some());
        let high_text = format!("vault:v1:{}", URL_SAFE_NO_PAD.encode(high.to_bytes()));
        assert!(!verify(KeyType::EcdsaSecp256k1, &material, 1, b"m", &high_text, &o).unwrap());
    }

    #[test]
    fn ed25519_signatures_verify_independently() {
        let material = KeyVersionMaterial::generate(KeyType::Ed25519, &mut OsRng);
        let public = public_key(KeyType::Ed25519, &material).unwrap();
        let bytes: [u8; 32] = STANDARD.decode(&public).unwrap().try_into().unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap();
        let msg = b"hello ed25519";

        // The hash algorithm is ignored for Ed25519, as in Vault.
        for hash in [
            HashAlgorithm::Sha2_256,
            HashAlgorithm::Sha2_512,
            HashAlgorithm::None,
        ] {
            let o = opts(hash, false, Marshaling::Asn1);
            let text = sign(KeyType::Ed25519, &material, 2, msg, &o).unwrap();
            let raw: [u8; 64] = STANDARD
                .decode(payload(&text, 2))
                .unwrap()
                .try_into()
                .unwrap();
            vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&raw))
                .unwrap();
            assert!(verify(KeyType::Ed25519, &material, 2, msg, &text, &o).unwrap());
        }

        let o = opts(HashAlgorithm::Sha2_256, false, Marshaling::Jws);
        let text = sign(KeyType::Ed25519, &material, 2, msg, &o).unwrap();
        let raw: [u8; 64] = URL_SAFE_NO_PAD
            .decode(payload(&text, 2))
            .unwrap()
            .try_into()
            .unwrap();
        vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&raw))
            .unwrap();

        let pre = opts(HashAlgorithm::Sha2_256, true, Marshaling::Asn1);
        assert_eq!(
            sign(KeyType::Ed25519, &material, 2, &[0; 32], &pre).unwrap_err(),
            TransitError::InvalidInput("prehashed input is not supported for ed25519 keys")
        );
        let good = sign(
            KeyType::Ed25519,
            &material,
            2,
            msg,
            &SignatureOptions::default(),
        )
        .unwrap();
        assert!(verify(KeyType::Ed25519, &material, 2, msg, &good, &pre).is_err());
    }

    #[test]
    fn verify_rejects_other_messages_and_malformed_signatures() {
        for key_type in [
            KeyType::Ed25519,
            KeyType::EcdsaP256,
            KeyType::EcdsaSecp256k1,
        ] {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let other = KeyVersionMaterial::generate(key_type, &mut OsRng);
            for marshaling in [Marshaling::Asn1, Marshaling::Jws] {
                let o = opts(HashAlgorithm::Sha2_256, false, marshaling);
                let text = sign(key_type, &material, 1, b"message one", &o).unwrap();
                assert!(verify(key_type, &material, 1, b"message one", &text, &o).unwrap());
                assert!(!verify(key_type, &material, 1, b"message two", &text, &o).unwrap());
                assert!(!verify(key_type, &other, 1, b"message one", &text, &o).unwrap());

                // The signature names version 1; verifying it as another
                // version's signature is a caller error.
                assert_eq!(
                    verify(key_type, &material, 2, b"message one", &text, &o).unwrap_err(),
                    TransitError::InvalidVersion
                );

                for bad in [
                    "",
                    "vault:v1:",
                    "vault:v1:!!!",
                    "vault:vx:AAAA",
                    "vault:v1:AAAA",
                    "sig:v1:AAAA",
                ] {
                    assert!(
                        verify(key_type, &material, 1, b"message one", bad, &o).is_err(),
                        "{key_type} {bad}"
                    );
                }
            }
            // A signature in the other marshaling's encoding is malformed
            // or does not verify; it is never accepted.
            let asn1 = sign(key_type, &material, 1, b"m", &SignatureOptions::default()).unwrap();
            let jws = opts(HashAlgorithm::Sha2_256, false, Marshaling::Jws);
            assert!(!verify(key_type, &material, 1, b"m", &asn1, &jws).unwrap_or(false));
        }
    }

    #[test]
    fn ecdsa_option_errors() {
        for key_type in [KeyType::EcdsaP256, KeyType::EcdsaSecp256k1] {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            for prehashed in [false, true] {
                let o = opts(HashAlgorithm::None, prehashed, Marshaling::Asn1);
                assert!(matches!(
                    sign(key_type, &material, 1, &[0; 32], &o).unwrap_err(),
                    TransitError::InvalidInput(_)
                ));
            }
            for (hash, bad_len) in [
                (HashAlgorithm::Sha2_256, 31),
                (HashAlgorithm::Sha2_256, 48),
                (HashAlgorithm::Sha2_384, 32),
                (HashAlgorithm::Sha2_512, 48),
            ] {
                let o = opts(hash, true, Marshaling::Asn1);
                assert_eq!(
                    sign(key_type, &material, 1, &vec![1; bad_len], &o).unwrap_err(),
                    TransitError::InvalidInput(
                        "prehashed input length does not match the hash algorithm"
                    )
                );
            }
            assert_eq!(
                sign(key_type, &material, 0, b"m", &SignatureOptions::default()).unwrap_err(),
                TransitError::InvalidVersion
            );
        }
    }

    #[test]
    fn signing_unsupported_for_symmetric_keys() {
        for key_type in [
            KeyType::Aes256Gcm96,
            KeyType::ChaCha20Poly1305,
            KeyType::Hmac,
        ] {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            assert!(matches!(
                sign(key_type, &material, 1, b"m", &SignatureOptions::default()).unwrap_err(),
                TransitError::UnsupportedOperation { .. }
            ));
            assert!(matches!(
                verify(
                    key_type,
                    &material,
                    1,
                    b"m",
                    "vault:v1:AAAA",
                    &SignatureOptions::default()
                )
                .unwrap_err(),
                TransitError::UnsupportedOperation { .. }
            ));
            assert_eq!(public_key(key_type, &material), None);
        }
        let ed = KeyVersionMaterial::generate(KeyType::Ed25519, &mut OsRng);
        assert_eq!(public_key(KeyType::EcdsaP256, &ed), None);
        assert_eq!(
            sign(
                KeyType::EcdsaP256,
                &ed,
                1,
                b"m",
                &SignatureOptions::default()
            )
            .unwrap_err(),
            TransitError::InvalidKeyMaterial
        );
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 keys are shorter than 32 bytes; HMAC zero-pads keys to the
        // block size, so the key followed by zeros gives the same result.
        let mut key1 = [0u8; 32];
        key1[..20].copy_from_slice(&[0x0b; 20]);
        let material = material_from(KeyType::Hmac, key1, [0xee; 32]);
        let vectors = [
            (
                HashAlgorithm::Sha2_256,
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                HashAlgorithm::Sha2_384,
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
            ),
            (
                HashAlgorithm::Sha2_512,
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
            ),
        ];
        for (algorithm, expected) in vectors {
            let text = hmac(&material, 1, algorithm, b"Hi There").unwrap();
            assert_eq!(text, format!("vault:v1:{}", STANDARD.encode(hex(expected))));
            assert!(verify_hmac(&material, 1, algorithm, b"Hi There", &text).unwrap());
        }

        let mut key2 = [0u8; 32];
        key2[..4].copy_from_slice(b"Jefe");
        let material = material_from(KeyType::Hmac, key2, [0; 32]);
        let text = hmac(
            &material,
            7,
            HashAlgorithm::Sha2_256,
            b"what do ya want for nothing?",
        )
        .unwrap();
        assert_eq!(
            text,
            format!(
                "vault:v7:{}",
                STANDARD.encode(hex(
                    "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
                ))
            )
        );
    }

    #[test]
    fn hmac_uses_the_separate_key_for_other_types() {
        for key_type in [
            KeyType::Aes256Gcm96,
            KeyType::ChaCha20Poly1305,
            KeyType::Ed25519,
            KeyType::EcdsaP256,
            KeyType::EcdsaSecp256k1,
        ] {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let stored = material.to_bytes();
            let hmac_key = &stored[2 + 32..];
            let mut independent = <Hmac<Sha384> as Mac>::new_from_slice(hmac_key).unwrap();
            independent.update(b"data");
            let expected = independent.finalize().into_bytes();
            let text = hmac(&material, 5, HashAlgorithm::Sha2_384, b"data").unwrap();
            assert_eq!(text, format!("vault:v5:{}", STANDARD.encode(expected)));

            assert!(verify_hmac(&material, 5, HashAlgorithm::Sha2_384, b"data", &text).unwrap());
            assert!(!verify_hmac(&material, 5, HashAlgorithm::Sha2_384, b"date", &text).unwrap());
            assert!(!verify_hmac(&material, 5, HashAlgorithm::Sha2_256, b"data", &text).unwrap());
            assert_eq!(
                verify_hmac(&material, 4, HashAlgorithm::Sha2_384, b"data", &text).unwrap_err(),
                TransitError::InvalidVersion
            );
            assert_eq!(
                verify_hmac(
                    &material,
                    5,
                    HashAlgorithm::Sha2_384,
                    b"data",
                    "vault:v5:!!"
                )
                .unwrap_err(),
                TransitError::InvalidEncoding
            );
            assert_eq!(
                verify_hmac(
                    &material,
                    5,
                    HashAlgorithm::Sha2_384,
                    b"data",
                    "hmac:v5:AAAA"
                )
                .unwrap_err(),
                TransitError::InvalidPrefix
            );
            // A truncated MAC is simply wrong, not an error.
            let (_, mac) = parse_prefixed(&text).unwrap();
            let short = format!("vault:v5:{}", STANDARD.encode(&mac[..mac.len() - 1]));
            assert!(!verify_hmac(&material, 5, HashAlgorithm::Sha2_384, b"data", &short).unwrap());
        }
        let material = KeyVersionMaterial::generate(KeyType::Hmac, &mut OsRng);
        assert!(matches!(
            hmac(&material, 1, HashAlgorithm::None, b"x").unwrap_err(),
            TransitError::InvalidInput(_)
        ));
        assert_eq!(
            hmac(&material, 0, HashAlgorithm::Sha2_256, b"x").unwrap_err(),
            TransitError::InvalidVersion
        );
    }

    #[test]
    fn material_round_trips_and_rejects_bad_bytes() {
        for key_type in KeyType::ALL {
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            assert_eq!(material.key_type(), key_type);
            let bytes = material.to_bytes();
            assert_eq!(bytes.len(), MATERIAL_ENCODED_LEN);
            let restored = KeyVersionMaterial::from_bytes(key_type, &bytes).unwrap();
            assert_eq!(restored.to_bytes(), bytes);
            assert_eq!(
                public_key(key_type, &restored),
                public_key(key_type, &material)
            );

            for len in [0, 1, 2, 33, 34, 64, 65, 67, 128] {
                let mut wrong = bytes.to_vec();
                wrong.resize(len, 0);
                assert_eq!(
                    KeyVersionMaterial::from_bytes(key_type, &wrong).unwrap_err(),
                    TransitError::InvalidKeyMaterial,
                    "{key_type} len {len}"
                );
            }
            let mut bad_format = bytes.to_vec();
            bad_format[0] = 2;
            assert!(KeyVersionMaterial::from_bytes(key_type, &bad_format).is_err());
            for other in KeyType::ALL.into_iter().filter(|t| *t != key_type) {
                assert_eq!(
                    KeyVersionMaterial::from_bytes(other, &bytes).unwrap_err(),
                    TransitError::InvalidKeyMaterial
                );
            }

            // Debug output must not leak either key.
            let debug = format!("{material:?}");
            assert!(debug.contains("<redacted>"));
            let hex_key: String = bytes[2..34].iter().map(|b| format!("{b:02x}")).collect();
            assert!(!debug.contains(&hex_key));
            assert!(!debug.contains(&format!("{:?}", &bytes[2..34])));
        }
    }

    #[test]
    fn invalid_ecdsa_scalars_are_rejected() {
        let p256_order = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        let k256_order = hex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
        for (key_type, order) in [
            (KeyType::EcdsaP256, p256_order),
            (KeyType::EcdsaSecp256k1, k256_order),
        ] {
            let order: [u8; 32] = order.try_into().unwrap();
            for scalar in [[0u8; 32], order, [0xff; 32]] {
                let mut bytes = vec![MATERIAL_FORMAT_V1, key_type.storage_tag()];
                bytes.extend_from_slice(&scalar);
                bytes.extend_from_slice(&[1; 32]);
                assert_eq!(
                    KeyVersionMaterial::from_bytes(key_type, &bytes).unwrap_err(),
                    TransitError::InvalidKeyMaterial
                );
            }
            let mut below = order;
            below[31] -= 1;
            assert!(material_from_result(key_type, below).is_ok());
            assert!(material_from_result(key_type, {
                let mut one = [0u8; 32];
                one[31] = 1;
                one
            })
            .is_ok());
        }
        // Any 32 bytes are a valid symmetric key or Ed25519 seed.
        for key_type in [
            KeyType::Aes256Gcm96,
            KeyType::ChaCha20Poly1305,
            KeyType::Hmac,
            KeyType::Ed25519,
        ] {
            assert!(material_from_result(key_type, [0xff; 32]).is_ok());
        }
    }

    fn material_from_result(
        key_type: KeyType,
        key: [u8; 32],
    ) -> Result<KeyVersionMaterial, TransitError> {
        let mut bytes = vec![MATERIAL_FORMAT_V1, key_type.storage_tag()];
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&[0; 32]);
        KeyVersionMaterial::from_bytes(key_type, &bytes)
    }

    #[test]
    fn data_keys() {
        for (bits, len) in [(128u16, 16usize), (256, 32), (512, 64)] {
            let a = generate_data_key(bits, &mut OsRng).unwrap();
            let b = generate_data_key(bits, &mut OsRng).unwrap();
            assert_eq!(a.len(), len);
            assert_ne!(a, b);
        }
        for bits in [0u16, 8, 192, 1024] {
            assert_eq!(
                generate_data_key(bits, &mut OsRng).unwrap_err(),
                TransitError::InvalidInput("bits must be 128, 256 or 512")
            );
        }
        // The caller wraps the data key with `encrypt`.
        let material = KeyVersionMaterial::generate(KeyType::Aes256Gcm96, &mut OsRng);
        let data_key = generate_data_key(256, &mut OsRng).unwrap();
        let b = binding(1, None);
        let wrapped = encrypt(KeyType::Aes256Gcm96, &material, &b, &data_key, &mut OsRng).unwrap();
        let (_, body) = parse_prefixed(&wrapped).unwrap();
        assert_eq!(
            decrypt(KeyType::Aes256Gcm96, &material, &b, &body).unwrap(),
            data_key
        );
    }

    proptest! {
        #[test]
        fn prop_aead_round_trip(
            plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
            context in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            version in 1u32..,
            chacha in any::<bool>(),
        ) {
            let key_type = if chacha { KeyType::ChaCha20Poly1305 } else { KeyType::Aes256Gcm96 };
            let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
            let b = Binding { org_id: ORG, key_name: KEY, version, context: context.as_deref() };
            let text = encrypt(key_type, &material, &b, &plaintext, &mut OsRng).unwrap();
            let (parsed_version, body) = parse_prefixed(&text).unwrap();
            prop_assert_eq!(parsed_version, version);
            let decrypted = decrypt(key_type, &material, &b, &body).unwrap();
            prop_assert_eq!(decrypted.as_slice(), plaintext.as_slice());
        }

        #[test]
        fn prop_parse_never_panics(s in ".*") {
            let _ = parse_prefixed(&s);
            let _ = prefixed_version(&s);
        }

        #[test]
        fn prop_aad_is_injective(
            a in ("[a-z]{0,4}", "[a-z]{0,4}", 1u32..4, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3))),
            b in ("[a-z]{0,4}", "[a-z]{0,4}", 1u32..4, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3))),
        ) {
            let ba = Binding { org_id: &a.0, key_name: &a.1, version: a.2, context: a.3.as_deref() };
            let bb = Binding { org_id: &b.0, key_name: &b.1, version: b.2, context: b.3.as_deref() };
            prop_assert_eq!(ba == bb, ba.aad().unwrap() == bb.aad().unwrap());
        }
    }
}
