//! `custos`: the control plane server and its admin commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use custos_control_plane::config::Config;

mod operator;

/// See Cargo.toml: the allocator of the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "custos", version, about = "Custos control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, env = "CUSTOS_CONFIG")]
        config: PathBuf,
    },
    /// Print the coordinator's public key (hex), the key signer nodes pin as
    /// `coordinator`, creating the key under the keyring if missing. Opens
    /// the store and the keyring as the server would: with `--config`, or
    /// with `--data-dir` (and `--database-url`) and the development master
    /// key in `CUSTOS_MASTER_KEY`. A Shamir-sealed control plane cannot be
    /// opened here: read `GET /api/v1/sys/coordinator-key` once unsealed.
    CoordinatorKey {
        /// Configuration file (TOML).
        #[arg(long, env = "CUSTOS_CONFIG", conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        /// The control plane's data folder (seal mode `env`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The store (default: SQLite in the data folder).
        #[arg(long, requires = "data_dir")]
        database_url: Option<String>,
    },
    /// Audit log commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Seal operations against a running control plane (over its HTTP API).
    Operator {
        /// The control plane's address.
        #[arg(long, env = "CUSTOS_ADDR", default_value = "http://127.0.0.1:8200")]
        addr: String,
        #[command(subcommand)]
        command: OperatorCommand,
    },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Initialize once: prints the unseal shares and the root credentials.
    Init {
        /// Unseal shares to issue.
        #[arg(long, default_value_t = 5)]
        shares: u8,
        /// Shares needed to unseal.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        /// Keep the master key in the configured PKCS#11 token instead.
        #[arg(long)]
        hsm: bool,
    },
    /// Give one unseal share (`--share`, `CUSTOS_UNSEAL_SHARE`, or a line on
    /// standard input).
    Unseal {
        /// The share (prefer the environment or standard input: shell
        /// histories keep arguments).
        #[arg(long)]
        share: Option<String>,
        /// Forget the shares given so far instead.
        #[arg(long)]
        reset: bool,
    },
    /// Seal: the control plane forgets its master key.
    Seal {
        /// A platform administrator's bearer token.
        #[arg(long, env = "CUSTOS_TOKEN")]
        token: String,
    },
    /// Show the seal status.
    Status,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every org's hash chain and name the first broken record.
    Verify {
        /// postgres://… or sqlite://…
        #[arg(long, env = "CUSTOS_DATABASE_URL")]
        database_url: String,
        /// Only this org.
        #[arg(long)]
        org: Option<String>,
    },
}

fn init_logging() {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn")),
        )
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            let config = Config::load(&config, std::env::vars())?;
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.listen).await?;
                custos_control_plane::run(config, listener, metrics, shutdown_signal()).await
            })
        }
        Command::CoordinatorKey {
            config,
            data_dir,
            database_url,
        } => {
            let config = match (config, data_dir) {
                (Some(path), _) => Config::load(&path, std::env::vars())?,
                (None, Some(data_dir)) => {
                    let mut text = format!(
                        "listen = \"127.0.0.1:0\"\ndata_dir = {}\ndev_mode = true\n",
                        toml::Value::String(data_dir.display().to_string())
                    );
                    if let Some(url) = database_url {
                        text.push_str(&format!("database_url = {}\n", toml::Value::String(url)));
                    }
                    text.push_str("[seal]\nmode = \"env\"\n");
                    Config::parse(&text, std::env::vars())?
                }
                (None, None) => anyhow::bail!("give --config or --data-dir"),
            };
            let public = runtime.block_on(custos_control_plane::coordinator_public_key(&config))?;
            println!("{public}");
            Ok(())
        }
        Command::Operator { addr, command } => runtime.block_on(async move {
            match command {
                OperatorCommand::Init {
                    shares,
                    threshold,
                    hsm,
                } => operator::init(&addr, shares, threshold, hsm).await,
                OperatorCommand::Unseal { share, reset } => {
                    operator::unseal(&addr, share, reset).await
                }
                OperatorCommand::Seal { token } => operator::seal(&addr, &token).await,
                OperatorCommand::Status => operator::status(&addr).await,
            }
        }),
        Command::Audit {
            command: AuditCommand::Verify { database_url, org },
        } => runtime.block_on(async move {
            let db = custos_control_plane::db::Db::connect(&database_url).await?;
            let report = custos_control_plane::audit::verify(&db, org.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.valid {
                Ok(())
            } else {
                std::process::exit(2)
            }
        }),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
