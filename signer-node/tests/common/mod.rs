//! Helpers for tests that run `custos-signer` processes on loopback: node
//! folders and configs, SoftHSM2 tokens, clusters with a coordinator, plain
//! HTTP to the operator endpoint, and an independent Taproot output key.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_protocol::{KeyGeneration, PartyId, RequestId, WalletId};
use custos_signer_node::coordinator::{Coordinator, CoordinatorError, NodeInfo, WalletKey};
use custos_signer_node::job::{Curve, JobBody, JobOutput, Scheme};
use custos_signer_node::master_key::{MasterKey, MasterKeyConfig};
use custos_signer_node::store::ShareStore;
use ed25519_dalek::SigningKey;

/// A port for a node to listen on later. Ports come from 10000-29999
/// (below Linux's ephemeral range, 32768-60999): a port the kernel handed
/// out for `bind(0)` is released at once, and the next `bind(0)` of a test
/// running beside (its proxies, its outgoing connections) could be given
/// it before the node binds it ("Address already in use"). Each test
/// process walks its own stretch of the range, starting from its pid.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97) % 20_000;
    loop {
        let port = 10_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 20_000;
        let port = u16::try_from(port).expect("below 30000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Where a test node's master key lives.
#[derive(Clone, Copy, PartialEq)]
pub enum MasterKeyBackend {
    File,
    /// A SoftHSM2 token of the node's own (token folder in its temp dir).
    SoftHsm,
}

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// One node process and its folder.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub backend: MasterKeyBackend,
    pub party: PartyId,
    pub p2p_port: u16,
    pub http: SocketAddr,
    pub child: Option<Child>,
    /// Extra environment of the process (`CUSTOS_SIGNER_FAULTS`).
    pub env: Vec<(String, String)>,
}

impl TestNode {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }

    pub fn write_config(&self, coordinator: PartyId, peers: &[(PartyId, u16)]) {
        let mut text = format!(
            "data_dir = \"{data}\"\nlisten = \"/ip4/127.0.0.1/tcp/{p2p}\"\nhttp_listen = \"{http}\"\n\
             coordinator = \"{coordinator}\"\nprime_pool_target = 0\n\n{master_key}",
            data = self.dir.path().join("data").display(),
            p2p = self.p2p_port,
            http = self.http,
            coordinator = hex::encode(coordinator.0),
            master_key = match self.backend {
                MasterKeyBackend::File => format!(
                    "[master_key]\nbackend = \"file\"\npath = \"{}/master.key\"\n",
                    self.dir.path().join("data").display()
                ),
                // The PIN comes from CUSTOS_SIGNER_PKCS11_PIN (see command()).
                MasterKeyBackend::SoftHsm => format!(
                    "[master_key]\nbackend = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\n\
                     token_label = \"custos-node\"\npin = \"\"\nkey_label = \"custos-master\"\n"
                ),
            },
        );
        for (party, port) in peers {
            text.push_str(&format!(
                "\n[[peers]]\nid = \"{}\"\naddress = \"/ip4/127.0.0.1/tcp/{port}\"\n",
                hex::encode(party.0)
            ));
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_custos-signer"));
        command
            .arg("--config")
            .arg(self.config_path())
            .arg(subcommand)
            .env("RUST_LOG", "info,libp2p=warn")
            .envs(
                self.env
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            );
        if self.backend == MasterKeyBackend::SoftHsm {
            command
                .env("SOFTHSM2_CONF", self.softhsm_conf())
                .env("CUSTOS_SIGNER_PKCS11_PIN", "4711");
        }
        command
    }

    pub fn softhsm_conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// Creates the node's own SoftHSM2 token.
    pub fn init_token(&self) {
        let tokens = self.dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        std::fs::write(
            self.softhsm_conf(),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let status = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                "custos-node",
                "--pin",
                "4711",
                "--so-pin",
                "5678",
            ])
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .stdout(Stdio::null())
            .status()
            .expect("softhsm2-util runs (install the Debian package softhsm2)");
        assert!(status.success());
    }

    /// `custos-signer init`: returns the node with its new party id.
    pub fn init(coordinator: PartyId, backend: MasterKeyBackend) -> TestNode {
        let mut node = TestNode {
            dir: tempfile::tempdir().unwrap(),
            backend,
            party: PartyId([0; 32]),
            p2p_port: free_port(),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            child: None,
            env: Vec::new(),
        };
        if backend == MasterKeyBackend::SoftHsm {
            node.init_token();
        }
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

    pub fn start(&mut self) {
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
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            party: self.party,
            address: format!("/ip4/127.0.0.1/tcp/{}", self.p2p_port)
                .parse()
                .unwrap(),
        }
    }

    /// The node's data folder (identity, master key file, share store).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Opens the node's share store with its master key, as the node does.
    /// The node must be stopped: a running node holds the store's lock.
    pub fn open_store(&self) -> ShareStore {
        assert!(
            self.child.is_none(),
            "stop the node before opening its store"
        );
        assert!(
            self.backend == MasterKeyBackend::File,
            "tests open stores with a file master key"
        );
        let master = MasterKey::open(&MasterKeyConfig::File {
            path: self.data_dir().join("master.key"),
        })
        .unwrap();
        ShareStore::open(&self.data_dir().join("store"), Arc::new(master), self.party).unwrap()
    }

    pub fn metric(&self, line_prefix: &str) -> f64 {
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
pub fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
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
pub fn cluster(n: usize) -> (Vec<TestNode>, SigningKey) {
    cluster_on(n, MasterKeyBackend::File)
}

pub fn cluster_on(n: usize, backend: MasterKeyBackend) -> (Vec<TestNode>, SigningKey) {
    cluster_with_extra_peers(n, backend, &[])
}

/// Like [`cluster_on`], with `extra` parties allow-listed on every node (a
/// test acting as a peer node).
pub fn cluster_with_extra_peers(
    n: usize,
    backend: MasterKeyBackend,
    extra: &[PartyId],
) -> (Vec<TestNode>, SigningKey) {
    let coordinator_key = SigningKey::generate(&mut rand_core::OsRng);
    let coordinator = PartyId(coordinator_key.verifying_key().to_bytes());
    let mut nodes: Vec<TestNode> = (0..n)
        .map(|_| TestNode::init(coordinator, backend))
        .collect();
    let mut addresses: Vec<(PartyId, u16)> = nodes
        .iter()
        .map(|node| (node.party, node.p2p_port))
        .collect();
    // Extra peers dial in; the port only fills the required address.
    addresses.extend(extra.iter().map(|party| (*party, 1)));
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
pub struct Cluster {
    pub nodes: Vec<TestNode>,
    pub parties: Vec<PartyId>,
    pub coordinator_key: SigningKey,
    pub coordinator: Coordinator,
    pub wallet: WalletId,
    pub key: WalletKey,
}

pub async fn cluster_with_wallet(n: usize, wallet_byte: u8) -> Cluster {
    cluster_with_wallet_on(n, wallet_byte, MasterKeyBackend::File).await
}

pub async fn cluster_with_wallet_on(
    n: usize,
    wallet_byte: u8,
    backend: MasterKeyBackend,
) -> Cluster {
    let (nodes, coordinator_key) = cluster_on(n, backend);
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
pub fn taproot_output_key(public_key: &[u8]) -> [u8; 32] {
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

pub fn verify_taproot(public_key: &[u8], message: &[u8; 32], signature: &[u8]) {
    k256::schnorr::VerifyingKey::from_bytes(&taproot_output_key(public_key))
        .unwrap()
        .verify_raw(
            message,
            &k256::schnorr::Signature::try_from(signature).unwrap(),
        )
        .expect("k256 verifies the BIP-340 signature from the nodes");
}

pub fn signature_of(output: Result<JobOutput, CoordinatorError>) -> Vec<u8> {
    match output.expect("signing succeeds") {
        JobOutput::Signature { signature } => signature,
        other => panic!("expected a signature, got {other:?}"),
    }
}

pub async fn sign_with(
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

/// Rewrites `node`'s `[backup]` section (the rest of its configuration
/// stays).
pub fn set_backup_config(node: &TestNode, section: &str) {
    let text = std::fs::read_to_string(node.config_path()).unwrap();
    let base = text.split("\n[backup]\n").next().unwrap().to_string();
    std::fs::write(node.config_path(), format!("{base}\n[backup]\n{section}")).unwrap();
}

/// The generations of `wallet` a node holds, from its `/status`.
pub fn generations_on(node: &TestNode, wallet: WalletId) -> Vec<u32> {
    let (_, body) = http_get(node.http, "/status").expect("status answers");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["wallets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry[0] == hex::encode(wallet.0))
        .map(|entry| {
            entry[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|generation| generation.as_u64().unwrap() as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Every file under `dir`, recursively, with its bytes.
pub fn files_with_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_with_bytes(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            files.push((path, bytes));
        }
    }
    files
}

/// The plaintext of every record in every namespace of an opened store
/// whose folder is `store_root`, named `records/<namespace>`.
pub fn record_plaintexts(store: &ShareStore, store_root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut plaintexts = Vec::new();
    for entry in std::fs::read_dir(store_root.join("records")).unwrap() {
        let namespace = entry.unwrap().file_name().into_string().unwrap();
        store
            .update_records(&namespace, |value| {
                plaintexts.push((format!("record in {namespace}"), value.to_vec()));
                None
            })
            .unwrap();
    }
    plaintexts
}

/// Windows of secrets are looked for at this length: a copy of any part
/// of a secret this long is a leak.
pub const LEAK_WINDOW: usize = 16;

/// The byte strings inside a CBOR value, as serde writes bytes: CBOR byte
/// strings, and arrays of small integers (how a `Vec<u8>` comes out), whose
/// bytes are not next to each other in the encoding.
fn cbor_byte_strings(value: &ciborium::Value, found: &mut Vec<Vec<u8>>) {
    match value {
        ciborium::Value::Bytes(bytes) => found.push(bytes.clone()),
        ciborium::Value::Text(text) => found.push(text.as_bytes().to_vec()),
        ciborium::Value::Array(items) => {
            let bytes: Option<Vec<u8>> = items
                .iter()
                .map(|item| item.as_integer().and_then(|i| u8::try_from(i).ok()))
                .collect();
            if let Some(bytes) = bytes.filter(|bytes| !bytes.is_empty()) {
                found.push(bytes);
            }
            items.iter().for_each(|item| cbor_byte_strings(item, found));
        }
        ciborium::Value::Map(entries) => entries.iter().for_each(|(key, item)| {
            cbor_byte_strings(key, found);
            cbor_byte_strings(item, found);
        }),
        ciborium::Value::Tag(_, item) => cbor_byte_strings(item, found),
        _ => {}
    }
}

/// Panics if any of `places` (a name and its bytes) holds a `LEAK_WINDOW`
/// byte window of one of `secrets`, or the lowercase hex of one: in its
/// bytes as they are, or, where they decode as CBOR (records, shares), in
/// any byte string or byte array inside.
pub fn assert_kept_nowhere(places: &[(String, Vec<u8>)], secrets: &[(&str, Vec<u8>)]) {
    let mut views: Vec<(String, Vec<u8>)> = places.to_vec();
    for (place, bytes) in places {
        if let Ok(value) = ciborium::from_reader::<ciborium::Value, _>(bytes.as_slice()) {
            let mut found = Vec::new();
            cbor_byte_strings(&value, &mut found);
            views.extend(
                found
                    .into_iter()
                    .map(|inner| (format!("{place}, decoded as CBOR"), inner)),
            );
        }
    }
    for (what, secret) in secrets {
        assert!(
            secret.len() >= LEAK_WINDOW,
            "{what} is too short to look for"
        );
        let windows: HashSet<&[u8]> = secret.windows(LEAK_WINDOW).collect();
        let hex_secret = hex::encode(secret);
        let hex_windows: HashSet<&[u8]> = hex_secret.as_bytes().windows(2 * LEAK_WINDOW).collect();
        for (place, bytes) in &views {
            let found = bytes.windows(LEAK_WINDOW).position(|w| windows.contains(w));
            assert_eq!(
                found, None,
                "{place} holds bytes of {what} at offset {found:?}"
            );
            let found = bytes
                .windows(2 * LEAK_WINDOW)
                .position(|w| hex_windows.contains(w));
            assert_eq!(
                found, None,
                "{place} holds {what} in hex at offset {found:?}"
            );
        }
    }
}

/// Every place of a stopped node where a secret could stay: every file of
/// its folder (data folder, configuration, log), raw; and, decrypted with
/// its master key, every record of its store and every share it still
/// holds of `wallets`.
pub fn node_contents(node: &TestNode, wallets: &[WalletId]) -> Vec<(String, Vec<u8>)> {
    let mut places: Vec<(String, Vec<u8>)> = files_with_bytes(node.dir.path())
        .into_iter()
        .map(|(path, bytes)| (path.display().to_string(), bytes))
        .collect();
    let store = node.open_store();
    places.extend(record_plaintexts(&store, &node.data_dir().join("store")));
    for wallet in wallets {
        for generation in store.generations(*wallet).unwrap() {
            let share = store
                .share::<custos_protocol::Secp256k1>(*wallet, generation)
                .unwrap()
                .unwrap();
            places.push((
                format!("share of generation {} (decrypted)", generation.0),
                share.to_bytes().unwrap().to_vec(),
            ));
        }
    }
    places
}

/// The secret scalar of a secp256k1 share, big-endian: found in the
/// share's serialisation and checked against the holder's public share,
/// so a test that looks for it looks for the real thing.
pub fn secret_scalar(
    share: &custos_protocol::share::KeyShare<custos_protocol::Secp256k1>,
) -> [u8; 32] {
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    fn candidates(value: &ciborium::Value, found: &mut Vec<[u8; 32]>) {
        match value {
            ciborium::Value::Bytes(bytes) => {
                if let Ok(candidate) = <[u8; 32]>::try_from(bytes.as_slice()) {
                    found.push(candidate);
                }
            }
            ciborium::Value::Array(items) => {
                let bytes: Option<Vec<u8>> = items
                    .iter()
                    .map(|item| item.as_integer().and_then(|i| u8::try_from(i).ok()))
                    .collect();
                if let Some(candidate) = bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                    found.push(candidate);
                }
                items.iter().for_each(|item| candidates(item, found));
            }
            ciborium::Value::Map(entries) => entries.iter().for_each(|(key, item)| {
                candidates(key, found);
                candidates(item, found);
            }),
            ciborium::Value::Tag(_, item) => candidates(item, found),
            _ => {}
        }
    }
    let bytes = share.to_bytes().unwrap();
    let value: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
    let mut found = Vec::new();
    candidates(&value, &mut found);
    let public_share = share.public_shares()[usize::from(share.index())]
        .to_bytes(true)
        .to_vec();
    let matching: Vec<[u8; 32]> = found
        .into_iter()
        .filter(|candidate| {
            k256::SecretKey::from_slice(candidate).is_ok_and(|secret| {
                secret.public_key().to_encoded_point(true).as_bytes() == public_share.as_slice()
            })
        })
        .collect();
    assert_eq!(matching.len(), 1, "the share's secret scalar is found once");
    matching[0]
}
