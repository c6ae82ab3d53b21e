//! One function per Custos protocol. Each runs every party of one protocol
//! run in this process, each party on its own tokio task, through the real
//! [`driver::run`] (envelopes, session checks, postcard payloads) over a
//! fault-free [`sim`] network: the way `tests/support/mod.rs` runs them.
//!
//! Every party's inputs (its share, run description, primes) are built by an
//! `*_inputs` function before the clock starts; the async function that
//! consumes them is what the benchmark times. A party that fails panics the
//! benchmark: timing a failed run would measure nothing.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use custos_protocol::ecdsa::{self, AuxInfoRun, EcdsaSignature, SignRun};
use custos_protocol::keygen::{self, KeygenMsg, KeygenRun};
use custos_protocol::primes::Primes;
use custos_protocol::reshare::{self, ReshareMsg, ReshareOutput, ReshareRun};
use custos_protocol::schnorr::{self, SchnorrSignature};
use custos_protocol::share::{AuxInfo, KeyCurve, KeyShare};
use custos_protocol::sim::{self, Endpoint, Faults};
use custos_protocol::{
    driver, Committee, Ed25519, Error, PartyId, ProtocolKind, Quorum, RequestId, Secp256k1,
    WalletId,
};
use rand_core::OsRng;

/// Far above any run here, even on a loaded machine: a deadline that fires
/// aborts the benchmark instead of skewing it.
const DEADLINE: Duration = Duration::from_secs(600);

/// Every key of the benchmark belongs to this wallet.
const WALLET: WalletId = WalletId([0xBE; 16]);

/// Signing uses the wallet's root key, as the ZF peer does (it has no HD
/// derivation); a child path would add a few point operations per party.
const ROOT_PATH: &[u32] = &[];

/// The committee of test parties `0..n_parties`: the committee the aux-info
/// fixtures `testdata/aux-info-n{n}.json` were generated for.
pub fn test_committee(n_parties: u16) -> Committee {
    Committee::new((0..n_parties).map(sim::test_party)).expect("a valid test committee")
}

/// A request id per iteration, so every run gets a fresh execution id, as
/// in production.
fn request(iteration: usize) -> RequestId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(iteration as u64).to_be_bytes());
    RequestId(id)
}

/// Runs `party(input, endpoint)` for every input, one participant each in
/// input order, on a fresh fault-free network; returns the outputs in the
/// same order.
async fn run_every_party<Input, Output, Fut>(
    inputs: Vec<Input>,
    mut party: impl FnMut(Input, Endpoint) -> Fut,
) -> Vec<Output>
where
    Fut: Future<Output = Result<Output, Error>> + Send + 'static,
    Output: Send + 'static,
{
    let n_parties = u16::try_from(inputs.len()).expect("at most u16::MAX parties");
    let mut inputs = inputs.into_iter();
    let (outputs, _fault_log) = sim::run_parties(n_parties, Faults::none(), 0, |_, endpoint| {
        party(inputs.next().expect("one input per party"), endpoint)
    })
    .await;
    outputs
        .into_iter()
        .enumerate()
        .map(|(party_idx, output)| {
            output.unwrap_or_else(|error| panic!("party {party_idx} failed: {error}"))
        })
        .collect()
}

/// The output every party agreed on (all signers return the signature).
fn agreed<T: PartialEq + Debug>(outputs: Vec<T>) -> T {
    assert!(
        outputs.windows(2).all(|pair| pair[0] == pair[1]),
        "parties disagree on the output: {outputs:?}"
    );
    outputs.into_iter().next().expect("at least one party")
}

// ---------------------------------------------------------------------------
// Distributed key generation

pub fn keygen_inputs(committee: &Committee, threshold: u16, iteration: usize) -> Vec<KeygenRun> {
    committee
        .members()
        .iter()
        .map(|&me| KeygenRun {
            wallet: WALLET,
            request: request(iteration),
            committee: committee.clone(),
            threshold,
            me,
            attempt: 0,
        })
        .collect()
}

/// A threshold DKG on curve `E`; the shares in keygen-index order.
pub async fn keygen<E: KeyCurve>(runs: Vec<KeygenRun>) -> Vec<KeyShare<E>>
where
    KeygenMsg<E>: Send,
{
    run_every_party(runs, |run, endpoint| async move {
        let session = run.session::<E>(DEADLINE)?;
        let mut rng = OsRng;
        driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
            keygen::keygen::<E, _, _>(&run, party, &mut rng)
        })
        .await
        .0
    })
    .await
}

// ---------------------------------------------------------------------------
// CGGMP21 aux info

/// One set of `primes` per member of `committee`, cloned: each run consumes
/// its primes, and a benchmark may reuse the same ones.
pub fn aux_info_inputs(
    committee: &Committee,
    primes: &[Primes],
    iteration: usize,
) -> Vec<(AuxInfoRun, Primes)> {
    assert_eq!(
        primes.len(),
        committee.members().len(),
        "one set of primes per party"
    );
    committee
        .members()
        .iter()
        .zip(primes)
        .map(|(&me, primes)| {
            let run = AuxInfoRun {
                request: request(iteration),
                committee: committee.clone(),
                me,
                attempt: 0,
            };
            (run, primes.clone())
        })
        .collect()
}

pub async fn aux_info(inputs: Vec<(AuxInfoRun, Primes)>) -> Vec<AuxInfo> {
    run_every_party(inputs, |(run, primes), endpoint| async move {
        let session = run.session(DEADLINE)?;
        let mut rng = OsRng;
        driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
            ecdsa::aux_info(&run, primes, party, &mut rng)
        })
        .await
        .0
    })
    .await
}

// ---------------------------------------------------------------------------
// Signing

/// The signing run of the holders at keygen indices `quorum`, as holder
/// `share.holder()` sees it.
fn sign_run<E: KeyCurve>(share: &KeyShare<E>, quorum: &[u16], iteration: usize) -> SignRun {
    let members = quorum
        .iter()
        .map(|&keygen_index| share.committee.member(keygen_index).expect("quorum member"));
    SignRun {
        wallet: share.wallet,
        request: request(iteration),
        generation: share.generation,
        quorum: Quorum::new(&share.committee, share.threshold(), members).expect("a valid quorum"),
        me: share
            .holder()
            .expect("the share's holder is in its committee"),
        attempt: 0,
    }
}

/// What one ECDSA signer brings to a signing run.
pub struct EcdsaSigner {
    share: KeyShare<Secp256k1>,
    aux: AuxInfo,
    run: SignRun,
}

/// The signers at keygen indices `quorum`; `shares` and `aux` are indexed by
/// keygen index.
pub fn ecdsa_inputs(
    shares: &[KeyShare<Secp256k1>],
    aux: &[AuxInfo],
    quorum: &[u16],
    iteration: usize,
) -> Vec<EcdsaSigner> {
    quorum
        .iter()
        .map(|&keygen_index| {
            let share = shares[usize::from(keygen_index)].clone();
            let run = sign_run(&share, quorum, iteration);
            EcdsaSigner {
                share,
                aux: aux[usize::from(keygen_index)].clone(),
                run,
            }
        })
        .collect()
}

/// CGGMP21 full signing of a 32-byte digest.
pub async fn sign_ecdsa(signers: Vec<EcdsaSigner>, digest: [u8; 32]) -> EcdsaSignature {
    let signatures = run_every_party(signers, |signer, endpoint| async move {
        let session = signer.run.session(ProtocolKind::SignEcdsa, DEADLINE)?;
        let mut rng = OsRng;
        driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
            let EcdsaSigner { share, aux, run } = &signer;
            ecdsa::sign(share, aux, run, &digest, ROOT_PATH, party, &mut rng)
        })
        .await
        .0
    })
    .await;
    agreed(signatures)
}

/// What one FROST signer brings to a signing run.
pub struct SchnorrSigner<E: KeyCurve> {
    share: KeyShare<E>,
    run: SignRun,
}

/// The signers at keygen indices `quorum`; `shares` is indexed by keygen
/// index.
pub fn schnorr_inputs<E: KeyCurve>(
    shares: &[KeyShare<E>],
    quorum: &[u16],
    iteration: usize,
) -> Vec<SchnorrSigner<E>> {
    quorum
        .iter()
        .map(|&keygen_index| {
            let share = shares[usize::from(keygen_index)].clone();
            let run = sign_run(&share, quorum, iteration);
            SchnorrSigner { share, run }
        })
        .collect()
}

/// FROST BIP-340 signing with the Taproot key-path tweak (no script tree).
pub async fn sign_taproot(
    signers: Vec<SchnorrSigner<Secp256k1>>,
    sighash: [u8; 32],
) -> SchnorrSignature {
    let signatures = run_every_party(signers, |signer, endpoint| async move {
        let session = signer.run.session(ProtocolKind::SignTaproot, DEADLINE)?;
        let mut rng = OsRng;
        driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
            let SchnorrSigner { share, run } = &signer;
            schnorr::sign_taproot(share, run, &sighash, ROOT_PATH, party, &mut rng)
        })
        .await
        .0
    })
    .await;
    agreed(signatures)
}

/// FROST Ed25519 signing of a 32-byte message.
pub async fn sign_ed25519(
    signers: Vec<SchnorrSigner<Ed25519>>,
    message: [u8; 32],
) -> SchnorrSignature {
    let signatures = run_every_party(signers, |signer, endpoint| async move {
        let session = signer.run.session(ProtocolKind::SignEd25519, DEADLINE)?;
        let mut rng = OsRng;
        driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
            let SchnorrSigner { share, run } = &signer;
            schnorr::sign_ed25519(share, run, &message, ROOT_PATH, party, &mut rng)
        })
        .await
        .0
    })
    .await;
    agreed(signatures)
}

// ---------------------------------------------------------------------------
// Resharing

/// Every participant of a resharing from the old holders at keygen indices
/// `dealers` to `new_committee` with threshold `new_threshold`, in session
/// order: its run and, if it deals, its current share.
pub fn reshare_inputs<E: KeyCurve>(
    old_shares: &[KeyShare<E>],
    dealers: &[u16],
    new_committee: &Committee,
    new_threshold: u16,
    iteration: usize,
) -> Vec<(ReshareRun<E>, Option<KeyShare<E>>)> {
    let old = old_shares
        .first()
        .expect("at least one old share")
        .public_info();
    let dealers: Vec<PartyId> = dealers
        .iter()
        .map(|&keygen_index| {
            old.committee
                .member(keygen_index)
                .expect("dealer is an old holder")
        })
        .collect();
    let template = ReshareRun {
        request: request(iteration),
        old,
        me: *dealers.first().expect("at least one dealer"),
        dealers,
        new_committee: new_committee.clone(),
        new_threshold,
        attempt: 0,
    };
    let participants = template
        .session(DEADLINE)
        .expect("a valid resharing")
        .participants;
    participants
        .into_iter()
        .map(|me| {
            let share = template
                .dealers
                .contains(&me)
                .then(|| {
                    old_shares
                        .iter()
                        .find(|share| share.holder() == Some(me))
                        .cloned()
                })
                .flatten();
            (
                ReshareRun {
                    me,
                    ..template.clone()
                },
                share,
            )
        })
        .collect()
}

/// The resharing protocol alone (ECDSA keys would then need aux info for
/// the new committee; that is [`aux_info`]'s cost). Returns the new shares.
pub async fn reshare<E: KeyCurve>(
    inputs: Vec<(ReshareRun<E>, Option<KeyShare<E>>)>,
) -> Vec<KeyShare<E>>
where
    ReshareMsg<E>: Send,
{
    let new_committee_size = inputs
        .first()
        .map_or(0, |(run, _)| run.new_committee.members().len());
    let outputs = run_every_party(inputs, |(run, share), endpoint| async move {
        let session = run.session(DEADLINE)?;
        let mut rng = OsRng;
        driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
            reshare::reshare(&run, share.as_ref(), party, &mut rng)
        })
        .await
        .0
    })
    .await;
    let new_shares: Vec<KeyShare<E>> = outputs
        .into_iter()
        .filter_map(|output| match output {
            ReshareOutput::NewShare(share) => Some(share),
            ReshareOutput::Dealt => None,
        })
        .collect();
    assert_eq!(
        new_shares.len(),
        new_committee_size,
        "every new holder gets a share"
    );
    new_shares
}
