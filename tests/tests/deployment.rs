//! A whole deployment driven through HTTP as a user would: wallets of every
//! protocol, signatures checked by verifiers that did not produce them
//! (k256 ECDSA and BIP-340, ed25519-dalek, and eth-account for the EVM
//! transaction), policies and approvals, org isolation, the audit chain.
//! Everything runs once on SQLite and once on PostgreSQL; each backend gets
//! its own testnet (three signer-node processes and the control plane).

mod support;

use k256::ecdsa::signature::hazmat::PrehashVerifier;
use serde_json::{json, Value};
use sha3::Digest;
use support::*;

#[test]
fn on_sqlite_wallets_sign_under_policy_and_orgs_are_isolated() {
    let _serial = serial();
    run_all(Backend::Sqlite);
}

#[test]
fn on_postgres_wallets_sign_under_policy_and_orgs_are_isolated() {
    let _serial = serial();
    run_all(Backend::Postgres);
}

fn run_all(backend: Backend) {
    let net = Testnet::start(backend, true);
    for (name, scenario) in [
        (
            "each protocol signs and every signature verifies independently",
            each_protocol_signs as fn(&Testnet),
        ),
        (
            "policy denies, limits and approvals gate signing",
            policies_and_approvals_gate_signing,
        ),
        (
            "an identity of another org gets nothing of this org",
            another_org_gets_nothing,
        ),
        (
            "resharing needs an admin approval and keeps the address",
            resharing_keeps_the_address,
        ),
        (
            "the audit chain verifies after the run",
            audit_chain_verifies,
        ),
    ] {
        eprintln!("== {backend:?}: {name}");
        scenario(&net);
    }
}

fn keccak(data: &[u8]) -> [u8; 32] {
    sha3::Keccak256::digest(data).into()
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text.trim_start_matches("0x")).unwrap()
}

/// The EIP-55 address of a compressed secp256k1 key, computed here.
fn evm_address(compressed: &[u8]) -> String {
    let key = k256::PublicKey::from_sec1_bytes(compressed).unwrap();
    let uncompressed = k256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key, false);
    let hash = keccak(&uncompressed.as_bytes()[1..]);
    let lower = hex::encode(&hash[12..]);
    let checksum = hex::encode(keccak(lower.as_bytes()));
    let mixed: String = lower
        .chars()
        .zip(checksum.chars())
        .map(|(c, h)| {
            if c.is_ascii_alphabetic() && h >= '8' {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("0x{mixed}")
}

fn evm_transaction(value: &str) -> Value {
    json!({
        "chainId": "1", "nonce": "7", "to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "value": value, "gasLimit": "21000", "maxFeePerGas": "30000000000",
        "maxPriorityFeePerGas": "1000000000",
    })
}

fn each_protocol_signs(net: &Testnet) {
    let token = &net.root.token;
    // ECDSA (CGGMP21) on Ethereum.
    let evm = net.wallet(token, "evm-1", "cggmp21", Some("ethereum"));
    let evm_key = unhex(evm["publicKey"].as_str().unwrap());
    assert_eq!(evm_key.len(), 33);
    assert_eq!(
        evm["address"].as_str().unwrap(),
        evm_address(&evm_key),
        "EIP-55 address"
    );
    let evm_id = evm["id"].as_str().unwrap();
    let signed = net.ok(
        "POST",
        &format!("/api/v1/wallets/{evm_id}/sign"),
        token,
        Some(json!({"transaction": evm_transaction("1000")})),
    );
    assert_eq!(signed["status"], "signed", "{signed}");
    let decoded = eth_account_decode(signed["rawTransaction"].as_str().unwrap());
    assert_eq!(
        decoded["sender"].as_str().unwrap(),
        evm["address"].as_str().unwrap(),
        "eth-account recovers the wallet: {decoded}"
    );
    assert_eq!(decoded["type"], 2);
    assert_eq!(decoded["value"], "1000");
    assert_eq!(decoded["nonce"], 7);
    assert_eq!(decoded["hash"], signed["txHash"]);
    assert_eq!(
        decoded["signingHash"], signed["digest"],
        "the digest signed is the EIP-1559 signing hash"
    );
    // An EIP-191 message, recovered with k256 from a digest computed here.
    let signed = net.ok(
        "POST",
        &format!("/api/v1/wallets/{evm_id}/sign"),
        token,
        Some(json!({"message": "hello custos"})),
    );
    let digest = keccak(b"\x19Ethereum Signed Message:\n12hello custos");
    let r = unhex(signed["signature"]["r"].as_str().unwrap());
    let s = unhex(signed["signature"]["s"].as_str().unwrap());
    let signature = k256::ecdsa::Signature::from_scalars(
        <[u8; 32]>::try_from(r.as_slice()).unwrap(),
        <[u8; 32]>::try_from(s.as_slice()).unwrap(),
    )
    .unwrap();
    let v = signed["signature"]["v"].as_u64().unwrap();
    assert!(v == 27 || v == 28, "EIP-191 v is 27 or 28: {v}");
    let recovered = k256::ecdsa::VerifyingKey::recover_from_prehash(
        &digest,
        &signature,
        k256::ecdsa::RecoveryId::from_byte((v - 27) as u8).unwrap(),
    )
    .unwrap();
    assert_eq!(recovered.to_sec1_bytes().as_ref(), evm_key.as_slice());
    // A bare digest at an HD child: verifies under the child key the API
    // reports for that path.
    let child = net.ok(
        "GET",
        &format!("/api/v1/wallets/{evm_id}/address?path=m/0/5"),
        token,
        None,
    );
    let digest = [0x42u8; 32];
    let signed = net.ok(
        "POST",
        &format!("/api/v1/wallets/{evm_id}/sign"),
        token,
        Some(json!({"digest": format!("0x{}", hex::encode(digest)), "derivationPath": "m/0/5"})),
    );
    let der = unhex(signed["signature"]["der"].as_str().unwrap());
    let child_key =
        k256::ecdsa::VerifyingKey::from_sec1_bytes(&unhex(child["publicKey"].as_str().unwrap()))
            .unwrap();
    child_key
        .verify_prehash(&digest, &k256::ecdsa::Signature::from_der(&der).unwrap())
        .expect("k256 verifies the child-key signature");
    assert_eq!(
        child["address"].as_str().unwrap(),
        evm_address(&unhex(child["publicKey"].as_str().unwrap()))
    );

    // FROST BIP-340 with the Taproot tweak.
    let taproot = net.wallet(token, "btc-1", "frost-taproot", None);
    assert!(
        taproot["address"].as_str().unwrap().starts_with("bc1p"),
        "{taproot}"
    );
    let taproot_id = taproot["id"].as_str().unwrap();
    for path in ["", "m/3/9"] {
        let key = net.ok(
            "GET",
            &format!("/api/v1/wallets/{taproot_id}/address?path={path}"),
            token,
            None,
        );
        let message = [0x17u8; 32];
        let mut body = json!({"digest": hex::encode(message)});
        if !path.is_empty() {
            body["derivationPath"] = json!(path);
        }
        let signed = net.ok(
            "POST",
            &format!("/api/v1/wallets/{taproot_id}/sign"),
            token,
            Some(body),
        );
        let verifying =
            k256::schnorr::VerifyingKey::from_bytes(&unhex(key["publicKey"].as_str().unwrap()))
                .unwrap();
        let signature = k256::schnorr::Signature::try_from(
            unhex(signed["signature"].as_str().unwrap()).as_slice(),
        )
        .unwrap();
        verifying
            .verify_prehash(&message, &signature)
            .expect("k256 BIP-340 verifies");
    }

    // FROST Ed25519.
    let solana = net.wallet(token, "sol-1", "frost-ed25519", None);
    let solana_id = solana["id"].as_str().unwrap();
    let signed = net.ok(
        "POST",
        &format!("/api/v1/wallets/{solana_id}/sign"),
        token,
        Some(json!({"message": "aGVsbG8=", "encoding": "base64"})),
    );
    let key = ed25519_dalek::VerifyingKey::from_bytes(
        &unhex(solana["publicKey"].as_str().unwrap())
            .try_into()
            .unwrap(),
    )
    .unwrap();
    let signature = ed25519_dalek::Signature::from_bytes(
        &unhex(signed["signature"].as_str().unwrap())
            .try_into()
            .unwrap(),
    );
    key.verify_strict(b"hello", &signature)
        .expect("ed25519-dalek verifies");

    // One idempotency key, one request, one signature.
    let body = json!({"digest": hex::encode([9u8; 32]), "idempotencyKey": "order-1"});
    let first = net.ok(
        "POST",
        &format!("/api/v1/wallets/{solana_id}/sign"),
        token,
        Some(body.clone()),
    );
    let again = net.ok(
        "POST",
        &format!("/api/v1/wallets/{solana_id}/sign"),
        token,
        Some(body),
    );
    assert_eq!(first["requestId"], again["requestId"]);
    assert_eq!(first["signature"], again["signature"]);
    let (status, answer) = net.call(
        "POST",
        &format!("/api/v1/wallets/{solana_id}/sign"),
        Some(token),
        Some(json!({"digest": hex::encode([8u8; 32]), "idempotencyKey": "order-1"})),
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    // Bad signing input answers its code.
    for (body, code) in [
        (json!({"digest": "0x12"}), "invalid_digest"),
        (
            json!({"message": "x", "digest": hex::encode([1u8; 32])}),
            "invalid_request",
        ),
        (
            json!({"digest": hex::encode([1u8; 32]), "derivationPath": "m/0'"}),
            "invalid_derivation_path",
        ),
        (
            json!({"transaction": evm_transaction("1")}),
            "unsupported_payload",
        ),
        (
            json!({"digest": hex::encode([1u8; 32]), "colour": 1}),
            "invalid_body",
        ),
    ] {
        let (status, answer) = net.call(
            "POST",
            &format!("/api/v1/wallets/{solana_id}/sign"),
            Some(token),
            Some(body.clone()),
        );
        assert_eq!(
            answer["error"]["code"].as_str(),
            Some(code),
            "{body} -> {status} {answer}"
        );
    }
    let (status, answer) = net.call("POST", &format!("/api/v1/wallets/{evm_id}/sign"), Some(token), Some(json!({"transaction": {"chainId": "1", "nonce": "0", "to": "0x123", "value": "1", "gasLimit": "21000", "maxFeePerGas": "1", "maxPriorityFeePerGas": "1"}})));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("invalid_address")),
        "{answer}"
    );
}

fn policies_and_approvals_gate_signing(net: &Testnet) {
    let root = &net.root.token;
    let service = net.identity(root, "payments-svc", "service", None);
    let approver_1 = net.identity(root, "approver-1", "approver", None);
    let approver_2 = net.identity(root, "approver-2", "approver", None);
    let approver_mfa = net.identity(root, "approver-mfa", "approver", None);
    net.ok("POST", "/api/v1/policies", root, Some(json!({
        "name": "treasury-limits",
        "priority": 10,
        "rules": [
            {"action": "wallet.sign", "resource": "wallet:blocked-*", "effect": "deny"},
            {"action": "wallet.sign", "resource": "wallet:treasury*", "conditions": {"maxAmount": "1000000"}, "effect": "allow"},
            {"action": "wallet.sign", "resource": "wallet:mfa-*", "conditions": {"requireMFA": true}, "effect": "require_approval", "approvals": {"count": 1, "roles": ["approver"]}},
            {"action": "wallet.sign", "resource": "wallet:treasury*", "effect": "require_approval", "approvals": {"count": 2, "roles": ["approver"]}},
        ],
    })));
    let treasury = net.wallet(root, "treasury", "cggmp21", Some("ethereum"));
    let treasury = treasury["id"].as_str().unwrap().to_string();
    let blocked = net.wallet(root, "blocked-1", "frost-ed25519", None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mfa_wallet = net.wallet(root, "mfa-1", "frost-taproot", None)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sign = |token: &str, wallet: &str, body: Value| {
        net.call(
            "POST",
            &format!("/api/v1/wallets/{wallet}/sign"),
            Some(token),
            Some(body),
        )
    };

    // A deny rule.
    let (status, answer) = sign(&service.token, &blocked, json!({"message": "x"}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("policy_denied")),
        "{answer}"
    );
    // Within the limit: signed at once.
    let (status, answer) = sign(
        &service.token,
        &treasury,
        json!({"transaction": evm_transaction("1000")}),
    );
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("signed")),
        "{answer}"
    );
    // Over the limit: two approvals; the requester cannot approve.
    let (status, pending) = sign(
        root,
        &treasury,
        json!({"transaction": evm_transaction("5000000000000000000")}),
    );
    assert_eq!(
        (status, pending["status"].as_str()),
        (202, Some("pending_approval")),
        "{pending}"
    );
    let approval = pending["approvalId"].as_str().unwrap().to_string();
    let request = pending["requestId"].as_str().unwrap().to_string();
    let listed = net.ok(
        "GET",
        "/api/v1/approvals?status=pending",
        &approver_1.token,
        None,
    );
    let item = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == approval.as_str())
        .expect("listed");
    assert_eq!(item["required"]["count"], 2);
    assert_eq!(item["resource"], "wallet:treasury");
    let vote = |token: &str, approval: &str, body: Value| {
        net.call(
            "POST",
            &format!("/api/v1/approvals/{approval}/approve"),
            Some(token),
            Some(body),
        )
    };
    let (status, answer) = vote(root, &approval, json!({}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("self_approval"))
    );
    let (status, answer) = vote(&service.token, &approval, json!({}));
    assert_eq!(status, 403, "a service cannot approve: {answer}");
    let (status, answer) = vote(&approver_1.token, &approval, json!({}));
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("pending")),
        "{answer}"
    );
    let (status, answer) = vote(&approver_1.token, &approval, json!({}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("already_voted"))
    );
    assert_eq!(
        net.ok(
            "GET",
            &format!("/api/v1/signing-requests/{request}"),
            root,
            None
        )["status"],
        "pending_approval"
    );
    let (status, answer) = vote(&approver_2.token, &approval, json!({}));
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("approved")),
        "{answer}"
    );
    let done = net.wait_for(root, &request, &["signed", "failed", "rejected"]);
    assert_eq!(done["status"], "signed", "{done}");
    let decoded = eth_account_decode(done["rawTransaction"].as_str().unwrap());
    assert_eq!(decoded["value"], "5000000000000000000");

    // An approval cannot be stretched to another request: a second request
    // forced to "approved"/"queued" behind the API's back (no votes) is
    // refused when it is re-checked at execution.
    let (_, other) = sign(
        root,
        &treasury,
        json!({"transaction": evm_transaction("6000000000000000000")}),
    );
    let other_request = other["requestId"].as_str().unwrap().to_string();
    let other_approval = other["approvalId"].as_str().unwrap().to_string();
    assert_ne!(other_approval, approval);
    let (status, _) = vote(&approver_1.token, &approval, json!({}));
    assert_eq!(status, 409, "the first approval is used up");
    execute_sql(
        &net.database_url,
        "UPDATE approvals SET status = 'approved' WHERE id = $1",
        &[&other_approval],
    );
    execute_sql(
        &net.database_url,
        "UPDATE signing_requests SET status = 'queued' WHERE id = $1",
        &[&other_request],
    );
    let refused = net.wait_for(root, &other_request, &["signed", "failed", "rejected"]);
    assert_eq!(refused["status"], "rejected", "{refused}");
    assert_eq!(refused["error"]["code"], "approval_invalid", "{refused}");

    // requireMFA: the approval needs a valid TOTP of the approver.
    let (status, pending) = sign(
        &service.token,
        &mfa_wallet,
        json!({"digest": hex::encode([5u8; 32])}),
    );
    assert_eq!(status, 202, "{pending}");
    let mfa_approval = pending["approvalId"].as_str().unwrap().to_string();
    let (status, answer) = vote(&approver_1.token, &mfa_approval, json!({}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("mfa_required")),
        "{answer}"
    );
    let enrolled = net.ok(
        "POST",
        &format!("/api/v1/identities/{}/mfa", approver_mfa.id),
        &approver_mfa.token,
        None,
    );
    let uri = enrolled["otpauthUri"].as_str().unwrap();
    // The enrolment takes effect once confirmed by a first code, which
    // uses up the current time step: the vote gives the next one.
    net.ok(
        "POST",
        &format!("/api/v1/identities/{}/mfa/confirm", approver_mfa.id),
        &approver_mfa.token,
        Some(json!({"code": totp_code(uri, now_seconds())})),
    );
    let wrong = format!(
        "{:06}",
        (totp_code(uri, now_seconds()).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let (status, answer) = vote(&approver_mfa.token, &mfa_approval, json!({"totp": wrong}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("invalid_totp")),
        "{answer}"
    );
    let (status, answer) = vote(
        &approver_mfa.token,
        &mfa_approval,
        json!({"totp": totp_code(uri, now_seconds() + 30)}),
    );
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("approved")),
        "{answer}"
    );
    let done = net.wait_for(
        &service.token,
        pending["requestId"].as_str().unwrap(),
        &["signed", "failed", "rejected"],
    );
    assert_eq!(done["status"], "signed", "{done}");

    // An expired approval does not execute: refused when voted on, and the
    // worker expires what nobody votes on.
    let (_, late) = sign(
        &service.token,
        &treasury,
        json!({"transaction": evm_transaction("7000000000000000000")}),
    );
    let late_approval = late["approvalId"].as_str().unwrap().to_string();
    execute_sql(
        &net.database_url,
        "UPDATE approvals SET expires_at = 0 WHERE id = $1",
        &[&late_approval],
    );
    let (status, answer) = vote(&approver_1.token, &late_approval, json!({}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("approval_expired")),
        "{answer}"
    );
    let late_request = net.wait_for(
        &service.token,
        late["requestId"].as_str().unwrap(),
        &["rejected", "signed", "failed"],
    );
    assert_eq!(late_request["status"], "rejected");
    assert_eq!(late_request["error"]["code"], "approval_expired");
    let (_, idle) = sign(
        &service.token,
        &treasury,
        json!({"transaction": evm_transaction("8000000000000000000")}),
    );
    execute_sql(
        &net.database_url,
        "UPDATE approvals SET expires_at = 0 WHERE id = $1",
        &[idle["approvalId"].as_str().unwrap()],
    );
    let idle_request = net.wait_for(
        &service.token,
        idle["requestId"].as_str().unwrap(),
        &["rejected", "signed", "failed"],
    );
    assert_eq!(
        idle_request["error"]["code"], "approval_expired",
        "{idle_request}"
    );
    // A rejection ends the request.
    let (_, rejected) = sign(
        &service.token,
        &treasury,
        json!({"transaction": evm_transaction("9000000000000000000")}),
    );
    net.ok(
        "POST",
        &format!(
            "/api/v1/approvals/{}/reject",
            rejected["approvalId"].as_str().unwrap()
        ),
        &approver_2.token,
        Some(json!({})),
    );
    assert_eq!(
        net.ok(
            "GET",
            &format!(
                "/api/v1/signing-requests/{}",
                rejected["requestId"].as_str().unwrap()
            ),
            root,
            None
        )["status"],
        "rejected"
    );
}

fn another_org_gets_nothing(net: &Testnet) {
    let root = &net.root.token;
    let wallet = net.wallet(root, "org-a-wallet", "frost-ed25519", None);
    let wallet = wallet["id"].as_str().unwrap().to_string();
    let signed = net.ok(
        "POST",
        &format!("/api/v1/wallets/{wallet}/sign"),
        root,
        Some(json!({"message": "a"})),
    );
    let request = signed["requestId"].as_str().unwrap().to_string();
    let approvals = net.ok("GET", "/api/v1/approvals", root, None);
    let approval = approvals["items"][0]["id"].as_str().unwrap().to_string();
    let org_b = net.ok("POST", "/api/v1/orgs", root, Some(json!({"name": "org-b"})));
    let admin_b = net.identity(
        root,
        "admin-b",
        "admin",
        Some(org_b["id"].as_str().unwrap()),
    );
    let token = Some(admin_b.token.as_str());
    for (method, path, body) in [
        ("GET", format!("/api/v1/wallets/{wallet}"), None),
        (
            "GET",
            format!("/api/v1/wallets/{wallet}/address?path=m/1"),
            None,
        ),
        (
            "POST",
            format!("/api/v1/wallets/{wallet}/sign"),
            Some(json!({"message": "b"})),
        ),
        (
            "POST",
            format!("/api/v1/wallets/{wallet}/reshare"),
            Some(json!({"threshold": 2, "nodes": ["node-1", "node-2"]})),
        ),
        ("GET", format!("/api/v1/signing-requests/{request}"), None),
        ("GET", format!("/api/v1/approvals/{approval}"), None),
        (
            "POST",
            format!("/api/v1/approvals/{approval}/approve"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/api/v1/approvals/{approval}/reject"),
            Some(json!({})),
        ),
    ] {
        let (status, answer) = net.call(method, &path, token, body);
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{method} {path}: {answer}"
        );
    }
    for path in ["/api/v1/wallets", "/api/v1/approvals"] {
        assert_eq!(
            net.ok("GET", path, &admin_b.token, None)["items"],
            json!([]),
            "{path}"
        );
    }
    let audit = net.ok("GET", "/api/v1/audit?limit=1000", &admin_b.token, None);
    let text = audit.to_string();
    assert!(!text.contains(&wallet) && !text.contains(&request) && !text.contains("org-a-wallet"));
    // Org B's own wallet works, and org A cannot see it either.
    let wallet_b = net.wallet(&admin_b.token, "org-a-wallet", "frost-ed25519", None);
    let (status, _) = net.call(
        "GET",
        &format!("/api/v1/wallets/{}", wallet_b["id"].as_str().unwrap()),
        Some(root),
        None,
    );
    assert_eq!(status, 404);
}

fn resharing_keeps_the_address(net: &Testnet) {
    let root = &net.root.token;
    let admin_2 = net.identity(root, "admin-2", "admin", None);
    let wallet = net.wallet(root, "vault-1", "frost-taproot", None);
    let id = wallet["id"].as_str().unwrap().to_string();
    let (status, pending) = net.call(
        "POST",
        &format!("/api/v1/wallets/{id}/reshare"),
        Some(root),
        Some(json!({"threshold": 3, "nodes": ["node-1", "node-2", "node-3"]})),
    );
    assert_eq!(
        (status, pending["status"].as_str()),
        (202, Some("pending_approval")),
        "{pending}"
    );
    let approval = pending["approvalId"].as_str().unwrap();
    let approved = net.ok(
        "POST",
        &format!("/api/v1/approvals/{approval}/approve"),
        &admin_2.token,
        Some(json!({})),
    );
    assert_eq!(approved["status"], "approved");
    let done = net.wait_for(
        root,
        pending["requestId"].as_str().unwrap(),
        &["signed", "failed", "rejected"],
    );
    assert_eq!(done["status"], "signed", "{done}");
    let after = net.ok("GET", &format!("/api/v1/wallets/{id}"), root, None);
    assert_eq!(after["address"], wallet["address"]);
    assert_eq!(after["threshold"], 3);
    assert_eq!(after["generation"], 1);
    let message = [0x33u8; 32];
    let signed = net.ok(
        "POST",
        &format!("/api/v1/wallets/{id}/sign"),
        root,
        Some(json!({"digest": hex::encode(message)})),
    );
    let verifying =
        k256::schnorr::VerifyingKey::from_bytes(&unhex(after["publicKey"].as_str().unwrap()))
            .unwrap();
    let signature =
        k256::schnorr::Signature::try_from(unhex(signed["signature"].as_str().unwrap()).as_slice())
            .unwrap();
    verifying
        .verify_prehash(&message, &signature)
        .expect("the reshared key signs under the same key");
}

fn audit_chain_verifies(net: &Testnet) {
    let report = net.ok("GET", "/api/v1/audit/verify", &net.root.token, None);
    assert_eq!(report["valid"], true, "{report}");
    assert!(report["entries"].as_i64().unwrap() > 50, "{report}");
    let signs = net.ok(
        "GET",
        "/api/v1/audit?action=wallet.sign*&limit=1000",
        &net.root.token,
        None,
    );
    assert!(signs["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|item| item["action"] == "wallet.sign.execute"));
    let output = std::process::Command::new(bin_dir().join("custos"))
        .args(["audit", "verify", "--database-url", &net.database_url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // No secret reached a log: not the root secret, not a bearer token.
    for name in ["control-plane", "node-1", "node-2", "node-3"] {
        let log = net.log(name);
        assert!(!log.is_empty(), "{name} logs");
        assert!(
            !log.contains(&net.root.client_secret),
            "{name} logged a client secret"
        );
        assert!(
            !log.contains(&net.root.token),
            "{name} logged a bearer token"
        );
        assert!(
            !log.contains("cst_"),
            "{name} logged something token-shaped"
        );
    }
}
