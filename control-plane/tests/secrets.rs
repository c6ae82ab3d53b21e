//! Secrets (KV) over HTTP on SQLite and PostgreSQL: versions, tags,
//! check-and-set, listing without values, roles, org isolation, bad input
//! and its codes; delete, restore and destroy behind the approval defaults
//! (the stored request runs once approved, a stale one fails instead of
//! overwriting); values sealed and bound to their row; rotation webhooks
//! signed with HMAC, retried with backoff and audited, against a real HTTP
//! receiver.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread")]
async fn secrets_keep_versions_tags_and_check_and_set_and_list_without_values() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        let (_, operator) = server.identity(&root, "ops", "operator", None).await;
        let (_, service) = server
            .identity(&root, "payments-api", "service", None)
            .await;
        let (_, auditor) = server.identity(&root, "auditor", "auditor", None).await;

        let (status, created) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &operator,
            Some(json!({"name": "payments/stripe-key", "value": "sk_live_1", "environment": "production", "tags": ["pci", "stripe", "pci"]})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["version"], 1);
        assert_eq!(created["tags"], json!(["pci", "stripe"]));
        assert!(created.get("value").is_none(), "{created}");
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &operator,
            Some(json!({"name": "payments/stripe-key", "value": "x", "environment": "production"})),
        )
        .await;
        assert_eq!((status, code(&body)), (409, "secret_exists"));
        // The same name in another environment is another secret.
        let (status, _) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &operator,
            Some(json!({"name": "payments/stripe-key", "value": "sk_test_1", "environment": "staging", "tags": ["stripe"]})),
        )
        .await;
        assert_eq!(status, 201);
        let (status, _) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &operator,
            Some(json!({"name": "db-password", "value": "hunter2", "environment": "production", "tags": ["db"]})),
        )
        .await;
        assert_eq!(status, 201);

        // Reads: the current version, then any version.
        let path = "/api/v1/secrets/payments%2Fstripe-key";
        let (status, read) = call(
            &server,
            "GET",
            &format!("{path}?environment=production"),
            &service,
            None,
        )
        .await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(
            (read["value"].clone(), read["version"].clone()),
            (json!("sk_live_1"), json!(1))
        );
        assert_eq!(read["name"], "payments/stripe-key");

        let (status, updated) = call(
            &server,
            "PUT",
            path,
            &operator,
            Some(json!({"value": "sk_live_2", "environment": "production"})),
        )
        .await;
        assert_eq!(
            (status, updated["version"].clone()),
            (200, json!(2)),
            "{updated}"
        );
        // Check-and-set: a writer that read version 1 loses.
        let (status, body) = call(
            &server,
            "PUT",
            path,
            &operator,
            Some(json!({"value": "sk_live_lost", "environment": "production", "cas": 1})),
        )
        .await;
        assert_eq!((status, code(&body)), (409, "cas_mismatch"), "{body}");
        let (status, updated) = call(
            &server,
            "PUT",
            path,
            &operator,
            Some(json!({"value": "sk_live_3", "environment": "production", "cas": 2, "tags": ["pci"]})),
        )
        .await;
        assert_eq!(
            (status, updated["version"].clone()),
            (200, json!(3)),
            "{updated}"
        );
        for (version, value) in [(1, "sk_live_1"), (2, "sk_live_2"), (3, "sk_live_3")] {
            let (status, read) = call(
                &server,
                "GET",
                &format!("{path}?environment=production&version={version}"),
                &service,
                None,
            )
            .await;
            assert_eq!((status, read["value"].clone()), (200, json!(value)));
            assert_eq!(read["latestVersion"], 3);
        }
        let (status, body) = call(
            &server,
            "GET",
            &format!("{path}?environment=production&version=9"),
            &service,
            None,
        )
        .await;
        assert_eq!((status, code(&body)), (404, "secret_version_not_found"));
        let (status, versions) = call(
            &server,
            "GET",
            &format!("{path}/versions?environment=production"),
            &auditor,
            None,
        )
        .await;
        assert_eq!(status, 200, "{versions}");
        assert_eq!(versions["versions"].as_array().unwrap().len(), 3);

        // Listing: by environment and tags, never with values.
        let (status, listed) = call(
            &server,
            "GET",
            "/api/v1/secrets?environment=production",
            &auditor,
            None,
        )
        .await;
        assert_eq!(status, 200, "{listed}");
        let names: Vec<&str> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["db-password", "payments/stripe-key"]);
        assert!(
            !listed.to_string().contains("hunter2") && !listed.to_string().contains("sk_live"),
            "a listing shows no value: {listed}"
        );
        let (_, listed) = call(
            &server,
            "GET",
            "/api/v1/secrets?tags=stripe",
            &auditor,
            None,
        )
        .await;
        let found: Vec<(String, String)> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                (
                    item["environment"].as_str().unwrap().to_string(),
                    item["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // Version 3 of the production secret dropped the `stripe` tag.
        assert_eq!(
            found,
            [("staging".to_string(), "payments/stripe-key".to_string())]
        );
        let (_, listed) = call(
            &server,
            "GET",
            "/api/v1/secrets?environment=production&tags=pci,db",
            &auditor,
            None,
        )
        .await;
        assert_eq!(listed["items"], json!([]), "every tag asked for must match");

        // Roles: auditors see metadata, never values; services read but do
        // not write.
        let (status, body) = call(
            &server,
            "GET",
            &format!("{path}?environment=production"),
            &auditor,
            None,
        )
        .await;
        assert_eq!((status, code(&body)), (403, "forbidden"));
        let (status, _) = call(
            &server,
            "PUT",
            path,
            &service,
            Some(json!({"value": "nope", "environment": "production"})),
        )
        .await;
        assert_eq!(status, 403);

        // Another org sees nothing of this one.
        let (status, org) = call(
            &server,
            "POST",
            "/api/v1/orgs",
            &root,
            Some(json!({"name": "other"})),
        )
        .await;
        assert_eq!(status, 201, "{org}");
        let (_, other_admin) = server
            .identity(&root, "other-admin", "admin", org["id"].as_str())
            .await;
        let (status, body) = call(
            &server,
            "GET",
            &format!("{path}?environment=production"),
            &other_admin,
            None,
        )
        .await;
        assert_eq!((status, code(&body)), (404, "secret_not_found"));
        let (_, listed) = call(&server, "GET", "/api/v1/secrets", &other_admin, None).await;
        assert_eq!(listed["items"], json!([]));

        // Bad input: a clear code each, nothing written.
        let bad: [(&str, &str, Option<&str>, u16, &str); 9] = [
            (
                "POST",
                "/api/v1/secrets",
                Some("{not json"),
                400,
                "malformed_json",
            ),
            (
                "POST",
                "/api/v1/secrets",
                Some(r#"{"name": 5, "value": "v", "environment": "production"}"#),
                422,
                "invalid_body",
            ),
            (
                "POST",
                "/api/v1/secrets",
                Some(
                    r#"{"name": "a", "value": "v", "environment": "production", "colour": "red"}"#,
                ),
                422,
                "invalid_body",
            ),
            (
                "POST",
                "/api/v1/secrets",
                Some(r#"{"name": "../etc", "value": "v", "environment": "production"}"#),
                422,
                "invalid_name",
            ),
            (
                "POST",
                "/api/v1/secrets",
                Some(r#"{"name": "a", "value": "v", "environment": "prod env"}"#),
                422,
                "invalid_environment",
            ),
            (
                "POST",
                "/api/v1/secrets",
                Some(
                    r#"{"name": "a", "value": "v", "environment": "production", "tags": ["has space"]}"#,
                ),
                422,
                "invalid_tags",
            ),
            (
                "GET",
                "/api/v1/secrets/payments%2Fstripe-key",
                None,
                400,
                "missing_environment",
            ),
            (
                "GET",
                "/api/v1/secrets/payments%2Fstripe-key?environment=production&version=0",
                None,
                400,
                "invalid_version",
            ),
            (
                "GET",
                "/api/v1/secrets/missing?environment=production",
                None,
                404,
                "secret_not_found",
            ),
        ];
        for (method, path, body, status, expected) in bad {
            let (got, answer, _) = server.request(method, path, Some(&operator), body).await;
            assert_eq!(
                (got, code(&answer)),
                (status, expected),
                "{method} {path} {body:?}: {answer}"
            );
        }
        let big = "x".repeat(64 * 1024 + 1);
        let (status, body) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &operator,
            Some(json!({"name": "big", "value": big, "environment": "production"})),
        )
        .await;
        assert_eq!((status, code(&body)), (413, "value_too_large"));

        // Every read of a value is in the audit chain, and no value is.
        let (_, audit) = call(
            &server,
            "GET",
            "/api/v1/audit?action=secret.read",
            &root,
            None,
        )
        .await;
        assert!(audit["items"].as_array().unwrap().len() >= 5, "{audit}");
        let (_, everything) = call(&server, "GET", "/api/v1/audit", &root, None).await;
        for value in [
            "sk_live_1",
            "sk_live_2",
            "sk_live_3",
            "hunter2",
            "sk_test_1",
        ] {
            assert!(
                !everything.to_string().contains(value),
                "{value} in the audit"
            );
        }
        let (_, verified) = call(&server, "GET", "/api/v1/audit/verify", &root, None).await;
        assert_eq!(verified["valid"], true, "{verified}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_and_destroy_wait_for_two_approvals_and_run_the_stored_request_once() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        let (_, operator) = server.identity(&root, "ops", "operator", None).await;
        let (_, first) = server.identity(&root, "approver-1", "approver", None).await;
        let (_, second) = server.identity(&root, "approver-2", "approver", None).await;
        let (_, service) = server.identity(&root, "api", "service", None).await;
        for value in ["v1", "v2"] {
            let (status, _) = if value == "v1" {
                call(
                    &server,
                    "POST",
                    "/api/v1/secrets",
                    &operator,
                    Some(json!({"name": "db", "value": value, "environment": "production"})),
                )
                .await
            } else {
                call(
                    &server,
                    "PUT",
                    "/api/v1/secrets/db",
                    &operator,
                    Some(json!({"value": value, "environment": "production"})),
                )
                .await
            };
            assert!(status == 200 || status == 201);
        }
        let read = |version: Option<u32>| {
            let path = match version {
                Some(version) => {
                    format!("/api/v1/secrets/db?environment=production&version={version}")
                }
                None => "/api/v1/secrets/db?environment=production".to_string(),
            };
            let (server, service) = (&server, service.clone());
            async move { call(server, "GET", &path, &service, None).await }
        };

        // Delete: 202, still readable until two approvers approve.
        let (status, pending) = call(
            &server,
            "DELETE",
            "/api/v1/secrets/db?environment=production",
            &operator,
            None,
        )
        .await;
        assert_eq!(
            (status, pending["status"].clone()),
            (202, json!("pending_approval")),
            "{pending}"
        );
        let (status, approval) = call(
            &server,
            "GET",
            &format!(
                "/api/v1/approvals/{}",
                pending["approvalId"].as_str().unwrap()
            ),
            &first,
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(approval["action"], "secret.delete");
        assert_eq!(approval["resource"], "secret:production/db");
        assert_eq!(approval["required"]["count"], 2);
        assert_eq!(read(None).await.0, 200);
        let (status, body) = approve(&server, &operator, &pending).await;
        assert_eq!(
            status, 403,
            "the requester may not approve (operators are not approvers either): {body}"
        );
        let (status, _) = approve(&server, &first, &pending).await;
        assert_eq!(status, 200);
        assert_eq!(
            operation(&server, &first, &pending).await["status"],
            "pending_approval"
        );
        assert_eq!(read(None).await.0, 200);
        let (status, body) = approve(&server, &first, &pending).await;
        assert_eq!((status, code(&body)), (409, "already_voted"));
        let (status, _) = approve(&server, &second, &pending).await;
        assert_eq!(status, 200);
        let executed = operation(&server, &first, &pending).await;
        assert_eq!(executed["status"], "executed", "{executed}");
        let (status, body) = read(None).await;
        assert_eq!((status, code(&body)), (410, "secret_deleted"));
        // Approving again changes nothing: the request ran once.
        let (status, body) = approve(&server, &root, &pending).await;
        assert_eq!((status, code(&body)), (409, "approval_not_pending"));

        // Restore needs no approval by default.
        let (status, restored) = call(
            &server,
            "POST",
            "/api/v1/secrets/db/restore",
            &operator,
            Some(json!({"environment": "production"})),
        )
        .await;
        assert_eq!(status, 200, "{restored}");
        assert_eq!(read(None).await.1["value"], "v2");

        // Destroy version 1: gone for good, version 2 untouched.
        let (status, pending) = call(
            &server,
            "POST",
            "/api/v1/secrets/db/destroy",
            &operator,
            Some(json!({"environment": "production", "versions": [1]})),
        )
        .await;
        assert_eq!(status, 202, "{pending}");
        approve(&server, &first, &pending).await;
        approve(&server, &second, &pending).await;
        assert_eq!(
            operation(&server, &first, &pending).await["status"],
            "executed"
        );
        let (status, body) = read(Some(1)).await;
        assert_eq!((status, code(&body)), (410, "secret_version_destroyed"));
        assert_eq!(read(Some(2)).await.1["value"], "v2");
        let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
            .await
            .unwrap();
        let rows = sqlx::query("SELECT version, value FROM secret_versions ORDER BY version")
            .fetch_all(db.pool())
            .await
            .unwrap();
        let stored: Vec<(i64, bool)> = rows
            .iter()
            .map(|row| {
                (
                    row.try_get::<i64, _>("version").unwrap(),
                    row.try_get::<Option<Vec<u8>>, _>("value")
                        .unwrap()
                        .is_some(),
                )
            })
            .collect();
        assert_eq!(
            stored,
            [(1, false), (2, true)],
            "the destroyed value is gone from the database"
        );
        db.close().await;

        // A rejected request never runs.
        let (_, pending) = call(
            &server,
            "DELETE",
            "/api/v1/secrets/db?environment=production",
            &operator,
            None,
        )
        .await;
        let approval = pending["approvalId"].as_str().unwrap();
        let (status, _) = call(
            &server,
            "POST",
            &format!("/api/v1/approvals/{approval}/reject"),
            &first,
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            operation(&server, &first, &pending).await["status"],
            "rejected"
        );
        assert_eq!(read(None).await.0, 200);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_write_that_went_stale_fails_instead_of_overwriting() {
    let server = Server::start(Backend::Sqlite).await;
    let root = server.root_token().await;
    let (_, operator) = server.identity(&root, "ops", "operator", None).await;
    let (_, admin) = server.identity(&root, "second-admin", "admin", None).await;
    // Production writes need an admin's approval: a rule ahead of the
    // default policy's allow-all.
    let (_, policies) = call(&server, "GET", "/api/v1/policies", &root, None).await;
    let default = policies["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|policy| policy["name"] == "default")
        .unwrap()
        .clone();
    let mut rules = default["rules"].as_array().unwrap().clone();
    rules.insert(
        0,
        json!({"action": "secret.update", "resource": "secret:production/*", "effect": "require_approval", "approvals": {"count": 1, "roles": ["admin"]}}),
    );
    let (status, body) = call(
        &server,
        "PUT",
        &format!("/api/v1/policies/{}", default["id"].as_str().unwrap()),
        &root,
        Some(json!({"name": "default", "rules": rules})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    call(
        &server,
        "POST",
        "/api/v1/secrets",
        &operator,
        Some(json!({"name": "api-key", "value": "one", "environment": "production"})),
    )
    .await;

    let (status, pending) = call(
        &server,
        "PUT",
        "/api/v1/secrets/api-key",
        &operator,
        Some(json!({"value": "two", "environment": "production"})),
    )
    .await;
    assert_eq!(status, 202, "{pending}");
    // Meanwhile a rotation (not behind an approval) moves the secret on.
    let (status, rotated) = call(
        &server,
        "POST",
        "/api/v1/secrets/api-key/rotate",
        &operator,
        Some(json!({"newValue": "rotated", "environment": "production"})),
    )
    .await;
    assert_eq!(
        (status, rotated["version"].clone()),
        (200, json!(2)),
        "{rotated}"
    );
    let (status, _) = approve(&server, &admin, &pending).await;
    assert_eq!(status, 200);
    let failed = operation(&server, &admin, &pending).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "cas_mismatch", "{failed}");
    let (_, read) = call(
        &server,
        "GET",
        "/api/v1/secrets/api-key?environment=production",
        &operator,
        None,
    )
    .await;
    assert_eq!(
        (read["value"].clone(), read["version"].clone()),
        (json!("rotated"), json!(2))
    );
    // The stored request body is sealed: the pending value is not in the
    // database in the clear.
    let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
        .await
        .unwrap();
    let bodies = sqlx::query("SELECT body FROM operations")
        .fetch_all(db.pool())
        .await
        .unwrap();
    for row in bodies {
        let body: Vec<u8> = row.try_get("body").unwrap();
        assert!(!body.windows(3).any(|window| window == b"two"));
    }
    db.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_copied_to_another_row_does_not_open() {
    let server = Server::start(Backend::Sqlite).await;
    let root = server.root_token().await;
    for (name, value) in [("a", "value-of-a"), ("b", "value-of-b")] {
        let (status, _) = call(
            &server,
            "POST",
            "/api/v1/secrets",
            &root,
            Some(json!({"name": name, "value": value, "environment": "production"})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
        .await
        .unwrap();
    let sealed: Vec<u8> = sqlx::query(
        "SELECT v.value FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.name = 'a'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap()
    .try_get("value")
    .unwrap();
    assert!(!sealed.windows(10).any(|window| window == b"value-of-a"));
    sqlx::query(
        "UPDATE secret_versions SET value = $1 WHERE secret_id = (SELECT id FROM secrets WHERE name = 'b')",
    )
    .bind(sealed)
    .execute(db.pool())
    .await
    .unwrap();
    db.close().await;
    let (status, body) = call(
        &server,
        "GET",
        "/api/v1/secrets/b?environment=production",
        &root,
        None,
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert!(!body.to_string().contains("value-of-a"));
    server.stop().await;
}

/// What the webhook receiver saw: headers (lower-case names) and body.
type Seen = Arc<Mutex<Vec<(Vec<(String, String)>, String)>>>;

/// A real HTTP receiver that answers 500 to the first `failures` requests
/// and 204 afterwards.
async fn receiver(failures: usize) -> (String, Seen) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/rotation", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                buffer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buffer).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            (name.eq_ignore_ascii_case("content-length"))
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break (head.to_string(), body.to_string());
                    }
                }
            };
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_string()))
                .collect();
            let count = {
                let mut seen = log.lock().unwrap();
                seen.push((headers, body));
                seen.len()
            };
            let status = if count <= failures {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_webhook_is_signed_retried_with_backoff_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("custos.db").display());
    let server = Server::start_with(
        dir,
        database_url,
        "rate_limit_per_sec = 1000\n[webhooks]\nallow_http = true\nallow_private_targets = true\nbackoff_ms = 100\npoll_ms = 50\n",
    )
    .await;
    let root = server.root_token().await;
    let (_, operator) = server.identity(&root, "ops", "operator", None).await;
    call(
        &server,
        "POST",
        "/api/v1/secrets",
        &operator,
        Some(json!({"name": "stripe", "value": "sk_old", "environment": "production"})),
    )
    .await;
    let (url, seen) = receiver(2).await;

    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/secrets/stripe/rotate",
        &operator,
        Some(json!({"newValue": "sk_new", "environment": "production", "notifyWebhook": "ftp://example.com/x"})),
    )
    .await;
    assert_eq!((status, code(&body)), (422, "invalid_webhook_url"));
    let (status, rotated) = call(
        &server,
        "POST",
        "/api/v1/secrets/stripe/rotate",
        &operator,
        Some(json!({"newValue": "sk_new", "environment": "production", "notifyWebhook": url})),
    )
    .await;
    assert_eq!(
        (status, rotated["version"].clone()),
        (200, json!(2)),
        "{rotated}"
    );
    let delivery = rotated["webhookDelivery"].as_str().unwrap().to_string();

    // Two failures, then success: three attempts, backing off.
    let mut view = Value::Null;
    for _ in 0..200 {
        let (_, current) = call(
            &server,
            "GET",
            &format!("/api/v1/webhooks/deliveries/{delivery}"),
            &operator,
            None,
        )
        .await;
        view = current;
        if view["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (view["status"].clone(), view["attempts"].clone()),
        (json!("delivered"), json!(3)),
        "{view}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);

    // Every attempt carries the same delivery, signed with the org's
    // webhook secret over "<timestamp>.<body>"; the value is never sent.
    let (status, secret) = call(
        &server,
        "GET",
        "/api/v1/webhooks/signing-secret",
        &root,
        None,
    )
    .await;
    assert_eq!(status, 200, "{secret}");
    let key = hex::decode(secret["signingSecret"].as_str().unwrap()).unwrap();
    let (status, _) = call(
        &server,
        "GET",
        "/api/v1/webhooks/signing-secret",
        &operator,
        None,
    )
    .await;
    assert_eq!(status, 403, "only admins see the signing secret");
    for (headers, body) in &seen {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .unwrap_or_default()
        };
        assert_eq!(header("x-custos-event"), "secret.rotated");
        assert_eq!(header("x-custos-delivery"), delivery);
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{body}", header("x-custos-timestamp")).as_bytes());
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(header("x-custos-signature"), expected);
        let notice: Value = serde_json::from_str(body).unwrap();
        assert_eq!(notice["name"], "stripe");
        assert_eq!(notice["version"], 2);
        assert_eq!(notice["deliveryId"], json!(delivery));
        assert!(!body.contains("sk_new") && !body.contains("sk_old"));
    }

    // Each attempt is in the audit chain: two failures, one success.
    let (_, audit) = call(
        &server,
        "GET",
        "/api/v1/audit?action=webhook.deliver",
        &root,
        None,
    )
    .await;
    let mut outcomes: Vec<String> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["outcome"].as_str().unwrap_or("").to_string())
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["failure", "failure", "success"], "{audit}");
    server.stop().await;
}
