//! A whole deployment for a test: `custos-testnet up` as a child process
//! (the control plane and three signer nodes, each its own process, on
//! loopback), over SQLite or a fresh PostgreSQL database, and a blocking
//! HTTP client.
//!
//! Nodes get Paillier primes from `protocol/testdata/primes.json` (made by
//! this project's `generate-fixtures` example; `--dev-primes`), so ECDSA
//! aux info takes seconds; nodes keep no background prime pool.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Tests of one binary take turns: two cores run one deployment's
/// protocol sessions within their deadlines, not three at once.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The folder with the workspace's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for binary in ["custos", "custos-signer", "custos-testnet"] {
        assert!(
            dir.join(binary).is_file(),
            "{} is missing: build the binaries first (cargo build --bins; scripts/test does)",
            dir.join(binary).display()
        );
    }
    dir
}

pub fn postgres_admin_url() -> String {
    std::env::var("CUSTOS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A fresh PostgreSQL database; returns its URL.
pub fn fresh_postgres_database() -> String {
    block_on(async {
        sqlx::any::install_default_drivers();
        let admin = postgres_admin_url();
        let mut bytes = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let name = format!("custos_e2e_{}", hex::encode(bytes));
        let pool = sqlx::AnyPool::connect(&admin)
            .await
            .unwrap_or_else(|error| {
                panic!("PostgreSQL at {admin}: {error} (scripts/test starts one)")
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let (base, _) = admin.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    })
}

/// Runs one SQL statement on the testnet's database.
pub fn execute_sql(database_url: &str, sql: &str, binds: &[&str]) -> u64 {
    let (url, sql, binds) = (
        database_url.to_string(),
        sql.to_string(),
        binds
            .iter()
            .map(|bind| bind.to_string())
            .collect::<Vec<_>>(),
    );
    block_on(async move {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(bind);
        }
        let affected = query.execute(&pool).await.unwrap().rows_affected();
        pool.close().await;
        affected
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An identity created through the API.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: String,
    pub token: String,
    pub client_id: String,
    pub client_secret: String,
}

/// A running testnet.
pub struct Testnet {
    pub dir: tempfile::TempDir,
    pub address: SocketAddr,
    pub database_url: String,
    pub root: Identity,
    pub backend: Backend,
    child: Option<Child>,
    ecdsa: bool,
    port: u16,
    ups: usize,
}

impl Testnet {
    pub fn start(backend: Backend, ecdsa: bool) -> Testnet {
        let dir = tempfile::Builder::new()
            .prefix("custos-e2e-")
            .tempdir()
            .unwrap();
        let database_url = match backend {
            Backend::Sqlite => format!(
                "sqlite://{}",
                dir.path().join("control-plane").join("custos.db").display()
            ),
            Backend::Postgres => fresh_postgres_database(),
        };
        let mut testnet = Testnet {
            dir,
            address: "127.0.0.1:1".parse().unwrap(),
            database_url,
            root: Identity {
                id: String::new(),
                token: String::new(),
                client_id: String::new(),
                client_secret: String::new(),
            },
            backend,
            child: None,
            ecdsa,
            port: free_port(),
            ups: 0,
        };
        testnet.up();
        testnet
    }

    fn up(&mut self) {
        let started = Instant::now();
        let output = self.dir.path().join("testnet.out");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&output)
            .unwrap();
        let mut command = Command::new(bin_dir().join("custos-testnet"));
        command
            .arg("--dir")
            .arg(self.dir.path())
            .args(["up", "--nodes", "3", "--prime-pool-target", "0", "--port"])
            .arg(self.port.to_string())
            .arg("--dev-primes")
            .arg(repo_root().join("protocol/testdata/primes.json"))
            .arg("--database-url")
            .arg(&self.database_url)
            .env("RUST_LOG", "info,libp2p=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !self.ecdsa {
            command.arg("--no-ecdsa");
        }
        let mut child = command.spawn().unwrap();
        loop {
            let text = std::fs::read_to_string(&output).unwrap_or_default();
            if text.matches("Custos testnet is up").count() > self.ups {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("custos-testnet exited ({status}) before it was up:\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "the testnet did not come up in 15 minutes:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "testnet ({:?}, ecdsa {}) up in {:.1} s",
            self.backend,
            self.ecdsa,
            started.elapsed().as_secs_f64()
        );
        self.ups += 1;
        self.child = Some(child);
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("testnet.json")).unwrap(),
        )
        .unwrap();
        self.address = custos_testnet::http::address_of(state["url"].as_str().unwrap()).unwrap();
        let client_id = state["clientId"].as_str().unwrap().to_string();
        let client_secret = state["clientSecret"].as_str().unwrap().to_string();
        let token = self.token(&client_id, &client_secret);
        self.root = Identity {
            id: String::new(),
            token,
            client_id,
            client_secret,
        };
    }

    /// The pid of `control-plane` or `node-N`.
    pub fn pid(&self, name: &str) -> u32 {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("testnet.json")).unwrap(),
        )
        .unwrap();
        state["pids"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid for {name}: {state}")) as u32
    }

    /// `kill -9` of one process of the deployment.
    pub fn kill9(&self, name: &str) {
        let pid = self.pid(name);
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops what is left (`custos-testnet down`) and starts the deployment
    /// again on the same folder and database.
    pub fn restart(&mut self) {
        self.down();
        self.up();
    }

    /// Stops the deployment, runs `between` on its folder (to wipe a
    /// node's data, say), and starts it again on the same folder and
    /// database.
    pub fn restart_after(&mut self, between: impl FnOnce(&Path)) {
        self.down();
        between(self.dir.path());
        self.up();
    }

    fn down(&mut self) {
        let _ = Command::new(bin_dir().join("custos-testnet"))
            .arg("--dir")
            .arg(self.dir.path())
            .arg("down")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a second control-plane replica on the same database and nodes
    /// (what a production deployment of several replicas behind a load
    /// balancer does); it finds the coordinator key under the shared
    /// keyring. Answers its address and process; the caller kills it.
    pub fn start_replica(&self, name: &str) -> (SocketAddr, Child) {
        let source = self.dir.path().join("control-plane");
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let port = free_port();
        let config = std::fs::read_to_string(source.join("custos.toml")).unwrap();
        let mut lines: Vec<String> = config
            .lines()
            .filter(|line| {
                !line.starts_with("listen =")
                    && !line.starts_with("data_dir =")
                    && !line.starts_with("database_url =")
                    && !line.starts_with("replica_id =")
            })
            .map(str::to_string)
            .collect();
        lines.insert(
            0,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ndatabase_url = \"{}\"\nreplica_id = \"{name}\"",
                data_dir.display(),
                self.database_url
            ),
        );
        let path = data_dir.join("custos.toml");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let log = std::fs::File::create(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(bin_dir().join("custos"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info,libp2p=warn")
            .env(
                "CUSTOS_MASTER_KEY",
                std::fs::read_to_string(source.join("master-key.hex")).unwrap(),
            )
            // The deployment's SoftHSM2 token ([keys.pkcs11] in the config).
            .env(
                "SOFTHSM2_CONF",
                self.dir.path().join("softhsm").join("softhsm2.conf"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while custos_testnet::http::get(address, "/api/v1/sys/health", None).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "replica {name} did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        (address, child)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// One request: (status, JSON answer).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|body| body.to_string());
        let response = custos_testnet::http::send(
            self.address,
            method,
            path,
            token,
            body.as_deref(),
            Duration::from_secs(300),
        )
        .unwrap_or_else(|error| panic!("{method} {path}: {error:#}"));
        let value = serde_json::from_str(&response.body).unwrap_or(Value::String(response.body));
        (response.status, value)
    }

    pub fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, path, Some(token), body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    pub fn token(&self, client_id: &str, client_secret: &str) -> String {
        let (status, answer) = self.call(
            "POST",
            "/api/v1/auth/token",
            None,
            Some(json!({"clientId": client_id, "clientSecret": client_secret})),
        );
        assert_eq!(status, 200, "{answer}");
        answer["accessToken"].as_str().unwrap().to_string()
    }

    pub fn identity(&self, token: &str, name: &str, role: &str, org: Option<&str>) -> Identity {
        let mut body = json!({"name": name, "role": role});
        if let Some(org) = org {
            body["orgId"] = json!(org);
        }
        let created = self.ok("POST", "/api/v1/identities", token, Some(body));
        let client_id = created["clientId"].as_str().unwrap().to_string();
        let client_secret = created["clientSecret"].as_str().unwrap().to_string();
        Identity {
            id: created["id"].as_str().unwrap().to_string(),
            token: self.token(&client_id, &client_secret),
            client_id,
            client_secret,
        }
    }

    pub fn wallet(&self, token: &str, name: &str, protocol: &str, chain: Option<&str>) -> Value {
        let mut body = json!({"name": name, "protocol": protocol, "threshold": 2, "parties": 3});
        if let Some(chain) = chain {
            body["chain"] = json!(chain);
        }
        self.ok("POST", "/api/v1/wallets", token, Some(body))
    }

    /// Polls a signing request until its status is one of `statuses`.
    pub fn wait_for(&self, token: &str, request: &str, statuses: &[&str]) -> Value {
        let started = Instant::now();
        loop {
            let answer = self.ok(
                "GET",
                &format!("/api/v1/signing-requests/{request}"),
                token,
                None,
            );
            if statuses.contains(&answer["status"].as_str().unwrap_or_default()) {
                return answer;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "request {request} stuck: {answer}\n{}",
                tail(&self.log("control-plane"), 60)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        self.down();
        if self.backend == Backend::Postgres {
            let name = self
                .database_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let admin = postgres_admin_url();
            let _ = std::panic::catch_unwind(|| {
                execute_sql(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    &[],
                )
            });
        }
    }
}

/// The last `lines` lines of a log.
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The current RFC 6238 code of an `otpauth://` URI (written here, apart
/// from the server's implementation).
pub fn totp_code(otpauth_uri: &str, unix_seconds: u64) -> String {
    use hmac::{Hmac, Mac};
    let secret = otpauth_uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut key) = (0u32, 0u64, Vec::new());
    for character in secret.bytes() {
        let index = alphabet.iter().position(|&c| c == character).unwrap() as u64;
        value = (value << 5) | index;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            key.push((value >> bits) as u8);
            value &= (1 << bits) - 1;
        }
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
    mac.update(&(unix_seconds / 30).to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let number = u32::from_be_bytes(digest[offset..offset + 4].try_into().unwrap()) & 0x7fff_ffff;
    format!("{:06}", number % 1_000_000)
}

pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The Python of `scripts/python-env` (eth-account installed).
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("CUSTOS_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = repo_root().join("target/venv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run scripts/python-env (scripts/test does)",
        venv.display()
    );
    venv
}

/// Decodes a signed EIP-1559 transaction with eth-account.
pub fn eth_account_decode(raw_transaction: &str) -> Value {
    let output = Command::new(python())
        .arg(repo_root().join("tests/tests/support/check_evm_tx.py"))
        .arg(raw_transaction)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "eth-account refused the transaction: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
