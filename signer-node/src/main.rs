//! `custos-signer`: the signer node daemon.
//!
//! * `custos-signer init --config node.toml` creates the node's Ed25519
//!   identity and its master key, and prints the party id to register;
//! * `custos-signer run --config node.toml` runs the node until SIGINT
//!   (Ctrl-C) or SIGTERM;
//! * `custos-signer status --config node.toml` asks the running node (or,
//!   when it is down, reads the store) and prints identity, peers, wallets
//!   and pool size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use custos_signer_node::config::NodeConfig;
use custos_signer_node::http::{self, OperatorState};
use custos_signer_node::master_key::MasterKey;
use custos_signer_node::node::Node;
use custos_signer_node::store::ShareStore;
use custos_signer_node::transport::{party_of, Network, NetworkConfig};
use libp2p::identity;

#[derive(Parser)]
#[command(name = "custos-signer", version, about = "Custos signer node")]
struct Cli {
    /// The node's TOML configuration.
    #[arg(
        long,
        short,
        env = "CUSTOS_SIGNER_CONFIG",
        global = true,
        default_value = "custos-signer.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the node identity and master key.
    Init,
    /// Run the node.
    Run,
    /// Show identity, peers, wallets held, pool size and health.
    Status,
    /// Development and tests only: add pregenerated Paillier primes from a
    /// JSON file (a list of prime sets, as `custos-protocol`'s
    /// `generate-fixtures` example writes) to this node's pool, so aux info
    /// takes seconds instead of minutes. Primes from a file are known to
    /// whoever has the file: never use this for keys that guard value.
    DevImportPrimes {
        /// The JSON file.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Import only the set at this position of the list.
        #[arg(long)]
        index: Option<usize>,
    },
    /// For the node's operator: create an X25519 recovery key for share
    /// backups. Writes the secret key (64 hex characters, mode 0600) to
    /// `--out`, which must not exist, and prints the public key for
    /// `[backup] recovery_public_key`. Keep the secret away from the node
    /// and the control plane; it is needed only to restore a backup.
    RecoveryKey {
        /// Where to write the secret key.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::RecoveryKey { out } = &cli.command {
        return recovery_key(out);
    }
    let config = NodeConfig::load(&cli.config, std::env::vars())?;
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Init => init(&config),
        Command::Run => runtime.block_on(run(config)),
        Command::Status => runtime.block_on(status(&config)),
        Command::DevImportPrimes { file, index } => import_primes(&config, &file, index),
        Command::RecoveryKey { out } => recovery_key(&out),
    }
}

fn init(config: &NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let identity_path = config.identity_path();
    anyhow::ensure!(
        !identity_path.exists(),
        "{} exists: this node is initialised",
        identity_path.display()
    );
    let keypair = identity::Keypair::generate_ed25519();
    let secret = keypair.clone().try_into_ed25519()?.secret();
    write_private(&identity_path, secret.as_ref())?;
    let master = Arc::new(MasterKey::create(&config.master_key)?);
    let party = party_of(&keypair).context("identity must be Ed25519")?;
    ShareStore::open(&config.store_dir(), master.clone(), party)?;
    println!("party_id {}", hex::encode(party.0));
    println!("peer_id {}", keypair.public().to_peer_id());
    println!("master_key {}", master.describe());
    Ok(())
}

fn recovery_key(out: &Path) -> anyhow::Result<()> {
    let key = custos_signer_node::backup::RecoveryKey::generate()?;
    let secret = zeroize::Zeroizing::new(hex::encode(*key.to_bytes()));
    write_private(out, secret.as_bytes())
        .with_context(|| format!("writing {} (it must not exist)", out.display()))?;
    println!(
        "recovery_public_key {}",
        hex::encode(key.public().to_bytes())
    );
    Ok(())
}

fn import_primes(config: &NodeConfig, file: &Path, index: Option<usize>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut sets: Vec<custos_protocol::primes::Primes> =
        serde_json::from_str(&text).context("the file is not a JSON list of prime sets")?;
    if let Some(index) = index {
        anyhow::ensure!(index < sets.len(), "the file holds {} sets", sets.len());
        sets = vec![sets.swap_remove(index)];
    }
    let keypair = load_identity(config)?;
    let me = party_of(&keypair).context("identity must be Ed25519")?;
    let master = Arc::new(MasterKey::open(&config.master_key)?);
    let store = ShareStore::open(&config.store_dir(), master, me)?;
    let mut pool = store.prime_pool()?;
    let imported = sets.len();
    for primes in sets {
        pool.push(primes);
    }
    store.put_prime_pool(&pool)?;
    tracing::warn!(
        imported,
        pooled = pool.len(),
        "imported primes from a file: development and tests only"
    );
    println!("pooled {}", pool.len());
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn load_identity(config: &NodeConfig) -> anyhow::Result<identity::Keypair> {
    let path = config.identity_path();
    let mut secret = std::fs::read(&path)
        .with_context(|| format!("reading {} (run init first)", path.display()))?;
    Ok(identity::Keypair::ed25519_from_bytes(&mut secret)?)
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let keypair = load_identity(&config)?;
    let me = party_of(&keypair).context("identity must be Ed25519")?;
    let master = Arc::new(MasterKey::open(&config.master_key)?);
    let store = Arc::new(ShareStore::open(&config.store_dir(), master, me)?);
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let mut peers: Vec<_> = config
        .peers
        .iter()
        .map(|peer| Ok((peer.id, Some(peer.address.parse()?))))
        .collect::<anyhow::Result<_>>()?;
    peers.push((config.coordinator, None));
    let (network, events) = Network::start(NetworkConfig {
        keypair,
        listen: Some(config.listen.parse()?),
        peers,
        job_timeout: Duration::from_secs(900),
    })?;
    let node = Node::new(&config, me, store.clone(), network.clone())?;
    tokio::spawn(node.clone().fill_prime_pool(config.prime_pool_target));
    let listener = tokio::net::TcpListener::bind(config.http_listen).await?;
    let operator = http::app(OperatorState {
        store,
        network: network.clone(),
        metrics,
    });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, operator).await {
            tracing::error!(%error, "operator endpoint stopped");
        }
    });
    tracing::info!(party_id = %hex::encode(me.0), listen = %config.listen, "signer node running");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        () = node.serve(events) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    Ok(())
}

async fn status(config: &NodeConfig) -> anyhow::Result<()> {
    match fetch_status(config).await {
        Ok(body) => println!("{body}"),
        Err(error) => {
            eprintln!(
                "node not reachable at http://{}/status ({error}); reading the store",
                config.http_listen
            );
            let keypair = load_identity(config)?;
            let me = party_of(&keypair).context("identity must be Ed25519")?;
            let master = Arc::new(MasterKey::open(&config.master_key)?);
            let store = ShareStore::open(&config.store_dir(), master, me)?;
            println!("party_id {}", hex::encode(me.0));
            for wallet in store.wallets()? {
                println!(
                    "wallet {} {} generations {:?}",
                    hex::encode(wallet.wallet.0),
                    wallet.curve,
                    wallet.generations
                );
            }
            println!("prime_pool {}", store.prime_pool()?.len());
        }
    }
    Ok(())
}

/// `GET /status` over a plain HTTP/1.1 connection.
async fn fetch_status(config: &NodeConfig) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(config.http_listen),
    )
    .await??;
    stream
        .write_all(
            format!(
                "GET /status HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                config.http_listen
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "status endpoint answered {head}"
    );
    Ok(body.to_string())
}
