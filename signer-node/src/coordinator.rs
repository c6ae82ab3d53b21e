//! The coordinator client: what the control plane embeds to drive signer
//! nodes. It knows the node registry, signs jobs with its Ed25519 key (the
//! key nodes pin), sends them over libp2p, gathers results, and when a
//! signing fails it retries with another quorum under the same request id.
//! It never holds a share: it only ever sees public keys and signatures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_protocol::{KeyGeneration, PartyId, RequestId, WalletId};
use ed25519_dalek::SigningKey;
use libp2p::{identity, Multiaddr};
use sha2::Digest;

use crate::job::{Curve, Job, JobBody, JobOutput, Scheme};
use crate::node::JobResponse;
use crate::transport::{Network, NetworkConfig};

/// How long the other members of a run may still answer once one answered
/// with a failure (see [`Coordinator::send_raw`]): longer than a FROST
/// session's stall watchdog takes to give up on a peer that is gone (5 s),
/// so that a FROST member which waited for the gone peer answers with its
/// own failure. A DKG watchdog gives up after 15 s: a DKG member still
/// waiting is reported silent (unreachable) instead, which fails the run
/// all the same.
pub const FAILURE_GRACE: Duration = Duration::from_secs(10);
/// Runs of aux-info generation and of a DKG before the coordinator gives
/// up: a run that stalls stops within a minute (aux info) or seconds (DKG)
/// and is tried again under a fresh run id.
pub const RUN_ATTEMPTS: u32 = 3;

/// A signer node as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its identity.
    pub party: PartyId,
    /// Where it listens.
    pub address: Multiaddr,
}

/// Why a coordinated operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A node could not be reached or did not answer in time.
    #[error("node {node} unreachable: {message}")]
    Unreachable {
        /// The node.
        node: PartyId,
        /// What the transport said.
        message: String,
    },
    /// A node refused the job or the protocol failed there.
    #[error("node {node} failed the job ({reason}): {message}")]
    Failed {
        /// The node.
        node: PartyId,
        /// Stable reason label from the node.
        reason: String,
        /// Detail from the node.
        message: String,
    },
    /// Nodes answered with different results for the same run.
    #[error("nodes disagree on the result")]
    Inconsistent,
    /// Not enough nodes to form a quorum.
    #[error("no quorum of {threshold} left among {available} nodes")]
    NoQuorum {
        /// Signers needed.
        threshold: u16,
        /// Nodes not yet excluded.
        available: usize,
    },
    /// The coordinator itself could not build or sign the job.
    #[error("coordinator error: {0}")]
    Internal(String),
}

/// A wallet's public key as the nodes report it after a DKG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalletKey {
    /// Compressed SEC1 (secp256k1) or 32-byte (Ed25519) public key.
    pub public_key: Vec<u8>,
    /// HD chain code.
    pub chain_code: [u8; 32],
}

/// The coordinator.
pub struct Coordinator {
    key: SigningKey,
    network: Network,
    nodes: Vec<NodeInfo>,
    job_ttl: Duration,
}

impl Coordinator {
    /// Starts the coordinator's libp2p client with its identity key `key`
    /// (nodes pin its public key) and the node registry.
    pub fn start(key: SigningKey, nodes: Vec<NodeInfo>) -> anyhow::Result<Self> {
        let mut secret = key.to_bytes();
        let keypair = identity::Keypair::ed25519_from_bytes(&mut secret)?;
        let (network, _events) = Network::start(NetworkConfig {
            keypair,
            listen: None,
            peers: nodes
                .iter()
                .map(|node| (node.party, Some(node.address.clone())))
                .collect(),
            job_timeout: Duration::from_secs(900),
        })?;
        Ok(Self {
            key,
            network,
            nodes,
            job_ttl: Duration::from_secs(120),
        })
    }

    /// The coordinator's identity (what nodes pin).
    pub fn party(&self) -> PartyId {
        PartyId(self.key.verifying_key().to_bytes())
    }

    /// The registry.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// Signs `body` for `request`/`attempt` and sends it to every node of
    /// `to` at once; returns each node's outcome in the same order.
    pub async fn submit(
        &self,
        to: &[PartyId],
        request: RequestId,
        attempt: u32,
        body: JobBody,
    ) -> Result<Vec<Result<JobOutput, CoordinatorError>>, CoordinatorError> {
        let expires_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|now| now + self.job_ttl)
            .map_err(|error| CoordinatorError::Internal(error.to_string()))?
            .as_secs();
        let job = Job {
            request,
            attempt,
            expires_at,
            body,
        };
        let signed = job
            .sign(&self.key)
            .map_err(|error| CoordinatorError::Internal(error.to_string()))?;
        let mut bytes = Vec::new();
        ciborium::into_writer(&signed, &mut bytes)
            .map_err(|error| CoordinatorError::Internal(error.to_string()))?;
        self.send_raw(to, bytes, answer_timeout(&job.body)).await
    }

    /// Sends already-encoded job bytes (tests use it to send forged jobs).
    ///
    /// Each node has `timeout` to answer. Once one node answered with a
    /// failure, the run cannot finish, and the others' sessions stop by
    /// themselves within seconds (their watchdogs learn that a peer's
    /// session failed): nodes still silent [`FAILURE_GRACE`] later are
    /// counted unreachable instead of being waited for until `timeout`.
    pub async fn send_raw(
        &self,
        to: &[PartyId],
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<Result<JobOutput, CoordinatorError>>, CoordinatorError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut pending: FuturesUnordered<_> = to
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let bytes = bytes.clone();
                async move { (index, self.network.send_job(node, bytes).await) }
            })
            .collect();
        let mut answers: Vec<Option<Result<JobOutput, CoordinatorError>>> =
            (0..to.len()).map(|_| None).collect();
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut silent_message = format!("no answer within {timeout:?}");
        loop {
            let next = tokio::time::timeout_at(deadline, pending.next()).await;
            let Ok(Some((index, answer))) = next else {
                break;
            };
            let Some(&node) = to.get(index) else {
                continue;
            };
            let answer = decode_answer(node, answer);
            if answer.is_err() {
                let grace = tokio::time::Instant::now() + FAILURE_GRACE;
                if grace < deadline {
                    deadline = grace;
                    silent_message = format!(
                        "no answer {FAILURE_GRACE:?} after another member of the run failed"
                    );
                }
            }
            if let Some(slot) = answers.get_mut(index) {
                *slot = Some(answer);
            }
        }
        Ok(to
            .iter()
            .zip(answers)
            .map(|(node, answer)| {
                answer.unwrap_or_else(|| {
                    Err(CoordinatorError::Unreachable {
                        node: *node,
                        message: silent_message.clone(),
                    })
                })
            })
            .collect())
    }

    /// Creates a wallet: a DKG among `committee`. Every node must report the
    /// same public key.
    ///
    /// A run in which every member failed (it stalled: a lost frame no peer
    /// could send again, a node that went away) left no share anywhere, and
    /// is tried again as the next attempt of the same request, which is a
    /// fresh run id, up to [`RUN_ATTEMPTS`] runs. A run in which some members
    /// finished and others failed is not retried: the finished members keep
    /// their share and answer the request from their replay record, so the
    /// wallet is reported failed and its id is not used again.
    pub async fn create_wallet(
        &self,
        request: RequestId,
        wallet: WalletId,
        curve: Curve,
        committee: &[PartyId],
        threshold: u16,
    ) -> Result<WalletKey, CoordinatorError> {
        let body = JobBody::Keygen {
            wallet,
            curve,
            committee: committee.to_vec(),
            threshold,
        };
        let mut attempt = 0;
        loop {
            let outputs = self
                .submit(committee, request, attempt, body.clone())
                .await?;
            let mut key: Option<WalletKey> = None;
            let mut first_error = None;
            let mut all_failed = true;
            for output in outputs {
                match output {
                    Ok(JobOutput::Keygen {
                        public_key,
                        chain_code,
                    }) => {
                        all_failed = false;
                        let this = WalletKey {
                            public_key,
                            chain_code,
                        };
                        match &key {
                            Some(first) if *first != this => {
                                return Err(CoordinatorError::Inconsistent)
                            }
                            _ => key = Some(this),
                        }
                    }
                    Ok(_) => return Err(CoordinatorError::Inconsistent),
                    Err(error) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
            let Some(error) = first_error else {
                return key.ok_or(CoordinatorError::Inconsistent);
            };
            if !all_failed || attempt + 1 >= RUN_ATTEMPTS {
                return Err(error);
            }
            tracing::warn!(
                %error,
                attempt,
                "DKG run failed on every member; trying again under a fresh run id"
            );
            attempt += 1;
        }
    }

    /// Generates aux info (for ECDSA) for `committee`, trying again under a
    /// fresh run id when a run fails, up to [`RUN_ATTEMPTS`] runs.
    pub async fn aux_info(
        &self,
        request: RequestId,
        committee: &[PartyId],
    ) -> Result<(), CoordinatorError> {
        let mut attempt = 0;
        loop {
            match self.aux_info_run(request, attempt, committee).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt + 1 < RUN_ATTEMPTS => {
                    tracing::warn!(
                        %error,
                        attempt,
                        "aux-info run failed; trying again under a fresh run id"
                    );
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One aux-info run for `committee`: run `attempt` of `request`. Every
    /// run is a request of its own ([`retry_request`]), so every member
    /// runs it again, the members that finished an earlier run included:
    /// aux info is only usable when all members hold the same run's, and a
    /// newer run replaces the older one on every node.
    pub async fn aux_info_run(
        &self,
        request: RequestId,
        attempt: u32,
        committee: &[PartyId],
    ) -> Result<(), CoordinatorError> {
        let body = JobBody::AuxInfo {
            committee: committee.to_vec(),
        };
        let mut first_error = None;
        for output in self
            .submit(committee, retry_request(request, attempt), 0, body)
            .await?
        {
            if let Err(error) = output {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Signs with a quorum of `threshold` nodes of `committee`, trying
    /// `preferred` nodes first. When a run fails, the nodes that failed or
    /// did not answer are left out and the request is retried (same request
    /// id, next attempt) with another quorum, until no quorum is left. All
    /// signers of a successful run must return the same signature.
    #[allow(clippy::too_many_arguments)]
    pub async fn sign(
        &self,
        request: RequestId,
        wallet: WalletId,
        generation: KeyGeneration,
        scheme: Scheme,
        committee: &[PartyId],
        threshold: u16,
        payload: Vec<u8>,
        path: Vec<u32>,
    ) -> Result<Vec<u8>, CoordinatorError> {
        self.sign_from_attempt(
            request, 0, wallet, generation, scheme, committee, threshold, payload, path,
        )
        .await
    }

    /// [`Coordinator::sign`] with attempts numbered from `first_attempt`.
    /// A caller that retries a request after its own restart passes a
    /// number no earlier run used: nodes refuse an attempt they already
    /// started, and answer a request that already succeeded with its stored
    /// signature, so one request never yields two signatures.
    #[allow(clippy::too_many_arguments)]
    pub async fn sign_from_attempt(
        &self,
        request: RequestId,
        first_attempt: u32,
        wallet: WalletId,
        generation: KeyGeneration,
        scheme: Scheme,
        committee: &[PartyId],
        threshold: u16,
        payload: Vec<u8>,
        path: Vec<u32>,
    ) -> Result<Vec<u8>, CoordinatorError> {
        let mut excluded: Vec<PartyId> = Vec::new();
        let mut last_error = None;
        for attempt in first_attempt.. {
            let available: Vec<PartyId> = committee
                .iter()
                .copied()
                .filter(|node| !excluded.contains(node))
                .collect();
            if available.len() < usize::from(threshold) {
                return Err(last_error.unwrap_or(CoordinatorError::NoQuorum {
                    threshold,
                    available: available.len(),
                }));
            }
            let quorum: Vec<PartyId> = available.into_iter().take(usize::from(threshold)).collect();
            let body = JobBody::Sign {
                wallet,
                generation,
                scheme,
                quorum: quorum.clone(),
                payload: payload.clone(),
                path: path.clone(),
            };
            let outputs = self.submit(&quorum, request, attempt, body).await?;
            let mut signature: Option<Vec<u8>> = None;
            let mut failed = false;
            for (node, output) in quorum.iter().zip(outputs) {
                match output {
                    Ok(JobOutput::Signature { signature: this }) => match &signature {
                        Some(first) if *first != this => {
                            return Err(CoordinatorError::Inconsistent)
                        }
                        _ => signature = Some(this),
                    },
                    Ok(_) => return Err(CoordinatorError::Inconsistent),
                    Err(error) => {
                        tracing::warn!(%node, %error, attempt, "signing failed on a node");
                        // A node that could not be reached, or whose run
                        // timed out waiting, is the suspect; leave it out.
                        if matches!(error, CoordinatorError::Unreachable { .. }) {
                            excluded.push(*node);
                        }
                        failed = true;
                        last_error = Some(error);
                    }
                }
            }
            // A signature from any member is the whole signature: every
            // signer checks the aggregate (BIP-340, Ed25519 or the ECDSA
            // recovery) before it answers or stores it, and the caller
            // verifies it again against the wallet's key. One member can
            // hold it while another failed: it finished the run (or answers
            // from its replay record, having finished an earlier attempt)
            // and its peer missed the last frame. Retrying would never
            // succeed, since that member never signs the request again.
            if let Some(signature) = signature {
                if failed {
                    tracing::info!(
                        attempt,
                        "a member answered the signature while another failed; using it"
                    );
                }
                return Ok(signature);
            }
            if !failed {
                return Err(CoordinatorError::Inconsistent);
            }
            if quorum.iter().all(|node| !excluded.contains(node)) {
                // Nobody unreachable: every member answered with a failure.
                // Rotate the quorum so the next attempt differs.
                if let Some(first) = quorum.first() {
                    excluded.push(*first);
                }
            }
        }
        Err(last_error.unwrap_or(CoordinatorError::Inconsistent))
    }

    /// Moves a wallet's key to `new_committee` with `new_threshold` (the same
    /// committee and threshold: a proactive refresh), in two phases:
    ///
    /// 1. the public data of the current generation is read from every
    ///    dealer, and all must agree (it is what new holders check dealings
    ///    against, so it comes from the holders, never from the caller);
    /// 2. the resharing runs among dealers and new holders; every new holder
    ///    must report the unchanged public key;
    /// 3. a test signature of the new generation (FROST: BIP-340 on
    ///    secp256k1, Ed25519 on edwards25519) is made and verified here;
    /// 4. only then are older generations deleted on every old and new
    ///    holder (`ReshareCommit`).
    ///
    /// Returns the new generation. If any step before 4 fails, nothing was
    /// deleted and the old generation still signs.
    #[allow(clippy::too_many_arguments)]
    pub async fn reshare(
        &self,
        request: RequestId,
        wallet: WalletId,
        curve: Curve,
        old_generation: KeyGeneration,
        old_committee: &[PartyId],
        dealers: &[PartyId],
        new_committee: &[PartyId],
        new_threshold: u16,
    ) -> Result<KeyGeneration, CoordinatorError> {
        let step = |label: &str| sub_request(request, label);
        // 1. The old public data, from the dealers.
        let infos = self
            .submit(
                dealers,
                step("key-info"),
                0,
                JobBody::KeyInfo {
                    wallet,
                    curve,
                    generation: old_generation,
                },
            )
            .await?;
        let mut old_info: Option<Vec<u8>> = None;
        for info in infos {
            let JobOutput::KeyInfo { info } = info? else {
                return Err(CoordinatorError::Inconsistent);
            };
            match &old_info {
                Some(first) if *first != info => return Err(CoordinatorError::Inconsistent),
                _ => old_info = Some(info),
            }
        }
        let old_info = old_info.ok_or(CoordinatorError::Inconsistent)?;

        // 2. The resharing.
        let mut participants: Vec<PartyId> = dealers.iter().chain(new_committee).copied().collect();
        participants.sort();
        participants.dedup();
        let body = JobBody::Reshare {
            wallet,
            curve,
            old_info: old_info.clone(),
            dealers: dealers.to_vec(),
            new_committee: new_committee.to_vec(),
            new_threshold,
        };
        let mut new_key: Option<(Vec<u8>, [u8; 32])> = None;
        for output in self.submit(&participants, request, 0, body).await? {
            match output? {
                JobOutput::Reshared {
                    public_key,
                    chain_code,
                } => match &new_key {
                    Some(first) if *first != (public_key.clone(), chain_code) => {
                        return Err(CoordinatorError::Inconsistent)
                    }
                    _ => new_key = Some((public_key, chain_code)),
                },
                JobOutput::Dealt => {}
                _ => return Err(CoordinatorError::Inconsistent),
            }
        }
        let new_generation = KeyGeneration(old_generation.0 + 1);

        // 3. A verified test signature of the new generation.
        let payload: Vec<u8> = sha2::Sha256::new()
            .chain_update(b"custos/reshare/test-signature/v1")
            .chain_update(request.0)
            .finalize()
            .to_vec();
        let scheme = match curve {
            Curve::Secp256k1 => Scheme::Taproot,
            Curve::Ed25519 => Scheme::Ed25519,
        };
        let signature = self
            .sign(
                step("test-signature"),
                wallet,
                new_generation,
                scheme,
                new_committee,
                new_threshold,
                payload.clone(),
                vec![],
            )
            .await?;
        verify_test_signature(curve, &old_info, &payload, &signature)?;

        // 4. Commit: older generations go, everywhere.
        let mut holders: Vec<PartyId> =
            old_committee.iter().chain(&participants).copied().collect();
        holders.sort();
        holders.dedup();
        for output in self
            .submit(
                &holders,
                step("commit"),
                0,
                JobBody::ReshareCommit {
                    wallet,
                    generation: new_generation,
                },
            )
            .await?
        {
            output?;
        }
        Ok(new_generation)
    }

    /// Reads the public data (`PublicKeyInfo::to_bytes`) of a key
    /// generation from every node of `holders`; all must agree.
    pub async fn key_info(
        &self,
        request: RequestId,
        holders: &[PartyId],
        wallet: WalletId,
        curve: Curve,
        generation: KeyGeneration,
    ) -> Result<Vec<u8>, CoordinatorError> {
        let body = JobBody::KeyInfo {
            wallet,
            curve,
            generation,
        };
        let mut agreed: Option<Vec<u8>> = None;
        for output in self.submit(holders, request, 0, body).await? {
            let JobOutput::KeyInfo { info } = output? else {
                return Err(CoordinatorError::Inconsistent);
            };
            match &agreed {
                Some(first) if *first != info => return Err(CoordinatorError::Inconsistent),
                _ => agreed = Some(info),
            }
        }
        agreed.ok_or(CoordinatorError::Inconsistent)
    }

    /// Asks `node` to seal a backup of its share of a generation. Returns
    /// the sealed backup and the control plane's half (K1), which the
    /// caller wraps at once and never stores in the clear.
    #[allow(clippy::too_many_arguments)]
    pub async fn export_backup(
        &self,
        request: RequestId,
        node: PartyId,
        wallet: WalletId,
        curve: Curve,
        generation: KeyGeneration,
        backup_id: [u8; 16],
        created_at_ms: i64,
    ) -> Result<(Vec<u8>, crate::job::SecretBytes), CoordinatorError> {
        let body = JobBody::ExportBackup {
            wallet,
            curve,
            generation,
            backup_id,
            created_at_ms,
        };
        match self.submit(&[node], request, 0, body).await?.pop() {
            Some(Ok(JobOutput::Backup { sealed, k1 })) => Ok((sealed, k1)),
            Some(Err(error)) => Err(error),
            _ => Err(CoordinatorError::Inconsistent),
        }
    }

    /// Asks `node` to restore its share from `sealed` with the control
    /// plane's half `k1`; the node stores it only if its public data is
    /// `expected_info`. Returns the restored generation.
    #[allow(clippy::too_many_arguments)]
    pub async fn restore_backup(
        &self,
        request: RequestId,
        node: PartyId,
        wallet: WalletId,
        curve: Curve,
        sealed: Vec<u8>,
        k1: crate::job::SecretBytes,
        expected_info: Vec<u8>,
    ) -> Result<KeyGeneration, CoordinatorError> {
        let body = JobBody::RestoreBackup {
            wallet,
            curve,
            sealed,
            k1,
            expected_info,
        };
        match self.submit(&[node], request, 0, body).await?.pop() {
            Some(Ok(JobOutput::Restored { generation })) => Ok(generation),
            Some(Err(error)) => Err(error),
            _ => Err(CoordinatorError::Inconsistent),
        }
    }

    /// Asks one node for its health.
    pub async fn health(
        &self,
        node: PartyId,
        request: RequestId,
    ) -> Result<JobOutput, CoordinatorError> {
        self.submit(&[node], request, 0, JobBody::Health)
            .await?
            .pop()
            .unwrap_or(Err(CoordinatorError::Inconsistent))
    }
}

/// How long the coordinator waits for a node's answer: the node's session
/// deadline for that kind of job (see `config::Deadlines`) plus a margin.
/// A node that stops answering mid-session is then given up in time to
/// retry with another quorum.
pub fn answer_timeout(body: &JobBody) -> Duration {
    Duration::from_secs(match body {
        JobBody::Health
        | JobBody::KeyInfo { .. }
        | JobBody::ReshareCommit { .. }
        | JobBody::ExportBackup { .. }
        | JobBody::RestoreBackup { .. } => 10,
        JobBody::Keygen { .. } | JobBody::Reshare { .. } => 45,
        JobBody::AuxInfo { .. } => 900,
        JobBody::Sign {
            scheme: Scheme::Ecdsa,
            ..
        } => 90,
        JobBody::Sign { .. } => 20,
    })
}

/// A node's answer to a job, decoded once: its output, or why it has none.
fn decode_answer<E: std::fmt::Display>(
    node: PartyId,
    answer: Result<Vec<u8>, E>,
) -> Result<JobOutput, CoordinatorError> {
    let bytes = answer.map_err(|error| CoordinatorError::Unreachable {
        node,
        message: error.to_string(),
    })?;
    match ciborium::from_reader::<JobResponse, _>(bytes.as_slice()) {
        Ok(JobResponse::Done(output)) => Ok(output),
        Ok(JobResponse::Failed { reason, message }) => Err(CoordinatorError::Failed {
            node,
            reason,
            message,
        }),
        Err(_) => Err(CoordinatorError::Failed {
            node,
            reason: "malformed_response".into(),
            message: "the node's answer does not decode".into(),
        }),
    }
}

/// The request id of run `attempt` of a request whose runs are requests of
/// their own (aux info): the request itself for the first run, a derived
/// id for each later one.
pub fn retry_request(request: RequestId, attempt: u32) -> RequestId {
    if attempt == 0 {
        request
    } else {
        sub_request(request, &format!("run-{attempt}"))
    }
}

/// A request id for one step of a multi-step operation, derived from the
/// operation's request id so that retries of the operation reuse it.
fn sub_request(request: RequestId, label: &str) -> RequestId {
    let digest = sha2::Sha256::new()
        .chain_update(b"custos/coordinator/sub-request/v1")
        .chain_update(request.0)
        .chain_update(label.as_bytes())
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    RequestId(id)
}

/// Verifies the test signature of a resharing under the (unchanged) key.
fn verify_test_signature(
    curve: Curve,
    old_info: &[u8],
    payload: &[u8],
    signature: &[u8],
) -> Result<(), CoordinatorError> {
    let failed =
        |what: &str| CoordinatorError::Internal(format!("test signature after resharing: {what}"));
    match curve {
        Curve::Secp256k1 => {
            let info =
                custos_protocol::share::PublicKeyInfo::<custos_protocol::Secp256k1>::from_bytes(
                    old_info,
                )
                .map_err(|error| failed(&error.to_string()))?;
            let key = custos_protocol::schnorr::taproot_output_key(&info, &[])
                .map_err(|error| failed(&error.to_string()))?;
            let signature: [u8; 64] = signature.try_into().map_err(|_| failed("length"))?;
            custos_protocol::schnorr::verify_bip340(&key, payload, &signature)
                .map_err(|error| failed(&error.to_string()))
        }
        Curve::Ed25519 => {
            let info =
                custos_protocol::share::PublicKeyInfo::<custos_protocol::Ed25519>::from_bytes(
                    old_info,
                )
                .map_err(|error| failed(&error.to_string()))?;
            let key = custos_protocol::schnorr::ed25519_public_key(&info, &[])
                .map_err(|error| failed(&error.to_string()))?;
            let key =
                ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| failed("public key"))?;
            let signature =
                ed25519_dalek::Signature::from_slice(signature).map_err(|_| failed("length"))?;
            key.verify_strict(payload, &signature)
                .map_err(|_| failed("does not verify"))
        }
    }
}
