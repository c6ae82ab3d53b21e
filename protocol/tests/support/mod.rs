//! Helpers shared by the protocol tests: committees of test parties, the
//! committed fixtures, and one-call runs of each protocol where every party
//! runs through the real [`driver`] over the in-memory [`sim`] network.
//!
//! Fixtures: `testdata/aux-info-n{3,4,5}.json` and `testdata/primes.json` were
//! generated once with this project's own code,
//! `cargo run --release -p custos-protocol --features sim --example generate-fixtures -- protocol/testdata`
//! (Paillier primes from `PrimePool::refill`, aux info from `ecdsa::aux_info`
//! over the driver). Aux info is per committee: `aux-info-nN.json` belongs to
//! the committee of test parties `0..N`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use custos_protocol::ecdsa::{self, AuxInfoRun, EcdsaSignature, SignRun};
use custos_protocol::keygen::{self, KeygenRun};
use custos_protocol::primes::Primes;
use custos_protocol::reshare::{self, DealerFault, ReshareOutput, ReshareRun};
use custos_protocol::schnorr::{self, SchnorrSignature};
use custos_protocol::share::{AuxInfo, KeyCurve, KeyShare};
use custos_protocol::sim::{self, Faults};
use custos_protocol::{
    driver, Committee, Ed25519, Error, KeyGeneration, PartyId, Quorum, RequestId, Secp256k1,
    WalletId,
};

/// Generous: debug builds with optimised dependencies, on a loaded 2-core box.
pub const ECDSA_DEADLINE: Duration = Duration::from_secs(120);
pub const FAST_DEADLINE: Duration = Duration::from_secs(20);

pub const WALLET: WalletId = WalletId([0x57; 16]);

pub fn party(index: u16) -> PartyId {
    sim::test_party(index)
}

/// The committee of test parties with the given numbers.
pub fn committee_of(parties: &[u16]) -> Committee {
    Committee::new(parties.iter().map(|&index| party(index))).unwrap()
}

pub fn committee(n: u16) -> Committee {
    committee_of(&(0..n).collect::<Vec<_>>())
}

fn testdata(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("fixture {}: {error}", path.display()))
}

/// Aux info of the committee of test parties `0..n` (n = 3, 4 or 5), by index.
pub fn aux_info(n: u16) -> Vec<AuxInfo> {
    serde_json::from_slice(&testdata(&format!("aux-info-n{n}.json"))).unwrap()
}

/// Three spare sets of primes.
pub fn spare_primes() -> Vec<Primes> {
    serde_json::from_slice(&testdata("primes.json")).unwrap()
}

pub fn request(byte: u8) -> RequestId {
    RequestId([byte; 16])
}

/// Runs a DKG among the given test parties; returns shares by keygen index.
pub async fn keygen_of<E: KeyCurve>(
    parties: &[u16],
    threshold: u16,
    faults: Faults,
    seed: u64,
    deadline: Duration,
) -> Vec<Result<KeyShare<E>, Error>>
where
    keygen::KeygenMsg<E>: Send,
{
    let committee = committee_of(parties);
    let n = committee.n();
    let (outputs, _) = sim::run_parties(n, faults, seed, |index, endpoint| {
        let run = KeygenRun {
            wallet: WALLET,
            request: request(1),
            committee: committee.clone(),
            threshold,
            me: committee.member(index).unwrap(),
            attempt: 0,
        };
        async move {
            let session = run.session::<E>(deadline)?;
            let mut rng = rand_core::OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                keygen::keygen::<E, _, _>(&run, party, &mut rng)
            })
            .await
            .0
        }
    })
    .await;
    outputs
}

pub async fn keygen<E: KeyCurve>(n: u16, threshold: u16) -> Vec<KeyShare<E>>
where
    keygen::KeygenMsg<E>: Send,
{
    let parties: Vec<u16> = (0..n).collect();
    keygen_of::<E>(&parties, threshold, Faults::none(), 0, FAST_DEADLINE)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// The signing run of the holders with keygen indices `signers`.
pub fn sign_run<E: KeyCurve>(
    share: &KeyShare<E>,
    signers: &[u16],
    me: PartyId,
    request_byte: u8,
) -> SignRun {
    let members = signers
        .iter()
        .map(|&index| share.committee.member(index).unwrap());
    SignRun {
        wallet: share.wallet,
        request: request(request_byte),
        generation: share.generation,
        quorum: Quorum::new(&share.committee, share.threshold(), members).unwrap(),
        me,
        attempt: 0,
    }
}

/// ECDSA-signs `digest` with the holders at keygen indices `signers`.
/// `shares` and `aux` are indexed by keygen index.
pub async fn sign_ecdsa_with(
    shares: &[KeyShare<Secp256k1>],
    aux: &[AuxInfo],
    signers: &[u16],
    digest: [u8; 32],
    path: &[u32],
    faults: Faults,
    seed: u64,
) -> Vec<Result<EcdsaSignature, Error>> {
    sign_ecdsa_within(
        ECDSA_DEADLINE,
        shares,
        aux,
        signers,
        digest,
        path,
        faults,
        seed,
    )
    .await
}

/// [`sign_ecdsa_with`] with a chosen deadline.
#[allow(clippy::too_many_arguments)]
pub async fn sign_ecdsa_within(
    deadline: Duration,
    shares: &[KeyShare<Secp256k1>],
    aux: &[AuxInfo],
    signers: &[u16],
    digest: [u8; 32],
    path: &[u32],
    faults: Faults,
    seed: u64,
) -> Vec<Result<EcdsaSignature, Error>> {
    let path = path.to_vec();
    let (outputs, _) = sim::run_parties(signers.len() as u16, faults, seed, |signer, endpoint| {
        let keygen_index = usize::from(signers[usize::from(signer)]);
        let share = shares[keygen_index].clone();
        let aux = aux[keygen_index].clone();
        let run = sign_run(&share, signers, share.holder().unwrap(), 2);
        let path = path.clone();
        async move {
            let session = run.session(custos_protocol::ProtocolKind::SignEcdsa, deadline)?;
            let mut rng = rand_core::OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                ecdsa::sign(&share, &aux, &run, &digest, &path, party, &mut rng)
            })
            .await
            .0
        }
    })
    .await;
    outputs
}

pub async fn sign_ecdsa(
    shares: &[KeyShare<Secp256k1>],
    aux: &[AuxInfo],
    signers: &[u16],
    digest: [u8; 32],
    path: &[u32],
) -> EcdsaSignature {
    let signatures: Vec<EcdsaSignature> =
        sign_ecdsa_with(shares, aux, signers, digest, path, Faults::none(), 0)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    // Every signer outputs the same signature.
    assert!(signatures.windows(2).all(|pair| pair[0] == pair[1]));
    signatures[0]
}

pub async fn sign_taproot_with(
    shares: &[KeyShare<Secp256k1>],
    signers: &[u16],
    message: [u8; 32],
    path: &[u32],
    faults: Faults,
    seed: u64,
) -> Vec<Result<SchnorrSignature, Error>> {
    let path = path.to_vec();
    let (outputs, _) = sim::run_parties(signers.len() as u16, faults, seed, |signer, endpoint| {
        let share = shares[usize::from(signers[usize::from(signer)])].clone();
        let run = sign_run(&share, signers, share.holder().unwrap(), 3);
        let path = path.clone();
        async move {
            let session = run.session(custos_protocol::ProtocolKind::SignTaproot, FAST_DEADLINE)?;
            let mut rng = rand_core::OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                schnorr::sign_taproot(&share, &run, &message, &path, party, &mut rng)
            })
            .await
            .0
        }
    })
    .await;
    outputs
}

pub async fn sign_taproot(
    shares: &[KeyShare<Secp256k1>],
    signers: &[u16],
    message: [u8; 32],
    path: &[u32],
) -> SchnorrSignature {
    let signatures: Vec<_> = sign_taproot_with(shares, signers, message, path, Faults::none(), 0)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(signatures.windows(2).all(|pair| pair[0] == pair[1]));
    signatures[0]
}

pub async fn sign_ed25519(
    shares: &[KeyShare<Ed25519>],
    signers: &[u16],
    message: &[u8],
    path: &[u32],
) -> SchnorrSignature {
    let path = path.to_vec();
    let message = message.to_vec();
    let (outputs, _) = sim::run_parties(
        signers.len() as u16,
        Faults::none(),
        0,
        |signer, endpoint| {
            let share = shares[usize::from(signers[usize::from(signer)])].clone();
            let run = sign_run(&share, signers, share.holder().unwrap(), 4);
            let path = path.clone();
            let message = message.clone();
            async move {
                let session =
                    run.session(custos_protocol::ProtocolKind::SignEd25519, FAST_DEADLINE)?;
                let mut rng = rand_core::OsRng;
                driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                    schnorr::sign_ed25519(&share, &run, &message, &path, party, &mut rng)
                })
                .await
                .0
            }
        },
    )
    .await;
    let signatures: Vec<SchnorrSignature> = outputs.into_iter().map(Result::unwrap).collect();
    assert!(signatures.windows(2).all(|pair| pair[0] == pair[1]));
    signatures[0]
}

/// Reshares from the holders at old keygen indices `dealers` to the test
/// parties `new_parties` with threshold `new_threshold`. Returns, for each
/// participant in session order, its party id and its outcome.
pub async fn reshare_with<E: KeyCurve>(
    old_shares: &[KeyShare<E>],
    dealers: &[u16],
    new_parties: &[u16],
    new_threshold: u16,
    fault: Option<(u16, DealerFault)>,
) -> Vec<(PartyId, Result<ReshareOutput<E>, Error>)>
where
    reshare::ReshareMsg<E>: Send,
{
    let old = old_shares[0].public_info();
    let new_committee = committee_of(new_parties);
    let template = ReshareRun {
        request: request(5),
        old: old.clone(),
        dealers: dealers
            .iter()
            .map(|&index| old.committee.member(index).unwrap())
            .collect(),
        new_committee,
        new_threshold,
        me: party(0),
        attempt: 0,
    };
    let first_dealer = ReshareRun {
        me: template.dealers[0],
        ..template.clone()
    };
    let participants = match first_dealer.session(FAST_DEADLINE) {
        Ok(session) => session.participants,
        Err(error) => return vec![(first_dealer.me, Err(error))],
    };
    let (outputs, _) = sim::run_parties(
        participants.len() as u16,
        Faults::none(),
        0,
        |index, endpoint| {
            let me = participants[usize::from(index)];
            let run = ReshareRun {
                me,
                ..template.clone()
            };
            let share = old_shares
                .iter()
                .find(|share| share.holder() == Some(me))
                .cloned();
            let is_dealer = run.dealers.contains(&me);
            let fault = fault.and_then(|(dealer, fault)| {
                (old.committee.member(dealer) == Some(me)).then_some(fault)
            });
            async move {
                let session = run.session(FAST_DEADLINE)?;
                let share = if is_dealer { share } else { None };
                let mut rng = rand_core::OsRng;
                let result = driver::run(
                    session,
                    endpoint.incoming,
                    endpoint.outgoing,
                    |party| async {
                        match fault {
                            Some(fault) => {
                                reshare::reshare_with_fault(
                                    &run,
                                    share.as_ref(),
                                    party,
                                    &mut rng,
                                    fault,
                                )
                                .await
                            }
                            None => reshare::reshare(&run, share.as_ref(), party, &mut rng).await,
                        }
                    },
                )
                .await
                .0;
                result.map(|output| (me, output))
            }
        },
    )
    .await;
    outputs
        .into_iter()
        .zip(&participants)
        .map(|(result, &me)| (me, result.map(|(_, output)| output)))
        .collect()
}

/// Reshares and returns the new shares in new keygen-index order.
pub async fn reshare<E: KeyCurve>(
    old_shares: &[KeyShare<E>],
    dealers: &[u16],
    new_parties: &[u16],
    new_threshold: u16,
) -> Vec<KeyShare<E>>
where
    reshare::ReshareMsg<E>: Send,
{
    let mut new_shares: Vec<KeyShare<E>> =
        reshare_with(old_shares, dealers, new_parties, new_threshold, None)
            .await
            .into_iter()
            .filter_map(|(_, result)| match result.unwrap() {
                ReshareOutput::NewShare(share) => Some(share),
                ReshareOutput::Dealt => None,
            })
            .collect();
    new_shares.sort_by_key(|share| share.index());
    assert_eq!(new_shares.len(), new_parties.len());
    for share in &new_shares {
        assert_eq!(
            share.generation,
            KeyGeneration(old_shares[0].generation.0 + 1)
        );
    }
    new_shares
}

/// Runs aux-info generation for the committee of test parties `0..n` with
/// the given primes (one set per party).
pub async fn aux_info_gen(n: u16, primes: Vec<Primes>) -> Vec<Result<AuxInfo, Error>> {
    let committee = committee(n);
    let mut primes = primes.into_iter();
    let (outputs, _) = sim::run_parties(n, Faults::none(), 0, |index, endpoint| {
        let run = AuxInfoRun {
            request: request(9),
            committee: committee.clone(),
            me: party(index),
            attempt: 0,
        };
        let primes = primes.next().expect("one set of primes per party");
        async move {
            let session = run.session(Duration::from_secs(600))?;
            let mut rng = rand_core::OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                ecdsa::aux_info(&run, primes, party, &mut rng)
            })
            .await
            .0
        }
    })
    .await;
    outputs
}
