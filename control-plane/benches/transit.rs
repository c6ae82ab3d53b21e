//! Transit throughput over HTTP, next to a no-op endpoint of the same server
//! and raw AES-256-GCM in process.
//!
//! ```text
//! cargo bench -p custos-control-plane --bench transit
//! ```
//!
//! The control plane runs in this process (`custos_control_plane::run`,
//! SQLite in a temporary folder, seal mode `env`) on a loopback socket;
//! clients are 8 keep-alive HTTP/1.1 connections (64 and 256 for further
//! single-item figures, each next to the no-op at as many connections),
//! each sending one request at a time, for a fixed wall time per figure.
//! The benchmark uses the server binary's allocator (mimalloc). Every transit call is
//! authenticated (a bearer token looked up in the database) and audited in
//! the same transaction, as in production. The no-op endpoint is
//! `GET /api/v1/sys/seal-status`: same listener, router and middleware, no
//! authentication, no database.
//!
//! Output: progress on stderr; one `BENCH {json}` line per figure on stdout
//! (`unit` `requests/s` or `items/s`, `median` = the figure), then what is
//! held on the 2-core machine: single-item encrypt with 256 callers ≥ 40 %
//! of the no-op rate at 256 (the floor that stands with invariant 5: every
//! call's audit record is durable before it answers; ARCHITECTURE.md,
//! *Transit over HTTP*), and batch encrypt ≥ 100,000 items/s. A benchmark
//! prints; it never fails on timing.

/// The server binary's allocator (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 8;
/// Callers of the further single-item figures.
const MANY_CONNECTIONS: [usize; 2] = [64, 256];
const MEASURE: Duration = Duration::from_secs(4);
const MASTER_KEY: &str = "be4c000000000000000000000000000000000000000000000000000000000be4";

/// One keep-alive HTTP/1.1 connection.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(address: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(address).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream: BufReader::new(stream),
        }
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Vec<u8>) {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("write");
        let mut status_line = String::new();
        self.stream
            .read_line(&mut status_line)
            .await
            .expect("status");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status code");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("a length");
                }
            }
        }
        let mut answer = vec![0u8; length];
        self.stream.read_exact(&mut answer).await.expect("body");
        (status, answer)
    }
}

fn bench_line(name: &str, unit: &str, value: f64, extra: Value) {
    let mut line = json!({"name": name, "unit": unit, "median": (value * 10.0).round() / 10.0, "p90": (value * 10.0).round() / 10.0});
    if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            line.insert(key.clone(), value.clone());
        }
    }
    println!("BENCH {line}");
    eprintln!("  {name}: {value:.1} {unit}");
}

/// Runs `CONNECTIONS` clients, each repeating one request, for `MEASURE`;
/// answers requests per second. Every answer must be 200.
async fn rate(
    address: std::net::SocketAddr,
    method: &'static str,
    path: &'static str,
    token: Option<Arc<String>>,
    body: Arc<String>,
) -> f64 {
    rate_with(CONNECTIONS, address, method, path, token, body).await
}

/// [`rate`] with `connections` clients.
async fn rate_with(
    connections: usize,
    address: std::net::SocketAddr,
    method: &'static str,
    path: &'static str,
    token: Option<Arc<String>>,
    body: Arc<String>,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (done, token, body) = (done.clone(), token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(address).await;
            while started.elapsed() < MEASURE {
                let (status, answer) = client
                    .call(method, path, token.as_deref().map(String::as_str), &body)
                    .await;
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The no-op endpoint's rate with `connections` clients.
async fn noop_rate(connections: usize, address: std::net::SocketAddr) -> f64 {
    rate_with(
        connections,
        address,
        "GET",
        "/api/v1/sys/seal-status",
        None,
        Arc::new(String::new()),
    )
    .await
}

/// The body of a single-item encrypt request.
fn single_item() -> Arc<String> {
    Arc::new(json!({"keyName": "bench", "plaintext": "4111 1111 1111 1111"}).to_string())
}

/// Single-item encrypt's rate with `connections` clients.
async fn encrypt_single_rate(
    connections: usize,
    address: std::net::SocketAddr,
    token: &Arc<String>,
) -> f64 {
    rate_with(
        connections,
        address,
        "POST",
        "/api/v1/transit/encrypt",
        Some(token.clone()),
        single_item(),
    )
    .await
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("a folder");
    let database_url = format!("sqlite://{}", dir.path().join("custos.db").display());
    let config = custos_control_plane::kernel::config::Config::parse(
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ndatabase_url = \"{database_url}\"\n\
             rate_limit_per_sec = 1000000\ndev_mode = true\n[seal]\nmode = \"env\"\nmaster_key = \"{MASTER_KEY}\"\n",
            dir.path().display()
        ),
        [],
    )
    .expect("configuration");
    let db = custos_control_plane::kernel::db::Db::connect(&database_url)
        .await
        .expect("store");
    let root = custos_control_plane::kernel::auth::bootstrap(&db)
        .await
        .expect("bootstrap")
        .expect("a fresh store");
    db.close().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(custos_control_plane::run(
        config,
        listener,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut client = Client::connect(address).await;
    let login = json!({"clientId": root.client_id, "clientSecret": root.client_secret}).to_string();
    let (status, answer) = client
        .call("POST", "/api/v1/auth/token", None, &login)
        .await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).expect("json");
    let token = Arc::new(answer["accessToken"].as_str().expect("a token").to_string());
    let (status, _) = client
        .call(
            "POST",
            "/api/v1/transit/keys",
            Some(&token),
            &json!({"name": "bench"}).to_string(),
        )
        .await;
    assert_eq!(status, 201);

    eprintln!(
        "transit over HTTP: {CONNECTIONS} keep-alive connections, {} s per figure, SQLite, 2 cores shared by client and server",
        MEASURE.as_secs()
    );
    let noop = noop_rate(CONNECTIONS, address).await;
    bench_line(
        "noop_seal_status_http",
        "requests/s",
        noop,
        json!({"connections": CONNECTIONS}),
    );

    let encrypt = encrypt_single_rate(CONNECTIONS, address, &token).await;
    bench_line(
        "transit_encrypt_single_http",
        "requests/s",
        encrypt,
        json!({"ratio_to_noop": (encrypt / noop * 1000.0).round() / 1000.0}),
    );

    // The same with many callers, as a fleet of application servers: the
    // audit group commit carries more records per commit. The no-op is
    // measured at the same number of callers.
    let mut many = Vec::new();
    for callers in MANY_CONNECTIONS {
        let noop_many = noop_rate(callers, address).await;
        let encrypt_many = encrypt_single_rate(callers, address, &token).await;
        let name = if callers == 64 {
            "transit_encrypt_single_http_many_callers".to_string()
        } else {
            format!("transit_encrypt_single_http_{callers}_callers")
        };
        bench_line(
            &name,
            "requests/s",
            encrypt_many,
            json!({
                "connections": callers,
                "noop_requests_per_s": noop_many.round(),
                "ratio_to_noop": (encrypt_many / noop_many * 1000.0).round() / 1000.0,
            }),
        );
        many.push((callers, encrypt_many / noop_many));
    }

    let (_, sealed) = client
        .call(
            "POST",
            "/api/v1/transit/encrypt",
            Some(&token),
            &single_item(),
        )
        .await;
    let sealed: Value = serde_json::from_slice(&sealed).expect("json");
    let ciphertext = sealed["ciphertext"]
        .as_str()
        .expect("a ciphertext")
        .to_string();
    let decrypt_body = Arc::new(json!({"keyName": "bench", "ciphertext": ciphertext}).to_string());
    let decrypt = rate(
        address,
        "POST",
        "/api/v1/transit/decrypt",
        Some(token.clone()),
        decrypt_body,
    )
    .await;
    bench_line(
        "transit_decrypt_single_http",
        "requests/s",
        decrypt,
        json!({"ratio_to_noop": (decrypt / noop * 1000.0).round() / 1000.0}),
    );

    let batch_items: Vec<Value> = (0..100)
        .map(|_| json!({"plaintext": "4111 1111 1111 1111"}))
        .collect();
    let batch = Arc::new(json!({"keyName": "bench", "batch": batch_items}).to_string());
    let batch_rate = rate(
        address,
        "POST",
        "/api/v1/transit/encrypt",
        Some(token.clone()),
        batch,
    )
    .await;
    bench_line(
        "transit_encrypt_batch100_http",
        "items/s",
        batch_rate * 100.0,
        json!({"requests_per_s": (batch_rate * 10.0).round() / 10.0}),
    );

    let decrypt_items: Vec<Value> = (0..100)
        .map(|_| json!({"ciphertext": ciphertext}))
        .collect();
    let decrypt_batch = Arc::new(json!({"keyName": "bench", "batch": decrypt_items}).to_string());
    let decrypt_batch_rate = rate(
        address,
        "POST",
        "/api/v1/transit/decrypt",
        Some(token.clone()),
        decrypt_batch,
    )
    .await;
    bench_line(
        "transit_decrypt_batch100_http",
        "items/s",
        decrypt_batch_rate * 100.0,
        json!({"requests_per_s": (decrypt_batch_rate * 10.0).round() / 10.0}),
    );

    // Raw AES-256-GCM through the same engine, one thread.
    use custos_control_plane::engines::transit::crypto::{
        self, Binding, KeyType, KeyVersionMaterial,
    };
    let material = KeyVersionMaterial::generate(KeyType::Aes256Gcm96, &mut rand_core::OsRng);
    let binding = Binding {
        org_id: "org",
        key_name: "bench",
        version: 1,
        context: None,
    };
    let started = Instant::now();
    let mut items = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..1000 {
            let _ = crypto::encrypt(
                KeyType::Aes256Gcm96,
                &material,
                &binding,
                b"4111 1111 1111 1111",
                &mut rand_core::OsRng,
            );
        }
        items += 1000;
    }
    let raw = items as f64 / started.elapsed().as_secs_f64();
    bench_line(
        "transit_encrypt_raw_inprocess",
        "items/s",
        raw,
        json!({"threads": 1}),
    );

    // What the one authorisation path adds to a data-plane call: one
    // policy decision on the cached policies (the default policy behind a
    // custom one of ten rules, the transit call matching the last rule);
    // the role check and the cache lookup are a hash-map read each.
    let mut custom: Vec<custos_control_plane::kernel::policy::Rule> = (0..9)
        .map(|index| {
            serde_json::from_value(json!({"action": "transit.encrypt", "resource": format!("transit-key:other-{index}-*"),
                "conditions": {"allowedIPs": ["10.0.0.0/8"]}, "effect": "allow"}))
            .expect("a rule")
        })
        .collect();
    custom.push(
        serde_json::from_value(
            json!({"action": "secret.read", "resource": "secret:prod/*", "effect": "deny"}),
        )
        .expect("a rule"),
    );
    let policies = vec![
        ("custom".to_string(), custom),
        (
            "default".to_string(),
            custos_control_plane::kernel::policy::default_rules(),
        ),
    ];
    let facts = custos_control_plane::kernel::policy::RequestFacts {
        action: "transit.encrypt".into(),
        resource: "transit-key:bench".into(),
        ip: Some("127.0.0.1".parse().expect("an address")),
        value: custos_control_plane::kernel::policy::ValueFacts::NotApplicable,
        payload_kind: None,
        unix_seconds: 1_700_000_000,
    };
    let started = Instant::now();
    let mut decisions = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..1000 {
            std::hint::black_box(custos_control_plane::kernel::policy::evaluate(
                std::hint::black_box(&policies),
                std::hint::black_box(&facts),
            ));
        }
        decisions += 1000;
    }
    let per_decision = started.elapsed().as_secs_f64() / decisions as f64;
    bench_line(
        "policy_decision_inprocess",
        "ns",
        per_decision * 1e9,
        json!({"rules": 24, "share_of_a_no_op_call": ((per_decision * noop) * 1000.0).round() / 1000.0}),
    );

    // What durability costs here: every single-item call answers only after
    // its audit record is committed, and a commit waits for the disk. With
    // 8 callers a commit carries at most 8 records, so 8 / fsync latency
    // bounds the audited rate whatever else the server does.
    let fsync = fsync_latency(dir.path());
    let bound = CONNECTIONS as f64 / fsync.as_secs_f64();
    bench_line(
        "fdatasync_append_latency",
        "us",
        fsync.as_secs_f64() * 1e6,
        json!({"audited_rate_bound_8_callers": bound.round(), "ratio_bound_to_noop": (bound / noop * 1000.0).round() / 1000.0}),
    );

    eprintln!(
        "\nheld on the 2-core machine                           figure        floor    result"
    );
    eprintln!(
        "single-item encrypt, 8 callers, of the no-op rate   {:>6.1} %        (none)",
        encrypt / noop * 100.0
    );
    for (callers, ratio) in many {
        let floor = (callers == 256).then_some(0.40);
        eprintln!(
            "  the same with {callers} callers                         {:>6.1} %        {}   {}",
            ratio * 100.0,
            floor.map_or("(none)".to_string(), |floor| format!(
                "≥ {:.0} %",
                floor * 100.0
            )),
            match floor {
                Some(floor) if ratio >= floor => "held",
                Some(_) => "below",
                None => "",
            }
        );
    }
    eprintln!(
        "  bound of durable per-call audit, 8 callers       {:>6.1} %   (8 records per fsync of {:.0} µs)",
        bound / noop * 100.0,
        fsync.as_secs_f64() * 1e6
    );
    eprintln!(
        "batch encrypt ≥ 100,000 items/s                    {:>8.0}     ≥ 100000   {}",
        batch_rate * 100.0,
        if batch_rate * 100.0 >= 100_000.0 {
            "met"
        } else {
            "not met"
        }
    );
    let _ = stop.send(());
    let _ = server.await;

    audit_writer(dir.path()).await;
}

/// The audit writer alone, in process, on its own SQLite database: one
/// statement's round trip through sqlx (which the writer's own connection
/// avoids), and `audit::AuditBatcher` fed by 8 and by 64 callers (as the
/// single-item figures' connections). Tells the writer's share of the
/// single-item rate.
async fn audit_writer(dir: &std::path::Path) {
    use custos_control_plane::kernel::audit::{AuditBatcher, OwnedAuditEvent};
    let url = format!("sqlite://{}", dir.join("writer.db").display());
    let db = custos_control_plane::kernel::db::Db::connect(&url)
        .await
        .expect("store");
    let event = |n: usize| OwnedAuditEvent {
        org: "org_bench".into(),
        action: "transit.encrypt".into(),
        resource: "transit-key:bench".into(),
        identity: "id_bench".into(),
        ip: "127.0.0.1".into(),
        approved: "not_required".into(),
        outcome: "success".into(),
        request_id: format!("rq_{n:032x}"),
        detail: json!({"items": 1, "failed": 0, "version": 1}),
    };

    let started = Instant::now();
    let rounds = 2000u32;
    for _ in 0..rounds {
        let _: (i64,) = sqlx::query_as("SELECT 1")
            .fetch_one(db.pool())
            .await
            .expect("a query");
    }
    let hop = started.elapsed() / rounds;
    bench_line(
        "sqlx_sqlite_statement_round_trip",
        "us",
        hop.as_secs_f64() * 1e6,
        json!({}),
    );

    let batcher = AuditBatcher::start(db.clone());
    for callers in [CONNECTIONS, 64] {
        let per_caller = 16_000 / callers;
        let started = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    for n in 0..per_caller {
                        batcher
                            .record(event(caller * per_caller + n))
                            .await
                            .expect("recorded");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("caller");
        }
        let records = (callers * per_caller) as f64 / started.elapsed().as_secs_f64();
        let name = if callers == CONNECTIONS {
            "audit_group_commit_8_callers_inprocess".to_string()
        } else {
            format!("audit_group_commit_{callers}_callers_inprocess")
        };
        bench_line(&name, "records/s", records, json!({"connections": callers}));
    }
    db.close().await;
}

/// Median time of appending 300 bytes to a file and `fdatasync`ing it, in
/// `dir` (the database's folder), over 400 appends.
fn fsync_latency(dir: &std::path::Path) -> Duration {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("a probe file");
    let mut times: Vec<Duration> = (0..400)
        .map(|_| {
            let started = Instant::now();
            file.write_all(&[0x5a; 300]).expect("append");
            file.sync_data().expect("fdatasync");
            started.elapsed()
        })
        .collect();
    times.sort();
    let _ = std::fs::remove_file(path);
    times[times.len() / 2]
}
