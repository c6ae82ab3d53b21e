//! FROST from the same DKG: BIP-340 signatures with the Taproot tweak,
//! verified by k256's BIP-340 verifier against the tweaked output key, and
//! Ed25519 signatures verified by ed25519-dalek.

mod support;

use custos_protocol::schnorr::{ed25519_public_key, taproot_output_key};
use custos_protocol::share::KeyShare;
use custos_protocol::{Ed25519, Secp256k1};
use support::*;

/// The BIP-341 key-path output key computed with k256 alone:
/// `Q = P + H_TapTweak(P.x) * G` with `P` the even-y lift of the child key.
fn independent_taproot_key(share: &KeyShare<Secp256k1>, path: &[u32]) -> [u8; 32] {
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    use sha2::{Digest, Sha256};
    let child = share.derive_public_key(path).unwrap().to_bytes(true);
    let internal_x: [u8; 32] = child.as_ref()[1..].try_into().unwrap();
    let tag = Sha256::digest(b"TapTweak");
    let tweak = Sha256::new()
        .chain_update(tag)
        .chain_update(tag)
        .chain_update(internal_x)
        .finalize();
    let tweak =
        <k256::Scalar as k256::elliptic_curve::ops::Reduce<k256::U256>>::reduce_bytes(&tweak);
    let mut even = [0u8; 33];
    even[0] = 0x02;
    even[1..].copy_from_slice(&internal_x);
    let internal = k256::PublicKey::from_sec1_bytes(&even).unwrap();
    let output = (internal.to_projective() + k256::ProjectivePoint::GENERATOR * tweak).to_affine();
    output.to_encoded_point(true).as_bytes()[1..]
        .try_into()
        .unwrap()
}

fn verify_bip340(output_key: &[u8; 32], message: &[u8; 32], signature: &[u8; 64]) {
    let key = k256::schnorr::VerifyingKey::from_bytes(output_key).unwrap();
    let signature = k256::schnorr::Signature::try_from(signature.as_slice()).unwrap();
    key.verify_raw(message, &signature)
        .expect("k256 verifies the BIP-340 signature");
}

#[tokio::test(flavor = "multi_thread")]
async fn taproot_2of3_every_quorum_verifies_under_tweaked_key() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let output_key = independent_taproot_key(&shares[0], &[]);
    assert_eq!(
        taproot_output_key(&shares[0].public_info(), &[]).unwrap(),
        output_key
    );
    for signers in [[0u16, 1], [0, 2], [1, 2]] {
        let message = [signers[0] as u8 * 16 + signers[1] as u8; 32];
        let signature = sign_taproot(&shares, &signers, message, &[]).await;
        verify_bip340(&output_key, &message, &signature);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn taproot_hd_child_signs_under_its_own_output_key() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let path = [86, 0, 0, 0, 3];
    let output_key = independent_taproot_key(&shares[0], &path);
    assert_ne!(output_key, independent_taproot_key(&shares[0], &[]));
    let message = [0x5A; 32];
    let signature = sign_taproot(&shares, &[0, 2], message, &path).await;
    verify_bip340(&output_key, &message, &signature);
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_and_taproot_share_one_dkg_key() {
    // The same share signs both schemes: the Taproot internal key is the
    // ECDSA public key (x coordinate).
    let shares = keygen::<Secp256k1>(3, 2).await;
    let ecdsa_key = shares[0].public_key().to_bytes(true);
    let child = shares[0].derive_public_key(&[]).unwrap().to_bytes(true);
    assert_eq!(ecdsa_key.as_ref(), child.as_ref());
}

#[tokio::test(flavor = "multi_thread")]
async fn ed25519_2of3_every_quorum_verifies_with_dalek() {
    let shares = keygen::<Ed25519>(3, 2).await;
    let public_key = ed25519_public_key(&shares[0].public_info(), &[]).unwrap();
    let verifying_key = ed25519_dalek::VerifyingKey::from_bytes(&public_key).unwrap();
    for signers in [[0u16, 1], [0, 2], [1, 2]] {
        let message = format!("ed25519 message signed by {signers:?}");
        let signature = sign_ed25519(&shares, &signers, message.as_bytes(), &[]).await;
        verifying_key
            .verify_strict(
                message.as_bytes(),
                &ed25519_dalek::Signature::from_bytes(&signature),
            )
            .expect("ed25519-dalek verifies the signature");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ed25519_hd_child_verifies_with_dalek() {
    let shares = keygen::<Ed25519>(3, 2).await;
    let path = [1, 2, 3];
    let public_key = ed25519_public_key(&shares[0].public_info(), &path).unwrap();
    assert_ne!(
        public_key,
        ed25519_public_key(&shares[0].public_info(), &[]).unwrap()
    );
    let verifying_key = ed25519_dalek::VerifyingKey::from_bytes(&public_key).unwrap();
    let signature = sign_ed25519(&shares, &[1, 2], b"child key message", &path).await;
    verifying_key
        .verify_strict(
            b"child key message",
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("ed25519-dalek verifies the child signature");
}

#[tokio::test(flavor = "multi_thread")]
async fn frost_7_parties_threshold_4_signs_both_schemes() {
    let secp = keygen::<Secp256k1>(7, 4).await;
    let message = [7; 32];
    let signature = sign_taproot(&secp, &[0, 2, 4, 6], message, &[]).await;
    verify_bip340(
        &independent_taproot_key(&secp[0], &[]),
        &message,
        &signature,
    );

    let edwards = keygen::<Ed25519>(7, 4).await;
    let key = ed25519_public_key(&edwards[0].public_info(), &[]).unwrap();
    let signature = sign_ed25519(&edwards, &[1, 3, 5, 6], b"seven", &[]).await;
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_strict(b"seven", &ed25519_dalek::Signature::from_bytes(&signature))
        .unwrap();
}
