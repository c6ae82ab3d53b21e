//! Generates the public key data of two test wallets with the project's own
//! DKG (`keygen::keygen` run by the [`driver`] over the in-memory [`sim`]
//! network): a 2-of-3 secp256k1 key (cggmp21 and frost-taproot wallets) and
//! a 2-of-3 edwards25519 key (frost-ed25519 wallets). The control plane's
//! tests write wallet rows with this public data, so that wallet views and
//! addresses work without signer nodes; nothing secret is written.
//!
//! ```text
//! cargo run --release -p custos-protocol --features sim \
//!     --example generate-public-key-info -- control-plane/tests/fixtures
//! ```
//!
//! Writes `public-key-info.json`: `{"secp256k1": hex, "ed25519": hex}` of
//! `PublicKeyInfo::to_bytes`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use custos_protocol::keygen::{self, KeygenRun};
use custos_protocol::share::{KeyCurve, KeyShare};
use custos_protocol::sim::{self, Faults};
use custos_protocol::{driver, Committee, Ed25519, RequestId, Secp256k1, WalletId};

/// One 2-of-3 DKG among the test parties 0..3; answers the public data.
async fn public_key_info<E: KeyCurve>() -> anyhow::Result<String>
where
    keygen::KeygenMsg<E>: Send,
{
    let committee = Committee::new((0..3).map(sim::test_party)).context("committee")?;
    let (outputs, _) = sim::run_parties(3, Faults::none(), 7, |index, endpoint| {
        let run = KeygenRun {
            wallet: WalletId([0x57; 16]),
            request: RequestId([1; 16]),
            committee: committee.clone(),
            threshold: 2,
            me: committee.member(index).expect("a member"),
            attempt: 0,
        };
        async move {
            let session = run.session::<E>(Duration::from_secs(60))?;
            let mut rng = rand_core::OsRng;
            driver::run(session, endpoint.incoming, endpoint.outgoing, |party| {
                keygen::keygen::<E, _, _>(&run, party, &mut rng)
            })
            .await
            .0
        }
    })
    .await;
    let share: KeyShare<E> = outputs
        .into_iter()
        .next()
        .context("no party")?
        .context("keygen")?;
    Ok(hex::encode(share.public_info().to_bytes()?))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "control-plane/tests/fixtures".into()),
    );
    std::fs::create_dir_all(&out_dir)?;
    let fixture = serde_json::json!({
        "secp256k1": public_key_info::<Secp256k1>().await?,
        "ed25519": public_key_info::<Ed25519>().await?,
    });
    std::fs::write(
        out_dir.join("public-key-info.json"),
        serde_json::to_vec_pretty(&fixture)?,
    )?;
    eprintln!("wrote {}", out_dir.join("public-key-info.json").display());
    Ok(())
}
