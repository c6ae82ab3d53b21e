//! Decoded key shares and aux info kept in memory, so the signing path does
//! not unseal, decode and re-validate them on every job.
//!
//! The store stays the source of truth: an entry is added only from a value
//! just read from or written to the store, and every store mutation the node
//! makes (keygen, resharing, commit) updates the cache in the same code path.
//! The cached values are the same secret types the protocol uses; they
//! zeroize on drop (key shares) or are sealed the same way at rest (aux info,
//! see `share::AuxInfo`), so keeping them decoded widens nothing that a
//! running signing job does not already hold.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use custos_protocol::share::{AuxInfo, KeyCurve, KeyShare};
use custos_protocol::{Committee, KeyGeneration, WalletId};

/// Shares kept decoded at once. A node of a large custody deployment holds
/// far more wallets than it signs for in a minute; past this bound an
/// arbitrary entry is dropped and read again from the store when needed.
pub const SHARE_CAPACITY: usize = 65_536;

type AnyShare = Arc<dyn Any + Send + Sync>;

/// The in-memory cache of one node. `Send + Sync`; every lock is held only
/// for a map operation, never across an await or a decode.
#[derive(Default)]
pub struct Decoded {
    /// `KeyShare<E>` of the curve stored, by wallet and generation, and per
    /// wallet the lowest generation still live (older ones were deleted by
    /// a resharing commit and must never come back from a racing reader).
    shares: Mutex<Shares>,
    /// This node's aux info by committee: the precomputed value once the
    /// background precomputation finished, the plain one before.
    aux: Mutex<HashMap<Committee, Arc<AuxInfo>>>,
    /// Committees whose precomputation runs now (at most one run each).
    precomputing: Mutex<HashSet<Committee>>,
}

#[derive(Default)]
struct Shares {
    decoded: HashMap<(WalletId, KeyGeneration), AnyShare>,
    live_from: HashMap<WalletId, KeyGeneration>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a consistent map
    // (every critical section is a single insert, remove or lookup).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Decoded {
    /// The decoded share of `wallet` at `generation` on curve `E`, if cached.
    pub fn share<E: KeyCurve>(
        &self,
        wallet: WalletId,
        generation: KeyGeneration,
    ) -> Option<Arc<KeyShare<E>>> {
        let entry = lock(&self.shares)
            .decoded
            .get(&(wallet, generation))
            .cloned()?;
        // A share of another curve under this key is answered by the store,
        // which reports the mismatch precisely.
        entry.downcast::<KeyShare<E>>().ok()
    }

    /// Remembers a share just stored or read. A share of a generation that
    /// was retired meanwhile is not kept: the reader raced the deletion.
    pub fn put_share<E: KeyCurve>(&self, share: Arc<KeyShare<E>>) {
        let mut shares = lock(&self.shares);
        if shares
            .live_from
            .get(&share.wallet)
            .is_some_and(|live_from| share.generation < *live_from)
        {
            return;
        }
        if shares.decoded.len() >= SHARE_CAPACITY {
            if let Some(evicted) = shares.decoded.keys().next().copied() {
                shares.decoded.remove(&evicted);
            }
        }
        shares
            .decoded
            .insert((share.wallet, share.generation), share);
    }

    /// Forgets every generation of `wallet` below `generation` (deleted by a
    /// resharing commit) and refuses them from now on.
    pub fn retire_below(&self, wallet: WalletId, generation: KeyGeneration) {
        let mut shares = lock(&self.shares);
        shares
            .decoded
            .retain(|(cached_wallet, cached), _| *cached_wallet != wallet || *cached >= generation);
        let live_from = shares.live_from.entry(wallet).or_insert(generation);
        *live_from = (*live_from).max(generation);
    }

    /// Number of shares kept decoded.
    pub fn shares_len(&self) -> usize {
        lock(&self.shares).decoded.len()
    }

    /// This node's aux info for `committee`, if cached.
    pub fn aux(&self, committee: &Committee) -> Option<Arc<AuxInfo>> {
        lock(&self.aux).get(committee).cloned()
    }

    /// Keeps `aux` as the committee's aux info, replacing any other: used
    /// right after an aux-info job stored a new value.
    pub fn install_aux(&self, aux: Arc<AuxInfo>) {
        lock(&self.aux).insert(aux.committee.clone(), aux);
    }

    /// Keeps `aux`, just read from the store, unless another value was
    /// installed meanwhile; returns the value now kept.
    pub fn insert_aux_if_absent(&self, aux: Arc<AuxInfo>) -> Arc<AuxInfo> {
        lock(&self.aux)
            .entry(aux.committee.clone())
            .or_insert(aux)
            .clone()
    }

    /// Whether `aux` is (the very same value as) the one kept now.
    pub fn is_current_aux(&self, aux: &Arc<AuxInfo>) -> bool {
        lock(&self.aux)
            .get(&aux.committee)
            .is_some_and(|current| Arc::ptr_eq(current, aux))
    }

    /// Committees whose cached aux info is precomputed.
    pub fn aux_precomputed(&self) -> usize {
        lock(&self.aux)
            .values()
            .filter(|aux| aux.is_precomputed())
            .count()
    }

    /// Marks `committee` as being precomputed; false if a run is under way.
    pub fn start_precompute(&self, committee: &Committee) -> bool {
        lock(&self.precomputing).insert(committee.clone())
    }

    /// Clears the mark of [`Decoded::start_precompute`].
    pub fn finish_precompute(&self, committee: &Committee) {
        lock(&self.precomputing).remove(committee);
    }
}
