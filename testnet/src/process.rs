//! Processes: finding the `custos` and `custos-signer` binaries, running
//! their one-shot commands, starting the long-running ones with output
//! appended to log files, watching and stopping them; and finding and
//! stopping the processes of a testnet by pid (`down`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::layout::{is_hex_key, Credentials, Layout, CONTROL_PLANE};

/// The log filter children get unless `RUST_LOG` is set.
const DEFAULT_RUST_LOG: &str = "info,libp2p=warn";
/// The marker of the control plane's one-time credentials line.
pub const CREDENTIALS_MARKER: &str = "CUSTOS_ROOT_CREDENTIALS";
/// How long a process may take to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Each start writes this banner into the log; tails start at the last one.
const BANNER: &str = "=== custos-testnet: starting";

/// The two binaries a testnet runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The control plane, `custos`.
    pub custos: PathBuf,
    /// The signer node, `custos-signer`.
    pub signer: PathBuf,
}

impl Binaries {
    /// `$CUSTOS_BIN` and `$CUSTOS_SIGNER_BIN`, or the binaries next to this
    /// executable (as `cargo build --bins` leaves them).
    pub fn find() -> anyhow::Result<Self> {
        Ok(Self {
            custos: find_binary("CUSTOS_BIN", "custos")?,
            signer: find_binary("CUSTOS_SIGNER_BIN", "custos-signer")?,
        })
    }
}

fn find_binary(variable: &str, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "{variable}={} is not a file (it should be the `{name}` binary)",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let folder = exe
        .parent()
        .with_context(|| format!("{} has no folder", exe.display()))?;
    let candidate = folder.join(name);
    if candidate.is_file() {
        return Ok(candidate);
    }
    let build = if folder.ends_with("release") {
        "cargo build --release --bins"
    } else {
        "cargo build --bins"
    };
    bail!(
        "cannot find the `{name}` binary: it is not at {} and {variable} is not set. \
         Build the workspace's binaries with `{build}` (they land next to custos-testnet), \
         or set {variable} to its path",
        candidate.display()
    )
}

/// `RUST_LOG` for the children.
fn rust_log() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_string())
}

/// `custos-signer --config CONFIG SUBCOMMAND`. `custos-signer` reads every
/// `CUSTOS_SIGNER_*` variable as a setting override and refuses unknown
/// ones, so none of ours (such as `CUSTOS_SIGNER_BIN`) reach it.
fn signer_command(signer: &Path, config: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(signer);
    command
        .arg("--config")
        .arg(config)
        .arg(subcommand)
        .env("RUST_LOG", rust_log());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CUSTOS_SIGNER_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs a one-shot command; its stdout on success.
fn run_output(mut command: Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// `custos-signer recovery-key --out FILE`: a node operator's recovery key
/// for share backups; answers its public key (64 hex characters).
pub fn recovery_key(signer: &Path, out: &Path) -> anyhow::Result<String> {
    let mut command = Command::new(signer);
    command
        .arg("recovery-key")
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", rust_log());
    let stdout = run_output(command, "`custos-signer recovery-key`")?;
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("recovery_public_key "))
        .map(|key| key.trim().to_string())
        .filter(|key| crate::layout::is_hex_key(key))
        .with_context(|| format!("`custos-signer recovery-key` printed no public key:\n{stdout}"))
}

/// Creates a SoftHSM2 token labelled `label` with user PIN `pin` in
/// `token_dir`, configured by `conf` (written here), with Debian's
/// `softhsm2-util`.
pub fn init_softhsm_token(
    conf: &Path,
    token_dir: &Path,
    label: &str,
    pin: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(token_dir)
        .with_context(|| format!("creating {}", token_dir.display()))?;
    crate::layout::write_atomically(
        conf,
        &format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            token_dir.display()
        ),
        0o644,
    )?;
    let mut command = Command::new("softhsm2-util");
    command
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            pin,
        ])
        .env("SOFTHSM2_CONF", conf);
    run_output(command, "`softhsm2-util --init-token`")?;
    Ok(())
}

/// `custos coordinator-key --data-dir DIR [--database-url URL]` with the
/// control plane's development master key: the coordinator's public key
/// (the key itself is created under the control plane's keyring).
pub fn coordinator_key(
    custos: &Path,
    data_dir: &Path,
    database_url: Option<&str>,
    master_key: &str,
) -> anyhow::Result<String> {
    let mut command = Command::new(custos);
    command
        .arg("coordinator-key")
        .arg("--data-dir")
        .arg(data_dir)
        .env("CUSTOS_MASTER_KEY", master_key)
        .env("RUST_LOG", rust_log());
    if let Some(url) = database_url {
        command.arg("--database-url").arg(url);
    }
    let stdout = run_output(command, "`custos coordinator-key`")?;
    parse_hex_key(&stdout).with_context(|| {
        format!("`custos coordinator-key` printed no 64-hex-digit public key:\n{stdout}")
    })
}

/// The first 64-hex-digit word of `text`, lowercased.
fn parse_hex_key(text: &str) -> Option<String> {
    text.split_whitespace()
        .map(|word| word.trim_matches(|c: char| c == '"' || c == '\'' || c == ','))
        .find(|word| is_hex_key(word))
        .map(str::to_ascii_lowercase)
}

/// `custos-signer init`: the new node's party id.
pub fn init_node(signer: &Path, config: &Path) -> anyhow::Result<String> {
    let stdout = run_output(
        signer_command(signer, config, "init"),
        &format!("`custos-signer --config {} init`", config.display()),
    )?;
    parse_party_id(&stdout)
        .with_context(|| format!("`custos-signer init` printed no party_id:\n{stdout}"))
}

/// `custos-signer status` of a stopped node: its party id (for a node
/// initialised by a run that did not record it).
pub fn node_party_id(signer: &Path, config: &Path) -> anyhow::Result<String> {
    let stdout = run_output(
        signer_command(signer, config, "status"),
        &format!("`custos-signer --config {} status`", config.display()),
    )?;
    parse_party_id(&stdout)
        .with_context(|| format!("`custos-signer status` printed no party_id:\n{stdout}"))
}

/// The party id in `init`/`status` output: a `party_id HEX` line, or the
/// `party_id` field of the `/status` JSON document.
fn parse_party_id(stdout: &str) -> Option<String> {
    let from_line = stdout.lines().find_map(|line| {
        let id = line.trim().strip_prefix("party_id ")?.trim();
        is_hex_key(id).then(|| id.to_ascii_lowercase())
    });
    from_line.or_else(|| {
        let document: serde_json::Value = serde_json::from_str(stdout.trim()).ok()?;
        let id = document.get("party_id")?.as_str()?;
        is_hex_key(id).then(|| id.to_ascii_lowercase())
    })
}

/// `custos-signer --config CONFIG dev-import-primes --file FILE --index
/// INDEX`: adds the prime set at position `index` of `file` to a stopped
/// node's prime pool (development and tests only). Returns the command's
/// stdout (`pooled N`).
pub fn import_dev_primes(
    signer: &Path,
    config: &Path,
    file: &Path,
    index: usize,
) -> anyhow::Result<String> {
    let mut command = signer_command(signer, config, "dev-import-primes");
    command
        .arg("--file")
        .arg(file)
        .arg("--index")
        .arg(index.to_string());
    run_output(
        command,
        &format!(
            "`custos-signer --config {} dev-import-primes --file {} --index {index}`",
            config.display(),
            file.display()
        ),
    )
}

/// The credentials in a `CUSTOS_ROOT_CREDENTIALS {json}` line.
pub fn parse_credentials_line(line: &str) -> Option<Credentials> {
    let (_, rest) = line.split_once(CREDENTIALS_MARKER)?;
    serde_json::from_str(rest.trim()).ok()
}

/// Opens `path` for appending and writes a start banner.
fn open_log(path: &Path, name: &str) -> anyhow::Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    writeln!(file, "{BANNER} {name} (unix time {now}) ===")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

/// The last `count` lines of a log since its last start banner, indented.
pub fn log_tail(path: &Path, count: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(WINDOW)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = match read() {
        Ok(bytes) => bytes,
        Err(error) => return format!("    (cannot read {}: {error})", path.display()),
    };
    let text = String::from_utf8_lossy(&bytes);
    let text = text.rfind(BANNER).map_or(&*text, |start| &text[start..]);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(count);
    lines
        .iter()
        .skip(skip)
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `signal` (a name for `kill -s`: TERM, KILL, 0) to `pid`; whether
/// `kill` succeeded.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether `pid` is a live process whose command line satisfies `is_it`.
/// Where `/proc` is missing the command line cannot be checked, and any
/// live process counts.
pub fn process_matches(pid: u32, is_it: impl Fn(&[String]) -> bool) -> bool {
    if pid == 0 || pid == std::process::id() {
        return false;
    }
    if !Path::new("/proc/self/cmdline").exists() {
        return send_signal(pid, "0");
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        // Zombies and kernel threads have an empty command line.
        Ok(bytes) if !bytes.is_empty() => {
            let arguments: Vec<String> = bytes
                .split(|byte| *byte == 0)
                .filter(|argument| !argument.is_empty())
                .map(|argument| String::from_utf8_lossy(argument).into_owned())
                .collect();
            is_it(&arguments)
        }
        _ => false,
    }
}

/// Whether a command line runs with this configuration file (how the
/// testnet's control plane and nodes are recognised).
pub fn runs_with_config(arguments: &[String], config: &Path) -> bool {
    arguments
        .iter()
        .any(|argument| Path::new(argument) == config)
}

/// Whether a command line is a `custos-testnet up`.
pub fn is_testnet_up(arguments: &[String]) -> bool {
    arguments
        .first()
        .is_some_and(|program| program.ends_with("custos-testnet"))
        && arguments.iter().any(|argument| argument == "up")
}

/// Stops a process that is not our child: SIGTERM, up to `grace` to exit,
/// then SIGKILL. Returns whether it was running.
pub fn stop_pid(pid: u32, grace: Duration, is_it: impl Fn(&[String]) -> bool) -> bool {
    if !process_matches(pid, &is_it) {
        return false;
    }
    send_signal(pid, "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !process_matches(pid, &is_it) {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "pid {pid} did not exit within {}s of SIGTERM; sending SIGKILL",
        grace.as_secs()
    );
    send_signal(pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && process_matches(pid, &is_it) {
        thread::sleep(Duration::from_millis(100));
    }
    true
}

/// A started process.
struct Managed {
    name: String,
    log: PathBuf,
    child: Child,
    exit: Option<ExitStatus>,
}

/// A child that exited.
#[derive(Debug)]
pub struct Exited {
    /// Its name (`node-2`, `control-plane`).
    pub name: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Its log file.
    pub log: PathBuf,
}

impl Exited {
    /// A report: name, status and the end of its log.
    pub fn report(&self) -> String {
        format!(
            "{} exited ({}); last lines of {}:\n{}",
            self.name,
            self.status,
            self.log.display(),
            log_tail(&self.log, 30)
        )
    }
}

/// The testnet's child processes. Dropping it stops those still running.
#[derive(Default)]
pub struct Supervisor {
    children: Vec<Managed>,
    credentials: Option<Receiver<Credentials>>,
}

impl Supervisor {
    /// Starts `custos-signer --config DIR/NAME/node.toml run`, output
    /// appended to `DIR/logs/NAME.log`, in its own process group (so a
    /// Ctrl-C in the terminal reaches only us, and we stop it in order).
    pub fn spawn_node(
        &mut self,
        signer: &Path,
        layout: &Layout,
        name: &str,
    ) -> anyhow::Result<u32> {
        let log_path = layout.log_path(name);
        let log = open_log(&log_path, name)?;
        let child = signer_command(signer, &layout.node_config(name), "run")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({})", signer.display()))?;
        Ok(self.add(name, log_path, child))
    }

    /// Starts `custos serve --config DIR/control-plane/custos.toml`, with
    /// the extra environment variables `env` (set last: they override
    /// `RUST_LOG`): stderr appended to its log; stdout read line by line by
    /// a thread that copies each line to the log and hands on the root
    /// credentials (see [`Supervisor::take_credentials`]).
    pub fn spawn_control_plane(
        &mut self,
        custos: &Path,
        layout: &Layout,
        env: &[(String, String)],
    ) -> anyhow::Result<u32> {
        let log_path = layout.log_path(CONTROL_PLANE);
        let log = open_log(&log_path, CONTROL_PLANE)?;
        let mut copy = log.try_clone()?;
        let mut child = Command::new(custos)
            .arg("serve")
            .arg("--config")
            .arg(layout.control_plane_config())
            .env("RUST_LOG", rust_log())
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the control plane ({})", custos.display()))?;
        let stdout = child.stdout.take().context("the control plane's stdout")?;
        let pid = self.add(CONTROL_PLANE, log_path, child);
        let (sender, receiver) = mpsc::channel();
        self.credentials = Some(receiver);
        // Reads until the process closes its stdout. It must keep reading
        // whatever happens to the receiver, or the process would block on
        // a full pipe.
        thread::Builder::new()
            .name("control-plane-stdout".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    // The credentials line goes to testnet.json (0600), never
                    // into the log.
                    match parse_credentials_line(&String::from_utf8_lossy(&line)) {
                        Some(credentials) => {
                            let _ = copy.write_all(
                                format!("{CREDENTIALS_MARKER} <captured into testnet.json>\n")
                                    .as_bytes(),
                            );
                            let _ = sender.send(credentials);
                        }
                        None => {
                            let _ = copy.write_all(&line);
                        }
                    }
                }
            })
            .context("starting the control plane's stdout reader")?;
        Ok(pid)
    }

    fn add(&mut self, name: &str, log: PathBuf, child: Child) -> u32 {
        let pid = child.id();
        self.children.push(Managed {
            name: name.to_string(),
            log,
            child,
            exit: None,
        });
        pid
    }

    /// The latest root credentials the control plane printed since the
    /// last call, if any.
    pub fn take_credentials(&self) -> Option<Credentials> {
        self.credentials.as_ref()?.try_iter().last()
    }

    /// Process ids by name.
    pub fn pids(&self) -> BTreeMap<String, u32> {
        self.children
            .iter()
            .map(|managed| (managed.name.clone(), managed.child.id()))
            .collect()
    }

    /// Children that exited since the last call.
    pub fn poll_exits(&mut self) -> Vec<Exited> {
        let mut exited = Vec::new();
        for managed in &mut self.children {
            if managed.exit.is_some() {
                continue;
            }
            if let Ok(Some(status)) = managed.child.try_wait() {
                managed.exit = Some(status);
                exited.push(Exited {
                    name: managed.name.clone(),
                    status,
                    log: managed.log.clone(),
                });
            }
        }
        exited
    }

    /// How many children are still running (as of the last poll).
    pub fn running(&self) -> usize {
        self.children
            .iter()
            .filter(|managed| managed.exit.is_none())
            .count()
    }

    /// Stops every running child: SIGTERM (the control plane first), up
    /// to [`STOP_GRACE`] to exit, then SIGKILL.
    pub fn stop_all(&mut self) {
        self.poll_exits();
        let mut running: Vec<&mut Managed> = self
            .children
            .iter_mut()
            .filter(|managed| managed.exit.is_none())
            .collect();
        if running.is_empty() {
            return;
        }
        running.sort_by_key(|managed| managed.name != CONTROL_PLANE);
        for managed in &running {
            eprintln!("stopping {} (pid {})", managed.name, managed.child.id());
            send_signal(managed.child.id(), "TERM");
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            running.retain_mut(|managed| match managed.child.try_wait() {
                Ok(Some(status)) => {
                    managed.exit = Some(status);
                    false
                }
                Ok(None) => true,
                Err(_) => false,
            });
            if running.is_empty() || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        for managed in running {
            eprintln!(
                "{} (pid {}) did not exit within {}s; killing it",
                managed.name,
                managed.child.id(),
                STOP_GRACE.as_secs()
            );
            let _ = managed.child.kill();
            if let Ok(status) = managed.child.wait() {
                managed.exit = Some(status);
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn party_ids_from_init_and_status_output() {
        let id = "ab".repeat(32);
        let init = format!("party_id {id}\npeer_id 12D3KooW\nmaster_key file:/x\n");
        assert_eq!(parse_party_id(&init), Some(id.clone()));
        let status = format!("{{\"party_id\":\"{}\",\"listen\":[]}}\n", id.to_uppercase());
        assert_eq!(parse_party_id(&status), Some(id.clone()));
        assert_eq!(parse_party_id("party_id 1234\n"), None);
        assert_eq!(parse_party_id(""), None);
    }

    #[test]
    fn coordinator_keys_and_credentials_lines() {
        let key = "0f".repeat(32);
        assert_eq!(parse_hex_key(&format!("{key}\n")), Some(key.clone()));
        assert_eq!(
            parse_hex_key(&format!("coordinator public key: \"{key}\"\n")),
            Some(key.clone())
        );
        assert_eq!(parse_hex_key("abc\n"), None);
        let credentials = parse_credentials_line(
            "CUSTOS_ROOT_CREDENTIALS {\"clientId\":\"root\",\"clientSecret\":\"s e\\\"cret\"}\n",
        )
        .unwrap();
        assert_eq!(credentials.client_id, "root");
        assert_eq!(credentials.client_secret, "s e\"cret");
        assert_eq!(parse_credentials_line("{\"msg\":\"listening\"}"), None);
        assert_eq!(parse_credentials_line("CUSTOS_ROOT_CREDENTIALS"), None);
    }

    #[test]
    fn log_tails_start_at_the_last_banner() {
        let path = std::env::temp_dir().join(format!(
            "custos-testnet-log-{}-{:?}.log",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        drop(open_log(&path, "node-1").unwrap());
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"old run\n")
            .unwrap();
        let mut file = open_log(&path, "node-1").unwrap();
        for index in 0..50 {
            writeln!(file, "line {index}").unwrap();
        }
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "    line 47\n    line 48\n    line 49");
        let whole = log_tail(&path, 100);
        assert!(whole.starts_with("    === custos-testnet: starting node-1"));
        assert!(!whole.contains("old run"));
        std::fs::remove_file(&path).unwrap();
        assert!(log_tail(&path, 3).contains("cannot read"));
    }

    #[test]
    fn processes_are_recognised_by_command_line() {
        let config = Path::new("/tmp/t/node-1/node.toml");
        let node = [
            "/x/custos-signer".to_string(),
            "--config".into(),
            "/tmp/t/node-1/node.toml".into(),
            "run".into(),
        ];
        assert!(runs_with_config(&node, config));
        assert!(!runs_with_config(
            &node,
            Path::new("/tmp/t/node-2/node.toml")
        ));
        assert!(is_testnet_up(&[
            "/x/target/debug/custos-testnet".into(),
            "up".into()
        ]));
        assert!(!is_testnet_up(&["/x/custos-testnet".into(), "down".into()]));
        // This test process is neither, and a pid that cannot exist is not
        // running.
        assert!(!process_matches(std::process::id(), |_| true));
        assert!(!process_matches(u32::MAX, |_| true));
    }

    #[test]
    fn supervisor_watches_and_stops_children() {
        let dir = std::env::temp_dir().join(format!(
            "custos-testnet-sup-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut supervisor = Supervisor::default();
        let spawn = |script: &str| {
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .process_group(0)
                .spawn()
                .unwrap()
        };
        // One that ignores SIGTERM would take STOP_GRACE; these exit on it.
        // The sleeper is `sleep` itself, not `sh -c "exec sleep"`: spawn
        // returns once its exec succeeded, so its command line is `sleep`
        // from the start (a shell may not have exec'd yet when checked).
        let sleeper = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let sleeper_pid = sleeper.id();
        supervisor.add("node-1", dir.join("node-1.log"), sleeper);
        supervisor.add("node-2", dir.join("node-2.log"), spawn("exit 3"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let exited = loop {
            let exited = supervisor.poll_exits();
            if !exited.is_empty() || Instant::now() > deadline {
                break exited;
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(exited.len(), 1);
        assert_eq!(exited[0].name, "node-2");
        assert_eq!(exited[0].status.code(), Some(3));
        assert!(exited[0].report().starts_with("node-2 exited"));
        assert_eq!(supervisor.running(), 1);
        assert!(process_matches(sleeper_pid, |arguments| arguments
            .iter()
            .any(|argument| argument == "sleep")));
        let started = Instant::now();
        supervisor.stop_all();
        assert!(started.elapsed() < STOP_GRACE);
        assert_eq!(supervisor.running(), 0);
        assert!(supervisor.poll_exits().is_empty());
        assert!(!process_matches(sleeper_pid, |_| true));
        assert_eq!(supervisor.take_credentials(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
