//! Host-side work on a token's public keys, with OpenSSL: the
//! SubjectPublicKeyInfo DER of a public key object, EC points (SoftHSM2
//! wraps them in an OCTET STRING), RSA-OAEP encryption (it needs no
//! secret), and ECDSA signatures as DER with a low `s`.

use std::cmp::Ordering;

use cryptoki::object::{AttributeType, ObjectHandle};
use cryptoki::session::Session;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::md::Md;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::{Padding, Rsa};

use super::{bytes_attribute, crypto_error, HsmError, HsmKeyKind, EC_POINT_LEN, ED25519_POINT_LEN};

/// The SubjectPublicKeyInfo DER of a public key object of `kind`.
pub(super) fn public_key_der(
    session: &Session,
    public: ObjectHandle,
    kind: HsmKeyKind,
) -> Result<Vec<u8>, HsmError> {
    let key = match kind {
        HsmKeyKind::EcP256 | HsmKeyKind::EcSecp256k1 => {
            let point = bytes_attribute(session, public, AttributeType::EcPoint)?;
            weierstrass_public_key(unwrap_ec_point(&point, EC_POINT_LEN)?, kind)?
        }
        HsmKeyKind::Ed25519 => {
            let point = bytes_attribute(session, public, AttributeType::EcPoint)?;
            PKey::public_key_from_raw_bytes(
                unwrap_ec_point(&point, ED25519_POINT_LEN)?,
                Id::ED25519,
            )
            .map_err(|_| HsmError::InvalidTokenResponse {
                what: "Ed25519 public key",
            })?
        }
        HsmKeyKind::Rsa2048 | HsmKeyKind::Rsa3072 => rsa_public_key(session, public)?,
        HsmKeyKind::Aes256 => {
            return Err(HsmError::UnsupportedOperation {
                operation: "public key",
                kind,
            })
        }
    };
    key.public_key_to_der().map_err(crypto_error("i2d_PUBKEY"))
}

/// The point inside `CKA_EC_POINT`: PKCS#11 says it is the DER encoding of
/// an OCTET STRING holding the point (SoftHSM2 does so); some tokens return
/// the bare point. `len` (65 or 32) is below 128, so the DER length is one
/// byte, and the two forms differ in length.
pub(super) fn unwrap_ec_point(bytes: &[u8], len: usize) -> Result<&[u8], HsmError> {
    match bytes {
        [0x04, inner_len, point @ ..] if usize::from(*inner_len) == len && point.len() == len => {
            Ok(point)
        }
        point if point.len() == len => Ok(point),
        _ => Err(HsmError::InvalidTokenResponse { what: "EC point" }),
    }
}

pub(super) fn curve(kind: HsmKeyKind) -> Result<EcGroup, HsmError> {
    let nid = if kind == HsmKeyKind::EcSecp256k1 {
        Nid::SECP256K1
    } else {
        Nid::X9_62_PRIME256V1
    };
    EcGroup::from_curve_name(nid).map_err(crypto_error("EC_GROUP_new_by_curve_name"))
}

/// A P-256 or secp256k1 public key from an uncompressed point, which
/// OpenSSL checks to be on the curve.
pub(super) fn weierstrass_public_key(
    point: &[u8],
    kind: HsmKeyKind,
) -> Result<PKey<Public>, HsmError> {
    let invalid = |_| HsmError::InvalidTokenResponse { what: "EC point" };
    let group = curve(kind)?;
    let mut bn_context = BigNumContext::new().map_err(crypto_error("BN_CTX_new"))?;
    let point = EcPoint::from_bytes(&group, point, &mut bn_context).map_err(invalid)?;
    let key = EcKey::from_public_key(&group, &point).map_err(invalid)?;
    key.check_key().map_err(invalid)?;
    PKey::from_ec_key(key).map_err(crypto_error("EVP_PKEY_assign_EC_KEY"))
}

pub(super) fn rsa_public_key(
    session: &Session,
    public: ObjectHandle,
) -> Result<PKey<Public>, HsmError> {
    let invalid = |_| HsmError::InvalidTokenResponse {
        what: "RSA public key",
    };
    let modulus = bytes_attribute(session, public, AttributeType::Modulus)?;
    let exponent = bytes_attribute(session, public, AttributeType::PublicExponent)?;
    let rsa = Rsa::from_public_components(
        BigNum::from_slice(&modulus).map_err(invalid)?,
        BigNum::from_slice(&exponent).map_err(invalid)?,
    )
    .map_err(invalid)?;
    PKey::from_rsa(rsa).map_err(crypto_error("EVP_PKEY_assign_RSA"))
}

pub(super) fn oaep_encrypt_on_host(
    key: &PKey<Public>,
    plaintext: &[u8],
    label: &[u8],
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let mut ctx = PkeyCtx::new(key)?;
    ctx.encrypt_init()?;
    ctx.set_rsa_padding(Padding::PKCS1_OAEP)?;
    ctx.set_rsa_oaep_md(Md::sha256())?;
    ctx.set_rsa_mgf1_md(Md::sha256())?;
    if !label.is_empty() {
        ctx.set_rsa_oaep_label(label)?;
    }
    let mut ciphertext = Vec::new();
    ctx.encrypt_to_vec(plaintext, &mut ciphertext)?;
    Ok(ciphertext)
}

/// DER `ECDSA-Sig-Value` from the token's raw `r || s` (PKCS#11 returns
/// both as fixed-length big-endian numbers). secp256k1: `s` above `n/2` is
/// replaced by `n - s`, the other valid signature of the same digest.
pub(super) fn ecdsa_der(raw: &[u8], kind: HsmKeyKind) -> Result<Vec<u8>, HsmError> {
    let invalid = |_| HsmError::InvalidTokenResponse {
        what: "ECDSA signature",
    };
    if raw.len() != 64 {
        return Err(HsmError::InvalidTokenResponse {
            what: "ECDSA signature",
        });
    }
    let (r, s) = raw.split_at(32);
    let r = BigNum::from_slice(r).map_err(invalid)?;
    let mut s = BigNum::from_slice(s).map_err(invalid)?;
    if kind == HsmKeyKind::EcSecp256k1 {
        s = low_s(s, &curve(kind)?)?;
    }
    EcdsaSig::from_private_components(r, s)
        .and_then(|signature| signature.to_der())
        .map_err(crypto_error("ECDSA signature encoding"))
}

pub(super) fn low_s(s: BigNum, group: &EcGroup) -> Result<BigNum, HsmError> {
    let mut bn_context = BigNumContext::new().map_err(crypto_error("BN_CTX_new"))?;
    let mut order = BigNum::new().map_err(crypto_error("BN_new"))?;
    group
        .order(&mut order, &mut bn_context)
        .map_err(crypto_error("EC_GROUP_get_order"))?;
    let mut half = BigNum::new().map_err(crypto_error("BN_new"))?;
    half.rshift1(&order).map_err(crypto_error("BN_rshift1"))?;
    if s.ucmp(&half) != Ordering::Greater {
        return Ok(s);
    }
    let mut flipped = BigNum::new().map_err(crypto_error("BN_new"))?;
    flipped
        .checked_sub(&order, &s)
        .map_err(crypto_error("BN_sub"))?;
    Ok(flipped)
}
