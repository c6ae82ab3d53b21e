//! Shared test support: a control plane started in-process with `run` on a
//! real socket (port 0), over SQLite (a temporary file) or PostgreSQL (a
//! fresh database on the server named by `CUSTOS_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), and a small HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Drops the database of a `postgres://` URL made by
/// [`fresh_postgres_database`]; nothing for SQLite.
pub async fn drop_postgres_database(url: &str) {
    let Some(name) = url
        .strip_prefix("postgres://")
        .and_then(|rest| rest.rsplit('/').next())
    else {
        return;
    };
    let pool = sqlx::AnyPool::connect(&postgres_admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// The backends every test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

pub fn postgres_admin_url() -> String {
    std::env::var("CUSTOS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh PostgreSQL database; returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    let mut bytes = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let name = format!("custos_test_{}", hex::encode(bytes));
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL at {admin}: {error} (scripts/test starts one)"));
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// A running control plane.
pub struct Server {
    pub address: SocketAddr,
    pub database_url: String,
    pub root_client_id: String,
    pub root_client_secret: String,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The keyring master key of every test server (seal mode `env`), fixed so
/// that a server restarted on the same store unseals.
pub const TEST_MASTER_KEY: &str =
    "7e57000000000000000000000000000000000000000000000000000000007e57";

impl Server {
    pub async fn start(backend: Backend) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let database_url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("custos.db").display()),
            Backend::Postgres => fresh_postgres_database().await,
        };
        Self::start_on(dir, database_url).await
    }

    pub async fn start_on(dir: tempfile::TempDir, database_url: String) -> Server {
        Self::start_with(dir, database_url, "rate_limit_per_sec = 1000\n").await
    }

    /// Starts with extra configuration lines (TOML), seal mode `env`.
    pub async fn start_with(dir: tempfile::TempDir, database_url: String, extra: &str) -> Server {
        // `dev_mode` first: `extra` may end inside a table of its own.
        let seal = format!("[seal]\nmode = \"env\"\nmaster_key = \"{TEST_MASTER_KEY}\"\n");
        Self::start_configured(
            dir,
            database_url,
            &format!("dev_mode = true\n{extra}\n{seal}"),
            true,
        )
        .await
    }

    /// Starts with `config` (TOML lines after `listen`, `data_dir` and
    /// `database_url`). With `bootstrap`, the root credentials are created
    /// first (seal mode `env`); otherwise `sys/init` creates them and the
    /// server's root credentials stay empty.
    pub async fn start_configured(
        dir: tempfile::TempDir,
        database_url: String,
        config: &str,
        bootstrap: bool,
    ) -> Server {
        let config = custos_control_plane::kernel::config::Config::parse(
            &format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ndatabase_url = \"{database_url}\"\n{config}",
                dir.path().display()
            ),
            [],
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        // Root credentials are printed on stdout; in-process, read them back
        // by bootstrapping first (run() then finds the store bootstrapped).
        let db = custos_control_plane::kernel::db::Db::connect(&database_url)
            .await
            .unwrap();
        let credentials = if bootstrap {
            custos_control_plane::kernel::auth::bootstrap(&db)
                .await
                .unwrap()
                .expect("fresh store")
        } else {
            custos_control_plane::kernel::auth::NewCredentials::default()
        };
        db.close().await;
        let task = tokio::spawn(custos_control_plane::run(
            config,
            listener,
            None,
            async move {
                let _ = receiver.await;
            },
        ));
        let server = Server {
            address,
            database_url,
            root_client_id: credentials.client_id,
            root_client_secret: credentials.client_secret,
            dir,
            shutdown: Some(sender),
            task: Some(task),
        };
        for _ in 0..200 {
            if server
                .request("GET", "/api/v1/sys/health", None, None)
                .await
                .0
                == 200
            {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("control plane did not start");
    }

    /// Shuts the server down and keeps its store (for a restart on it).
    pub async fn halt(mut self) -> (tempfile::TempDir, String) {
        self.shut_down().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.database_url.clone())
    }

    async fn shut_down(&mut self) {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Shuts the server down and drops its PostgreSQL database.
    pub async fn stop(mut self) -> (tempfile::TempDir, String) {
        self.shut_down().await;
        drop_postgres_database(&self.database_url).await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.database_url.clone())
    }

    /// Sends one request; answers (status, JSON body or Null, headers text).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value, String) {
        self.raw(method, path, token, body, "application/json")
            .await
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        content_type: &str,
    ) -> (u16, Value, String) {
        let authorization = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Content-Type", content_type)];
        if let Some(authorization) = &authorization {
            headers.push(("Authorization", authorization.as_str()));
        }
        self.request_with(method, path, &headers, body).await
    }

    /// Sends one request with `headers` (a body's content type among them
    /// when it has one); answers (status, JSON body or Null, headers text).
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Value, String) {
        let mut stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        let body = body.unwrap_or("");
        let sends_body = !body.is_empty() || method == "POST" || method == "PUT";
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("content-type") && !sends_body {
                continue;
            }
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if sends_body {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).to_string();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, value, head.to_string())
    }

    pub async fn token(&self, client_id: &str, client_secret: &str) -> String {
        let (status, body, _) = self
            .request(
                "POST",
                "/api/v1/auth/token",
                None,
                Some(&json!({"clientId": client_id, "clientSecret": client_secret}).to_string()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["accessToken"].as_str().unwrap().to_string()
    }

    pub async fn root_token(&self) -> String {
        self.token(
            &self.root_client_id.clone(),
            &self.root_client_secret.clone(),
        )
        .await
    }

    /// Creates an identity in the caller's org (or `org`), answers (id, token).
    pub async fn identity(
        &self,
        token: &str,
        name: &str,
        role: &str,
        org: Option<&str>,
    ) -> (String, String) {
        let mut body = json!({"name": name, "role": role});
        if let Some(org) = org {
            body["orgId"] = json!(org);
        }
        let (status, created, _) = self
            .request(
                "POST",
                "/api/v1/identities",
                Some(token),
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let token = self
            .token(
                created["clientId"].as_str().unwrap(),
                created["clientSecret"].as_str().unwrap(),
            )
            .await;
        (created["id"].as_str().unwrap().to_string(), token)
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// A JSON call as `token`: (status, body).
pub async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|body| body.to_string());
    let (status, answer, _) = server
        .request(method, path, Some(token), body.as_deref())
        .await;
    (status, answer)
}

/// The error code of an error answer ("" otherwise).
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// Approves the approval of a `202 pending_approval` answer as `approver`;
/// answers the vote's (status, body).
pub async fn approve(server: &Server, approver: &str, pending: &Value) -> (u16, Value) {
    let approval = pending["approvalId"].as_str().expect("an approval id");
    call(
        server,
        "POST",
        &format!("/api/v1/approvals/{approval}/approve"),
        approver,
        Some(json!({})),
    )
    .await
}

/// The operation of a `202 pending_approval` answer (`GET
/// /api/v1/operations/{id}`, which must answer 200).
pub async fn operation(server: &Server, token: &str, pending: &Value) -> Value {
    let id = pending["operationId"].as_str().expect("an operation id");
    let (status, operation) = call(
        server,
        "GET",
        &format!("/api/v1/operations/{id}"),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{operation}");
    operation
}

// ---- SoftHSM2 ---------------------------------------------------------------

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const TOKEN: &str = "custos-cp-test";
pub const TOKEN_PIN: &str = "2468";

/// A SoftHSM2 token directory for this test binary, initialised before the
/// first PKCS#11 call of the process (SoftHSM2 reads `SOFTHSM2_CONF` in
/// `C_Initialize`).
pub fn softhsm() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            std::path::Path::new(SOFTHSM_MODULE).exists(),
            "the SoftHSM2 PKCS#11 module {SOFTHSM_MODULE} is missing: install the Debian \
             package softhsm2 (scripts/test installs it)"
        );
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
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let output = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", TOKEN])
            .args(["--pin", TOKEN_PIN, "--so-pin", "97531"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    })
}

// ---- fixtures written into the database ---------------------------------------

/// A pool on the server's database (tests that play a database writer, or
/// write fixtures).
pub async fn pool(server: &Server) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&server.database_url).await.unwrap()
}

/// The org of the identity `token` belongs to.
pub async fn org_of(server: &Server, token: &str) -> String {
    let (status, listed) = call(server, "GET", "/api/v1/identities", token, None).await;
    assert_eq!(status, 200, "{listed}");
    let pool = pool(server).await;
    let id = listed["items"][0]["id"].as_str().unwrap().to_string();
    let org: String = sqlx::Row::get(
        &sqlx::query("SELECT org_id FROM identities WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap(),
        "org_id",
    );
    pool.close().await;
    org
}

/// Writes a 2-of-3 wallet row of `protocol` in `org` with real public key
/// data (`tests/fixtures/public-key-info.json`, generated once with the
/// project's own DKG: `cargo run --release -p custos-protocol --features sim
/// --example generate-public-key-info -- control-plane/tests/fixtures`), so
/// that views and addresses work; no node holds its shares, so it cannot
/// sign. Answers its id.
pub async fn wallet_fixture(server: &Server, org: &str, name: &str, protocol: &str) -> String {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/public-key-info.json")).unwrap();
    let (chain, curve) = match protocol {
        "cggmp21" => ("ethereum", "secp256k1"),
        "frost-taproot" => ("bitcoin", "secp256k1"),
        _ => ("solana", "ed25519"),
    };
    let key_info = hex::decode(fixture[curve].as_str().unwrap()).unwrap();
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let id = format!("wal_{}", hex::encode(bytes));
    let committee = json!([
        "1111111111111111111111111111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222222222222222222222222222",
        "3333333333333333333333333333333333333333333333333333333333333333"
    ]);
    let pool = pool(server).await;
    sqlx::query(
        "INSERT INTO wallets (id, org_id, name, protocol, chain, public_key, chain_code, \
         key_info, threshold, committee, generation, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 2, $9, 0, 0)",
    )
    .bind(&id)
    .bind(org)
    .bind(name)
    .bind(protocol)
    .bind(chain)
    .bind(vec![2u8; 33])
    .bind(vec![0u8; 32])
    .bind(key_info)
    .bind(committee.to_string())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    id
}

/// The RFC 6238 code of an `otpauth://` URI's secret `offset` seconds from
/// now (±30 s is the previous or next time step, accepted as clock skew).
pub fn totp_code(uri: &str, offset: i64) -> String {
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let bytes = custos_control_plane::kernel::totp::base32_decode(secret).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    custos_control_plane::kernel::totp::TotpSecret::from_bytes(bytes).code_at(now + offset)
}
