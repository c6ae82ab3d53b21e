//! Client secrets, logins, bearer tokens and roles. (The lifecycle of
//! identities is `crate::kernel::identities`; MFA is `crate::kernel::mfa`.)
//!
//! * A machine identity has a client id and a secret shown once; the secret
//!   is stored as an Argon2id PHC string and checked on a blocking thread,
//!   at most [`HashBudget`]'s number at once per replica.
//! * `POST /api/v1/auth/token` trades them for an opaque bearer token
//!   (`cst_` + 32 random bytes). Only the SHA-256 of a token is stored, so a
//!   database dump holds no usable token; a token row also has a public id
//!   (`tok_…`), when and from which address it was issued, so it can be
//!   listed and revoked. Tokens are short-lived.
//! * Logins are throttled before any Argon2 work ([`LoginThrottle`]): per
//!   client id, known or not, and per source address, so a flood of made-up
//!   client ids cannot spend the replica's hashing budget.
//! * Five failed logins lock an identity for five minutes. An unknown client
//!   id costs the same Argon2 work as a wrong secret. Every attempt that
//!   passes the throttle is audited; failures in a transaction of their own.
//! * A disabled identity neither logs in nor uses a token. Every replica
//!   checks tokens against the database, trusting a verified one for at
//!   most a second ([`TokenCache`]), so a revocation reaches every replica
//!   within a second and this replica at once.
//! * Roles gate actions first (`role_allows`); the org's policies decide
//!   after that.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::Semaphore;

use crate::kernel::audit::{self, AuditEvent};
use crate::kernel::config::AuthSettings;
use crate::kernel::db::{new_id, now_ms, Db, Tx};
use crate::kernel::error::{AppError, AppResult, ErrorKind};

/// Failed logins before a lockout.
pub const MAX_FAILED_LOGINS: i64 = 5;
/// Lockout length, milliseconds.
pub const LOCKOUT_MS: i64 = 5 * 60 * 1000;

/// A role within an org.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the org, subject to policy.
    Admin,
    /// Wallets and nodes.
    Operator,
    /// Approves or rejects requests.
    Approver,
    /// Applications: create wallets, sign.
    Service,
    /// Reads the audit log and metadata.
    Auditor,
}

impl Role {
    /// Parses the API name.
    pub fn parse(name: &str) -> Option<Role> {
        Some(match name {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "approver" => Role::Approver,
            "service" => Role::Service,
            "auditor" => Role::Auditor,
            _ => return None,
        })
    }

    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Service => "service",
            Role::Auditor => "auditor",
        }
    }
}

/// Whether `role` may attempt `action` at all (policies decide after).
pub fn role_allows(role: Role, action: &str) -> bool {
    let patterns: &[&str] = match role {
        Role::Admin => &["*"],
        Role::Operator => &[
            "wallet.*",
            "node.*",
            "secret.*",
            "operation.read",
            "webhook.read",
            "key.create",
            "key.read",
            "transit.key.create",
            "transit.read",
            "signing.read",
            "approval.read",
            "policy.read",
            "identity.read",
        ],
        Role::Approver => &[
            "approval.*",
            "operation.read",
            "wallet.read",
            "signing.read",
            "policy.read",
            "identity.mfa",
        ],
        Role::Service => &[
            "key.create",
            "key.read",
            "key.sign",
            "key.verify",
            "key.encrypt",
            "key.decrypt",
            "key.wrap",
            "key.unwrap",
            "secret.read",
            "secret.list",
            "operation.read",
            "wallet.create",
            "wallet.read",
            "wallet.sign",
            "signing.read",
            "transit.read",
            "transit.encrypt",
            "transit.decrypt",
            "transit.rewrap",
            "transit.datakey",
            "transit.sign",
            "transit.verify",
            "transit.hmac",
        ],
        Role::Auditor => &["audit.*", "*.read", "secret.list"],
    };
    // Auditors see metadata and the audit trail, never secret values.
    if role == Role::Auditor && action == "secret.read" {
        return false;
    }
    patterns
        .iter()
        .any(|pattern| crate::kernel::policy::glob_match(pattern, action))
}

/// Who is calling. `Debug` leaves the TOTP code out.
#[derive(Clone)]
pub struct Caller {
    /// Identity id.
    pub identity: String,
    /// Its name.
    pub name: String,
    /// Its org.
    pub org: String,
    /// Its role.
    pub role: Role,
    /// May manage orgs.
    pub platform_admin: bool,
    /// Client IP.
    pub ip: IpAddr,
    /// The HTTP request id.
    pub request_id: String,
    /// The TOTP code the caller sent with this request (`X-Custos-TOTP`),
    /// for rules that require MFA.
    pub totp: Option<String>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("identity", &self.identity)
            .field("name", &self.name)
            .field("org", &self.org)
            .field("role", &self.role)
            .field("platform_admin", &self.platform_admin)
            .field("ip", &self.ip)
            .field("request_id", &self.request_id)
            .field("totp", &self.totp.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Caller {
    /// Refuses with 403 unless the role allows `action`.
    pub fn require(&self, action: &str) -> AppResult<()> {
        if role_allows(self.role, action) {
            Ok(())
        } else {
            Err(AppError::forbidden(
                "forbidden",
                format!("role {} may not {action}", self.role.name()),
            ))
        }
    }
}

/// A new identity's credentials (the secret exists only in this answer).
/// A new identity's credentials (the secret exists only in this answer).
#[derive(Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewCredentials {
    /// Identity id.
    pub id: String,
    /// Client id.
    pub client_id: String,
    /// The secret, shown once.
    pub client_secret: String,
}

impl std::fmt::Debug for NewCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredentials")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A fresh client secret (`cs_` + 32 random bytes): shown once, stored only
/// as its Argon2id hash.
pub fn new_client_secret() -> String {
    random_token("cs")
}

/// Argon2id PHC string of `secret` (blocking: call from `spawn_blocking`).
pub fn hash_secret(secret: &str) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| AppError::internal("argon2", error))
}

/// Checks `secret` against a PHC string (blocking; the comparison inside
/// argon2 is constant-time). An empty or malformed PHC string matches
/// nothing: an identity whose first secret is not issued yet has
/// `secret_hash = ''`.
pub fn verify_secret(phc: &str, secret: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A PHC string no secret matches, checked for unknown client ids so that
/// they cost the same Argon2 work as a wrong secret.
const DECOY_PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                         ZGVjb3lkZWNveWRlY295ZGVjb3lkZWNveWRlY295ZGU";

/// How long a login waits for an Argon2 slot before it is answered
/// `503 login_busy`.
const HASH_WAIT: Duration = Duration::from_secs(5);

/// Why [`HashBudget`] did not hash or check a secret.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every slot stayed busy for [`HASH_WAIT`].
    #[error("every password-hash slot is busy")]
    Busy,
    /// The hashing itself failed (the blocking task died or argon2 refused).
    #[error("the password hash failed: {0}")]
    Failed(String),
}

impl From<HashError> for AppError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Busy => AppError::unavailable(
                "login_busy",
                "too many client secrets are being checked; retry in a second",
            ),
            HashError::Failed(detail) => AppError::internal("argon2", detail),
        }
    }
}

/// This replica's budget of Argon2 work: at most `concurrency` hashes or
/// checks of client secrets run at once (each holds about 19 MiB and a
/// core for tens of milliseconds); the others wait up to [`HASH_WAIT`].
pub struct HashBudget {
    /// A permit is held by the blocking task that hashes, so it returns
    /// to the semaphore when the hash ends, even if the request that asked
    /// for it was dropped meanwhile.
    permits: Arc<Semaphore>,
    /// How long a caller waits for a permit.
    wait: Duration,
}

impl HashBudget {
    /// A budget of `concurrency` (at least 1) hashes at once.
    pub fn new(concurrency: u32) -> HashBudget {
        Self::with_wait(concurrency, HASH_WAIT)
    }

    fn with_wait(concurrency: u32, wait: Duration) -> HashBudget {
        let permits = usize::try_from(concurrency.max(1)).unwrap_or(1);
        HashBudget {
            permits: Arc::new(Semaphore::new(permits)),
            wait,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|error| HashError::Failed(error.to_string()))
    }

    /// The Argon2id PHC string of `secret`.
    pub async fn hash(&self, secret: &str) -> Result<String, HashError> {
        let secret = zeroize::Zeroizing::new(secret.to_string());
        self.run(move || hash_secret(&secret))
            .await?
            .map_err(|error| HashError::Failed(error.message))
    }

    /// Whether `secret` matches the PHC string `phc`.
    pub async fn verify(&self, phc: String, secret: &str) -> Result<bool, HashError> {
        let secret = zeroize::Zeroizing::new(secret.to_string());
        self.run(move || verify_secret(&phc, &secret)).await
    }
}

/// A row of `identities` to insert.
#[derive(Debug)]
pub struct IdentityRow<'a> {
    /// `idn_…`.
    pub id: &'a str,
    /// The org.
    pub org: &'a str,
    /// Unique in the org.
    pub name: &'a str,
    /// Its role.
    pub role: Role,
    /// May manage orgs.
    pub platform_admin: bool,
    /// `cid_…`.
    pub client_id: &'a str,
    /// The secret's Argon2id PHC string; empty while no secret is issued.
    pub secret_hash: &'a str,
    /// The identity that created it (`system` for the bootstrap root).
    pub created_by: &'a str,
}

/// Inserts an identity inside `tx`, active, without MFA. `Ok(false)` when
/// the org already has an identity of that name.
pub async fn insert_identity(tx: &mut Tx, row: &IdentityRow<'_>) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO identities (id, org_id, name, role, platform_admin, client_id, secret_hash, \
         failed_attempts, locked_until, totp_secret, totp_last_step, created_at, status, \
         created_by, totp_pending, totp_failures, totp_locked_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, NULL, 0, $8, 'active', $9, NULL, 0, 0)",
    )
    .bind(row.id)
    .bind(row.org)
    .bind(row.name)
    .bind(row.role.name())
    .bind(i64::from(row.platform_admin))
    .bind(row.client_id)
    .bind(row.secret_hash)
    .bind(now_ms())
    .bind(row.created_by)
    .execute(&mut **tx)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
        Err(error) => Err(error),
    }
}

/// Creates an identity in `org` inside `tx` with a fresh secret (the
/// bootstrap root; the API creates identities through
/// `crate::kernel::identities`).
pub async fn create_identity(
    tx: &mut Tx,
    org: &str,
    name: &str,
    role: Role,
    platform_admin: bool,
    created_by: &str,
) -> AppResult<NewCredentials> {
    let id = new_id("idn");
    let client_id = new_id("cid");
    let client_secret = new_client_secret();
    let secret = zeroize::Zeroizing::new(client_secret.clone());
    let secret_hash = tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|error| AppError::internal("argon2 task", error))??;
    let row = IdentityRow {
        id: &id,
        org,
        name,
        role,
        platform_admin,
        client_id: &client_id,
        secret_hash: &secret_hash,
        created_by,
    };
    if !insert_identity(tx, &row).await? {
        return Err(AppError::conflict(
            "already_exists",
            format!("an identity named {name} exists"),
        ));
    }
    Ok(NewCredentials {
        id,
        client_id,
        client_secret,
    })
}

/// The answer of `POST /api/v1/auth/token`.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenAnswer {
    /// The bearer token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAnswer(<redacted>)")
    }
}

/// One login attempt (`POST /api/v1/auth/token`).
pub struct LoginAttempt<'a> {
    /// The client id given (anything: it is untrusted input).
    pub client_id: &'a str,
    /// The client secret given; never logged, stored or audited.
    pub client_secret: &'a str,
    /// The socket peer.
    pub ip: IpAddr,
    /// The HTTP request id.
    pub request_id: &'a str,
}

impl std::fmt::Debug for LoginAttempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("client_id", &client_resource(self.client_id))
            .field("client_secret", &"<redacted>")
            .field("ip", &self.ip)
            .finish()
    }
}

/// A refused login: the error to answer and, when the client should come
/// back later, after how many seconds (`Retry-After`).
#[derive(Debug)]
pub struct LoginRefusal {
    /// The error to answer.
    pub error: AppError,
    /// Seconds to wait before trying again, when waiting helps.
    pub retry_after_secs: Option<u64>,
}

impl From<AppError> for LoginRefusal {
    fn from(error: AppError) -> Self {
        LoginRefusal {
            error,
            retry_after_secs: None,
        }
    }
}

impl From<sqlx::Error> for LoginRefusal {
    fn from(error: sqlx::Error) -> Self {
        AppError::from(error).into()
    }
}

impl From<HashError> for LoginRefusal {
    fn from(error: HashError) -> Self {
        let busy = matches!(error, HashError::Busy);
        LoginRefusal {
            error: error.into(),
            retry_after_secs: busy.then_some(1),
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// The audit resource naming a login's client id: `client:<id>` when it
/// has the shape of one (`cid_` and 32 hex digits), else the fixed
/// `client:malformed`, so that no untrusted text (a secret pasted into the
/// wrong field) reaches the audit log.
pub fn client_resource(client_id: &str) -> String {
    match client_key(client_id) {
        Some(id) => format!("client:{id}"),
        None => "client:malformed".into(),
    }
}

/// `client_id` when it has the shape [`crate::kernel::db::new_id`] gives client
/// ids.
fn client_key(client_id: &str) -> Option<&str> {
    let hex_part = client_id.strip_prefix("cid_")?;
    (hex_part.len() == 32
        && hex_part
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)))
    .then_some(client_id)
}

/// Checks client credentials and issues a token valid for `ttl_secs`.
///
/// In this order: the throttle (per client id and per address: `429
/// login_throttled` with `Retry-After`, before any database read or Argon2
/// work); the lockout (`429 locked_out`); the secret, under the Argon2
/// budget (`503 login_busy` when it stays full); the identity's status
/// (`403 identity_disabled`, answered only to whoever knows the secret).
/// Every attempt past the throttle is audited: a refusal in a transaction
/// of its own (an unknown client id in the platform org's chain), a
/// success in the transaction that stores the token.
pub async fn login(
    db: &Db,
    throttle: &LoginThrottle,
    hashes: &HashBudget,
    attempt: &LoginAttempt<'_>,
    ttl_secs: u64,
) -> Result<TokenAnswer, LoginRefusal> {
    if let Err(wait) = throttle.admit(attempt.client_id, attempt.ip) {
        // Not audited: a record per refused attempt would let a flood
        // spend the database's write budget that the throttle protects.
        metrics::counter!("custos_login_throttled_total").increment(1);
        return Err(LoginRefusal {
            error: AppError::new(
                ErrorKind::RateLimited,
                "login_throttled",
                "too many login attempts for this client id or from this address; retry later",
            ),
            retry_after_secs: Some(retry_seconds(wait)),
        });
    }
    let invalid = || AppError::unauthenticated("invalid_credentials", "invalid client credentials");
    let row = sqlx::query(
        "SELECT id, org_id, secret_hash, locked_until, status FROM identities \
         WHERE client_id = $1",
    )
    .bind(attempt.client_id)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else {
        // Same work as a real check, so an unknown id is not faster.
        hashes
            .verify(DECOY_PHC.to_string(), attempt.client_secret)
            .await?;
        record_unknown_client(db, attempt).await?;
        return Err(invalid().into());
    };
    let identity: String = row.try_get("id")?;
    let org: String = row.try_get("org_id")?;
    let phc: String = row.try_get("secret_hash")?;
    let locked_until: i64 = row.try_get("locked_until")?;
    let status: String = row.try_get("status")?;
    let event = |outcome: &'static str, detail: Value| LoginEvent {
        org: org.clone(),
        identity: identity.clone(),
        outcome,
        detail,
    };
    let now = now_ms();
    if locked_until > now {
        event("denied", json!({"reason": "locked_out"}))
            .append_alone(db, attempt)
            .await?;
        let wait = Duration::from_millis(u64::try_from(locked_until - now).unwrap_or(0));
        return Err(LoginRefusal {
            error: AppError::new(
                ErrorKind::RateLimited,
                "locked_out",
                "too many failed logins; try again later",
            ),
            retry_after_secs: Some(retry_seconds(wait)),
        });
    }
    if !hashes.verify(phc, attempt.client_secret).await? {
        // The failure is counted atomically (the fifth one locks) and
        // audited in one transaction of its own.
        let mut tx = db.begin().await?;
        sqlx::query(
            "UPDATE identities SET failed_attempts = failed_attempts + 1, \
             locked_until = CASE WHEN failed_attempts + 1 >= $1 THEN $2 ELSE locked_until END \
             WHERE id = $3",
        )
        .bind(MAX_FAILED_LOGINS)
        .bind(now + LOCKOUT_MS)
        .bind(&identity)
        .execute(&mut *tx)
        .await?;
        event("denied", json!({"reason": "invalid_credentials"}))
            .append(db, &mut tx, attempt)
            .await?;
        tx.commit().await?;
        return Err(invalid().into());
    }
    if status != "active" {
        event("denied", json!({"reason": "identity_disabled"}))
            .append_alone(db, attempt)
            .await?;
        return Err(AppError::forbidden("identity_disabled", "this identity is disabled").into());
    }
    let token = random_token("cst");
    let token_id = new_id("tok");
    let ttl_ms = i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE identities SET failed_attempts = 0, locked_until = 0 WHERE id = $1")
        .bind(&identity)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM tokens WHERE expires_at < $1")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO tokens (token_hash, identity_id, org_id, expires_at, id, created_at, ip) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(token_hash(&token))
    .bind(&identity)
    .bind(&org)
    .bind(now.saturating_add(ttl_ms))
    .bind(&token_id)
    .bind(now)
    .bind(attempt.ip.to_string())
    .execute(&mut *tx)
    .await?;
    event("success", json!({"tokenId": token_id}))
        .append(db, &mut tx, attempt)
        .await?;
    tx.commit().await?;
    Ok(TokenAnswer {
        access_token: token,
        token_type: "Bearer",
        expires_in: ttl_secs,
    })
}

/// The audit record of a login of a known identity (`auth.token`).
struct LoginEvent {
    org: String,
    identity: String,
    outcome: &'static str,
    detail: Value,
}

impl LoginEvent {
    fn event<'a>(
        &'a self,
        resource: &'a str,
        ip: &'a str,
        attempt: &'a LoginAttempt<'_>,
    ) -> AuditEvent<'a> {
        AuditEvent {
            org: &self.org,
            action: "auth.token",
            resource,
            identity: &self.identity,
            ip,
            approved: "not_required",
            outcome: self.outcome,
            request_id: attempt.request_id,
            detail: self.detail.clone(),
        }
    }

    async fn append(&self, db: &Db, tx: &mut Tx, attempt: &LoginAttempt<'_>) -> AppResult<()> {
        let resource = format!("identity:{}", self.identity);
        let ip = attempt.ip.to_string();
        audit::append(db, tx, &self.event(&resource, &ip, attempt)).await?;
        Ok(())
    }

    async fn append_alone(&self, db: &Db, attempt: &LoginAttempt<'_>) -> AppResult<()> {
        let resource = format!("identity:{}", self.identity);
        let ip = attempt.ip.to_string();
        audit::append_alone(db, &self.event(&resource, &ip, attempt)).await?;
        Ok(())
    }
}

/// Audits a login with an unknown client id in the platform org's chain
/// (there is no other org to tell), in a transaction of its own. Before
/// the bootstrap there is no chain, and no identity to log in as.
async fn record_unknown_client(db: &Db, attempt: &LoginAttempt<'_>) -> AppResult<()> {
    let platform = sqlx::query("SELECT id FROM orgs WHERE name = 'platform'")
        .fetch_optional(db.pool())
        .await?;
    let Some(platform) = platform else {
        return Ok(());
    };
    let org: String = platform.try_get("id")?;
    audit::append_alone(
        db,
        &AuditEvent {
            org: &org,
            action: "auth.token",
            resource: &client_resource(attempt.client_id),
            identity: "anonymous",
            ip: &attempt.ip.to_string(),
            approved: "not_required",
            outcome: "denied",
            request_id: attempt.request_id,
            detail: json!({"reason": "unknown_client"}),
        },
    )
    .await?;
    Ok(())
}

/// Login throttling, per replica, before any Argon2 work: a keyed GCRA
/// limiter (`governor`) per client id and one per source address, each a
/// burst of its per-minute number, then one attempt every `60 / n`
/// seconds. Client ids without the shape of one share a single key (so
/// made-up text cannot grow the table); IPv6 addresses count per /64.
/// Keys idle long enough to be full again are dropped by
/// [`LoginThrottle::forget_idle`].
pub struct LoginThrottle {
    per_client: DefaultKeyedRateLimiter<String>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
}

impl LoginThrottle {
    /// A throttle with the `[auth]` settings.
    pub fn new(settings: &AuthSettings) -> LoginThrottle {
        let quota = |per_minute: u32| {
            Quota::per_minute(NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN))
        };
        LoginThrottle {
            per_client: DefaultKeyedRateLimiter::keyed(quota(settings.login_per_client_per_min)),
            per_address: DefaultKeyedRateLimiter::keyed(quota(settings.login_per_ip_per_min)),
        }
    }

    /// Takes one attempt from the budgets of `client_id` and `ip`; when
    /// either is empty, how long until it has one again. The address is
    /// checked first, so a refused address spends nothing of a client id's
    /// budget.
    pub fn admit(&self, client_id: &str, ip: IpAddr) -> Result<(), Duration> {
        if let Err(not_until) = self.per_address.check_key(&address_key(ip)) {
            return Err(not_until.wait_time_from(self.per_address.clock().now()));
        }
        let client = client_key(client_id).unwrap_or("malformed").to_string();
        if let Err(not_until) = self.per_client.check_key(&client) {
            return Err(not_until.wait_time_from(self.per_client.clock().now()));
        }
        Ok(())
    }

    /// Drops the keys whose budgets are full again (they answer as a fresh
    /// key would); the server calls it every minute.
    pub fn forget_idle(&self) {
        self.per_client.retain_recent();
        self.per_client.shrink_to_fit();
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
    }
}

/// The throttle's key of an address: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64 network.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// The stored form of a bearer token: SHA-256 under a domain label.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::new()
        .chain_update(b"custos/token/v1")
        .chain_update(token.as_bytes())
        .finalize()
        .to_vec()
}

/// The caller of the token whose SHA-256 is `hash`, and the token's expiry.
/// Lookup is by the token's hash, so no secret is compared byte by byte.
/// A disabled identity's token is refused even if it is still stored (a
/// login that raced the disabling).
async fn authenticate_in(
    db: &Db,
    keyring: &crate::kernel::keyring::Keyring,
    hash: &[u8],
    ip: IpAddr,
    request_id: &str,
) -> AppResult<(Caller, i64)> {
    let mut conn = db.pool().acquire().await?;
    let row = sqlx::query(
        "SELECT t.expires_at, i.id, i.name, i.org_id, i.role, i.platform_admin, i.status, \
         i.created_by, i.created_at, i.authority \
         FROM tokens t JOIN identities i ON i.id = t.identity_id WHERE t.token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(AppError::unauthenticated(
            "invalid_token",
            "the bearer token is not valid",
        ));
    };
    let expires_at: i64 = row.try_get("expires_at")?;
    if expires_at <= now_ms() {
        return Err(AppError::unauthenticated(
            "token_expired",
            "the bearer token has expired",
        ));
    }
    if row.try_get::<String, _>("status")? != "active" {
        return Err(AppError::forbidden(
            "identity_disabled",
            "this identity is disabled",
        ));
    }
    // What the identity may do is used only as the control plane sealed it.
    let authority = crate::kernel::authority::Authority::from_row(&row, "")?;
    let seal: Option<Vec<u8>> = row.try_get("authority")?;
    if !crate::kernel::authority::holds(keyring, &mut conn, &authority, seal.as_deref()).await {
        return Err(crate::kernel::authority::invalid());
    }
    let role: String = row.try_get("role")?;
    let caller = Caller {
        identity: row.try_get("id")?,
        name: row.try_get("name")?,
        org: row.try_get("org_id")?,
        role: Role::parse(&role)
            .ok_or_else(|| AppError::internal("identity role", format!("unknown role {role}")))?,
        platform_admin: row.try_get::<i64, _>("platform_admin")? == 1,
        ip,
        request_id: request_id.to_string(),
        totp: None,
    };
    Ok((caller, expires_at))
}

/// Verified tokens, kept for a short time so that a busy client's every
/// call does not read the database (the transit data plane). Keyed by the
/// token's SHA-256, like the table; an entry answers only until the
/// earlier of its token's expiry and `ttl` after it was read, and `ttl` is
/// at most [`crate::kernel::config::MAX_TOKEN_CACHE_MS`] (one second). A token
/// revoked or an identity disabled on this replica is dropped from its
/// cache at once ([`TokenCache::forget_tokens`],
/// [`TokenCache::forget_identity`]); on another replica it stays usable
/// for at most `ttl`.
pub struct TokenCache {
    ttl_ms: i64,
    entries: std::sync::Mutex<std::collections::HashMap<Vec<u8>, CachedToken>>,
}

#[derive(Clone)]
struct CachedToken {
    identity: String,
    name: String,
    org: String,
    role: Role,
    platform_admin: bool,
    expires_at: i64,
    good_until: i64,
}

/// The most tokens a replica keeps (the cache is emptied when full).
const TOKEN_CACHE_CAPACITY: usize = 100_000;

impl TokenCache {
    /// A cache keeping tokens for `ttl_ms` (0: no caching), at most
    /// [`crate::kernel::config::MAX_TOKEN_CACHE_MS`].
    pub fn new(ttl_ms: u64) -> TokenCache {
        let ttl_ms = ttl_ms.min(crate::kernel::config::MAX_TOKEN_CACHE_MS);
        TokenCache {
            ttl_ms: i64::try_from(ttl_ms).unwrap_or(0),
            entries: Default::default(),
        }
    }

    fn entries(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<Vec<u8>, CachedToken>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the tokens whose SHA-256 ([`token_hash`]) are `hashes`
    /// (revoked on this replica).
    pub fn forget_tokens(&self, hashes: &[Vec<u8>]) {
        let mut entries = self.entries();
        for hash in hashes {
            entries.remove(hash);
        }
    }

    /// Drops every cached token (at seal).
    pub fn clear(&self) {
        self.entries().clear();
    }

    /// Drops every token of `identity` (disabled, deleted or cut off on
    /// this replica).
    pub fn forget_identity(&self, identity: &str) {
        self.entries().retain(|_, entry| entry.identity != identity);
    }

    /// The caller of `token`, from the cache or the database.
    pub async fn authenticate(
        &self,
        db: &Db,
        keyring: &crate::kernel::keyring::Keyring,
        token: &str,
        ip: IpAddr,
        request_id: &str,
    ) -> AppResult<Caller> {
        let hash = token_hash(token);
        let now = now_ms();
        let cached = self.entries().get(&hash).cloned();
        if let Some(entry) = cached.filter(|entry| entry.good_until > now) {
            if entry.expires_at <= now {
                return Err(AppError::unauthenticated(
                    "token_expired",
                    "the bearer token has expired",
                ));
            }
            return Ok(Caller {
                identity: entry.identity,
                name: entry.name,
                org: entry.org,
                role: entry.role,
                platform_admin: entry.platform_admin,
                ip,
                request_id: request_id.to_string(),
                totp: None,
            });
        }
        let (caller, expires_at) = authenticate_in(db, keyring, &hash, ip, request_id).await?;
        if self.ttl_ms > 0 {
            let mut entries = self.entries();
            if entries.len() >= TOKEN_CACHE_CAPACITY {
                entries.clear();
            }
            entries.insert(
                hash,
                CachedToken {
                    identity: caller.identity.clone(),
                    name: caller.name.clone(),
                    org: caller.org.clone(),
                    role: caller.role,
                    platform_admin: caller.platform_admin,
                    expires_at,
                    good_until: now + self.ttl_ms,
                },
            );
        }
        Ok(caller)
    }
}

/// On the first start: creates the platform org, its default policy and the
/// root identity, and returns the root credentials (shown once). Later
/// starts return `None`. Safe with several replicas starting at once: the
/// `meta` row is the claim.
pub async fn bootstrap(db: &Db) -> AppResult<Option<NewCredentials>> {
    let mut tx = db.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('bootstrapped', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind(now_ms().to_string())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let org = crate::kernel::orgs::create_org(db, &mut tx, "platform").await?;
    let credentials = create_identity(&mut tx, &org, "root", Role::Admin, true, "system").await?;
    crate::kernel::audit::append(
        db,
        &mut tx,
        &crate::kernel::audit::AuditEvent {
            org: &org,
            action: "system.bootstrap",
            resource: "org:platform",
            identity: "system",
            ip: "",
            approved: "not_required",
            outcome: "success",
            request_id: "",
            detail: serde_json::json!({"rootIdentity": credentials.id}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some(credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_client: u32, per_ip: u32) -> AuthSettings {
        AuthSettings {
            login_per_client_per_min: per_client,
            login_per_ip_per_min: per_ip,
            password_hash_concurrency: 1,
        }
    }

    const CLIENT: &str = "cid_0123456789abcdef0123456789abcdef";

    #[test]
    fn the_throttle_counts_each_client_id_and_each_address_apart() {
        let throttle = LoginThrottle::new(&settings(2, 100));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(throttle.admit(CLIENT, ip).is_ok());
        assert!(throttle.admit(CLIENT, ip).is_ok());
        let wait = throttle.admit(CLIENT, ip).unwrap_err();
        // One attempt comes back every 30 seconds at 2 a minute.
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert_eq!(retry_seconds(wait), wait.as_secs() + 1);
        // Another client id from the same address has its own budget.
        let other = "cid_ffffffffffffffffffffffffffffffff";
        assert!(throttle.admit(other, ip).is_ok());
        // Text without the shape of a client id shares one budget.
        assert!(throttle.admit("secret-pasted-here", ip).is_ok());
        assert!(throttle.admit("another-made-up-id", ip).is_ok());
        assert!(throttle.admit("a-third-one", ip).is_err());

        let throttle = LoginThrottle::new(&settings(100, 3));
        for index in 0..3 {
            assert!(throttle.admit(&format!("cid_{index:032x}"), ip).is_ok());
        }
        assert!(throttle
            .admit("cid_0000000000000000000000000000000f", ip)
            .is_err());
        // A refused address spends nothing of the client id's budget.
        let throttle = LoginThrottle::new(&settings(1, 1));
        assert!(throttle.admit(CLIENT, ip).is_ok());
        let elsewhere: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(throttle.admit(other, ip).is_err());
        assert!(throttle.admit(other, elsewhere).is_ok());
    }

    #[test]
    fn an_ipv6_host_counts_once_per_64_network() {
        let throttle = LoginThrottle::new(&settings(100, 2));
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_network: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_network: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(throttle.admit(CLIENT, first).is_ok());
        assert!(throttle.admit(CLIENT, same_network).is_ok());
        assert!(throttle.admit(CLIENT, same_network).is_err());
        assert!(throttle.admit(CLIENT, other_network).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn only_the_shape_of_a_client_id_reaches_the_audit() {
        assert_eq!(client_resource(CLIENT), format!("client:{CLIENT}"));
        for text in [
            "cs_secret",
            "cid_XYZ",
            "cid_0123",
            "",
            "cid_0123456789ABCDEF0123456789ABCDEF",
        ] {
            assert_eq!(client_resource(text), "client:malformed", "{text}");
        }
        let attempt = LoginAttempt {
            client_id: "cs_oops",
            client_secret: "cs_real_secret",
            ip: "192.0.2.1".parse().unwrap(),
            request_id: "rq_1",
        };
        let debug = format!("{attempt:?}");
        assert!(
            !debug.contains("cs_real_secret") && !debug.contains("cs_oops"),
            "{debug}"
        );
    }

    #[test]
    fn the_token_cache_never_trusts_a_token_longer_than_a_second() {
        assert_eq!(TokenCache::new(60_000).ttl_ms, 1000);
        assert_eq!(TokenCache::new(250).ttl_ms, 250);
        assert_eq!(TokenCache::new(0).ttl_ms, 0);
    }

    #[tokio::test]
    async fn the_hash_budget_answers_busy_instead_of_queueing_forever() {
        let budget = HashBudget::with_wait(1, Duration::from_millis(50));
        let held = budget.permits.clone().acquire_owned().await.unwrap();
        let waiting = budget.verify(DECOY_PHC.to_string(), "x");
        assert!(matches!(waiting.await, Err(HashError::Busy)));
        drop(held);
        assert!(!budget.verify(DECOY_PHC.to_string(), "x").await.unwrap());
        let phc = budget.hash("cs_x").await.unwrap();
        assert!(budget.verify(phc.clone(), "cs_x").await.unwrap());
        assert!(!budget.verify(phc, "cs_y").await.unwrap());
        assert!(!budget.verify(String::new(), "").await.unwrap());
    }
}
