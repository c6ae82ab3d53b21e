//! `wire::decode_payload` for the message type of every protocol kind on
//! arbitrary bytes. The first input byte picks the kind, the rest is the
//! payload. Decoding must return (never panic), and a message it accepts
//! must encode to bytes that decode and encode again to the same bytes.
//!
//! The input itself need not be that encoding: postcard accepts over-long
//! varints, so one message has several accepted payloads.
#![no_main]

use custos_protocol::wire::{decode_payload, encode_payload};
use custos_protocol::{ecdsa, keygen, reshare, schnorr, Ed25519, ProtocolKind, Secp256k1};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn check<M: Serialize + DeserializeOwned>(payload: &[u8]) {
    let Ok(msg) = decode_payload::<M>(payload) else {
        return;
    };
    let encoded = encode_payload(&msg).expect("a decoded message encodes");
    let again = decode_payload::<M>(&encoded).expect("an encoded message decodes");
    let encoded_again = encode_payload(&again).expect("a decoded message encodes");
    assert_eq!(encoded, encoded_again, "re-encoding is not stable");
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, payload)) = input.split_first() else {
        return;
    };
    let kinds = ProtocolKind::ALL;
    // Exhaustive: a new kind does not compile until its message type is here.
    match kinds[usize::from(selector) % kinds.len()] {
        ProtocolKind::KeygenSecp256k1 => check::<keygen::KeygenMsg<Secp256k1>>(payload),
        ProtocolKind::KeygenEd25519 => check::<keygen::KeygenMsg<Ed25519>>(payload),
        ProtocolKind::AuxInfo => check::<ecdsa::AuxInfoMsg>(payload),
        ProtocolKind::SignEcdsa => check::<ecdsa::SignMsg>(payload),
        ProtocolKind::SignTaproot => check::<schnorr::SignMsg<Secp256k1>>(payload),
        ProtocolKind::SignEd25519 => check::<schnorr::SignMsg<Ed25519>>(payload),
        ProtocolKind::ReshareSecp256k1 => check::<reshare::ReshareMsg<Secp256k1>>(payload),
        ProtocolKind::ReshareEd25519 => check::<reshare::ReshareMsg<Ed25519>>(payload),
    }
});
