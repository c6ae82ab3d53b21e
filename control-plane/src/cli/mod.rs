//! # Command-line clients of a running control plane
//!
//! `custos wallet|approval|identity|node …` ([`admin`]) and `custos
//! operator …` ([`operator`]): plain HTTP to the control plane's API with
//! the person's own token; they share no code with the server's handlers.

pub mod admin;
pub mod operator;
