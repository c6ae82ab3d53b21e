//! The node: receives signed jobs from the pinned coordinator, runs the
//! protocols of `custos-protocol` with its peers, keeps shares in the store.
//!
//! Concurrency: one task per job; sessions find their inbound frames through
//! the [`Router`], whose mutex is held only for map updates. Frames that
//! arrive before their session starts (a peer got its job first) wait in a
//! bounded buffer for a short time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use custos_protocol::driver::{self, InboundFrame, OutboundFrame, Session};
use custos_protocol::ecdsa::{self, AuxInfoRun, SignRun};
use custos_protocol::keygen::{self, KeygenRun};
use custos_protocol::primes::Primes;
use custos_protocol::reshare::{self, ReshareOutput, ReshareRun};
use custos_protocol::schnorr;
use custos_protocol::share::{AuxInfo, KeyCurve, KeyShare, PublicKeyInfo};
use custos_protocol::wire::{Envelope, Recipient};
use custos_protocol::{
    Committee, Ed25519, ExecutionId, PartyId, ProtocolKind, Quorum, RequestId, Secp256k1,
};
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::{Deadlines, NodeConfig};
use crate::decoded::Decoded;
use crate::job::{
    check_replay, Curve, Job, JobBody, JobError, JobOutput, ReplayDecision, ReplayRecord, Scheme,
    SignedJob,
};
use crate::store::ShareStore;
use crate::transport::{FrameAnswer, JobResponder, NetEvent, Network, SessionStatus};

/// Frames kept for a session that has not started yet.
const EARLY_FRAMES_PER_SESSION: usize = 256;
/// Sessions with early frames kept at once.
const EARLY_SESSIONS: usize = 1024;
/// Bytes of early frames held at once, across all sessions: a peer cannot
/// make the node hold more than this for sessions that never start.
const EARLY_BYTES: usize = 64 * 1024 * 1024;
/// How long early frames wait for their session when the node's deadlines
/// are not known: the longest default deadline (aux info's). A peer that
/// got its job first may start a run minutes before this node, which may
/// first generate its Paillier primes; its frames must still be here when
/// this node's session starts.
const EARLY_FRAME_TTL: Duration = Duration::from_secs(600);
/// Inbound queue of one running session.
const SESSION_QUEUE: usize = 1024;
/// Bytes of sent frames kept, across all sessions, to send again to a peer
/// that lost them.
const SENT_BYTES: usize = 128 * 1024 * 1024;
/// How long a session's sent frames are kept after it ended here: a peer
/// that missed this node's last round asks for it within its stall window.
const SENT_RETENTION: Duration = Duration::from_secs(120);
/// Replay records live in this store namespace.
const JOB_RECORDS: &str = "jobs";
/// Store namespace of the marks of one-time rewrites of the store.
const STORE_MIGRATIONS: &str = "migrations";
/// Marks that every replay record was rewritten in the format that keeps no
/// secret ([`drop_secrets_from_replay_records`]).
const RECORDS_WITHOUT_SECRETS: &[u8] = b"replay_records_without_secrets/v1";

/// The answer to a job, as it goes back to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobResponse {
    /// The job ran (now or before) and produced this.
    Done(JobOutput),
    /// The job was refused or failed.
    Failed {
        /// Stable reason label.
        reason: String,
        /// Human-readable detail (never secret).
        message: String,
    },
}

struct RunningSession {
    participants: Vec<PartyId>,
    inbox: mpsc::Sender<InboundFrame>,
}

/// Frames that arrived before their session started, with the arrival
/// time of the first.
struct EarlyFrames {
    since: Instant,
    frames: Vec<(PartyId, Vec<u8>)>,
}

/// The frames this node sent in one session, kept to send again to a peer
/// that lost them, and how the session ended here.
struct SentFrames {
    participants: Vec<PartyId>,
    frames: Vec<(Recipient, Vec<u8>)>,
    bytes: usize,
    /// When and how the session ended here; `None` while it runs.
    ended: Option<(Instant, SessionStatus)>,
}

struct RouterState {
    /// How long early frames wait for their session.
    early_ttl: Duration,
    /// Inbound queue size of each session.
    session_queue: usize,
    running: HashMap<ExecutionId, RunningSession>,
    early: HashMap<ExecutionId, EarlyFrames>,
    /// Total bytes held in `early`.
    early_bytes: usize,
    /// Sessions run here, recent ones included, with their sent frames.
    sent: HashMap<ExecutionId, SentFrames>,
    /// Total bytes held in `sent`.
    sent_bytes: usize,
}

impl RouterState {
    fn early_frames_bytes(early: &EarlyFrames) -> usize {
        early.frames.iter().map(|(_, bytes)| bytes.len()).sum()
    }

    /// Forgets ended sessions older than the retention, and then the
    /// oldest ended ones until `room` more bytes fit in the budget.
    fn prune_sent(&mut self, room: usize) {
        let now = Instant::now();
        let mut freed = 0;
        self.sent.retain(|_, sent| {
            let keep = sent
                .ended
                .is_none_or(|(at, _)| now.duration_since(at) < SENT_RETENTION);
            if !keep {
                freed += sent.bytes;
            }
            keep
        });
        self.sent_bytes -= freed;
        while self.sent_bytes + room > SENT_BYTES {
            let oldest = self
                .sent
                .iter()
                .filter_map(|(id, sent)| sent.ended.map(|(at, _)| (at, *id)))
                .min();
            let Some((_, id)) = oldest else { break };
            if let Some(sent) = self.sent.remove(&id) {
                self.sent_bytes -= sent.bytes;
            }
        }
    }
}

/// Routes inbound frames to running sessions by session id.
#[derive(Clone)]
pub struct Router(Arc<Mutex<RouterState>>);

impl Default for Router {
    fn default() -> Router {
        Router::new(EARLY_FRAME_TTL)
    }
}

fn reject(reason: &'static str) {
    metrics::counter!("custos_signer_rejected_messages_total", "reason" => reason).increment(1);
}

impl Router {
    /// A router that keeps frames which arrive before their session for
    /// `early_ttl` (the node's longest protocol deadline: a session that
    /// starts later than that could not finish anyway).
    pub fn new(early_ttl: Duration) -> Router {
        Router::with_queue(early_ttl, SESSION_QUEUE)
    }

    /// [`Router::new`] with sessions' inbound queues of `session_queue`
    /// frames.
    pub fn with_queue(early_ttl: Duration, session_queue: usize) -> Router {
        Router(Arc::new(Mutex::new(RouterState {
            early_ttl,
            session_queue: session_queue.max(1),
            running: HashMap::new(),
            early: HashMap::new(),
            early_bytes: 0,
            sent: HashMap::new(),
            sent_bytes: 0,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delivers one frame from an authenticated peer and answers what the
    /// sender is told: `Accepted` only once the frame is in its session's
    /// queue or kept for its session; `Busy` when the queue or the
    /// early-frame budget is full (the sender sends it again later:
    /// backpressure, not loss); `Refused` for what can never be delivered.
    pub fn deliver(&self, from: PartyId, bytes: Vec<u8>) -> FrameAnswer {
        metrics::counter!("custos_signer_bytes_received_total").increment(bytes.len() as u64);
        let session = match Envelope::decode(&bytes) {
            Ok(envelope) => envelope.session,
            Err(error) => {
                reject(error.reason());
                return FrameAnswer::Refused("undecodable");
            }
        };
        let mut state = self.lock();
        if let Some(running) = state.running.get(&session) {
            let Some(index) = running.participants.iter().position(|party| *party == from) else {
                reject("not_participant");
                return FrameAnswer::Refused("not_participant");
            };
            if running
                .inbox
                .try_send(InboundFrame {
                    from: index as u16,
                    bytes,
                })
                .is_err()
            {
                reject("queue_full");
                return FrameAnswer::Busy;
            }
            return FrameAnswer::Accepted;
        }
        if state
            .sent
            .get(&session)
            .is_some_and(|sent| sent.ended.is_some())
        {
            // The session ended here: nothing will read the frame (a peer's
            // late copy or a resend that crossed the end).
            reject("session_ended");
            return FrameAnswer::Refused("session_ended");
        }
        let now = Instant::now();
        let ttl = state.early_ttl;
        let mut expired_bytes = 0;
        state.early.retain(|session, early| {
            let keep = now.duration_since(early.since) < ttl;
            if !keep {
                expired_bytes += RouterState::early_frames_bytes(early);
                tracing::warn!(
                    session = %hex::encode(session.0),
                    frames = early.frames.len(),
                    "frames for a session that never started here were dropped after the deadline"
                );
                reject("early_expired");
            }
            keep
        });
        state.early_bytes -= expired_bytes;
        let full = (!state.early.contains_key(&session) && state.early.len() >= EARLY_SESSIONS)
            || state.early_bytes + bytes.len() > EARLY_BYTES;
        if full {
            reject("early_buffer_full");
            return FrameAnswer::Busy;
        }
        let len = bytes.len();
        let early = state.early.entry(session).or_insert_with(|| EarlyFrames {
            since: now,
            frames: Vec::new(),
        });
        if early.frames.len() >= EARLY_FRAMES_PER_SESSION {
            reject("early_buffer_full");
            return FrameAnswer::Busy;
        }
        early.frames.push((from, bytes));
        state.early_bytes += len;
        FrameAnswer::Accepted
    }

    /// Registers a session and hands it the frames that came early.
    fn open(&self, session: &Session) -> mpsc::Receiver<InboundFrame> {
        let mut state = self.lock();
        let (inbox, frames) = mpsc::channel(state.session_queue);
        let early = match state.early.remove(&session.id) {
            Some(early) => {
                state.early_bytes -= RouterState::early_frames_bytes(&early);
                early.frames
            }
            None => Vec::new(),
        };
        for (from, bytes) in early {
            match session.participants.iter().position(|party| *party == from) {
                Some(index) => {
                    let _ = inbox.try_send(InboundFrame {
                        from: index as u16,
                        bytes,
                    });
                }
                None => reject("not_participant"),
            }
        }
        state.running.insert(
            session.id,
            RunningSession {
                participants: session.participants.clone(),
                inbox,
            },
        );
        state.prune_sent(0);
        state.sent.entry(session.id).or_insert_with(|| SentFrames {
            participants: session.participants.clone(),
            frames: Vec::new(),
            bytes: 0,
            ended: None,
        });
        frames
    }

    /// Keeps a copy of a frame this node sent in a session, to send it
    /// again to a peer that lost it. Over the byte budget the copy is not
    /// kept (older ended sessions are forgotten first).
    fn record_sent(&self, id: &ExecutionId, to: Recipient, bytes: &[u8]) {
        let mut state = self.lock();
        if !state.sent.contains_key(id) {
            return;
        }
        state.prune_sent(bytes.len());
        if state.sent_bytes + bytes.len() > SENT_BYTES {
            reject("sent_budget_full");
            return;
        }
        if let Some(sent) = state.sent.get_mut(id) {
            sent.frames.push((to, bytes.to_vec()));
            sent.bytes += bytes.len();
            state.sent_bytes += bytes.len();
        }
    }

    /// Ends a session here: its queue goes, its sent frames stay for
    /// [`SENT_RETENTION`] with how it ended, and frames that still arrive
    /// for it are refused.
    fn close(&self, id: &ExecutionId, status: SessionStatus) {
        let mut state = self.lock();
        state.running.remove(id);
        if let Some(sent) = state.sent.get_mut(id) {
            sent.ended = Some((Instant::now(), status));
        }
    }

    /// What a peer that asks for `id`'s frames again gets: the session's
    /// status here and this node's frames of the session addressed to it
    /// (broadcasts and its own). A peer that is not a participant learns
    /// nothing.
    pub fn resend_for(&self, from: PartyId, id: &ExecutionId) -> (SessionStatus, Vec<Vec<u8>>) {
        let state = self.lock();
        let Some(sent) = state.sent.get(id) else {
            return (SessionStatus::Unknown, Vec::new());
        };
        let Some(index) = sent.participants.iter().position(|party| *party == from) else {
            return (SessionStatus::Unknown, Vec::new());
        };
        let frames = sent
            .frames
            .iter()
            .filter(|(to, _)| match to {
                Recipient::Broadcast => true,
                Recipient::Party(to) => usize::from(*to) == index,
            })
            .map(|(_, bytes)| bytes.clone())
            .collect();
        let status = match sent.ended {
            None => SessionStatus::Running,
            Some((_, status)) => status,
        };
        (status, frames)
    }
}

/// A session registered with the router: frames for it are queued from
/// now on, before its run starts (an aux-info run may first generate its
/// primes, for tens of seconds). Dropped without [`Node::run_opened`], it
/// ends as failed.
struct OpenedSession {
    router: Router,
    session: Session,
    inbox: Option<mpsc::Receiver<InboundFrame>>,
}

impl OpenedSession {
    fn new(router: &Router, session: Session) -> OpenedSession {
        let inbox = router.open(&session);
        OpenedSession {
            router: router.clone(),
            session,
            inbox: Some(inbox),
        }
    }
}

impl Drop for OpenedSession {
    fn drop(&mut self) {
        if self.inbox.is_some() {
            self.router.close(&self.session.id, SessionStatus::Failed);
        }
    }
}

/// When a run that waits without progress counts as stalled, and how long
/// a peer may stay unable to help (unknown there, failed, or unreachable)
/// before the run is given up, derived from the run's deadline: FROST
/// (10 s) asks after 1 s and gives up after 5 s; aux info (600 s) asks
/// after 10 s and gives up after 60 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StallPolicy {
    after: Duration,
    give_up: Duration,
}

impl StallPolicy {
    fn for_deadline(deadline: Duration) -> StallPolicy {
        StallPolicy {
            after: (deadline / 20).clamp(Duration::from_secs(1), Duration::from_secs(10)),
            give_up: (deadline / 2).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

/// Everything a job handler needs.
pub struct Node {
    me: PartyId,
    coordinator: PartyId,
    coordinator_key: VerifyingKey,
    store: Arc<ShareStore>,
    network: Network,
    router: Router,
    deadlines: Deadlines,
    /// Requests with a job running now, with its attempt: a second job of
    /// the same request waits for its replay record instead of racing it,
    /// and a job of a newer attempt first cancels the older one's session.
    in_flight: Mutex<HashMap<RequestId, Running>>,
    /// Serialises read-modify-write of the persisted prime pool between the
    /// background filler and aux-info jobs.
    pool: tokio::sync::Mutex<()>,
    /// Decoded shares and aux info: the signing path reads these, not the
    /// store (see `decoded`).
    decoded: Decoded,
    /// Held while aux info is written to the store and swapped in memory,
    /// so the store and memory agree on one value per committee.
    aux_writes: Mutex<()>,
    /// The operator's recovery key settings (share backups).
    backup: crate::config::BackupConfig,
    /// Protocol runs active now: prime generation for the pool stands
    /// still while any runs.
    active_runs: Arc<AtomicUsize>,
    /// Injected faults (tests only; see `faults`).
    faults: crate::faults::Faults,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

impl Node {
    /// Builds the node around a started network and an opened store, after
    /// rewriting replay records of the earlier format without their secrets
    /// (once per store).
    pub fn new(
        config: &NodeConfig,
        me: PartyId,
        store: Arc<ShareStore>,
        network: Network,
    ) -> anyhow::Result<Arc<Self>> {
        let coordinator_key = VerifyingKey::from_bytes(&config.coordinator.0)
            .map_err(|_| anyhow::anyhow!("the coordinator id is not an Ed25519 public key"))?;
        drop_secrets_from_replay_records(&store)?;
        let faults = crate::faults::Faults::from_env();
        Ok(Arc::new(Self {
            me,
            coordinator: config.coordinator,
            coordinator_key,
            store,
            network,
            router: Router::with_queue(
                Deadlines::get(config.deadlines.longest_secs()),
                faults.session_queue.unwrap_or(SESSION_QUEUE),
            ),
            deadlines: config.deadlines.clone(),
            in_flight: Mutex::new(HashMap::new()),
            pool: tokio::sync::Mutex::new(()),
            decoded: Decoded::default(),
            aux_writes: Mutex::new(()),
            backup: config.backup.clone(),
            active_runs: Arc::new(AtomicUsize::new(0)),
            faults,
        }))
    }

    /// The node's store.
    pub fn store(&self) -> &Arc<ShareStore> {
        &self.store
    }

    /// Serves network events until the network stops.
    pub async fn serve(self: Arc<Self>, mut events: mpsc::Receiver<NetEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                NetEvent::Frame {
                    from,
                    bytes,
                    respond,
                } => {
                    if self.faults.lose_frame() {
                        respond.send(FrameAnswer::Accepted).await;
                        continue;
                    }
                    let answer = self.router.deliver(from, bytes);
                    respond.send(answer).await;
                }
                NetEvent::Job {
                    from,
                    bytes,
                    respond,
                } => {
                    let node = self.clone();
                    tokio::spawn(async move { node.answer_job(from, bytes, respond).await });
                }
                NetEvent::Resend {
                    from,
                    session,
                    respond,
                } => {
                    let (status, frames) = self.router.resend_for(from, &session);
                    let resent = u32::try_from(frames.len()).unwrap_or(u32::MAX);
                    if resent > 0 {
                        metrics::counter!("custos_signer_frames_resent_total")
                            .increment(u64::from(resent));
                        tracing::info!(
                            session = %hex::encode(session.0),
                            peer = %from,
                            resent,
                            ?status,
                            "a peer asked for this node's frames of a session again"
                        );
                    }
                    let network = self.network.clone();
                    tokio::spawn(async move {
                        for bytes in frames {
                            let _ = network.send_frame(&from, bytes).await;
                        }
                        respond
                            .send(crate::transport::ResendAnswer { status, resent })
                            .await;
                    });
                }
            }
        }
    }

    async fn answer_job(self: Arc<Self>, from: PartyId, bytes: Vec<u8>, respond: JobResponder) {
        let started = Instant::now();
        let (kind, response) = match self.clone().handle_job(from, &bytes).await {
            Ok((kind, output)) => (kind, JobResponse::Done(output)),
            Err((kind, error)) => {
                metrics::counter!("custos_signer_jobs_refused_total", "reason" => error.reason())
                    .increment(1);
                tracing::warn!(kind, reason = error.reason(), %error, "job refused or failed");
                (
                    kind,
                    JobResponse::Failed {
                        reason: error.reason().to_string(),
                        message: error.to_string(),
                    },
                )
            }
        };
        let outcome = if matches!(response, JobResponse::Done(_)) {
            "ok"
        } else {
            "error"
        };
        metrics::counter!("custos_signer_jobs_total", "kind" => kind, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("custos_signer_job_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        let mut encoded = Vec::new();
        if ciborium::into_writer(&response, &mut encoded).is_ok() {
            respond.send(encoded).await;
        }
    }

    async fn handle_job(
        self: Arc<Self>,
        from: PartyId,
        bytes: &[u8],
    ) -> Result<(&'static str, JobOutput), (&'static str, JobError)> {
        if from != self.coordinator {
            return Err((
                "unknown",
                JobError::Refused("jobs are only taken from the pinned coordinator".into()),
            ));
        }
        let signed: SignedJob =
            ciborium::from_reader(bytes).map_err(|_| ("unknown", JobError::Malformed))?;
        let job = signed
            .verify(&self.coordinator_key, now_unix())
            .map_err(|error| ("unknown", error))?;
        let kind = job.body.kind();
        if job.body == JobBody::Health {
            return self
                .health()
                .map(|output| (kind, output))
                .map_err(|error| (kind, error));
        }
        let guard = self.claim(job.request, job.attempt).await;
        let key = job.request.0;
        let record = self
            .store
            .record(JOB_RECORDS, &key)
            .map_err(|error| (kind, JobError::Refused(error.to_string())))?
            .map(|bytes| ReplayRecord::from_bytes(&bytes))
            .transpose()
            .map_err(|_| {
                (
                    kind,
                    JobError::Refused("replay record does not decode".into()),
                )
            })?;
        let record = match record {
            // A record of the earlier format (the startup rewrite runs once
            // per store; an older binary run on this folder since may have
            // written more) loses its secrets as soon as it is read.
            Some((record, true)) => {
                self.save_record(&key, &record)
                    .map_err(|error| (kind, error))?;
                Some(record)
            }
            Some((record, false)) => Some(record),
            None => None,
        };
        let mut record = match check_replay(&job, record.as_ref()).map_err(|error| (kind, error))? {
            ReplayDecision::Answer(output) => return Ok((kind, output)),
            ReplayDecision::Run(record) => record,
        };
        // Persist the attempt before running it: after a crash the same
        // attempt is refused instead of run twice.
        self.save_record(&key, &record)
            .map_err(|error| (kind, error))?;
        let output = SUPERSEDED
            .scope(guard.superseded.clone(), self.execute(&job))
            .await
            .map_err(|error| (kind, error))?;
        // Only what a replay answers is kept: never an exported backup's
        // K1 or sealed share (`RecordedResult`).
        record.complete(&output);
        self.save_record(&key, &record)
            .map_err(|error| (kind, error))?;
        Ok((kind, output))
    }

    fn save_record(&self, key: &[u8], record: &ReplayRecord) -> Result<(), JobError> {
        self.store
            .put_record(JOB_RECORDS, key, &record.to_bytes()?)
            .map_err(|error| JobError::Refused(error.to_string()))
    }

    /// Waits until no other job of `request` runs, then marks this attempt
    /// running. A running older attempt is told to stop first: the
    /// coordinator sends a newer attempt only once it gave the older one up
    /// (a member failed or was unreachable), so that session cannot finish,
    /// and waiting out its deadline would make the new attempt's peers time
    /// out in turn.
    async fn claim(self: &Arc<Self>, request: RequestId, attempt: u32) -> InFlightGuard {
        loop {
            {
                let mut in_flight = self
                    .in_flight
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                match in_flight.get(&request) {
                    None => {
                        let superseded = Arc::new(tokio::sync::Notify::new());
                        in_flight.insert(
                            request,
                            Running {
                                attempt,
                                superseded: superseded.clone(),
                            },
                        );
                        return InFlightGuard {
                            node: self.clone(),
                            request,
                            attempt,
                            superseded,
                        };
                    }
                    // `notify_one` keeps a permit if the session is not
                    // waiting yet, so the stop is never lost.
                    Some(running) if running.attempt < attempt => {
                        running.superseded.notify_one();
                    }
                    Some(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn health(&self) -> Result<JobOutput, JobError> {
        let wallets = self
            .store
            .wallets()
            .map_err(|error| JobError::Refused(error.to_string()))?
            .len();
        let primes = self
            .store
            .prime_pool()
            .map_err(|error| JobError::Refused(error.to_string()))?
            .len();
        Ok(JobOutput::Health {
            wallets,
            primes,
            aux_precomputed: self.decoded.aux_precomputed(),
        })
    }

    async fn execute(self: &Arc<Self>, job: &Job) -> Result<JobOutput, JobError> {
        let refused = |error: custos_protocol::Error| JobError::Refused(error.to_string());
        match &job.body {
            JobBody::Health => self.health(),
            JobBody::KeyInfo {
                wallet,
                curve,
                generation,
            } => {
                let info = match curve {
                    Curve::Secp256k1 => self
                        .load_share::<Secp256k1>(*wallet, *generation)?
                        .public_info()
                        .to_bytes(),
                    Curve::Ed25519 => self
                        .load_share::<Ed25519>(*wallet, *generation)?
                        .public_info()
                        .to_bytes(),
                }
                .map_err(refused)?;
                Ok(JobOutput::KeyInfo { info })
            }
            JobBody::Reshare {
                wallet,
                curve,
                old_info,
                dealers,
                new_committee,
                new_threshold,
            } => {
                let new_committee =
                    Committee::new(new_committee.iter().copied()).map_err(refused)?;
                match curve {
                    Curve::Secp256k1 => {
                        self.reshare::<Secp256k1>(
                            job,
                            *wallet,
                            old_info,
                            dealers,
                            new_committee,
                            *new_threshold,
                        )
                        .await
                    }
                    Curve::Ed25519 => {
                        self.reshare::<Ed25519>(
                            job,
                            *wallet,
                            old_info,
                            dealers,
                            new_committee,
                            *new_threshold,
                        )
                        .await
                    }
                }
            }
            JobBody::ExportBackup {
                wallet,
                curve,
                generation,
                backup_id,
                created_at_ms,
            } => {
                let meta = crate::backup::BackupMeta {
                    backup_id: *backup_id,
                    wallet: wallet.0,
                    party: self.me.0,
                    generation: generation.0,
                    curve: String::new(),
                    created_at_ms: *created_at_ms,
                };
                match curve {
                    Curve::Secp256k1 => self.export_backup::<Secp256k1>(meta),
                    Curve::Ed25519 => self.export_backup::<Ed25519>(meta),
                }
            }
            JobBody::RestoreBackup {
                wallet,
                curve,
                sealed,
                k1,
                expected_info,
            } => match curve {
                Curve::Secp256k1 => {
                    self.restore_backup::<Secp256k1>(*wallet, sealed, k1, expected_info)
                }
                Curve::Ed25519 => {
                    self.restore_backup::<Ed25519>(*wallet, sealed, k1, expected_info)
                }
            },
            JobBody::ReshareCommit { wallet, generation } => {
                let store_error =
                    |error: crate::store::StoreError| JobError::Refused(error.to_string());
                let mut deleted = Vec::new();
                for older in self.store.generations(*wallet).map_err(store_error)? {
                    if older < *generation {
                        self.store
                            .delete_share(*wallet, older)
                            .map_err(store_error)?;
                        deleted.push(older.0);
                    }
                }
                self.decoded.retire_below(*wallet, *generation);
                tracing::info!(wallet = %hex::encode(wallet.0), ?deleted, "resharing committed: older shares deleted");
                Ok(JobOutput::Committed { deleted })
            }
            JobBody::Keygen {
                wallet,
                curve,
                committee,
                threshold,
            } => {
                let run = KeygenRun {
                    wallet: *wallet,
                    request: job.request,
                    committee: Committee::new(committee.iter().copied()).map_err(refused)?,
                    threshold: *threshold,
                    me: self.me,
                    attempt: job.attempt,
                };
                let deadline = Deadlines::get(self.deadlines.keygen_secs);
                match curve {
                    Curve::Secp256k1 => self.keygen::<Secp256k1>(&run, deadline).await,
                    Curve::Ed25519 => self.keygen::<Ed25519>(&run, deadline).await,
                }
            }
            JobBody::AuxInfo { committee } => {
                let run = AuxInfoRun {
                    request: job.request,
                    committee: Committee::new(committee.iter().copied()).map_err(refused)?,
                    me: self.me,
                    attempt: job.attempt,
                };
                // Registered before the primes: if the pool is empty they
                // take tens of seconds, and the peers' first frames must
                // wait in this session's queue, not in the early buffer.
                let session = run
                    .session(Deadlines::get(self.deadlines.aux_info_secs))
                    .map_err(refused)?;
                let opened = self.open(session);
                let primes = self.take_primes().await?;
                let aux = self
                    .run_opened(opened, move |party| async move {
                        let mut rng = rand_core::OsRng;
                        ecdsa::aux_info(&run, primes, party, &mut rng).await
                    })
                    .await
                    .map_err(refused)?;
                let aux = Arc::new(aux);
                {
                    let _writes = self
                        .aux_writes
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    self.store
                        .put_aux(&aux)
                        .map_err(|error| JobError::Refused(error.to_string()))?;
                    self.decoded.install_aux(aux.clone());
                }
                self.clone().precompute_aux(aux);
                Ok(JobOutput::AuxInfo)
            }
            JobBody::Sign {
                wallet,
                generation,
                scheme,
                quorum,
                payload,
                path,
            } => {
                let signature = match scheme.curve() {
                    Curve::Secp256k1 => {
                        let share = self.load_share::<Secp256k1>(*wallet, *generation)?;
                        let run = self.sign_run(&share, job, quorum)?;
                        let digest: [u8; 32] = payload.as_slice().try_into().map_err(|_| {
                            JobError::Refused(
                                "a secp256k1 signing payload is a 32-byte digest".into(),
                            )
                        })?;
                        if *scheme == Scheme::Ecdsa {
                            let aux = self.load_aux(&share.committee)?;
                            let session = run
                                .session(
                                    ProtocolKind::SignEcdsa,
                                    Deadlines::get(self.deadlines.ecdsa_secs),
                                )
                                .map_err(refused)?;
                            let path = path.clone();
                            let signature = self
                                .run_opened(self.open(session), move |party| async move {
                                    let mut rng = rand_core::OsRng;
                                    ecdsa::sign(&share, &aux, &run, &digest, &path, party, &mut rng)
                                        .await
                                })
                                .await
                                .map_err(refused)?;
                            signature.to_rsv().to_vec()
                        } else {
                            let session = run
                                .session(
                                    ProtocolKind::SignTaproot,
                                    Deadlines::get(self.deadlines.frost_secs),
                                )
                                .map_err(refused)?;
                            let path = path.clone();
                            self.run_opened(self.open(session), move |party| async move {
                                let mut rng = rand_core::OsRng;
                                schnorr::sign_taproot(&share, &run, &digest, &path, party, &mut rng)
                                    .await
                            })
                            .await
                            .map_err(refused)?
                            .to_vec()
                        }
                    }
                    Curve::Ed25519 => {
                        let share = self.load_share::<Ed25519>(*wallet, *generation)?;
                        let run = self.sign_run(&share, job, quorum)?;
                        let session = run
                            .session(
                                ProtocolKind::SignEd25519,
                                Deadlines::get(self.deadlines.frost_secs),
                            )
                            .map_err(refused)?;
                        let (payload, path) = (payload.clone(), path.clone());
                        self.run_opened(self.open(session), move |party| async move {
                            let mut rng = rand_core::OsRng;
                            schnorr::sign_ed25519(&share, &run, &payload, &path, party, &mut rng)
                                .await
                        })
                        .await
                        .map_err(refused)?
                        .to_vec()
                    }
                };
                metrics::counter!("custos_signer_signatures_total", "scheme" => format!("{scheme:?}")).increment(1);
                Ok(JobOutput::Signature { signature })
            }
        }
    }

    async fn keygen<E: KeyCurve>(
        &self,
        run: &KeygenRun,
        deadline: Duration,
    ) -> Result<JobOutput, JobError>
    where
        keygen::KeygenMsg<E>: Send,
    {
        let refused = |error: custos_protocol::Error| JobError::Refused(error.to_string());
        if !self
            .store
            .generations(run.wallet)
            .map_err(|error| JobError::Refused(error.to_string()))?
            .is_empty()
        {
            return Err(JobError::Refused(
                "this node already holds a key of that wallet".into(),
            ));
        }
        let session = run.session::<E>(deadline).map_err(refused)?;
        let run = run.clone();
        let share: KeyShare<E> = self
            .run_opened(self.open(session), move |party| async move {
                let mut rng = rand_core::OsRng;
                keygen::keygen::<E, _, _>(&run, party, &mut rng).await
            })
            .await
            .map_err(refused)?;
        let share = self.keep_share(share)?;
        Ok(JobOutput::Keygen {
            public_key: share.public_key().to_bytes(true).to_vec(),
            chain_code: share.chain_code().unwrap_or_default(),
        })
    }

    /// Runs this node's side of a resharing: deals from its current share if
    /// it is a dealer, stores the new generation if it is a new holder. The
    /// old share stays until the commit job.
    async fn reshare<E: KeyCurve>(
        &self,
        job: &Job,
        wallet: custos_protocol::WalletId,
        old_info: &[u8],
        dealers: &[PartyId],
        new_committee: Committee,
        new_threshold: u16,
    ) -> Result<JobOutput, JobError>
    where
        reshare::ReshareMsg<E>: Send,
    {
        let refused = |error: custos_protocol::Error| JobError::Refused(error.to_string());
        let old = PublicKeyInfo::<E>::from_bytes(old_info).map_err(refused)?;
        if old.wallet != wallet {
            return Err(JobError::Refused("key info is of another wallet".into()));
        }
        let share = if dealers.contains(&self.me) {
            Some(self.load_share::<E>(wallet, old.generation)?)
        } else {
            None
        };
        let run = ReshareRun {
            request: job.request,
            old,
            dealers: dealers.to_vec(),
            new_committee,
            new_threshold,
            me: self.me,
            attempt: job.attempt,
        };
        let session = run
            .session(Deadlines::get(self.deadlines.keygen_secs))
            .map_err(refused)?;
        let output = self
            .run_opened(self.open(session), move |party| async move {
                let mut rng = rand_core::OsRng;
                reshare::reshare(&run, share.as_deref(), party, &mut rng).await
            })
            .await
            .map_err(refused)?;
        match output {
            ReshareOutput::NewShare(new_share) => {
                let new_share = self.keep_share(new_share)?;
                Ok(JobOutput::Reshared {
                    public_key: new_share.public_key().to_bytes(true).to_vec(),
                    chain_code: new_share.chain_code().unwrap_or_default(),
                })
            }
            ReshareOutput::Dealt => Ok(JobOutput::Dealt),
        }
    }

    /// The share of `wallet` at `generation`: decoded from memory, or read
    /// from the store once and kept.
    fn load_share<E: KeyCurve>(
        &self,
        wallet: custos_protocol::WalletId,
        generation: custos_protocol::KeyGeneration,
    ) -> Result<Arc<KeyShare<E>>, JobError> {
        if let Some(share) = self.decoded.share::<E>(wallet, generation) {
            return Ok(share);
        }
        let share = Arc::new(
            self.store
                .share::<E>(wallet, generation)
                .map_err(|error| JobError::Refused(error.to_string()))?
                .ok_or_else(|| {
                    JobError::Refused("no share of that wallet and generation on this node".into())
                })?,
        );
        self.decoded.put_share(share.clone());
        Ok(share)
    }

    /// Seals a backup of this node's share described by `meta` (its curve
    /// is filled in here) for the configured recovery key.
    fn export_backup<E: KeyCurve>(
        &self,
        mut meta: crate::backup::BackupMeta,
    ) -> Result<JobOutput, JobError> {
        let refused = |error: crate::backup::BackupError| JobError::Refused(error.to_string());
        let recovery = self.backup.recovery_public_key.ok_or_else(|| {
            JobError::Refused(
                "no [backup] recovery_public_key is configured: this node exports no backups"
                    .into(),
            )
        })?;
        meta.curve = E::NAME.to_string();
        let share = self.load_share::<E>(
            custos_protocol::WalletId(meta.wallet),
            custos_protocol::KeyGeneration(meta.generation),
        )?;
        let bytes = zeroize::Zeroizing::new(
            share
                .to_bytes()
                .map_err(|error| JobError::Refused(error.to_string()))?,
        );
        let (sealed, half) =
            crate::backup::seal_backup(&bytes, &meta, &recovery).map_err(refused)?;
        tracing::info!(
            wallet = %hex::encode(meta.wallet),
            generation = meta.generation,
            backup = %hex::encode(meta.backup_id),
            "share backup sealed"
        );
        Ok(JobOutput::Backup {
            sealed: sealed.to_bytes().map_err(refused)?,
            k1: crate::job::SecretBytes(half.k1().to_vec()),
        })
    }

    /// Opens a backup with the control plane's half and the operator's
    /// recovery key, checks that it is this node's share of `wallet` with
    /// the public data the control plane expects, and stores it.
    fn restore_backup<E: KeyCurve>(
        &self,
        wallet: custos_protocol::WalletId,
        sealed: &[u8],
        k1: &crate::job::SecretBytes,
        expected_info: &[u8],
    ) -> Result<JobOutput, JobError> {
        let refused = |error: crate::backup::BackupError| JobError::Refused(error.to_string());
        let path = self.backup.recovery_key_file.as_ref().ok_or_else(|| {
            JobError::Refused(
                "no [backup] recovery_key_file is configured: the operator provides it to restore"
                    .into(),
            )
        })?;
        let recovery = read_recovery_key(path)?;
        let sealed = crate::backup::SealedBackup::from_bytes(sealed).map_err(refused)?;
        let meta = sealed.meta().clone();
        if meta.wallet != wallet.0 || meta.party != self.me.0 || meta.curve != E::NAME {
            return Err(JobError::Refused(
                "the backup is of another wallet, party or curve".into(),
            ));
        }
        let k1: [u8; 32] =
            k1.0.as_slice().try_into().map_err(|_| {
                JobError::Refused("the control plane's half is not 32 bytes".into())
            })?;
        let bytes = crate::backup::open_backup(&sealed, &k1, &recovery).map_err(refused)?;
        let share = KeyShare::<E>::from_bytes(&bytes)
            .map_err(|_| JobError::Refused("the backup holds no key share".into()))?;
        let generation = custos_protocol::KeyGeneration(meta.generation);
        let info = share
            .public_info()
            .to_bytes()
            .map_err(|error| JobError::Refused(error.to_string()))?;
        // The scheme keeps the share secret but does not prove who sealed
        // it: only a share with the wallet's known public data is taken.
        if share.wallet != wallet || share.generation != generation || info != expected_info {
            return Err(JobError::Refused(
                "the restored share does not match the wallet's public key data".into(),
            ));
        }
        self.keep_share(share)?;
        tracing::warn!(
            wallet = %hex::encode(wallet.0),
            generation = generation.0,
            "key share restored from a backup"
        );
        Ok(JobOutput::Restored { generation })
    }

    /// Stores a new share and keeps it decoded.
    fn keep_share<E: KeyCurve>(&self, share: KeyShare<E>) -> Result<Arc<KeyShare<E>>, JobError> {
        self.store
            .put_share(&share)
            .map_err(|error| JobError::Refused(error.to_string()))?;
        let share = Arc::new(share);
        self.decoded.put_share(share.clone());
        Ok(share)
    }

    /// This node's aux info for `committee`: from memory, or read from the
    /// store once and kept. Starts the background precomputation when the
    /// value is plain.
    fn load_aux(self: &Arc<Self>, committee: &Committee) -> Result<Arc<AuxInfo>, JobError> {
        let aux = match self.decoded.aux(committee) {
            Some(aux) => aux,
            None => {
                let aux = Arc::new(
                    self.store
                        .aux(committee)
                        .map_err(|error| JobError::Refused(error.to_string()))?
                        .ok_or_else(|| {
                            JobError::Refused("no aux info for this committee".into())
                        })?,
                );
                self.decoded.insert_aux_if_absent(aux)
            }
        };
        if !aux.is_precomputed() {
            self.clone().precompute_aux(aux.clone());
        }
        Ok(aux)
    }

    /// Precomputes `aux` (about 8 s of CPU, see ARCHITECTURE.md) on a
    /// blocking thread, stores the result sealed and swaps it into memory.
    /// Signing meanwhile uses the plain value; at most one run per committee.
    fn precompute_aux(self: Arc<Self>, aux: Arc<AuxInfo>) {
        if !self.decoded.start_precompute(&aux.committee) {
            return;
        }
        tokio::spawn(async move {
            let committee = aux.committee.clone();
            let started = Instant::now();
            let node = self.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let mut precomputed = (*aux).clone();
                precomputed
                    .precompute()
                    .map_err(|error| error.to_string())?;
                // Only the value still in use is replaced: a newer aux-info
                // run of the committee wins over this precomputation.
                let _writes = node
                    .aux_writes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if !node.decoded.is_current_aux(&aux) {
                    return Ok(false);
                }
                node.store
                    .put_aux(&precomputed)
                    .map_err(|error| error.to_string())?;
                node.decoded.install_aux(Arc::new(precomputed));
                Ok::<_, String>(true)
            })
            .await;
            match outcome {
                Ok(Ok(true)) => {
                    metrics::gauge!("custos_signer_aux_precomputed")
                        .set(self.decoded.aux_precomputed() as f64);
                    tracing::info!(
                        seconds = started.elapsed().as_secs_f64(),
                        "aux info precomputed and stored"
                    );
                }
                Ok(Ok(false)) => {
                    tracing::info!("aux info precomputation superseded by a newer run")
                }
                Ok(Err(error)) => tracing::error!(%error, "aux info precomputation failed"),
                Err(error) => tracing::error!(%error, "aux info precomputation panicked"),
            }
            self.decoded.finish_precompute(&committee);
        });
    }

    fn sign_run<E: KeyCurve>(
        &self,
        share: &KeyShare<E>,
        job: &Job,
        quorum: &[PartyId],
    ) -> Result<SignRun, JobError> {
        let quorum = Quorum::new(&share.committee, share.threshold(), quorum.iter().copied())
            .map_err(|error| JobError::Refused(error.to_string()))?;
        Ok(SignRun {
            wallet: share.wallet,
            request: job.request,
            generation: share.generation,
            quorum,
            me: self.me,
            attempt: job.attempt,
        })
    }

    /// Takes a set of primes from the persisted pool (generating one now if
    /// the pool is empty, which takes tens of seconds).
    async fn take_primes(&self) -> Result<Primes, JobError> {
        let _pool = self.pool.lock().await;
        let mut pool = self
            .store
            .prime_pool()
            .map_err(|error| JobError::Refused(error.to_string()))?;
        let primes = match pool.take() {
            Some(primes) => primes,
            None => {
                tracing::warn!("prime pool empty: generating primes on demand");
                tokio::task::spawn_blocking(Primes::generate)
                    .await
                    .map_err(|_| JobError::Refused("prime generation failed".into()))?
            }
        };
        self.store
            .put_prime_pool(&pool)
            .map_err(|error| JobError::Refused(error.to_string()))?;
        Ok(primes)
    }

    /// Keeps the persisted prime pool at `target` sets, generating one set at
    /// a time on a thread of its own (tens of seconds each) and logging
    /// progress. Runs until the process ends. Generation stands still while
    /// any protocol run is active (`Primes::generate_yielding`), so a
    /// session never waits for the CPU behind the pool: the pool fills in
    /// the gaps between runs.
    pub async fn fill_prime_pool(self: Arc<Self>, target: usize) {
        loop {
            let pooled = match self.store.prime_pool() {
                Ok(pool) => pool.len(),
                Err(error) => {
                    tracing::error!(%error, "cannot read the prime pool");
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    continue;
                }
            };
            metrics::gauge!("custos_signer_prime_pool_size").set(pooled as f64);
            if pooled >= target {
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            let started = Instant::now();
            let active = self.active_runs.clone();
            let Ok(primes) = tokio::task::spawn_blocking(move || {
                Primes::generate_yielding(&move || active.load(Ordering::SeqCst) > 0)
            })
            .await
            else {
                continue;
            };
            let _pool = self.pool.lock().await;
            let stored = self.store.prime_pool().and_then(|mut pool| {
                pool.push(primes);
                self.store.put_prime_pool(&pool).map(|()| pool.len())
            });
            match stored {
                Ok(pooled) => tracing::info!(
                    pooled,
                    target,
                    seconds = started.elapsed().as_secs_f64(),
                    "prime pool: generated a set"
                ),
                Err(error) => tracing::error!(%error, "cannot store the prime pool"),
            }
        }
    }

    /// Registers `session` with the router (see [`OpenedSession`]).
    fn open(&self, session: Session) -> OpenedSession {
        OpenedSession::new(&self.router, session)
    }

    /// Runs one protocol session, registered with [`Node::open`], over the
    /// network through the driver.
    ///
    /// CGGMP21 sessions (aux info, ECDSA signing) compute for hundreds of
    /// milliseconds between awaits. They run on a blocking-pool thread of
    /// their own, so the runtime's worker threads stay free for the swarm
    /// and for every other session's frames: a node computing never stalls
    /// its peers. The cheap protocols (keygen, FROST, resharing) stay on the
    /// runtime, where a thread hand-off would cost more than the work.
    ///
    /// A [`Watchdog`] watches the run: when it waits for frames without
    /// progress, it asks the peers to send their frames again, and it stops
    /// the run early ([`custos_protocol::Error::Stalled`]) when no peer can
    /// help, instead of letting it wait for its deadline.
    async fn run_opened<M, T, Fut>(
        &self,
        mut opened: OpenedSession,
        protocol: impl FnOnce(
                driver::Party<
                    M,
                    tokio_stream_adapter::Inbox,
                    futures::channel::mpsc::UnboundedSender<OutboundFrame>,
                >,
            ) -> Fut
            + Send
            + 'static,
    ) -> Result<T, custos_protocol::Error>
    where
        M: round_based_bounds::Message + 'static,
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, custos_protocol::Error>> + Send + 'static,
    {
        let started = Instant::now();
        let session = opened.session.clone();
        let kind = session.kind;
        let id = session.id;
        let participants = session.participants.clone();
        let Some(frames) = opened.inbox.take() else {
            return Err(custos_protocol::Error::InvalidArgument(
                "a session runs once",
            ));
        };
        let inbox = tokio_stream_adapter::Inbox(frames);
        let _active = ActiveRun::start(&self.active_runs);
        let (outgoing, mut to_send) = futures::channel::mpsc::unbounded::<OutboundFrame>();
        let network = self.network.clone();
        let router = self.router.clone();
        let me = self.me;
        let forwarder = tokio::spawn(async move {
            while let Some(frame) = to_send.next().await {
                metrics::counter!("custos_signer_bytes_sent_total")
                    .increment(frame.bytes.len() as u64);
                router.record_sent(&id, frame.to, &frame.bytes);
                let recipients: Vec<PartyId> = match frame.to {
                    Recipient::Broadcast => participants
                        .iter()
                        .copied()
                        .filter(|party| *party != me)
                        .collect(),
                    Recipient::Party(index) => participants
                        .get(usize::from(index))
                        .copied()
                        .into_iter()
                        .collect(),
                };
                for recipient in recipients {
                    let _ = network.send_frame(&recipient, frame.bytes.clone()).await;
                }
            }
        });
        let progress = Arc::new(driver::Progress::default());
        let stalled = Arc::new(Stalled::default());
        let watchdog = tokio::spawn(
            Watchdog {
                network: self.network.clone(),
                session: session.clone(),
                me: self.me,
                progress: progress.clone(),
                policy: StallPolicy::for_deadline(session.deadline),
                stalled: stalled.clone(),
            }
            .watch(),
        );
        let superseded = SUPERSEDED.try_with(Arc::clone).ok();
        let drive = async move {
            let run = driver::run_with_progress(session, inbox, outgoing, progress, protocol);
            let superseded = async move {
                match superseded {
                    Some(superseded) => superseded.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                outcome = run => outcome,
                () = superseded => {
                    tracing::info!(?kind, "session stopped: a newer attempt of its request arrived");
                    (
                        Err(custos_protocol::Error::Superseded(kind)),
                        driver::SessionReport::default(),
                    )
                }
                reason = stalled.wait() => (
                    Err(custos_protocol::Error::Stalled { kind, reason }),
                    driver::SessionReport::default(),
                ),
            }
        };
        let (result, report) = if matches!(kind, ProtocolKind::SignEcdsa | ProtocolKind::AuxInfo) {
            let runtime = tokio::runtime::Handle::current();
            match tokio::task::spawn_blocking(move || runtime.block_on(drive)).await {
                Ok(outcome) => outcome,
                Err(_) => (
                    Err(custos_protocol::Error::OutputCheck(
                        "session thread panicked",
                    )),
                    driver::SessionReport::default(),
                ),
            }
        } else {
            drive.await
        };
        watchdog.abort();
        self.router.close(
            &id,
            if result.is_ok() {
                SessionStatus::Finished
            } else {
                SessionStatus::Failed
            },
        );
        // Frames already queued still go out: peers may need our last round.
        let _ = tokio::time::timeout(Duration::from_secs(5), forwarder).await;
        for (reason, count) in &report.dropped {
            metrics::counter!("custos_signer_rejected_messages_total", "reason" => *reason)
                .increment(*count);
        }
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("custos_signer_sessions_total", "protocol" => kind.name(), "outcome" => outcome).increment(1);
        metrics::histogram!("custos_signer_session_seconds", "protocol" => kind.name())
            .record(started.elapsed().as_secs_f64());
        result
    }
}

/// Counts a protocol run as active for as long as it lives.
struct ActiveRun(Arc<AtomicUsize>);

impl ActiveRun {
    fn start(active: &Arc<AtomicUsize>) -> ActiveRun {
        active.fetch_add(1, Ordering::SeqCst);
        ActiveRun(active.clone())
    }
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The watchdog's verdict that a run cannot finish: set once, read by the
/// run's select.
#[derive(Default)]
struct Stalled {
    reason: Mutex<Option<&'static str>>,
    notify: tokio::sync::Notify,
}

impl Stalled {
    fn stop(&self, reason: &'static str) {
        *self
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason);
        self.notify.notify_one();
    }

    async fn wait(&self) -> &'static str {
        loop {
            if let Some(reason) = *self
                .reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
            {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

/// Watches one run. Every `policy.after` it looks at the run's progress
/// (frames handed to the protocol, frames sent). A run that computes is
/// left alone; a run that waits for frames and saw none for `policy.after`
/// has stalled: the watchdog asks every peer to send its frames of the
/// session again (frames the network lost, or that arrived where nothing
/// kept them, come back; the driver drops the duplicates) and learns the
/// session's status at each peer. It stops the run when it cannot finish:
/// a peer's session failed, every peer finished and what they sent again
/// for `policy.give_up` did not move the run, or a peer stayed unknown or
/// unreachable for `policy.give_up`.
struct Watchdog {
    network: Network,
    session: Session,
    me: PartyId,
    progress: Arc<driver::Progress>,
    policy: StallPolicy,
    stalled: Arc<Stalled>,
}

impl Watchdog {
    async fn watch(self) {
        let kind = self.session.kind;
        let session = hex::encode(self.session.id.0);
        let peers: Vec<PartyId> = self
            .session
            .participants
            .iter()
            .copied()
            .filter(|party| *party != self.me)
            .collect();
        let mut mark = self.progress.mark();
        let mut idle_since = Instant::now();
        // Resend rounds in the current stall, and since when each peer has
        // been unable to help.
        let mut asked = 0u32;
        let mut unhelpful: HashMap<PartyId, Instant> = HashMap::new();
        // Since when every peer has said it finished: their kept frames are
        // then the only way to finish, and a frame sent again can be lost
        // again, so they are asked until `policy.give_up`, not once.
        let mut all_finished_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(self.policy.after).await;
            let now_mark = self.progress.mark();
            if now_mark != mark || !self.progress.waiting() {
                if asked > 0 {
                    tracing::info!(?kind, %session, asked, "stalled session moves again");
                }
                mark = now_mark;
                idle_since = Instant::now();
                asked = 0;
                unhelpful.clear();
                all_finished_since = None;
                continue;
            }
            let idle = idle_since.elapsed();
            if idle < self.policy.after {
                continue;
            }
            if asked == 0 {
                metrics::counter!("custos_signer_session_stalls_total", "protocol" => kind.name())
                    .increment(1);
            }
            // A peer that does not answer within the window counts as
            // unreachable from the moment it was asked (a paused process
            // keeps its connections and answers nothing).
            let asked_at = Instant::now();
            let wait = self.policy.after;
            let answers = futures::future::join_all(peers.iter().map(|peer| {
                let network = self.network.clone();
                let id = self.session.id;
                async move {
                    let answer = tokio::time::timeout(wait, network.ask_resend(peer, id)).await;
                    (*peer, answer.ok().and_then(Result::ok))
                }
            }))
            .await;
            asked += 1;
            let mut statuses = Vec::with_capacity(answers.len());
            let mut failed = false;
            let mut all_done = true;
            for (peer, answer) in &answers {
                let status = answer.map_or(SessionStatus::Unknown, |answer| answer.status);
                statuses.push(format!("{peer}={status:?}"));
                match status {
                    SessionStatus::Running => {
                        unhelpful.remove(peer);
                        all_done = false;
                    }
                    SessionStatus::Finished => {
                        unhelpful.remove(peer);
                    }
                    SessionStatus::Failed => failed = true,
                    SessionStatus::Unknown => {
                        unhelpful.entry(*peer).or_insert(asked_at);
                        all_done = false;
                    }
                }
            }
            if all_done {
                all_finished_since.get_or_insert(asked_at);
            } else {
                all_finished_since = None;
            }
            let statuses = statuses.join(", ");
            let idle_secs = idle.as_secs();
            if asked == 1 {
                tracing::warn!(?kind, %session, idle_secs, %statuses, "session stalled: asked the peers for their frames again");
            } else {
                tracing::info!(?kind, %session, idle_secs, asked, %statuses, "session still stalled: asked again");
            }
            let reason = if failed {
                Some("a peer's session failed")
            } else if all_done
                && asked > 1
                && all_finished_since.is_some_and(|since| since.elapsed() >= self.policy.give_up)
            {
                Some("every peer finished and their frames did not complete the run")
            } else if unhelpful
                .values()
                .any(|since| since.elapsed() >= self.policy.give_up)
            {
                Some("a peer stayed unknown or unreachable")
            } else {
                None
            };
            if let Some(reason) = reason {
                tracing::warn!(?kind, %session, idle_secs, %statuses, reason, "session stopped: it cannot finish");
                metrics::counter!("custos_signer_sessions_stopped_stalled_total", "protocol" => kind.name())
                    .increment(1);
                self.stalled.stop(reason);
                return;
            }
        }
    }
}

/// The job of a request that runs now.
struct Running {
    attempt: u32,
    /// Notified when a newer attempt of the request arrives.
    superseded: Arc<tokio::sync::Notify>,
}

tokio::task_local! {
    /// The running job's stop signal, read by `run_opened` (set around
    /// `execute` by `handle_job`, so every protocol run of a job sees it).
    static SUPERSEDED: Arc<tokio::sync::Notify>;
}

/// Releases a request's in-flight mark when its job ends.
struct InFlightGuard {
    node: Arc<Node>,
    request: RequestId,
    attempt: u32,
    superseded: Arc<tokio::sync::Notify>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut in_flight = self
            .node
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if in_flight
            .get(&self.request)
            .is_some_and(|running| running.attempt == self.attempt)
        {
            in_flight.remove(&self.request);
        }
    }
}

/// The bounds the driver puts on protocol messages, in one place.
mod round_based_bounds {
    /// A protocol message the driver can carry.
    pub trait Message:
        round_based::ProtocolMessage
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + 'static
    {
    }
    impl<T> Message for T where
        T: round_based::ProtocolMessage
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Send
            + 'static
    {
    }
}

/// A tokio receiver as a `Stream` of inbound frames.
mod tokio_stream_adapter {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use custos_protocol::driver::InboundFrame;
    use tokio::sync::mpsc;

    /// Inbound frames of one session.
    pub struct Inbox(pub mpsc::Receiver<InboundFrame>);

    impl futures::Stream for Inbox {
        type Item = InboundFrame;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<InboundFrame>> {
            self.get_mut().0.poll_recv(cx)
        }
    }
}

/// Rewrites, once per store, every replay record of the earlier format,
/// which kept whole job outputs: an exported backup's K1 and sealed share
/// were in it (sealed at rest, but a node must not keep K1 at all, and with
/// the operator's recovery key configured for a restore the pair opens the
/// share, even after a resharing deleted it). Runs before the node takes
/// jobs. A record that does not decode is left as it is: a job of its
/// request is refused, as before. Returns how many records were rewritten.
fn drop_secrets_from_replay_records(store: &ShareStore) -> Result<usize, crate::store::StoreError> {
    if store
        .record(STORE_MIGRATIONS, RECORDS_WITHOUT_SECRETS)?
        .is_some()
    {
        return Ok(0);
    }
    let rewritten =
        store.update_records(JOB_RECORDS, |bytes| match ReplayRecord::from_bytes(bytes) {
            Ok((record, true)) => record.to_bytes().ok(),
            Ok((_, false)) => None,
            Err(_) => {
                tracing::warn!("a replay record does not decode: left as it is");
                None
            }
        })?;
    store.put_record(STORE_MIGRATIONS, RECORDS_WITHOUT_SECRETS, b"done")?;
    if rewritten > 0 {
        tracing::info!(
            rewritten,
            "replay records rewritten without the outputs they need not keep"
        );
    }
    Ok(rewritten)
}

/// Reads the operator's recovery secret key: 64 hex characters.
fn read_recovery_key(path: &std::path::Path) -> Result<crate::backup::RecoveryKey, JobError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
        JobError::Refused(format!("cannot read the recovery key file: {error}"))
    })?);
    let bytes =
        zeroize::Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
            JobError::Refused("the recovery key file is not 64 hex characters".into())
        })?);
    let secret: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| JobError::Refused("the recovery key file is not 64 hex characters".into()))?;
    Ok(crate::backup::RecoveryKey::from_bytes(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_protocol::wire::Envelope;

    fn frame(session: u8, payload_len: usize) -> Vec<u8> {
        Envelope {
            kind: ProtocolKind::AuxInfo,
            session: ExecutionId([session; 32]),
            round: 1,
            sender: 1,
            recipient: Recipient::Broadcast,
            payload: vec![0; payload_len],
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn early_frames_are_bounded_in_count_and_bytes_and_handed_to_their_session() {
        let router = Router::default();
        let peer = PartyId([1; 32]);
        // Per session: at most EARLY_FRAMES_PER_SESSION frames.
        for _ in 0..EARLY_FRAMES_PER_SESSION + 10 {
            router.deliver(peer, frame(1, 10));
        }
        assert_eq!(
            router.lock().early[&ExecutionId([1; 32])].frames.len(),
            EARLY_FRAMES_PER_SESSION
        );
        // In bytes: large frames for many sessions stop at EARLY_BYTES.
        for session in 2..=250u8 {
            router.deliver(peer, frame(session, 400 * 1024));
        }
        assert!(router.lock().early_bytes <= EARLY_BYTES);
        // A session that starts takes its early frames, and the budget
        // is given back.
        let before = router.lock().early_bytes;
        let session = Session {
            kind: ProtocolKind::AuxInfo,
            id: ExecutionId([2; 32]),
            participants: vec![PartyId([0; 32]), peer],
            me: 0,
            deadline: Duration::from_secs(1),
        };
        let mut inbox = router.open(&session);
        assert_eq!(inbox.try_recv().unwrap().from, 1);
        assert!(router.lock().early_bytes < before);
    }

    /// The sender is told a frame is delivered only once it is in its
    /// session's queue or kept for its session; a full queue or budget is
    /// `Busy` (the sender sends it again later), never an acknowledged loss.
    #[test]
    fn a_frame_is_acknowledged_only_once_it_is_queued_or_kept() {
        let router = Router::default();
        let peer = PartyId([1; 32]);
        assert_eq!(router.deliver(peer, frame(1, 10)), FrameAnswer::Accepted);
        for _ in 1..EARLY_FRAMES_PER_SESSION {
            assert_eq!(router.deliver(peer, frame(1, 10)), FrameAnswer::Accepted);
        }
        assert_eq!(
            router.deliver(peer, frame(1, 10)),
            FrameAnswer::Busy,
            "a full early budget is backpressure"
        );
        assert_eq!(
            router.deliver(peer, b"not a frame".to_vec()),
            FrameAnswer::Refused("undecodable")
        );
        // A running session whose queue is full answers Busy, and Accepted
        // again once the session took its frames.
        let session = Session {
            kind: ProtocolKind::AuxInfo,
            id: ExecutionId([9; 32]),
            participants: vec![PartyId([0; 32]), peer],
            me: 0,
            deadline: Duration::from_secs(1),
        };
        let mut inbox = router.open(&session);
        for _ in 0..SESSION_QUEUE {
            assert_eq!(router.deliver(peer, frame(9, 10)), FrameAnswer::Accepted);
        }
        assert_eq!(router.deliver(peer, frame(9, 10)), FrameAnswer::Busy);
        inbox.try_recv().unwrap();
        assert_eq!(router.deliver(peer, frame(9, 10)), FrameAnswer::Accepted);
        assert_eq!(
            router.deliver(PartyId([7; 32]), frame(9, 10)),
            FrameAnswer::Refused("not_participant")
        );
    }

    /// Frames that arrive long before their session (a peer got its job
    /// first, or this node generated Paillier primes before it could start)
    /// are still there when it starts, up to the node's longest deadline:
    /// the stall of a first start (issue 15) was a peer's round messages
    /// dropped after 60 s.
    #[test]
    fn early_frames_wait_for_their_session_until_the_deadline() {
        let router = Router::new(Duration::from_secs(600));
        let peer = PartyId([1; 32]);
        assert_eq!(router.deliver(peer, frame(3, 10)), FrameAnswer::Accepted);
        // Two minutes later (past the former 60 s), another session's frame
        // arrives and the first is still kept.
        router
            .lock()
            .early
            .get_mut(&ExecutionId([3; 32]))
            .unwrap()
            .since -= Duration::from_secs(120);
        assert_eq!(router.deliver(peer, frame(4, 10)), FrameAnswer::Accepted);
        let session = Session {
            kind: ProtocolKind::AuxInfo,
            id: ExecutionId([3; 32]),
            participants: vec![PartyId([0; 32]), peer],
            me: 0,
            deadline: Duration::from_secs(1),
        };
        let mut inbox = router.open(&session);
        assert_eq!(inbox.try_recv().unwrap().from, 1);
        // Past the deadline they go (and the loss is logged).
        router
            .lock()
            .early
            .get_mut(&ExecutionId([4; 32]))
            .unwrap()
            .since -= Duration::from_secs(601);
        assert_eq!(router.deliver(peer, frame(5, 10)), FrameAnswer::Accepted);
        assert!(!router.lock().early.contains_key(&ExecutionId([4; 32])));
    }

    /// What a node sent in a session stays to be sent again to the peer
    /// that asks (only broadcasts and its own frames, only to a
    /// participant), with the session's status; an ended session refuses
    /// late frames instead of keeping them as early ones.
    #[test]
    fn sent_frames_are_sent_again_to_the_participant_that_asks_and_nobody_else() {
        let router = Router::default();
        let (me, peer, other) = (PartyId([0; 32]), PartyId([1; 32]), PartyId([2; 32]));
        let session = Session {
            kind: ProtocolKind::AuxInfo,
            id: ExecutionId([6; 32]),
            participants: vec![me, peer, other],
            me: 0,
            deadline: Duration::from_secs(1),
        };
        let _inbox = router.open(&session);
        router.record_sent(&session.id, Recipient::Broadcast, b"to all");
        router.record_sent(&session.id, Recipient::Party(1), b"to peer");
        router.record_sent(&session.id, Recipient::Party(2), b"to other");
        assert_eq!(
            router.resend_for(peer, &session.id),
            (
                SessionStatus::Running,
                vec![b"to all".to_vec(), b"to peer".to_vec()]
            )
        );
        assert_eq!(
            router.resend_for(other, &session.id).1,
            vec![b"to all".to_vec(), b"to other".to_vec()]
        );
        // Not a participant, or an unknown session: nothing, not even the status.
        assert_eq!(
            router.resend_for(PartyId([9; 32]), &session.id),
            (SessionStatus::Unknown, vec![])
        );
        assert_eq!(
            router.resend_for(peer, &ExecutionId([7; 32])),
            (SessionStatus::Unknown, vec![])
        );
        // Ended: its frames stay for the peer that missed the last round,
        // with how it ended; a frame that still arrives is refused.
        router.close(&session.id, SessionStatus::Finished);
        assert_eq!(
            router.resend_for(peer, &session.id),
            (
                SessionStatus::Finished,
                vec![b"to all".to_vec(), b"to peer".to_vec()]
            )
        );
        let late = Envelope {
            kind: ProtocolKind::AuxInfo,
            session: session.id,
            round: 1,
            sender: 1,
            recipient: Recipient::Broadcast,
            payload: vec![0; 4],
        }
        .encode()
        .unwrap();
        assert_eq!(
            router.deliver(peer, late),
            FrameAnswer::Refused("session_ended")
        );
        assert!(router.lock().early.is_empty());
        // After the retention the session is forgotten.
        router
            .lock()
            .sent
            .get_mut(&session.id)
            .unwrap()
            .ended
            .as_mut()
            .unwrap()
            .0 -= SENT_RETENTION;
        router.lock().prune_sent(0);
        assert_eq!(
            router.resend_for(peer, &session.id),
            (SessionStatus::Unknown, vec![])
        );
        assert_eq!(router.lock().sent_bytes, 0);
    }

    /// A session registered before its run (aux info: the primes first)
    /// queues frames, and ends as failed if it never runs.
    #[test]
    fn an_opened_session_that_never_runs_ends_as_failed() {
        let router = Router::default();
        let peer = PartyId([1; 32]);
        let session = Session {
            kind: ProtocolKind::AuxInfo,
            id: ExecutionId([8; 32]),
            participants: vec![PartyId([0; 32]), peer],
            me: 0,
            deadline: Duration::from_secs(1),
        };
        let opened = OpenedSession::new(&router, session.clone());
        assert_eq!(router.deliver(peer, frame(8, 4)), FrameAnswer::Accepted);
        assert_eq!(
            router.resend_for(peer, &session.id).0,
            SessionStatus::Running
        );
        drop(opened);
        assert_eq!(
            router.resend_for(peer, &session.id).0,
            SessionStatus::Failed
        );
    }

    #[test]
    fn the_stall_window_follows_the_deadline() {
        let frost = StallPolicy::for_deadline(Duration::from_secs(10));
        assert_eq!(frost.after, Duration::from_secs(1));
        assert_eq!(frost.give_up, Duration::from_secs(5));
        let aux = StallPolicy::for_deadline(Duration::from_secs(600));
        assert_eq!(aux.after, Duration::from_secs(10));
        assert_eq!(aux.give_up, Duration::from_secs(60));
    }
}
