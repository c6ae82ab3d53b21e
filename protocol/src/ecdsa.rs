//! Threshold ECDSA on secp256k1 (CGGMP21, cggmp21 0.6.3): aux-info
//! generation and full signing.
//!
//! Only full signing exists here. Presignatures with HD derivation or bare
//! digests are unsafe (RUSTSEC-2025-0127) and Custos signs both, so no
//! presignature code path is written; `tests/no_presignatures.rs` fails the
//! build's tests if one appears.
//!
//! Every signature is normalised to low `s`, checked against the derived
//! public key with k256 (not with cggmp21) before it is returned, and carries
//! its recovery id.

use std::time::Duration;

use generic_ec::{NonZero, Point, Scalar};
use k256::ecdsa::{RecoveryId, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use round_based::Mpc;
use sha2::Sha256;
use sha3::{Digest, Keccak256};

use crate::driver::Session;
use crate::ids::{
    Committee, ExecutionId, KeyGeneration, PartyId, ProtocolKind, Quorum, RequestId, RunDescriptor,
    WalletId,
};
use crate::primes::{AuxInfoProgress, Primes};
use crate::share::{AuxInfo, KeyShare};
use crate::{Error, Secp256k1, SecurityLevel};

/// Messages of aux-info generation.
pub type AuxInfoMsg = cggmp21::key_refresh::msg::aux_only::Msg<Sha256, SecurityLevel>;
/// Messages of ECDSA signing.
pub type SignMsg = cggmp21::signing::msg::Msg<Secp256k1, Sha256>;

/// Aux-info generation for a committee. Aux info is not tied to a wallet;
/// its runs use the all-zero wallet id.
#[derive(Clone, Debug)]
pub struct AuxInfoRun {
    /// The request that asked for it.
    pub request: RequestId,
    /// The committee that will use it.
    pub committee: Committee,
    /// This party.
    pub me: PartyId,
    /// The coordinator's retry counter.
    pub attempt: u32,
}

impl AuxInfoRun {
    /// The session this party runs.
    pub fn session(&self, deadline: Duration) -> Result<Session, Error> {
        let me = self
            .committee
            .index_of(&self.me)
            .ok_or(Error::InvalidArgument("this party is not in the committee"))?;
        let id = ExecutionId::derive(&RunDescriptor {
            kind: ProtocolKind::AuxInfo,
            request: self.request,
            wallet: WalletId([0; 16]),
            participants: self.committee.members(),
            generation: KeyGeneration(0),
            attempt: self.attempt,
            context: &[],
        });
        Ok(Session {
            kind: ProtocolKind::AuxInfo,
            id,
            participants: self.committee.members().to_vec(),
            me,
            deadline,
        })
    }
}

/// Runs this party's side of aux-info generation, consuming one set of
/// pooled primes. Logs each round as it starts (it takes tens of seconds).
pub async fn aux_info<M, R>(
    run: &AuxInfoRun,
    primes: Primes,
    party: M,
    rng: &mut R,
) -> Result<AuxInfo, Error>
where
    M: Mpc<ProtocolMessage = AuxInfoMsg>,
    R: RngCore + CryptoRng,
{
    let session = run.session(Duration::MAX)?;
    let mut progress = AuxInfoProgress::new(session.me);
    let aux = cggmp21::aux_info_gen(
        session.id.as_cggmp(),
        session.me,
        run.committee.n(),
        primes.into_inner(),
    )
    .set_progress_tracer(&mut progress)
    .start(rng, party)
    .await
    .map_err(|error| Error::protocol(ProtocolKind::AuxInfo, error))?;
    Ok(AuxInfo {
        committee: run.committee.clone(),
        index: session.me,
        aux,
    })
}

/// One signing run as the coordinator describes it in a job.
#[derive(Clone, Debug)]
pub struct SignRun {
    /// The wallet whose key signs.
    pub wallet: WalletId,
    /// The signing request (retries keep it).
    pub request: RequestId,
    /// The key generation that signs.
    pub generation: KeyGeneration,
    /// The signers, exactly `t` holders.
    pub quorum: Quorum,
    /// This party.
    pub me: PartyId,
    /// The coordinator's retry counter.
    pub attempt: u32,
}

impl SignRun {
    /// The session this party runs for protocol `kind` (a signing kind).
    pub fn session(&self, kind: ProtocolKind, deadline: Duration) -> Result<Session, Error> {
        let me = self
            .quorum
            .signer_index_of(&self.me)
            .ok_or(Error::InvalidArgument("this party is not in the quorum"))?;
        let id = ExecutionId::derive(&RunDescriptor {
            kind,
            request: self.request,
            wallet: self.wallet,
            participants: self.quorum.members(),
            generation: self.generation,
            attempt: self.attempt,
            context: &[],
        });
        Ok(Session {
            kind,
            id,
            participants: self.quorum.members().to_vec(),
            me,
            deadline,
        })
    }

    /// Checks that `share` is this run's key, generation and holder.
    pub(crate) fn check_share<E: crate::share::KeyCurve>(
        &self,
        share: &KeyShare<E>,
    ) -> Result<(), Error> {
        if share.wallet != self.wallet {
            return Err(Error::InvalidArgument("key share is of another wallet"));
        }
        if share.generation != self.generation {
            return Err(Error::InvalidArgument("key share is of another generation"));
        }
        if share.holder() != Some(self.me) {
            return Err(Error::InvalidArgument("key share belongs to another party"));
        }
        for (member, &index) in self
            .quorum
            .members()
            .iter()
            .zip(self.quorum.keygen_indices())
        {
            if share.committee.member(index) != Some(*member) {
                return Err(Error::InvalidArgument(
                    "quorum is not of the share's committee",
                ));
            }
        }
        if self.quorum.len() != share.threshold() {
            return Err(Error::InvalidArgument(
                "quorum size differs from the threshold",
            ));
        }
        Ok(())
    }
}

/// An ECDSA signature over secp256k1 with low `s` and its recovery id.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EcdsaSignature {
    /// `r`, big-endian.
    pub r: [u8; 32],
    /// `s`, big-endian, at most n/2.
    pub s: [u8; 32],
    /// Recovery id (0 or 1; 2 and 3 occur with negligible probability):
    /// which of the candidate points is the signer's public key.
    pub recovery_id: u8,
}

impl EcdsaSignature {
    /// `r || s || v` with `v` the recovery id (0 or 1), the form Ethereum
    /// transactions carry before chain-specific offsets.
    pub fn to_rsv(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[..32].copy_from_slice(&self.r);
        out[32..64].copy_from_slice(&self.s);
        out[64] = self.recovery_id;
        out
    }

    /// ASN.1 DER, as Bitcoin (before the sighash byte) and X.509 carry it.
    pub fn to_der(&self) -> Vec<u8> {
        match k256::ecdsa::Signature::from_scalars(self.r, self.s) {
            Ok(signature) => signature.to_der().as_bytes().to_vec(),
            // r and s come from a verified signature: both are in range.
            Err(_) => Vec::new(),
        }
    }
}

/// Runs this party's side of a full CGGMP21 signing of `digest` (a 32-byte
/// message hash, for instance an EVM transaction hash or a Bitcoin sighash)
/// with the child key at `path`.
pub async fn sign<M, R>(
    share: &KeyShare<Secp256k1>,
    aux: &AuxInfo,
    run: &SignRun,
    digest: &[u8; 32],
    path: &[u32],
    party: M,
    rng: &mut R,
) -> Result<EcdsaSignature, Error>
where
    M: Mpc<ProtocolMessage = SignMsg>,
    R: RngCore + CryptoRng,
{
    run.check_share(share)?;
    let session = run.session(ProtocolKind::SignEcdsa, Duration::MAX)?;
    let full_share = aux.complete(share)?;
    let public_key = share.derive_public_key(path)?;
    let message =
        cggmp21::DataToSign::from_scalar(Scalar::<Secp256k1>::from_be_bytes_mod_order(digest));
    let signature = cggmp21::signing(
        session.id.as_cggmp(),
        session.me,
        run.quorum.keygen_indices(),
        &full_share,
    )
    .set_derivation_path(path.iter().copied())
    .map_err(|_| Error::InvalidArgument("derivation path must be non-hardened (< 2^31)"))?
    .sign(rng, party, message)
    .await
    .map_err(|error| Error::protocol(ProtocolKind::SignEcdsa, error))?
    .normalize_s();
    let mut rs = [0u8; 64];
    signature.write_to_slice(&mut rs);
    let (r, s) = rs.split_at(32);
    let (r, s): ([u8; 32], [u8; 32]) = (
        r.try_into()
            .map_err(|_| Error::OutputCheck("signature length"))?,
        s.try_into()
            .map_err(|_| Error::OutputCheck("signature length"))?,
    );
    let recovery_id = recovery_id(&public_key, digest, &r, &s)?;
    Ok(EcdsaSignature { r, s, recovery_id })
}

/// Verifies `(r, s)` over `digest` with k256 and finds the recovery id that
/// yields `public_key`. Fails if the signature does not verify or is high-s.
pub fn recovery_id(
    public_key: &NonZero<Point<Secp256k1>>,
    digest: &[u8; 32],
    r: &[u8; 32],
    s: &[u8; 32],
) -> Result<u8, Error> {
    use k256::ecdsa::signature::hazmat::PrehashVerifier;

    let expected = VerifyingKey::from_sec1_bytes(&public_key.to_bytes(true))
        .map_err(|_| Error::OutputCheck("public key does not parse"))?;
    let signature = k256::ecdsa::Signature::from_scalars(*r, *s)
        .map_err(|_| Error::OutputCheck("signature scalars out of range"))?;
    if signature.normalize_s().is_some() {
        return Err(Error::OutputCheck("signature is not low-s"));
    }
    expected
        .verify_prehash(digest, &signature)
        .map_err(|_| Error::OutputCheck("signature does not verify under the public key"))?;
    (0u8..4)
        .find(|&candidate| {
            RecoveryId::from_byte(candidate)
                .and_then(|id| VerifyingKey::recover_from_prehash(digest, &signature, id).ok())
                .is_some_and(|recovered| recovered == expected)
        })
        .ok_or(Error::OutputCheck("no recovery id yields the public key"))
}

/// The Ethereum address of a secp256k1 public key: the last 20 bytes of the
/// Keccak-256 hash of the uncompressed point without its prefix.
pub fn ethereum_address(public_key: &NonZero<Point<Secp256k1>>) -> [u8; 20] {
    let uncompressed = public_key.to_bytes(false);
    let hash = Keccak256::digest(uncompressed.get(1..).unwrap_or_default());
    let mut address = [0u8; 20];
    address.copy_from_slice(hash.get(12..).unwrap_or(&[0u8; 20]));
    address
}
