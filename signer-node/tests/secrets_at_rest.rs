//! What a signer node keeps on disk, read back as an attacker with the
//! node's folder and its master key would: every file raw, and every record
//! and share decrypted. A node keeps no backup secret (K1) and no exported
//! sealed share in its replay records; after a refresh commits, nothing of
//! an old holder's old share is left in any of its files.
//!
//! The nodes are real `custos-signer` processes driven by the coordinator;
//! a node is stopped before the test opens its store (a running node holds
//! the store's lock).

mod common;

use std::time::Duration;

use common::*;
use custos_protocol::{KeyGeneration, PartyId, RequestId, Secp256k1, WalletId};
use custos_signer_node::backup::{open_backup, RecoveryKey, SealedBackup};
use custos_signer_node::coordinator::{Coordinator, CoordinatorError};
use custos_signer_node::job::{Curve, Job, JobBody, JobOutput, Scheme, SecretBytes};
use serde::Serialize;

const CREATED_AT_MS: i64 = 1_700_000_000_000;

/// Gives `node` the operator's recovery key: the public half to seal
/// backups for, and the secret half's file, as an operator configures it
/// for a restore. Returns the key.
fn configure_recovery_key(node: &mut TestNode) -> RecoveryKey {
    let recovery = RecoveryKey::generate().unwrap();
    let recovery_file = node.dir.path().join("operator-recovery.key");
    std::fs::write(&recovery_file, hex::encode(*recovery.to_bytes())).unwrap();
    node.kill();
    set_backup_config(
        node,
        &format!(
            "recovery_public_key = \"{}\"\nrecovery_key_file = \"{}\"\n",
            recovery.public(),
            recovery_file.display()
        ),
    );
    node.start();
    recovery
}

/// The last bytes of a sealed backup: inside the encrypted share and its
/// tag (the format ends with the ciphertext, and a share is longer).
fn sealed_share_bytes(sealed: &[u8]) -> Vec<u8> {
    assert!(sealed.len() > 400, "a sealed share is longer than this");
    sealed[sealed.len() - 128..].to_vec()
}

/// The reason of a node's refusal.
fn refusal(output: Result<JobOutput, CoordinatorError>) -> String {
    match output {
        Err(CoordinatorError::Failed { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn export_body(wallet: WalletId, backup_id: u8) -> JobBody {
    JobBody::ExportBackup {
        wallet,
        curve: Curve::Secp256k1,
        generation: KeyGeneration(0),
        backup_id: [backup_id; 16],
        created_at_ms: CREATED_AT_MS,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_secret_is_kept_in_no_file_of_the_node_and_a_replayed_export_is_refused() {
    let Cluster {
        mut nodes,
        parties,
        coordinator,
        wallet,
        ..
    } = cluster_with_wallet(3, 0x7c).await;
    let recovery = configure_recovery_key(&mut nodes[0]);
    let export = |request: u8, backup_id: u8| {
        coordinator.export_backup(
            RequestId([request; 16]),
            parties[0],
            wallet,
            Curve::Secp256k1,
            KeyGeneration(0),
            [backup_id; 16],
            CREATED_AT_MS,
        )
    };
    let (sealed, k1) = export(0x50, 1).await.unwrap();
    // The halves are the real thing: with the recovery key they open the
    // share, which is why the node must keep neither.
    let k1_array: [u8; 32] = k1.0.as_slice().try_into().unwrap();
    let opened = open_backup(
        &SealedBackup::from_bytes(&sealed).unwrap(),
        &k1_array,
        &recovery,
    )
    .unwrap();
    assert!(!opened.is_empty());
    // A new backup is a new request, and is exported as the first was.
    let (second_sealed, second_k1) = export(0x51, 2).await.unwrap();
    assert_ne!(k1.0, second_k1.0);

    nodes[0].kill();
    assert_kept_nowhere(
        &node_contents(&nodes[0], &[wallet]),
        &[
            ("the first backup's K1", k1.0.clone()),
            ("the second backup's K1", second_k1.0.clone()),
            ("the first sealed share", sealed_share_bytes(&sealed)),
            (
                "the second sealed share",
                sealed_share_bytes(&second_sealed),
            ),
        ],
    );

    // After a restart, the same request (and a retry of it) is refused with
    // the stable reason instead of being answered with K1.
    nodes[0].start();
    for attempt in [0, 1] {
        let answer = coordinator
            .submit(
                &[parties[0]],
                RequestId([0x50; 16]),
                attempt,
                export_body(wallet, 1),
            )
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(
            refusal(answer),
            "backup_already_exported",
            "attempt {attempt}"
        );
    }
    assert!(!nodes[0].log().contains(&hex::encode(&k1.0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_refresh_commits_no_file_of_an_old_holder_keeps_the_old_share() {
    let Cluster {
        mut nodes,
        parties,
        coordinator,
        wallet,
        ..
    } = cluster_with_wallet(3, 0x7d).await;
    // Node 0's operator configured backups (and the recovery key file a
    // restore needs), and a backup of generation 0 was made.
    configure_recovery_key(&mut nodes[0]);
    let (sealed, k1) = coordinator
        .export_backup(
            RequestId([0x60; 16]),
            parties[0],
            wallet,
            Curve::Secp256k1,
            KeyGeneration(0),
            [3; 16],
            CREATED_AT_MS,
        )
        .await
        .unwrap();

    // Each old holder's generation-0 share, read through its store with its
    // master key while it is stopped: the secret scalar and the sealed blob.
    let blob_path = |node: &TestNode| {
        node.data_dir()
            .join("store")
            .join("shares")
            .join(hex::encode(wallet.0))
            .join("0.secp256k1.blob")
    };
    let mut old_shares = Vec::new();
    for node in &mut nodes {
        node.kill();
        let store = node.open_store();
        let share = store
            .share::<Secp256k1>(wallet, KeyGeneration(0))
            .unwrap()
            .unwrap();
        old_shares.push((
            secret_scalar(&share),
            std::fs::read(blob_path(node)).unwrap(),
        ));
        drop(store);
        node.start();
    }

    // A proactive refresh: same committee, same threshold, to commit.
    let new_generation = coordinator
        .reshare(
            RequestId([0x61; 16]),
            wallet,
            Curve::Secp256k1,
            KeyGeneration(0),
            &parties,
            &parties[..2],
            &parties,
            2,
        )
        .await
        .unwrap();
    assert_eq!(new_generation, KeyGeneration(1));
    for node in &nodes {
        assert_eq!(generations_on(node, wallet), [1]);
    }

    for (index, (node, (old_scalar, old_blob))) in nodes.iter_mut().zip(&old_shares).enumerate() {
        node.kill();
        assert!(!blob_path(node).exists());
        let new_share = node
            .open_store()
            .share::<Secp256k1>(wallet, new_generation)
            .unwrap()
            .unwrap();
        assert_ne!(
            secret_scalar(&new_share),
            *old_scalar,
            "a refresh gives every holder a new secret"
        );
        let mut little_endian = old_scalar.to_vec();
        little_endian.reverse();
        let mut secrets = vec![
            ("the old secret scalar", old_scalar.to_vec()),
            ("the old secret scalar, little-endian", little_endian),
            ("the old share's sealed blob", old_blob.clone()),
        ];
        if index == 0 {
            secrets.push(("the old share's backup K1", k1.0.clone()));
            secrets.push(("the old share's sealed backup", sealed_share_bytes(&sealed)));
        }
        assert_kept_nowhere(&node_contents(node, &[wallet]), &secrets);
    }
}

/// The layout of replay records of nodes before this version: the whole
/// output of the job.
#[derive(Serialize)]
struct EarlierReplayRecord {
    binding: [u8; 32],
    attempts: Vec<u32>,
    result: Option<JobOutput>,
}

fn earlier_record(job: &Job, output: JobOutput) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(
        &EarlierReplayRecord {
            binding: job.request_binding().unwrap(),
            attempts: vec![job.attempt],
            result: Some(output),
        },
        &mut bytes,
    )
    .unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_record_of_an_earlier_version_loses_its_backup_secret_when_the_node_starts() {
    // An initialised node folder that no node of this version has run on
    // yet: as an earlier version leaves it.
    let coordinator_key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let mut node = TestNode::init(
        PartyId(coordinator_key.verifying_key().to_bytes()),
        MasterKeyBackend::File,
    );
    let wallet = WalletId([0x7e; 16]);
    let far = u64::MAX / 2;
    let export = Job {
        request: RequestId([0x70; 16]),
        attempt: 0,
        expires_at: far,
        body: export_body(wallet, 4),
    };
    let sign = Job {
        request: RequestId([0x71; 16]),
        attempt: 0,
        expires_at: far,
        body: JobBody::Sign {
            wallet,
            generation: KeyGeneration(0),
            scheme: Scheme::Taproot,
            quorum: vec![node.party, PartyId([9; 32])],
            payload: vec![0x72; 32],
            path: vec![],
        },
    };
    let mut k1 = vec![0u8; 32];
    let mut sealed = vec![0u8; 600];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k1);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut sealed);
    let signature = vec![0x73; 64];

    // What an earlier node left in its store.
    let store = node.open_store();
    store
        .put_record(
            "jobs",
            &export.request.0,
            &earlier_record(
                &export,
                JobOutput::Backup {
                    sealed: sealed.clone(),
                    k1: SecretBytes(k1.clone()),
                },
            ),
        )
        .unwrap();
    store
        .put_record(
            "jobs",
            &sign.request.0,
            &earlier_record(
                &sign,
                JobOutput::Signature {
                    signature: signature.clone(),
                },
            ),
        )
        .unwrap();
    drop(store);

    // This version starts on that folder: once it is ready, the secrets are
    // gone from it.
    node.start();
    node.kill();
    assert_kept_nowhere(
        &node_contents(&node, &[]),
        &[
            ("the earlier backup's K1", k1.clone()),
            ("the earlier sealed share", sealed_share_bytes(&sealed)),
        ],
    );

    // What a replay needs is still there: the export is refused, the
    // signature is answered again without a session.
    node.start();
    let coordinator = Coordinator::start(coordinator_key.clone(), vec![node.info()]).unwrap();
    let encode = |job: &Job| {
        let mut bytes = Vec::new();
        ciborium::into_writer(&job.sign(&coordinator_key).unwrap(), &mut bytes).unwrap();
        bytes
    };
    let timeout = Duration::from_secs(20);
    let answer = coordinator
        .send_raw(&[node.party], encode(&export), timeout)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(refusal(answer), "backup_already_exported");
    let answer = coordinator
        .send_raw(&[node.party], encode(&sign), timeout)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(signature_of(answer), signature);
    assert_eq!(node.metric("custos_signer_sessions_total{"), 0.0);
}
