//! # custos-testnet
//!
//! A whole local Custos deployment — the control plane (`custos`) and N
//! signer nodes (`custos-signer`) — as child processes on loopback, with its
//! state in one folder. The `custos-testnet` binary is a thin command line
//! over this library; end-to-end tests use the library directly:
//!
//! * [`http`]: a tiny blocking HTTP/1.1 client for the loopback endpoints of
//!   the control plane and the nodes;
//! * [`layout`]: the testnet folder, its state file `testnet.json`
//!   ([`layout::Layout::load_state`] reads it into a [`layout::State`]) and
//!   the configuration files written into it;
//! * [`process`]: finding the binaries, starting, watching and stopping the
//!   child processes;
//! * [`commands`]: the `up`, `down` and `status` commands.

pub mod commands;
pub mod http;
pub mod layout;
pub mod process;
