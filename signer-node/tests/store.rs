//! The share store and the node master key, with both master-key backends:
//! a key file, and a non-extractable AES key in a real SoftHSM2 token.
//!
//! Every behaviour that depends on the master key runs twice, as
//! `<behaviour>::file` and `<behaviour>::pkcs11`. The PKCS#11 tests share one
//! SoftHSM2 token directory per test binary (PKCS#11 is initialised once per
//! process and reads `SOFTHSM2_CONF` then); each test uses its own key label.
//!
//! Key shares come from real DKG runs of the protocol crate over its
//! in-memory network; aux info and primes from its committed fixtures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use custos_protocol::ecdsa::SignRun;
use custos_protocol::keygen::{self, KeygenRun};
use custos_protocol::primes::{PrimePool, Primes};
use custos_protocol::schnorr;
use custos_protocol::seal::SealingKey;
use custos_protocol::share::{AuxInfo, KeyCurve, KeyShare};
use custos_protocol::sim::{self, Faults};
use custos_protocol::{
    driver, Committee, Ed25519, KeyGeneration, PartyId, ProtocolKind, Quorum, RequestId, Secp256k1,
    WalletId,
};
use custos_signer_node::decoded::Decoded;
use custos_signer_node::master_key::{MasterKey, MasterKeyConfig, MasterKeyError, Pin};
use custos_signer_node::store::{ShareStore, StoreError, StoredWallet};

// ---- fixtures ------------------------------------------------------------

const DEADLINE: Duration = Duration::from_secs(30);
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "custos-test";
const TOKEN_PIN: &str = "1234";
/// A second token that only the wrong-PIN test logs in to: PKCS#11 login
/// state is shared by every session of a process, so a wrong PIN on the
/// first token would meet an already logged-in token.
const PIN_TEST_TOKEN: &str = "custos-pin-test";

fn party(index: u16) -> PartyId {
    sim::test_party(index)
}

fn committee(parties: &[u16]) -> Committee {
    Committee::new(parties.iter().map(|&index| party(index))).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A DKG among test parties `0..n`; shares by keygen index.
fn keygen<E: KeyCurve>(wallet: WalletId, n: u16, threshold: u16) -> Vec<KeyShare<E>>
where
    keygen::KeygenMsg<E>: Send,
{
    let committee = committee(&(0..n).collect::<Vec<_>>());
    runtime().block_on(async {
        let (outputs, _) = sim::run_parties(n, Faults::none(), 0, |index, endpoint| {
            let run = KeygenRun {
                wallet,
                request: RequestId([1; 16]),
                committee: committee.clone(),
                threshold,
                me: committee.member(index).unwrap(),
                attempt: 0,
            };
            async move {
                let session = run.session::<E>(DEADLINE)?;
                let mut rng = rand_core::OsRng;
                driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                    keygen::keygen::<E, _, _>(&run, party, &mut rng)
                })
                .await
                .0
            }
        })
        .await;
        outputs.into_iter().map(Result::unwrap).collect()
    })
}

/// FROST BIP-340 signing of `message` by `shares` (one per signer, any
/// holders); every signer must output the same signature.
fn sign_taproot(shares: &[KeyShare<Secp256k1>], message: [u8; 32]) -> [u8; 64] {
    let first = &shares[0];
    let quorum = Quorum::new(
        &first.committee,
        first.threshold(),
        shares.iter().map(|share| share.holder().unwrap()),
    )
    .unwrap();
    // The protocol's signer order is the quorum order, not the input order.
    let mut ordered = shares.to_vec();
    ordered.sort_by_key(|share| share.index());
    let signatures = runtime().block_on(async {
        let (outputs, _) = sim::run_parties(
            ordered.len() as u16,
            Faults::none(),
            0,
            |signer, endpoint| {
                let share = ordered[usize::from(signer)].clone();
                let run = SignRun {
                    wallet: share.wallet,
                    request: RequestId([3; 16]),
                    generation: share.generation,
                    quorum: quorum.clone(),
                    me: share.holder().unwrap(),
                    attempt: 0,
                };
                async move {
                    let session = run.session(ProtocolKind::SignTaproot, DEADLINE)?;
                    let mut rng = rand_core::OsRng;
                    driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                        schnorr::sign_taproot(&share, &run, &message, &[], party, &mut rng)
                    })
                    .await
                    .0
                }
            },
        )
        .await;
        outputs.into_iter().map(Result::unwrap).collect::<Vec<_>>()
    });
    assert!(signatures.windows(2).all(|pair| pair[0] == pair[1]));
    signatures[0]
}

/// Verifies with k256 (not the library that signed) under the Taproot key.
fn verify_taproot(share: &KeyShare<Secp256k1>, message: &[u8; 32], signature: &[u8; 64]) {
    let output_key = schnorr::taproot_output_key(&share.public_info(), &[]).unwrap();
    let key = k256::schnorr::VerifyingKey::from_bytes(&output_key).unwrap();
    let signature = k256::schnorr::Signature::try_from(signature.as_slice()).unwrap();
    key.verify_raw(message, &signature)
        .expect("k256 verifies the signature of the restored shares");
}

fn testdata(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/testdata")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("fixture {}: {error}", path.display()))
}

/// Aux info of the committee of test parties `0..n`, by index.
fn aux_info(n: u16) -> Vec<AuxInfo> {
    serde_json::from_slice(&testdata(&format!("aux-info-n{n}.json"))).unwrap()
}

fn prime_pool() -> PrimePool {
    let primes: Vec<Primes> = serde_json::from_slice(&testdata("primes.json")).unwrap();
    PrimePool::from_primes(primes.into_iter().take(2))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Temporary files of the store's atomic writes (`.<name>.<random>.tmp`).
fn temp_files_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.starts_with('.') && name.ends_with(".tmp")
        })
        .collect()
}

// ---- master key backends -------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Backend {
    File,
    Pkcs11,
}

/// The SoftHSM2 token directory of this test binary, created and
/// initialised (two tokens) before the first PKCS#11 call of the process.
fn softhsm() -> &'static Path {
    static TOKENS: OnceLock<PathBuf> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let install = "install the Debian package softhsm2 (scripts/test installs it)";
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "the SoftHSM2 PKCS#11 module {SOFTHSM_MODULE} is missing: {install}"
        );
        // Under the target directory, not /tmp: the static is never dropped,
        // so the directory outlives the test run; `cargo clean` removes it.
        let dir = tempfile::Builder::new()
            .prefix("softhsm-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                concat!(
                    "directories.tokendir = {}\n",
                    "objectstore.backend = file\n",
                    "log.level = ERROR\n",
                    "slots.removable = false\n",
                ),
                tokens.display()
            ),
        )
        .unwrap();
        // Set before any PKCS#11 call: SoftHSM2 reads it in C_Initialize, and
        // every other test waits on this OnceLock before touching the module.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in [TOKEN, PIN_TEST_TOKEN] {
            let output = std::process::Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label])
                .args(["--pin", TOKEN_PIN, "--so-pin", "5678"])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .unwrap_or_else(|error| panic!("cannot run softhsm2-util ({error}): {install}"));
            assert!(
                output.status.success(),
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        dir
    })
}

fn pkcs11_config(token_label: &str, pin: &str, key_label: &str) -> MasterKeyConfig {
    softhsm();
    MasterKeyConfig::Pkcs11 {
        module: PathBuf::from(SOFTHSM_MODULE),
        token_label: token_label.to_owned(),
        pin: Pin::new(pin),
        key_label: key_label.to_owned(),
    }
}

/// A master key configuration unique to `name` (a file in `dir`, or a key
/// label in the shared token).
fn master_config(backend: Backend, dir: &Path, name: &str) -> MasterKeyConfig {
    match backend {
        Backend::File => MasterKeyConfig::File {
            path: dir.join(format!("{name}.key")),
        },
        Backend::Pkcs11 => pkcs11_config(TOKEN, TOKEN_PIN, name),
    }
}

/// Generates `backend::file` and `backend::pkcs11` tests of one behaviour.
macro_rules! with_both_backends {
    ($($behaviour:ident => $check:ident;)*) => {$(
        mod $behaviour {
            #[test]
            fn file() {
                super::$check(super::Backend::File, stringify!($behaviour));
            }
            #[test]
            fn pkcs11() {
                super::$check(super::Backend::Pkcs11, stringify!($behaviour));
            }
        }
    )*};
}

with_both_backends! {
    store_round_trips_share_aux_primes_and_records_across_a_restart => check_round_trip_across_restart;
    plaintext_secrets_never_appear_in_any_file_under_the_root => check_no_plaintext_on_disk;
    flipped_byte_in_any_blob_is_an_error_never_a_value => check_flipped_bytes;
    blob_moved_to_another_name_does_not_open => check_moved_blobs;
    store_opened_with_another_master_key_refuses_every_blob => check_other_master_key;
    stale_temp_file_is_ignored_and_cleaned_on_open => check_stale_temp_file;
    completed_put_replaces_the_value_atomically => check_atomic_replace;
    master_key_wraps_and_unwraps_only_under_the_same_context => check_wrap_contexts;
}

// ---- behaviours ----------------------------------------------------------

const WALLET_A: WalletId = WalletId([0xA1; 16]);
const WALLET_B: WalletId = WalletId([0xB2; 16]);

/// The same share as a later generation (what a refresh would store): the
/// store only cares that it is a valid share with another generation.
fn as_generation<E: KeyCurve>(share: &KeyShare<E>, generation: u32) -> KeyShare<E> {
    let mut later = share.clone();
    later.generation = KeyGeneration(generation);
    later
}

fn check_round_trip_across_restart(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let secp = keygen::<Secp256k1>(WALLET_A, 3, 2);
    let ed = keygen::<Ed25519>(WALLET_B, 3, 2);
    let aux = aux_info(3);
    let pool = prime_pool();
    // Two nodes (parties 0 and 1), each with its own root and master key, so
    // that the restored shares can sign together afterwards.
    let nodes: [u16; 2] = [0, 1];
    let configs: Vec<MasterKeyConfig> = nodes
        .iter()
        .map(|node| master_config(backend, dir.path(), &format!("{name}-node{node}")))
        .collect();
    let roots: Vec<PathBuf> = nodes
        .iter()
        .map(|node| dir.path().join(format!("store-{node}")))
        .collect();

    for (position, &node) in nodes.iter().enumerate() {
        let master = Arc::new(MasterKey::create(&configs[position]).unwrap());
        let store = ShareStore::open(&roots[position], master, party(node)).unwrap();
        let index = usize::from(node);
        // Empty store: nothing there, and an empty prime pool.
        assert!(store
            .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
            .unwrap()
            .is_none());
        assert!(store.aux(&aux[index].committee).unwrap().is_none());
        assert!(store.prime_pool().unwrap().is_empty());
        assert!(store.record("jobs", b"job-1").unwrap().is_none());
        assert_eq!(store.records("jobs").unwrap(), 0);
        assert!(store.wallets().unwrap().is_empty());

        store.put_share(&secp[index]).unwrap();
        store.put_share(&as_generation(&secp[index], 1)).unwrap();
        store.put_share(&ed[index]).unwrap();
        store.put_aux(&aux[index]).unwrap();
        store.put_prime_pool(&pool).unwrap();
        store
            .put_record("jobs", b"job-1", b"result of job one")
            .unwrap();
        store
            .put_record("jobs", b"job-2", b"result of job two")
            .unwrap();
        store.put_record("replay", b"job-1", b"seen").unwrap();
    }

    // Restart: every store and master key is dropped and opened again from
    // the configuration alone.
    let mut restored = Vec::new();
    for (position, &node) in nodes.iter().enumerate() {
        let master = Arc::new(MasterKey::open(&configs[position]).unwrap());
        let store = ShareStore::open(&roots[position], master, party(node)).unwrap();
        let index = usize::from(node);

        let share = store
            .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
            .unwrap()
            .expect("share of generation 0 survives the restart");
        assert_eq!(*share.to_bytes().unwrap(), *secp[index].to_bytes().unwrap());
        assert_eq!(share.holder(), Some(party(node)));
        let later = store
            .share::<Secp256k1>(WALLET_A, KeyGeneration(1))
            .unwrap()
            .unwrap();
        assert_eq!(later.generation, KeyGeneration(1));
        let ed_share = store
            .share::<Ed25519>(WALLET_B, KeyGeneration(0))
            .unwrap()
            .unwrap();
        assert_eq!(
            *ed_share.to_bytes().unwrap(),
            *ed[index].to_bytes().unwrap()
        );
        // Asking for the wrong curve is an error that names both curves.
        let wrong_curve = store
            .share::<Ed25519>(WALLET_A, KeyGeneration(0))
            .unwrap_err();
        assert!(
            matches!(wrong_curve, StoreError::WrongCurve { .. }),
            "{wrong_curve}"
        );

        assert_eq!(
            store.generations(WALLET_A).unwrap(),
            vec![KeyGeneration(0), KeyGeneration(1)]
        );
        assert_eq!(
            store.wallets().unwrap(),
            vec![
                StoredWallet {
                    wallet: WALLET_A,
                    curve: "secp256k1",
                    generations: vec![KeyGeneration(0), KeyGeneration(1)],
                },
                StoredWallet {
                    wallet: WALLET_B,
                    curve: "ed25519",
                    generations: vec![KeyGeneration(0)],
                },
            ]
        );

        let stored_aux = store.aux(&aux[index].committee).unwrap().unwrap();
        assert_eq!(
            *stored_aux.to_bytes().unwrap(),
            *aux[index].to_bytes().unwrap()
        );
        assert!(store.aux(&committee(&[0, 1, 3])).unwrap().is_none());
        let stored_pool = store.prime_pool().unwrap();
        assert_eq!(stored_pool.len(), pool.len());
        assert_eq!(*stored_pool.to_bytes().unwrap(), *pool.to_bytes().unwrap());

        assert_eq!(
            store.record("jobs", b"job-1").unwrap().unwrap().as_slice(),
            b"result of job one"
        );
        assert_eq!(
            store.record("jobs", b"job-2").unwrap().unwrap().as_slice(),
            b"result of job two"
        );
        assert_eq!(
            store
                .record("replay", b"job-1")
                .unwrap()
                .unwrap()
                .as_slice(),
            b"seen"
        );
        assert_eq!(store.records("jobs").unwrap(), 2);
        assert_eq!(store.records("replay").unwrap(), 1);
        restored.push(share);
    }

    // The restored shares are not just equal bytes: they still sign, and an
    // independent verifier accepts the signature under the wallet's key.
    let message = [0x42; 32];
    let signature = sign_taproot(&restored, message);
    verify_taproot(&secp[0], &message, &signature);
}

fn check_no_plaintext_on_disk(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let config = master_config(backend, dir.path(), name);
    let master = Arc::new(MasterKey::create(&config).unwrap());
    let store = ShareStore::open(&root, master, party(0)).unwrap();
    let share = keygen::<Secp256k1>(WALLET_A, 3, 2).swap_remove(0);
    let aux = aux_info(3).swap_remove(0);
    let pool = prime_pool();
    let record = b"a job result that must stay confidential at rest".to_vec();
    store.put_share(&share).unwrap();
    store.put_aux(&aux).unwrap();
    store.put_prime_pool(&pool).unwrap();
    store.put_record("jobs", b"job", &record).unwrap();

    // Every 16-byte window of every file under the root (the key file, if
    // any, lives outside it).
    const WINDOW: usize = 16;
    let mut on_disk: HashSet<Vec<u8>> = HashSet::new();
    let files = files_under(&root);
    assert!(files.len() >= 4, "{files:?}");
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        on_disk.extend(bytes.windows(WINDOW).map(<[u8]>::to_vec));
    }
    let secrets: [(&str, Vec<u8>); 4] = [
        ("share", share.to_bytes().unwrap().to_vec()),
        ("aux info", aux.to_bytes().unwrap().to_vec()),
        ("prime pool", pool.to_bytes().unwrap().to_vec()),
        ("record", record),
    ];
    for (what, plaintext) in &secrets {
        assert!(plaintext.len() > WINDOW);
        let leaked = plaintext
            .windows(WINDOW)
            .position(|window| on_disk.contains(window));
        assert_eq!(
            leaked, None,
            "{what}: plaintext bytes found on disk at offset {leaked:?}"
        );
    }
}

/// A store (of party 0) holding one value of each kind; returns it with the
/// share and aux info it holds.
fn store_with_every_kind(
    backend: Backend,
    dir: &Path,
    name: &str,
) -> (ShareStore, KeyShare<Secp256k1>, AuxInfo) {
    let config = master_config(backend, dir, name);
    let master = Arc::new(MasterKey::create(&config).unwrap());
    let store = ShareStore::open(&dir.join("store"), master, party(0)).unwrap();
    let share = keygen::<Secp256k1>(WALLET_A, 3, 2).swap_remove(0);
    let aux = aux_info(3).swap_remove(0);
    store.put_share(&share).unwrap();
    store.put_aux(&aux).unwrap();
    store.put_prime_pool(&prime_pool()).unwrap();
    store.put_record("jobs", b"job", b"job result").unwrap();
    (store, share, aux)
}

/// Reads every value `store_with_every_kind` stored; one result per value,
/// `Ok(true)` when it is there.
fn read_every_kind(
    store: &ShareStore,
    aux: &AuxInfo,
) -> Vec<(&'static str, Result<bool, StoreError>)> {
    vec![
        (
            "share",
            store
                .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
                .map(|share| share.is_some()),
        ),
        ("aux", store.aux(&aux.committee).map(|aux| aux.is_some())),
        (
            "prime pool",
            store.prime_pool().map(|pool| !pool.is_empty()),
        ),
        (
            "record",
            store.record("jobs", b"job").map(|record| record.is_some()),
        ),
    ]
}

fn check_flipped_bytes(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, aux) = store_with_every_kind(backend, dir.path(), name);
    let blobs: Vec<PathBuf> = files_under(&dir.path().join("store"))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "blob"))
        .collect();
    assert_eq!(blobs.len(), 4, "{blobs:?}");
    for blob in &blobs {
        let original = std::fs::read(blob).unwrap();
        // Every position of small blobs; a spread of positions of the large
        // ones (aux info, prime pool) keeps the PKCS#11 run short. The first
        // 200 bytes (header, wrapped key, nonce) are always all covered.
        let step = if original.len() > 2_000 {
            original.len() / 64
        } else {
            1
        };
        let positions = (0..original.len().min(200))
            .chain((200..original.len()).step_by(step))
            .chain([original.len() - 1]);
        for position in positions {
            let mut tampered = original.clone();
            tampered[position] ^= 0x01;
            std::fs::write(blob, &tampered).unwrap();
            let results = read_every_kind(&store, &aux);
            for (what, result) in &results {
                if let Ok(present) = result {
                    // The other, untouched blobs still read.
                    assert!(
                        present,
                        "{what} vanished after flipping a byte of {}",
                        blob.display()
                    );
                }
            }
            let failures = results.iter().filter(|(_, result)| result.is_err()).count();
            assert_eq!(
                failures,
                1,
                "flipping byte {position} of {} must fail exactly that read",
                blob.display()
            );
        }
        // Truncated, and empty.
        for len in [0, 3, 7, original.len() / 2, original.len() - 1] {
            std::fs::write(blob, &original[..len]).unwrap();
            assert_eq!(
                read_every_kind(&store, &aux)
                    .into_iter()
                    .filter(|(_, result)| result.is_err())
                    .count(),
                1,
                "{} truncated to {len} bytes",
                blob.display()
            );
        }
        std::fs::write(blob, &original).unwrap();
    }
    assert!(read_every_kind(&store, &aux)
        .into_iter()
        .all(|(_, result)| result.unwrap()));
}

fn assert_unseal<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Unseal { .. }) => {}
        other => panic!("{what}: expected an Unseal error, got {other:?}"),
    }
}

fn check_moved_blobs(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (store, share, aux3) = store_with_every_kind(backend, dir.path(), name);
    let root = dir.path().join("store");
    let wallet_a_dir = root.join("shares").join(hex::encode(WALLET_A.0));
    let share_blob = wallet_a_dir.join("0.secp256k1.blob");
    assert!(share_blob.is_file());

    // A share copied under another wallet and under another generation.
    let wallet_b_dir = root.join("shares").join(hex::encode(WALLET_B.0));
    std::fs::create_dir(&wallet_b_dir).unwrap();
    std::fs::copy(&share_blob, wallet_b_dir.join("0.secp256k1.blob")).unwrap();
    std::fs::copy(&share_blob, wallet_a_dir.join("7.secp256k1.blob")).unwrap();
    assert_unseal(
        store.share::<Secp256k1>(WALLET_B, KeyGeneration(0)),
        "share copied to another wallet",
    );
    assert_unseal(
        store.share::<Secp256k1>(WALLET_A, KeyGeneration(7)),
        "share copied to another generation",
    );
    // The original still opens.
    assert!(store
        .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
        .unwrap()
        .is_some());
    // Swapping two generations' files: neither opens.
    store.put_share(&as_generation(&share, 1)).unwrap();
    let gen1 = wallet_a_dir.join("1.secp256k1.blob");
    let (bytes0, bytes1) = (
        std::fs::read(&share_blob).unwrap(),
        std::fs::read(&gen1).unwrap(),
    );
    std::fs::write(&share_blob, &bytes1).unwrap();
    std::fs::write(&gen1, &bytes0).unwrap();
    assert_unseal(
        store.share::<Secp256k1>(WALLET_A, KeyGeneration(0)),
        "generation 1 under generation 0's name",
    );
    assert_unseal(
        store.share::<Secp256k1>(WALLET_A, KeyGeneration(1)),
        "generation 0 under generation 1's name",
    );

    // Aux info of two committees, swapped.
    let aux4 = aux_info(4).swap_remove(0);
    store.put_aux(&aux4).unwrap();
    let aux_files = files_under(&root.join("aux"));
    assert_eq!(aux_files.len(), 2);
    let (first, second) = (
        std::fs::read(&aux_files[0]).unwrap(),
        std::fs::read(&aux_files[1]).unwrap(),
    );
    std::fs::write(&aux_files[0], &second).unwrap();
    std::fs::write(&aux_files[1], &first).unwrap();
    assert_unseal(store.aux(&aux3.committee), "aux info of another committee");
    assert_unseal(store.aux(&aux4.committee), "aux info of another committee");

    // A record under another key, and a record moved to another namespace.
    store
        .put_record("jobs", b"other job", b"other result")
        .unwrap();
    let job_files = files_under(&root.join("records").join("jobs"));
    assert_eq!(job_files.len(), 2);
    let (first, second) = (
        std::fs::read(&job_files[0]).unwrap(),
        std::fs::read(&job_files[1]).unwrap(),
    );
    std::fs::write(&job_files[0], &second).unwrap();
    std::fs::write(&job_files[1], &first).unwrap();
    assert_unseal(store.record("jobs", b"job"), "record under another key");
    assert_unseal(
        store.record("jobs", b"other job"),
        "record under another key",
    );
    store.put_record("replay", b"job", b"seen").unwrap();
    let replay_file = files_under(&root.join("records").join("replay")).swap_remove(0);
    std::fs::write(&replay_file, &first).unwrap();
    assert_unseal(
        store.record("replay", b"job"),
        "record of another namespace",
    );

    // A share blob renamed to the prime pool.
    std::fs::copy(
        wallet_b_dir.join("0.secp256k1.blob"),
        root.join("prime-pool.blob"),
    )
    .unwrap();
    assert_unseal(store.prime_pool(), "share blob as the prime pool");
}

fn check_other_master_key(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, aux) = store_with_every_kind(backend, dir.path(), name);
    // The lock is per store: drop it before the "other node" opens the root.
    drop(store);
    let other = master_config(backend, dir.path(), &format!("{name}-other"));
    let other = Arc::new(MasterKey::create(&other).unwrap());
    let store = ShareStore::open(&dir.path().join("store"), other, party(0)).unwrap();
    for (what, result) in read_every_kind(&store, &aux) {
        assert_unseal(result, &format!("{what} under another master key"));
    }
    // Listing still works (it reads names, not contents), so an operator can
    // see what the node holds even when the key is wrong.
    assert_eq!(store.generations(WALLET_A).unwrap(), vec![KeyGeneration(0)]);

    // And a store of another party with the right key refuses too: blobs
    // are bound to their holder.
    drop(store);
    let same_key = Arc::new(MasterKey::open(&master_config(backend, dir.path(), name)).unwrap());
    let store = ShareStore::open(&dir.path().join("store"), same_key, party(1)).unwrap();
    assert_unseal(store.prime_pool(), "prime pool of another party");
    assert_unseal(store.record("jobs", b"job"), "record of another party");
}

fn check_stale_temp_file(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let config = master_config(backend, dir.path(), name);
    let master = Arc::new(MasterKey::create(&config).unwrap());
    let store = ShareStore::open(&root, master, party(0)).unwrap();
    let share = keygen::<Secp256k1>(WALLET_A, 3, 2).swap_remove(0);
    store.put_share(&share).unwrap();
    store.put_record("jobs", b"job", b"old result").unwrap();
    store.put_prime_pool(&prime_pool()).unwrap();
    assert!(temp_files_under(&root).is_empty());

    // A crash in the middle of three writes: each left a half-written
    // temporary file next to its target and never renamed it.
    let record_blob = files_under(&root.join("records").join("jobs")).swap_remove(0);
    let record_name = record_blob
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let wallet_dir = root.join("shares").join(hex::encode(WALLET_A.0));
    let half = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        bytes[..bytes.len() / 2].to_vec()
    };
    let stale = [
        (
            record_blob.with_file_name(format!(".{record_name}.0123456789abcdef.tmp")),
            half(&record_blob),
        ),
        (
            wallet_dir.join(".1.secp256k1.blob.fedcba9876543210.tmp"),
            half(&wallet_dir.join("0.secp256k1.blob")),
        ),
        (
            root.join(".prime-pool.blob.00112233aabbccdd.tmp"),
            Vec::new(),
        ),
    ];
    for (path, bytes) in &stale {
        std::fs::write(path, bytes).unwrap();
    }

    // Ignored while running: not a generation, not a record, old values read.
    assert_eq!(store.generations(WALLET_A).unwrap(), vec![KeyGeneration(0)]);
    assert_eq!(store.records("jobs").unwrap(), 1);
    assert_eq!(
        store.record("jobs", b"job").unwrap().unwrap().as_slice(),
        b"old result"
    );

    // Cleaned on the next open (the restart after the crash).
    drop(store);
    let master = Arc::new(MasterKey::open(&config).unwrap());
    let store = ShareStore::open(&root, master, party(0)).unwrap();
    assert!(
        temp_files_under(&root).is_empty(),
        "{:?}",
        temp_files_under(&root)
    );
    for (path, _) in &stale {
        assert!(!path.exists(), "{} survived open", path.display());
    }
    assert_eq!(
        store.record("jobs", b"job").unwrap().unwrap().as_slice(),
        b"old result"
    );
    assert_eq!(
        *store
            .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
            .unwrap()
            .unwrap()
            .to_bytes()
            .unwrap(),
        *share.to_bytes().unwrap()
    );
    assert_eq!(store.prime_pool().unwrap().len(), prime_pool().len());
    assert_eq!(store.generations(WALLET_A).unwrap(), vec![KeyGeneration(0)]);
}

fn check_atomic_replace(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let config = master_config(backend, dir.path(), name);
    let master = Arc::new(MasterKey::create(&config).unwrap());
    let store = ShareStore::open(&root, master, party(0)).unwrap();
    store.put_record("jobs", b"job", b"first result").unwrap();
    let blob = files_under(&root.join("records").join("jobs")).swap_remove(0);
    let before = std::fs::read(&blob).unwrap();

    store.put_record("jobs", b"job", b"second result").unwrap();
    assert_eq!(
        store.record("jobs", b"job").unwrap().unwrap().as_slice(),
        b"second result"
    );
    assert_eq!(store.records("jobs").unwrap(), 1);
    assert!(temp_files_under(&root).is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // The new value arrived by rename (a new inode), not by rewriting the
        // old file in place, which a crash could have left half-written.
        let second = std::fs::read(&blob).unwrap();
        assert_ne!(second, before);
        let mut handle_on_old = std::fs::File::open(&blob).unwrap();
        let old_inode = handle_on_old.metadata().unwrap().ino();
        store.put_record("jobs", b"job", b"third result").unwrap();
        assert_ne!(std::fs::metadata(&blob).unwrap().ino(), old_inode);
        // A reader that opened the old file before the put still reads the
        // complete old blob, never a mix of old and new.
        let mut old_bytes = Vec::new();
        std::io::Read::read_to_end(&mut handle_on_old, &mut old_bytes).unwrap();
        assert_eq!(old_bytes, second);
        assert_eq!(
            store.record("jobs", b"job").unwrap().unwrap().as_slice(),
            b"third result"
        );
        let mode = std::fs::metadata(&blob).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "blob mode {mode:03o}");
        let dir_mode = std::fs::metadata(blob.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "directory mode {dir_mode:03o}");
    }

    // Shares too: a put of the same generation replaces it, a put of a new
    // generation adds a file and keeps the old one.
    let share = keygen::<Secp256k1>(WALLET_A, 3, 2).swap_remove(0);
    store.put_share(&share).unwrap();
    store.put_share(&share).unwrap();
    store.put_share(&as_generation(&share, 1)).unwrap();
    assert_eq!(
        store.generations(WALLET_A).unwrap(),
        vec![KeyGeneration(0), KeyGeneration(1)]
    );
    assert!(temp_files_under(&root).is_empty());
}

fn check_wrap_contexts(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = master_config(backend, dir.path(), name);
    let master = MasterKey::create(&config).unwrap();
    let data_key = SealingKey::generate(&mut rand_core::OsRng);
    let wrapped = master.wrap(&data_key, b"context one").unwrap();
    assert_eq!(wrapped.len(), 61);
    assert_eq!(wrapped[0], 1, "version byte");
    assert_eq!(
        master
            .unwrap(&wrapped, b"context one")
            .unwrap()
            .expose_bytes(),
        data_key.expose_bytes()
    );
    // Fresh IVs: the same key wrapped twice differs.
    let again = master.wrap(&data_key, b"context one").unwrap();
    assert_ne!(wrapped[1..13], again[1..13]);
    // The wrapped form does not contain the data key.
    assert!(!wrapped
        .windows(16)
        .any(|window| data_key.expose_bytes().windows(16).any(|key| key == window)));

    assert!(matches!(
        master.unwrap(&wrapped, b"context two"),
        Err(MasterKeyError::Unwrap)
    ));
    assert!(matches!(
        master.unwrap(&wrapped, b""),
        Err(MasterKeyError::Unwrap)
    ));
    for position in 0..wrapped.len() {
        let mut tampered = wrapped.clone();
        tampered[position] ^= 0x80;
        assert!(
            matches!(
                master.unwrap(&tampered, b"context one"),
                Err(MasterKeyError::Unwrap)
            ),
            "flipped byte {position}"
        );
    }
    for len in [0, 1, 13, 60] {
        assert!(matches!(
            master.unwrap(&wrapped[..len], b"context one"),
            Err(MasterKeyError::Unwrap)
        ));
    }
    let mut longer = wrapped.clone();
    longer.push(0);
    assert!(matches!(
        master.unwrap(&longer, b"context one"),
        Err(MasterKeyError::Unwrap)
    ));
    let other = MasterKey::create(&master_config(
        backend,
        dir.path(),
        &format!("{name}-other"),
    ))
    .unwrap();
    assert!(matches!(
        other.unwrap(&wrapped, b"context one"),
        Err(MasterKeyError::Unwrap)
    ));
    // Reopened from its configuration (a read-only session for PKCS#11),
    // the key is the same key, both ways.
    let reopened = MasterKey::open(&config).unwrap();
    assert_eq!(
        reopened
            .unwrap(&wrapped, b"context one")
            .unwrap()
            .expose_bytes(),
        data_key.expose_bytes()
    );
    let rewrapped = reopened.wrap(&data_key, b"context three").unwrap();
    assert_eq!(
        master
            .unwrap(&rewrapped, b"context three")
            .unwrap()
            .expose_bytes(),
        data_key.expose_bytes()
    );
}

// ---- master key specifics ------------------------------------------------

#[test]
fn master_key_and_store_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MasterKey>();
    assert_send_sync::<ShareStore>();
}

#[cfg(unix)]
#[test]
fn file_master_key_refuses_overwrite_open_permissions_and_wrong_sizes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys").join("master.key");
    let config = MasterKeyConfig::File { path: path.clone() };
    let master = MasterKey::create(&config).unwrap();
    assert_eq!(master.describe(), format!("file:{}", path.display()));
    let key_bytes = std::fs::read(&path).unwrap();
    assert_eq!(key_bytes.len(), 32);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Debug output and errors never show the key.
    let key_hex = hex::encode(&key_bytes);
    let printed = format!("{master:?}");
    assert!(!printed.contains(&key_hex[..16]), "{printed}");

    let error = MasterKey::create(&config).unwrap_err();
    assert!(
        matches!(error, MasterKeyError::AlreadyExists { .. }),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        key_bytes,
        "create overwrote the key"
    );

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let error = MasterKey::open(&config).unwrap_err();
    assert!(
        matches!(
            error,
            MasterKeyError::InsecurePermissions { mode: 0o640, .. }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("chmod 600"), "{error}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert!(matches!(
        MasterKey::open(&config),
        Err(MasterKeyError::InsecurePermissions { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    MasterKey::open(&config).unwrap();

    for (len, expected) in [(31usize, "31"), (33, "more"), (0, "0")] {
        let short = dir.path().join(format!("len-{len}.key"));
        std::fs::write(&short, &key_bytes.repeat(2)[..len]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = MasterKey::open(&MasterKeyConfig::File { path: short }).unwrap_err();
        assert!(
            matches!(error, MasterKeyError::BadKeyLength { .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains(&key_hex[..8]), "{message}");
    }
    let missing = MasterKey::open(&MasterKeyConfig::File {
        path: dir.path().join("missing.key"),
    })
    .unwrap_err();
    assert!(matches!(missing, MasterKeyError::Io { .. }), "{missing}");
}

#[test]
fn pkcs11_master_key_is_not_extractable() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let label = "pkcs11_master_key_is_not_extractable";
    let master = MasterKey::create(&pkcs11_config(TOKEN, TOKEN_PIN, label)).unwrap();
    assert_eq!(master.describe(), format!("pkcs11:{TOKEN}/{label}"));

    // Look at the key with the module directly, as an attacker holding the
    // PIN would.
    let context = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(error) => panic!("C_Initialize: {error}"),
    }
    let slot = context
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|slot| context.get_token_info(*slot).unwrap().label() == TOKEN)
        .unwrap();
    let session = context.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(TOKEN_PIN))) {
        Ok(()) => {}
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(error) => panic!("C_Login: {error}"),
    }
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(keys.len(), 1);
    let attributes = session
        .get_attributes(
            keys[0],
            &[
                AttributeType::Value,
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::NeverExtractable,
                AttributeType::Token,
                AttributeType::ValueLen,
            ],
        )
        .unwrap();
    // CKA_VALUE of a sensitive key is refused (CKR_ATTRIBUTE_SENSITIVE);
    // cryptoki leaves unavailable attributes out of the answer.
    assert!(
        !attributes
            .iter()
            .any(|attribute| matches!(attribute, Attribute::Value(_))),
        "CKA_VALUE was readable: {:?}",
        attributes
            .iter()
            .map(|attribute| attribute.attribute_type())
            .collect::<Vec<_>>()
    );
    for expected in [
        Attribute::Extractable(false),
        Attribute::Sensitive(true),
        Attribute::NeverExtractable(true),
        Attribute::Token(true),
    ] {
        assert!(
            attributes.contains(&expected),
            "{expected:?} missing from {:?}",
            attributes
                .iter()
                .map(|attribute| attribute.attribute_type())
                .collect::<Vec<_>>()
        );
    }
    assert!(attributes.contains(&Attribute::ValueLen(32.into())));
    // Nor can the key be exported by wrapping it under another key.
    assert!(session
        .wrap_key(
            &cryptoki::mechanism::Mechanism::AesKeyWrapPad,
            keys[0],
            keys[0]
        )
        .is_err());
}

#[test]
fn pkcs11_master_key_refuses_duplicates_unknown_labels_and_a_wrong_pin() {
    let label = "pkcs11_master_key_refuses_duplicates";
    let config = pkcs11_config(TOKEN, TOKEN_PIN, label);
    MasterKey::create(&config).unwrap();
    let error = MasterKey::create(&config).unwrap_err();
    assert!(
        matches!(error, MasterKeyError::AlreadyExists { .. }),
        "{error}"
    );
    MasterKey::open(&config).unwrap();

    let error = MasterKey::open(&pkcs11_config(TOKEN, TOKEN_PIN, "no-such-key")).unwrap_err();
    assert!(
        matches!(error, MasterKeyError::KeyNotFound { .. }),
        "{error}"
    );
    let error = MasterKey::open(&pkcs11_config("no-such-token", TOKEN_PIN, label)).unwrap_err();
    assert!(
        matches!(error, MasterKeyError::TokenNotFound { .. }),
        "{error}"
    );

    let wrong_pin = "98765";
    let error = MasterKey::open(&pkcs11_config(PIN_TEST_TOKEN, wrong_pin, label)).unwrap_err();
    assert!(
        matches!(
            error,
            MasterKeyError::Login {
                source: cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::PinIncorrect, _),
                ..
            }
        ),
        "{error:?}"
    );
    let message = format!("{error} {error:?}");
    assert!(!message.contains(wrong_pin), "{message}");
}

#[test]
fn master_key_config_parses_from_toml_and_debug_hides_the_pin() {
    let pkcs11: MasterKeyConfig = toml::from_str(
        r#"
        backend = "pkcs11"
        module = "/usr/lib/softhsm/libsofthsm2.so"
        token_label = "custos"
        pin = "s3cret-pin-4711"
        key_label = "node-master"
        "#,
    )
    .unwrap();
    assert_eq!(
        pkcs11,
        MasterKeyConfig::Pkcs11 {
            module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
            token_label: "custos".to_owned(),
            pin: Pin::new("s3cret-pin-4711"),
            key_label: "node-master".to_owned(),
        }
    );
    let printed = format!("{pkcs11:?} {pkcs11:#?}");
    assert!(!printed.contains("s3cret-pin-4711"), "{printed}");
    assert!(printed.contains("<redacted>"), "{printed}");

    let file: MasterKeyConfig = toml::from_str(
        r#"
        backend = "file"
        path = "/var/lib/custos/master.key"
        "#,
    )
    .unwrap();
    assert_eq!(
        file,
        MasterKeyConfig::File {
            path: PathBuf::from("/var/lib/custos/master.key")
        }
    );
    // The same shape in JSON (for tools that emit JSON).
    let json: MasterKeyConfig =
        serde_json::from_str(r#"{"backend":"file","path":"/var/lib/custos/master.key"}"#).unwrap();
    assert_eq!(json, file);

    // Typos are errors, not silently ignored settings.
    for bad in [
        "backend = \"file\"\npath = \"/k\"\npin = \"1\"",
        "backend = \"hsm\"\npath = \"/k\"",
        "backend = \"pkcs11\"\nmodule = \"/m\"\ntoken_label = \"t\"\nkey_label = \"k\"",
        "path = \"/k\"",
    ] {
        assert!(toml::from_str::<MasterKeyConfig>(bad).is_err(), "{bad}");
    }
    // Different PINs compare unequal (the comparison is constant-time).
    assert_ne!(Pin::new("1234"), Pin::new("1235"));
    assert_ne!(Pin::new("1234"), Pin::new("12345"));
}

#[test]
fn second_open_of_a_root_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = Arc::new(
        MasterKey::create(&MasterKeyConfig::File {
            path: dir.path().join("master.key"),
        })
        .unwrap(),
    );
    let root = dir.path().join("store");
    let store = ShareStore::open(&root, master.clone(), party(0)).unwrap();
    let error = ShareStore::open(&root, master.clone(), party(0)).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    drop(store);
    ShareStore::open(&root, master, party(0)).unwrap();
}

#[test]
fn delete_share_removes_only_that_generation_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let master = Arc::new(
        MasterKey::create(&MasterKeyConfig::File {
            path: dir.path().join("master.key"),
        })
        .unwrap(),
    );
    let store = ShareStore::open(&dir.path().join("store"), master, party(0)).unwrap();
    let share = keygen::<Secp256k1>(WALLET_A, 3, 2).swap_remove(0);
    store.put_share(&share).unwrap();
    store.put_share(&as_generation(&share, 1)).unwrap();
    store.put_share(&as_generation(&share, 10)).unwrap();
    // Ascending numerically, not by file name ("10" < "1" < ... as text).
    assert_eq!(
        store.generations(WALLET_A).unwrap(),
        vec![KeyGeneration(0), KeyGeneration(1), KeyGeneration(10)]
    );

    store.delete_share(WALLET_A, KeyGeneration(0)).unwrap();
    assert!(store
        .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
        .unwrap()
        .is_none());
    assert!(store
        .share::<Secp256k1>(WALLET_A, KeyGeneration(1))
        .unwrap()
        .is_some());
    store.delete_share(WALLET_A, KeyGeneration(0)).unwrap();
    assert_eq!(
        store.generations(WALLET_A).unwrap(),
        vec![KeyGeneration(1), KeyGeneration(10)]
    );

    store.delete_share(WALLET_A, KeyGeneration(1)).unwrap();
    store.delete_share(WALLET_A, KeyGeneration(10)).unwrap();
    assert!(store.generations(WALLET_A).unwrap().is_empty());
    // A wallet without shares is not listed.
    assert!(store.wallets().unwrap().is_empty());
}

#[test]
fn deleting_a_share_also_deletes_leftover_temporary_copies_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let master = Arc::new(
        MasterKey::create(&MasterKeyConfig::File {
            path: dir.path().join("master.key"),
        })
        .unwrap(),
    );
    let store = ShareStore::open(&dir.path().join("store"), master, party(0)).unwrap();
    let share = keygen::<Secp256k1>(WALLET_A, 3, 2).swap_remove(0);
    store.put_share(&share).unwrap();
    store.put_share(&as_generation(&share, 1)).unwrap();
    let wallet_dir = dir
        .path()
        .join("store")
        .join("shares")
        .join(hex::encode(WALLET_A.0));
    let old_blob = std::fs::read(wallet_dir.join("0.secp256k1.blob")).unwrap();
    // A write of generation 0 that failed after its temporary file was
    // written, and whose clean-up failed too, left a whole copy behind while
    // the node kept running (`open` only cleans at the next start). A
    // temporary file of the generation that stays must stay.
    let leftover = wallet_dir.join(".0.secp256k1.blob.0123456789abcdef.tmp");
    let in_flight = wallet_dir.join(".1.secp256k1.blob.fedcba9876543210.tmp");
    std::fs::write(&leftover, &old_blob).unwrap();
    std::fs::write(&in_flight, b"a write of generation 1").unwrap();

    store.delete_share(WALLET_A, KeyGeneration(0)).unwrap();
    assert!(!leftover.exists(), "a copy of the deleted share stayed");
    assert!(in_flight.exists(), "another generation's write was touched");
    for file in files_under(&dir.path().join("store")) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes
                .windows(32)
                .any(|window| old_blob.windows(32).any(|old| old == window)),
            "{} holds bytes of the deleted share's blob",
            file.display()
        );
    }
    assert_eq!(store.generations(WALLET_A).unwrap(), vec![KeyGeneration(1)]);
}

#[test]
fn update_records_rewrites_only_the_records_it_is_given_new_values_for() {
    let dir = tempfile::tempdir().unwrap();
    let master = Arc::new(
        MasterKey::create(&MasterKeyConfig::File {
            path: dir.path().join("master.key"),
        })
        .unwrap(),
    );
    let root = dir.path().join("store");
    let store = ShareStore::open(&root, master, party(0)).unwrap();
    store.put_record("jobs", b"keep", b"kept value").unwrap();
    store
        .put_record("jobs", b"scrub", b"value with a secret")
        .unwrap();
    store
        .put_record("other", b"scrub", b"another namespace")
        .unwrap();
    let mut seen = Vec::new();
    let replaced = store
        .update_records("jobs", |value| {
            seen.push(value.to_vec());
            (value == b"value with a secret").then(|| b"scrubbed".to_vec())
        })
        .unwrap();
    assert_eq!(replaced, 1);
    seen.sort();
    assert_eq!(
        seen,
        vec![b"kept value".to_vec(), b"value with a secret".to_vec()]
    );
    assert_eq!(
        store.record("jobs", b"scrub").unwrap().unwrap().as_slice(),
        b"scrubbed"
    );
    assert_eq!(
        store.record("jobs", b"keep").unwrap().unwrap().as_slice(),
        b"kept value"
    );
    assert_eq!(
        store.record("other", b"scrub").unwrap().unwrap().as_slice(),
        b"another namespace"
    );
    assert!(temp_files_under(&root).is_empty());
    assert!(store.update_records("Jobs", |_| None).is_err());
    // A record whose blob was tampered with stops the walk with its error.
    let blob = files_under(&root.join("records").join("jobs")).swap_remove(0);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    assert_unseal(store.update_records("jobs", |_| None), "tampered record");
}

#[test]
fn store_refuses_values_of_other_parties_and_bad_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let master = Arc::new(
        MasterKey::create(&MasterKeyConfig::File {
            path: dir.path().join("master.key"),
        })
        .unwrap(),
    );
    let store = ShareStore::open(&dir.path().join("store"), master, party(0)).unwrap();
    let shares = keygen::<Secp256k1>(WALLET_A, 3, 2);
    assert!(matches!(
        store.put_share(&shares[1]),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.put_aux(&aux_info(3).swap_remove(2)),
        Err(StoreError::InvalidArgument(_))
    ));
    for namespace in ["", "Jobs", "../shares", "jobs/x", "jobs-1", &"a".repeat(65)] {
        assert!(
            matches!(
                store.put_record(namespace, b"k", b"v"),
                Err(StoreError::InvalidArgument(_))
            ),
            "{namespace:?}"
        );
        assert!(store.record(namespace, b"k").is_err());
        assert!(store.records(namespace).is_err());
    }
    assert!(files_under(&dir.path().join("store").join("shares")).is_empty());
}

// ---- the node's in-memory cache of decoded values -------------------------

#[test]
fn decoded_cache_never_brings_back_a_generation_retired_by_a_commit() {
    let decoded = Decoded::default();
    let shares = keygen::<Secp256k1>(WALLET_A, 3, 2);
    let old = Arc::new(shares[0].clone());
    let new = Arc::new(as_generation(&shares[0], 1));
    decoded.put_share(old.clone());
    decoded.put_share(new.clone());
    assert!(decoded
        .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
        .is_some());
    // A share of another curve under the same key is not served from memory.
    assert!(decoded
        .share::<Ed25519>(WALLET_A, KeyGeneration(0))
        .is_none());

    decoded.retire_below(WALLET_A, KeyGeneration(1));
    assert!(decoded
        .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
        .is_none());
    assert!(decoded
        .share::<Secp256k1>(WALLET_A, KeyGeneration(1))
        .is_some());
    // A reader that loaded generation 0 before the deletion and caches it
    // afterwards must not resurrect it.
    decoded.put_share(old);
    assert!(decoded
        .share::<Secp256k1>(WALLET_A, KeyGeneration(0))
        .is_none());
    assert_eq!(decoded.shares_len(), 1);
}

#[test]
fn decoded_cache_keeps_the_newest_aux_info_of_a_committee() {
    let decoded = Decoded::default();
    let plain = Arc::new(aux_info(3).remove(0));
    assert!(!plain.is_precomputed());
    decoded.install_aux(plain.clone());
    assert!(decoded.is_current_aux(&plain));
    // A value read from the store does not replace one installed meanwhile.
    let read_later = Arc::new((*plain).clone());
    let kept = decoded.insert_aux_if_absent(read_later.clone());
    assert!(Arc::ptr_eq(&kept, &plain));
    assert!(!decoded.is_current_aux(&read_later));
    // A new aux-info run replaces it: a precomputation of the old value then
    // sees that it is no longer current and is discarded by the node.
    decoded.install_aux(read_later.clone());
    assert!(!decoded.is_current_aux(&plain));
    assert_eq!(decoded.aux_precomputed(), 0);
    assert!(decoded.start_precompute(&plain.committee));
    assert!(!decoded.start_precompute(&plain.committee));
    decoded.finish_precompute(&plain.committee);
    assert!(decoded.start_precompute(&plain.committee));
}
