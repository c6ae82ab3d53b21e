//! The calldata decoder (`evm_calls::movements`) checked against an
//! independent encoder: `evm_calls_eth_abi.py` encodes token calls with
//! eth_abi (selectors from the function signatures, arguments of random
//! size including 0, 2^64 and 2^256 - 1, `bytes` of every padding length,
//! batches up to the limit), works out from the arguments what each call
//! moves, and this test checks that the decoder reads back exactly that.

use custos_control_plane::engines::wallets::chain::U256;
use custos_control_plane::engines::wallets::evm_calls::{movements, Movement};
use serde_json::{json, Value};

/// The Python interpreter of `scripts/python-env` (which `scripts/test`
/// runs and names in `CUSTOS_TEST_PYTHON`), with eth_abi.
fn python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("CUSTOS_TEST_PYTHON") {
        return path.into();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new(root.join("scripts/python-env"))
        .output()
        .expect("scripts/python-env runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().into()
}

/// The cases eth_abi encoded with `seed`.
fn eth_abi_cases(seed: u32) -> Vec<Value> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/evm_calls_eth_abi.py");
    let output = std::process::Command::new(python())
        .arg(script)
        .arg(seed.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "eth_abi encoder failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A movement in the encoder's JSON shape.
fn as_json(movement: &Movement) -> Value {
    json!({
        "asset": movement.asset,
        "amount": movement.amount,
        "destination": movement.destination,
        "source": movement.source,
        "kind": movement.kind.as_str(),
        "standard": movement.standard.map(|standard| standard.as_str()),
        "tokenId": movement.token_id,
    })
}

fn hex_bytes(text: &str) -> Vec<u8> {
    hex::decode(text.strip_prefix("0x").unwrap()).unwrap()
}

#[test]
fn the_decoder_reads_back_exactly_what_eth_abi_encoded() {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for seed in [1, 2, 3] {
        for case in eth_abi_cases(seed) {
            let name = case["name"].as_str().unwrap();
            let to: [u8; 20] = hex_bytes(case["to"].as_str().unwrap()).try_into().unwrap();
            let value = U256::from_decimal(case["value"].as_str().unwrap()).unwrap();
            let data = hex_bytes(case["data"].as_str().unwrap());
            let decoded = movements(&to, &value, &data)
                .map(|moved| Value::Array(moved.iter().map(as_json).collect()));
            let expected = match &case["expected"] {
                Value::Null => None,
                expected => Some(expected.clone()),
            };
            assert_eq!(
                decoded, expected,
                "{name} (seed {seed}): calldata {}",
                case["data"]
            );
            *kinds.entry(name.to_string()).or_default() += 1;
        }
    }
    // Every kind of call was exercised (the script's list, and the plain
    // transfers).
    assert_eq!(kinds.len(), 14, "{kinds:?}");
}
