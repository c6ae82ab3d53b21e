//! libp2p transport shared by nodes and the coordinator: TCP + Noise +
//! Yamux, an allow-list checked after the Noise handshake, and two
//! request-response protocols:
//!
//! * `/custos/frame/1`: one protocol envelope per request, acknowledged with
//!   an empty response (node to node);
//! * `/custos/job/1`: a signed job per request, answered with its result
//!   (coordinator to node);
//! * `/custos/resend/1`: a session id, answered with the session's status
//!   here (node to node): a party whose run stalled asks its peers to send
//!   their frames of that session again (see `node::Watchdog`).
//!
//! One task owns the swarm; the rest of the process talks to it through a
//! [`Network`] handle (commands in, events out, both bounded). Frames that
//! fail to send are retried with exponential backoff (which also redials),
//! until their per-frame budget runs out: the session deadline bounds the
//! rest.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, identity, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot};

use custos_protocol::{ExecutionId, PartyId};

/// Largest protocol frame accepted on the wire (the envelope's own limit).
pub const MAX_FRAME_BYTES: usize = custos_protocol::wire::MAX_FRAME_LEN;
/// Largest job or job response accepted on the wire.
pub const MAX_JOB_BYTES: usize = 1024 * 1024;
/// Queue bounds between the swarm task and the rest of the process.
const QUEUE: usize = 4096;
/// A frame is tried this many times before it is given up.
const FRAME_SEND_ATTEMPTS: u32 = 6;
/// Times a frame is sent again while its receiver answers `busy` (its
/// session's queue or its early-frame budget is full): with the backoff of
/// [`busy_backoff`], about two and a half minutes of backpressure before
/// the frame is given up (and the loss logged with its session).
const FRAME_BUSY_ATTEMPTS: u32 = 80;
/// How long a resend request waits for its answer.
const RESEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause before sending a frame again after the `busy`-th busy answer:
/// 100 ms doubling, at most 2 s.
fn busy_backoff(busy: u32) -> Duration {
    Duration::from_millis((100u64 << busy.min(5)).min(2_000))
}

/// What a receiver answers to a frame: the sender's delivery
/// acknowledgement. A frame is acknowledged as delivered only once it is in
/// its session's queue, or kept for a session that has not started yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameAnswer {
    /// In its session's queue, or kept until the session starts.
    Accepted,
    /// Not taken now (a full queue or early-frame budget): send it again
    /// later. This is backpressure, not loss.
    Busy,
    /// Never taken (not a participant, not a frame): do not send it again.
    Refused(&'static str),
}

impl FrameAnswer {
    fn to_bytes(self) -> Vec<u8> {
        match self {
            // Empty, as nodes before this acknowledged every frame.
            FrameAnswer::Accepted => Vec::new(),
            FrameAnswer::Busy => b"busy".to_vec(),
            FrameAnswer::Refused(reason) => format!("refused:{reason}").into_bytes(),
        }
    }

    fn from_bytes(bytes: &[u8]) -> FrameAnswer {
        match bytes {
            [] => FrameAnswer::Accepted,
            b"busy" => FrameAnswer::Busy,
            b"refused:session_ended" => FrameAnswer::Refused("session_ended"),
            _ => FrameAnswer::Refused("refused"),
        }
    }
}

/// A session's state at a peer, as it answers a resend request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    /// The peer never had the session, or no longer remembers it (or the
    /// asker is not one of its participants).
    Unknown,
    /// The session runs there (or is registered and about to run).
    Running,
    /// The session finished there with an output.
    Finished,
    /// The session ended there with an error: it will not send more.
    Failed,
}

/// A peer's answer to a resend request: the session's status there and how
/// many of its frames for the asker it queued again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResendAnswer {
    /// The session's status at the peer.
    pub status: SessionStatus,
    /// Frames queued again for the asker.
    pub resent: u32,
}

impl ResendAnswer {
    fn to_bytes(self) -> Vec<u8> {
        let status = match self.status {
            SessionStatus::Unknown => 0u8,
            SessionStatus::Running => 1,
            SessionStatus::Finished => 2,
            SessionStatus::Failed => 3,
        };
        let mut bytes = vec![status];
        bytes.extend_from_slice(&self.resent.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<ResendAnswer> {
        let [status, count @ ..] = bytes else {
            return None;
        };
        let status = match status {
            0 => SessionStatus::Unknown,
            1 => SessionStatus::Running,
            2 => SessionStatus::Finished,
            3 => SessionStatus::Failed,
            _ => return None,
        };
        let resent = u32::from_be_bytes(count.try_into().ok()?);
        Some(ResendAnswer { status, resent })
    }
}

/// The session a frame belongs to, for log lines.
fn session_of(bytes: &[u8]) -> String {
    custos_protocol::wire::Envelope::decode(bytes)
        .map(|envelope| hex::encode(envelope.session.0))
        .unwrap_or_else(|_| "undecodable".into())
}

/// The PeerId of a party: its Ed25519 key is the libp2p identity key.
pub fn peer_id_of(party: &PartyId) -> Option<PeerId> {
    let key = identity::ed25519::PublicKey::try_from_bytes(&party.0).ok()?;
    Some(PeerId::from_public_key(&identity::PublicKey::from(key)))
}

/// The PartyId of a libp2p Ed25519 keypair.
pub fn party_of(keypair: &identity::Keypair) -> Option<PartyId> {
    let key = keypair.public().try_into_ed25519().ok()?;
    Some(PartyId(key.to_bytes()))
}

/// Length-prefixed byte messages with a size cap per direction.
#[derive(Clone)]
pub struct BytesCodec {
    max_request: usize,
    max_response: usize,
}

async fn read_prefixed<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message over the size limit",
        ));
    }
    let mut buffer = vec![0u8; len];
    io.read_exact(&mut buffer).await?;
    Ok(buffer)
}

async fn write_prefixed<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message over the size limit",
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_prefixed(io, self.max_request).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_prefixed(io, self.max_response).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()> {
        write_prefixed(io, &request, self.max_request).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()> {
        write_prefixed(io, &response, self.max_response).await
    }
}

/// The libp2p behaviours of a Custos process.
#[derive(NetworkBehaviour)]
struct Behaviour {
    allowed: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    frames: request_response::Behaviour<BytesCodec>,
    jobs: request_response::Behaviour<BytesCodec>,
    resends: request_response::Behaviour<BytesCodec>,
}

/// Who this process is and whom it talks to.
pub struct NetworkConfig {
    /// The process's identity (a node's or the coordinator's).
    pub keypair: identity::Keypair,
    /// Where to listen (`None` for a coordinator that only dials).
    pub listen: Option<Multiaddr>,
    /// Allow-listed peers with their addresses where known.
    pub peers: Vec<(PartyId, Option<Multiaddr>)>,
    /// How long a job may take before the coordinator's request times out.
    pub job_timeout: Duration,
}

/// Something that arrived from the network.
pub enum NetEvent {
    /// A protocol frame from an allow-listed peer. The sender learns it was
    /// delivered only when the receiver answers through `respond`.
    Frame {
        /// The authenticated sender.
        from: PartyId,
        /// The envelope bytes.
        bytes: Vec<u8>,
        /// Where the delivery acknowledgement goes.
        respond: FrameResponder,
    },
    /// A peer asks for this node's frames of a session again.
    Resend {
        /// The authenticated asker.
        from: PartyId,
        /// The session.
        session: ExecutionId,
        /// Where the answer goes.
        respond: ResendResponder,
    },
    /// A job (from the coordinator, if the caller checks so).
    Job {
        /// The authenticated sender.
        from: PartyId,
        /// The signed job bytes.
        bytes: Vec<u8>,
        /// Where the answer goes.
        respond: JobResponder,
    },
}

/// Answers one inbound job, once.
pub struct JobResponder {
    channel: ResponseChannel<Vec<u8>>,
    commands: mpsc::Sender<Command>,
}

impl JobResponder {
    /// Sends the answer. Fails silently if the requester went away: it will
    /// retry and be answered from the replay record.
    pub async fn send(self, bytes: Vec<u8>) {
        let _ = self
            .commands
            .send(Command::RespondJob {
                channel: self.channel,
                bytes,
            })
            .await;
    }
}

/// Answers one inbound frame, once: the sender's delivery acknowledgement.
pub struct FrameResponder {
    channel: ResponseChannel<Vec<u8>>,
    commands: mpsc::Sender<Command>,
}

impl FrameResponder {
    /// Sends the answer. If the sender went away, it times out and sends
    /// the frame again (a duplicate the driver drops).
    pub async fn send(self, answer: FrameAnswer) {
        let _ = self
            .commands
            .send(Command::RespondFrame {
                channel: self.channel,
                answer,
            })
            .await;
    }
}

/// Answers one resend request, once.
pub struct ResendResponder {
    channel: ResponseChannel<Vec<u8>>,
    commands: mpsc::Sender<Command>,
}

impl ResendResponder {
    /// Sends the answer; a requester that went away asks again later.
    pub async fn send(self, answer: ResendAnswer) {
        let _ = self
            .commands
            .send(Command::RespondResend {
                channel: self.channel,
                answer,
            })
            .await;
    }
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The party's key is not an Ed25519 libp2p key.
    #[error("party id is not a valid libp2p identity")]
    BadPartyId,
    /// The network task is gone.
    #[error("network task stopped")]
    Stopped,
    /// The request failed (dial, timeout, refused, closed).
    #[error("request failed: {0}")]
    Request(String),
}

enum Command {
    SendFrame {
        to: PeerId,
        bytes: Vec<u8>,
        /// Sends that failed on the way (dial, connection, timeout).
        attempt: u32,
        /// Times the receiver answered `busy`.
        busy: u32,
    },
    RespondFrame {
        channel: ResponseChannel<Vec<u8>>,
        answer: FrameAnswer,
    },
    SendJob {
        to: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    RespondJob {
        channel: ResponseChannel<Vec<u8>>,
        bytes: Vec<u8>,
    },
    AskResend {
        to: PeerId,
        session: ExecutionId,
        reply: oneshot::Sender<Result<ResendAnswer, NetError>>,
    },
    RespondResend {
        channel: ResponseChannel<Vec<u8>>,
        answer: ResendAnswer,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PartyId>>,
    },
}

/// A handle on the network task.
#[derive(Clone)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    me: PartyId,
}

impl Network {
    /// Starts the swarm on the current tokio runtime. Returns the handle and
    /// the stream of inbound events.
    pub fn start(config: NetworkConfig) -> anyhow::Result<(Network, mpsc::Receiver<NetEvent>)> {
        let me =
            party_of(&config.keypair).ok_or_else(|| anyhow::anyhow!("identity must be Ed25519"))?;
        let job_timeout = config.job_timeout;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| Behaviour {
                allowed: allow_block_list::Behaviour::default(),
                frames: request_response::Behaviour::with_codec(
                    BytesCodec {
                        max_request: MAX_FRAME_BYTES,
                        max_response: 64,
                    },
                    [(
                        StreamProtocol::new("/custos/frame/1"),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(30))
                        .with_max_concurrent_streams(4096),
                ),
                jobs: request_response::Behaviour::with_codec(
                    BytesCodec {
                        max_request: MAX_JOB_BYTES,
                        max_response: MAX_JOB_BYTES,
                    },
                    [(StreamProtocol::new("/custos/job/1"), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(job_timeout)
                        .with_max_concurrent_streams(1024),
                ),
                resends: request_response::Behaviour::with_codec(
                    BytesCodec {
                        max_request: 32,
                        max_response: 16,
                    },
                    [(
                        StreamProtocol::new("/custos/resend/1"),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(RESEND_TIMEOUT)
                        .with_max_concurrent_streams(1024),
                ),
            })?
            // Sessions are bursty; keep idle connections instead of redialling.
            .with_swarm_config(|swarm| {
                swarm.with_idle_connection_timeout(Duration::from_secs(3600))
            })
            .build();
        // Configured addresses go with every request to the peer: libp2p's
        // address books can drop an address after failed dials (a peer that
        // was down), and a restarted peer must be redialled where it is.
        let mut addresses: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (party, address) in &config.peers {
            let peer = peer_id_of(party).ok_or(NetError::BadPartyId)?;
            swarm.behaviour_mut().allowed.allow_peer(peer);
            if let Some(address) = address {
                swarm.add_peer_address(peer, address.clone());
                addresses.entry(peer).or_default().push(address.clone());
            }
        }
        if let Some(listen) = config.listen {
            swarm.listen_on(listen)?;
        }
        let (commands, command_rx) = mpsc::channel(QUEUE);
        let (event_tx, events) = mpsc::channel(QUEUE);
        tokio::spawn(drive(
            swarm,
            addresses,
            command_rx,
            commands.clone(),
            event_tx,
        ));
        Ok((Network { commands, me }, events))
    }

    /// This process's party id.
    pub fn me(&self) -> PartyId {
        self.me
    }

    /// Queues a protocol frame for `to`. Returns at once; delivery is
    /// retried in the background.
    pub async fn send_frame(&self, to: &PartyId, bytes: Vec<u8>) -> Result<(), NetError> {
        let to = peer_id_of(to).ok_or(NetError::BadPartyId)?;
        self.commands
            .send(Command::SendFrame {
                to,
                bytes,
                attempt: 0,
                busy: 0,
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Sends a job to `to` and waits for its answer.
    pub async fn send_job(&self, to: &PartyId, bytes: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let to = peer_id_of(to).ok_or(NetError::BadPartyId)?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SendJob { to, bytes, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// Asks `to` to send its frames of `session` for this node again, and
    /// learns the session's status there. Fails when `to` does not answer
    /// within a few seconds (gone, paused, or an older node).
    pub async fn ask_resend(
        &self,
        to: &PartyId,
        session: ExecutionId,
    ) -> Result<ResendAnswer, NetError> {
        let to = peer_id_of(to).ok_or(NetError::BadPartyId)?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::AskResend { to, session, reply })
            .await
            .map_err(|_| NetError::Stopped)?;
        answer.await.map_err(|_| NetError::Stopped)?
    }

    /// The addresses the swarm listens on.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::ListenAddrs { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// The parties connected right now.
    pub async fn connected(&self) -> Vec<PartyId> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::ConnectedPeers { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

/// The party behind a PeerId: Ed25519 PeerIds are identity multihashes of
/// the public key, so the key can be read back.
fn party_of_peer(peer: &PeerId) -> Option<PartyId> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    let key = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(PartyId(key.try_into_ed25519().ok()?.to_bytes()))
}

/// The swarm task: the only owner of the swarm.
async fn drive(
    mut swarm: Swarm<Behaviour>,
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    mut commands: mpsc::Receiver<Command>,
    command_tx: mpsc::Sender<Command>,
    events: mpsc::Sender<NetEvent>,
) {
    let mut frames_in_flight: HashMap<OutboundRequestId, (PeerId, Vec<u8>, u32, u32)> =
        HashMap::new();
    let mut jobs_in_flight: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>> =
        HashMap::new();
    let mut resends_in_flight: HashMap<
        OutboundRequestId,
        oneshot::Sender<Result<ResendAnswer, NetError>>,
    > = HashMap::new();
    let mut listen_addrs: Vec<Multiaddr> = Vec::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                match command {
                    Command::SendFrame { to, bytes, attempt, busy } => {
                        let known = addresses.get(&to).cloned().unwrap_or_default();
                        let id = swarm.behaviour_mut().frames.send_request_with_addresses(&to, bytes.clone(), known);
                        frames_in_flight.insert(id, (to, bytes, attempt, busy));
                    }
                    Command::RespondFrame { channel, answer } => {
                        let _ = swarm.behaviour_mut().frames.send_response(channel, answer.to_bytes());
                    }
                    Command::SendJob { to, bytes, reply } => {
                        let known = addresses.get(&to).cloned().unwrap_or_default();
                        let id = swarm.behaviour_mut().jobs.send_request_with_addresses(&to, bytes, known);
                        jobs_in_flight.insert(id, reply);
                    }
                    Command::RespondJob { channel, bytes } => {
                        let _ = swarm.behaviour_mut().jobs.send_response(channel, bytes);
                    }
                    Command::AskResend { to, session, reply } => {
                        let known = addresses.get(&to).cloned().unwrap_or_default();
                        let id = swarm.behaviour_mut().resends.send_request_with_addresses(&to, session.0.to_vec(), known);
                        resends_in_flight.insert(id, reply);
                    }
                    Command::RespondResend { channel, answer } => {
                        let _ = swarm.behaviour_mut().resends.send_response(channel, answer.to_bytes());
                    }
                    Command::ListenAddrs { reply } => {
                        let _ = reply.send(listen_addrs.clone());
                    }
                    Command::ConnectedPeers { reply } => {
                        let _ = reply.send(swarm.connected_peers().filter_map(party_of_peer).collect());
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Frames(event)) => match event {
                    request_response::Event::Message { peer, message, .. } => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let Some(from) = party_of_peer(&peer) else {
                                let _ = swarm.behaviour_mut().frames.send_response(channel, FrameAnswer::Refused("bad_peer").to_bytes());
                                continue;
                            };
                            let respond = FrameResponder { channel, commands: command_tx.clone() };
                            if let Err(error) = events.try_send(NetEvent::Frame { from, bytes: request, respond }) {
                                // The node is behind: the sender tries again
                                // later instead of losing the frame.
                                metrics::counter!("custos_signer_rejected_messages_total", "reason" => "queue_full").increment(1);
                                if let NetEvent::Frame { respond, .. } = error.into_inner() {
                                    let _ = swarm.behaviour_mut().frames.send_response(respond.channel, FrameAnswer::Busy.to_bytes());
                                }
                            }
                        }
                        request_response::Message::Response { request_id, response } => {
                            let Some((to, bytes, attempt, busy)) = frames_in_flight.remove(&request_id) else { continue };
                            match FrameAnswer::from_bytes(&response) {
                                FrameAnswer::Accepted => {}
                                FrameAnswer::Busy if busy + 1 < FRAME_BUSY_ATTEMPTS => {
                                    metrics::counter!("custos_signer_frames_busy_total").increment(1);
                                    let backoff = busy_backoff(busy);
                                    tracing::debug!(%to, busy, "the receiver is busy; sending the frame again");
                                    let command_tx = command_tx.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(backoff).await;
                                        let _ = command_tx.send(Command::SendFrame { to, bytes, attempt, busy: busy + 1 }).await;
                                    });
                                }
                                FrameAnswer::Busy => {
                                    tracing::warn!(%to, session = %session_of(&bytes), "frame dropped: the receiver stayed busy");
                                    metrics::counter!("custos_signer_frames_undeliverable_total").increment(1);
                                }
                                FrameAnswer::Refused("session_ended") => {
                                    // A copy that crossed the session's end there.
                                    tracing::debug!(%to, session = %session_of(&bytes), "the receiver's session already ended");
                                }
                                FrameAnswer::Refused(_) => {
                                    tracing::warn!(%to, session = %session_of(&bytes), answer = %String::from_utf8_lossy(&response), "the receiver refused a frame");
                                    metrics::counter!("custos_signer_frames_refused_total").increment(1);
                                }
                            }
                        }
                    },
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        let Some((to, bytes, attempt, busy)) = frames_in_flight.remove(&request_id) else { continue };
                        if attempt + 1 < FRAME_SEND_ATTEMPTS {
                            let backoff = Duration::from_millis(50 << attempt);
                            tracing::debug!(%to, %error, attempt, "frame send failed; retrying");
                            let command_tx = command_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(backoff).await;
                                let _ = command_tx.send(Command::SendFrame { to, bytes, attempt: attempt + 1, busy }).await;
                            });
                        } else {
                            tracing::warn!(%to, %error, session = %session_of(&bytes), "frame dropped after retries");
                            metrics::counter!("custos_signer_frames_undeliverable_total").increment(1);
                        }
                    }
                    request_response::Event::InboundFailure { error, .. } => {
                        tracing::debug!(%error, "inbound frame failed");
                        metrics::counter!("custos_signer_rejected_messages_total", "reason" => "wire").increment(1);
                    }
                    request_response::Event::ResponseSent { .. } => {}
                },
                SwarmEvent::Behaviour(BehaviourEvent::Jobs(event)) => match event {
                    request_response::Event::Message { peer, message, .. } => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let Some(from) = party_of_peer(&peer) else { continue };
                            let respond = JobResponder { channel, commands: command_tx.clone() };
                            if events.send(NetEvent::Job { from, bytes: request, respond }).await.is_err() {
                                return;
                            }
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some(reply) = jobs_in_flight.remove(&request_id) {
                                let _ = reply.send(Ok(response));
                            }
                        }
                    },
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        if let Some(reply) = jobs_in_flight.remove(&request_id) {
                            let _ = reply.send(Err(NetError::Request(error.to_string())));
                        }
                    }
                    request_response::Event::InboundFailure { error, .. } => {
                        tracing::debug!(%error, "inbound job failed");
                    }
                    request_response::Event::ResponseSent { .. } => {}
                },
                SwarmEvent::Behaviour(BehaviourEvent::Resends(event)) => match event {
                    request_response::Event::Message { peer, message, .. } => match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let (Some(from), Ok(session)) = (party_of_peer(&peer), <[u8; 32]>::try_from(request.as_slice())) else {
                                let unknown = ResendAnswer { status: SessionStatus::Unknown, resent: 0 };
                                let _ = swarm.behaviour_mut().resends.send_response(channel, unknown.to_bytes());
                                continue;
                            };
                            let respond = ResendResponder { channel, commands: command_tx.clone() };
                            if let Err(error) = events.try_send(NetEvent::Resend { from, session: ExecutionId(session), respond }) {
                                // Behind: the asker asks again at its next check.
                                if let NetEvent::Resend { respond, .. } = error.into_inner() {
                                    let _ = swarm.behaviour_mut().resends.send_response(respond.channel, ResendAnswer { status: SessionStatus::Running, resent: 0 }.to_bytes());
                                }
                            }
                        }
                        request_response::Message::Response { request_id, response } => {
                            if let Some(reply) = resends_in_flight.remove(&request_id) {
                                let _ = reply.send(ResendAnswer::from_bytes(&response).ok_or_else(|| NetError::Request("malformed resend answer".into())));
                            }
                        }
                    },
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        if let Some(reply) = resends_in_flight.remove(&request_id) {
                            let _ = reply.send(Err(NetError::Request(error.to_string())));
                        }
                    }
                    request_response::Event::InboundFailure { error, .. } => {
                        tracing::debug!(%error, "inbound resend request failed");
                    }
                    request_response::Event::ResponseSent { .. } => {}
                },
                SwarmEvent::Behaviour(BehaviourEvent::Allowed(never)) => match never {},
                SwarmEvent::NewListenAddr { address, .. } => listen_addrs.push(address),
                SwarmEvent::IncomingConnectionError { error, .. } => {
                    tracing::info!(%error, "refused an incoming connection");
                    metrics::counter!("custos_signer_refused_connections_total").increment(1);
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    tracing::debug!(%peer_id, "connected");
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{busy_backoff, FrameAnswer, ResendAnswer, SessionStatus};

    #[test]
    fn frame_answers_round_trip_and_an_empty_answer_is_a_delivery() {
        for answer in [
            FrameAnswer::Accepted,
            FrameAnswer::Busy,
            FrameAnswer::Refused("refused"),
        ] {
            assert_eq!(FrameAnswer::from_bytes(&answer.to_bytes()), answer);
        }
        // Nodes before delivery acknowledgements answered every frame
        // with an empty response.
        assert_eq!(FrameAnswer::from_bytes(&[]), FrameAnswer::Accepted);
        assert_eq!(
            FrameAnswer::from_bytes(b"refused:not_participant"),
            FrameAnswer::Refused("refused")
        );
        assert_eq!(
            FrameAnswer::from_bytes(&FrameAnswer::Refused("session_ended").to_bytes()),
            FrameAnswer::Refused("session_ended")
        );
        assert_eq!(busy_backoff(0).as_millis(), 100);
        for status in [
            SessionStatus::Unknown,
            SessionStatus::Running,
            SessionStatus::Finished,
            SessionStatus::Failed,
        ] {
            let answer = ResendAnswer { status, resent: 7 };
            assert_eq!(ResendAnswer::from_bytes(&answer.to_bytes()), Some(answer));
        }
        assert_eq!(ResendAnswer::from_bytes(&[9, 0, 0, 0, 0]), None);
        assert_eq!(ResendAnswer::from_bytes(&[1, 0]), None);
        assert_eq!(busy_backoff(40).as_millis(), 2_000);
    }

    use super::*;

    #[tokio::test]
    async fn oversized_length_prefix_is_refused_before_allocating() {
        let mut wire: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3];
        let error = read_prefixed(&mut wire, MAX_FRAME_BYTES).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn prefixed_messages_round_trip_and_writes_over_the_limit_fail() {
        let mut buffer = Vec::new();
        write_prefixed(&mut futures::io::Cursor::new(&mut buffer), b"frame", 16)
            .await
            .unwrap();
        let mut wire: &[u8] = &buffer;
        assert_eq!(read_prefixed(&mut wire, 16).await.unwrap(), b"frame");
        let mut sink = futures::io::Cursor::new(Vec::new());
        assert!(write_prefixed(&mut sink, &[0; 17], 16).await.is_err());
    }

    #[test]
    fn party_and_peer_ids_map_both_ways() {
        let keypair = identity::Keypair::generate_ed25519();
        let party = party_of(&keypair).unwrap();
        assert_eq!(peer_id_of(&party), Some(keypair.public().to_peer_id()));
        assert_eq!(party_of_peer(&keypair.public().to_peer_id()), Some(party));
    }
}
