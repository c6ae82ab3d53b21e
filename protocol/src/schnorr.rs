//! Threshold Schnorr (FROST, givre 0.2.0): BIP-340 with the Taproot
//! key-path tweak on secp256k1, and Ed25519, from the same DKG shares.
//!
//! givre's signing takes no execution id: its nonces are fresh per run and
//! the session binding comes from the envelope ([`crate::driver`] drops
//! frames of any other session). Each signature is verified against the
//! (tweaked) public key before it is returned.

use std::time::Duration;

use generic_ec::{NonZero, Point};
use givre::ciphersuite::{Bitcoin, Ciphersuite, Ed25519 as Ed25519Suite, NormalizedPoint};
use rand_core::{CryptoRng, RngCore};
use round_based::Mpc;

use crate::ecdsa::SignRun;
use crate::ids::ProtocolKind;
use crate::share::KeyShare;
use crate::{Ed25519, Error, Secp256k1};

/// Messages of FROST signing on curve `E`.
pub type SignMsg<E> = givre::signing::full_signing::Msg<E>;

/// A 64-byte Schnorr signature: BIP-340 `R.x || s`, or Ed25519 `R || S`.
pub type SchnorrSignature = [u8; 64];

/// The BIP-341 output key of a key-path-only Taproot output (no script
/// tree) for the child key at `path`: x-only, 32 bytes. This is what a
/// Taproot address encodes and what signatures verify under.
pub fn taproot_output_key(
    key: &crate::share::PublicKeyInfo<Secp256k1>,
    path: &[u32],
) -> Result<[u8; 32], Error> {
    taproot_tweaked(&key.derive_public_key(path)?)
}

fn taproot_tweaked(child: &NonZero<Point<Secp256k1>>) -> Result<[u8; 32], Error> {
    let normalized =
        NormalizedPoint::<Bitcoin, _>::try_normalize(*child).unwrap_or_else(|negated| negated);
    let tweaked = givre::signing::taproot::tweak_public_key::<Bitcoin>(normalized, None)
        .ok_or(Error::OutputCheck("taproot tweak undefined"))?;
    let normalized =
        NormalizedPoint::<Bitcoin, _>::try_normalize(tweaked).unwrap_or_else(|negated| negated);
    let bytes = Bitcoin::serialize_normalized_point(&normalized);
    bytes
        .as_ref()
        .try_into()
        .map_err(|_| Error::OutputCheck("x-only key length"))
}

/// Runs this party's side of a FROST BIP-340 signing of `message` (a 32-byte
/// Taproot sighash) with the child key at `path`, tweaked for a key-path
/// spend without script tree.
pub async fn sign_taproot<M, R>(
    share: &KeyShare<Secp256k1>,
    run: &SignRun,
    message: &[u8; 32],
    path: &[u32],
    party: M,
    rng: &mut R,
) -> Result<SchnorrSignature, Error>
where
    M: Mpc<ProtocolMessage = SignMsg<Secp256k1>>,
    R: RngCore + CryptoRng,
{
    run.check_share(share)?;
    let session = run.session(ProtocolKind::SignTaproot, Duration::MAX)?;
    let signature = givre::signing::<Bitcoin>(
        session.me,
        &share.core,
        run.quorum.keygen_indices(),
        message,
    )
    .set_derivation_path(path.iter().copied())
    .map_err(|_| Error::InvalidArgument("derivation path must be non-hardened (< 2^31)"))?
    .set_taproot_tweak(None)
    .map_err(|error| Error::protocol(ProtocolKind::SignTaproot, error))?
    .sign(rng, party)
    .await
    .map_err(|error| Error::protocol(ProtocolKind::SignTaproot, error))?;
    let mut bytes = [0u8; 64];
    signature.write_to_slice(&mut bytes);
    let output_key = taproot_tweaked(&share.derive_public_key(path)?)?;
    verify_bip340(&output_key, message, &bytes)?;
    Ok(bytes)
}

/// Checks a BIP-340 signature with k256 (not with the library that made it).
pub fn verify_bip340(
    x_only_key: &[u8; 32],
    message: &[u8],
    signature: &SchnorrSignature,
) -> Result<(), Error> {
    let key = k256::schnorr::VerifyingKey::from_bytes(x_only_key)
        .map_err(|_| Error::OutputCheck("x-only key does not parse"))?;
    let signature = k256::schnorr::Signature::try_from(signature.as_slice())
        .map_err(|_| Error::OutputCheck("signature does not parse"))?;
    key.verify_raw(message, &signature)
        .map_err(|_| Error::OutputCheck("BIP-340 signature does not verify"))
}

/// The Ed25519 public key (32 bytes, RFC 8032 encoding) of the child key at
/// `path`.
pub fn ed25519_public_key(
    key: &crate::share::PublicKeyInfo<Ed25519>,
    path: &[u32],
) -> Result<[u8; 32], Error> {
    encode_ed25519_point(&key.derive_public_key(path)?)
}

fn encode_ed25519_point(point: &NonZero<Point<Ed25519>>) -> Result<[u8; 32], Error> {
    point
        .to_bytes(true)
        .as_ref()
        .try_into()
        .map_err(|_| Error::OutputCheck("ed25519 point length"))
}

/// Runs this party's side of a FROST Ed25519 signing of `message` (any
/// length) with the child key at `path`.
pub async fn sign_ed25519<M, R>(
    share: &KeyShare<Ed25519>,
    run: &SignRun,
    message: &[u8],
    path: &[u32],
    party: M,
    rng: &mut R,
) -> Result<SchnorrSignature, Error>
where
    M: Mpc<ProtocolMessage = SignMsg<Ed25519>>,
    R: RngCore + CryptoRng,
{
    run.check_share(share)?;
    let session = run.session(ProtocolKind::SignEd25519, Duration::MAX)?;
    let signature = givre::signing::<Ed25519Suite>(
        session.me,
        &share.core,
        run.quorum.keygen_indices(),
        message,
    )
    .set_derivation_path(path.iter().copied())
    .map_err(|_| Error::InvalidArgument("derivation path must be non-hardened (< 2^31)"))?
    .sign(rng, party)
    .await
    .map_err(|error| Error::protocol(ProtocolKind::SignEd25519, error))?;
    let child = share.derive_public_key(path)?;
    let normalized = NormalizedPoint::<Ed25519Suite, _>::try_normalize(child)
        .map_err(|_| Error::OutputCheck("ed25519 key does not normalise"))?;
    signature
        .verify(&normalized, message)
        .map_err(|_| Error::OutputCheck("Ed25519 signature does not verify"))?;
    let mut bytes = [0u8; 64];
    signature.write_to_slice(&mut bytes);
    Ok(bytes)
}
