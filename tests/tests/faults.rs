//! Faults of a whole deployment: `kill -9` of a signer node while 20
//! signing requests are in flight, and `kill -9` of the control plane with
//! requests pending approval and queued. Nothing accepted is lost and no
//! request is signed twice. Once on SQLite and once on PostgreSQL.

mod support;

use std::collections::HashMap;

use k256::ecdsa::signature::hazmat::PrehashVerifier;
use serde_json::{json, Value};
use support::*;

#[test]
fn on_sqlite_node_and_control_plane_crashes_lose_nothing() {
    let _serial = serial();
    node_killed_during_concurrent_signing(Backend::Sqlite);
    control_plane_killed_with_pending_and_queued_requests(Backend::Sqlite);
}

#[test]
fn on_postgres_node_and_control_plane_crashes_lose_nothing() {
    let _serial = serial();
    node_killed_during_concurrent_signing(Backend::Postgres);
    control_plane_killed_with_pending_and_queued_requests(Backend::Postgres);
}

/// Several replicas on one PostgreSQL database run the same background
/// work: every approved request is executed by exactly one of them.
#[test]
fn on_postgres_two_replicas_execute_each_request_once() {
    let _serial = serial();
    eprintln!("== Postgres: two control-plane replicas share the queue");
    let net = Testnet::start(Backend::Postgres, false);
    let root = net.root.token.clone();
    let approver = net.identity(&root, "approver", "approver", None);
    net.ok("POST", "/api/v1/policies", &root, Some(json!({
        "name": "hold", "priority": 10,
        "rules": [{"action": "wallet.sign", "resource": "wallet:shared-*", "effect": "require_approval", "approvals": {"count": 1, "roles": ["approver"]}}],
    })));
    let wallet = net.wallet(&root, "shared-1", "frost-taproot", None);
    let id = wallet["id"].as_str().unwrap().to_string();
    let public_key = wallet["publicKey"].as_str().unwrap().to_string();
    let (replica, mut replica_process) = net.start_replica("replica-b");
    let mut requests = Vec::new();
    for index in 0..12u8 {
        let message = [0x50 + index; 32];
        let (status, answer) = net.call(
            "POST",
            &format!("/api/v1/wallets/{id}/sign"),
            Some(&root),
            Some(json!({"digest": hex::encode(message)})),
        );
        assert_eq!(status, 202, "{answer}");
        requests.push((
            answer["requestId"].as_str().unwrap().to_string(),
            answer["approvalId"].as_str().unwrap().to_string(),
            message,
        ));
    }
    // Approvals arrive through both replicas; both workers pick up work.
    for (index, (_, approval, _)) in requests.iter().enumerate() {
        let path = format!("/api/v1/approvals/{approval}/approve");
        let response = if index % 2 == 0 {
            net.call("POST", &path, Some(&approver.token), Some(json!({})))
        } else {
            let answer = custos_testnet::http::send(
                replica,
                "POST",
                &path,
                Some(&approver.token),
                Some("{}"),
                std::time::Duration::from_secs(60),
            )
            .unwrap();
            (answer.status, serde_json::from_str(&answer.body).unwrap())
        };
        assert_eq!(response.0, 200, "{}", response.1);
    }
    for (request, _, message) in &requests {
        let done = net.wait_for(&root, request, &["signed", "failed", "rejected"]);
        assert_eq!(done["status"], "signed", "{done}");
        verify_taproot(&public_key, message, done["signature"].as_str().unwrap());
    }
    let audit = net.ok(
        "GET",
        "/api/v1/audit?action=wallet.sign.execute&limit=1000",
        &root,
        None,
    );
    let mut executions: HashMap<String, usize> = HashMap::new();
    let mut by_replica: HashMap<String, usize> = HashMap::new();
    for item in audit["items"].as_array().unwrap() {
        *executions
            .entry(item["requestId"].as_str().unwrap().to_string())
            .or_default() += 1;
        let replica = item["detail"]["replica"].as_str().unwrap_or_default();
        *by_replica.entry(replica.to_string()).or_default() += 1;
    }
    eprintln!("executions by replica: {by_replica:?}");
    for (request, _, _) in &requests {
        assert_eq!(
            executions.get(request),
            Some(&1),
            "{request} executed once: {executions:?}"
        );
    }
    let _ = replica_process.kill();
    let _ = replica_process.wait();
}

fn verify_taproot(public_key: &str, message: &[u8; 32], signature: &str) {
    let key = k256::schnorr::VerifyingKey::from_bytes(&hex::decode(public_key).unwrap()).unwrap();
    let signature =
        k256::schnorr::Signature::try_from(hex::decode(signature).unwrap().as_slice()).unwrap();
    key.verify_prehash(message, &signature)
        .expect("k256 BIP-340 verifies");
}

fn node_killed_during_concurrent_signing(backend: Backend) {
    eprintln!("== {backend:?}: kill -9 of a node during 20 concurrent signing requests");
    let net = Testnet::start(backend, false);
    let token = net.root.token.clone();
    let wallet = net.wallet(&token, "busy", "frost-taproot", None);
    let id = wallet["id"].as_str().unwrap().to_string();
    let public_key = wallet["publicKey"].as_str().unwrap().to_string();
    let answers: Vec<(u16, Value, [u8; 32])> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20u8)
            .map(|index| {
                let (net, token, id) = (&net, &token, &id);
                scope.spawn(move || {
                    let message = [index; 32];
                    let (status, answer) = net.call(
                        "POST",
                        &format!("/api/v1/wallets/{id}/sign"),
                        Some(token),
                        Some(json!({"digest": hex::encode(message)})),
                    );
                    (status, answer, message)
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(30));
        net.kill9("node-1");
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    for (status, answer, message) in answers {
        assert!(status == 200 || status == 202, "{status} {answer}");
        let request = answer["requestId"].as_str().unwrap();
        let done = net.wait_for(&token, request, &["signed", "failed", "rejected"]);
        assert_eq!(
            done["status"],
            "signed",
            "{done}\n{}",
            net.log("control-plane")
        );
        verify_taproot(&public_key, &message, done["signature"].as_str().unwrap());
    }
    // The registry sees the node go (probes every 2 s, 5 s timeout).
    let started = std::time::Instant::now();
    loop {
        let nodes = net.ok("GET", "/api/v1/nodes", &token, None);
        let status = nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["name"] == "node-1")
            .unwrap()["status"]
            .clone();
        if status == "unreachable" {
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "{nodes}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    if backend == Backend::Sqlite {
        committee_preparation_with_a_dead_member_fails_and_says_why(&net, &token);
    }
}

/// A committee whose member is dead cannot get aux info: its preparation
/// fails after `RUN_ATTEMPTS` runs (each given up `FAILURE_GRACE` after the
/// dead member's failure, not at the 600 s deadline) with a named 503, and
/// the committee's row says how many runs were tried, why the last failed,
/// and that nothing is under way any more. Once (the SQL is the same on
/// both stores; each run costs about 10 s).
fn committee_preparation_with_a_dead_member_fails_and_says_why(net: &Testnet, token: &str) {
    eprintln!("== a committee preparation with a dead member");
    let members = json!({"nodes": ["node-1", "node-2", "node-3"]});
    let started = std::time::Instant::now();
    let (status, answer) = net.call(
        "POST",
        "/api/v1/nodes/committees",
        Some(token),
        Some(members),
    );
    let took = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "aux_info_failed", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 runs"),
        "{answer}"
    );
    eprintln!("failed preparation answered in {:.1} s", took.as_secs_f64());
    let committees = net.ok("GET", "/api/v1/nodes/committees", token, None);
    let committee = committees["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| {
            item["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.len() == 3)
        })
        .unwrap_or_else(|| panic!("the failed committee is listed: {committees}"))
        .clone();
    assert_eq!(committee["ready"], false, "{committee}");
    assert_eq!(committee["runs"], 3, "{committee}");
    assert!(committee["preparingSince"].is_null(), "{committee}");
    let last_error = committee["lastError"].as_str().unwrap_or_default();
    assert!(!last_error.is_empty(), "{committee}");
}

fn control_plane_killed_with_pending_and_queued_requests(backend: Backend) {
    eprintln!(
        "== {backend:?}: kill -9 of the control plane with requests pending approval and queued"
    );
    let mut net = Testnet::start(backend, false);
    let root = net.root.token.clone();
    let approver = net.identity(&root, "approver", "approver", None);
    net.ok("POST", "/api/v1/policies", &root, Some(json!({
        "name": "hold", "priority": 10,
        "rules": [{"action": "wallet.sign", "resource": "wallet:held-*", "effect": "require_approval", "approvals": {"count": 1, "roles": ["approver"]}}],
    })));
    let wallet = net.wallet(&root, "held-1", "frost-taproot", None);
    let id = wallet["id"].as_str().unwrap().to_string();
    let public_key = wallet["publicKey"].as_str().unwrap().to_string();
    let mut requests: Vec<(String, String, [u8; 32])> = Vec::new();
    for index in 0..6u8 {
        let message = [0xA0 + index; 32];
        let (status, answer) = net.call(
            "POST",
            &format!("/api/v1/wallets/{id}/sign"),
            Some(&root),
            Some(json!({"digest": hex::encode(message)})),
        );
        assert_eq!(status, 202, "{answer}");
        requests.push((
            answer["requestId"].as_str().unwrap().to_string(),
            answer["approvalId"].as_str().unwrap().to_string(),
            message,
        ));
    }
    // The nodes go down, so approved requests queue up instead of signing.
    for node in ["node-1", "node-2", "node-3"] {
        net.kill9(node);
    }
    for (_, approval, _) in &requests[..3] {
        let approved = net.ok(
            "POST",
            &format!("/api/v1/approvals/{approval}/approve"),
            &approver.token,
            Some(json!({})),
        );
        assert_eq!(approved["status"], "approved");
    }
    let states: Vec<String> = requests[..3]
        .iter()
        .map(|(request, _, _)| {
            net.ok(
                "GET",
                &format!("/api/v1/signing-requests/{request}"),
                &root,
                None,
            )["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        states
            .iter()
            .all(|state| state == "queued" || state == "signing"),
        "{states:?}"
    );
    net.kill9("control-plane");
    net.restart();
    let root = net.root.token.clone();
    // Pending approvals survived, and approving them now signs them.
    let pending = net.ok("GET", "/api/v1/approvals?status=pending", &root, None);
    let pending_ids: Vec<&str> = pending["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    for (_, approval, _) in &requests[3..] {
        assert!(
            pending_ids.contains(&approval.as_str()),
            "{approval} survived the crash"
        );
        let approver_token = net.token(&approver.client_id, &approver.client_secret);
        net.ok(
            "POST",
            &format!("/api/v1/approvals/{approval}/approve"),
            &approver_token,
            Some(json!({})),
        );
    }
    // Every request is signed exactly once.
    for (request, _, message) in &requests {
        let done = net.wait_for(&root, request, &["signed", "failed", "rejected"]);
        assert_eq!(
            done["status"],
            "signed",
            "{done}\n{}",
            net.log("control-plane")
        );
        verify_taproot(&public_key, message, done["signature"].as_str().unwrap());
    }
    let audit = net.ok(
        "GET",
        "/api/v1/audit?action=wallet.sign.execute&limit=1000",
        &root,
        None,
    );
    let mut successes: HashMap<String, usize> = HashMap::new();
    for item in audit["items"].as_array().unwrap() {
        if item["outcome"] == "success" {
            *successes
                .entry(item["requestId"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    for (request, _, _) in &requests {
        assert_eq!(
            successes.get(request),
            Some(&1),
            "{request} was signed exactly once: {successes:?}"
        );
    }
}
