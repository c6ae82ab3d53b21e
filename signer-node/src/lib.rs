//! # custos-signer-node
//!
//! The signer node daemon (binary `custos-signer`) and the coordinator client
//! the control plane embeds to drive nodes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod backup;
pub mod config;
pub mod coordinator;
pub mod decoded;
pub mod faults;
pub mod http;
pub mod job;
pub mod master_key;
pub mod node;
pub mod store;
pub mod transport;
