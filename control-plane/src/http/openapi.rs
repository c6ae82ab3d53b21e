//! The OpenAPI 3.1 document served at `GET /api/v1/openapi.json`.
//!
//! Written from the same table as the router (`api::app`): every route
//! appears here with its method, its request body schema and its answers. A
//! test checks that every routed path is documented.

use serde_json::{json, Map, Value};

/// `(method, path, summary, request schema, success status)`.
pub const OPERATIONS: &[(&str, &str, &str, Option<&str>, u16)] = &[
    (
        "get",
        "/api/v1/sys/health",
        "Health (answers while sealed)",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/sys/seal-status",
        "Seal status: initialized, sealed, threshold, progress (answers while sealed)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/sys/init",
        "Initialize once: unseal shares (or HSM) and root credentials, shown once",
        Some("InitRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/sys/unseal",
        "Give one unseal share (or reset the progress)",
        Some("UnsealRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/sys/seal",
        "Seal: forget the master key (platform admin)",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/sys/coordinator-key",
        "The coordinator's public key, which signer nodes pin (answers once unsealed)",
        None,
        200,
    ),
    ("get", "/api/v1/openapi.json", "This document", None, 200),
    ("get", "/metrics", "Prometheus metrics", None, 200),
    (
        "post",
        "/api/v1/auth/token",
        "Trade client credentials for a bearer token",
        Some("TokenRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/orgs",
        "Create an org (platform admin)",
        Some("OrgRequest"),
        201,
    ),
    (
        "post",
        "/api/v1/identities",
        "Create a machine identity (secret shown once; 202 when it waits for an approval)",
        Some("IdentityRequest"),
        201,
    ),
    (
        "get",
        "/api/v1/identities",
        "List identities of the org",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/identities/{id}",
        "Get an identity (status, role, MFA; never a secret)",
        None,
        200,
    ),
    (
        "put",
        "/api/v1/identities/{id}",
        "Change an identity's role (202 when it waits for an approval)",
        Some("IdentityUpdateRequest"),
        200,
    ),
    (
        "delete",
        "/api/v1/identities/{id}",
        "Delete an identity and its tokens (202 when it waits for approvals)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/identities/{id}/disable",
        "Disable an identity: no login, its tokens revoked at once",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/identities/{id}/enable",
        "Enable a disabled identity (202 when it waits for an approval)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/identities/{id}/rotate-secret",
        "Replace the caller's own client secret (new secret shown once; its tokens revoked)",
        Some("RotateSecretRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/identities/{id}/credentials",
        "The first client secret of an identity created after an approval, once, to its creator",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/identities/{id}/tokens",
        "List an identity's active tokens (ids, times, addresses; never a token)",
        None,
        200,
    ),
    (
        "delete",
        "/api/v1/identities/{id}/tokens",
        "Revoke every token of an identity",
        None,
        200,
    ),
    (
        "delete",
        "/api/v1/identities/{id}/tokens/{tokenId}",
        "Revoke one token of an identity",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/identities/{id}/mfa",
        "Start a TOTP enrolment (pending until confirmed; a current code to re-enrol)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/identities/{id}/mfa/confirm",
        "Confirm a TOTP enrolment with its first code",
        Some("MfaConfirmRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/identities/{id}/mfa/reset",
        "Remove an identity's MFA so it can enrol again (202 when it waits for an approval)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/policies",
        "Create a policy",
        Some("PolicyRequest"),
        201,
    ),
    (
        "get",
        "/api/v1/policies",
        "List policies in evaluation order",
        None,
        200,
    ),
    ("get", "/api/v1/policies/{id}", "Get a policy", None, 200),
    (
        "put",
        "/api/v1/policies/{id}",
        "Replace a policy's rules",
        Some("PolicyRequest"),
        200,
    ),
    (
        "get",
        "/api/v1/approvals",
        "List approvals (?status=pending)",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/approvals/{id}",
        "Get an approval",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/approvals/{id}/approve",
        "Approve (TOTP when the rule requires MFA)",
        Some("VoteRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/approvals/{id}/reject",
        "Reject",
        Some("VoteRequest"),
        200,
    ),
    (
        "get",
        "/api/v1/audit",
        "List audit records (filters, cursor)",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/audit/verify",
        "Recompute the org's audit hash chain",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/nodes",
        "Signer nodes and their health",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/nodes/committees",
        "ECDSA committees and their aux-info preparation: ready, runs tried, the last failure",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/nodes/committees",
        "Prepare ECDSA aux info for a committee (minutes; a failed run is tried again under a fresh run id)",
        Some("CommitteeRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/wallets",
        "Create an MPC wallet (DKG)",
        Some("WalletRequest"),
        201,
    ),
    ("get", "/api/v1/wallets", "List wallets", None, 200),
    ("get", "/api/v1/wallets/{id}", "Get a wallet", None, 200),
    (
        "get",
        "/api/v1/wallets/{id}/address",
        "Child address (?path=m/0/5, non-hardened)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/wallets/{id}/sign",
        "Sign a transaction, message or digest under policy",
        Some("SignRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/wallets/{id}/reshare",
        "Reshare to other nodes or threshold (approval)",
        Some("ReshareRequest"),
        202,
    ),
    (
        "post",
        "/api/v1/orgs/{id}/policies/reseal",
        "Reseal an org's policies after a review (platform admin; the break-glass when its policy rows were changed behind the control plane's back)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/wallets/{id}/freeze",
        "Freeze a wallet at once: it signs and reshares nothing, approved requests included",
        Some("FreezeRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/wallets/{id}/unfreeze",
        "Unfreeze a wallet (202 with an approval under the default policy)",
        None,
        202,
    ),
    (
        "post",
        "/api/v1/wallets/{id}/backups",
        "Back up the wallet's shares (sealed for the operators' recovery keys; the other half wrapped in the HSM)",
        Some("BackupRequest"),
        201,
    ),
    (
        "get",
        "/api/v1/wallets/{id}/backups",
        "The wallet's share backups (metadata only)",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/wallets/{id}/backups/{backup}",
        "One share backup (metadata only)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/wallets/{id}/backups/{backup}/restore",
        "Restore a share into its node (202 with an approval under the default policy)",
        Some("RestoreRequest"),
        202,
    ),
    (
        "get",
        "/api/v1/signing-requests/{id}",
        "A signing request's progress",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/transit/keys",
        "Create a transit key (never exportable)",
        Some("TransitKeyRequest"),
        201,
    ),
    (
        "get",
        "/api/v1/transit/keys/{name}",
        "A transit key",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/transit/keys/{name}/rotate",
        "Rotate a transit key (202 with an approval under the default policy)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/transit/keys/{name}/config",
        "Set a transit key's minDecryptionVersion",
        Some("TransitConfigRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/transit/encrypt",
        "Encrypt one plaintext or a batch (vault:v<N>: ciphertexts)",
        Some("TransitEncryptRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/transit/decrypt",
        "Decrypt one ciphertext or a batch",
        Some("TransitDecryptRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/transit/rewrap",
        "Re-encrypt under the latest version (never returns plaintext)",
        Some("TransitRewrapRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/transit/datakey",
        "A data key: plaintext and wrapped, or wrapped only (?wrappedOnly=true)",
        Some("TransitDatakeyRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/transit/sign",
        "Sign base64 input",
        Some("TransitSignRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/transit/verify",
        "Verify a signature",
        Some("TransitSignRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/transit/hmac",
        "HMAC of base64 input",
        Some("TransitHmacRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/secrets",
        "Create a secret (version 1)",
        Some("SecretCreateRequest"),
        201,
    ),
    (
        "get",
        "/api/v1/secrets",
        "Secrets by ?environment= and ?tags=a,b (metadata, never values)",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/secrets/{name}",
        "Read a secret's value (?environment=, ?version=)",
        None,
        200,
    ),
    (
        "put",
        "/api/v1/secrets/{name}",
        "Write a new version (cas: the version it replaces); 202 with an approval when the policy asks",
        Some("SecretUpdateRequest"),
        200,
    ),
    (
        "delete",
        "/api/v1/secrets/{name}",
        "Soft-delete a secret (?environment=); 202 with an approval under the default policy",
        None,
        202,
    ),
    (
        "get",
        "/api/v1/secrets/{name}/versions",
        "A secret's versions (?environment=)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/secrets/{name}/rotate",
        "Rotate: a new version, optionally announced to a signed webhook",
        Some("SecretRotateRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/secrets/{name}/restore",
        "Undo a soft delete",
        Some("SecretTargetRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/secrets/{name}/destroy",
        "Destroy versions (or the whole secret) for good; 202 with an approval under the default policy",
        Some("SecretTargetRequest"),
        202,
    ),
    (
        "post",
        "/api/v1/keys",
        "Create a registry key (software or HSM; client-side encryption keys with a subject)",
        Some("KeyCreateRequest"),
        201,
    ),
    ("get", "/api/v1/keys", "The org's registry keys", None, 200),
    (
        "get",
        "/api/v1/keys/{id}",
        "A registry key (with its latest public key)",
        None,
        200,
    ),
    (
        "delete",
        "/api/v1/keys/{id}",
        "Destroy (crypto-shred) a key; 202 with an approval under the default policy",
        None,
        202,
    ),
    (
        "get",
        "/api/v1/keys/{id}/public-key",
        "A version's public key (?version=), PEM and DER",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/keys/{id}/rotate",
        "Rotate: a new version (202 with an approval under the default policy)",
        None,
        200,
    ),
    (
        "post",
        "/api/v1/keys/{id}/sign",
        "Sign a message or a SHA-256 digest",
        Some("KeySignRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/keys/{id}/verify",
        "Verify a signature",
        Some("KeySignRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/keys/{id}/encrypt",
        "Encrypt (custos:v<N>: ciphertexts)",
        Some("KeyEncryptRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/keys/{id}/decrypt",
        "Decrypt (also a client's RSA-OAEP ciphertext, bare base64)",
        Some("KeyDecryptRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/keys/{id}/wrap",
        "Wrap a data key",
        Some("KeyWrapRequest"),
        200,
    ),
    (
        "post",
        "/api/v1/keys/{id}/unwrap",
        "Unwrap a data key",
        Some("KeyUnwrapRequest"),
        200,
    ),
    (
        "get",
        "/api/v1/operations/{id}",
        "An operation stored for approval: status, result or error",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/webhooks/signing-secret",
        "The org's webhook signing secret (admin)",
        None,
        200,
    ),
    (
        "get",
        "/api/v1/webhooks/deliveries/{id}",
        "A webhook delivery: status and attempts",
        None,
        200,
    ),
];

fn string() -> Value {
    json!({"type": "string"})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": properties})
}

/// The answer of `GET /api/v1/audit/verify` (`audit::VerifyReport`).
fn verify_report() -> Value {
    let integer = || json!({"type": "integer"});
    let checkpoint = object(
        &["number", "seq", "createdAt", "reason"],
        json!({"number": integer(), "seq": integer(), "createdAt": integer(), "reason": {"type": "string", "enum": ["interval", "seal"]}}),
    );
    object(
        &[
            "valid",
            "entries",
            "headHash",
            "checkpoints",
            "checkpointKey",
            "signaturesChecked",
        ],
        json!({
            "valid": {"type": "boolean"},
            "entries": integer(),
            "headHash": string(),
            "firstBroken": object(&["org", "seq", "reason", "message"], json!({
                "org": string(), "seq": integer(),
                "reason": {"type": "string", "enum": [
                    "seq_gap", "prev_hash_mismatch", "hash_mismatch", "head_mismatch", "truncated",
                    "checkpoint_mismatch", "checkpoint_signature_invalid", "checkpoint_missing",
                    "checkpoint_link_broken", "checkpoint_replaced", "checkpoint_key_missing",
                ]},
                "message": string(),
                "checkpoint": checkpoint.clone(),
            })),
            "checkpoints": integer(),
            "lastCheckpoint": checkpoint,
            "checkpointKey": {"type": ["string", "null"]},
            "signaturesChecked": {"type": "boolean"},
        }),
    )
}

fn schemas() -> Value {
    let key_usage = json!({"oneOf": [
        {"type": "string", "enum": ["ENCRYPT_DECRYPT", "SIGN_VERIFY", "WRAP_UNWRAP"]},
        {"type": "array", "minItems": 1, "items": {"type": "string", "enum": ["encrypt", "decrypt", "sign", "verify", "wrap", "unwrap"]}, "description": "one pair's operations"},
    ]});
    let key_rotation = json!({"oneOf": [
        object(&["periodDays"], json!({"periodDays": {"type": "integer", "minimum": 1, "maximum": 3650}})),
        {"type": "string", "description": "a duration of whole days: 90d, 2w, 720h"},
    ]});
    // An amount: decimal base units, or a whole JSON number below 2^53.
    let amount = json!({"oneOf": [{"type": "string", "pattern": "^[0-9]{1,78}$"}, {"type": "integer", "minimum": 0, "maximum": 9_007_199_254_740_991_u64}]});
    let rule = object(
        &["action", "resource"],
        json!({
            "action": {"type": "string", "description": "`<kind>.<verb>`, a glob, or a verb alone (`sign`), which takes the resource's kind"},
            "resource": string(),
            "effect": {"type": "string", "enum": ["allow", "deny", "require_approval"], "description": "allow when absent"},
            "approvals": object(&["count", "roles"], json!({"count": {"type": "integer", "minimum": 1}, "roles": {"type": "array", "items": string()}})),
            "conditions": object(&[], json!({
                "maxAmount": amount.clone(), "allowedIPs": {"type": "array", "items": string()},
                "requireMFA": {"type": "boolean"},
                "timeWindow": object(&["start", "end"], json!({"days": {"type": "array", "items": string()}, "start": string(), "end": string()})),
                "destinations": {"type": "array", "items": string()},
                "minAmount": amount,
                "assets": {"type": "array", "items": string()},
                "payloadKinds": {"type": "array", "items": {"type": "string", "enum": ["transaction", "message", "digest"]}},
            })),
        }),
    );
    json!({
        "Error": object(&["error"], json!({"error": object(&["code", "message", "requestId"], json!({"code": string(), "message": string(), "requestId": string()}))})),
        "TokenRequest": object(&["clientId", "clientSecret"], json!({"clientId": string(), "clientSecret": string()})),
        "OrgRequest": object(&["name"], json!({"name": string()})),
        "IdentityRequest": object(&["name", "role"], json!({"name": string(), "role": {"type": "string", "enum": ["admin", "operator", "approver", "service", "auditor"]}, "scopes": {"type": "array", "items": string()}, "orgId": string()})),
        "PolicyRule": rule,
        "PolicyRequest": object(&["name", "rules"], json!({"name": string(), "priority": {"type": "integer"}, "rules": {"type": "array", "items": {"$ref": "#/components/schemas/PolicyRule"}}})),
        "VoteRequest": object(&[], json!({"totp": string(), "comment": string()})),
        "CommitteeRequest": object(&["nodes"], json!({"nodes": {"type": "array", "items": string()}})),
        "WalletRequest": object(&["name", "protocol", "threshold"], json!({
            "name": string(), "protocol": {"type": "string", "enum": ["cggmp21", "frost-taproot", "frost-ed25519"]},
            "chain": {"type": "string", "enum": ["ethereum", "polygon", "bitcoin", "bitcoin-testnet", "solana"]},
            "threshold": {"type": "integer", "minimum": 2}, "parties": {"type": "integer", "minimum": 2},
            "nodes": {"type": "array", "items": string()},
        })),
        "EvmTransaction": object(&["chainId", "nonce", "to", "value", "gasLimit", "maxFeePerGas", "maxPriorityFeePerGas"], json!({
            "chainId": string(), "nonce": string(), "to": string(), "value": string(), "data": string(),
            "gasLimit": string(), "maxFeePerGas": string(), "maxPriorityFeePerGas": string(),
        })),
        "SignRequest": object(&[], json!({
            "transaction": {"$ref": "#/components/schemas/EvmTransaction"}, "message": string(),
            "encoding": {"type": "string", "enum": ["utf8", "hex", "base64"]}, "digest": string(),
            "derivationPath": string(), "idempotencyKey": string(),
        })),
        "InitRequest": object(&[], json!({"shares": {"type": "integer", "minimum": 2, "maximum": 255}, "threshold": {"type": "integer", "minimum": 2, "maximum": 255}, "hsm": {"type": "boolean"}})),
        "UnsealRequest": object(&[], json!({"share": string(), "reset": {"type": "boolean"}})),
        "TransitKeyRequest": object(&["name"], json!({"name": string(), "type": {"type": "string", "enum": ["aes256-gcm96", "chacha20-poly1305", "hmac", "ed25519", "ecdsa-p256", "ecdsa-secp256k1"]}, "exportable": {"type": "boolean"}})),
        "TransitEncryptRequest": object(&["keyName"], json!({"keyName": string(), "plaintext": string(), "context": string(), "encoding": {"type": "string", "enum": ["utf8", "base64"]}, "batch": {"type": "array", "items": object(&["plaintext"], json!({"plaintext": string(), "context": string()}))}})),
        "TransitDecryptRequest": object(&["keyName"], json!({"keyName": string(), "ciphertext": string(), "context": string(), "encoding": {"type": "string", "enum": ["utf8", "base64"]}, "batch": {"type": "array", "items": object(&["ciphertext"], json!({"ciphertext": string(), "context": string()}))}})),
        "TransitRewrapRequest": object(&["keyName", "ciphertext"], json!({"keyName": string(), "ciphertext": string(), "context": string()})),
        "TransitDatakeyRequest": object(&["keyName"], json!({"keyName": string(), "bits": {"type": "integer", "enum": [128, 256, 512]}, "context": string()})),
        "TransitSignRequest": object(&["keyName", "input"], json!({"keyName": string(), "input": string(), "hashAlgorithm": {"type": "string", "enum": ["sha2-256", "sha2-384", "sha2-512", "none"]}, "prehashed": {"type": "boolean"}, "marshaling": {"type": "string", "enum": ["asn1", "jws"]}, "signature": string()})),
        "TransitHmacRequest": object(&["keyName", "input"], json!({"keyName": string(), "input": string(), "algorithm": {"type": "string", "enum": ["sha2-256", "sha2-384", "sha2-512"]}})),
        "TransitConfigRequest": object(&["minDecryptionVersion"], json!({"minDecryptionVersion": {"type": "integer", "minimum": 1}})),
        "SecretCreateRequest": object(&["name", "value", "environment"], json!({"name": string(), "value": string(), "environment": string(), "tags": {"type": "array", "items": string()}})),
        "SecretUpdateRequest": object(&["value", "environment"], json!({"value": string(), "environment": string(), "cas": {"type": "integer", "minimum": 1}, "tags": {"type": "array", "items": string()}})),
        "SecretRotateRequest": object(&["newValue", "environment"], json!({"newValue": string(), "environment": string(), "notifyWebhook": string(), "cas": {"type": "integer", "minimum": 1}})),
        "SecretTargetRequest": object(&["environment"], json!({"environment": string(), "versions": {"type": "array", "items": {"type": "integer", "minimum": 1}}})),
        "KeyCreateRequest": object(&["type", "usage"], json!({
            "name": string(), "type": {"type": "string", "enum": ["AES_256", "ECDSA_P256", "ECDSA_SECP256K1", "ED25519", "RSA_2048", "RSA_3072"]},
            "usage": key_usage,
            "rotation": key_rotation,
            "backend": {"type": "string", "enum": ["software", "hsm"]},
            "purpose": {"type": "string", "enum": ["client_side_encryption"]}, "subject": string(),
            "expiresInDays": {"type": "integer", "minimum": 1},
        })),
        "KeySignRequest": object(&[], json!({"message": string(), "digest": string(), "encoding": {"type": "string", "enum": ["utf8", "base64", "hex"]}, "signature": string(), "version": {"type": "integer"}, "algorithm": {"type": "string", "description": "the key's algorithm (ECDSA_SHA_256; ECDSA_SHA256 too): refused when the key signs another way"}})),
        "KeyEncryptRequest": object(&["plaintext"], json!({"plaintext": string(), "encoding": {"type": "string", "enum": ["utf8", "base64", "hex"]}, "context": string()})),
        "KeyDecryptRequest": object(&["ciphertext"], json!({"ciphertext": string(), "encoding": {"type": "string", "enum": ["utf8", "base64"]}, "context": string(), "version": {"type": "integer"}})),
        "KeyWrapRequest": object(&["key"], json!({"key": string(), "context": string()})),
        "KeyUnwrapRequest": object(&["wrapped"], json!({"wrapped": string(), "context": string()})),
        "BackupRequest": object(&[], json!({"nodes": {"type": "array", "items": string()}})),
        "RestoreRequest": object(&[], json!({"node": string()})),
        "FreezeRequest": object(&[], json!({"reason": string()})),
        "VerifyReport": verify_report(),
        "ReshareRequest": object(&["threshold", "nodes"], json!({"threshold": {"type": "integer", "minimum": 2}, "nodes": {"type": "array", "items": string()}, "idempotencyKey": string()})),
    })
}

/// Adds the request bodies of the identity routes (`api::identities`);
/// beside the others' table, which is at the `json!` macro's recursion
/// limit.
fn with_identity_schemas(mut schemas: Value) -> Value {
    let role =
        json!({"type": "string", "enum": ["admin", "operator", "approver", "service", "auditor"]});
    schemas["IdentityUpdateRequest"] = object(&["role"], json!({"role": role}));
    schemas["RotateSecretRequest"] = object(
        &["clientSecret"],
        json!({"clientSecret": string(), "totp": string()}),
    );
    schemas["MfaConfirmRequest"] = object(&["code"], json!({"code": string()}));
    schemas
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, request, status) in OPERATIONS {
        let mut operation = json!({
            "summary": summary,
            "responses": {
                status.to_string(): {"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        // The answers described so far: the audit verify report.
        if *path == "/api/v1/audit/verify" {
            operation["responses"][status.to_string()]["content"]["application/json"]["schema"] =
                json!({"$ref": "#/components/schemas/VerifyReport"});
        }
        if let Some(schema) = request {
            operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        let public = matches!(
            *path,
            "/api/v1/sys/health"
                | "/api/v1/sys/seal-status"
                | "/api/v1/sys/init"
                | "/api/v1/sys/unseal"
                | "/api/v1/sys/coordinator-key"
                | "/api/v1/openapi.json"
                | "/metrics"
                | "/api/v1/auth/token"
        );
        if !public {
            operation["security"] = json!([{"bearer": []}]);
        }
        let parameters: Vec<Value> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{').and_then(|name| name.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Custos API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": with_identity_schemas(schemas()),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}
