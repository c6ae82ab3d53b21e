//! The testnet's start time (issue 15): `custos-testnet up` from a fresh
//! folder until it prints its walkthrough (control plane initialised and
//! unsealed, every node healthy, the ECDSA committee's aux info ready),
//! repeated from a new folder each time, with the committed dev primes
//! (`protocol/testdata/primes.json`: no prime generation) and without
//! (every node generates its Paillier primes first). Then `down`.
//!
//! ```text
//! cargo build --bins          # or --release; CUSTOS_BIN_DIR names the folder
//! CUSTOS_BIN_DIR=target/debug cargo bench -p custos-testnet --bench start
//! ```
//!
//! `CUSTOS_BENCH_STARTS` (default 5) sets the repetitions, and
//! `CUSTOS_BENCH_MODES` (default `dev-primes,generated-primes`) the modes.
//! Prints each start, a summary per mode, and one JSON line per mode. A
//! start that fails or takes over 20 minutes is reported with the tail of
//! its output and counts as failed; it is never retried silently.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CUSTOS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/start-… → target/<profile>
    let exe = std::env::current_exe().expect("the bench's path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the bench runs from target/<profile>/deps")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// One start from a fresh folder: seconds until the walkthrough, or why not.
fn start_once(testnet: &Path, dev_primes: Option<&Path>) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let mut command = Command::new(testnet);
    command
        .arg("--dir")
        .arg(dir.path())
        .arg("up")
        .arg("--port")
        .arg(free_port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(file) = dev_primes {
        command.arg("--dev-primes").arg(file);
    }
    let started = Instant::now();
    let mut child = command.spawn().map_err(|error| error.to_string())?;
    let (lines, seen) = mpsc::channel::<(bool, String)>();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let out = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out.send((true, line));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send((false, line));
        }
    });
    let mut tail: Vec<String> = Vec::new();
    let outcome = loop {
        match seen.recv_timeout(Duration::from_secs(1)) {
            // The walkthrough goes to stdout once everything is ready.
            Ok((true, _)) => break Ok(started.elapsed().as_secs_f64()),
            Ok((false, line)) => {
                if line.contains("failed") || line.contains("trying again") {
                    eprintln!("    | {line}");
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(format!("exited before ready:\n{}", tail.join("\n")))
            }
        }
        if started.elapsed() > Duration::from_secs(20 * 60) {
            break Err(format!("not ready after 20 minutes:\n{}", tail.join("\n")));
        }
    };
    let _ = Command::new(testnet)
        .arg("--dir")
        .arg(dir.path())
        .arg("down")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too.
    if std::env::args().any(|argument| argument == "--list") {
        return;
    }
    let bins = bin_dir();
    let testnet = bins.join("custos-testnet");
    assert!(
        testnet.is_file() && bins.join("custos").is_file() && bins.join("custos-signer").is_file(),
        "build the binaries first (cargo build --bins) or set CUSTOS_BIN_DIR; looked in {}",
        bins.display()
    );
    let primes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/testdata/primes.json");
    let starts: usize = std::env::var("CUSTOS_BENCH_STARTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(5);
    let modes = std::env::var("CUSTOS_BENCH_MODES")
        .unwrap_or_else(|_| "dev-primes,generated-primes".into());
    for mode in modes.split(',') {
        let dev_primes = match mode {
            "dev-primes" => Some(primes.as_path()),
            "generated-primes" => None,
            other => panic!("unknown mode {other}"),
        };
        eprintln!(
            "testnet start, {mode}: {starts} starts from fresh folders ({})",
            bins.display()
        );
        let mut seconds = Vec::new();
        let mut failed = 0;
        for index in 1..=starts {
            match start_once(&testnet, dev_primes) {
                Ok(took) => {
                    eprintln!("  start {index}: ready after {took:.1} s");
                    seconds.push(took);
                }
                Err(why) => {
                    eprintln!("  start {index}: FAILED: {why}");
                    failed += 1;
                }
            }
        }
        seconds.sort_by(f64::total_cmp);
        if seconds.is_empty() {
            println!("{{\"bench\":\"testnet_start\",\"mode\":\"{mode}\",\"starts\":{starts},\"failed\":{failed}}}");
            continue;
        }
        let (min, median, max) = (
            seconds[0],
            percentile(&seconds, 0.5),
            seconds[seconds.len() - 1],
        );
        eprintln!(
            "testnet start, {mode}: min {min:.1} s, median {median:.1} s, max {max:.1} s, {failed} failed of {starts}"
        );
        println!(
            "{{\"bench\":\"testnet_start\",\"mode\":\"{mode}\",\"starts\":{starts},\"failed\":{failed},\"min_s\":{min:.1},\"median_s\":{median:.1},\"max_s\":{max:.1}}}"
        );
    }
}
