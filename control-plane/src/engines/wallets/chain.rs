//! Chain encodings the control plane needs: EVM addresses (EIP-55), EIP-191
//! message digests, EIP-1559 transactions (RLP, signing digest, signed
//! envelope), Bitcoin P2TR addresses (BIP-350 bech32m) and Solana addresses.
//!
//! The module is pure: no I/O, no clock, no randomness. Everything that comes
//! from the HTTP API is validated here and rejected with a [`ChainError`] that
//! carries a stable snake_case [`ChainError::code`] and, for transaction
//! fields, a message naming the offending field (the camelCase JSON name).

use k256::elliptic_curve::sec1::ToEncodedPoint;
use sha3::{Digest, Keccak256};

/// Largest transaction `data` accepted, in decoded bytes (128 KiB).
pub const MAX_TRANSACTION_DATA_BYTES: usize = 128 * 1024;

/// Smallest gas limit of a transaction (the intrinsic gas of a plain transfer).
pub const MIN_GAS_LIMIT: u64 = 21_000;

/// Longest decimal string [`U256::from_decimal`] accepts (2^256 - 1 has 78
/// digits).
const MAX_DECIMAL_DIGITS: usize = 78;

/// Longest piece of caller input echoed back in an error message.
const MAX_ECHO_CHARS: usize = 64;

/// Errors of chain encodings and transaction validation.
///
/// Each variant has a stable snake_case [`code`](ChainError::code) for the
/// HTTP layer; the `Display` text is for humans and names the offending field
/// where there is one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// An EVM address is malformed or fails its EIP-55 checksum. The text
    /// says why (and, inside a transaction, names the field).
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// A quantity is not a valid decimal string or is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidQuantity {
        /// The field (camelCase JSON name), or `quantity` outside a transaction.
        field: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// A public key is not a valid secp256k1 SEC1 encoding (33-byte
    /// compressed or 65-byte uncompressed), or an x-only key is not the
    /// x-coordinate of a curve point.
    #[error("invalid public key")]
    InvalidPublicKey,
    /// Hex text is malformed (missing `0x`, odd length, non-hex digit). The
    /// text says why and names the field.
    #[error("invalid hex: {0}")]
    InvalidHex(String),
    /// Transaction `data` is larger than [`MAX_TRANSACTION_DATA_BYTES`].
    #[error("invalid data: longer than {max_bytes} bytes")]
    DataTooLarge {
        /// The limit in bytes.
        max_bytes: usize,
    },
    /// The chain is unknown, or the operation does not apply to it.
    #[error("unsupported chain: {0}")]
    UnsupportedChain(String),
}

impl ChainError {
    /// Stable snake_case code for the HTTP layer.
    pub fn code(&self) -> &'static str {
        match self {
            ChainError::InvalidAddress(_) => "invalid_address",
            ChainError::InvalidQuantity { .. } => "invalid_quantity",
            ChainError::InvalidPublicKey => "invalid_public_key",
            ChainError::InvalidHex(_) => "invalid_hex",
            ChainError::DataTooLarge { .. } => "data_too_large",
            ChainError::UnsupportedChain(_) => "unsupported_chain",
        }
    }
}

/// Caller input shortened for an error message.
fn echo(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_ECHO_CHARS).collect();
    if text.chars().nth(MAX_ECHO_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// A chain the control plane holds keys for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// Ethereum mainnet and EVM test networks (the chain id comes with the
    /// transaction).
    Ethereum,
    /// Polygon PoS (EVM).
    Polygon,
    /// Bitcoin mainnet.
    Bitcoin,
    /// Bitcoin testnet (and signet): addresses use the `tb` prefix.
    BitcoinTestnet,
    /// Solana.
    Solana,
}

impl Chain {
    /// Every chain, in a fixed order.
    pub const ALL: [Chain; 5] = [
        Chain::Ethereum,
        Chain::Polygon,
        Chain::Bitcoin,
        Chain::BitcoinTestnet,
        Chain::Solana,
    ];

    /// Parses the API name of a chain: `ethereum`, `polygon`, `bitcoin`,
    /// `bitcoin-testnet` or `solana` (exact, lowercase).
    pub fn parse(name: &str) -> Result<Chain, ChainError> {
        Chain::ALL
            .into_iter()
            .find(|chain| chain.name() == name)
            .ok_or_else(|| ChainError::UnsupportedChain(echo(name)))
    }

    /// The API name of the chain (the inverse of [`Chain::parse`]).
    pub fn name(self) -> &'static str {
        match self {
            Chain::Ethereum => "ethereum",
            Chain::Polygon => "polygon",
            Chain::Bitcoin => "bitcoin",
            Chain::BitcoinTestnet => "bitcoin-testnet",
            Chain::Solana => "solana",
        }
    }

    /// Whether the chain is EVM-compatible (secp256k1 ECDSA keys, EIP-55
    /// addresses, EIP-1559 transactions).
    pub fn is_evm(self) -> bool {
        matches!(self, Chain::Ethereum | Chain::Polygon)
    }
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// 256-bit unsigned quantity as 32 big-endian bytes.
///
/// Parsed from and formatted as a decimal string. The derived `Ord` is
/// numeric because the bytes are big-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct U256(pub [u8; 32]);

impl U256 {
    /// Zero.
    pub const ZERO: U256 = U256([0; 32]);

    /// 2^256 - 1.
    pub const MAX: U256 = U256([0xff; 32]);

    /// Parses an unsigned decimal string: ASCII digits only (no sign, `+`,
    /// spaces, exponent or `0x`), leading zeros allowed, 1 to 78 digits, at
    /// most 2^256 - 1.
    pub fn from_decimal(s: &str) -> Result<U256, ChainError> {
        Self::parse_field("quantity", s)
    }

    /// [`U256::from_decimal`] with the field name to report.
    fn parse_field(field: &'static str, s: &str) -> Result<U256, ChainError> {
        let refuse = |reason: &str| ChainError::InvalidQuantity {
            field,
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(refuse("empty; expected a decimal string"));
        }
        if s.len() > MAX_DECIMAL_DIGITS {
            return Err(refuse("more than 78 digits"));
        }
        let mut out = [0u8; 32];
        for ch in s.bytes() {
            if !ch.is_ascii_digit() {
                return Err(refuse("not an unsigned decimal integer (digits 0-9 only)"));
            }
            // out = out * 10 + digit, from the least significant byte up.
            let mut carry = u16::from(ch - b'0');
            for byte in out.iter_mut().rev() {
                let v = u16::from(*byte) * 10 + carry;
                *byte = (v & 0xff) as u8;
                carry = v >> 8;
            }
            if carry != 0 {
                return Err(refuse("larger than 2^256 - 1"));
            }
        }
        Ok(U256(out))
    }

    /// The decimal representation, without leading zeros (`"0"` for zero).
    pub fn to_decimal(&self) -> String {
        let mut value = self.0;
        let mut digits = Vec::with_capacity(MAX_DECIMAL_DIGITS);
        loop {
            // value = value / 10, remainder into `rem`, from the most
            // significant byte down.
            let mut rem: u16 = 0;
            for byte in value.iter_mut() {
                let cur = (rem << 8) | u16::from(*byte);
                *byte = (cur / 10) as u8;
                rem = cur % 10;
            }
            digits.push(b'0' + rem as u8);
            if value.iter().all(|b| *b == 0) {
                break;
            }
        }
        digits.iter().rev().map(|d| char::from(*d)).collect()
    }

    /// The quantity `v`.
    pub fn from_u64(v: u64) -> U256 {
        let mut out = [0u8; 32];
        for (dst, src) in out.iter_mut().rev().zip(v.to_be_bytes().iter().rev()) {
            *dst = *src;
        }
        U256(out)
    }

    /// The value as a `u64`, if it fits.
    pub fn to_u64(&self) -> Option<u64> {
        if self.0.iter().take(24).any(|b| *b != 0) {
            return None;
        }
        let mut low = [0u8; 8];
        for (dst, src) in low.iter_mut().zip(self.0.iter().skip(24)) {
            *dst = *src;
        }
        Some(u64::from_be_bytes(low))
    }

    /// Whether the quantity is zero.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    /// The minimal big-endian bytes (leading zeros stripped; empty for zero),
    /// as RLP encodes integers.
    pub fn to_minimal_be(&self) -> &[u8] {
        strip_leading_zeros(&self.0)
    }
}

impl std::fmt::Display for U256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_decimal())
    }
}

/// Keccak-256 (the Ethereum hash, not NIST SHA3-256).
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}

/// The 20-byte EVM address of a secp256k1 public key given as a 33-byte
/// compressed or 65-byte uncompressed SEC1 encoding: the last 20 bytes of
/// keccak256 of the uncompressed point without its `0x04` tag.
pub fn evm_address_bytes(public_key_sec1: &[u8]) -> Result<[u8; 20], ChainError> {
    let well_formed = match public_key_sec1 {
        [0x02 | 0x03, rest @ ..] => rest.len() == 32,
        [0x04, rest @ ..] => rest.len() == 64,
        _ => false,
    };
    if !well_formed {
        return Err(ChainError::InvalidPublicKey);
    }
    let key = k256::PublicKey::from_sec1_bytes(public_key_sec1)
        .map_err(|_| ChainError::InvalidPublicKey)?;
    let point = key.to_encoded_point(false);
    let xy = point
        .as_bytes()
        .get(1..)
        .ok_or(ChainError::InvalidPublicKey)?;
    let hash = keccak256(xy);
    let mut address = [0u8; 20];
    for (dst, src) in address.iter_mut().zip(hash.iter().skip(12)) {
        *dst = *src;
    }
    Ok(address)
}

/// The EIP-55 checksummed EVM address (`0x` + 40 hex digits) of a secp256k1
/// public key given as 33-byte compressed or 65-byte uncompressed SEC1.
pub fn evm_address(public_key_sec1: &[u8]) -> Result<String, ChainError> {
    evm_address_bytes(public_key_sec1).map(|address| to_checksum_address(&address))
}

/// EIP-55 formatting of a 20-byte address: `0x` + 40 hex digits, a letter
/// upper-cased where the matching nibble of keccak256(lowercase hex) is >= 8.
pub fn to_checksum_address(address: &[u8; 20]) -> String {
    let lower = hex::encode(address);
    let hash = keccak256(lower.as_bytes());
    let nibbles = hash.iter().flat_map(|b| [b >> 4, b & 0x0f]);
    let mut out = String::with_capacity(42);
    out.push_str("0x");
    for (ch, nibble) in lower.chars().zip(nibbles) {
        if nibble >= 8 {
            out.push(ch.to_ascii_uppercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Parses an EVM address: `0x` + 40 hex digits. All-lowercase and
/// all-uppercase digits are accepted as they are; mixed case must be a valid
/// EIP-55 checksum.
pub fn parse_evm_address(text: &str) -> Result<[u8; 20], ChainError> {
    let digits = text.strip_prefix("0x").ok_or_else(|| {
        ChainError::InvalidAddress("expected 0x followed by 40 hex digits".into())
    })?;
    if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ChainError::InvalidAddress(
            "expected 0x followed by 40 hex digits".into(),
        ));
    }
    let mut address = [0u8; 20];
    hex::decode_to_slice(digits, &mut address)
        .map_err(|e| ChainError::InvalidAddress(e.to_string()))?;
    let has_lower = digits.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = digits.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper && to_checksum_address(&address).get(2..) != Some(digits) {
        return Err(ChainError::InvalidAddress(
            "mixed-case address fails its EIP-55 checksum".into(),
        ));
    }
    Ok(address)
}

/// The EIP-191 (version 0x45, `personal_sign`) digest of a message:
/// keccak256(`"\x19Ethereum Signed Message:\n"` + decimal byte length +
/// message).
pub fn eip191_digest(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(b"\x19Ethereum Signed Message:\n");
    hasher.update(message.len().to_string().as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// The JSON body of an EVM transaction as the HTTP API receives it:
/// camelCase keys, quantities as decimal strings, `data` as optional
/// `0x`-hex.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = EvmTransaction)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvmTransactionInput {
    /// EIP-155 chain id (decimal, >= 1, fits u64).
    pub chain_id: String,
    /// Sender nonce (decimal, fits u64).
    pub nonce: String,
    /// Recipient address (`0x` + 40 hex digits; EIP-55 if mixed case).
    pub to: String,
    /// Value in wei (decimal, up to 2^256 - 1).
    pub value: String,
    /// Call data as `0x`-hex (even length, at most 128 KiB decoded); absent
    /// or null means empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Gas limit (decimal, >= 21000, fits u64).
    pub gas_limit: String,
    /// Maximum total fee per gas in wei (decimal).
    pub max_fee_per_gas: String,
    /// Maximum priority fee per gas in wei (decimal, <= maxFeePerGas).
    pub max_priority_fee_per_gas: String,
}

/// A validated EIP-1559 (type 2) transaction with an empty access list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eip1559Transaction {
    /// EIP-155 chain id (>= 1, fits u64).
    pub chain_id: U256,
    /// Sender nonce (fits u64).
    pub nonce: U256,
    /// Maximum priority fee per gas in wei.
    pub max_priority_fee_per_gas: U256,
    /// Maximum total fee per gas in wei.
    pub max_fee_per_gas: U256,
    /// Gas limit (>= 21000, fits u64).
    pub gas_limit: U256,
    /// Recipient address.
    pub to: [u8; 20],
    /// Value in wei.
    pub value: U256,
    /// Call data.
    pub data: Vec<u8>,
}

/// The EIP-2718 type byte of EIP-1559 transactions.
const EIP1559_TX_TYPE: u8 = 0x02;

impl Eip1559Transaction {
    /// Validates the API input and names the offending field on error:
    ///
    /// * every quantity is a decimal string (see [`U256::from_decimal`]);
    /// * `chainId` is at least 1 and fits in a u64;
    /// * `nonce` fits in a u64;
    /// * `gasLimit` is at least [`MIN_GAS_LIMIT`] and fits in a u64;
    /// * `maxPriorityFeePerGas` does not exceed `maxFeePerGas`;
    /// * `to` is a valid address (see [`parse_evm_address`]);
    /// * `data`, if present, is `0x`-hex of even length, at most
    ///   [`MAX_TRANSACTION_DATA_BYTES`] decoded.
    pub fn from_input(input: &EvmTransactionInput) -> Result<Self, ChainError> {
        let chain_id = U256::parse_field("chainId", &input.chain_id)?;
        if chain_id.is_zero() {
            return Err(ChainError::InvalidQuantity {
                field: "chainId",
                reason: "must be at least 1".into(),
            });
        }
        require_u64("chainId", &chain_id)?;

        let nonce = U256::parse_field("nonce", &input.nonce)?;
        require_u64("nonce", &nonce)?;

        let to = parse_evm_address(&input.to).map_err(|e| match e {
            ChainError::InvalidAddress(reason) => {
                ChainError::InvalidAddress(format!("to: {reason}"))
            }
            other => other,
        })?;

        let value = U256::parse_field("value", &input.value)?;

        let data = match input.data.as_deref() {
            None => Vec::new(),
            Some(text) => parse_data(text)?,
        };

        let gas_limit = U256::parse_field("gasLimit", &input.gas_limit)?;
        match gas_limit.to_u64() {
            None => {
                return Err(ChainError::InvalidQuantity {
                    field: "gasLimit",
                    reason: "does not fit in 64 bits".into(),
                })
            }
            Some(gas) if gas < MIN_GAS_LIMIT => {
                return Err(ChainError::InvalidQuantity {
                    field: "gasLimit",
                    reason: format!("must be at least {MIN_GAS_LIMIT}"),
                })
            }
            Some(_) => {}
        }

        let max_fee_per_gas = U256::parse_field("maxFeePerGas", &input.max_fee_per_gas)?;
        let max_priority_fee_per_gas =
            U256::parse_field("maxPriorityFeePerGas", &input.max_priority_fee_per_gas)?;
        if max_priority_fee_per_gas > max_fee_per_gas {
            return Err(ChainError::InvalidQuantity {
                field: "maxPriorityFeePerGas",
                reason: "must not exceed maxFeePerGas".into(),
            });
        }

        Ok(Eip1559Transaction {
            chain_id,
            nonce,
            max_priority_fee_per_gas,
            max_fee_per_gas,
            gas_limit,
            to,
            value,
            data,
        })
    }

    /// The RLP items shared by the unsigned and signed forms, in order:
    /// chainId, nonce, maxPriorityFeePerGas, maxFeePerGas, gasLimit, to,
    /// value, data, accessList (empty).
    fn encode_fields(&self, out: &mut Vec<u8>) {
        rlp_uint(out, &self.chain_id.0);
        rlp_uint(out, &self.nonce.0);
        rlp_uint(out, &self.max_priority_fee_per_gas.0);
        rlp_uint(out, &self.max_fee_per_gas.0);
        rlp_uint(out, &self.gas_limit.0);
        rlp_bytes(out, &self.to);
        rlp_uint(out, &self.value.0);
        rlp_bytes(out, &self.data);
        rlp_list(out, &[]);
    }

    /// The unsigned payload `0x02 || rlp([chainId, nonce,
    /// maxPriorityFeePerGas, maxFeePerGas, gasLimit, to, value, data,
    /// accessList=[]])`.
    pub fn unsigned_payload(&self) -> Vec<u8> {
        let mut fields = Vec::with_capacity(self.data.len() + 160);
        self.encode_fields(&mut fields);
        let mut out = Vec::with_capacity(fields.len() + 10);
        out.push(EIP1559_TX_TYPE);
        rlp_list(&mut out, &fields);
        out
    }

    /// The digest to sign: keccak256 of [`Eip1559Transaction::unsigned_payload`].
    pub fn signing_digest(&self) -> [u8; 32] {
        keccak256(&self.unsigned_payload())
    }

    /// The signed envelope `0x02 || rlp([chainId, nonce,
    /// maxPriorityFeePerGas, maxFeePerGas, gasLimit, to, value, data,
    /// accessList=[], yParity, r, s])`, with `r` and `s` as RLP integers
    /// (leading zeros stripped).
    ///
    /// `y_parity` must be 0 or 1 (the parity of the y-coordinate of the
    /// signature's R point); it is encoded as given. The caller is expected to
    /// pass a low-s signature (EIP-2), as k256 and CGGMP21 produce.
    pub fn signed_envelope(&self, r: &[u8; 32], s: &[u8; 32], y_parity: u8) -> Vec<u8> {
        let mut fields = Vec::with_capacity(self.data.len() + 230);
        self.encode_fields(&mut fields);
        rlp_uint(&mut fields, &[y_parity]);
        rlp_uint(&mut fields, r);
        rlp_uint(&mut fields, s);
        let mut out = Vec::with_capacity(fields.len() + 10);
        out.push(EIP1559_TX_TYPE);
        rlp_list(&mut out, &fields);
        out
    }
}

/// Refuses a quantity that does not fit in 64 bits.
fn require_u64(field: &'static str, value: &U256) -> Result<(), ChainError> {
    match value.to_u64() {
        Some(_) => Ok(()),
        None => Err(ChainError::InvalidQuantity {
            field,
            reason: "does not fit in 64 bits".into(),
        }),
    }
}

/// Decodes the `data` field: `0x` + an even number of hex digits, at most
/// [`MAX_TRANSACTION_DATA_BYTES`] decoded.
fn parse_data(text: &str) -> Result<Vec<u8>, ChainError> {
    let digits = text
        .strip_prefix("0x")
        .ok_or_else(|| ChainError::InvalidHex("data: expected 0x-prefixed hex".into()))?;
    if digits.len() > MAX_TRANSACTION_DATA_BYTES * 2 {
        return Err(ChainError::DataTooLarge {
            max_bytes: MAX_TRANSACTION_DATA_BYTES,
        });
    }
    hex::decode(digits).map_err(|e| ChainError::InvalidHex(format!("data: {e}")))
}

/// The transaction hash: keccak256 of the signed envelope bytes.
pub fn transaction_hash(signed_envelope: &[u8]) -> [u8; 32] {
    keccak256(signed_envelope)
}

/// The Bitcoin P2TR (segwit v1) address of a 32-byte x-only output key
/// (already tweaked, BIP-341): bech32m with hrp `bc` for
/// [`Chain::Bitcoin`] or `tb` for [`Chain::BitcoinTestnet`]. Other chains
/// give [`ChainError::UnsupportedChain`]; a key that is not the x-coordinate
/// of a curve point (whose output could never be spent) gives
/// [`ChainError::InvalidPublicKey`].
pub fn p2tr_address(output_key: &[u8; 32], chain: Chain) -> Result<String, ChainError> {
    let hrp = match chain {
        Chain::Bitcoin => bech32::hrp::BC,
        Chain::BitcoinTestnet => bech32::hrp::TB,
        other => return Err(ChainError::UnsupportedChain(other.name().into())),
    };
    k256::schnorr::VerifyingKey::from_bytes(output_key)
        .map_err(|_| ChainError::InvalidPublicKey)?;
    bech32::segwit::encode_v1(hrp, output_key).map_err(|_| ChainError::InvalidPublicKey)
}

/// The Solana address of a 32-byte Ed25519 public key: its base58 encoding.
pub fn solana_address(public_key: &[u8; 32]) -> String {
    bs58::encode(public_key).into_string()
}

// ---------------------------------------------------------------------------
// RLP encoding (the subset transactions need).
// ---------------------------------------------------------------------------

/// `bytes` without its leading zero bytes (empty if all zero).
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or(&[])
}

/// Appends an RLP length prefix: `offset + len` for lengths up to 55, else
/// `offset + 55 + len_of_len` followed by the big-endian length.
fn rlp_header(out: &mut Vec<u8>, offset: u8, len: usize) {
    if len <= 55 {
        out.push(offset + len as u8);
    } else {
        let len_bytes = (len as u64).to_be_bytes();
        let len_be = strip_leading_zeros(&len_bytes);
        out.push(offset + 55 + len_be.len() as u8);
        out.extend_from_slice(len_be);
    }
}

/// Appends the RLP encoding of a byte string.
fn rlp_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    match bytes {
        [single] if *single < 0x80 => out.push(*single),
        _ => {
            rlp_header(out, 0x80, bytes.len());
            out.extend_from_slice(bytes);
        }
    }
}

/// Appends the RLP encoding of an unsigned integer given as big-endian bytes
/// (minimal form: leading zeros stripped, zero is the empty string).
fn rlp_uint(out: &mut Vec<u8>, be: &[u8]) {
    rlp_bytes(out, strip_leading_zeros(be));
}

/// Appends an RLP list whose items are already encoded in `payload`.
fn rlp_list(out: &mut Vec<u8>, payload: &[u8]) {
    rlp_header(out, 0xc0, payload.len());
    out.extend_from_slice(payload);
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};

    // ---- a minimal RLP decoder, independent of the encoder above ----

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Rlp {
        Bytes(Vec<u8>),
        List(Vec<Rlp>),
    }

    impl Rlp {
        fn bytes(&self) -> &[u8] {
            match self {
                Rlp::Bytes(b) => b,
                Rlp::List(_) => panic!("expected bytes, got a list"),
            }
        }
        fn list(&self) -> &[Rlp] {
            match self {
                Rlp::List(items) => items,
                Rlp::Bytes(_) => panic!("expected a list, got bytes"),
            }
        }
    }

    fn be_to_usize(bytes: &[u8]) -> usize {
        assert!(!bytes.is_empty() && bytes[0] != 0, "non-canonical length");
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    }

    /// Decodes one item, returning it and the rest of the input. Checks the
    /// canonical-form rules as it goes.
    fn rlp_decode_item(input: &[u8]) -> (Rlp, &[u8]) {
        let tag = input[0];
        let rest = &input[1..];
        match tag {
            0x00..=0x7f => (Rlp::Bytes(vec![tag]), rest),
            0x80..=0xb7 => {
                let len = usize::from(tag - 0x80);
                let body = &rest[..len];
                if len == 1 {
                    assert!(body[0] >= 0x80, "single byte < 0x80 must encode itself");
                }
                (Rlp::Bytes(body.to_vec()), &rest[len..])
            }
            0xb8..=0xbf => {
                let len_of_len = usize::from(tag - 0xb7);
                let len = be_to_usize(&rest[..len_of_len]);
                assert!(len > 55, "long form used for a short string");
                let body = &rest[len_of_len..len_of_len + len];
                (Rlp::Bytes(body.to_vec()), &rest[len_of_len + len..])
            }
            0xc0..=0xf7 => {
                let len = usize::from(tag - 0xc0);
                (Rlp::List(rlp_decode_all(&rest[..len])), &rest[len..])
            }
            0xf8..=0xff => {
                let len_of_len = usize::from(tag - 0xf7);
                let len = be_to_usize(&rest[..len_of_len]);
                assert!(len > 55, "long form used for a short list");
                let body = &rest[len_of_len..len_of_len + len];
                (Rlp::List(rlp_decode_all(body)), &rest[len_of_len + len..])
            }
        }
    }

    fn rlp_decode_all(mut input: &[u8]) -> Vec<Rlp> {
        let mut items = Vec::new();
        while !input.is_empty() {
            let (item, rest) = rlp_decode_item(input);
            items.push(item);
            input = rest;
        }
        items
    }

    fn rlp_decode_exact(input: &[u8]) -> Rlp {
        let (item, rest) = rlp_decode_item(input);
        assert!(rest.is_empty(), "trailing bytes after RLP item");
        item
    }

    /// A decoded RLP integer must be minimal (no leading zero byte).
    fn rlp_uint_value(item: &Rlp) -> U256 {
        let bytes = item.bytes();
        assert!(bytes.first() != Some(&0), "non-minimal RLP integer");
        let mut out = [0u8; 32];
        out[32 - bytes.len()..].copy_from_slice(bytes);
        U256(out)
    }

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn base_input() -> EvmTransactionInput {
        EvmTransactionInput {
            chain_id: "1".into(),
            nonce: "7".into(),
            to: "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".into(),
            value: "1000000000000000000".into(),
            data: Some("0xa9059cbb".into()),
            gas_limit: "21000".into(),
            max_fee_per_gas: "30000000000".into(),
            max_priority_fee_per_gas: "1500000000".into(),
        }
    }

    // ---- EIP-55 ----

    /// The "normal" (mixed-case) examples of EIP-55.
    const EIP55_VECTORS: [&str; 4] = [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ];

    #[test]
    fn eip55_official_vectors_round_trip() {
        for vector in EIP55_VECTORS {
            let bytes = parse_evm_address(vector).unwrap();
            assert_eq!(to_checksum_address(&bytes), vector);
            // All-lowercase and all-uppercase forms are accepted unchecked.
            let lower = format!("0x{}", vector[2..].to_ascii_lowercase());
            let upper = format!("0x{}", vector[2..].to_ascii_uppercase());
            assert_eq!(parse_evm_address(&lower).unwrap(), bytes);
            assert_eq!(parse_evm_address(&upper).unwrap(), bytes);
        }
    }

    #[test]
    fn eip55_all_caps_and_all_lower_vectors() {
        // EIP-55 "all caps" and "all lower" examples: their checksums happen
        // to put every letter in the same case.
        for vector in [
            "0x52908400098527886E0F7030069857D2E4169EE7",
            "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
            "0xde709f2102306220921060314715629080e2fb77",
            "0x27b1fdb04752bbc536007a920d24acb045561c26",
        ] {
            let bytes = parse_evm_address(vector).unwrap();
            assert_eq!(to_checksum_address(&bytes), vector);
        }
    }

    #[test]
    fn eip55_wrong_case_refused() {
        for vector in EIP55_VECTORS {
            // Flip the case of the first letter: still mixed case, bad checksum.
            let pos = vector[2..].find(|c: char| c.is_ascii_alphabetic()).unwrap() + 2;
            let mut chars: Vec<char> = vector.chars().collect();
            chars[pos] = if chars[pos].is_ascii_uppercase() {
                chars[pos].to_ascii_lowercase()
            } else {
                chars[pos].to_ascii_uppercase()
            };
            let bad: String = chars.into_iter().collect();
            let err = parse_evm_address(&bad).unwrap_err();
            assert_eq!(err.code(), "invalid_address");
            assert!(err.to_string().contains("checksum"), "{err}");
        }
    }

    #[test]
    fn malformed_addresses_refused() {
        for bad in [
            "",
            "0x",
            "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAedd",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg",
            " 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaé",
        ] {
            let err = parse_evm_address(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_address", "{bad:?}");
        }
    }

    // ---- public keys to addresses ----

    #[test]
    fn evm_address_of_generator_point() {
        // Private key 1: the public key is G. Well-known address
        // 0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf.
        let compressed =
            hex::decode("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
                .unwrap();
        let uncompressed = hex::decode(
            "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
             483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8",
        )
        .unwrap();
        let expected = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf";
        assert_eq!(evm_address(&compressed).unwrap(), expected);
        assert_eq!(evm_address(&uncompressed).unwrap(), expected);
        assert_eq!(
            evm_address_bytes(&compressed).unwrap(),
            parse_evm_address(expected).unwrap()
        );
        // And through k256 from the scalar 1.
        let mut one = [0u8; 32];
        one[31] = 1;
        let key = SigningKey::from_bytes(&one.into()).unwrap();
        let sec1 = key.verifying_key().to_encoded_point(true);
        assert_eq!(evm_address(sec1.as_bytes()).unwrap(), expected);
    }

    #[test]
    fn invalid_public_keys_refused() {
        let g_x = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x00],
            // x-only (32 bytes) is not SEC1.
            hex::decode(g_x).unwrap(),
            // Wrong tag for 33 bytes.
            hex::decode(format!("04{g_x}")).unwrap(),
            // x = 5 is not on secp256k1 (5^3 + 7 = 132 is a non-residue).
            hex::decode(format!("02{}05", "00".repeat(31))).unwrap(),
            // Uncompressed point with a wrong y.
            hex::decode(format!("04{g_x}{}", "11".repeat(32))).unwrap(),
            // Hybrid encoding (tag 0x06) is not accepted.
            hex::decode(format!(
                "06{g_x}483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
            ))
            .unwrap(),
        ];
        for case in cases {
            assert_eq!(
                evm_address(&case).unwrap_err(),
                ChainError::InvalidPublicKey,
                "{}",
                hex::encode(&case)
            );
        }
    }

    // ---- EIP-191 ----

    #[test]
    fn eip191_digest_of_hello() {
        // ethers: hashMessage("hello"); web3: eth.accounts.hashMessage("hello").
        assert_eq!(
            hex::encode(eip191_digest(b"hello")),
            "50b2c43fd39106bafbba0da34fc430e1f91e3c96ea2acee2bc34119f92b37750"
        );
    }

    #[test]
    fn keccak256_empty() {
        assert_eq!(
            hex::encode(keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    // ---- EIP-1559 ----

    #[test]
    fn eip1559_sign_decode_recover() {
        let signer = SigningKey::from_bytes(
            &h32("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318").into(),
        )
        .unwrap();
        let signer_address =
            evm_address_bytes(signer.verifying_key().to_encoded_point(false).as_bytes()).unwrap();

        let mut input = base_input();
        // 100 bytes of data: exercises the long-string form (0xb8 0x64 ...).
        input.data = Some(format!("0x{}", "ab".repeat(100)));
        input.value =
            "115792089237316195423570985008687907853269984665640564039457584007913129639935".into();
        let tx = Eip1559Transaction::from_input(&input).unwrap();

        let digest = tx.signing_digest();
        let (sig, recid): (Signature, RecoveryId) =
            signer.sign_prehash_recoverable(&digest).unwrap();
        let r: [u8; 32] = sig.r().to_bytes().into();
        let s: [u8; 32] = sig.s().to_bytes().into();
        let y_parity = u8::from(recid.is_y_odd());
        let envelope = tx.signed_envelope(&r, &s, y_parity);

        // Decode independently.
        assert_eq!(envelope[0], 0x02);
        let fields = rlp_decode_exact(&envelope[1..]);
        let fields = fields.list();
        assert_eq!(fields.len(), 12);
        assert_eq!(rlp_uint_value(&fields[0]), U256::from_u64(1));
        assert_eq!(rlp_uint_value(&fields[1]), U256::from_u64(7));
        assert_eq!(rlp_uint_value(&fields[2]), U256::from_u64(1_500_000_000));
        assert_eq!(rlp_uint_value(&fields[3]), U256::from_u64(30_000_000_000));
        assert_eq!(rlp_uint_value(&fields[4]), U256::from_u64(21_000));
        assert_eq!(
            fields[5].bytes(),
            parse_evm_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").unwrap()
        );
        assert_eq!(rlp_uint_value(&fields[6]), U256::MAX);
        assert_eq!(fields[7].bytes(), vec![0xab; 100].as_slice());
        assert_eq!(fields[8], Rlp::List(vec![]));
        assert_eq!(rlp_uint_value(&fields[9]), U256::from_u64(y_parity.into()));
        assert_eq!(rlp_uint_value(&fields[10]).0, r);
        assert_eq!(rlp_uint_value(&fields[11]).0, s);

        // The unsigned payload is the same list minus the signature.
        let unsigned = tx.unsigned_payload();
        assert_eq!(unsigned[0], 0x02);
        assert_eq!(rlp_decode_exact(&unsigned[1..]).list(), &fields[..9]);
        assert_eq!(digest, keccak256(&unsigned));

        // Recover the signer from (digest, r, s, yParity) as a node would.
        let sig =
            Signature::from_scalars(rlp_uint_value(&fields[10]).0, rlp_uint_value(&fields[11]).0)
                .unwrap();
        let recid = RecoveryId::new(rlp_uint_value(&fields[9]) == U256::from_u64(1), false);
        let recovered = VerifyingKey::recover_from_prehash(&digest, &sig, recid).unwrap();
        let recovered_address =
            evm_address_bytes(recovered.to_encoded_point(true).as_bytes()).unwrap();
        assert_eq!(recovered_address, signer_address);
        assert_eq!(
            to_checksum_address(&signer_address),
            // web3.js / eth-account documentation key 0x4c08…2318.
            "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
        );

        assert_eq!(transaction_hash(&envelope), keccak256(&envelope));
    }

    /// EthereumJS `packages/tx/test/json/eip1559.json` (the EIP-1559 vectors
    /// generated with go-ethereum): chain id 7822, to 0x…aaaa, empty data,
    /// empty access list, key 0x8f2a…be63. `signedTransactionRLP` there is
    /// the envelope wrapped as an RLP string (as in a block body).
    const ETHEREUMJS_EIP1559_VECTORS: [(u64, u64, u64, u64, u64, &str); 10] = [
        (819, 43203529, 35552, 75853, 121212, "b87302f870821e8e8203338301284d8301d97c828ae094000000000000000000000000000000000000aaaa8402933bc980c080a0d067f2167008c59219652f91cbf8788dbca5f771f6e91e2b7657e85b78b472e0a01d305af9fe81fdba43f0dfcd400ed24dcace0a7e30d4e85701dcaaf484cd079e"),
        (353, 61901619, 32593, 38850, 136295, "b87202f86f821e8e8201618297c283021467827f5194000000000000000000000000000000000000aaaa8403b08b3380c001a004205678f13fc1d7b10feea6513dfa76e24418b6e08097d95c6f93a3b64e536da01d45ad61bfece43862de2cce7d2575a8c1d08c26c87f3cb5f26d7b0be54a91b2"),
        (985, 32531825, 68541, 66377, 136097, "b87402f871821e8e8203d983010349830213a183010bbd94000000000000000000000000000000000000aaaa8401f0657180c001a0e6d23c5ecc0f388a4d41a9523c3ad171e98083a61288c340b968dfe0903a6741a07319e8d54a4fd8f0c081d3ce093d869f9df598481991c8534bfd8f2c163884b4"),
        (623, 21649799, 57725, 74140, 81173, "b87302f870821e8e82026f8301219c83013d1582e17d94000000000000000000000000000000000000aaaa84014a598780c080a0b107893e4590e177e244493a3f2b59d63619ddd82772105d8c96b7fc85ff683da07dc9b9dc054d2f69f9cc540688f6c0da3b54dd8bd8323f06d0ca26b546a480f1"),
        (972, 94563383, 65254, 42798, 103466, "b87202f86f821e8e8203cc82a72e8301942a82fee694000000000000000000000000000000000000aaaa8405a2ec3780c080a02596bfedd3101f7e3c881eec060f83c60617fb21173ff41a560e02c9c23f02f4a01ef1f7930d31081c06dfd2176046a99442a88678638a33eb80afa8d2d3389ee0"),
        (588, 99359647, 37274, 87890, 130273, "b87302f870821e8e82024c830157528301fce182919a94000000000000000000000000000000000000aaaa8405ec1b9f80c001a0404a06f2a9ba9d444e59f03e1b4ce46c4d7127342aa287a6e9a910b26ff6cc89a04af28549efdfb3e746938d01c92785e9852eb58c48d6f35cc99961e88f56603a"),
        (900, 30402257, 76053, 8714, 112705, "b87302f870821e8e82038482220a8301b8418301291594000000000000000000000000000000000000aaaa8401cfe6d180c080a06e1bc9e4645de8bdad2c60424539c2dd93aacbc06ae94e440629b133a99e9ba7a03d23fdfdd9934c77fe5385a6b4b6c69e84cdec7814a19d81e648b5852ee5f7eb"),
        (709, 6478043, 28335, 86252, 94636, "b87202f86f821e8e8202c5830150ec830171ac826eaf94000000000000000000000000000000000000aaaa8362d8db80c001a09880d133cd636f8c8dce32e2c43494b9f2dc000eee8dc61931e09f866ed04b46a00e44d5c503c7f08b36c8b062c32a963f3dd20a71e95e3d903bfbe7f4da47cd47"),
        (939, 2782905, 45047, 45216, 91648, "b87102f86e821e8e8203ab82b0a08301660082aff794000000000000000000000000000000000000aaaa832a76b980c001a0a0e7d9b07c7ec68f24788a554f993b99d59a3f08439cc6c942f62ea0341f2aeba078122b9957c146f7c87811bd58a7e9916ca8c07dabcf875b97bbdef79cb9c197"),
        (119, 65456115, 62341, 24721, 107729, "b87002f86d821e8e778260918301a4d182f38594000000000000000000000000000000000000aaaa8403e6c7f380c001a0e38e239770801eb995498c821e55ac9c19ae09184bb27b34be105e02fe3b7615a067c64ca6bd6d9107e85fd581ab2e70a14b637eb36505bb40861ef9d6e800cab6"),
    ];

    #[test]
    fn eip1559_published_vectors_byte_exact() {
        let signer = SigningKey::from_bytes(
            &h32("8f2a55949038a9610f50fb23b5883af3b4ecb3c3bb792cbcefbd1542c692be63").into(),
        )
        .unwrap();
        for (nonce, value, gas_limit, priority, max_fee, wrapped) in ETHEREUMJS_EIP1559_VECTORS {
            let input = EvmTransactionInput {
                chain_id: "7822".into(),
                nonce: nonce.to_string(),
                to: "0x000000000000000000000000000000000000aaaa".into(),
                value: value.to_string(),
                data: None,
                gas_limit: gas_limit.to_string(),
                max_fee_per_gas: max_fee.to_string(),
                max_priority_fee_per_gas: priority.to_string(),
            };
            let tx = Eip1559Transaction::from_input(&input).unwrap();
            let (sig, recid) = signer
                .sign_prehash_recoverable(&tx.signing_digest())
                .unwrap();
            let r: [u8; 32] = sig.r().to_bytes().into();
            let s: [u8; 32] = sig.s().to_bytes().into();
            let envelope = tx.signed_envelope(&r, &s, u8::from(recid.is_y_odd()));
            let expected = rlp_decode_exact(&hex::decode(wrapped).unwrap());
            assert_eq!(
                hex::encode(&envelope),
                hex::encode(expected.bytes()),
                "nonce {nonce}"
            );
        }
    }

    #[test]
    fn eip1559_rlp_edge_cases() {
        // Zero quantities encode as the empty string (0x80); a single byte
        // below 0x80 encodes as itself; y_parity 0 is 0x80 and 1 is 0x01.
        let tx = Eip1559Transaction {
            chain_id: U256::from_u64(1),
            nonce: U256::ZERO,
            max_priority_fee_per_gas: U256::ZERO,
            max_fee_per_gas: U256::from_u64(0x80),
            gas_limit: U256::from_u64(21_000),
            to: [0x11; 20],
            value: U256::ZERO,
            data: vec![0x7f],
        };
        let unsigned = tx.unsigned_payload();
        assert_eq!(
            hex::encode(&unsigned),
            format!("02e0018080818082520894{}807fc0", "11".repeat(20))
        );
        // r with leading zero bytes is stripped; s of all zeros is 0x80.
        let mut r = [0u8; 32];
        r[30] = 0x01;
        r[31] = 0x02;
        let envelope = tx.signed_envelope(&r, &[0u8; 32], 0);
        assert_eq!(
            hex::encode(&envelope),
            format!("02e5018080818082520894{}807fc08082010280", "11".repeat(20))
        );
        let envelope = tx.signed_envelope(&r, &[0u8; 32], 1);
        assert!(hex::encode(&envelope).ends_with("c00182010280"));

        // Maximum data: list length needs three bytes (0xfa ...).
        let mut big = tx.clone();
        big.data = vec![0xee; MAX_TRANSACTION_DATA_BYTES];
        let envelope = big.signed_envelope(&[0x55; 32], &[0x66; 32], 1);
        assert_eq!(&envelope[..2], &[0x02, 0xfa]);
        let fields = rlp_decode_exact(&envelope[1..]);
        assert_eq!(fields.list()[7].bytes(), big.data.as_slice());
        assert_eq!(fields.list()[10].bytes(), &[0x55; 32]);
    }

    #[test]
    fn transaction_input_json_shape() {
        let json = r#"{
            "chainId": "137",
            "nonce": "0",
            "to": "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "value": "0",
            "gasLimit": "21000",
            "maxFeePerGas": "2",
            "maxPriorityFeePerGas": "2"
        }"#;
        let input: EvmTransactionInput = serde_json::from_str(json).unwrap();
        assert_eq!(input.data, None);
        let tx = Eip1559Transaction::from_input(&input).unwrap();
        assert_eq!(tx.chain_id, U256::from_u64(137));
        assert!(tx.data.is_empty());

        let with_null: EvmTransactionInput =
            serde_json::from_str(&json.replace("\"value\"", "\"data\": null, \"value\"")).unwrap();
        assert_eq!(with_null, input);

        let unknown = json.replace("\"value\"", "\"gasPrice\": \"1\", \"value\"");
        assert!(serde_json::from_str::<EvmTransactionInput>(&unknown).is_err());
        let snake = json.replace("chainId", "chain_id");
        assert!(serde_json::from_str::<EvmTransactionInput>(&snake).is_err());
        // Quantities are strings, not JSON numbers.
        let number = json.replace("\"137\"", "137");
        assert!(serde_json::from_str::<EvmTransactionInput>(&number).is_err());
    }

    fn field_error(mutate: impl FnOnce(&mut EvmTransactionInput)) -> ChainError {
        let mut input = base_input();
        mutate(&mut input);
        Eip1559Transaction::from_input(&input).unwrap_err()
    }

    fn assert_quantity_field(err: ChainError, expected: &str) {
        match &err {
            ChainError::InvalidQuantity { field, .. } => assert_eq!(*field, expected, "{err}"),
            other => panic!("expected InvalidQuantity for {expected}, got {other:?}"),
        }
        assert_eq!(err.code(), "invalid_quantity");
        assert!(err.to_string().contains(expected), "{err}");
    }

    #[test]
    fn transaction_errors_name_their_field() {
        assert!(Eip1559Transaction::from_input(&base_input()).is_ok());

        let err = field_error(|i| i.to = "0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed".into());
        assert_eq!(err.code(), "invalid_address");
        assert!(err.to_string().contains("to:"), "{err}");
        let err = field_error(|i| i.to = "".into());
        assert_eq!(err.code(), "invalid_address");
        assert!(err.to_string().contains("to:"), "{err}");

        assert_quantity_field(field_error(|i| i.gas_limit = "20999".into()), "gasLimit");
        assert_quantity_field(
            field_error(|i| i.gas_limit = "18446744073709551616".into()),
            "gasLimit",
        );
        assert_quantity_field(
            field_error(|i| {
                i.max_priority_fee_per_gas = "30000000001".into();
            }),
            "maxPriorityFeePerGas",
        );
        assert_quantity_field(field_error(|i| i.chain_id = "0".into()), "chainId");
        assert_quantity_field(
            field_error(|i| i.chain_id = "18446744073709551616".into()),
            "chainId",
        );
        assert_quantity_field(field_error(|i| i.chain_id = "0x1".into()), "chainId");
        assert_quantity_field(
            field_error(|i| i.nonce = "18446744073709551616".into()),
            "nonce",
        );
        assert_quantity_field(field_error(|i| i.value = "-1".into()), "value");
        assert_quantity_field(
            field_error(|i| i.max_fee_per_gas = "".into()),
            "maxFeePerGas",
        );
        assert_quantity_field(
            field_error(|i| i.max_priority_fee_per_gas = "1.5".into()),
            "maxPriorityFeePerGas",
        );

        let err = field_error(|i| i.data = Some("0xabc".into()));
        assert_eq!(err.code(), "invalid_hex");
        assert!(err.to_string().contains("data:"), "{err}");
        let err = field_error(|i| i.data = Some("abcd".into()));
        assert_eq!(err.code(), "invalid_hex");
        assert!(err.to_string().contains("data:"), "{err}");
        let err = field_error(|i| i.data = Some("0xzz".into()));
        assert_eq!(err.code(), "invalid_hex");

        let err = field_error(|i| {
            i.data = Some(format!("0x{}", "00".repeat(MAX_TRANSACTION_DATA_BYTES + 1)))
        });
        assert_eq!(
            err,
            ChainError::DataTooLarge {
                max_bytes: MAX_TRANSACTION_DATA_BYTES
            }
        );
        assert_eq!(err.code(), "data_too_large");
        assert!(err.to_string().contains("data"), "{err}");

        // Boundaries that are accepted.
        let mut input = base_input();
        input.data = Some(format!("0x{}", "00".repeat(MAX_TRANSACTION_DATA_BYTES)));
        input.gas_limit = "18446744073709551615".into();
        input.nonce = "18446744073709551615".into();
        input.chain_id = "18446744073709551615".into();
        input.max_priority_fee_per_gas = input.max_fee_per_gas.clone();
        let tx = Eip1559Transaction::from_input(&input).unwrap();
        assert_eq!(tx.data.len(), MAX_TRANSACTION_DATA_BYTES);
        input.data = Some("0x".into());
        assert!(Eip1559Transaction::from_input(&input)
            .unwrap()
            .data
            .is_empty());
    }

    // ---- U256 ----

    const U256_MAX_DECIMAL: &str =
        "115792089237316195423570985008687907853269984665640564039457584007913129639935";

    #[test]
    fn u256_decimal_round_trip() {
        for s in [
            "0",
            "1",
            "10",
            "255",
            "256",
            "18446744073709551615",
            "18446744073709551616",
            U256_MAX_DECIMAL,
        ] {
            assert_eq!(U256::from_decimal(s).unwrap().to_decimal(), s);
        }
        assert_eq!(U256::from_decimal(U256_MAX_DECIMAL).unwrap(), U256::MAX);
        assert_eq!(U256::from_decimal("0").unwrap(), U256::ZERO);
        assert!(U256::from_decimal("0").unwrap().is_zero());
        assert_eq!(U256::from_decimal("000123").unwrap(), U256::from_u64(123));
        assert_eq!(U256::from_decimal("000123").unwrap().to_decimal(), "123");
        // 2^64 = 0x01 followed by eight zero bytes.
        let two_64 = U256::from_decimal("18446744073709551616").unwrap();
        let mut expected = [0u8; 32];
        expected[23] = 1;
        assert_eq!(two_64.0, expected);
        assert_eq!(two_64.to_u64(), None);
        assert_eq!(
            U256::from_u64(u64::MAX).to_decimal(),
            "18446744073709551615"
        );
        assert_eq!(U256::from_u64(u64::MAX).to_u64(), Some(u64::MAX));
        assert_eq!(U256::from_u64(0x0102).0[30..], [0x01, 0x02]);
    }

    #[test]
    fn u256_refuses_bad_input() {
        let max_plus_one =
            "115792089237316195423570985008687907853269984665640564039457584007913129639936";
        let seventy_nine = format!("0{U256_MAX_DECIMAL}");
        let too_long = "1".repeat(79);
        for bad in [
            max_plus_one,
            "",
            "-1",
            "+1",
            "1e3",
            " 1",
            "1 ",
            "0x10",
            "1_000",
            "1.0",
            "١",
            seventy_nine.as_str(),
            too_long.as_str(),
        ] {
            let err = U256::from_decimal(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_quantity", "{bad:?}");
        }
    }

    #[test]
    fn u256_order_is_numeric() {
        let a = U256::from_decimal("255").unwrap();
        let b = U256::from_decimal("256").unwrap();
        let c = U256::from_decimal("18446744073709551616").unwrap();
        assert!(U256::ZERO < a && a < b && b < c && c < U256::MAX);
    }

    // ---- Bitcoin P2TR ----

    #[test]
    fn p2tr_bip86_first_receiving_address() {
        // BIP-86 test vector: mnemonic "abandon ... about", m/86'/0'/0'/0/0.
        let output_key = h32("a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c");
        assert_eq!(
            p2tr_address(&output_key, Chain::Bitcoin).unwrap(),
            "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
        );
        // m/86'/0'/0'/0/1.
        let output_key = h32("a82f29944d65b86ae6b5e5cc75e294ead6c59391a1edc5e016e3498c67fc7bbb");
        assert_eq!(
            p2tr_address(&output_key, Chain::Bitcoin).unwrap(),
            "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh"
        );
    }

    #[test]
    fn p2tr_bip350_vectors() {
        // BIP-350 valid addresses with a 32-byte v1 program.
        let program = h32("000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433");
        assert_eq!(
            p2tr_address(&program, Chain::BitcoinTestnet).unwrap(),
            "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c"
        );
        let program = h32("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798");
        assert_eq!(
            p2tr_address(&program, Chain::Bitcoin).unwrap(),
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"
        );
    }

    #[test]
    fn p2tr_refuses_other_chains_and_off_curve_keys() {
        let key = h32("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798");
        for chain in [Chain::Ethereum, Chain::Polygon, Chain::Solana] {
            let err = p2tr_address(&key, chain).unwrap_err();
            assert_eq!(err, ChainError::UnsupportedChain(chain.name().into()));
            assert_eq!(err.code(), "unsupported_chain");
        }
        // x = 5 is not the x-coordinate of a secp256k1 point; x = p is not
        // a field element.
        let mut five = [0u8; 32];
        five[31] = 5;
        assert_eq!(
            p2tr_address(&five, Chain::Bitcoin).unwrap_err(),
            ChainError::InvalidPublicKey
        );
        let p = h32("fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f");
        assert_eq!(
            p2tr_address(&p, Chain::Bitcoin).unwrap_err(),
            ChainError::InvalidPublicKey
        );
    }

    // ---- Solana ----

    #[test]
    fn solana_addresses() {
        // The System Program id is 32 zero bytes.
        assert_eq!(
            solana_address(&[0u8; 32]),
            "11111111111111111111111111111111"
        );
        // The SPL Token program id.
        assert_eq!(
            solana_address(&h32(
                "06ddf6e1d765a193d9cbe146ceeb79ac1cb485ed5f5b37913a8cf5857eff00a9"
            )),
            "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
        );
    }

    // ---- Chain ----

    #[test]
    fn chain_names_round_trip() {
        for chain in Chain::ALL {
            assert_eq!(Chain::parse(chain.name()).unwrap(), chain);
            assert_eq!(chain.to_string(), chain.name());
        }
        assert_eq!(
            Chain::parse("bitcoin-testnet").unwrap(),
            Chain::BitcoinTestnet
        );
        assert!(Chain::Ethereum.is_evm() && Chain::Polygon.is_evm());
        assert!(
            !Chain::Bitcoin.is_evm() && !Chain::BitcoinTestnet.is_evm() && !Chain::Solana.is_evm()
        );
        for bad in ["", "Ethereum", "eth", "bitcoin_testnet", " solana"] {
            let err = Chain::parse(bad).unwrap_err();
            assert_eq!(err.code(), "unsupported_chain");
        }
        // Long input is not echoed in full.
        let long = "x".repeat(10_000);
        assert!(Chain::parse(&long).unwrap_err().to_string().len() < 100);
    }

    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (ChainError::InvalidAddress(String::new()), "invalid_address"),
            (
                ChainError::InvalidQuantity {
                    field: "value",
                    reason: String::new(),
                },
                "invalid_quantity",
            ),
            (ChainError::InvalidPublicKey, "invalid_public_key"),
            (ChainError::InvalidHex(String::new()), "invalid_hex"),
            (ChainError::DataTooLarge { max_bytes: 1 }, "data_too_large"),
            (
                ChainError::UnsupportedChain(String::new()),
                "unsupported_chain",
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
        }
    }
}
