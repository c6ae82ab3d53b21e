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
//! * Targets are public addresses: a URL whose host is, or resolves to, a
//!   loopback, private, link-local, CGNAT, multicast or other
//!   special-purpose address ([`non_public_range`]) is refused unless
//!   `webhooks.allow_private_targets` is set (dev mode does not imply it).
//!   It is checked when the URL is given ([`check_target`], 422
//!   `invalid_webhook_url`) and again at every delivery, where the check
//!   is the DNS resolution itself ([`CheckedResolver`]): reqwest connects
//!   only to the addresses that resolver checked, so a name cannot resolve
//!   to a public address for the check and to a private one for the
//!   connection (DNS rebinding). A forbidden target fails the delivery at
//!   once (`target_forbidden`, no retries). Deliveries go direct (no
//!   proxy from the environment, which would resolve the name itself) and
//!   follow no redirects.
//! * A delivery record (`last_error`, the audit detail of each attempt)
//!   holds a fixed failure class ([`Failure::class`]: `http_status_503`,
//!   `timeout`, `connect_failed`, `dns_failed`, `target_forbidden`, …) and
//!   never what the target answered: its body is not read, its headers and
//!   error texts are not kept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::config::WebhookSettings;
use crate::kernel::db::{new_id, now_ms, Tx};
use crate::kernel::error::{AppError, AppResult};
use crate::kernel::state::AppState;

/// The keyring record kind of webhook signing secrets.
const KEY_RECORD: &str = "webhook_key";
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replica holds a delivery it is attempting.
const LEASE_MS: i64 = 30_000;
/// How long the resolution of a webhook host may take at registration.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// IPv4 ranges that are not webhook targets, first match wins:
/// (network, prefix length, name).
const IPV4_NON_PUBLIC: [(Ipv4Addr, u8, &str); 16] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (10.0.0.0/8)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared CGNAT (100.64.0.0/10)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127.0.0.0/8)"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local (169.254.0.0/16, cloud metadata)",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (172.16.0.0/12)"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation (192.0.2.0/24)",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast (192.88.99.0/24)",
    ),
    (
        Ipv4Addr::new(192, 168, 0, 0),
        16,
        "private (192.168.0.0/16)",
    ),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking (198.18.0.0/15)",
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation (198.51.100.0/24)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation (203.0.113.0/24)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224.0.0.0/4)"),
    // Inside 240.0.0.0/4: named before it.
    (
        Ipv4Addr::new(255, 255, 255, 255),
        32,
        "broadcast (255.255.255.255)",
    ),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
];

/// IPv6 ranges that are not webhook targets, first match wins, after the
/// forms that embed an IPv4 address ([`embedded_ipv4`]). Whatever else lies
/// outside the global unicast space 2000::/3 is refused as well.
const IPV6_NON_PUBLIC: [(Ipv6Addr, u8, &str); 13] = [
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified (::)"),
    (Ipv6Addr::LOCALHOST, 128, "loopback (::1)"),
    (
        Ipv6Addr::UNSPECIFIED,
        96,
        "IPv4-compatible, deprecated (::/96)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        "IPv4-translated (::ffff:0:0:0/96)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64 (64:ff9b:1::/48)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only (100::/64)",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments (2001::/23: Teredo, benchmarking, ORCHID)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation (2001:db8::/32)",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation (3fff::/20)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local (fc00::/7)",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local (fe80::/10)",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local, deprecated (fec0::/10)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (ff00::/8)",
    ),
];

/// Whether the top `length` bits of `address` and `network` agree
/// (`width` bits in all).
fn in_prefix(address: u128, network: u128, length: u8, width: u32) -> bool {
    let shift = width.saturating_sub(u32::from(length));
    // A shift by the whole width (prefix length 0) matches everything.
    let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
    let mask = if width == 128 {
        mask
    } else {
        mask & u128::from(u32::MAX)
    };
    address & mask == network & mask
}

/// The IPv4 address inside an IPv6 form that reaches it: IPv4-mapped
/// (`::ffff:a.b.c.d`), the well-known NAT64 prefix (`64:ff9b::/96`) and
/// 6to4 (`2002:aabb:ccdd::/48`).
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(address);
    let low_32 = |bits: u128| Ipv4Addr::from((bits & u128::from(u32::MAX)) as u32);
    let mapped = u128::from(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0));
    let nat64 = u128::from(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0));
    let six_to_four = u128::from(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0));
    if in_prefix(bits, mapped, 96, 128) || in_prefix(bits, nat64, 96, 128) {
        Some(low_32(bits))
    } else if in_prefix(bits, six_to_four, 16, 128) {
        Some(low_32(bits >> 80))
    } else {
        None
    }
}

/// The name of the non-public range `address` lies in, or `None` for an
/// address on the public internet (a webhook target).
///
/// Refused: loopback, private (RFC 1918; IPv6 unique local fc00::/7),
/// link-local (169.254.0.0/16 with the cloud metadata address; fe80::/10),
/// unspecified, 0.0.0.0/8, CGNAT 100.64.0.0/10, multicast, broadcast,
/// documentation and benchmarking ranges, the other IANA special-purpose
/// ranges that are not globally reachable, every IPv6 address outside
/// 2000::/3, and the IPv4-mapped, NAT64 (64:ff9b::/96) and 6to4 forms of a
/// refused IPv4 address. The whole IPv4-compatible range ::/96 is refused.
pub fn non_public_range(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(address) => IPV4_NON_PUBLIC
            .iter()
            .find(|(network, length, _)| {
                in_prefix(
                    u128::from(u32::from(address)),
                    u128::from(u32::from(*network)),
                    *length,
                    32,
                )
            })
            .map(|(_, _, name)| *name),
        IpAddr::V6(address) => {
            if let Some(inner) = embedded_ipv4(address) {
                return non_public_range(IpAddr::V4(inner));
            }
            let bits = u128::from(address);
            let named = IPV6_NON_PUBLIC
                .iter()
                .find(|(network, length, _)| in_prefix(bits, u128::from(*network), *length, 128))
                .map(|(_, _, name)| *name);
            let global_unicast = u128::from(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0));
            named.or_else(|| {
                (!in_prefix(bits, global_unicast, 3, 128))
                    .then_some("not global unicast (outside 2000::/3)")
            })
        }
    }
}

/// Why a webhook host is not a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The host is, or resolves to, a non-public address.
    #[error("the webhook target is a non-public address: {range}")]
    Forbidden {
        /// The range ([`non_public_range`]).
        range: &'static str,
    },
    /// The host name has no address (or its resolution failed).
    #[error("the webhook host name does not resolve")]
    Unresolved,
}

/// `Forbidden` when `address` is non-public and such targets are not
/// allowed.
fn check_address(address: IpAddr, allow_private_targets: bool) -> Result<(), TargetError> {
    match non_public_range(address) {
        Some(range) if !allow_private_targets => Err(TargetError::Forbidden { range }),
        _ => Ok(()),
    }
}

/// Resolves `host` with the system resolver and checks every address:
/// one non-public address refuses the host (a resolver answering a public
/// and a private address must not get the private one used).
pub async fn resolve_checked(
    host: &str,
    allow_private_targets: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|_| TargetError::Unresolved)?
        .collect();
    if addresses.is_empty() {
        return Err(TargetError::Unresolved);
    }
    for address in &addresses {
        check_address(address.ip(), allow_private_targets)?;
    }
    Ok(addresses)
}

/// The host of a parsed URL: an address literal or a name.
enum Host {
    Address(IpAddr),
    Name(String),
}

fn host_of(url: &reqwest::Url) -> Option<Host> {
    let host = url.host_str()?;
    // The URL parser writes every IPv4 form (`2130706433`, `0x7f.1`) as
    // dotted decimal and IPv6 literals in brackets; names never parse as
    // addresses.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    Some(match literal.parse::<IpAddr>() {
        Ok(address) => Host::Address(address),
        Err(_) => Host::Name(host.to_string()),
    })
}

/// Checks a webhook URL given by a caller: [`check_url`] (`http` with
/// `webhooks.allow_http` or in dev mode), then its target: an address
/// literal, or every address its host name resolves to now, must be public
/// unless `webhooks.allow_private_targets`. Deliveries check again (the
/// name may resolve elsewhere by then). 422 `invalid_webhook_url`.
pub async fn check_target(url: &str, settings: &WebhookSettings, dev_mode: bool) -> AppResult<()> {
    check_url(url, settings.allow_http || dev_mode)?;
    if settings.allow_private_targets {
        return Ok(());
    }
    let invalid = |why: String| AppError::invalid("invalid_webhook_url", why);
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid("not an absolute URL".into()))?;
    let allow_setting = "(allowed only with webhooks.allow_private_targets)";
    match host_of(&parsed) {
        Some(Host::Address(address)) => match non_public_range(address) {
            Some(range) => Err(invalid(format!(
                "{address} is not a public address: {range} {allow_setting}"
            ))),
            None => Ok(()),
        },
        Some(Host::Name(name)) => {
            // The answer names the range, not the address: callers learn
            // nothing of the deployment's internal DNS beyond that.
            match tokio::time::timeout(RESOLVE_TIMEOUT, resolve_checked(&name, false)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(TargetError::Forbidden { range })) => Err(invalid(format!(
                    "the webhook host resolves to a non-public address: {range} {allow_setting}"
                ))),
                Ok(Err(TargetError::Unresolved)) | Err(_) => {
                    Err(invalid("the webhook host name does not resolve".into()))
                }
            }
        }
        None => Err(invalid("a webhook URL names a host".into())),
    }
}

/// The resolver of the delivery client: [`resolve_checked`] for every
/// host name reqwest connects to. reqwest connects only to the addresses
/// answered here, so the address checked is the address connected to; a
/// refused name fails the request with the [`TargetError`] inside.
/// (Address literals are not resolved: `attempt` checks them first.)
pub struct CheckedResolver {
    /// `webhooks.allow_private_targets`.
    pub allow_private_targets: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private_targets = self.allow_private_targets;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses = resolve_checked(&host, allow_private_targets).await?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The HTTP client of deliveries: no redirects, no proxy (a proxy would
/// resolve the name itself, past the check), host names resolved by
/// [`CheckedResolver`].
pub fn delivery_client(settings: &WebhookSettings) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(CheckedResolver {
            allow_private_targets: settings.allow_private_targets,
        }))
        .build()
}

/// Why an attempt failed, as the delivery record and the audit keep it: a
/// fixed class, never the target's body, headers or error text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The target answered a status other than 2xx.
    HttpStatus(u16),
    /// No answer within the attempt's time.
    Timeout,
    /// No connection (refused, unreachable, TLS handshake).
    ConnectFailed,
    /// The host name did not resolve.
    DnsFailed,
    /// The target is not allowed (a non-public address, or `http` where
    /// only `https` is): permanent, not retried.
    TargetForbidden,
    /// Any other failure of the request.
    RequestFailed,
}

impl Failure {
    /// The stable snake_case class: `http_status_<code>`, `timeout`,
    /// `connect_failed`, `dns_failed`, `target_forbidden`, `request_failed`.
    pub fn class(self) -> String {
        match self {
            Failure::HttpStatus(code) => format!("http_status_{code}"),
            Failure::Timeout => "timeout".into(),
            Failure::ConnectFailed => "connect_failed".into(),
            Failure::DnsFailed => "dns_failed".into(),
            Failure::TargetForbidden => "target_forbidden".into(),
            Failure::RequestFailed => "request_failed".into(),
        }
    }

    /// Whether another attempt cannot succeed.
    pub fn is_permanent(self) -> bool {
        self == Failure::TargetForbidden
    }

    /// The class of a request error; the resolver's [`TargetError`] is
    /// found wherever reqwest and hyper wrapped it.
    fn of(error: &reqwest::Error) -> Failure {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = cause {
            match current.downcast_ref::<TargetError>() {
                Some(TargetError::Forbidden { .. }) => return Failure::TargetForbidden,
                Some(TargetError::Unresolved) => return Failure::DnsFailed,
                None => cause = current.source(),
            }
        }
        if error.is_timeout() {
            Failure::Timeout
        } else if error.is_connect() {
            Failure::ConnectFailed
        } else {
            Failure::RequestFailed
        }
    }
}

/// The checks of a stored URL before an attempt connects: the scheme
/// under today's settings, and an address literal's range (host names are
/// checked by [`CheckedResolver`] as they resolve).
fn precheck(url: &str, settings: &WebhookSettings, dev_mode: bool) -> Result<(), Failure> {
    check_url(url, settings.allow_http || dev_mode).map_err(|_| Failure::TargetForbidden)?;
    let parsed = reqwest::Url::parse(url).map_err(|_| Failure::TargetForbidden)?;
    match host_of(&parsed) {
        Some(Host::Address(address)) => check_address(address, settings.allow_private_targets)
            .map_err(|_| Failure::TargetForbidden),
        Some(Host::Name(_)) => Ok(()),
        None => Err(Failure::TargetForbidden),
    }
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
    let settings = &state.config.webhooks;
    let outcome = match precheck(&url, settings, state.config.dev_mode) {
        Err(failure) => Err(failure),
        Ok(()) => client
            .post(&url)
            .timeout(ATTEMPT_TIMEOUT)
            .header("content-type", "application/json")
            .header("x-custos-event", &event)
            .header("x-custos-delivery", id)
            .header("x-custos-timestamp", timestamp.to_string())
            .header("x-custos-signature", signature(&secret, timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|error| Failure::of(&error)),
    };
    // The answer's body is never read and its headers are not kept: the
    // record holds the status, or the class of the failure.
    let (status_code, failure) = match outcome {
        Ok(response) if response.status().is_success() => (Some(response.status().as_u16()), None),
        Ok(response) => {
            let code = response.status().as_u16();
            (Some(code), Some(Failure::HttpStatus(code)))
        }
        Err(failure) => (None, Some(failure)),
    };
    let delivered = failure.is_none();
    let error = failure.map(Failure::class);
    let status = match failure {
        None => "delivered",
        Some(failure) if failure.is_permanent() => "failed",
        Some(_) if attempts >= i64::from(settings.max_attempts) => "failed",
        Some(_) => "pending",
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
    let client = match delivery_client(&state.config.webhooks) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// (address, a word of the range's name, or "" for a public address).
    const ADDRESSES: &[(&str, &str)] = &[
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.0.1", "link-local"),
        ("0.0.0.0", "this network"),
        ("0.1.2.3", "this network"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.255", "CGNAT"),
        ("192.0.0.8", "IETF"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("198.19.255.255", "benchmarking"),
        ("192.88.99.1", "6to4"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("fec0::1", "site-local"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001::1", "IETF"),
        ("2001:2::1", "IETF"),
        ("100::1", "discard"),
        ("64:ff9b:1::1", "NAT64"),
        ("::7f00:1", "IPv4-compatible"),
        ("::ffff:0:7f00:1", "IPv4-translated"),
        ("4000::1", "not global unicast"),
        // IPv4-mapped, NAT64 and 6to4 forms take the embedded address's range.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:7f00:1::1", "loopback"),
        ("2002:c0a8:101::1", "private"),
        // Public, including the neighbours of every range's edge.
        ("8.8.8.8", ""),
        ("1.1.1.1", ""),
        ("9.255.255.255", ""),
        ("11.0.0.0", ""),
        ("100.63.255.255", ""),
        ("100.128.0.0", ""),
        ("126.255.255.255", ""),
        ("128.0.0.0", ""),
        ("169.253.255.255", ""),
        ("169.255.0.0", ""),
        ("172.15.255.255", ""),
        ("172.32.0.0", ""),
        ("192.0.1.255", ""),
        ("192.167.255.255", ""),
        ("192.169.0.0", ""),
        ("198.17.255.255", ""),
        ("198.20.0.0", ""),
        ("223.255.255.255", ""),
        ("2606:4700:4700::1111", ""),
        ("2a00:1450:4001::1", ""),
        ("2001:200::1", ""),
        ("::ffff:8.8.8.8", ""),
        ("64:ff9b::808:808", ""),
        ("2002:808:808::1", ""),
    ];

    #[test]
    fn non_public_addresses_are_named_and_public_ones_pass() {
        for (text, expected) in ADDRESSES {
            let address: IpAddr = text.parse().unwrap();
            match (non_public_range(address), *expected) {
                (None, "") => {}
                (Some(range), expected) if !expected.is_empty() => {
                    assert!(
                        range.contains(expected),
                        "{text}: {range}, expected {expected}"
                    )
                }
                (range, expected) => panic!("{text}: {range:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn address_literals_are_checked_before_connecting_unless_allowed() {
        let mut settings = WebhookSettings::default();
        for (url, dev_mode, expected) in [
            (
                "https://127.0.0.1/hook",
                false,
                Err(Failure::TargetForbidden),
            ),
            (
                "https://[::ffff:a9fe:a9fe]/",
                false,
                Err(Failure::TargetForbidden),
            ),
            ("https://2130706433/", false, Err(Failure::TargetForbidden)),
            ("https://8.8.8.8/hook", false, Ok(())),
            ("https://hooks.example.com/", false, Ok(())),
            // A stored http URL after http was disallowed.
            ("http://8.8.8.8/hook", false, Err(Failure::TargetForbidden)),
            ("http://8.8.8.8/hook", true, Ok(())),
        ] {
            assert_eq!(precheck(url, &settings, dev_mode), expected, "{url}");
        }
        settings.allow_private_targets = true;
        assert_eq!(precheck("https://127.0.0.1/hook", &settings, false), Ok(()));
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_by_the_resolver_unless_allowed() {
        assert!(matches!(
            resolve_checked("localhost", false).await,
            Err(TargetError::Forbidden { .. })
        ));
        let addresses = resolve_checked("localhost", true).await.unwrap();
        assert!(addresses.iter().all(|address| address.ip().is_loopback()));
        assert!(matches!(
            resolve_checked("no-such-host.invalid", true).await,
            Err(TargetError::Unresolved)
        ));
    }

    #[tokio::test]
    async fn the_delivery_client_fails_a_refused_name_as_target_forbidden() {
        // A port nothing listens on any more: with the setting the name
        // resolves and the connection is refused.
        let port = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = &format!("http://localhost:{port}/hook");
        let refused = delivery_client(&WebhookSettings::default())
            .unwrap()
            .post(url)
            .send()
            .await
            .unwrap_err();
        assert_eq!(Failure::of(&refused), Failure::TargetForbidden);
        let allowed = WebhookSettings {
            allow_private_targets: true,
            ..WebhookSettings::default()
        };
        let unreachable = delivery_client(&allowed)
            .unwrap()
            .post(url)
            .send()
            .await
            .unwrap_err();
        assert_eq!(Failure::of(&unreachable), Failure::ConnectFailed);
    }

    #[test]
    fn failure_classes_are_stable_and_only_a_forbidden_target_is_permanent() {
        let classes = [
            (Failure::HttpStatus(503), "http_status_503", false),
            (Failure::Timeout, "timeout", false),
            (Failure::ConnectFailed, "connect_failed", false),
            (Failure::DnsFailed, "dns_failed", false),
            (Failure::TargetForbidden, "target_forbidden", true),
            (Failure::RequestFailed, "request_failed", false),
        ];
        for (failure, class, permanent) in classes {
            assert_eq!(
                (failure.class().as_str(), failure.is_permanent()),
                (class, permanent)
            );
        }
    }
}
