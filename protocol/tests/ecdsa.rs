//! Threshold ECDSA end to end in process: DKG, signing with every quorum,
//! and independent checks of each output (k256 verification, recovery id to
//! Ethereum address, BIP-32 derivation by the `bip32` crate).

mod support;

use custos_protocol::ecdsa::{ethereum_address, EcdsaSignature};
use custos_protocol::share::KeyShare;
use custos_protocol::Secp256k1;
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use sha3::{Digest, Keccak256};
use support::*;

/// The child public key at `path` as the `bip32` crate derives it from the
/// wallet's root public key and chain code alone.
fn bip32_child(share: &KeyShare<Secp256k1>, path: &[u32]) -> VerifyingKey {
    let root = VerifyingKey::from_sec1_bytes(&share.public_key().to_bytes(true)).unwrap();
    let mut key = bip32::ExtendedPublicKey::new(
        root,
        bip32::ExtendedKeyAttrs {
            depth: 0,
            parent_fingerprint: [0; 4],
            child_number: bip32::ChildNumber(0),
            chain_code: share
                .chain_code()
                .expect("every Custos key has a chain code"),
        },
    );
    for &index in path {
        key = key
            .derive_child(bip32::ChildNumber::new(index, false).unwrap())
            .unwrap();
    }
    *key.public_key()
}

/// Checks `signature` over `digest` with k256 under `key`, its low s, that
/// its recovery id recovers `key`, and that its DER and (r, s, v) encodings
/// parse back to it.
fn check_signature(key: &VerifyingKey, digest: &[u8; 32], signature: &EcdsaSignature) {
    let parsed = Signature::from_scalars(signature.r, signature.s).unwrap();
    key.verify_prehash(digest, &parsed)
        .expect("k256 verifies the signature");
    assert!(parsed.normalize_s().is_none(), "signature must be low-s");
    let recovered = VerifyingKey::recover_from_prehash(
        digest,
        &parsed,
        RecoveryId::from_byte(signature.recovery_id).unwrap(),
    )
    .unwrap();
    assert_eq!(&recovered, key);
    // DER and (r, s, v) encodings agree with the parsed signature.
    assert_eq!(Signature::from_der(&signature.to_der()).unwrap(), parsed);
    let rsv = signature.to_rsv();
    assert_eq!(&rsv[..64], parsed.to_bytes().as_slice());
    assert_eq!(rsv[64], signature.recovery_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_2of3_every_quorum_signs_and_k256_verifies() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let aux = aux_info(3);
    let root = bip32_child(&shares[0], &[]);
    for signers in [[0u16, 1], [0, 2], [1, 2]] {
        let digest: [u8; 32] = sha2::Sha256::digest(format!("quorum {signers:?}")).into();
        let signature = sign_ecdsa(&shares, &aux, &signers, digest, &[]).await;
        check_signature(&root, &digest, &signature);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_3of5_signs_and_k256_verifies() {
    let shares = keygen::<Secp256k1>(5, 3).await;
    let aux = aux_info(5);
    let digest = [0x42; 32];
    let signature = sign_ecdsa(&shares, &aux, &[0, 2, 4], digest, &[]).await;
    check_signature(&bip32_child(&shares[0], &[]), &digest, &signature);
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_hd_child_matches_bip32_and_recovers_its_ethereum_address() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let aux = aux_info(3);
    let path = [44, 60, 0, 0, 7];
    let independent = bip32_child(&shares[0], &path);
    let ours = shares[0].derive_public_key(&path).unwrap();
    assert_eq!(
        independent.to_sec1_bytes().as_ref(),
        ours.to_bytes(true).as_ref()
    );

    let digest = [0x17; 32];
    let signature = sign_ecdsa(&shares, &aux, &[1, 2], digest, &path).await;
    check_signature(&independent, &digest, &signature);

    // The address recovered from (r, s, v) is the child key's address.
    let parsed = Signature::from_scalars(signature.r, signature.s).unwrap();
    let recovered = VerifyingKey::recover_from_prehash(
        &digest,
        &parsed,
        RecoveryId::from_byte(signature.recovery_id).unwrap(),
    )
    .unwrap();
    let recovered_address: [u8; 20] =
        Keccak256::digest(&recovered.to_encoded_point(false).as_bytes()[1..])[12..]
            .try_into()
            .unwrap();
    assert_eq!(recovered_address, ethereum_address(&ours));
}

#[tokio::test(flavor = "multi_thread")]
async fn ethereum_address_matches_a_known_vector() {
    // Private key 1: the generator. Its address is well known.
    let generator = generic_ec::Point::<Secp256k1>::generator().to_point();
    let generator = generic_ec::NonZero::from_point(generator).unwrap();
    assert_eq!(
        hex::encode(ethereum_address(&generator)),
        "7e5f4552091a69125d5dfcb7b8c2659029395bdf"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_refuses_hardened_paths_and_wrong_quorums() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let aux = aux_info(3);
    let hardened = 0x8000_0000u32;
    let results = sign_ecdsa_with(
        &shares,
        &aux,
        &[0, 1],
        [1; 32],
        &[hardened],
        custos_protocol::sim::Faults::none(),
        0,
    )
    .await;
    for result in results {
        assert!(
            matches!(result, Err(custos_protocol::Error::InvalidArgument(_))),
            "{result:?}"
        );
    }
    // Aux info of another committee is refused before any message is sent.
    let other_aux = aux_info(4);
    let results = sign_ecdsa_with(
        &shares,
        &other_aux,
        &[0, 1],
        [1; 32],
        &[],
        custos_protocol::sim::Faults::none(),
        0,
    )
    .await;
    for result in results {
        assert!(
            matches!(result, Err(custos_protocol::Error::InvalidArgument(_))),
            "{result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_up_to_7_parties_agrees_on_one_public_key() {
    for (n, t) in [(2u16, 2u16), (4, 3), (7, 4), (7, 7)] {
        let shares = keygen::<Secp256k1>(n, t).await;
        assert_eq!(shares.len(), usize::from(n));
        for share in &shares {
            assert_eq!(share.public_key(), shares[0].public_key());
            assert_eq!(share.threshold(), t);
            assert_eq!(share.chain_code(), shares[0].chain_code());
            assert_eq!(share.generation, custos_protocol::KeyGeneration(0));
        }
        let indices: Vec<u16> = shares.iter().map(KeyShare::index).collect();
        assert_eq!(indices, (0..n).collect::<Vec<_>>());
    }
}
