//! Threshold ECDSA between node processes: the nodes generate aux info for
//! their committee themselves (Paillier primes generated on demand, since
//! the test nodes keep no pool), then every quorum signs with CGGMP21 full
//! signing. Each (r, s, v) is checked with k256 alone: it verifies, it is
//! low-s, and v recovers the wallet's key.
//!
//! Its own test binary, so its minutes of Paillier work never share the CPU
//! with the FROST tests' short deadlines.

mod common;

use common::*;
use custos_protocol::{PartyId, RequestId};
use custos_signer_node::job::Scheme;
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};

#[tokio::test(flavor = "multi_thread")]
async fn nodes_generate_aux_info_and_every_quorum_signs_ecdsa() {
    let Cluster {
        nodes,
        parties,
        coordinator,
        wallet,
        key,
        ..
    } = cluster_with_wallet(3, 0x81).await;
    let started = std::time::Instant::now();
    coordinator
        .aux_info(RequestId([2; 16]), &parties)
        .await
        .unwrap_or_else(|error| panic!("aux info: {error}\n{}", nodes[0].log()));
    eprintln!(
        "aux info for 3 nodes took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let verifying_key = VerifyingKey::from_sec1_bytes(&key.public_key).unwrap();
    for (index, quorum) in [[0usize, 1], [0, 2], [1, 2]].iter().enumerate() {
        let quorum: Vec<PartyId> = quorum.iter().map(|&member| parties[member]).collect();
        let digest = [0xC0 + index as u8; 32];
        let signatures = sign_with(
            &coordinator,
            &quorum,
            10 + index as u8,
            wallet,
            Scheme::Ecdsa,
            digest.to_vec(),
        )
        .await;
        assert_eq!(
            signatures[0], signatures[1],
            "both signers return the same signature"
        );
        let rsv = &signatures[0];
        assert_eq!(rsv.len(), 65);
        let signature = Signature::from_slice(&rsv[..64]).unwrap();
        verifying_key
            .verify_prehash(&digest, &signature)
            .expect("k256 verifies the node's ECDSA signature");
        assert!(signature.normalize_s().is_none(), "low-s");
        let recovered = VerifyingKey::recover_from_prehash(
            &digest,
            &signature,
            RecoveryId::from_byte(rsv[64]).unwrap(),
        )
        .unwrap();
        assert_eq!(recovered, verifying_key);
    }
}
