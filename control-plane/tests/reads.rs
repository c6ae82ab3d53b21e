//! Every read is audited (invariant 5): each `GET` route of the generated
//! OpenAPI document (the Vault-compatible key read among them) is called with a
//! real resource, and the org's audit chain must hold a record of that very
//! request (by its `x-request-id`) before the answer arrives. A new `GET`
//! route fails this test until it has a fixture below, and then until it
//! audits its reads. Both databases.

mod common;

use common::{call, org_of, pool, wallet_fixture, Backend, Server, BACKENDS};
use serde_json::{json, Value};

/// Routes that answer without an identity (nothing to attribute a record
/// to) or serve no org data.
const UNAUTHENTICATED: [&str; 5] = [
    "/api/v1/sys/health",
    "/api/v1/sys/seal-status",
    "/api/v1/sys/coordinator-key",
    "/api/v1/openapi.json",
    "/metrics",
];

async fn start(backend: Backend) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("custos.db").display()),
        Backend::Postgres => common::fresh_postgres_database().await,
    };
    Server::start_with(dir, url, "rate_limit_per_sec = 1000\n").await
}

fn created(status: u16, body: &Value) -> &Value {
    assert!(
        status == 201 || status == 202 || status == 200,
        "{status}: {body}"
    );
    body
}

/// The request id of an answer's head.
fn request_id(head: &str) -> String {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_string())
        })
        .expect("every answer carries x-request-id")
}

#[tokio::test]
async fn every_read_is_audited() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let org = org_of(&server, &root).await;
        let (_, admin) = server.identity(&root, "admin-2", "admin", None).await;

        // Fixtures, one per path parameter.
        let wallet = wallet_fixture(&server, &org, "vault-1", "frost-taproot").await;
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/policies",
            &root,
            Some(json!({"name": "approvals", "priority": 10, "rules": [
                {"action": "wallet.sign", "resource": "*", "effect": "require_approval",
                 "approvals": {"count": 1, "roles": ["approver"]}}]})),
        )
        .await;
        let policy = created(status, &body)["id"].as_str().unwrap().to_string();
        let (status, body) = call(
            &server,
            "POST",
            &format!("/api/v1/wallets/{wallet}/sign"),
            &root,
            Some(json!({"digest": hex::encode([1u8; 32])})),
        )
        .await;
        let pending = created(status, &body).clone();
        let (status, body) = call(
            &server,
            "POST",
            &format!("/api/v1/wallets/{wallet}/unfreeze"),
            &admin,
            None,
        )
        .await;
        let operation = created(status, &body)["operationId"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/keys",
            &root,
            Some(json!({"name": "signer", "type": "ED25519", "usage": "SIGN_VERIFY"})),
        )
        .await;
        let key = created(status, &body)["id"].as_str().unwrap().to_string();
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/transit/keys",
            &root,
            Some(json!({"name": "payments"})),
        )
        .await;
        created(status, &body);
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &root,
            Some(json!({"name": "db", "value": "hunter2", "environment": "prod"})),
        )
        .await;
        created(status, &body);
        let backup = format!("bak_{}", hex::encode([7u8; 16]));
        let delivery = format!("whd_{}", hex::encode([8u8; 16]));
        let pool = pool(&server).await;
        sqlx::query(
            "INSERT INTO share_backups (id, org_id, wallet_id, party, node, curve, generation, \
             sealed, wrapped_k1, hsm_id, meta_digest, created_by, created_at, restored_at) \
             VALUES ($1, $2, $3, $4, 'node-1', 'secp256k1', 0, $5, $5, 'aa', 'bb', 'system', 0, NULL)",
        )
        .bind(&backup)
        .bind(&org)
        .bind(&wallet)
        .bind(hex::encode([1u8; 32]))
        .bind(vec![0u8; 4])
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, org_id, url, event, body, status, attempts, \
             next_attempt, last_error, created_at, updated_at) \
             VALUES ($1, $2, 'https://hooks.example/x', 'secret.rotated', '{}', 'delivered', 1, 0, NULL, 0, 0)",
        )
        .bind(&delivery)
        .bind(&org)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let root_identity = {
            let (_, listed) = call(&server, "GET", "/api/v1/identities", &root, None).await;
            listed["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|item| item["name"] == "root")
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let fill = |path: &str| -> String {
            path.replace("/wallets/{id}", &format!("/wallets/{wallet}"))
                .replace("{backup}", &backup)
                .replace("/policies/{id}", &format!("/policies/{policy}"))
                .replace(
                    "/approvals/{id}",
                    &format!("/approvals/{}", pending["approvalId"].as_str().unwrap()),
                )
                .replace(
                    "/signing-requests/{id}",
                    &format!(
                        "/signing-requests/{}",
                        pending["requestId"].as_str().unwrap()
                    ),
                )
                .replace("/operations/{id}", &format!("/operations/{operation}"))
                .replace("/keys/{id}", &format!("/keys/{key}"))
                .replace("/transit/keys/{name}", "/transit/keys/payments")
                .replace("/secrets/{name}", "/secrets/db")
                .replace("/deliveries/{id}", &format!("/deliveries/{delivery}"))
                .replace("/identities/{id}", &format!("/identities/{root_identity}"))
        };
        let document = custos_control_plane::http::openapi::document();
        let mut reads: Vec<String> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(path, item)| {
                item.get("get").is_some() && !UNAUTHENTICATED.contains(&path.as_str())
            })
            .map(|(path, _)| fill(path))
            .collect();
        assert!(
            reads.contains(&"/v1/transit/keys/payments".to_string()),
            "the Vault key read is documented: {reads:?}"
        );
        for path in &mut reads {
            if path.starts_with("/api/v1/secrets/db") {
                path.push_str("?environment=prod");
            }
            assert!(
                !path.contains('{'),
                "no fixture for the parameters of {path}"
            );
        }
        for path in &reads {
            let (status, body, head) = server.request("GET", path, Some(&root), None).await;
            assert_eq!(status, 200, "{backend:?} GET {path}: {body}");
            let id = request_id(&head);
            let (_, audit) = call(&server, "GET", "/api/v1/audit?limit=1000", &root, None).await;
            let mut cursor = audit;
            let mut found = false;
            loop {
                found |= cursor["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|record| record["requestId"] == id.as_str());
                match cursor["nextCursor"].as_str() {
                    Some(next) if !found => {
                        cursor = call(
                            &server,
                            "GET",
                            &format!("/api/v1/audit?limit=1000&cursor={next}"),
                            &root,
                            None,
                        )
                        .await
                        .1;
                    }
                    _ => break,
                }
            }
            assert!(found, "{backend:?}: GET {path} ({id}) left no audit record");
        }
        server.stop().await;
    }
}
