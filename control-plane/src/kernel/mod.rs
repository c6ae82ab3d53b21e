//! # The kernel: what every engine uses the same way
//!
//! Storage and migrations ([`db`]), errors ([`error`]), identities, tokens
//! and people's second factor ([`auth`], [`identities`], [`authority`],
//! [`mfa`], [`totp`]), orgs and their policies ([`orgs`], [`policy`]), the
//! one authorisation path ([`gate`]: role, policy, MFA, audit of refusals;
//! [`guard`]: how a call authorises and records itself),
//! approvals and stored operations ([`approvals`], [`operations`]), the
//! audit hash chain ([`audit`]), the keyring of sealed records
//! ([`keyring`]), webhooks ([`webhooks`]), the background worker
//! ([`worker`]), what engines give the kernel ([`engine`]), configuration
//! ([`config`]) and the shared state ([`state`]).
//!
//! The kernel names no engine: engines import from it, never the other way
//! round. The one exception is [`state`], whose `AppState` holds the
//! engines' caches and builds their registry ([`crate::engines::registry`]).

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod authority;
pub mod config;
pub mod db;
pub mod engine;
pub mod error;
pub mod gate;
pub mod guard;
pub mod hsm;
pub mod identities;
pub mod keyring;
pub mod mfa;
pub mod operations;
pub mod orgs;
pub mod policy;
pub mod state;
pub mod totp;
pub mod webhooks;
pub mod worker;
