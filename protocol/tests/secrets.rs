//! Secret hygiene and storage: `Debug` output of secret-bearing types shows
//! no key material; a share survives serialise → seal → open → parse and
//! still signs; sealed or serialised bytes that were tampered with are
//! refused with an error, never a panic.

mod support;

use custos_protocol::seal::{self, SealContext, SealedKind, SealingKey};
use custos_protocol::share::{AuxInfo, KeyShare};
use custos_protocol::{Ed25519, KeyGeneration, Secp256k1};
use support::*;

/// A printed value leaks a secret if it has a long run of hex or decimal
/// digits: a 256-bit scalar prints as 64 hex or ~77 decimal digits, a
/// Paillier prime as hundreds.
fn assert_no_long_digit_runs(printed: &str) {
    let mut run = 0;
    for character in printed.chars() {
        run = if character.is_ascii_hexdigit() {
            run + 1
        } else {
            0
        };
        assert!(run < 24, "possible key material in debug output: {printed}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_output_of_shares_and_aux_info_shows_no_key_material() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let printed = format!("{:?} {:#?}", shares[0], shares[1]);
    assert!(printed.contains("<redacted>"));
    assert_no_long_digit_runs(&printed);

    let aux: Vec<AuxInfo> = aux_info(3);
    let printed = format!("{:?} {:#?}", aux[0], aux[2]);
    assert!(printed.contains("<redacted>"));
    assert_no_long_digit_runs(&printed);
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_share_restores_and_still_signs() {
    let shares = keygen::<Secp256k1>(3, 2).await;
    let key = SealingKey::generate(&mut rand_core::OsRng);
    let restored: Vec<KeyShare<Secp256k1>> = shares
        .iter()
        .map(|share| {
            let context = SealContext {
                kind: SealedKind::KeyShare,
                wallet: share.wallet,
                party: share.holder().unwrap(),
                generation: share.generation,
            };
            let sealed = seal::seal(
                &key,
                &context,
                &share.to_bytes().unwrap(),
                &mut rand_core::OsRng,
            )
            .unwrap();
            KeyShare::from_bytes(&seal::open(&key, &context, &sealed).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(restored[1].public_key(), shares[1].public_key());
    assert_eq!(restored[1].generation, KeyGeneration(0));
    let message = [0x33; 32];
    let signature = sign_taproot(&restored, &[0, 1], message, &[]).await;
    let output_key =
        custos_protocol::schnorr::taproot_output_key(&restored[0].public_info(), &[]).unwrap();
    custos_protocol::schnorr::verify_bip340(&output_key, &message, &signature).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn aux_info_round_trips_through_bytes() {
    let aux = aux_info(3);
    let bytes = aux[1].to_bytes().unwrap();
    let restored = AuxInfo::from_bytes(&bytes).unwrap();
    assert_eq!(
        (restored.index, &restored.committee),
        (aux[1].index, &aux[1].committee)
    );
    assert_eq!(restored.to_bytes().unwrap().as_slice(), bytes.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_share_bytes_are_refused_without_panic() {
    let shares = keygen::<Ed25519>(3, 2).await;
    let bytes = shares[0].to_bytes().unwrap();
    let restored = KeyShare::<Ed25519>::from_bytes(&bytes).unwrap();
    assert_eq!(restored.public_key(), shares[0].public_key());
    // Every truncation, and a flip of every byte: an error or (where the
    // flip lands in a field that stays valid) a share that still validates.
    for len in 0..bytes.len() {
        assert!(
            KeyShare::<Ed25519>::from_bytes(&bytes[..len]).is_err(),
            "prefix {len}"
        );
    }
    for position in 0..bytes.len() {
        let mut tampered = bytes.to_vec();
        tampered[position] ^= 0x5A;
        if let Ok(share) = KeyShare::<Ed25519>::from_bytes(&tampered) {
            // Only metadata can change without breaking validation; the
            // secret always matches its public share.
            assert_eq!(share.public_shares().len(), 3);
        }
    }
    assert!(
        KeyShare::<Secp256k1>::from_bytes(&bytes).is_err(),
        "curve is checked"
    );
}
