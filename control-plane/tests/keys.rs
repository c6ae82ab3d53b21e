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
        let (status, pending) = op(&server, &root, &aes, "rotate", json!({})).await;
        assert_eq!(status, 202, "{pending}");
        let (_, second_admin) = server.identity(&root, "admin-2", "admin", None).await;
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
        let db = custos_control_plane::db::Db::connect(&server.database_url)
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
    use custos_control_plane::keys::hsm::{HsmKeyId, HsmKeyStore};
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
    let db = custos_control_plane::db::Db::connect(&server.database_url)
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
    let db = custos_control_plane::db::Db::connect(&server.database_url)
        .await
        .unwrap();
    let set = |column: &'static str| {
        let (db, id) = (&db, id.clone());
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE registry_keys SET {column} = $1 WHERE id = $2"
            )))
            .bind(custos_control_plane::db::now_ms() - 1)
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
    let db = custos_control_plane::db::Db::connect(&server.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE registry_keys SET next_rotation = $1 WHERE id = $2")
        .bind(custos_control_plane::db::now_ms() - 1)
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
            assert!(view["nextRotationAt"].as_i64().unwrap() > custos_control_plane::db::now_ms());
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
