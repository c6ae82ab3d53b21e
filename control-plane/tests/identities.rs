//! Identities and sessions over the HTTP API, on SQLite and PostgreSQL:
//! MFA enrolment confirmed by a first code, TOTP codes used once and wrong
//! ones counted and locking, login throttling before the password hash,
//! revocation reaching another replica within a second, the lifecycle of
//! identities behind approvals, and the first secret of an identity
//! created after an approval.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sqlx::Row;

/// Starts a server on `backend` with extra configuration lines.
async fn start_with(backend: Backend, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("custos.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    Server::start_with(dir, url, extra).await
}

async fn start(backend: Backend) -> Server {
    start_with(backend, "rate_limit_per_sec = 1000\n").await
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The RFC 6238 code of an `otpauth://` URI's secret `offset` seconds from
/// now.
fn code(uri: &str, offset: i64) -> String {
    common::totp_code(uri, offset)
}

/// A code that is not `right`.
fn wrong(right: &str) -> String {
    format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000)
}

/// Creates an identity as `token`; answers (id, clientId, clientSecret).
async fn create(
    server: &Server,
    token: &str,
    name: &str,
    role: &str,
    org: Option<&str>,
) -> (String, String, String) {
    let mut body = json!({"name": name, "role": role});
    if let Some(org) = org {
        body["orgId"] = json!(org);
    }
    let (status, created) = call(server, "POST", "/api/v1/identities", token, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let text = |field: &str| created[field].as_str().unwrap().to_string();
    (text("id"), text("clientId"), text("clientSecret"))
}

/// `POST /api/v1/auth/token`: (status, body, headers).
async fn login(server: &Server, client_id: &str, secret: &str) -> (u16, Value, String) {
    server
        .request(
            "POST",
            "/api/v1/auth/token",
            None,
            Some(&json!({"clientId": client_id, "clientSecret": secret}).to_string()),
        )
        .await
}

/// Enrols `id` (as itself) and confirms with the current code; answers the
/// otpauth URI. The current time step is used up.
async fn enrol_and_confirm(server: &Server, id: &str, token: &str) -> String {
    let (status, enrolled) = call(
        server,
        "POST",
        &format!("/api/v1/identities/{id}/mfa"),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{enrolled}");
    let uri = enrolled["otpauthUri"].as_str().unwrap().to_string();
    let (status, body) = call(
        server,
        "POST",
        &format!("/api/v1/identities/{id}/mfa/confirm"),
        token,
        Some(json!({"code": code(&uri, 0)})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    uri
}

/// The audit records of `action` in the caller's org.
async fn audit_of(server: &Server, token: &str, action: &str) -> Vec<Value> {
    let (status, audit) = call(
        server,
        "GET",
        &format!("/api/v1/audit?action={action}&limit=1000"),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    audit["items"].as_array().unwrap().clone()
}

/// Waits (up to 10 s) until `action` has at least `count` records.
async fn audit_eventually(server: &Server, token: &str, action: &str, count: usize) -> Vec<Value> {
    for _ in 0..200 {
        let records = audit_of(server, token, action).await;
        if records.len() >= count {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {count} {action} audit records");
}

/// An org made by root with two admins (not platform admins) and a
/// service identity in it: (org, [(id, token)] admins, (id, token)
/// service).
async fn org_with_admins(
    server: &Server,
    root: &str,
    name: &str,
) -> (String, Vec<(String, String)>, (String, String)) {
    let (status, org) = call(
        server,
        "POST",
        "/api/v1/orgs",
        root,
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(status, 201, "{org}");
    let org = org["id"].as_str().unwrap().to_string();
    let mut admins = Vec::new();
    for index in 0..2 {
        admins.push(
            server
                .identity(root, &format!("{name}-admin-{index}"), "admin", Some(&org))
                .await,
        );
    }
    let service = server
        .identity(root, &format!("{name}-svc"), "service", Some(&org))
        .await;
    (org, admins, service)
}

async fn identity_row(server: &Server, id: &str) -> sqlx::any::AnyRow {
    let pool = pool(server).await;
    let row = sqlx::query(
        "SELECT secret_hash, totp_secret, totp_pending, totp_failures, totp_locked_until, \
         status, created_by FROM identities WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    row
}

async fn root_id(server: &Server, root: &str) -> String {
    let (_, listed) = call(server, "GET", "/api/v1/identities", root, None).await;
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["name"] == "root")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn mfa_enrolment_takes_effect_only_after_a_first_code() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (alice, alice_token) = server.identity(&root, "alice", "approver", None).await;
        let (_, bob_token) = server.identity(&root, "bob", "approver", None).await;
        let mfa = format!("/api/v1/identities/{alice}/mfa");
        let confirm = format!("{mfa}/confirm");
        let (status, first) = call(&server, "POST", &mfa, &alice_token, None).await;
        assert_eq!(status, 200, "{first}");
        let first = first["otpauthUri"].as_str().unwrap().to_string();
        assert!(
            first.starts_with("otpauth://totp/Custos:alice?secret="),
            "{first}"
        );
        // Pending only: nothing active yet, so enrolling again needs no code.
        let row = identity_row(&server, &alice).await;
        assert!(row
            .try_get::<Option<Vec<u8>>, _>("totp_secret")
            .unwrap()
            .is_none());
        assert!(row
            .try_get::<Option<Vec<u8>>, _>("totp_pending")
            .unwrap()
            .is_some());
        let (_, shown) = call(
            &server,
            "GET",
            &format!("/api/v1/identities/{alice}"),
            &alice_token,
            None,
        )
        .await;
        assert_eq!(
            (shown["mfa"].as_bool(), shown["mfaPending"].as_bool()),
            (Some(false), Some(true)),
            "{shown}"
        );
        let (status, second) = call(&server, "POST", &mfa, &alice_token, Some(json!({}))).await;
        assert_eq!(status, 200, "{second}");
        let second = second["otpauthUri"].as_str().unwrap().to_string();
        // Only the identity itself enrols or confirms.
        let (status, body) = call(&server, "POST", &mfa, &bob_token, None).await;
        assert_eq!((status, code_of(&body)), (403, "forbidden"));
        let (status, body) = call(
            &server,
            "POST",
            &confirm,
            &bob_token,
            Some(json!({"code": code(&second, 0)})),
        )
        .await;
        assert_eq!((status, code_of(&body)), (403, "forbidden"));
        // A wrong code, or one of the replaced secret, confirms nothing.
        let right = code(&second, 0);
        for refused in [wrong(&right), code(&first, 0)] {
            if refused == right {
                continue;
            }
            let (status, body) = call(
                &server,
                "POST",
                &confirm,
                &alice_token,
                Some(json!({"code": refused})),
            )
            .await;
            assert_eq!((status, code_of(&body)), (403, "invalid_totp"), "{body}");
        }
        let (_, shown) = call(
            &server,
            "GET",
            &format!("/api/v1/identities/{alice}"),
            &alice_token,
            None,
        )
        .await;
        assert_eq!(shown["mfa"], false, "{shown}");
        let (status, body) = call(
            &server,
            "POST",
            &confirm,
            &alice_token,
            Some(json!({"code": right})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (_, shown) = call(
            &server,
            "GET",
            &format!("/api/v1/identities/{alice}"),
            &alice_token,
            None,
        )
        .await;
        assert_eq!(
            (shown["mfa"].as_bool(), shown["mfaPending"].as_bool()),
            (Some(true), Some(false)),
            "{shown}"
        );
        let row = identity_row(&server, &alice).await;
        assert!(row
            .try_get::<Option<Vec<u8>>, _>("totp_secret")
            .unwrap()
            .is_some());
        // Now re-enrolment needs a current code; the confirming one is used.
        let (status, body) = call(&server, "POST", &mfa, &alice_token, None).await;
        assert_eq!((status, code_of(&body)), (403, "mfa_required"), "{body}");
        let (status, body) = call(
            &server,
            "POST",
            &mfa,
            &alice_token,
            Some(json!({"totp": right})),
        )
        .await;
        assert_eq!((status, code_of(&body)), (403, "invalid_totp"), "{body}");
        let (status, body) = call(
            &server,
            "POST",
            &mfa,
            &alice_token,
            Some(json!({"totp": code(&second, 30)})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        // The new enrolment is pending; the confirmed secret stays active.
        let (_, shown) = call(
            &server,
            "GET",
            &format!("/api/v1/identities/{alice}"),
            &alice_token,
            None,
        )
        .await;
        assert_eq!(
            (shown["mfa"].as_bool(), shown["mfaPending"].as_bool()),
            (Some(true), Some(true)),
            "{shown}"
        );
        // Nothing to confirm for an identity that did not enrol.
        let bob_id = {
            let (_, listed) = call(&server, "GET", "/api/v1/identities", &root, None).await;
            listed["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|item| item["name"] == "bob")
                .unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (status, body) = call(
            &server,
            "POST",
            &format!("/api/v1/identities/{bob_id}/mfa/confirm"),
            &bob_token,
            Some(json!({"code": "123456"})),
        )
        .await;
        assert_eq!((status, code_of(&body)), (409, "mfa_not_pending"), "{body}");
        // Enrolment and confirmation are audited without any secret.
        let records = audit_of(&server, &root, "identity.mfa").await;
        assert!(records
            .iter()
            .any(|record| record["detail"]["stage"] == "confirmed"));
        let text = serde_json::to_string(&records).unwrap();
        assert!(
            !text.contains("otpauth")
                && !text.contains(
                    first
                        .split("secret=")
                        .nth(1)
                        .unwrap()
                        .split('&')
                        .next()
                        .unwrap()
                )
        );
        server.stop().await;
    }
}

fn code_of(body: &Value) -> &str {
    common::code(body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_totp_code_is_accepted_once_under_concurrency() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (alice, token) = server.identity(&root, "alice", "approver", None).await;
        let uri = enrol_and_confirm(&server, &alice, &token).await;
        // Eight re-enrolments at once with the same valid (next-step) code.
        let next = code(&uri, 30);
        let path = format!("/api/v1/identities/{alice}/mfa");
        let answers = futures::future::join_all(
            (0..8).map(|_| call(&server, "POST", &path, &token, Some(json!({"totp": next})))),
        )
        .await;
        let accepted = answers.iter().filter(|(status, _)| *status == 200).count();
        assert_eq!(
            accepted, 1,
            "{backend:?}: exactly one use of a code: {answers:?}"
        );
        for (status, body) in answers.iter().filter(|(status, _)| *status != 200) {
            assert_eq!((*status, code_of(body)), (403, "invalid_totp"), "{body}");
        }
        // The seven reuses are audited but are no guesses: nothing locks.
        let records = audit_eventually(&server, &root, "identity.mfa_failed", 7).await;
        assert!(
            records
                .iter()
                .all(|record| record["detail"]["reason"] == "reused"),
            "{records:?}"
        );
        let row = identity_row(&server, &alice).await;
        assert_eq!(row.try_get::<i64, _>("totp_failures").unwrap(), 0);
        assert_eq!(row.try_get::<i64, _>("totp_locked_until").unwrap(), 0);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_totp_codes_are_audited_and_lock_mfa() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (alice, token) = server.identity(&root, "alice", "approver", None).await;
        let uri = enrol_and_confirm(&server, &alice, &token).await;
        let path = format!("/api/v1/identities/{alice}/mfa");
        let next = code(&uri, 30);
        for _ in 0..5 {
            let (status, body) = call(
                &server,
                "POST",
                &path,
                &token,
                Some(json!({"totp": wrong(&next)})),
            )
            .await;
            assert_eq!((status, code_of(&body)), (403, "invalid_totp"), "{body}");
        }
        // Locked: even the right code is refused, before it is compared.
        let (status, body) =
            call(&server, "POST", &path, &token, Some(json!({"totp": next}))).await;
        assert_eq!(
            (status, code_of(&body)),
            (403, "mfa_locked"),
            "{backend:?}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("seconds"),
            "{body}"
        );
        // Each wrong code is audited in a transaction of its own, although
        // the enrolment it came with rolled back.
        let records = audit_eventually(&server, &root, "identity.mfa_failed", 5).await;
        assert_eq!(records.len(), 5, "{records:?}");
        assert!(records
            .iter()
            .all(|record| record["detail"]["reason"] == "wrong_code"));
        assert_eq!(
            records.last().unwrap()["detail"]["locked"],
            true,
            "{records:?}"
        );
        assert!(!serde_json::to_string(&records)
            .unwrap()
            .contains(&wrong(&next)));
        let row = identity_row(&server, &alice).await;
        assert!(
            row.try_get::<Option<Vec<u8>>, _>("totp_pending")
                .unwrap()
                .is_none(),
            "no enrolment was kept"
        );
        assert!(
            row.try_get::<i64, _>("totp_locked_until").unwrap() > now_seconds() * 1000 + 200_000
        );
        // When the lock has passed, the right code works and the count is
        // back to zero.
        let pool = pool(&server).await;
        sqlx::query("UPDATE identities SET totp_locked_until = 1 WHERE id = $1")
            .bind(&alice)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        for _ in 0..2 {
            let (status, _) = call(
                &server,
                "POST",
                &path,
                &token,
                Some(json!({"totp": wrong(&next)})),
            )
            .await;
            assert_eq!(status, 403);
        }
        audit_eventually(&server, &root, "identity.mfa_failed", 7).await;
        let (status, body) =
            call(&server, "POST", &path, &token, Some(json!({"totp": next}))).await;
        assert_eq!(status, 200, "{body}");
        let row = identity_row(&server, &alice).await;
        assert_eq!(
            row.try_get::<i64, _>("totp_failures").unwrap(),
            0,
            "a success resets the count"
        );
        server.stop().await;
    }
}

/// The `Retry-After` seconds of an answer's headers.
fn retry_after(head: &str) -> Option<u64> {
    head.lines().find_map(|line| {
        line.to_ascii_lowercase()
            .strip_prefix("retry-after: ")
            .and_then(|value| value.trim().parse().ok())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn login_is_throttled_before_the_password_hash_per_client_and_per_address() {
    for backend in BACKENDS {
        let server = start_with(
            backend,
            "rate_limit_per_sec = 1000\n[auth]\nlogin_per_client_per_min = 3\nlogin_per_ip_per_min = 12\n",
        )
        .await;
        // A cell of the address's budget comes back every 5 s: count what
        // may have come back while the test ran.
        let started = Instant::now();
        let root = server.root_token().await; // 1 of the address's 12
                                              // An unknown client id (with the shape of one): three attempts are
                                              // checked and refused, then the throttle answers without a check.
        let unknown = "cid_0000000000000000000000000000beef";
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let (status, body, head) = login(&server, unknown, "cs_guess").await;
            statuses.push((status, code_of(&body).to_string()));
            if status == 429 {
                let seconds = retry_after(&head).expect("Retry-After");
                assert!((1..=20).contains(&seconds), "{seconds}");
            }
        }
        assert_eq!(
            statuses,
            [
                (401, "invalid_credentials".to_string()),
                (401, "invalid_credentials".into()),
                (401, "invalid_credentials".into()),
                (429, "login_throttled".into()),
                (429, "login_throttled".into()),
            ],
            "{backend:?}"
        );
        // Text without the shape of a client id is checked, audited as
        // `client:malformed`, never as itself.
        for _ in 0..2 {
            let (status, _, _) = login(&server, "not-a-client-id", "cs_guess").await;
            assert_eq!(status, 401);
        }
        // Only what passed the throttle reached the database and the hash:
        // exactly three records for the unknown id (throttled attempts are
        // answered before the lookup and the Argon2 check that precede a
        // record).
        let records = audit_of(&server, &root, "auth.token").await;
        let of = |resource: &str| {
            records
                .iter()
                .filter(|record| record["resource"] == resource && record["outcome"] == "denied")
                .count()
        };
        assert_eq!(of(&format!("client:{unknown}")), 3, "{records:?}");
        assert_eq!(of("client:malformed"), 2, "{records:?}");
        let text = serde_json::to_string(&records).unwrap();
        assert!(!text.contains("not-a-client-id") && !text.contains("cs_guess"));
        // Per address: 1 + 5 + 2 used, 4 left; then even a fresh client id
        // (whose own budget is full) from this address is throttled.
        let mut passed = 0;
        let head = loop {
            let (status, body, head) = login(&server, &format!("cid_{passed:032x}"), "x").await;
            if status == 429 {
                assert_eq!(code_of(&body), "login_throttled", "{body}");
                break head;
            }
            assert_eq!(status, 401, "{body}");
            passed += 1;
            assert!(passed < 20, "the address was never throttled");
        };
        let came_back = started.elapsed().as_secs() / 5;
        assert!(
            passed >= 4 && passed <= 4 + came_back,
            "{backend:?}: {passed} attempts passed after 8 ({came_back} cells came back)"
        );
        assert!(retry_after(&head).is_some(), "{head}");
        // The right secret of a real identity waits like any other.
        let (status, _, _) =
            login(&server, &server.root_client_id, &server.root_client_secret).await;
        assert_eq!(status, 429);
        // The token already issued keeps working: only logins are throttled.
        let (status, _) = call(&server, "GET", "/api/v1/identities", &root, None).await;
        assert_eq!(status, 200);
        server.stop().await;
    }
}

/// A second replica on `server`'s database (seal mode `env`, same master
/// key; no bootstrap: the store has one).
async fn second_replica(server: &Server) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let seal = format!("[seal]\nmode = \"env\"\nmaster_key = \"{TEST_MASTER_KEY}\"\n");
    let mut replica = Server::start_configured(
        dir,
        server.database_url.clone(),
        &format!("dev_mode = true\nrate_limit_per_sec = 1000\n{seal}"),
        false,
    )
    .await;
    replica.root_client_id = server.root_client_id.clone();
    replica.root_client_secret = server.root_client_secret.clone();
    replica
}

/// Calls `path` on `replica` with `token` until it is refused; answers how
/// long after `since` the first refusal came.
async fn refused_after(replica: &Server, token: &str, path: &str, since: Instant) -> Duration {
    loop {
        let (status, body) = call(replica, "GET", path, token, None).await;
        if status == 401 || status == 403 {
            assert!(
                ["invalid_token", "identity_disabled"].contains(&code_of(&body)),
                "{body}"
            );
            return since.elapsed();
        }
        assert_eq!(status, 200, "{body}");
        assert!(since.elapsed() < Duration::from_secs(5), "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_by_another_replica_within_a_second() {
    let a = start(Backend::Postgres).await;
    let b = second_replica(&a).await;
    let root = a.root_token().await;
    for cut_off in ["revoke", "disable"] {
        let (id, token) = a
            .identity(&root, &format!("svc-{cut_off}"), "auditor", None)
            .await;
        let path = format!("/api/v1/identities/{id}");
        // Both replicas verified (and cached) the token just before.
        for replica in [&a, &b] {
            let (status, body) = call(replica, "GET", &path, &token, None).await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) = match cut_off {
            "revoke" => call(&a, "DELETE", &format!("{path}/tokens"), &root, None).await,
            _ => {
                call(
                    &a,
                    "POST",
                    &format!("{path}/disable"),
                    &root,
                    Some(json!({})),
                )
                .await
            }
        };
        assert_eq!(status, 200, "{body}");
        let revoked = Instant::now();
        // This replica refuses at once; the other within its cache's second.
        let (status, body) = call(&a, "GET", &path, &token, None).await;
        assert_eq!(
            (status, code_of(&body)),
            (401, "invalid_token"),
            "{cut_off}: {body}"
        );
        let elapsed = refused_after(&b, &token, &path, revoked).await;
        assert!(
            elapsed < Duration::from_millis(1200),
            "{cut_off}: replica B accepted the token for {elapsed:?}"
        );
    }
    b.halt().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_identity_cannot_log_in_or_use_its_tokens() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (id, client_id, secret) = create(&server, &root, "svc", "service", None).await;
        let (status, body, _) = login(&server, &client_id, &secret).await;
        assert_eq!(status, 200, "{body}");
        let token = body["accessToken"].as_str().unwrap().to_string();
        let (status, disabled) = call(
            &server,
            "POST",
            &format!("/api/v1/identities/{id}/disable"),
            &root,
            None,
        )
        .await;
        assert_eq!(status, 200, "{disabled}");
        assert_eq!(
            (
                disabled["status"].as_str(),
                disabled["revokedTokens"].as_u64()
            ),
            (Some("disabled"), Some(1))
        );
        let (status, body) = call(&server, "GET", "/api/v1/identities", &token, None).await;
        assert_eq!((status, code_of(&body)), (401, "invalid_token"), "{body}");
        // The right secret learns it is disabled; a wrong one learns nothing.
        let (status, body, _) = login(&server, &client_id, &secret).await;
        assert_eq!(
            (status, code_of(&body)),
            (403, "identity_disabled"),
            "{body}"
        );
        let (status, body, _) = login(&server, &client_id, "cs_wrong").await;
        assert_eq!(
            (status, code_of(&body)),
            (401, "invalid_credentials"),
            "{body}"
        );
        // A token row left behind (a login racing the disabling) is refused.
        let stray = "cst_stray-token-of-a-disabled-identity";
        let pool = pool(&server).await;
        sqlx::query(
            "INSERT INTO tokens (token_hash, identity_id, org_id, expires_at, id, created_at, ip) \
             SELECT $1, id, org_id, $2, 'tok_stray', 0, '' FROM identities WHERE id = $3",
        )
        .bind(custos_control_plane::kernel::auth::token_hash(stray))
        .bind(i64::MAX)
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let (status, body) = call(&server, "GET", "/api/v1/identities", stray, None).await;
        assert_eq!(
            (status, code_of(&body)),
            (403, "identity_disabled"),
            "{body}"
        );
        // Enabled again (a platform admin is not held by the approval), it
        // logs in.
        let (status, body) = call(
            &server,
            "POST",
            &format!("/api/v1/identities/{id}/enable"),
            &root,
            Some(json!({})),
        )
        .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("active")),
            "{body}"
        );
        let (status, _, _) = login(&server, &client_id, &secret).await;
        assert_eq!(status, 200);
        let records = audit_of(&server, &root, "identity.disable").await;
        assert_eq!(records.len(), 1, "{records:?}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn role_change_waits_for_an_admin_approval() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (_, admins, (service, _)) = org_with_admins(&server, &root, "acme").await;
        let (first, second) = (&admins[0].1, &admins[1].1);
        let path = format!("/api/v1/identities/{service}");
        let (status, pending) = call(
            &server,
            "PUT",
            &path,
            first,
            Some(json!({"role": "operator"})),
        )
        .await;
        assert_eq!(
            (status, pending["status"].as_str()),
            (202, Some("pending_approval")),
            "{pending}"
        );
        let (_, shown) = call(&server, "GET", &path, first, None).await;
        assert_eq!(
            shown["role"], "service",
            "nothing changes before the approval"
        );
        let (status, body) = approve(&server, first, &pending).await;
        assert_eq!((status, code_of(&body)), (403, "self_approval"), "{body}");
        let (status, body) = approve(&server, second, &pending).await;
        assert_eq!(status, 200, "{body}");
        let done = operation(&server, first, &pending).await;
        assert_eq!(done["status"], "executed", "{done}");
        assert_eq!(done["result"]["role"], "operator", "{done}");
        let (_, shown) = call(&server, "GET", &path, first, None).await;
        assert_eq!(shown["role"], "operator");
        // A role that does not exist is refused before any approval.
        let (status, body) =
            call(&server, "PUT", &path, first, Some(json!({"role": "king"}))).await;
        assert_eq!((status, code_of(&body)), (422, "invalid_role"));
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_created_after_approval_gets_its_secret_once_from_its_creator() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (org, admins, _) = org_with_admins(&server, &root, "acme").await;
        let (first, second) = (&admins[0].1, &admins[1].1);
        let (status, pending) = call(
            &server,
            "POST",
            "/api/v1/identities",
            first,
            Some(json!({"name": "ops", "role": "operator"})),
        )
        .await;
        assert_eq!(
            (status, pending["status"].as_str()),
            (202, Some("pending_approval")),
            "{pending}"
        );
        let (status, body) = approve(&server, second, &pending).await;
        assert_eq!(status, 200, "{body}");
        let done = operation(&server, first, &pending).await;
        assert_eq!(done["status"], "executed", "{done}");
        let id = done["result"]["id"].as_str().unwrap().to_string();
        let client_id = done["result"]["clientId"].as_str().unwrap().to_string();
        assert_eq!(done["result"]["orgId"], org.as_str());
        assert_eq!(done["result"]["createdBy"], admins[0].0.as_str());
        assert!(
            !done.to_string().contains("cs_"),
            "no secret in the operation: {done}"
        );
        // No secret exists yet: nothing logs in.
        let (status, _, _) = login(&server, &client_id, "").await;
        assert_eq!(status, 401);
        // Only the creator gets it, once.
        let pickup = format!("/api/v1/identities/{id}/credentials");
        let (status, body) = call(&server, "POST", &pickup, second, None).await;
        assert_eq!((status, code_of(&body)), (404, "not_found"), "{body}");
        let (status, issued) = call(&server, "POST", &pickup, first, None).await;
        assert_eq!(status, 200, "{issued}");
        let secret = issued["clientSecret"].as_str().unwrap().to_string();
        assert_eq!(issued["clientId"], client_id.as_str());
        let (status, body) = call(&server, "POST", &pickup, first, None).await;
        assert_eq!(
            (status, code_of(&body)),
            (409, "credentials_issued"),
            "{body}"
        );
        let (status, body, _) = login(&server, &client_id, &secret).await;
        assert_eq!(status, 200, "{body}");
        // The store never held the secret, sealed or not.
        let pool = pool(&server).await;
        for table in ["operations", "audit_log"] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
                .fetch_all(&pool)
                .await;
            if let Ok(rows) = rows {
                for row in rows {
                    for index in 0..row.len() {
                        if let Ok(text) = row.try_get::<String, _>(index) {
                            assert!(!text.contains(&secret), "{table} holds the secret");
                        }
                    }
                }
            }
        }
        pool.close().await;
        let row = identity_row(&server, &id).await;
        assert!(row
            .try_get::<String, _>("secret_hash")
            .unwrap()
            .starts_with("$argon2id$"));
        assert_eq!(row.try_get::<String, _>("created_by").unwrap(), admins[0].0);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_identity_waits_for_two_approvals_and_removes_its_tokens() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (org, admins, (service, service_token)) = org_with_admins(&server, &root, "acme").await;
        let (_, approver) = server
            .identity(&root, "acme-approver", "approver", Some(&org))
            .await;
        let (first, second) = (&admins[0].1, &admins[1].1);
        let path = format!("/api/v1/identities/{service}");
        let (status, pending) = call(&server, "DELETE", &path, first, None).await;
        assert_eq!(
            (status, pending["status"].as_str()),
            (202, Some("pending_approval")),
            "{pending}"
        );
        let (_, vote) = approve(&server, second, &pending).await;
        assert_eq!(vote["status"], "pending", "one of two approvals: {vote}");
        let (status, _) = call(&server, "GET", "/api/v1/wallets", &service_token, None).await;
        assert_eq!(status, 200, "still usable before the second approval");
        let (_, vote) = approve(&server, &approver, &pending).await;
        assert_eq!(vote["status"], "approved", "{vote}");
        let done = operation(&server, first, &pending).await;
        assert_eq!(
            (done["status"].as_str(), done["result"]["deleted"].as_bool()),
            (Some("executed"), Some(true)),
            "{done}"
        );
        let (status, body) = call(&server, "GET", "/api/v1/wallets", &service_token, None).await;
        assert_eq!((status, code_of(&body)), (401, "invalid_token"), "{body}");
        let (status, _) = call(&server, "GET", &path, first, None).await;
        assert_eq!(status, 404);
        let pool = pool(&server).await;
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE identity_id = $1")
            .bind(&service)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("n");
        pool.close().await;
        assert_eq!(left, 0);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mfa_reset_is_approved_and_lets_the_identity_enrol_again() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (org, admins, _) = org_with_admins(&server, &root, "acme").await;
        let (alice, alice_token) = server
            .identity(&root, "acme-alice", "approver", Some(&org))
            .await;
        enrol_and_confirm(&server, &alice, &alice_token).await;
        let reset = format!("/api/v1/identities/{alice}/mfa/reset");
        let (status, pending) = call(&server, "POST", &reset, &admins[0].1, None).await;
        assert_eq!(
            (status, pending["status"].as_str()),
            (202, Some("pending_approval")),
            "{pending}"
        );
        let (status, body) = approve(&server, &admins[1].1, &pending).await;
        assert_eq!(status, 200, "{body}");
        let done = operation(&server, &admins[0].1, &pending).await;
        assert_eq!(
            (done["status"].as_str(), done["result"]["mfa"].as_bool()),
            (Some("executed"), Some(false)),
            "{done}"
        );
        // Enrolling again needs no code now.
        let (status, body) = call(
            &server,
            "POST",
            &format!("/api/v1/identities/{alice}/mfa"),
            &alice_token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_admins_are_changed_only_by_platform_admins_and_never_all_removed() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let root_identity = root_id(&server, &root).await;
        let (_, admin) = server.identity(&root, "org-admin", "admin", None).await;
        let root_path = format!("/api/v1/identities/{root_identity}");
        for (method, path, body) in [
            ("POST", format!("{root_path}/disable"), None),
            ("DELETE", root_path.clone(), None),
            ("PUT", root_path.clone(), Some(json!({"role": "auditor"}))),
            ("POST", format!("{root_path}/mfa/reset"), None),
            ("DELETE", format!("{root_path}/tokens"), None),
        ] {
            let (status, answer) = call(&server, method, &path, &admin, body).await;
            assert_eq!(
                (status, code_of(&answer)),
                (403, "platform_admin_protected"),
                "{method} {path}: {answer}"
            );
        }
        // The only platform admin cannot remove itself.
        for (method, path) in [
            ("POST", format!("{root_path}/disable")),
            ("DELETE", root_path.clone()),
        ] {
            let (status, answer) = call(&server, method, &path, &root, None).await;
            assert_eq!(
                (status, code_of(&answer)),
                (409, "last_platform_admin"),
                "{answer}"
            );
        }
        // Two platform admins disabling each other at once: one stays.
        let (second, second_token) = server.identity(&root, "second-root", "admin", None).await;
        let pool = pool(&server).await;
        sqlx::query("UPDATE identities SET platform_admin = 1 WHERE id = $1")
            .bind(&second)
            .execute(&pool)
            .await
            .unwrap();
        let (one, other) = futures::future::join(
            call(
                &server,
                "POST",
                &format!("/api/v1/identities/{second}/disable"),
                &root,
                None,
            ),
            call(
                &server,
                "POST",
                &format!("{root_path}/disable"),
                &second_token,
                None,
            ),
        )
        .await;
        let succeeded = [&one, &other]
            .iter()
            .filter(|(status, _)| *status == 200)
            .count();
        assert_eq!(succeeded, 1, "{backend:?}: {one:?} {other:?}");
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM identities WHERE platform_admin = 1 AND status = 'active'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
        pool.close().await;
        assert_eq!(active, 1, "{backend:?}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn another_orgs_identities_are_not_found() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let root_identity = root_id(&server, &root).await;
        let (_, admins, _) = org_with_admins(&server, &root, "acme").await;
        let admin = &admins[0].1;
        let base = format!("/api/v1/identities/{root_identity}");
        for (method, path, body) in [
            ("GET", base.clone(), None),
            ("PUT", base.clone(), Some(json!({"role": "auditor"}))),
            ("DELETE", base.clone(), None),
            ("POST", format!("{base}/disable"), None),
            ("POST", format!("{base}/enable"), None),
            ("GET", format!("{base}/tokens"), None),
            ("DELETE", format!("{base}/tokens"), None),
            ("DELETE", format!("{base}/tokens/tok_x"), None),
            ("POST", format!("{base}/mfa/reset"), None),
            ("POST", format!("{base}/credentials"), None),
        ] {
            let (status, answer) = call(&server, method, &path, admin, body).await;
            assert_eq!(
                (status, code_of(&answer)),
                (404, "not_found"),
                "{method} {path}: {answer}"
            );
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_rotates_only_its_own_secret_and_its_old_tokens_go() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (id, client_id, secret) = create(&server, &root, "svc", "service", None).await;
        let (_, body, _) = login(&server, &client_id, &secret).await;
        let token = body["accessToken"].as_str().unwrap().to_string();
        let path = format!("/api/v1/identities/{id}/rotate-secret");
        let (status, body) = call(
            &server,
            "POST",
            &path,
            &root,
            Some(json!({"clientSecret": secret})),
        )
        .await;
        assert_eq!(
            (status, code_of(&body)),
            (403, "forbidden"),
            "not even an admin sets another's secret"
        );
        let (status, body) = call(
            &server,
            "POST",
            &path,
            &token,
            Some(json!({"clientSecret": "cs_wrong"})),
        )
        .await;
        assert_eq!(
            (status, code_of(&body)),
            (403, "invalid_credentials"),
            "{body}"
        );
        let (status, rotated) = call(
            &server,
            "POST",
            &path,
            &token,
            Some(json!({"clientSecret": secret})),
        )
        .await;
        assert_eq!(status, 200, "{rotated}");
        let new_secret = rotated["clientSecret"].as_str().unwrap();
        assert_ne!(new_secret, secret);
        let (status, _) = call(&server, "GET", "/api/v1/wallets", &token, None).await;
        assert_eq!(status, 401, "the tokens of the old secret are revoked");
        let (status, _, _) = login(&server, &client_id, &secret).await;
        assert_eq!(status, 401);
        let (status, _, _) = login(&server, &client_id, new_secret).await;
        assert_eq!(status, 200);
        let records = audit_of(&server, &root, "identity.rotate_secret").await;
        assert!(!serde_json::to_string(&records)
            .unwrap()
            .contains(new_secret));
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_listed_without_the_token_and_revoked_one_by_one() {
    for backend in BACKENDS {
        let server = start(backend).await;
        let root = server.root_token().await;
        let (id, client_id, secret) = create(&server, &root, "svc", "service", None).await;
        let (_, other) = server.identity(&root, "other", "service", None).await;
        let mut tokens = Vec::new();
        for _ in 0..2 {
            let (_, body, _) = login(&server, &client_id, &secret).await;
            tokens.push(body["accessToken"].as_str().unwrap().to_string());
        }
        let path = format!("/api/v1/identities/{id}/tokens");
        let (status, listed) = call(&server, "GET", &path, &tokens[0], None).await;
        assert_eq!(status, 200, "{listed}");
        let items = listed["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{listed}");
        for item in items {
            assert!(item["id"].as_str().unwrap().starts_with("tok_"));
            assert_eq!(item["ip"], "127.0.0.1");
            assert!(item["expiresAt"].as_i64().unwrap() > item["createdAt"].as_i64().unwrap());
        }
        assert!(!listed.to_string().contains("cst_"), "{listed}");
        // Another service identity may not read or revoke them.
        let (status, _) = call(&server, "GET", &path, &other, None).await;
        assert_eq!(status, 403);
        let (status, _) = call(&server, "DELETE", &path, &other, None).await;
        assert_eq!(status, 403);
        // An admin revokes one; the other keeps working.
        let first_id = items[0]["id"].as_str().unwrap();
        let (status, body) = call(
            &server,
            "DELETE",
            &format!("{path}/{first_id}"),
            &root,
            None,
        )
        .await;
        assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)), "{body}");
        let (status, body) = call(
            &server,
            "DELETE",
            &format!("{path}/{first_id}"),
            &root,
            None,
        )
        .await;
        assert_eq!((status, code_of(&body)), (404, "not_found"));
        let survivors: Vec<u16> =
            futures::future::join_all(tokens.iter().map(|token| async {
                call(&server, "GET", "/api/v1/wallets", token, None).await.0
            }))
            .await;
        assert_eq!(
            survivors.iter().filter(|status| **status == 200).count(),
            1,
            "{survivors:?}"
        );
        // The identity revokes all of its own.
        let live = &tokens[survivors.iter().position(|status| *status == 200).unwrap()];
        let (status, body) = call(&server, "DELETE", &path, live, None).await;
        assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)), "{body}");
        let (status, _) = call(&server, "GET", "/api/v1/wallets", live, None).await;
        assert_eq!(status, 401);
        server.stop().await;
    }
}
