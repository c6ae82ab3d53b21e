//! Jobs: what the coordinator asks a node to do, signed by the coordinator.
//!
//! A node acts only on a [`SignedJob`] that verifies under the pinned
//! coordinator key, has not expired, and does not conflict with what the
//! node already did for the same request ([`ReplayGuard`]). Every job is
//! bound to its request id, attempt, expiry and its whole body (wallet, key
//! generation, committee or quorum, digest, derivation path), because the
//! signature covers the canonical encoding of all of it.

use std::fmt;

use custos_protocol::{KeyGeneration, PartyId, RequestId, WalletId};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain separation for job signatures.
const JOB_DOMAIN: &[u8] = b"custos/job/v1";

/// The curve of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Curve {
    /// secp256k1: ECDSA (CGGMP21) and BIP-340/Taproot (FROST).
    Secp256k1,
    /// edwards25519: Ed25519 (FROST).
    Ed25519,
}

/// The signature scheme of a signing job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// CGGMP21 full signing of a 32-byte digest.
    Ecdsa,
    /// FROST BIP-340 with the Taproot key-path tweak, of a 32-byte sighash.
    Taproot,
    /// FROST Ed25519 of a message.
    Ed25519,
}

impl Scheme {
    /// The curve whose key signs with this scheme.
    pub fn curve(self) -> Curve {
        match self {
            Scheme::Ecdsa | Scheme::Taproot => Curve::Secp256k1,
            Scheme::Ed25519 => Curve::Ed25519,
        }
    }
}

/// What the coordinator asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobBody {
    /// Answer with the node's status; no key material involved.
    Health,
    /// Generate aux info (Paillier keys) for a committee.
    AuxInfo {
        /// The committee, any order.
        committee: Vec<PartyId>,
    },
    /// Distributed key generation of a new wallet.
    Keygen {
        /// The new wallet.
        wallet: WalletId,
        /// Its curve.
        curve: Curve,
        /// Its holders, any order.
        committee: Vec<PartyId>,
        /// Signers needed to sign.
        threshold: u16,
    },
    /// Sign with a wallet's key.
    Sign {
        /// The wallet.
        wallet: WalletId,
        /// The key generation that signs.
        generation: KeyGeneration,
        /// The scheme.
        scheme: Scheme,
        /// The signers: exactly the threshold.
        quorum: Vec<PartyId>,
        /// What is signed: a 32-byte digest (ECDSA, Taproot) or the message
        /// (Ed25519).
        payload: Vec<u8>,
        /// Non-hardened derivation path.
        path: Vec<u32>,
    },
    /// Report the public data of a key generation this node holds.
    KeyInfo {
        /// The wallet.
        wallet: WalletId,
        /// Its curve.
        curve: Curve,
        /// The generation.
        generation: KeyGeneration,
    },
    /// Re-deal a key to a new committee and/or threshold (same committee and
    /// threshold: a proactive refresh). New holders store the new generation
    /// beside the old one; nothing is deleted until [`JobBody::ReshareCommit`].
    Reshare {
        /// The wallet.
        wallet: WalletId,
        /// Its curve.
        curve: Curve,
        /// The current generation's public data
        /// (`custos_protocol::share::PublicKeyInfo::to_bytes`), as the
        /// dealers reported it; new holders check every dealing against it.
        old_info: Vec<u8>,
        /// Old holders that deal (at least the old threshold).
        dealers: Vec<PartyId>,
        /// The new holders.
        new_committee: Vec<PartyId>,
        /// The new threshold.
        new_threshold: u16,
    },
    /// Second phase of a resharing: every new holder confirmed and a test
    /// signature of the new generation verified, so shares of older
    /// generations are deleted.
    ReshareCommit {
        /// The wallet.
        wallet: WalletId,
        /// The generation that stays.
        generation: KeyGeneration,
    },
    /// Seal a backup of this node's share of a generation (`crate::backup`):
    /// one half for the operator's recovery key (the node's configuration),
    /// one half for the control plane to wrap in its HSM. The node keeps
    /// neither the sealed backup nor that half, so a replay of the request
    /// is refused ([`JobError::BackupAlreadyExported`]).
    ExportBackup {
        /// The wallet.
        wallet: WalletId,
        /// Its curve.
        curve: Curve,
        /// The generation.
        generation: KeyGeneration,
        /// The backup's id (bound into it).
        backup_id: [u8; 16],
        /// When the backup is made, unix ms (bound into it).
        created_at_ms: i64,
    },
    /// Restore this node's share from a backup, after the control plane's
    /// approval: `k1` is the control plane's half (unwrapped in its HSM);
    /// the operator's recovery key must be configured on the node for the
    /// restore. The share is stored only if its public data equals
    /// `expected_info`.
    RestoreBackup {
        /// The wallet.
        wallet: WalletId,
        /// Its curve.
        curve: Curve,
        /// The sealed backup (`backup::SealedBackup::to_bytes`).
        sealed: Vec<u8>,
        /// The control plane's half.
        k1: SecretBytes,
        /// `PublicKeyInfo::to_bytes` of the generation, as the control plane
        /// knows it.
        expected_info: Vec<u8>,
    },
}

/// Secret bytes inside a job or an answer: never printed, wiped on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(pub Vec<u8>);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl JobBody {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            JobBody::Health => "health",
            JobBody::AuxInfo { .. } => "aux_info",
            JobBody::Keygen { .. } => "keygen",
            JobBody::Sign { .. } => "sign",
            JobBody::KeyInfo { .. } => "key_info",
            JobBody::Reshare { .. } => "reshare",
            JobBody::ReshareCommit { .. } => "reshare_commit",
            JobBody::ExportBackup { .. } => "export_backup",
            JobBody::RestoreBackup { .. } => "restore_backup",
        }
    }
}

/// A job as the coordinator signs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The client request; retries keep it.
    pub request: RequestId,
    /// The coordinator's retry counter for this request.
    pub attempt: u32,
    /// Unix time (seconds) after which the node refuses the job.
    pub expires_at: u64,
    /// What to do.
    pub body: JobBody,
}

impl Job {
    /// The canonical bytes the signature covers.
    pub fn to_bytes(&self) -> Result<Vec<u8>, JobError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(self, &mut bytes).map_err(|_| JobError::Malformed)?;
        Ok(bytes)
    }

    /// Signs the job with the coordinator's key.
    pub fn sign(&self, coordinator: &SigningKey) -> Result<SignedJob, JobError> {
        let job = self.to_bytes()?;
        let signature = coordinator.sign(&signing_input(&job)).to_bytes();
        Ok(SignedJob {
            job,
            signature: signature.to_vec(),
        })
    }

    /// A digest of everything the request commits to, apart from the attempt
    /// and expiry: a retry of the same request must carry the same value.
    pub fn request_binding(&self) -> Result<[u8; 32], JobError> {
        let mut bytes = Vec::new();
        let what = match &self.body {
            // A retry of a signing may change the quorum; nothing else.
            JobBody::Sign {
                wallet,
                generation,
                scheme,
                payload,
                path,
                quorum: _,
            } => (wallet, generation, scheme, payload, path),
            _ => {
                ciborium::into_writer(&(&self.request, &self.body), &mut bytes)
                    .map_err(|_| JobError::Malformed)?;
                return Ok(Sha256::digest(&bytes).into());
            }
        };
        ciborium::into_writer(&(&self.request, what), &mut bytes)
            .map_err(|_| JobError::Malformed)?;
        Ok(Sha256::digest(&bytes).into())
    }
}

fn signing_input(job: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(JOB_DOMAIN.len() + job.len());
    input.extend_from_slice(JOB_DOMAIN);
    input.extend_from_slice(job);
    input
}

/// A job and the coordinator's Ed25519 signature over it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedJob {
    /// The job's canonical bytes ([`Job::to_bytes`]).
    pub job: Vec<u8>,
    /// Ed25519 signature over the domain tag and `job`.
    pub signature: Vec<u8>,
}

impl fmt::Debug for SignedJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignedJob {{ len: {} }}", self.job.len())
    }
}

/// Why a job was refused. [`JobError::reason`] is the stable metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The bytes are not a job.
    #[error("job does not decode")]
    Malformed,
    /// The signature does not verify under the pinned coordinator key.
    #[error("job is not signed by the pinned coordinator")]
    BadSignature,
    /// The job's expiry has passed.
    #[error("job expired")]
    Expired,
    /// The request id was used before with a different body (for signing:
    /// another wallet, generation, scheme, digest or path).
    #[error("job conflicts with an earlier job of the same request")]
    Mismatch,
    /// This attempt of the request ran before.
    #[error("job was already executed")]
    Replayed,
    /// The request exported a backup before. Its answer held the control
    /// plane's half (K1), which the node does not keep, so it cannot be
    /// answered again: a new backup is a new request.
    #[error(
        "this request already exported its backup; the node keeps no copy of the control \
         plane's half, so a new backup needs a new request"
    )]
    BackupAlreadyExported,
    /// The job is well-formed but cannot be run here.
    #[error("job refused: {0}")]
    Refused(String),
}

impl JobError {
    /// A stable, low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            JobError::Malformed => "malformed",
            JobError::BadSignature => "bad_signature",
            JobError::Expired => "expired",
            JobError::Mismatch => "mismatch",
            JobError::Replayed => "replayed",
            JobError::BackupAlreadyExported => "backup_already_exported",
            JobError::Refused(_) => "refused",
        }
    }
}

impl SignedJob {
    /// Checks the signature under the pinned coordinator key and the expiry
    /// against `now` (Unix seconds), and decodes the job.
    pub fn verify(&self, coordinator: &VerifyingKey, now: u64) -> Result<Job, JobError> {
        let signature = ed25519_dalek::Signature::from_slice(&self.signature)
            .map_err(|_| JobError::BadSignature)?;
        coordinator
            .verify(&signing_input(&self.job), &signature)
            .map_err(|_| JobError::BadSignature)?;
        let job: Job =
            ciborium::from_reader(self.job.as_slice()).map_err(|_| JobError::Malformed)?;
        // The signed bytes must be the canonical encoding: one job, one
        // encoding, so replay records keyed on content cannot be dodged.
        if job.to_bytes()? != self.job {
            return Err(JobError::Malformed);
        }
        if now > job.expires_at {
            return Err(JobError::Expired);
        }
        Ok(job)
    }
}

/// What a node remembers of a request, persisted (sealed) so that it
/// survives a restart.
///
/// A record never holds a secret, not even sealed: it keeps a digest of the
/// job ([`Job::request_binding`], which for a restore covers K1 and the
/// sealed backup only through SHA-256) and a [`RecordedResult`], which has
/// no room for key material. A replay that only a secret could answer is
/// refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRecord {
    /// [`Job::request_binding`] of the first job of the request.
    pub binding: [u8; 32],
    /// Attempts already started.
    pub attempts: Vec<u32>,
    /// What a replay answers, once one attempt succeeded.
    pub result: Option<RecordedResult>,
}

/// A replay record as nodes before [`RecordedResult`] wrote it: the whole
/// output, so the K1 of an exported backup too.
#[derive(Deserialize)]
struct ReplayRecordV0 {
    binding: [u8; 32],
    attempts: Vec<u32>,
    result: Option<JobOutput>,
}

impl ReplayRecord {
    /// Marks the request done with `output`, keeping only what a replay
    /// answers ([`RecordedResult::of`]).
    pub fn complete(&mut self, output: &JobOutput) {
        self.result = Some(RecordedResult::of(output));
    }

    /// The record's stored bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, JobError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(self, &mut bytes).map_err(|_| JobError::Malformed)?;
        Ok(bytes)
    }

    /// Decodes stored bytes, of this format or of the earlier one that kept
    /// whole outputs. A record loses on the way whatever a replay does not
    /// need (a backup's K1 and sealed share); `true` says the bytes held
    /// more than that (the earlier format, or a backup output where none
    /// belongs) and should be rewritten with [`ReplayRecord::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, bool), JobError> {
        if let Ok(mut record) = ciborium::from_reader::<ReplayRecord, _>(bytes) {
            if let Some(RecordedResult::Output(output)) = &record.result {
                let kept = RecordedResult::of(output);
                if record.result.as_ref() != Some(&kept) {
                    record.result = Some(kept);
                    return Ok((record, true));
                }
            }
            return Ok((record, false));
        }
        let earlier: ReplayRecordV0 =
            ciborium::from_reader(bytes).map_err(|_| JobError::Malformed)?;
        let record = ReplayRecord {
            binding: earlier.binding,
            attempts: earlier.attempts,
            result: earlier.result.as_ref().map(RecordedResult::of),
        };
        Ok((record, true))
    }
}

/// What a replay record keeps of a successful job: what a replay of the
/// request answers, and never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedResult {
    /// The output, which carries no secret: a replay answers it again.
    /// Only [`RecordedResult::of`] builds this, and never from an output
    /// with a secret in it.
    Output(JobOutput),
    /// A backup was exported. Its output carried the sealed share and the
    /// control plane's half of its key (K1), which belongs in the control
    /// plane's HSM and nowhere on the node, so neither is kept; a replay is
    /// refused with [`JobError::BackupAlreadyExported`].
    BackupExported,
}

impl RecordedResult {
    /// What to keep of `output`. Every output kind is named, so that a new
    /// one needs a decision here about what it may leave on disk.
    pub fn of(output: &JobOutput) -> Self {
        match output {
            JobOutput::Backup { .. } => RecordedResult::BackupExported,
            JobOutput::Health { .. }
            | JobOutput::AuxInfo
            | JobOutput::Keygen { .. }
            | JobOutput::Signature { .. }
            | JobOutput::KeyInfo { .. }
            | JobOutput::Reshared { .. }
            | JobOutput::Dealt
            | JobOutput::Committed { .. }
            | JobOutput::Restored { .. } => RecordedResult::Output(output.clone()),
        }
    }

    /// The answer to a replay of the request.
    pub fn replay(&self) -> Result<JobOutput, JobError> {
        match self {
            // A backup output read back from a record (which no writer of
            // this version makes) is refused like any other exported backup.
            RecordedResult::BackupExported | RecordedResult::Output(JobOutput::Backup { .. }) => {
                Err(JobError::BackupAlreadyExported)
            }
            RecordedResult::Output(output) => Ok(output.clone()),
        }
    }
}

/// What a job produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutput {
    /// Health answer.
    Health {
        /// Wallets held.
        wallets: usize,
        /// Pooled primes.
        primes: usize,
        /// Committees whose aux info is precomputed in memory (absent from
        /// nodes older than this field: zero).
        #[serde(default)]
        aux_precomputed: usize,
    },
    /// Aux info is stored for the committee.
    AuxInfo,
    /// The new wallet's public key (compressed SEC1 on secp256k1, 32 bytes
    /// on edwards25519) and chain code.
    Keygen {
        /// Public key bytes.
        public_key: Vec<u8>,
        /// HD chain code.
        chain_code: [u8; 32],
    },
    /// A signature: (r, s, v) 65 bytes for ECDSA, 64 bytes for Schnorr.
    Signature {
        /// Signature bytes.
        signature: Vec<u8>,
    },
    /// Public data of a key generation.
    KeyInfo {
        /// `PublicKeyInfo::to_bytes`.
        info: Vec<u8>,
    },
    /// This node holds a share of the new generation of the (unchanged) key.
    Reshared {
        /// Public key bytes (as for [`JobOutput::Keygen`]).
        public_key: Vec<u8>,
        /// HD chain code.
        chain_code: [u8; 32],
    },
    /// This node only dealt; every new holder accepted its dealing.
    Dealt,
    /// Older generations are deleted.
    Committed {
        /// The generations this node deleted.
        deleted: Vec<u32>,
    },
    /// A sealed backup and the control plane's half of its key. Never kept
    /// in a replay record ([`RecordedResult::BackupExported`]).
    Backup {
        /// `backup::SealedBackup::to_bytes`.
        sealed: Vec<u8>,
        /// The control plane's half (K1), to wrap in the HSM at once.
        k1: SecretBytes,
    },
    /// The share of this generation is restored and stored.
    Restored {
        /// The generation.
        generation: KeyGeneration,
    },
}

/// What to do with a verified job, given the node's record of its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayDecision {
    /// Run it; the record to persist *before* running is attached.
    Run(ReplayRecord),
    /// The request already succeeded: answer with the stored output and do
    /// not run anything.
    Answer(JobOutput),
}

/// Decides whether a verified job may run. Pure: the caller persists the
/// returned record before it starts the protocol, so a crash cannot lead to
/// running the same attempt twice.
pub fn check_replay(job: &Job, record: Option<&ReplayRecord>) -> Result<ReplayDecision, JobError> {
    let binding = job.request_binding()?;
    let Some(record) = record else {
        return Ok(ReplayDecision::Run(ReplayRecord {
            binding,
            attempts: vec![job.attempt],
            result: None,
        }));
    };
    if record.binding != binding {
        return Err(JobError::Mismatch);
    }
    if let Some(result) = &record.result {
        return result.replay().map(ReplayDecision::Answer);
    }
    if record.attempts.contains(&job.attempt) {
        return Err(JobError::Replayed);
    }
    let mut record = record.clone();
    record.attempts.push(job.attempt);
    Ok(ReplayDecision::Run(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_job(payload: u8, attempt: u32) -> Job {
        Job {
            request: RequestId([1; 16]),
            attempt,
            expires_at: 1_000,
            body: JobBody::Sign {
                wallet: WalletId([2; 16]),
                generation: KeyGeneration(0),
                scheme: Scheme::Taproot,
                quorum: vec![PartyId([3; 32]), PartyId([4 + attempt as u8; 32])],
                payload: vec![payload; 32],
                path: vec![0, 1],
            },
        }
    }

    fn keys() -> (SigningKey, SigningKey) {
        (
            SigningKey::from_bytes(&[7; 32]),
            SigningKey::from_bytes(&[8; 32]),
        )
    }

    #[test]
    fn signed_job_verifies_under_the_pinned_key_only() {
        let (coordinator, impostor) = keys();
        let job = sign_job(1, 0);
        let signed = job.sign(&coordinator).unwrap();
        assert_eq!(
            signed.verify(&coordinator.verifying_key(), 999).unwrap(),
            job
        );
        let forged = job.sign(&impostor).unwrap();
        assert_eq!(
            forged.verify(&coordinator.verifying_key(), 999),
            Err(JobError::BadSignature)
        );
    }

    #[test]
    fn tampered_or_expired_jobs_are_refused() {
        let (coordinator, _) = keys();
        let signed = sign_job(1, 0).sign(&coordinator).unwrap();
        assert_eq!(
            signed.verify(&coordinator.verifying_key(), 1_001),
            Err(JobError::Expired)
        );
        for position in 0..signed.job.len() {
            let mut tampered = signed.clone();
            tampered.job[position] ^= 1;
            assert!(tampered.verify(&coordinator.verifying_key(), 0).is_err());
        }
        let mut truncated = signed.clone();
        truncated.signature.truncate(10);
        assert_eq!(
            truncated.verify(&coordinator.verifying_key(), 0),
            Err(JobError::BadSignature)
        );
    }

    #[test]
    fn a_request_runs_once_per_attempt_and_answers_from_its_record_after_success() {
        let first = sign_job(1, 0);
        let ReplayDecision::Run(mut record) = check_replay(&first, None).unwrap() else {
            panic!("a new request runs");
        };
        // The same attempt again: refused, whatever its state.
        assert_eq!(check_replay(&first, Some(&record)), Err(JobError::Replayed));
        // A retry with another quorum under the same request may run...
        let retry = sign_job(1, 1);
        let ReplayDecision::Run(after_retry) = check_replay(&retry, Some(&record)).unwrap() else {
            panic!("a retry runs while no attempt succeeded");
        };
        assert_eq!(after_retry.attempts, vec![0, 1]);
        // ...but once one succeeded, every later job of the request gets the
        // stored output and nothing is signed again.
        let output = JobOutput::Signature {
            signature: vec![9; 64],
        };
        record.complete(&output);
        assert_eq!(
            check_replay(&sign_job(1, 2), Some(&record)),
            Ok(ReplayDecision::Answer(output))
        );
    }

    fn backup_job(request: u8, attempt: u32, body: JobBody) -> Job {
        Job {
            request: RequestId([request; 16]),
            attempt,
            expires_at: 1_000,
            body,
        }
    }

    fn export_body() -> JobBody {
        JobBody::ExportBackup {
            wallet: WalletId([2; 16]),
            curve: Curve::Secp256k1,
            generation: KeyGeneration(3),
            backup_id: [5; 16],
            created_at_ms: 1_700_000_000_000,
        }
    }

    fn random_bytes(len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        bytes
    }

    /// Panics if `stored` holds any 16-byte window of `secret`: as bytes
    /// next to each other, or as serde writes a `Vec<u8>` to CBOR (an array
    /// of integers, each byte from 24 up preceded by 0x18).
    fn assert_not_kept(stored: &[u8], secret: &[u8], what: &str) {
        const WINDOW: usize = 16;
        let as_integers = |window: &[u8]| -> Vec<u8> {
            window
                .iter()
                .flat_map(|&byte| {
                    if byte < 24 {
                        vec![byte]
                    } else {
                        vec![0x18, byte]
                    }
                })
                .collect()
        };
        for window in secret.windows(WINDOW) {
            for pattern in [window.to_vec(), as_integers(window)] {
                let found = stored
                    .windows(pattern.len())
                    .position(|candidate| candidate == pattern.as_slice());
                assert_eq!(found, None, "{what}: secret bytes are kept at {found:?}");
            }
        }
    }

    #[test]
    fn replay_records_keep_no_secret_of_a_backup_export_or_restore() {
        let k1 = random_bytes(32);
        let sealed = random_bytes(400);
        let cases = [
            (
                "export_backup",
                export_body(),
                JobOutput::Backup {
                    sealed: sealed.clone(),
                    k1: SecretBytes(k1.clone()),
                },
            ),
            (
                "restore_backup",
                JobBody::RestoreBackup {
                    wallet: WalletId([2; 16]),
                    curve: Curve::Ed25519,
                    sealed: sealed.clone(),
                    k1: SecretBytes(k1.clone()),
                    expected_info: vec![6; 64],
                },
                JobOutput::Restored {
                    generation: KeyGeneration(3),
                },
            ),
        ];
        for (what, body, output) in cases {
            let job = backup_job(1, 0, body);
            let ReplayDecision::Run(mut record) = check_replay(&job, None).unwrap() else {
                panic!("{what}: a new request runs");
            };
            // The record persisted before the run, and the one after it.
            assert_not_kept(&record.to_bytes().unwrap(), &k1, what);
            assert_not_kept(&record.to_bytes().unwrap(), &sealed, what);
            record.complete(&output);
            let stored = record.to_bytes().unwrap();
            assert_not_kept(&stored, &k1, what);
            assert_not_kept(&stored, &sealed, what);
            assert_eq!(ReplayRecord::from_bytes(&stored).unwrap(), (record, false));
        }
    }

    #[test]
    fn a_replayed_backup_export_is_refused_and_never_answered_with_its_secret() {
        let job = backup_job(1, 0, export_body());
        let ReplayDecision::Run(mut record) = check_replay(&job, None).unwrap() else {
            panic!("a new request runs");
        };
        record.complete(&JobOutput::Backup {
            sealed: vec![1; 100],
            k1: SecretBytes(vec![2; 32]),
        });
        assert_eq!(record.result, Some(RecordedResult::BackupExported));
        // The same job, and a retry of the request: one stable refusal.
        for attempt in [0, 1] {
            let refused = check_replay(&backup_job(1, attempt, export_body()), Some(&record));
            assert_eq!(refused, Err(JobError::BackupAlreadyExported));
            assert_eq!(
                refused.unwrap_err().reason(),
                "backup_already_exported",
                "the label the coordinator and control plane surface"
            );
        }
        // The request id with another body is still a mismatch.
        let other = JobBody::ExportBackup {
            wallet: WalletId([2; 16]),
            curve: Curve::Secp256k1,
            generation: KeyGeneration(4),
            backup_id: [5; 16],
            created_at_ms: 1_700_000_000_000,
        };
        assert_eq!(
            check_replay(&backup_job(1, 2, other), Some(&record)),
            Err(JobError::Mismatch)
        );
        // A backup output read back from a record is refused as well, and
        // decoding says to rewrite that record without it.
        record.result = Some(RecordedResult::Output(JobOutput::Backup {
            sealed: vec![1; 100],
            k1: SecretBytes(vec![2; 32]),
        }));
        assert_eq!(
            check_replay(&backup_job(1, 3, export_body()), Some(&record)),
            Err(JobError::BackupAlreadyExported)
        );
        let (decoded, rewrite) = ReplayRecord::from_bytes(&record.to_bytes().unwrap()).unwrap();
        assert!(rewrite);
        assert_eq!(decoded.result, Some(RecordedResult::BackupExported));
    }

    /// The layout of replay records before [`RecordedResult`].
    #[derive(Serialize)]
    struct EarlierRecord {
        binding: [u8; 32],
        attempts: Vec<u32>,
        result: Option<JobOutput>,
    }

    fn earlier_bytes(record: &EarlierRecord) -> Vec<u8> {
        let mut bytes = Vec::new();
        ciborium::into_writer(record, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn an_earlier_record_decodes_without_its_backup_secret_and_still_answers_a_signature() {
        let k1 = random_bytes(32);
        let sealed = random_bytes(400);
        let export = backup_job(1, 0, export_body());
        let earlier = earlier_bytes(&EarlierRecord {
            binding: export.request_binding().unwrap(),
            attempts: vec![0],
            result: Some(JobOutput::Backup {
                sealed: sealed.clone(),
                k1: SecretBytes(k1.clone()),
            }),
        });
        let (record, rewrite) = ReplayRecord::from_bytes(&earlier).unwrap();
        assert!(rewrite, "an earlier record must be rewritten");
        assert_eq!(record.result, Some(RecordedResult::BackupExported));
        assert_not_kept(&record.to_bytes().unwrap(), &k1, "rewritten export");
        assert_not_kept(&record.to_bytes().unwrap(), &sealed, "rewritten export");
        assert_eq!(
            check_replay(&export, Some(&record)),
            Err(JobError::BackupAlreadyExported)
        );

        // A signature recorded by an earlier node is still answered, so an
        // upgrade never lets a request sign twice.
        let sign = sign_job(1, 0);
        let output = JobOutput::Signature {
            signature: vec![9; 64],
        };
        let earlier = earlier_bytes(&EarlierRecord {
            binding: sign.request_binding().unwrap(),
            attempts: vec![0],
            result: Some(output.clone()),
        });
        let (record, rewrite) = ReplayRecord::from_bytes(&earlier).unwrap();
        assert!(rewrite);
        assert_eq!(
            check_replay(&sign_job(1, 1), Some(&record)),
            Ok(ReplayDecision::Answer(output))
        );
        // A record of this version is taken as it is.
        assert_eq!(
            ReplayRecord::from_bytes(&record.to_bytes().unwrap()).unwrap(),
            (record, false)
        );
        assert_eq!(
            ReplayRecord::from_bytes(b"garbage"),
            Err(JobError::Malformed)
        );
    }

    #[test]
    fn same_request_with_another_digest_is_a_mismatch() {
        let ReplayDecision::Run(record) = check_replay(&sign_job(1, 0), None).unwrap() else {
            panic!("a new request runs");
        };
        assert_eq!(
            check_replay(&sign_job(2, 1), Some(&record)),
            Err(JobError::Mismatch)
        );
    }
}
