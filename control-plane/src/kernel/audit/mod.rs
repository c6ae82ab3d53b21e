//! The audit log: one append-only hash chain per org.
//!
//! Every call that reads or changes something appends a record in the same
//! transaction as its effect, so a change without its record cannot commit,
//! and when the record cannot be written the operation fails. Records never
//! carry secret values: only action, resource, identity, IP, approval state,
//! outcome, request id and non-secret detail.
//!
//! Record `n` of an org stores `hash_n = SHA-256(domain ‖ prev_hash ‖ org ‖
//! seq ‖ timestamp ‖ action ‖ resource ‖ identity ‖ ip ‖ approved ‖ outcome
//! ‖ request_id ‖ detail)` with every text field length-prefixed, and
//! `prev_hash = hash_{n-1}` (32 zero bytes for the first). The org's head row
//! (`audit_heads`) is locked while appending, which serialises appends of one
//! org across replicas. `verify` recomputes every chain and names the first
//! record that does not match.
//!
//! A chain alone cannot show a deleted tail whose head row was rewritten to
//! match: signed checkpoints of the heads ([`checkpoints`]) can, and
//! `verify` checks the chains against them.

pub mod checkpoints;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::kernel::db::{now_ms, Db, Tx};

pub use checkpoints::{
    CheckpointSummary, CheckpointTrust, Checkpoints, KeySource, REASON_INTERVAL, REASON_SEAL,
};
use checkpoints::{CheckpointWalk, WalkError};

const DOMAIN: &[u8] = b"custos/audit/v1";

/// One event to record.
#[derive(Clone, Debug)]
pub struct AuditEvent<'a> {
    /// The org whose chain receives it.
    pub org: &'a str,
    /// `<kind>.<verb>`.
    pub action: &'a str,
    /// `<kind>:<name>`.
    pub resource: &'a str,
    /// The calling identity's id (or `anonymous`, `system`).
    pub identity: &'a str,
    /// Client IP.
    pub ip: &'a str,
    /// Approval state: `allowed`, `denied`, `pending`, `approved`,
    /// `rejected`, `not_required`.
    pub approved: &'a str,
    /// `success`, `denied`, `failed`, `pending`.
    pub outcome: &'a str,
    /// The HTTP request id.
    pub request_id: &'a str,
    /// Non-secret detail (rule that decided, wallet id, error code).
    pub detail: serde_json::Value,
}

/// A stored record, as the API lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Position in the org's chain, from 1.
    pub seq: i64,
    /// Action.
    pub action: String,
    /// Resource.
    pub resource: String,
    /// Identity id.
    pub identity: String,
    /// Org id.
    pub org: String,
    /// Client IP.
    pub ip: String,
    /// Approval state.
    pub approved: String,
    /// Outcome.
    pub outcome: String,
    /// Request id.
    pub request_id: String,
    /// Detail.
    pub detail: serde_json::Value,
    /// Unix milliseconds.
    pub timestamp: i64,
    /// Hex of the previous record's hash.
    pub prev_hash: String,
    /// Hex of this record's hash.
    pub hash: String,
}

fn put(hasher: &mut Sha256, field: &[u8]) {
    hasher.update((field.len() as u64).to_be_bytes());
    hasher.update(field);
}

/// The chain hash of one record.
#[allow(clippy::too_many_arguments)]
fn record_hash(
    prev_hash: &[u8],
    org: &str,
    seq: i64,
    timestamp: i64,
    action: &str,
    resource: &str,
    identity: &str,
    ip: &str,
    approved: &str,
    outcome: &str,
    request_id: &str,
    detail: &str,
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    put(&mut hasher, prev_hash);
    put(&mut hasher, org.as_bytes());
    hasher.update(seq.to_be_bytes());
    hasher.update(timestamp.to_be_bytes());
    for field in [
        action, resource, identity, ip, approved, outcome, request_id, detail,
    ] {
        put(&mut hasher, field.as_bytes());
    }
    hasher.finalize().into()
}

impl AuditEvent<'_> {
    /// The chain hash of this event as record `seq` after `prev_hash`,
    /// with its detail serialised as `detail`.
    fn chain_hash(&self, prev_hash: &[u8], seq: i64, timestamp: i64, detail: &str) -> [u8; 32] {
        record_hash(
            prev_hash,
            self.org,
            seq,
            timestamp,
            self.action,
            self.resource,
            self.identity,
            self.ip,
            self.approved,
            self.outcome,
            self.request_id,
            detail,
        )
    }
}

/// Appends `event` to its org's chain inside `tx`. Returns the record's
/// sequence number. An error here must fail the caller's operation.
pub async fn append(db: &Db, tx: &mut Tx, event: &AuditEvent<'_>) -> Result<i64, sqlx::Error> {
    let detail = event.detail.to_string();
    let seqs = append_chain(db, tx, event.org, &[(event, detail.as_str())]).await?;
    seqs.first()
        .copied()
        .ok_or_else(|| sqlx::Error::Protocol("no audit record was appended".into()))
}

/// Appends `events` inside `tx`, in order within each org; answers their
/// sequence numbers in the order given. One head read, one multi-row insert
/// (per [`INSERT_ROWS`]) and one head update per org: the group commit's
/// cost per record is a fraction of [`append`]'s.
pub async fn append_many(
    db: &Db,
    tx: &mut Tx,
    events: &[AuditEvent<'_>],
) -> Result<Vec<i64>, sqlx::Error> {
    let details: Vec<String> = events
        .iter()
        .map(|event| event.detail.to_string())
        .collect();
    let details: Vec<&str> = details.iter().map(String::as_str).collect();
    append_serialised(db, tx, events, &details).await
}

/// [`append_many`] with each event's detail already serialised
/// (`details[i]` is `events[i].detail`, whose own value is not read).
async fn append_serialised(
    db: &Db,
    tx: &mut Tx,
    events: &[AuditEvent<'_>],
    details: &[&str],
) -> Result<Vec<i64>, sqlx::Error> {
    let mut seqs = vec![0i64; events.len()];
    for (org, positions) in by_org(events.iter().map(|event| event.org)) {
        let of_org: Vec<(&AuditEvent<'_>, &str)> = positions
            .iter()
            .filter_map(|&position| Some((events.get(position)?, *details.get(position)?)))
            .collect();
        let appended = append_chain(db, tx, org, &of_org).await?;
        for (position, seq) in positions.into_iter().zip(appended) {
            if let Some(slot) = seqs.get_mut(position) {
                *slot = seq;
            }
        }
    }
    Ok(seqs)
}

/// The positions of each org's events, orgs in order of first appearance
/// and positions ascending: the order in which a group appends them.
fn by_org<'e>(orgs: impl Iterator<Item = &'e str>) -> Vec<(&'e str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (position, org) in orgs.enumerate() {
        match groups.iter_mut().find(|(seen, _)| *seen == org) {
            Some((_, positions)) => positions.push(position),
            None => groups.push((org, vec![position])),
        }
    }
    groups
}

/// Rows per multi-row insert: 13 parameters each, within SQLite's limit
/// of 32,766 parameters and PostgreSQL's 65,535.
const INSERT_ROWS: usize = 256;

/// Appends `events`, all of `org`, to its chain: reads and locks the head,
/// chains the records in order, inserts them, moves the head.
async fn append_chain(
    db: &Db,
    tx: &mut Tx,
    org: &str,
    events: &[(&AuditEvent<'_>, &str)],
) -> Result<Vec<i64>, sqlx::Error> {
    let head = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT seq, hash FROM audit_heads WHERE org_id = $1{}",
        db.for_update()
    )))
    .bind(org)
    .fetch_optional(&mut **tx)
    .await?;
    let (mut seq, mut prev_hash): (i64, Vec<u8>) = match head {
        Some(row) => (row.try_get("seq")?, row.try_get("hash")?),
        None => {
            // First record of this org: create its head. Two replicas racing
            // here collide on the primary key and one transaction fails.
            sqlx::query("INSERT INTO audit_heads (org_id, seq, hash) VALUES ($1, 0, $2)")
                .bind(org)
                .bind(vec![0u8; 32])
                .execute(&mut **tx)
                .await?;
            (0, vec![0u8; 32])
        }
    };
    let timestamp = now_ms();
    let mut seqs = Vec::with_capacity(events.len());
    for chunk in events.chunks(INSERT_ROWS) {
        let mut sql = String::from(
            "INSERT INTO audit_log (org_id, seq, timestamp, action, resource, identity_id, ip, \
             approved, outcome, request_id, detail, prev_hash, hash) VALUES ",
        );
        for row in 0..chunk.len() {
            let base = row * 13;
            let placeholders: Vec<String> = (1..=13).map(|n| format!("${}", base + n)).collect();
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(&placeholders.join(", "));
            sql.push(')');
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for &(event, detail) in chunk {
            seq += 1;
            let hash = event.chain_hash(&prev_hash, seq, timestamp, detail);
            query = query
                .bind(org.to_string())
                .bind(seq)
                .bind(timestamp)
                .bind(event.action.to_string())
                .bind(event.resource.to_string())
                .bind(event.identity.to_string())
                .bind(event.ip.to_string())
                .bind(event.approved.to_string())
                .bind(event.outcome.to_string())
                .bind(event.request_id.to_string())
                .bind(detail.to_string())
                .bind(std::mem::replace(&mut prev_hash, hash.to_vec()))
                .bind(hash.to_vec());
            seqs.push(seq);
        }
        query.execute(&mut **tx).await?;
    }
    sqlx::query("UPDATE audit_heads SET seq = $1, hash = $2 WHERE org_id = $3")
        .bind(seq)
        .bind(prev_hash)
        .bind(org)
        .execute(&mut **tx)
        .await?;
    Ok(seqs)
}

/// Appends in a transaction of its own (for events with no other effect,
/// such as a refused request).
pub async fn append_alone(db: &Db, event: &AuditEvent<'_>) -> Result<i64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let seq = append(db, &mut tx, event).await?;
    tx.commit().await?;
    Ok(seq)
}

fn row_to_record(row: &sqlx::any::AnyRow) -> Result<AuditRecord, sqlx::Error> {
    let detail: String = row.try_get("detail")?;
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        action: row.try_get("action")?,
        resource: row.try_get("resource")?,
        identity: row.try_get("identity_id")?,
        org: row.try_get("org_id")?,
        ip: row.try_get("ip")?,
        approved: row.try_get("approved")?,
        outcome: row.try_get("outcome")?,
        request_id: row.try_get("request_id")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        timestamp: row.try_get("timestamp")?,
        prev_hash: hex::encode(row.try_get::<Vec<u8>, _>("prev_hash")?),
        hash: hex::encode(row.try_get::<Vec<u8>, _>("hash")?),
    })
}

/// Filters of `GET /api/v1/audit`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Actions, any of which matches: each exact (`key.sign`), a prefix
    /// ending in `*` (`key.*`) or a suffix after `*` (`*.sign`). Empty:
    /// every action.
    pub actions: Vec<String>,
    /// Exact resource, or a prefix ending in `*`.
    pub resource: Option<String>,
    /// Identity id.
    pub identity: Option<String>,
    /// From this time (unix ms), inclusive.
    pub from: Option<i64>,
    /// Up to this time (unix ms), exclusive.
    pub to: Option<i64>,
    /// Records with seq greater than this (the cursor).
    pub after: Option<i64>,
    /// Page size.
    pub limit: i64,
}

/// `value` as a SQL comparison: a prefix ending in `*` or a suffix after
/// a leading `*` becomes `LIKE` (with `%`, `_` and `\\` escaped), anything
/// else `=`.
fn like_or_equal(value: &str) -> (String, String) {
    let escaped = |text: &str| {
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    };
    if let Some(prefix) = value.strip_suffix('*') {
        ("LIKE".into(), format!("{}%", escaped(prefix)))
    } else if let Some(suffix) = value.strip_prefix('*') {
        ("LIKE".into(), format!("%{}", escaped(suffix)))
    } else {
        ("=".into(), value.to_string())
    }
}

/// The `ESCAPE` clause a `LIKE` of [`like_or_equal`] needs.
fn escape_of(operator: &str) -> &'static str {
    if operator == "LIKE" {
        " ESCAPE '\\'"
    } else {
        ""
    }
}

/// One page of an org's records, oldest first.
pub async fn list(
    db: &Db,
    org: &str,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    let mut sql = String::from("SELECT * FROM audit_log WHERE org_id = $1");
    let mut texts: Vec<String> = Vec::new();
    let mut numbers: Vec<i64> = Vec::new();
    let mut position = 1;
    if !filter.actions.is_empty() {
        let mut any = Vec::new();
        for action in &filter.actions {
            let (operator, operand) = like_or_equal(action);
            position += 1;
            any.push(format!(
                "action {operator} ${position}{}",
                escape_of(&operator)
            ));
            texts.push(operand);
        }
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    if let Some(resource) = &filter.resource {
        let (operator, operand) = like_or_equal(resource);
        position += 1;
        sql.push_str(&format!(
            " AND resource {operator} ${position}{}",
            escape_of(&operator)
        ));
        texts.push(operand);
    }
    if let Some(identity) = &filter.identity {
        position += 1;
        sql.push_str(&format!(" AND identity_id = ${position}"));
        texts.push(identity.clone());
    }
    for (clause, value) in [
        ("timestamp >=", filter.from),
        ("timestamp <", filter.to),
        ("seq >", filter.after),
    ] {
        if let Some(value) = value {
            numbers.push(value);
            sql.push_str(&format!(" AND {clause} ${}", position + numbers.len()));
        }
    }
    sql.push_str(&format!(
        " ORDER BY seq LIMIT {}",
        filter.limit.clamp(1, 1000)
    ));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org.to_string());
    for text in texts {
        query = query.bind(text);
    }
    for number in numbers {
        query = query.bind(number);
    }
    let rows = query.fetch_all(db.pool()).await?;
    rows.iter().map(row_to_record).collect()
}

/// The outcome of a chain verification.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Every record matches its hash and links to its predecessor, every
    /// checkpoint is whole, and the chain still holds what they cover.
    pub valid: bool,
    /// Records checked.
    pub entries: i64,
    /// Hex hash of the last record (of the last org when several).
    pub head_hash: String,
    /// The first problem: `{org, seq, reason, message, checkpoint?}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = broken_record_schema)]
    pub first_broken: Option<BrokenRecord>,
    /// Checkpoints checked.
    pub checkpoints: i64,
    /// The newest checkpoint checked (of the last org that has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = checkpoint_summary_schema)]
    pub last_checkpoint: Option<CheckpointSummary>,
    /// Hex of the public key checkpoint signatures were checked under
    /// (`null` when none was at hand).
    #[schema(required = true)]
    pub checkpoint_key: Option<String>,
    /// Whether checkpoint signatures were checked (the command line without
    /// the keyring or `--checkpoint-key` cannot).
    pub signatures_checked: bool,
}

/// Where a chain breaks.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokenRecord {
    /// The org.
    pub org: String,
    /// The record's seq (for `truncated`: the first one missing).
    pub seq: i64,
    /// What is wrong, stable: `seq_gap`, `prev_hash_mismatch`,
    /// `hash_mismatch`, `head_mismatch`, `truncated`,
    /// `checkpoint_mismatch`, `checkpoint_signature_invalid`,
    /// `checkpoint_missing`, `checkpoint_link_broken`,
    /// `checkpoint_replaced`, `checkpoint_key_missing`.
    #[schema(schema_with = broken_reason_schema)]
    pub reason: String,
    /// The same in a sentence, with the numbers.
    pub message: String,
    /// The checkpoint concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = checkpoint_summary_schema)]
    pub checkpoint: Option<CheckpointSummary>,
}

/// [`BrokenRecord`]'s OpenAPI schema, inline and not nullable: the field
/// is left out when there is none, never `null`.
fn broken_record_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    <BrokenRecord as utoipa::PartialSchema>::schema()
}

/// [`CheckpointSummary`]'s OpenAPI schema, inline and not nullable (as
/// [`broken_record_schema`]).
fn checkpoint_summary_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    <CheckpointSummary as utoipa::PartialSchema>::schema()
}

/// The OpenAPI schema of [`BrokenRecord::reason`]: its stable values.
fn broken_reason_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    serde_json::from_value(serde_json::json!({
        "type": "string",
        "enum": [
            "seq_gap", "prev_hash_mismatch", "hash_mismatch", "head_mismatch", "truncated",
            "checkpoint_mismatch", "checkpoint_signature_invalid", "checkpoint_missing",
            "checkpoint_link_broken", "checkpoint_replaced", "checkpoint_key_missing",
        ],
        "description": "What is wrong, stable",
    }))
    .expect("a valid schema literal")
}

/// Why one org's verification stopped.
enum Stop {
    Database(sqlx::Error),
    Broken(BrokenRecord),
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Self {
        Stop::Database(error)
    }
}

fn broken(org: &str, seq: i64, reason: &str, message: String) -> Stop {
    Stop::Broken(BrokenRecord {
        org: org.to_string(),
        seq,
        reason: reason.to_string(),
        message,
        checkpoint: None,
    })
}

impl checkpoints::Fault {
    /// The report's entry; [`verify`] fills in the org.
    fn into_broken(self) -> BrokenRecord {
        BrokenRecord {
            org: String::new(),
            seq: self
                .checkpoint
                .as_ref()
                .map_or(0, |checkpoint| checkpoint.seq),
            reason: self.code.to_string(),
            message: self.message,
            checkpoint: self.checkpoint,
        }
    }
}

impl From<WalkError> for Stop {
    fn from(error: WalkError) -> Self {
        match error {
            WalkError::Database(error) => Stop::Database(error),
            WalkError::Fault(fault) => Stop::Broken(fault.into_broken()),
        }
    }
}

/// Recomputes the chain of `org` (or of every org) from the first record
/// and checks it against the org's signed checkpoints under `trust`: each
/// checkpoint whole and linked to the previous one, the record at its seq
/// present with its hash, and none newer than the chain's end.
pub async fn verify(
    db: &Db,
    org: Option<&str>,
    trust: &CheckpointTrust,
) -> Result<VerifyReport, sqlx::Error> {
    let orgs: Vec<String> = match org {
        Some(org) => vec![org.to_string()],
        None => {
            // An org whose head row and records are all gone still has its
            // checkpoints, or this replica's memory of them.
            let mut orgs: std::collections::BTreeSet<String> = sqlx::query(
                "SELECT org_id FROM audit_heads UNION SELECT org_id FROM audit_checkpoints",
            )
            .fetch_all(db.pool())
            .await?
            .iter()
            .map(|row| row.try_get("org_id"))
            .collect::<Result<_, _>>()?;
            orgs.extend(trust.known.keys().cloned());
            orgs.into_iter().collect()
        }
    };
    let mut report = VerifyReport {
        valid: true,
        entries: 0,
        head_hash: hex::encode([0u8; 32]),
        first_broken: None,
        checkpoints: 0,
        last_checkpoint: None,
        checkpoint_key: match &trust.key {
            KeySource::Key(key) => Some(hex::encode(key.to_bytes())),
            KeySource::Missing | KeySource::Unchecked => None,
        },
        signatures_checked: !matches!(trust.key, KeySource::Unchecked),
    };
    for org in orgs {
        match verify_org(db, &org, trust, &mut report).await {
            Ok(()) => {}
            Err(Stop::Database(error)) => return Err(error),
            Err(Stop::Broken(mut first_broken)) => {
                first_broken.org = org;
                report.valid = false;
                report.first_broken = Some(first_broken);
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// One org: the chain record by record, the checkpoints merged in as the
/// chain reaches their seq, then what is left of either.
async fn verify_org(
    db: &Db,
    org: &str,
    trust: &CheckpointTrust,
    report: &mut VerifyReport,
) -> Result<(), Stop> {
    let mut walk = CheckpointWalk::new(org, trust);
    let mut pending = walk.next(db).await?;
    let mut expected_prev = vec![0u8; 32];
    let mut expected_seq = 1;
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(
            "SELECT * FROM audit_log WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT 1000",
        )
        .bind(org)
        .bind(after)
        .fetch_all(db.pool())
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            after = seq;
            let prev_hash: Vec<u8> = row.try_get("prev_hash")?;
            let stored: Vec<u8> = row.try_get("hash")?;
            let recomputed = record_hash(
                &prev_hash,
                org,
                seq,
                row.try_get("timestamp")?,
                &row.try_get::<String, _>("action")?,
                &row.try_get::<String, _>("resource")?,
                &row.try_get::<String, _>("identity_id")?,
                &row.try_get::<String, _>("ip")?,
                &row.try_get::<String, _>("approved")?,
                &row.try_get::<String, _>("outcome")?,
                &row.try_get::<String, _>("request_id")?,
                &row.try_get::<String, _>("detail")?,
            );
            report.entries += 1;
            if seq != expected_seq {
                return Err(broken(
                    org,
                    seq,
                    "seq_gap",
                    format!("expected seq {expected_seq}, found {seq}"),
                ));
            }
            if prev_hash != expected_prev {
                return Err(broken(
                    org,
                    seq,
                    "prev_hash_mismatch",
                    "prev_hash does not match the previous record".into(),
                ));
            }
            if recomputed.as_slice() != stored.as_slice() {
                return Err(broken(
                    org,
                    seq,
                    "hash_mismatch",
                    "the record's content does not match its hash".into(),
                ));
            }
            // Every checkpoint at this seq must carry this record's hash.
            while let Some(checkpoint) = pending.take_if(|checkpoint| checkpoint.seq <= seq) {
                if checkpoint.seq < seq || checkpoint.hash != stored {
                    let message = if checkpoint.seq < seq {
                        format!(
                            "{} covers seq {}, which is not in the chain",
                            checkpoint.describe(),
                            checkpoint.seq
                        )
                    } else {
                        format!(
                            "the record at seq {seq} is not the one {} covers: the chain was \
                             rewritten",
                            checkpoint.describe()
                        )
                    };
                    return Err(Stop::Broken(BrokenRecord {
                        org: org.to_string(),
                        seq,
                        reason: "checkpoint_mismatch".into(),
                        message,
                        checkpoint: Some(checkpoint.summary()),
                    }));
                }
                pending = walk.next(db).await?;
            }
            expected_prev = stored;
            expected_seq += 1;
        }
    }
    let chain_end = expected_seq - 1;
    // Checkpoints beyond the chain's end: its tail is gone. The rest are
    // checked first, so that a forged one is named as such, and the newest
    // is named as the evidence.
    if let Some(first_beyond) = pending {
        let mut newest = first_beyond;
        while let Some(next) = walk.next(db).await? {
            newest = next;
        }
        return Err(Stop::Broken(BrokenRecord {
            org: org.to_string(),
            seq: chain_end + 1,
            reason: "truncated".into(),
            message: format!(
                "the chain ends at seq {chain_end} but {} covers seq {}: records were removed",
                newest.describe(),
                newest.seq
            ),
            checkpoint: Some(newest.summary()),
        }));
    }
    walk.finish()
        .map_err(|fault| Stop::Broken(fault.into_broken()))?;
    // The head must point at the last record: a deleted tail shows here
    // when the head row was left alone.
    if let Some(head) = sqlx::query("SELECT seq, hash FROM audit_heads WHERE org_id = $1")
        .bind(org)
        .fetch_optional(db.pool())
        .await?
    {
        let head_seq: i64 = head.try_get("seq")?;
        let head_hash: Vec<u8> = head.try_get("hash")?;
        if head_seq != chain_end || head_hash != expected_prev {
            return Err(broken(
                org,
                expected_seq,
                "head_mismatch",
                format!("the chain head says {head_seq} records, {chain_end} were found"),
            ));
        }
    }
    report.head_hash = hex::encode(&expected_prev);
    report.checkpoints += walk.checked;
    if let Some(newest) = &walk.previous {
        report.last_checkpoint = Some(newest.summary());
    }
    Ok(())
}

/// An [`AuditEvent`] that owns its text, for [`AuditBatcher`].
#[derive(Clone, Debug)]
pub struct OwnedAuditEvent {
    /// See [`AuditEvent::org`].
    pub org: String,
    /// See [`AuditEvent::action`].
    pub action: String,
    /// See [`AuditEvent::resource`].
    pub resource: String,
    /// See [`AuditEvent::identity`].
    pub identity: String,
    /// See [`AuditEvent::ip`].
    pub ip: String,
    /// See [`AuditEvent::approved`].
    pub approved: String,
    /// See [`AuditEvent::outcome`].
    pub outcome: String,
    /// See [`AuditEvent::request_id`].
    pub request_id: String,
    /// See [`AuditEvent::detail`].
    pub detail: serde_json::Value,
}

impl OwnedAuditEvent {
    fn borrowed(&self) -> AuditEvent<'_> {
        AuditEvent {
            org: &self.org,
            action: &self.action,
            resource: &self.resource,
            identity: &self.identity,
            ip: &self.ip,
            approved: &self.approved,
            outcome: &self.outcome,
            request_id: &self.request_id,
            detail: self.detail.clone(),
        }
    }
}

/// A call waiting for its record: the event, its detail already
/// serialised (by the caller, off the writer's path), and where to answer.
struct Waiting {
    event: OwnedAuditEvent,
    detail: String,
    answer: tokio::sync::oneshot::Sender<Result<i64, String>>,
}

/// Group commit of audit records for calls whose only write is their
/// record (transit encrypt and decrypt): the records of the calls waiting
/// at the same moment are appended in one transaction, and each call is
/// answered only once that transaction committed (fail closed, as with
/// [`append`] in the call's own transaction). One commit then carries many
/// records, instead of one fsync per call.
///
/// On SQLite the writer is a thread of its own with its own connection and
/// prepared statements ([`SqliteWriter`]): a statement through sqlx's
/// SQLite driver is a round trip to the driver's worker thread (about
/// 56 µs here), and five of them per commit made the writer, not the disk,
/// the limit of single-item transit calls. On PostgreSQL the writer is a
/// task on the pool, as any other transaction. Either way the head row is
/// read inside the write transaction, so records appended meanwhile by
/// other transactions ([`append`]) and other replicas chain correctly.
#[derive(Clone)]
pub struct AuditBatcher {
    sender: tokio::sync::mpsc::Sender<Waiting>,
}

/// The most records one transaction carries.
const MAX_BATCH: usize = 512;

/// Calls waiting for the writer before new ones wait to be queued.
const QUEUE: usize = 4096;

impl AuditBatcher {
    /// Starts the writer: a thread on its own SQLite connection when the
    /// store is a SQLite file, otherwise a task on the current runtime.
    pub fn start(db: Db) -> AuditBatcher {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Waiting>(QUEUE);
        let receiver = match db.sqlite_file() {
            Some(file) => match SqliteWriter::open(file) {
                Ok(writer) => {
                    match std::thread::Builder::new()
                        .name("custos-audit".into())
                        .spawn(move || writer.run(receiver))
                    {
                        Ok(_) => return AuditBatcher { sender },
                        Err(error) => {
                            // The receiver went with the closure; calls
                            // then fail closed with "the writer stopped".
                            tracing::error!(%error, "the audit writer thread did not start");
                            return AuditBatcher { sender };
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "the audit writer's own SQLite connection did not open; using the pool");
                    receiver
                }
            },
            None => receiver,
        };
        tokio::spawn(pool_writer(db, receiver));
        AuditBatcher { sender }
    }

    /// Appends `event` and waits until it is durable; returns its sequence
    /// number.
    pub async fn record(&self, mut event: OwnedAuditEvent) -> Result<i64, String> {
        let (answer, done) = tokio::sync::oneshot::channel();
        let detail = std::mem::take(&mut event.detail).to_string();
        self.sender
            .send(Waiting {
                event,
                detail,
                answer,
            })
            .await
            .map_err(|_| "the audit writer stopped".to_string())?;
        done.await
            .map_err(|_| "the audit writer stopped".to_string())?
    }
}

/// Takes the first waiting call and every call queued behind it, up to
/// [`MAX_BATCH`]: one group.
fn fill_group(first: Waiting, receiver: &mut tokio::sync::mpsc::Receiver<Waiting>) -> Vec<Waiting> {
    let mut group = vec![first];
    while group.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(next) => group.push(next),
            Err(_) => break,
        }
    }
    group
}

/// Answers every call of `group` with its outcome.
fn answer_group(group: Vec<Waiting>, outcome: Result<Vec<i64>, String>) {
    match outcome {
        Ok(seqs) => {
            for (waiting, seq) in group.into_iter().zip(seqs) {
                let _ = waiting.answer.send(Ok(seq));
            }
        }
        Err(error) => {
            tracing::error!(%error, records = group.len(), "an audit group failed to commit");
            for waiting in group {
                let _ = waiting.answer.send(Err(format!(
                    "the audit record could not be written: {error}"
                )));
            }
        }
    }
}

/// The writer on the pool (PostgreSQL, or SQLite in memory).
async fn pool_writer(db: Db, mut receiver: tokio::sync::mpsc::Receiver<Waiting>) {
    while let Some(first) = receiver.recv().await {
        let group = fill_group(first, &mut receiver);
        let attempt = async {
            let mut tx = db.begin().await?;
            let events: Vec<AuditEvent<'_>> = group
                .iter()
                .map(|waiting| waiting.event.borrowed())
                .collect();
            let details: Vec<&str> = group
                .iter()
                .map(|waiting| waiting.detail.as_str())
                .collect();
            let seqs = append_serialised(&db, &mut tx, &events, &details).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(seqs)
        };
        let outcome = attempt.await.map_err(|error| error.to_string());
        answer_group(group, outcome);
    }
}

/// The writer's wait for SQLite's write lock, held by another transaction
/// (a data-plane transaction is short): 50 µs at a time at first, then
/// 1 ms, up to about 10 s, as the pool's `busy_timeout`. SQLite's own
/// busy timeout first sleeps a whole millisecond, several group commits.
fn wait_for_lock(attempts: i32) -> bool {
    const SHORT: i32 = 100;
    if attempts < SHORT {
        std::thread::sleep(std::time::Duration::from_micros(50));
        true
    } else if attempts < SHORT + 10_000 {
        std::thread::sleep(std::time::Duration::from_millis(1));
        true
    } else {
        false
    }
}

/// The SQLite writer: one connection of its own, used only by its thread.
struct SqliteWriter {
    connection: rusqlite::Connection,
}

impl SqliteWriter {
    /// Opens the (migrated) database file with the pool's settings: WAL,
    /// a commit is durable when it returns (`synchronous = FULL`), writers
    /// wait for each other up to 10 s.
    fn open(file: &std::path::Path) -> Result<SqliteWriter, rusqlite::Error> {
        let connection = rusqlite::Connection::open_with_flags(
            file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_handler(Some(wait_for_lock))?;
        Ok(SqliteWriter { connection })
    }

    /// Writes groups until every sender is gone.
    fn run(mut self, mut receiver: tokio::sync::mpsc::Receiver<Waiting>) {
        while let Some(first) = receiver.blocking_recv() {
            let group = fill_group(first, &mut receiver);
            let outcome = self.write(&group).map_err(|error| error.to_string());
            answer_group(group, outcome);
        }
    }

    /// Appends the group's records in one `BEGIN IMMEDIATE` transaction, as
    /// [`append_many`] does through the pool; nothing of a group that fails
    /// is kept.
    fn write(&mut self, group: &[Waiting]) -> Result<Vec<i64>, rusqlite::Error> {
        use rusqlite::OptionalExtension;
        let tx = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut seqs = vec![0i64; group.len()];
        for (org, positions) in by_org(group.iter().map(|waiting| waiting.event.org.as_str())) {
            let head: Option<(i64, Vec<u8>)> = tx
                .prepare_cached("SELECT seq, hash FROM audit_heads WHERE org_id = ?1")?
                .query_row([org], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let (mut seq, mut prev_hash) = match head {
                Some(head) => head,
                None => {
                    tx.prepare_cached(
                        "INSERT INTO audit_heads (org_id, seq, hash) VALUES (?1, 0, ?2)",
                    )?
                    .execute(rusqlite::params![org, [0u8; 32].as_slice()])?;
                    (0, vec![0u8; 32])
                }
            };
            let timestamp = now_ms();
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit_log (org_id, seq, timestamp, action, resource, identity_id, \
                 ip, approved, outcome, request_id, detail, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            for position in positions {
                let Some(Waiting { event, detail, .. }) = group.get(position) else {
                    continue;
                };
                seq += 1;
                let hash = event
                    .borrowed()
                    .chain_hash(&prev_hash, seq, timestamp, detail);
                insert.execute(rusqlite::params![
                    org,
                    seq,
                    timestamp,
                    event.action,
                    event.resource,
                    event.identity,
                    event.ip,
                    event.approved,
                    event.outcome,
                    event.request_id,
                    detail,
                    prev_hash,
                    hash.as_slice(),
                ])?;
                prev_hash = hash.to_vec();
                if let Some(slot) = seqs.get_mut(position) {
                    *slot = seq;
                }
            }
            drop(insert);
            tx.prepare_cached("UPDATE audit_heads SET seq = ?1, hash = ?2 WHERE org_id = ?3")?
                .execute(rusqlite::params![seq, prev_hash, org])?;
        }
        tx.commit()?;
        Ok(seqs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn event<'a>(org: &'a str, request_id: &'a str) -> AuditEvent<'a> {
        AuditEvent {
            org,
            action: "transit.encrypt",
            resource: "transit:k",
            identity: "id_1",
            ip: "127.0.0.1",
            approved: "allowed",
            outcome: "success",
            request_id,
            detail: serde_json::json!({"items": 1}),
        }
    }

    #[tokio::test]
    async fn batched_records_chain_in_order_per_org_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let db = Db::connect(&url).await.unwrap();
        // One record alone, then a batch that interleaves two orgs and
        // crosses an insert chunk, then one alone again.
        append_alone(&db, &event("org_a", "first")).await.unwrap();
        let ids: Vec<String> = (0..INSERT_ROWS + 40).map(|i| format!("r{i}")).collect();
        let events: Vec<AuditEvent<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| event(if i % 3 == 0 { "org_b" } else { "org_a" }, id))
            .collect();
        let mut tx = db.begin().await.unwrap();
        let seqs = append_many(&db, &mut tx, &events).await.unwrap();
        tx.commit().await.unwrap();
        let (mut next_a, mut next_b) = (2, 1);
        for (event, seq) in events.iter().zip(&seqs) {
            let next = if event.org == "org_a" {
                &mut next_a
            } else {
                &mut next_b
            };
            assert_eq!(*seq, *next, "{}", event.request_id);
            *next += 1;
        }
        assert_eq!(
            append_alone(&db, &event("org_a", "last")).await.unwrap(),
            next_a
        );
        let report = verify(&db, None, &CheckpointTrust::unchecked())
            .await
            .unwrap();
        assert!(report.valid, "{report:?}");
        assert_eq!(report.entries, i64::try_from(events.len()).unwrap() + 2);
        // A record changed after the fact breaks the chain.
        sqlx::query("UPDATE audit_log SET outcome = 'denied' WHERE org_id = 'org_b' AND seq = 5")
            .execute(db.pool())
            .await
            .unwrap();
        let report = verify(&db, Some("org_b"), &CheckpointTrust::unchecked())
            .await
            .unwrap();
        assert!(!report.valid);
        assert_eq!(report.first_broken.unwrap().seq, 5);
    }

    fn owned(org: &str, request_id: &str) -> OwnedAuditEvent {
        let event = event(org, request_id);
        OwnedAuditEvent {
            org: event.org.into(),
            action: event.action.into(),
            resource: event.resource.into(),
            identity: event.identity.into(),
            ip: event.ip.into(),
            approved: event.approved.into(),
            outcome: event.outcome.into(),
            request_id: event.request_id.into(),
            detail: event.detail,
        }
    }

    async fn sqlite_file_db(dir: &tempfile::TempDir) -> Db {
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let db = Db::connect(&url).await.unwrap();
        assert!(db.sqlite_file().is_some(), "the writer needs the file");
        db
    }

    /// The writer's own connection and the pool's transactions append to
    /// the same chains at the same time: every answered record is stored
    /// once, at the sequence number it was answered with, and the chains
    /// verify.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_writer_and_pool_transactions_share_the_chains() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_file_db(&dir).await;
        let batcher = AuditBatcher::start(db.clone());
        let mut tasks = Vec::new();
        for caller in 0..24 {
            let (batcher, db) = (batcher.clone(), db.clone());
            tasks.push(tokio::spawn(async move {
                let org = if caller % 2 == 0 { "org_a" } else { "org_b" };
                let mut answered = Vec::new();
                for n in 0..20 {
                    let request_id = format!("c{caller}-{n}");
                    let seq = if caller % 6 == 5 {
                        append_alone(&db, &event(org, &request_id)).await.unwrap()
                    } else {
                        batcher.record(owned(org, &request_id)).await.unwrap()
                    };
                    answered.push((org, request_id, seq));
                }
                answered
            }));
        }
        let mut answered = Vec::new();
        for task in tasks {
            answered.extend(task.await.unwrap());
        }
        assert_eq!(answered.len(), 24 * 20);
        for (org, request_id, seq) in &answered {
            let stored: String = sqlx::query_scalar(
                "SELECT request_id FROM audit_log WHERE org_id = $1 AND seq = $2",
            )
            .bind(*org)
            .bind(*seq)
            .fetch_one(db.pool())
            .await
            .unwrap();
            assert_eq!(&stored, request_id);
        }
        let report = verify(&db, None, &CheckpointTrust::unchecked())
            .await
            .unwrap();
        assert!(report.valid, "{report:?}");
        assert_eq!(report.entries, 24 * 20);
    }

    /// A group that cannot commit answers every one of its calls with an
    /// error and keeps none of its records (fail closed); the writer goes
    /// on with the next group, and the chain stays whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_group_answers_errors_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_file_db(&dir).await;
        sqlx::query(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON audit_log \
             WHEN NEW.request_id = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(db.pool())
        .await
        .unwrap();
        let batcher = AuditBatcher::start(db.clone());
        let mut tasks = Vec::new();
        for caller in 0..16 {
            let batcher = batcher.clone();
            tasks.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for n in 0..10 {
                    let request_id = if caller == 3 && n == 4 {
                        "poison".to_string()
                    } else {
                        format!("c{caller}-{n}")
                    };
                    let outcome = batcher.record(owned("org_a", &request_id)).await;
                    outcomes.push((request_id, outcome));
                }
                outcomes
            }));
        }
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.extend(task.await.unwrap());
        }
        let poisoned = outcomes.iter().find(|(id, _)| id == "poison").unwrap();
        assert!(poisoned.1.as_ref().unwrap_err().contains("refused"));
        for (request_id, outcome) in &outcomes {
            let stored: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE request_id = $1")
                    .bind(request_id)
                    .fetch_one(db.pool())
                    .await
                    .unwrap();
            assert_eq!(
                stored,
                i64::from(outcome.is_ok()),
                "{request_id}: {outcome:?}"
            );
        }
        let kept = outcomes
            .iter()
            .filter(|(_, outcome)| outcome.is_ok())
            .count();
        assert!(kept >= 16 * 10 - MAX_BATCH.min(16), "only one group fails");
        let report = verify(&db, None, &CheckpointTrust::unchecked())
            .await
            .unwrap();
        assert!(report.valid, "{report:?}");
        assert_eq!(report.entries, i64::try_from(kept).unwrap());
    }
}
