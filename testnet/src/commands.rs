//! The `up`, `down` and `status` commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};

use crate::http;
use crate::layout::{
    control_plane_config_text, is_hex_key, node_config_text, node_name, write_atomically,
    Credentials, Layout, NodeEntry, PortPicker, State, CONTROL_PLANE,
};
use crate::process::{
    coordinator_key, import_dev_primes, init_node, init_softhsm_token, is_testnet_up,
    node_party_id, process_matches, recovery_key, runs_with_config, stop_pid, Binaries, Supervisor,
    STOP_GRACE,
};

/// The control plane's port unless taken.
const DEFAULT_PORT: u16 = 8200;
/// Signer nodes of a new testnet.
const DEFAULT_NODES: usize = 3;
/// The most nodes a testnet may have.
const MAX_NODES: usize = 64;
/// How long each startup phase may take.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long aux-info generation for the ECDSA committee may take.
const COMMITTEE_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// How often to say that we are still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How often to poll.
const POLL: Duration = Duration::from_millis(250);

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The testnet folder.
    pub dir: PathBuf,
    /// Signer nodes (default 3; a restart keeps the existing count).
    pub nodes: Option<usize>,
    /// The control plane's database URL (default: the control plane's own).
    pub database_url: Option<String>,
    /// Skip preparing the ECDSA committee.
    pub no_ecdsa: bool,
    /// The control plane's port (default 8200, or a free one when taken).
    pub port: Option<u16>,
    /// Prime sets each node keeps ready (`prime_pool_target` in each
    /// node.toml; [`crate::layout::PRIME_POOL_TARGET`] by default).
    pub prime_pool_target: usize,
    /// Development and tests only: a JSON list of pregenerated Paillier
    /// prime sets; node N, when this run initialises it, gets the set at
    /// position N-1 (`custos-signer dev-import-primes`) before it starts.
    pub dev_primes: Option<PathBuf>,
    /// Extra environment variables for the control plane (`custos serve`).
    pub control_plane_env: Vec<(String, String)>,
}

/// A `--dev-primes` file: where it is and how many prime sets it holds.
#[derive(Debug, Clone)]
struct DevPrimes {
    file: PathBuf,
    sets: usize,
}

impl DevPrimes {
    /// Reads `file` (a JSON list of prime sets) to count its sets, so a
    /// bad file fails before any node is initialised.
    fn open(file: &Path) -> anyhow::Result<Self> {
        let file = file
            .canonicalize()
            .with_context(|| format!("--dev-primes {}", file.display()))?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading --dev-primes {}", file.display()))?;
        let sets: Vec<Value> = serde_json::from_str(&text).with_context(|| {
            format!(
                "--dev-primes {} is not a JSON list of prime sets",
                file.display()
            )
        })?;
        Ok(Self {
            file,
            sets: sets.len(),
        })
    }
}

/// `custos-testnet up`: prepares what is missing in the folder, starts the
/// nodes and the control plane, waits until they are healthy, prepares the
/// ECDSA committee, prints a walk-through and stays in the foreground until
/// SIGINT, SIGTERM or SIGHUP, then stops everything.
pub fn up(options: &UpOptions) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the signal handlers")?;
    }
    let binaries = Binaries::find()?;
    let layout = Layout::create(&options.dir)?;
    let mut state = layout.load_state()?.unwrap_or_default();
    let running = running_processes(&layout, &state);
    if !running.is_empty() {
        bail!(
            "a testnet is already running in {} ({}); stop it first with `custos-testnet down --dir {}`",
            layout.dir.display(),
            running
                .iter()
                .map(|(name, pid)| format!("{name} pid {pid}"))
                .collect::<Vec<_>>()
                .join(", "),
            shell_quote(&layout.dir.display().to_string())
        );
    }
    prepare(&layout, &mut state, &binaries, options)?;
    ensure!(!stop.load(Ordering::SeqCst), "interrupted");

    let mut supervisor = Supervisor::default();
    let outcome = run(
        &layout,
        &mut state,
        &binaries,
        options,
        &mut supervisor,
        &stop,
    );
    supervisor.stop_all();
    // Credentials printed at any point must not be lost: the control plane
    // prints them only once.
    if let Some(credentials) = supervisor.take_credentials() {
        record_credentials(&mut state, credentials);
    }
    state.pids.clear();
    state.supervisor_pid = None;
    let saved = layout.save_state(&state);
    match (&outcome, &saved) {
        (Ok(()), Ok(())) => eprintln!(
            "testnet stopped; its data stays in {} (`custos-testnet up --dir {}` starts it again)",
            layout.dir.display(),
            shell_quote(&layout.dir.display().to_string())
        ),
        (Err(_), Err(error)) => eprintln!("warning: {error:#}"),
        _ => {}
    }
    outcome.and(saved)
}

/// Chooses ports, initialises missing nodes and writes every configuration
/// file and the state; starts nothing.
fn prepare(
    layout: &Layout,
    state: &mut State,
    binaries: &Binaries,
    options: &UpOptions,
) -> anyhow::Result<()> {
    let count = match (options.nodes, state.nodes.len()) {
        (Some(wanted), existing) if existing > 0 && wanted != existing => bail!(
            "{} holds a testnet of {existing} nodes; to start one with {wanted}, use another --dir \
             (or delete this folder)",
            layout.dir.display()
        ),
        (Some(wanted), _) => wanted,
        (None, 0) => DEFAULT_NODES,
        (None, existing) => existing,
    };
    ensure!(
        (2..=MAX_NODES).contains(&count),
        "--nodes must be between 2 and {MAX_NODES}"
    );
    let dev_primes = options
        .dev_primes
        .as_deref()
        .map(DevPrimes::open)
        .transpose()?;
    if let Some(dev_primes) = &dev_primes {
        eprintln!(
            "warning: --dev-primes {}: pregenerated Paillier primes are for development and \
             tests only; whoever has the file knows them, so keys made with them must never \
             guard value",
            dev_primes.file.display()
        );
    }

    let mut ports = PortPicker::default();
    let control_plane_port = match options.port {
        Some(port) => ports
            .require(port)
            .with_context(|| format!("--port {port}"))?,
        None => {
            let previous = http::address_of(&state.url)
                .ok()
                .map(|address| address.port());
            let wanted = previous.unwrap_or(DEFAULT_PORT);
            let port = ports.reuse_or_pick(Some(wanted))?;
            if port != wanted {
                eprintln!("port {wanted} is taken; the control plane will listen on {port}");
            }
            port
        }
    };
    state.url = format!("http://127.0.0.1:{control_plane_port}");
    let mut nodes = Vec::with_capacity(count);
    for index in 1..=count {
        let name = node_name(index);
        let previous = state.nodes.iter().find(|node| node.name == name);
        let p2p = ports.reuse_or_pick(previous.and_then(NodeEntry::p2p_port))?;
        let http_port = ports.reuse_or_pick(previous.map(|node| node.http.port()))?;
        let id = previous.map(|node| node.id.clone()).unwrap_or_default();
        let node = NodeEntry::new(name, id, p2p, http_port);
        if let Some(previous) = previous {
            if previous.address != node.address || previous.http != node.http {
                eprintln!(
                    "{}: earlier ports taken; now {} and {}",
                    node.name, node.address, node.http
                );
            }
        }
        nodes.push(node);
    }
    state.nodes = nodes;
    if options.database_url.is_some() {
        state.database_url.clone_from(&options.database_url);
    }

    state.coordinator = coordinator_key(
        &binaries.custos,
        &layout.control_plane_dir(),
        state.database_url.as_deref(),
        &layout.load_or_create_master_key()?,
    )?;
    let mut initialised_now = 0;
    let mut without_primes = Vec::new();
    for index in 0..state.nodes.len() {
        let node = state.nodes[index].clone();
        let config = layout.node_config(&node.name);
        std::fs::create_dir_all(layout.node_dir(&node.name))
            .with_context(|| format!("creating {}", layout.node_dir(&node.name).display()))?;
        let initialised = layout.node_identity(&node.name).exists();
        if initialised && is_hex_key(&node.id) {
            continue;
        }
        // `init`, `status` and `dev-import-primes` need no peers.
        let text = node_config_text(
            layout,
            &node,
            &state.coordinator,
            &[],
            options.prime_pool_target,
        )?;
        write_atomically(&config, &text, 0o644)?;
        let id = if initialised {
            node_party_id(&binaries.signer, &config)?
        } else {
            eprintln!("initialising {}", node.name);
            init_node(&binaries.signer, &config)?
        };
        state.nodes[index].id = id;
        layout.save_state(state)?;
        if initialised {
            continue;
        }
        initialised_now += 1;
        let Some(dev_primes) = &dev_primes else {
            continue;
        };
        // Node N (`state.nodes[N-1]`) gets the set at position N-1.
        if index >= dev_primes.sets {
            without_primes.push(node.name.clone());
            continue;
        }
        let pooled = import_dev_primes(&binaries.signer, &config, &dev_primes.file, index)
            .with_context(|| {
                format!(
                    "importing dev primes into {name} (it is initialised now, so a rerun will \
                     not import them: run the command by hand, or delete {dir} to start afresh)",
                    name = node.name,
                    dir = layout.dir.display()
                )
            })?;
        eprintln!(
            "{}: imported dev prime set {index} ({})",
            node.name,
            pooled.trim()
        );
        state.dev_primes = true;
        layout.save_state(state)?;
    }
    if let Some(dev_primes) = &dev_primes {
        if initialised_now == 0 {
            eprintln!(
                "note: --dev-primes: every node was initialised by an earlier run; no primes \
                 imported (dev primes go only into nodes initialised by the same run)"
            );
        } else if !without_primes.is_empty() {
            eprintln!(
                "note: {} holds {} prime sets; {} got none (only primes they generate themselves)",
                dev_primes.file.display(),
                dev_primes.sets,
                without_primes.join(", ")
            );
        }
    }
    prepare_backups(layout, binaries, &state.nodes)?;
    for node in &state.nodes {
        let text = node_config_text(
            layout,
            node,
            &state.coordinator,
            &state.nodes,
            options.prime_pool_target,
        )?;
        write_atomically(&layout.node_config(&node.name), &text, 0o644)?;
    }
    let listen = http::address_of(&state.url)?;
    let text =
        control_plane_config_text(layout, listen, state.database_url.as_deref(), &state.nodes)?;
    // It may hold the token's PIN.
    write_atomically(&layout.control_plane_config(), &text, 0o600)?;
    layout.save_state(state)
}

/// Share backups: a recovery key for each node's operator (made once, kept
/// in the node's folder: a development testnet), and a SoftHSM2 token for
/// the control plane's org wrapping keys, when Debian's softhsm2 is
/// installed (`scripts/run` installs it). Without it the testnet runs, and
/// backups answer `hsm_not_configured`.
fn prepare_backups(
    layout: &Layout,
    binaries: &Binaries,
    nodes: &[NodeEntry],
) -> anyhow::Result<()> {
    for node in nodes {
        let public = layout.node_recovery_public(&node.name);
        let secret = layout.node_recovery_key(&node.name);
        if public.exists() || secret.exists() {
            continue;
        }
        let key = recovery_key(&binaries.signer, &secret)
            .with_context(|| format!("making {}'s recovery key", node.name))?;
        write_atomically(&public, &key, 0o644)?;
    }
    if layout.control_plane_hsm_pin().exists() {
        return Ok(());
    }
    let softhsm = std::path::Path::new(crate::layout::SOFTHSM_MODULE).exists()
        && std::process::Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success());
    if !softhsm {
        eprintln!(
            "note: SoftHSM2 is not installed (apt-get install softhsm2): share backups and \
             HSM keys are off in this testnet"
        );
        return Ok(());
    }
    let mut bytes = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let pin: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    init_softhsm_token(
        &layout.softhsm_conf(),
        &layout.softhsm_dir().join("tokens"),
        crate::layout::SOFTHSM_TOKEN,
        &pin,
    )?;
    write_atomically(&layout.control_plane_hsm_pin(), &pin, 0o600)?;
    eprintln!("SoftHSM2 token {} ready", crate::layout::SOFTHSM_TOKEN);
    Ok(())
}

/// Starts the processes and runs the testnet until a stop signal.
fn run(
    layout: &Layout,
    state: &mut State,
    binaries: &Binaries,
    options: &UpOptions,
    supervisor: &mut Supervisor,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let control_plane = http::address_of(&state.url)?;
    for node in &state.nodes {
        supervisor.spawn_node(&binaries.signer, layout, &node.name)?;
    }
    let mut control_plane_env = vec![(
        "CUSTOS_MASTER_KEY".to_string(),
        layout.load_or_create_master_key()?,
    )];
    if layout.softhsm_conf().exists() {
        control_plane_env.push((
            "SOFTHSM2_CONF".to_string(),
            layout.softhsm_conf().display().to_string(),
        ));
    }
    control_plane_env.extend(options.control_plane_env.iter().cloned());
    supervisor.spawn_control_plane(&binaries.custos, layout, &control_plane_env)?;
    state.pids = supervisor.pids();
    state.supervisor_pid = Some(std::process::id());
    layout.save_state(state)?;
    eprintln!(
        "started {} signer nodes and the control plane; logs in {}",
        state.nodes.len(),
        layout.logs_dir().display()
    );

    let nodes = state.nodes.clone();
    wait_for(
        "the control plane and the nodes to answer",
        supervisor,
        stop,
        Instant::now() + STARTUP_TIMEOUT,
        |_| {
            let mut waiting = Vec::new();
            if !answers_ok(control_plane, "/api/v1/sys/health") {
                waiting.push(CONTROL_PLANE.to_string());
            }
            for node in &nodes {
                if !answers_ok(node.http, "/healthz") {
                    waiting.push(node.name.clone());
                }
            }
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(format!("no answer yet from {}", waiting.join(", ")))
            }
        },
    )?;

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut token = wait_for(
        "a login with the root credentials",
        supervisor,
        stop,
        deadline,
        |supervisor| {
            if let Some(credentials) = supervisor.take_credentials() {
                if record_credentials(state, credentials) {
                    layout
                        .save_state(state)
                        .map_err(|error| format!("{error:#}"))?;
                }
            }
            let credentials = state.credentials().ok_or_else(|| {
                format!(
                    "the control plane has not printed CUSTOS_ROOT_CREDENTIALS and {} holds no \
                     credentials (if its database was set up by an earlier run that did not \
                     record them, delete {} to start afresh)",
                    layout.state_path().display(),
                    layout.dir.display()
                )
            })?;
            login(control_plane, &credentials).map_err(|error| format!("{error:#}"))
        },
    )?;
    let credentials = state
        .credentials()
        .context("credentials are known after a login")?;

    wait_for(
        "the control plane to see every node healthy",
        supervisor,
        stop,
        deadline,
        |_| {
            let response = http::get(control_plane, "/api/v1/nodes", Some(&token))
                .map_err(|error| format!("{error:#}"))?;
            if response.status == 401 {
                token = login(control_plane, &credentials).map_err(|error| format!("{error:#}"))?;
                return Err("the token expired; logged in again".to_string());
            }
            let listing: Value = response
                .ensure_success("GET /api/v1/nodes")
                .and_then(|response| response.json())
                .map_err(|error| format!("{error:#}"))?;
            let unhealthy = unhealthy_nodes(&nodes, &listing);
            if unhealthy.is_empty() {
                Ok(())
            } else {
                Err(format!("not healthy yet: {}", unhealthy.join(", ")))
            }
        },
    )?;
    eprintln!("every node is healthy");

    if !options.no_ecdsa && !state.ecdsa_committee {
        prepare_committee(control_plane, &credentials, &nodes, supervisor, stop)?;
        state.ecdsa_committee = true;
        layout.save_state(state)?;
    }

    layout.save_state(state)?;
    print!("{}", walkthrough(layout, state, &credentials));
    use std::io::Write;
    std::io::stdout().flush()?;

    loop {
        if stop.load(Ordering::SeqCst) {
            eprintln!("stopping the testnet");
            return Ok(());
        }
        for exited in supervisor.poll_exits() {
            eprintln!(
                "unexpected exit (the other processes keep running): {}",
                exited.report()
            );
        }
        if supervisor.running() == 0 {
            bail!(
                "every process of the testnet has exited; see the logs in {}",
                layout.logs_dir().display()
            );
        }
        thread::sleep(POLL);
    }
}

/// Polls `check` until it returns `Ok`; its `Err` says what is missing.
/// Fails on a stop signal, when a child exits, or at the deadline. Says
/// every [`PROGRESS_EVERY`] that it is still waiting.
fn wait_for<T>(
    what: &str,
    supervisor: &mut Supervisor,
    stop: &AtomicBool,
    deadline: Instant,
    mut check: impl FnMut(&mut Supervisor) -> Result<T, String>,
) -> anyhow::Result<T> {
    eprintln!("waiting for {what}");
    let started = Instant::now();
    let mut last_progress = started;
    loop {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for {what}");
        }
        let exited = supervisor.poll_exits();
        if !exited.is_empty() {
            let reports: Vec<String> = exited.iter().map(|exited| exited.report()).collect();
            bail!(
                "a process exited while waiting for {what}:\n{}",
                reports.join("\n")
            );
        }
        let missing = match check(supervisor) {
            Ok(value) => return Ok(value),
            Err(missing) => missing,
        };
        if Instant::now() >= deadline {
            bail!(
                "gave up waiting for {what} after {}s: {missing}",
                started.elapsed().as_secs()
            );
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            eprintln!(
                "  still waiting for {what} ({}s): {missing}",
                started.elapsed().as_secs()
            );
            last_progress = Instant::now();
        }
        thread::sleep(POLL);
    }
}

/// Whether `GET path` answers 200.
fn answers_ok(address: SocketAddr, path: &str) -> bool {
    http::get(address, path, None).is_ok_and(|response| response.status == 200)
}

/// Stores credentials the control plane printed; whether they are new.
/// Different credentials from those stored mean a new database, which has
/// no ECDSA committee yet.
fn record_credentials(state: &mut State, credentials: Credentials) -> bool {
    if state.credentials().as_ref() == Some(&credentials) {
        return false;
    }
    if state.client_id.is_some() {
        eprintln!(
            "the control plane started with a new database: recording its new root credentials"
        );
        state.ecdsa_committee = false;
    }
    state.client_id = Some(credentials.client_id);
    state.client_secret = Some(credentials.client_secret);
    true
}

/// `POST /api/v1/auth/token`: an access token.
fn login(control_plane: SocketAddr, credentials: &Credentials) -> anyhow::Result<String> {
    let body: Value = http::post_json(
        control_plane,
        "/api/v1/auth/token",
        None,
        &json!({
            "clientId": credentials.client_id,
            "clientSecret": credentials.client_secret,
        }),
        http::SHORT_TIMEOUT,
    )?
    .ensure_success("POST /api/v1/auth/token")?
    .json()?;
    body["accessToken"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no accessToken in the token response {body}"))
}

/// The nodes the `GET /api/v1/nodes` listing does not show as healthy
/// (matched by name, or by party id in `peerId` or `id`), with the status
/// seen.
fn unhealthy_nodes(nodes: &[NodeEntry], listing: &Value) -> Vec<String> {
    let items = listing["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    nodes
        .iter()
        .filter_map(|node| {
            let item = items.iter().find(|item| {
                item["name"].as_str() == Some(node.name.as_str())
                    || ["peerId", "id"].iter().any(|field| {
                        item[*field]
                            .as_str()
                            .is_some_and(|id| id.eq_ignore_ascii_case(&node.id))
                    })
            });
            let status = item.and_then(|item| item["status"].as_str());
            match status {
                Some("healthy") => None,
                Some(status) => Some(format!("{} ({status})", node.name)),
                None => Some(format!("{} (not listed)", node.name)),
            }
        })
        .collect()
}

/// `POST /api/v1/nodes/committees` with every node, showing the elapsed
/// time while the control plane prepares the aux info.
fn prepare_committee(
    control_plane: SocketAddr,
    credentials: &Credentials,
    nodes: &[NodeEntry],
    supervisor: &mut Supervisor,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let token = login(control_plane, credentials)?;
    let status_token = token.clone();
    let names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
    eprintln!(
        "preparing the ECDSA committee {} (aux-info generation: usually 1-5 minutes)",
        names.join(", ")
    );
    let (sender, receiver) = mpsc::channel();
    let body = json!({ "nodes": names });
    thread::Builder::new()
        .name("committee".into())
        .spawn(move || {
            let _ = sender.send(http::post_json(
                control_plane,
                "/api/v1/nodes/committees",
                Some(&token),
                &body,
                COMMITTEE_TIMEOUT,
            ));
        })
        .context("starting the committee request")?;
    let started = Instant::now();
    let mut last_progress = started;
    let mut reported: Option<String> = None;
    let response = loop {
        match receiver.recv_timeout(POLL) {
            Ok(response) => break response.context("POST /api/v1/nodes/committees")?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the committee request thread ended without an answer")
            }
        }
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted while preparing the ECDSA committee");
        }
        for exited in supervisor.poll_exits() {
            eprintln!("{}", exited.report());
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            let status = committee_status(control_plane, &status_token, &names);
            if let Some(failure) = status
                .failure
                .as_ref()
                .filter(|failure| Some(*failure) != reported.as_ref())
            {
                eprintln!("  an aux-info run failed: {failure}");
                eprintln!(
                    "  the control plane tries again under a fresh run id (run {} of {RUN_ATTEMPTS})",
                    (status.runs).clamp(2, RUN_ATTEMPTS)
                );
                reported = Some(failure.clone());
            }
            eprintln!(
                "  aux info: {}s elapsed (run {} of {RUN_ATTEMPTS})",
                started.elapsed().as_secs(),
                status.runs.max(1)
            );
            last_progress = Instant::now();
        }
    };
    let answer: Value = response
        .ensure_success("POST /api/v1/nodes/committees")
        .and_then(|response| response.json())
        .context("preparing the ECDSA committee (start with --no-ecdsa to skip it)")?;
    ensure!(
        answer["ready"] == json!(true),
        "the control plane answered {answer} to POST /api/v1/nodes/committees (not ready)"
    );
    eprintln!(
        "ECDSA committee ready after {}s",
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Runs of aux-info generation the control plane tries (mirrors
/// `custos_signer_node::coordinator::RUN_ATTEMPTS`, which the testnet does
/// not link).
const RUN_ATTEMPTS: i64 = 3;

/// A committee's preparation as `GET /api/v1/nodes/committees` shows it.
#[derive(Debug, Default)]
struct CommitteeStatus {
    /// Runs tried so far.
    runs: i64,
    /// The last failed run's error.
    failure: Option<String>,
}

/// The preparation of the committee of `names`; empty when it cannot be
/// read (the waiting goes on regardless).
fn committee_status(control_plane: SocketAddr, token: &str, names: &[String]) -> CommitteeStatus {
    let Ok(answer) = http::get(control_plane, "/api/v1/nodes/committees", Some(token))
        .and_then(|response| response.ensure_success("GET /api/v1/nodes/committees"))
        .and_then(|response| response.json::<Value>())
    else {
        return CommitteeStatus::default();
    };
    let mut wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    let committee = answer["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|item| {
            let mut members: Vec<&str> = item["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            members.sort_unstable();
            members == wanted
        });
    match committee {
        Some(item) => CommitteeStatus {
            runs: item["runs"].as_i64().unwrap_or(0),
            failure: item["lastError"].as_str().map(str::to_string),
        },
        None => CommitteeStatus::default(),
    }
}

/// The processes of this testnet still running: the supervisor and the
/// children recorded in the state.
fn running_processes(layout: &Layout, state: &State) -> Vec<(String, u32)> {
    let mut running = Vec::new();
    if let Some(pid) = state.supervisor_pid {
        if process_matches(pid, is_testnet_up) {
            running.push(("custos-testnet up".to_string(), pid));
        }
    }
    for (name, pid) in &state.pids {
        let config = layout.config_of(name);
        if process_matches(*pid, |arguments| runs_with_config(arguments, &config)) {
            running.push((name.clone(), *pid));
        }
    }
    running
}

/// `custos-testnet down`: stops the supervisor (which stops its children)
/// and then any recorded process still running.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let layout = Layout::open(dir)?;
    let state = layout.load_state()?.with_context(|| {
        format!(
            "no {} in {}",
            crate::layout::STATE_FILE,
            layout.dir.display()
        )
    })?;
    let mut stopped = 0;
    if let Some(pid) = state.supervisor_pid {
        // It needs up to STOP_GRACE for its children, and a little more.
        if stop_pid(pid, STOP_GRACE + Duration::from_secs(5), is_testnet_up) {
            eprintln!("stopped custos-testnet up (pid {pid})");
            stopped += 1;
        }
    }
    for (name, pid) in &state.pids {
        let config = layout.config_of(name);
        if stop_pid(*pid, STOP_GRACE, |arguments| {
            runs_with_config(arguments, &config)
        }) {
            eprintln!("stopped {name} (pid {pid})");
            stopped += 1;
        }
    }
    // The supervisor rewrote the state as it stopped; keep what it wrote.
    let mut state = layout.load_state()?.unwrap_or(state);
    state.pids.clear();
    state.supervisor_pid = None;
    layout.save_state(&state)?;
    if stopped == 0 {
        println!("nothing was running in {}", layout.dir.display());
    } else {
        println!(
            "testnet stopped; its data stays in {}",
            layout.dir.display()
        );
    }
    Ok(())
}

/// `custos-testnet status`: health of the control plane and the nodes.
/// Fails when something is down.
pub fn status(dir: &Path) -> anyhow::Result<()> {
    let layout = Layout::open(dir)?;
    let state = layout.load_state()?.with_context(|| {
        format!(
            "no {} in {}",
            crate::layout::STATE_FILE,
            layout.dir.display()
        )
    })?;
    let mut healthy = true;
    println!("{:<13} {}", "testnet", layout.dir.display());
    match state.supervisor_pid {
        Some(pid) if process_matches(pid, is_testnet_up) => {
            println!("{:<13} custos-testnet up, pid {pid}", "supervisor");
        }
        _ => println!("{:<13} not running", "supervisor"),
    }
    let process = |name: &str| match state.pids.get(name) {
        Some(pid) => {
            let config = layout.config_of(name);
            if process_matches(*pid, |arguments| runs_with_config(arguments, &config)) {
                format!("pid {pid}")
            } else {
                format!("pid {pid} not running")
            }
        }
        None => "not started".to_string(),
    };
    let control_plane = http::address_of(&state.url);
    let health = match &control_plane {
        Ok(address) => describe(http::get(*address, "/api/v1/sys/health", None)),
        Err(error) => Err(format!("{error:#}")),
    };
    healthy &= health.is_ok();
    println!(
        "{CONTROL_PLANE:<13} {}  {}  {}",
        state.url,
        process(CONTROL_PLANE),
        health.unwrap_or_else(|error| error)
    );
    for node in &state.nodes {
        let health = describe(http::get(node.http, "/healthz", None));
        healthy &= health.is_ok();
        println!(
            "{:<13} http://{}  {}  {}  {}  id {}",
            node.name,
            node.http,
            node.address,
            process(&node.name),
            health.unwrap_or_else(|error| error),
            node.id
        );
    }
    println!(
        "ECDSA committee  {}",
        if state.ecdsa_committee {
            "ready"
        } else {
            "not prepared"
        }
    );
    if state.dev_primes {
        println!("dev primes       imported from a file: development and tests only");
    }
    if let (Ok(address), Some(credentials)) = (control_plane, state.credentials()) {
        let listing = login(address, &credentials).and_then(|token| {
            http::get(address, "/api/v1/nodes", Some(&token))?
                .ensure_success("GET /api/v1/nodes")?
                .json::<Value>()
        });
        match listing {
            Ok(listing) => {
                println!("the control plane sees:");
                for item in listing["items"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                {
                    let field = |name: &str| item[name].as_str().unwrap_or("-").to_string();
                    println!(
                        "  {:<12} {:<10} last seen {}",
                        field("name"),
                        field("status"),
                        field("lastSeen")
                    );
                }
                let unhealthy = unhealthy_nodes(&state.nodes, &listing);
                if !unhealthy.is_empty() {
                    healthy = false;
                    println!("  not healthy: {}", unhealthy.join(", "));
                }
            }
            Err(error) => {
                healthy = false;
                println!("the control plane's node list: {error:#}");
            }
        }
    }
    ensure!(healthy, "the testnet is not (fully) up");
    Ok(())
}

/// "ok" for a 200, else what went wrong.
fn describe(response: anyhow::Result<http::Response>) -> Result<String, String> {
    match response {
        Ok(response) if response.status == 200 => Ok("ok".to_string()),
        Ok(response) => Err(format!(
            "HTTP {}: {}",
            response.status,
            response.body.trim()
        )),
        Err(error) => Err(format!("unreachable ({error:#})")),
    }
}

/// Quotes `text` for a POSIX shell, when needed.
fn shell_quote(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c));
    if safe {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// What `up` prints once the testnet is ready.
fn walkthrough(layout: &Layout, state: &State, credentials: &Credentials) -> String {
    let dir = shell_quote(&layout.dir.display().to_string());
    let login_body = json!({
        "clientId": credentials.client_id,
        "clientSecret": credentials.client_secret,
    })
    .to_string();
    let parties = state.nodes.len();
    let frost = format!(
        r#"{{"name":"demo","protocol":"frost-taproot","threshold":2,"parties":{parties}}}"#
    );
    let ecdsa = format!(
        r#"{{"name":"demo-evm","protocol":"cggmp21","chain":"ethereum","threshold":2,"parties":{parties}}}"#
    );
    let nodes: Vec<String> = state
        .nodes
        .iter()
        .map(|node| format!("  {:<14} {}  http://{}", node.name, node.address, node.http))
        .collect();
    let dev_primes_note = if state.dev_primes {
        "  dev primes     imported from a file: development and tests only\n"
    } else {
        ""
    };
    let ecdsa_note = if state.ecdsa_committee {
        ""
    } else {
        "  # (needs the ECDSA committee: run `custos-testnet up` without --no-ecdsa)\n"
    };
    format!(
        "\nCustos testnet is up.\n\n\
         \x20 control plane  {url}\n\
         \x20 state          {state_file}  (URL, root credentials, nodes, pids)\n\
         \x20 logs           {logs}/<name>.log\n\
         {dev_primes_note}\
         {nodes}\n\n\
         Try it (jq is optional: without it, copy accessToken and id from the JSON answers):\n\n\
         \x20 URL={url}\n\
         \x20 TOKEN=$(curl -s -X POST $URL/api/v1/auth/token -H 'Content-Type: application/json' \\\n\
         \x20   -d {login_body} | jq -r .accessToken)\n\n\
         \x20 # a FROST (Taproot) wallet\n\
         \x20 curl -s -X POST $URL/api/v1/wallets -H \"Authorization: Bearer $TOKEN\" \\\n\
         \x20   -H 'Content-Type: application/json' -d {frost}\n\n\
         \x20 # a CGGMP21 (ECDSA) wallet on Ethereum, and a signature with it\n\
         {ecdsa_note}\
         \x20 WALLET=$(curl -s -X POST $URL/api/v1/wallets -H \"Authorization: Bearer $TOKEN\" \\\n\
         \x20   -H 'Content-Type: application/json' -d {ecdsa} | jq -r .id)\n\
         \x20 curl -s -X POST $URL/api/v1/wallets/$WALLET/sign -H \"Authorization: Bearer $TOKEN\" \\\n\
         \x20   -H 'Content-Type: application/json' -d '{{\"message\":\"hello\"}}'\n\n\
         \x20 # back up its shares (sealed for each node's recovery key, DIR/node-N/recovery.key,\n\
         \x20 # and the control plane's SoftHSM2 token; a restore waits for an admin's approval)\n\
         \x20 curl -s -X POST $URL/api/v1/wallets/$WALLET/backups -H \"Authorization: Bearer $TOKEN\" \\\n\
         \x20   -H 'Content-Type: application/json' -d '{{}}'\n\n\
         Stop with Ctrl-C here, or from another shell: custos-testnet down --dir {dir}\n",
        url = state.url,
        state_file = shell_quote(&layout.state_path().display().to_string()),
        logs = shell_quote(&layout.logs_dir().display().to_string()),
        nodes = nodes.join("\n"),
        login_body = shell_quote(&login_body),
        frost = shell_quote(&frost),
        ecdsa = shell_quote(&ecdsa),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<NodeEntry> {
        vec![
            NodeEntry::new(node_name(1), "aa".repeat(32), 7101, 7181),
            NodeEntry::new(node_name(2), "bb".repeat(32), 7102, 7182),
            NodeEntry::new(node_name(3), "cc".repeat(32), 7103, 7183),
        ]
    }

    #[test]
    fn nodes_are_healthy_by_name_or_id() {
        let listing = json!({"items": [
            {"id": "x", "name": "node-1", "peerId": "p", "status": "healthy"},
            {"id": "y", "name": "other", "peerId": "BB".repeat(32), "status": "healthy"},
            {"id": "z", "name": "node-3", "status": "unreachable"},
        ]});
        assert_eq!(
            unhealthy_nodes(&nodes(), &listing),
            ["node-3 (unreachable)"]
        );
        assert_eq!(
            unhealthy_nodes(&nodes(), &json!({"items": []})),
            [
                "node-1 (not listed)",
                "node-2 (not listed)",
                "node-3 (not listed)"
            ]
        );
        assert_eq!(unhealthy_nodes(&nodes(), &json!({})).len(), 3);
    }

    #[test]
    fn new_credentials_reset_the_committee() {
        let mut state = State::default();
        let first = Credentials {
            client_id: "a".into(),
            client_secret: "1".into(),
        };
        assert!(record_credentials(&mut state, first.clone()));
        state.ecdsa_committee = true;
        assert!(!record_credentials(&mut state, first));
        assert!(state.ecdsa_committee);
        let second = Credentials {
            client_id: "b".into(),
            client_secret: "2".into(),
        };
        assert!(record_credentials(&mut state, second.clone()));
        assert!(!state.ecdsa_committee);
        assert_eq!(state.credentials(), Some(second));
    }

    #[test]
    fn dev_primes_files_are_counted_or_refused() {
        let dir = std::env::temp_dir().join(format!(
            "custos-testnet-devprimes-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("primes.json");
        std::fs::write(&file, r#"[{"p":"1","q":"2"},{"p":"3","q":"4"}]"#).unwrap();
        let dev_primes = DevPrimes::open(&file).unwrap();
        assert_eq!(dev_primes.sets, 2);
        assert!(dev_primes.file.is_absolute());
        std::fs::write(&file, r#"{"p":"1"}"#).unwrap();
        assert!(DevPrimes::open(&file).is_err());
        assert!(DevPrimes::open(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/tmp/custos-testnet"), "/tmp/custos-testnet");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn walkthrough_has_real_credentials_and_commands() {
        let layout = Layout {
            dir: PathBuf::from("/tmp/tn"),
        };
        let state = State {
            url: "http://127.0.0.1:8200".into(),
            nodes: nodes(),
            ..State::default()
        };
        let credentials = Credentials {
            client_id: "root-id".into(),
            client_secret: "s'cret".into(),
        };
        let text = walkthrough(&layout, &state, &credentials);
        assert!(text.contains("URL=http://127.0.0.1:8200\n"));
        assert!(text.contains(r#"-d '{"clientId":"root-id","clientSecret":"s'\''cret"}'"#));
        assert!(text.contains(
            r#"-d '{"name":"demo","protocol":"frost-taproot","threshold":2,"parties":3}'"#
        ));
        assert!(text.contains(
            r#"-d '{"name":"demo-evm","protocol":"cggmp21","chain":"ethereum","threshold":2,"parties":3}'"#
        ));
        assert!(text.contains("$URL/api/v1/wallets/$WALLET/sign"));
        assert!(text.contains(r#"-d '{"message":"hello"}'"#));
        assert!(text.contains("$URL/api/v1/wallets/$WALLET/backups"));
        assert!(text.contains("custos-testnet down --dir /tmp/tn\n"));
        assert!(text.contains("/tmp/tn/testnet.json"));
        assert!(text.contains("without --no-ecdsa"));
        assert!(!text.contains("dev primes"));
        let state = State {
            dev_primes: true,
            ..state
        };
        let text = walkthrough(&layout, &state, &credentials);
        assert!(
            text.contains("\n  dev primes     imported from a file: development and tests only\n")
        );
    }
}
