//! Faults between real node processes (issue 15): frames lost after their
//! acknowledgement, a session queue of one frame, connections reset in the
//! middle of rounds, frames delayed past a round, a node paused with
//! SIGSTOP. DKG, aux info, ECDSA and FROST signing finish every time, no
//! run waits for its deadline, and under resets no request is lost or
//! signed twice. A soak of consecutive aux-info runs beside prime
//! generation.
//!
//! Lost frames and tiny queues come from the node's own fault injection
//! (`src/faults.rs`, feature `fault-injection`, which CI's `--all-features`
//! build has); resets and delays from a TCP proxy in this test between
//! every pair of nodes (real sockets: a reset is an RST, as a middlebox
//! sends it).
//!
//! Its own test binary: its runs have the CPU to themselves.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use custos_protocol::{KeyGeneration, PartyId, RequestId, WalletId};
use custos_signer_node::coordinator::{Coordinator, WalletKey};
use custos_signer_node::job::{Curve, Scheme};
use ed25519_dalek::SigningKey;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of one node: peers dial it instead of the node.
/// `reset()` cuts every connection through it with an RST; `delay` holds
/// every chunk of bytes for that long before passing it on.
struct Proxy {
    port: u16,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (tasks, held) = (connections.clone(), delay.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                for socket in [&inbound, &outbound] {
                    // Closed with a zero linger, a socket sends an RST:
                    // aborting both pumps of a connection drops both its
                    // sockets, and both nodes see a reset.
                    // A zero linger never blocks the drop (the deprecation
                    // is about non-zero lingers): the kernel resets at once.
                    #[allow(deprecated)]
                    let _ = socket.set_linger(Some(Duration::ZERO));
                    let _ = socket.set_nodelay(true);
                }
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let up = tokio::spawn(pump(in_read, out_write, held.clone()));
                let down = tokio::spawn(pump(out_read, in_write, held.clone()));
                tasks
                    .lock()
                    .unwrap()
                    .extend([up.abort_handle(), down.abort_handle()]);
            }
        });
        Proxy {
            port,
            connections,
            delay,
        }
    }

    fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }
}

/// Cuts every connection through a proxy (RST both ways).
fn reset(connections: &Mutex<Vec<tokio::task::AbortHandle>>) {
    for task in connections.lock().unwrap().drain(..) {
        task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Arc<Mutex<Duration>>,
) {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            let _ = to.shutdown().await;
            return;
        }
        let hold = *delay.lock().unwrap();
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// How a faulty cluster starts.
#[derive(Clone, Copy, Default)]
struct Setup<'a> {
    /// `CUSTOS_SIGNER_FAULTS` of every node.
    faults: &'a str,
    /// Peers reach each other through the test's proxies.
    proxied: bool,
    /// The byte the DKG's wallet id repeats.
    wallet: u8,
    /// Copies of its own fixture prime set each node imports before it
    /// starts (one per aux-info run it will take part in).
    primes: usize,
    /// The nodes' `prime_pool_target` (0: no generation in the background).
    pool_target: usize,
}

/// The committed prime sets (`protocol/testdata/primes.json`, generated
/// once by `protocol/examples/generate_fixtures.rs` with the project's own
/// prime search), `copies` times set `index`, written to a file
/// `dev-import-primes` reads.
fn prime_fixture(dir: &std::path::Path, index: usize, copies: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/testdata/primes.json"
    ))
    .unwrap();
    let sets: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let path = dir.join("primes-import.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&vec![&sets[index]; copies]).unwrap(),
    )
    .unwrap();
    path
}

/// Three nodes started as `setup` says, each reaching its peers through
/// their proxies when `proxied`, a coordinator (direct to the nodes), and
/// a 2-of-3 secp256k1 wallet made by a DKG under those faults.
struct FaultyCluster {
    nodes: Vec<TestNode>,
    proxies: Vec<Proxy>,
    parties: Vec<PartyId>,
    coordinator: Coordinator,
    wallet: WalletId,
    key: WalletKey,
}

async fn faulty_cluster(setup: Setup<'_>) -> FaultyCluster {
    let Setup {
        faults,
        proxied,
        wallet: wallet_byte,
        primes,
        pool_target,
    } = setup;
    let coordinator_key = SigningKey::generate(&mut rand_core::OsRng);
    let coordinator_party = PartyId(coordinator_key.verifying_key().to_bytes());
    let mut nodes: Vec<TestNode> = (0..3)
        .map(|_| TestNode::init(coordinator_party, MasterKeyBackend::File))
        .collect();
    let mut proxies = Vec::new();
    for node in &nodes {
        proxies.push(Proxy::start(node.p2p_port).await);
    }
    let addresses: Vec<(PartyId, u16)> = nodes
        .iter()
        .zip(&proxies)
        .map(|(node, proxy)| (node.party, if proxied { proxy.port } else { node.p2p_port }))
        .collect();
    for (index, node) in nodes.iter_mut().enumerate() {
        let peers: Vec<_> = addresses
            .iter()
            .copied()
            .filter(|(party, _)| *party != node.party)
            .collect();
        node.write_config(coordinator_party, &peers);
        if !faults.is_empty() {
            node.env
                .push(("CUSTOS_SIGNER_FAULTS".into(), faults.to_string()));
        }
        node.env.push((
            "CUSTOS_SIGNER_PRIME_POOL_TARGET".into(),
            pool_target.to_string(),
        ));
        if primes > 0 {
            let file = prime_fixture(node.dir.path(), index, primes);
            let output = node
                .command("dev-import-primes")
                .arg("--file")
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        node.start();
    }
    let parties: Vec<PartyId> = nodes.iter().map(|node| node.party).collect();
    let coordinator =
        Coordinator::start(coordinator_key, nodes.iter().map(TestNode::info).collect()).unwrap();
    let wallet = WalletId([wallet_byte; 16]);
    // The first run of a fresh cluster: every node dials every other at
    // once (simultaneous dials), under the faults.
    let started = Instant::now();
    let key = coordinator
        .create_wallet(RequestId([1; 16]), wallet, Curve::Secp256k1, &parties, 2)
        .await
        .unwrap_or_else(|error| panic!("DKG under faults: {error}\n{}", nodes[0].log()));
    eprintln!("DKG under `{faults}` took {:?}", started.elapsed());
    FaultyCluster {
        nodes,
        proxies,
        parties,
        coordinator,
        wallet,
        key,
    }
}

/// Taproot signatures of `count` distinct messages, `in_flight` at a time,
/// each with its own request id; every one verifies and none repeats.
async fn sign_many(
    cluster: &FaultyCluster,
    count: usize,
    in_flight: usize,
    first_request: u64,
) -> Duration {
    use futures::StreamExt;
    let mut slowest = Duration::ZERO;
    let results: Vec<(usize, Duration, Vec<u8>)> = futures::stream::iter(0..count)
        .map(|index| async move {
            let mut request = [0u8; 16];
            request[..8].copy_from_slice(&(first_request + index as u64).to_be_bytes());
            let message = message_of(first_request + index as u64);
            // Quorums rotate over the three nodes.
            let quorum: Vec<PartyId> = (0..3)
                .map(|offset| cluster.parties[(index + offset) % 3])
                .collect();
            let started = Instant::now();
            let signature = cluster
                .coordinator
                .sign(
                    RequestId(request),
                    cluster.wallet,
                    KeyGeneration(0),
                    Scheme::Taproot,
                    &quorum,
                    2,
                    message.to_vec(),
                    vec![],
                )
                .await
                .unwrap_or_else(|error| panic!("request {index} was lost: {error}"));
            (index, started.elapsed(), signature)
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    assert_eq!(results.len(), count, "every request answered");
    let mut seen = HashSet::new();
    for (index, took, signature) in results {
        verify_taproot(
            &cluster.key.public_key,
            &message_of(first_request + index as u64),
            &signature,
        );
        assert!(
            seen.insert(signature),
            "request {index}: a repeated signature"
        );
        slowest = slowest.max(took);
    }
    slowest
}

fn message_of(index: u64) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(index.to_be_bytes()).into()
}

fn sum_metric(nodes: &[TestNode], name: &str) -> f64 {
    nodes.iter().map(|node| node.metric(name)).sum()
}

/// A middlebox that resets a random node's connections (RST both ways)
/// every `pause` milliseconds (drawn from the range) until stopped.
struct Resets {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Resets {
    fn start(cluster: &FaultyCluster, pause: std::ops::Range<u32>) -> Resets {
        let stop = Arc::new(AtomicBool::new(false));
        let proxies: Vec<_> = cluster
            .proxies
            .iter()
            .map(|proxy| proxy.connections.clone())
            .collect();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut resets = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let span = pause.end - pause.start;
                    let wait =
                        pause.start + rand_core::RngCore::next_u32(&mut rand_core::OsRng) % span;
                    tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
                    let which = rand_core::RngCore::next_u32(&mut rand_core::OsRng) as usize
                        % proxies.len();
                    reset(&proxies[which]);
                    resets += 1;
                }
                resets
            })
        };
        Resets { stop, task }
    }

    /// Stops resetting; how many resets there were.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// Pauses `node`'s process (SIGSTOP: it keeps its connections and
/// answers nothing) and resumes it (SIGCONT) `pause` later; the task ends
/// when it resumed.
fn pause_for(node: &TestNode, pause: Duration) -> tokio::task::JoinHandle<()> {
    let pid = node
        .child
        .as_ref()
        .expect("a running node")
        .id()
        .to_string();
    let signal = move |which: &str| {
        assert!(
            Command::new("kill")
                .args([which, &pid])
                .status()
                .unwrap()
                .success(),
            "kill {which}"
        );
    };
    signal("-STOP");
    tokio::spawn(async move {
        tokio::time::sleep(pause).await;
        signal("-CONT");
    })
}

/// A soak's size: the number in `variable`, or `default`.
fn soak_size(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// No session of any node ran into its deadline.
fn assert_no_deadline_reached(nodes: &[TestNode]) {
    for node in nodes {
        let log = node.log();
        assert!(
            !log.contains("before its deadline"),
            "a session waited for its deadline:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_lost_after_their_acknowledgement_are_sent_again_and_every_run_finishes() {
    let cluster = faulty_cluster(Setup {
        faults: "drop_after_ack=0.15",
        wallet: 0xA1,
        ..Setup::default()
    })
    .await;
    let slowest = sign_many(&cluster, 40, 4, 1_000).await;
    let resent = sum_metric(&cluster.nodes, "custos_signer_frames_resent_total");
    let stalls = sum_metric(&cluster.nodes, "custos_signer_session_stalls_total");
    eprintln!("40 signings with 15 % of frames lost: slowest {slowest:?}, {stalls} stalls, {resent} frames sent again");
    assert!(
        resent > 0.0,
        "lost frames came back through resend requests"
    );
    // A lost frame costs about one stall window (1 s for FROST), never the
    // deadline (10 s) or the coordinator's timeout (20 s).
    assert!(slowest < Duration::from_secs(10), "slowest {slowest:?}");
    assert_no_deadline_reached(&cluster.nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_queue_of_one_frame_is_backpressure_not_loss() {
    let cluster = faulty_cluster(Setup {
        faults: "session_queue=1",
        wallet: 0xA2,
        ..Setup::default()
    })
    .await;
    let slowest = sign_many(&cluster, 40, 8, 2_000).await;
    let busy = sum_metric(&cluster.nodes, "custos_signer_frames_busy_total");
    eprintln!(
        "40 signings, 8 in flight, queues of one frame: slowest {slowest:?}, {busy} busy answers"
    );
    assert_no_deadline_reached(&cluster.nodes);
}

/// The soak: signatures while a middlebox resets node-to-node connections
/// every 50 to 300 ms. Nothing is lost (every request gets its
/// signature) and nothing is signed twice: 2,000 signatures by default
/// (about 30 s here). `CUSTOS_SOAK_SIGNATURES`
/// overrides the count (the closing note of issue 15 quotes a run of
/// 2,000).
#[tokio::test(flavor = "multi_thread")]
async fn connection_resets_in_the_middle_of_rounds_lose_no_request_and_repeat_none() {
    let count = soak_size("CUSTOS_SOAK_SIGNATURES", 2_000);
    let cluster = faulty_cluster(Setup {
        proxied: true,
        wallet: 0xA3,
        ..Setup::default()
    })
    .await;
    let resets = Resets::start(&cluster, 50..300);
    let started = Instant::now();
    let slowest = sign_many(&cluster, count, 8, 3_000).await;
    let resets = resets.stop().await;
    eprintln!(
        "{count} signatures under {resets} connection resets in {:.1} s: 0 lost, 0 repeated, slowest {slowest:?}",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{{\"bench\":\"frost_signatures_under_connection_resets\",\"signatures\":{count},\"resets\":{resets},\"seconds\":{:.2},\"lost\":0,\"duplicates\":0}}",
        started.elapsed().as_secs_f64()
    );
    assert!(resets > 0);
    assert_no_deadline_reached(&cluster.nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_delayed_past_a_round_still_complete_every_run() {
    let cluster = faulty_cluster(Setup {
        proxied: true,
        wallet: 0xA4,
        ..Setup::default()
    })
    .await;
    // Every chunk node-to-node waits 300 ms: a round's frames arrive after
    // the peers' next round began.
    for proxy in &cluster.proxies {
        proxy.set_delay(Duration::from_millis(300));
    }
    let slowest = sign_many(&cluster, 10, 4, 4_000).await;
    eprintln!("10 signings with 300 ms per hop: slowest {slowest:?}");
    assert_no_deadline_reached(&cluster.nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_paused_for_a_few_seconds_does_not_fail_its_runs() {
    let cluster = faulty_cluster(Setup {
        wallet: 0xA5,
        ..Setup::default()
    })
    .await;
    // FROST signing with the paused node in the quorum: the run waits for
    // it (its peer asks it for frames and it answers once it runs again).
    let message = message_of(5_000);
    let resume = pause_for(&cluster.nodes[1], Duration::from_secs(3));
    let started = Instant::now();
    let signature = cluster
        .coordinator
        .sign_from_attempt(
            RequestId([0x50; 16]),
            0,
            cluster.wallet,
            KeyGeneration(0),
            Scheme::Taproot,
            &[cluster.parties[1], cluster.parties[0]],
            2,
            message.to_vec(),
            vec![],
        )
        .await
        .expect("the run with the paused node finishes once it resumes");
    resume.await.unwrap();
    verify_taproot(&cluster.key.public_key, &message, &signature);
    eprintln!("signing across a 3 s pause took {:?}", started.elapsed());
    assert_eq!(
        cluster.nodes[0].metric("custos_signer_sessions_stopped_stalled_total"),
        0.0,
        "a pause of a few seconds is waited out, not given up"
    );

    // A DKG with a node paused for 3 s in the middle.
    let resume = pause_for(&cluster.nodes[1], Duration::from_secs(3));
    let key = cluster
        .coordinator
        .create_wallet(
            RequestId([0x51; 16]),
            WalletId([0xB5; 16]),
            Curve::Ed25519,
            &cluster.parties,
            2,
        )
        .await
        .expect("the DKG finishes once the node resumes");
    resume.await.unwrap();
    assert_eq!(key.public_key.len(), 32);
    assert_no_deadline_reached(&cluster.nodes);
}

/// A node that stays away (killed mid-run) is given up within the stall
/// window, not at the deadline: its peer learns the session is unknown
/// there, stops, and the coordinator signs with another quorum.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_goes_away_is_given_up_within_seconds_and_another_quorum_signs() {
    let mut cluster = faulty_cluster(Setup {
        wallet: 0xA6,
        ..Setup::default()
    })
    .await;
    cluster.nodes[2].kill();
    let message = message_of(6_000);
    let started = Instant::now();
    let signature = cluster
        .coordinator
        .sign(
            RequestId([0x60; 16]),
            cluster.wallet,
            KeyGeneration(0),
            Scheme::Taproot,
            &[cluster.parties[2], cluster.parties[0], cluster.parties[1]],
            2,
            message.to_vec(),
            vec![],
        )
        .await
        .expect("another quorum signs");
    let took = started.elapsed();
    verify_taproot(&cluster.key.public_key, &message, &signature);
    eprintln!("signing with a dead quorum member, then another quorum: {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// An ECDSA signature of `digest` by `quorum` (CGGMP21 full signing, the
/// coordinator's quorum fallback off: the first two members must finish),
/// checked with k256 alone: it verifies under the wallet's key and is
/// low-s.
async fn sign_ecdsa(cluster: &FaultyCluster, request: u8, quorum: [usize; 2], digest: [u8; 32]) {
    use k256::ecdsa::signature::hazmat::PrehashVerifier;
    let quorum: Vec<PartyId> = quorum
        .iter()
        .map(|&member| cluster.parties[member])
        .collect();
    let started = Instant::now();
    let rsv = cluster
        .coordinator
        .sign_from_attempt(
            RequestId([request; 16]),
            0,
            cluster.wallet,
            KeyGeneration(0),
            Scheme::Ecdsa,
            &quorum,
            2,
            digest.to_vec(),
            vec![],
        )
        .await
        .unwrap_or_else(|error| {
            panic!(
                "ECDSA signing {request:#x}: {error}\n{}",
                cluster.nodes[0].log()
            )
        });
    let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&cluster.key.public_key).unwrap();
    let signature = k256::ecdsa::Signature::from_slice(&rsv[..64]).unwrap();
    key.verify_prehash(&digest, &signature)
        .expect("k256 verifies the ECDSA signature");
    assert!(signature.normalize_s().is_none(), "low-s");
    eprintln!("ECDSA signing {request:#x} took {:?}", started.elapsed());
}

/// One aux-info run among the three nodes, not tried again by the
/// coordinator: the run itself must finish.
async fn aux_info_once(cluster: &FaultyCluster, request: u8) -> Duration {
    let started = Instant::now();
    cluster
        .coordinator
        .aux_info_run(RequestId([request; 16]), 0, &cluster.parties)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "aux-info run {request:#x}: {error}\n{}",
                cluster.nodes[0].log()
            )
        });
    started.elapsed()
}

fn assert_no_run_stopped(nodes: &[TestNode]) {
    assert_eq!(
        sum_metric(nodes, "custos_signer_sessions_stopped_stalled_total"),
        0.0,
        "no run had to be given up"
    );
}

/// Aux info and CGGMP21 signing with 15 % of frames lost after their
/// acknowledgement: the watchdog asks for them again and every run
/// finishes in its first run, none at its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn aux_info_and_ecdsa_signing_finish_when_frames_are_lost() {
    let cluster = faulty_cluster(Setup {
        faults: "drop_after_ack=0.15",
        wallet: 0xA7,
        primes: 1,
        ..Setup::default()
    })
    .await;
    let took = aux_info_once(&cluster, 0x70).await;
    eprintln!("aux info with 15 % of frames lost took {took:?}");
    for (index, quorum) in [[0, 1], [1, 2], [2, 0]].into_iter().enumerate() {
        sign_ecdsa(
            &cluster,
            0x71 + index as u8,
            quorum,
            [0xE0 + index as u8; 32],
        )
        .await;
    }
    let resent = sum_metric(&cluster.nodes, "custos_signer_frames_resent_total");
    eprintln!("{resent} frames sent again");
    assert!(
        resent > 0.0,
        "lost frames came back through resend requests"
    );
    assert_no_run_stopped(&cluster.nodes);
    assert_no_deadline_reached(&cluster.nodes);
}

/// Aux info while a middlebox resets connections every 0.2 to 1 s (the
/// first run of the cluster, so simultaneous dials too), then CGGMP21
/// signing with a quorum member paused for 3 s, and under resets.
#[tokio::test(flavor = "multi_thread")]
async fn aux_info_and_ecdsa_signing_finish_across_resets_and_a_paused_node() {
    let cluster = faulty_cluster(Setup {
        proxied: true,
        wallet: 0xA8,
        primes: 1,
        ..Setup::default()
    })
    .await;
    let resets = Resets::start(&cluster, 200..1_000);
    let took = aux_info_once(&cluster, 0x80).await;
    let count = resets.stop().await;
    eprintln!("aux info under {count} connection resets took {took:?}");

    let resume = pause_for(&cluster.nodes[1], Duration::from_secs(3));
    sign_ecdsa(&cluster, 0x81, [1, 0], [0xE8; 32]).await;
    resume.await.unwrap();

    let resets = Resets::start(&cluster, 100..400);
    for (index, quorum) in [[0, 2], [2, 1]].into_iter().enumerate() {
        sign_ecdsa(
            &cluster,
            0x82 + index as u8,
            quorum,
            [0xE9 + index as u8; 32],
        )
        .await;
    }
    let count = resets.stop().await;
    eprintln!("two ECDSA signatures under {count} connection resets");
    assert_no_run_stopped(&cluster.nodes);
    assert_no_deadline_reached(&cluster.nodes);
}

/// The aux-info soak: consecutive aux-info runs among three node
/// processes, each from its nodes' pooled fixture primes, while every
/// node's pool filler generates primes beside them (its target stays one
/// above what is pooled, so it never rests). Every run finishes in its
/// first run: none stalls, none is given up, none waits for its
/// deadline. 50 runs is the soak (30 to 70 s a run here, so not
/// CI's default: `CUSTOS_SOAK_AUX_RUNS=50`; the closing note of issue 15
/// quotes such a run); CI runs 3.
#[tokio::test(flavor = "multi_thread")]
async fn consecutive_aux_info_runs_beside_prime_generation_never_stall() {
    let runs = soak_size("CUSTOS_SOAK_AUX_RUNS", 3);
    let cluster = faulty_cluster(Setup {
        wallet: 0xA9,
        primes: runs,
        pool_target: runs + 1,
        ..Setup::default()
    })
    .await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for run in 0..runs {
        let took = aux_info_once(&cluster, 0x90u8.wrapping_add(run as u8)).await;
        eprintln!("aux-info run {}/{runs}: {took:?}", run + 1);
        slowest = slowest.max(took);
    }
    let seconds = started.elapsed().as_secs_f64();
    let windows = sum_metric(&cluster.nodes, "custos_signer_session_stalls_total") as u64;
    let stopped = sum_metric(
        &cluster.nodes,
        "custos_signer_sessions_stopped_stalled_total",
    ) as u64;
    eprintln!(
        "{runs} aux-info runs in {seconds:.1} s, slowest {slowest:?}: {stopped} given up, {windows} waits past the stall window"
    );
    println!(
        "{{\"bench\":\"aux_info_soak\",\"runs\":{runs},\"seconds\":{seconds:.1},\"slowest_seconds\":{:.1},\"stopped\":{stopped},\"stall_windows\":{windows}}}",
        slowest.as_secs_f64()
    );
    assert_no_run_stopped(&cluster.nodes);
    assert_no_deadline_reached(&cluster.nodes);
}
