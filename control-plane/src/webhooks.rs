//! Outgoing webhooks (secret rotation notices), delivered at least once.
//!
//! * A delivery is queued in the transaction of the change it announces (an
//!   outbox), so a notice exists exactly when the change committed.
//! * The worker POSTs the JSON body with `x-custos-event`,
//!   `x-custos-delivery`, `x-custos-timestamp` and `x-custos-signature:
//!   v1=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`, where the key is the
//!   org's webhook signing secret (sealed by the org's keyring, shown to
//!   admins by `GET /api/v1/webhooks/signing-secret`). Receivers check the
//!   signature and reject stale timestamps; `x-custos-delivery` lets them
//!   drop duplicates.
//! * A failed attempt (connection error, timeout, non-2xx) is retried with
//!   exponential backoff and jitter, up to `max_attempts`; every attempt is
//!   recorded in the org's audit chain (`webhook.deliver`).
//! * URLs are `https`; `http` only in dev mode or with
//!   `webhooks.allow_http` (tests, private networks).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::audit::{self, AuditEvent};
use crate::db::{new_id, now_ms, Tx};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// The keyring record kind of webhook signing secrets.
const KEY_RECORD: &str = "webhook_key";
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replica holds a delivery it is attempting.
const LEASE_MS: i64 = 30_000;

/// Checks a webhook URL: absolute `https` (or `http` when allowed), with a
/// host, at most 2048 characters.
pub fn check_url(url: &str, allow_http: bool) -> AppResult<()> {
    let invalid = |why: &str| AppError::invalid("invalid_webhook_url", why.to_string());
    if url.len() > 2048 {
        return Err(invalid("a webhook URL is at most 2048 characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid("not an absolute URL"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(invalid(
                "webhooks are https (http only in dev mode or with webhooks.allow_http)",
            ))
        }
        _ => return Err(invalid("webhooks are https")),
    }
    if parsed.host().is_none() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "a webhook URL names a host and carries no credentials",
        ));
    }
    Ok(())
}

/// Queues a delivery of `body` to `url` inside `tx`; returns its id.
pub async fn enqueue(
    tx: &mut Tx,
    org: &str,
    url: &str,
    event: &str,
    body: &Value,
) -> AppResult<String> {
    let id = new_id("whd");
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.insert("deliveryId".into(), json!(id));
    }
    let now = now_ms();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, org_id, url, event, body, status, attempts, \
         next_attempt, last_error, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, NULL, $6, $6)",
    )
    .bind(&id)
    .bind(org)
    .bind(url)
    .bind(event)
    .bind(body.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// The org's webhook signing secret, created on first use.
pub async fn signing_secret(
    state: &AppState,
    tx: &mut Tx,
    org: &str,
) -> AppResult<Zeroizing<Vec<u8>>> {
    let row = sqlx::query("SELECT secret FROM webhook_keys WHERE org_id = $1")
        .bind(org)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(row) = row {
        let sealed: Vec<u8> = row.try_get("secret")?;
        return Ok(state
            .keyring
            .open_record(tx, org, KEY_RECORD, org, &sealed)
            .await?);
    }
    let mut secret = Zeroizing::new(vec![0u8; 32]);
    OsRng.fill_bytes(&mut secret);
    let sealed = state
        .keyring
        .seal_record(tx, org, KEY_RECORD, org, &secret)
        .await?;
    sqlx::query("INSERT INTO webhook_keys (org_id, secret, created_at) VALUES ($1, $2, $3)")
        .bind(org)
        .bind(sealed)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(secret)
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before attempt `attempts + 1`: `base · 2^(attempts−1)`, at most
/// 10 minutes, with up to 25% jitter.
pub fn backoff_ms(base_ms: u64, attempts: i64) -> i64 {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let delay = base_ms.saturating_mul(1u64 << exponent).min(600_000);
    let jitter = OsRng.next_u64() % (delay / 4 + 1);
    i64::try_from(delay + jitter).unwrap_or(600_000)
}

/// Attempts the deliveries that are due. Returns how many were attempted.
pub async fn deliver_due(state: &AppState, client: &reqwest::Client) -> AppResult<usize> {
    let now = now_ms();
    let due = sqlx::query(
        "SELECT id, next_attempt FROM webhook_deliveries \
         WHERE status = 'pending' AND next_attempt <= $1 ORDER BY next_attempt LIMIT 20",
    )
    .bind(now)
    .fetch_all(state.db.pool())
    .await?;
    let mut attempted = 0;
    for row in due {
        let id: String = row.try_get("id")?;
        let next: i64 = row.try_get("next_attempt")?;
        // Claim: only the replica that moves `next_attempt` attempts it.
        let claimed = sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt = $1 \
             WHERE id = $2 AND status = 'pending' AND next_attempt = $3",
        )
        .bind(now + LEASE_MS)
        .bind(&id)
        .bind(next)
        .execute(state.db.pool())
        .await?
        .rows_affected();
        if claimed == 1 {
            attempt(state, client, &id).await?;
            attempted += 1;
        }
    }
    Ok(attempted)
}

async fn attempt(state: &AppState, client: &reqwest::Client, id: &str) -> AppResult<()> {
    let row = sqlx::query(
        "SELECT org_id, url, event, body, attempts FROM webhook_deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(state.db.pool())
    .await?;
    let org: String = row.try_get("org_id")?;
    let url: String = row.try_get("url")?;
    let event: String = row.try_get("event")?;
    let body: String = row.try_get("body")?;
    let attempts = row.try_get::<i64, _>("attempts")? + 1;
    let timestamp = now_ms() / 1000;
    let mut tx = state.db.begin().await?;
    let secret = signing_secret(state, &mut tx, &org).await?;
    tx.commit().await?;
    let outcome = client
        .post(&url)
        .timeout(ATTEMPT_TIMEOUT)
        .header("content-type", "application/json")
        .header("x-custos-event", &event)
        .header("x-custos-delivery", id)
        .header("x-custos-timestamp", timestamp.to_string())
        .header("x-custos-signature", signature(&secret, timestamp, &body))
        .body(body)
        .send()
        .await;
    let (delivered, status_code, error) = match outcome {
        Ok(response) if response.status().is_success() => {
            (true, Some(response.status().as_u16()), None)
        }
        Ok(response) => (
            false,
            Some(response.status().as_u16()),
            Some(format!("answered {}", response.status().as_u16())),
        ),
        Err(error) if error.is_timeout() => (false, None, Some("timed out".to_string())),
        Err(error) if error.is_connect() => (false, None, Some("connection failed".to_string())),
        Err(_) => (false, None, Some("request failed".to_string())),
    };
    let settings = &state.config.webhooks;
    let status = if delivered {
        "delivered"
    } else if attempts >= i64::from(settings.max_attempts) {
        "failed"
    } else {
        "pending"
    };
    let now = now_ms();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt = $3, \
         last_error = $4, updated_at = $5 WHERE id = $6",
    )
    .bind(status)
    .bind(attempts)
    .bind(now + backoff_ms(settings.backoff_ms, attempts))
    .bind(error.clone())
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let host = reqwest::Url::parse(&url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string))
        .unwrap_or_default();
    audit::append(
        &state.db,
        &mut tx,
        &AuditEvent {
            org: &org,
            action: "webhook.deliver",
            resource: &format!("webhook:{id}"),
            identity: "system",
            ip: "",
            approved: "not_required",
            outcome: if delivered { "success" } else { "failure" },
            request_id: id,
            detail: json!({
                "event": event,
                "host": host,
                "attempt": attempts,
                "status": status,
                "httpStatus": status_code,
                "error": error,
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A delivery as the API shows it.
pub async fn view(state: &AppState, org: &str, id: &str) -> AppResult<Value> {
    let row = sqlx::query(
        "SELECT id, url, event, status, attempts, last_error, created_at, updated_at \
         FROM webhook_deliveries WHERE id = $1 AND org_id = $2",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(state.db.pool())
    .await?
    .ok_or_else(|| AppError::not_found("webhook delivery"))?;
    Ok(json!({
        "id": row.try_get::<String, _>("id")?,
        "url": row.try_get::<String, _>("url")?,
        "event": row.try_get::<String, _>("event")?,
        "status": row.try_get::<String, _>("status")?,
        "attempts": row.try_get::<i64, _>("attempts")?,
        "lastError": row.try_get::<Option<String>, _>("last_error")?,
        "createdAt": row.try_get::<i64, _>("created_at")?,
        "updatedAt": row.try_get::<i64, _>("updated_at")?,
    }))
}

/// Delivers due webhooks until the process stops (idle while sealed).
pub async fn worker(state: Arc<AppState>) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "webhook client could not start; webhooks are not delivered");
            return;
        }
    };
    loop {
        if !state.keyring.is_sealed() {
            if let Err(error) = deliver_due(&state, &client).await {
                tracing::warn!(code = error.code, message = %error.message, "webhook delivery round failed");
            }
        }
        tokio::time::sleep(Duration::from_millis(state.config.webhooks.poll_ms)).await;
    }
}
