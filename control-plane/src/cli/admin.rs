//! `custos wallet|approval|identity|node …`: what people do in an incident
//! or a review, from a shell, over the control plane's HTTP API with their own
//! bearer token (`--token` or `CUSTOS_TOKEN`): freeze and unfreeze a
//! wallet, list, approve and reject approvals (with a TOTP code when the
//! rule asks for one), and cut an identity off (disable, revoke its
//! tokens) or look at its tokens, and list signer nodes and prepare and
//! follow an ECDSA committee. Every call goes through the same policy
//! and audit as any other client; the answer is printed as JSON and a
//! refusal exits non-zero with the API's error code.

use serde_json::{json, Value};

use crate::cli::operator::{call, finish};

/// Percent-encodes one path segment (ids are plain, but never trust input).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// One call with the caller's token, printed.
pub async fn run(
    address: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<()> {
    let (status, answer) = call(address, method, path, Some(token), body.as_ref()).await?;
    finish(status, &answer)
}

/// `wallet freeze ID [--reason R]`.
pub async fn freeze(
    address: &str,
    token: &str,
    wallet: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let body = match reason {
        Some(reason) => json!({"reason": reason}),
        None => json!({}),
    };
    let path = format!("/api/v1/wallets/{}/freeze", segment(wallet));
    run(address, token, "POST", &path, Some(body)).await
}

/// `wallet unfreeze ID` (answers an approval to wait for, by default).
pub async fn unfreeze(address: &str, token: &str, wallet: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/wallets/{}/unfreeze", segment(wallet));
    run(address, token, "POST", &path, Some(json!({}))).await
}

/// `node list`, `node committees`.
pub async fn nodes(address: &str, token: &str, committees: bool) -> anyhow::Result<()> {
    let path = if committees {
        "/api/v1/nodes/committees"
    } else {
        "/api/v1/nodes"
    };
    run(address, token, "GET", path, None).await
}

/// `node prepare NAME...`: waits the minutes aux-info generation takes
/// (`node committees` in another shell shows its runs).
pub async fn prepare_committee(address: &str, token: &str, nodes: &[String]) -> anyhow::Result<()> {
    run(
        address,
        token,
        "POST",
        "/api/v1/nodes/committees",
        Some(json!({ "nodes": nodes })),
    )
    .await
}

/// `approval list [--status S]`.
pub async fn approvals(address: &str, token: &str, status: Option<String>) -> anyhow::Result<()> {
    let path = match status {
        Some(status) => format!("/api/v1/approvals?status={}", segment(&status)),
        None => "/api/v1/approvals".to_string(),
    };
    run(address, token, "GET", &path, None).await
}

/// `approval approve|reject ID [--totp CODE] [--comment C]`.
pub async fn vote(
    address: &str,
    token: &str,
    approval: &str,
    approve: bool,
    totp: Option<String>,
    comment: Option<String>,
) -> anyhow::Result<()> {
    let mut body = json!({});
    if let Some(totp) = totp {
        body["totp"] = json!(totp);
    }
    if let Some(comment) = comment {
        body["comment"] = json!(comment);
    }
    let verb = if approve { "approve" } else { "reject" };
    let path = format!("/api/v1/approvals/{}/{verb}", segment(approval));
    run(address, token, "POST", &path, Some(body)).await
}

/// What `identity` can do to an identity.
#[derive(Clone, Copy, Debug)]
pub enum IdentityAction {
    /// Show it.
    Show,
    /// Disable it (its tokens are revoked at once).
    Disable,
    /// Enable it again (an approval by default).
    Enable,
    /// List its active tokens.
    Tokens,
    /// Revoke all its tokens.
    RevokeTokens,
}

/// `identity show|disable|enable|tokens|revoke-tokens ID`.
pub async fn identity(
    address: &str,
    token: &str,
    identity: &str,
    action: IdentityAction,
) -> anyhow::Result<()> {
    let base = format!("/api/v1/identities/{}", segment(identity));
    let (method, path, body) = match action {
        IdentityAction::Show => ("GET", base, None),
        IdentityAction::Disable => ("POST", format!("{base}/disable"), Some(json!({}))),
        IdentityAction::Enable => ("POST", format!("{base}/enable"), Some(json!({}))),
        IdentityAction::Tokens => ("GET", format!("{base}/tokens"), None),
        IdentityAction::RevokeTokens => ("DELETE", format!("{base}/tokens"), None),
    };
    run(address, token, method, &path, body).await
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("wal_00ff"), "wal_00ff");
        assert_eq!(segment("../x?y"), "..%2Fx%3Fy");
    }
}
