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
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::ChaCha20Poly1305;
use rand_core::CryptoRngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The prefix shared by every ciphertext, signature and HMAC text.
mod sign;

use sign::unsupported;

pub use sign::{
    hmac, public_key, sign, verify, verify_hmac, HashAlgorithm, Marshaling, SignatureOptions,
};

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

#[cfg(test)]
mod tests;
