use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha384, Sha512};

use super::*;
use ed25519_dalek::Verifier as _;
use p256::pkcs8::DecodePublicKey;
use proptest::prelude::*;
use rand_core::OsRng;

const ORG: &str = "org-1";
const KEY: &str = "payments";

fn binding(version: u32, context: Option<&[u8]>) -> Binding<'_> {
    Binding {
        org_id: ORG,
        key_name: KEY,
        version,
        context,
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Builds material from fixed bytes through the storage encoding.
fn material_from(key_type: KeyType, key: [u8; 32], hmac_key: [u8; 32]) -> KeyVersionMaterial {
    let mut bytes = vec![MATERIAL_FORMAT_V1, key_type.storage_tag()];
    bytes.extend_from_slice(&key);
    bytes.extend_from_slice(&hmac_key);
    KeyVersionMaterial::from_bytes(key_type, &bytes).unwrap()
}

/// Strips `vault:v<version>:` by hand, independently of the module's parser.
fn payload(text: &str, version: u32) -> &str {
    text.strip_prefix(&format!("vault:v{version}:")).unwrap()
}

const AEADS: [KeyType; 2] = [KeyType::Aes256Gcm96, KeyType::ChaCha20Poly1305];

#[test]
fn aead_round_trip_with_and_without_context() {
    for key_type in AEADS {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let contexts: [Option<&[u8]>; 3] = [None, Some(b""), Some(b"tenant=42")];
        for context in contexts {
            for plaintext in [&b""[..], b"x", b"the quick brown fox"] {
                let b = binding(3, context);
                let text = encrypt(key_type, &material, &b, plaintext, &mut OsRng).unwrap();
                assert!(text.starts_with("vault:v3:"), "{text}");
                let (version, body) = parse_prefixed(&text).unwrap();
                assert_eq!(version, 3);
                assert_eq!(body.len(), NONCE_LEN + plaintext.len() + TAG_LEN);
                let decrypted = decrypt(key_type, &material, &b, &body).unwrap();
                assert_eq!(decrypted.as_slice(), plaintext);
            }
        }
    }
}

#[test]
fn nonces_are_fresh() {
    for key_type in AEADS {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let b = binding(1, None);
        let a = encrypt(key_type, &material, &b, b"same", &mut OsRng).unwrap();
        let c = encrypt(key_type, &material, &b, b"same", &mut OsRng).unwrap();
        assert_ne!(a, c);
    }
}

#[test]
fn tampering_any_byte_fails() {
    for key_type in AEADS {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let b = binding(1, Some(b"ctx"));
        let text = encrypt(key_type, &material, &b, b"attack at dawn", &mut OsRng).unwrap();
        let (_, body) = parse_prefixed(&text).unwrap();
        for i in 0..body.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut tampered = body.clone();
                tampered[i] ^= flip;
                assert_eq!(
                    decrypt(key_type, &material, &b, &tampered).unwrap_err(),
                    TransitError::DecryptionFailed,
                    "byte {i}"
                );
            }
        }
        // Appending or dropping a byte also breaks authentication.
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            decrypt(key_type, &material, &b, &longer).unwrap_err(),
            TransitError::DecryptionFailed
        );
        assert_eq!(
            decrypt(key_type, &material, &b, &body[..body.len() - 1]).unwrap_err(),
            TransitError::DecryptionFailed
        );
    }
}

#[test]
fn wrong_binding_or_key_fails() {
    for key_type in AEADS {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let good = binding(2, Some(b"ctx-a"));
        let text = encrypt(key_type, &material, &good, b"secret", &mut OsRng).unwrap();
        let (_, body) = parse_prefixed(&text).unwrap();
        assert!(decrypt(key_type, &material, &good, &body).is_ok());

        let wrong = [
            Binding {
                context: Some(b"ctx-b"),
                ..good
            },
            Binding {
                context: None,
                ..good
            },
            Binding {
                context: Some(b""),
                ..good
            },
            Binding {
                key_name: "payroll",
                ..good
            },
            Binding {
                org_id: "org-2",
                ..good
            },
            Binding { version: 1, ..good },
            Binding { version: 3, ..good },
        ];
        for b in wrong {
            assert_eq!(
                decrypt(key_type, &material, &b, &body).unwrap_err(),
                TransitError::DecryptionFailed,
                "{b:?}"
            );
        }

        let other = KeyVersionMaterial::generate(key_type, &mut OsRng);
        assert_eq!(
            decrypt(key_type, &other, &good, &body).unwrap_err(),
            TransitError::DecryptionFailed
        );
    }
}

#[test]
fn ciphertext_does_not_open_under_the_other_aead() {
    let key = [7u8; 32];
    let aes = material_from(KeyType::Aes256Gcm96, key, [1; 32]);
    let chacha = material_from(KeyType::ChaCha20Poly1305, key, [1; 32]);
    let b = binding(1, None);
    let text = encrypt(KeyType::Aes256Gcm96, &aes, &b, b"hello", &mut OsRng).unwrap();
    let (_, body) = parse_prefixed(&text).unwrap();
    assert_eq!(
        decrypt(KeyType::ChaCha20Poly1305, &chacha, &b, &body).unwrap_err(),
        TransitError::DecryptionFailed
    );
}

#[test]
fn truncated_bodies_are_rejected() {
    for key_type in AEADS {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let b = binding(1, None);
        for len in 0..NONCE_LEN + TAG_LEN {
            assert_eq!(
                decrypt(key_type, &material, &b, &vec![0u8; len]).unwrap_err(),
                TransitError::Truncated,
                "len {len}"
            );
        }
        // Exactly nonce plus tag is a well-formed (empty) ciphertext.
        assert_eq!(
            decrypt(key_type, &material, &b, &[0u8; NONCE_LEN + TAG_LEN]).unwrap_err(),
            TransitError::DecryptionFailed
        );
        let (_, empty) = parse_prefixed("vault:v1:").unwrap();
        assert_eq!(
            decrypt(key_type, &material, &b, &empty).unwrap_err(),
            TransitError::Truncated
        );
    }
}

#[test]
fn encryption_rejects_wrong_types_and_versions() {
    let aes = KeyVersionMaterial::generate(KeyType::Aes256Gcm96, &mut OsRng);
    assert_eq!(
        encrypt(
            KeyType::ChaCha20Poly1305,
            &aes,
            &binding(1, None),
            b"x",
            &mut OsRng
        )
        .unwrap_err(),
        TransitError::InvalidKeyMaterial
    );
    assert_eq!(
        encrypt(
            KeyType::Aes256Gcm96,
            &aes,
            &binding(0, None),
            b"x",
            &mut OsRng
        )
        .unwrap_err(),
        TransitError::InvalidVersion
    );
    assert_eq!(
        decrypt(KeyType::Aes256Gcm96, &aes, &binding(0, None), &[0; 40]).unwrap_err(),
        TransitError::InvalidVersion
    );
    for key_type in [
        KeyType::Hmac,
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::EcdsaSecp256k1,
    ] {
        let m = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let err = encrypt(key_type, &m, &binding(1, None), b"x", &mut OsRng).unwrap_err();
        assert_eq!(
            err,
            TransitError::UnsupportedOperation {
                key_type,
                operation: "encryption"
            }
        );
        assert_eq!(err.code(), "unsupported_operation");
        assert!(matches!(
            decrypt(key_type, &m, &binding(1, None), &[0; 40]).unwrap_err(),
            TransitError::UnsupportedOperation { .. }
        ));
    }
}

#[test]
fn parse_prefixed_errors() {
    let cases: [(&str, TransitError); 12] = [
        ("vault:", TransitError::InvalidPrefix),
        ("xault:v1:AAAA", TransitError::InvalidPrefix),
        ("", TransitError::InvalidPrefix),
        ("VAULT:v1:AAAA", TransitError::InvalidPrefix),
        ("vault:v0:", TransitError::InvalidVersion),
        ("vault:v01:", TransitError::InvalidVersion),
        ("vault:vx:", TransitError::InvalidVersion),
        ("vault:v:AAAA", TransitError::InvalidVersion),
        ("vault:v+1:AAAA", TransitError::InvalidVersion),
        ("vault:v1AAAA", TransitError::InvalidVersion),
        ("vault:v4294967296:AAAA", TransitError::InvalidVersion),
        ("vault:v1:!!!", TransitError::InvalidEncoding),
    ];
    for (input, expected) in cases {
        assert_eq!(parse_prefixed(input).unwrap_err(), expected, "{input}");
    }
    // Unpadded, url-safe and whitespace-laden base64 are not Vault's
    // ciphertext encoding.
    for input in [
        "vault:v1:AAA",
        "vault:v1:AA-_",
        "vault:v1:AAAA ",
        "vault:v1:AA=A",
    ] {
        assert_eq!(
            parse_prefixed(input).unwrap_err(),
            TransitError::InvalidEncoding,
            "{input}"
        );
    }
    assert_eq!(parse_prefixed("vault:v1:AAAA").unwrap(), (1, vec![0, 0, 0]));
    assert_eq!(
        parse_prefixed("vault:v4294967295:").unwrap(),
        (u32::MAX, vec![])
    );
    assert_eq!(prefixed_version("vault:v12:-_-_").unwrap(), 12);
    assert_eq!(
        prefixed_version("vault:v012:").unwrap_err(),
        TransitError::InvalidVersion
    );
}

#[test]
fn parses_vault_ciphertext() {
    // A ciphertext in the form Vault's transit engine emits; the random
    // nonce means it cannot be reproduced, but it must parse.
    let text = "vault:v1:8SDd3WHDOjf7mq69CyCqYjBXAiQQAVZRkFM13ok481zoCmHnSeDX9vyf7w==";
    let (version, body) = parse_prefixed(text).unwrap();
    assert_eq!(version, 1);
    assert_eq!(body.len(), 43);
    assert!(body.len() >= NONCE_LEN + TAG_LEN);
    // Our own output re-encodes to the same shape.
    assert_eq!(format!("vault:v1:{}", STANDARD.encode(&body)), text);
}

#[test]
fn check_version_cases() {
    assert_eq!(check_version(1, 1, 1), Ok(()));
    assert_eq!(check_version(3, 5, 2), Ok(()));
    assert_eq!(check_version(5, 5, 5), Ok(()));
    assert_eq!(check_version(6, 5, 1), Err(TransitError::VersionTooNew));
    assert_eq!(check_version(1, 5, 2), Err(TransitError::VersionTooOld));
    assert_eq!(check_version(0, 5, 0), Err(TransitError::InvalidVersion));
    // Vault's default min_decryption_version of 0 allows every version.
    assert_eq!(check_version(1, 5, 0), Ok(()));
}

#[test]
fn aad_layout_is_canonical_and_injective() {
    let aad = Binding {
        org_id: "o",
        key_name: "k",
        version: 258,
        context: Some(b"c"),
    }
    .aad()
    .unwrap();
    let mut expected = vec![0, 0, 0, 17];
    expected.extend_from_slice(b"custos/transit/v1");
    expected.extend_from_slice(&[
        0, 0, 0, 1, b'o', 0, 0, 0, 1, b'k', 0, 0, 1, 2, 1, 0, 0, 0, 1, b'c',
    ]);
    assert_eq!(aad, expected);

    let a = Binding {
        org_id: "a",
        key_name: "bc",
        version: 1,
        context: None,
    };
    let b = Binding {
        org_id: "ab",
        key_name: "c",
        ..a
    };
    let c = Binding {
        context: Some(b""),
        ..a
    };
    assert_ne!(a.aad().unwrap(), b.aad().unwrap());
    assert_ne!(a.aad().unwrap(), c.aad().unwrap());
    assert_eq!(*a.aad().unwrap().last().unwrap(), 0);
}

#[test]
fn error_codes_are_stable_and_distinct() {
    let errors = [
        (TransitError::InvalidPrefix, "invalid_ciphertext_prefix"),
        (TransitError::InvalidVersion, "invalid_key_version"),
        (TransitError::InvalidEncoding, "invalid_ciphertext_encoding"),
        (TransitError::Truncated, "ciphertext_truncated"),
        (TransitError::DecryptionFailed, "decryption_failed"),
        (TransitError::VersionTooNew, "key_version_too_new"),
        (TransitError::VersionTooOld, "key_version_too_old"),
        (
            TransitError::UnsupportedOperation {
                key_type: KeyType::Hmac,
                operation: "signing",
            },
            "unsupported_operation",
        ),
        (TransitError::InvalidInput("x"), "invalid_input"),
        (TransitError::InvalidKeyMaterial, "invalid_key_material"),
    ];
    let mut codes = std::collections::HashSet::new();
    for (err, code) in &errors {
        assert_eq!(err.code(), *code);
        assert!(codes.insert(*code));
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(
        errors[7].0.to_string(),
        "key type hmac does not support signing"
    );
}

#[test]
fn names_round_trip() {
    for key_type in KeyType::ALL {
        assert_eq!(key_type.as_str().parse::<KeyType>().unwrap(), key_type);
        assert_eq!(key_type.to_string(), key_type.as_str());
        assert!(key_type.supports_hmac());
        assert_ne!(
            key_type.supports_encryption(),
            key_type.supports_signing() || key_type == KeyType::Hmac
        );
    }
    assert_eq!(KeyType::default(), KeyType::Aes256Gcm96);
    assert_eq!(KeyType::default().as_str(), "aes256-gcm96");
    assert_eq!(
        "aes256-gcm".parse::<KeyType>().unwrap_err(),
        TransitError::InvalidInput("unknown key type")
    );
    for hash in [
        HashAlgorithm::Sha2_256,
        HashAlgorithm::Sha2_384,
        HashAlgorithm::Sha2_512,
        HashAlgorithm::None,
    ] {
        assert_eq!(hash.as_str().parse::<HashAlgorithm>().unwrap(), hash);
        assert_eq!(hash.to_string(), hash.as_str());
    }
    assert_eq!(HashAlgorithm::default().as_str(), "sha2-256");
    assert!("sha1".parse::<HashAlgorithm>().is_err());
    for m in [Marshaling::Asn1, Marshaling::Jws] {
        assert_eq!(m.as_str().parse::<Marshaling>().unwrap(), m);
        assert_eq!(m.to_string(), m.as_str());
    }
    assert_eq!(Marshaling::default().as_str(), "asn1");
    assert!("der".parse::<Marshaling>().is_err());
}

fn opts(hash: HashAlgorithm, prehashed: bool, marshaling: Marshaling) -> SignatureOptions {
    SignatureOptions {
        prehashed,
        hash,
        marshaling,
    }
}

#[test]
fn p256_signatures_verify_independently() {
    let material = KeyVersionMaterial::generate(KeyType::EcdsaP256, &mut OsRng);
    let pem = public_key(KeyType::EcdsaP256, &material).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    let vk = p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).unwrap();
    let msg = b"transfer 10 BTC";

    // Default options: SHA-256, ASN.1 DER, checked through the standard
    // `Verifier`, which hashes with SHA-256 itself.
    let text = sign(
        KeyType::EcdsaP256,
        &material,
        4,
        msg,
        &SignatureOptions::default(),
    )
    .unwrap();
    let der = STANDARD.decode(payload(&text, 4)).unwrap();
    let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
    p256::ecdsa::signature::Verifier::verify(&vk, msg, &sig).unwrap();

    for hash in [
        HashAlgorithm::Sha2_256,
        HashAlgorithm::Sha2_384,
        HashAlgorithm::Sha2_512,
    ] {
        let digest = hash.digest(msg).unwrap();
        for marshaling in [Marshaling::Asn1, Marshaling::Jws] {
            for prehashed in [false, true] {
                let input = if prehashed { &digest[..] } else { &msg[..] };
                let o = opts(hash, prehashed, marshaling);
                let text = sign(KeyType::EcdsaP256, &material, 1, input, &o).unwrap();
                let sig = match marshaling {
                    Marshaling::Asn1 => {
                        let der = STANDARD.decode(payload(&text, 1)).unwrap();
                        p256::ecdsa::Signature::from_der(&der).unwrap()
                    }
                    Marshaling::Jws => {
                        let raw = URL_SAFE_NO_PAD.decode(payload(&text, 1)).unwrap();
                        assert_eq!(raw.len(), 64);
                        p256::ecdsa::Signature::from_slice(&raw).unwrap()
                    }
                };
                vk.verify_prehash(&digest, &sig).unwrap();
                assert!(verify(KeyType::EcdsaP256, &material, 1, input, &text, &o).unwrap());
            }
        }
    }
}

#[test]
fn secp256k1_signatures_verify_independently_and_are_low_s() {
    let material = KeyVersionMaterial::generate(KeyType::EcdsaSecp256k1, &mut OsRng);
    let pem = public_key(KeyType::EcdsaSecp256k1, &material).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let vk = k256::ecdsa::VerifyingKey::from_public_key_pem(&pem).unwrap();

    for i in 0..64u32 {
        let msg = format!("message {i}");
        let text = sign(
            KeyType::EcdsaSecp256k1,
            &material,
            1,
            msg.as_bytes(),
            &SignatureOptions::default(),
        )
        .unwrap();
        let der = STANDARD.decode(payload(&text, 1)).unwrap();
        let sig = k256::ecdsa::Signature::from_der(&der).unwrap();
        assert!(sig.normalize_s().is_none(), "signature {i} is high-S");
        k256::ecdsa::signature::Verifier::verify(&vk, msg.as_bytes(), &sig).unwrap();

        let o = opts(HashAlgorithm::Sha2_256, false, Marshaling::Jws);
        let text = sign(KeyType::EcdsaSecp256k1, &material, 1, msg.as_bytes(), &o).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(payload(&text, 1)).unwrap();
        let sig = k256::ecdsa::Signature::from_slice(&raw).unwrap();
        assert!(sig.normalize_s().is_none());
        k256::ecdsa::signature::Verifier::verify(&vk, msg.as_bytes(), &sig).unwrap();
    }

    let digest = Sha512::digest(b"m").to_vec();
    let o = opts(HashAlgorithm::Sha2_512, true, Marshaling::Asn1);
    let text = sign(KeyType::EcdsaSecp256k1, &material, 1, &digest, &o).unwrap();
    let sig =
        k256::ecdsa::Signature::from_der(&STANDARD.decode(payload(&text, 1)).unwrap()).unwrap();
    vk.verify_prehash(&digest, &sig).unwrap();
    assert!(verify(KeyType::EcdsaSecp256k1, &material, 1, &digest, &text, &o).unwrap());
}

#[test]
fn secp256k1_high_s_is_rejected() {
    let material = KeyVersionMaterial::generate(KeyType::EcdsaSecp256k1, &mut OsRng);
    let o = opts(HashAlgorithm::Sha2_256, false, Marshaling::Jws);
    let text = sign(KeyType::EcdsaSecp256k1, &material, 1, b"m", &o).unwrap();
    assert!(verify(KeyType::EcdsaSecp256k1, &material, 1, b"m", &text, &o).unwrap());
    let sig =
        k256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(payload(&text, 1)).unwrap())
            .unwrap();
    let high = k256::ecdsa::Signature::from_scalars(sig.r(), -sig.s()).unwrap();
    assert!(high.normalize_s().is_some());
    let high_text = format!("vault:v1:{}", URL_SAFE_NO_PAD.encode(high.to_bytes()));
    assert!(!verify(KeyType::EcdsaSecp256k1, &material, 1, b"m", &high_text, &o).unwrap());
}

#[test]
fn ed25519_signatures_verify_independently() {
    let material = KeyVersionMaterial::generate(KeyType::Ed25519, &mut OsRng);
    let public = public_key(KeyType::Ed25519, &material).unwrap();
    let bytes: [u8; 32] = STANDARD.decode(&public).unwrap().try_into().unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap();
    let msg = b"hello ed25519";

    // The hash algorithm is ignored for Ed25519, as in Vault.
    for hash in [
        HashAlgorithm::Sha2_256,
        HashAlgorithm::Sha2_512,
        HashAlgorithm::None,
    ] {
        let o = opts(hash, false, Marshaling::Asn1);
        let text = sign(KeyType::Ed25519, &material, 2, msg, &o).unwrap();
        let raw: [u8; 64] = STANDARD
            .decode(payload(&text, 2))
            .unwrap()
            .try_into()
            .unwrap();
        vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&raw))
            .unwrap();
        assert!(verify(KeyType::Ed25519, &material, 2, msg, &text, &o).unwrap());
    }

    let o = opts(HashAlgorithm::Sha2_256, false, Marshaling::Jws);
    let text = sign(KeyType::Ed25519, &material, 2, msg, &o).unwrap();
    let raw: [u8; 64] = URL_SAFE_NO_PAD
        .decode(payload(&text, 2))
        .unwrap()
        .try_into()
        .unwrap();
    vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&raw))
        .unwrap();

    let pre = opts(HashAlgorithm::Sha2_256, true, Marshaling::Asn1);
    assert_eq!(
        sign(KeyType::Ed25519, &material, 2, &[0; 32], &pre).unwrap_err(),
        TransitError::InvalidInput("prehashed input is not supported for ed25519 keys")
    );
    let good = sign(
        KeyType::Ed25519,
        &material,
        2,
        msg,
        &SignatureOptions::default(),
    )
    .unwrap();
    assert!(verify(KeyType::Ed25519, &material, 2, msg, &good, &pre).is_err());
}

#[test]
fn verify_rejects_other_messages_and_malformed_signatures() {
    for key_type in [
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::EcdsaSecp256k1,
    ] {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let other = KeyVersionMaterial::generate(key_type, &mut OsRng);
        for marshaling in [Marshaling::Asn1, Marshaling::Jws] {
            let o = opts(HashAlgorithm::Sha2_256, false, marshaling);
            let text = sign(key_type, &material, 1, b"message one", &o).unwrap();
            assert!(verify(key_type, &material, 1, b"message one", &text, &o).unwrap());
            assert!(!verify(key_type, &material, 1, b"message two", &text, &o).unwrap());
            assert!(!verify(key_type, &other, 1, b"message one", &text, &o).unwrap());

            // The signature names version 1; verifying it as another
            // version's signature is a caller error.
            assert_eq!(
                verify(key_type, &material, 2, b"message one", &text, &o).unwrap_err(),
                TransitError::InvalidVersion
            );

            for bad in [
                "",
                "vault:v1:",
                "vault:v1:!!!",
                "vault:vx:AAAA",
                "vault:v1:AAAA",
                "sig:v1:AAAA",
            ] {
                assert!(
                    verify(key_type, &material, 1, b"message one", bad, &o).is_err(),
                    "{key_type} {bad}"
                );
            }
        }
        // A signature in the other marshaling's encoding is malformed
        // or does not verify; it is never accepted.
        let asn1 = sign(key_type, &material, 1, b"m", &SignatureOptions::default()).unwrap();
        let jws = opts(HashAlgorithm::Sha2_256, false, Marshaling::Jws);
        assert!(!verify(key_type, &material, 1, b"m", &asn1, &jws).unwrap_or(false));
    }
}

#[test]
fn ecdsa_option_errors() {
    for key_type in [KeyType::EcdsaP256, KeyType::EcdsaSecp256k1] {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        for prehashed in [false, true] {
            let o = opts(HashAlgorithm::None, prehashed, Marshaling::Asn1);
            assert!(matches!(
                sign(key_type, &material, 1, &[0; 32], &o).unwrap_err(),
                TransitError::InvalidInput(_)
            ));
        }
        for (hash, bad_len) in [
            (HashAlgorithm::Sha2_256, 31),
            (HashAlgorithm::Sha2_256, 48),
            (HashAlgorithm::Sha2_384, 32),
            (HashAlgorithm::Sha2_512, 48),
        ] {
            let o = opts(hash, true, Marshaling::Asn1);
            assert_eq!(
                sign(key_type, &material, 1, &vec![1; bad_len], &o).unwrap_err(),
                TransitError::InvalidInput(
                    "prehashed input length does not match the hash algorithm"
                )
            );
        }
        assert_eq!(
            sign(key_type, &material, 0, b"m", &SignatureOptions::default()).unwrap_err(),
            TransitError::InvalidVersion
        );
    }
}

#[test]
fn signing_unsupported_for_symmetric_keys() {
    for key_type in [
        KeyType::Aes256Gcm96,
        KeyType::ChaCha20Poly1305,
        KeyType::Hmac,
    ] {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        assert!(matches!(
            sign(key_type, &material, 1, b"m", &SignatureOptions::default()).unwrap_err(),
            TransitError::UnsupportedOperation { .. }
        ));
        assert!(matches!(
            verify(
                key_type,
                &material,
                1,
                b"m",
                "vault:v1:AAAA",
                &SignatureOptions::default()
            )
            .unwrap_err(),
            TransitError::UnsupportedOperation { .. }
        ));
        assert_eq!(public_key(key_type, &material), None);
    }
    let ed = KeyVersionMaterial::generate(KeyType::Ed25519, &mut OsRng);
    assert_eq!(public_key(KeyType::EcdsaP256, &ed), None);
    assert_eq!(
        sign(
            KeyType::EcdsaP256,
            &ed,
            1,
            b"m",
            &SignatureOptions::default()
        )
        .unwrap_err(),
        TransitError::InvalidKeyMaterial
    );
}

#[test]
fn hmac_matches_rfc4231() {
    // RFC 4231 keys are shorter than 32 bytes; HMAC zero-pads keys to the
    // block size, so the key followed by zeros gives the same result.
    let mut key1 = [0u8; 32];
    key1[..20].copy_from_slice(&[0x0b; 20]);
    let material = material_from(KeyType::Hmac, key1, [0xee; 32]);
    let vectors = [
        (
            HashAlgorithm::Sha2_256,
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            HashAlgorithm::Sha2_384,
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        ),
        (
            HashAlgorithm::Sha2_512,
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        ),
    ];
    for (algorithm, expected) in vectors {
        let text = hmac(&material, 1, algorithm, b"Hi There").unwrap();
        assert_eq!(text, format!("vault:v1:{}", STANDARD.encode(hex(expected))));
        assert!(verify_hmac(&material, 1, algorithm, b"Hi There", &text).unwrap());
    }

    let mut key2 = [0u8; 32];
    key2[..4].copy_from_slice(b"Jefe");
    let material = material_from(KeyType::Hmac, key2, [0; 32]);
    let text = hmac(
        &material,
        7,
        HashAlgorithm::Sha2_256,
        b"what do ya want for nothing?",
    )
    .unwrap();
    assert_eq!(
        text,
        format!(
            "vault:v7:{}",
            STANDARD.encode(hex(
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
            ))
        )
    );
}

#[test]
fn hmac_uses_the_separate_key_for_other_types() {
    for key_type in [
        KeyType::Aes256Gcm96,
        KeyType::ChaCha20Poly1305,
        KeyType::Ed25519,
        KeyType::EcdsaP256,
        KeyType::EcdsaSecp256k1,
    ] {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let stored = material.to_bytes();
        let hmac_key = &stored[2 + 32..];
        let mut independent = <Hmac<Sha384> as Mac>::new_from_slice(hmac_key).unwrap();
        independent.update(b"data");
        let expected = independent.finalize().into_bytes();
        let text = hmac(&material, 5, HashAlgorithm::Sha2_384, b"data").unwrap();
        assert_eq!(text, format!("vault:v5:{}", STANDARD.encode(expected)));

        assert!(verify_hmac(&material, 5, HashAlgorithm::Sha2_384, b"data", &text).unwrap());
        assert!(!verify_hmac(&material, 5, HashAlgorithm::Sha2_384, b"date", &text).unwrap());
        assert!(!verify_hmac(&material, 5, HashAlgorithm::Sha2_256, b"data", &text).unwrap());
        assert_eq!(
            verify_hmac(&material, 4, HashAlgorithm::Sha2_384, b"data", &text).unwrap_err(),
            TransitError::InvalidVersion
        );
        assert_eq!(
            verify_hmac(
                &material,
                5,
                HashAlgorithm::Sha2_384,
                b"data",
                "vault:v5:!!"
            )
            .unwrap_err(),
            TransitError::InvalidEncoding
        );
        assert_eq!(
            verify_hmac(
                &material,
                5,
                HashAlgorithm::Sha2_384,
                b"data",
                "hmac:v5:AAAA"
            )
            .unwrap_err(),
            TransitError::InvalidPrefix
        );
        // A truncated MAC is simply wrong, not an error.
        let (_, mac) = parse_prefixed(&text).unwrap();
        let short = format!("vault:v5:{}", STANDARD.encode(&mac[..mac.len() - 1]));
        assert!(!verify_hmac(&material, 5, HashAlgorithm::Sha2_384, b"data", &short).unwrap());
    }
    let material = KeyVersionMaterial::generate(KeyType::Hmac, &mut OsRng);
    assert!(matches!(
        hmac(&material, 1, HashAlgorithm::None, b"x").unwrap_err(),
        TransitError::InvalidInput(_)
    ));
    assert_eq!(
        hmac(&material, 0, HashAlgorithm::Sha2_256, b"x").unwrap_err(),
        TransitError::InvalidVersion
    );
}

#[test]
fn material_round_trips_and_rejects_bad_bytes() {
    for key_type in KeyType::ALL {
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        assert_eq!(material.key_type(), key_type);
        let bytes = material.to_bytes();
        assert_eq!(bytes.len(), MATERIAL_ENCODED_LEN);
        let restored = KeyVersionMaterial::from_bytes(key_type, &bytes).unwrap();
        assert_eq!(restored.to_bytes(), bytes);
        assert_eq!(
            public_key(key_type, &restored),
            public_key(key_type, &material)
        );

        for len in [0, 1, 2, 33, 34, 64, 65, 67, 128] {
            let mut wrong = bytes.to_vec();
            wrong.resize(len, 0);
            assert_eq!(
                KeyVersionMaterial::from_bytes(key_type, &wrong).unwrap_err(),
                TransitError::InvalidKeyMaterial,
                "{key_type} len {len}"
            );
        }
        let mut bad_format = bytes.to_vec();
        bad_format[0] = 2;
        assert!(KeyVersionMaterial::from_bytes(key_type, &bad_format).is_err());
        for other in KeyType::ALL.into_iter().filter(|t| *t != key_type) {
            assert_eq!(
                KeyVersionMaterial::from_bytes(other, &bytes).unwrap_err(),
                TransitError::InvalidKeyMaterial
            );
        }

        // Debug output must not leak either key.
        let debug = format!("{material:?}");
        assert!(debug.contains("<redacted>"));
        let hex_key: String = bytes[2..34].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!debug.contains(&hex_key));
        assert!(!debug.contains(&format!("{:?}", &bytes[2..34])));
    }
}

#[test]
fn invalid_ecdsa_scalars_are_rejected() {
    let p256_order = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    let k256_order = hex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141");
    for (key_type, order) in [
        (KeyType::EcdsaP256, p256_order),
        (KeyType::EcdsaSecp256k1, k256_order),
    ] {
        let order: [u8; 32] = order.try_into().unwrap();
        for scalar in [[0u8; 32], order, [0xff; 32]] {
            let mut bytes = vec![MATERIAL_FORMAT_V1, key_type.storage_tag()];
            bytes.extend_from_slice(&scalar);
            bytes.extend_from_slice(&[1; 32]);
            assert_eq!(
                KeyVersionMaterial::from_bytes(key_type, &bytes).unwrap_err(),
                TransitError::InvalidKeyMaterial
            );
        }
        let mut below = order;
        below[31] -= 1;
        assert!(material_from_result(key_type, below).is_ok());
        assert!(material_from_result(key_type, {
            let mut one = [0u8; 32];
            one[31] = 1;
            one
        })
        .is_ok());
    }
    // Any 32 bytes are a valid symmetric key or Ed25519 seed.
    for key_type in [
        KeyType::Aes256Gcm96,
        KeyType::ChaCha20Poly1305,
        KeyType::Hmac,
        KeyType::Ed25519,
    ] {
        assert!(material_from_result(key_type, [0xff; 32]).is_ok());
    }
}

fn material_from_result(
    key_type: KeyType,
    key: [u8; 32],
) -> Result<KeyVersionMaterial, TransitError> {
    let mut bytes = vec![MATERIAL_FORMAT_V1, key_type.storage_tag()];
    bytes.extend_from_slice(&key);
    bytes.extend_from_slice(&[0; 32]);
    KeyVersionMaterial::from_bytes(key_type, &bytes)
}

#[test]
fn data_keys() {
    for (bits, len) in [(128u16, 16usize), (256, 32), (512, 64)] {
        let a = generate_data_key(bits, &mut OsRng).unwrap();
        let b = generate_data_key(bits, &mut OsRng).unwrap();
        assert_eq!(a.len(), len);
        assert_ne!(a, b);
    }
    for bits in [0u16, 8, 192, 1024] {
        assert_eq!(
            generate_data_key(bits, &mut OsRng).unwrap_err(),
            TransitError::InvalidInput("bits must be 128, 256 or 512")
        );
    }
    // The caller wraps the data key with `encrypt`.
    let material = KeyVersionMaterial::generate(KeyType::Aes256Gcm96, &mut OsRng);
    let data_key = generate_data_key(256, &mut OsRng).unwrap();
    let b = binding(1, None);
    let wrapped = encrypt(KeyType::Aes256Gcm96, &material, &b, &data_key, &mut OsRng).unwrap();
    let (_, body) = parse_prefixed(&wrapped).unwrap();
    assert_eq!(
        decrypt(KeyType::Aes256Gcm96, &material, &b, &body).unwrap(),
        data_key
    );
}

proptest! {
    #[test]
    fn prop_aead_round_trip(
        plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
        context in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        version in 1u32..,
        chacha in any::<bool>(),
    ) {
        let key_type = if chacha { KeyType::ChaCha20Poly1305 } else { KeyType::Aes256Gcm96 };
        let material = KeyVersionMaterial::generate(key_type, &mut OsRng);
        let b = Binding { org_id: ORG, key_name: KEY, version, context: context.as_deref() };
        let text = encrypt(key_type, &material, &b, &plaintext, &mut OsRng).unwrap();
        let (parsed_version, body) = parse_prefixed(&text).unwrap();
        prop_assert_eq!(parsed_version, version);
        let decrypted = decrypt(key_type, &material, &b, &body).unwrap();
        prop_assert_eq!(decrypted.as_slice(), plaintext.as_slice());
    }

    #[test]
    fn prop_parse_never_panics(s in ".*") {
        let _ = parse_prefixed(&s);
        let _ = prefixed_version(&s);
    }

    #[test]
    fn prop_aad_is_injective(
        a in ("[a-z]{0,4}", "[a-z]{0,4}", 1u32..4, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3))),
        b in ("[a-z]{0,4}", "[a-z]{0,4}", 1u32..4, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3))),
    ) {
        let ba = Binding { org_id: &a.0, key_name: &a.1, version: a.2, context: a.3.as_deref() };
        let bb = Binding { org_id: &b.0, key_name: &b.1, version: b.2, context: b.3.as_deref() };
        prop_assert_eq!(ba == bb, ba.aad().unwrap() == bb.aad().unwrap());
    }
}
