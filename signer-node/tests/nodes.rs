//! Signer nodes as separate processes on loopback: the real `custos-signer`
//! binary, each node with its own data folder, driven by the coordinator
//! library over libp2p. Every signature is verified independently (k256
//! BIP-340 against an output key computed here, ed25519-dalek).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use custos_protocol::{KeyGeneration, PartyId, RequestId, WalletId};
use custos_signer_node::coordinator::{Coordinator, CoordinatorError};
use custos_signer_node::job::{Curve, Job, JobBody, JobOutput, Scheme};
use ed25519_dalek::SigningKey;

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_keygen_and_sign_with_every_quorum() {
    let (nodes, coordinator_key) = cluster(3);
    let parties: Vec<PartyId> = nodes.iter().map(|node| node.party).collect();
    let coordinator =
        Coordinator::start(coordinator_key, nodes.iter().map(TestNode::info).collect()).unwrap();

    let taproot_wallet = WalletId([0x71; 16]);
    let key = coordinator
        .create_wallet(
            RequestId([1; 16]),
            taproot_wallet,
            Curve::Secp256k1,
            &parties,
            2,
        )
        .await
        .unwrap();
    assert_eq!(key.public_key.len(), 33);

    let edwards_wallet = WalletId([0x72; 16]);
    let edwards_key = coordinator
        .create_wallet(
            RequestId([2; 16]),
            edwards_wallet,
            Curve::Ed25519,
            &parties,
            2,
        )
        .await
        .unwrap();
    let verifying_key = ed25519_dalek::VerifyingKey::from_bytes(
        &edwards_key.public_key.clone().try_into().unwrap(),
    )
    .unwrap();

    for (request, quorum) in [[0usize, 1], [0, 2], [1, 2]].iter().enumerate() {
        let quorum: Vec<PartyId> = quorum.iter().map(|&index| parties[index]).collect();
        let message = [request as u8 + 0x40; 32];
        let signatures = sign_with(
            &coordinator,
            &quorum,
            10 + request as u8,
            taproot_wallet,
            Scheme::Taproot,
            message.to_vec(),
        )
        .await;
        assert_eq!(
            signatures[0], signatures[1],
            "every signer returns the same signature"
        );
        verify_taproot(&key.public_key, &message, &signatures[0]);

        let text = format!("ed25519 by quorum {request}");
        let signatures = sign_with(
            &coordinator,
            &quorum,
            20 + request as u8,
            edwards_wallet,
            Scheme::Ed25519,
            text.clone().into_bytes(),
        )
        .await;
        verifying_key
            .verify_strict(
                text.as_bytes(),
                &ed25519_dalek::Signature::from_slice(&signatures[0]).unwrap(),
            )
            .expect("ed25519-dalek verifies the signature from the nodes");
    }

    // Operator endpoint: status lists both wallets; metrics count sessions.
    let (status, body) = http_get(nodes[0].http, "/status").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains(&hex::encode(taproot_wallet.0))
            && body.contains(&hex::encode(edwards_wallet.0)),
        "{body}"
    );
    assert!(nodes[0].metric("custos_signer_sessions_total{") >= 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_node_restarts_with_its_shares_and_signs_again() {
    kill_restart_and_sign(MasterKeyBackend::File).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_node_with_softhsm_master_key_restarts_and_signs_again() {
    kill_restart_and_sign(MasterKeyBackend::SoftHsm).await;
}

/// `kill -9` one node, sign with the other two; restart it, and it signs
/// again with what it stored.
async fn kill_restart_and_sign(backend: MasterKeyBackend) {
    let Cluster {
        mut nodes,
        parties,
        coordinator,
        wallet,
        key,
        ..
    } = cluster_with_wallet_on(3, 0x73, backend).await;

    nodes[2].kill();
    // The coordinator's retry finds the live quorum: node 2 is unreachable.
    let message = [0x51; 32];
    let signature = coordinator
        .sign(
            RequestId([2; 16]),
            wallet,
            KeyGeneration(0),
            Scheme::Taproot,
            &[parties[2], parties[0], parties[1]],
            2,
            message.to_vec(),
            vec![],
        )
        .await
        .unwrap();
    verify_taproot(&key.public_key, &message, &signature);

    nodes[2].start();
    let message = [0x52; 32];
    let signatures = sign_with(
        &coordinator,
        &[parties[1], parties[2]],
        3,
        wallet,
        Scheme::Taproot,
        message.to_vec(),
    )
    .await;
    verify_taproot(&key.public_key, &message, &signatures[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_replayed_and_mismatched_jobs_are_refused_and_counted() {
    let Cluster {
        nodes,
        parties,
        coordinator,
        wallet,
        coordinator_key: pinned,
        ..
    } = cluster_with_wallet(3, 0x74).await;
    let quorum = vec![parties[0], parties[1]];
    let sign_body = |payload: u8| JobBody::Sign {
        wallet,
        generation: KeyGeneration(0),
        scheme: Scheme::Taproot,
        quorum: quorum.clone(),
        payload: vec![payload; 32],
        path: vec![],
    };
    let encode = |job: &Job, key: &SigningKey| {
        let mut bytes = Vec::new();
        ciborium::into_writer(&job.sign(key).unwrap(), &mut bytes).unwrap();
        bytes
    };
    let refusal = |outputs: Vec<Result<JobOutput, CoordinatorError>>| -> Vec<String> {
        outputs
            .into_iter()
            .map(|output| match output {
                Err(CoordinatorError::Failed { reason, .. }) => reason,
                other => panic!("expected a refusal, got {other:?}"),
            })
            .collect()
    };
    let timeout = Duration::from_secs(20);
    let far = u64::MAX / 2;

    // Signed by another key.
    let impostor = SigningKey::generate(&mut rand_core::OsRng);
    let job = Job {
        request: RequestId([9; 16]),
        attempt: 0,
        expires_at: far,
        body: sign_body(1),
    };
    let reasons = refusal(
        coordinator
            .send_raw(&quorum, encode(&job, &impostor), timeout)
            .await
            .unwrap(),
    );
    assert_eq!(reasons, ["bad_signature", "bad_signature"]);

    // Expired.
    let job = Job {
        request: RequestId([9; 16]),
        attempt: 0,
        expires_at: 1,
        body: sign_body(1),
    };
    let reasons = refusal(
        coordinator
            .send_raw(&quorum, encode(&job, &pinned), timeout)
            .await
            .unwrap(),
    );
    assert_eq!(reasons, ["expired", "expired"]);

    // Not a job at all.
    let reasons = refusal(
        coordinator
            .send_raw(&quorum, b"garbage".to_vec(), timeout)
            .await
            .unwrap(),
    );
    assert_eq!(reasons, ["malformed", "malformed"]);

    // A job that ran returns its stored result when repeated, and is never
    // signed again; the same request with another digest is refused.
    let job = Job {
        request: RequestId([10; 16]),
        attempt: 0,
        expires_at: far,
        body: sign_body(2),
    };
    let first: Vec<Vec<u8>> = coordinator
        .send_raw(&quorum, encode(&job, &pinned), timeout)
        .await
        .unwrap()
        .into_iter()
        .map(signature_of)
        .collect();
    let sessions_before = nodes[0].metric("custos_signer_sessions_total{");
    let again: Vec<Vec<u8>> = coordinator
        .send_raw(&quorum, encode(&job, &pinned), timeout)
        .await
        .unwrap()
        .into_iter()
        .map(signature_of)
        .collect();
    assert_eq!(
        first, again,
        "a replayed job answers with the stored signature"
    );
    assert_eq!(
        nodes[0].metric("custos_signer_sessions_total{"),
        sessions_before,
        "and runs no session"
    );
    let mismatched = Job {
        request: RequestId([10; 16]),
        attempt: 1,
        expires_at: far,
        body: sign_body(3),
    };
    let reasons = refusal(
        coordinator
            .send_raw(&quorum, encode(&mismatched, &pinned), timeout)
            .await
            .unwrap(),
    );
    assert_eq!(reasons, ["mismatch", "mismatch"]);

    for reason in ["bad_signature", "expired", "malformed", "mismatch"] {
        let count = nodes[0].metric(&format!(
            "custos_signer_jobs_refused_total{{reason=\"{reason}\"}}"
        ));
        assert!(count >= 1.0, "{reason} not counted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_peer_is_refused_and_garbage_does_not_crash_a_node() {
    let (nodes, _coordinator_key) = cluster(2);
    // A coordinator with a key the nodes do not pin: its connection is
    // refused after the Noise handshake, so its jobs never arrive.
    let stranger = Coordinator::start(
        SigningKey::generate(&mut rand_core::OsRng),
        nodes.iter().map(TestNode::info).collect(),
    )
    .unwrap();
    let outputs = stranger
        .submit(&[nodes[0].party], RequestId([1; 16]), 0, JobBody::Health)
        .await
        .unwrap();
    assert!(
        matches!(outputs[0], Err(CoordinatorError::Unreachable { .. })),
        "{:?}",
        outputs[0]
    );
    assert!(nodes[0].metric("custos_signer_refused_connections_total") >= 1.0);

    // Raw garbage and an endless stream of bytes on the libp2p port.
    use std::io::Write;
    for payload in [
        vec![0u8; 0],
        b"\x13/multistream/1.0.0\n garbage".to_vec(),
        vec![0xFF; 1 << 20],
    ] {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", nodes[0].p2p_port)) {
            let _ = stream.write_all(&payload);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        http_get(nodes[0].http, "/healthz").map(|(status, _)| status),
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_signings_across_three_nodes_all_verify() {
    // The node processes live as long as `_nodes`.
    let Cluster {
        nodes: _nodes,
        parties,
        coordinator,
        wallet,
        key,
        ..
    } = cluster_with_wallet(3, 0x75).await;
    let requests = (0..50u8).map(|index| {
        // Rotate the committee order so all three quorums take part.
        let mut committee = parties.clone();
        committee.rotate_left(usize::from(index) % 3);
        let coordinator = &coordinator;
        async move {
            let message = [index; 32];
            let signature = coordinator
                .sign(
                    RequestId([100 + index; 16]),
                    wallet,
                    KeyGeneration(0),
                    Scheme::Taproot,
                    &committee,
                    2,
                    message.to_vec(),
                    vec![],
                )
                .await;
            (message, signature)
        }
    });
    let results = futures::future::join_all(requests).await;
    for (message, signature) in results {
        verify_taproot(
            &key.public_key,
            &message,
            &signature.expect("every concurrent signing succeeds"),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn node_that_stops_answering_fails_the_session_in_time_and_retry_succeeds() {
    let Cluster {
        nodes,
        parties,
        coordinator,
        wallet,
        key,
        ..
    } = cluster_with_wallet(3, 0x76).await;

    // SIGSTOP: the process keeps its TCP connections but answers nothing.
    let stopped = nodes[2].child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &stopped])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let message = [0x61; 32];
    let signature = coordinator
        .sign(
            RequestId([2; 16]),
            wallet,
            KeyGeneration(0),
            Scheme::Taproot,
            &[parties[2], parties[0], parties[1]],
            2,
            message.to_vec(),
            vec![],
        )
        .await
        .expect("the retry with the live quorum signs");
    let elapsed = started.elapsed();
    let _ = Command::new("kill").args(["-CONT", &stopped]).status();
    verify_taproot(&key.public_key, &message, &signature);
    // Node 0 ran the first attempt with the stopped node: that session
    // failed at its deadline (10 s for FROST) instead of hanging.
    assert!(
        nodes[0]
            .metric("custos_signer_sessions_total{outcome=\"error\",protocol=\"sign_taproot\"}")
            >= 1.0
            || nodes[0].metric(
                "custos_signer_sessions_total{protocol=\"sign_taproot\",outcome=\"error\"}"
            ) >= 1.0
    );
    // Bounded by the coordinator's answer timeout (20 s) plus one signing.
    assert!(elapsed < Duration::from_secs(40), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_attempt_stops_the_older_session_of_its_request_at_once() {
    let Cluster {
        nodes,
        parties,
        coordinator,
        coordinator_key,
        wallet,
        key,
    } = cluster_with_wallet(3, 0x79).await;
    let stopped = nodes[2].child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &stopped])
        .status()
        .unwrap()
        .success());
    let message = [0x62; 32];
    let signed_job = |attempt: u32, quorum: Vec<PartyId>| {
        let job = Job {
            request: RequestId([9; 16]),
            attempt,
            expires_at: u64::MAX / 2,
            body: JobBody::Sign {
                wallet,
                generation: KeyGeneration(0),
                scheme: Scheme::Taproot,
                quorum,
                payload: message.to_vec(),
                path: vec![],
            },
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&job.sign(&coordinator_key).unwrap(), &mut bytes).unwrap();
        bytes
    };
    let timeout = Duration::from_secs(30);
    // Attempt 0 with the stopped node: node 0's session can only wait.
    let first = signed_job(0, vec![parties[0], parties[2]]);
    let first_quorum = [parties[0]];
    let older = coordinator.send_raw(&first_quorum, first, timeout);
    let newer = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let answers = coordinator
            .send_raw(
                &[parties[0], parties[1]],
                signed_job(1, vec![parties[0], parties[1]]),
                timeout,
            )
            .await
            .unwrap();
        (answers, started.elapsed())
    };
    let (older, (answers, elapsed)) = tokio::join!(older, newer);
    let _ = Command::new("kill").args(["-CONT", &stopped]).status();
    for answer in answers {
        verify_taproot(&key.public_key, &message, &signature_of(answer));
    }
    // Attempt 0 was stopped when attempt 1 arrived, not at its 10 s
    // deadline, and says why.
    let older = older.unwrap().pop().unwrap();
    assert!(
        matches!(&older, Err(CoordinatorError::Failed { message, .. }) if message.contains("newer attempt")),
        "{older:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "attempt 1 took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_stored_by_one_member_completes_a_later_attempt() {
    // The nodes must stay bound: dropping a TestNode stops its process.
    let Cluster {
        nodes: _nodes,
        parties,
        coordinator,
        wallet,
        key,
        ..
    } = cluster_with_wallet(3, 0x7a).await;
    let message = [0x63; 32];
    let request = RequestId([10; 16]);
    // Attempt 0 by nodes 0 and 1: both store the signature.
    let first = coordinator
        .sign(
            request,
            wallet,
            KeyGeneration(0),
            Scheme::Taproot,
            &[parties[0], parties[1]],
            2,
            message.to_vec(),
            vec![],
        )
        .await
        .unwrap();
    // A later attempt with nodes 0 and 2 (what a caller that lost the first
    // answer does): node 0 answers from its record and never signs again,
    // node 2 waits for node 0's frames in vain. The stored signature is the
    // answer; before, the caller retried this forever.
    let again = coordinator
        .sign_from_attempt(
            request,
            64,
            wallet,
            KeyGeneration(0),
            Scheme::Taproot,
            &[parties[0], parties[2], parties[1]],
            2,
            message.to_vec(),
            vec![],
        )
        .await
        .expect("the stored signature completes the attempt");
    assert_eq!(again, first);
    verify_taproot(&key.public_key, &message, &again);
}

#[tokio::test(flavor = "multi_thread")]
async fn reshare_2of3_to_3of4_with_a_fourth_node_keeps_address_and_deletes_old_shares() {
    let (nodes, coordinator_key) = cluster(4);
    let parties: Vec<PartyId> = nodes.iter().map(|node| node.party).collect();
    let coordinator =
        Coordinator::start(coordinator_key, nodes.iter().map(TestNode::info).collect()).unwrap();
    let old_committee = &parties[..3];
    let wallet = WalletId([0x77; 16]);
    let key = coordinator
        .create_wallet(
            RequestId([1; 16]),
            wallet,
            Curve::Secp256k1,
            old_committee,
            2,
        )
        .await
        .unwrap();
    assert_eq!(generations_on(&nodes[3], wallet), Vec::<u32>::new());

    // Holders 0 and 1 deal to all four; node 3 joins.
    let new_generation = coordinator
        .reshare(
            RequestId([2; 16]),
            wallet,
            Curve::Secp256k1,
            KeyGeneration(0),
            old_committee,
            &parties[..2],
            &parties,
            3,
        )
        .await
        .unwrap();
    assert_eq!(new_generation, KeyGeneration(1));
    // Committed: every holder keeps only the new generation on disk.
    for node in &nodes {
        assert_eq!(generations_on(node, wallet), vec![1], "node {}", node.party);
    }

    // The new 3-of-4 set signs under the unchanged key (same address).
    let message = [0x88; 32];
    let body = JobBody::Sign {
        wallet,
        generation: new_generation,
        scheme: Scheme::Taproot,
        quorum: vec![parties[1], parties[2], parties[3]],
        payload: message.to_vec(),
        path: vec![],
    };
    let outputs = coordinator
        .submit(
            &[parties[1], parties[2], parties[3]],
            RequestId([3; 16]),
            0,
            body,
        )
        .await
        .unwrap();
    for output in outputs {
        verify_taproot(&key.public_key, &message, &signature_of(output));
    }
    // The old generation is gone: it cannot sign any more.
    let body = JobBody::Sign {
        wallet,
        generation: KeyGeneration(0),
        scheme: Scheme::Taproot,
        quorum: vec![parties[0], parties[1]],
        payload: message.to_vec(),
        path: vec![],
    };
    let outputs = coordinator
        .submit(&[parties[0], parties[1]], RequestId([4; 16]), 0, body)
        .await
        .unwrap();
    for output in outputs {
        assert!(
            matches!(output, Err(CoordinatorError::Failed { .. })),
            "{output:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_record_survives_a_restart_and_answers_without_signing_again() {
    let Cluster {
        mut nodes,
        parties,
        coordinator,
        coordinator_key,
        wallet,
        ..
    } = cluster_with_wallet(3, 0x78).await;
    let quorum = vec![parties[0], parties[1]];
    let job = Job {
        request: RequestId([5; 16]),
        attempt: 0,
        expires_at: u64::MAX / 2,
        body: JobBody::Sign {
            wallet,
            generation: KeyGeneration(0),
            scheme: Scheme::Taproot,
            quorum: quorum.clone(),
            payload: vec![0x99; 32],
            path: vec![],
        },
    };
    let mut bytes = Vec::new();
    ciborium::into_writer(&job.sign(&coordinator_key).unwrap(), &mut bytes).unwrap();
    let timeout = Duration::from_secs(20);
    let first: Vec<Vec<u8>> = coordinator
        .send_raw(&quorum, bytes.clone(), timeout)
        .await
        .unwrap()
        .into_iter()
        .map(signature_of)
        .collect();

    nodes[0].kill();
    nodes[0].start();
    let again = coordinator
        .send_raw(&[parties[0]], bytes, timeout)
        .await
        .unwrap();
    assert_eq!(signature_of(again.into_iter().next().unwrap()), first[0]);
    assert_eq!(
        nodes[0].metric("custos_signer_sessions_total{"),
        0.0,
        "the restarted node answered from its record without a session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_frames_from_an_allow_listed_peer_are_counted_and_harmless() {
    use custos_signer_node::transport::{party_of, Network, NetworkConfig};
    // The test acts as a peer node the cluster allow-lists.
    let probe = libp2p::identity::Keypair::generate_ed25519();
    let probe_party = party_of(&probe).unwrap();
    let (nodes, _coordinator_key) =
        cluster_with_extra_peers(2, MasterKeyBackend::File, &[probe_party]);
    let (network, _events) = Network::start(NetworkConfig {
        keypair: probe,
        listen: None,
        peers: vec![(nodes[0].party, Some(nodes[0].info().address))],
        job_timeout: Duration::from_secs(10),
    })
    .unwrap();
    let mut noise = vec![0u8; 4096];
    for round in 0..20u8 {
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut noise);
        noise[0] = round;
        network
            .send_frame(&nodes[0].party, noise.clone())
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[0].metric("custos_signer_rejected_messages_total{") < 20.0 {
        assert!(
            Instant::now() < deadline,
            "garbage frames were not all counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http_get(nodes[0].http, "/healthz").map(|(status, _)| status),
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_share_is_restored_from_its_backup_only_with_both_halves_and_signs_again() {
    use custos_signer_node::backup::RecoveryKey;
    use custos_signer_node::job::SecretBytes;
    let Cluster {
        mut nodes,
        parties,
        coordinator,
        wallet,
        key,
        ..
    } = cluster_with_wallet(3, 0x7b).await;
    let curve = Curve::Secp256k1;

    // Without a recovery key configured, a node exports nothing.
    let refused = coordinator
        .export_backup(
            RequestId([0x40; 16]),
            parties[0],
            wallet,
            curve,
            KeyGeneration(0),
            [1; 16],
            1,
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // The operator's recovery key: the node seals for its public half.
    let recovery = RecoveryKey::generate().unwrap();
    let recovery_file = nodes[0].dir.path().join("operator-recovery.key");
    nodes[0].kill();
    set_backup_config(
        &nodes[0],
        &format!("recovery_public_key = \"{}\"\n", recovery.public()),
    );
    nodes[0].start();
    let (sealed, k1) = coordinator
        .export_backup(
            RequestId([0x41; 16]),
            parties[0],
            wallet,
            curve,
            KeyGeneration(0),
            [2; 16],
            1_700_000_000_000,
        )
        .await
        .unwrap();
    assert_eq!(k1.0.len(), 32);
    let info = coordinator
        .key_info(
            RequestId([0x42; 16]),
            &[parties[1], parties[2]],
            wallet,
            curve,
            KeyGeneration(0),
        )
        .await
        .unwrap();

    // Wipe the node's shares of the wallet.
    nodes[0].kill();
    let shares = nodes[0]
        .dir
        .path()
        .join("data")
        .join("store")
        .join("shares")
        .join(hex::encode(wallet.0));
    assert!(shares.exists(), "{}", shares.display());
    std::fs::remove_dir_all(&shares).unwrap();
    nodes[0].start();
    assert!(generations_on(&nodes[0], wallet).is_empty());

    // The control plane's half alone (no recovery key on the node): refused.
    let refused = coordinator
        .restore_backup(
            RequestId([0x43; 16]),
            parties[0],
            wallet,
            curve,
            sealed.clone(),
            SecretBytes(k1.0.clone()),
            info.clone(),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // The recovery key with a wrong control-plane half: refused.
    std::fs::write(&recovery_file, hex::encode(*recovery.to_bytes())).unwrap();
    nodes[0].kill();
    set_backup_config(
        &nodes[0],
        &format!(
            "recovery_public_key = \"{}\"\nrecovery_key_file = \"{}\"\n",
            recovery.public(),
            recovery_file.display()
        ),
    );
    nodes[0].start();
    let refused = coordinator
        .restore_backup(
            RequestId([0x44; 16]),
            parties[0],
            wallet,
            curve,
            sealed.clone(),
            SecretBytes(vec![7; 32]),
            info.clone(),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // Another wallet's public data: refused, nothing stored.
    let mut wrong_info = info.clone();
    let last = wrong_info.len() - 1;
    wrong_info[last] ^= 1;
    let refused = coordinator
        .restore_backup(
            RequestId([0x45; 16]),
            parties[0],
            wallet,
            curve,
            sealed.clone(),
            SecretBytes(k1.0.clone()),
            wrong_info,
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(generations_on(&nodes[0], wallet).is_empty());

    // Both halves: restored, and the node signs again.
    let generation = coordinator
        .restore_backup(
            RequestId([0x46; 16]),
            parties[0],
            wallet,
            curve,
            sealed,
            SecretBytes(k1.0.clone()),
            info,
        )
        .await
        .unwrap();
    assert_eq!(generation, KeyGeneration(0));
    assert_eq!(generations_on(&nodes[0], wallet), [0]);
    let message = [0x5e; 32];
    let signatures = sign_with(
        &coordinator,
        &[parties[0], parties[1]],
        0x47,
        wallet,
        Scheme::Taproot,
        message.to_vec(),
    )
    .await;
    verify_taproot(&key.public_key, &message, &signatures[0]);
    assert!(
        !nodes[0].log().contains(&hex::encode(&k1.0)),
        "the control plane's half is never logged"
    );
}
