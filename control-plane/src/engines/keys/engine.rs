//! The key registry's cryptography for one key version, whichever backend
//! holds it: software material (sealed by the org's keyring at rest,
//! opened only for the call) or a non-extractable object in the PKCS#11
//! token (`super::hsm`).
//!
//! | type | usages | operations |
//! | --- | --- | --- |
//! | `AES_256` | `ENCRYPT_DECRYPT`, `WRAP_UNWRAP` | AES-256-GCM, 96-bit random nonce, `nonce ‖ ciphertext ‖ tag`, with associated data |
//! | `ECDSA_P256`, `ECDSA_SECP256K1` | `SIGN_VERIFY` | ECDSA over SHA-256 of the message, or over a given 32-byte digest; DER; secp256k1 low-s |
//! | `ED25519` | `SIGN_VERIFY` | pure Ed25519 over the message (no digests) |
//! | `RSA_2048`, `RSA_3072` | all three | RSA-OAEP SHA-256 (MGF1-SHA256, no label: what client-side encryption libraries produce), RSA-PSS SHA-256 with a 32-byte salt |
//!
//! Verification and RSA encryption use only the public key (SPKI DER), in
//! software, for both backends. All calls block (RSA, the token): callers
//! run them in `spawn_blocking`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use openssl::pkey::{Id, PKey, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::sign::Verifier;
use p256::pkcs8::EncodePublicKey;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use super::rsa::{self, RsaBits, RsaError, RsaKeyMaterial, RsaPublicKey};
use crate::kernel::hsm::{HsmError, HsmKeyId, HsmKeyKind, HsmKeyStore};

/// A registry key's type (the API names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// AES-256.
    Aes256,
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on secp256k1.
    EcdsaSecp256k1,
    /// Ed25519.
    Ed25519,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
}

impl KeyType {
    /// Every type, for error messages.
    pub const ALL: [KeyType; 6] = [
        KeyType::Aes256,
        KeyType::EcdsaP256,
        KeyType::EcdsaSecp256k1,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
    ];

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes256 => "AES_256",
            KeyType::EcdsaP256 => "ECDSA_P256",
            KeyType::EcdsaSecp256k1 => "ECDSA_SECP256K1",
            KeyType::Ed25519 => "ED25519",
            KeyType::Rsa2048 => "RSA_2048",
            KeyType::Rsa3072 => "RSA_3072",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The usages a key of this type may have.
    pub fn allows(self, usage: Usage) -> bool {
        match self {
            KeyType::Aes256 => matches!(usage, Usage::EncryptDecrypt | Usage::WrapUnwrap),
            KeyType::EcdsaP256 | KeyType::EcdsaSecp256k1 | KeyType::Ed25519 => {
                usage == Usage::SignVerify
            }
            KeyType::Rsa2048 | KeyType::Rsa3072 => true,
        }
    }

    /// Whether the type has a public half.
    pub fn is_asymmetric(self) -> bool {
        self != KeyType::Aes256
    }

    fn hsm_kind(self) -> HsmKeyKind {
        match self {
            KeyType::Aes256 => HsmKeyKind::Aes256,
            KeyType::EcdsaP256 => HsmKeyKind::EcP256,
            KeyType::EcdsaSecp256k1 => HsmKeyKind::EcSecp256k1,
            KeyType::Ed25519 => HsmKeyKind::Ed25519,
            KeyType::Rsa2048 => HsmKeyKind::Rsa2048,
            KeyType::Rsa3072 => HsmKeyKind::Rsa3072,
        }
    }

    /// The signature or encryption scheme, as the API names it.
    pub fn algorithm(self, usage: Usage) -> &'static str {
        match (self, usage) {
            (KeyType::Aes256, _) => "AES_256_GCM",
            (KeyType::EcdsaP256 | KeyType::EcdsaSecp256k1, _) => "ECDSA_SHA_256",
            (KeyType::Ed25519, _) => "ED25519",
            (_, Usage::SignVerify) => "RSASSA_PSS_SHA_256",
            _ => "RSAES_OAEP_SHA_256",
        }
    }
}

/// What a key is for (one usage per key, as in AWS KMS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Encrypt and decrypt data.
    EncryptDecrypt,
    /// Sign and verify.
    SignVerify,
    /// Wrap and unwrap other keys.
    WrapUnwrap,
}

impl Usage {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            Usage::SignVerify => "SIGN_VERIFY",
            Usage::WrapUnwrap => "WRAP_UNWRAP",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<Usage> {
        [Usage::EncryptDecrypt, Usage::SignVerify, Usage::WrapUnwrap]
            .into_iter()
            .find(|usage| usage.as_str() == name)
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Ed25519 signs messages, not digests.
    #[error("this key type signs whole messages, not digests")]
    DigestNotSupported,
    /// The ciphertext did not open (one opaque error for every cause).
    #[error("the ciphertext does not decrypt under this key")]
    DecryptFailed,
    /// Malformed input.
    #[error("{0}")]
    Invalid(&'static str),
    /// RSA refused.
    #[error(transparent)]
    Rsa(#[from] RsaError),
    /// The token refused.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// Stored material is unusable (a bug or corruption).
    #[error("stored key material is unusable")]
    Material,
}

impl KeyError {
    /// The stable API code.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::DigestNotSupported => "digest_not_supported",
            KeyError::DecryptFailed => "decrypt_failed",
            KeyError::Invalid(_) => "invalid_input",
            KeyError::Rsa(RsaError::DecryptFailed) => "decrypt_failed",
            KeyError::Rsa(error) => error.code(),
            KeyError::Hsm(HsmError::DecryptFailed) => "decrypt_failed",
            KeyError::Hsm(error) => error.code(),
            KeyError::Material => "key_material_unusable",
        }
    }
}

/// Where a version's private or secret half is.
pub enum Material {
    /// Opened software material: 32 bytes (AES key, EC scalar, Ed25519
    /// seed) or RSA PKCS#8 DER.
    Software(Zeroizing<Vec<u8>>),
    /// A non-extractable object in the token.
    Hsm(HsmKeyId),
}

/// One version of a key, ready for an operation.
pub struct VersionKey<'a> {
    /// The key's type.
    pub key_type: KeyType,
    /// The private or secret half.
    pub material: Material,
    /// The public half (SPKI DER) of asymmetric types.
    pub public_der: Option<Vec<u8>>,
    /// The token, for HSM material.
    pub hsm: Option<&'a HsmKeyStore>,
}

/// New software material and its public key.
pub struct Generated {
    /// 32 bytes (AES key, EC scalar, Ed25519 seed) or RSA PKCS#8 DER.
    pub material: Zeroizing<Vec<u8>>,
    /// The public key (SPKI DER) of asymmetric types.
    pub public_der: Option<Vec<u8>>,
}

/// Generates software material.
pub fn generate_software(key_type: KeyType) -> Result<Generated, KeyError> {
    let (material, public_der) = generate_parts(key_type)?;
    Ok(Generated {
        material,
        public_der,
    })
}

type Parts = (Zeroizing<Vec<u8>>, Option<Vec<u8>>);

fn generate_parts(key_type: KeyType) -> Result<Parts, KeyError> {
    let mut seed = Zeroizing::new(vec![0u8; 32]);
    match key_type {
        KeyType::Aes256 => {
            OsRng.fill_bytes(&mut seed);
            Ok((seed, None))
        }
        KeyType::EcdsaP256 => {
            let secret = p256::SecretKey::random(&mut OsRng);
            let public = secret
                .public_key()
                .to_public_key_der()
                .map_err(|_| KeyError::Material)?;
            Ok((
                Zeroizing::new(secret.to_bytes().to_vec()),
                Some(public.into_vec()),
            ))
        }
        KeyType::EcdsaSecp256k1 => {
            let secret = k256::SecretKey::random(&mut OsRng);
            let public = secret
                .public_key()
                .to_public_key_der()
                .map_err(|_| KeyError::Material)?;
            Ok((
                Zeroizing::new(secret.to_bytes().to_vec()),
                Some(public.into_vec()),
            ))
        }
        KeyType::Ed25519 => {
            OsRng.fill_bytes(&mut seed);
            let signing = ed25519_dalek::SigningKey::from_bytes(
                &<[u8; 32]>::try_from(seed.as_slice()).map_err(|_| KeyError::Material)?,
            );
            let public =
                PKey::public_key_from_raw_bytes(signing.verifying_key().as_bytes(), Id::ED25519)
                    .and_then(|key| key.public_key_to_der())
                    .map_err(|_| KeyError::Material)?;
            Ok((seed, Some(public)))
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 => {
            let bits = if key_type == KeyType::Rsa2048 {
                RsaBits::B2048
            } else {
                RsaBits::B3072
            };
            let material = rsa::generate(bits)?;
            Ok((material.to_pkcs8_der()?, Some(material.public_key_der()?)))
        }
    }
}

/// Generates the key in the token: (object id, public key as SPKI DER).
pub fn generate_hsm(
    hsm: &HsmKeyStore,
    key_type: KeyType,
    label: &str,
) -> Result<(HsmKeyId, Option<Vec<u8>>), KeyError> {
    let key = hsm.generate(key_type.hsm_kind(), label)?;
    Ok((key.id, key.public_key_der))
}

/// Removes a version's token objects for good; answers how many there
/// were. An id the token no longer holds is success, so a destruction
/// retried after a failure finishes.
pub fn destroy_hsm(hsm: &HsmKeyStore, id: &HsmKeyId) -> Result<usize, KeyError> {
    Ok(hsm.purge(id)?)
}

/// What is signed, owned (for a blocking task).
pub enum Signed {
    /// A message.
    Message(Vec<u8>),
    /// A SHA-256 digest.
    Digest([u8; 32]),
}

impl Signed {
    /// Borrowed.
    pub fn input(&self) -> SignInput<'_> {
        match self {
            Signed::Message(message) => SignInput::Message(message),
            Signed::Digest(digest) => SignInput::Digest(digest),
        }
    }
}

/// What is signed.
pub enum SignInput<'a> {
    /// A message, hashed with SHA-256 (Ed25519: signed whole).
    Message(&'a [u8]),
    /// A SHA-256 digest.
    Digest(&'a [u8; 32]),
}

fn hsm_of<'a>(key: &VersionKey<'a>) -> Result<&'a HsmKeyStore, KeyError> {
    key.hsm
        .ok_or(KeyError::Invalid("the HSM backend is not configured"))
}

fn scalar(material: &[u8]) -> Result<[u8; 32], KeyError> {
    <[u8; 32]>::try_from(material).map_err(|_| KeyError::Material)
}

/// Signs with `key`: DER for ECDSA, 64 bytes for Ed25519, the modulus'
/// length for RSA-PSS.
pub fn sign(key: &VersionKey<'_>, input: SignInput<'_>) -> Result<Vec<u8>, KeyError> {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::ecdsa::signature::Signer;
    if key.key_type == KeyType::Ed25519 && matches!(input, SignInput::Digest(_)) {
        return Err(KeyError::DigestNotSupported);
    }
    let secret = match &key.material {
        Material::Hsm(id) => {
            let hsm = hsm_of(key)?;
            return Ok(match input {
                SignInput::Message(message) => {
                    hsm.sign_message(id, key.key_type.hsm_kind(), message)?
                }
                SignInput::Digest(digest) => {
                    hsm.sign_digest(id, key.key_type.hsm_kind(), digest)?
                }
            });
        }
        Material::Software(secret) => secret,
    };
    match key.key_type {
        KeyType::EcdsaP256 => {
            let signer = p256::ecdsa::SigningKey::from_bytes(&scalar(secret)?.into())
                .map_err(|_| KeyError::Material)?;
            let signature: p256::ecdsa::Signature = match input {
                SignInput::Message(message) => signer.sign(message),
                SignInput::Digest(digest) => signer
                    .sign_prehash(digest)
                    .map_err(|_| KeyError::Invalid("the digest cannot be signed"))?,
            };
            Ok(signature.to_der().as_bytes().to_vec())
        }
        KeyType::EcdsaSecp256k1 => {
            let signer = k256::ecdsa::SigningKey::from_bytes(&scalar(secret)?.into())
                .map_err(|_| KeyError::Material)?;
            let signature: k256::ecdsa::Signature = match input {
                SignInput::Message(message) => signer.sign(message),
                SignInput::Digest(digest) => signer
                    .sign_prehash(digest)
                    .map_err(|_| KeyError::Invalid("the digest cannot be signed"))?,
            };
            let signature = signature.normalize_s().unwrap_or(signature);
            Ok(signature.to_der().as_bytes().to_vec())
        }
        KeyType::Ed25519 => {
            let SignInput::Message(message) = input else {
                return Err(KeyError::DigestNotSupported);
            };
            let signer = ed25519_dalek::SigningKey::from_bytes(&scalar(secret)?);
            Ok(signer.sign(message).to_bytes().to_vec())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 => {
            let private = RsaKeyMaterial::from_pkcs8_der(secret)?;
            Ok(match input {
                SignInput::Message(message) => rsa::sign_message(&private, message)?,
                SignInput::Digest(digest) => rsa::sign_digest(&private, digest)?,
            })
        }
        KeyType::Aes256 => Err(KeyError::Invalid("AES keys do not sign")),
    }
}

fn public_key(key: &VersionKey<'_>) -> Result<PKey<Public>, KeyError> {
    let der = key.public_der.as_deref().ok_or(KeyError::Material)?;
    PKey::public_key_from_der(der).map_err(|_| KeyError::Material)
}

/// Checks a signature with the public key only. A malformed signature is
/// `Ok(false)`, like a wrong one.
pub fn verify(
    key: &VersionKey<'_>,
    input: SignInput<'_>,
    signature: &[u8],
) -> Result<bool, KeyError> {
    use sha2::Digest as _;
    match key.key_type {
        KeyType::Rsa2048 | KeyType::Rsa3072 => {
            let public =
                RsaPublicKey::from_spki_der(key.public_der.as_deref().ok_or(KeyError::Material)?)?;
            let verified = match input {
                SignInput::Message(message) => rsa::verify_message(&public, message, signature),
                SignInput::Digest(digest) => rsa::verify_digest(&public, digest, signature),
            };
            match verified {
                Ok(valid) => Ok(valid),
                Err(RsaError::InvalidSignatureEncoding { .. }) => Ok(false),
                Err(error) => Err(error.into()),
            }
        }
        KeyType::Ed25519 => {
            let SignInput::Message(message) = input else {
                return Err(KeyError::DigestNotSupported);
            };
            let public = public_key(key)?;
            let mut verifier =
                Verifier::new_without_digest(&public).map_err(|_| KeyError::Material)?;
            Ok(verifier.verify_oneshot(signature, message).unwrap_or(false))
        }
        KeyType::EcdsaP256 | KeyType::EcdsaSecp256k1 => {
            let public = public_key(key)?;
            let digest: [u8; 32] = match input {
                SignInput::Message(message) => sha2::Sha256::digest(message).into(),
                SignInput::Digest(digest) => *digest,
            };
            let mut context = PkeyCtx::new(&public).map_err(|_| KeyError::Material)?;
            context.verify_init().map_err(|_| KeyError::Material)?;
            Ok(context.verify(&digest, signature).unwrap_or(false))
        }
        KeyType::Aes256 => Err(KeyError::Invalid("AES keys do not verify")),
    }
}

/// Encrypts: AES-256-GCM with `aad` (in the token for HSM keys), or
/// RSA-OAEP with the public key (the `aad` is not used: RSA ciphertexts are
/// made by clients, which know no associated data).
pub fn encrypt(key: &VersionKey<'_>, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
    match (key.key_type, &key.material) {
        (KeyType::Aes256, Material::Hsm(id)) => {
            Ok(hsm_of(key)?.encrypt(id, HsmKeyKind::Aes256, plaintext, aad)?)
        }
        (KeyType::Aes256, Material::Software(secret)) => {
            let cipher = Aes256Gcm::new_from_slice(secret).map_err(|_| KeyError::Material)?;
            let mut nonce = [0u8; 12];
            OsRng.fill_bytes(&mut nonce);
            let sealed = cipher
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: plaintext,
                        aad,
                    },
                )
                .map_err(|_| KeyError::Material)?;
            let mut out = nonce.to_vec();
            out.extend_from_slice(&sealed);
            Ok(out)
        }
        (KeyType::Rsa2048 | KeyType::Rsa3072, _) => {
            let public =
                RsaPublicKey::from_spki_der(key.public_der.as_deref().ok_or(KeyError::Material)?)?;
            Ok(rsa::encrypt(&public, plaintext, None)?)
        }
        _ => Err(KeyError::Invalid("this key type does not encrypt")),
    }
}

/// Decrypts what [`encrypt`] made (or, for RSA, what any OAEP-SHA-256
/// implementation made with the public key).
pub fn decrypt(
    key: &VersionKey<'_>,
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    match (key.key_type, &key.material) {
        (KeyType::Aes256 | KeyType::Rsa2048 | KeyType::Rsa3072, Material::Hsm(id)) => {
            let aad = if key.key_type == KeyType::Aes256 {
                aad
            } else {
                &[]
            };
            match hsm_of(key)?.decrypt(id, key.key_type.hsm_kind(), ciphertext, aad) {
                Ok(plaintext) => Ok(plaintext),
                Err(HsmError::DecryptFailed) => Err(KeyError::DecryptFailed),
                Err(error) => Err(error.into()),
            }
        }
        (KeyType::Aes256, Material::Software(secret)) => {
            let cipher = Aes256Gcm::new_from_slice(secret).map_err(|_| KeyError::Material)?;
            let (nonce, sealed) = ciphertext
                .split_first_chunk::<12>()
                .ok_or(KeyError::DecryptFailed)?;
            cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
                .map(Zeroizing::new)
                .map_err(|_| KeyError::DecryptFailed)
        }
        (KeyType::Rsa2048 | KeyType::Rsa3072, Material::Software(secret)) => {
            let private = RsaKeyMaterial::from_pkcs8_der(secret)?;
            rsa::decrypt(&private, ciphertext, None).map_err(|error| match error {
                RsaError::DecryptFailed => KeyError::DecryptFailed,
                other => other.into(),
            })
        }
        _ => Err(KeyError::Invalid("this key type does not decrypt")),
    }
}

/// The PEM of an SPKI DER public key.
pub fn public_pem(der: &[u8]) -> Option<String> {
    let key = PKey::public_key_from_der(der).ok()?;
    let pem = key.public_key_to_pem().ok()?;
    String::from_utf8(pem).ok()
}
