//! Resharing: moves a key to a new committee and/or threshold without ever
//! reconstructing it. With the same committee and threshold it is the
//! proactive refresh (cggmp21 0.6 has none for threshold keys).
//!
//! The protocol is verifiable secret redistribution with Feldman
//! commitments (Desmedt–Jajodia 1997; Wong, Wang, Wing 2002, "Verifiable
//! Secret Redistribution for Archive Systems", section 4):
//!
//! * **Round 1, dealers.** A quorum `S` of at least `t` old holders. Dealer
//!   `j` computes `w_j = λ_j · x_j` (λ_j the Lagrange coefficient at 0 over
//!   `S`), samples `f_j` of degree `t' − 1` with `f_j(0) = w_j`, broadcasts
//!   the commitments `C_j = [a_{j,l} · G]` and sends `f_j(I'_k)` privately
//!   to each new holder `k` (`I'_k = k + 1`).
//! * **Checks, every participant.** `C_j[0] = λ_j · X_j` binds the dealing
//!   to the dealer's old public share `X_j` (from the authenticated old key
//!   info); `Σ_j C_j[0] = Y` keeps the public key; each new holder checks
//!   the Feldman equation `f_j(I'_k) · G = Σ_l I'_k^l · C_j[l]` for its own
//!   evaluation.
//! * **Round 2, echo.** Every new holder broadcasts, to all participants,
//!   a digest of each dealer's commitments and the dealers it complains
//!   about. A digest that differs from one's own names the dealer who
//!   equivocated; any complaint names the dealer. All participants reach the
//!   same verdict.
//! * **Output.** New holder `k`: `x'_k = Σ_j f_j(I'_k)`, public shares
//!   `X'_m = Σ_j Σ_l I'_m^l · C_j[l]`, the old chain code (so HD addresses
//!   are unchanged) and generation + 1. The share is validated before it is
//!   returned. ECDSA keys then need aux info for the new committee.
//!
//! A complaint names the dealer but cannot prove the complaint honest: a
//! lying new holder can make an honest dealer look bad. Either way the run
//! fails and nothing is replaced; old holders delete their shares only after
//! every new holder confirmed and a test signature verified (the node's
//! two-phase commit).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use generic_ec::{NonZero, Point, Scalar, SecretScalar};
use generic_ec_zkp::polynomial::{lagrange_coefficient_at_zero, Polynomial};
use rand_core::{CryptoRng, RngCore};
use round_based::{Delivery, Incoming, MessageType, Mpc, MpcParty, Outgoing};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::driver::Session;
use crate::ids::{Committee, ExecutionId, PartyId, RequestId, RunDescriptor, WalletId};
use crate::share::{KeyCurve, KeyShare, PublicKeyInfo};
use crate::Error;

/// Messages of the resharing protocol.
#[derive(Clone, Serialize, Deserialize, round_based::ProtocolMessage)]
#[serde(bound = "")]
pub enum ReshareMsg<E: KeyCurve> {
    /// Round 1, broadcast by each dealer: Feldman commitments to its
    /// polynomial, `t'` points.
    Commitments(Vec<Point<E>>),
    /// Round 1, sent by each dealer to one new holder: its evaluation.
    SubShare(SubShare<E>),
    /// Round 2, broadcast by each new holder.
    Echo(Echo),
}

/// A dealer's evaluation for one new holder. Secret: zeroized on drop.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SubShare<E: KeyCurve>(Scalar<E>);

impl<E: KeyCurve> Drop for SubShare<E> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A new holder's view of round 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// SHA-256 of each dealer's commitments, in dealer order.
    pub commitment_digests: Vec<[u8; 32]>,
    /// Session indices of the dealers whose dealing failed a check.
    pub complaints: Vec<u16>,
}

/// A resharing as the coordinator describes it in a job.
#[derive(Clone, Debug)]
pub struct ReshareRun<E: KeyCurve> {
    /// The request that asked for it.
    pub request: RequestId,
    /// The key's current public data. Dealers check it against their share;
    /// a new holder must receive it from an authenticated source (the
    /// coordinator's signed job).
    pub old: PublicKeyInfo<E>,
    /// The old holders that deal: at least the old threshold.
    pub dealers: Vec<PartyId>,
    /// Who will hold the new shares.
    pub new_committee: Committee,
    /// Signers needed after the resharing.
    pub new_threshold: u16,
    /// This party.
    pub me: PartyId,
    /// The coordinator's retry counter.
    pub attempt: u32,
}

/// What this party gets out of a resharing.
#[derive(Debug)]
pub enum ReshareOutput<E: KeyCurve> {
    /// This party holds a share of the new generation.
    NewShare(KeyShare<E>),
    /// This party only dealt; every new holder accepted the dealing.
    Dealt,
}

/// The participants' roles, derived identically by everyone.
struct Roles {
    /// Sorted union of dealers and new holders: session-index order.
    participants: Vec<PartyId>,
    /// Session indices of the dealers, in the order of their old index.
    dealers: Vec<u16>,
    /// Old keygen index of each dealer (same order as `dealers`).
    dealer_old_indices: Vec<u16>,
    /// Session index of each new holder, in new keygen-index order.
    receivers: Vec<u16>,
}

impl<E: KeyCurve> ReshareRun<E> {
    fn roles(&self) -> Result<Roles, Error> {
        let old_committee = &self.old.committee;
        let mut dealer_old_indices = self
            .dealers
            .iter()
            .map(|dealer| {
                old_committee
                    .index_of(dealer)
                    .ok_or(Error::InvalidArgument("dealer is not an old holder"))
            })
            .collect::<Result<Vec<u16>, Error>>()?;
        dealer_old_indices.sort_unstable();
        let n_dealers = dealer_old_indices.len();
        dealer_old_indices.dedup();
        if dealer_old_indices.len() != n_dealers {
            return Err(Error::InvalidArgument("dealer listed twice"));
        }
        if n_dealers < usize::from(self.old.threshold()) {
            return Err(Error::InvalidArgument(
                "fewer dealers than the old threshold",
            ));
        }
        if self.new_threshold < 2 || self.new_threshold > self.new_committee.n() {
            return Err(Error::InvalidArgument("new threshold must be within 2..=n"));
        }
        let mut participants: Vec<PartyId> = self
            .new_committee
            .members()
            .iter()
            .copied()
            .chain(self.dealers.iter().copied())
            .collect();
        participants.sort();
        participants.dedup();
        let session_index = |party: &PartyId| -> Result<u16, Error> {
            participants
                .binary_search(party)
                .map(|position| position as u16)
                .map_err(|_| Error::InvalidArgument("party missing from participants"))
        };
        let dealers = dealer_old_indices
            .iter()
            .map(|&index| {
                old_committee
                    .member(index)
                    .ok_or(Error::InvalidArgument("dealer is not an old holder"))
                    .and_then(|party| session_index(&party))
            })
            .collect::<Result<Vec<u16>, Error>>()?;
        let receivers = self
            .new_committee
            .members()
            .iter()
            .map(session_index)
            .collect::<Result<Vec<u16>, Error>>()?;
        Ok(Roles {
            participants,
            dealers,
            dealer_old_indices,
            receivers,
        })
    }

    /// The session this party runs.
    pub fn session(&self, deadline: Duration) -> Result<Session, Error> {
        let roles = self.roles()?;
        let me = roles
            .participants
            .binary_search(&self.me)
            .map_err(|_| Error::InvalidArgument("this party neither deals nor receives"))?
            as u16;
        let mut context = Vec::new();
        for dealer in &roles.dealers {
            context.extend_from_slice(&dealer.to_be_bytes());
        }
        context.push(0xFF);
        for receiver in &roles.receivers {
            context.extend_from_slice(&receiver.to_be_bytes());
        }
        context.extend_from_slice(&self.new_threshold.to_be_bytes());
        let id = ExecutionId::derive(&RunDescriptor {
            kind: E::RESHARE,
            request: self.request,
            wallet: self.old.wallet,
            participants: &roles.participants,
            generation: self.old.generation,
            attempt: self.attempt,
            context: &context,
        });
        Ok(Session {
            kind: E::RESHARE,
            id,
            participants: roles.participants,
            me,
            deadline,
        })
    }

    /// The wallet being re-dealt.
    pub fn wallet(&self) -> WalletId {
        self.old.wallet
    }
}

/// How a dealer misbehaves, for tests that prove culprits are named.
#[cfg(feature = "sim")]
#[derive(Clone, Copy, Debug)]
pub enum DealerFault {
    /// The constant-term commitment does not match the dealer's old share.
    BadCommitment,
    /// The evaluation sent to the new holder with this new keygen index is off.
    BadSubShare {
        /// New keygen index of the victim.
        to: u16,
    },
}

#[cfg(not(feature = "sim"))]
#[derive(Clone, Copy, Debug)]
enum DealerFault {}

/// Runs this party's side of a resharing. `share` is this party's current
/// share if it deals, `None` if it only receives.
pub async fn reshare<E, M, R>(
    run: &ReshareRun<E>,
    share: Option<&KeyShare<E>>,
    party: M,
    rng: &mut R,
) -> Result<ReshareOutput<E>, Error>
where
    E: KeyCurve,
    M: Mpc<ProtocolMessage = ReshareMsg<E>>,
    R: RngCore + CryptoRng,
{
    reshare_inner(run, share, party, rng, None).await
}

/// [`reshare`] with a deliberately faulty dealing (tests only).
#[cfg(feature = "sim")]
pub async fn reshare_with_fault<E, M, R>(
    run: &ReshareRun<E>,
    share: Option<&KeyShare<E>>,
    party: M,
    rng: &mut R,
    fault: DealerFault,
) -> Result<ReshareOutput<E>, Error>
where
    E: KeyCurve,
    M: Mpc<ProtocolMessage = ReshareMsg<E>>,
    R: RngCore + CryptoRng,
{
    reshare_inner(run, share, party, rng, Some(fault)).await
}

async fn reshare_inner<E, M, R>(
    run: &ReshareRun<E>,
    share: Option<&KeyShare<E>>,
    party: M,
    rng: &mut R,
    fault: Option<DealerFault>,
) -> Result<ReshareOutput<E>, Error>
where
    E: KeyCurve,
    M: Mpc<ProtocolMessage = ReshareMsg<E>>,
    R: RngCore + CryptoRng,
{
    let kind = E::RESHARE;
    let roles = run.roles()?;
    let session = run.session(Duration::MAX)?;
    let me = session.me;
    let old = &run.old.key_info;
    let old_vss = old.vss_setup.as_ref().ok_or(Error::InvalidArgument(
        "only threshold keys can be reshared",
    ))?;
    let new_t = usize::from(run.new_threshold);
    let new_points: Vec<NonZero<Scalar<E>>> = (1..=run.new_committee.n())
        .map(|index| NonZero::from_scalar(Scalar::from(index)))
        .collect::<Option<_>>()
        .ok_or(Error::InvalidArgument("new committee too large"))?;
    // Lagrange coefficients at 0 over the dealers' old evaluation points.
    let dealer_points = roles
        .dealer_old_indices
        .iter()
        .map(|&index| old_vss.I.get(usize::from(index)).copied())
        .collect::<Option<Vec<_>>>()
        .ok_or(Error::InvalidArgument(
            "old key info lacks a dealer's index",
        ))?;
    let lambdas = (0..dealer_points.len())
        .map(|position| lagrange_coefficient_at_zero(position, &dealer_points))
        .collect::<Option<Vec<_>>>()
        .ok_or(Error::InvalidArgument("dealers' evaluation points collide"))?;
    let my_dealer_position = roles.dealers.iter().position(|&index| index == me);
    let my_receiver_position = roles.receivers.iter().position(|&index| index == me);

    let MpcParty { delivery, .. } = party.into_party();
    let (mut incoming, mut outgoing) = delivery.split();
    let send_error = |_| Error::TransportClosed(kind);

    // Round 1: deal.
    let mut own_commitments: Option<Vec<Point<E>>> = None;
    let mut own_sub_share: Option<SubShare<E>> = None;
    if let Some(position) = my_dealer_position {
        let share = share.ok_or(Error::InvalidArgument("a dealer needs its current share"))?;
        check_dealer_share(run, share)?;
        let lambda = lambdas
            .get(position)
            .ok_or(Error::InvalidArgument("dealer position"))?;
        let x: &Scalar<E> = share.core.x.as_ref();
        let mut w = *lambda.as_ref() * x;
        let polynomial =
            Polynomial::sample_with_const_term(rng, new_t - 1, SecretScalar::new(&mut w));
        let mut commitments: Vec<Point<E>> = polynomial
            .coefs()
            .iter()
            .map(|coefficient| Point::generator() * coefficient)
            .collect();
        if let (Some(DealerFaultKind::BadCommitment), Some(first)) =
            (fault.map(DealerFaultKind::from), commitments.first_mut())
        {
            *first += Point::generator();
        }
        outgoing
            .send(Outgoing::broadcast(ReshareMsg::Commitments(
                commitments.clone(),
            )))
            .await
            .map_err(send_error)?;
        for (new_index, (&receiver, point)) in roles.receivers.iter().zip(&new_points).enumerate() {
            let mut value: Scalar<E> = polynomial.value(point.as_ref());
            if let Some(DealerFaultKind::BadSubShare { to }) = fault.map(DealerFaultKind::from) {
                if usize::from(to) == new_index {
                    value += Scalar::one();
                }
            }
            let sub_share = SubShare(value);
            if receiver == me {
                own_sub_share = Some(sub_share);
            } else {
                outgoing
                    .send(Outgoing::p2p(receiver, ReshareMsg::SubShare(sub_share)))
                    .await
                    .map_err(send_error)?;
            }
        }
        own_commitments = Some(commitments);
    }

    // Collect round 1: commitments from every dealer, and sub-shares if this
    // party receives. Echoes that arrive early are kept for round 2.
    let mut commitments: BTreeMap<u16, Vec<Point<E>>> = BTreeMap::new();
    let mut sub_shares: BTreeMap<u16, SubShare<E>> = BTreeMap::new();
    let mut echoes: BTreeMap<u16, Echo> = BTreeMap::new();
    if let Some(own_commitments) = own_commitments {
        commitments.insert(me, own_commitments);
    }
    if let Some(own_sub_share) = own_sub_share {
        sub_shares.insert(me, own_sub_share);
    }
    let round1_done = |commitments: &BTreeMap<u16, Vec<Point<E>>>,
                       sub_shares: &BTreeMap<u16, SubShare<E>>| {
        commitments.len() == roles.dealers.len()
            && (my_receiver_position.is_none() || sub_shares.len() == roles.dealers.len())
    };
    while !round1_done(&commitments, &sub_shares) {
        let message = next_message(&mut incoming, kind).await?;
        accept(
            &roles,
            message,
            &mut commitments,
            &mut sub_shares,
            &mut echoes,
        )?;
    }

    // Checks everyone can make on public data.
    let digests: Vec<[u8; 32]> = roles
        .dealers
        .iter()
        .map(|dealer| {
            commitments
                .get(dealer)
                .map(|c| digest_commitments(c))
                .unwrap_or_default()
        })
        .collect();
    let mut complaints = Vec::new();
    let mut sum_of_constants = Point::<E>::zero();
    for (position, dealer) in roles.dealers.iter().enumerate() {
        let dealer_commitments = commitments
            .get(dealer)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let expected_constant = lambdas
            .get(position)
            .zip(
                roles
                    .dealer_old_indices
                    .get(position)
                    .and_then(|&index| old.public_shares.get(usize::from(index))),
            )
            .map(|(lambda, old_public_share)| **old_public_share * lambda);
        match (dealer_commitments.first(), expected_constant) {
            (Some(constant), Some(expected))
                if dealer_commitments.len() == new_t && *constant == expected =>
            {
                sum_of_constants += constant;
            }
            _ => complaints.push(*dealer),
        }
    }
    if complaints.is_empty() && sum_of_constants != *old.shared_public_key {
        return Err(Error::OutputCheck(
            "dealings do not add up to the public key",
        ));
    }

    // A new holder checks its evaluations and computes its share.
    let mut new_secret: Option<SecretScalar<E>> = None;
    if let Some(position) = my_receiver_position {
        let point = new_points
            .get(position)
            .ok_or(Error::InvalidArgument("receiver position"))?;
        let mut sum = Scalar::<E>::zero();
        for dealer in &roles.dealers {
            let (Some(dealer_commitments), Some(sub_share)) =
                (commitments.get(dealer), sub_shares.get(dealer))
            else {
                complaints.push(*dealer);
                continue;
            };
            let expected: Point<E> =
                Polynomial::from_coefs(dealer_commitments.clone()).value(point.as_ref());
            if Point::generator() * sub_share.0 != expected {
                complaints.push(*dealer);
            }
            sum += sub_share.0;
        }
        new_secret = Some(SecretScalar::new(&mut sum));
        complaints.sort_unstable();
        complaints.dedup();
        let echo = Echo {
            commitment_digests: digests.clone(),
            complaints: complaints.clone(),
        };
        outgoing
            .send(Outgoing::broadcast(ReshareMsg::Echo(echo.clone())))
            .await
            .map_err(send_error)?;
        echoes.insert(me, echo);
    }
    drop(sub_shares);

    // Round 2: every new holder's echo.
    while echoes.len() < roles.receivers.len() {
        let message = next_message(&mut incoming, kind).await?;
        let mut no_commitments = BTreeMap::new();
        let mut no_sub_shares = BTreeMap::new();
        accept(
            &roles,
            message,
            &mut no_commitments,
            &mut no_sub_shares,
            &mut echoes,
        )?;
    }
    let mut culprits: Vec<u16> = complaints;
    for (&sender, echo) in &echoes {
        if echo.commitment_digests.len() != digests.len() {
            // Authenticated, so provably this new holder's fault.
            return Err(Error::Misbehaviour {
                culprits: roles
                    .participants
                    .get(usize::from(sender))
                    .copied()
                    .into_iter()
                    .collect(),
                reason: "echo lists a different number of dealers",
            });
        }
        for ((dealer, theirs), ours) in roles
            .dealers
            .iter()
            .zip(&echo.commitment_digests)
            .zip(&digests)
        {
            if theirs != ours {
                culprits.push(*dealer);
            }
        }
        culprits.extend(
            echo.complaints
                .iter()
                .filter(|index| roles.dealers.contains(index)),
        );
    }
    culprits.sort_unstable();
    culprits.dedup();
    if !culprits.is_empty() {
        return Err(Error::Misbehaviour {
            culprits: culprits
                .iter()
                .filter_map(|&index| roles.participants.get(usize::from(index)).copied())
                .collect(),
            reason: "bad dealing in resharing",
        });
    }

    // Output.
    let (Some(position), Some(secret)) = (my_receiver_position, new_secret) else {
        return Ok(ReshareOutput::Dealt);
    };
    let mut combined = vec![Point::<E>::zero(); new_t];
    for dealer_commitments in commitments.values() {
        for (sum, commitment) in combined.iter_mut().zip(dealer_commitments) {
            *sum += commitment;
        }
    }
    let combined = Polynomial::from_coefs(combined);
    let public_shares = new_points
        .iter()
        .map(|point| NonZero::from_point(combined.value::<_, Point<E>>(point.as_ref())))
        .collect::<Option<Vec<_>>>()
        .ok_or(Error::OutputCheck("a new public share is the identity"))?;
    let x = NonZero::from_secret_scalar(secret)
        .ok_or(Error::OutputCheck("new secret share is zero"))?;
    let key_info = key_share::DirtyKeyInfo {
        curve: old.curve,
        shared_public_key: old.shared_public_key,
        public_shares,
        vss_setup: Some(key_share::VssSetup {
            min_signers: run.new_threshold,
            I: new_points,
        }),
        chain_code: old.chain_code,
    };
    let core = key_share::Valid::validate(key_share::DirtyCoreKeyShare {
        i: position as u16,
        key_info,
        x,
    })
    .map_err(|_| Error::OutputCheck("new key share does not validate"))?;
    Ok(ReshareOutput::NewShare(KeyShare::new(
        run.old.wallet,
        run.old.generation.next()?,
        run.new_committee.clone(),
        core,
    )?))
}

/// The fault as seen inside the protocol (an uninhabited type without the
/// `sim` feature, so release builds carry no fault code path that can run).
#[derive(Clone, Copy)]
enum DealerFaultKind {
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    BadCommitment,
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    BadSubShare { to: u16 },
}

impl From<DealerFault> for DealerFaultKind {
    fn from(fault: DealerFault) -> Self {
        #[cfg(feature = "sim")]
        match fault {
            DealerFault::BadCommitment => DealerFaultKind::BadCommitment,
            DealerFault::BadSubShare { to } => DealerFaultKind::BadSubShare { to },
        }
        #[cfg(not(feature = "sim"))]
        match fault {}
    }
}

/// A dealer's share must be of the key and generation being reshared.
fn check_dealer_share<E: KeyCurve>(run: &ReshareRun<E>, share: &KeyShare<E>) -> Result<(), Error> {
    let old = &run.old.key_info;
    let same = share.wallet == run.old.wallet
        && share.generation == run.old.generation
        && share.committee == run.old.committee
        && share.holder() == Some(run.me)
        && share.core.shared_public_key == old.shared_public_key
        && share.core.public_shares == old.public_shares
        && share.core.vss_setup == old.vss_setup
        && share.core.chain_code == old.chain_code;
    if same {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "the dealer's share differs from the key info in the job",
        ))
    }
}

fn digest_commitments<E: KeyCurve>(commitments: &[Point<E>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"custos/reshare/commitments/v1");
    hash.update((commitments.len() as u32).to_be_bytes());
    for commitment in commitments {
        hash.update(commitment.to_bytes(true));
    }
    hash.finalize().into()
}

async fn next_message<S, E, ReceiveError>(
    incoming: &mut S,
    kind: crate::ids::ProtocolKind,
) -> Result<Incoming<ReshareMsg<E>>, Error>
where
    S: futures::Stream<Item = Result<Incoming<ReshareMsg<E>>, ReceiveError>> + Unpin,
    E: KeyCurve,
    ReceiveError: std::error::Error + Send + Sync + 'static,
{
    match incoming.next().await {
        Some(Ok(message)) => Ok(message),
        Some(Err(error)) => Err(Error::protocol(kind, error)),
        None => Err(Error::TransportClosed(kind)),
    }
}

/// Files one message, after checking that its sender may send it in the way
/// it was sent. Anything else is provable misbehaviour of the sender.
fn accept<E: KeyCurve>(
    roles: &Roles,
    message: Incoming<ReshareMsg<E>>,
    commitments: &mut BTreeMap<u16, Vec<Point<E>>>,
    sub_shares: &mut BTreeMap<u16, SubShare<E>>,
    echoes: &mut BTreeMap<u16, Echo>,
) -> Result<(), Error> {
    let sender = message.sender;
    let blame = |reason| Error::Misbehaviour {
        culprits: roles
            .participants
            .get(usize::from(sender))
            .copied()
            .into_iter()
            .collect(),
        reason,
    };
    let is_dealer = roles.dealers.contains(&sender);
    let is_receiver = roles.receivers.contains(&sender);
    match (message.msg, message.msg_type) {
        (ReshareMsg::Commitments(points), MessageType::Broadcast) if is_dealer => {
            commitments.insert(sender, points);
        }
        (ReshareMsg::SubShare(sub_share), MessageType::P2P) if is_dealer => {
            sub_shares.insert(sender, sub_share);
        }
        (ReshareMsg::Echo(echo), MessageType::Broadcast) if is_receiver => {
            echoes.insert(sender, echo);
        }
        _ => return Err(blame("unexpected message for its sender's role")),
    }
    Ok(())
}
