//! Transit over HTTP on SQLite and PostgreSQL: the Custos routes and the
//! Vault-compatible ones (`X-Vault-Token`), bad ciphertexts and their
//! codes, batches, rotation and rewrap, org isolation and context binding,
//! data keys, and signatures checked by independent verifiers (p256, k256,
//! ed25519-dalek).

mod common;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

async fn post(server: &Server, path: &str, token: &str, body: Value) -> (u16, Value) {
    let (status, body, _) = server
        .request("POST", path, Some(token), Some(&body.to_string()))
        .await;
    (status, body)
}

/// A Vault client's request: the token in `X-Vault-Token`.
async fn vault(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Vault-Token: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(rest).unwrap_or(Value::Null))
}

/// Approves a `202` answer's approval as `approver`, which must complete
/// it; answers the operation afterwards.
async fn approve_completely(server: &Server, approver: &str, pending: &Value) -> Value {
    let (status, body) = approve(server, approver, pending).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["operationId"], pending["operationId"], "{body}");
    operation(server, approver, pending).await
}

#[tokio::test(flavor = "multi_thread")]
async fn transit_encrypts_decrypts_rotates_and_refuses_bad_ciphertexts_with_their_codes() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        let (_, service) = server.identity(&root, "app", "service", None).await;

        let (status, key) = post(
            &server,
            "/api/v1/transit/keys",
            &root,
            json!({"name": "payments"}),
        )
        .await;
        assert_eq!(status, 201, "{key}");
        assert_eq!(
            (key["type"].clone(), key["latestVersion"].clone()),
            (json!("aes256-gcm96"), json!(1))
        );
        let (status, body) = post(
            &server,
            "/api/v1/transit/keys",
            &root,
            json!({"name": "payments"}),
        )
        .await;
        assert_eq!((status, code(&body)), (409, "already_exists"));
        let (status, body) = post(
            &server,
            "/api/v1/transit/keys",
            &root,
            json!({"name": "x", "exportable": true}),
        )
        .await;
        assert_eq!((status, code(&body)), (403, "export_blocked"));
        let (status, body) = post(
            &server,
            "/api/v1/transit/keys",
            &service,
            json!({"name": "mine"}),
        )
        .await;
        assert_eq!(
            status, 403,
            "a service identity does not create keys: {body}"
        );

        // Round trip, with and without context; text and base64.
        let (status, sealed) = post(&server, "/api/v1/transit/encrypt", &service, json!({"keyName": "payments", "plaintext": "4111 1111 1111 1111", "context": "customer-7"})).await;
        assert_eq!(status, 200, "{sealed}");
        let ciphertext = sealed["ciphertext"].as_str().unwrap().to_string();
        assert!(ciphertext.starts_with("vault:v1:"), "{ciphertext}");
        let (status, opened) = post(
            &server,
            "/api/v1/transit/decrypt",
            &service,
            json!({"keyName": "payments", "ciphertext": ciphertext, "context": "customer-7"}),
        )
        .await;
        assert_eq!(
            (status, opened["plaintext"].clone()),
            (200, json!("4111 1111 1111 1111"))
        );
        let (status, body) = post(
            &server,
            "/api/v1/transit/decrypt",
            &service,
            json!({"keyName": "payments", "ciphertext": ciphertext, "context": "customer-8"}),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "decryption_failed"),
            "a wrong context"
        );
        let (status, body) = post(
            &server,
            "/api/v1/transit/decrypt",
            &service,
            json!({"keyName": "payments", "ciphertext": ciphertext}),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "decryption_failed"),
            "a missing context"
        );
        let binary = BASE64.encode([0u8, 159, 146, 150]);
        let (_, sealed) = post(
            &server,
            "/api/v1/transit/encrypt",
            &service,
            json!({"keyName": "payments", "plaintext": binary, "encoding": "base64"}),
        )
        .await;
        let (_, opened) = post(&server, "/api/v1/transit/decrypt", &service, json!({"keyName": "payments", "ciphertext": sealed["ciphertext"], "encoding": "base64"})).await;
        assert_eq!(opened["plaintext"], json!(binary));
        let (status, body) = post(
            &server,
            "/api/v1/transit/decrypt",
            &service,
            json!({"keyName": "payments", "ciphertext": sealed["ciphertext"]}),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "not_utf8"));

        // Bad ciphertexts, each with its code.
        let body_part = ciphertext.strip_prefix("vault:v1:").unwrap();
        let mut tampered = BASE64.decode(body_part).unwrap();
        tampered[20] ^= 1;
        for (bad, expected) in [
            (
                format!("vault:v1:{}", BASE64.encode(&tampered)),
                "decryption_failed",
            ),
            (format!("vault:v9:{body_part}"), "key_version_too_new"),
            (format!("vault:v0:{body_part}"), "invalid_key_version"),
            (
                format!("custos:v1:{body_part}"),
                "invalid_ciphertext_prefix",
            ),
            ("vault:v1:!!!".to_string(), "invalid_ciphertext_encoding"),
            (
                format!("vault:v1:{}", BASE64.encode([1u8; 10])),
                "ciphertext_truncated",
            ),
        ] {
            let (status, body) = post(
                &server,
                "/api/v1/transit/decrypt",
                &service,
                json!({"keyName": "payments", "ciphertext": bad, "context": "customer-7"}),
            )
            .await;
            assert_eq!((status, code(&body)), (400, expected), "{bad}");
        }
        let (status, body) = post(
            &server,
            "/api/v1/transit/decrypt",
            &service,
            json!({"keyName": "nope", "ciphertext": ciphertext}),
        )
        .await;
        assert_eq!((status, code(&body)), (404, "not_found"));

        // A batch keeps order and reports per-item errors.
        let (status, batch) = post(&server, "/api/v1/transit/encrypt", &service, json!({"keyName": "payments", "batch": [{"plaintext": "a"}, {"plaintext": "b", "context": "c"}]})).await;
        assert_eq!(status, 200, "{batch}");
        let items = batch["batch"].as_array().unwrap().clone();
        let (status, opened) = post(
            &server,
            "/api/v1/transit/decrypt",
            &service,
            json!({"keyName": "payments", "batch": [
                {"ciphertext": items[0]["ciphertext"]},
                {"ciphertext": "vault:v1:AAAA"},
                {"ciphertext": items[1]["ciphertext"], "context": "c"},
            ]}),
        )
        .await;
        assert_eq!(status, 200, "{opened}");
        let opened = opened["batch"].as_array().unwrap();
        assert_eq!(opened[0]["plaintext"], "a");
        assert_eq!(opened[1]["error"]["code"], "ciphertext_truncated");
        assert_eq!(opened[2]["plaintext"], "b");

        // Rotation: new encryptions use v2, v1 still decrypts, rewrap moves
        // a ciphertext to v2 without showing the plaintext.
        let (status, body) = post(
            &server,
            "/api/v1/transit/keys/payments/rotate",
            &service,
            json!({}),
        )
        .await;
        assert_eq!(status, 403, "rotation is an administrator's: {body}");
        // The default policy asks another admin to approve a rotation; the
        // stored request runs once approved.
        // (The approving admin exists before the request: one made by the
        // requester afterwards would not count.)
        let (_, second_admin) = server.identity(&root, "second-admin", "admin", None).await;
        let (status, pending) = post(
            &server,
            "/api/v1/transit/keys/payments/rotate",
            &root,
            json!({}),
        )
        .await;
        assert_eq!(
            (status, pending["status"].clone()),
            (202, json!("pending_approval")),
            "{pending}"
        );
        let (status, body) = post(
            &server,
            &format!(
                "/api/v1/approvals/{}/approve",
                pending["approvalId"].as_str().unwrap()
            ),
            &root,
            json!({}),
        )
        .await;
        assert_eq!((status, code(&body)), (403, "self_approval"));
        let operation = approve_completely(&server, &second_admin, &pending).await;
        assert_eq!(operation["status"], "executed", "{operation}");
        let rotated = &operation["result"];
        assert_eq!(rotated["latestVersion"], json!(2), "{operation}");
        let (_, rewrapped) = post(
            &server,
            "/api/v1/transit/rewrap",
            &service,
            json!({"keyName": "payments", "ciphertext": ciphertext, "context": "customer-7"}),
        )
        .await;
        let rewrapped_text = rewrapped["ciphertext"].as_str().unwrap();
        assert!(rewrapped_text.starts_with("vault:v2:"), "{rewrapped}");
        assert!(rewrapped.get("plaintext").is_none());
        for old_or_new in [ciphertext.as_str(), rewrapped_text] {
            let (_, opened) = post(
                &server,
                "/api/v1/transit/decrypt",
                &service,
                json!({"keyName": "payments", "ciphertext": old_or_new, "context": "customer-7"}),
            )
            .await;
            assert_eq!(opened["plaintext"], "4111 1111 1111 1111");
        }

        // minDecryptionVersion: raising it retires version 1 ciphertexts
        // (after a rewrap, nothing is lost); out-of-range values are refused.
        for (body, status, expected) in [
            (
                json!({"minDecryptionVersion": 0}),
                422,
                "invalid_min_decryption_version",
            ),
            (
                json!({"minDecryptionVersion": 3}),
                422,
                "invalid_min_decryption_version",
            ),
            (json!({"minDecryptionVersion": "2"}), 422, "invalid_body"),
        ] {
            let (got, answer) =
                post(&server, "/api/v1/transit/keys/payments/config", &root, body).await;
            assert_eq!((got, code(&answer)), (status, expected), "{answer}");
        }
        let (status, _) = post(
            &server,
            "/api/v1/transit/keys/payments/config",
            &service,
            json!({"minDecryptionVersion": 2}),
        )
        .await;
        assert_eq!(status, 403, "a service does not change key settings");
        let (status, configured) = post(
            &server,
            "/api/v1/transit/keys/payments/config",
            &root,
            json!({"minDecryptionVersion": 2}),
        )
        .await;
        assert_eq!(status, 200, "{configured}");
        assert_eq!(configured["minDecryptionVersion"], 2);
        let (status, body) = post(
            &server,
            "/api/v1/transit/decrypt",
            &service,
            json!({"keyName": "payments", "ciphertext": ciphertext, "context": "customer-7"}),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "key_version_too_old"),
            "{body}"
        );
        let (_, opened) = post(
            &server,
            "/api/v1/transit/decrypt",
            &service,
            json!({"keyName": "payments", "ciphertext": rewrapped_text, "context": "customer-7"}),
        )
        .await;
        assert_eq!(opened["plaintext"], "4111 1111 1111 1111");
        let (status, _) = post(
            &server,
            "/api/v1/transit/keys/payments/config",
            &root,
            json!({"minDecryptionVersion": 1}),
        )
        .await;
        assert_eq!(
            status, 200,
            "lowering it again is allowed: no version is deleted"
        );

        // A version that used its encryption budget is replaced at once.
        let pool = sqlx::AnyPool::connect(&server.database_url).await.unwrap();
        sqlx::query("UPDATE transit_key_versions SET encryptions = $1 WHERE version = 2")
            .bind(custos_control_plane::engines::transit::store::ROTATE_AFTER_ENCRYPTIONS)
            .execute(&pool)
            .await
            .unwrap();
        // The calls go on with the block this replica reserved before; the
        // call that takes it below the refill mark reserves the next one,
        // finds the budget spent and rotates, so that the calls after it
        // encrypt under v3. Batches of the largest size get there within
        // a block.
        // The largest batch (`MAX_BATCH` of api/transit.rs).
        let batch: Vec<Value> = (0..10_000).map(|_| json!({"plaintext": "x"})).collect();
        let mut versions = Vec::new();
        for _ in 0..8 {
            let (status, sealed) = post(
                &server,
                "/api/v1/transit/encrypt",
                &service,
                json!({"keyName": "payments", "batch": batch}),
            )
            .await;
            assert_eq!(status, 200);
            let ciphertext = sealed["batch"][0]["ciphertext"].as_str().unwrap();
            versions.push(ciphertext.split(':').nth(1).unwrap().to_string());
            if ciphertext.starts_with("vault:v3:") {
                break;
            }
        }
        assert_eq!(
            versions.last().map(String::as_str),
            Some("v3"),
            "{versions:?}"
        );
        assert!(versions.len() <= 4, "rotated within a block: {versions:?}");
        pool.close().await;

        // Data keys: plaintext + wrapped, or wrapped only; the wrapped one
        // decrypts to the plaintext one.
        let (_, data_key) = post(
            &server,
            "/api/v1/transit/datakey",
            &service,
            json!({"keyName": "payments"}),
        )
        .await;
        let (_, opened) = post(&server, "/api/v1/transit/decrypt", &service, json!({"keyName": "payments", "ciphertext": data_key["ciphertext"], "encoding": "base64"})).await;
        assert_eq!(opened["plaintext"], data_key["plaintext"]);
        assert_eq!(
            BASE64
                .decode(data_key["plaintext"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        let (_, wrapped) = post(
            &server,
            "/api/v1/transit/datakey?wrappedOnly=true",
            &service,
            json!({"keyName": "payments"}),
        )
        .await;
        assert!(
            wrapped.get("plaintext").is_none() && wrapped["ciphertext"].is_string(),
            "{wrapped}"
        );

        // Another org: its own key of the same name decrypts nothing of
        // this org, and this org's key is not found there.
        let (status, org) = post(&server, "/api/v1/orgs", &root, json!({"name": "other"})).await;
        assert_eq!(status, 201, "{org}");
        let org_id = org["id"].as_str().unwrap();
        let (_, other_admin) = server
            .identity(&root, "other-admin", "admin", Some(org_id))
            .await;
        let (status, _) = post(
            &server,
            "/api/v1/transit/keys",
            &other_admin,
            json!({"name": "payments"}),
        )
        .await;
        assert_eq!(status, 201);
        let (status, body) = post(
            &server,
            "/api/v1/transit/decrypt",
            &other_admin,
            json!({"keyName": "payments", "ciphertext": ciphertext, "context": "customer-7"}),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "decryption_failed"),
            "org B cannot open org A's ciphertext"
        );
        let (status, _, _) = server
            .request("GET", "/api/v1/transit/keys/payments", Some(&service), None)
            .await;
        assert_eq!(status, 200);

        // Nothing secret in the audit.
        let (_, audit, _) = server
            .request("GET", "/api/v1/audit?limit=1000", Some(&root), None)
            .await;
        let text = audit.to_string();
        assert!(text.contains("transit.encrypt") && text.contains("transit.decrypt"));
        assert!(!text.contains("4111 1111"), "no plaintext in the audit");
        assert!(!text.contains(body_part), "no ciphertext in the audit");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transit_signatures_verify_with_independent_verifiers_and_hmacs_match() {
    use k256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    let server = Server::start(Backend::Sqlite).await;
    let root = server.root_token().await;
    let message = b"release 1.2.3";
    let input = BASE64.encode(message);
    for key_type in ["ecdsa-p256", "ecdsa-secp256k1", "ed25519"] {
        let (status, key) = post(
            &server,
            "/api/v1/transit/keys",
            &root,
            json!({"name": key_type, "type": key_type}),
        )
        .await;
        assert_eq!(status, 201, "{key}");
        let public_key = key["publicKeys"][0]["publicKey"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, signed) = post(
            &server,
            "/api/v1/transit/sign",
            &root,
            json!({"keyName": key_type, "input": input}),
        )
        .await;
        assert_eq!(status, 200, "{signed}");
        let signature = signed["signature"].as_str().unwrap();
        let raw = BASE64
            .decode(signature.strip_prefix("vault:v1:").unwrap())
            .unwrap();
        match key_type {
            "ecdsa-p256" => {
                let verifying =
                    p256::ecdsa::VerifyingKey::from_public_key_pem(&public_key).unwrap();
                let signature = p256::ecdsa::Signature::from_der(&raw).unwrap();
                verifying
                    .verify(message, &signature)
                    .expect("p256 verifies");
            }
            "ecdsa-secp256k1" => {
                let verifying =
                    k256::ecdsa::VerifyingKey::from_public_key_pem(&public_key).unwrap();
                let signature = k256::ecdsa::Signature::from_der(&raw).unwrap();
                assert!(signature.normalize_s().is_none(), "low s");
                verifying
                    .verify(message, &signature)
                    .expect("k256 verifies");
            }
            _ => {
                let bytes: [u8; 32] = BASE64.decode(&public_key).unwrap().try_into().unwrap();
                let verifying = ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap();
                let signature = ed25519_dalek::Signature::from_slice(&raw).unwrap();
                verifying
                    .verify_strict(message, &signature)
                    .expect("ed25519-dalek verifies");
            }
        }
        let (_, valid) = post(
            &server,
            "/api/v1/transit/verify",
            &root,
            json!({"keyName": key_type, "input": input, "signature": signature}),
        )
        .await;
        assert_eq!(valid["valid"], true);
        let (_, valid) = post(&server, "/api/v1/transit/verify", &root, json!({"keyName": key_type, "input": BASE64.encode(b"release 6.6.6"), "signature": signature})).await;
        assert_eq!(valid["valid"], false);
        let (status, body) = post(
            &server,
            "/api/v1/transit/encrypt",
            &root,
            json!({"keyName": key_type, "plaintext": "x"}),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "unsupported_operation"));
    }
    let (_, first) = post(
        &server,
        "/api/v1/transit/hmac",
        &root,
        json!({"keyName": "ed25519", "input": input}),
    )
    .await;
    let (_, second) = post(
        &server,
        "/api/v1/transit/hmac",
        &root,
        json!({"keyName": "ed25519", "input": input}),
    )
    .await;
    assert!(first["hmac"].as_str().unwrap().starts_with("vault:v1:"));
    assert_eq!(first["hmac"], second["hmac"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vault_compatible_routes_answer_as_vault_does_with_a_custos_token() {
    let server = Server::start(Backend::Sqlite).await;
    let root = server.root_token().await;
    let (status, created) =
        vault(&server, "POST", "/v1/transit/keys/orders", &root, json!({})).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["data"]["type"], "aes256-gcm96");
    let plaintext = BASE64.encode(b"order 42");
    let (status, sealed) = vault(
        &server,
        "POST",
        "/v1/transit/encrypt/orders",
        &root,
        json!({"plaintext": plaintext}),
    )
    .await;
    assert_eq!(status, 200, "{sealed}");
    let ciphertext = sealed["data"]["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(sealed["data"]["key_version"], 1);
    let (_, opened) = vault(
        &server,
        "POST",
        "/v1/transit/decrypt/orders",
        &root,
        json!({"ciphertext": ciphertext}),
    )
    .await;
    assert_eq!(opened["data"]["plaintext"], json!(plaintext));
    let (_, second_admin) = server.identity(&root, "second-admin", "admin", None).await;
    let (status, pending) = vault(
        &server,
        "POST",
        "/v1/transit/keys/orders/rotate",
        &root,
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "rotation waits for an approval: {pending}");
    approve_completely(&server, &second_admin, &pending).await;
    let (_, key) = vault(&server, "GET", "/v1/transit/keys/orders", &root, json!({})).await;
    assert_eq!(key["data"]["latest_version"], 2, "{key}");
    let (status, configured) = vault(
        &server,
        "POST",
        "/v1/transit/keys/orders/config",
        &root,
        json!({"min_decryption_version": 2}),
    )
    .await;
    assert_eq!(status, 200, "{configured}");
    assert_eq!(
        configured["data"]["min_decryption_version"], 2,
        "{configured}"
    );
    let (status, body) = vault(
        &server,
        "POST",
        "/v1/transit/keys/orders/config",
        &root,
        json!({"exportable": true}),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "export_blocked"));
    let (status, body) = vault(
        &server,
        "POST",
        "/v1/transit/decrypt/orders",
        &root,
        json!({"ciphertext": ciphertext}),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, "key_version_too_old"),
        "{body}"
    );
    vault(
        &server,
        "POST",
        "/v1/transit/keys/orders/config",
        &root,
        json!({"min_decryption_version": 1}),
    )
    .await;
    let (_, rewrapped) = vault(
        &server,
        "POST",
        "/v1/transit/rewrap/orders",
        &root,
        json!({"ciphertext": ciphertext}),
    )
    .await;
    assert!(rewrapped["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v2:"));
    let (_, batch) = vault(
        &server,
        "POST",
        "/v1/transit/encrypt/orders",
        &root,
        json!({"batch_input": [{"plaintext": plaintext}, {"plaintext": "%%%"}]}),
    )
    .await;
    let results = batch["data"]["batch_results"].as_array().unwrap();
    assert!(results[0]["ciphertext"].is_string());
    assert!(results[1]["error"].is_string());
    let (_, data_key) = vault(
        &server,
        "POST",
        "/v1/transit/datakey/plaintext/orders",
        &root,
        json!({}),
    )
    .await;
    assert!(
        data_key["data"]["plaintext"].is_string() && data_key["data"]["ciphertext"].is_string()
    );
    let (_, wrapped) = vault(
        &server,
        "POST",
        "/v1/transit/datakey/wrapped/orders",
        &root,
        json!({}),
    )
    .await;
    assert!(wrapped["data"].get("plaintext").is_none());
    vault(
        &server,
        "POST",
        "/v1/transit/keys/signer",
        &root,
        json!({"type": "ecdsa-p256"}),
    )
    .await;
    let (_, signed) = vault(
        &server,
        "POST",
        "/v1/transit/sign/signer/sha2-256",
        &root,
        json!({"input": plaintext}),
    )
    .await;
    let signature = signed["data"]["signature"].as_str().unwrap();
    let (_, valid) = vault(
        &server,
        "POST",
        "/v1/transit/verify/signer/sha2-256",
        &root,
        json!({"input": plaintext, "signature": signature}),
    )
    .await;
    assert_eq!(valid["data"]["valid"], true);
    // The algorithm in the path or in the body: one handler, the same MAC.
    vault(
        &server,
        "POST",
        "/v1/transit/keys/mac",
        &root,
        json!({"type": "hmac"}),
    )
    .await;
    let (status, in_path) = vault(
        &server,
        "POST",
        "/v1/transit/hmac/mac/sha2-512",
        &root,
        json!({"input": plaintext}),
    )
    .await;
    assert_eq!(status, 200, "{in_path}");
    let (status, in_body) = vault(
        &server,
        "POST",
        "/v1/transit/hmac/mac",
        &root,
        json!({"input": plaintext, "algorithm": "sha2-512"}),
    )
    .await;
    assert_eq!(status, 200, "{in_body}");
    assert_eq!(in_path["data"]["hmac"], in_body["data"]["hmac"]);
    let (_, default) = vault(
        &server,
        "POST",
        "/v1/transit/hmac/mac",
        &root,
        json!({"input": plaintext}),
    )
    .await;
    assert_ne!(
        default["data"]["hmac"], in_path["data"]["hmac"],
        "sha2-256 by default"
    );
    let (status, body) = vault(
        &server,
        "POST",
        "/v1/transit/keys/leaky",
        &root,
        json!({"exportable": true}),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "export_blocked"));
    let (status, body) = vault(
        &server,
        "POST",
        "/v1/transit/encrypt/orders",
        "cst_not_a_token",
        json!({"plaintext": plaintext}),
    )
    .await;
    assert_eq!((status, code(&body)), (401, "invalid_token"));
    server.stop().await;
}

/// The Python interpreter of `scripts/python-env` (which `scripts/test`
/// runs and names in `CUSTOS_TEST_PYTHON`).
fn python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("CUSTOS_TEST_PYTHON") {
        return path.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new(root.join("scripts/python-env"))
        .output()
        .expect("scripts/python-env runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().into()
}

#[tokio::test(flavor = "multi_thread")]
async fn hvac_the_vault_client_works_unchanged_against_the_vault_routes() {
    let server = Server::start(Backend::Sqlite).await;
    let root = server.root_token().await;
    // Rotation waits for another admin's approval (the default policy):
    // the script approves with this identity's token.
    let (_, approver) = server
        .identity(&root, "approver-admin", "admin", None)
        .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hvac_transit.py");
    let output = tokio::process::Command::new(python())
        .arg(script)
        .arg(format!("http://{}", server.address))
        .arg(&root)
        .arg(&approver)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("HVAC_OK"),
        "hvac failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_share_audit_commits_and_every_call_has_its_record() {
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        let (_, service) = server.identity(&root, "app", "service", None).await;
        post(&server, "/api/v1/transit/keys", &root, json!({"name": "k"})).await;
        let calls = (0..200).map(|index| {
            let (server, service) = (&server, service.clone());
            async move {
                post(
                    server,
                    "/api/v1/transit/encrypt",
                    &service,
                    json!({"keyName": "k", "plaintext": format!("item {index}")}),
                )
                .await
            }
        });
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(|(status, _)| *status == 200));
        // Each answered call's record is in the chain (group commit answers
        // only after the commit), and the chain still verifies.
        let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
            .await
            .unwrap();
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE action = 'transit.encrypt'")
                .fetch_one(db.pool())
                .await
                .unwrap();
        let records: i64 = sqlx::Row::get(&row, "n");
        assert_eq!(records, 200);
        db.close().await;
        let (_, verified, _) = server
            .request("GET", "/api/v1/audit/verify", Some(&root), None)
            .await;
        assert_eq!(verified["valid"], true, "{verified}");
        server.stop().await;
    }
}

/// The encryptions reserved for the key's version, as stored.
async fn reserved(database_url: &str) -> i64 {
    let pool = sqlx::AnyPool::connect(database_url).await.unwrap();
    let row = sqlx::query("SELECT CAST(SUM(encryptions) AS BIGINT) AS n FROM transit_key_versions")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    sqlx::Row::get(&row, "n")
}

/// The encryption budget of the data plane: one block is reserved for the
/// first call; it stays with the version when the cached key is re-read
/// (no second reservation); the call that takes the block below the
/// refill mark reserves exactly one more block, and calls go on meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn the_encryption_budget_is_reserved_a_block_ahead_and_survives_cache_re_reads() {
    use custos_control_plane::engines::transit::store::{CACHE_TTL, RESERVE_BLOCK};
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        post(&server, "/api/v1/transit/keys", &root, json!({"name": "k"})).await;
        let encrypt = |items: usize| {
            let batch: Vec<Value> = (0..items).map(|_| json!({"plaintext": "x"})).collect();
            post(
                &server,
                "/api/v1/transit/encrypt",
                &root,
                json!({"keyName": "k", "batch": batch}),
            )
        };
        assert_eq!(encrypt(1).await.0, 200);
        assert_eq!(reserved(&server.database_url).await, RESERVE_BLOCK);
        tokio::time::sleep(CACHE_TTL + std::time::Duration::from_millis(200)).await;
        assert_eq!(encrypt(1).await.0, 200);
        assert_eq!(
            reserved(&server.database_url).await,
            RESERVE_BLOCK,
            "the re-read key kept its block"
        );
        // 2 + 10,000 leaves more than three quarters; 20,002 does not.
        assert_eq!(encrypt(10_000).await.0, 200);
        assert_eq!(reserved(&server.database_url).await, RESERVE_BLOCK);
        let concurrent = (0..8).map(|_| encrypt(1_250));
        let answers = futures::future::join_all(concurrent).await;
        assert!(answers.iter().all(|(status, _)| *status == 200));
        assert_eq!(
            reserved(&server.database_url).await,
            2 * RESERVE_BLOCK,
            "one call reserved the next block"
        );
        server.stop().await;
    }
}
