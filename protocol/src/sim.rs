//! An in-memory network for tests, with faults chosen from a seed.
//!
//! Every participant gets an [`Endpoint`]: a stream of [`InboundFrame`]s and a
//! sink of [`OutboundFrame`]s, exactly what a real transport gives the
//! [`driver`](crate::driver). A router task fans broadcasts out and, per
//! delivery, draws from a seeded RNG whether to drop, corrupt, duplicate or
//! delay the frame (delays reorder frames). The sender index it attaches is
//! always the true one, as an authenticated channel (Noise) would give.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::driver::{InboundFrame, OutboundFrame};
use crate::wire::Recipient;

/// Probabilities (0.0 to 1.0) of each fault, per delivered frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// The frame is lost.
    pub drop: f64,
    /// One random byte of the frame is flipped.
    pub corrupt: f64,
    /// The frame is delivered twice.
    pub duplicate: f64,
    /// The frame is held back for up to `max_delay` (frames overtake it).
    pub delay: f64,
    /// The longest delay.
    pub max_delay: Duration,
}

impl Faults {
    /// A perfect network.
    pub fn none() -> Self {
        Self::default()
    }
}

/// What the router did, for assertions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultLog {
    /// Frames delivered (duplicates counted once per copy).
    pub delivered: u64,
    /// Frames lost.
    pub dropped: u64,
    /// Frames corrupted.
    pub corrupted: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Frames delayed.
    pub delayed: u64,
}

/// One participant's connection to the network.
pub struct Endpoint {
    /// Frames for this participant.
    pub incoming: mpsc::UnboundedReceiver<InboundFrame>,
    /// Frames from this participant.
    pub outgoing: mpsc::UnboundedSender<OutboundFrame>,
}

/// Builds a network of `n_parties` endpoints whose faults are drawn from
/// `seed`. Spawns its router tasks on the current tokio runtime; they end
/// when every endpoint is dropped. The returned log fills as frames pass.
pub fn network(n_parties: u16, faults: Faults, seed: u64) -> (Vec<Endpoint>, Arc<Mutex<FaultLog>>) {
    let log = Arc::new(Mutex::new(FaultLog::default()));
    let rng = Arc::new(Mutex::new(ChaCha20Rng::seed_from_u64(seed)));
    let (inbound_senders, inbound_receivers): (Vec<_>, Vec<_>) =
        (0..n_parties).map(|_| mpsc::unbounded()).unzip();
    let mut endpoints = Vec::with_capacity(usize::from(n_parties));
    for (from, incoming) in inbound_receivers.into_iter().enumerate() {
        let from = from as u16;
        let (outgoing, mut frames) = mpsc::unbounded::<OutboundFrame>();
        let inbound_senders = inbound_senders.clone();
        let rng = rng.clone();
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(frame) = frames.next().await {
                let recipients: Vec<u16> = match frame.to {
                    Recipient::Broadcast => (0..n_parties).filter(|&to| to != from).collect(),
                    Recipient::Party(to) if to < n_parties => vec![to],
                    Recipient::Party(_) => continue,
                };
                for to in recipients {
                    let deliveries = plan_delivery(&rng, &log, faults, &frame.bytes);
                    for (delay, bytes) in deliveries {
                        let Some(sender) = inbound_senders.get(usize::from(to)).cloned() else {
                            continue;
                        };
                        let frame = InboundFrame { from, bytes };
                        if delay.is_zero() {
                            let _ = sender.unbounded_send(frame);
                        } else {
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = sender.unbounded_send(frame);
                            });
                        }
                    }
                }
            }
        });
        endpoints.push(Endpoint { incoming, outgoing });
    }
    (endpoints, log)
}

/// Decides the fate of one frame to one recipient: zero, one or two copies,
/// each with a delay and possibly corrupted bytes.
fn plan_delivery(
    rng: &Mutex<ChaCha20Rng>,
    log: &Mutex<FaultLog>,
    faults: Faults,
    bytes: &[u8],
) -> Vec<(Duration, Vec<u8>)> {
    let mut rng = rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut log = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if rng.gen_bool(faults.drop) {
        log.dropped += 1;
        return Vec::new();
    }
    let copies = if rng.gen_bool(faults.duplicate) {
        log.duplicated += 1;
        2
    } else {
        1
    };
    let mut deliveries = Vec::with_capacity(copies);
    for _ in 0..copies {
        let mut bytes = bytes.to_vec();
        if !bytes.is_empty() && rng.gen_bool(faults.corrupt) {
            let position = rng.gen_range(0..bytes.len());
            let flip = rng.gen_range(1..=255u8);
            if let Some(byte) = bytes.get_mut(position) {
                *byte ^= flip;
            }
            log.corrupted += 1;
        }
        let delay = if !faults.max_delay.is_zero() && rng.gen_bool(faults.delay) {
            log.delayed += 1;
            rng.gen_range(Duration::ZERO..=faults.max_delay)
        } else {
            Duration::ZERO
        };
        log.delivered += 1;
        deliveries.push((delay, bytes));
    }
    deliveries
}

/// Runs one future per participant on a fresh [`network`], each on its own
/// tokio task, and returns their outputs in participant order together with
/// the fault log. `party(i, endpoint)` builds participant `i`'s future.
pub async fn run_parties<T, Fut>(
    n_parties: u16,
    faults: Faults,
    seed: u64,
    mut party: impl FnMut(u16, Endpoint) -> Fut,
) -> (Vec<T>, FaultLog)
where
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (endpoints, log) = network(n_parties, faults, seed);
    let tasks: Vec<_> = endpoints
        .into_iter()
        .enumerate()
        .map(|(index, endpoint)| tokio::spawn(party(index as u16, endpoint)))
        .collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(output) => outputs.push(output),
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    }
    let log = log
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    (outputs, log)
}

/// The identity of test party `index`: 32 bytes of `index + 1`. The committed
/// fixtures (`testdata/`) use these identities.
pub fn test_party(index: u16) -> crate::ids::PartyId {
    crate::ids::PartyId([(index as u8).wrapping_add(1); 32])
}
