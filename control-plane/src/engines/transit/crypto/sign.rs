//! Signatures (Ed25519, ECDSA P-256 and secp256k1, in Vault's
//! `vault:v<N>:` format with ASN.1 or JWS marshaling), public keys, and
//! HMAC with constant-time verification.

use core::fmt;
use core::str::FromStr;

use aes_gcm::aead::KeyInit;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;

use super::{
    ensure_type, ensure_version, parse_prefixed, prefixed, split_prefixed, KeyType,
    KeyVersionMaterial, TransitError,
};

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
    pub(super) fn digest(self, input: &[u8]) -> Option<Vec<u8>> {
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
pub(super) fn unsupported(key_type: KeyType, operation: &'static str) -> TransitError {
    TransitError::UnsupportedOperation {
        key_type,
        operation,
    }
}

/// Returns the digest that ECDSA signs: the input itself when it is already
/// prehashed (after checking its length), otherwise its hash.
pub(super) fn ecdsa_digest(
    input: &[u8],
    options: &SignatureOptions,
) -> Result<Vec<u8>, TransitError> {
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
pub(super) fn ed25519_check(options: &SignatureOptions) -> Result<(), TransitError> {
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
pub(super) fn mac_bytes(
    key: &[u8],
    algorithm: HashAlgorithm,
    input: &[u8],
) -> Result<Vec<u8>, TransitError> {
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
