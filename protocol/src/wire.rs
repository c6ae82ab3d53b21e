//! The versioned wire envelope that carries every protocol message.
//!
//! Layout (all integers big-endian), 49 bytes of header then the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `b"CSTS"` |
//! | 4 | 1 | format version ([`WIRE_VERSION`]) |
//! | 5 | 1 | protocol kind ([`ProtocolKind::code`]) |
//! | 6 | 32 | session id (the run's [`ExecutionId`]) |
//! | 38 | 2 | round, as the protocol numbers it |
//! | 40 | 2 | sender's session index |
//! | 42 | 1 | recipient tag: 0 = broadcast, 1 = one party |
//! | 43 | 2 | recipient's session index (0 when broadcast) |
//! | 45 | 4 | payload length |
//! | 49 | n | payload: the protocol message, postcard-encoded |
//!
//! [`Envelope::decode`] never panics and never allocates more than the
//! input: it checks the magic, version, kind, tag, the per-kind size limit
//! and that the length field matches the input exactly. Golden bytes of every
//! message kind are pinned in `tests/wire.rs`, and `fuzz/` fuzzes the decoder.

use serde::{de::DeserializeOwned, Serialize};

use crate::ids::{ExecutionId, ProtocolKind};

/// First bytes of every frame: rejects most garbage before any parsing.
pub const MAGIC: [u8; 4] = *b"CSTS";
/// The envelope format this build writes and reads.
pub const WIRE_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 49;

/// The largest payload accepted for each protocol kind: about twice the
/// largest message measured in the test suite (`tests/wire.rs` runs real
/// protocols and checks every message against these limits):
///
/// | kind | largest measured | limit |
/// |---|---|---|
/// | keygen | 638 B (5-of-7; grows slowly with n) | 16 KiB (covers n = 64) |
/// | aux info | 208 KB (n = 3) | 512 KiB |
/// | ECDSA signing | 31 KB (per-recipient range proofs) | 64 KiB |
/// | FROST signing | 153 B | 1 KiB |
/// | resharing | 458 B (5 dealers to 8; grows slowly with n) | 16 KiB (covers n = 64) |
pub fn max_payload_len(kind: ProtocolKind) -> usize {
    match kind {
        ProtocolKind::KeygenSecp256k1 | ProtocolKind::KeygenEd25519 => 16 * 1024,
        ProtocolKind::AuxInfo => 512 * 1024,
        ProtocolKind::SignEcdsa => 64 * 1024,
        ProtocolKind::SignTaproot | ProtocolKind::SignEd25519 => 1024,
        ProtocolKind::ReshareSecp256k1 | ProtocolKind::ReshareEd25519 => 16 * 1024,
    }
}

/// The largest frame of any kind; transports cap their reads at this.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + 512 * 1024;

/// Who a message is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Recipient {
    /// Every other participant (reliable broadcast is checked by the protocol).
    Broadcast,
    /// One participant, by session index.
    Party(u16),
}

/// One protocol message with its routing header.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Which protocol the payload belongs to.
    pub kind: ProtocolKind,
    /// The run it belongs to.
    pub session: ExecutionId,
    /// The protocol round it was sent in.
    pub round: u16,
    /// The sender's session index.
    pub sender: u16,
    /// Broadcast or one recipient.
    pub recipient: Recipient,
    /// The encoded protocol message.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    /// Payloads may carry encrypted shares; print only their length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("kind", &self.kind)
            .field("session", &self.session)
            .field("round", &self.round)
            .field("sender", &self.sender)
            .field("recipient", &self.recipient)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why a frame was refused. Each variant is a stable reason label for the
/// node's `rejected messages` metric ([`WireError::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a header.
    #[error("frame shorter than the envelope header")]
    Truncated,
    /// The magic bytes are wrong: not a Custos frame.
    #[error("frame does not start with the Custos magic")]
    BadMagic,
    /// A format version this build does not read.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// A protocol kind code this build does not know.
    #[error("unknown protocol kind code {0}")]
    UnknownKind(u8),
    /// The recipient tag is neither broadcast nor one party.
    #[error("unknown recipient tag {0}")]
    BadRecipientTag(u8),
    /// The payload exceeds the limit of its protocol kind.
    #[error("payload of {len} bytes exceeds the {limit}-byte limit of {kind:?}")]
    Oversized {
        /// Protocol kind of the frame.
        kind: ProtocolKind,
        /// Announced or actual payload length.
        len: usize,
        /// The limit for that kind.
        limit: usize,
    },
    /// The length field does not match the bytes that follow.
    #[error("payload length field does not match the frame")]
    LengthMismatch,
    /// The payload is not a valid message of the protocol.
    #[error("payload does not decode as a protocol message")]
    MalformedPayload,
}

impl WireError {
    /// A stable, low-cardinality label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::BadMagic => "bad_magic",
            WireError::UnsupportedVersion(_) => "unsupported_version",
            WireError::UnknownKind(_) => "unknown_kind",
            WireError::BadRecipientTag(_) => "bad_recipient",
            WireError::Oversized { .. } => "oversized",
            WireError::LengthMismatch => "length_mismatch",
            WireError::MalformedPayload => "malformed_payload",
        }
    }
}

impl Envelope {
    /// Serialises the envelope. Refuses a payload over its kind's limit, so a
    /// node never sends what its peers would drop.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let limit = max_payload_len(self.kind);
        if self.payload.len() > limit {
            return Err(WireError::Oversized {
                kind: self.kind,
                len: self.payload.len(),
                limit,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(WIRE_VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.session.0);
        out.extend_from_slice(&self.round.to_be_bytes());
        out.extend_from_slice(&self.sender.to_be_bytes());
        match self.recipient {
            Recipient::Broadcast => {
                out.push(0);
                out.extend_from_slice(&0u16.to_be_bytes());
            }
            Recipient::Party(index) => {
                out.push(1);
                out.extend_from_slice(&index.to_be_bytes());
            }
        }
        // Bounded by the per-kind limit, far below u32::MAX.
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Parses a frame. Never panics; see the module documentation.
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        let mut reader = Reader(frame);
        let header = reader.take(HEADER_LEN).ok_or(WireError::Truncated)?;
        let mut header = Reader(header);
        if header.take(4) != Some(&MAGIC[..]) {
            return Err(WireError::BadMagic);
        }
        let version = header.u8()?;
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let kind_code = header.u8()?;
        let kind = ProtocolKind::from_code(kind_code).ok_or(WireError::UnknownKind(kind_code))?;
        let session = header
            .take(32)
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .map(ExecutionId)
            .ok_or(WireError::Truncated)?;
        let round = header.u16()?;
        let sender = header.u16()?;
        let recipient = match (header.u8()?, header.u16()?) {
            (0, 0) => Recipient::Broadcast,
            (1, index) => Recipient::Party(index),
            (0, _) => return Err(WireError::BadRecipientTag(0)),
            (tag, _) => return Err(WireError::BadRecipientTag(tag)),
        };
        let len = header.u32()? as usize;
        let limit = max_payload_len(kind);
        if len > limit {
            return Err(WireError::Oversized { kind, len, limit });
        }
        if reader.0.len() != len {
            return Err(WireError::LengthMismatch);
        }
        Ok(Envelope {
            kind,
            session,
            round,
            sender,
            recipient,
            payload: reader.0.to_vec(),
        })
    }
}

/// A cursor over a byte slice whose reads return `None`/`Truncated` instead
/// of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)
            .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
            .ok_or(WireError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
}

/// Encodes a protocol message as an envelope payload.
pub fn encode_payload<M: Serialize>(msg: &M) -> Result<Vec<u8>, WireError> {
    postcard::to_stdvec(msg).map_err(|_| WireError::MalformedPayload)
}

/// Decodes an envelope payload as a protocol message. A payload has exactly
/// one encoding: trailing bytes and non-canonical encodings (postcard
/// accepts over-long varints) are refused, so the driver's duplicate check,
/// which compares payload bytes, sees a re-sent message as a duplicate.
pub fn decode_payload<M: Serialize + DeserializeOwned>(payload: &[u8]) -> Result<M, WireError> {
    let msg = match postcard::take_from_bytes::<M>(payload) {
        Ok((msg, [])) => msg,
        _ => return Err(WireError::MalformedPayload),
    };
    match encode_payload(&msg) {
        Ok(canonical) if canonical == payload => Ok(msg),
        _ => Err(WireError::MalformedPayload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            kind: ProtocolKind::SignTaproot,
            session: ExecutionId([7; 32]),
            round: 2,
            sender: 1,
            recipient: Recipient::Party(3),
            payload: vec![1, 2, 3],
        }
    }

    #[test]
    fn envelope_round_trips() {
        let envelope = sample();
        let bytes = envelope.encode().unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 3);
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            assert!(
                Envelope::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Envelope::decode(&longer), Err(WireError::LengthMismatch));
    }

    #[test]
    fn oversized_payload_is_refused_both_ways() {
        let mut envelope = sample();
        envelope.payload = vec![0; max_payload_len(ProtocolKind::SignTaproot) + 1];
        assert!(matches!(
            envelope.encode(),
            Err(WireError::Oversized { .. })
        ));
        let mut bytes = sample().encode().unwrap();
        bytes[45..49].copy_from_slice(&(u32::MAX).to_be_bytes());
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(WireError::Oversized { .. })
        ));
    }

    #[test]
    fn header_fields_are_checked() {
        let good = sample().encode().unwrap();
        let cases: [(usize, u8, WireError); 4] = [
            (0, b'X', WireError::BadMagic),
            (4, 9, WireError::UnsupportedVersion(9)),
            (5, 0, WireError::UnknownKind(0)),
            (42, 7, WireError::BadRecipientTag(7)),
        ];
        for (offset, value, expected) in cases {
            let mut bytes = good.clone();
            bytes[offset] = value;
            assert_eq!(Envelope::decode(&bytes), Err(expected));
        }
    }

    #[test]
    fn payload_with_trailing_bytes_is_refused() {
        let mut payload = encode_payload(&(1u32, 2u64)).unwrap();
        assert_eq!(decode_payload::<(u32, u64)>(&payload), Ok((1, 2)));
        payload.push(0);
        assert_eq!(
            decode_payload::<(u32, u64)>(&payload),
            Err(WireError::MalformedPayload)
        );
    }

    #[test]
    fn non_canonical_payload_is_refused() {
        // 1 as a two-byte varint (0x81 0x00) instead of 0x01.
        assert_eq!(decode_payload::<u32>(&[0x01]), Ok(1));
        assert_eq!(
            decode_payload::<u32>(&[0x81, 0x00]),
            Err(WireError::MalformedPayload)
        );
    }
}
