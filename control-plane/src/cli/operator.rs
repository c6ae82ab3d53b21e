//! `custos operator init|unseal|seal|status`: the seal operations over the
//! control plane's HTTP API, for operators at a shell. Plain HTTP to the
//! address given (terminate TLS in front of the control plane, or run this
//! on its host); one request per command, the answer printed as JSON.
//!
//! An unseal share is read from `--share`, else from `CUSTOS_UNSEAL_SHARE`,
//! else from the first line of standard input, so that it need not appear
//! in a shell history.

use std::io::BufRead;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The host:port of an `http://host:port` address.
fn authority(address: &str) -> anyhow::Result<&str> {
    let rest = address.strip_prefix("http://").unwrap_or(address);
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("give the control plane's address as http://host:port");
    }
    Ok(authority)
}

/// Sends one request and answers (status, JSON body).
pub async fn call(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let authority = authority(address)?;
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("the control plane's answer has no body")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("the control plane's answer has no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(next)) = (after.get(..size), after.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        rest = next.trim_start_matches("\r\n");
    }
    out
}

/// Prints the answer; fails with the API's error code on a non-2xx status.
pub fn finish(status: u16, body: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(body)?);
    if !(200..300).contains(&status) {
        bail!(
            "the control plane answered {status} {}",
            body["error"]["code"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `operator init`.
pub async fn init(address: &str, shares: u8, threshold: u8, hsm: bool) -> anyhow::Result<()> {
    let body = if hsm {
        json!({"hsm": true})
    } else {
        json!({"shares": shares, "threshold": threshold})
    };
    let (status, answer) = call(address, "POST", "/api/v1/sys/init", None, Some(&body)).await?;
    if (200..300).contains(&status) {
        eprintln!(
            "Initialized. The unseal shares and the root credentials are shown once, here, and \
             are stored nowhere: give each share to a different operator."
        );
    }
    finish(status, &answer)
}

/// `operator unseal`: one share.
pub async fn unseal(address: &str, share: Option<String>, reset: bool) -> anyhow::Result<()> {
    let body = if reset {
        json!({"reset": true})
    } else {
        let share = match share.or_else(|| std::env::var("CUSTOS_UNSEAL_SHARE").ok()) {
            Some(share) => share,
            None => {
                eprintln!("unseal share (one line):");
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line
            }
        };
        json!({"share": share.trim()})
    };
    let (status, answer) = call(address, "POST", "/api/v1/sys/unseal", None, Some(&body)).await?;
    finish(status, &answer)
}

/// `operator seal`: needs a platform administrator's token.
pub async fn seal(address: &str, token: &str) -> anyhow::Result<()> {
    let (status, answer) = call(
        address,
        "POST",
        "/api/v1/sys/seal",
        Some(token),
        Some(&json!({})),
    )
    .await?;
    finish(status, &answer)
}

/// `operator status`.
pub async fn status(address: &str) -> anyhow::Result<()> {
    let (status, answer) = call(address, "GET", "/api/v1/sys/seal-status", None, None).await?;
    finish(status, &answer)
}
