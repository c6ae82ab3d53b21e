//! Runs any protocol of this crate over any transport, with a deadline.
//!
//! A transport hands the driver a stream of [`InboundFrame`]s (bytes plus the
//! session index of the *authenticated* peer they came from) and a sink of
//! [`OutboundFrame`]s. The driver turns them into a [`round_based::Delivery`]
//! for one protocol run and enforces, for every inbound frame:
//!
//! | check | on failure |
//! |---|---|
//! | the envelope decodes (magic, version, size limit) | dropped, counted |
//! | protocol kind and session id are this run's | dropped, counted (late or misrouted) |
//! | the claimed sender is the authenticated peer | dropped, counted (`forged_sender`) |
//! | the sender is another participant | dropped, counted |
//! | a p2p message is addressed to this party | dropped, counted (`misrouted`) |
//! | the same message was seen before | dropped, counted (`duplicate`) |
//! | another message for the same sender/round/type | run aborted, sender named (`equivocation`) |
//! | the payload decodes and its round matches the header | run aborted, sender named |
//!
//! Dropping is for what a faulty network can cause; aborting with a culprit is
//! for what only the authenticated sender can cause. Every run ends before
//! its deadline, with an output or an [`Error`]. Nothing here panics on input.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use round_based::{Incoming, MessageDestination, MessageType, MpcParty, Outgoing, ProtocolMessage};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{ExecutionId, PartyId, ProtocolKind};
use crate::wire::{decode_payload, encode_payload, Envelope, Recipient, WireError};
use crate::Error;

/// A frame as a transport received it.
#[derive(Clone, PartialEq, Eq)]
pub struct InboundFrame {
    /// Session index of the peer the transport authenticated as the sender.
    pub from: u16,
    /// The encoded [`Envelope`].
    pub bytes: Vec<u8>,
}

/// A frame for the transport to send.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundFrame {
    /// One participant, or every other participant.
    pub to: Recipient,
    /// The encoded [`Envelope`].
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for InboundFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InboundFrame {{ from: {}, len: {} }}",
            self.from,
            self.bytes.len()
        )
    }
}

impl std::fmt::Debug for OutboundFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OutboundFrame {{ to: {:?}, len: {} }}",
            self.to,
            self.bytes.len()
        )
    }
}

/// One protocol run as this party sees it.
#[derive(Clone, Debug)]
pub struct Session {
    /// The protocol.
    pub kind: ProtocolKind,
    /// The run's execution id (also the wire session id).
    pub id: ExecutionId,
    /// All participants, in session-index order.
    pub participants: Vec<PartyId>,
    /// This party's session index.
    pub me: u16,
    /// How long the run may take in all.
    pub deadline: Duration,
}

impl Session {
    fn n_parties(&self) -> u16 {
        // Participants come from a Committee or Quorum: at most MAX_PARTIES.
        self.participants.len() as u16
    }
}

/// What happened on the wire during one run: for metrics and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// Frames handed to the protocol.
    pub delivered: u64,
    /// Frames sent (a broadcast counts once).
    pub sent: u64,
    /// Bytes received, accepted or not.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Largest payload sent, in bytes.
    pub largest_payload_sent: usize,
    /// Frames dropped, by stable reason label.
    pub dropped: BTreeMap<&'static str, u64>,
}

/// Live counters of one run, for a watchdog outside the run: a run whose
/// counters stop moving while it waits has stalled (a frame was lost, or a
/// peer is gone). Only frames handed to the protocol count as received:
/// duplicates and dropped frames are not progress.
#[derive(Debug, Default)]
pub struct Progress {
    delivered: AtomicU64,
    sent: AtomicU64,
    waiting: AtomicBool,
}

impl Progress {
    /// Frames handed to the protocol so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Frames the protocol sent so far (a broadcast counts once).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the protocol waits for a frame now (its last look at the
    /// inbound stream found nothing), as opposed to computing.
    pub fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Both counters in one value that changes whenever either moves.
    pub fn mark(&self) -> (u64, u64) {
        (self.delivered(), self.sent())
    }
}

/// State shared by the inbound stream, the outbound sink and the driver.
/// The mutex is only held for bookkeeping, never across an await.
#[derive(Default)]
struct Shared {
    report: SessionReport,
    /// (sender, round, broadcast?) -> digest of the payload first seen.
    seen: HashMap<(u16, u16, bool), [u8; 32]>,
    /// The first provable misbehaviour: (sender index, reason).
    culprit: Option<(u16, &'static str)>,
    transport_closed: bool,
    next_msg_id: u64,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A poisoned lock only means another holder panicked mid-bookkeeping;
    // the counters are still usable.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why the protocol's inbound stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// A participant sent something only it could have sent wrongly.
    #[error("party {sender} misbehaved: {reason}")]
    Misbehaviour {
        /// Session index of the sender.
        sender: u16,
        /// Stable reason label.
        reason: &'static str,
    },
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message could not be encoded within its size limit.
    #[error("cannot encode outgoing message: {0}")]
    Encode(#[from] WireError),
    /// The protocol addressed a party that is not in the session.
    #[error("message addressed to an unknown party")]
    BadRecipient,
    /// The transport refused the frame.
    #[error("transport closed")]
    Closed,
}

/// The inbound half of a [`round_based::Delivery`].
pub struct IncomingMessages<M, In> {
    inner: In,
    session: Arc<Session>,
    shared: Arc<Mutex<Shared>>,
    progress: Arc<Progress>,
    _msg: PhantomData<fn() -> M>,
}

enum Verdict<M> {
    Deliver(Incoming<M>),
    Drop(&'static str),
    Abort(u16, &'static str),
}

impl<M, In> IncomingMessages<M, In>
where
    M: ProtocolMessage + Serialize + DeserializeOwned,
{
    fn judge(&self, frame: InboundFrame) -> Verdict<M> {
        let session = &self.session;
        let envelope = match Envelope::decode(&frame.bytes) {
            Ok(envelope) => envelope,
            Err(error) => return Verdict::Drop(error.reason()),
        };
        if envelope.kind != session.kind || envelope.session != session.id {
            return Verdict::Drop("foreign_session");
        }
        if envelope.sender != frame.from {
            return Verdict::Drop("forged_sender");
        }
        if envelope.sender == session.me || envelope.sender >= session.n_parties() {
            return Verdict::Drop("bad_sender");
        }
        let msg_type = match envelope.recipient {
            Recipient::Broadcast => MessageType::Broadcast,
            Recipient::Party(index) if index == session.me => MessageType::P2P,
            Recipient::Party(_) => return Verdict::Drop("misrouted"),
        };
        let digest: [u8; 32] = Sha256::digest(&envelope.payload).into();
        let key = (
            envelope.sender,
            envelope.round,
            msg_type == MessageType::Broadcast,
        );
        let mut shared = lock(&self.shared);
        match shared.seen.get(&key) {
            Some(previous) if *previous == digest => return Verdict::Drop("duplicate"),
            Some(_) => return Verdict::Abort(envelope.sender, "equivocation"),
            None => {}
        }
        let msg: M = match decode_payload(&envelope.payload) {
            Ok(msg) => msg,
            Err(_) => return Verdict::Abort(envelope.sender, "malformed_payload"),
        };
        if msg.round() != envelope.round {
            return Verdict::Abort(envelope.sender, "round_mismatch");
        }
        shared.seen.insert(key, digest);
        let id = shared.next_msg_id;
        shared.next_msg_id += 1;
        Verdict::Deliver(Incoming {
            id,
            sender: envelope.sender,
            msg_type,
            msg,
        })
    }
}

impl<M, In> Stream for IncomingMessages<M, In>
where
    M: ProtocolMessage + Serialize + DeserializeOwned,
    In: Stream<Item = InboundFrame> + Unpin,
{
    type Item = Result<Incoming<M>, ReceiveError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let polled = this.inner.poll_next_unpin(cx);
            this.progress
                .waiting
                .store(polled.is_pending(), Ordering::Relaxed);
            let Some(frame) = futures::ready!(polled) else {
                lock(&this.shared).transport_closed = true;
                return Poll::Ready(None);
            };
            lock(&this.shared).report.bytes_in += frame.bytes.len() as u64;
            match this.judge(frame) {
                Verdict::Deliver(incoming) => {
                    lock(&this.shared).report.delivered += 1;
                    this.progress.delivered.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Some(Ok(incoming)));
                }
                Verdict::Drop(reason) => {
                    tracing::debug!(kind = ?this.session.kind, reason, "dropped inbound frame");
                    *lock(&this.shared).report.dropped.entry(reason).or_default() += 1;
                }
                Verdict::Abort(sender, reason) => {
                    tracing::warn!(kind = ?this.session.kind, sender, reason, "peer misbehaved");
                    let mut shared = lock(&this.shared);
                    *shared.report.dropped.entry(reason).or_default() += 1;
                    shared.culprit.get_or_insert((sender, reason));
                    return Poll::Ready(Some(Err(ReceiveError::Misbehaviour { sender, reason })));
                }
            }
        }
    }
}

/// The outbound half of a [`round_based::Delivery`].
pub struct OutgoingMessages<M, Out> {
    inner: Out,
    session: Arc<Session>,
    shared: Arc<Mutex<Shared>>,
    progress: Arc<Progress>,
    _msg: PhantomData<fn(M)>,
}

impl<M, Out> Sink<Outgoing<M>> for OutgoingMessages<M, Out>
where
    M: ProtocolMessage + Serialize,
    Out: Sink<OutboundFrame> + Unpin,
{
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.get_mut()
            .inner
            .poll_ready_unpin(cx)
            .map_err(|_| SendError::Closed)
    }

    fn start_send(self: Pin<&mut Self>, item: Outgoing<M>) -> Result<(), SendError> {
        let this = self.get_mut();
        let recipient = match item.recipient {
            MessageDestination::AllParties => Recipient::Broadcast,
            MessageDestination::OneParty(index)
                if index != this.session.me && index < this.session.n_parties() =>
            {
                Recipient::Party(index)
            }
            MessageDestination::OneParty(_) => return Err(SendError::BadRecipient),
        };
        let payload = encode_payload(&item.msg)?;
        let payload_len = payload.len();
        let bytes = Envelope {
            kind: this.session.kind,
            session: this.session.id,
            round: item.msg.round(),
            sender: this.session.me,
            recipient,
            payload,
        }
        .encode()?;
        {
            let mut shared = lock(&this.shared);
            shared.report.sent += 1;
            shared.report.bytes_out += bytes.len() as u64;
            shared.report.largest_payload_sent =
                shared.report.largest_payload_sent.max(payload_len);
        }
        this.progress.sent.fetch_add(1, Ordering::Relaxed);
        this.inner
            .start_send_unpin(OutboundFrame {
                to: recipient,
                bytes,
            })
            .map_err(|_| SendError::Closed)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.get_mut()
            .inner
            .poll_flush_unpin(cx)
            .map_err(|_| SendError::Closed)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.get_mut()
            .inner
            .poll_close_unpin(cx)
            .map_err(|_| SendError::Closed)
    }
}

/// The party handle a protocol function receives from [`run`].
pub type Party<M, In, Out> = MpcParty<M, (IncomingMessages<M, In>, OutgoingMessages<M, Out>)>;

/// Runs one protocol to completion or to its deadline.
///
/// `protocol` receives the party handle and must return this crate's
/// [`Error`] on failure. The returned report says what happened on the wire,
/// whatever the outcome. When the inbound stream caught a participant
/// misbehaving, the error names it ([`Error::Misbehaviour`]) whatever the
/// protocol itself reported.
pub async fn run<M, T, In, Out, Fut>(
    session: Session,
    incoming: In,
    outgoing: Out,
    protocol: impl FnOnce(Party<M, In, Out>) -> Fut,
) -> (Result<T, Error>, SessionReport)
where
    M: ProtocolMessage + Serialize + DeserializeOwned,
    In: Stream<Item = InboundFrame> + Unpin,
    Out: Sink<OutboundFrame> + Unpin,
    Fut: Future<Output = Result<T, Error>>,
{
    run_with_progress(session, incoming, outgoing, Arc::default(), protocol).await
}

/// [`run`], counting into `progress` every frame handed to the protocol
/// and every frame it sends, so that a watchdog can tell a run that waits
/// for a lost frame from one that computes or exchanges.
pub async fn run_with_progress<M, T, In, Out, Fut>(
    session: Session,
    incoming: In,
    outgoing: Out,
    progress: Arc<Progress>,
    protocol: impl FnOnce(Party<M, In, Out>) -> Fut,
) -> (Result<T, Error>, SessionReport)
where
    M: ProtocolMessage + Serialize + DeserializeOwned,
    In: Stream<Item = InboundFrame> + Unpin,
    Out: Sink<OutboundFrame> + Unpin,
    Fut: Future<Output = Result<T, Error>>,
{
    let session = Arc::new(session);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let delivery = (
        IncomingMessages {
            inner: incoming,
            session: session.clone(),
            shared: shared.clone(),
            progress: progress.clone(),
            _msg: PhantomData,
        },
        OutgoingMessages {
            inner: outgoing,
            session: session.clone(),
            shared: shared.clone(),
            progress,
            _msg: PhantomData,
        },
    );
    let outcome =
        tokio::time::timeout(session.deadline, protocol(MpcParty::connected(delivery))).await;
    let shared = lock(&shared);
    let result = match outcome {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(error)) => Err(match shared.culprit {
            Some((sender, reason)) => Error::Misbehaviour {
                culprits: session
                    .participants
                    .get(usize::from(sender))
                    .copied()
                    .into_iter()
                    .collect(),
                reason,
            },
            None if shared.transport_closed => Error::TransportClosed(session.kind),
            None => error,
        }),
        Err(_elapsed) => Err(Error::DeadlineExceeded {
            kind: session.kind,
            deadline: session.deadline,
        }),
    };
    if let Err(error) = &result {
        tracing::info!(kind = ?session.kind, %error, "protocol run failed");
    }
    (result, shared.report.clone())
}
