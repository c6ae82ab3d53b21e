//! Parties, committees, quorums and execution ids.
//!
//! Every party of a protocol run must agree, without talking, on three things:
//! who takes part, which index each participant has, and which execution id
//! the run uses. This module derives all three from data the coordinator sends
//! in a job, the same way on every node:
//!
//! * a [`Committee`] is the set of key holders of a wallet, sorted by
//!   [`PartyId`]; a holder's *keygen index* is its position in that order;
//! * a [`Quorum`] is a subset of a committee that runs one signing; it is kept
//!   in ascending keygen-index order and signer `i` of the run is position `i`
//!   in it (cggmp21 and givre both require this);
//! * an [`ExecutionId`] is a SHA-256 digest over the protocol kind, request id,
//!   wallet id, participants, key generation and attempt number, so two runs
//!   never share one.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// Largest committee Custos accepts. Paillier aux info grows quadratically
/// with the committee; 64 is far above any custody deployment.
pub const MAX_PARTIES: usize = 64;

/// A stable party identity: the node's Ed25519 public key (its libp2p
/// identity key). Ordering is bytewise, which fixes every index.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartyId(pub [u8; 32]);

impl fmt::Debug for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartyId({self})")
    }
}

impl fmt::Display for PartyId {
    /// The first eight bytes in hex: enough to tell nodes apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Identifies a wallet (one shared key) across the system.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct WalletId(pub [u8; 16]);

/// Identifies one client request (a signing, a wallet creation, a reshare).
/// Retries of the same request keep the same id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct RequestId(pub [u8; 16]);

/// How many times a key has been re-dealt: 0 after the DKG, +1 after every
/// resharing or refresh. Shares of different generations never mix.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct KeyGeneration(pub u32);

impl KeyGeneration {
    /// The generation that a resharing of this one produces.
    pub fn next(self) -> Result<Self, Error> {
        self.0
            .checked_add(1)
            .map(KeyGeneration)
            .ok_or(Error::InvalidArgument("key generation overflows"))
    }
}

/// The protocols Custos runs. The numeric codes go on the wire: never reuse
/// or renumber one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[repr(u8)]
pub enum ProtocolKind {
    /// Distributed key generation on secp256k1 (ECDSA and BIP-340 keys).
    KeygenSecp256k1 = 1,
    /// Distributed key generation on edwards25519.
    KeygenEd25519 = 2,
    /// CGGMP21 auxiliary info (Paillier keys, ring-Pedersen parameters).
    AuxInfo = 3,
    /// CGGMP21 full signing (no presignatures).
    SignEcdsa = 4,
    /// FROST BIP-340 signing with the Taproot key-path tweak.
    SignTaproot = 5,
    /// FROST Ed25519 signing.
    SignEd25519 = 6,
    /// Resharing (or refresh) of a secp256k1 key.
    ReshareSecp256k1 = 7,
    /// Resharing (or refresh) of an edwards25519 key.
    ReshareEd25519 = 8,
}

impl ProtocolKind {
    /// Every kind, in wire-code order.
    pub const ALL: [ProtocolKind; 8] = [
        ProtocolKind::KeygenSecp256k1,
        ProtocolKind::KeygenEd25519,
        ProtocolKind::AuxInfo,
        ProtocolKind::SignEcdsa,
        ProtocolKind::SignTaproot,
        ProtocolKind::SignEd25519,
        ProtocolKind::ReshareSecp256k1,
        ProtocolKind::ReshareEd25519,
    ];

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Parses a wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.code() == code)
    }

    /// A short stable name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::KeygenSecp256k1 => "keygen_secp256k1",
            ProtocolKind::KeygenEd25519 => "keygen_ed25519",
            ProtocolKind::AuxInfo => "aux_info",
            ProtocolKind::SignEcdsa => "sign_ecdsa",
            ProtocolKind::SignTaproot => "sign_taproot",
            ProtocolKind::SignEd25519 => "sign_ed25519",
            ProtocolKind::ReshareSecp256k1 => "reshare_secp256k1",
            ProtocolKind::ReshareEd25519 => "reshare_ed25519",
        }
    }
}

/// The key holders of a wallet, sorted by [`PartyId`], without duplicates.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "Vec<PartyId>", into = "Vec<PartyId>")]
pub struct Committee {
    members: Vec<PartyId>,
}

impl Committee {
    /// Builds a committee from members in any order. Refuses duplicates,
    /// fewer than two members, and more than [`MAX_PARTIES`].
    pub fn new(members: impl IntoIterator<Item = PartyId>) -> Result<Self, Error> {
        let mut members: Vec<PartyId> = members.into_iter().collect();
        members.sort();
        let n_before = members.len();
        members.dedup();
        if members.len() != n_before {
            return Err(Error::InvalidArgument("committee lists a party twice"));
        }
        if members.len() < 2 {
            return Err(Error::InvalidArgument(
                "a committee needs at least two parties",
            ));
        }
        if members.len() > MAX_PARTIES {
            return Err(Error::InvalidArgument(
                "committee is larger than MAX_PARTIES",
            ));
        }
        Ok(Self { members })
    }

    /// Number of members.
    pub fn n(&self) -> u16 {
        // Bounded by MAX_PARTIES at construction.
        self.members.len() as u16
    }

    /// Members in index order.
    pub fn members(&self) -> &[PartyId] {
        &self.members
    }

    /// The keygen index of `party`, if it is a member.
    pub fn index_of(&self, party: &PartyId) -> Option<u16> {
        self.members
            .binary_search(party)
            .ok()
            .map(|position| position as u16)
    }

    /// The member with keygen index `index`.
    pub fn member(&self, index: u16) -> Option<PartyId> {
        self.members.get(usize::from(index)).copied()
    }

    /// Whether `party` is a member.
    pub fn contains(&self, party: &PartyId) -> bool {
        self.index_of(party).is_some()
    }
}

impl TryFrom<Vec<PartyId>> for Committee {
    type Error = Error;
    fn try_from(members: Vec<PartyId>) -> Result<Self, Error> {
        Committee::new(members)
    }
}

impl From<Committee> for Vec<PartyId> {
    fn from(committee: Committee) -> Self {
        committee.members
    }
}

/// The parties of one signing run: exactly `t` members of a committee, in
/// ascending keygen-index order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Quorum {
    members: Vec<PartyId>,
    keygen_indices: Vec<u16>,
}

impl Quorum {
    /// Builds the quorum of `participants` within `committee` for a key of
    /// threshold `threshold`. Refuses non-members, duplicates and a count
    /// other than the threshold.
    pub fn new(
        committee: &Committee,
        threshold: u16,
        participants: impl IntoIterator<Item = PartyId>,
    ) -> Result<Self, Error> {
        let mut keygen_indices = participants
            .into_iter()
            .map(|party| {
                committee.index_of(&party).ok_or(Error::InvalidArgument(
                    "quorum member is not in the committee",
                ))
            })
            .collect::<Result<Vec<u16>, Error>>()?;
        keygen_indices.sort_unstable();
        let n_before = keygen_indices.len();
        keygen_indices.dedup();
        if keygen_indices.len() != n_before {
            return Err(Error::InvalidArgument("quorum lists a party twice"));
        }
        if keygen_indices.len() != usize::from(threshold) {
            return Err(Error::InvalidArgument(
                "quorum size differs from the threshold",
            ));
        }
        let members = keygen_indices
            .iter()
            .map(|&index| committee.member(index))
            .collect::<Option<Vec<_>>>()
            .ok_or(Error::InvalidArgument(
                "quorum member is not in the committee",
            ))?;
        Ok(Self {
            members,
            keygen_indices,
        })
    }

    /// Members in signer-index order.
    pub fn members(&self) -> &[PartyId] {
        &self.members
    }

    /// `keygen_indices()[i]` is the keygen index of signer `i`.
    pub fn keygen_indices(&self) -> &[u16] {
        &self.keygen_indices
    }

    /// The signer index of `party` in this run.
    pub fn signer_index_of(&self, party: &PartyId) -> Option<u16> {
        self.members
            .iter()
            .position(|member| member == party)
            .map(|position| position as u16)
    }

    /// Number of signers.
    pub fn len(&self) -> u16 {
        self.members.len() as u16
    }

    /// Always false for a valid quorum; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// Everything that identifies one protocol run. All parties derive the same
/// [`ExecutionId`] from it; any difference gives a different id, and the
/// run then fails instead of mixing messages of two runs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RunDescriptor<'a> {
    /// Which protocol.
    pub kind: ProtocolKind,
    /// The client request this run serves.
    pub request: RequestId,
    /// The wallet whose key is generated, used or re-dealt.
    pub wallet: WalletId,
    /// The participants of this run, in session-index order.
    pub participants: &'a [PartyId],
    /// The key generation the run reads (or, for a keygen, creates).
    pub generation: KeyGeneration,
    /// Retry counter of the coordinator: a retry of the same request with the
    /// same participants must still get a fresh execution id.
    pub attempt: u32,
    /// Protocol parameters every party must agree on, canonically encoded
    /// (for a keygen the threshold; for a resharing the dealers, the new
    /// committee and the new threshold). A disagreement gives different ids,
    /// so the run fails fast instead of producing inconsistent shares.
    pub context: &'a [u8],
}

/// The unique id of one protocol run; also the session id on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExecutionId(pub [u8; 32]);

impl fmt::Debug for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExecutionId(")?;
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("..)")
    }
}

impl ExecutionId {
    /// Domain separation tag; bump the version if the encoding below changes.
    const DOMAIN: &'static [u8] = b"custos/execution-id/v1";

    /// Derives the execution id of a run. The encoding is length-prefixed, so
    /// no two descriptors hash the same input.
    pub fn derive(run: &RunDescriptor<'_>) -> Self {
        let mut hash = Sha256::new();
        hash.update((Self::DOMAIN.len() as u32).to_be_bytes());
        hash.update(Self::DOMAIN);
        hash.update([run.kind.code()]);
        hash.update(run.request.0);
        hash.update(run.wallet.0);
        hash.update((run.participants.len() as u32).to_be_bytes());
        for party in run.participants {
            hash.update(party.0);
        }
        hash.update(run.generation.0.to_be_bytes());
        hash.update(run.attempt.to_be_bytes());
        hash.update((run.context.len() as u32).to_be_bytes());
        hash.update(run.context);
        Self(hash.finalize().into())
    }

    /// The id as cggmp21 takes it.
    pub fn as_cggmp(&self) -> cggmp21::ExecutionId<'_> {
        cggmp21::ExecutionId::new(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(byte: u8) -> PartyId {
        PartyId([byte; 32])
    }

    #[test]
    fn committee_indices_do_not_depend_on_input_order() {
        let a = Committee::new([party(3), party(1), party(2)]).unwrap();
        let b = Committee::new([party(2), party(3), party(1)]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.index_of(&party(1)), Some(0));
        assert_eq!(a.index_of(&party(3)), Some(2));
        assert_eq!(a.index_of(&party(9)), None);
    }

    #[test]
    fn committee_refuses_duplicates_and_singletons() {
        assert!(Committee::new([party(1), party(1), party(2)]).is_err());
        assert!(Committee::new([party(1)]).is_err());
        assert!(Committee::new((0..=MAX_PARTIES as u8).map(party)).is_err());
    }

    #[test]
    fn quorum_orders_signers_by_keygen_index() {
        let committee = Committee::new([party(1), party(2), party(3), party(4)]).unwrap();
        let quorum = Quorum::new(&committee, 3, [party(4), party(1), party(3)]).unwrap();
        assert_eq!(quorum.keygen_indices(), &[0, 2, 3]);
        assert_eq!(quorum.signer_index_of(&party(4)), Some(2));
        assert!(Quorum::new(&committee, 3, [party(4), party(1)]).is_err());
        assert!(Quorum::new(&committee, 2, [party(4), party(9)]).is_err());
        assert!(Quorum::new(&committee, 2, [party(4), party(4)]).is_err());
    }

    #[test]
    fn execution_id_changes_with_every_field() {
        let participants = [party(1), party(2)];
        let other_participants = [party(1), party(3)];
        let base = RunDescriptor {
            kind: ProtocolKind::SignEcdsa,
            request: RequestId([1; 16]),
            wallet: WalletId([2; 16]),
            participants: &participants,
            generation: KeyGeneration(0),
            attempt: 0,
            context: &[],
        };
        let variants = [
            RunDescriptor {
                kind: ProtocolKind::SignTaproot,
                ..base.clone()
            },
            RunDescriptor {
                request: RequestId([9; 16]),
                ..base.clone()
            },
            RunDescriptor {
                wallet: WalletId([9; 16]),
                ..base.clone()
            },
            RunDescriptor {
                participants: &other_participants,
                ..base.clone()
            },
            RunDescriptor {
                generation: KeyGeneration(1),
                ..base.clone()
            },
            RunDescriptor {
                attempt: 1,
                ..base.clone()
            },
            RunDescriptor {
                context: &[2],
                ..base.clone()
            },
        ];
        let base_id = ExecutionId::derive(&base);
        assert_eq!(base_id, ExecutionId::derive(&base.clone()));
        let mut seen = vec![base_id];
        for variant in &variants {
            let id = ExecutionId::derive(variant);
            assert!(!seen.contains(&id), "{variant:?} collides");
            seen.push(id);
        }
    }

    #[test]
    fn protocol_kind_codes_round_trip() {
        for kind in ProtocolKind::ALL {
            assert_eq!(ProtocolKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ProtocolKind::from_code(0), None);
        assert_eq!(ProtocolKind::from_code(200), None);
    }
}
