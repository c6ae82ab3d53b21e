//! `custos-testnet`: a whole local Custos deployment — the control plane
//! (`custos`) and N signer nodes (`custos-signer`) — as child processes on
//! loopback, with its state in one folder.
//!
//! * `custos-testnet up` initialises what is missing, starts everything,
//!   waits until it is healthy, prepares the ECDSA committee, prints how to
//!   use it and runs until Ctrl-C;
//! * `custos-testnet down` stops a testnet started elsewhere;
//! * `custos-testnet status` shows the health of its processes.

mod commands;
mod http;
mod layout;
mod process;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "custos-testnet",
    version,
    about = "A local Custos deployment: the control plane and signer nodes on loopback"
)]
struct Cli {
    /// The testnet folder (state, configurations, keys, databases, logs).
    #[arg(long, global = true, default_value = ".custos-testnet")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the testnet (reusing the folder's keys, wallets and ports) and
    /// run it in the foreground until Ctrl-C or SIGTERM.
    Up {
        /// Signer nodes [default: 3; a restart keeps the folder's count].
        #[arg(long)]
        nodes: Option<usize>,
        /// The control plane's database URL (e.g. postgres://...) [default:
        /// the control plane's own, in DIR/control-plane].
        #[arg(long)]
        database_url: Option<String>,
        /// Do not prepare the ECDSA (CGGMP21) committee of all nodes.
        #[arg(long)]
        no_ecdsa: bool,
        /// The control plane's port [default: the previous run's, else 8200,
        /// else a free one].
        #[arg(long)]
        port: Option<u16>,
    },
    /// Stop the testnet's processes (started by `up`, here or elsewhere).
    Down,
    /// Show the health of the control plane and the nodes.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up {
            nodes,
            database_url,
            no_ecdsa,
            port,
        } => commands::up(&commands::UpOptions {
            dir: cli.dir,
            nodes,
            database_url,
            no_ecdsa,
            port,
        }),
        Command::Down => commands::down(&cli.dir),
        Command::Status => commands::status(&cli.dir),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
