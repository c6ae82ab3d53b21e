//! What an EVM transaction moves, read from its `to`, `value` and calldata,
//! so that policy sees what is signed (system invariant 3): an ERC-20
//! `transfer` in `data` moves tokens to the address in its arguments, not to
//! `to`, and in the token's base units, not in `value`.
//!
//! [`movements`] recognises the token calls below by their 4-byte selector and
//! decodes their arguments strictly. Anything it does not recognise, or that
//! is not in the canonical ABI encoding, answers `None`: the amount and the
//! destination are unknown and policy fails closed.
//!
//! | selector | call | movement |
//! |---|---|---|
//! | `0xa9059cbb` | ERC-20 `transfer(address to, uint256 amount)` | Transfer of `amount` to `to` |
//! | `0x23b872dd` | ERC-20 `transferFrom(address from, address to, uint256 amount)` | Transfer of `amount` from `from` to `to` |
//! | `0x095ea7b3` | ERC-20 `approve(address spender, uint256 amount)` | Approval of `amount` to `spender` |
//! | `0x39509351` | ERC-20 `increaseAllowance(address spender, uint256 added)` | Approval of `added` to `spender` |
//! | `0x42842e0e` | ERC-721 `safeTransferFrom(address from, address to, uint256 id)` | Transfer of token `id` (amount 1) |
//! | `0xb88d4fde` | ERC-721 `safeTransferFrom(address from, address to, uint256 id, bytes data)` | Transfer of token `id` (amount 1) |
//! | `0xa22cb465` | ERC-721/1155 `setApprovalForAll(address operator, bool approved)` | Approval to `operator`: unlimited (amount unknown) when `true`, `0` when `false` |
//! | `0xf242432a` | ERC-1155 `safeTransferFrom(address from, address to, uint256 id, uint256 amount, bytes data)` | Transfer of `amount` of token `id` |
//! | `0x2eb2c2d6` | ERC-1155 `safeBatchTransferFrom(address from, address to, uint256[] ids, uint256[] amounts, bytes data)` | one Transfer per id |
//!
//! Selectors are shared between standards, and calldata cannot tell which
//! standard the contract at `to` implements:
//! * ERC-721's `transferFrom(address,address,uint256)` and
//!   `approve(address,uint256)` have the ERC-20 selectors. They are read as
//!   ERC-20: the destination is right, and the token id is reported as the
//!   amount (an amount limit then compares a token id, which can only
//!   refuse more, never reveal less: the destination is never wrong).
//! * ERC-1155's `setApprovalForAll` has ERC-721's selector and the same
//!   meaning; it is reported as ERC-721.
//! * A contract that does something else under one of these selectors is
//!   not detectable from calldata; the asset is always `to` itself.
//!
//! Strictness (anything else is `None`):
//! * static arguments: exactly 32 bytes per argument after the selector,
//!   nothing trailing;
//! * an `address` word has 12 zero high bytes; a `bool` word is 0 or 1;
//! * dynamic arguments are in the canonical layout (what Solidity's
//!   `abi.encode` and eth_abi produce): each offset points exactly where the
//!   previous tail ended, lengths are in bounds, `bytes` padding is zero and
//!   the last tail ends at the end of the calldata;
//! * a batch holds 1 to [`MAX_BATCH_ENTRIES`] ids and as many amounts.
//!
//! The module is pure and panic-free: no I/O, and no indexing, `unwrap` or
//! arithmetic that can overflow on hostile input.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

use crate::engines::wallets::chain::U256;

/// Most entries an ERC-1155 batch transfer may name and still be understood.
pub const MAX_BATCH_ENTRIES: usize = 256;

/// One ABI word.
const WORD: usize = 32;

/// ERC-20 `transfer(address,uint256)`.
pub const SELECTOR_ERC20_TRANSFER: [u8; 4] = [0xa9, 0x05, 0x9c, 0xbb];
/// ERC-20 `transferFrom(address,address,uint256)` (also ERC-721's).
pub const SELECTOR_ERC20_TRANSFER_FROM: [u8; 4] = [0x23, 0xb8, 0x72, 0xdd];
/// ERC-20 `approve(address,uint256)` (also ERC-721's).
pub const SELECTOR_ERC20_APPROVE: [u8; 4] = [0x09, 0x5e, 0xa7, 0xb3];
/// `increaseAllowance(address,uint256)` (OpenZeppelin ERC-20).
pub const SELECTOR_ERC20_INCREASE_ALLOWANCE: [u8; 4] = [0x39, 0x50, 0x93, 0x51];
/// ERC-721 `safeTransferFrom(address,address,uint256)`.
pub const SELECTOR_ERC721_SAFE_TRANSFER_FROM: [u8; 4] = [0x42, 0x84, 0x2e, 0x0e];
/// ERC-721 `safeTransferFrom(address,address,uint256,bytes)`.
pub const SELECTOR_ERC721_SAFE_TRANSFER_FROM_DATA: [u8; 4] = [0xb8, 0x8d, 0x4f, 0xde];
/// ERC-721 and ERC-1155 `setApprovalForAll(address,bool)`.
pub const SELECTOR_SET_APPROVAL_FOR_ALL: [u8; 4] = [0xa2, 0x2c, 0xb4, 0x65];
/// ERC-1155 `safeTransferFrom(address,address,uint256,uint256,bytes)`.
pub const SELECTOR_ERC1155_SAFE_TRANSFER_FROM: [u8; 4] = [0xf2, 0x42, 0x43, 0x2a];
/// ERC-1155 `safeBatchTransferFrom(address,address,uint256[],uint256[],bytes)`.
pub const SELECTOR_ERC1155_SAFE_BATCH_TRANSFER_FROM: [u8; 4] = [0x2e, 0xb2, 0xc2, 0xd6];

/// One movement of value a transaction makes, as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    /// What moves: `"native"`, or the token contract as `0x` + 40 lowercase
    /// hex.
    pub asset: String,
    /// Base units of the asset (decimal string, up to 2^256 - 1); `None` when
    /// unknown or unlimited (`setApprovalForAll(operator, true)`).
    pub amount: Option<String>,
    /// The recipient, or the spender/operator of an approval: `0x` + 40
    /// lowercase hex.
    pub destination: String,
    /// The holder the tokens are taken from when the call names one
    /// (`transferFrom`, `safeTransferFrom`, `safeBatchTransferFrom`): `0x` +
    /// 40 lowercase hex. `None` when the value leaves the signer itself.
    pub source: Option<String>,
    /// What kind of movement.
    pub kind: MovementKind,
    /// The token standard that was recognised (`None` for native value).
    pub standard: Option<TokenStandard>,
    /// The token id of an ERC-721 or ERC-1155 movement (decimal).
    pub token_id: Option<String>,
}

/// What kind of movement a [`Movement`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MovementKind {
    /// Value leaves for the destination.
    Transfer,
    /// The destination may move the signer's tokens later (an allowance or
    /// an operator).
    Approval,
}

impl MovementKind {
    /// Stable snake_case name (policy conditions, audit details).
    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Transfer => "transfer",
            MovementKind::Approval => "approval",
        }
    }
}

/// The token standard a call was recognised as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenStandard {
    /// Fungible tokens.
    Erc20,
    /// Non-fungible tokens.
    Erc721,
    /// Multi-tokens.
    Erc1155,
}

impl TokenStandard {
    /// Stable snake_case name (policy conditions, audit details).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStandard::Erc20 => "erc20",
            TokenStandard::Erc721 => "erc721",
            TokenStandard::Erc1155 => "erc1155",
        }
    }
}

/// Every movement of value a transaction to `to` with `value` and calldata
/// `data` makes.
///
/// `Some(movements)`: every movement is known. A plain transfer (empty
/// `data`) gives one native movement, also when `value` is 0; a recognised
/// token call gives its token movement(s), preceded by a native movement to
/// `to` when `value` is above 0. `None`: calldata is present but not
/// understood (unknown selector, or arguments not in the strict canonical
/// encoding), so amount and destination are unknown and policy must fail
/// closed.
pub fn movements(to: &[u8; 20], value: &U256, data: &[u8]) -> Option<Vec<Movement>> {
    let native = Movement {
        asset: "native".to_string(),
        amount: Some(value.to_decimal()),
        destination: hex_address(to),
        source: None,
        kind: MovementKind::Transfer,
        standard: None,
        token_id: None,
    };
    if data.is_empty() {
        return Some(vec![native]);
    }
    let (selector, args) = data.split_first_chunk::<4>()?;
    let tokens = token_movements(*selector, &Token(hex_address(to)), args)?;
    let mut all = Vec::with_capacity(tokens.len().saturating_add(1));
    if !value.is_zero() {
        all.push(native);
    }
    all.extend(tokens);
    Some(all)
}

/// The token contract (`0x` + 40 lowercase hex), the asset of every token
/// movement.
struct Token(String);

impl Token {
    fn transfer(
        &self,
        standard: TokenStandard,
        source: Option<[u8; 20]>,
        destination: [u8; 20],
        amount: &[u8; 32],
        token_id: Option<&[u8; 32]>,
    ) -> Movement {
        Movement {
            asset: self.0.clone(),
            amount: Some(decimal(amount)),
            destination: hex_address(&destination),
            source: source.as_ref().map(hex_address),
            kind: MovementKind::Transfer,
            standard: Some(standard),
            token_id: token_id.map(decimal),
        }
    }

    fn approval(
        &self,
        standard: TokenStandard,
        spender: [u8; 20],
        amount: Option<String>,
    ) -> Movement {
        Movement {
            asset: self.0.clone(),
            amount,
            destination: hex_address(&spender),
            source: None,
            kind: MovementKind::Approval,
            standard: Some(standard),
            token_id: None,
        }
    }
}

/// The token movements of a recognised call, `None` otherwise.
fn token_movements(selector: [u8; 4], token: &Token, args: &[u8]) -> Option<Vec<Movement>> {
    use TokenStandard::{Erc1155, Erc20, Erc721};
    let movement = match selector {
        SELECTOR_ERC20_TRANSFER => {
            let [to, amount] = static_words(args)?;
            token.transfer(Erc20, None, address(to)?, amount, None)
        }
        SELECTOR_ERC20_TRANSFER_FROM => {
            let [from, to, amount] = static_words(args)?;
            token.transfer(Erc20, Some(address(from)?), address(to)?, amount, None)
        }
        SELECTOR_ERC20_APPROVE | SELECTOR_ERC20_INCREASE_ALLOWANCE => {
            // increaseAllowance names the increment: the allowance after it
            // is the unknown current one plus this, so the increment is what
            // the signer gives away by this transaction.
            let [spender, amount] = static_words(args)?;
            token.approval(Erc20, address(spender)?, Some(decimal(amount)))
        }
        SELECTOR_ERC721_SAFE_TRANSFER_FROM => {
            let [from, to, id] = static_words(args)?;
            token.transfer(Erc721, Some(address(from)?), address(to)?, &ONE, Some(id))
        }
        SELECTOR_ERC721_SAFE_TRANSFER_FROM_DATA => {
            let head = Head::<4>::read(args)?;
            let [from, to, id, offset] = head.words;
            let end = bytes_tail(args, head.expect_offset(offset)?)?;
            exact_end(args, end)?;
            token.transfer(Erc721, Some(address(from)?), address(to)?, &ONE, Some(id))
        }
        SELECTOR_SET_APPROVAL_FOR_ALL => {
            let [operator, approved] = static_words(args)?;
            // An operator may move every token of the collection, now and
            // later: no amount bounds it.
            let amount = if boolean(approved)? {
                None
            } else {
                Some("0".to_string())
            };
            token.approval(Erc721, address(operator)?, amount)
        }
        SELECTOR_ERC1155_SAFE_TRANSFER_FROM => {
            let head = Head::<5>::read(args)?;
            let [from, to, id, amount, offset] = head.words;
            let end = bytes_tail(args, head.expect_offset(offset)?)?;
            exact_end(args, end)?;
            token.transfer(
                Erc1155,
                Some(address(from)?),
                address(to)?,
                amount,
                Some(id),
            )
        }
        SELECTOR_ERC1155_SAFE_BATCH_TRANSFER_FROM => {
            return erc1155_batch(token, args);
        }
        _ => return None,
    };
    Some(vec![movement])
}

/// `safeBatchTransferFrom(from, to, ids, amounts, data)`: one movement per
/// id, in the order of the call.
fn erc1155_batch(token: &Token, args: &[u8]) -> Option<Vec<Movement>> {
    let head = Head::<5>::read(args)?;
    let [from, to, ids_offset, amounts_offset, data_offset] = head.words;
    let (from, to) = (address(from)?, address(to)?);
    let (ids, ids_end) = word_array_tail(args, head.expect_offset(ids_offset)?)?;
    let (amounts, amounts_end) = word_array_tail(args, expect_offset(amounts_offset, ids_end)?)?;
    let data_end = bytes_tail(args, expect_offset(data_offset, amounts_end)?)?;
    exact_end(args, data_end)?;
    // An empty batch moves nothing, yet still runs the recipient's hook with
    // `data`; no sensible caller sends one, so it is not understood.
    if ids.is_empty() || ids.len() != amounts.len() {
        return None;
    }
    Some(
        ids.iter()
            .zip(amounts.iter())
            .map(|(id, amount)| {
                token.transfer(TokenStandard::Erc1155, Some(from), to, amount, Some(id))
            })
            .collect(),
    )
}

/// The amount of one non-fungible token.
const ONE: [u8; 32] = {
    let mut one = [0u8; 32];
    one[31] = 1;
    one
};

/// Exactly `N` static words and nothing else.
fn static_words<const N: usize>(args: &[u8]) -> Option<[&[u8; 32]; N]> {
    if args.len() != N.checked_mul(WORD)? {
        return None;
    }
    Head::<N>::read(args).map(|head| head.words)
}

/// The `N` head words of an encoding with dynamic arguments.
struct Head<'a, const N: usize> {
    words: [&'a [u8; 32]; N],
}

impl<'a, const N: usize> Head<'a, N> {
    /// The first `N` words of `args` (more may follow: the tails).
    fn read(args: &'a [u8]) -> Option<Self> {
        let mut words = [&[0u8; 32]; N];
        let mut rest = args;
        for word in words.iter_mut() {
            let (first, tail) = rest.split_first_chunk::<WORD>()?;
            *word = first;
            rest = tail;
        }
        Some(Head { words })
    }

    /// The offset word of the first dynamic argument, which in the canonical
    /// encoding points just past the head.
    fn expect_offset(&self, offset: &[u8; 32]) -> Option<usize> {
        expect_offset(offset, N.checked_mul(WORD)?)
    }
}

/// `offset` as a position, when it is exactly `expected`.
fn expect_offset(offset: &[u8; 32], expected: usize) -> Option<usize> {
    (small(offset)? == expected).then_some(expected)
}

/// `None` unless `end` is the end of `args`.
fn exact_end(args: &[u8], end: usize) -> Option<()> {
    (end == args.len()).then_some(())
}

/// The word at byte position `at` of `args`.
fn word_at(args: &[u8], at: usize) -> Option<&[u8; 32]> {
    args.get(at..)?.first_chunk::<WORD>()
}

/// A `bytes` tail at `at` (length word, content, zero padding to a whole
/// word); answers where it ends.
fn bytes_tail(args: &[u8], at: usize) -> Option<usize> {
    let length = small(word_at(args, at)?)?;
    let start = at.checked_add(WORD)?;
    let padded = length.div_ceil(WORD).checked_mul(WORD)?;
    let end = start.checked_add(padded)?;
    let content = args.get(start..end)?;
    if !content.get(length..)?.iter().all(|byte| *byte == 0) {
        return None;
    }
    Some(end)
}

/// A `uint256[]` tail at `at` of at most [`MAX_BATCH_ENTRIES`] entries
/// (length word, then the words); answers the words and where they end.
fn word_array_tail(args: &[u8], at: usize) -> Option<(Vec<&[u8; 32]>, usize)> {
    let length = small(word_at(args, at)?)?;
    if length > MAX_BATCH_ENTRIES {
        return None;
    }
    let start = at.checked_add(WORD)?;
    let end = start.checked_add(length.checked_mul(WORD)?)?;
    let words = args
        .get(start..end)?
        .chunks_exact(WORD)
        .map(<&[u8; 32]>::try_from)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some((words, end))
}

/// A word as a length or offset: it must fit a `u64` and a `usize`.
fn small(word: &[u8; 32]) -> Option<usize> {
    let (high, low) = word.split_last_chunk::<8>()?;
    if high.iter().any(|byte| *byte != 0) {
        return None;
    }
    usize::try_from(u64::from_be_bytes(*low)).ok()
}

/// An `address` word: 12 zero bytes, then the address.
fn address(word: &[u8; 32]) -> Option<[u8; 20]> {
    let (high, low) = word.split_last_chunk::<20>()?;
    if high.iter().any(|byte| *byte != 0) {
        return None;
    }
    Some(*low)
}

/// A `bool` word: 0 or 1.
fn boolean(word: &[u8; 32]) -> Option<bool> {
    let (last, high) = word.split_last()?;
    if high.iter().any(|byte| *byte != 0) {
        return None;
    }
    match last {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// A `uint256` word in decimal.
fn decimal(word: &[u8; 32]) -> String {
    U256(*word).to_decimal()
}

/// `0x` + 40 lowercase hex digits.
fn hex_address(address: &[u8; 20]) -> String {
    format!("0x{}", hex::encode(address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOKEN: [u8; 20] = [0x70; 20];
    const ALICE: [u8; 20] = [0xa1; 20];
    const BOB: [u8; 20] = [0xb0; 20];

    fn address_word(address: &[u8; 20]) -> [u8; 32] {
        let mut word = [0u8; 32];
        word[12..].copy_from_slice(address);
        word
    }

    fn uint_word(value: u64) -> [u8; 32] {
        U256::from_u64(value).0
    }

    fn call(selector: [u8; 4], words: &[[u8; 32]]) -> Vec<u8> {
        let mut data = selector.to_vec();
        for word in words {
            data.extend_from_slice(word);
        }
        data
    }

    /// The canonical encoding of a `bytes` tail.
    fn bytes_tail_of(content: &[u8]) -> Vec<u8> {
        let mut tail = uint_word(content.len() as u64).to_vec();
        tail.extend_from_slice(content);
        tail.resize(32 + content.len().div_ceil(32) * 32, 0);
        tail
    }

    fn erc721_with_data(content: &[u8]) -> Vec<u8> {
        let mut data = call(
            SELECTOR_ERC721_SAFE_TRANSFER_FROM_DATA,
            &[
                address_word(&ALICE),
                address_word(&BOB),
                uint_word(7),
                uint_word(128),
            ],
        );
        data.extend(bytes_tail_of(content));
        data
    }

    fn erc1155_single(content: &[u8]) -> Vec<u8> {
        let mut data = call(
            SELECTOR_ERC1155_SAFE_TRANSFER_FROM,
            &[
                address_word(&ALICE),
                address_word(&BOB),
                uint_word(5),
                uint_word(1000),
                uint_word(160),
            ],
        );
        data.extend(bytes_tail_of(content));
        data
    }

    fn erc1155_batch_call(ids: &[u64], amounts: &[u64], content: &[u8]) -> Vec<u8> {
        let ids_at = 160u64;
        let amounts_at = ids_at + 32 + 32 * ids.len() as u64;
        let data_at = amounts_at + 32 + 32 * amounts.len() as u64;
        let mut data = call(
            SELECTOR_ERC1155_SAFE_BATCH_TRANSFER_FROM,
            &[
                address_word(&ALICE),
                address_word(&BOB),
                uint_word(ids_at),
                uint_word(amounts_at),
                uint_word(data_at),
            ],
        );
        for array in [ids, amounts] {
            data.extend(uint_word(array.len() as u64));
            for value in array {
                data.extend(uint_word(*value));
            }
        }
        data.extend(bytes_tail_of(content));
        data
    }

    fn hex(address: &[u8; 20]) -> String {
        hex_address(address)
    }

    fn read(data: &[u8]) -> Option<Vec<Movement>> {
        movements(&TOKEN, &U256::ZERO, data)
    }

    #[test]
    fn a_plain_transfer_is_one_native_movement_even_of_zero() {
        for value in [0u64, 1, 10u64.pow(18)] {
            let moved = movements(&BOB, &U256::from_u64(value), &[]).unwrap();
            assert_eq!(
                moved,
                [Movement {
                    asset: "native".into(),
                    amount: Some(value.to_string()),
                    destination: hex(&BOB),
                    source: None,
                    kind: MovementKind::Transfer,
                    standard: None,
                    token_id: None,
                }]
            );
        }
    }

    #[test]
    fn an_erc20_transfer_moves_its_amount_to_its_argument_not_to_the_contract() {
        let data = call(SELECTOR_ERC20_TRANSFER, &[address_word(&BOB), U256::MAX.0]);
        let moved = read(&data).unwrap();
        assert_eq!(
            moved,
            [Movement {
                asset: hex(&TOKEN),
                amount: Some(U256::MAX.to_decimal()),
                destination: hex(&BOB),
                source: None,
                kind: MovementKind::Transfer,
                standard: Some(TokenStandard::Erc20),
                token_id: None,
            }]
        );
    }

    #[test]
    fn native_value_beside_a_token_call_is_reported_as_well() {
        let data = call(SELECTOR_ERC20_TRANSFER, &[address_word(&BOB), uint_word(9)]);
        let moved = movements(&TOKEN, &U256::from_u64(3), &data).unwrap();
        assert_eq!(moved.len(), 2);
        assert_eq!(
            (moved[0].asset.as_str(), moved[0].amount.as_deref()),
            ("native", Some("3"))
        );
        assert_eq!(moved[0].destination, hex(&TOKEN));
        assert_eq!(
            (moved[1].asset.clone(), moved[1].amount.as_deref()),
            (hex(&TOKEN), Some("9"))
        );
    }

    /// Kind, standard, amount, token id and source of a token movement.
    type Facts<'a> = (
        MovementKind,
        TokenStandard,
        Option<&'a str>,
        Option<&'a str>,
        Option<String>,
    );

    #[test]
    fn each_recognised_call_reads_its_facts() {
        let from = Some(hex(&ALICE));
        let cases: Vec<(&str, Vec<u8>, Vec<Facts>)> = vec![
            (
                "transferFrom",
                call(
                    SELECTOR_ERC20_TRANSFER_FROM,
                    &[address_word(&ALICE), address_word(&BOB), uint_word(42)],
                ),
                vec![(
                    MovementKind::Transfer,
                    TokenStandard::Erc20,
                    Some("42"),
                    None,
                    from.clone(),
                )],
            ),
            (
                "approve",
                call(SELECTOR_ERC20_APPROVE, &[address_word(&BOB), uint_word(42)]),
                vec![(
                    MovementKind::Approval,
                    TokenStandard::Erc20,
                    Some("42"),
                    None,
                    None,
                )],
            ),
            (
                "increaseAllowance",
                call(
                    SELECTOR_ERC20_INCREASE_ALLOWANCE,
                    &[address_word(&BOB), uint_word(43)],
                ),
                vec![(
                    MovementKind::Approval,
                    TokenStandard::Erc20,
                    Some("43"),
                    None,
                    None,
                )],
            ),
            (
                "erc721 safeTransferFrom",
                call(
                    SELECTOR_ERC721_SAFE_TRANSFER_FROM,
                    &[address_word(&ALICE), address_word(&BOB), uint_word(7)],
                ),
                vec![(
                    MovementKind::Transfer,
                    TokenStandard::Erc721,
                    Some("1"),
                    Some("7"),
                    from.clone(),
                )],
            ),
            (
                "erc721 safeTransferFrom with empty data",
                erc721_with_data(b""),
                vec![(
                    MovementKind::Transfer,
                    TokenStandard::Erc721,
                    Some("1"),
                    Some("7"),
                    from.clone(),
                )],
            ),
            (
                "erc721 safeTransferFrom with 33 bytes of data",
                erc721_with_data(&[0xee; 33]),
                vec![(
                    MovementKind::Transfer,
                    TokenStandard::Erc721,
                    Some("1"),
                    Some("7"),
                    from.clone(),
                )],
            ),
            (
                "setApprovalForAll true",
                call(
                    SELECTOR_SET_APPROVAL_FOR_ALL,
                    &[address_word(&BOB), uint_word(1)],
                ),
                vec![(
                    MovementKind::Approval,
                    TokenStandard::Erc721,
                    None,
                    None,
                    None,
                )],
            ),
            (
                "setApprovalForAll false",
                call(
                    SELECTOR_SET_APPROVAL_FOR_ALL,
                    &[address_word(&BOB), uint_word(0)],
                ),
                vec![(
                    MovementKind::Approval,
                    TokenStandard::Erc721,
                    Some("0"),
                    None,
                    None,
                )],
            ),
            (
                "erc1155 safeTransferFrom",
                erc1155_single(b"hello"),
                vec![(
                    MovementKind::Transfer,
                    TokenStandard::Erc1155,
                    Some("1000"),
                    Some("5"),
                    from.clone(),
                )],
            ),
            (
                "erc1155 safeBatchTransferFrom",
                erc1155_batch_call(&[1, 2], &[10, 20], b"x"),
                vec![
                    (
                        MovementKind::Transfer,
                        TokenStandard::Erc1155,
                        Some("10"),
                        Some("1"),
                        from.clone(),
                    ),
                    (
                        MovementKind::Transfer,
                        TokenStandard::Erc1155,
                        Some("20"),
                        Some("2"),
                        from.clone(),
                    ),
                ],
            ),
        ];
        for (name, data, expected) in cases {
            let moved = read(&data).unwrap_or_else(|| panic!("{name}: not understood"));
            let facts: Vec<_> = moved
                .iter()
                .map(|m| {
                    assert_eq!(m.asset, hex(&TOKEN), "{name}");
                    assert_eq!(m.destination, hex(&BOB), "{name}");
                    (
                        m.kind,
                        m.standard.unwrap(),
                        m.amount.as_deref(),
                        m.token_id.as_deref(),
                        m.source.clone(),
                    )
                })
                .collect();
            assert_eq!(facts, expected, "{name}");
        }
    }

    #[test]
    fn unknown_selectors_and_short_calldata_are_not_understood() {
        for data in [
            vec![0x01],
            vec![0xa9, 0x05, 0x9c],
            vec![0xde, 0xad, 0xbe, 0xef],
            call(
                [0x12, 0x34, 0x56, 0x78],
                &[address_word(&BOB), uint_word(1)],
            ),
        ] {
            assert_eq!(read(&data), None, "{data:02x?}");
            assert_eq!(movements(&TOKEN, &U256::from_u64(5), &data), None);
        }
    }

    /// Every recognised selector with valid arguments, for the mutations
    /// below.
    fn valid_calls() -> Vec<Vec<u8>> {
        vec![
            call(SELECTOR_ERC20_TRANSFER, &[address_word(&BOB), uint_word(1)]),
            call(
                SELECTOR_ERC20_TRANSFER_FROM,
                &[address_word(&ALICE), address_word(&BOB), uint_word(1)],
            ),
            call(SELECTOR_ERC20_APPROVE, &[address_word(&BOB), uint_word(1)]),
            call(
                SELECTOR_ERC20_INCREASE_ALLOWANCE,
                &[address_word(&BOB), uint_word(1)],
            ),
            call(
                SELECTOR_ERC721_SAFE_TRANSFER_FROM,
                &[address_word(&ALICE), address_word(&BOB), uint_word(1)],
            ),
            erc721_with_data(b"abc"),
            call(
                SELECTOR_SET_APPROVAL_FOR_ALL,
                &[address_word(&BOB), uint_word(1)],
            ),
            erc1155_single(b"abc"),
            erc1155_batch_call(&[1, 2, 3], &[4, 5, 6], b"abc"),
        ]
    }

    #[test]
    fn every_selector_with_a_wrong_length_is_not_understood() {
        for data in valid_calls() {
            assert!(read(&data).is_some(), "{data:02x?}");
            // Every shorter length, and longer by one byte or one word.
            for length in 4..data.len() {
                assert_eq!(read(&data[..length]), None, "cut to {length}: {data:02x?}");
            }
            for extra in [vec![0u8], vec![0u8; 32], vec![1u8; 32]] {
                let mut longer = data.clone();
                longer.extend(extra);
                assert_eq!(read(&longer), None, "trailing bytes: {longer:02x?}");
            }
            // A selector alone.
            assert_eq!(read(&data[..4]), None);
        }
    }

    #[test]
    fn dirty_address_padding_is_not_understood() {
        for data in valid_calls() {
            // The address words are the first one or two arguments.
            let n_addresses = if data[..4] == SELECTOR_ERC20_TRANSFER[..]
                || data[..4] == SELECTOR_ERC20_APPROVE[..]
                || data[..4] == SELECTOR_ERC20_INCREASE_ALLOWANCE[..]
                || data[..4] == SELECTOR_SET_APPROVAL_FOR_ALL[..]
            {
                1
            } else {
                2
            };
            for argument in 0..n_addresses {
                for byte in [0, 11] {
                    let mut dirty = data.clone();
                    dirty[4 + argument * 32 + byte] = 0x01;
                    assert_eq!(read(&dirty), None, "{dirty:02x?}");
                }
            }
        }
    }

    #[test]
    fn a_bool_other_than_zero_or_one_is_not_understood() {
        for word in [uint_word(2), uint_word(256), U256::MAX.0] {
            let data = call(SELECTOR_SET_APPROVAL_FOR_ALL, &[address_word(&BOB), word]);
            assert_eq!(read(&data), None);
        }
    }

    #[test]
    fn bad_offsets_and_lengths_are_not_understood() {
        let mut hostile: Vec<Vec<u8>> = Vec::new();
        // ERC-721 with data: the offset word is the 4th argument (bytes
        // 100..132), the length word follows the head (132..164).
        let base = erc721_with_data(b"abc");
        assert!(read(&base).is_some());
        for offset in [0u64, 96, 129, 160, u64::MAX] {
            let mut data = base.clone();
            data[100..132].copy_from_slice(&uint_word(offset));
            hostile.push(data);
        }
        let mut huge_offset = base.clone();
        huge_offset[100..132].copy_from_slice(&U256::MAX.0);
        hostile.push(huge_offset);
        // Length 2 leaves the "c" in the padding; the others run past the end.
        for length in [2u64, 33, 64, u64::MAX, 1 << 40] {
            let mut data = base.clone();
            data[132..164].copy_from_slice(&uint_word(length));
            hostile.push(data);
        }
        let mut huge_length = base.clone();
        huge_length[132..164].copy_from_slice(&U256::MAX.0);
        hostile.push(huge_length);
        // Non-zero padding after the 3 content bytes.
        let mut padding = base.clone();
        let last = padding.len() - 1;
        padding[last] = 1;
        hostile.push(padding);
        // ERC-1155 single: offset word is the 5th argument (132..164).
        let single = erc1155_single(b"");
        assert!(read(&single).is_some());
        for offset in [128u64, 192, 1 << 33] {
            let mut data = single.clone();
            data[132..164].copy_from_slice(&uint_word(offset));
            hostile.push(data);
        }
        // Batch: the ids, amounts and data offsets are the 3rd to 5th
        // arguments (68..100, 100..132, 132..164); canonical 160, 256, 352.
        let batch = erc1155_batch_call(&[1, 2], &[3, 4], b"");
        assert!(read(&batch).is_some());
        for (at, offset) in [
            (68, 128u64),
            (68, 192),
            (100, 160),
            (100, 320),
            (132, 0),
            (132, 384),
            (132, u64::MAX),
        ] {
            let mut data = batch.clone();
            data[at..at + 32].copy_from_slice(&uint_word(offset));
            hostile.push(data);
        }
        // An ids length beyond the calldata, or one entry short.
        for length in [1u64 << 20, 1] {
            let mut data = batch.clone();
            data[164..196].copy_from_slice(&uint_word(length));
            hostile.push(data);
        }
        for data in hostile {
            assert_eq!(read(&data), None, "{data:02x?}");
        }
    }

    #[test]
    fn a_batch_of_unequal_empty_or_too_many_entries_is_not_understood() {
        assert_eq!(read(&erc1155_batch_call(&[1, 2], &[3], b"")), None);
        assert_eq!(read(&erc1155_batch_call(&[1], &[3, 4], b"")), None);
        assert_eq!(read(&erc1155_batch_call(&[], &[], b"")), None);
        let many: Vec<u64> = (0..=MAX_BATCH_ENTRIES as u64).collect();
        assert_eq!(read(&erc1155_batch_call(&many, &many, b"")), None);
        let most = &many[..MAX_BATCH_ENTRIES];
        assert_eq!(
            read(&erc1155_batch_call(most, most, b"")).unwrap().len(),
            MAX_BATCH_ENTRIES
        );
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(MovementKind::Transfer.as_str(), "transfer");
        assert_eq!(MovementKind::Approval.as_str(), "approval");
        assert_eq!(TokenStandard::Erc20.as_str(), "erc20");
        assert_eq!(TokenStandard::Erc721.as_str(), "erc721");
        assert_eq!(TokenStandard::Erc1155.as_str(), "erc1155");
    }

    fn selector_prefix() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(SELECTOR_ERC20_TRANSFER.to_vec()),
            Just(SELECTOR_ERC20_TRANSFER_FROM.to_vec()),
            Just(SELECTOR_ERC20_APPROVE.to_vec()),
            Just(SELECTOR_ERC20_INCREASE_ALLOWANCE.to_vec()),
            Just(SELECTOR_ERC721_SAFE_TRANSFER_FROM.to_vec()),
            Just(SELECTOR_ERC721_SAFE_TRANSFER_FROM_DATA.to_vec()),
            Just(SELECTOR_SET_APPROVAL_FOR_ALL.to_vec()),
            Just(SELECTOR_ERC1155_SAFE_TRANSFER_FROM.to_vec()),
            Just(SELECTOR_ERC1155_SAFE_BATCH_TRANSFER_FROM.to_vec()),
            Just(Vec::new()),
        ]
    }

    /// A word that is small (a plausible offset or length), zero, or any.
    fn word() -> impl Strategy<Value = [u8; 32]> {
        prop_oneof![
            (0u64..600).prop_map(uint_word),
            Just([0u8; 32]),
            any::<[u8; 32]>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_calldata_never_panics(
            prefix in selector_prefix(),
            bytes in proptest::collection::vec(any::<u8>(), 0..700),
        ) {
            let mut data = prefix;
            data.extend(bytes);
            let _ = movements(&TOKEN, &U256::from_u64(1), &data);
        }

        #[test]
        fn random_words_after_a_known_selector_never_panic(
            prefix in selector_prefix(),
            words in proptest::collection::vec(word(), 0..24),
            cut in 0usize..32,
        ) {
            let mut data = prefix;
            for word in &words {
                data.extend_from_slice(word);
            }
            data.truncate(data.len().saturating_sub(cut));
            if let Some(moved) = movements(&TOKEN, &U256::ZERO, &data) {
                // Whatever is understood names real addresses.
                for movement in moved {
                    prop_assert_eq!(movement.destination.len(), 42);
                }
            }
        }

        #[test]
        fn an_erc20_transfer_reads_back_what_was_encoded(
            to in any::<[u8; 20]>(),
            amount in any::<[u8; 32]>(),
            value in any::<u64>(),
        ) {
            let data = call(SELECTOR_ERC20_TRANSFER, &[address_word(&to), amount]);
            let moved = movements(&TOKEN, &U256::from_u64(value), &data).unwrap();
            let token = moved.last().unwrap();
            prop_assert_eq!(&token.destination, &hex(&to));
            prop_assert_eq!(token.amount.clone(), Some(U256(amount).to_decimal()));
            prop_assert_eq!(moved.len(), if value > 0 { 2 } else { 1 });
        }
    }
}
