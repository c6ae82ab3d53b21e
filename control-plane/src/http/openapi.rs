//! The OpenAPI 3.1 document served at `GET /api/v1/openapi.json`.
//!
//! Generated, never written by hand. Every route is registered with
//! `utoipa_axum::routes!` from its handler's `#[utoipa::path]` annotation
//! (method, path, parameters, the request body's type, the success
//! answers), so a route cannot be served without its entry nor documented
//! without being served. Request and answer types derive
//! `utoipa::ToSchema` beside the serde attributes that parse them
//! (`deny_unknown_fields` becomes `additionalProperties: false`, renames
//! and defaults follow serde). [`finish`] then adds what the middleware
//! gives every operation alike: the security requirement, and the error
//! answers with their stable codes ([`ERROR_CODES`], one shared response per
//! status).

use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde_json::{json, Value};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::kernel::state::AppState;

/// A router that documents what it routes.
pub type ApiRouter = OpenApiRouter<Arc<AppState>>;

/// The document's frame: its title, tags and shared schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custos API",
        description = "Custody control plane: identities, policies, approvals, audit, \
            threshold wallets, transit encryption, secrets and the key registry. Every \
            error answer is `{\"error\": {code, message, requestId}}` with a stable code."
    ),
    components(schemas(ErrorAnswer, Pending)),
    tags(
        (name = "sys", description = "Initialisation, unsealing, health, metrics and this document"),
        (name = "identities", description = "Tokens, machine identities and people, MFA"),
        (name = "orgs", description = "Orgs and their policies"),
        (name = "approvals", description = "Approvals and the operations they release"),
        (name = "audit", description = "The audit chain, its filters and its verification"),
        (name = "wallets", description = "Threshold wallets, signing requests, resharing"),
        (name = "backups", description = "HSM-wrapped backups of key shares"),
        (name = "nodes", description = "Signer nodes and their committees"),
        (name = "transit", description = "Encryption as a service"),
        (name = "vault-transit", description = "The Vault-compatible transit routes (X-Vault-Token)"),
        (name = "secrets", description = "Versioned secrets per environment"),
        (name = "keys", description = "The key registry"),
        (name = "webhooks", description = "Webhook deliveries and their signing secret"),
    )
)]
pub struct Base;

/// Every error answer: `{"error": {code, message, requestId}}`.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorAnswer {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ErrorDetail {
    /// Stable code (the responses of each status list theirs).
    code: String,
    /// For people; may change between versions.
    message: String,
    /// The request's id, also in the `x-request-id` header and the audit.
    request_id: String,
}

/// The answer of a change that waits for an approval (`202`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    /// Always `pending_approval`.
    #[schema(pattern = "^pending_approval$")]
    status: String,
    /// `GET /api/v1/operations/{id}` follows it.
    operation_id: String,
    /// The approval to vote on.
    approval_id: String,
}

/// A schema written as JSON, for the few fields whose serde parser accepts
/// more than one shape (`schema_with`).
pub fn schema_from(value: Value) -> RefOr<Schema> {
    serde_json::from_value(value).expect("a valid schema literal")
}

/// Operations that need no token.
const PUBLIC: &[&str] = &[
    "/api/v1/sys/health",
    "/api/v1/sys/seal-status",
    "/api/v1/sys/init",
    "/api/v1/sys/unseal",
    "/api/v1/sys/coordinator-key",
    "/api/v1/openapi.json",
    "/metrics",
    "/api/v1/auth/token",
];

/// Reasons of each error status, for its shared response.
const STATUSES: &[(u16, &str, &str)] = &[
    (400, "BadRequest", "The request cannot be read"),
    (
        401,
        "Unauthorized",
        "No token, or a token that is invalid or expired",
    ),
    (
        403,
        "Forbidden",
        "Role, policy, MFA or separation of duties refuses it",
    ),
    (
        404,
        "NotFound",
        "Nothing of that name or id in the caller's org",
    ),
    (409, "Conflict", "The state does not allow it now"),
    (410, "Gone", "Deleted, destroyed or deprecated"),
    (
        413,
        "PayloadTooLarge",
        "The body or a value is over its limit",
    ),
    (
        415,
        "UnsupportedMediaType",
        "Send JSON with content-type application/json",
    ),
    (
        422,
        "Unprocessable",
        "The request is read but a value is not valid",
    ),
    (
        429,
        "TooManyRequests",
        "Over a rate limit; `Retry-After` says when to try again",
    ),
    (
        502,
        "BadGateway",
        "The signer nodes answered with a failure",
    ),
    (
        503,
        "Unavailable",
        "Sealed, or a dependency (nodes, HSM) is not available",
    ),
    (504, "Timeout", "The request took too long"),
];

/// The stable error codes by status. A test reads the sources for every
/// code an error is built with and finds it here
/// (`control-plane/tests/architecture.rs`); the codes of the domain errors
/// (`code()` of transit's, the key registry's, the HSM's, the chains', the
/// policy's and the identities' errors) are listed under the status their
/// conversion gives them.
pub const ERROR_CODES: &[(u16, &[&str])] = &[
    (
        400,
        &[
            "bad_body",
            "bad_request",
            "ciphertext_truncated",
            "crypto_error",
            "decrypt_failed",
            "decryption_failed",
            "digest_not_supported",
            "hsm_ambiguous",
            "hsm_error",
            "hsm_invalid_response",
            "hsm_login_failed",
            "hsm_not_logged_in",
            "hsm_token_not_found",
            "invalid_ciphertext",
            "invalid_ciphertext_encoding",
            "invalid_ciphertext_prefix",
            "invalid_data_key",
            "invalid_digest",
            "invalid_encoding",
            "invalid_input",
            "invalid_key",
            "invalid_key_id",
            "invalid_key_material",
            "invalid_key_version",
            "invalid_label",
            "invalid_public_key",
            "invalid_request",
            "invalid_signature",
            "invalid_signature_encoding",
            "invalid_unseal_share",
            "invalid_version",
            "key_kind_mismatch",
            "key_material_unusable",
            "key_not_found",
            "key_version_too_new",
            "key_version_too_old",
            "malformed_json",
            "missing_environment",
            "no_public_key",
            "not_utf8",
            "plaintext_not_utf8",
            "plaintext_too_large",
            "seal_mode_mismatch",
            "unexpected_versions",
            "unseal_failed",
            "unsupported_key_size",
            "unsupported_key_type",
            "unsupported_mechanism",
            "unsupported_operation",
            "unsupported_option",
            "usage_not_allowed",
        ],
    ),
    (
        401,
        &[
            "conflicting_tokens",
            "invalid_credentials",
            "invalid_token",
            "token_expired",
            "unauthenticated",
        ],
    ),
    (
        403,
        &[
            "approval_required",
            "approver_not_independent",
            "export_blocked",
            "forbidden",
            "identity_disabled",
            "identity_invalid",
            "invalid_credentials",
            "invalid_totp",
            "mfa_locked",
            "mfa_not_enrolled",
            "mfa_required",
            "platform_admin_protected",
            "policy_denied",
            "role_not_allowed",
            "self_approval",
        ],
    ),
    (
        404,
        &["not_found", "secret_not_found", "secret_version_not_found"],
    ),
    (405, &["method_not_allowed"]),
    (
        409,
        &[
            "already_exists",
            "already_initialized",
            "already_voted",
            "approval_expired",
            "approval_not_pending",
            "backup_stale",
            "cas_mismatch",
            "credentials_issued",
            "duplicate_unseal_share",
            "ecdsa_committee_not_ready",
            "encryption_budget_exhausted",
            "hsm_not_configured",
            "idempotency_conflict",
            "key_exists",
            "last_platform_admin",
            "mfa_not_pending",
            "not_initialized",
            "requester_inactive",
            "restore_failed",
            "restore_party_mismatch",
            "secret_exists",
            "wallet_frozen",
        ],
    ),
    (
        410,
        &[
            "key_deprecated",
            "key_destroyed",
            "secret_deleted",
            "secret_version_destroyed",
        ],
    ),
    (
        413,
        &[
            "ciphertext_too_large",
            "payload_too_large",
            "value_too_large",
        ],
    ),
    (415, &["unsupported_media_type"]),
    (
        422,
        &[
            "data_too_large",
            "duplicate_node",
            "hsm_mechanism_unsupported",
            "invalid_address",
            "invalid_algorithm",
            "invalid_backend",
            "invalid_batch",
            "invalid_body",
            "invalid_committee",
            "invalid_cursor",
            "invalid_derivation_path",
            "invalid_digest",
            "invalid_encoding",
            "invalid_environment",
            "invalid_expiry",
            "invalid_hex",
            "invalid_idempotency_key",
            "invalid_key_type",
            "invalid_message",
            "invalid_min_decryption_version",
            "invalid_name",
            "invalid_nodes",
            "invalid_parties",
            "invalid_policy",
            "invalid_public_key",
            "invalid_purpose",
            "invalid_quantity",
            "invalid_query",
            "invalid_request",
            "invalid_role",
            "invalid_rotation",
            "invalid_seal_parameters",
            "invalid_tags",
            "invalid_threshold",
            "invalid_usage",
            "invalid_webhook_url",
            "message_too_large",
            "missing_subject",
            "not_a_holder",
            "unknown_node",
            "unsupported_chain",
            "unsupported_payload",
            "unsupported_protocol",
            "unsupported_setting",
        ],
    ),
    (
        429,
        &[
            "key_generation_limited",
            "locked_out",
            "login_throttled",
            "rate_limited",
        ],
    ),
    (500, &["internal"]),
    (502, &["invalid_signature", "signing_failed"]),
    (
        503,
        &[
            "aux_info_failed",
            "backup_failed",
            "crypto_error",
            "decrypt_failed",
            "hsm_ambiguous",
            "hsm_error",
            "hsm_invalid_response",
            "hsm_locked",
            "hsm_login_failed",
            "hsm_not_logged_in",
            "hsm_token_not_found",
            "hsm_unavailable",
            "invalid_data_key",
            "invalid_digest",
            "invalid_key_id",
            "invalid_label",
            "key_kind_mismatch",
            "key_not_found",
            "keygen_failed",
            "login_busy",
            "metrics_disabled",
            "node_unavailable",
            "not_initialized",
            "plaintext_too_large",
            "restore_failed",
            "sealed",
            "unsupported_key_type",
            "unsupported_mechanism",
            "unsupported_operation",
        ],
    ),
    (504, &["timeout"]),
];

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let api = crate::http::api().into_openapi();
        finish(serde_json::to_value(api).expect("the document serializes"))
    })
}

/// The error statuses an operation can answer, from what the middleware
/// and the extractors do for it.
fn error_statuses(path: &str, method: &str, operation: &Value) -> Vec<u16> {
    let public = PUBLIC.contains(&path);
    let has_body = operation.get("requestBody").is_some();
    let has_params = operation
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|parameters| !parameters.is_empty());
    let mut statuses = vec![503];
    if !public {
        statuses.extend([401, 403, 404, 429, 504]);
    }
    if has_body {
        statuses.extend([400, 413, 415, 422]);
    }
    if has_params {
        statuses.extend([400, 404, 410, 422]);
    }
    if method != "get" {
        statuses.extend([400, 404, 409, 422]);
    }
    if path.starts_with("/api/v1/wallets")
        || path.starts_with("/api/v1/nodes")
        || path.starts_with("/api/v1/backups")
        || path.starts_with("/api/v1/signing-requests")
        || path.starts_with("/api/v1/approvals")
        || path.starts_with("/api/v1/mpc")
    {
        statuses.push(502);
    }
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

/// Rules between the fields of a request body that serde's derive cannot
/// state (a handler checks them): `(schema, fields, exactly one)`; one of
/// `fields` must be given, and with `exactly one` only one of them.
const ONE_OF: &[(&str, &[&str], bool)] = &[
    ("TransitEncryptRequest", &["plaintext", "batch"], true),
    ("TransitDecryptRequest", &["ciphertext", "batch"], true),
    ("KeySignRequest", &["message", "digest"], true),
    ("SignRequest", &["transaction", "message", "digest"], true),
    // The Vault dialect: `batch_input` wins when both are given.
    (
        "VaultTransitEncryptRequest",
        &["plaintext", "batch_input"],
        false,
    ),
    (
        "VaultTransitDecryptRequest",
        &["ciphertext", "batch_input"],
        false,
    ),
];

/// Operations that share a body's schema with another and need one of its
/// optional fields (verify shares sign's body and needs the signature).
const BODY_REQUIRES: &[(&str, &str)] = &[
    ("/api/v1/transit/verify", "signature"),
    ("/v1/transit/verify/{name}", "signature"),
    ("/v1/transit/verify/{name}/{hash}", "signature"),
    ("/api/v1/keys/{id}/verify", "signature"),
];

/// A rule between a policy rule's fields: `approvals` is given exactly
/// when the effect is `require_approval` (a `null` is no approvals).
fn policy_rule_effect() -> Value {
    json!({
        "if": {"required": ["effect"], "properties": {"effect": {"const": "require_approval"}}},
        "then": {"required": ["approvals"], "properties": {"approvals": {"type": "object"}}},
        "else": {"properties": {"approvals": {"type": "null"}}},
    })
}

/// Optional fields whose schema is written by hand (`schema_with`: an
/// enum, or several shapes) are `Option`s, and serde reads a `null` there
/// as absent; utoipa marks the fields it derives so, this marks the rest.
fn null_for_optional_fields(schema: &mut Value) {
    let required: Vec<String> = schema["required"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, property) in properties.iter_mut() {
            null_for_optional_fields(property);
            if required.contains(name) {
                continue;
            }
            if let Some(values) = property.get_mut("enum").and_then(Value::as_array_mut) {
                if !values.contains(&Value::Null) {
                    values.push(Value::Null);
                    if let Some(kind) = property["type"].as_str() {
                        property["type"] = json!([kind, "null"]);
                    }
                }
            } else if let Some(shapes) = property.get_mut("oneOf").and_then(Value::as_array_mut) {
                if !shapes.iter().any(|shape| shape["type"] == "null") {
                    shapes.push(json!({"type": "null"}));
                }
            }
        }
    }
    if let Some(items) = schema.get_mut("items") {
        null_for_optional_fields(items);
    }
}

/// Operations whose path names what a field of their shared body names
/// too: the path wins and the field is not read (`hmac/{name}/{algorithm}`).
const PATH_WINS: &[(&str, &str)] = &[
    ("/v1/transit/hmac/{name}/{algorithm}", "algorithm"),
    ("/v1/transit/sign/{name}/{hash}", "hash_algorithm"),
    ("/v1/transit/verify/{name}/{hash}", "hash_algorithm"),
];

/// What every operation shares, added to the generated paths.
fn finish(mut document: Value) -> Value {
    for (path, field) in PATH_WINS {
        let pointer = format!(
            "/paths/{}/post/requestBody/content/application~1json/schema",
            path.replace('~', "~0").replace('/', "~1")
        );
        let Some(reference) = document
            .pointer(&pointer)
            .and_then(|schema| schema["$ref"].as_str())
            .map(str::to_string)
        else {
            continue;
        };
        let name = reference.trim_start_matches("#/components/schemas/");
        let mut copy = document["components"]["schemas"][name].clone();
        copy["properties"][*field] =
            json!({"description": "Not read: the path names it (and wins)."});
        if let Some(schema) = document.pointer_mut(&pointer) {
            *schema = copy;
        }
    }
    if let Some(schemas) = document["components"]["schemas"].as_object_mut() {
        for schema in schemas.values_mut() {
            null_for_optional_fields(schema);
        }
    }
    if let Some(rule) = document["components"]["schemas"]["PolicyRule"].as_object_mut() {
        if let Value::Object(extra) = policy_rule_effect() {
            rule.extend(extra);
        }
    }
    for (path, field) in BODY_REQUIRES {
        let schema = &mut document["paths"][*path]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        if schema.is_object() {
            let shared = schema.take();
            *schema = json!({"allOf": [shared, {
                "required": [field],
                "properties": {*field: {"type": "string"}},
            }]});
        }
    }
    for (schema, fields, exactly_one) in ONE_OF {
        let target = &mut document["components"]["schemas"][*schema];
        if !target.is_object() {
            continue;
        }
        let alternatives: Vec<Value> = fields
            .iter()
            // Given means present and not `null` (serde reads a `null`
            // as absent).
            .map(|field| json!({"required": [field], "properties": {*field: {"not": {"type": "null"}}}}))
            .collect();
        target[if *exactly_one { "oneOf" } else { "anyOf" }] = Value::Array(alternatives);
    }
    let codes_of = |status: u16| {
        ERROR_CODES
            .iter()
            .find(|(of, _)| *of == status)
            .map(|(_, codes)| *codes)
            .unwrap_or_default()
    };
    let mut responses = serde_json::Map::new();
    for (status, name, reason) in STATUSES {
        let codes = codes_of(*status);
        let listed = codes
            .iter()
            .map(|code| format!("`{code}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut schema = json!({"$ref": "#/components/schemas/Error"});
        if !codes.is_empty() {
            schema = json!({"allOf": [
                {"$ref": "#/components/schemas/Error"},
                {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string", "examples": codes}
                }}}},
            ]});
        }
        responses.insert(
            (*name).to_string(),
            json!({
                "description": format!("{reason}. Stable codes: {listed}."),
                "content": {"application/json": {"schema": schema}},
            }),
        );
    }
    document["components"]["responses"] = Value::Object(responses);
    document["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
            "description": "A token from POST /api/v1/auth/token"},
        "vaultToken": {"type": "apiKey", "in": "header", "name": "X-Vault-Token",
            "description": "The same token, as Vault clients send it"},
    });
    let Some(paths) = document["paths"].as_object_mut() else {
        return document;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            // utoipa names an operation after its handler; handlers of
            // different rooms share names (`create`, `list`), so the id
            // takes the room's tag too.
            let tag = operation["tags"][0].as_str().unwrap_or("api").to_string();
            let handler = operation["operationId"]
                .as_str()
                .unwrap_or(method)
                .to_string();
            operation["operationId"] = Value::String(camel_case(&format!("{tag}_{handler}")));
            if !PUBLIC.contains(&path.as_str()) {
                // Every route reads `Authorization: Bearer` and, as Vault
                // clients send it, `X-Vault-Token`: either satisfies it
                // (two different tokens are refused).
                operation["security"] = if path.starts_with("/v1/") {
                    json!([{"vaultToken": []}, {"bearer": []}])
                } else {
                    json!([{"bearer": []}, {"vaultToken": []}])
                };
            }
            for status in error_statuses(path, method, operation) {
                let Some((_, name, _)) = STATUSES.iter().find(|(of, ..)| *of == status) else {
                    continue;
                };
                let answers = operation["responses"]
                    .as_object_mut()
                    .expect("every operation has responses");
                answers
                    .entry(status.to_string())
                    .or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
            }
        }
    }
    document
}

/// `vault-transit_read_key` → `vaultTransitReadKey`.
fn camel_case(words: &str) -> String {
    let mut out = String::new();
    for (index, word) in words
        .split(['_', '-'])
        .filter(|word| !word.is_empty())
        .enumerate()
    {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            if index == 0 {
                out.extend(first.to_lowercase());
            } else {
                out.extend(first.to_uppercase());
            }
            out.push_str(chars.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document builds, every cross-field rule names a generated
    /// schema and its fields, and `CUSTOS_OPENAPI_OUT` gets a copy to read.
    #[test]
    fn the_document_builds_and_its_field_rules_name_real_fields() {
        let document = document();
        if let Some(path) = std::env::var_os("CUSTOS_OPENAPI_OUT") {
            std::fs::write(path, serde_json::to_string_pretty(document).unwrap()).unwrap();
        }
        for (path, field) in PATH_WINS {
            let pointer = format!(
                "/paths/{}/post/requestBody/content/application~1json/schema",
                path.replace('/', "~1")
            );
            let body = document.pointer(&pointer).unwrap();
            let body = if body["allOf"].is_array() {
                &body["allOf"][0]
            } else {
                body
            };
            assert!(
                body["properties"][*field]["description"].is_string(),
                "{path}: {body}"
            );
        }
        for (path, field) in BODY_REQUIRES {
            let schema = &document["paths"][*path]["post"]["requestBody"]["content"]
                ["application/json"]["schema"];
            assert_eq!(
                schema["allOf"][1]["required"][0], *field,
                "{path}: {schema}"
            );
        }
        for (schema, fields, _) in ONE_OF {
            let properties = &document["components"]["schemas"][*schema]["properties"];
            for field in *fields {
                assert!(
                    properties.get(*field).is_some(),
                    "{schema} has no field {field}: {properties}"
                );
            }
        }
    }
}
