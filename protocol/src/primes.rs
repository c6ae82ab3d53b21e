//! Paillier safe primes: generated ahead of time, pooled, consumed by
//! aux-info generation.
//!
//! One party's pair of 1536-bit safe primes takes 1 to 60 seconds of one
//! core (20-60 s typically), so nodes keep a pool filled in the background,
//! on blocking threads, and creating a wallet never waits for primes. The
//! pool reports progress through a callback and `tracing`.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::share::{from_secret_bytes, to_secret_bytes};
use crate::{Error, SecurityLevel};

/// One party's Paillier primes (`p`, `q`): secret until consumed by an
/// aux-info run, which turns them into that party's Paillier key.
#[derive(Clone, Serialize, Deserialize)]
pub struct Primes(cggmp21::PregeneratedPrimes<SecurityLevel>);

impl Primes {
    /// Generates a fresh pair. Blocking and CPU-heavy: call it from a
    /// blocking thread (as [`PrimePool::refill`] does).
    pub fn generate() -> Self {
        Self(cggmp21::PregeneratedPrimes::generate(&mut rand_core::OsRng))
    }

    /// Generates a fresh pair like [`Primes::generate`], but stands still
    /// whenever `paused()` is true: the search asks its random source for
    /// every candidate (thousands per pair, milliseconds apart), and the
    /// source waits there while `paused()` holds. A node fills its pool this
    /// way so that prime generation never takes the CPU from a protocol run.
    /// Blocking: call it from a thread of its own.
    pub fn generate_yielding(paused: &(dyn Fn() -> bool + Sync)) -> Self {
        let mut rng = YieldingRng { paused };
        Self(cggmp21::PregeneratedPrimes::generate(&mut rng))
    }

    pub(crate) fn into_inner(self) -> cggmp21::PregeneratedPrimes<SecurityLevel> {
        self.0
    }
}

impl fmt::Debug for Primes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Primes(<redacted>)")
    }
}

/// The operating system's random source, waiting while `paused()` holds.
struct YieldingRng<'a> {
    paused: &'a (dyn Fn() -> bool + Sync),
}

impl YieldingRng<'_> {
    fn wait(&self) {
        while (self.paused)() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl rand_core::RngCore for YieldingRng<'_> {
    fn next_u32(&mut self) -> u32 {
        self.wait();
        rand_core::OsRng.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.wait();
        rand_core::OsRng.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.wait();
        rand_core::OsRng.fill_bytes(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.wait();
        rand_core::OsRng.try_fill_bytes(dest)
    }
}

// Every byte comes from the operating system's CSPRNG; only the timing of
// the calls changes.
impl rand_core::CryptoRng for YieldingRng<'_> {}

/// Progress of a pool refill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefillProgress {
    /// Primes in the pool now.
    pub pooled: usize,
    /// The size being filled to.
    pub target: usize,
    /// Time since the refill started.
    pub elapsed: Duration,
}

/// A pool of pregenerated primes.
#[derive(Default, Serialize, Deserialize)]
pub struct PrimePool {
    primes: VecDeque<Primes>,
}

impl fmt::Debug for PrimePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrimePool {{ len: {} }}", self.primes.len())
    }
}

impl PrimePool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool holding `primes`.
    pub fn from_primes(primes: impl IntoIterator<Item = Primes>) -> Self {
        Self {
            primes: primes.into_iter().collect(),
        }
    }

    /// Primes available.
    pub fn len(&self) -> usize {
        self.primes.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.primes.is_empty()
    }

    /// Takes one set of primes out; each set is used for exactly one run.
    pub fn take(&mut self) -> Option<Primes> {
        self.primes.pop_front()
    }

    /// Adds primes.
    pub fn push(&mut self, primes: Primes) {
        self.primes.push_back(primes);
    }

    /// Generates primes on `parallelism` blocking threads until the pool
    /// holds `target`, calling `on_progress` after each new set.
    pub async fn refill(
        &mut self,
        target: usize,
        parallelism: usize,
        mut on_progress: impl FnMut(RefillProgress),
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        loop {
            let wanted = target.saturating_sub(self.primes.len() + running.len());
            for _ in 0..wanted.min(parallelism.max(1).saturating_sub(running.len())) {
                running.spawn_blocking(Primes::generate);
            }
            let Some(done) = running.join_next().await else {
                return Ok(());
            };
            let primes = done.map_err(|_| Error::OutputCheck("prime generation thread failed"))?;
            self.primes.push_back(primes);
            let progress = RefillProgress {
                pooled: self.primes.len(),
                target,
                elapsed: started.elapsed(),
            };
            tracing::info!(
                pooled = progress.pooled,
                target,
                elapsed_s = progress.elapsed.as_secs_f64(),
                "prime pool refill"
            );
            on_progress(progress);
        }
    }

    /// Serialises the pool (secret: seal it).
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        to_secret_bytes(self)
    }

    /// Parses a pool from [`PrimePool::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        from_secret_bytes(bytes)
    }
}

/// Logs the rounds of an aux-info run as they begin: the run takes tens of
/// seconds and an operator should see it move.
pub(crate) struct AuxInfoProgress {
    party: u16,
    round: u16,
    started: Instant,
}

impl AuxInfoProgress {
    pub(crate) fn new(party: u16) -> Self {
        Self {
            party,
            round: 0,
            started: Instant::now(),
        }
    }
}

impl cggmp21::progress::Tracer for AuxInfoProgress {
    fn trace_event(&mut self, event: cggmp21::progress::Event) {
        use cggmp21::progress::Event;
        match event {
            Event::RoundBegins { .. } => {
                self.round += 1;
                tracing::info!(
                    party = self.party,
                    round = self.round,
                    elapsed_s = self.started.elapsed().as_secs_f64(),
                    "aux info generation: round begins"
                );
            }
            Event::ProtocolEnds => tracing::info!(
                party = self.party,
                elapsed_s = self.started.elapsed().as_secs_f64(),
                "aux info generation: done"
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn the_yielding_source_waits_while_paused_and_then_gives_fresh_bytes() {
        let asked = AtomicU32::new(0);
        // Paused for the first three looks, then free.
        let paused = || asked.fetch_add(1, Ordering::SeqCst) < 3;
        let mut rng = YieldingRng { paused: &paused };
        let started = Instant::now();
        let mut first = [0u8; 32];
        rng.fill_bytes(&mut first);
        assert!(started.elapsed() >= Duration::from_millis(60), "it waited");
        assert_eq!(asked.load(Ordering::SeqCst), 4);
        let mut second = [0u8; 32];
        rng.fill_bytes(&mut second);
        assert_ne!(first, second);
        assert_ne!(first, [0; 32]);
    }
}
