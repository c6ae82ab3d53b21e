//! Tests against a real SoftHSM2 token. `SOFTHSM2_CONF` is process-wide
//! and the module is initialised once per process, so every test of this
//! file shares one token (created on first use) and uses its own labels.
//! Every signature is verified with an independent software
//! implementation (`p256`, `k256`, `ed25519-dalek`, `rsa`).

use std::sync::OnceLock;

use ::rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ::rsa::signature::Verifier;
use ::rsa::traits::PublicKeyParts;
use cryptoki::object::AttributeInfo;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use p256::ecdsa::signature::hazmat::PrehashVerifier;

use super::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "custos-keys-test";
/// A second token nobody logs in to with the right PIN, so that a wrong
/// PIN is really checked (see [`HsmKeyStore::open`]).
const PIN_TEST_TOKEN: &str = "custos-keys-pin";
const PIN: &str = "1234";
/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (32 bytes) }`.
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Creates the token directory and both tokens before the first PKCS#11
/// call of the process (SoftHSM2 reads `SOFTHSM2_CONF` in C_Initialize).
fn softhsm() {
    static TOKENS: OnceLock<PathBuf> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let install = "install the Debian package softhsm2";
        assert!(
            Path::new(MODULE).exists(),
            "the SoftHSM2 module {MODULE} is missing: {install}"
        );
        // Kept: the static is never dropped, and the module uses the
        // files until the process exits.
        let dir = tempfile::Builder::new()
            .prefix("custos-softhsm-keys-")
            .tempdir()
            .unwrap()
            .keep();
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in [TOKEN, PIN_TEST_TOKEN] {
            let output = std::process::Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label])
                .args(["--pin", PIN, "--so-pin", "5678"])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .unwrap_or_else(|error| panic!("cannot run softhsm2-util ({error}): {install}"));
            assert!(
                output.status.success(),
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        dir
    });
}

fn store() -> &'static HsmKeyStore {
    static STORE: OnceLock<HsmKeyStore> = OnceLock::new();
    STORE.get_or_init(|| {
        softhsm();
        HsmKeyStore::open(Path::new(MODULE), TOKEN, PIN).unwrap()
    })
}

/// One RSA-2048 key for all RSA tests: generation is the slow part.
fn rsa_2048() -> &'static HsmKey {
    static KEY: OnceLock<HsmKey> = OnceLock::new();
    KEY.get_or_init(|| {
        store()
            .generate(HsmKeyKind::Rsa2048, "test-rsa-2048")
            .unwrap()
    })
}

fn spki(key: &HsmKey) -> &[u8] {
    key.public_key_der.as_deref().unwrap()
}

fn rsa_verifies(key: &HsmKey, message: &[u8], signature: &[u8]) -> bool {
    let public = ::rsa::RsaPublicKey::from_public_key_der(spki(key)).unwrap();
    let verifier = ::rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(public, 32);
    let signature = ::rsa::pss::Signature::try_from(signature).unwrap();
    verifier.verify(message, &signature).is_ok()
}

/// The token object of `class` with this id (through a test session).
fn object(session: &Session, key: &HsmKey, class: ObjectClass) -> ObjectHandle {
    find_key(session, &key.id, key.kind, class).unwrap()
}

#[test]
fn store_is_clone_send_sync_and_debug_shows_no_pin() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<HsmKeyStore>();
    let debug = format!("{:?}", store().clone());
    assert!(debug.contains(TOKEN), "{debug}");
    assert!(!debug.contains(PIN), "{debug}");
}

#[test]
fn open_fails_clearly_for_a_missing_module_token_or_wrong_pin() {
    softhsm();
    let error = HsmKeyStore::open(Path::new("/nonexistent/libpkcs11.so"), TOKEN, PIN).unwrap_err();
    assert_eq!(error.code(), "hsm_unavailable", "{error}");

    let error = HsmKeyStore::open(Path::new(MODULE), "no-such-token", PIN).unwrap_err();
    assert_eq!(error.code(), "hsm_token_not_found", "{error}");

    let error = HsmKeyStore::open(Path::new(MODULE), PIN_TEST_TOKEN, "0000").unwrap_err();
    assert!(
        matches!(
            &error,
            HsmError::Login {
                source: CryptokiError::Pkcs11(RvError::PinIncorrect, _),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.code(), "hsm_login_failed");
    assert!(!error.to_string().contains("0000"));
}

#[test]
fn aes_gcm_round_trips_and_rejects_wrong_aad_and_tampering() {
    let store = store();
    let key = store.generate(HsmKeyKind::Aes256, "test-aes-gcm").unwrap();
    assert_eq!(key.public_key_der, None);
    let plaintext = b"customer record 42";
    let ciphertext = store
        .encrypt(&key.id, key.kind, plaintext, b"aad:42")
        .unwrap();
    assert_eq!(ciphertext.len(), GCM_IV_LEN + plaintext.len() + GCM_TAG_LEN);
    let again = store
        .encrypt(&key.id, key.kind, plaintext, b"aad:42")
        .unwrap();
    assert_ne!(ciphertext[..GCM_IV_LEN], again[..GCM_IV_LEN], "fresh IV");
    assert_eq!(
        store
            .decrypt(&key.id, key.kind, &ciphertext, b"aad:42")
            .unwrap()
            .as_slice(),
        plaintext
    );
    assert!(store.decrypt(&key.id, key.kind, &again, b"aad:42").is_ok());

    let mut failures = vec![
        store.decrypt(&key.id, key.kind, &ciphertext, b"aad:43"),
        store.decrypt(&key.id, key.kind, &ciphertext, b""),
        store.decrypt(
            &key.id,
            key.kind,
            &ciphertext[..GCM_IV_LEN + GCM_TAG_LEN - 1],
            b"aad:42",
        ),
        store.decrypt(
            &key.id,
            key.kind,
            &ciphertext[..ciphertext.len() - 1],
            b"aad:42",
        ),
    ];
    // Flip one bit in the IV, the ciphertext body and the tag.
    for position in [0, GCM_IV_LEN + 3, ciphertext.len() - 1] {
        let mut tampered = ciphertext.clone();
        tampered[position] ^= 0x01;
        failures.push(store.decrypt(&key.id, key.kind, &tampered, b"aad:42"));
    }
    for failure in failures {
        let error = failure.unwrap_err();
        assert!(matches!(error, HsmError::DecryptFailed), "{error:?}");
        assert_eq!(error.code(), "decrypt_failed");
    }
    // Another AES key does not open it either.
    let other = store
        .generate(HsmKeyKind::Aes256, "test-aes-gcm-other")
        .unwrap();
    let error = store
        .decrypt(&other.id, other.kind, &ciphertext, b"aad:42")
        .unwrap_err();
    assert!(matches!(error, HsmError::DecryptFailed), "{error:?}");
    // An empty plaintext is fine.
    let empty = store.encrypt(&key.id, key.kind, b"", b"").unwrap();
    assert!(store
        .decrypt(&key.id, key.kind, &empty, b"")
        .unwrap()
        .is_empty());
}

#[test]
fn aes_data_key_wrapping_binds_the_context() {
    let store = store();
    let key = store.generate(HsmKeyKind::Aes256, "test-aes-wrap").unwrap();
    let data_key = [0x5au8; DATA_KEY_LEN];
    let wrapped = store
        .wrap_data_key(&key.id, key.kind, &data_key, b"blob:7")
        .unwrap();
    assert_eq!(wrapped.len(), GCM_IV_LEN + DATA_KEY_LEN + GCM_TAG_LEN);
    let unwrapped = store
        .unwrap_data_key(&key.id, key.kind, &wrapped, b"blob:7")
        .unwrap();
    assert_eq!(*unwrapped, data_key);

    let error = store
        .unwrap_data_key(&key.id, key.kind, &wrapped, b"blob:8")
        .unwrap_err();
    assert!(matches!(error, HsmError::DecryptFailed), "{error:?}");
    // A wrapped key is not an encrypt() ciphertext, nor the reverse.
    let error = store
        .decrypt(&key.id, key.kind, &wrapped, b"blob:7")
        .unwrap_err();
    assert!(matches!(error, HsmError::DecryptFailed), "{error:?}");
    let encrypted = store
        .encrypt(&key.id, key.kind, &data_key, b"blob:7")
        .unwrap();
    let error = store
        .unwrap_data_key(&key.id, key.kind, &encrypted, b"blob:7")
        .unwrap_err();
    assert!(matches!(error, HsmError::DecryptFailed), "{error:?}");

    let error = store
        .wrap_data_key(&key.id, key.kind, &[1; 31], b"blob:7")
        .unwrap_err();
    assert!(matches!(error, HsmError::InvalidDataKey { len: 31 }));
    assert_eq!(error.code(), "invalid_data_key");
}

#[test]
fn p256_signatures_verify_with_the_p256_crate() {
    use p256::ecdsa::{Signature, VerifyingKey};
    let store = store();
    let key = store.generate(HsmKeyKind::EcP256, "test-p256").unwrap();
    let verifying_key = VerifyingKey::from_public_key_der(spki(&key)).unwrap();
    assert_eq!(store.public_key_der(&key.id, key.kind).unwrap(), spki(&key));

    let digest = Sha256::digest(b"p256 digest");
    let signature = store.sign_digest(&key.id, key.kind, &digest).unwrap();
    let signature = Signature::from_der(&signature).unwrap();
    verifying_key.verify_prehash(&digest, &signature).unwrap();
    assert!(verifying_key
        .verify_prehash(&Sha256::digest(b"other"), &signature)
        .is_err());

    let message = b"p256 message";
    let signature = store.sign_message(&key.id, key.kind, message).unwrap();
    let signature = Signature::from_der(&signature).unwrap();
    p256::ecdsa::signature::Verifier::verify(&verifying_key, message, &signature).unwrap();

    let error = store.sign_digest(&key.id, key.kind, &[0; 31]).unwrap_err();
    assert!(matches!(error, HsmError::InvalidDigest { len: 31 }));
    assert_eq!(error.code(), "invalid_digest");
}

#[test]
fn secp256k1_signatures_are_low_s_and_verify_with_k256() {
    use k256::ecdsa::{Signature, VerifyingKey};
    let store = store();
    let key = store
        .generate(HsmKeyKind::EcSecp256k1, "test-secp256k1")
        .unwrap();
    let verifying_key = VerifyingKey::from_public_key_der(spki(&key)).unwrap();
    // Half of raw ECDSA signatures have a high s: 16 of them make it
    // all but certain that the normalisation ran.
    for round in 0u8..16 {
        let digest = Sha256::digest([round]);
        let der = store.sign_digest(&key.id, key.kind, &digest).unwrap();
        let signature = Signature::from_der(&der).unwrap();
        assert!(signature.normalize_s().is_none(), "high s in round {round}");
        verifying_key.verify_prehash(&digest, &signature).unwrap();
    }
    let der = store
        .sign_message(&key.id, key.kind, b"k1 message")
        .unwrap();
    let signature = Signature::from_der(&der).unwrap();
    k256::ecdsa::signature::Verifier::verify(&verifying_key, b"k1 message", &signature).unwrap();
}

#[test]
fn high_s_is_normalised_for_secp256k1_only() {
    use k256::ecdsa::signature::hazmat::PrehashSigner;
    let signing_key = k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let digest = Sha256::digest(b"normalise me");
    let signature: k256::ecdsa::Signature = signing_key.sign_prehash(&digest).unwrap();
    let (r, s) = signature.split_scalars();
    let high_s: k256::Scalar = -*s;
    let mut raw = r.to_bytes().to_vec();
    raw.extend_from_slice(&high_s.to_bytes());

    let normalised = ecdsa_der(&raw, HsmKeyKind::EcSecp256k1).unwrap();
    let normalised = k256::ecdsa::Signature::from_der(&normalised).unwrap();
    assert_eq!(normalised, signature.normalize_s().unwrap_or(signature));
    signing_key
        .verifying_key()
        .verify_prehash(&digest, &normalised)
        .unwrap();

    // P-256 signatures keep the s the token chose.
    let kept = ecdsa_der(&raw, HsmKeyKind::EcP256).unwrap();
    let kept = p256::ecdsa::Signature::from_der(&kept).unwrap();
    assert_eq!(kept.to_bytes().as_slice(), raw.as_slice());

    let error = ecdsa_der(&raw[..63], HsmKeyKind::EcP256).unwrap_err();
    assert_eq!(error.code(), "hsm_invalid_response");
}

#[test]
fn ed25519_signatures_verify_with_ed25519_dalek() {
    let store = store();
    let key = match store.generate(HsmKeyKind::Ed25519, "test-ed25519") {
        Ok(key) => key,
        Err(error) => panic!("this SoftHSM2 build cannot make Ed25519 keys: {error}"),
    };
    let der = spki(&key);
    assert_eq!(der.len(), 44);
    assert_eq!(&der[..12], ED25519_SPKI_PREFIX);
    let public: [u8; 32] = der[12..].try_into().unwrap();
    let verifying_key = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();

    let message = b"ed25519 signs the message itself";
    let signature = store.sign_message(&key.id, key.kind, message).unwrap();
    let signature = ed25519_dalek::Signature::from_slice(&signature).unwrap();
    verifying_key.verify_strict(message, &signature).unwrap();
    assert!(verifying_key.verify_strict(b"other", &signature).is_err());

    let error = store
        .sign_digest(&key.id, key.kind, &Sha256::digest(message))
        .unwrap_err();
    assert_eq!(error.code(), "unsupported_operation");
}

#[test]
fn rsa_pss_signatures_verify_with_the_rsa_crate() {
    let store = store();
    let key = rsa_2048();
    let public = ::rsa::RsaPublicKey::from_public_key_der(spki(key)).unwrap();
    assert_eq!(public.size(), 256);
    assert_eq!(public.e(), &::rsa::BigUint::from(65_537u32));

    let message = b"rsa-pss over a message";
    let signature = store.sign_message(&key.id, key.kind, message).unwrap();
    assert_eq!(signature.len(), 256);
    assert!(rsa_verifies(key, message, &signature));
    assert!(!rsa_verifies(key, b"another message", &signature));

    let signature = store
        .sign_digest(&key.id, key.kind, &Sha256::digest(message))
        .unwrap();
    assert!(rsa_verifies(key, message, &signature));
}

#[test]
fn rsa_3072_generates_and_signs() {
    let store = store();
    let key = store
        .generate(HsmKeyKind::Rsa3072, "test-rsa-3072")
        .unwrap();
    let public = ::rsa::RsaPublicKey::from_public_key_der(spki(&key)).unwrap();
    assert_eq!(public.size(), 384);
    let signature = store.sign_message(&key.id, key.kind, b"3072").unwrap();
    assert_eq!(signature.len(), 384);
    assert!(rsa_verifies(&key, b"3072", &signature));
    let error = store
        .sign_message(&key.id, HsmKeyKind::Rsa2048, b"3072")
        .unwrap_err();
    assert_eq!(error.code(), "key_kind_mismatch");
}

/// RSA-OAEP-SHA256 decryption in the token: SoftHSM2 2.6.1 refuses the
/// mechanism, which must come out as `unsupported_mechanism`; a token
/// that has it must decrypt what the `rsa` crate encrypted.
#[test]
fn rsa_oaep_decrypts_in_tokens_that_support_sha256() {
    let store = store();
    let key = rsa_2048();
    let public = ::rsa::RsaPublicKey::from_public_key_der(spki(key)).unwrap();
    let ciphertext = public
        .encrypt(
            &mut OsRng,
            ::rsa::Oaep::new_with_label::<Sha256, _>("label"),
            b"oaep plaintext",
        )
        .unwrap();
    match store.decrypt(&key.id, key.kind, &ciphertext, b"label") {
        Ok(plaintext) => {
            assert_eq!(plaintext.as_slice(), b"oaep plaintext");
            let error = store
                .decrypt(&key.id, key.kind, &ciphertext, b"other")
                .unwrap_err();
            assert!(matches!(error, HsmError::DecryptFailed), "{error:?}");
        }
        Err(error) => {
            assert!(
                matches!(error, HsmError::UnsupportedMechanism { .. }),
                "{error:?}"
            );
            assert_eq!(error.code(), "unsupported_mechanism");
            eprintln!("note: this token cannot decrypt RSA-OAEP-SHA256: {error}");
        }
    }
    // Wrong lengths never reach the token.
    let error = store
        .decrypt(&key.id, key.kind, &ciphertext[1..], b"label")
        .unwrap_err();
    assert!(matches!(error, HsmError::DecryptFailed), "{error:?}");
}

/// RSA encryption runs on the host under the token's public key: checked
/// by putting the public half of a software key in the token under a new
/// id and decrypting with the `rsa` crate.
#[test]
fn rsa_oaep_encryption_and_wrapping_are_standard_oaep_sha256() {
    let store = store();
    let software = Rsa::generate(2048).unwrap();
    let private = ::rsa::RsaPrivateKey::from_pkcs8_der(
        &PKey::from_rsa(software.clone())
            .unwrap()
            .private_key_to_pkcs8()
            .unwrap(),
    )
    .unwrap();
    let id = HsmKeyId::random();
    let session = store.session(true).unwrap();
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(true),
            Attribute::Id(id.as_bytes().to_vec()),
            Attribute::Label(b"test-rsa-imported-public".to_vec()),
            Attribute::Modulus(software.n().to_vec()),
            Attribute::PublicExponent(software.e().to_vec()),
            Attribute::Encrypt(true),
            Attribute::Verify(true),
        ])
        .unwrap();
    let kind = HsmKeyKind::Rsa2048;

    let ciphertext = store.encrypt(&id, kind, b"to the token key", b"").unwrap();
    assert_eq!(
        private
            .decrypt(::rsa::Oaep::new::<Sha256>(), &ciphertext)
            .unwrap(),
        b"to the token key"
    );
    let ciphertext = store.encrypt(&id, kind, b"labelled", b"label").unwrap();
    assert_eq!(
        private
            .decrypt(
                ::rsa::Oaep::new_with_label::<Sha256, _>("label"),
                &ciphertext
            )
            .unwrap(),
        b"labelled"
    );

    let wrapped = store
        .wrap_data_key(&id, kind, &[3u8; DATA_KEY_LEN], b"blob:9")
        .unwrap();
    let label = String::from_utf8(domain_bound(WRAP_DOMAIN, b"blob:9")).unwrap();
    assert_eq!(
        private
            .decrypt(::rsa::Oaep::new_with_label::<Sha256, _>(label), &wrapped)
            .unwrap(),
        [3u8; DATA_KEY_LEN]
    );

    assert!(store.encrypt(&id, kind, &[0; 190], b"").is_ok());
    let error = store.encrypt(&id, kind, &[0; 191], b"").unwrap_err();
    assert!(matches!(
        error,
        HsmError::PlaintextTooLarge { len: 191, max: 190 }
    ));
    assert_eq!(error.code(), "plaintext_too_large");
    store.destroy(&id).unwrap();
}

#[test]
fn keys_are_sensitive_and_never_leave_the_token() {
    let store = store();
    let aes = store
        .generate(HsmKeyKind::Aes256, "test-sensitive-aes")
        .unwrap();
    let ec = store
        .generate(HsmKeyKind::EcP256, "test-sensitive-ec")
        .unwrap();
    let ed = store
        .generate(HsmKeyKind::Ed25519, "test-sensitive-ed25519")
        .unwrap();
    let session = store.session(true).unwrap();
    // A key that may wrap others, in this session only.
    let wrapping_key = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Wrap(true),
            ],
        )
        .unwrap();
    let cases = [
        (
            &aes,
            ObjectClass::SECRET_KEY,
            AttributeType::Value,
            "test-sensitive-aes",
        ),
        (
            &ec,
            ObjectClass::PRIVATE_KEY,
            AttributeType::Value,
            "test-sensitive-ec",
        ),
        (
            &ed,
            ObjectClass::PRIVATE_KEY,
            AttributeType::Value,
            "test-sensitive-ed25519",
        ),
        (
            rsa_2048(),
            ObjectClass::PRIVATE_KEY,
            AttributeType::PrivateExponent,
            "test-rsa-2048",
        ),
    ];
    for (key, class, secret, label) in cases {
        let object = object(&session, key, class);
        let attributes = session
            .get_attributes(
                object,
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Unwrap,
                    AttributeType::Derive,
                    AttributeType::Id,
                    AttributeType::Label,
                ],
            )
            .unwrap();
        for expected in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::AlwaysSensitive(true),
            Attribute::NeverExtractable(true),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Id(key.id.as_bytes().to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ] {
            assert!(
                attributes.contains(&expected),
                "{}: {expected:?} missing from {attributes:?}",
                key.kind
            );
        }
        // The secret cannot be read...
        let info = session.get_attribute_info(object, &[secret]).unwrap();
        assert!(
            matches!(info.as_slice(), [AttributeInfo::Sensitive]),
            "{}: {info:?}",
            key.kind
        );
        assert!(session
            .get_attributes(object, &[secret])
            .unwrap()
            .is_empty());
        // ...nor wrapped out of the token.
        let error = session
            .wrap_key(&Mechanism::AesKeyWrapPad, wrapping_key, object)
            .unwrap_err();
        assert!(
            matches!(
                error,
                CryptokiError::Pkcs11(RvError::KeyUnextractable, Function::WrapKey)
            ),
            "{}: {error:?}",
            key.kind
        );
    }
}

#[test]
fn destroy_removes_every_object_and_the_id_is_then_unknown() {
    let store = store();
    let key = store.generate(HsmKeyKind::EcP256, "test-destroy").unwrap();
    let session = store.session(false).unwrap();
    assert_eq!(find_objects(&session, &key.id, None).unwrap().len(), 2);
    assert!(store.exists(&key.id).unwrap());

    store.destroy(&key.id).unwrap();
    assert!(find_objects(&session, &key.id, None).unwrap().is_empty());
    assert!(!store.exists(&key.id).unwrap());
    let digest = Sha256::digest(b"gone");
    for error in [
        store.sign_digest(&key.id, key.kind, &digest).unwrap_err(),
        store.public_key_der(&key.id, key.kind).unwrap_err(),
        store.destroy(&key.id).unwrap_err(),
    ] {
        assert!(
            matches!(error, HsmError::KeyNotFound { id } if id == key.id),
            "{error:?}"
        );
        assert_eq!(error.code(), "key_not_found");
    }

    let aes = store
        .generate(HsmKeyKind::Aes256, "test-destroy-aes")
        .unwrap();
    let wrapped = store
        .wrap_data_key(&aes.id, aes.kind, &[1; DATA_KEY_LEN], b"")
        .unwrap();
    store.destroy(&aes.id).unwrap();
    let error = store
        .unwrap_data_key(&aes.id, aes.kind, &wrapped, b"")
        .unwrap_err();
    assert_eq!(error.code(), "key_not_found");
}

#[test]
fn purging_an_id_the_token_no_longer_holds_is_success() {
    let store = store();
    let key = store.generate(HsmKeyKind::Aes256, "test-purge").unwrap();
    assert_eq!(store.purge(&key.id).unwrap(), 1);
    assert_eq!(store.purge(&key.id).unwrap(), 0, "absent: nothing to do");
    assert!(!store.exists(&key.id).unwrap());
}

/// What `sys/seal` relies on: a locked store, through any clone, uses
/// no key until it is unlocked with the PIN again.
#[test]
fn a_locked_store_refuses_every_call_until_it_is_unlocked() {
    softhsm();
    // A store of its own: locking it leaves the other tests' store be.
    let own = HsmKeyStore::open(Path::new(MODULE), TOKEN, PIN).unwrap();
    let clone = own.clone();
    let key = own.generate(HsmKeyKind::Aes256, "test-lock").unwrap();
    let sealed = own.encrypt(&key.id, key.kind, b"before", b"aad").unwrap();
    assert!(!own.is_locked());

    own.lock();
    assert!(clone.is_locked(), "the clones share the lock");
    for error in [
        clone
            .encrypt(&key.id, key.kind, b"after", b"aad")
            .unwrap_err(),
        clone
            .decrypt(&key.id, key.kind, &sealed, b"aad")
            .unwrap_err(),
        clone
            .generate(HsmKeyKind::Aes256, "test-lock-2")
            .unwrap_err(),
        clone.purge(&key.id).unwrap_err(),
    ] {
        assert!(matches!(error, HsmError::Locked), "{error:?}");
        assert_eq!(error.code(), "hsm_locked");
    }
    assert!(store().exists(&key.id).unwrap(), "other stores still work");
    own.lock();

    own.unlock(PIN).unwrap();
    assert!(!clone.is_locked());
    let opened = clone.decrypt(&key.id, key.kind, &sealed, b"aad").unwrap();
    assert_eq!(opened.as_slice(), b"before");
    own.unlock(PIN).unwrap();
    own.destroy(&key.id).unwrap();
}

#[test]
fn the_kind_is_checked_against_the_token() {
    let store = store();
    let key = store
        .generate(HsmKeyKind::EcP256, "test-kind-check")
        .unwrap();
    let digest = Sha256::digest(b"kind");
    for wrong in [HsmKeyKind::EcSecp256k1, HsmKeyKind::Rsa2048] {
        let error = store.sign_digest(&key.id, wrong, &digest).unwrap_err();
        assert!(
            matches!(error, HsmError::KeyKindMismatch { expected, .. } if expected == wrong),
            "{error:?}"
        );
        assert_eq!(error.code(), "key_kind_mismatch");
    }
    let error = store
        .sign_message(&key.id, HsmKeyKind::Ed25519, b"kind")
        .unwrap_err();
    assert_eq!(error.code(), "key_kind_mismatch");
    let error = store
        .encrypt(&key.id, HsmKeyKind::Aes256, b"kind", b"")
        .unwrap_err();
    assert_eq!(error.code(), "key_kind_mismatch");
}

#[test]
fn operations_a_kind_does_not_have_are_refused_before_the_token() {
    let store = store();
    let id = HsmKeyId::random();
    let refused = [
        store
            .sign_message(&id, HsmKeyKind::Aes256, b"x")
            .unwrap_err(),
        store
            .sign_digest(&id, HsmKeyKind::Aes256, &[0; 32])
            .unwrap_err(),
        store
            .sign_digest(&id, HsmKeyKind::Ed25519, &[0; 32])
            .unwrap_err(),
        store
            .encrypt(&id, HsmKeyKind::EcP256, b"x", b"")
            .unwrap_err(),
        store
            .decrypt(&id, HsmKeyKind::Ed25519, b"x", b"")
            .unwrap_err(),
        store
            .wrap_data_key(&id, HsmKeyKind::EcSecp256k1, &[0; 32], b"")
            .unwrap_err(),
        store
            .unwrap_data_key(&id, HsmKeyKind::EcSecp256k1, b"x", b"")
            .unwrap_err(),
        store.public_key_der(&id, HsmKeyKind::Aes256).unwrap_err(),
    ];
    for error in refused {
        assert_eq!(error.code(), "unsupported_operation", "{error:?}");
    }
    // An unknown id of a kind that has the operation.
    let error = store
        .sign_message(&id, HsmKeyKind::EcP256, b"x")
        .unwrap_err();
    assert_eq!(error.code(), "key_not_found");
}

#[test]
fn labels_and_ids_are_validated() {
    let store = store();
    for label in [String::new(), "x".repeat(MAX_LABEL_LEN + 1)] {
        let error = store.generate(HsmKeyKind::Aes256, &label).unwrap_err();
        assert!(matches!(error, HsmError::InvalidLabel { len } if len == label.len()));
        assert_eq!(error.code(), "invalid_label");
    }
    let id = HsmKeyId::random();
    assert_eq!(HsmKeyId::from_hex(&id.to_string()).unwrap(), id);
    assert_eq!(HsmKeyId::from_bytes(id.as_bytes()).unwrap(), id);
    assert_eq!(id.to_string().len(), 2 * KEY_ID_LEN);
    assert_eq!(format!("{id:?}"), format!("HsmKeyId({id})"));
    for bad in ["", "00", "zz", &"0".repeat(2 * KEY_ID_LEN + 2)] {
        let error = HsmKeyId::from_hex(bad).unwrap_err();
        assert_eq!(error.code(), "invalid_key_id");
    }
}

#[test]
fn ec_points_are_read_in_both_encodings() {
    let point = [0x04u8; EC_POINT_LEN];
    let mut wrapped = vec![0x04, EC_POINT_LEN as u8];
    wrapped.extend_from_slice(&point);
    assert_eq!(unwrap_ec_point(&wrapped, EC_POINT_LEN).unwrap(), point);
    assert_eq!(unwrap_ec_point(&point, EC_POINT_LEN).unwrap(), point);
    assert!(unwrap_ec_point(&wrapped[..66], EC_POINT_LEN).is_err());
    assert!(unwrap_ec_point(&[0x04, 0x20, 1, 2], ED25519_POINT_LEN).is_err());
}
