//! Signer nodes as separate processes on loopback: the real `custos-signer`
//! binary, each node with its own data folder, driven by the coordinator
//! library over libp2p. Every signature is verified independently (k256
//! BIP-340 against an output key computed here, ed25519-dalek).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custos_protocol::{KeyGeneration, PartyId, RequestId, WalletId};
use custos_signer_node::coordinator::{Coordinator, CoordinatorError, NodeInfo, WalletKey};
use custos_signer_node::job::{Curve, Job, JobBody, JobOutput, Scheme};
use ed25519_dalek::SigningKey;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node process and its folder.
struct TestNode {
    dir: tempfile::TempDir,
    party: PartyId,
    p2p_port: u16,
    http: SocketAddr,
    child: Option<Child>,
}

impl TestNode {
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }

    fn write_config(&self, coordinator: PartyId, peers: &[(PartyId, u16)]) {
        let mut text = format!(
            "data_dir = \"{data}\"\nlisten = \"/ip4/127.0.0.1/tcp/{p2p}\"\nhttp_listen = \"{http}\"\n\
             coordinator = \"{coordinator}\"\nprime_pool_target = 0\n\n\
             [master_key]\nbackend = \"file\"\npath = \"{data}/master.key\"\n",
            data = self.dir.path().join("data").display(),
            p2p = self.p2p_port,
            http = self.http,
            coordinator = hex::encode(coordinator.0),
        );
        for (party, port) in peers {
            text.push_str(&format!(
                "\n[[peers]]\nid = \"{}\"\naddress = \"/ip4/127.0.0.1/tcp/{port}\"\n",
                hex::encode(party.0)
            ));
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_custos-signer"));
        command
            .arg("--config")
            .arg(self.config_path())
            .arg(subcommand)
            .env("RUST_LOG", "info,libp2p=warn");
        command
    }

    /// `custos-signer init`: returns the node with its new party id.
    fn init(coordinator: PartyId) -> TestNode {
        let mut node = TestNode {
            dir: tempfile::tempdir().unwrap(),
            party: PartyId([0; 32]),
            p2p_port: free_port(),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            child: None,
        };
        node.write_config(coordinator, &[]);
        let output = node.command("init").output().unwrap();
        assert!(
            output.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let party_hex = stdout
            .lines()
            .find_map(|line| line.strip_prefix("party_id "))
            .expect("init prints the party id");
        node.party = PartyId(hex::decode(party_hex).unwrap().try_into().unwrap());
        node
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("node.log")).unwrap();
        let child = self
            .command("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(self.http, "/readyz").is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("node did not become ready; log:\n{}", self.log());
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            party: self.party,
            address: format!("/ip4/127.0.0.1/tcp/{}", self.p2p_port)
                .parse()
                .unwrap(),
        }
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").expect("metrics answer");
        body.lines()
            .filter(|line| line.starts_with(line_prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Three initialised and running nodes that know each other, and a
/// coordinator they pin.
fn cluster(n: usize) -> (Vec<TestNode>, SigningKey) {
    let coordinator_key = SigningKey::generate(&mut rand_core::OsRng);
    let coordinator = PartyId(coordinator_key.verifying_key().to_bytes());
    let mut nodes: Vec<TestNode> = (0..n).map(|_| TestNode::init(coordinator)).collect();
    let addresses: Vec<(PartyId, u16)> = nodes
        .iter()
        .map(|node| (node.party, node.p2p_port))
        .collect();
    for node in &mut nodes {
        let peers: Vec<_> = addresses
            .iter()
            .copied()
            .filter(|(party, _)| *party != node.party)
            .collect();
        node.write_config(coordinator, &peers);
        node.start();
    }
    (nodes, coordinator_key)
}

/// A running cluster with a coordinator the nodes pin and one 2-of-n
/// secp256k1 wallet.
struct Cluster {
    nodes: Vec<TestNode>,
    parties: Vec<PartyId>,
    coordinator_key: SigningKey,
    coordinator: Coordinator,
    wallet: WalletId,
    key: WalletKey,
}

async fn cluster_with_wallet(n: usize, wallet_byte: u8) -> Cluster {
    let (nodes, coordinator_key) = cluster(n);
    let parties: Vec<PartyId> = nodes.iter().map(|node| node.party).collect();
    let coordinator = Coordinator::start(
        coordinator_key.clone(),
        nodes.iter().map(TestNode::info).collect(),
    )
    .unwrap();
    let wallet = WalletId([wallet_byte; 16]);
    let key = coordinator
        .create_wallet(RequestId([1; 16]), wallet, Curve::Secp256k1, &parties, 2)
        .await
        .unwrap();
    Cluster {
        nodes,
        parties,
        coordinator_key,
        coordinator,
        wallet,
        key,
    }
}

/// The BIP-341 key-path output key of an internal key, computed with k256.
fn taproot_output_key(public_key: &[u8]) -> [u8; 32] {
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    use sha2::{Digest, Sha256};
    let internal_x: [u8; 32] = public_key[1..].try_into().unwrap();
    let tag = Sha256::digest(b"TapTweak");
    let tweak = Sha256::new()
        .chain_update(tag)
        .chain_update(tag)
        .chain_update(internal_x)
        .finalize();
    let tweak =
        <k256::Scalar as k256::elliptic_curve::ops::Reduce<k256::U256>>::reduce_bytes(&tweak);
    let mut even = [0u8; 33];
    even[0] = 2;
    even[1..].copy_from_slice(&internal_x);
    let internal = k256::PublicKey::from_sec1_bytes(&even).unwrap();
    let output = (internal.to_projective() + k256::ProjectivePoint::GENERATOR * tweak).to_affine();
    output.to_encoded_point(true).as_bytes()[1..]
        .try_into()
        .unwrap()
}

fn verify_taproot(public_key: &[u8], message: &[u8; 32], signature: &[u8]) {
    k256::schnorr::VerifyingKey::from_bytes(&taproot_output_key(public_key))
        .unwrap()
        .verify_raw(
            message,
            &k256::schnorr::Signature::try_from(signature).unwrap(),
        )
        .expect("k256 verifies the BIP-340 signature from the nodes");
}

fn signature_of(output: Result<JobOutput, CoordinatorError>) -> Vec<u8> {
    match output.expect("signing succeeds") {
        JobOutput::Signature { signature } => signature,
        other => panic!("expected a signature, got {other:?}"),
    }
}

async fn sign_with(
    coordinator: &Coordinator,
    quorum: &[PartyId],
    request: u8,
    wallet: WalletId,
    scheme: Scheme,
    payload: Vec<u8>,
) -> Vec<Vec<u8>> {
    let body = JobBody::Sign {
        wallet,
        generation: KeyGeneration(0),
        scheme,
        quorum: quorum.to_vec(),
        payload,
        path: vec![],
    };
    coordinator
        .submit(quorum, RequestId([request; 16]), 0, body)
        .await
        .unwrap()
        .into_iter()
        .map(signature_of)
        .collect()
}

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
    let Cluster {
        mut nodes,
        parties,
        coordinator,
        wallet,
        key,
        ..
    } = cluster_with_wallet(3, 0x73).await;

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
