//! Distributed key generation: one threshold DKG (CGGMP21's, which givre
//! shares) yields a key that signs ECDSA and BIP-340 on secp256k1, or Ed25519
//! on edwards25519. HD derivation is always on: the DKG also agrees on a
//! chain code.

use std::time::Duration;

use rand_core::{CryptoRng, RngCore};
use round_based::Mpc;
use sha2::Sha256;

use crate::driver::Session;
use crate::ids::{
    Committee, ExecutionId, KeyGeneration, PartyId, RequestId, RunDescriptor, WalletId,
};
use crate::share::{KeyCurve, KeyShare};
use crate::{Error, SecurityLevel};

/// Messages of the threshold DKG on curve `E`.
pub type KeygenMsg<E> = cggmp21::keygen::ThresholdMsg<E, SecurityLevel, Sha256>;

/// A DKG as the coordinator describes it in a job.
#[derive(Clone, Debug)]
pub struct KeygenRun {
    /// The wallet being created.
    pub wallet: WalletId,
    /// The request that asked for it.
    pub request: RequestId,
    /// Who will hold shares.
    pub committee: Committee,
    /// Signers needed to sign (2 <= t <= n).
    pub threshold: u16,
    /// This party.
    pub me: PartyId,
    /// The coordinator's retry counter.
    pub attempt: u32,
}

impl KeygenRun {
    /// The session this party runs, after checking the parameters.
    pub fn session<E: KeyCurve>(&self, deadline: Duration) -> Result<Session, Error> {
        let me = self
            .committee
            .index_of(&self.me)
            .ok_or(Error::InvalidArgument("this party is not in the committee"))?;
        if self.threshold < 2 || self.threshold > self.committee.n() {
            return Err(Error::InvalidArgument("threshold must be within 2..=n"));
        }
        Ok(Session {
            kind: E::KEYGEN,
            id: self.execution_id::<E>(),
            participants: self.committee.members().to_vec(),
            me,
            deadline,
        })
    }

    fn execution_id<E: KeyCurve>(&self) -> ExecutionId {
        ExecutionId::derive(&RunDescriptor {
            kind: E::KEYGEN,
            request: self.request,
            wallet: self.wallet,
            participants: self.committee.members(),
            generation: KeyGeneration(0),
            attempt: self.attempt,
            context: &self.threshold.to_be_bytes(),
        })
    }
}

/// Runs this party's side of the DKG. The share it returns has generation 0.
pub async fn keygen<E, M, R>(run: &KeygenRun, party: M, rng: &mut R) -> Result<KeyShare<E>, Error>
where
    E: KeyCurve,
    M: Mpc<ProtocolMessage = KeygenMsg<E>>,
    R: RngCore + CryptoRng,
{
    let session = run.session::<E>(Duration::MAX)?;
    let eid = session.id;
    let core = cggmp21::keygen::<E>(eid.as_cggmp(), session.me, run.committee.n())
        .set_threshold(run.threshold)
        .hd_wallet(true)
        .start(rng, party)
        .await
        .map_err(|error| Error::protocol(E::KEYGEN, error))?;
    KeyShare::new(run.wallet, KeyGeneration(0), run.committee.clone(), core)
}
