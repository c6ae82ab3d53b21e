//! Seal, unseal and the keyring, through the HTTP API and the library, on
//! SQLite and on PostgreSQL: Shamir init and unseal (any K of N, K−1 do not,
//! a wrong share is detected), the sealed gate, restart → sealed → unseal,
//! PKCS#11 auto-unseal on SoftHSM2, and the binding of every sealed record
//! to its org, kind, row and key version.

mod common;

use common::*;
use custos_control_plane::kernel::config::SealMode;
use custos_control_plane::kernel::db::Db;
use custos_control_plane::kernel::keyring::{
    shamir, Keyring, KeyringError, ROTATE_AFTER_ENCRYPTIONS,
};
use custos_protocol::seal::SealingKey;
use serde_json::{json, Value};

const SHAMIR: &str = "[seal]\nmode = \"shamir\"\n";

async fn fresh_store(backend: Backend) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("custos.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    (dir, url)
}

async fn post(server: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let (status, body, _) = server
        .request("POST", path, token, Some(&body.to_string()))
        .await;
    (status, body)
}

async fn unseal(server: &Server, share: &str) -> (u16, Value) {
    post(server, "/api/v1/sys/unseal", None, json!({"share": share})).await
}

/// Gives `shares` one per call; answers the last answer.
async fn unseal_with(server: &Server, shares: &[&str]) -> (u16, Value) {
    let mut last = (0, Value::Null);
    for share in shares {
        last = unseal(server, share).await;
    }
    last
}

async fn seal_as_root(server: &Server) {
    let root = server.root_token().await;
    let (status, body) = post(server, "/api/v1/sys/seal", Some(&root), json!({})).await;
    assert_eq!((status, body["sealed"].clone()), (200, json!(true)));
}

#[tokio::test(flavor = "multi_thread")]
async fn shamir_init_then_any_three_of_five_shares_unseal_and_two_do_not() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (dir, url) = fresh_store(backend).await;
        let mut server = Server::start_configured(dir, url, SHAMIR, false).await;

        // Before init: only the sys routes answer.
        let (status, health, _) = server
            .request("GET", "/api/v1/sys/health", None, None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            (health["sealed"].clone(), health["initialized"].clone()),
            (json!(true), json!(false))
        );
        let (status, body, _) = server.request("GET", "/api/v1/wallets", None, None).await;
        assert_eq!((status, code(&body)), (503, "not_initialized"));
        let (status, body) = post(
            &server,
            "/api/v1/sys/init",
            None,
            json!({"shares": 5, "threshold": 1}),
        )
        .await;
        assert_eq!((status, code(&body)), (422, "invalid_seal_parameters"));
        let (status, body) = post(&server, "/api/v1/sys/init", None, json!({"hsm": true})).await;
        assert_eq!((status, code(&body)), (400, "seal_mode_mismatch"));

        let (status, init) = post(
            &server,
            "/api/v1/sys/init",
            None,
            json!({"shares": 5, "threshold": 3}),
        )
        .await;
        assert_eq!(status, 200, "{init}");
        let shares: Vec<String> = init["unsealShares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|share| share.as_str().unwrap().to_string())
            .collect();
        assert_eq!(shares.len(), 5);
        assert_eq!(init["sealed"], true);
        server.root_client_id = init["rootClientId"].as_str().unwrap().to_string();
        server.root_client_secret = init["rootClientSecret"].as_str().unwrap().to_string();
        let (status, body) = post(
            &server,
            "/api/v1/sys/init",
            None,
            json!({"shares": 5, "threshold": 3}),
        )
        .await;
        assert_eq!((status, code(&body)), (409, "already_initialized"));

        // Sealed: the API is closed, tokens included.
        let (status, body) = post(
            &server,
            "/api/v1/auth/token",
            None,
            json!({"clientId": server.root_client_id, "clientSecret": server.root_client_secret}),
        )
        .await;
        assert_eq!((status, code(&body)), (503, "sealed"));

        // Bad shares: malformed, repeated, and a well-formed wrong one.
        let (status, body) = unseal(&server, "not-a-share").await;
        assert_eq!((status, code(&body)), (400, "invalid_unseal_share"));
        let (status, body) = unseal(&server, &shares[0]).await;
        assert_eq!(status, 200);
        assert_eq!(
            (
                body["sealed"].clone(),
                body["progress"].clone(),
                body["threshold"].clone()
            ),
            (json!(true), json!(1), json!(3))
        );
        let (status, body) = unseal(&server, &shares[0]).await;
        assert_eq!((status, code(&body)), (409, "duplicate_unseal_share"));
        let (status, body) = unseal(&server, &shares[1]).await;
        assert_eq!((status, body["progress"].clone()), (200, json!(2)));
        let (status, body) =
            post(&server, "/api/v1/sys/unseal", None, json!({"reset": true})).await;
        assert_eq!((status, body["progress"].clone()), (200, json!(0)));
        // A share of another secret with x = 3: well-formed, checksum right.
        let foreign = shamir::split(&[9u8; 32], 3, 5, &mut rand_core::OsRng).unwrap();
        let (status, body) =
            unseal_with(&server, &[&shares[0], &shares[1], &foreign[2].to_text()]).await;
        assert_eq!((status, code(&body)), (400, "unseal_failed"), "{body}");
        let (_, status_body, _) = server
            .request("GET", "/api/v1/sys/seal-status", None, None)
            .await;
        assert_eq!(
            (
                status_body["sealed"].clone(),
                status_body["progress"].clone()
            ),
            (json!(true), json!(0))
        );

        // Every 3 of the 5 unseal; sealing again in between. Two never do.
        for a in 0..5 {
            for b in a + 1..5 {
                let (status, body) = unseal_with(&server, &[&shares[a], &shares[b]]).await;
                assert_eq!((status, body["sealed"].clone()), (200, json!(true)));
                for c in b + 1..5 {
                    let (status, body) = unseal(&server, &shares[c]).await;
                    assert_eq!(
                        (status, body["sealed"].clone()),
                        (200, json!(false)),
                        "shares {a}, {b}, {c}: {body}"
                    );
                    seal_as_root(&server).await;
                    let (_, body) = unseal_with(&server, &[&shares[a], &shares[b]]).await;
                    assert_eq!(body["sealed"], true);
                }
                post(&server, "/api/v1/sys/unseal", None, json!({"reset": true})).await;
            }
        }

        // Unsealed, a service identity cannot seal; a sealed replica
        // refuses it with 503 before looking at the token.
        unseal_with(&server, &[&shares[4], &shares[2], &shares[0]]).await;
        let root = server.root_token().await;
        let (_, service) = server.identity(&root, "svc", "service", None).await;
        let (status, body) = post(&server, "/api/v1/sys/seal", Some(&service), json!({})).await;
        assert_eq!((status, code(&body)), (403, "forbidden"));

        // Restart: sealed again, and the shares still unseal.
        let (root_id, root_secret) = (
            server.root_client_id.clone(),
            server.root_client_secret.clone(),
        );
        let (dir, url) = server.halt().await;
        let mut server = Server::start_configured(dir, url, SHAMIR, false).await;
        server.root_client_id = root_id;
        server.root_client_secret = root_secret;
        let (_, health, _) = server
            .request("GET", "/api/v1/sys/health", None, None)
            .await;
        assert_eq!(
            (health["sealed"].clone(), health["initialized"].clone()),
            (json!(true), json!(true))
        );
        let (status, body) = unseal_with(&server, &[&shares[3], &shares[1], &shares[4]]).await;
        assert_eq!((status, body["sealed"].clone()), (200, json!(false)));
        let root = server.root_token().await;

        // Init, unseals, the failed unseal and seals are in the audit chain.
        let (_, audit, _) = server
            .request("GET", "/api/v1/audit?limit=500", Some(&root), None)
            .await;
        let actions: Vec<(String, String)> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                (
                    item["action"].as_str().unwrap_or("").to_string(),
                    item["outcome"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        for expected in [
            ("system.init", "success"),
            ("system.unseal", "success"),
            ("system.unseal", "failure"),
            ("system.seal", "success"),
        ] {
            assert!(
                actions
                    .iter()
                    .any(|(action, outcome)| (action.as_str(), outcome.as_str()) == expected),
                "{expected:?} missing from {actions:?}"
            );
        }
        let (_, verify, _) = server
            .request("GET", "/api/v1/audit/verify", Some(&root), None)
            .await;
        assert_eq!(verify["valid"], true, "{verify}");
        // No share and no root secret reached the audit.
        let text = audit.to_string();
        for share in &shares {
            assert!(!text.contains(share.as_str()));
        }
        server.stop().await;
    }
}

// ---- PKCS#11 auto-unseal ---------------------------------------------------

fn hsm_seal(key_label: &str) -> String {
    softhsm();
    format!(
        "[seal]\nmode = \"hsm\"\n[seal.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\n\
         token_label = \"{TOKEN}\"\npin = \"{TOKEN_PIN}\"\nkey_label = \"{key_label}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn hsm_init_unseals_at_once_and_every_restart_unseals_from_the_token() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let key_label = format!("custos-master-{backend:?}-{}", std::process::id());
        let (dir, url) = fresh_store(backend).await;
        let mut server = Server::start_configured(dir, url, &hsm_seal(&key_label), false).await;
        let (status, body) = post(
            &server,
            "/api/v1/sys/init",
            None,
            json!({"shares": 5, "threshold": 3}),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "seal_mode_mismatch"));
        let (status, init) = post(&server, "/api/v1/sys/init", None, json!({"hsm": true})).await;
        assert_eq!(status, 200, "{init}");
        assert_eq!(init["unsealShares"], json!([]));
        assert_eq!(init["sealed"], false);
        server.root_client_id = init["rootClientId"].as_str().unwrap().to_string();
        server.root_client_secret = init["rootClientSecret"].as_str().unwrap().to_string();
        let root = server.root_token().await;
        // Something sealed under the org's root key: a TOTP secret (an
        // enrolment waiting for its first code).
        let identity = root_identity(&server, &root).await;
        let (status, body) = post(
            &server,
            &format!("/api/v1/identities/{identity}/mfa"),
            Some(&root),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{body}");

        let (root_id, root_secret) = (
            server.root_client_id.clone(),
            server.root_client_secret.clone(),
        );
        let (dir, url) = server.halt().await;
        // Another process's view: the store alone opens nothing; the token's
        // key unseals and the TOTP secret opens.
        let db = Db::connect(&url).await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        let row = sqlx::query("SELECT org_id, totp_pending FROM identities WHERE id = $1")
            .bind(&identity)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let org: String = sqlx::Row::get(&row, "org_id");
        let sealed: Vec<u8> = sqlx::Row::get(&row, "totp_pending");
        let keyring = Keyring::load(&mut conn, SealMode::Hsm).await.unwrap();
        assert!(matches!(
            keyring
                .open_record(&mut conn, &org, "totp_pending", &identity, &sealed)
                .await,
            Err(KeyringError::Sealed)
        ));
        let config = custos_control_plane::kernel::config::Config::parse(
            &format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"/nonexistent\"\n{}",
                hsm_seal(&key_label)
            ),
            [],
        )
        .unwrap();
        keyring
            .unseal_hsm(&config.pkcs11_master_key().unwrap())
            .unwrap();
        let secret = keyring
            .open_record(&mut conn, &org, "totp_pending", &identity, &sealed)
            .await
            .unwrap();
        assert_eq!(secret.len(), 20, "an RFC 6238 secret of 160 bits");
        drop(conn);
        db.close().await;

        let mut server = Server::start_configured(dir, url, &hsm_seal(&key_label), false).await;
        server.root_client_id = root_id;
        server.root_client_secret = root_secret;
        let (_, health, _) = server
            .request("GET", "/api/v1/sys/health", None, None)
            .await;
        assert_eq!(
            health["sealed"], false,
            "auto-unsealed from the token: {health}"
        );
        let root = server.root_token().await;
        let (status, body, _) = server
            .request("GET", "/api/v1/identities", Some(&root), None)
            .await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    }
}

async fn root_identity(server: &Server, root: &str) -> String {
    let (_, body, _) = server
        .request("GET", "/api/v1/identities", Some(root), None)
        .await;
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["name"] == "root")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---- records: binding and rotation, on the library -------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_record_opens_only_for_its_own_org_kind_and_row_and_survives_rotation() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (_dir, url) = fresh_store(backend).await;
        let db = Db::connect(&url).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let org_a = custos_control_plane::kernel::orgs::create_org(&db, &mut tx, "a")
            .await
            .unwrap();
        let org_b = custos_control_plane::kernel::orgs::create_org(&db, &mut tx, "b")
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let mut conn = db.pool().acquire().await.unwrap();
        let keyring = Keyring::load(&mut conn, SealMode::Env).await.unwrap();
        assert!(matches!(
            keyring
                .seal_record(&mut conn, &org_a, "secret", "sec_1", b"x")
                .await,
            Err(KeyringError::NotInitialized | KeyringError::Sealed)
        ));
        keyring
            .init_env(&mut conn, SealingKey::generate(&mut rand_core::OsRng))
            .await
            .unwrap();
        let blob = keyring
            .seal_record(&mut conn, &org_a, "secret", "sec_1", b"the value")
            .await
            .unwrap();
        assert!(!blob.windows(9).any(|window| window == b"the value"));
        let opened = keyring
            .open_record(&mut conn, &org_a, "secret", "sec_1", &blob)
            .await
            .unwrap();
        assert_eq!(opened.as_slice(), b"the value");
        // The same blob in another row, kind or org does not open.
        for (org, kind, id) in [
            (&org_a, "secret", "sec_2"),
            (&org_a, "totp", "sec_1"),
            (&org_b, "secret", "sec_1"),
        ] {
            assert!(
                matches!(
                    keyring.open_record(&mut conn, org, kind, id, &blob).await,
                    Err(KeyringError::Corrupt(_))
                ),
                "{org} {kind} {id}"
            );
        }

        // A version that reached its encryption budget is replaced; records
        // of the old version still open.
        sqlx::query("UPDATE org_root_keys SET encryptions = $1 WHERE org_id = $2")
            .bind(ROTATE_AFTER_ENCRYPTIONS)
            .bind(&org_a)
            .execute(&mut *conn)
            .await
            .unwrap();
        let newer = keyring
            .seal_record(&mut conn, &org_a, "secret", "sec_3", b"later")
            .await
            .unwrap();
        assert_eq!(u32::from_be_bytes(newer[1..5].try_into().unwrap()), 2);
        assert_eq!(u32::from_be_bytes(blob[1..5].try_into().unwrap()), 1);
        assert_eq!(
            keyring
                .open_record(&mut conn, &org_a, "secret", "sec_1", &blob)
                .await
                .unwrap()
                .as_slice(),
            b"the value"
        );
        assert_eq!(
            keyring
                .open_record(&mut conn, &org_a, "secret", "sec_3", &newer)
                .await
                .unwrap()
                .as_slice(),
            b"later"
        );
        // Sealed: nothing opens.
        keyring.seal();
        assert!(matches!(
            keyring
                .open_record(&mut conn, &org_a, "secret", "sec_1", &blob)
                .await,
            Err(KeyringError::Sealed)
        ));
        drop(conn);
        db.close().await;
        if backend == Backend::Postgres {
            drop_postgres_database(&url).await;
        }
    }
}

// ---- the operator CLI ------------------------------------------------------

/// Runs `custos operator …` (the real binary) against `server`.
async fn operator(server: &Server, args: &[&str], stdin: Option<&str>) -> (bool, Value, String) {
    use tokio::io::AsyncWriteExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_custos"));
    command
        .arg("operator")
        .arg("--addr")
        .arg(format!("http://{}", server.address))
        .args(args)
        .env_remove("CUSTOS_UNSEAL_SHARE")
        .env_remove("CUSTOS_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    (
        output.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_init_unseal_and_seal_with_the_cli() {
    let (dir, url) = fresh_store(Backend::Sqlite).await;
    let server = Server::start_configured(dir, url, SHAMIR, false).await;
    let (ok, init, stderr) = operator(
        &server,
        &["init", "--shares", "3", "--threshold", "2"],
        None,
    )
    .await;
    assert!(ok, "{stderr}");
    let shares: Vec<String> = init["unsealShares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|share| share.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 3);
    let (ok, status, _) = operator(&server, &["status"], None).await;
    assert!(ok);
    assert_eq!(
        (status["sealed"].clone(), status["threshold"].clone()),
        (json!(true), json!(2))
    );
    // A wrong share fails the command with the API's code.
    let (ok, _, stderr) = operator(&server, &["unseal", "--share", "nonsense"], None).await;
    assert!(!ok && stderr.contains("invalid_unseal_share"), "{stderr}");
    // One share as an argument, one on standard input (no shell history).
    let (ok, answer, _) = operator(&server, &["unseal", "--share", &shares[2]], None).await;
    assert!(
        ok && answer["sealed"] == true && answer["progress"] == 1,
        "{answer}"
    );
    let (ok, answer, stderr) =
        operator(&server, &["unseal"], Some(&format!("{}\n", shares[0]))).await;
    assert!(ok && answer["sealed"] == false, "{answer} {stderr}");
    let token = server
        .token(
            init["rootClientId"].as_str().unwrap(),
            init["rootClientSecret"].as_str().unwrap(),
        )
        .await;
    let (ok, answer, stderr) = operator(&server, &["seal", "--token", &token], None).await;
    assert!(ok && answer["sealed"] == true, "{answer} {stderr}");
    let (_, status, _) = operator(&server, &["status"], None).await;
    assert_eq!(status["sealed"], true);
    server.stop().await;
}

async fn coordinator_public_key(server: &Server) -> (u16, Value) {
    let (status, body, _) = server
        .request("GET", "/api/v1/sys/coordinator-key", None, None)
        .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_key_lives_under_the_keyring_and_starts_only_when_unsealed() {
    let (dir, url) = fresh_store(Backend::Sqlite).await;
    let mut server = Server::start_configured(dir, url, SHAMIR, false).await;
    let (status, body) = coordinator_public_key(&server).await;
    assert_eq!((status, code(&body)), (503, "not_initialized"));
    let (_, init) = post(
        &server,
        "/api/v1/sys/init",
        None,
        json!({"shares": 3, "threshold": 2}),
    )
    .await;
    let shares: Vec<String> = init["unsealShares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|share| share.as_str().unwrap().to_string())
        .collect();
    server.root_client_id = init["rootClientId"].as_str().unwrap().to_string();
    server.root_client_secret = init["rootClientSecret"].as_str().unwrap().to_string();
    let (status, body) = coordinator_public_key(&server).await;
    assert_eq!((status, code(&body)), (503, "sealed"));
    unseal_with(&server, &[&shares[0], &shares[2]]).await;
    let (status, first) = coordinator_public_key(&server).await;
    assert_eq!(status, 200, "{first}");
    let public = first["publicKey"].as_str().unwrap().to_string();
    assert_eq!(public.len(), 64);

    // No key file; the store holds it wrapped by the master key only.
    assert!(!server.dir.path().join("coordinator.key").exists());
    let db = Db::connect(&server.database_url).await.unwrap();
    let row = sqlx::query("SELECT value FROM meta WHERE key = 'secret/coordinator-key'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let wrapped: String = sqlx::Row::get(&row, "value");
    assert!(!wrapped.contains(&public));
    db.close().await;

    // Sealing stops the coordinator; a restart finds the same key after
    // the unseal.
    seal_as_root(&server).await;
    let (status, body) = coordinator_public_key(&server).await;
    assert_eq!((status, code(&body)), (503, "sealed"));
    let (dir, url) = server.halt().await;
    let server = Server::start_configured(dir, url, SHAMIR, false).await;
    let (status, _) = coordinator_public_key(&server).await;
    assert_eq!(status, 503);
    unseal_with(&server, &[&shares[1], &shares[0]]).await;
    let (status, again) = coordinator_public_key(&server).await;
    assert_eq!((status, again["publicKey"].clone()), (200, json!(public)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_key_file_of_an_older_deployment_moves_under_the_keyring() {
    let (dir, url) = fresh_store(Backend::Sqlite).await;
    let legacy = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    std::fs::write(dir.path().join("coordinator.key"), legacy.to_bytes()).unwrap();
    let server = Server::start_on(dir, url).await;
    let (status, body) = coordinator_public_key(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["publicKey"],
        json!(hex::encode(legacy.verifying_key().to_bytes())),
        "the nodes' pin stays valid"
    );
    assert!(
        !server.dir.path().join("coordinator.key").exists(),
        "the file is gone once the key is under the keyring"
    );
    let (dir, url) = server.halt().await;
    let env_seal =
        format!("dev_mode = true\n[seal]\nmode = \"env\"\nmaster_key = \"{TEST_MASTER_KEY}\"\n");
    let server = Server::start_configured(dir, url, &env_seal, false).await;
    let (_, again) = coordinator_public_key(&server).await;
    assert_eq!(again["publicKey"], body["publicKey"]);
    server.stop().await;
}
