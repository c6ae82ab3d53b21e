//! Software RSA for the key registry (`/api/v1/keys`): key generation,
//! PKCS#8 storage, RSA-OAEP encryption and RSA-PSS signatures.
//!
//! # Why OpenSSL and not the `rsa` crate
//!
//! The RustCrypto `rsa` crate's private-key operations are not constant time
//! (RUSTSEC-2023-0071, the "Marvin" timing attack), and no fixed release
//! exists. This module therefore runs every RSA operation through OpenSSL 3
//! (the system libssl, through the `openssl` crate), whose private-key
//! operations are blinded and constant time. The `rsa` crate appears only in
//! this file's tests, as an independent implementation that checks every
//! signature and ciphertext OpenSSL produces.
//!
//! # Algorithms (fixed, no options)
//!
//! * Keys: 2048 or 3072 bits ([`RsaBits`]), public exponent 65537. Private
//!   keys are stored as unencrypted PKCS#8 DER (the registry seals that blob
//!   itself); public keys are given out as SubjectPublicKeyInfo DER or PEM.
//! * Encryption: RSA-OAEP with SHA-256 and MGF1-SHA256, optional label.
//!   PKCS#1 v1.5 encryption is not offered: its decryption is the padding
//!   oracle Marvin exploits.
//! * Signatures: RSA-PSS with SHA-256, MGF1-SHA256 and a 32-byte salt, over a
//!   message (hashed here) or over a caller's 32-byte SHA-256 digest. Both
//!   produce the same signature format: a signature made with
//!   [`sign_message`] verifies with [`verify_digest`] of the message's hash
//!   and the other way round.
//!
//! # Errors
//!
//! [`RsaError`] carries a stable snake_case code ([`RsaError::code`]) for the
//! API. Every failure of a decryption (wrong key, wrong label, changed or
//! truncated ciphertext) is the single opaque [`RsaError::DecryptFailed`],
//! so callers cannot tell padding failures apart. A verification answers
//! `Ok(false)` for a well-formed signature that does not match, and an error
//! for input that cannot be a signature at all (wrong length) or a digest of
//! the wrong length.
//!
//! # Secrets
//!
//! Private keys live in OpenSSL's memory, which frees their numbers with
//! `BN_clear_free`; PKCS#8 bytes handed out are wrapped in [`Zeroizing`] and
//! decrypted plaintexts likewise. No `Debug` output contains key material.

use std::fmt;

use openssl::bn::BigNum;
use openssl::error::ErrorStack;
use openssl::md::Md;
use openssl::pkey::{HasPublic, Id, PKey, Private, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::RsaPssSaltlen;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Length of a SHA-256 digest, in bytes.
pub const DIGEST_LEN: usize = 32;
/// PSS salt length, in bytes (the digest length, as RFC 8017 recommends).
pub const PSS_SALT_LEN: usize = 32;
/// The public exponent of every key this module creates or accepts.
const PUBLIC_EXPONENT: u32 = 65_537;
/// OAEP overhead for SHA-256: two digests and two bytes (RFC 8017, 7.1.1).
const OAEP_OVERHEAD: usize = 2 * DIGEST_LEN + 2;

/// The RSA key sizes the registry supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RsaBits {
    /// 2048-bit modulus.
    B2048,
    /// 3072-bit modulus.
    B3072,
}

impl RsaBits {
    /// The modulus size in bits.
    pub fn bits(self) -> u32 {
        match self {
            Self::B2048 => 2048,
            Self::B3072 => 3072,
        }
    }

    /// The size of a signature or ciphertext (the modulus), in bytes.
    pub fn modulus_len(self) -> usize {
        match self {
            Self::B2048 => 256,
            Self::B3072 => 384,
        }
    }

    /// The longest plaintext [`encrypt`] accepts for this size.
    pub fn max_plaintext_len(self) -> usize {
        self.modulus_len() - OAEP_OVERHEAD
    }

    /// The size for a modulus of `bits` bits, if supported.
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            2048 => Some(Self::B2048),
            3072 => Some(Self::B3072),
            _ => None,
        }
    }
}

/// Errors of the software RSA engine. Messages never contain key bytes,
/// plaintexts or the reason a decryption failed.
#[derive(Debug, thiserror::Error)]
pub enum RsaError {
    /// The bytes are not a usable RSA private key: not PKCS#8 DER, not an
    /// RSA key, inconsistent numbers or a public exponent other than 65537.
    #[error("invalid RSA key material: {reason}")]
    InvalidKeyMaterial {
        /// What is wrong, in general terms.
        reason: &'static str,
    },
    /// The bytes are not an RSA SubjectPublicKeyInfo of a supported size.
    #[error("invalid RSA public key: {reason}")]
    InvalidPublicKey {
        /// What is wrong, in general terms.
        reason: &'static str,
    },
    /// The key is RSA but neither 2048 nor 3072 bits.
    #[error("unsupported RSA key size {bits} bits (2048 or 3072 expected)")]
    UnsupportedKeySize {
        /// The key's modulus size.
        bits: u32,
    },
    /// The plaintext is longer than OAEP-SHA256 allows for this key.
    #[error("plaintext of {len} bytes is too large for this key (at most {max} bytes)")]
    PlaintextTooLarge {
        /// The plaintext length.
        len: usize,
        /// The maximum for this key size.
        max: usize,
    },
    /// The ciphertext does not decrypt under this key and label. Deliberately
    /// does not say why (no padding oracle).
    #[error("decryption failed")]
    DecryptFailed,
    /// The signature cannot be an RSA signature for this key (wrong length
    /// or not a number below the modulus).
    #[error("malformed RSA signature: expected {expected} bytes, got {len}")]
    InvalidSignatureEncoding {
        /// The modulus length in bytes.
        expected: usize,
        /// The signature length.
        len: usize,
    },
    /// A digest that is not 32 bytes (SHA-256) long.
    #[error("invalid digest: SHA-256 digests are 32 bytes, got {len}")]
    InvalidDigest {
        /// The digest length given.
        len: usize,
    },
    /// OpenSSL failed in an operation that should not fail (out of memory,
    /// a broken library). Never used for decryption failures.
    #[error("OpenSSL {operation} failed: {source}")]
    Crypto {
        /// What was being done.
        operation: &'static str,
        /// OpenSSL's error queue.
        #[source]
        source: ErrorStack,
    },
}

impl RsaError {
    /// A stable snake_case code for the API's error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidKeyMaterial { .. } => "invalid_key_material",
            Self::InvalidPublicKey { .. } => "invalid_public_key",
            Self::UnsupportedKeySize { .. } => "unsupported_key_size",
            Self::PlaintextTooLarge { .. } => "plaintext_too_large",
            Self::DecryptFailed => "decrypt_failed",
            Self::InvalidSignatureEncoding { .. } => "invalid_signature_encoding",
            Self::InvalidDigest { .. } => "invalid_digest",
            Self::Crypto { .. } => "crypto_error",
        }
    }
}

fn crypto(operation: &'static str) -> impl Fn(ErrorStack) -> RsaError {
    move |source| RsaError::Crypto { operation, source }
}

/// An RSA private key. `Debug` shows only the size; OpenSSL clears the
/// private numbers when the key is dropped.
pub struct RsaKeyMaterial {
    key: PKey<Private>,
    bits: RsaBits,
}

impl fmt::Debug for RsaKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaKeyMaterial(rsa-{}, <redacted>)", self.bits.bits())
    }
}

/// Generates a new RSA key of `bits` bits with public exponent 65537 from
/// OpenSSL's CSPRNG.
pub fn generate(bits: RsaBits) -> Result<RsaKeyMaterial, RsaError> {
    let exponent = BigNum::from_u32(PUBLIC_EXPONENT).map_err(crypto("BN_set_word"))?;
    let rsa = Rsa::generate_with_e(bits.bits(), &exponent).map_err(crypto("RSA keygen"))?;
    let key = PKey::from_rsa(rsa).map_err(crypto("EVP_PKEY_assign_RSA"))?;
    Ok(RsaKeyMaterial { key, bits })
}

impl RsaKeyMaterial {
    /// Reads an unencrypted PKCS#8 DER private key. Refuses keys that are
    /// not RSA (RSA-PSS-restricted keys included), not 2048 or 3072 bits,
    /// fail OpenSSL's consistency check, or have an exponent other than
    /// 65537.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, RsaError> {
        let invalid = |reason| RsaError::InvalidKeyMaterial { reason };
        let key =
            PKey::private_key_from_pkcs8(der).map_err(|_| invalid("not a PKCS#8 private key"))?;
        if key.id() != Id::RSA {
            return Err(invalid("not an RSA key"));
        }
        let rsa = key.rsa().map_err(|_| invalid("not an RSA key"))?;
        let bits = RsaBits::from_bits(key.bits())
            .ok_or(RsaError::UnsupportedKeySize { bits: key.bits() })?;
        if !rsa.check_key().unwrap_or(false) {
            return Err(invalid("inconsistent RSA private key"));
        }
        if !has_standard_exponent(&rsa)? {
            return Err(invalid("public exponent is not 65537"));
        }
        Ok(Self { key, bits })
    }

    /// The private key as unencrypted PKCS#8 DER, wiped when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, RsaError> {
        self.key
            .private_key_to_pkcs8()
            .map(Zeroizing::new)
            .map_err(crypto("i2d_PKCS8PrivateKey"))
    }

    /// The key size.
    pub fn bits(&self) -> RsaBits {
        self.bits
    }

    /// The public half.
    pub fn public_key(&self) -> Result<RsaPublicKey, RsaError> {
        let der = self.public_key_der()?;
        RsaPublicKey::from_spki_der(&der)
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Result<Vec<u8>, RsaError> {
        self.key.public_key_to_der().map_err(crypto("i2d_PUBKEY"))
    }

    /// The public key as SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub fn public_key_pem(&self) -> Result<String, RsaError> {
        spki_pem(&self.key)
    }
}

/// An RSA public key of a supported size.
#[derive(Clone)]
pub struct RsaPublicKey {
    key: PKey<Public>,
    bits: RsaBits,
}

impl fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaPublicKey(rsa-{})", self.bits.bits())
    }
}

impl RsaPublicKey {
    /// Reads a SubjectPublicKeyInfo DER RSA public key of 2048 or 3072 bits
    /// with exponent 65537.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, RsaError> {
        let invalid = |reason| RsaError::InvalidPublicKey { reason };
        let key =
            PKey::public_key_from_der(der).map_err(|_| invalid("not a SubjectPublicKeyInfo"))?;
        if key.id() != Id::RSA {
            return Err(invalid("not an RSA key"));
        }
        let rsa = key.rsa().map_err(|_| invalid("not an RSA key"))?;
        let bits = RsaBits::from_bits(key.bits())
            .ok_or(RsaError::UnsupportedKeySize { bits: key.bits() })?;
        if !has_standard_exponent(&rsa)? {
            return Err(invalid("public exponent is not 65537"));
        }
        Ok(Self { key, bits })
    }

    /// The key size.
    pub fn bits(&self) -> RsaBits {
        self.bits
    }

    /// The key as SubjectPublicKeyInfo DER.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, RsaError> {
        self.key.public_key_to_der().map_err(crypto("i2d_PUBKEY"))
    }

    /// The key as SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub fn to_pem(&self) -> Result<String, RsaError> {
        spki_pem(&self.key)
    }
}

fn has_standard_exponent<T: HasPublic>(rsa: &Rsa<T>) -> Result<bool, RsaError> {
    let expected = BigNum::from_u32(PUBLIC_EXPONENT).map_err(crypto("BN_set_word"))?;
    Ok(rsa.e() == &*expected)
}

fn spki_pem<T: HasPublic>(key: &PKey<T>) -> Result<String, RsaError> {
    let pem = key
        .public_key_to_pem()
        .map_err(crypto("PEM_write_PUBKEY"))?;
    String::from_utf8(pem).map_err(|_| RsaError::InvalidPublicKey {
        reason: "PEM output is not UTF-8",
    })
}

/// Encrypts `plaintext` with RSA-OAEP (SHA-256, MGF1-SHA256) under `public`.
/// `label` is the OAEP label (associated data the decryptor must give
/// again); `None` is the empty label. Fails with
/// [`RsaError::PlaintextTooLarge`] above [`RsaBits::max_plaintext_len`].
pub fn encrypt(
    public: &RsaPublicKey,
    plaintext: &[u8],
    label: Option<&[u8]>,
) -> Result<Vec<u8>, RsaError> {
    let max = public.bits.max_plaintext_len();
    if plaintext.len() > max {
        return Err(RsaError::PlaintextTooLarge {
            len: plaintext.len(),
            max,
        });
    }
    let mut ctx = PkeyCtx::new(&public.key).map_err(crypto("EVP_PKEY_CTX_new"))?;
    ctx.encrypt_init()
        .map_err(crypto("EVP_PKEY_encrypt_init"))?;
    set_oaep(&mut ctx, label).map_err(crypto("OAEP parameters"))?;
    let mut ciphertext = Vec::with_capacity(public.bits.modulus_len());
    ctx.encrypt_to_vec(plaintext, &mut ciphertext)
        .map_err(crypto("EVP_PKEY_encrypt"))?;
    Ok(ciphertext)
}

/// Decrypts an RSA-OAEP (SHA-256, MGF1-SHA256) ciphertext with `private`
/// and the same `label` it was made with. Every failure, whatever its cause,
/// is [`RsaError::DecryptFailed`].
pub fn decrypt(
    private: &RsaKeyMaterial,
    ciphertext: &[u8],
    label: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, RsaError> {
    let modulus_len = private.bits.modulus_len();
    if ciphertext.len() != modulus_len {
        return Err(RsaError::DecryptFailed);
    }
    let mut ctx = PkeyCtx::new(&private.key).map_err(|_| RsaError::DecryptFailed)?;
    ctx.decrypt_init().map_err(|_| RsaError::DecryptFailed)?;
    set_oaep(&mut ctx, label).map_err(|_| RsaError::DecryptFailed)?;
    // Capacity for the largest possible output, so the buffer never
    // reallocates and leaves an unwiped copy behind.
    let mut plaintext = Zeroizing::new(Vec::with_capacity(modulus_len));
    ctx.decrypt_to_vec(ciphertext, &mut plaintext)
        .map_err(|_| RsaError::DecryptFailed)?;
    Ok(plaintext)
}

fn set_oaep<T>(ctx: &mut PkeyCtx<T>, label: Option<&[u8]>) -> Result<(), ErrorStack> {
    ctx.set_rsa_padding(Padding::PKCS1_OAEP)?;
    ctx.set_rsa_oaep_md(Md::sha256())?;
    ctx.set_rsa_mgf1_md(Md::sha256())?;
    match label {
        Some(label) if !label.is_empty() => ctx.set_rsa_oaep_label(label),
        _ => Ok(()),
    }
}

/// Signs `message` with RSA-PSS (SHA-256, MGF1-SHA256, 32-byte salt).
/// The signature is as long as the modulus.
pub fn sign_message(private: &RsaKeyMaterial, message: &[u8]) -> Result<Vec<u8>, RsaError> {
    sign_digest(private, &Sha256::digest(message))
}

/// Signs a SHA-256 `digest` (exactly 32 bytes) with RSA-PSS (MGF1-SHA256,
/// 32-byte salt): the same signature [`sign_message`] makes of the message
/// the digest was computed from.
pub fn sign_digest(private: &RsaKeyMaterial, digest: &[u8]) -> Result<Vec<u8>, RsaError> {
    check_digest(digest)?;
    let mut ctx = PkeyCtx::new(&private.key).map_err(crypto("EVP_PKEY_CTX_new"))?;
    ctx.sign_init().map_err(crypto("EVP_PKEY_sign_init"))?;
    set_pss(&mut ctx).map_err(crypto("PSS parameters"))?;
    let mut signature = Vec::with_capacity(private.bits.modulus_len());
    ctx.sign_to_vec(digest, &mut signature)
        .map_err(crypto("EVP_PKEY_sign"))?;
    Ok(signature)
}

/// Verifies an RSA-PSS (SHA-256, MGF1-SHA256, 32-byte salt) signature of
/// `message`. `Ok(false)`: a well-formed signature that does not match.
pub fn verify_message(
    public: &RsaPublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, RsaError> {
    verify_digest(public, &Sha256::digest(message), signature)
}

/// Verifies an RSA-PSS signature of a SHA-256 `digest` (exactly 32 bytes).
/// `Ok(false)`: a well-formed signature that does not match; an error for a
/// signature of the wrong length or not below the modulus.
pub fn verify_digest(
    public: &RsaPublicKey,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, RsaError> {
    check_digest(digest)?;
    let malformed = RsaError::InvalidSignatureEncoding {
        expected: public.bits.modulus_len(),
        len: signature.len(),
    };
    if signature.len() != public.bits.modulus_len() || !below_modulus(public, signature)? {
        return Err(malformed);
    }
    let mut ctx = PkeyCtx::new(&public.key).map_err(crypto("EVP_PKEY_CTX_new"))?;
    ctx.verify_init().map_err(crypto("EVP_PKEY_verify_init"))?;
    set_pss(&mut ctx).map_err(crypto("PSS parameters"))?;
    // The signature is well formed and the parameters are set: OpenSSL
    // reports a mismatch either as 0 or as an error on its queue ("invalid
    // padding", "last octet invalid"); both mean "does not verify".
    Ok(ctx.verify(digest, signature).unwrap_or(false))
}

/// Whether `signature`, read as a big-endian number, is below the modulus
/// (RFC 8017, 8.1.2 step 2's "signature representative out of range").
fn below_modulus(public: &RsaPublicKey, signature: &[u8]) -> Result<bool, RsaError> {
    let rsa = public.key.rsa().map_err(crypto("EVP_PKEY_get1_RSA"))?;
    let number = BigNum::from_slice(signature).map_err(crypto("BN_bin2bn"))?;
    Ok(number.ucmp(rsa.n()) == std::cmp::Ordering::Less)
}

fn set_pss<T>(ctx: &mut PkeyCtx<T>) -> Result<(), ErrorStack> {
    ctx.set_rsa_padding(Padding::PKCS1_PSS)?;
    ctx.set_signature_md(Md::sha256())?;
    ctx.set_rsa_mgf1_md(Md::sha256())?;
    ctx.set_rsa_pss_saltlen(RsaPssSaltlen::custom(PSS_SALT_LEN as i32))
}

fn check_digest(digest: &[u8]) -> Result<(), RsaError> {
    if digest.len() == DIGEST_LEN {
        Ok(())
    } else {
        Err(RsaError::InvalidDigest { len: digest.len() })
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    //! Every signature and ciphertext is checked against the RustCrypto
    //! `rsa` crate, an independent implementation (test-only dependency).

    use std::sync::OnceLock;

    use ::rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use ::rsa::signature::{RandomizedSigner, SignatureEncoding, Verifier};
    use ::rsa::{pss, Oaep};

    use super::*;

    /// One 2048-bit key for the whole module: key generation is the slow
    /// part of these tests.
    fn key_2048() -> &'static RsaKeyMaterial {
        static KEY: OnceLock<RsaKeyMaterial> = OnceLock::new();
        KEY.get_or_init(|| generate(RsaBits::B2048).unwrap())
    }

    fn rustcrypto_private(key: &RsaKeyMaterial) -> ::rsa::RsaPrivateKey {
        ::rsa::RsaPrivateKey::from_pkcs8_der(&key.to_pkcs8_der().unwrap()).unwrap()
    }

    fn rustcrypto_public(key: &RsaKeyMaterial) -> ::rsa::RsaPublicKey {
        ::rsa::RsaPublicKey::from_public_key_der(&key.public_key_der().unwrap()).unwrap()
    }

    fn rustcrypto_verifies(key: &RsaKeyMaterial, message: &[u8], signature: &[u8]) -> bool {
        let verifier =
            pss::VerifyingKey::<Sha256>::new_with_salt_len(rustcrypto_public(key), PSS_SALT_LEN);
        let signature = pss::Signature::try_from(signature).unwrap();
        verifier.verify(message, &signature).is_ok()
    }

    fn openssl_pkcs8_of(pkey: &PKey<Private>) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(pkey.private_key_to_pkcs8().unwrap())
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key_and_is_read_by_rustcrypto() {
        let key = key_2048();
        let der = key.to_pkcs8_der().unwrap();
        let reread = RsaKeyMaterial::from_pkcs8_der(&der).unwrap();
        assert_eq!(reread.bits(), RsaBits::B2048);
        assert_eq!(
            reread.public_key_der().unwrap(),
            key.public_key_der().unwrap()
        );
        let independent = rustcrypto_private(key);
        assert_eq!(independent.to_public_key(), rustcrypto_public(key));
        assert_eq!(
            ::rsa::traits::PublicKeyParts::e(&independent),
            &::rsa::BigUint::from(65_537u32)
        );
    }

    #[test]
    fn from_pkcs8_der_refuses_other_keys_sizes_and_garbage() {
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let ec_der = openssl_pkcs8_of(&PKey::from_ec_key(ec).unwrap());
        let error = RsaKeyMaterial::from_pkcs8_der(&ec_der).unwrap_err();
        assert_eq!(error.code(), "invalid_key_material", "{error}");

        let small = openssl_pkcs8_of(&PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap());
        let error = RsaKeyMaterial::from_pkcs8_der(&small).unwrap_err();
        assert!(
            matches!(error, RsaError::UnsupportedKeySize { bits: 1024 }),
            "{error}"
        );

        let exponent_3 = Rsa::generate_with_e(2048, &BigNum::from_u32(3).unwrap()).unwrap();
        let exponent_3 = openssl_pkcs8_of(&PKey::from_rsa(exponent_3).unwrap());
        let error = RsaKeyMaterial::from_pkcs8_der(&exponent_3).unwrap_err();
        assert_eq!(error.code(), "invalid_key_material", "{error}");

        for garbage in [&b""[..], b"not a key", &[0x30, 0x82, 0x01]] {
            let error = RsaKeyMaterial::from_pkcs8_der(garbage).unwrap_err();
            assert_eq!(error.code(), "invalid_key_material", "{error}");
        }
        let der = key_2048().to_pkcs8_der().unwrap();
        let truncated = &der[..der.len() - 1];
        let error = RsaKeyMaterial::from_pkcs8_der(truncated).unwrap_err();
        assert_eq!(error.code(), "invalid_key_material", "{error}");
    }

    #[test]
    fn public_key_der_and_pem_are_spki() {
        let key = key_2048();
        let pem = key.public_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_eq!(
            ::rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap(),
            rustcrypto_public(key)
        );
        let public = key.public_key().unwrap();
        assert_eq!(public.bits(), RsaBits::B2048);
        assert_eq!(public.to_spki_der().unwrap(), key.public_key_der().unwrap());
        assert_eq!(public.to_pem().unwrap(), pem);
        let error = RsaPublicKey::from_spki_der(b"junk").unwrap_err();
        assert_eq!(error.code(), "invalid_public_key");
    }

    #[test]
    fn pss_signatures_verify_with_rustcrypto() {
        let key = key_2048();
        let message = b"transfer 5 BTC to bc1q...";
        let signature = sign_message(key, message).unwrap();
        assert_eq!(signature.len(), 256);
        assert!(rustcrypto_verifies(key, message, &signature));
        assert!(!rustcrypto_verifies(key, b"another message", &signature));
        assert!(verify_message(&key.public_key().unwrap(), message, &signature).unwrap());
    }

    #[test]
    fn digest_and_message_signing_agree() {
        let key = key_2048();
        let public = key.public_key().unwrap();
        let message = b"the registry signs digests and messages alike";
        let digest = Sha256::digest(message);

        let from_digest = sign_digest(key, &digest).unwrap();
        assert!(rustcrypto_verifies(key, message, &from_digest));
        assert!(verify_message(&public, message, &from_digest).unwrap());

        let from_message = sign_message(key, message).unwrap();
        assert!(verify_digest(&public, &digest, &from_message).unwrap());
        // PSS is randomised: two signatures of one message differ.
        assert_ne!(from_digest, from_message);
    }

    #[test]
    fn rustcrypto_pss_signatures_verify_here() {
        let key = key_2048();
        let signer =
            pss::SigningKey::<Sha256>::new_with_salt_len(rustcrypto_private(key), PSS_SALT_LEN);
        let message = b"signed elsewhere";
        let signature = signer
            .sign_with_rng(&mut rand_core::OsRng, message)
            .to_vec();
        let public = key.public_key().unwrap();
        assert!(verify_message(&public, message, &signature).unwrap());
        assert!(!verify_message(&public, b"signed elsewhere!", &signature).unwrap());
    }

    #[test]
    fn verify_answers_false_for_wrong_signatures_and_errors_for_malformed_ones() {
        let key = key_2048();
        let public = key.public_key().unwrap();
        let message = b"message";
        let mut signature = sign_message(key, message).unwrap();
        assert!(!verify_message(&public, b"other", &signature).unwrap());
        signature[100] ^= 0x01;
        assert!(!verify_message(&public, message, &signature).unwrap());

        let error = verify_message(&public, message, &signature[1..]).unwrap_err();
        assert_eq!(error.code(), "invalid_signature_encoding");
        let error = verify_message(&public, message, &[]).unwrap_err();
        assert_eq!(error.code(), "invalid_signature_encoding");
        // Right length, but a number above the modulus.
        let error = verify_message(&public, message, &[0xff; 256]).unwrap_err();
        assert_eq!(error.code(), "invalid_signature_encoding");
    }

    #[test]
    fn digests_must_be_32_bytes() {
        let key = key_2048();
        let public = key.public_key().unwrap();
        for len in [0, 20, 31, 33, 64] {
            let digest = vec![7u8; len];
            let error = sign_digest(key, &digest).unwrap_err();
            assert!(matches!(error, RsaError::InvalidDigest { len: l } if l == len));
            assert_eq!(error.code(), "invalid_digest");
            let error = verify_digest(&public, &digest, &[0; 256]).unwrap_err();
            assert_eq!(error.code(), "invalid_digest");
        }
    }

    #[test]
    fn oaep_ciphertexts_cross_decrypt_with_rustcrypto() {
        let key = key_2048();
        let public = key.public_key().unwrap();
        let independent = rustcrypto_private(key);
        let plaintext = b"a 32-byte data key, more or less";
        for label in [None, Some("wallet:42")] {
            let padding = || match label {
                Some(label) => Oaep::new_with_label::<Sha256, _>(label),
                None => Oaep::new::<Sha256>(),
            };
            let label = label.map(str::as_bytes);

            let ciphertext = encrypt(&public, plaintext, label).unwrap();
            assert_eq!(ciphertext.len(), 256);
            assert_eq!(
                independent.decrypt(padding(), &ciphertext).unwrap(),
                plaintext
            );

            let ciphertext = rustcrypto_public(key)
                .encrypt(&mut rand_core::OsRng, padding(), plaintext)
                .unwrap();
            assert_eq!(
                decrypt(key, &ciphertext, label).unwrap().as_slice(),
                plaintext
            );
        }
    }

    #[test]
    fn empty_label_is_no_label() {
        let key = key_2048();
        let ciphertext = encrypt(&key.public_key().unwrap(), b"x", Some(b"")).unwrap();
        assert_eq!(decrypt(key, &ciphertext, None).unwrap().as_slice(), b"x");
    }

    #[test]
    fn decryption_failures_are_one_opaque_error() {
        let key = key_2048();
        let public = key.public_key().unwrap();
        let ciphertext = encrypt(&public, b"secret", Some(b"label")).unwrap();

        let wrong_label = decrypt(key, &ciphertext, Some(b"other")).unwrap_err();
        let no_label = decrypt(key, &ciphertext, None).unwrap_err();
        let mut tampered = ciphertext.clone();
        tampered[17] ^= 0x80;
        let tampered = decrypt(key, &tampered, Some(b"label")).unwrap_err();
        let truncated = decrypt(key, &ciphertext[1..], Some(b"label")).unwrap_err();
        let above_modulus = decrypt(key, &[0xff; 256], Some(b"label")).unwrap_err();
        for error in [wrong_label, no_label, tampered, truncated, above_modulus] {
            assert!(matches!(error, RsaError::DecryptFailed), "{error:?}");
            assert_eq!(error.code(), "decrypt_failed");
            assert_eq!(error.to_string(), "decryption failed");
        }
        assert_eq!(
            decrypt(key, &ciphertext, Some(b"label"))
                .unwrap()
                .as_slice(),
            b"secret"
        );
    }

    #[test]
    fn plaintext_size_is_checked() {
        let public = key_2048().public_key().unwrap();
        assert_eq!(RsaBits::B2048.max_plaintext_len(), 190);
        assert_eq!(RsaBits::B3072.max_plaintext_len(), 318);
        assert!(encrypt(&public, &[1; 190], None).is_ok());
        let error = encrypt(&public, &[1; 191], None).unwrap_err();
        assert!(matches!(
            error,
            RsaError::PlaintextTooLarge { len: 191, max: 190 }
        ));
        assert_eq!(error.code(), "plaintext_too_large");
    }

    #[test]
    fn rsa_3072_signs_and_encrypts() {
        let key = generate(RsaBits::B3072).unwrap();
        assert_eq!(key.bits(), RsaBits::B3072);
        let der = key.to_pkcs8_der().unwrap();
        assert_eq!(
            RsaKeyMaterial::from_pkcs8_der(&der).unwrap().bits(),
            RsaBits::B3072
        );

        let signature = sign_message(&key, b"3072").unwrap();
        assert_eq!(signature.len(), 384);
        assert!(rustcrypto_verifies(&key, b"3072", &signature));

        let public = key.public_key().unwrap();
        let plaintext = [9u8; 318];
        let ciphertext = encrypt(&public, &plaintext, None).unwrap();
        assert_eq!(ciphertext.len(), 384);
        assert_eq!(
            rustcrypto_private(&key)
                .decrypt(Oaep::new::<Sha256>(), &ciphertext)
                .unwrap(),
            plaintext
        );
        assert!(matches!(
            encrypt(&public, &[9u8; 319], None),
            Err(RsaError::PlaintextTooLarge { max: 318, .. })
        ));
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let key = key_2048();
        assert_eq!(format!("{key:?}"), "RsaKeyMaterial(rsa-2048, <redacted>)");
        let public = key.public_key().unwrap();
        assert_eq!(format!("{public:?}"), "RsaPublicKey(rsa-2048)");
    }
}
