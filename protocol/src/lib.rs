//! # custos-protocol
//!
//! The MPC core of Custos: threshold ECDSA (CGGMP21), threshold Schnorr
//! (FROST: BIP-340 with the Taproot tweak, and Ed25519) from one DKG,
//! resharing and proactive refresh, the versioned wire envelope, share
//! sealing at rest, and a transport-agnostic driver with a deadline.
//!
//! The crate is sans-IO: it knows nothing of sockets, databases or HTTP.
//! Protocols run over a [`round_based::Delivery`] that [`driver::run`] builds
//! from any stream of inbound frames and sink of outbound frames; the signer
//! node plugs libp2p in, the tests plug in [`sim`], an in-memory network that
//! injects faults.
//!
//! Security rules that shape the API (see `ARCHITECTURE.md`):
//! * full signing only: there is no presignature code path in this crate;
//! * every run has a fresh [`ids::ExecutionId`] derived from the request;
//! * reliable-broadcast checks of cggmp21 stay on;
//! * secret-bearing types zeroize on drop and redact `Debug`.

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

pub mod driver;
pub mod ecdsa;
pub mod ids;
pub mod keygen;
pub mod primes;
pub mod reshare;
pub mod schnorr;
pub mod seal;
pub mod share;
#[cfg(feature = "sim")]
pub mod sim;
pub mod wire;

pub use generic_ec::curves::{Ed25519, Secp256k1};
pub use ids::{
    Committee, ExecutionId, KeyGeneration, PartyId, ProtocolKind, Quorum, RequestId, RunDescriptor,
    WalletId,
};

/// The security level of every Paillier key and proof (128-bit).
pub type SecurityLevel = cggmp21::security_level::SecurityLevel128;

/// Errors of this crate. Variants that involve another party name it, so an
/// operator can act on the report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller passed inconsistent or out-of-range parameters.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A protocol run failed inside the MPC library.
    #[error("{kind:?} failed: {source}")]
    Protocol {
        /// Which protocol failed.
        kind: ProtocolKind,
        /// The library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// One or more parties misbehaved in a way this party could prove.
    #[error("{reason}: misbehaving parties {culprits:?}")]
    Misbehaviour {
        /// The parties to blame.
        culprits: Vec<PartyId>,
        /// What they did, as a stable label.
        reason: &'static str,
    },
    /// The run did not finish before its deadline.
    #[error("{kind:?} did not finish before its deadline of {deadline:?}")]
    DeadlineExceeded {
        /// Which protocol timed out.
        kind: ProtocolKind,
        /// The deadline that passed.
        deadline: std::time::Duration,
    },
    /// The transport under the run closed before the run finished.
    #[error("transport closed during {0:?}")]
    TransportClosed(ProtocolKind),
    /// The caller stopped the run: a newer attempt of the same request
    /// replaced it.
    #[error("{0:?} stopped: a newer attempt of the request replaced it")]
    Superseded(ProtocolKind),
    /// The run stalled: no frame moved for a bounded time and the peers
    /// it waited for could not help (gone, failed, or finished without the
    /// missing frame). Stopped early instead of waiting for the deadline;
    /// the coordinator retries under a fresh run id.
    #[error("{kind:?} stalled: {reason}")]
    Stalled {
        /// Which protocol stalled.
        kind: ProtocolKind,
        /// Why it could not recover, as a stable label.
        reason: &'static str,
    },
    /// The output failed an independent check (a signature that does not
    /// verify, a key share that does not validate). Nothing is returned.
    #[error("output check failed: {0}")]
    OutputCheck(&'static str),
    /// A sealed share could not be opened or a stored value not decoded.
    #[error("sealed data rejected: {0}")]
    Sealing(&'static str),
}

impl Error {
    pub(crate) fn protocol(
        kind: ProtocolKind,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Protocol {
            kind,
            source: Box::new(source),
        }
    }

    /// The parties this error blames, if any.
    pub fn culprits(&self) -> &[PartyId] {
        match self {
            Error::Misbehaviour { culprits, .. } => culprits,
            _ => &[],
        }
    }
}
