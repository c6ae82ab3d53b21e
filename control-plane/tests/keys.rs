//! The key registry over HTTP: every key type and usage, with signatures
//! and ciphertexts checked by implementations other than the one that made
//! them (OpenSSL for the RustCrypto-signed software keys; p256, k256,
//! ed25519-dalek and the `rsa` crate for OpenSSL- and token-made ones);
//! rotation and crypto-shredding behind approvals; keys kept
//! non-extractable in a real SoftHSM2 token; client-side encryption keys
//! with their subject limit, expiry, retention and scheduled destruction.

mod common;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use sqlx::Row;

async fn create(server: &Server, token: &str, body: Value) -> Value {
    let (status, key) = call(server, "POST", "/api/v1/keys", token, Some(body)).await;
    assert_eq!(status, 201, "{key}");
    key
}

async fn op(server: &Server, token: &str, key: &Value, verb: &str, body: Value) -> (u16, Value) {
    let id = key["id"].as_str().unwrap();
    call(
        server,
        "POST",
        &format!("/api/v1/keys/{id}/{verb}"),
        token,
        Some(body),
    )
    .await
}

fn openssl_public(key: &Value) -> openssl::pkey::PKey<openssl::pkey::Public> {
    openssl::pkey::PKey::public_key_from_pem(key["publicKey"].as_str().unwrap().as_bytes()).unwrap()
}

fn der_of(key: &Value) -> Vec<u8> {
    openssl_public(key).public_key_to_der().unwrap()
}

/// Approves a `202` answer with each approver; answers the operation.
async fn approved(server: &Server, approvers: &[&str], pending: &Value) -> Value {
    for approver in approvers {
        let (status, body) = approve(server, approver, pending).await;
        assert_eq!(status, 200, "{body}");
    }
    operation(server, approvers[0], pending).await
}

#[tokio::test(flavor = "multi_thread")]
async fn software_keys_of_every_type_sign_encrypt_and_wrap_checked_independently() {
    use sha2::Digest as _;
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        let (_, service) = server.identity(&root, "app", "service", None).await;

        // ECDSA P-256, signed by the p256 crate, checked by OpenSSL.
        let p256_key = create(
            &server,
            &root,
            json!({"name": "p256", "type": "ECDSA_P256", "usage": "SIGN_VERIFY"}),
        )
        .await;
        assert_eq!(
            (p256_key["version"].clone(), p256_key["backend"].clone()),
            (json!(1), json!("software"))
        );
        let (status, signed) = op(
            &server,
            &service,
            &p256_key,
            "sign",
            json!({"message": "pay 10 to bob"}),
        )
        .await;
        assert_eq!(status, 200, "{signed}");
        let signature = BASE64
            .decode(signed["signature"].as_str().unwrap())
            .unwrap();
        let p256_public = openssl_public(&p256_key);
        let mut verifier =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &p256_public)
                .unwrap();
        assert!(verifier
            .verify_oneshot(&signature, b"pay 10 to bob")
            .unwrap());
        let digest = sha2::Sha256::digest(b"a digest");
        let (_, signed) = op(
            &server,
            &service,
            &p256_key,
            "sign",
            json!({"digest": hex::encode(digest)}),
        )
        .await;
        let signature = BASE64
            .decode(signed["signature"].as_str().unwrap())
            .unwrap();
        let mut context = openssl::pkey_ctx::PkeyCtx::new(&openssl_public(&p256_key)).unwrap();
        context.verify_init().unwrap();
        assert!(context.verify(&digest, &signature).unwrap());
        let (_, checked) = op(
            &server,
            &service,
            &p256_key,
            "verify",
            json!({"digest": hex::encode(digest), "signature": BASE64.encode(&signature)}),
        )
        .await;
        assert_eq!(checked["valid"], true);
        let (_, checked) = op(
            &server,
            &service,
            &p256_key,
            "verify",
            json!({"message": "pay 99 to eve", "signature": BASE64.encode(&signature)}),
        )
        .await;
        assert_eq!(checked["valid"], false);

        // secp256k1: low-s, checked by OpenSSL.
        let k1 = create(
            &server,
            &root,
            json!({"name": "k1", "type": "ECDSA_SECP256K1", "usage": "SIGN_VERIFY"}),
        )
        .await;
        for round in 0..8 {
            let digest = sha2::Sha256::digest(format!("tx {round}"));
            let (_, signed) = op(
                &server,
                &service,
                &k1,
                "sign",
                json!({"digest": format!("0x{}", hex::encode(digest))}),
            )
            .await;
            let signature = BASE64
                .decode(signed["signature"].as_str().unwrap())
                .unwrap();
            let parsed = k256::ecdsa::Signature::from_der(&signature).unwrap();
            assert!(parsed.normalize_s().is_none(), "high s");
            let mut context = openssl::pkey_ctx::PkeyCtx::new(&openssl_public(&k1)).unwrap();
            context.verify_init().unwrap();
            assert!(context.verify(&digest, &signature).unwrap());
        }

        // Ed25519, signed by ed25519-dalek, checked by OpenSSL; no digests.
        let ed = create(
            &server,
            &root,
            json!({"name": "ed", "type": "ED25519", "usage": "SIGN_VERIFY"}),
        )
        .await;
        let (_, signed) = op(
            &server,
            &service,
            &ed,
            "sign",
            json!({"message": "00ff", "encoding": "hex"}),
        )
        .await;
        let signature = BASE64
            .decode(signed["signature"].as_str().unwrap())
            .unwrap();
        let ed_public = openssl_public(&ed);
        let mut verifier = openssl::sign::Verifier::new_without_digest(&ed_public).unwrap();
        assert!(verifier.verify_oneshot(&signature, &[0x00, 0xff]).unwrap());
        let (status, body) = op(
            &server,
            &service,
            &ed,
            "sign",
            json!({"digest": hex::encode([7u8; 32])}),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "digest_not_supported"));

        // RSA-PSS by OpenSSL, checked by the rsa crate.
        let rsa_signer = create(
            &server,
            &root,
            json!({"name": "rsa-sign", "type": "RSA_2048", "usage": "SIGN_VERIFY"}),
        )
        .await;
        let (_, signed) = op(
            &server,
            &service,
            &rsa_signer,
            "sign",
            json!({"message": "invoice 7"}),
        )
        .await;
        let signature = BASE64
            .decode(signed["signature"].as_str().unwrap())
            .unwrap();
        use rsa::pkcs8::DecodePublicKey;
        use rsa::signature::Verifier as _;
        let public = rsa::RsaPublicKey::from_public_key_der(&der_of(&rsa_signer)).unwrap();
        let pss = rsa::pss::VerifyingKey::<sha2::Sha256>::new(public);
        pss.verify(
            b"invoice 7",
            &rsa::pss::Signature::try_from(signature.as_slice()).unwrap(),
        )
        .unwrap();

        // RSA-OAEP: a client encrypts with the public key (rsa crate); only
        // the API decrypts. And the API's own ciphertexts round-trip.
        let rsa_box = create(
            &server,
            &root,
            json!({"name": "rsa-box", "type": "RSA_3072", "usage": "ENCRYPT_DECRYPT"}),
        )
        .await;
        let public = rsa::RsaPublicKey::from_public_key_der(&der_of(&rsa_box)).unwrap();
        let sealed = public
            .encrypt(
                &mut rand_core::OsRng,
                rsa::Oaep::new::<sha2::Sha256>(),
                b"PIN 4321",
            )
            .unwrap();
        let (status, opened) = op(
            &server,
            &service,
            &rsa_box,
            "decrypt",
            json!({"ciphertext": BASE64.encode(&sealed)}),
        )
        .await;
        assert_eq!(
            (status, opened["plaintext"].clone()),
            (200, json!("PIN 4321")),
            "{opened}"
        );
        let (_, made) = op(
            &server,
            &service,
            &rsa_box,
            "encrypt",
            json!({"plaintext": "server side"}),
        )
        .await;
        let (_, opened) = op(
            &server,
            &service,
            &rsa_box,
            "decrypt",
            json!({"ciphertext": made["ciphertext"]}),
        )
        .await;
        assert_eq!(opened["plaintext"], "server side");

        // AES-256-GCM bound to key, purpose and context.
        let aes = create(
            &server,
            &root,
            json!({"name": "aes", "type": "AES_256", "usage": "ENCRYPT_DECRYPT"}),
        )
        .await;
        let (_, made) = op(
            &server,
            &service,
            &aes,
            "encrypt",
            json!({"plaintext": "card 4111", "context": "customer-1"}),
        )
        .await;
        let ciphertext = made["ciphertext"].as_str().unwrap().to_string();
        assert!(ciphertext.starts_with("custos:v1:"), "{ciphertext}");
        let (_, opened) = op(
            &server,
            &service,
            &aes,
            "decrypt",
            json!({"ciphertext": ciphertext, "context": "customer-1"}),
        )
        .await;
        assert_eq!(opened["plaintext"], "card 4111");
        let (status, body) = op(
            &server,
            &service,
            &aes,
            "decrypt",
            json!({"ciphertext": ciphertext, "context": "customer-2"}),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "decrypt_failed"));
        let mut tampered = BASE64.decode(&ciphertext["custos:v1:".len()..]).unwrap();
        tampered[14] ^= 1;
        let (status, body) = op(&server, &service, &aes, "decrypt", json!({"ciphertext": format!("custos:v1:{}", BASE64.encode(&tampered)), "context": "customer-1"})).await;
        assert_eq!((status, code(&body)), (400, "decrypt_failed"));
        let (status, body) = op(
            &server,
            &service,
            &aes,
            "wrap",
            json!({"key": BASE64.encode([1u8; 32])}),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "usage_not_allowed"));

        // Wrapping keys: a wrapped key is not a ciphertext of `encrypt`.
        let kek = create(
            &server,
            &root,
            json!({"name": "kek", "type": "AES_256", "usage": "WRAP_UNWRAP"}),
        )
        .await;
        let data_key = [9u8; 32];
        let (_, wrapped) = op(
            &server,
            &service,
            &kek,
            "wrap",
            json!({"key": BASE64.encode(data_key), "context": "db-7"}),
        )
        .await;
        let (_, unwrapped) = op(
            &server,
            &service,
            &kek,
            "unwrap",
            json!({"wrapped": wrapped["wrapped"], "context": "db-7"}),
        )
        .await;
        assert_eq!(unwrapped["key"], json!(BASE64.encode(data_key)));
        let (status, body) = op(
            &server,
            &service,
            &kek,
            "unwrap",
            json!({"wrapped": ciphertext}),
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (400, "decrypt_failed"),
            "another key's ciphertext: {body}"
        );

        // Bad input: clear codes.
        for (body, status, expected) in [
            (
                json!({"name": "x", "type": "DES", "usage": "ENCRYPT_DECRYPT"}),
                422,
                "invalid_key_type",
            ),
            (
                json!({"name": "x", "type": "ED25519", "usage": "ENCRYPT_DECRYPT"}),
                422,
                "invalid_usage",
            ),
            (
                json!({"name": "x", "type": "AES_256", "usage": "ENCRYPT_DECRYPT", "backend": "cloud"}),
                422,
                "invalid_backend",
            ),
            (
                json!({"name": "aes", "type": "AES_256", "usage": "ENCRYPT_DECRYPT"}),
                409,
                "key_exists",
            ),
            (
                json!({"name": "x", "type": "AES_256", "usage": "ENCRYPT_DECRYPT", "exportable": true}),
                422,
                "invalid_body",
            ),
            (
                json!({"name": "x", "type": "AES_256", "usage": "ENCRYPT_DECRYPT", "backend": "hsm"}),
                409,
                "hsm_not_configured",
            ),
        ] {
            let (got, answer) =
                call(&server, "POST", "/api/v1/keys", &root, Some(body.clone())).await;
            assert_eq!((got, code(&answer)), (status, expected), "{body}: {answer}");
        }
        let (status, body) = op(
            &server,
            &service,
            &aes,
            "decrypt",
            json!({"ciphertext": format!("custos:v1:{}", "A".repeat(12_000))}),
        )
        .await;
        assert_eq!((status, code(&body)), (413, "ciphertext_too_large"));
        let (status, body) = op(
            &server,
            &service,
            &aes,
            "decrypt",
            json!({"ciphertext": "custos:v9:AAAA"}),
        )
        .await;
        assert_eq!((status, code(&body)), (400, "invalid_key_version"));

        // Rotation waits for an admin; old versions still decrypt and verify.
        let (status, body) = op(&server, &service, &aes, "rotate", json!({})).await;
        assert_eq!(status, 403, "{body}");
        let (_, second_admin) = server.identity(&root, "admin-2", "admin", None).await;
        let (status, pending) = op(&server, &root, &aes, "rotate", json!({})).await;
        assert_eq!(status, 202, "{pending}");
        let operation = approved(&server, &[&second_admin], &pending).await;
        assert_eq!(operation["status"], "executed", "{operation}");
        assert_eq!(operation["result"]["version"], 2);
        let (_, made) = op(
            &server,
            &service,
            &aes,
            "encrypt",
            json!({"plaintext": "new"}),
        )
        .await;
        assert!(made["ciphertext"]
            .as_str()
            .unwrap()
            .starts_with("custos:v2:"));
        let (_, opened) = op(
            &server,
            &service,
            &aes,
            "decrypt",
            json!({"ciphertext": ciphertext, "context": "customer-1"}),
        )
        .await;
        assert_eq!(opened["plaintext"], "card 4111");

        // Destroy: two approvals, then the material is gone for good.
        let (_, first) = server.identity(&root, "approver-1", "approver", None).await;
        let (_, second) = server.identity(&root, "approver-2", "approver", None).await;
        let (status, pending) = call(
            &server,
            "DELETE",
            &format!("/api/v1/keys/{}", aes["id"].as_str().unwrap()),
            &root,
            None,
        )
        .await;
        assert_eq!(status, 202, "{pending}");
        let operation = approved(&server, &[&first, &second], &pending).await;
        assert_eq!(operation["status"], "executed", "{operation}");
        for (verb, body) in [
            (
                "decrypt",
                json!({"ciphertext": ciphertext, "context": "customer-1"}),
            ),
            ("encrypt", json!({"plaintext": "x"})),
        ] {
            let (status, answer) = op(&server, &service, &aes, verb, body).await;
            assert_eq!((status, code(&answer)), (410, "key_destroyed"), "{verb}");
        }
        let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
            .await
            .unwrap();
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM registry_key_versions WHERE key_id = $1 AND material IS NOT NULL")
            .bind(aes["id"].as_str().unwrap())
            .fetch_one(db.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(left, 0, "no material left after the shredding");
        db.close().await;

        // Another org does not see these keys.
        let (_, org) = call(
            &server,
            "POST",
            "/api/v1/orgs",
            &root,
            Some(json!({"name": "other"})),
        )
        .await;
        let (_, other) = server
            .identity(&root, "other-admin", "admin", org["id"].as_str())
            .await;
        let (status, body) = op(&server, &other, &p256_key, "sign", json!({"message": "x"})).await;
        assert_eq!((status, code(&body)), (404, "not_found"));
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hsm_keys_stay_in_the_token_and_destroying_removes_the_objects() {
    use custos_control_plane::kernel::hsm::{HsmKeyId, HsmKeyStore};
    use sha2::Digest as _;
    softhsm();
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("custos.db").display());
    let server = Server::start_with(
        dir,
        database_url,
        &format!(
            "rate_limit_per_sec = 1000\n[keys.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\n\
             token_label = \"{TOKEN}\"\npin = \"{TOKEN_PIN}\"\n"
        ),
    )
    .await;
    let root = server.root_token().await;
    let hsm = |name: &str, key_type: &str, usage: &str| json!({"name": name, "type": key_type, "usage": usage, "backend": "hsm"});

    let p256_key = create(&server, &root, hsm("hsm-p256", "ECDSA_P256", "SIGN_VERIFY")).await;
    assert_eq!(p256_key["backend"], "hsm");
    let (_, signed) = op(
        &server,
        &root,
        &p256_key,
        "sign",
        json!({"message": "wire 5"}),
    )
    .await;
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    let verifying = p256::ecdsa::VerifyingKey::from_public_key_der(&der_of(&p256_key)).unwrap();
    let signature = p256::ecdsa::Signature::from_der(
        &BASE64
            .decode(signed["signature"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    verifying.verify(b"wire 5", &signature).unwrap();

    let k1 = create(
        &server,
        &root,
        hsm("hsm-k1", "ECDSA_SECP256K1", "SIGN_VERIFY"),
    )
    .await;
    let digest = sha2::Sha256::digest(b"btc");
    let (_, signed) = op(
        &server,
        &root,
        &k1,
        "sign",
        json!({"digest": hex::encode(digest)}),
    )
    .await;
    let verifying = k256::ecdsa::VerifyingKey::from_public_key_der(&der_of(&k1)).unwrap();
    let signature = k256::ecdsa::Signature::from_der(
        &BASE64
            .decode(signed["signature"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    use k256::ecdsa::signature::hazmat::PrehashVerifier as _;
    verifying.verify_prehash(&digest, &signature).unwrap();

    let ed = create(&server, &root, hsm("hsm-ed", "ED25519", "SIGN_VERIFY")).await;
    let (_, signed) = op(&server, &root, &ed, "sign", json!({"message": "sol"})).await;
    let raw = openssl_public(&ed).raw_public_key().unwrap();
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&raw.try_into().unwrap()).unwrap();
    let signature = ed25519_dalek::Signature::from_slice(
        &BASE64
            .decode(signed["signature"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    verifying.verify_strict(b"sol", &signature).unwrap();

    let rsa_key = create(&server, &root, hsm("hsm-rsa", "RSA_2048", "SIGN_VERIFY")).await;
    let (_, signed) = op(&server, &root, &rsa_key, "sign", json!({"message": "doc"})).await;
    let public = rsa::RsaPublicKey::from_public_key_der(&der_of(&rsa_key)).unwrap();
    rsa::pss::VerifyingKey::<sha2::Sha256>::new(public)
        .verify(
            b"doc",
            &rsa::pss::Signature::try_from(
                BASE64
                    .decode(signed["signature"].as_str().unwrap())
                    .unwrap()
                    .as_slice(),
            )
            .unwrap(),
        )
        .unwrap();

    let aes = create(&server, &root, hsm("hsm-aes", "AES_256", "ENCRYPT_DECRYPT")).await;
    let (_, made) = op(
        &server,
        &root,
        &aes,
        "encrypt",
        json!({"plaintext": "in the token", "context": "c"}),
    )
    .await;
    let (_, opened) = op(
        &server,
        &root,
        &aes,
        "decrypt",
        json!({"ciphertext": made["ciphertext"], "context": "c"}),
    )
    .await;
    assert_eq!(opened["plaintext"], "in the token");
    let (status, body) = op(
        &server,
        &root,
        &aes,
        "decrypt",
        json!({"ciphertext": made["ciphertext"], "context": "d"}),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "decrypt_failed"));

    // The database holds object ids and public keys, never HSM material.
    let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT material, hsm_id FROM registry_key_versions")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    for row in &rows {
        assert!(row
            .try_get::<Option<Vec<u8>>, _>("material")
            .unwrap()
            .is_none());
        assert!(row
            .try_get::<Option<String>, _>("hsm_id")
            .unwrap()
            .is_some());
    }
    let object: String = sqlx::query("SELECT hsm_id FROM registry_key_versions WHERE key_id = $1")
        .bind(aes["id"].as_str().unwrap())
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("hsm_id")
        .unwrap();
    db.close().await;
    let token = HsmKeyStore::open(std::path::Path::new(SOFTHSM_MODULE), TOKEN, TOKEN_PIN).unwrap();
    let object = HsmKeyId::from_hex(&object).unwrap();
    assert!(token.exists(&object).unwrap());

    let (_, first) = server.identity(&root, "approver-1", "approver", None).await;
    let (_, second) = server.identity(&root, "approver-2", "approver", None).await;
    let (status, pending) = call(
        &server,
        "DELETE",
        &format!("/api/v1/keys/{}", aes["id"].as_str().unwrap()),
        &root,
        None,
    )
    .await;
    assert_eq!(status, 202);
    let operation = approved(&server, &[&first, &second], &pending).await;
    assert_eq!(operation["status"], "executed", "{operation}");
    assert!(!token.exists(&object).unwrap(), "the token object is gone");
    let (status, body) = op(
        &server,
        &root,
        &aes,
        "decrypt",
        json!({"ciphertext": made["ciphertext"], "context": "c"}),
    )
    .await;
    assert_eq!((status, code(&body)), (410, "key_destroyed"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_side_encryption_keys_are_limited_expire_and_are_destroyed_after_retention() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("custos.db").display());
    let server = Server::start_with(
        dir,
        database_url,
        "rate_limit_per_sec = 1000\n[keys]\nschedule_poll_ms = 50\n",
    )
    .await;
    let root = server.root_token().await;
    let (_, backend) = server
        .identity(&root, "mobile-backend", "service", None)
        .await;
    let cse = |subject: &str| json!({"type": "RSA_2048", "usage": "ENCRYPT_DECRYPT", "purpose": "client_side_encryption", "subject": subject});
    let key = create(&server, &backend, cse("device-1")).await;
    assert_eq!(key["purpose"], "client_side_encryption");
    let day = 86_400_000i64;
    let created = key["createdAt"].as_i64().unwrap();
    assert_eq!(key["expiresAt"].as_i64().unwrap() - created, 30 * day);
    assert_eq!(key["destroyAt"].as_i64().unwrap() - created, 120 * day);
    let (status, public) = call(
        &server,
        "GET",
        &format!("/api/v1/keys/{}/public-key", key["id"].as_str().unwrap()),
        &backend,
        None,
    )
    .await;
    assert_eq!(status, 200, "{public}");

    // The app encrypts a PIN with the public key; only the API decrypts.
    use rsa::pkcs8::DecodePublicKey as _;
    let public = rsa::RsaPublicKey::from_public_key_der(
        &BASE64
            .decode(public["publicKeyDer"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let pin = public
        .encrypt(
            &mut rand_core::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            b"1234",
        )
        .unwrap();
    let pin = BASE64.encode(&pin);
    let (_, opened) = op(
        &server,
        &backend,
        &key,
        "decrypt",
        json!({"ciphertext": pin}),
    )
    .await;
    assert_eq!(opened["plaintext"], "1234");
    let (status, body) = op(
        &server,
        &backend,
        &key,
        "decrypt",
        json!({"ciphertext": BASE64.encode(vec![1u8; 9000])}),
    )
    .await;
    assert_eq!((status, code(&body)), (413, "ciphertext_too_large"));

    // Five keys per subject per 24 hours.
    for _ in 0..4 {
        create(&server, &backend, cse("device-1")).await;
    }
    let (status, body) = call(
        &server,
        "POST",
        "/api/v1/keys",
        &backend,
        Some(cse("device-1")),
    )
    .await;
    assert_eq!((status, code(&body)), (429, "key_generation_limited"));
    create(&server, &backend, cse("device-2")).await;
    let (status, body) = call(&server, "POST", "/api/v1/keys", &backend, Some(json!({"type": "AES_256", "usage": "ENCRYPT_DECRYPT", "purpose": "client_side_encryption", "subject": "d"}))).await;
    assert_eq!((status, code(&body)), (422, "invalid_purpose"));

    // Expiry: deprecated, still decrypts, makes nothing new.
    let id = key["id"].as_str().unwrap().to_string();
    let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
        .await
        .unwrap();
    let set = |column: &'static str| {
        let (db, id) = (&db, id.clone());
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE registry_keys SET {column} = $1 WHERE id = $2"
            )))
            .bind(custos_control_plane::kernel::db::now_ms() - 1)
            .bind(id)
            .execute(db.pool())
            .await
            .unwrap();
        }
    };
    let state_of = || async {
        let (_, view) = call(
            &server,
            "GET",
            &format!("/api/v1/keys/{id}"),
            &backend,
            None,
        )
        .await;
        view["state"].as_str().unwrap_or("").to_string()
    };
    set("expires_at").await;
    for _ in 0..100 {
        if state_of().await == "deprecated" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state_of().await, "deprecated");
    let (_, opened) = op(
        &server,
        &backend,
        &key,
        "decrypt",
        json!({"ciphertext": pin}),
    )
    .await;
    assert_eq!(
        opened["plaintext"], "1234",
        "a deprecated key still decrypts"
    );
    let (status, body) = op(
        &server,
        &backend,
        &key,
        "encrypt",
        json!({"plaintext": "x"}),
    )
    .await;
    assert_eq!((status, code(&body)), (410, "key_deprecated"));

    // Retention over: the scheduler destroys it.
    set("destroy_at").await;
    for _ in 0..100 {
        if state_of().await == "destroyed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = op(
        &server,
        &backend,
        &key,
        "decrypt",
        json!({"ciphertext": pin}),
    )
    .await;
    assert_eq!((status, code(&body)), (410, "key_destroyed"));
    db.close().await;
    let (_, audit) = call(&server, "GET", "/api/v1/audit?identity=system", &root, None).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"key.deprecate") && actions.contains(&"key.destroy"),
        "{actions:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_rotation_adds_a_version_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("custos.db").display());
    let server = Server::start_with(dir, database_url, "[keys]\nschedule_poll_ms = 50\n").await;
    let root = server.root_token().await;
    let key = create(&server, &root, json!({"name": "rotating", "type": "ECDSA_P256", "usage": "SIGN_VERIFY", "rotation": {"periodDays": 90}})).await;
    assert_eq!(key["rotation"]["periodDays"], 90);
    let (_, signed) = op(&server, &root, &key, "sign", json!({"message": "before"})).await;
    let db = custos_control_plane::kernel::db::Db::connect(&server.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE registry_keys SET next_rotation = $1 WHERE id = $2")
        .bind(custos_control_plane::kernel::db::now_ms() - 1)
        .bind(key["id"].as_str().unwrap())
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;
    let mut version = json!(1);
    for _ in 0..100 {
        let (_, view) = call(
            &server,
            "GET",
            &format!("/api/v1/keys/{}", key["id"].as_str().unwrap()),
            &root,
            None,
        )
        .await;
        version = view["version"].clone();
        if version == 2 {
            assert!(
                view["nextRotationAt"].as_i64().unwrap()
                    > custos_control_plane::kernel::db::now_ms()
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(version, 2);
    // The old version's signature still verifies, against version 1.
    let (_, checked) = op(
        &server,
        &root,
        &key,
        "verify",
        json!({"message": "before", "signature": signed["signature"], "version": 1}),
    )
    .await;
    assert_eq!(checked["valid"], true, "{checked}");
    let (_, checked) = op(
        &server,
        &root,
        &key,
        "verify",
        json!({"message": "before", "signature": signed["signature"]}),
    )
    .await;
    assert_eq!(checked["valid"], false, "version 2 did not make it");
    server.stop().await;
}

// ---- Encryption budgets, destruction across the token, seal -------------------

const SOFTHSM_SO_PIN: &str = "97531";

/// The `[keys.pkcs11]` lines of a token of the test's SoftHSM2 directory.
fn token_lines(label: &str) -> String {
    format!("[keys.pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{label}\"\npin = \"{TOKEN_PIN}\"\n")
}

/// A store of its own for the test (the token answers like the server's).
fn test_store(label: &str) -> custos_control_plane::kernel::hsm::HsmKeyStore {
    custos_control_plane::kernel::hsm::HsmKeyStore::open(
        std::path::Path::new(SOFTHSM_MODULE),
        label,
        TOKEN_PIN,
    )
    .unwrap()
}

/// A token of its own, made in this process on the free slot SoftHSM2
/// always offers, for a test that logs the process out of it (login is per
/// process and token: the other tests' token stays logged in).
fn own_token(label: &str) -> cryptoki::slot::Slot {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    use custos_signer_node::master_key::{shared_pkcs11_context, slots_with_token};
    static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    softhsm();
    let context = shared_pkcs11_context(std::path::Path::new(SOFTHSM_MODULE)).unwrap();
    let mut made = MADE.lock().unwrap();
    if !made.iter().any(|done| done == label) {
        let free = context
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|slot| !context.get_token_info(*slot).unwrap().token_initialized())
            .expect("SoftHSM2 offers a free slot");
        context
            .init_token(free, &AuthPin::from(SOFTHSM_SO_PIN), label)
            .unwrap();
        let slot = slots_with_token(&context, label).unwrap()[0];
        let session = context.open_rw_session(slot).unwrap();
        session
            .login(UserType::So, Some(&AuthPin::from(SOFTHSM_SO_PIN)))
            .unwrap();
        session.init_pin(&AuthPin::from(TOKEN_PIN)).unwrap();
        session.logout().unwrap();
        made.push(label.to_string());
    }
    slots_with_token(&context, label).unwrap()[0]
}

/// Each version of a key: (version, encryptions, material present, token
/// object id), read from the store directly.
async fn versions_of(database_url: &str, key: &Value) -> Vec<(i64, i64, bool, Option<String>)> {
    let db = custos_control_plane::kernel::db::Db::connect(database_url)
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT version, encryptions, material, hsm_id FROM registry_key_versions \
         WHERE key_id = $1 ORDER BY version",
    )
    .bind(key["id"].as_str().unwrap())
    .fetch_all(db.pool())
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|row| {
            (
                row.try_get("version").unwrap(),
                row.try_get("encryptions").unwrap(),
                row.try_get::<Option<Vec<u8>>, _>("material")
                    .unwrap()
                    .is_some(),
                row.try_get("hsm_id").unwrap(),
            )
        })
        .collect()
}

/// The audit records `system` wrote with `action` on `key`.
async fn system_records(server: &Server, token: &str, action: &str, key: &Value) -> Vec<Value> {
    let (status, audit) = call(
        server,
        "GET",
        &format!(
            "/api/v1/audit?identity=system&action={action}&resource=key:{}&limit=1000",
            key["name"].as_str().unwrap()
        ),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    audit["items"].as_array().unwrap().clone()
}

async fn key_state(server: &Server, token: &str, key: &Value) -> String {
    let (status, view) = call(
        server,
        "GET",
        &format!("/api/v1/keys/{}", key["id"].as_str().unwrap()),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    view["state"].as_str().unwrap().to_string()
}

/// A fresh store of `backend`: (folder, database URL).
async fn fresh_store(backend: Backend) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("custos.db").display()),
        Backend::Postgres => fresh_postgres_database().await,
    };
    (dir, url)
}

/// Restarts `server` on its store with other settings (seal mode `env`,
/// the same root credentials).
async fn restart(server: Server, extra: &str) -> Server {
    let (id, secret) = (
        server.root_client_id.clone(),
        server.root_client_secret.clone(),
    );
    let (dir, url) = server.halt().await;
    let config = format!(
        "dev_mode = true\n{extra}\n[seal]\nmode = \"env\"\nmaster_key = \"{TEST_MASTER_KEY}\"\n"
    );
    let mut server = Server::start_configured(dir, url, &config, false).await;
    server.root_client_id = id;
    server.root_client_secret = secret;
    server
}

/// No AES-256 version makes more encryptions or wraps than its budget,
/// counted in the store; the call that spends a version rotates the key,
/// once, however many calls run at once (every version but the latest
/// holds exactly the budget: a second rotation from one version would
/// leave an empty one), audited as `system` with reason `budget`. Both
/// databases, both backends; a version found spent after the budget was
/// lowered rotates before it is used.
#[tokio::test(flavor = "multi_thread")]
async fn aes_versions_stop_at_their_budget_and_rotate_once_under_concurrent_calls() {
    const BUDGET: i64 = 4;
    softhsm();
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (dir, url) = fresh_store(backend).await;
        let settings = format!(
            "rate_limit_per_sec = 1000\n[keys]\nencryptions_per_version = {BUDGET}\n{}",
            token_lines(TOKEN)
        );
        let server = Server::start_with(dir, url, &settings).await;
        let root = server.root_token().await;
        let (_, service) = server.identity(&root, "app", "service", None).await;
        let software = create(
            &server,
            &root,
            json!({"name": "data", "type": "AES_256", "usage": "ENCRYPT_DECRYPT"}),
        )
        .await;
        let hsm = create(
            &server,
            &root,
            json!({"name": "kek", "type": "AES_256", "usage": "WRAP_UNWRAP", "backend": "hsm"}),
        )
        .await;
        for (key, calls) in [(&software, 18i64), (&hsm, 10)] {
            let wraps = key["usage"] == "WRAP_UNWRAP";
            let (verb, field, back) = if wraps {
                ("wrap", "wrapped", "unwrap")
            } else {
                ("encrypt", "ciphertext", "decrypt")
            };
            let input = |item: i64| {
                if wraps {
                    json!({"key": BASE64.encode([item as u8; 32])})
                } else {
                    json!({"plaintext": format!("item {item}")})
                }
            };
            let answers = futures::future::join_all(
                (0..calls).map(|item| op(&server, &service, key, verb, input(item))),
            )
            .await;
            let mut made = std::collections::BTreeMap::<i64, i64>::new();
            let mut openings = Vec::new();
            for (item, (status, answer)) in answers.iter().enumerate() {
                assert_eq!(*status, 200, "{answer}");
                let version = answer["version"].as_i64().unwrap();
                let sealed = answer[field].as_str().unwrap();
                assert!(
                    sealed.starts_with(&format!("custos:v{version}:")),
                    "{answer}"
                );
                *made.entry(version).or_default() += 1;
                let body = if wraps {
                    json!({ "wrapped": sealed })
                } else {
                    json!({ "ciphertext": sealed })
                };
                openings.push((item as i64, op(&server, &service, key, back, body)));
            }
            for (item, opening) in openings {
                let (status, opened) = opening.await;
                assert_eq!(status, 200, "{opened}");
                let expected = match input(item) {
                    value if wraps => value["key"].clone(),
                    value => value["plaintext"].clone(),
                };
                assert_eq!(opened[if wraps { "key" } else { "plaintext" }], expected);
            }

            let versions = versions_of(&server.database_url, key).await;
            let latest = calls / BUDGET + 1;
            assert_eq!(versions.len() as i64, latest, "{versions:?}");
            for (version, encryptions, _, _) in &versions {
                let expected = if *version < latest {
                    BUDGET
                } else {
                    calls % BUDGET
                };
                assert_eq!(*encryptions, expected, "version {version}: {versions:?}");
                assert_eq!(made.get(version).copied().unwrap_or(0), expected);
            }
            let (_, view) = call(
                &server,
                "GET",
                &format!("/api/v1/keys/{}", key["id"].as_str().unwrap()),
                &root,
                None,
            )
            .await;
            assert_eq!(view["version"], latest);
            let rotations = system_records(&server, &root, "key.rotate", key).await;
            let mut from: Vec<i64> = rotations
                .iter()
                .map(|record| {
                    assert_eq!(record["detail"]["reason"], "budget", "{record}");
                    assert_eq!(record["approved"], "not_required");
                    record["detail"]["from"].as_i64().unwrap()
                })
                .collect();
            from.sort();
            assert_eq!(
                from,
                (1..latest).collect::<Vec<_>>(),
                "one rotation per spent version"
            );
        }

        // A lower budget: the latest version (2 made) is spent already.
        // It is rotated before use, and the call that spends its successor
        // (budget 1) rotates again.
        let settings = format!(
            "rate_limit_per_sec = 1000\n[keys]\nencryptions_per_version = 1\n{}",
            token_lines(TOKEN)
        );
        let server = restart(server, &settings).await;
        let root = server.root_token().await;
        let (status, made) = op(
            &server,
            &root,
            &software,
            "encrypt",
            json!({"plaintext": "late"}),
        )
        .await;
        assert_eq!((status, made["version"].clone()), (200, json!(6)), "{made}");
        let versions = versions_of(&server.database_url, &software).await;
        let counts: Vec<i64> = versions.iter().map(|version| version.1).collect();
        assert_eq!(counts, [4, 4, 4, 4, 2, 1, 0]);
        assert_eq!(
            system_records(&server, &root, "key.rotate", &software)
                .await
                .len(),
            6
        );
        server.stop().await;
    }
}

/// Destroying a key with token objects is all or nothing: `destroying` is
/// committed first and from then on every use answers `410`; while the
/// token cannot delete (the process logged out of it: private objects are
/// hidden, which must not pass for "already gone") the key stays
/// `destroying` with every object id in the store; once the token answers,
/// the scheduler deletes the objects (one deleted already by an earlier
/// attempt counts as deleted) and only then wipes the rows, `destroyed`,
/// audited as `system`. Both databases, a real SoftHSM2 token.
#[tokio::test(flavor = "multi_thread")]
async fn destroying_an_hsm_key_never_leaves_half_a_key_and_the_scheduler_finishes_it() {
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;
    use custos_control_plane::kernel::hsm::HsmKeyId;
    const LABEL: &str = "custos-cp-destroy";
    let slot = own_token(LABEL);
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (dir, url) = fresh_store(backend).await;
        let settings = format!(
            "rate_limit_per_sec = 1000\n[keys]\nschedule_poll_ms = 50\nencryptions_per_version = 1\n{}",
            token_lines(LABEL)
        );
        let server = Server::start_with(dir, url, &settings).await;
        let root = server.root_token().await;
        let (_, first) = server.identity(&root, "approver-1", "approver", None).await;
        let (_, second) = server.identity(&root, "approver-2", "approver", None).await;
        let key = create(&server, &root, json!({"name": "doomed", "type": "AES_256", "usage": "ENCRYPT_DECRYPT", "backend": "hsm"})).await;
        // Budget 1: each encryption rotates, so the key has four versions.
        let mut ciphertexts = Vec::new();
        for item in 0..3 {
            let (status, made) = op(
                &server,
                &root,
                &key,
                "encrypt",
                json!({"plaintext": format!("secret {item}")}),
            )
            .await;
            assert_eq!(status, 200, "{made}");
            ciphertexts.push(made["ciphertext"].clone());
        }
        let objects: Vec<HsmKeyId> = versions_of(&server.database_url, &key)
            .await
            .iter()
            .map(|version| HsmKeyId::from_hex(version.3.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(objects.len(), 4);
        let token = test_store(LABEL);
        assert!(objects.iter().all(|object| token.exists(object).unwrap()));
        // An earlier attempt got as far as one object.
        token.destroy(&objects[0]).unwrap();

        // The token logs the process out.
        let context = custos_signer_node::master_key::shared_pkcs11_context(std::path::Path::new(
            SOFTHSM_MODULE,
        ))
        .unwrap();
        let session = context.open_ro_session(slot).unwrap();
        session.logout().unwrap();

        let (status, pending) = call(
            &server,
            "DELETE",
            &format!("/api/v1/keys/{}", key["id"].as_str().unwrap()),
            &root,
            None,
        )
        .await;
        assert_eq!(status, 202, "{pending}");
        let operation = approved(&server, &[&first, &second], &pending).await;
        assert_eq!(operation["status"], "executed", "{operation}");
        assert_eq!(operation["result"]["state"], "destroying", "{operation}");
        // Several scheduler passes fail meanwhile.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(key_state(&server, &root, &key).await, "destroying");
        for (verb, body) in [
            ("decrypt", json!({"ciphertext": ciphertexts[0]})),
            ("encrypt", json!({"plaintext": "more"})),
            ("rotate", json!({})),
        ] {
            let (status, answer) = op(&server, &root, &key, verb, body).await;
            assert_eq!(
                (status, code(&answer)),
                (410, "key_destroyed"),
                "{verb}: {answer}"
            );
        }
        let (status, answer) = call(
            &server,
            "DELETE",
            &format!("/api/v1/keys/{}", key["id"].as_str().unwrap()),
            &root,
            None,
        )
        .await;
        assert_eq!((status, code(&answer)), (410, "key_destroyed"));
        let versions = versions_of(&server.database_url, &key).await;
        assert!(
            versions.iter().all(|version| version.3.is_some()),
            "no object id is forgotten while an object may exist: {versions:?}"
        );
        assert!(system_records(&server, &root, "key.destroy", &key)
            .await
            .is_empty());

        // The token answers again: the scheduler finishes the job.
        session
            .login(UserType::User, Some(&AuthPin::from(TOKEN_PIN)))
            .unwrap();
        let mut state = String::new();
        for _ in 0..100 {
            state = key_state(&server, &root, &key).await;
            if state == "destroyed" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(state, "destroyed");
        assert!(
            objects.iter().all(|object| !token.exists(object).unwrap()),
            "every token object is gone"
        );
        let versions = versions_of(&server.database_url, &key).await;
        assert!(
            versions
                .iter()
                .all(|version| !version.2 && version.3.is_none()),
            "{versions:?}"
        );
        let finished = system_records(&server, &root, "key.destroy", &key).await;
        assert_eq!(finished.len(), 1, "{finished:?}");
        assert_eq!(finished[0]["detail"]["state"], "destroyed");
        assert_eq!(finished[0]["detail"]["versions"], 4);
        assert_eq!(finished[0]["detail"]["tokenObjectsDeleted"], 3);
        let (status, answer) = op(
            &server,
            &root,
            &key,
            "decrypt",
            json!({"ciphertext": ciphertexts[1]}),
        )
        .await;
        assert_eq!((status, code(&answer)), (410, "key_destroyed"));
        drop(session);
        server.stop().await;
    }
}

/// One request through the router in process (no socket), as a client at
/// 127.0.0.1: (status, JSON body).
async fn through(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    use tower::ServiceExt as _;
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let mut request = request
        .body(axum::body::Body::from(
            body.map(|body| body.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40_000,
        ))));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `sys/seal` leaves no opened key in memory: the transit cache is empty
/// and the token store of HSM keys is locked (every call refused before
/// the token), while the keyring forgets its keys; after the operators'
/// unseal, transit and registry keys (software and HSM) work again and the
/// old ciphertexts open. The server's own state is built as `run` builds
/// it, so the test can look inside; requests go through the router.
#[tokio::test(flavor = "multi_thread")]
async fn sealing_drops_cached_transit_keys_and_locks_the_token_until_unseal() {
    use custos_control_plane::kernel::state::AppState;
    softhsm();
    for backend in BACKENDS {
        eprintln!("-- on {backend:?}");
        let (dir, url) = fresh_store(backend).await;
        let config = custos_control_plane::kernel::config::Config::parse(
            &format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ndatabase_url = \"{url}\"\n\
                 rate_limit_per_sec = 1000\n{}[seal]\nmode = \"shamir\"\n",
                dir.path().display(),
                token_lines(TOKEN)
            ),
            [],
        )
        .unwrap();
        let db = custos_control_plane::kernel::db::Db::connect(&url)
            .await
            .unwrap();
        let keyring = {
            let mut conn = db.pool().acquire().await.unwrap();
            custos_control_plane::kernel::keyring::Keyring::load(
                &mut conn,
                custos_control_plane::kernel::config::SealMode::Shamir,
            )
            .await
            .unwrap()
        };
        let registry = std::sync::Arc::new(
            custos_control_plane::engines::wallets::nodes::Registry::from_config(&config.nodes)
                .unwrap(),
        );
        let state = std::sync::Arc::new(AppState::new(
            config,
            db.clone(),
            std::sync::Arc::new(keyring),
            registry,
            Some(test_store(TOKEN)),
            None,
            None,
        ));
        let app = custos_control_plane::http::app(state.clone());
        let (status, init) = through(
            &app,
            "POST",
            "/api/v1/sys/init",
            None,
            Some(json!({"shares": 3, "threshold": 2})),
        )
        .await;
        assert_eq!(status, 200, "{init}");
        let shares: Vec<String> = init["unsealShares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|share| share.as_str().unwrap().to_string())
            .collect();
        let unseal = || async {
            for share in &shares[..2] {
                let (status, answer) = through(
                    &app,
                    "POST",
                    "/api/v1/sys/unseal",
                    None,
                    Some(json!({ "share": share })),
                )
                .await;
                assert_eq!(status, 200, "{answer}");
            }
        };
        unseal().await;
        let (status, issued) = through(
            &app,
            "POST",
            "/api/v1/auth/token",
            None,
            Some(
                json!({"clientId": init["rootClientId"], "clientSecret": init["rootClientSecret"]}),
            ),
        )
        .await;
        assert_eq!(status, 200, "{issued}");
        let root = issued["accessToken"].as_str().unwrap().to_string();
        let root = Some(root.as_str());

        let (status, answer) = through(
            &app,
            "POST",
            "/api/v1/transit/keys",
            root,
            Some(json!({"name": "payments"})),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        let (status, transit) = through(
            &app,
            "POST",
            "/api/v1/transit/encrypt",
            root,
            Some(json!({"keyName": "payments", "plaintext": "4111"})),
        )
        .await;
        assert_eq!(status, 200, "{transit}");
        let mut registry = Vec::new();
        for backend in ["software", "hsm"] {
            let (status, key) = through(&app, "POST", "/api/v1/keys", root, Some(json!({"name": format!("{backend}-aes"), "type": "AES_256", "usage": "ENCRYPT_DECRYPT", "backend": backend}))).await;
            assert_eq!(status, 201, "{key}");
            let id = key["id"].as_str().unwrap().to_string();
            let (status, made) = through(
                &app,
                "POST",
                &format!("/api/v1/keys/{id}/encrypt"),
                root,
                Some(json!({"plaintext": backend})),
            )
            .await;
            assert_eq!(status, 200, "{made}");
            registry.push((id, backend, made["ciphertext"].clone()));
        }
        assert_eq!(state.transit.cached_keys(), 1);
        let token_store = state.hsm_keys.as_ref().unwrap();
        assert!(!token_store.is_locked());

        let (status, sealed) =
            through(&app, "POST", "/api/v1/sys/seal", root, Some(json!({}))).await;
        assert_eq!(status, 200, "{sealed}");
        assert!(state.keyring.is_sealed());
        assert_eq!(
            state.transit.cached_keys(),
            0,
            "no transit key stays opened"
        );
        assert!(
            token_store.is_locked(),
            "the token store uses no key while sealed"
        );
        let object = {
            let mut conn = db.pool().acquire().await.unwrap();
            let row = sqlx::query("SELECT hsm_id FROM registry_key_versions WHERE key_id = $1")
                .bind(&registry[1].0)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            custos_control_plane::kernel::hsm::HsmKeyId::from_hex(
                &row.try_get::<String, _>("hsm_id").unwrap(),
            )
            .unwrap()
        };
        let refused = token_store.purge(&object).unwrap_err();
        assert_eq!(refused.code(), "hsm_locked");
        let (status, answer) = through(
            &app,
            "POST",
            "/api/v1/transit/decrypt",
            root,
            Some(json!({"keyName": "payments", "ciphertext": transit["ciphertext"]})),
        )
        .await;
        assert_eq!((status, code(&answer)), (503, "sealed"));

        unseal().await;
        assert!(!token_store.is_locked(), "logged in again at unseal");
        let (status, opened) = through(
            &app,
            "POST",
            "/api/v1/transit/decrypt",
            root,
            Some(json!({"keyName": "payments", "ciphertext": transit["ciphertext"]})),
        )
        .await;
        assert_eq!(
            (status, opened["plaintext"].clone()),
            (200, json!("4111")),
            "{opened}"
        );
        assert_eq!(state.transit.cached_keys(), 1);
        for (id, backend, ciphertext) in &registry {
            let (status, opened) = through(
                &app,
                "POST",
                &format!("/api/v1/keys/{id}/decrypt"),
                root,
                Some(json!({ "ciphertext": ciphertext })),
            )
            .await;
            assert_eq!(
                (status, opened["plaintext"].clone()),
                (200, json!(backend)),
                "{opened}"
            );
            let (status, made) = through(
                &app,
                "POST",
                &format!("/api/v1/keys/{id}/encrypt"),
                root,
                Some(json!({"plaintext": "after"})),
            )
            .await;
            assert_eq!(status, 200, "{made}");
        }
        drop(app);
        drop(state);
        db.close().await;
        drop_postgres_database(&url).await;
    }
}

/// The seed SDKs' key calls work unchanged: a usage list, a rotation
/// duration, and a sign call that names its algorithm. The signature is
/// checked with OpenSSL, which did not make it.
#[tokio::test(flavor = "multi_thread")]
async fn the_seed_sdks_key_shapes_are_accepted() {
    for backend in BACKENDS {
        let server = Server::start(backend).await;
        let root = server.root_token().await;
        let key = create(
            &server,
            &root,
            json!({"name": "seed-signing", "type": "ECDSA_SECP256K1", "usage": ["sign", "verify"], "rotation": "90d"}),
        )
        .await;
        assert_eq!(key["usage"], "SIGN_VERIFY", "{key}");
        assert_eq!(key["rotation"]["periodDays"], 90, "{key}");
        let aes = create(
            &server,
            &root,
            json!({"name": "seed-aes", "type": "AES_256", "usage": ["encrypt", "decrypt"], "rotation": "2w"}),
        )
        .await;
        assert_eq!(aes["usage"], "ENCRYPT_DECRYPT", "{aes}");
        // No name, as the seed SDKs create keys: one is made up.
        let unnamed = create(
            &server,
            &root,
            json!({"type": "ECDSA_SECP256K1", "usage": ["sign", "verify"], "rotation": "90d"}),
        )
        .await;
        assert!(
            unnamed["name"].as_str().unwrap().starts_with("key_"),
            "{unnamed}"
        );
        assert_eq!(aes["rotation"]["periodDays"], 14, "{aes}");
        for (body, code) in [
            (
                json!({"name": "x1", "type": "AES_256", "usage": ["encrypt", "sign"]}),
                "invalid_usage",
            ),
            (
                json!({"name": "x2", "type": "AES_256", "usage": []}),
                "invalid_usage",
            ),
            (
                json!({"name": "x3", "type": "AES_256", "usage": ["encrypt"], "rotation": "12h"}),
                "invalid_rotation",
            ),
            (
                json!({"name": "x4", "type": "AES_256", "usage": ["encrypt"], "rotation": "soon"}),
                "invalid_rotation",
            ),
        ] {
            let (status, answer) =
                call(&server, "POST", "/api/v1/keys", &root, Some(body.clone())).await;
            assert_eq!(
                (status, answer["error"]["code"].as_str()),
                (422, Some(code)),
                "{body}: {answer}"
            );
        }

        let message = "pay 10 to bob";
        let (status, signed) = op(
            &server,
            &root,
            &key,
            "sign",
            json!({"message": message, "algorithm": "ECDSA_SHA256"}),
        )
        .await;
        assert_eq!(status, 200, "{signed}");
        let signature = BASE64
            .decode(signed["signature"].as_str().unwrap())
            .unwrap();
        let (_, public) = call(
            &server,
            "GET",
            &format!("/api/v1/keys/{}/public-key", key["id"].as_str().unwrap()),
            &root,
            None,
        )
        .await;
        let verifier_key = openssl_public(&public);
        let mut verifier =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &verifier_key)
                .unwrap();
        verifier.update(message.as_bytes()).unwrap();
        assert!(
            verifier.verify(&signature).unwrap(),
            "OpenSSL verifies the signature"
        );
        let (status, verified) = op(
            &server,
            &root,
            &key,
            "verify",
            json!({"message": message, "signature": signed["signature"], "algorithm": "ECDSA_SHA_256"}),
        )
        .await;
        assert_eq!(
            (status, verified["valid"].as_bool()),
            (200, Some(true)),
            "{verified}"
        );
        let (status, refused) = op(
            &server,
            &root,
            &key,
            "sign",
            json!({"message": message, "algorithm": "ED25519"}),
        )
        .await;
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (422, Some("invalid_algorithm")),
            "{refused}"
        );
        server.stop().await;
    }
}
