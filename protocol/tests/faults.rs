//! The driver under a faulty network and hostile frames. Under every kind
//! of fault the in-memory network injects (drop, corrupt, duplicate, delay
//! and so reorder), every run either yields an output that verifies
//! independently or a clear error before its deadline: never a hang, never
//! a wrong signature. Frames that only a faulty network could produce are
//! dropped and counted; frames that only a participant could produce name it.

mod support;

use std::time::{Duration, Instant};

use custos_protocol::driver::{self, InboundFrame, SessionReport};
use custos_protocol::schnorr::{self, taproot_output_key};
use custos_protocol::share::KeyShare;
use custos_protocol::sim::{self, Faults};
use custos_protocol::wire::{Envelope, Recipient};
use custos_protocol::{Error, ExecutionId, ProtocolKind, Secp256k1};
use futures::StreamExt;
use support::*;

const SHORT_DEADLINE: Duration = Duration::from_secs(3);
/// A party that aborts cannot tell its peers (the coordinator does that in
/// production), so they wait for this deadline: keep it short but above an
/// ECDSA signing on a loaded machine.
const ECDSA_FAULT_DEADLINE: Duration = Duration::from_secs(30);
/// Scheduling slack on a loaded 2-core machine: a hang would exceed it by far.
const SLACK: Duration = Duration::from_secs(5);

fn fault_plans() -> Vec<(&'static str, Faults)> {
    let max_delay = Duration::from_millis(30);
    vec![
        (
            "drop",
            Faults {
                drop: 0.2,
                ..Faults::none()
            },
        ),
        (
            "corrupt",
            Faults {
                corrupt: 0.2,
                ..Faults::none()
            },
        ),
        (
            "duplicate",
            Faults {
                duplicate: 0.5,
                ..Faults::none()
            },
        ),
        (
            "delay",
            Faults {
                delay: 0.7,
                max_delay,
                ..Faults::none()
            },
        ),
        (
            "everything",
            Faults {
                drop: 0.05,
                corrupt: 0.05,
                duplicate: 0.2,
                delay: 0.5,
                max_delay,
            },
        ),
    ]
}

fn verify_taproot(share: &KeyShare<Secp256k1>, message: &[u8; 32], signature: &[u8; 64]) {
    let key = taproot_output_key(&share.public_info(), &[]).unwrap();
    k256::schnorr::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_raw(
            message,
            &k256::schnorr::Signature::try_from(signature.as_slice()).unwrap(),
        )
        .expect("a signature that comes out must verify");
}

/// Taproot-signs with holders 0 and 1 over a network with `faults`, with a
/// short deadline; returns each signer's result and wire report.
async fn taproot_under(
    shares: &[KeyShare<Secp256k1>],
    faults: Faults,
    seed: u64,
    message: [u8; 32],
) -> Vec<(Result<[u8; 64], Error>, SessionReport)> {
    let (outputs, _) = sim::run_parties(2, faults, seed, |signer, endpoint| {
        let share = shares[usize::from(signer)].clone();
        let run = sign_run(&share, &[0, 1], share.holder().unwrap(), 40);
        async move {
            let session = run
                .session(ProtocolKind::SignTaproot, SHORT_DEADLINE)
                .unwrap();
            let mut rng = rand_core::OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                schnorr::sign_taproot(&share, &run, &message, &[], party, &mut rng)
            })
            .await
        }
    })
    .await;
    outputs
}

fn assert_clear_error(error: &Error) {
    assert!(
        matches!(
            error,
            Error::DeadlineExceeded { .. } | Error::Misbehaviour { .. } | Error::Protocol { .. }
        ),
        "unexpected error kind: {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn faulty_network_never_hangs_and_never_yields_a_wrong_signature() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let mut outcomes = std::collections::BTreeMap::<&str, (u32, u32)>::new();
    for (name, faults) in fault_plans() {
        for seed in 0..6u64 {
            let message = [seed as u8; 32];
            let started = Instant::now();
            let results = taproot_under(&shares, faults, seed, message).await;
            assert!(
                started.elapsed() < SHORT_DEADLINE + SLACK,
                "{name}/{seed} hung"
            );
            for (result, _report) in results {
                let tally = outcomes.entry(name).or_default();
                match result {
                    Ok(signature) => {
                        verify_taproot(&shares[0], &message, &signature);
                        tally.0 += 1;
                    }
                    Err(error) => {
                        assert_clear_error(&error);
                        tally.1 += 1;
                    }
                }
            }
        }
    }
    eprintln!("(successes, clear errors) by fault: {outcomes:?}");
    // Duplicates and delays are benign: every run must still sign.
    assert_eq!(outcomes["duplicate"].1, 0);
    assert_eq!(outcomes["delay"].1, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn faulty_keygen_yields_consistent_shares_or_clear_errors() {
    for (name, faults) in fault_plans() {
        for seed in 0..3u64 {
            let started = Instant::now();
            let results = keygen_of::<Secp256k1>(&[0, 1, 2], 2, faults, seed, SHORT_DEADLINE).await;
            assert!(
                started.elapsed() < SHORT_DEADLINE + SLACK,
                "{name}/{seed} hung"
            );
            let shares: Vec<_> = results
                .into_iter()
                .filter_map(|result| result.map_err(|error| assert_clear_error(&error)).ok())
                .collect();
            // Whoever finished agrees on the key.
            assert!(shares
                .windows(2)
                .all(|pair| pair[0].public_key() == pair[1].public_key()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_are_dropped_and_counted() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let faults = Faults {
        duplicate: 1.0,
        ..Faults::none()
    };
    let results = taproot_under(&shares, faults, 7, [9; 32]).await;
    for (result, report) in results {
        verify_taproot(&shares[0], &[9; 32], &result.unwrap());
        assert!(
            report.dropped.get("duplicate").copied().unwrap_or(0) >= 1,
            "{report:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_under_faults_signs_correctly_or_fails_before_its_deadline() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let aux = aux_info(3);
    let max_delay = Duration::from_millis(50);
    let plans = [
        (
            "duplicate+delay",
            Faults {
                duplicate: 0.5,
                delay: 0.5,
                max_delay,
                ..Faults::none()
            },
            true,
        ),
        (
            "corrupt",
            Faults {
                corrupt: 0.5,
                ..Faults::none()
            },
            false,
        ),
    ];
    for (name, faults, must_sign) in plans {
        let digest = [0xEC; 32];
        let started = Instant::now();
        let results = sign_ecdsa_within(
            ECDSA_FAULT_DEADLINE,
            &shares,
            &aux,
            &[0, 2],
            digest,
            &[],
            faults,
            11,
        )
        .await;
        assert!(
            started.elapsed() < ECDSA_FAULT_DEADLINE + SLACK,
            "{name} hung"
        );
        for result in results {
            match result {
                Ok(signature) => {
                    let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(
                        &shares[0].public_key().to_bytes(true),
                    )
                    .unwrap();
                    use k256::ecdsa::signature::hazmat::PrehashVerifier;
                    key.verify_prehash(
                        &digest,
                        &k256::ecdsa::Signature::from_scalars(signature.r, signature.s).unwrap(),
                    )
                    .expect("a signature that comes out must verify");
                }
                Err(error) => {
                    assert!(!must_sign, "{name}: {error}");
                    assert_clear_error(&error);
                }
            }
        }
    }
}

/// Runs a 2-of-3 Taproot signing where signer 0's inbound stream also
/// carries `extra` frames (built from the session id), and returns signer
/// 0's result and report.
async fn taproot_with_injected(
    extra: impl FnOnce(ExecutionId) -> Vec<InboundFrame>,
) -> (Result<[u8; 64], Error>, SessionReport) {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let runs: Vec<_> = (0..2)
        .map(|signer| {
            sign_run(
                &shares[signer],
                &[0, 1],
                shares[signer].holder().unwrap(),
                41,
            )
        })
        .collect();
    let session_id = runs[0]
        .session(ProtocolKind::SignTaproot, SHORT_DEADLINE)
        .unwrap()
        .id;
    let injected = extra(session_id);
    let (endpoints, _) = sim::network(2, Faults::none(), 0);
    let mut tasks = Vec::new();
    for (signer, endpoint) in endpoints.into_iter().enumerate() {
        let share = shares[signer].clone();
        let run = runs[signer].clone();
        let injected = if signer == 0 {
            injected.clone()
        } else {
            Vec::new()
        };
        tasks.push(tokio::spawn(async move {
            let session = run
                .session(ProtocolKind::SignTaproot, SHORT_DEADLINE)
                .unwrap();
            // Hostile frames first, then the real network.
            let incoming = futures::stream::iter(injected).chain(endpoint.incoming);
            let mut rng = rand_core::OsRng;
            driver::run(session, Box::pin(incoming), endpoint.outgoing, |party| {
                schnorr::sign_taproot(&share, &run, &[3; 32], &[], party, &mut rng)
            })
            .await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let (result, report) = results.swap_remove(0);
    if let Ok(signature) = &result {
        verify_taproot(&shares[0], &[3; 32], signature);
    }
    (result, report)
}

fn frame(from: u16, envelope: Envelope) -> InboundFrame {
    InboundFrame {
        from,
        bytes: envelope.encode().unwrap(),
    }
}

fn envelope(session: ExecutionId, sender: u16, recipient: Recipient, payload: Vec<u8>) -> Envelope {
    Envelope {
        kind: ProtocolKind::SignTaproot,
        session,
        round: 1,
        sender,
        recipient,
        payload,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_a_network_could_garble_are_dropped_and_counted() {
    let (result, report) = taproot_with_injected(|session| {
        let mut oversized = envelope(session, 1, Recipient::Broadcast, vec![])
            .encode()
            .unwrap();
        oversized[45..49].copy_from_slice(&(1u32 << 30).to_be_bytes());
        vec![
            // Another session's frame.
            frame(
                1,
                envelope(ExecutionId([0xEE; 32]), 1, Recipient::Broadcast, vec![1]),
            ),
            // Another protocol's frame with this session id.
            frame(
                1,
                Envelope {
                    kind: ProtocolKind::SignEd25519,
                    ..envelope(session, 1, Recipient::Broadcast, vec![1])
                },
            ),
            // Claims to come from party 1 but arrived on another channel.
            frame(2, envelope(session, 1, Recipient::Broadcast, vec![1])),
            // Addressed to someone else.
            frame(1, envelope(session, 1, Recipient::Party(5), vec![1])),
            // Claims to be from this party itself.
            frame(0, envelope(session, 0, Recipient::Broadcast, vec![1])),
            // Announces a payload over every limit.
            InboundFrame {
                from: 1,
                bytes: oversized,
            },
            // Not an envelope at all.
            InboundFrame {
                from: 1,
                bytes:
                    b"GET / HTTP/1.1\r\nHost: custos\r\nUser-Agent: probe\r\nAccept: */*\r\n\r\n"
                        .to_vec(),
            },
            InboundFrame {
                from: 1,
                bytes: vec![],
            },
        ]
    })
    .await;
    result.expect("hostile frames that are dropped do not stop the run");
    for reason in [
        "foreign_session",
        "forged_sender",
        "misrouted",
        "bad_sender",
        "oversized",
        "bad_magic",
        "truncated",
    ] {
        assert!(
            report.dropped.get(reason).copied().unwrap_or(0) >= 1,
            "{reason} not counted: {report:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_from_a_participant_aborts_the_run_and_names_it() {
    let (result, report) = taproot_with_injected(|session| {
        vec![frame(
            1,
            envelope(session, 1, Recipient::Broadcast, vec![0xFF; 40]),
        )]
    })
    .await;
    match result {
        Err(error @ Error::Misbehaviour { .. }) => assert_eq!(error.culprits(), &[party(1)]),
        other => panic!("expected party 1 to be named, got {other:?}"),
    }
    assert_eq!(report.dropped.get("malformed_payload"), Some(&1));
}
