//! The control plane's HTTP API without signer nodes: identities, tokens and
//! lockout, bad input, policies, org isolation, the audit chain. Every test
//! runs on SQLite and on PostgreSQL (a real server; `scripts/test` starts
//! one when none runs).

mod common;

use common::*;
use serde_json::{json, Value};

async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Server) -> Fut,
    Fut: std::future::Future<Output = Server>,
{
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = Server::start(backend).await;
        let server = test(server).await;
        server.stop().await;
    }
}

async fn direct_db(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_secrets_lock_the_identity_out_after_five_failures() {
    each_backend(|server| async move {
        let root = server.root_token().await;
        let (_, _) = server.identity(&root, "svc", "service", None).await;
        let (status, created, _) = server
            .request(
                "POST",
                "/api/v1/identities",
                Some(&root),
                Some(r#"{"name":"victim","role":"service"}"#),
            )
            .await;
        assert_eq!(status, 201);
        let client_id = created["clientId"].as_str().unwrap().to_string();
        let secret = created["clientSecret"].as_str().unwrap().to_string();
        let wrong = json!({"clientId": client_id, "clientSecret": "cs_wrong"}).to_string();
        for _ in 0..5 {
            let (status, body, _) = server
                .request("POST", "/api/v1/auth/token", None, Some(&wrong))
                .await;
            assert_eq!(status, 401);
            assert_eq!(body["error"]["code"], "invalid_credentials");
        }
        let right = json!({"clientId": client_id, "clientSecret": secret}).to_string();
        let (status, body, _) = server
            .request("POST", "/api/v1/auth/token", None, Some(&right))
            .await;
        assert_eq!(status, 429, "locked out even with the right secret: {body}");
        assert_eq!(body["error"]["code"], "locked_out");
        // An unknown client id answers like a wrong secret.
        let unknown = json!({"clientId": "cid_nobody", "clientSecret": "x"}).to_string();
        let (status, body, _) = server
            .request("POST", "/api/v1/auth/token", None, Some(&unknown))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("invalid_credentials"))
        );
        // The failures are in the audit, without the secret.
        let (_, audit, _) = server
            .request("GET", "/api/v1/audit?action=auth.token", Some(&root), None)
            .await;
        let text = audit.to_string();
        assert!(
            audit["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|item| item["outcome"] == "denied")
                .count()
                >= 5
        );
        assert!(!text.contains("cs_wrong") && !text.contains(&secret));
        server
    })
    .await;
}

/// One request, one documented error code.
#[allow(clippy::too_many_arguments)]
async fn check(
    server: &Server,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: &str,
    status: u16,
    code: &str,
) {
    let (got, answer, head) = server.raw(method, path, token, body, content_type).await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (status, Some(code)),
        "{method} {path} {body:?} -> {answer}"
    );
    let request_id = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("x-request-id: ")
                .map(str::to_string)
        })
        .expect("x-request-id header");
    assert_eq!(
        answer["error"]["requestId"]
            .as_str()
            .map(str::to_ascii_lowercase),
        Some(request_id)
    );
}

/// (token, method, path, body, content type, status, code).
type Case<'a> = (
    Option<&'a str>,
    &'a str,
    &'a str,
    Option<String>,
    &'a str,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_answers_its_documented_code() {
    each_backend(|server| async move {
        let root = server.root_token().await;
        let json_type = "application/json";
        let cases: Vec<Case> = vec![
            (Some(&root), "POST", "/api/v1/policies", Some("{not json".into()), json_type, 400, "malformed_json"),
            (Some(&root), "POST", "/api/v1/policies", Some(r#"{"name": 5, "rules": []}"#.into()), json_type, 422, "invalid_body"),
            (Some(&root), "POST", "/api/v1/identities", Some(r#"{"name":"a","role":"admin","colour":"red"}"#.into()), json_type, 422, "invalid_body"),
            (Some(&root), "POST", "/api/v1/identities", Some(r#"{"name":"a","role":"king"}"#.into()), json_type, 422, "invalid_role"),
            (Some(&root), "POST", "/api/v1/identities", Some(r#"{"name":"a b","role":"admin"}"#.into()), json_type, 422, "invalid_name"),
            (Some(&root), "POST", "/api/v1/identities", Some(r#"{"name":"a","role":"admin"}"#.into()), "text/plain", 415, "unsupported_media_type"),
            (Some(&root), "POST", "/api/v1/policies", Some(format!(r#"{{"name":"big","rules":[],"pad":"{}"}}"#, "x".repeat(300_000))), json_type, 413, "payload_too_large"),
            (Some(&root), "POST", "/api/v1/policies", Some(r#"{"name":"p","rules":[{"action":"wallet.sign","resource":"wallet:*","effect":"require_approval"}]}"#.into()), json_type, 422, "invalid_policy"),
            (Some(&root), "POST", "/api/v1/policies", Some(r#"{"name":"p","rules":[{"action":"wallet.sign","resource":"wallet:*","effect":"allow","conditions":{"allowedIPs":["10.0.0.0/33"]}}]}"#.into()), json_type, 422, "invalid_policy"),
            (Some(&root), "GET", "/api/v1/wallets/wal_00", None, json_type, 404, "not_found"),
            (Some(&root), "GET", "/api/v1/policies/pol_nope", None, json_type, 404, "not_found"),
            (Some(&root), "GET", "/api/v1/signing-requests/req_nope", None, json_type, 404, "not_found"),
            (Some(&root), "GET", "/api/v1/no-such-route", None, json_type, 404, "not_found"),
            (Some(&root), "DELETE", "/api/v1/policies", None, json_type, 405, "method_not_allowed"),
            (Some(&root), "GET", "/api/v1/audit?cursor=abc", None, json_type, 422, "invalid_cursor"),
            (Some(&root), "GET", "/api/v1/approvals?status=maybe", None, json_type, 422, "invalid_query"),
            (None, "GET", "/api/v1/wallets", None, json_type, 401, "unauthenticated"),
            (Some("cst_forged"), "GET", "/api/v1/wallets", None, json_type, 401, "invalid_token"),
            (None, "POST", "/api/v1/auth/token", Some(r#"{"clientId":"x"}"#.into()), json_type, 422, "invalid_body"),
        ];
        for (token, method, path, body, content_type, status, code) in &cases {
            check(&server, *token, method, path, body.as_deref(), content_type, *status, code).await;
        }
        // An expired token.
        let (id, token) = server.identity(&root, "shortlived", "auditor", None).await;
        let pool = direct_db(&server.database_url).await;
        sqlx::query("UPDATE tokens SET expires_at = 0 WHERE identity_id = $1").bind(&id).execute(&pool).await.unwrap();
        pool.close().await;
        check(&server, Some(&token), "GET", "/api/v1/audit", None, json_type, 401, "token_expired").await;
        // Nothing was created by the refused requests.
        let (_, policies, _) = server.request("GET", "/api/v1/policies", Some(&root), None).await;
        assert_eq!(policies["items"].as_array().unwrap().len(), 1, "only the default policy: {policies}");
        server
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_gate_actions_and_the_default_policy_is_visible() {
    each_backend(|server| async move {
        let root = server.root_token().await;
        let (_, auditor) = server.identity(&root, "auditor", "auditor", None).await;
        let (status, body, _) = server
            .request("POST", "/api/v1/policies", Some(&auditor), Some(r#"{"name":"x","rules":[{"action":"*","resource":"*","effect":"allow"}]}"#))
            .await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
        let (status, _, _) = server.request("GET", "/api/v1/audit", Some(&auditor), None).await;
        assert_eq!(status, 200);
        let (_, policies, _) = server.request("GET", "/api/v1/policies", Some(&root), None).await;
        let default = &policies["items"][0];
        assert_eq!(default["name"], "default");
        let rules = default["rules"].as_array().unwrap();
        assert!(rules.iter().any(|rule| rule["effect"] == "deny" && rule["action"] == "*.export"));
        assert!(rules.iter().any(|rule| rule["action"] == "wallet.reshare" && rule["effect"] == "require_approval"));
        // A deny policy names its rule and wins over the default allow.
        let (status, created, _) = server
            .request("POST", "/api/v1/policies", Some(&root), Some(r#"{"name":"no-identities","rules":[{"action":"identity.create","resource":"identity:blocked-*","effect":"deny"}]}"#))
            .await;
        assert_eq!(status, 201, "{created}");
        let (status, body, _) = server
            .request("POST", "/api/v1/identities", Some(&root), Some(r#"{"name":"blocked-1","role":"service"}"#))
            .await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("policy_denied")));
        assert!(body["error"]["message"].as_str().unwrap().contains(created["id"].as_str().unwrap()), "{body}");
        let (status, _, _) = server
            .request("POST", "/api/v1/identities", Some(&root), Some(r#"{"name":"allowed-1","role":"service"}"#))
            .await;
        assert_eq!(status, 201);
        server
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_of_another_org_sees_nothing_of_this_org() {
    each_backend(|server| async move {
        let root = server.root_token().await;
        let (status, org_b, _) = server
            .request(
                "POST",
                "/api/v1/orgs",
                Some(&root),
                Some(r#"{"name":"org-b"}"#),
            )
            .await;
        assert_eq!(status, 201, "{org_b}");
        let org_b = org_b["id"].as_str().unwrap().to_string();
        let (_, admin_b) = server
            .identity(&root, "admin-b", "admin", Some(&org_b))
            .await;
        // Org A (platform) resources.
        let (_, policy_a, _) = server
            .request(
                "POST",
                "/api/v1/policies",
                Some(&root),
                Some(
                    r#"{"name":"a-only","rules":[{"action":"*","resource":"*","effect":"allow"}]}"#,
                ),
            )
            .await;
        let policy_a = policy_a["id"].as_str().unwrap().to_string();
        for path in [
            format!("/api/v1/policies/{policy_a}"),
            "/api/v1/approvals/apr_x".into(),
            "/api/v1/signing-requests/req_x".into(),
            "/api/v1/wallets/wal_x".into(),
        ] {
            let (status, body, _) = server.request("GET", &path, Some(&admin_b), None).await;
            assert_eq!(status, 404, "{path}: {body}");
        }
        let (status, _, _) = server
            .request(
                "PUT",
                &format!("/api/v1/policies/{policy_a}"),
                Some(&admin_b),
                Some(r#"{"name":"x","rules":[{"action":"*","resource":"*","effect":"deny"}]}"#),
            )
            .await;
        assert_eq!(status, 404);
        let (_, policies, _) = server
            .request("GET", "/api/v1/policies", Some(&admin_b), None)
            .await;
        let names: Vec<&str> = policies["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["default"]);
        let (_, identities, _) = server
            .request("GET", "/api/v1/identities", Some(&admin_b), None)
            .await;
        let names: Vec<&str> = identities["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["admin-b"]);
        let (_, audit, _) = server
            .request("GET", "/api/v1/audit?limit=1000", Some(&admin_b), None)
            .await;
        for item in audit["items"].as_array().unwrap() {
            assert_eq!(item["org"], org_b.as_str(), "{item}");
            assert!(!item.to_string().contains(&policy_a));
        }
        for path in ["/api/v1/wallets", "/api/v1/approvals"] {
            let (status, body, _) = server.request("GET", path, Some(&admin_b), None).await;
            assert_eq!(status, 200);
            assert_eq!(body["items"], json!([]), "{path}");
        }
        // A non-platform admin cannot create orgs or identities elsewhere.
        let (status, _, _) = server
            .request(
                "POST",
                "/api/v1/orgs",
                Some(&admin_b),
                Some(r#"{"name":"org-c"}"#),
            )
            .await;
        assert_eq!(status, 403);
        let platform_org = audit_org_of(&server, &root).await;
        let (status, _, _) = server
            .request(
                "POST",
                "/api/v1/identities",
                Some(&admin_b),
                Some(&json!({"name":"spy","role":"admin","orgId": platform_org}).to_string()),
            )
            .await;
        assert_eq!(status, 404);
        server
    })
    .await;
}

async fn audit_org_of(server: &Server, token: &str) -> String {
    let (_, audit, _) = server
        .request("GET", "/api/v1/audit?limit=1", Some(token), None)
        .await;
    audit["items"][0]["org"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_chain_verifies_and_a_changed_row_is_named() {
    each_backend(|server| async move {
        let root = server.root_token().await;
        for index in 0..3 {
            server
                .identity(&root, &format!("svc-{index}"), "service", None)
                .await;
        }
        let (status, report, _) = server
            .request("GET", "/api/v1/audit/verify", Some(&root), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(report["valid"], true, "{report}");
        assert!(report["entries"].as_i64().unwrap() >= 7);
        // Paging with the cursor returns every record once, in order.
        let mut seqs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(cursor) => format!("/api/v1/audit?limit=2&cursor={cursor}"),
                None => "/api/v1/audit?limit=2".to_string(),
            };
            let (_, page, _) = server.request("GET", &path, Some(&root), None).await;
            seqs.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|item| item["seq"].as_i64().unwrap()),
            );
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
        let org = audit_org_of(&server, &root).await;
        // Change one row behind the API's back.
        let pool = direct_db(&server.database_url).await;
        sqlx::query(
            "UPDATE audit_log SET identity_id = 'someone-else' WHERE org_id = $1 AND seq = 3",
        )
        .bind(&org)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let (_, report, _) = server
            .request("GET", "/api/v1/audit/verify", Some(&root), None)
            .await;
        assert_eq!(report["valid"], false);
        assert_eq!(report["firstBroken"]["seq"], 3, "{report}");
        // The command-line verifier names the same row and exits non-zero.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_custos"))
            .args(["audit", "verify", "--database-url", &server.database_url])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(printed["firstBroken"]["seq"], 3);
        assert_eq!(printed["firstBroken"]["org"], org.as_str());
        server
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_audit_record_cannot_be_written_the_operation_fails() {
    for backend in BACKENDS {
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        let pool = direct_db(&server.database_url).await;
        match backend {
            Backend::Sqlite => {
                sqlx::query("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit store down'); END")
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            Backend::Postgres => {
                sqlx::query("CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit store down'; END $$ LANGUAGE plpgsql")
                    .execute(&pool)
                    .await
                    .unwrap();
                sqlx::query("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_audit()")
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }
        let (status, body, _) = server
            .request("POST", "/api/v1/policies", Some(&root), Some(r#"{"name":"unaudited","rules":[{"action":"*","resource":"*","effect":"allow"}]}"#))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (500, Some("internal")),
            "{body}"
        );
        let count: i64 = sqlx::Row::try_get(
            &sqlx::query("SELECT COUNT(*) AS n FROM policies WHERE name = 'unaudited'")
                .fetch_one(&pool)
                .await
                .unwrap(),
            "n",
        )
        .unwrap();
        assert_eq!(
            count, 0,
            "the change did not commit without its audit record"
        );
        sqlx::query(if backend == Backend::Postgres {
            "DROP TRIGGER refuse_audit ON audit_log"
        } else {
            "DROP TRIGGER refuse_audit"
        })
        .execute(&pool)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        pool.close().await;
        server.stop().await;
    }
}

/// The served document is the generated one (`http::openapi::document`),
/// and it tells the truth about routing and security: every documented
/// operation is routed, every operation with a security requirement refuses
/// a call without a token (`401`), every other one does not ask for one,
/// and every answer is described (success and errors, no `default`).
#[tokio::test(flavor = "multi_thread")]
async fn the_served_document_is_generated_and_every_operation_is_routed() {
    let server = Server::start(Backend::Sqlite).await;
    let (status, document, _) = server
        .request("GET", "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(&document, custos_control_plane::http::openapi::document());
    let paths = document["paths"].as_object().unwrap();
    let operations: usize = paths
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    // 87 Custos operations and 14 of the Vault dialect when this was written.
    assert!(operations >= 101, "{operations} operations");
    let shared = document["components"]["responses"].as_object().unwrap();
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(
                operation_ids.insert(id.to_string()),
                "operationId {id} twice"
            );
            let answers = operation["responses"].as_object().unwrap();
            assert!(
                answers.keys().any(|status| status.starts_with('2')),
                "{method} {path} documents no success answer"
            );
            assert!(
                !answers.contains_key("default"),
                "{method} {path}: every status is named"
            );
            for (status, answer) in answers {
                if let Some(reference) = answer["$ref"].as_str() {
                    let name = reference.trim_start_matches("#/components/responses/");
                    assert!(
                        shared.contains_key(name),
                        "{method} {path} {status}: {reference}"
                    );
                }
            }
            if method != "get" && method != "delete" && path.starts_with("/api/v1/") {
                // Every change names its body's schema, or has none.
                if let Some(body) = operation.get("requestBody") {
                    assert!(
                        body["content"]["application/json"]["schema"].is_object(),
                        "{method} {path}: {body}"
                    );
                }
            }
            let concrete = path
                .replace("{id}", "x_1")
                .replace("{name}", "x1")
                .replace("{backup}", "bak_1")
                .replace("{hash}", "sha2-256")
                .replace("{version}", "1");
            let (status, body, _) = server
                .request(&method.to_uppercase(), &concrete, None, None)
                .await;
            assert!(
                !(status == 404 && body["error"]["message"] == "route not found") && status != 405,
                "{method} {path} is documented but not routed: {status} {body}"
            );
            let secured = operation
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|requirements| !requirements.is_empty());
            if secured {
                assert_eq!(
                    status, 401,
                    "{method} {path} documents a token but answered without one: {body}"
                );
            } else {
                assert_ne!(
                    status, 401,
                    "{method} {path} asks for a token its document does not name: {body}"
                );
            }
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mfa_enrolment_answers_an_otpauth_uri_for_the_identity_itself() {
    let server = Server::start(Backend::Sqlite).await;
    let root = server.root_token().await;
    let (approver_id, approver) = server.identity(&root, "alice", "approver", None).await;
    let (_, other) = server.identity(&root, "bob", "approver", None).await;
    let (status, body, _) = server
        .request(
            "POST",
            &format!("/api/v1/identities/{approver_id}/mfa"),
            Some(&approver),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let uri = body["otpauthUri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Custos:alice?secret="),
        "{uri}"
    );
    let (status, _, _) = server
        .request(
            "POST",
            &format!("/api/v1/identities/{approver_id}/mfa"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(status, 403, "another approver cannot enrol someone else");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_over_its_rate_limit_gets_429_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("custos.db").display());
    let server = Server::start_with(dir, url, "rate_limit_per_sec = 1\n").await;
    let root = server.root_token().await;
    let (_, other) = server.identity(&root, "other", "auditor", None).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            server
                .request("GET", "/api/v1/policies", Some(&root), None)
                .await
                .0,
        );
    }
    // A burst of 4 (4 × the rate), then refusals.
    assert!(
        statuses.iter().filter(|status| **status == 200).count() <= 5,
        "{statuses:?}"
    );
    let (status, body, _) = server
        .request("GET", "/api/v1/policies", Some(&root), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let (status, _, _) = server
        .request("GET", "/api/v1/audit", Some(&other), None)
        .await;
    assert_eq!(status, 200, "another identity has its own budget");
    server.stop().await;
}
