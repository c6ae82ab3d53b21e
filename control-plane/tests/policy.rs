//! Policy that cannot be evaded (issue 14): every data-plane call goes
//! through the org's policy, what a signing request runs is decided again
//! when it runs (policy, freeze, approval, what is signed), separation of
//! duties, and the bad input the review named. Real server on SQLite and
//! PostgreSQL; no signer nodes: every request here is refused or left
//! waiting before a node would be asked, and where a wallet is needed its
//! row is written into the database as a fixture (its key material is
//! never used).

mod common;

use common::{call, code, Backend, Server, BACKENDS};
use serde_json::{json, Value};

/// Two node entries with unreachable addresses: enough for the registry
/// to resolve names (no request here reaches a node).
const NODES: &str = "rate_limit_per_sec = 1000
[[nodes]]
name = \"node-a\"
id = \"1111111111111111111111111111111111111111111111111111111111111111\"
address = \"/ip4/127.0.0.1/tcp/9\"
[[nodes]]
name = \"node-b\"
id = \"2222222222222222222222222222222222222222222222222222222222222222\"
address = \"/ip4/127.0.0.1/tcp/9\"
[[nodes]]
name = \"node-c\"
id = \"3333333333333333333333333333333333333333333333333333333333333333\"
address = \"/ip4/127.0.0.1/tcp/9\"
";

async fn start(backend: Backend) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("custos.db").display()),
        Backend::Postgres => common::fresh_postgres_database().await,
    };
    Server::start_with(dir, url, NODES).await
}

use common::{org_of, pool, wallet_fixture};

async fn execute(server: &Server, sql: &'static str, binds: &[&str]) {
    let pool = pool(server).await;
    let mut query = sqlx::query(sql);
    for bind in binds {
        query = query.bind(bind.to_string());
    }
    query.execute(&pool).await.unwrap();
    pool.close().await;
}

async fn policy(server: &Server, token: &str, name: &str, priority: i64, rules: Value) {
    let (status, body) = call(
        server,
        "POST",
        "/api/v1/policies",
        token,
        Some(json!({"name": name, "priority": priority, "rules": rules})),
    )
    .await;
    assert_eq!(
        status, 201,
        "a platform admin's policy takes effect at once: {body}"
    );
}

async fn sign(server: &Server, token: &str, wallet: &str, body: Value) -> (u16, Value) {
    call(
        server,
        "POST",
        &format!("/api/v1/wallets/{wallet}/sign"),
        token,
        Some(body),
    )
    .await
}

/// Waits until the signing request is no longer pending or queued.
async fn settled(server: &Server, token: &str, request: &str) -> Value {
    for _ in 0..200 {
        let (status, view) = call(
            server,
            "GET",
            &format!("/api/v1/signing-requests/{request}"),
            token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{view}");
        if ["rejected", "failed", "signed"].contains(&view["status"].as_str().unwrap_or("")) {
            return view;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("signing request {request} did not settle");
}

fn digest(byte: u8) -> Value {
    json!({"digest": hex::encode([byte; 32])})
}

const ONE_APPROVER: &str = "wallet-approvals";

/// Signing on wallets `vault-*` waits for one approver.
async fn approvals_policy(server: &Server, root: &str) {
    policy(
        server,
        root,
        ONE_APPROVER,
        10,
        json!([{"action": "wallet.sign", "resource": "wallet:vault-*", "effect": "require_approval",
                "approvals": {"count": 1, "roles": ["approver"]}}]),
    )
    .await;
}

#[tokio::test]
async fn a_deny_added_after_the_approval_stops_the_request() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let wallet = wallet_fixture(&server, &org, "vault-1", "frost-ed25519").await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        let (_, approver) = server.identity(&root, "approver", "approver", None).await;
        approvals_policy(&server, &root).await;
        let (status, pending) = sign(&server, &service, &wallet, digest(1)).await;
        assert_eq!(status, 202, "{backend:?}: {pending}");
        // A deny lands while the request waits for its approver.
        policy(
            &server,
            &root,
            "incident",
            5,
            json!([{"action": "wallet.sign", "resource": "wallet:vault-1", "effect": "deny"}]),
        )
        .await;
        let (status, vote) = common::approve(&server, &approver, &pending).await;
        assert_eq!(
            (status, vote["status"].as_str()),
            (200, Some("approved")),
            "{vote}"
        );
        let request = pending["requestId"].as_str().unwrap();
        let done = settled(&server, &root, request).await;
        assert_eq!(
            (done["status"].as_str(), done["error"]["code"].as_str()),
            (Some("rejected"), Some("policy_denied")),
            "{backend:?}: {done}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_frozen_wallet_signs_nothing_even_what_was_approved_before() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let wallet = wallet_fixture(&server, &org, "vault-2", "frost-taproot").await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        let (_, approver) = server.identity(&root, "approver", "approver", None).await;
        let (_, admin) = server.identity(&root, "admin-2", "admin", None).await;
        approvals_policy(&server, &root).await;
        let (status, pending) = sign(&server, &service, &wallet, digest(2)).await;
        assert_eq!(status, 202, "{pending}");

        // A service may not freeze; an admin freezes at once.
        let freeze = format!("/api/v1/wallets/{wallet}/freeze");
        let (status, body) = call(&server, "POST", &freeze, &service, None).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
        let (status, body) = call(
            &server,
            "POST",
            &freeze,
            &root,
            Some(json!({"reason": "incident 42"})),
        )
        .await;
        assert_eq!(
            (status, body["frozen"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
        assert_eq!(body["freeze"]["reason"], "incident 42");

        // New requests are refused; the approved one is refused when it runs.
        let (status, body) = sign(&server, &service, &wallet, digest(3)).await;
        assert_eq!((status, code(&body)), (409, "wallet_frozen"), "{body}");
        let (status, _) = common::approve(&server, &approver, &pending).await;
        assert_eq!(status, 200);
        let done = settled(&server, &root, pending["requestId"].as_str().unwrap()).await;
        assert_eq!(
            (done["status"].as_str(), done["error"]["code"].as_str()),
            (Some("rejected"), Some("wallet_frozen")),
            "{backend:?}: {done}"
        );

        // Unfreezing waits for an admin's approval; the requester's own
        // approval does not count.
        let unfreeze = format!("/api/v1/wallets/{wallet}/unfreeze");
        let (status, pending) = call(&server, "POST", &unfreeze, &admin, None).await;
        assert_eq!(status, 202, "{pending}");
        let (status, body) = common::approve(&server, &admin, &pending).await;
        assert_eq!((status, code(&body)), (403, "self_approval"));
        let (status, body) = common::approve(&server, &root, &pending).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("approved")),
            "{body}"
        );
        let operation = common::operation(&server, &root, &pending).await;
        assert_eq!(operation["status"], "executed", "{operation}");
        let (status, body) = sign(&server, &service, &wallet, digest(4)).await;
        assert_eq!(status, 202, "signing works again once unfrozen: {body}");
        server.stop().await;
    }
}

#[tokio::test]
async fn what_is_signed_is_checked_against_the_approval_when_it_runs() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let wallet = wallet_fixture(&server, &org, "vault-3", "frost-ed25519").await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        let (_, approver) = server.identity(&root, "approver", "approver", None).await;
        approvals_policy(&server, &root).await;
        // A database writer swaps the payload the nodes would sign...
        let (_, first) = sign(&server, &service, &wallet, digest(5)).await;
        let pool = pool(&server).await;
        sqlx::query("UPDATE signing_requests SET payload = $1 WHERE id = $2")
            .bind(vec![0xeeu8; 32])
            .bind(first["requestId"].as_str().unwrap())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        // ...or the stored body (and the payload to match it).
        let (_, second) = sign(&server, &service, &wallet, digest(6)).await;
        let evil = json!({"type": "digest", "digest": hex::encode([0xee; 32]), "path": []});
        execute(
            &server,
            "UPDATE signing_requests SET body = $1 WHERE id = $2",
            &[&evil.to_string(), second["requestId"].as_str().unwrap()],
        )
        .await;
        for pending in [&first, &second] {
            let (status, _) = common::approve(&server, &approver, pending).await;
            assert_eq!(status, 200);
            let done = settled(&server, &root, pending["requestId"].as_str().unwrap()).await;
            assert_eq!(
                (done["status"].as_str(), done["error"]["code"].as_str()),
                (Some("rejected"), Some("request_tampered")),
                "{backend:?}: {done}"
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn an_approval_past_its_expiry_does_not_run() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let wallet = wallet_fixture(&server, &org, "vault-4", "frost-ed25519").await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        let (approver_id, _) = server.identity(&root, "approver", "approver", None).await;
        approvals_policy(&server, &root).await;
        let (_, pending) = sign(&server, &service, &wallet, digest(7)).await;
        let approval = pending["approvalId"].as_str().unwrap();
        // A vote recorded, then the approval's expiry passes before the
        // request is released (a worker that was down, a stalled replica).
        execute(
            &server,
            "INSERT INTO approval_votes (approval_id, identity_id, decision, mfa, created_at) \
             VALUES ($1, $2, 'approve', 0, 0)",
            &[approval, &approver_id],
        )
        .await;
        execute(
            &server,
            "UPDATE approvals SET status = 'approved', expires_at = 1 WHERE id = $1",
            &[approval],
        )
        .await;
        execute(
            &server,
            "UPDATE signing_requests SET status = 'queued' WHERE id = $1",
            &[pending["requestId"].as_str().unwrap()],
        )
        .await;
        let done = settled(&server, &root, pending["requestId"].as_str().unwrap()).await;
        assert_eq!(done["status"], "rejected", "{done}");
        assert_eq!(done["error"]["code"], "approval_invalid", "{done}");
        assert!(
            done["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expired"),
            "{done}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn identities_made_during_a_request_count_once_per_creator() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let wallet = wallet_fixture(&server, &org, "vault-5", "frost-ed25519").await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        let (_, earlier) = server.identity(&root, "approver-0", "approver", None).await;
        policy(
            &server,
            &root,
            "two-approvers",
            10,
            json!([{"action": "wallet.sign", "resource": "*", "effect": "require_approval",
                    "approvals": {"count": 2, "roles": ["approver"]}}]),
        )
        .await;
        let (_, pending) = sign(&server, &service, &wallet, digest(8)).await;
        // Two approvers made by one creator after the request count once.
        let (_, late_1) = server.identity(&root, "approver-1", "approver", None).await;
        let (_, late_2) = server.identity(&root, "approver-2", "approver", None).await;
        let (status, vote) = common::approve(&server, &late_1, &pending).await;
        assert_eq!(
            (status, vote["status"].as_str()),
            (200, Some("pending")),
            "{vote}"
        );
        let (status, vote) = common::approve(&server, &late_2, &pending).await;
        assert_eq!(
            (status, vote["status"].as_str()),
            (200, Some("pending")),
            "{backend:?}: a second identity of the same creator adds nothing: {vote}"
        );
        // An approver that existed before the request is independent.
        let (status, vote) = common::approve(&server, &earlier, &pending).await;
        assert_eq!(
            (status, vote["status"].as_str()),
            (200, Some("approved")),
            "{vote}"
        );

        // The requester cannot approve through identities it makes after
        // its request.
        let (_, own) = sign(&server, &root, &wallet, digest(9)).await;
        let (_, puppet) = server.identity(&root, "approver-3", "approver", None).await;
        let (status, body) = common::approve(&server, &puppet, &own).await;
        assert_eq!(
            (status, code(&body)),
            (403, "approver_not_independent"),
            "{body}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn threshold_one_is_refused_for_every_protocol_and_for_resharing() {
    let server = start(Backend::Sqlite).await;
    let root = server.root_token().await;
    for protocol in ["frost-ed25519", "frost-taproot", "cggmp21"] {
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/wallets",
            &root,
            Some(json!({"name": "w", "protocol": protocol, "threshold": 1, "nodes": ["node-a", "node-b"]})),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (422, "invalid_threshold"),
            "{protocol}: {body}"
        );
    }
    let org = org_of(&server, &root).await;
    let wallet = wallet_fixture(&server, &org, "cold", "frost-ed25519").await;
    let (status, body) = call(
        &server,
        "POST",
        &format!("/api/v1/wallets/{wallet}/reshare"),
        &root,
        Some(json!({"threshold": 1, "nodes": ["node-a", "node-b", "node-c"]})),
    )
    .await;
    assert_eq!((status, code(&body)), (422, "invalid_threshold"), "{body}");
    let (status, approvals) = call(&server, "GET", "/api/v1/approvals", &root, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        approvals["items"].as_array().unwrap().len(),
        0,
        "refused before it went to approval: {approvals}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_concurrent_duplicate_idempotency_key_answers_one_request() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let wallet = wallet_fixture(&server, &org, "vault-6", "frost-ed25519").await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        approvals_policy(&server, &root).await;
        let body = json!({"digest": hex::encode([9u8; 32]), "idempotencyKey": "order-7"});
        let answers = futures::future::join_all(
            (0..8).map(|_| sign(&server, &service, &wallet, body.clone())),
        )
        .await;
        let mut ids: Vec<&str> = Vec::new();
        for (status, answer) in &answers {
            assert_eq!(*status, 202, "{backend:?}: never a 5xx: {answer}");
            ids.push(answer["requestId"].as_str().unwrap());
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{backend:?}: one request: {answers:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_policy_change_by_an_org_admin_waits_for_another_admin() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (status, created) = call(
            &server,
            "POST",
            "/api/v1/orgs",
            &root,
            Some(json!({"name": "acme"})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let acme = created["id"].as_str().unwrap();
        // The platform admin seeds the org without approvals.
        let (_, admin_1) = server.identity(&root, "admin-1", "admin", Some(acme)).await;
        let (_, admin_2) = server.identity(&root, "admin-2", "admin", Some(acme)).await;
        let rules = json!([{"action": "wallet.sign", "resource": "*", "effect": "deny"}]);
        let (status, pending) = call(
            &server,
            "POST",
            "/api/v1/policies",
            &admin_1,
            Some(json!({"name": "lockdown", "rules": rules})),
        )
        .await;
        assert_eq!(
            (status, pending["status"].as_str()),
            (202, Some("pending_approval")),
            "{backend:?}: {pending}"
        );
        let (status, listed) = call(&server, "GET", "/api/v1/policies", &admin_1, None).await;
        assert_eq!(status, 200);
        assert!(
            !listed.to_string().contains("lockdown"),
            "nothing changes before the approval: {listed}"
        );
        let (status, vote) = common::approve(&server, &admin_2, &pending).await;
        assert_eq!(
            (status, vote["status"].as_str()),
            (200, Some("approved")),
            "{vote}"
        );
        let (_, listed) = call(&server, "GET", "/api/v1/policies", &admin_1, None).await;
        assert!(listed.to_string().contains("lockdown"), "{listed}");
        server.stop().await;
    }
}

#[tokio::test]
async fn every_data_plane_call_goes_through_policy() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let wallet = wallet_fixture(&server, &org, "hot", "frost-ed25519").await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        let (status, _) = call(
            &server,
            "POST",
            "/api/v1/transit/keys",
            &root,
            Some(json!({"name": "blocked-k"})),
        )
        .await;
        assert_eq!(status, 201);
        let (status, key) = call(
            &server,
            "POST",
            "/api/v1/keys",
            &root,
            Some(json!({"name": "blocked-r", "type": "AES_256", "usage": "ENCRYPT_DECRYPT"})),
        )
        .await;
        assert_eq!(status, 201, "{key}");
        let key_id = key["id"].as_str().unwrap().to_string();
        let (status, _) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &root,
            Some(json!({"name": "db", "value": "hunter2", "environment": "blocked"})),
        )
        .await;
        assert_eq!(status, 201);
        // Before the deny, the calls work.
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/transit/encrypt",
            &service,
            Some(json!({"keyName": "blocked-k", "plaintext": "x"})),
        )
        .await;
        assert_eq!(status, 200, "{body}");

        policy(
            &server,
            &root,
            "data-plane-deny",
            5,
            json!([
                {"action": "transit.*", "resource": "transit-key:blocked-*", "effect": "deny"},
                {"action": "key.*", "resource": "key:blocked-*", "effect": "deny"},
                {"action": "secret.read", "resource": "secret:blocked/*", "effect": "deny"},
                {"action": "wallet.read", "resource": "wallet:hot/backups*", "effect": "deny"},
            ]),
        )
        .await;
        let denied: Vec<(&str, String, Option<Value>, Option<&str>)> = vec![
            (
                "POST",
                "/api/v1/transit/encrypt".into(),
                Some(json!({"keyName": "blocked-k", "plaintext": "x"})),
                None,
            ),
            (
                "POST",
                "/api/v1/transit/decrypt".into(),
                Some(json!({"keyName": "blocked-k", "ciphertext": "vault:v1:AAAA"})),
                None,
            ),
            (
                "POST",
                "/v1/transit/encrypt/blocked-k".into(),
                Some(json!({"plaintext": "eA=="})),
                Some("vault"),
            ),
            (
                "GET",
                "/v1/transit/keys/blocked-k".into(),
                None,
                Some("vault"),
            ),
            (
                "POST",
                format!("/api/v1/keys/{key_id}/encrypt"),
                Some(json!({"plaintext": "eA=="})),
                None,
            ),
            (
                "GET",
                "/api/v1/secrets/db?environment=blocked".into(),
                None,
                None,
            ),
            (
                "GET",
                format!("/api/v1/wallets/{wallet}/backups"),
                None,
                None,
            ),
        ];
        for (method, path, body, dialect) in &denied {
            let (status, answer) = match dialect {
                Some(_) => vault_call(&server, method, path, &service, body.clone()).await,
                None => call(&server, method, path, &service, body.clone()).await,
            };
            assert_eq!(
                (status, code(&answer)),
                (403, "policy_denied"),
                "{backend:?} {method} {path}: {answer}"
            );
        }
        // Every refusal is in the audit chain.
        let (_, audit) = call(&server, "GET", "/api/v1/audit?limit=1000", &root, None).await;
        let refused = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|record| record["outcome"] == "denied")
            .count();
        assert!(
            refused >= denied.len(),
            "{backend:?}: {refused} refusals audited"
        );

        // allowedIPs and timeWindow: the first matching rule decides, so an
        // allow that does not hold falls through to an approval, which the
        // data plane has no flow for.
        policy(
            &server,
            &root,
            "data-plane-conditions",
            6,
            json!([
                {"action": "transit.encrypt", "resource": "transit-key:office-*", "conditions": {"allowedIPs": ["10.0.0.0/8"]}, "effect": "allow"},
                {"action": "transit.encrypt", "resource": "transit-key:office-*", "effect": "require_approval", "approvals": {"count": 1, "roles": ["admin"]}},
            ]),
        )
        .await;
        let (status, _) = call(
            &server,
            "POST",
            "/api/v1/transit/keys",
            &root,
            Some(json!({"name": "office-k"})),
        )
        .await;
        assert_eq!(status, 201);
        let (status, answer) = call(
            &server,
            "POST",
            "/api/v1/transit/encrypt",
            &service,
            Some(json!({"keyName": "office-k", "plaintext": "x"})),
        )
        .await;
        assert_eq!(
            (status, code(&answer)),
            (403, "approval_required"),
            "{backend:?}: a client outside 10.0.0.0/8: {answer}"
        );
        server.stop().await;
    }
}

/// A call to the Vault-compatible routes with the token in `X-Vault-Token`.
async fn vault_call(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|body| body.to_string());
    let (status, answer, _) = server
        .request_with(
            method,
            path,
            &[
                ("X-Vault-Token", token),
                ("Content-Type", "application/json"),
            ],
            body.as_deref(),
        )
        .await;
    (status, answer)
}

/// Runs the real `custos` binary with `args` against `server`, with `token`
/// in `CUSTOS_TOKEN`: (success, printed JSON).
async fn cli(server: &Server, token: &str, args: &[&str]) -> (bool, Value) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(args)
        .env("CUSTOS_ADDR", format!("http://{}", server.address))
        .env("CUSTOS_TOKEN", token)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn people_freeze_wallets_and_vote_with_the_cli() {
    let server = start(Backend::Sqlite).await;
    let root = server.root_token().await;
    let org = org_of(&server, &root).await;
    let wallet = wallet_fixture(&server, &org, "vault-cli", "cggmp21").await;
    let (_, admin) = server.identity(&root, "admin-2", "admin", None).await;
    let (service_id, service) = server.identity(&root, "svc", "service", None).await;

    let (ok, answer) = cli(
        &server,
        &root,
        &["wallet", "freeze", &wallet, "--reason", "drill"],
    )
    .await;
    assert!(ok, "{answer}");
    assert_eq!(answer["freeze"]["reason"], "drill");
    let (status, body) = sign(&server, &service, &wallet, digest(1)).await;
    assert_eq!((status, code(&body)), (409, "wallet_frozen"));
    // A refusal exits non-zero with the API's code.
    let (ok, answer) = cli(&server, &service, &["wallet", "freeze", &wallet]).await;
    assert!(!ok);
    assert_eq!(code(&answer), "forbidden");

    let (ok, pending) = cli(&server, &admin, &["wallet", "unfreeze", &wallet]).await;
    assert!(ok, "{pending}");
    let (ok, listed) = cli(&server, &root, &["approval", "list", "--status", "pending"]).await;
    assert!(ok, "{listed}");
    let approval = pending["approvalId"].as_str().unwrap();
    assert!(listed.to_string().contains(approval), "{listed}");
    let (ok, voted) = cli(
        &server,
        &root,
        &["approval", "approve", approval, "--comment", "drill over"],
    )
    .await;
    assert!(ok, "{voted}");
    assert_eq!(voted["status"], "approved");
    let (status, body) = sign(&server, &service, &wallet, digest(2)).await;
    assert_ne!(status, 409, "unfrozen: {body}");

    // Cutting an identity off from a shell.
    let (ok, listed) = cli(&server, &root, &["identity", "show", &service_id]).await;
    assert!(ok, "{listed}");
    assert_eq!(listed["status"], "active");
    let (ok, tokens) = cli(&server, &root, &["identity", "tokens", &service_id]).await;
    assert!(
        ok && !tokens["items"].as_array().unwrap().is_empty(),
        "{tokens}"
    );
    let (ok, disabled) = cli(&server, &root, &["identity", "disable", &service_id]).await;
    assert!(ok, "{disabled}");
    assert_eq!(disabled["status"], "disabled");
    let (ok, tokens) = cli(&server, &root, &["identity", "tokens", &service_id]).await;
    assert!(
        ok && tokens["items"].as_array().unwrap().is_empty(),
        "{tokens}"
    );
    let (status, _) = call(&server, "GET", "/api/v1/wallets", &service, None).await;
    assert!(status == 401 || status == 403);
    server.stop().await;
}

#[tokio::test]
async fn a_vote_written_into_the_database_does_not_count() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let wallet = wallet_fixture(&server, &org, "vault-7", "frost-ed25519").await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        let (approver_id, approver) = server.identity(&root, "approver", "approver", None).await;
        approvals_policy(&server, &root).await;
        // A real, sealed vote on one request...
        let (_, real) = sign(&server, &service, &wallet, digest(10)).await;
        let (_, other) = sign(&server, &service, &wallet, digest(11)).await;
        let (_, third) = sign(&server, &service, &wallet, digest(12)).await;
        let (status, _) = common::approve(&server, &approver, &real).await;
        assert_eq!(status, 200);
        let pool = pool(&server).await;
        // ...copied onto another approval, and a vote made up from nothing:
        // both released behind the API's back.
        sqlx::query(
            "INSERT INTO approval_votes (approval_id, identity_id, decision, mfa, created_at, seal) \
             SELECT $1, identity_id, decision, mfa, created_at, seal FROM approval_votes \
             WHERE approval_id = $2",
        )
        .bind(other["approvalId"].as_str().unwrap())
        .bind(real["approvalId"].as_str().unwrap())
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO approval_votes (approval_id, identity_id, decision, mfa, created_at) \
             VALUES ($1, $2, 'approve', 0, 0)",
        )
        .bind(third["approvalId"].as_str().unwrap())
        .bind(&approver_id)
        .execute(&pool)
        .await
        .unwrap();
        for pending in [&other, &third] {
            sqlx::query("UPDATE approvals SET status = 'approved' WHERE id = $1")
                .bind(pending["approvalId"].as_str().unwrap())
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("UPDATE signing_requests SET status = 'queued' WHERE id = $1")
                .bind(pending["requestId"].as_str().unwrap())
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        for pending in [&other, &third] {
            let done = settled(&server, &root, pending["requestId"].as_str().unwrap()).await;
            assert_eq!(
                (done["status"].as_str(), done["error"]["code"].as_str()),
                (Some("rejected"), Some("approval_invalid")),
                "{backend:?}: {done}"
            );
        }
        server.stop().await;
    }
}

/// An EIP-1559 transaction to `to` with `value` wei and `data` (hex).
fn evm(to: &str, value: &str, data: &str) -> Value {
    json!({"transaction": {
        "chainId": "1", "nonce": "0", "to": to, "value": value, "data": data,
        "gasLimit": "100000", "maxFeePerGas": "30000000000", "maxPriorityFeePerGas": "1000000000",
    }})
}

/// ERC-20 `transfer(to, amount)` calldata.
fn erc20_transfer(to: &str, amount: u128) -> String {
    format!(
        "0xa9059cbb{:0>64}{:064x}",
        to.trim_start_matches("0x").to_lowercase(),
        amount
    )
}

#[tokio::test]
async fn policy_sees_the_token_transfer_inside_the_calldata() {
    let server = start(Backend::Sqlite).await;
    let root = server.root_token().await;
    let org = org_of(&server, &root).await;
    let wallet = wallet_fixture(&server, &org, "treasury", "cggmp21").await;
    let (_, service) = server.identity(&root, "svc", "service", None).await;
    let usdc = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";
    let friend = "0x1111111111111111111111111111111111111111";
    let stranger = "0x2222222222222222222222222222222222222222";
    // Transfers to `friend` of up to 1,000 USDC (or 1 ether) need nobody;
    // anything else waits for an approver.
    policy(
        &server,
        &root,
        "treasury",
        10,
        json!([
            {"action": "wallet.sign", "resource": "wallet:treasury", "effect": "allow",
             "conditions": {"destinations": [friend], "assets": ["native", usdc], "maxAmount": "1000000000"}},
            {"action": "wallet.sign", "resource": "wallet:treasury", "effect": "require_approval",
             "approvals": {"count": 1, "roles": ["approver"]}},
        ]),
    )
    .await;
    let cases = [
        (
            "USDC to the friend",
            evm(usdc, "0", &erc20_transfer(friend, 5_000_000)),
            false,
        ),
        (
            "USDC over the limit",
            evm(usdc, "0", &erc20_transfer(friend, 1_000_000_001)),
            true,
        ),
        // The `to` of the transaction is the token contract; the real
        // recipient is in the calldata.
        (
            "USDC to a stranger",
            evm(usdc, "0", &erc20_transfer(stranger, 1)),
            true,
        ),
        (
            "a token not in the rule",
            evm(stranger, "0", &erc20_transfer(friend, 1)),
            true,
        ),
        (
            "calldata not understood",
            evm(friend, "0", "0xdeadbeef"),
            true,
        ),
        ("ether to the friend", evm(friend, "1000", "0x"), false),
        (
            "a bare digest",
            json!({"digest": hex::encode([1u8; 32])}),
            true,
        ),
    ];
    for (what, body, needs_approval) in cases {
        let (status, answer) = sign(&server, &service, &wallet, body).await;
        assert_eq!(
            answer["status"] == "pending_approval",
            needs_approval,
            "{what}: {status} {answer}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_identity_changed_in_the_database_is_refused() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (status, _) = call(&server, "GET", "/api/v1/wallets", &root, None).await;
        assert_eq!(
            status, 200,
            "identities made before the seal existed are sealed once"
        );
        let (service_id, service) = server.identity(&root, "svc", "service", None).await;
        let (auditor_id, auditor) = server.identity(&root, "auditor", "auditor", None).await;
        let (status, _) = call(&server, "GET", "/api/v1/audit", &auditor, None).await;
        assert_eq!(status, 200);
        let pool = pool(&server).await;
        // A service made an admin and a platform admin; a seal removed.
        sqlx::query("UPDATE identities SET role = 'admin', platform_admin = 1 WHERE id = $1")
            .bind(&service_id)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE identities SET authority = NULL WHERE id = $1")
            .bind(&auditor_id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        // Past the token cache (at most a second).
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        for (who, token) in [("service", &service), ("auditor", &auditor)] {
            let (status, body) = call(&server, "GET", "/api/v1/audit", token, None).await;
            assert_eq!(
                (status, code(&body)),
                (403, "identity_invalid"),
                "{backend:?} {who}: {body}"
            );
        }
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/orgs",
            &service,
            Some(json!({"name": "mine"})),
        )
        .await;
        assert_eq!(
            status, 403,
            "no platform admin out of a database write: {body}"
        );
        let (status, _) = call(&server, "GET", "/api/v1/identities", &root, None).await;
        assert_eq!(status, 200, "the rest still works");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_policy_changed_in_the_database_denies_everything_until_resealed() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (status, created) = call(
            &server,
            "POST",
            "/api/v1/orgs",
            &root,
            Some(json!({"name": "acme"})),
        )
        .await;
        assert_eq!(status, 201);
        let acme = created["id"].as_str().unwrap().to_string();
        let (_, admin) = server
            .identity(&root, "admin-1", "admin", Some(&acme))
            .await;
        let (status, _) = call(
            &server,
            "POST",
            "/api/v1/transit/keys",
            &admin,
            Some(json!({"name": "k"})),
        )
        .await;
        assert_eq!(status, 201, "{backend:?}: sealed policies decide as usual");
        // A database writer adds an allow-everything policy ahead of the
        // rest... or deletes the default one: the org fails closed.
        let db = pool(&server).await;
        sqlx::query(
            "INSERT INTO policies (id, org_id, name, priority, rules, created_at) \
             VALUES ('pol_evil', $1, 'evil', 0, $2, 0)",
        )
        .bind(&acme)
        .bind(r#"[{"action":"*","resource":"*","effect":"allow"}]"#)
        .execute(&db)
        .await
        .unwrap();
        db.close().await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/transit/encrypt",
            &admin,
            Some(json!({"keyName": "k", "plaintext": "x"})),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (403, "policy_denied"),
            "{backend:?}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("policies-do-not-match-their-seal"),
            "{body}"
        );
        // Other orgs are not affected.
        let (status, _) = call(&server, "GET", "/api/v1/wallets", &root, None).await;
        assert_eq!(status, 200);
        // Only a platform admin reseals, after a review.
        let reseal = format!("/api/v1/orgs/{acme}/policies/reseal");
        let (status, _) = call(&server, "POST", &reseal, &admin, None).await;
        assert_eq!(status, 403);
        let db = pool(&server).await;
        sqlx::query("DELETE FROM policies WHERE id = 'pol_evil'")
            .execute(&db)
            .await
            .unwrap();
        db.close().await;
        let (status, body) = call(&server, "POST", &reseal, &root, None).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/transit/encrypt",
            &admin,
            Some(json!({"keyName": "k", "plaintext": "x"})),
        )
        .await;
        assert_eq!(status, 200, "{backend:?}: {body}");
        server.stop().await;
    }
}

/// A JSON call with the caller's TOTP code in `X-Custos-TOTP`.
async fn call_with_totp(
    server: &Server,
    path: &str,
    token: &str,
    totp: &str,
    body: Value,
) -> (u16, Value) {
    let authorization = format!("Bearer {token}");
    let (status, answer, _) = server
        .request_with(
            "POST",
            path,
            &[
                ("Authorization", authorization.as_str()),
                ("X-Custos-TOTP", totp),
                ("Content-Type", "application/json"),
            ],
            Some(&body.to_string()),
        )
        .await;
    (status, answer)
}

#[tokio::test]
async fn require_mfa_and_time_windows_apply_to_the_data_plane() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (service_id, service) = server.identity(&root, "svc", "service", None).await;
        // The service enrols TOTP for itself, confirmed by a first code.
        let (status, enrolled) = call(
            &server,
            "POST",
            &format!("/api/v1/identities/{service_id}/mfa"),
            &service,
            None,
        )
        .await;
        assert_eq!(status, 200, "{enrolled}");
        let uri = enrolled["otpauthUri"].as_str().unwrap().to_string();
        let (status, body) = call(
            &server,
            "POST",
            &format!("/api/v1/identities/{service_id}/mfa/confirm"),
            &service,
            Some(json!({"code": common::totp_code(&uri, 0)})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let now_minutes = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60)
            % (24 * 60);
        let at = |minutes: u64| {
            let minutes = (now_minutes + minutes) % (24 * 60);
            format!("{:02}:{:02}", minutes / 60, minutes % 60)
        };
        policy(
            &server,
            &root,
            "data-plane-mfa-and-hours",
            5,
            json!([
                {"action": "transit.encrypt", "resource": "transit-key:mfa-*", "conditions": {"requireMFA": true}, "effect": "allow"},
                {"action": "transit.encrypt", "resource": "transit-key:office-*", "conditions": {"timeWindow": {"start": at(120), "end": at(180)}}, "effect": "allow"},
                {"action": "transit.encrypt", "resource": "transit-key:office-*", "effect": "require_approval", "approvals": {"count": 1, "roles": ["admin"]}},
            ]),
        )
        .await;
        for key in ["mfa-k", "office-k"] {
            let (status, _) = call(
                &server,
                "POST",
                "/api/v1/transit/keys",
                &root,
                Some(json!({"name": key})),
            )
            .await;
            assert_eq!(status, 201);
        }
        let encrypt = |key: &str| json!({"keyName": key, "plaintext": "x"});
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/transit/encrypt",
            &service,
            Some(encrypt("mfa-k")),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (403, "mfa_required"),
            "{backend:?}: {body}"
        );
        // The confirmation used the current step: the next one is valid.
        let next = common::totp_code(&uri, 30);
        let (status, body) = call_with_totp(
            &server,
            "/api/v1/transit/encrypt",
            &service,
            &next,
            encrypt("mfa-k"),
        )
        .await;
        assert_eq!(status, 200, "{backend:?}: {body}");
        let (status, body) = call_with_totp(
            &server,
            "/api/v1/transit/encrypt",
            &service,
            &next,
            encrypt("mfa-k"),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (403, "invalid_totp"),
            "{backend:?}: a code is used once: {body}"
        );
        // Outside the window, the allow does not hold and the call falls
        // through to an approval the data plane has no flow for.
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/transit/encrypt",
            &service,
            Some(encrypt("office-k")),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (403, "approval_required"),
            "{backend:?}: {body}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn an_approved_operation_is_decided_again_when_it_runs() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (_, first) = server.identity(&root, "approver-1", "approver", None).await;
        let (_, second) = server.identity(&root, "approver-2", "approver", None).await;
        let (status, _) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &root,
            Some(json!({"name": "db", "value": "hunter2", "environment": "prod"})),
        )
        .await;
        assert_eq!(status, 201);
        // Deleting waits for two approvals (the default policy).
        let (status, pending) = call(
            &server,
            "DELETE",
            "/api/v1/secrets/db?environment=prod",
            &root,
            None,
        )
        .await;
        assert_eq!(status, 202, "{pending}");
        let (status, _) = common::approve(&server, &first, &pending).await;
        assert_eq!(status, 200);
        // A deny lands before the last vote.
        policy(
            &server,
            &root,
            "freeze-secrets",
            5,
            json!([{"action": "secret.delete", "resource": "secret:prod/*", "effect": "deny"}]),
        )
        .await;
        let (status, vote) = common::approve(&server, &second, &pending).await;
        assert_eq!(
            (status, vote["status"].as_str()),
            (200, Some("approved")),
            "{vote}"
        );
        let operation = common::operation(&server, &root, &pending).await;
        assert_eq!(operation["status"], "rejected", "{backend:?}: {operation}");
        assert_eq!(operation["error"]["code"], "policy_denied", "{operation}");
        let (status, _) = call(
            &server,
            "GET",
            "/api/v1/secrets/db?environment=prod",
            &root,
            None,
        )
        .await;
        assert_eq!(status, 200, "the secret is still there");
        server.stop().await;
    }
}

/// The seed SDKs' rule shape works unchanged: an action without a kind
/// takes its resource's kind, `maxAmount` may be a JSON number (a safe
/// integer), and a rule without an effect allows. The policy is stored and
/// shown normalised, and its conditions apply.
#[tokio::test(flavor = "multi_thread")]
async fn the_seed_sdks_rule_shape_is_stored_normalised_and_applies() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (status, key) = call(
            &server,
            "POST",
            "/api/v1/keys",
            &root,
            Some(json!({"name": "treasury-1", "type": "ECDSA_SECP256K1", "usage": "SIGN_VERIFY"})),
        )
        .await;
        assert_eq!(status, 201, "{key}");
        let key_id = key["id"].as_str().unwrap().to_string();
        let sign = |token: String| {
            let server = &server;
            let path = format!("/api/v1/keys/{key_id}/sign");
            async move {
                call(
                    server,
                    "POST",
                    &path,
                    &token,
                    Some(json!({"message": "hello"})),
                )
                .await
            }
        };
        let (status, body) = sign(root.clone()).await;
        assert_eq!(status, 200, "before the policy: {body}");

        // Out of range or not whole: refused with the field named.
        for amount in [json!(9_007_199_254_740_992_u64), json!(1.5), json!(-1)] {
            let (status, body) = call(
                &server,
                "POST",
                "/api/v1/policies",
                &root,
                Some(json!({"name": "bad-amount", "rules": [
                    {"action": "sign", "resource": "key:treasury-*", "conditions": {"maxAmount": amount}}
                ]})),
            )
            .await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (422, Some("invalid_body")),
                "{amount}: {body}"
            );
        }

        let (status, created) = call(
            &server,
            "POST",
            "/api/v1/policies",
            &root,
            Some(json!({"name": "treasury", "priority": 10, "rules": [
                {
                    "action": "sign",
                    "resource": "key:treasury-*",
                    "conditions": {"requireMFA": true, "allowedIPs": ["127.0.0.0/8", "10.0.0.0/8"]}
                },
                {"action": "sign", "resource": "wallet:hot-*", "conditions": {"maxAmount": 1_000_000}}
            ]})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap();
        let (status, shown) = call(
            &server,
            "GET",
            &format!("/api/v1/policies/{id}"),
            &root,
            None,
        )
        .await;
        assert_eq!(status, 200, "{shown}");
        let rule = &shown["rules"][0];
        assert_eq!(rule["action"], "key.sign", "{shown}");
        assert_eq!(rule["effect"], "allow", "{shown}");
        let amounts = &shown["rules"][1];
        assert_eq!(amounts["action"], "wallet.sign", "{shown}");
        // Kept as a decimal string: what a policy shows is exact.
        assert_eq!(amounts["conditions"]["maxAmount"], "1000000", "{shown}");

        // The rule matches (the caller is on 127.0.0.1) and asks for MFA.
        let (status, body) = sign(root.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("mfa_required")),
            "{body}"
        );

        // A resource of no single kind gives `*.<action>`.
        let (status, created) = call(
            &server,
            "POST",
            "/api/v1/policies",
            &root,
            Some(json!({"name": "any-kind", "priority": 20, "rules": [
                {"action": "export", "resource": "*", "effect": "deny"}
            ]})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["rules"][0]["action"], "*.export", "{created}");
        server.stop().await;
    }
}

/// A transaction in the seed SDKs' shape (`{to, value, data}`) is refused
/// before anything is stored, with every field Custos needs named at once:
/// it reads no chain, so it fills in no nonce, gas limit or fee.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_without_nonce_gas_and_fees_names_every_missing_field() {
    let server = start(Backend::Sqlite).await;
    let root = server.root_token().await;
    let org = org_of(&server, &root).await;
    let wallet = wallet_fixture(&server, &org, "evm", "cggmp21").await;
    let (status, body) = sign(
        &server,
        &root,
        &wallet,
        json!({"transaction": {"to": "0x000000000000000000000000000000000000dEaD", "value": "1", "data": "0x"}}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_body")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    for field in [
        "chainId",
        "nonce",
        "gasLimit",
        "maxFeePerGas",
        "maxPriorityFeePerGas",
    ] {
        assert!(message.contains(field), "{field} is named: {message}");
    }
    assert!(!message.contains("to,"), "{message}");
    let (_, requests) = call(
        &server,
        "GET",
        "/api/v1/audit?actions=wallet.sign",
        &root,
        None,
    )
    .await;
    assert_eq!(
        requests["items"].as_array().unwrap().len(),
        0,
        "nothing was stored: {requests}"
    );
    server.stop().await;
}
