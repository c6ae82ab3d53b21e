//! Shamir secret sharing over GF(2^8) for sealing and unsealing the control
//! plane's root key.
//!
//! The root (master) key is split into `n_shares` unseal shares, any
//! `threshold` of which rebuild it, in the way HashiCorp Vault's unseal keys
//! work. Each byte of the secret is shared independently: byte `i` is the
//! constant term of its own random polynomial of degree `threshold - 1` over
//! GF(2^8), and share `x` holds that polynomial's value at `x` for every
//! byte. The field is the AES field: polynomials over GF(2) modulo
//! X^8 + X^4 + X^3 + X + 1 (0x11B).
//!
//! The field arithmetic, and so [`split`] and [`combine`], run in constant
//! time with respect to secret bytes (the secret, the polynomial
//! coefficients and the share values): there are no lookup tables and no
//! branches that depend on them. The x coordinates, the number of shares and
//! the lengths are public and may drive control flow. The text encoding is
//! the exception: the `base64` crate encodes and decodes through tables
//! indexed by the data. A share is turned into text once when it is issued
//! and back once when an operator enters it, on the control plane's own
//! host, which is an acceptable exposure for those two moments.
//!
//! This module gives confidentiality below the threshold and nothing else.
//! Shares carry no authentication: [`combine`] turns any set of well-formed
//! shares into some value, and it is up to the caller to check that value,
//! which Custos does by opening the AEAD-sealed root key with it.
//!
//! Operators handle shares as text (see [`Share::to_text`]): base64 of a
//! version byte, the x coordinate, the share value and a 4-byte checksum
//! that catches typos in a pasted share.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The longest secret [`split`] accepts, in bytes.
///
/// The root key is 32 bytes; the limit leaves room for a 64-byte key while
/// keeping shares short enough for operators to paste.
pub const MAX_SECRET_LEN: usize = 64;

/// The version byte that starts every text-encoded share.
pub const SHARE_TEXT_VERSION: u8 = 0x01;

/// The number of checksum bytes at the end of a text-encoded share.
const CHECKSUM_LEN: usize = 4;

/// The bytes of a decoded text share that are not the share value: the
/// version byte, the x coordinate and the checksum.
const TEXT_OVERHEAD: usize = 2 + CHECKSUM_LEN;

/// Errors from splitting, combining and decoding shares.
///
/// Each variant keeps its meaning across releases so callers and operators
/// can rely on it. No message ever contains secret or share bytes: the only
/// values they carry are public parameters (counts, lengths, x coordinates
/// and version numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShamirError {
    /// The threshold given to [`split`] is below 2; a threshold of 1 would
    /// make every share equal to the secret.
    #[error("threshold must be at least 2, got {0}")]
    ThresholdTooSmall(u8),
    /// The threshold given to [`split`] is larger than the number of shares,
    /// so the secret could never be rebuilt.
    #[error("threshold {threshold} is larger than the number of shares {n_shares}")]
    ThresholdExceedsShares {
        /// The requested threshold.
        threshold: u8,
        /// The requested number of shares.
        n_shares: u8,
    },
    /// The secret given to [`split`] is empty.
    #[error("secret is empty")]
    EmptySecret,
    /// The secret given to [`split`] is longer than [`MAX_SECRET_LEN`].
    #[error("secret is {0} bytes long, at most {MAX_SECRET_LEN} are allowed")]
    SecretTooLong(usize),
    /// [`combine`] was given fewer than 2 shares.
    #[error("at least 2 shares are needed, got {0}")]
    NotEnoughShares(usize),
    /// [`combine`] was given more shares than there are nonzero x
    /// coordinates, so some of them must repeat.
    #[error("at most 255 shares can be combined, got {0}")]
    TooManyShares(usize),
    /// Two shares given to [`combine`] have the same x coordinate; this is
    /// usually the same share entered twice.
    #[error("two shares have the same x coordinate {0}")]
    DuplicateShare(u8),
    /// The shares given to [`combine`] have values of different lengths, so
    /// they cannot come from one split.
    #[error("shares have values of different lengths")]
    InconsistentLengths,
    /// A share has x coordinate 0, whose value would be the secret itself;
    /// [`split`] never produces one.
    #[error("share has x coordinate 0")]
    ZeroX,
    /// A share has an empty value.
    #[error("share value is empty")]
    EmptyShareValue,
    /// A text share's value is longer than [`MAX_SECRET_LEN`] bytes.
    #[error("share value is {0} bytes long, at most {MAX_SECRET_LEN} are allowed")]
    ShareValueTooLong(usize),
    /// A text share is not valid padded standard base64.
    #[error("share text is not valid base64")]
    InvalidBase64,
    /// A text share starts with a version byte this code does not know.
    #[error("unsupported share text version {0}")]
    UnsupportedVersion(u8),
    /// A text share decodes to too few bytes to hold a version, an x
    /// coordinate and a checksum.
    #[error("share text is too short")]
    Truncated,
    /// A text share's checksum does not match its contents, which almost
    /// always means a typo or a truncated paste.
    #[error("share text checksum does not match (typo?)")]
    ChecksumMismatch,
}

/// One share of a secret: a nonzero x coordinate and the values of the
/// secret's per-byte polynomials at x.
///
/// The value is as sensitive as the secret once enough shares are
/// gathered, so it is wiped on drop, never printed by [`Debug`], and only
/// leaves this type through [`Share::to_text`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    /// The public x coordinate, in `1..=255`.
    x: u8,
    /// One byte per secret byte: each byte's polynomial evaluated at `x`.
    y: Vec<u8>,
}

impl Share {
    /// Returns the share's x coordinate, which is public and in `1..=255`.
    #[must_use]
    pub fn x(&self) -> u8 {
        self.x
    }

    /// Returns the length of the share's value, which equals the length of
    /// the secret.
    #[must_use]
    pub fn value_len(&self) -> usize {
        self.y.len()
    }

    /// Encodes the share as text for an operator: padded standard base64 of
    /// `0x01 || x || value || checksum`, where the checksum is the first 4
    /// bytes of SHA-256 over everything before it.
    ///
    /// The checksum only catches typos; it is no defence against a forged
    /// share. The returned string holds the share in the clear, so the
    /// caller should wrap it in [`Zeroizing`] or wipe it after display.
    #[must_use]
    pub fn to_text(&self) -> String {
        // The buffer is sized up front so it never reallocates and leaves
        // an unwiped copy of the share value behind.
        let mut raw = Zeroizing::new(Vec::with_capacity(
            TEXT_OVERHEAD.saturating_add(self.y.len()),
        ));
        raw.push(SHARE_TEXT_VERSION);
        raw.push(self.x);
        raw.extend_from_slice(&self.y);
        let sum = checksum(&raw);
        raw.extend_from_slice(&sum);
        BASE64.encode(raw.as_slice())
    }

    /// Decodes a share written by [`Share::to_text`].
    ///
    /// Whitespace around the text is ignored, since pasted shares often
    /// carry a trailing newline. A share that passes every check below but
    /// is not the one the operator was given is only caught when the
    /// combined secret fails to open the sealed root key.
    ///
    /// # Errors
    ///
    /// In the order the checks run:
    /// [`ShamirError::InvalidBase64`] if the text is not padded standard
    /// base64; [`ShamirError::Truncated`] if it decodes to nothing;
    /// [`ShamirError::UnsupportedVersion`] if the first byte is not
    /// [`SHARE_TEXT_VERSION`]; [`ShamirError::Truncated`] if there is no
    /// room for the x coordinate and the checksum;
    /// [`ShamirError::ChecksumMismatch`] if the checksum is wrong;
    /// [`ShamirError::ZeroX`], [`ShamirError::EmptyShareValue`] and
    /// [`ShamirError::ShareValueTooLong`] for a well-formed text whose share
    /// [`split`] could never have produced.
    pub fn from_text(s: &str) -> Result<Share, ShamirError> {
        let raw = Zeroizing::new(
            BASE64
                .decode(s.trim())
                .map_err(|_| ShamirError::InvalidBase64)?,
        );
        let (&version, _) = raw.split_first().ok_or(ShamirError::Truncated)?;
        // The version is checked before the length because a later version
        // may use a different layout.
        if version != SHARE_TEXT_VERSION {
            return Err(ShamirError::UnsupportedVersion(version));
        }
        let (body, sum) = raw
            .split_last_chunk::<CHECKSUM_LEN>()
            .ok_or(ShamirError::Truncated)?;
        let (&[_version, x], value) = body
            .split_first_chunk::<2>()
            .ok_or(ShamirError::Truncated)?;
        // The checksum is checked before the fields it covers, so that a
        // typo is reported as a typo. It is not secret, but comparing it in
        // constant time costs nothing.
        if !bool::from(checksum(body).as_slice().ct_eq(sum.as_slice())) {
            return Err(ShamirError::ChecksumMismatch);
        }
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if value.is_empty() {
            return Err(ShamirError::EmptyShareValue);
        }
        if value.len() > MAX_SECRET_LEN {
            return Err(ShamirError::ShareValueTooLong(value.len()));
        }
        Ok(Share {
            x,
            y: value.to_vec(),
        })
    }
}

impl core::fmt::Debug for Share {
    /// Prints only the public parts of the share, so that a share that ends
    /// up in a log line or a panic message does not leak its value.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Share")
            .field("x", &self.x)
            .field("len", &self.y.len())
            .finish_non_exhaustive()
    }
}

impl ConstantTimeEq for Share {
    /// Compares two shares without branching on their values; shares of
    /// different lengths compare unequal, which only reveals the public
    /// lengths.
    fn ct_eq(&self, other: &Self) -> Choice {
        self.x.ct_eq(&other.x) & self.y.as_slice().ct_eq(other.y.as_slice())
    }
}

impl PartialEq for Share {
    /// Compares in constant time through [`ConstantTimeEq`].
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.ct_eq(other))
    }
}

impl Eq for Share {}

/// Splits `secret` into `n_shares` shares, any `threshold` of which rebuild
/// it with [`combine`] and fewer of which reveal nothing about it.
///
/// The shares have x coordinates `1..=n_shares` in order; `n_shares` is a
/// `u8`, so there are at most 255 shares, one per nonzero field element.
/// Requires `2 <= threshold <= n_shares` and a secret of 1 to
/// [`MAX_SECRET_LEN`] bytes.
/// Takes `secret.len() * (threshold - 1)` bytes from `rng`.
///
/// # Errors
///
/// [`ShamirError::ThresholdTooSmall`] if `threshold < 2`,
/// [`ShamirError::ThresholdExceedsShares`] if `threshold > n_shares`,
/// [`ShamirError::EmptySecret`] and [`ShamirError::SecretTooLong`] for a
/// secret outside 1 to [`MAX_SECRET_LEN`] bytes. The parameters are checked
/// before any randomness is drawn.
pub fn split(
    secret: &[u8],
    threshold: u8,
    n_shares: u8,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<Share>, ShamirError> {
    if threshold < 2 {
        return Err(ShamirError::ThresholdTooSmall(threshold));
    }
    if threshold > n_shares {
        return Err(ShamirError::ThresholdExceedsShares {
            threshold,
            n_shares,
        });
    }
    if secret.is_empty() {
        return Err(ShamirError::EmptySecret);
    }
    if secret.len() > MAX_SECRET_LEN {
        return Err(ShamirError::SecretTooLong(secret.len()));
    }

    // Each secret byte gets `threshold - 1` random coefficients, stored
    // together as one chunk: chunk `i` holds the coefficients of x^1 up to
    // x^(threshold - 1) of byte `i`'s polynomial.
    //
    // Every coefficient, including the top one, is a full uniform byte and
    // may be zero. Forcing coefficients to be nonzero (the `sharks` crate
    // drew them from 1..=255, RUSTSEC-2024-0398), or only the top one so
    // that the polynomial has degree exactly `threshold - 1`, looks safer
    // but is not: with threshold 2 the share at x is `secret + a*x` with
    // `a != 0`, which can never equal the secret byte, so every share rules
    // out one candidate per byte and shares from repeated splits of the same
    // secret narrow it down. With uniform coefficients, any `threshold - 1`
    // shares are uniformly distributed and independent of the secret. A zero
    // top coefficient only lowers the degree; the secret is still the
    // polynomial's value at 0 and `threshold` shares still determine it.
    //
    // `threshold >= 2` was checked above, so `degree` is at least 1, which
    // `chunks_exact` below needs.
    let degree = usize::from(threshold.saturating_sub(1));
    let mut coefficients = Zeroizing::new(vec![0u8; secret.len().saturating_mul(degree)]);
    rng.fill_bytes(&mut coefficients);

    let mut shares = Vec::with_capacity(usize::from(n_shares));
    for x in 1..=n_shares {
        // Sized up front so the share value is never reallocated, which
        // would leave an unwiped copy on the heap.
        let mut y = Vec::with_capacity(secret.len());
        for (&secret_byte, coeffs) in secret.iter().zip(coefficients.chunks_exact(degree)) {
            y.push(eval_poly(secret_byte, coeffs, x));
        }
        shares.push(Share { x, y });
    }
    Ok(shares)
}

/// Rebuilds the secret from shares made by [`split`], by Lagrange
/// interpolation of every byte's polynomial at x = 0.
///
/// The result is only correct with at least the threshold number of shares
/// from the same split. This function cannot tell: the threshold is not
/// recorded in the shares, and fewer shares, or shares from different
/// splits, yield a well-formed but wrong value without an error. The caller
/// must check the result, for example by opening an AEAD ciphertext sealed
/// under it. Extra shares beyond the threshold do no harm.
///
/// # Errors
///
/// [`ShamirError::NotEnoughShares`] for fewer than 2 shares,
/// [`ShamirError::TooManyShares`] for more than 255,
/// [`ShamirError::ZeroX`] for a share at x = 0,
/// [`ShamirError::EmptyShareValue`] for an empty share value,
/// [`ShamirError::InconsistentLengths`] for values of different lengths and
/// [`ShamirError::DuplicateShare`] for two shares at the same x coordinate.
pub fn combine(shares: &[Share]) -> Result<Zeroizing<Vec<u8>>, ShamirError> {
    if shares.len() < 2 {
        return Err(ShamirError::NotEnoughShares(shares.len()));
    }
    // More than 255 shares must repeat an x coordinate; rejecting them here
    // also bounds the quadratic loops below.
    if shares.len() > usize::from(u8::MAX) {
        return Err(ShamirError::TooManyShares(shares.len()));
    }
    let len = shares.first().map_or(0, |share| share.y.len());
    for (i, share) in shares.iter().enumerate() {
        if share.x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if share.y.is_empty() {
            return Err(ShamirError::EmptyShareValue);
        }
        if share.y.len() != len {
            return Err(ShamirError::InconsistentLengths);
        }
        // The x coordinates are public, so branching on them is fine.
        if shares.iter().take(i).any(|earlier| earlier.x == share.x) {
            return Err(ShamirError::DuplicateShare(share.x));
        }
    }

    let mut secret = Zeroizing::new(vec![0u8; len]);
    for (i, share) in shares.iter().enumerate() {
        // The Lagrange basis polynomial of share i at 0 is
        //   l_i(0) = prod_{j != i} x_j / (x_j - x_i),
        // and subtraction in GF(2^8) is XOR. It depends only on the public
        // x coordinates, so skipping j == i by branching leaks nothing.
        let mut numerator = 1u8;
        let mut denominator = 1u8;
        for (j, other) in shares.iter().enumerate() {
            if i != j {
                numerator = gf_mul(numerator, other.x);
                denominator = gf_mul(denominator, other.x ^ share.x);
            }
        }
        // The x coordinates are distinct and nonzero, so the denominator is
        // nonzero and has an inverse.
        let basis = gf_mul(numerator, gf_inv(denominator));
        for (out, &y) in secret.iter_mut().zip(share.y.iter()) {
            *out ^= gf_mul(basis, y);
        }
    }
    Ok(secret)
}

/// Returns the first [`CHECKSUM_LEN`] bytes of SHA-256 over `data`, the
/// typo check of a text share.
fn checksum(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::digest(data);
    let mut sum = [0u8; CHECKSUM_LEN];
    for (out, byte) in sum.iter_mut().zip(digest.iter()) {
        *out = *byte;
    }
    sum
}

/// Evaluates `constant + coeffs[0] x + coeffs[1] x^2 + ...` at `x` by
/// Horner's rule, in constant time with respect to the coefficients.
fn eval_poly(constant: u8, coeffs: &[u8], x: u8) -> u8 {
    let mut acc = 0u8;
    for &coeff in coeffs.iter().rev() {
        acc = gf_mul(acc, x) ^ coeff;
    }
    gf_mul(acc, x) ^ constant
}

/// Multiplies two elements of GF(2^8) modulo x^8 + x^4 + x^3 + x + 1.
///
/// This is the schoolbook shift-and-add loop made branch-free: each step
/// turns a bit into an all-zeros or all-ones mask instead of testing it, so
/// the running time and memory accesses are the same for every input. A log
/// and exp table would be faster but indexes memory by secret bytes, which
/// leaks them through the cache.
fn gf_mul(a: u8, b: u8) -> u8 {
    let mut a = a;
    let mut b = b;
    let mut product = 0u8;
    for _ in 0..8 {
        // 0xFF when the low bit of b is set, 0x00 otherwise.
        let add_mask = 0u8.wrapping_sub(b & 1);
        product ^= a & add_mask;
        // Multiplying a by x overflows when its top bit is set; reducing
        // then means XOR with the low byte of the polynomial, 0x1B.
        let reduce_mask = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1B & reduce_mask);
        b >>= 1;
    }
    product
}

/// Returns the multiplicative inverse of `a` in GF(2^8), and 0 for 0.
///
/// The multiplicative group has order 255, so a^-1 = a^254. The exponent
/// 254 is `0b1111_1110`, computed by the same fixed chain of 7 squarings and
/// 6 multiplications for every input: a^254 = a^2 a^4 a^8 ... a^128.
fn gf_inv(a: u8) -> u8 {
    let mut square = gf_mul(a, a);
    let mut result = square;
    for _ in 0..6 {
        square = gf_mul(square, square);
        result = gf_mul(result, square);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::{CryptoRng, OsRng, RngCore};

    /// A small deterministic generator (SplitMix64) so that tests which
    /// need reproducible randomness do not depend on another crate. It is
    /// marked `CryptoRng` only because `split` requires it; it is not one.
    struct TestRng(u64);

    impl RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }

        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(8) {
                let bytes = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }

        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    impl CryptoRng for TestRng {}

    /// An all-zero generator: every coefficient it yields is zero.
    struct ZeroRng;

    impl RngCore for ZeroRng {
        fn next_u32(&mut self) -> u32 {
            0
        }

        fn next_u64(&mut self) -> u64 {
            0
        }

        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0);
        }

        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            dest.fill(0);
            Ok(())
        }
    }

    impl CryptoRng for ZeroRng {}

    /// A naive reference field built from log and exp tables with the
    /// generator 3, independent of the constant-time code under test.
    struct RefField {
        exp: [u8; 255],
        log: [u8; 256],
    }

    impl RefField {
        fn new() -> Self {
            let mut exp = [0u8; 255];
            let mut log = [0u8; 256];
            let mut value: u8 = 1;
            for (i, slot) in exp.iter_mut().enumerate() {
                *slot = value;
                log[usize::from(value)] = i as u8;
                // Multiply by the generator 3 = x + 1: value * x + value,
                // reducing by 0x11B when the shift overflows.
                let shifted = (u16::from(value) << 1) ^ u16::from(value);
                let reduced = if shifted & 0x100 != 0 {
                    shifted ^ 0x11B
                } else {
                    shifted
                };
                value = reduced as u8;
            }
            assert_eq!(value, 1, "3 must generate the multiplicative group");
            RefField { exp, log }
        }

        fn mul(&self, a: u8, b: u8) -> u8 {
            if a == 0 || b == 0 {
                return 0;
            }
            let sum = usize::from(self.log[usize::from(a)]) + usize::from(self.log[usize::from(b)]);
            self.exp[sum % 255]
        }

        fn inv(&self, a: u8) -> u8 {
            assert_ne!(a, 0);
            self.exp[(255 - usize::from(self.log[usize::from(a)])) % 255]
        }

        /// Lagrange interpolation at 0 written out in the plainest way.
        fn interpolate(&self, points: &[(u8, u8)]) -> u8 {
            let mut acc = 0u8;
            for (i, &(xi, yi)) in points.iter().enumerate() {
                let mut term = yi;
                for (j, &(xj, _)) in points.iter().enumerate() {
                    if i != j {
                        term = self.mul(term, self.mul(xj, self.inv(xj ^ xi)));
                    }
                }
                acc ^= term;
            }
            acc
        }
    }

    /// Encodes raw fields as a text share with a correct checksum, so tests
    /// can build well-formed texts that carry invalid contents.
    fn encode_raw(version: u8, x: u8, y: &[u8]) -> String {
        let mut raw = vec![version, x];
        raw.extend_from_slice(y);
        let sum = checksum(&raw);
        raw.extend_from_slice(&sum);
        BASE64.encode(raw)
    }

    /// Returns every subset of `items` (as index bitmasks) of size at least
    /// `min`.
    fn subsets(n: usize, min: usize) -> Vec<Vec<usize>> {
        (0u32..(1 << n))
            .filter(|mask| mask.count_ones() as usize >= min)
            .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
            .collect()
    }

    fn pick(shares: &[Share], indices: &[usize]) -> Vec<Share> {
        indices.iter().map(|&i| shares[i].clone()).collect()
    }

    #[test]
    fn mul_matches_reference_for_all_pairs() {
        let reference = RefField::new();
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(gf_mul(a, b), reference.mul(a, b), "{a:#04x} * {b:#04x}");
            }
        }
    }

    #[test]
    fn mul_matches_fips_197_example() {
        // FIPS-197 section 4.2: {57} * {83} = {c1}, and {57} * {13} = {fe}.
        assert_eq!(gf_mul(0x57, 0x83), 0xC1);
        assert_eq!(gf_mul(0x57, 0x13), 0xFE);
    }

    #[test]
    fn mul_matches_vsss_rs_for_all_pairs() {
        // A third, independently written implementation of the same field.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let theirs = vsss_rs::Gf256(a) * vsss_rs::Gf256(b);
                assert_eq!(gf_mul(a, b), theirs.0, "{a:#04x} * {b:#04x}");
            }
        }
    }

    #[test]
    fn vsss_rs_combines_our_shares() {
        // vsss-rs encodes a GF(256) byte share as `x || y`, the same layout
        // as ours, so its combine must rebuild secrets we split.
        let mut rng = TestRng(99);
        for (threshold, n_shares) in [(2u8, 2u8), (2, 5), (3, 5), (5, 9), (16, 20)] {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            let shares = split(&secret, threshold, n_shares, &mut rng).unwrap();
            let theirs: Vec<Vec<u8>> = shares
                .iter()
                .rev()
                .take(usize::from(threshold))
                .map(|share| {
                    let mut bytes = vec![share.x];
                    bytes.extend_from_slice(&share.y);
                    bytes
                })
                .collect();
            let combined = vsss_rs::Gf256::combine_bytes(&theirs).unwrap();
            assert_eq!(combined, secret, "({threshold}, {n_shares})");
        }
    }

    #[test]
    fn inverse_is_correct_for_every_element() {
        let reference = RefField::new();
        assert_eq!(gf_inv(0), 0);
        for a in 1..=255u8 {
            let inv = gf_inv(a);
            assert_eq!(gf_mul(a, inv), 1, "inverse of {a:#04x}");
            assert_eq!(inv, reference.inv(a), "inverse of {a:#04x}");
        }
    }

    #[test]
    fn every_threshold_subset_reconstructs() {
        for (threshold, n_shares) in [(2u8, 2u8), (2, 3), (3, 5), (5, 5), (4, 7)] {
            let mut secret = [0u8; 32];
            OsRng.fill_bytes(&mut secret);
            let shares = split(&secret, threshold, n_shares, &mut OsRng).unwrap();
            assert_eq!(shares.len(), usize::from(n_shares));
            for (i, share) in shares.iter().enumerate() {
                assert_eq!(usize::from(share.x()), i + 1);
                assert_eq!(share.value_len(), secret.len());
            }
            for subset in subsets(usize::from(n_shares), usize::from(threshold)) {
                let combined = combine(&pick(&shares, &subset)).unwrap();
                assert_eq!(
                    combined.as_slice(),
                    secret.as_slice(),
                    "({threshold}, {n_shares}) subset {subset:?}"
                );
            }
        }
    }

    #[test]
    fn order_of_shares_does_not_matter() {
        let secret = b"order does not matter";
        let shares = split(secret, 3, 5, &mut OsRng).unwrap();
        let picked = pick(&shares, &[4, 0, 2]);
        assert_eq!(combine(&picked).unwrap().as_slice(), secret);
    }

    #[test]
    fn largest_parameters_reconstruct() {
        let secret = b"tiny";
        let shares = split(secret, 255, 255, &mut OsRng).unwrap();
        assert_eq!(shares.len(), 255);
        assert_eq!(shares.last().map(Share::x), Some(255));
        assert_eq!(combine(&shares).unwrap().as_slice(), secret);
        assert_ne!(combine(&shares[1..]).unwrap().as_slice(), secret);

        let shares = split(secret, 2, 255, &mut OsRng).unwrap();
        assert_eq!(
            combine(&pick(&shares, &[17, 254])).unwrap().as_slice(),
            secret
        );
    }

    #[test]
    fn secret_length_limits() {
        let one = [0xA5u8];
        let shares = split(&one, 2, 3, &mut OsRng).unwrap();
        assert_eq!(combine(&shares[1..]).unwrap().as_slice(), one);

        let longest = [0x5Au8; MAX_SECRET_LEN];
        let shares = split(&longest, 2, 3, &mut OsRng).unwrap();
        assert_eq!(combine(&shares[..2]).unwrap().as_slice(), longest);
        let text = shares[0].to_text();
        assert_eq!(Share::from_text(&text).unwrap(), shares[0]);

        assert_eq!(
            split(&[0u8; MAX_SECRET_LEN + 1], 2, 3, &mut OsRng).unwrap_err(),
            ShamirError::SecretTooLong(MAX_SECRET_LEN + 1)
        );
        assert_eq!(
            split(&[], 2, 3, &mut OsRng).unwrap_err(),
            ShamirError::EmptySecret
        );
    }

    #[test]
    fn split_rejects_bad_thresholds() {
        let secret = [1u8; 32];
        for threshold in [0u8, 1] {
            assert_eq!(
                split(&secret, threshold, 5, &mut OsRng).unwrap_err(),
                ShamirError::ThresholdTooSmall(threshold)
            );
        }
        assert_eq!(
            split(&secret, 4, 3, &mut OsRng).unwrap_err(),
            ShamirError::ThresholdExceedsShares {
                threshold: 4,
                n_shares: 3
            }
        );
        assert_eq!(
            split(&secret, 2, 0, &mut OsRng).unwrap_err(),
            ShamirError::ThresholdExceedsShares {
                threshold: 2,
                n_shares: 0
            }
        );
        assert_eq!(
            split(&secret, 1, 1, &mut OsRng).unwrap_err(),
            ShamirError::ThresholdTooSmall(1)
        );
    }

    #[test]
    fn fewer_than_threshold_shares_give_a_wrong_secret() {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let shares = split(&secret, 3, 5, &mut OsRng).unwrap();
        // With 32 random bytes the chance that two shares happen to
        // interpolate to the secret is 2^-256.
        for subset in subsets(5, 2).into_iter().filter(|s| s.len() == 2) {
            let combined = combine(&pick(&shares, &subset)).unwrap();
            assert_ne!(combined.as_slice(), secret.as_slice(), "subset {subset:?}");
        }
    }

    #[test]
    fn modified_share_changes_only_its_byte() {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let shares = split(&secret, 3, 5, &mut OsRng).unwrap();
        let mut picked = pick(&shares, &[0, 2, 4]);
        picked[1].y[7] ^= 0x01;
        let combined = combine(&picked).unwrap();
        assert_ne!(combined.as_slice(), secret.as_slice());
        for (i, (got, want)) in combined.iter().zip(secret.iter()).enumerate() {
            assert_eq!(got == want, i != 7, "byte {i}");
        }
    }

    #[test]
    fn zero_coefficients_are_not_rejected() {
        // An all-zero generator gives the constant polynomial: every share
        // equals the secret. Seeing that proves the coefficients are used
        // as drawn, without the rejection of a zero top coefficient that
        // biased `sharks` (RUSTSEC-2024-0398).
        let secret = b"constant";
        let shares = split(secret, 3, 4, &mut ZeroRng).unwrap();
        for share in &shares {
            assert_eq!(share.y.as_slice(), secret);
        }
        assert_eq!(combine(&shares[..3]).unwrap().as_slice(), secret);
    }

    #[test]
    fn split_matches_reference_evaluation() {
        // The coefficients are drawn in one block, byte after byte, so a
        // copy of the same stream lets the reference field evaluate the
        // polynomials independently.
        let reference = RefField::new();
        let secret = b"reference evaluation check 0123";
        let (threshold, n_shares) = (4u8, 6u8);
        let shares = split(secret, threshold, n_shares, &mut TestRng(42)).unwrap();
        let degree = usize::from(threshold - 1);
        let mut coefficients = vec![0u8; secret.len() * degree];
        TestRng(42).fill_bytes(&mut coefficients);
        for share in &shares {
            for (i, &secret_byte) in secret.iter().enumerate() {
                let mut value = secret_byte;
                let mut power = 1u8;
                for &coeff in &coefficients[i * degree..(i + 1) * degree] {
                    power = reference.mul(power, share.x);
                    value ^= reference.mul(coeff, power);
                }
                assert_eq!(share.y[i], value, "share {} byte {i}", share.x);
            }
        }
    }

    #[test]
    fn combine_matches_reference_interpolation() {
        let reference = RefField::new();
        let mut rng = TestRng(7);
        for _ in 0..50 {
            // Random, unrelated shares: combine must still agree with the
            // plain interpolation formula on them.
            let count = 2 + (rng.next_u32() % 8) as usize;
            let mut xs: Vec<u8> = (1..=255).collect();
            let mut shares = Vec::new();
            for i in 0..count {
                let j = i + (rng.next_u32() as usize % (xs.len() - i));
                xs.swap(i, j);
                let mut y = vec![0u8; 16];
                rng.fill_bytes(&mut y);
                shares.push(Share { x: xs[i], y });
            }
            let combined = combine(&shares).unwrap();
            for (b, &got) in combined.iter().enumerate() {
                let points: Vec<(u8, u8)> = shares.iter().map(|s| (s.x, s.y[b])).collect();
                assert_eq!(got, reference.interpolate(&points));
            }
        }
    }

    #[test]
    fn combine_rejects_bad_share_sets() {
        let shares = split(&[9u8; 16], 2, 3, &mut OsRng).unwrap();

        assert_eq!(combine(&[]).unwrap_err(), ShamirError::NotEnoughShares(0));
        assert_eq!(
            combine(&shares[..1]).unwrap_err(),
            ShamirError::NotEnoughShares(1)
        );

        let duplicate = pick(&shares, &[0, 1, 0]);
        assert_eq!(
            combine(&duplicate).unwrap_err(),
            ShamirError::DuplicateShare(1)
        );

        let mut zero_x = pick(&shares, &[0, 1]);
        zero_x[1].x = 0;
        assert_eq!(combine(&zero_x).unwrap_err(), ShamirError::ZeroX);

        let mut uneven = pick(&shares, &[0, 1]);
        uneven[1].y.push(0);
        assert_eq!(
            combine(&uneven).unwrap_err(),
            ShamirError::InconsistentLengths
        );

        let empty = vec![Share { x: 1, y: vec![] }, Share { x: 2, y: vec![] }];
        assert_eq!(combine(&empty).unwrap_err(), ShamirError::EmptyShareValue);

        let many: Vec<Share> = (0..256)
            .map(|i| Share {
                x: (i % 255 + 1) as u8,
                y: vec![0],
            })
            .collect();
        assert_eq!(combine(&many).unwrap_err(), ShamirError::TooManyShares(256));
    }

    #[test]
    fn text_round_trip() {
        let shares = split(&[0x42u8; 32], 3, 5, &mut OsRng).unwrap();
        for share in &shares {
            let text = share.to_text();
            assert_eq!(Share::from_text(&text).unwrap(), *share);
            // Surrounding whitespace from a paste is accepted.
            assert_eq!(Share::from_text(&format!("  {text}\n")).unwrap(), *share);
        }
        let decoded: Vec<Share> = shares
            .iter()
            .map(|s| Share::from_text(&s.to_text()).unwrap())
            .collect();
        assert_eq!(combine(&decoded[2..]).unwrap().as_slice(), [0x42u8; 32]);
    }

    #[test]
    fn text_format_is_stable() {
        let share = Share {
            x: 3,
            y: vec![0x00, 0x01, 0xFF],
        };
        let text = share.to_text();
        let raw = BASE64.decode(&text).unwrap();
        assert_eq!(&raw[..5], &[0x01, 0x03, 0x00, 0x01, 0xFF]);
        let digest = Sha256::digest([0x01, 0x03, 0x00, 0x01, 0xFF]);
        assert_eq!(&raw[5..], &digest[..4]);
        assert_eq!(text, encode_raw(1, 3, &[0x00, 0x01, 0xFF]));
    }

    #[test]
    fn from_text_reports_each_error() {
        assert_eq!(
            Share::from_text("not base64!").unwrap_err(),
            ShamirError::InvalidBase64
        );
        // Unpadded base64 is rejected too: the format is padded.
        let padded = encode_raw(1, 1, &[1, 2, 3, 4]);
        assert!(padded.ends_with('='));
        assert_eq!(
            Share::from_text(padded.trim_end_matches('=')).unwrap_err(),
            ShamirError::InvalidBase64
        );
        assert_eq!(Share::from_text("").unwrap_err(), ShamirError::Truncated);
        assert_eq!(
            Share::from_text(&BASE64.encode([1u8, 1, 0, 0, 0])).unwrap_err(),
            ShamirError::Truncated
        );
        assert_eq!(
            Share::from_text(&encode_raw(2, 1, &[1, 2, 3])).unwrap_err(),
            ShamirError::UnsupportedVersion(2)
        );
        assert_eq!(
            Share::from_text(&encode_raw(1, 0, &[1, 2, 3])).unwrap_err(),
            ShamirError::ZeroX
        );
        assert_eq!(
            Share::from_text(&encode_raw(1, 1, &[])).unwrap_err(),
            ShamirError::EmptyShareValue
        );
        assert_eq!(
            Share::from_text(&encode_raw(1, 1, &[7u8; MAX_SECRET_LEN + 1])).unwrap_err(),
            ShamirError::ShareValueTooLong(MAX_SECRET_LEN + 1)
        );
        let mut raw = BASE64.decode(encode_raw(1, 1, &[1, 2, 3])).unwrap();
        raw[3] ^= 0x10;
        assert_eq!(
            Share::from_text(&BASE64.encode(&raw)).unwrap_err(),
            ShamirError::ChecksumMismatch
        );
    }

    #[test]
    fn every_single_character_typo_is_detected() {
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let shares = split(&[0x33u8; 32], 2, 2, &mut TestRng(1)).unwrap();
        let text = shares[0].to_text();
        for (pos, original) in text.char_indices() {
            for replacement in ALPHABET.chars().filter(|&c| c != original) {
                let mut typo = text.clone();
                typo.replace_range(pos..pos + 1, &replacement.to_string());
                assert!(
                    Share::from_text(&typo).is_err(),
                    "typo at {pos}: {original} -> {replacement}"
                );
            }
        }
    }

    #[test]
    fn debug_and_errors_do_not_leak_the_value() {
        let share = Share {
            x: 5,
            y: vec![0xDE, 0xAD, 0xBE, 0xEF],
        };
        assert_eq!(format!("{share:?}"), "Share { x: 5, len: 4, .. }");
        assert_eq!(format!("{share:#?}").matches("222").count(), 0);
        let message = ShamirError::ChecksumMismatch.to_string();
        assert!(!message.is_empty());
    }

    #[test]
    fn zeroize_wipes_the_share() {
        let mut share = Share {
            x: 5,
            y: vec![1, 2, 3],
        };
        share.zeroize();
        assert_eq!(share.x, 0);
        assert!(share.y.is_empty());
    }

    #[test]
    fn share_equality() {
        let a = Share {
            x: 1,
            y: vec![1, 2],
        };
        assert_eq!(a, a.clone());
        assert_ne!(
            a,
            Share {
                x: 2,
                y: vec![1, 2]
            }
        );
        assert_ne!(
            a,
            Share {
                x: 1,
                y: vec![1, 3]
            }
        );
        assert_ne!(a, Share { x: 1, y: vec![1] });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_split_and_combine(
            secret in proptest::collection::vec(any::<u8>(), 1..=MAX_SECRET_LEN),
            n_shares in 2u8..=12,
            threshold_seed in any::<u8>(),
            rng_seed in any::<u64>(),
            order_seed in any::<u64>(),
        ) {
            let threshold = 2 + threshold_seed % (n_shares - 1);
            let shares = split(&secret, threshold, n_shares, &mut TestRng(rng_seed)).unwrap();
            prop_assert_eq!(shares.len(), usize::from(n_shares));

            // Shuffle with a second seed and take the first `threshold`.
            let mut order: Vec<usize> = (0..usize::from(n_shares)).collect();
            let mut shuffle = TestRng(order_seed);
            for i in (1..order.len()).rev() {
                let j = shuffle.next_u32() as usize % (i + 1);
                order.swap(i, j);
            }
            let picked = pick(&shares, &order[..usize::from(threshold)]);
            let combined = combine(&picked).unwrap();
            prop_assert_eq!(combined.as_slice(), secret.as_slice());

            // Text encoding survives the trip.
            let decoded: Vec<Share> = picked
                .iter()
                .map(|s| Share::from_text(&s.to_text()).unwrap())
                .collect();
            let combined = combine(&decoded).unwrap();
            prop_assert_eq!(combined.as_slice(), secret.as_slice());

            // One share too few gives something else, except with
            // probability 2^-(8 * len), so only check long secrets.
            if secret.len() >= 16 {
                let short = &picked[..usize::from(threshold) - 1];
                if short.len() >= 2 {
                    let combined = combine(short).unwrap();
                    prop_assert_ne!(combined.as_slice(), secret.as_slice());
                }
            }
        }
    }
}
