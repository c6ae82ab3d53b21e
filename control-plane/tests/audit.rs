//! Signed checkpoints of the audit chains (invariant 5: the chain cannot be
//! cut silently), on SQLite and on PostgreSQL. The tests play a database
//! writer: they delete the tail of a chain and rewrite `audit_heads` to
//! match, rewrite a record and every later hash, forge, move or delete
//! checkpoints, and delete the checkpoint key; `GET /api/v1/audit/verify`
//! and the `custos audit verify` command name each of these.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use custos_control_plane::kernel::audit::{self, AuditEvent, CheckpointTrust, Checkpoints};
use custos_control_plane::kernel::config::SealMode;
use custos_control_plane::kernel::db::Db;
use custos_control_plane::kernel::keyring::Keyring;
use custos_protocol::seal::SealingKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// The seal section of every server here (the fixed test master key).
fn seal_lines() -> String {
    format!("[seal]\nmode = \"env\"\nmaster_key = \"{TEST_MASTER_KEY}\"\n")
}

fn settings(interval_secs: u64) -> String {
    format!(
        "dev_mode = true\nrate_limit_per_sec = 1000\n[audit]\ncheckpoint_interval_secs = {interval_secs}\n{}",
        seal_lines()
    )
}

async fn fresh_store(backend: Backend) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("custos.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    (dir, url)
}

/// A server checkpointing every `interval_secs`, its root credentials made
/// before it starts.
async fn start(backend: Backend, interval_secs: u64) -> Server {
    let (dir, url) = fresh_store(backend).await;
    let db = Db::connect(&url).await.unwrap();
    let credentials = custos_control_plane::kernel::auth::bootstrap(&db)
        .await
        .unwrap()
        .unwrap();
    db.close().await;
    let mut server = Server::start_configured(dir, url, &settings(interval_secs), false).await;
    server.root_client_id = credentials.client_id;
    server.root_client_secret = credentials.client_secret;
    server
}

/// Stops `server` and starts it again on its store (the `env` seal mode
/// unseals at start).
async fn restart(server: Server, interval_secs: u64) -> Server {
    let (id, secret) = (
        server.root_client_id.clone(),
        server.root_client_secret.clone(),
    );
    let (dir, url) = server.halt().await;
    let mut server = Server::start_configured(dir, url, &settings(interval_secs), false).await;
    server.root_client_id = id;
    server.root_client_secret = secret;
    server
}

async fn seal(server: &Server) {
    let root = server.root_token().await;
    let (status, body) = call(server, "POST", "/api/v1/sys/seal", &root, Some(json!({}))).await;
    assert_eq!(
        (status, body["sealed"].clone()),
        (200, json!(true)),
        "{body}"
    );
}

/// `n` audited reads: `n` records in the caller's chain.
async fn records(server: &Server, token: &str, n: usize) {
    for _ in 0..n {
        let (status, body) = call(server, "GET", "/api/v1/identities", token, None).await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn verify(server: &Server, token: &str) -> Value {
    let (status, report) = call(server, "GET", "/api/v1/audit/verify", token, None).await;
    assert_eq!(status, 200, "{report}");
    report
}

async fn platform_org(pool: &sqlx::AnyPool) -> String {
    sqlx::query("SELECT id FROM orgs WHERE name = 'platform'")
        .fetch_one(pool)
        .await
        .unwrap()
        .get("id")
}

/// A stored checkpoint, as the tests read it.
#[derive(Clone, Debug)]
struct Stored {
    number: i64,
    seq: i64,
    reason: String,
}

async fn checkpoints_of(pool: &sqlx::AnyPool, org: &str) -> Vec<Stored> {
    sqlx::query(
        "SELECT number, seq, reason FROM audit_checkpoints WHERE org_id = $1 ORDER BY number",
    )
    .bind(org)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|row| Stored {
        number: row.get("number"),
        seq: row.get("seq"),
        reason: row.get("reason"),
    })
    .collect()
}

async fn heads(pool: &sqlx::AnyPool) -> HashMap<String, i64> {
    sqlx::query("SELECT org_id, seq FROM audit_heads")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get("org_id"), row.get("seq")))
        .collect()
}

async fn hash_at(pool: &sqlx::AnyPool, org: &str, seq: i64) -> Vec<u8> {
    sqlx::query("SELECT hash FROM audit_log WHERE org_id = $1 AND seq = $2")
        .bind(org)
        .bind(seq)
        .fetch_one(pool)
        .await
        .unwrap()
        .get("hash")
}

/// The attack: every record of `org` after `keep` deleted, and the head
/// rewritten to the new last record, so the chain alone verifies.
async fn cut_tail(pool: &sqlx::AnyPool, org: &str, keep: i64) {
    sqlx::query("DELETE FROM audit_log WHERE org_id = $1 AND seq > $2")
        .bind(org)
        .bind(keep)
        .execute(pool)
        .await
        .unwrap();
    let hash = hash_at(pool, org, keep).await;
    sqlx::query("UPDATE audit_heads SET seq = $1, hash = $2 WHERE org_id = $3")
        .bind(keep)
        .bind(hash)
        .bind(org)
        .execute(pool)
        .await
        .unwrap();
}

/// The chain hash as `audit.rs` computes it (the formula is no secret: a
/// database writer can recompute a chain).
fn record_hash(prev: &[u8], org: &str, row: &sqlx::any::AnyRow) -> Vec<u8> {
    let put = |hasher: &mut Sha256, field: &[u8]| {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    };
    let mut hasher = Sha256::new();
    hasher.update(b"custos/audit/v1");
    put(&mut hasher, prev);
    put(&mut hasher, org.as_bytes());
    hasher.update(row.get::<i64, _>("seq").to_be_bytes());
    hasher.update(row.get::<i64, _>("timestamp").to_be_bytes());
    for column in [
        "action",
        "resource",
        "identity_id",
        "ip",
        "approved",
        "outcome",
        "request_id",
        "detail",
    ] {
        put(&mut hasher, row.get::<String, _>(column).as_bytes());
    }
    hasher.finalize().to_vec()
}

/// The attack: record `seq` of `org` changed, and every hash from there on
/// and the head recomputed, so the chain alone verifies.
async fn rewrite_from(pool: &sqlx::AnyPool, org: &str, seq: i64) {
    sqlx::query("UPDATE audit_log SET identity_id = 'nobody' WHERE org_id = $1 AND seq = $2")
        .bind(org)
        .bind(seq)
        .execute(pool)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT * FROM audit_log WHERE org_id = $1 AND seq >= $2 ORDER BY seq")
        .bind(org)
        .bind(seq)
        .fetch_all(pool)
        .await
        .unwrap();
    let mut prev = hash_at(pool, org, seq - 1).await;
    for row in &rows {
        let hash = record_hash(&prev, org, row);
        sqlx::query(
            "UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE org_id = $3 AND seq = $4",
        )
        .bind(prev.clone())
        .bind(hash.clone())
        .bind(org)
        .bind(row.get::<i64, _>("seq"))
        .execute(pool)
        .await
        .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_heads SET hash = $1 WHERE org_id = $2")
        .bind(prev)
        .bind(org)
        .execute(pool)
        .await
        .unwrap();
}

/// Polls until `org` has more than `count` checkpoints, up to 15 s.
async fn wait_for_checkpoints(pool: &sqlx::AnyPool, org: &str, count: usize) -> Vec<Stored> {
    for _ in 0..150 {
        let stored = checkpoints_of(pool, org).await;
        if stored.len() > count {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no checkpoint {} for {org} within 15 s", count + 1);
}

/// A server whose platform chain was checkpointed at seal and has records
/// after that; answers it (unsealed again) with its root token.
async fn sealed_once(backend: Backend) -> (Server, String) {
    let server = start(backend, 3600).await;
    let root = server.root_token().await;
    records(&server, &root, 12).await;
    seal(&server).await;
    let server = restart(server, 3600).await;
    let root = server.root_token().await;
    records(&server, &root, 3).await;
    (server, root)
}

/// `report` has every field the OpenAPI document's `VerifyReport` requires
/// and no other, and so has its `firstBroken` (with its `checkpoint`).
async fn assert_documented(server: &Server, report: &Value) {
    let (status, document, _) = server
        .request("GET", "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    let schema = &document["components"]["schemas"]["VerifyReport"];
    assert_eq!(
        document["paths"]["/api/v1/audit/verify"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"]["$ref"],
        "#/components/schemas/VerifyReport"
    );
    let check = |schema: &Value, value: &Value| {
        let fields = value.as_object().unwrap();
        for required in schema["required"].as_array().unwrap() {
            assert!(
                fields.contains_key(required.as_str().unwrap()),
                "{required} in {value}"
            );
        }
        for field in fields.keys() {
            assert!(
                schema["properties"].get(field).is_some(),
                "{field} is not documented"
            );
        }
    };
    check(schema, report);
    let broken = &schema["properties"]["firstBroken"];
    check(broken, &report["firstBroken"]);
    check(
        &broken["properties"]["checkpoint"],
        &report["firstBroken"]["checkpoint"],
    );
    let reasons = broken["properties"]["reason"]["enum"].as_array().unwrap();
    assert!(reasons.contains(&report["firstBroken"]["reason"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_chain_tail_is_named_by_verify() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (server, root) = sealed_once(backend).await;
        let pool = pool(&server).await;
        let org = platform_org(&pool).await;
        let stored = checkpoints_of(&pool, &org).await;
        assert_eq!(stored.len(), 1, "{stored:?}");
        let checkpoint = stored[0].clone();
        assert_eq!(checkpoint.reason, "seal");
        let before = verify(&server, &root).await;
        assert_eq!(before["valid"], true, "{before}");
        assert_eq!(before["checkpoints"], 1);
        assert_eq!(before["lastCheckpoint"]["seq"], checkpoint.seq);
        assert_eq!(before["signaturesChecked"], true);

        // Cut the last records, the sealed one included, and rewrite the
        // head to match: the chain alone is whole.
        cut_tail(&pool, &org, checkpoint.seq - 6).await;
        let report = verify(&server, &root).await;
        assert_eq!(report["valid"], false, "{report}");
        let broken = &report["firstBroken"];
        assert_eq!(broken["reason"], "truncated", "{report}");
        assert_eq!(broken["org"], org.as_str());
        // The verify call's own record is at seq - 5 now.
        assert_eq!(broken["seq"], checkpoint.seq - 4);
        assert_eq!(broken["checkpoint"]["number"], 1);
        assert_eq!(broken["checkpoint"]["reason"], "seal");
        assert_eq!(broken["checkpoint"]["seq"], checkpoint.seq);
        assert_documented(&server, &report).await;
        let message = broken["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "the chain ends at seq {} but checkpoint 1 (seal, ",
                checkpoint.seq - 5
            )) && message.contains(&format!("covers seq {}", checkpoint.seq)),
            "{message}"
        );
        pool.close().await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_record_at_a_checkpoint_is_named() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (server, root) = sealed_once(backend).await;
        let pool = pool(&server).await;
        let org = platform_org(&pool).await;
        let checkpoint = checkpoints_of(&pool, &org).await[0].clone();
        // An earlier record changed, every later hash and the head
        // recomputed.
        rewrite_from(&pool, &org, checkpoint.seq - 4).await;
        let report = verify(&server, &root).await;
        assert_eq!(report["valid"], false, "{report}");
        let broken = &report["firstBroken"];
        assert_eq!(broken["reason"], "checkpoint_mismatch", "{report}");
        assert_eq!(broken["seq"], checkpoint.seq);
        assert_eq!(broken["checkpoint"]["number"], 1);
        pool.close().await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_checkpoint_signature_is_named() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (server, root) = sealed_once(backend).await;
        let pool = pool(&server).await;
        let org = platform_org(&pool).await;
        let checkpoint = checkpoints_of(&pool, &org).await[0].clone();
        // Cut the tail and move the checkpoint to the new end.
        let keep = checkpoint.seq - 6;
        cut_tail(&pool, &org, keep).await;
        sqlx::query("UPDATE audit_checkpoints SET seq = $1, hash = $2 WHERE org_id = $3")
            .bind(keep)
            .bind(hash_at(&pool, &org, keep).await)
            .bind(&org)
            .execute(&pool)
            .await
            .unwrap();
        let report = verify(&server, &root).await;
        assert_eq!(report["valid"], false, "{report}");
        assert_eq!(
            report["firstBroken"]["reason"], "checkpoint_signature_invalid",
            "{report}"
        );
        assert_eq!(report["firstBroken"]["checkpoint"]["number"], 1);
        // A checkpoint signed with another key than the control plane's.
        let other = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let row = sqlx::query("SELECT * FROM audit_checkpoints WHERE org_id = $1")
            .bind(&org)
            .fetch_one(&pool)
            .await
            .unwrap();
        let forged = audit::checkpoints::Checkpoint {
            org: org.clone(),
            number: 1,
            seq: keep,
            hash: row.get("hash"),
            created_at: row.get("created_at"),
            reason: "seal".into(),
            prev_signature: Vec::new(),
            signature: Vec::new(),
        };
        let signature = ed25519_dalek::Signer::sign(&other, &forged.signed_message());
        sqlx::query("UPDATE audit_checkpoints SET signature = $1 WHERE org_id = $2")
            .bind(signature.to_bytes().to_vec())
            .bind(&org)
            .execute(&pool)
            .await
            .unwrap();
        let report = verify(&server, &root).await;
        assert_eq!(
            report["firstBroken"]["reason"], "checkpoint_signature_invalid",
            "{report}"
        );
        // The writer does not extend a forged checkpoint, even at seal.
        seal(&server).await;
        assert_eq!(checkpoints_of(&pool, &org).await.len(), 1);
        pool.close().await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_checkpoint_in_the_middle_is_named() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let mut server = start(backend, 3600).await;
        for _ in 0..3 {
            let root = server.root_token().await;
            records(&server, &root, 2).await;
            seal(&server).await;
            server = restart(server, 3600).await;
        }
        let pool = pool(&server).await;
        let org = platform_org(&pool).await;
        assert_eq!(checkpoints_of(&pool, &org).await.len(), 3);
        let root = server.root_token().await;
        assert_eq!(verify(&server, &root).await["valid"], true);
        sqlx::query("DELETE FROM audit_checkpoints WHERE org_id = $1 AND number = 2")
            .bind(&org)
            .execute(&pool)
            .await
            .unwrap();
        let report = verify(&server, &root).await;
        assert_eq!(report["valid"], false, "{report}");
        let broken = &report["firstBroken"];
        assert_eq!(broken["reason"], "checkpoint_missing", "{report}");
        assert_eq!(broken["checkpoint"]["number"], 3);
        assert!(
            broken["message"]
                .as_str()
                .unwrap()
                .starts_with("checkpoint 2 is missing"),
            "{report}"
        );
        pool.close().await;
        server.stop().await;
    }
}

/// The newest checkpoints can be deleted with the records they cover; the
/// replica that wrote them remembers: its verify names the loss, and its
/// writer does not paper over it with a new checkpoint of that number.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_newest_checkpoint_is_named_by_the_replica_that_wrote_it() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = start(backend, 1).await;
        let root = server.root_token().await;
        records(&server, &root, 3).await;
        let pool = pool(&server).await;
        let org = platform_org(&pool).await;
        let written = wait_for_checkpoints(&pool, &org, 0).await;
        records(&server, &root, 1).await;
        let written = wait_for_checkpoints(&pool, &org, written.len()).await;
        let newest = written.last().unwrap().clone();
        let previous = written[written.len() - 2].clone();
        // Records and checkpoint removed together: what is left is whole.
        sqlx::query("DELETE FROM audit_checkpoints WHERE org_id = $1 AND number = $2")
            .bind(&org)
            .bind(newest.number)
            .execute(&pool)
            .await
            .unwrap();
        cut_tail(&pool, &org, previous.seq).await;
        let report = verify(&server, &root).await;
        assert_eq!(report["valid"], false, "{report}");
        let broken = &report["firstBroken"];
        assert_eq!(broken["reason"], "checkpoint_missing", "{report}");
        assert!(
            broken["message"].as_str().unwrap().contains(&format!(
                "checkpoint {}, written by this replica, is missing",
                newest.number
            )),
            "{report}"
        );
        // Three intervals later the writer has not written that number
        // again (its head moved: the verify call's record).
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let now = checkpoints_of(&pool, &org).await;
        assert_eq!(
            now.last().map(|stored| stored.number),
            Some(previous.number),
            "{now:?}"
        );
        pool.close().await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_seal_writes_a_checkpoint_for_every_org() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        // An interval of 1 s: while sealed, the task writes nothing.
        let server = start(backend, 1).await;
        let root = server.root_token().await;
        for name in ["org-a", "org-b"] {
            let (status, body) = call(
                &server,
                "POST",
                "/api/v1/orgs",
                &root,
                Some(json!({"name": name})),
            )
            .await;
            assert_eq!(status, 201, "{body}");
        }
        records(&server, &root, 2).await;
        seal(&server).await;
        let pool = pool(&server).await;
        let at_seal = heads(&pool).await;
        assert_eq!(at_seal.len(), 3, "{at_seal:?}");
        let mut counts = HashMap::new();
        for (org, head) in &at_seal {
            let stored = checkpoints_of(&pool, org).await;
            let last = stored.last().unwrap();
            assert_eq!((last.reason.as_str(), last.seq), ("seal", *head), "{org}");
            counts.insert(org.clone(), stored.len());
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for (org, count) in &counts {
            assert_eq!(
                checkpoints_of(&pool, org).await.len(),
                *count,
                "sealed: {org}"
            );
        }

        // Sealed again with no record in the other orgs since: each still
        // gets a seal checkpoint at its unchanged head.
        let server = restart(server, 3600).await;
        seal(&server).await;
        let heads_now = heads(&pool).await;
        for (org, head) in &heads_now {
            let stored = checkpoints_of(&pool, org).await;
            assert_eq!(stored.len(), counts[org] + 1, "{org}: {stored:?}");
            let last = stored.last().unwrap();
            assert_eq!((last.reason.as_str(), last.seq), ("seal", *head), "{org}");
            if at_seal[org] == *head {
                assert_eq!(stored[stored.len() - 2].seq, *head);
            }
        }
        let server = restart(server, 3600).await;
        let root = server.root_token().await;
        let report = verify(&server, &root).await;
        assert_eq!(report["valid"], true, "{report}");
        assert_eq!(report["lastCheckpoint"]["reason"], "seal");
        pool.close().await;
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_are_written_on_the_interval_only_when_the_head_moved() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = start(backend, 1).await;
        let root = server.root_token().await;
        records(&server, &root, 3).await;
        let pool = pool(&server).await;
        let org = platform_org(&pool).await;
        let written = wait_for_checkpoints(&pool, &org, 0).await;
        assert_eq!(written[0].reason, "interval");
        // Nothing calls the API (the store is read directly): the head
        // stays, and three intervals write nothing.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let quiet = checkpoints_of(&pool, &org).await;
        assert_eq!(quiet.last().unwrap().seq, heads(&pool).await[&org]);
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert_eq!(checkpoints_of(&pool, &org).await.len(), quiet.len());
        // One record: the next interval covers it.
        records(&server, &root, 1).await;
        let moved = wait_for_checkpoints(&pool, &org, quiet.len()).await;
        let last = moved.last().unwrap();
        assert_eq!(last.number, quiet.last().unwrap().number + 1);
        assert_eq!(last.reason, "interval");
        assert_eq!(last.seq, heads(&pool).await[&org]);
        // Never two interval checkpoints at one head.
        for pair in moved.windows(2) {
            assert!(pair[1].seq > pair[0].seq, "{moved:?}");
        }
        let report = verify(&server, &root).await;
        assert_eq!(report["valid"], true, "{report}");
        assert!(report["checkpoints"].as_i64().unwrap() >= 2);
        pool.close().await;
        server.stop().await;
    }
}

/// Two replicas (two `Checkpoints` on one store and keyring) writing at
/// the same moment, again and again: each number is written once, and the
/// checkpoints form one chain that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_checkpointing_at_once_write_each_number_once() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (_dir, url) = fresh_store(backend).await;
        let db = Db::connect(&url).await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        let keyring = Keyring::load(&mut conn, SealMode::Env).await.unwrap();
        keyring
            .init_env(&mut conn, SealingKey::generate(&mut rand_core::OsRng))
            .await
            .unwrap();
        drop(conn);
        let replicas = [Checkpoints::new(None), Checkpoints::new(None)];
        for round in 0..15 {
            let request_id = format!("r{round}");
            audit::append_alone(
                &db,
                &AuditEvent {
                    org: "org_a",
                    action: "test.write",
                    resource: "test:r",
                    identity: "id_1",
                    ip: "127.0.0.1",
                    approved: "allowed",
                    outcome: "success",
                    request_id: &request_id,
                    detail: json!({}),
                },
            )
            .await
            .unwrap();
            let (a, b) = tokio::join!(
                replicas[0].write(&db, &keyring, audit::REASON_INTERVAL, round % 3 == 0, 0),
                replicas[1].write(&db, &keyring, audit::REASON_INTERVAL, round % 3 == 0, 0),
            );
            let written = a.unwrap() + b.unwrap();
            assert!((1..=2).contains(&written), "round {round}: {written}");
        }
        let numbers: Vec<i64> = sqlx::query(
            "SELECT number FROM audit_checkpoints WHERE org_id = 'org_a' ORDER BY number",
        )
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| row.get("number"))
        .collect();
        assert!(numbers.len() >= 15, "{numbers:?}");
        assert_eq!(numbers, (1..=numbers.len() as i64).collect::<Vec<_>>());
        for replica in &replicas {
            let report = audit::verify(&db, None, &replica.trust(&db, &keyring).await.unwrap())
                .await
                .unwrap();
            assert!(report.valid, "{report:?}");
            assert_eq!(report.checkpoints, numbers.len() as i64);
        }
        db.close().await;
        if backend == Backend::Postgres {
            drop_postgres_database(&url).await;
        }
    }
}

/// A database writer who deletes the checkpoint key does not get a fresh
/// one (which would sign a cut chain): verify names the missing key, and
/// sealing writes no checkpoint and no new key.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_checkpoint_key_is_named_and_not_replaced() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (server, _) = sealed_once(backend).await;
        let pool = pool(&server).await;
        let org = platform_org(&pool).await;
        sqlx::query("DELETE FROM meta WHERE key = 'secret/audit-checkpoint-key'")
            .execute(&pool)
            .await
            .unwrap();
        let server = restart(server, 3600).await;
        let root = server.root_token().await;
        let report = verify(&server, &root).await;
        assert_eq!(report["valid"], false, "{report}");
        assert_eq!(report["firstBroken"]["reason"], "checkpoint_key_missing");
        seal(&server).await;
        assert_eq!(checkpoints_of(&pool, &org).await.len(), 1);
        let key_rows: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM meta WHERE key = 'secret/audit-checkpoint-key'")
                .fetch_one(&pool)
                .await
                .unwrap()
                .get("n");
        assert_eq!(key_rows, 0);
        pool.close().await;
        server.stop().await;
    }
}

/// Runs `custos audit verify` (the real binary): (exit code, report, stderr).
async fn verify_command(args: &[&str], master_key: Option<&str>) -> (Option<i32>, Value, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_custos"));
    command
        .args(["audit", "verify"])
        .args(args)
        .env_remove("CUSTOS_DATABASE_URL")
        .env_remove("CUSTOS_CONFIG")
        .env_remove("CUSTOS_MASTER_KEY");
    if let Some(key) = master_key {
        command.env("CUSTOS_MASTER_KEY", key);
    }
    let output = command.output().await.unwrap();
    (
        output.status.code(),
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_verifier_names_a_truncation() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (server, root) = sealed_once(backend).await;
        let key = verify(&server, &root).await["checkpointKey"]
            .as_str()
            .unwrap()
            .to_string();
        let url = server.database_url.clone();
        let (code, report, stderr) =
            verify_command(&["--database-url", &url, "--checkpoint-key", &key], None).await;
        assert_eq!(code, Some(0), "{report} {stderr}");
        assert_eq!(report["checkpoints"], 1);

        let pool = pool(&server).await;
        let org = platform_org(&pool).await;
        let checkpoint = checkpoints_of(&pool, &org).await[0].clone();
        cut_tail(&pool, &org, checkpoint.seq - 6).await;

        // Under the key the operator pinned.
        let (code, report, stderr) =
            verify_command(&["--database-url", &url, "--checkpoint-key", &key], None).await;
        assert_eq!(code, Some(2), "{report} {stderr}");
        assert_eq!(report["firstBroken"]["reason"], "truncated", "{report}");
        assert_eq!(report["firstBroken"]["org"], org.as_str());
        assert_eq!(report["firstBroken"]["checkpoint"]["seq"], checkpoint.seq);
        assert_eq!(report["signaturesChecked"], true);

        // Under the key derived from the keyring (the server's settings).
        let config = server.dir.path().join("verify.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {}\ndatabase_url = \"{url}\"\n[seal]\nmode = \"env\"\n",
                toml::Value::String(server.dir.path().display().to_string())
            ),
        )
        .unwrap();
        let config = config.display().to_string();
        let (code, report, stderr) =
            verify_command(&["--config", &config], Some(TEST_MASTER_KEY)).await;
        assert_eq!(code, Some(2), "{report} {stderr}");
        assert_eq!(report["firstBroken"]["reason"], "truncated", "{report}");
        assert_eq!(report["checkpointKey"], key.as_str());

        // Without a key: the truncation still shows, and the report and
        // the command say the signatures were not checked.
        let (code, report, stderr) = verify_command(&["--database-url", &url], None).await;
        assert_eq!(code, Some(2), "{report} {stderr}");
        assert_eq!(report["firstBroken"]["reason"], "truncated", "{report}");
        assert_eq!(report["signaturesChecked"], false);
        assert!(stderr.contains("signatures were not checked"), "{stderr}");

        // Under another key, the checkpoint is not the control plane's.
        let other = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let other = hex::encode(other.verifying_key().to_bytes());
        let (code, report, _) =
            verify_command(&["--database-url", &url, "--checkpoint-key", &other], None).await;
        assert_eq!(code, Some(2));
        assert_eq!(
            report["firstBroken"]["reason"], "checkpoint_signature_invalid",
            "{report}"
        );
        pool.close().await;
        server.stop().await;
    }
}

/// Verify through the library with nothing trusted but the chain still
/// names a cut against the stored checkpoints; with them gone too, only
/// the replica's memory could (see above): this is the limit the
/// documentation states.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_chain_is_named_only_while_a_checkpoint_covers_the_cut() {
    let (server, _) = sealed_once(Backend::Sqlite).await;
    let pool = pool(&server).await;
    let org = platform_org(&pool).await;
    let checkpoint = checkpoints_of(&pool, &org).await[0].clone();
    cut_tail(&pool, &org, checkpoint.seq - 6).await;
    let db = Db::connect(&server.database_url).await.unwrap();
    let report = audit::verify(&db, Some(&org), &CheckpointTrust::unchecked())
        .await
        .unwrap();
    assert_eq!(
        report.first_broken.map(|broken| broken.reason),
        Some("truncated".to_string())
    );
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    let report = audit::verify(&db, Some(&org), &CheckpointTrust::unchecked())
        .await
        .unwrap();
    assert!(report.valid, "{report:?}");
    db.close().await;
    pool.close().await;
    server.stop().await;
}

/// The seed SDKs' audit query: a key's records by its id, several actions
/// by verb (`access` is a read), and dates as bounds (the `to` day
/// included).
#[tokio::test(flavor = "multi_thread")]
async fn audit_lists_by_key_verbs_and_dates() {
    for backend in BACKENDS {
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        let mut ids = Vec::new();
        for name in ["audited-a", "audited-b"] {
            let (status, key) = call(
                &server,
                "POST",
                "/api/v1/keys",
                &root,
                Some(json!({"name": name, "type": "ED25519", "usage": ["sign", "verify"]})),
            )
            .await;
            assert_eq!(status, 201, "{key}");
            let id = key["id"].as_str().unwrap().to_string();
            let (status, body) = call(
                &server,
                "POST",
                &format!("/api/v1/keys/{id}/sign"),
                &root,
                Some(json!({"message": "m"})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let (status, _) =
                call(&server, "GET", &format!("/api/v1/keys/{id}"), &root, None).await;
            assert_eq!(status, 200);
            ids.push(id);
        }
        let today = {
            let days = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                / 86_400;
            // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
            let z = days as i64 + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let day = doy - (153 * mp + 2) / 5 + 1;
            let month = if mp < 10 { mp + 3 } else { mp - 9 };
            let year = yoe + era * 400 + i64::from(month <= 2);
            format!("{year:04}-{month:02}-{day:02}")
        };
        let list = |query: String| {
            let server = &server;
            let root = root.clone();
            async move {
                call(
                    server,
                    "GET",
                    &format!("/api/v1/audit?{query}"),
                    &root,
                    None,
                )
                .await
            }
        };
        let (status, page) = list(format!(
            "keyId={}&actions=create,sign,access&from={today}&to={today}",
            ids[0]
        ))
        .await;
        assert_eq!(status, 200, "{page}");
        let seen: Vec<(&str, &str)> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| {
                (
                    record["action"].as_str().unwrap(),
                    record["resource"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("key.create", "key:audited-a"),
                ("key.sign", "key:audited-a"),
                ("key.read", "key:audited-a")
            ],
            "{page}"
        );
        let (status, page) = list(format!("keyId={}&from=2099-01-01", ids[0])).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
        let (status, page) = list("from=yesterday".into()).await;
        assert_eq!(
            (status, page["error"]["code"].as_str()),
            (422, Some("invalid_query")),
            "{page}"
        );
        let (status, page) = list("keyId=key_missing".into()).await;
        assert_eq!(status, 404, "{page}");
        server.stop().await;
    }
}
