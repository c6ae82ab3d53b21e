//! `Envelope::decode` on arbitrary bytes: it must return (never panic, never
//! allocate beyond the input), and any frame it accepts must be the exact
//! encoding of the envelope it returns.
#![no_main]

use custos_protocol::wire::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Ok(envelope) = Envelope::decode(frame) {
        let encoded = envelope
            .encode()
            .expect("a decoded envelope is within its size limit");
        assert_eq!(encoded, frame, "accepted a frame that is not canonical");
    }
});
