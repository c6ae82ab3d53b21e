//! `custos`: the control plane server and its admin commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use custos_control_plane::kernel::config::Config;

mod cli;

use cli::{admin, operator};

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
    /// Wallet commands for people (over the HTTP API, with your token).
    Wallet {
        /// The control plane's address.
        #[arg(long, env = "CUSTOS_ADDR", default_value = "http://127.0.0.1:8200")]
        addr: String,
        /// Your bearer token.
        #[arg(long, env = "CUSTOS_TOKEN")]
        token: String,
        #[command(subcommand)]
        command: WalletCommand,
    },
    /// Approvals: list, approve, reject (over the HTTP API, with your token).
    Approval {
        /// The control plane's address.
        #[arg(long, env = "CUSTOS_ADDR", default_value = "http://127.0.0.1:8200")]
        addr: String,
        /// Your bearer token.
        #[arg(long, env = "CUSTOS_TOKEN")]
        token: String,
        #[command(subcommand)]
        command: ApprovalCommand,
    },
    /// Identities: show, cut off, and their tokens (over the HTTP API).
    Identity {
        /// The control plane's address.
        #[arg(long, env = "CUSTOS_ADDR", default_value = "http://127.0.0.1:8200")]
        addr: String,
        /// Your bearer token.
        #[arg(long, env = "CUSTOS_TOKEN")]
        token: String,
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Signer nodes and ECDSA committees (over the HTTP API).
    Node {
        /// The control plane's address.
        #[arg(long, env = "CUSTOS_ADDR", default_value = "http://127.0.0.1:8200")]
        addr: String,
        /// Your bearer token.
        #[arg(long, env = "CUSTOS_TOKEN")]
        token: String,
        #[command(subcommand)]
        command: NodeCommand,
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
enum WalletCommand {
    /// Freeze a wallet at once: it signs and reshares nothing, including
    /// what was approved before.
    Freeze {
        /// The wallet's id.
        wallet: String,
        /// Why (kept in the audit record).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ask to unfreeze a wallet (one admin's approval by default).
    Unfreeze {
        /// The wallet's id.
        wallet: String,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List the signer nodes and their health.
    List,
    /// List the ECDSA committees: ready, aux-info runs tried, the last
    /// failure, and since when a preparation runs.
    Committees,
    /// Prepare ECDSA aux info for a committee of nodes, by name (platform
    /// admin; minutes of CPU on every node; a failed run is tried again).
    Prepare {
        /// The nodes' names.
        #[arg(required = true, num_args = 2..)]
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ApprovalCommand {
    /// List approvals.
    List {
        /// pending, approved, rejected or expired.
        #[arg(long)]
        status: Option<String>,
    },
    /// Approve.
    Approve {
        /// The approval's id.
        approval: String,
        /// Your current TOTP code, when the rule requires MFA.
        #[arg(long)]
        totp: Option<String>,
        /// A comment.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject.
    Reject {
        /// The approval's id.
        approval: String,
        /// Your current TOTP code.
        #[arg(long)]
        totp: Option<String>,
        /// A comment.
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Show an identity.
    Show {
        /// The identity's id.
        identity: String,
    },
    /// Disable an identity: it cannot log in, and its tokens are revoked.
    Disable {
        /// The identity's id.
        identity: String,
    },
    /// Enable an identity again (one admin's approval by default).
    Enable {
        /// The identity's id.
        identity: String,
    },
    /// List an identity's active tokens (ids, never the tokens).
    Tokens {
        /// The identity's id.
        identity: String,
    },
    /// Revoke every token of an identity.
    RevokeTokens {
        /// The identity's id.
        identity: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every org's hash chain, check it against its signed
    /// checkpoints, and name the first problem (exit status 2). Checkpoint
    /// signatures are checked under `--checkpoint-key`, the configuration's
    /// `audit.checkpoint_public_key`, or the key under the keyring when
    /// `--config` names a store whose seal mode unseals here (`env`, `hsm`);
    /// a Shamir-sealed store cannot: pass the key that
    /// `GET /api/v1/audit/verify` shows as `checkpointKey`, or use that
    /// endpoint.
    Verify {
        /// postgres://… or sqlite://… (default: the configuration's store).
        #[arg(long, env = "CUSTOS_DATABASE_URL")]
        database_url: Option<String>,
        /// The server's configuration file (TOML): its store and keyring.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The checkpoint public key (64 hex) to trust.
        #[arg(long)]
        checkpoint_key: Option<String>,
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
        Command::Wallet {
            addr,
            token,
            command,
        } => runtime.block_on(async move {
            match command {
                WalletCommand::Freeze { wallet, reason } => {
                    admin::freeze(&addr, &token, &wallet, reason).await
                }
                WalletCommand::Unfreeze { wallet } => admin::unfreeze(&addr, &token, &wallet).await,
            }
        }),
        Command::Node {
            addr,
            token,
            command,
        } => runtime.block_on(async move {
            match command {
                NodeCommand::List => admin::nodes(&addr, &token, false).await,
                NodeCommand::Committees => admin::nodes(&addr, &token, true).await,
                NodeCommand::Prepare { nodes } => {
                    admin::prepare_committee(&addr, &token, &nodes).await
                }
            }
        }),
        Command::Approval {
            addr,
            token,
            command,
        } => runtime.block_on(async move {
            match command {
                ApprovalCommand::List { status } => admin::approvals(&addr, &token, status).await,
                ApprovalCommand::Approve {
                    approval,
                    totp,
                    comment,
                } => admin::vote(&addr, &token, &approval, true, totp, comment).await,
                ApprovalCommand::Reject {
                    approval,
                    totp,
                    comment,
                } => admin::vote(&addr, &token, &approval, false, totp, comment).await,
            }
        }),
        Command::Identity {
            addr,
            token,
            command,
        } => runtime.block_on(async move {
            let (identity, action) = match command {
                IdentityCommand::Show { identity } => (identity, admin::IdentityAction::Show),
                IdentityCommand::Disable { identity } => (identity, admin::IdentityAction::Disable),
                IdentityCommand::Enable { identity } => (identity, admin::IdentityAction::Enable),
                IdentityCommand::Tokens { identity } => (identity, admin::IdentityAction::Tokens),
                IdentityCommand::RevokeTokens { identity } => {
                    (identity, admin::IdentityAction::RevokeTokens)
                }
            };
            admin::identity(&addr, &token, &identity, action).await
        }),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    database_url,
                    config,
                    checkpoint_key,
                    org,
                },
        } => runtime.block_on(async move {
            let config = config
                .map(|path| Config::load(&path, std::env::vars()))
                .transpose()?;
            let report = custos_control_plane::verify_audit(
                config.as_ref(),
                database_url.as_deref(),
                org.as_deref(),
                checkpoint_key.as_deref(),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.signatures_checked {
                eprintln!(
                    "checkpoint signatures were not checked: give --checkpoint-key (the \
                     checkpointKey of GET /api/v1/audit/verify) or --config with a seal mode \
                     that unseals here, or use GET /api/v1/audit/verify"
                );
            }
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
