//! Generates the expensive test fixtures of `custos-protocol` with the
//! project's own code: Paillier primes (through [`PrimePool::refill`]) and
//! CGGMP21 aux info for the test committees (through [`ecdsa::aux_info`] run by
//! the [`driver`] over the in-memory network).
//!
//! ```text
//! cargo run --release -p custos-protocol --features sim \
//!     --example generate-fixtures -- protocol/testdata
//! ```
//!
//! Writes `primes.json` (three spare sets, for the test that runs aux-info
//! generation itself) and `aux-info-n{3,4,5}.json` (one entry per party of
//! the committee of test parties 1..=n, see [`sim::test_party`]). Takes a few
//! minutes on two cores; progress goes to stderr.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use custos_protocol::ecdsa::{self, AuxInfoRun};
use custos_protocol::primes::{PrimePool, Primes};
use custos_protocol::sim::{self, Faults};
use custos_protocol::{driver, Committee, RequestId};

const COMMITTEE_SIZES: [u16; 3] = [3, 4, 5];
const SPARE_PRIMES: usize = 3;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let out_dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "protocol/testdata".into()),
    );
    std::fs::create_dir_all(&out_dir)?;

    let needed = COMMITTEE_SIZES
        .iter()
        .map(|&n| usize::from(n))
        .sum::<usize>()
        + SPARE_PRIMES;
    let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
    eprintln!("generating {needed} sets of Paillier primes on {parallelism} threads");
    let mut pool = PrimePool::new();
    pool.refill(needed, parallelism, |progress| {
        eprintln!(
            "  primes {}/{} after {:.0} s",
            progress.pooled,
            progress.target,
            progress.elapsed.as_secs_f64()
        );
    })
    .await?;

    let spare: Vec<Primes> = (0..SPARE_PRIMES).filter_map(|_| pool.take()).collect();
    std::fs::write(out_dir.join("primes.json"), serde_json::to_vec(&spare)?)?;

    for n in COMMITTEE_SIZES {
        let started = Instant::now();
        eprintln!("aux info for a committee of {n}");
        let committee = Committee::new((0..n).map(sim::test_party))?;
        let primes: Vec<Primes> = (0..n).filter_map(|_| pool.take()).collect();
        let mut primes = primes.into_iter();
        let (outputs, _) = sim::run_parties(n, Faults::none(), 0, |index, endpoint| {
            let run = AuxInfoRun {
                request: RequestId([0xA0 + n as u8; 16]),
                committee: committee.clone(),
                me: sim::test_party(index),
                attempt: 0,
            };
            let primes = primes.next();
            async move {
                let primes = primes.context("not enough primes")?;
                let session = run.session(Duration::from_secs(3600))?;
                let mut rng = rand_core::OsRng;
                let (result, _report) =
                    driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                        ecdsa::aux_info(&run, primes, party, &mut rng)
                    })
                    .await;
                anyhow::Ok(result?)
            }
        })
        .await;
        let aux = outputs.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        std::fs::write(
            out_dir.join(format!("aux-info-n{n}.json")),
            serde_json::to_vec(&aux)?,
        )?;
        eprintln!("  done in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}
