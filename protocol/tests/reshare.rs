//! Resharing and refresh: the public key, chain code and HD addresses stay
//! the same; the new holders sign (ECDSA with aux info of the new committee,
//! FROST); shares of different generations never sign together; a dealer
//! that cheats is named.

mod support;

use custos_protocol::ecdsa::ethereum_address;
use custos_protocol::reshare::{DealerFault, ReshareOutput};
use custos_protocol::schnorr::{ed25519_public_key, taproot_output_key};
use custos_protocol::share::{KeyCurve, KeyShare};
use custos_protocol::sim::Faults;
use custos_protocol::{Ed25519, Error, KeyGeneration, Secp256k1};
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use support::*;

const PATH: [u32; 3] = [44, 60, 5];

fn assert_same_key<E: KeyCurve>(old: &KeyShare<E>, new: &[KeyShare<E>]) {
    for share in new {
        assert_eq!(share.public_key(), old.public_key());
        assert_eq!(share.chain_code(), old.chain_code());
        assert_eq!(
            share.derive_public_key(&PATH).unwrap(),
            old.derive_public_key(&PATH).unwrap()
        );
        assert_eq!(share.generation, KeyGeneration(old.generation.0 + 1));
        assert_eq!(share.public_shares(), new[0].public_shares());
    }
}

fn verify_ecdsa(
    share: &KeyShare<Secp256k1>,
    digest: &[u8; 32],
    signature: &custos_protocol::ecdsa::EcdsaSignature,
) {
    let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(
        &share.derive_public_key(&PATH).unwrap().to_bytes(true),
    )
    .unwrap();
    let parsed = k256::ecdsa::Signature::from_scalars(signature.r, signature.s).unwrap();
    key.verify_prehash(digest, &parsed)
        .expect("k256 verifies the ECDSA signature");
}

fn verify_taproot(share: &KeyShare<Secp256k1>, message: &[u8; 32], signature: &[u8; 64]) {
    let key = taproot_output_key(&share.public_info(), &PATH).unwrap();
    k256::schnorr::VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify_raw(
            message,
            &k256::schnorr::Signature::try_from(signature.as_slice()).unwrap(),
        )
        .expect("k256 verifies the BIP-340 signature");
}

#[tokio::test(flavor = "multi_thread")]
async fn reshare_2of3_to_3of4_keeps_address_and_new_set_signs() {
    let old = keygen::<Secp256k1>(3, 2).await;
    let address = ethereum_address(&old[0].derive_public_key(&PATH).unwrap());
    let taproot = taproot_output_key(&old[0].public_info(), &PATH).unwrap();

    // Holders 0 and 1 deal to parties 0..4; party 3 is new and only receives.
    let new = reshare(&old, &[0, 1], &[0, 1, 2, 3], 3).await;
    assert_same_key(&old[0], &new);
    assert_eq!(new[0].threshold(), 3);
    assert_eq!(new[0].committee, committee(4));
    assert_eq!(
        ethereum_address(&new[3].derive_public_key(&PATH).unwrap()),
        address
    );
    assert_eq!(
        taproot_output_key(&new[3].public_info(), &PATH).unwrap(),
        taproot
    );

    let aux = aux_info(4);
    let digest = [0xD1; 32];
    let signature = sign_ecdsa(&new, &aux, &[1, 2, 3], digest, &PATH).await;
    verify_ecdsa(&new[0], &digest, &signature);
    let message = [0xD2; 32];
    let signature = sign_taproot(&new, &[0, 2, 3], message, &PATH).await;
    verify_taproot(&new[0], &message, &signature);
}

#[tokio::test(flavor = "multi_thread")]
async fn reshare_3of5_to_2of3_keeps_address_and_new_set_signs() {
    let old = keygen::<Secp256k1>(5, 3).await;
    // Holders 1, 3 and 4 deal; 3 and 4 are not in the new committee.
    let new = reshare(&old, &[1, 3, 4], &[0, 1, 2], 2).await;
    assert_same_key(&old[0], &new);
    assert_eq!(new[0].threshold(), 2);

    let aux = aux_info(3);
    let digest = [0xE1; 32];
    let signature = sign_ecdsa(&new, &aux, &[0, 2], digest, &PATH).await;
    verify_ecdsa(&new[0], &digest, &signature);
    let message = [0xE2; 32];
    let signature = sign_taproot(&new, &[1, 2], message, &PATH).await;
    verify_taproot(&new[0], &message, &signature);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_2of3_keeps_key_and_replaces_every_share() {
    let old = keygen::<Secp256k1>(3, 2).await;
    let new = reshare(&old, &[0, 2], &[0, 1, 2], 2).await;
    assert_same_key(&old[0], &new);
    for (old_share, new_share) in old.iter().zip(&new) {
        assert_ne!(
            old_share.public_shares()[usize::from(old_share.index())],
            new_share.public_shares()[usize::from(new_share.index())],
            "a refresh must change every holder's share"
        );
    }
    let aux = aux_info(3);
    let digest = [0xF1; 32];
    let signature = sign_ecdsa(&new, &aux, &[0, 1], digest, &PATH).await;
    verify_ecdsa(&new[0], &digest, &signature);
}

#[tokio::test(flavor = "multi_thread")]
async fn reshare_ed25519_2of3_to_3of4_keeps_key_and_signs() {
    let old = keygen::<Ed25519>(3, 2).await;
    let public_key = ed25519_public_key(&old[0].public_info(), &PATH).unwrap();
    let new = reshare(&old, &[1, 2], &[0, 1, 2, 3], 3).await;
    assert_same_key(&old[0], &new);
    assert_eq!(
        ed25519_public_key(&new[3].public_info(), &PATH).unwrap(),
        public_key
    );
    let signature = sign_ed25519(&new, &[0, 1, 3], b"after resharing", &PATH).await;
    ed25519_dalek::VerifyingKey::from_bytes(&public_key)
        .unwrap()
        .verify_strict(
            b"after resharing",
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("ed25519-dalek verifies the signature of the new committee");
}

/// A quorum of one old-generation share and one new-generation share. The
/// API refuses it outright; relabelled to look like one generation, the run
/// fails and yields no signature.
#[tokio::test(flavor = "multi_thread")]
async fn quorum_mixing_old_and_new_shares_fails_cleanly() {
    let old = keygen::<Secp256k1>(3, 2).await;
    let new = reshare(&old, &[0, 1], &[0, 1, 2], 2).await;

    // As they are: a run derives its execution id from the generation, so
    // signers of two generations are in two different sessions and the
    // driver drops each other's frames as foreign.
    let old_run = sign_run(&old[0], &[0, 1], party(0), 1);
    let new_run = sign_run(&new[0], &[0, 1], party(0), 1);
    let kind = custos_protocol::ProtocolKind::SignTaproot;
    assert_ne!(
        old_run.session(kind, FAST_DEADLINE).unwrap().id,
        new_run.session(kind, FAST_DEADLINE).unwrap().id
    );

    // Relabelled as generation 1: the protocol runs and must fail.
    let mut relabelled = old[0].clone();
    relabelled.generation = KeyGeneration(1);
    let mixed = vec![relabelled, new[1].clone(), new[2].clone()];
    for result in sign_taproot_with(&mixed, &[0, 1], [1; 32], &[], Faults::none(), 0).await {
        assert!(
            result.is_err(),
            "a mixed FROST quorum must not produce a signature"
        );
    }
    let aux = aux_info(3);
    for result in sign_ecdsa_with(&mixed, &aux, &[0, 1], [2; 32], &[], Faults::none(), 0).await {
        assert!(
            result.is_err(),
            "a mixed ECDSA quorum must not produce a signature"
        );
    }
}

fn assert_all_name(
    outcomes: &[(
        custos_protocol::PartyId,
        Result<ReshareOutput<Secp256k1>, Error>,
    )],
    culprit: u16,
) {
    for (participant, outcome) in outcomes {
        match outcome {
            Err(error @ Error::Misbehaviour { .. }) => {
                assert_eq!(
                    error.culprits(),
                    &[party(culprit)],
                    "as seen by {participant}"
                );
            }
            other => panic!("{participant} expected the dealer to be named, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dealer_with_bad_commitment_is_named_by_everyone() {
    let old = keygen::<Secp256k1>(3, 2).await;
    let outcomes = reshare_with(
        &old,
        &[0, 1],
        &[0, 1, 2, 3],
        3,
        Some((1, DealerFault::BadCommitment)),
    )
    .await;
    assert_eq!(outcomes.len(), 4);
    assert_all_name(&outcomes, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn dealer_with_bad_sub_share_is_named_by_everyone() {
    let old = keygen::<Secp256k1>(3, 2).await;
    let outcomes = reshare_with(
        &old,
        &[0, 1],
        &[0, 1, 2, 3],
        3,
        Some((0, DealerFault::BadSubShare { to: 3 })),
    )
    .await;
    assert_all_name(&outcomes, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reshare_refuses_too_few_dealers_and_bad_thresholds() {
    let old = keygen::<Secp256k1>(3, 2).await;
    for (dealers, new_threshold) in [(&[0u16][..], 2u16), (&[0, 1][..], 1), (&[0, 1][..], 5)] {
        let outcomes = reshare_with(&old, dealers, &[0, 1, 2, 3], new_threshold, None).await;
        for (_, outcome) in outcomes {
            assert!(
                matches!(outcome, Err(Error::InvalidArgument(_))),
                "{outcome:?}"
            );
        }
    }
}
