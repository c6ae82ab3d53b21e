//! The in-process compute floors for FROST Taproot and CGGMP21 ECDSA
//! signing, measured in the same run as the networked figures: every party in this process on its own
//! task, through the real `driver::run` over the fault-free `sim` network
//! (what `cargo bench -p custos-protocol --features sim --bench protocol`
//! calls `frost_taproot_sign_2of3`).

use std::time::Duration;

use custos_protocol::ecdsa::{self, SignRun};
use custos_protocol::keygen::{self, KeygenRun};
use custos_protocol::schnorr;
use custos_protocol::share::{AuxInfo, KeyShare};
use custos_protocol::sim::{self, Faults};
use custos_protocol::{driver, Committee, ProtocolKind, Quorum, RequestId, Secp256k1, WalletId};
use rand_core::OsRng;

const DEADLINE: Duration = Duration::from_secs(600);
const WALLET: WalletId = WalletId([0xF1; 16]);

fn request(iteration: u64) -> RequestId {
    let mut id = [0xF1; 16];
    id[..8].copy_from_slice(&iteration.to_be_bytes());
    RequestId(id)
}

/// A 2-of-3 secp256k1 DKG among the test parties 0, 1, 2; shares by index.
pub async fn keygen_2of3() -> Vec<KeyShare<Secp256k1>> {
    let committee = Committee::new((0..3).map(sim::test_party)).expect("a test committee");
    let (outputs, _) = sim::run_parties(3, Faults::none(), 0, |index, endpoint| {
        let run = KeygenRun {
            wallet: WALLET,
            request: request(u64::MAX),
            committee: committee.clone(),
            threshold: 2,
            me: committee.member(index).expect("a member"),
            attempt: 0,
        };
        async move {
            let session = run.session::<Secp256k1>(DEADLINE)?;
            let mut rng = OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                keygen::keygen::<Secp256k1, _, _>(&run, party, &mut rng)
            })
            .await
            .0
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("in-process keygen"))
        .collect()
}

/// The signing run of `share`'s holder in the quorum of keygen indices
/// `quorum`.
fn sign_run(share: &KeyShare<Secp256k1>, quorum: [u16; 2], iteration: u64) -> SignRun {
    let members = quorum
        .iter()
        .map(|&keygen_index| share.committee.member(keygen_index).expect("a member"));
    SignRun {
        wallet: share.wallet,
        request: request(iteration),
        generation: share.generation,
        quorum: Quorum::new(&share.committee, share.threshold(), members).expect("a valid quorum"),
        me: share.holder().expect("the holder"),
        attempt: 0,
    }
}

/// One FROST BIP-340 (Taproot key-path tweak, root key) signing by the
/// holders at keygen indices `quorum`.
pub async fn sign_taproot(
    shares: &[KeyShare<Secp256k1>],
    quorum: [u16; 2],
    iteration: u64,
    message: [u8; 32],
) {
    let (outputs, _) = sim::run_parties(2, Faults::none(), 0, |index, endpoint| {
        let share = shares[usize::from(quorum[usize::from(index)])].clone();
        let run = sign_run(&share, quorum, iteration);
        async move {
            let session = run.session(ProtocolKind::SignTaproot, DEADLINE)?;
            let mut rng = OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                schnorr::sign_taproot(&share, &run, &message, &[], party, &mut rng)
            })
            .await
            .0
        }
    })
    .await;
    let mut signatures = outputs
        .into_iter()
        .map(|output| output.expect("in-process signing"));
    let first = signatures.next().expect("a signer");
    assert!(signatures.all(|other| other == first), "signers agree");
}

/// Aux info for the test parties 0, 1, 2 (`protocol/testdata/aux-info-n3.json`,
/// made by the project's own aux-info run from committed primes), each
/// precomputed as the nodes precompute theirs.
pub fn precomputed_aux_n3() -> Vec<AuxInfo> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/testdata/aux-info-n3.json");
    let bytes = std::fs::read(&path).expect("the aux-info fixture");
    let aux: Vec<AuxInfo> = serde_json::from_slice(&bytes).expect("aux info decodes");
    std::thread::scope(|scope| {
        let handles: Vec<_> = aux
            .into_iter()
            .map(|mut party_aux| {
                scope.spawn(move || {
                    party_aux.precompute().expect("aux info precomputes");
                    party_aux
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("precomputation thread"))
            .collect()
    })
}

/// One CGGMP21 full signing of `digest` by the holders at keygen indices
/// `quorum`, with precomputed aux info: the ECDSA compute floor.
pub async fn sign_ecdsa(
    shares: &[KeyShare<Secp256k1>],
    aux: &[AuxInfo],
    quorum: [u16; 2],
    iteration: u64,
    digest: [u8; 32],
) {
    let (outputs, _) = sim::run_parties(2, Faults::none(), 0, |index, endpoint| {
        let keygen_index = usize::from(quorum[usize::from(index)]);
        let share = shares[keygen_index].clone();
        let party_aux = aux[keygen_index].clone();
        let run = sign_run(&share, quorum, iteration);
        let party = async move {
            let session = run.session(ProtocolKind::SignEcdsa, DEADLINE)?;
            let mut rng = OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                ecdsa::sign(&share, &party_aux, &run, &digest, &[], party, &mut rng)
            })
            .await
            .0
        };
        // Each party on a thread of its own, as a node runs a CGGMP21
        // session: on tokio worker threads a party woken by its peer can sit
        // in the busy worker's LIFO slot (not stealable) until that worker's
        // computation yields, which serialises the two parties.
        let runtime = tokio::runtime::Handle::current();
        async move {
            tokio::task::spawn_blocking(move || runtime.block_on(party))
                .await
                .expect("party thread")
        }
    })
    .await;
    let mut signatures = outputs
        .into_iter()
        .map(|output| output.expect("in-process ECDSA signing").to_rsv());
    let first = signatures.next().expect("a signer");
    assert!(signatures.all(|other| other == first), "signers agree");
}
