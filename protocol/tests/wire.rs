//! The wire format, proved on real protocol messages:
//!
//! * **Golden bytes.** For every [`ProtocolKind`], the frames party 0 sends
//!   in the first round of a real run are pinned byte for byte in
//!   `tests/golden/<kind>.txt`: the whole frame in hex, or, for payloads over
//!   [`PIN_WHOLE_PAYLOAD_UP_TO`] bytes (ECDSA signing), the 49-byte header in
//!   hex with the payload's length and SHA-256. Any change to the envelope,
//!   to a message type's serialisation, or to how a protocol draws from its
//!   RNG shows up as a diff there. Each capture is taken twice and must not
//!   differ, and every captured frame must decode, re-encode to itself and
//!   carry a payload of the round its header names.
//! * **Size limits.** Every message of real DKG, FROST, resharing and ECDSA
//!   signing runs (every party, every round) fits [`wire::max_payload_len`]
//!   of its kind; the largest payload of each kind is printed (run with
//!   `--nocapture`) so the limits can be tuned. Aux-info generation is not
//!   run to its end here: its later rounds take tens of seconds.
//! * **Decoding never panics.** Property tests feed [`Envelope::decode`]
//!   arbitrary bytes, valid headers followed by arbitrary bytes, and valid
//!   frames with one byte changed, and check that every frame it accepts
//!   re-encodes to the same bytes; they round-trip arbitrary envelopes, and
//!   feed [`wire::decode_payload`] arbitrary and mutated payloads of every
//!   message type. `fuzz/` runs the same properties under libFuzzer.
//!
//! Where the golden values come from: the messages are deterministic because
//! every input is. Key shares come from a DKG in which party `i` draws from
//! `ChaCha20Rng::seed_from_u64(KEYGEN_SEED + i)`; the captured run draws from
//! `ChaCha20Rng::seed_from_u64(kind code)`; ECDSA signing uses the committed
//! fixture `testdata/aux-info-n3.json` and aux-info generation the first set
//! of `testdata/primes.json`, so **regenerating those fixtures changes the
//! ECDSA and aux-info golden files**. To re-bless after an intended change,
//! run
//!
//! ```text
//! CUSTOS_BLESS=1 cargo test -p custos-protocol --test wire envelope_golden_bytes
//! ```
//!
//! review the diff of `tests/golden/` and commit it with the change. Blessing
//! also rewrites the seed inputs of the fuzz targets, `fuzz/seeds/`, from
//! the same frames.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use custos_protocol::driver::{self, InboundFrame, OutboundFrame, Session, SessionReport};
use custos_protocol::ecdsa::{self, AuxInfoRun};
use custos_protocol::keygen::{self, KeygenRun};
use custos_protocol::reshare::{self, ReshareOutput, ReshareRun};
use custos_protocol::schnorr;
use custos_protocol::share::{KeyCurve, KeyShare};
use custos_protocol::sim::{self, Faults};
use custos_protocol::wire::{
    self, decode_payload, encode_payload, max_payload_len, Envelope, Recipient, WireError,
    HEADER_LEN,
};
use custos_protocol::{Ed25519, Error, ExecutionId, ProtocolKind, Secp256k1};
use futures::channel::mpsc;
use futures::task::ArcWake;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use round_based::ProtocolMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use support::*;

/// Payloads up to this size are pinned whole; larger ones by length and
/// SHA-256 (a hex dump of kilobytes of ciphertext reviews no better).
const PIN_WHOLE_PAYLOAD_UP_TO: usize = 1024;

/// Party `i` of the deterministic DKG draws from `seed_from_u64(KEYGEN_SEED + i)`.
const KEYGEN_SEED: u64 = 0xC057_0500;

/// Set to `1` to rewrite the golden files instead of comparing with them.
const BLESS_VAR: &str = "CUSTOS_BLESS";

// ---------------------------------------------------------------------------
// Decoding a payload as the message type of its kind
// ---------------------------------------------------------------------------

/// A payload decoded as the message type of its kind.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    /// The round the message claims.
    round: u16,
    /// The message encoded again.
    reencoded: Vec<u8>,
}

/// Decodes `payload` as a message of `kind`. The match is exhaustive: a new
/// protocol kind does not compile until its message type is listed here,
/// and so gets golden bytes and fuzzing.
fn decode_message(kind: ProtocolKind, payload: &[u8]) -> Result<Decoded, WireError> {
    fn decode<M: ProtocolMessage + Serialize + DeserializeOwned>(
        payload: &[u8],
    ) -> Result<Decoded, WireError> {
        let msg = decode_payload::<M>(payload)?;
        Ok(Decoded {
            round: msg.round(),
            reencoded: encode_payload(&msg).expect("a decoded message encodes"),
        })
    }
    match kind {
        ProtocolKind::KeygenSecp256k1 => decode::<keygen::KeygenMsg<Secp256k1>>(payload),
        ProtocolKind::KeygenEd25519 => decode::<keygen::KeygenMsg<Ed25519>>(payload),
        ProtocolKind::AuxInfo => decode::<ecdsa::AuxInfoMsg>(payload),
        ProtocolKind::SignEcdsa => decode::<ecdsa::SignMsg>(payload),
        ProtocolKind::SignTaproot => decode::<schnorr::SignMsg<Secp256k1>>(payload),
        ProtocolKind::SignEd25519 => decode::<schnorr::SignMsg<Ed25519>>(payload),
        ProtocolKind::ReshareSecp256k1 => decode::<reshare::ReshareMsg<Secp256k1>>(payload),
        ProtocolKind::ReshareEd25519 => decode::<reshare::ReshareMsg<Ed25519>>(payload),
    }
}

/// The property of [`decode_payload`] on any input: it returns (never
/// panics), and what it accepts encodes to bytes it accepts again as the
/// same message. (It does not require the input itself to be that
/// encoding: postcard accepts over-long varints, so a payload can have more
/// than one encoding.)
fn check_payload_decode(kind: ProtocolKind, payload: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(decoded) = decode_message(kind, payload) {
        let again = decode_message(kind, &decoded.reencoded);
        prop_assert_eq!(again, Ok(decoded));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Capturing what one party sends before it needs anyone else
// ---------------------------------------------------------------------------

/// Records whether a future asked to be polled again.
struct WakeFlag(AtomicBool);

impl ArcWake for WakeFlag {
    fn wake_by_ref(flag: &Arc<Self>) {
        flag.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `future` until it completes or waits for something that only the
/// outside world can provide. A protocol that yields to the runtime between
/// heavy steps wakes itself at once and is polled again; one that waits for
/// a peer's message is never woken (its inbound stream is
/// `stream::pending()`), and polling stops. Unlike a short deadline this
/// does not depend on how loaded the machine is.
///
/// Must be called inside a tokio runtime context (the driver's deadline is a
/// tokio timer), outside any task, so that tokio's cooperative budget does
/// not wake the future spuriously.
fn poll_until_stalled<F: Future>(future: F) -> Option<F::Output> {
    let flag = Arc::new(WakeFlag(AtomicBool::new(false)));
    let waker = futures::task::waker(flag.clone());
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        flag.0.store(false, Ordering::SeqCst);
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return Some(output);
        }
        if !flag.0.load(Ordering::SeqCst) {
            return None;
        }
    }
}

type CaptureParty<M> =
    driver::Party<M, futures::stream::Pending<InboundFrame>, mpsc::UnboundedSender<OutboundFrame>>;

/// Runs `protocol` through the real driver with an inbound stream that never
/// yields and returns the run's session id and every frame it sent before it
/// needed a peer's message: its first round.
fn first_round_frames<M, T, Fut>(
    session: Session,
    protocol: impl FnOnce(CaptureParty<M>) -> Fut,
) -> (ExecutionId, Vec<OutboundFrame>)
where
    M: ProtocolMessage + Serialize + DeserializeOwned,
    Fut: Future<Output = Result<T, Error>>,
{
    let id = session.id;
    let (outgoing, mut sent) = mpsc::unbounded();
    let run = driver::run(session, futures::stream::pending(), outgoing, protocol);
    if let Some((result, _report)) = poll_until_stalled(tokio::task::unconstrained(run)) {
        panic!(
            "the run ended before it needed a peer's message: {:?}",
            result.err()
        );
    }
    // The run and its sender are dropped: the channel holds all that was sent.
    (id, std::iter::from_fn(|| sent.try_recv().ok()).collect())
}

/// The deadline of a captured run; it never expires, polling stops first.
const CAPTURE_DEADLINE: Duration = Duration::from_secs(3600);

fn capture_rng(kind: ProtocolKind) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(u64::from(kind.code()))
}

// ---------------------------------------------------------------------------
// Deterministic inputs
// ---------------------------------------------------------------------------

/// A DKG among test parties `0..n` where party `i` draws from
/// `ChaCha20Rng::seed_from_u64(seed + i)`: the same shares on every run.
/// Returns the shares by keygen index and every party's wire report.
async fn seeded_keygen<E: KeyCurve>(
    n: u16,
    threshold: u16,
    seed: u64,
) -> (Vec<KeyShare<E>>, Vec<SessionReport>)
where
    keygen::KeygenMsg<E>: Send,
{
    let committee = committee(n);
    let (outcomes, _) = sim::run_parties(n, Faults::none(), 0, |index, endpoint| {
        let run = KeygenRun {
            wallet: WALLET,
            request: request(1),
            committee: committee.clone(),
            threshold,
            me: party(index),
            attempt: 0,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(seed + u64::from(index));
        async move {
            let session = run.session::<E>(FAST_DEADLINE).unwrap();
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                keygen::keygen::<E, _, _>(&run, party, &mut rng)
            })
            .await
        }
    })
    .await;
    unzip_successes(outcomes)
}

/// Splits the outcomes of a run into outputs and reports; fails the test if
/// any party failed.
fn unzip_successes<T>(
    outcomes: Vec<(Result<T, Error>, SessionReport)>,
) -> (Vec<T>, Vec<SessionReport>) {
    outcomes
        .into_iter()
        .enumerate()
        .map(|(index, (result, report))| match result {
            Ok(output) => (output, report),
            Err(error) => panic!("party {index} failed: {error}"),
        })
        .unzip()
}

/// The resharing in which test parties `dealers` of the key of `old_shares`
/// deal to test parties `new_parties` with threshold `new_threshold`, as
/// party `me` runs it.
fn reshare_run<E: KeyCurve>(
    old_shares: &[KeyShare<E>],
    dealers: &[u16],
    new_parties: &[u16],
    new_threshold: u16,
    me: custos_protocol::PartyId,
) -> ReshareRun<E> {
    let old = old_shares[0].public_info();
    ReshareRun {
        request: request(5),
        dealers: dealers
            .iter()
            .map(|&index| old.committee.member(index).unwrap())
            .collect(),
        old,
        new_committee: committee_of(new_parties),
        new_threshold,
        me,
        attempt: 0,
    }
}

// ---------------------------------------------------------------------------
// 1. Golden bytes
// ---------------------------------------------------------------------------

/// Everything the golden runs need, built once.
struct GoldenInputs {
    secp_shares: Vec<KeyShare<Secp256k1>>,
    ed_shares: Vec<KeyShare<Ed25519>>,
}

/// The frames party 0 sends in the first round of a 2-of-3 run of `kind`
/// among test parties 0, 1, 2 (signers and dealers: 0 and 1), with the
/// run's session id. Exhaustive over kinds, like [`decode_message`].
fn golden_frames(kind: ProtocolKind, inputs: &GoldenInputs) -> (ExecutionId, Vec<OutboundFrame>) {
    let mut rng = capture_rng(kind);
    let rng = &mut rng;
    match kind {
        ProtocolKind::KeygenSecp256k1 => keygen_frames::<Secp256k1>(rng),
        ProtocolKind::KeygenEd25519 => keygen_frames::<Ed25519>(rng),
        ProtocolKind::AuxInfo => {
            let run = AuxInfoRun {
                request: request(9),
                committee: committee(3),
                me: party(0),
                attempt: 0,
            };
            let primes = spare_primes().into_iter().next().unwrap();
            first_round_frames(run.session(CAPTURE_DEADLINE).unwrap(), |party| {
                ecdsa::aux_info(&run, primes, party, rng)
            })
        }
        ProtocolKind::SignEcdsa => {
            let share = &inputs.secp_shares[0];
            let aux = &aux_info(3)[0];
            let run = sign_run(share, &[0, 1], party(0), 2);
            first_round_frames(run.session(kind, CAPTURE_DEADLINE).unwrap(), |party| {
                ecdsa::sign(share, aux, &run, &[0x11; 32], &[], party, rng)
            })
        }
        ProtocolKind::SignTaproot => {
            let share = &inputs.secp_shares[0];
            let run = sign_run(share, &[0, 1], party(0), 3);
            first_round_frames(run.session(kind, CAPTURE_DEADLINE).unwrap(), |party| {
                schnorr::sign_taproot(share, &run, &[0x22; 32], &[], party, rng)
            })
        }
        ProtocolKind::SignEd25519 => {
            let share = &inputs.ed_shares[0];
            let run = sign_run(share, &[0, 1], party(0), 4);
            first_round_frames(run.session(kind, CAPTURE_DEADLINE).unwrap(), |party| {
                schnorr::sign_ed25519(share, &run, b"custos golden message", &[], party, rng)
            })
        }
        ProtocolKind::ReshareSecp256k1 => reshare_frames(&inputs.secp_shares, rng),
        ProtocolKind::ReshareEd25519 => reshare_frames(&inputs.ed_shares, rng),
    }
}

fn keygen_frames<E: KeyCurve>(rng: &mut ChaCha20Rng) -> (ExecutionId, Vec<OutboundFrame>) {
    let run = KeygenRun {
        wallet: WALLET,
        request: request(1),
        committee: committee(3),
        threshold: 2,
        me: party(0),
        attempt: 0,
    };
    first_round_frames(run.session::<E>(CAPTURE_DEADLINE).unwrap(), |party| {
        keygen::keygen::<E, _, _>(&run, party, rng)
    })
}

/// Dealers 0 and 1 refresh the 2-of-3 key of `shares`; party 0 deals.
fn reshare_frames<E: KeyCurve>(
    shares: &[KeyShare<E>],
    rng: &mut ChaCha20Rng,
) -> (ExecutionId, Vec<OutboundFrame>) {
    let run = reshare_run(shares, &[0, 1], &[0, 1, 2], 2, party(0));
    first_round_frames(run.session(CAPTURE_DEADLINE).unwrap(), |party| {
        reshare::reshare(&run, Some(&shares[0]), party, rng)
    })
}

fn golden_path(kind: ProtocolKind) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{}.txt", kind.name()))
}

fn recipient_label(recipient: Recipient) -> String {
    match recipient {
        Recipient::Broadcast => "broadcast".to_owned(),
        Recipient::Party(index) => format!("party{index}"),
    }
}

/// One line per frame: `frame to=<recipient> bytes=<hex>`, or for a large
/// payload `frame to=<recipient> header=<hex> payload_len=<n> payload_sha256=<hex>`.
fn render_golden(kind: ProtocolKind, frames: &[OutboundFrame]) -> String {
    let mut text = format!(
        "# Frames test party 0 sends in round 1 of {} (2-of-3, seeded RNGs).\n\
         # Generated by tests/wire.rs; re-bless with CUSTOS_BLESS=1 (see its doc comment).\n",
        kind.name()
    );
    for frame in frames {
        let to = recipient_label(frame.to);
        let (header, payload) = frame.bytes.split_at(HEADER_LEN);
        if payload.len() <= PIN_WHOLE_PAYLOAD_UP_TO {
            text += &format!("frame to={to} bytes={}\n", hex::encode(&frame.bytes));
        } else {
            text += &format!(
                "frame to={to} header={} payload_len={} payload_sha256={}\n",
                hex::encode(header),
                payload.len(),
                hex::encode(Sha256::digest(payload)),
            );
        }
    }
    text
}

/// Writes the frames as seed inputs of the fuzz targets (`fuzz/seeds/`):
/// mutating real messages reaches far deeper into the decoders than
/// starting from nothing. `payload_decode` inputs are the kind's position
/// in [`ProtocolKind::ALL`] followed by the payload.
fn write_fuzz_seeds(kind: ProtocolKind, frames: &[OutboundFrame]) {
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let selector = ProtocolKind::ALL
        .iter()
        .position(|&other| other == kind)
        .unwrap() as u8;
    for (index, frame) in frames.iter().enumerate() {
        let name = format!("{}-{index}", kind.name());
        let payload_input: Vec<u8> = std::iter::once(selector)
            .chain(frame.bytes[HEADER_LEN..].iter().copied())
            .collect();
        for (target, input) in [
            ("envelope_decode", &frame.bytes),
            ("payload_decode", &payload_input),
        ] {
            let dir = seeds.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(&name), input).unwrap();
        }
    }
}

/// Checks what the golden file cannot show: each frame is a well-formed
/// envelope of this run, from party 0, whose payload decodes as a message
/// of the round the header names.
fn check_frames_are_well_formed(
    kind: ProtocolKind,
    session: ExecutionId,
    frames: &[OutboundFrame],
) {
    assert!(
        !frames.is_empty(),
        "{kind:?}: party 0 sent nothing in round 1"
    );
    for frame in frames {
        let envelope = Envelope::decode(&frame.bytes).unwrap();
        assert_eq!(
            envelope.encode().unwrap(),
            frame.bytes,
            "{kind:?}: re-encoding differs"
        );
        assert_eq!(envelope.kind, kind);
        assert_eq!(envelope.session, session);
        assert_eq!(envelope.sender, 0);
        assert_eq!(envelope.recipient, frame.to);
        let decoded = decode_message(kind, &envelope.payload).unwrap();
        assert_eq!(
            decoded.round, envelope.round,
            "{kind:?}: header and message disagree on the round"
        );
        assert_eq!(
            decoded.reencoded, envelope.payload,
            "{kind:?}: payload is not canonical"
        );
    }
}

#[test]
fn envelope_golden_bytes_are_pinned_for_every_kind() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let inputs = GoldenInputs {
        secp_shares: runtime
            .block_on(seeded_keygen::<Secp256k1>(3, 2, KEYGEN_SEED))
            .0,
        ed_shares: runtime
            .block_on(seeded_keygen::<Ed25519>(3, 2, KEYGEN_SEED))
            .0,
    };
    let _entered = runtime.enter();
    let bless = std::env::var(BLESS_VAR).is_ok_and(|value| value == "1");
    let mut mismatches = Vec::new();
    for kind in ProtocolKind::ALL {
        let (session, frames) = golden_frames(kind, &inputs);
        check_frames_are_well_formed(kind, session, &frames);
        // The same inputs give the same bytes: otherwise a golden file could
        // not exist, and the cause must be found rather than the test weakened.
        let (_, again) = golden_frames(kind, &inputs);
        assert_eq!(frames, again, "{kind:?}: round 1 is not deterministic");
        let actual = render_golden(kind, &frames);
        let path = golden_path(kind);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            write_fuzz_seeds(kind, &frames);
            eprintln!("blessed {}", path.display());
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            eprintln!(
                "--- {} (expected)\n{expected}+++ actual\n{actual}",
                path.display()
            );
            mismatches.push(kind.name());
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden bytes differ for {mismatches:?}; if the change is intended, re-bless with \
         {BLESS_VAR}=1 (see the doc comment of tests/wire.rs)"
    );
}

// ---------------------------------------------------------------------------
// 2. Size limits
// ---------------------------------------------------------------------------

/// Checks the largest payload any party sent against the kind's limit, and
/// prints it so the limits can be tuned.
fn check_largest_payload(kind: ProtocolKind, setting: &str, reports: &[SessionReport]) {
    let largest = reports
        .iter()
        .map(|report| report.largest_payload_sent)
        .max()
        .unwrap();
    let limit = max_payload_len(kind);
    eprintln!(
        "largest payload sent: {:<18} {setting:<28} {largest:>8} bytes (limit {limit}, {:.1}x headroom)",
        kind.name(),
        limit as f64 / largest as f64,
    );
    assert!(
        largest <= limit,
        "{kind:?} ({setting}): a {largest}-byte payload exceeds the {limit}-byte limit"
    );
    for report in reports {
        assert!(
            report.dropped.is_empty(),
            "{kind:?}: frames dropped on a perfect network: {report:?}"
        );
    }
}

async fn keygen_fits_limit<E: KeyCurve>(n: u16, threshold: u16)
where
    keygen::KeygenMsg<E>: Send,
{
    let (_, reports) = seeded_keygen::<E>(n, threshold, 7).await;
    check_largest_payload(E::KEYGEN, &format!("{threshold}-of-{n}"), &reports);
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_messages_fit_their_size_limit() {
    keygen_fits_limit::<Secp256k1>(7, 5).await;
    keygen_fits_limit::<Ed25519>(7, 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frost_messages_fit_their_size_limit() {
    let signers = [0, 2, 3, 5, 6];
    let (secp_shares, _) = seeded_keygen::<Secp256k1>(7, 5, 11).await;
    let (outcomes, _) = sim::run_parties(5, Faults::none(), 0, |signer, endpoint| {
        let share = secp_shares[usize::from(signers[usize::from(signer)])].clone();
        let run = sign_run(&share, &signers, share.holder().unwrap(), 3);
        async move {
            let session = run
                .session(ProtocolKind::SignTaproot, FAST_DEADLINE)
                .unwrap();
            let mut rng = rand_core::OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                schnorr::sign_taproot(&share, &run, &[0x33; 32], &[1, 2], party, &mut rng)
            })
            .await
        }
    })
    .await;
    check_largest_payload(
        ProtocolKind::SignTaproot,
        "5 of 7 signers",
        &unzip_successes(outcomes).1,
    );

    let (ed_shares, _) = seeded_keygen::<Ed25519>(7, 5, 12).await;
    let (outcomes, _) = sim::run_parties(5, Faults::none(), 0, |signer, endpoint| {
        let share = ed_shares[usize::from(signers[usize::from(signer)])].clone();
        let run = sign_run(&share, &signers, share.holder().unwrap(), 4);
        async move {
            let session = run
                .session(ProtocolKind::SignEd25519, FAST_DEADLINE)
                .unwrap();
            let mut rng = rand_core::OsRng;
            // A long message: Ed25519 signs the message itself, not a digest,
            // but only its hash should ever reach the wire.
            let message = vec![0x44; 4096];
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                schnorr::sign_ed25519(&share, &run, &message, &[1, 2], party, &mut rng)
            })
            .await
        }
    })
    .await;
    check_largest_payload(
        ProtocolKind::SignEd25519,
        "5 of 7 signers",
        &unzip_successes(outcomes).1,
    );
}

async fn reshare_fits_limit<E: KeyCurve>(seed: u64)
where
    keygen::KeygenMsg<E>: Send,
    reshare::ReshareMsg<E>: Send,
{
    // 5-of-7 dealt by five holders to eight holders with threshold 6: the
    // commitments, sub-shares and echoes all grow with these figures.
    let (old_shares, _) = seeded_keygen::<E>(7, 5, seed).await;
    let dealers = [0, 1, 3, 4, 6];
    let new_parties: Vec<u16> = (0..8).collect();
    let template = reshare_run(&old_shares, &dealers, &new_parties, 6, party(0));
    let participants = template.session(FAST_DEADLINE).unwrap().participants;
    let n_participants = participants.len() as u16;
    let (outcomes, _) = sim::run_parties(n_participants, Faults::none(), 0, |index, endpoint| {
        let me = participants[usize::from(index)];
        let run = ReshareRun {
            me,
            ..template.clone()
        };
        let share = old_shares
            .iter()
            .find(|share| share.holder() == Some(me) && run.dealers.contains(&me))
            .cloned();
        async move {
            let session = run.session(FAST_DEADLINE).unwrap();
            let mut rng = rand_core::OsRng;
            driver::run(
                session,
                endpoint.incoming,
                endpoint.outgoing,
                |party| async { reshare::reshare(&run, share.as_ref(), party, &mut rng).await },
            )
            .await
        }
    })
    .await;
    let (outputs, reports) = unzip_successes(outcomes);
    let new_shares = outputs
        .iter()
        .filter(|output| matches!(output, ReshareOutput::NewShare(_)))
        .count();
    assert_eq!(new_shares, new_parties.len());
    check_largest_payload(E::RESHARE, "5 dealers to 6-of-8", &reports);
}

#[tokio::test(flavor = "multi_thread")]
async fn reshare_messages_fit_their_size_limit() {
    reshare_fits_limit::<Secp256k1>(13).await;
    reshare_fits_limit::<Ed25519>(14).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_signing_messages_fit_their_size_limit() {
    // The aux-info fixture belongs to the committee of test parties 0..3.
    let (shares, _) = seeded_keygen::<Secp256k1>(3, 3, 15).await;
    let aux = aux_info(3);
    let signers = [0, 1, 2];
    let (outcomes, _) = sim::run_parties(3, Faults::none(), 0, |signer, endpoint| {
        let share = shares[usize::from(signer)].clone();
        let aux = aux[usize::from(signer)].clone();
        let run = sign_run(&share, &signers, share.holder().unwrap(), 2);
        async move {
            let session = run
                .session(ProtocolKind::SignEcdsa, ECDSA_DEADLINE)
                .unwrap();
            let mut rng = rand_core::OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                ecdsa::sign(&share, &aux, &run, &[0x55; 32], &[1, 2], party, &mut rng)
            })
            .await
        }
    })
    .await;
    check_largest_payload(
        ProtocolKind::SignEcdsa,
        "3 of 3 signers",
        &unzip_successes(outcomes).1,
    );
}

// ---------------------------------------------------------------------------
// 3. Properties of the decoders
// ---------------------------------------------------------------------------

/// Whole frames from the golden files: real messages of every kind (except
/// those pinned by digest), as seeds for mutation.
fn golden_corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let frames: Vec<Vec<u8>> = ProtocolKind::ALL
            .into_iter()
            .filter_map(|kind| std::fs::read_to_string(golden_path(kind)).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|line| {
                        line.split_once(" bytes=")
                            .map(|(_, hex)| hex::decode(hex).unwrap())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            !frames.is_empty(),
            "no golden frames: bless the golden files first"
        );
        frames
    })
}

fn any_kind() -> impl Strategy<Value = ProtocolKind> {
    prop::sample::select(ProtocolKind::ALL.to_vec())
}

fn any_recipient() -> impl Strategy<Value = Recipient> {
    prop_oneof![
        Just(Recipient::Broadcast),
        any::<u16>().prop_map(Recipient::Party)
    ]
}

/// Any envelope with a payload of at most `max_len` bytes (and its kind's limit).
fn any_envelope(max_len: usize) -> impl Strategy<Value = Envelope> {
    (
        any_kind(),
        any::<[u8; 32]>(),
        any::<u16>(),
        any::<u16>(),
        any_recipient(),
    )
        .prop_flat_map(move |(kind, session, round, sender, recipient)| {
            let max_len = max_len.min(max_payload_len(kind));
            prop::collection::vec(any::<u8>(), 0..=max_len).prop_map(move |payload| Envelope {
                kind,
                session: ExecutionId(session),
                round,
                sender,
                recipient,
                payload,
            })
        })
}

/// The property of [`Envelope::decode`]: it returns (never panics), and
/// whatever it accepts is the canonical encoding of what it returns.
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(envelope) = Envelope::decode(bytes) {
        prop_assert_eq!(envelope.encode().unwrap(), bytes.to_vec());
    }
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures print their minimal input; pin it as an explicit case
        // rather than in a regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn decode_of_arbitrary_bytes_never_panics_and_accepts_only_canonical_frames(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        check_decode(&bytes)?;
    }

    #[test]
    fn decode_of_a_valid_header_with_arbitrary_tail_never_panics(
        envelope in any_envelope(64),
        tail in prop::collection::vec(any::<u8>(), 0..128),
        fix_length in any::<bool>(),
    ) {
        let mut bytes = envelope.encode().unwrap();
        bytes.truncate(HEADER_LEN);
        if fix_length {
            // Then only the per-kind limit stands between the tail and Ok.
            bytes[45..49].copy_from_slice(&(tail.len() as u32).to_be_bytes());
        }
        bytes.extend_from_slice(&tail);
        check_decode(&bytes)?;
        if fix_length && tail.len() <= max_payload_len(envelope.kind) {
            prop_assert!(Envelope::decode(&bytes).is_ok());
        }
    }

    #[test]
    fn decode_of_a_frame_with_one_byte_changed_never_panics(
        envelope in any_envelope(64),
        position in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let mut bytes = envelope.encode().unwrap();
        let position = position.index(bytes.len());
        bytes[position] ^= flip;
        check_decode(&bytes)?;
        // A change in a field decode reads must never go unnoticed.
        if let Ok(decoded) = Envelope::decode(&bytes) {
            prop_assert_ne!(decoded, envelope);
        }
    }

    #[test]
    fn decode_of_a_real_frame_with_one_byte_changed_never_panics(
        frame in any::<prop::sample::Index>(),
        position in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let corpus = golden_corpus();
        let mut bytes = corpus[frame.index(corpus.len())].clone();
        let position = position.index(bytes.len());
        bytes[position] ^= flip;
        check_decode(&bytes)?;
        if let Ok(envelope) = Envelope::decode(&bytes) {
            // The payload decoder must survive it too.
            check_payload_decode(envelope.kind, &envelope.payload)?;
        }
    }

    #[test]
    fn envelope_round_trips_for_arbitrary_fields_and_payloads(envelope in any_envelope(2048)) {
        let bytes = envelope.encode().unwrap();
        prop_assert_eq!(bytes.len(), HEADER_LEN + envelope.payload.len());
        prop_assert_eq!(Envelope::decode(&bytes), Ok(envelope));
    }

    #[test]
    fn decode_payload_of_arbitrary_bytes_never_panics_for_any_message_type(
        kind in any_kind(),
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check_payload_decode(kind, &payload)?;
    }

    #[test]
    fn decode_payload_of_a_real_payload_with_changes_never_panics(
        frame in any::<prop::sample::Index>(),
        changes in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
        truncate_to in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let corpus = golden_corpus();
        let envelope = Envelope::decode(&corpus[frame.index(corpus.len())]).unwrap();
        let mut payload = envelope.payload.clone();
        for (position, flip) in &changes {
            let position = position.index(payload.len());
            payload[position] ^= flip;
        }
        if truncate {
            payload.truncate(truncate_to.index(payload.len() + 1));
        }
        // Every message type, not only the frame's own: a peer chooses the
        // kind byte too.
        for kind in ProtocolKind::ALL {
            check_payload_decode(kind, &payload)?;
        }
    }
}

// ---------------------------------------------------------------------------
// Deterministic edge cases of the limits
// ---------------------------------------------------------------------------

#[test]
fn payload_at_the_limit_round_trips_and_one_byte_more_is_refused_for_every_kind() {
    for kind in ProtocolKind::ALL {
        let limit = max_payload_len(kind);
        let mut envelope = Envelope {
            kind,
            session: ExecutionId([0xAB; 32]),
            round: 1,
            sender: 2,
            recipient: Recipient::Party(1),
            payload: vec![0x5A; limit],
        };
        let bytes = envelope.encode().unwrap();
        assert!(
            bytes.len() <= wire::MAX_FRAME_LEN,
            "{kind:?}: frame over MAX_FRAME_LEN"
        );
        assert_eq!(Envelope::decode(&bytes).as_ref(), Ok(&envelope), "{kind:?}");

        envelope.payload.push(0x5A);
        assert!(
            matches!(envelope.encode(), Err(WireError::Oversized { .. })),
            "{kind:?}"
        );
        let mut oversized = bytes;
        oversized.push(0x5A);
        oversized[45..49].copy_from_slice(&((limit + 1) as u32).to_be_bytes());
        assert!(
            matches!(Envelope::decode(&oversized), Err(WireError::Oversized { len, .. }) if len == limit + 1),
            "{kind:?}"
        );
    }
}
