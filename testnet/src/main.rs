//! `custos-testnet`: a whole local Custos deployment — the control plane
//! (`custos`) and N signer nodes (`custos-signer`) — as child processes on
//! loopback, with its state in one folder.
//!
//! * `custos-testnet up` initialises what is missing, starts everything,
//!   waits until it is healthy, prepares the ECDSA committee, prints how to
//!   use it and runs until Ctrl-C;
//! * `custos-testnet down` stops a testnet started elsewhere;
//! * `custos-testnet status` shows the health of its processes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custos_testnet::commands;
use custos_testnet::layout::PRIME_POOL_TARGET;

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
        /// Prime sets each node keeps ready for aux-info generation
        /// (`prime_pool_target` in each node.toml; 0: generate none).
        #[arg(long, value_name = "N", default_value_t = PRIME_POOL_TARGET)]
        prime_pool_target: usize,
        /// Development and tests only: a JSON list of pregenerated Paillier
        /// prime sets (as `custos-protocol`'s `generate-fixtures` example
        /// writes). Each node this run initialises gets one set: node N the
        /// set at position N-1. Whoever has the file knows these primes:
        /// never use it for keys that guard value.
        #[arg(long, value_name = "FILE")]
        dev_primes: Option<PathBuf>,
        /// An extra environment variable for the control plane (`custos
        /// serve`), such as RUST_LOG=debug; repeatable.
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env_assignment)]
        control_plane_env: Vec<(String, String)>,
    },
    /// Stop the testnet's processes (started by `up`, here or elsewhere).
    Down,
    /// Show the health of the control plane and the nodes.
    Status,
}

/// `KEY=VALUE` into its two parts (the value may be empty or hold `=`).
fn parse_env_assignment(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    if key.is_empty() || key.contains('\0') || value.contains('\0') {
        return Err(format!("`{text}` is not KEY=VALUE with a non-empty KEY"));
    }
    Ok((key.to_string(), value.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up {
            nodes,
            database_url,
            no_ecdsa,
            port,
            prime_pool_target,
            dev_primes,
            control_plane_env,
        } => commands::up(&commands::UpOptions {
            dir: cli.dir,
            nodes,
            database_url,
            no_ecdsa,
            port,
            prime_pool_target,
            dev_primes,
            control_plane_env,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_options_parse() {
        let cli = Cli::try_parse_from([
            "custos-testnet",
            "up",
            "--prime-pool-target",
            "0",
            "--dev-primes",
            "primes.json",
            "--control-plane-env",
            "RUST_LOG=debug,sqlx=warn",
            "--control-plane-env",
            "EMPTY=",
        ])
        .unwrap();
        let Command::Up {
            prime_pool_target,
            dev_primes,
            control_plane_env,
            ..
        } = cli.command
        else {
            panic!("not up");
        };
        assert_eq!(prime_pool_target, 0);
        assert_eq!(dev_primes, Some(PathBuf::from("primes.json")));
        assert_eq!(
            control_plane_env,
            [
                ("RUST_LOG".to_string(), "debug,sqlx=warn".to_string()),
                ("EMPTY".to_string(), String::new())
            ]
        );

        let cli = Cli::try_parse_from(["custos-testnet", "up"]).unwrap();
        let Command::Up {
            prime_pool_target,
            dev_primes,
            control_plane_env,
            ..
        } = cli.command
        else {
            panic!("not up");
        };
        assert_eq!(prime_pool_target, 2);
        assert_eq!(dev_primes, None);
        assert!(control_plane_env.is_empty());

        for bad in ["NOEQUALS", "=value"] {
            assert!(
                Cli::try_parse_from(["custos-testnet", "up", "--control-plane-env", bad]).is_err()
            );
        }
    }
}
