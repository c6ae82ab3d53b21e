//! Signed checkpoints of the audit chains: a chain cannot be cut silently.
//!
//! A hash chain alone shows a record changed in place, but not a tail that
//! was deleted together with a rewritten `audit_heads` row: what is left is
//! a shorter chain that verifies. A checkpoint is the control plane's
//! Ed25519 signature over "record `seq` of org `org` had hash `hash` at
//! `created_at`", kept in `audit_checkpoints`. A database writer cannot
//! make one (the signing key is under the keyring, wrapped by the master
//! key), so once a checkpoint covers a record, deleting the record (the
//! chain no longer reaches the checkpoint's `seq`) or rewriting it and
//! every later hash (the record at `seq` no longer has the checkpoint's
//! hash) shows in [`super::verify`].
//!
//! Each org's checkpoints are numbered from 1, and each signature covers
//! the previous checkpoint's signature, so checkpoints form a chain of
//! their own: one deleted in the middle leaves a gap in the numbers, and
//! none can be reordered. The newest ones could still be deleted together
//! with the records they cover; the replica that wrote them remembers the
//! newest number (and signature) it wrote per org, and both its writer and
//! its verify name a checkpoint that is gone.
//!
//! When: every `audit.checkpoint_interval_secs` for every org whose head
//! moved ([`checkpoint_worker`]), and at every seal for every org, before
//! the keyring forgets its keys ([`Checkpoints::at_seal`]). Nothing is
//! written while sealed. Several replicas on one PostgreSQL write each
//! number once: the primary key `(org_id, number)` takes the first insert,
//! and the replica that lost reads again.
//!
//! The writer signs only what extends what it signed before: the newest
//! checkpoint must carry the key's signature, the head row must match its
//! record, and the record at the newest checkpoint's `seq` must still have
//! that checkpoint's hash. A chain found rewritten or cut gets no new
//! checkpoint (an error in the log each round) until an operator looks at
//! it; verify names what is wrong.
//!
//! The key: `meta` row `secret/audit-checkpoint-key`, a keyring system
//! secret like the coordinator's key, created on first use. It is not
//! created again once checkpoints exist or once this replica pinned a key
//! (a deleted key row would otherwise quietly start a new key). Each replica
//! pins the public key it first derived, or the one the operator configured
//! (`audit.checkpoint_public_key`), and verifies under that pin.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custos_protocol::seal::SealingKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::kernel::db::{now_ms, Db};
use crate::kernel::keyring::{Keyring, KeyringError};
use crate::kernel::state::AppState;

/// Domain tag of the signed message.
const DOMAIN: &[u8] = b"custos/audit-checkpoint/v1";
/// The keyring system secret holding the signing key's seed.
const KEY_SECRET: &str = "audit-checkpoint-key";
/// Checkpoints read per query by verify.
const PAGE: i64 = 1000;
/// Tries to take the next number when other replicas keep taking it.
const ATTEMPTS: usize = 8;

/// Written by the background task because the head moved.
pub const REASON_INTERVAL: &str = "interval";
/// Written for every org when the keyring is sealed.
pub const REASON_SEAL: &str = "seal";

/// One stored checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The org whose chain it covers.
    pub org: String,
    /// Position in the org's checkpoints, from 1.
    pub number: i64,
    /// The chain record it covers.
    pub seq: i64,
    /// That record's chain hash.
    pub hash: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// [`REASON_INTERVAL`] or [`REASON_SEAL`].
    pub reason: String,
    /// The signature of checkpoint `number - 1` (empty for number 1).
    pub prev_signature: Vec<u8>,
    /// Ed25519 over [`Checkpoint::signed_message`].
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// What the signature covers: the domain tag, org, number, seq, hash,
    /// time, reason and the previous signature, each variable-length field
    /// length-prefixed so that no two checkpoints encode alike.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(
            DOMAIN.len() + 64 + self.org.len() + self.hash.len() + self.reason.len() + 64,
        );
        message.extend_from_slice(DOMAIN);
        let put = |message: &mut Vec<u8>, field: &[u8]| {
            message.extend_from_slice(&(field.len() as u64).to_be_bytes());
            message.extend_from_slice(field);
        };
        put(&mut message, self.org.as_bytes());
        message.extend_from_slice(&self.number.to_be_bytes());
        message.extend_from_slice(&self.seq.to_be_bytes());
        put(&mut message, &self.hash);
        message.extend_from_slice(&self.created_at.to_be_bytes());
        put(&mut message, self.reason.as_bytes());
        put(&mut message, &self.prev_signature);
        message
    }

    /// The summary verify reports.
    pub fn summary(&self) -> CheckpointSummary {
        CheckpointSummary {
            number: self.number,
            seq: self.seq,
            created_at: self.created_at,
            reason: self.reason.clone(),
        }
    }

    /// `checkpoint 3 (seal, 2026-11-24T10:00:00.000Z)`.
    pub fn describe(&self) -> String {
        format!(
            "checkpoint {} ({}, {})",
            self.number,
            self.reason,
            utc(self.created_at)
        )
    }

    fn from_row(row: &sqlx::any::AnyRow) -> Result<Checkpoint, sqlx::Error> {
        Ok(Checkpoint {
            org: row.try_get("org_id")?,
            number: row.try_get("number")?,
            seq: row.try_get("seq")?,
            hash: row.try_get("hash")?,
            created_at: row.try_get("created_at")?,
            reason: row.try_get("reason")?,
            prev_signature: row.try_get("prev_signature")?,
            signature: row.try_get("signature")?,
        })
    }
}

/// A checkpoint as the verify report shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSummary {
    /// Its number in the org's checkpoints.
    pub number: i64,
    /// The record it covers.
    pub seq: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// `interval` or `seal`.
    #[schema(schema_with = checkpoint_reason_schema)]
    pub reason: String,
}

/// The OpenAPI schema of [`CheckpointSummary::reason`].
fn checkpoint_reason_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    serde_json::from_value(serde_json::json!({
        "type": "string",
        "enum": [REASON_INTERVAL, REASON_SEAL],
        "description": "Why it was made: `interval` or `seal`",
    }))
    .expect("a valid schema literal")
}

/// What is wrong with a checkpoint on its own or after its predecessor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointFault {
    /// The signature does not verify under the checkpoint key.
    SignatureInvalid,
    /// Numbers are missing before this one (`expected` is the first).
    Missing {
        /// The number that should have come next.
        expected: i64,
    },
    /// `prev_signature` is not the previous checkpoint's signature.
    LinkBroken,
}

impl CheckpointFault {
    /// The stable reason verify reports.
    pub fn code(&self) -> &'static str {
        match self {
            CheckpointFault::SignatureInvalid => "checkpoint_signature_invalid",
            CheckpointFault::Missing { .. } => "checkpoint_missing",
            CheckpointFault::LinkBroken => "checkpoint_link_broken",
        }
    }
}

/// Checks `checkpoint` as the successor of `previous` (`None`: it must be
/// number 1): its signature under `key` (not checked when `key` is
/// `None`), its number, and its link to the previous signature. The
/// signature comes first: a renumbered or relinked checkpoint is a forged
/// one.
pub fn check_link(
    key: Option<&VerifyingKey>,
    previous: Option<&Checkpoint>,
    checkpoint: &Checkpoint,
) -> Result<(), CheckpointFault> {
    if key.is_some_and(|key| !signed_by(key, checkpoint)) {
        return Err(CheckpointFault::SignatureInvalid);
    }
    let expected = previous.map_or(1, |previous| previous.number + 1);
    if checkpoint.number != expected {
        return Err(CheckpointFault::Missing { expected });
    }
    let expected_link: &[u8] = previous.map_or(&[], |previous| &previous.signature);
    if checkpoint.prev_signature != expected_link {
        return Err(CheckpointFault::LinkBroken);
    }
    Ok(())
}

/// Whether `checkpoint` carries a valid signature by `key`.
fn signed_by(key: &VerifyingKey, checkpoint: &Checkpoint) -> bool {
    Signature::from_slice(&checkpoint.signature).is_ok_and(|signature| {
        key.verify_strict(&checkpoint.signed_message(), &signature)
            .is_ok()
    })
}

/// Signs a new checkpoint.
#[allow(clippy::too_many_arguments)]
fn sign(
    key: &SigningKey,
    org: &str,
    number: i64,
    seq: i64,
    hash: Vec<u8>,
    created_at: i64,
    reason: &str,
    prev_signature: Vec<u8>,
) -> Checkpoint {
    let mut checkpoint = Checkpoint {
        org: org.to_string(),
        number,
        seq,
        hash,
        created_at,
        reason: reason.to_string(),
        prev_signature,
        signature: Vec::new(),
    };
    checkpoint.signature = key.sign(&checkpoint.signed_message()).to_bytes().to_vec();
    checkpoint
}

/// Which public key verify checks checkpoint signatures under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// This key (pinned, configured, or derived from the keyring).
    Key(VerifyingKey),
    /// The key's row is gone from the store (or does not open): an org
    /// that has checkpoints is reported as `checkpoint_key_missing`.
    Missing,
    /// No trusted key is at hand (the command line without the keyring or
    /// `--checkpoint-key`): numbers, links and the chain are checked, the
    /// signatures are not, and the report says so.
    Unchecked,
}

/// What verify trusts about checkpoints beyond the store.
#[derive(Clone, Debug)]
pub struct CheckpointTrust {
    /// The key signatures are checked under.
    pub key: KeySource,
    /// Per org, the newest checkpoint this process wrote: `(number,
    /// signature)`. Verify names it when it is gone or replaced.
    pub known: HashMap<String, (i64, Vec<u8>)>,
}

impl CheckpointTrust {
    /// Signatures unchecked, nothing remembered.
    pub fn unchecked() -> CheckpointTrust {
        CheckpointTrust {
            key: KeySource::Unchecked,
            known: HashMap::new(),
        }
    }

    /// Checked under `key`, nothing remembered.
    pub fn with_key(key: VerifyingKey) -> CheckpointTrust {
        CheckpointTrust {
            key: KeySource::Key(key),
            known: HashMap::new(),
        }
    }
}

/// Why checkpoints could not be written or their key not read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The keyring failed (sealed, or the key's row does not open).
    #[error("keyring: {0}")]
    Keyring(#[from] KeyringError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The key's `meta` row is gone while checkpoints exist (or after this
    /// replica pinned a key): a new key is not made.
    #[error("the audit checkpoint key is missing from the store; no new key is made while checkpoints signed by the old one exist")]
    KeyMissing,
    /// The store's key is not the one this replica pinned.
    #[error("the audit checkpoint key in the store is not the pinned one ({pinned})")]
    KeyChanged {
        /// Hex of the pinned public key.
        pinned: String,
    },
    /// An org's chain does not extend what was signed before; not signed.
    #[error("org {org}: {problem}; no checkpoint is written")]
    Refused {
        /// The org.
        org: String,
        /// What does not match.
        problem: String,
    },
}

/// A replica's checkpoint state: the pinned public key and, per org, the
/// newest checkpoint it wrote. Only this memory outlives a database writer
/// who deletes the newest checkpoints with the records they cover.
#[derive(Default)]
pub struct Checkpoints {
    /// Set by configuration, or at the first key this replica derived;
    /// never changes after.
    pinned: Mutex<Option<VerifyingKey>>,
    /// Org → (number, signature) of the newest checkpoint written here.
    written: Mutex<HashMap<String, (i64, Vec<u8>)>>,
}

impl Checkpoints {
    /// A replica's state, with the operator's pinned public key if one is
    /// configured.
    pub fn new(pinned: Option<VerifyingKey>) -> Checkpoints {
        Checkpoints {
            pinned: Mutex::new(pinned),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// The pinned public key, if any yet.
    pub fn pinned(&self) -> Option<VerifyingKey> {
        *self
            .pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pins `key` if nothing is pinned; refuses another key.
    fn pin(&self, key: VerifyingKey) -> Result<(), CheckpointError> {
        let mut pinned = self
            .pinned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *pinned {
            Some(existing) if existing != key => Err(CheckpointError::KeyChanged {
                pinned: hex::encode(existing.to_bytes()),
            }),
            Some(_) => Ok(()),
            None => {
                tracing::info!(public_key = %hex::encode(key.to_bytes()), "audit checkpoint key pinned");
                *pinned = Some(key);
                Ok(())
            }
        }
    }

    fn remembered(&self, org: &str) -> Option<(i64, Vec<u8>)> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(org)
            .cloned()
    }

    fn remember(&self, checkpoint: &Checkpoint) {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let newer = written
            .get(&checkpoint.org)
            .is_none_or(|(number, _)| *number < checkpoint.number);
        if newer {
            written.insert(
                checkpoint.org.clone(),
                (checkpoint.number, checkpoint.signature.clone()),
            );
        }
    }

    /// What this replica's verify trusts: the pinned key (pinned now from
    /// the keyring if not yet), and the checkpoints it wrote. Needs the
    /// keyring unsealed unless a key is pinned.
    pub async fn trust(&self, db: &Db, keyring: &Keyring) -> Result<CheckpointTrust, sqlx::Error> {
        let key = match self.pinned() {
            Some(key) => KeySource::Key(key),
            None => match stored_public_key(db, keyring).await {
                Ok(Some(key)) => match self.pin(key) {
                    Ok(()) => KeySource::Key(key),
                    // Another task pinned a different key meanwhile: trust
                    // the pin, under which this key's checkpoints fail.
                    Err(_) => self.pinned().map_or(KeySource::Missing, KeySource::Key),
                },
                Ok(None) => KeySource::Missing,
                Err(CheckpointError::Database(error)) => return Err(error),
                Err(error) => {
                    tracing::error!(%error, "the audit checkpoint key does not open");
                    KeySource::Missing
                }
            },
        };
        let known = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok(CheckpointTrust { key, known })
    }

    /// The signing key from the keyring, created on first use unless
    /// checkpoints exist or a key was pinned (then its loss is an error,
    /// not a reason for a new key). Its public key must be the pinned one.
    async fn signing_key(&self, db: &Db, keyring: &Keyring) -> Result<SigningKey, CheckpointError> {
        let mut conn = db.pool().acquire().await?;
        if !key_stored(&mut conn).await?
            && (self.pinned().is_some() || any_checkpoint(&mut conn).await?)
        {
            return Err(CheckpointError::KeyMissing);
        }
        let secret = keyring
            .system_secret(&mut conn, KEY_SECRET, || {
                SealingKey::generate(&mut rand_core::OsRng)
            })
            .await?;
        let key = SigningKey::from_bytes(secret.expose_bytes());
        self.pin(key.verifying_key())?;
        Ok(key)
    }

    /// Writes a checkpoint for every org whose head moved since its newest
    /// checkpoint (`force`: for every org), skipping orgs whose newest
    /// checkpoint is younger than `min_age_ms`. An org whose chain does
    /// not extend what was signed is logged and skipped; the others are
    /// written. Answers how many were written.
    pub async fn write(
        &self,
        db: &Db,
        keyring: &Keyring,
        reason: &str,
        force: bool,
        min_age_ms: i64,
    ) -> Result<usize, CheckpointError> {
        if keyring.is_sealed() {
            return Err(KeyringError::Sealed.into());
        }
        let key = self.signing_key(db, keyring).await?;
        let orgs: Vec<String> = sqlx::query("SELECT org_id FROM audit_heads ORDER BY org_id")
            .fetch_all(db.pool())
            .await?
            .iter()
            .map(|row| row.try_get("org_id"))
            .collect::<Result<_, _>>()?;
        let mut written = 0;
        for org in orgs {
            match self
                .write_org(db, &key, &org, reason, force, min_age_ms)
                .await
            {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(error @ CheckpointError::Refused { .. }) => {
                    tracing::error!(%error, "audit checkpoint refused");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(written)
    }

    /// At seal, before the keyring forgets its keys: a checkpoint for every
    /// org, whether its head moved or not. Failures are logged and the seal
    /// goes on: sealing is what an operator does when something is wrong,
    /// and must not wait on the audit store.
    pub async fn at_seal(&self, db: &Db, keyring: &Keyring) {
        match self.write(db, keyring, REASON_SEAL, true, 0).await {
            Ok(written) => tracing::info!(written, "audit checkpoints written at seal"),
            Err(error) => tracing::error!(%error, "audit checkpoints at seal failed"),
        }
    }

    /// One org: answers whether a checkpoint was written.
    async fn write_org(
        &self,
        db: &Db,
        key: &SigningKey,
        org: &str,
        reason: &str,
        force: bool,
        min_age_ms: i64,
    ) -> Result<bool, CheckpointError> {
        let refuse = |problem: String| CheckpointError::Refused {
            org: org.to_string(),
            problem,
        };
        for _ in 0..ATTEMPTS {
            let latest = latest_stored(db, org).await?;
            if let Some((number, signature)) = self.remembered(org) {
                let stored = match &latest {
                    Some(latest) if latest.number == number => Some(latest.signature.clone()),
                    Some(latest) if latest.number > number => {
                        stored_signature(db, org, number).await?
                    }
                    _ => None,
                };
                match stored {
                    None => {
                        return Err(refuse(format!(
                            "checkpoint {number}, written by this replica, is gone"
                        )))
                    }
                    Some(stored) if stored != signature => {
                        return Err(refuse(format!(
                            "checkpoint {number}, written by this replica, was replaced"
                        )))
                    }
                    Some(_) => {}
                }
            }
            let Some(head) = sqlx::query("SELECT seq, hash FROM audit_heads WHERE org_id = $1")
                .bind(org)
                .fetch_optional(db.pool())
                .await?
            else {
                return Ok(false);
            };
            let seq: i64 = head.try_get("seq")?;
            let hash: Vec<u8> = head.try_get("hash")?;
            if seq < 1 {
                return Ok(false);
            }
            if record_hash_at(db, org, seq).await?.as_deref() != Some(hash.as_slice()) {
                return Err(refuse(format!(
                    "the head (seq {seq}) does not match the record at seq {seq}"
                )));
            }
            if let Some(latest) = &latest {
                // A forged newest checkpoint is not extended (verify names
                // it either way; refusing here puts it in the log now).
                if !signed_by(&key.verifying_key(), latest) {
                    return Err(refuse(format!(
                        "{} does not carry this key's signature",
                        latest.describe()
                    )));
                }
                if seq < latest.seq {
                    return Err(refuse(format!(
                        "the head is at seq {seq}, behind {} at seq {}",
                        latest.describe(),
                        latest.seq
                    )));
                }
                if record_hash_at(db, org, latest.seq).await?.as_deref()
                    != Some(latest.hash.as_slice())
                {
                    return Err(refuse(format!(
                        "the record at seq {} is not the one {} covers",
                        latest.seq,
                        latest.describe()
                    )));
                }
                if seq == latest.seq && !force {
                    return Ok(false);
                }
                if now_ms() - latest.created_at < min_age_ms {
                    return Ok(false);
                }
            }
            let checkpoint = sign(
                key,
                org,
                latest.as_ref().map_or(1, |latest| latest.number + 1),
                seq,
                hash,
                now_ms(),
                reason,
                latest
                    .as_ref()
                    .map_or_else(Vec::new, |latest| latest.signature.clone()),
            );
            let inserted = sqlx::query(
                "INSERT INTO audit_checkpoints (org_id, number, seq, hash, created_at, reason, \
                 prev_signature, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (org_id, number) DO NOTHING",
            )
            .bind(org)
            .bind(checkpoint.number)
            .bind(checkpoint.seq)
            .bind(checkpoint.hash.clone())
            .bind(checkpoint.created_at)
            .bind(reason)
            .bind(checkpoint.prev_signature.clone())
            .bind(checkpoint.signature.clone())
            .execute(db.pool())
            .await?
            .rows_affected();
            if inserted == 1 {
                self.remember(&checkpoint);
                // The log is a copy outside the database: an operator can
                // compare it with what the store says later.
                tracing::info!(
                    org,
                    number = checkpoint.number,
                    seq,
                    hash = %hex::encode(&checkpoint.hash),
                    reason,
                    signature = %hex::encode(&checkpoint.signature),
                    "audit checkpoint"
                );
                return Ok(true);
            }
            // Another replica took this number: look again.
        }
        Err(refuse(format!(
            "other replicas took the next checkpoint number {ATTEMPTS} times in a row"
        )))
    }
}

/// Whether the key's `meta` row exists.
async fn key_stored(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("SELECT 1 AS present FROM meta WHERE key = $1")
        .bind(format!("secret/{KEY_SECRET}"))
        .fetch_optional(&mut *conn)
        .await?
        .is_some())
}

async fn any_checkpoint(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("SELECT 1 AS present FROM audit_checkpoints LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
    )
}

/// The public key of the stored checkpoint key, without creating one
/// (verify writes nothing): `None` when the store has none. Needs the
/// keyring unsealed.
pub async fn stored_public_key(
    db: &Db,
    keyring: &Keyring,
) -> Result<Option<VerifyingKey>, CheckpointError> {
    let mut conn = db.pool().acquire().await?;
    if !key_stored(&mut conn).await? {
        return Ok(None);
    }
    // The row exists, so `system_secret` reads it and creates nothing.
    let secret = keyring
        .system_secret(&mut conn, KEY_SECRET, || {
            SealingKey::generate(&mut rand_core::OsRng)
        })
        .await?;
    Ok(Some(
        SigningKey::from_bytes(secret.expose_bytes()).verifying_key(),
    ))
}

/// A public key from 64 hex characters.
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

async fn latest_stored(db: &Db, org: &str) -> Result<Option<Checkpoint>, sqlx::Error> {
    sqlx::query("SELECT * FROM audit_checkpoints WHERE org_id = $1 ORDER BY number DESC LIMIT 1")
        .bind(org)
        .fetch_optional(db.pool())
        .await?
        .as_ref()
        .map(Checkpoint::from_row)
        .transpose()
}

async fn stored_signature(db: &Db, org: &str, number: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query("SELECT signature FROM audit_checkpoints WHERE org_id = $1 AND number = $2")
        .bind(org)
        .bind(number)
        .fetch_optional(db.pool())
        .await?
        .map(|row| row.try_get("signature"))
        .transpose()
}

async fn record_hash_at(db: &Db, org: &str, seq: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query("SELECT hash FROM audit_log WHERE org_id = $1 AND seq = $2")
        .bind(org)
        .bind(seq)
        .fetch_optional(db.pool())
        .await?
        .map(|row| row.try_get("hash"))
        .transpose()
}

/// The background task: every `audit.checkpoint_interval_secs` (at least
/// 1), while unsealed, a checkpoint for every org whose head moved and
/// whose newest checkpoint is older than half the interval (so several
/// replicas ticking at once write about one per interval).
pub async fn checkpoint_worker(state: Arc<AppState>) {
    let interval = Duration::from_secs(state.config.audit.checkpoint_interval_secs.max(1));
    let min_age_ms = i64::try_from(interval.as_millis() / 2).unwrap_or(i64::MAX);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: start one interval after start.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if state.keyring.is_sealed() {
            continue;
        }
        if let Err(error) = state
            .checkpoints
            .write(
                &state.db,
                &state.keyring,
                REASON_INTERVAL,
                false,
                min_age_ms,
            )
            .await
        {
            tracing::error!(%error, "audit checkpoints failed");
        }
    }
}

/// Reads one org's checkpoints in number order, a page at a time, each
/// checked against its predecessor ([`check_link`]) and against what this
/// replica remembers writing.
pub(super) struct CheckpointWalk<'t> {
    org: String,
    trust: &'t CheckpointTrust,
    buffer: VecDeque<Checkpoint>,
    after: i64,
    exhausted: bool,
    /// The last checkpoint handed out.
    pub(super) previous: Option<Checkpoint>,
    /// Checkpoints handed out.
    pub(super) checked: i64,
}

/// A checkpoint that fails, with its stable reason and a sentence.
pub(super) struct Fault {
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) checkpoint: Option<CheckpointSummary>,
}

/// Why a walk stopped.
pub(super) enum WalkError {
    Database(sqlx::Error),
    Fault(Fault),
}

impl From<sqlx::Error> for WalkError {
    fn from(error: sqlx::Error) -> Self {
        WalkError::Database(error)
    }
}

impl<'t> CheckpointWalk<'t> {
    pub(super) fn new(org: &str, trust: &'t CheckpointTrust) -> CheckpointWalk<'t> {
        CheckpointWalk {
            org: org.to_string(),
            trust,
            buffer: VecDeque::new(),
            after: 0,
            exhausted: false,
            previous: None,
            checked: 0,
        }
    }

    /// The next checkpoint, checked; `None` after the last.
    pub(super) async fn next(&mut self, db: &Db) -> Result<Option<Checkpoint>, WalkError> {
        if self.buffer.is_empty() && !self.exhausted {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT * FROM audit_checkpoints WHERE org_id = $1 AND number > $2 \
                 ORDER BY number LIMIT {PAGE}"
            )))
            .bind(&self.org)
            .bind(self.after)
            .fetch_all(db.pool())
            .await?;
            self.exhausted = (rows.len() as i64) < PAGE;
            for row in &rows {
                self.buffer.push_back(Checkpoint::from_row(row)?);
            }
        }
        let Some(checkpoint) = self.buffer.pop_front() else {
            return Ok(None);
        };
        self.after = checkpoint.number;
        let key = match &self.trust.key {
            KeySource::Key(key) => Some(key),
            KeySource::Unchecked => None,
            KeySource::Missing => {
                return Err(WalkError::Fault(Fault {
                    code: "checkpoint_key_missing",
                    message: format!(
                        "{} cannot be checked: the audit checkpoint key is missing from the \
                         store or does not open",
                        checkpoint.describe()
                    ),
                    checkpoint: Some(checkpoint.summary()),
                }))
            }
        };
        if let Err(fault) = check_link(key, self.previous.as_ref(), &checkpoint) {
            let message = match &fault {
                CheckpointFault::SignatureInvalid => format!(
                    "{} covering seq {} does not carry a valid signature of the audit \
                     checkpoint key",
                    checkpoint.describe(),
                    checkpoint.seq
                ),
                CheckpointFault::Missing { expected } => format!(
                    "checkpoint {expected} is missing: {} follows checkpoint {}",
                    checkpoint.describe(),
                    expected - 1
                ),
                CheckpointFault::LinkBroken => format!(
                    "{} does not link to checkpoint {}",
                    checkpoint.describe(),
                    checkpoint.number - 1
                ),
            };
            return Err(WalkError::Fault(Fault {
                code: fault.code(),
                message,
                checkpoint: Some(checkpoint.summary()),
            }));
        }
        if let Some((number, signature)) = self.trust.known.get(&self.org) {
            if checkpoint.number == *number && checkpoint.signature != *signature {
                return Err(WalkError::Fault(Fault {
                    code: "checkpoint_replaced",
                    message: format!(
                        "{} is not the checkpoint {number} this replica wrote",
                        checkpoint.describe()
                    ),
                    checkpoint: Some(checkpoint.summary()),
                }));
            }
        }
        self.previous = Some(checkpoint.clone());
        self.checked += 1;
        Ok(Some(checkpoint))
    }

    /// After the last checkpoint: the newest one this replica wrote must
    /// have been among them.
    pub(super) fn finish(&self) -> Result<(), Fault> {
        let Some((number, _)) = self.trust.known.get(&self.org) else {
            return Ok(());
        };
        let newest = self.previous.as_ref().map_or(0, |previous| previous.number);
        if newest < *number {
            return Err(Fault {
                code: "checkpoint_missing",
                message: format!(
                    "checkpoint {number}, written by this replica, is missing: the newest \
                     stored is {newest}"
                ),
                checkpoint: self.previous.as_ref().map(Checkpoint::summary),
            });
        }
        Ok(())
    }
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn utc(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// `n` checkpoints of `org`, the first created at `start`.
    fn chain(key: &SigningKey, org: &str, n: i64, start: i64) -> Vec<Checkpoint> {
        let mut checkpoints: Vec<Checkpoint> = Vec::new();
        for number in 1..=n {
            let prev = checkpoints
                .last()
                .map_or_else(Vec::new, |last| last.signature.clone());
            checkpoints.push(sign(
                key,
                org,
                number,
                number * 10,
                vec![u8::try_from(number).unwrap(); 32],
                start + number,
                if number == 2 {
                    REASON_SEAL
                } else {
                    REASON_INTERVAL
                },
                prev,
            ));
        }
        checkpoints
    }

    fn check_all(
        key: Option<&VerifyingKey>,
        checkpoints: &[Checkpoint],
    ) -> Result<(), CheckpointFault> {
        let mut previous = None;
        for checkpoint in checkpoints {
            check_link(key, previous, checkpoint)?;
            previous = Some(checkpoint);
        }
        Ok(())
    }

    #[test]
    fn checkpoints_verify_only_whole_in_order_and_under_their_key() {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let public = key.verifying_key();
        let checkpoints = chain(&key, "org_a", 4, 1_700_000_000_000);
        assert_eq!(check_all(Some(&public), &checkpoints), Ok(()));

        // Any signed field changed: the signature no longer verifies.
        let tamperings: Vec<fn(&mut Checkpoint)> = vec![
            |c| c.org = "org_b".into(),
            |c| c.number += 10,
            |c| c.seq -= 1,
            |c| c.hash[0] ^= 1,
            |c| c.created_at += 1,
            |c| c.reason = REASON_SEAL.into(),
            |c| c.prev_signature[0] ^= 1,
            |c| c.signature[5] ^= 1,
            |c| c.signature.truncate(10),
        ];
        for (index, tamper) in tamperings.iter().enumerate() {
            let mut tampered = checkpoints.clone();
            tamper(&mut tampered[2]);
            assert_eq!(
                check_all(Some(&public), &tampered),
                Err(CheckpointFault::SignatureInvalid),
                "tampering {index}"
            );
        }

        // Another key's checkpoints do not verify.
        let other = SigningKey::generate(&mut rand_core::OsRng);
        assert_eq!(
            check_all(Some(&other.verifying_key()), &checkpoints),
            Err(CheckpointFault::SignatureInvalid)
        );

        // One dropped in the middle, or the first: a gap.
        let mut gap = checkpoints.clone();
        gap.remove(1);
        assert_eq!(
            check_all(Some(&public), &gap),
            Err(CheckpointFault::Missing { expected: 2 })
        );
        assert_eq!(
            check_all(Some(&public), &checkpoints[1..]),
            Err(CheckpointFault::Missing { expected: 1 })
        );

        // Two swapped: the first one out of place is a gap.
        let mut swapped = checkpoints.clone();
        swapped.swap(1, 2);
        assert_eq!(
            check_all(Some(&public), &swapped),
            Err(CheckpointFault::Missing { expected: 2 })
        );

        // Validly signed but from another history (same numbers, another
        // chain of signatures): the link names it.
        let mut forked = checkpoints.clone();
        forked[2] = chain(&key, "org_a", 3, 1_600_000_000_000)[2].clone();
        assert_eq!(
            check_all(Some(&public), &forked),
            Err(CheckpointFault::LinkBroken)
        );

        // Without a key, numbers and links are still checked, signatures
        // are not.
        let mut unsigned = checkpoints.clone();
        unsigned[3].signature = vec![0; 64];
        assert_eq!(check_all(None, &unsigned), Ok(()));
        assert_eq!(
            check_all(None, &gap),
            Err(CheckpointFault::Missing { expected: 2 })
        );
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }
}
