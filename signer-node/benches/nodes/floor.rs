//! The in-process compute floor for FROST Taproot signing, measured in the
//! same run as the networked figures: every party in this process on its own
//! task, through the real `driver::run` over the fault-free `sim` network
//! (what `cargo bench -p custos-protocol --features sim --bench protocol`
//! calls `frost_taproot_sign_2of3`).

use std::time::Duration;

use custos_protocol::ecdsa::SignRun;
use custos_protocol::keygen::{self, KeygenRun};
use custos_protocol::schnorr;
use custos_protocol::share::KeyShare;
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
        let members = quorum
            .iter()
            .map(|&keygen_index| share.committee.member(keygen_index).expect("a member"));
        let run = SignRun {
            wallet: share.wallet,
            request: request(iteration),
            generation: share.generation,
            quorum: Quorum::new(&share.committee, share.threshold(), members)
                .expect("a valid quorum"),
            me: share.holder().expect("the holder"),
            attempt: 0,
        };
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
