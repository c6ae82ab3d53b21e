//! HSM-wrapped share backups through a whole deployment
//! (`custos-testnet up`: the control plane with its SoftHSM2 token, three
//! signer nodes with their operators' recovery keys).
//!
//! A 3-of-3 FROST wallet (so every signature needs every node) is backed
//! up; node-2's data folder is wiped; its share comes back only through a
//! restore that an admin approved and that had the node operator's
//! recovery key; then the wallet signs again (checked with k256's BIP-340
//! verifier). With the database and the HSM, but without the recovery
//! key, a backup does not open; no plaintext share (nor either half of its
//! data key) is in the control plane's database or in any log.

mod support;

use std::path::Path;

use ciborium::Value as Cbor;
use custos_control_plane::kernel::hsm::{HsmKeyId, HsmKeyKind, HsmKeyStore};
use custos_signer_node::backup::{open_backup, RecoveryKey, SealedBackup};
use k256::elliptic_curve::sec1::ToEncodedPoint;
use k256::elliptic_curve::PrimeField;
use k256::schnorr::signature::hazmat::PrehashVerifier;
use serde_json::{json, Value};
use support::*;

#[test]
fn on_sqlite_a_wiped_node_is_restored_from_its_backup_after_approval_and_signs() {
    let _serial = serial();
    whole_cycle(Backend::Sqlite, true);
}

#[test]
fn on_postgres_a_wiped_node_is_restored_from_its_backup_after_approval_and_signs() {
    let _serial = serial();
    // The HSM inspection runs once per test process (SoftHSM2 reads its
    // configuration once); the SQLite test does it.
    whole_cycle(Backend::Postgres, false);
}

fn whole_cycle(backend: Backend, inspect_hsm: bool) {
    eprintln!("== {backend:?}: back up, wipe node-2, restore after approval, sign");
    let mut net = Testnet::start(backend, false);
    let root = net.root.token.clone();
    let second_admin = net.identity(&root, "custodian-2", "admin", None);
    let operator = net.identity(&root, "ops", "operator", None);
    let wallet = net.ok(
        "POST",
        "/api/v1/wallets",
        &root,
        Some(json!({"name": "cold-1", "protocol": "frost-taproot", "threshold": 3, "parties": 3})),
    );
    let id = wallet["id"].as_str().unwrap().to_string();
    let public_key = wallet["publicKey"].as_str().unwrap().to_string();
    sign_and_verify(&net, &root, &id, &public_key, [0x11; 32]);

    // Bad requests: named, stable errors; nothing stored.
    let backups_path = format!("/api/v1/wallets/{id}/backups");
    for (body, status, code) in [
        (json!({"nodes": ["node-9"]}), 422, "unknown_node"),
        (json!({"nodes": []}), 422, "invalid_nodes"),
        (json!({"node": "node-1"}), 422, "invalid_body"),
        (json!({"nodes": "node-1"}), 422, "invalid_body"),
    ] {
        let (got, answer) = net.call("POST", &backups_path, Some(&root), Some(body.clone()));
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    let (status, answer) = net.call(
        "POST",
        "/api/v1/wallets/wal_00000000000000000000000000000000/backups",
        Some(&root),
        Some(json!({})),
    );
    assert_eq!(status, 404, "{answer}");

    // Backups of every holder, made by an operator.
    let made = net.ok("POST", &backups_path, &operator.token, Some(json!({})));
    assert_eq!(made["failed"], json!([]), "{made}");
    let items = made["backups"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{made}");
    for item in items {
        assert!(item.get("sealed").is_none() && item.get("wrappedK1").is_none());
        assert_eq!(item["generation"], 0);
        assert_eq!(item["curve"], "secp256k1");
    }
    let backup = items.iter().find(|item| item["node"] == "node-2").unwrap();
    let backup_id = backup["id"].as_str().unwrap().to_string();
    let listed = net.ok("GET", &backups_path, &root, None);
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    let one = net.ok("GET", &format!("{backups_path}/{backup_id}"), &root, None);
    assert_eq!(one["party"], backup["party"]);

    let row = backup_row(&net.database_url, &backup_id);
    let sealed = SealedBackup::from_bytes(&row.sealed).unwrap();
    assert_eq!(hex::encode(sealed.meta_digest()), row.meta_digest);
    let recovery_path = net.dir.path().join("node-2").join("recovery.key");
    let recovery = RecoveryKey::from_bytes(
        hex::decode(std::fs::read_to_string(&recovery_path).unwrap().trim())
            .unwrap()
            .try_into()
            .unwrap(),
    );

    let mut secrets: Vec<Vec<u8>> = Vec::new();
    if inspect_hsm {
        // Whoever holds the database and the HSM gets K1 out of the token,
        // and still cannot open the backup without the recovery key.
        let k1 = unwrap_k1(net.dir.path(), &row);
        for wrong in [
            RecoveryKey::generate().unwrap(),
            RecoveryKey::from_bytes([7; 32]),
        ] {
            assert!(open_backup(&sealed, &k1, &wrong).is_err());
        }
        // With the operator's key as well it opens (so K1 was the real one):
        // the share is node-2's, and its secret scalar is found for the
        // search below.
        let share = open_backup(&sealed, &k1, &recovery).expect("both halves open it");
        let scalar = secret_scalar(&share);
        secrets.extend([k1.to_vec(), share.to_vec(), scalar.to_vec()]);
    }

    // Wipe node-2's data folder, but for its identity and master key (a
    // replacement machine takes over the node's identity); the node comes
    // back without any share.
    let node2_data = net.dir.path().join("node-2").join("data");
    net.restart_after(|_| {
        std::fs::remove_dir_all(node2_data.join("store")).unwrap();
    });
    let root = net.root.token.clone();
    let second_admin_token = net.token(&second_admin.client_id, &second_admin.client_secret);
    let operator_token = net.token(&operator.client_id, &operator.client_secret);
    assert!(!share_files_exist(&node2_data));

    // A backup restores only into the node of the same identity.
    let restore_path = format!("{backups_path}/{backup_id}/restore");
    let (status, answer) = net.call(
        "POST",
        &restore_path,
        Some(&root),
        Some(json!({"node": "node-1"})),
    );
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "restore_party_mismatch");

    // The operator's recovery key is away: the approved restore fails on the
    // node, and nothing is restored.
    let aside = net.dir.path().join("recovery.key.offline");
    std::fs::rename(&recovery_path, &aside).unwrap();
    let failed = restore_with_approval(&net, &operator_token, &second_admin_token, &restore_path);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "restore_failed", "{failed}");
    assert!(!share_files_exist(&node2_data));

    // The operator brings the key: restore after approval, then sign.
    std::fs::rename(&aside, &recovery_path).unwrap();
    let done = restore_with_approval(&net, &operator_token, &second_admin_token, &restore_path);
    assert_eq!(done["status"], "executed", "{done}");
    assert_eq!(done["result"]["restored"], true, "{done}");
    assert_eq!(done["result"]["node"], "node-2");
    assert!(share_files_exist(&node2_data));
    sign_and_verify(&net, &root, &id, &public_key, [0x22; 32]);
    let one = net.ok("GET", &format!("{backups_path}/{backup_id}"), &root, None);
    assert!(one["restoredAt"].as_i64().is_some(), "{one}");

    // Audited: the backups, the pending restores, the failure and success.
    let audit = net.ok(
        "GET",
        "/api/v1/audit?action=wallet.restore&limit=100",
        &root,
        None,
    );
    let outcomes: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["outcome"].as_str().unwrap())
        .collect();
    for outcome in ["pending", "failure", "success"] {
        assert!(outcomes.contains(&outcome), "{outcome} in {outcomes:?}");
    }
    let audit = net.ok(
        "GET",
        "/api/v1/audit?action=wallet.backup&limit=100",
        &root,
        None,
    );
    assert_eq!(audit["items"].as_array().unwrap().len(), 3, "{audit}");
    let verified = net.ok("GET", "/api/v1/audit/verify", &root, None);
    assert_eq!(verified["valid"], true, "{verified}");

    if inspect_hsm {
        no_secret_in(net.dir.path(), &secrets);
    }
}

fn sign_and_verify(net: &Testnet, token: &str, id: &str, public_key: &str, digest: [u8; 32]) {
    let signed = net.ok(
        "POST",
        &format!("/api/v1/wallets/{id}/sign"),
        token,
        Some(json!({"digest": hex::encode(digest)})),
    );
    let signed = if signed["status"] == "signed" {
        signed
    } else {
        net.wait_for(
            token,
            signed["requestId"].as_str().unwrap(),
            &["signed", "failed"],
        )
    };
    assert_eq!(signed["status"], "signed", "{signed}");
    let key = k256::schnorr::VerifyingKey::from_bytes(&hex::decode(public_key).unwrap()).unwrap();
    let signature = k256::schnorr::Signature::try_from(
        hex::decode(signed["signature"].as_str().unwrap())
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    key.verify_prehash(&digest, &signature)
        .expect("k256 verifies the BIP-340 signature");
}

/// Asks for a restore (202), has the second admin approve it, and answers
/// the operation once it is no longer pending.
fn restore_with_approval(net: &Testnet, requester: &str, approver: &str, path: &str) -> Value {
    let (status, pending) = net.call("POST", path, Some(requester), Some(json!({})));
    assert_eq!(status, 202, "{pending}");
    assert_eq!(pending["status"], "pending_approval");
    let operation = pending["operationId"].as_str().unwrap().to_string();
    // The requester cannot approve its own request.
    let approve = format!(
        "/api/v1/approvals/{}/approve",
        pending["approvalId"].as_str().unwrap()
    );
    let (status, _) = net.call("POST", &approve, Some(requester), Some(json!({})));
    assert_ne!(status, 200);
    net.ok("POST", &approve, approver, Some(json!({})));
    let started = std::time::Instant::now();
    loop {
        let view = net.ok(
            "GET",
            &format!("/api/v1/operations/{operation}"),
            requester,
            None,
        );
        if !matches!(
            view["status"].as_str(),
            Some("approved" | "executing" | "pending_approval")
        ) {
            return view;
        }
        assert!(started.elapsed().as_secs() < 120, "{view}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

struct BackupRow {
    org: String,
    sealed: Vec<u8>,
    wrapped_k1: Vec<u8>,
    hsm_id: String,
    meta_digest: String,
}

fn backup_row(database_url: &str, id: &str) -> BackupRow {
    use sqlx::Row;
    let (url, id) = (database_url.to_string(), id.to_string());
    block_on(async move {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let row = sqlx::query(
            "SELECT org_id, sealed, wrapped_k1, hsm_id, meta_digest FROM share_backups WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
        let row = BackupRow {
            org: row.get("org_id"),
            sealed: row.get("sealed"),
            wrapped_k1: row.get("wrapped_k1"),
            hsm_id: row.get("hsm_id"),
            meta_digest: row.get("meta_digest"),
        };
        pool.close().await;
        row
    })
}

/// K1 out of the testnet's SoftHSM2 token, with the PIN the control plane
/// uses: what an attacker holding the database and the HSM gets.
fn unwrap_k1(dir: &Path, row: &BackupRow) -> [u8; 32] {
    // Read by SoftHSM2 when this process first loads the module.
    std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm").join("softhsm2.conf"));
    let pin = std::fs::read_to_string(dir.join("control-plane").join("hsm-pin")).unwrap();
    let store = HsmKeyStore::open(
        Path::new("/usr/lib/softhsm/libsofthsm2.so"),
        "custos-testnet",
        pin.trim(),
    )
    .unwrap();
    let digest: [u8; 32] = hex::decode(&row.meta_digest).unwrap().try_into().unwrap();
    let context = custos_control_plane::engines::wallets::backups::k1_context(
        &row.org,
        &backup_id_of(&row.sealed),
        &digest,
    );
    let k1 = store
        .unwrap_data_key(
            &HsmKeyId::from_hex(&row.hsm_id).unwrap(),
            HsmKeyKind::Aes256,
            &row.wrapped_k1,
            &context,
        )
        .expect("the token unwraps K1");
    *k1
}

/// The backup's id (`bak_<hex>`) from its metadata.
fn backup_id_of(sealed: &[u8]) -> String {
    let sealed = SealedBackup::from_bytes(sealed).unwrap();
    format!("bak_{}", hex::encode(sealed.meta().backup_id))
}

/// The secret scalar inside a share's CBOR: the 32-byte string whose
/// multiple of the generator is one of the share's public shares.
fn secret_scalar(share: &[u8]) -> [u8; 32] {
    let value: Cbor = ciborium::from_reader(share).unwrap();
    let mut strings = Vec::new();
    collect_bytes(&value, &mut strings);
    let points: Vec<Vec<u8>> = strings.iter().filter(|b| b.len() == 33).cloned().collect();
    for candidate in strings.iter().filter(|b| b.len() == 32) {
        let Some(scalar) = Option::<k256::Scalar>::from(k256::Scalar::from_repr(
            *k256::FieldBytes::from_slice(candidate),
        )) else {
            continue;
        };
        let point = (k256::ProjectivePoint::GENERATOR * scalar)
            .to_affine()
            .to_encoded_point(true);
        if points.iter().any(|p| p.as_slice() == point.as_bytes()) {
            return candidate.as_slice().try_into().unwrap();
        }
    }
    panic!("no secret scalar found in the share's CBOR");
}

fn collect_bytes(value: &Cbor, out: &mut Vec<Vec<u8>>) {
    match value {
        Cbor::Bytes(bytes) => out.push(bytes.clone()),
        Cbor::Array(items) => items.iter().for_each(|item| collect_bytes(item, out)),
        Cbor::Map(entries) => entries.iter().for_each(|(key, value)| {
            collect_bytes(key, out);
            collect_bytes(value, out);
        }),
        Cbor::Tag(_, inner) => collect_bytes(inner, out),
        Cbor::Text(text) => {
            if let Ok(bytes) = hex::decode(text) {
                out.push(bytes);
            }
        }
        _ => {}
    }
}

fn share_files_exist(data: &Path) -> bool {
    std::fs::read_dir(data.join("store").join("shares"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// No file of the control plane (its SQLite database and WAL) and no log
/// of the deployment holds any of `secrets`, raw, in hex or in base64.
fn no_secret_in(dir: &Path, secrets: &[Vec<u8>]) {
    use base64::Engine as _;
    let mut files = Vec::new();
    for folder in ["control-plane", "logs"] {
        for entry in std::fs::read_dir(dir.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.push(dir.join("testnet.out"));
    assert!(files.iter().any(|file| file.ends_with("custos.db")));
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        for secret in secrets {
            let raw = secret.as_slice();
            assert!(
                !bytes.windows(raw.len()).any(|window| window == raw),
                "{} holds a secret",
                file.display()
            );
            for encoded in [
                hex::encode(raw),
                base64::engine::general_purpose::STANDARD
                    .encode(raw)
                    .to_lowercase(),
            ] {
                assert!(
                    !text.contains(&encoded),
                    "{} holds an encoded secret",
                    file.display()
                );
            }
        }
    }
    eprintln!(
        "searched {} files for {} secrets: none found",
        files.len(),
        secrets.len()
    );
}
