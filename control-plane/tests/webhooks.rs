//! Webhook targets: https outside dev mode, no loopback, private,
//! link-local or other non-public targets unless
//! `webhooks.allow_private_targets`, checked when the URL is given and at
//! every delivery; and a delivery record that keeps the target's status,
//! never its answer. Real servers on both backends, real HTTP receivers.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};

/// A server on `backend` in dev mode (http allowed) with `webhooks` lines.
async fn start(backend: Backend, webhooks: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("custos.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    Server::start_with(
        dir,
        database_url,
        &format!("rate_limit_per_sec = 1000\n[webhooks]\n{webhooks}\n"),
    )
    .await
}

/// `server` stopped and started again on its store with other `webhooks`
/// lines (same root credentials).
async fn restart(server: Server, webhooks: &str) -> Server {
    let (root_id, root_secret) = (
        server.root_client_id.clone(),
        server.root_client_secret.clone(),
    );
    let (dir, database_url) = server.halt().await;
    let seal = format!("[seal]\nmode = \"env\"\nmaster_key = \"{TEST_MASTER_KEY}\"\n");
    let mut server = Server::start_configured(
        dir,
        database_url,
        &format!("dev_mode = true\nrate_limit_per_sec = 1000\n[webhooks]\n{webhooks}\n{seal}"),
        false,
    )
    .await;
    server.root_client_id = root_id;
    server.root_client_secret = root_secret;
    server
}

/// A worker that polls once at start and then not for an hour: deliveries
/// queued by a test stay pending (nothing is sent to the test's targets).
const NO_DELIVERY: &str = "poll_ms = 3600000";

/// What a receiver saw: one entry per request.
type Seen = Arc<Mutex<Vec<String>>>;

/// A real HTTP receiver on 127.0.0.1 that answers every request with
/// `status_line`, `headers` and `body`; answers its port.
async fn receiver(
    status_line: &'static str,
    headers: &'static str,
    body: &'static str,
) -> (u16, Seen) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            // Read the head and the announced body, then answer.
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buffer).to_string();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            (name.eq_ignore_ascii_case("content-length"))
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if rest.len() >= length {
                        break;
                    }
                }
            }
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buffer).to_string());
            let answer = format!(
                "HTTP/1.1 {status_line}\r\n{headers}Content-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (port, seen)
}

/// An operator's token and a secret `name` to rotate.
async fn operator_with_secret(server: &Server, name: &str) -> String {
    let root = server.root_token().await;
    let (_, operator) = server.identity(&root, "ops", "operator", None).await;
    let (status, body) = call(
        server,
        "POST",
        "/api/v1/secrets",
        &operator,
        Some(json!({"name": name, "value": "v1", "environment": "production"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    operator
}

/// Rotates `name` with `notifyWebhook: url`: (status, body).
async fn rotate(server: &Server, token: &str, name: &str, url: &str) -> (u16, Value) {
    call(
        server,
        "POST",
        &format!("/api/v1/secrets/{name}/rotate"),
        token,
        Some(json!({"newValue": "v-next", "environment": "production", "notifyWebhook": url})),
    )
    .await
}

/// The delivery view once its status is `status` (or the last view seen).
async fn delivery_when(server: &Server, token: &str, id: &str, status: &str) -> Value {
    let mut view = Value::Null;
    for _ in 0..200 {
        let (code, current) = call(
            server,
            "GET",
            &format!("/api/v1/webhooks/deliveries/{id}"),
            token,
            None,
        )
        .await;
        assert_eq!(code, 200, "{current}");
        view = current;
        if view["status"] == status {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    view
}

/// The `webhook.deliver` audit records of delivery `id`.
async fn delivery_audit(server: &Server, id: &str) -> Vec<Value> {
    let root = server.root_token().await;
    let (status, audit) = call(
        server,
        "GET",
        &format!("/api/v1/audit?action=webhook.deliver&resource=webhook:{id}"),
        &root,
        None,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    audit["items"].as_array().unwrap().clone()
}

/// Checks that rotating with `url` is refused (422 `invalid_webhook_url`,
/// the message naming `range`) or accepted (`range` empty).
async fn check(server: &Server, token: &str, url: &str, range: &str) {
    let (status, body) = rotate(server, token, "stripe", url).await;
    if range.is_empty() {
        assert_eq!(status, 200, "{url}: {body}");
    } else {
        assert_eq!(
            (status, code(&body)),
            (422, "invalid_webhook_url"),
            "{url}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(range), "{url}: {message}");
        assert!(
            message.contains("webhooks.allow_private_targets"),
            "the message names the setting: {message}"
        );
    }
}

/// Non-public targets as address literals, each with a word of its
/// range's name.
const NON_PUBLIC_TARGETS: &[(&str, &str)] = &[
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.1.2.3:8080/hook", "loopback"),
    ("http://2130706433/hook", "loopback"),
    ("http://0x7f.0.0.1/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://0.0.0.0:8200/hook", "this network"),
    ("http://[::]/hook", "unspecified"),
    ("http://10.0.0.5/hook", "private"),
    ("http://172.16.8.1/hook", "private"),
    ("http://192.168.1.1/hook", "private"),
    ("http://[fd00::1]/hook", "unique local"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://169.254.10.1/hook", "link-local"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://100.64.0.1/hook", "CGNAT"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://255.255.255.255/hook", "broadcast"),
    ("http://192.0.2.10/hook", "documentation"),
    ("http://198.18.0.1/hook", "benchmarking"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://[::ffff:169.254.169.254]/hook", "metadata"),
    ("http://[::ffff:10.0.0.1]/hook", "private"),
    ("http://[64:ff9b::a9fe:a9fe]/hook", "metadata"),
];

#[tokio::test(flavor = "multi_thread")]
async fn non_public_targets_are_refused_at_registration() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        // Dev mode allows http, not private targets.
        let server = start(backend, NO_DELIVERY).await;
        let operator = operator_with_secret(&server, "stripe").await;
        for (url, range) in NON_PUBLIC_TARGETS {
            check(&server, &operator, url, range).await;
        }
        server.stop().await;
    }
    // With the setting, loopback targets are accepted (port 9: nothing
    // listens, and the worker does not poll during the test anyway).
    let server = start(
        Backend::Sqlite,
        &format!("allow_private_targets = true\n{NO_DELIVERY}"),
    )
    .await;
    let operator = operator_with_secret(&server, "stripe").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]:9/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://localhost:9/hook",
    ] {
        check(&server, &operator, url, "").await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostname_resolving_to_loopback_is_refused_without_the_setting() {
    let (port, seen) = receiver("204 No Content", "", "").await;
    let url = format!("http://localhost:{port}/hook");
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = start(backend, NO_DELIVERY).await;
        let operator = operator_with_secret(&server, "stripe").await;
        let (status, body) = rotate(&server, &operator, "stripe", &url).await;
        assert_eq!(
            (status, code(&body)),
            (422, "invalid_webhook_url"),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("resolves to a non-public address: loopback"),
            "{message}"
        );
        // The answer names the range, not the address the name resolved to.
        assert!(
            !message.contains("127.0.0.1") && !message.contains("::1"),
            "{message}"
        );
        server.stop().await;

        // With the setting, the same URL is accepted and delivered.
        let server = start(
            backend,
            "allow_http = true\nallow_private_targets = true\npoll_ms = 50",
        )
        .await;
        let operator = operator_with_secret(&server, "stripe").await;
        let (status, rotated) = rotate(&server, &operator, "stripe", &url).await;
        assert_eq!(status, 200, "{rotated}");
        let id = rotated["webhookDelivery"].as_str().unwrap();
        let view = delivery_when(&server, &operator, id, "delivered").await;
        assert_eq!(view["status"], "delivered", "{view}");
        server.stop().await;
    }
    assert_eq!(seen.lock().unwrap().len(), 2, "one delivery per backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_became_forbidden_fails_at_delivery_once_without_a_request() {
    let (port, seen) = receiver("204 No Content", "", "").await;
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        // Accepted while private targets were allowed, not yet delivered.
        let server = start(
            backend,
            &format!("allow_private_targets = true\n{NO_DELIVERY}"),
        )
        .await;
        let operator = operator_with_secret(&server, "stripe").await;
        let mut deliveries = Vec::new();
        // A name (checked by the delivery client's resolver) and an
        // address literal (checked before connecting).
        for host in ["localhost", "127.0.0.1"] {
            let url = format!("http://{host}:{port}/hook");
            let (status, rotated) = rotate(&server, &operator, "stripe", &url).await;
            assert_eq!(status, 200, "{rotated}");
            deliveries.push(rotated["webhookDelivery"].as_str().unwrap().to_string());
        }
        // The setting is gone when the worker delivers.
        let server = restart(server, "max_attempts = 5\nbackoff_ms = 50\npoll_ms = 50").await;
        for id in &deliveries {
            let view = delivery_when(&server, &operator, id, "failed").await;
            assert_eq!(
                (&view["status"], &view["attempts"], &view["lastError"]),
                (&json!("failed"), &json!(1), &json!("target_forbidden")),
                "{view}"
            );
        }
        // Permanent: no retry follows.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        for id in &deliveries {
            let view = delivery_when(&server, &operator, id, "failed").await;
            assert_eq!(view["attempts"], 1, "{view}");
            let audit = delivery_audit(&server, id).await;
            assert_eq!(audit.len(), 1, "{audit:?}");
            assert_eq!(
                (&audit[0]["outcome"], &audit[0]["detail"]["error"]),
                (&json!("failure"), &json!("target_forbidden")),
                "{audit:?}"
            );
        }
        server.stop().await;
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "no request reached the target"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_error_body_is_not_kept_in_the_delivery_or_its_audit() {
    const BODY: &str = "stack trace: db password hunter2 at internal-host-7f3a";
    const HEADER: &str = "X-Internal-Detail: leaked-header-9c1e\r\n";
    let (port, seen) = receiver("500 Internal Server Error", HEADER, BODY).await;
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = start(
            backend,
            "allow_private_targets = true\nmax_attempts = 2\nbackoff_ms = 50\npoll_ms = 50",
        )
        .await;
        let operator = operator_with_secret(&server, "stripe").await;
        let (status, rotated) = rotate(
            &server,
            &operator,
            "stripe",
            &format!("http://127.0.0.1:{port}/hook"),
        )
        .await;
        assert_eq!(status, 200, "{rotated}");
        let id = rotated["webhookDelivery"].as_str().unwrap();
        let view = delivery_when(&server, &operator, id, "failed").await;
        assert_eq!(
            (&view["status"], &view["attempts"], &view["lastError"]),
            (&json!("failed"), &json!(2), &json!("http_status_500")),
            "{view}"
        );
        let audit = delivery_audit(&server, id).await;
        assert_eq!(audit.len(), 2, "{audit:?}");
        for record in &audit {
            assert_eq!(
                (&record["detail"]["httpStatus"], &record["detail"]["error"]),
                (&json!(500), &json!("http_status_500")),
                "{record}"
            );
        }
        let kept = format!("{view} {}", Value::Array(audit));
        for leaked in [
            "hunter2",
            "internal-host-7f3a",
            "leaked-header-9c1e",
            "stack trace",
        ] {
            assert!(!kept.contains(leaked), "{leaked} kept: {kept}");
        }
        server.stop().await;
    }
    assert_eq!(seen.lock().unwrap().len(), 4, "two attempts per backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_is_required_outside_dev_mode_unless_http_is_allowed() {
    let seal = format!("[seal]\nmode = \"env\"\nmaster_key = \"{TEST_MASTER_KEY}\"\n");
    for (allow_http, http_status) in [(false, 422), (true, 200)] {
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("custos.db").display());
        let server = Server::start_configured(
            dir,
            database_url,
            &format!(
                "dev_mode = false\nrate_limit_per_sec = 1000\n[webhooks]\n\
                 allow_http = {allow_http}\nallow_private_targets = true\n{NO_DELIVERY}\n{seal}"
            ),
            true,
        )
        .await;
        let operator = operator_with_secret(&server, "stripe").await;
        let (status, body) = rotate(&server, &operator, "stripe", "http://127.0.0.1:9/hook").await;
        assert_eq!(status, http_status, "allow_http = {allow_http}: {body}");
        if status == 422 {
            assert_eq!(code(&body), "invalid_webhook_url");
            assert!(
                body["error"]["message"].as_str().unwrap().contains("https"),
                "{body}"
            );
        }
        let (status, body) = rotate(&server, &operator, "stripe", "https://127.0.0.1:9/hook").await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_recorded_by_earlier_releases_read_as_failure_classes() {
    // Migration 0010 rewrites the phrases earlier releases wrote. It ran on
    // the empty store at start; rows written as an earlier release would
    // have them are put in, and the migration's statement runs again.
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = start(backend, NO_DELIVERY).await;
        let root = server.root_token().await;
        let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
            .await
            .unwrap();
        let org: String = sqlx::query_scalar("SELECT org_id FROM identities WHERE client_id = $1")
            .bind(&server.root_client_id)
            .fetch_one(db.pool())
            .await
            .unwrap();
        let rows = [
            (
                "whd_old_status",
                Some("answered 503"),
                Some("http_status_503"),
            ),
            ("whd_old_timeout", Some("timed out"), Some("timeout")),
            (
                "whd_old_connect",
                Some("connection failed"),
                Some("connect_failed"),
            ),
            (
                "whd_old_request",
                Some("request failed"),
                Some("request_failed"),
            ),
            (
                "whd_new_class",
                Some("target_forbidden"),
                Some("target_forbidden"),
            ),
            ("whd_no_error", None, None),
        ];
        for (id, last_error, _) in rows {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, org_id, url, event, body, status, \
                 attempts, next_attempt, last_error, created_at, updated_at) \
                 VALUES ($1, $2, 'https://hooks.example.com/x', 'secret.rotated', '{}', \
                 'failed', 8, 0, $3, 0, 0)",
            )
            .bind(id)
            .bind(&org)
            .bind(last_error)
            .execute(db.pool())
            .await
            .unwrap();
        }
        let migration = match backend {
            Backend::Sqlite => include_str!("../../migrations/sqlite/0010_webhook_errors.sql"),
            Backend::Postgres => include_str!("../../migrations/postgres/0010_webhook_errors.sql"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(migration))
            .execute(db.pool())
            .await
            .unwrap();
        db.close().await;
        for (id, _, expected) in rows {
            let (status, view) = call(
                &server,
                "GET",
                &format!("/api/v1/webhooks/deliveries/{id}"),
                &root,
                None,
            )
            .await;
            assert_eq!(
                (status, &view["lastError"]),
                (200, &json!(expected)),
                "{view}"
            );
        }
        server.stop().await;
    }
}
