//! # TOTP for approver MFA
//!
//! RFC 6238 time-based one-time passwords with the parameters every
//! authenticator app supports: HMAC-SHA-1, 6 digits, 30-second steps from the
//! Unix epoch. The module is pure: the time is passed in.
//!
//! [`TotpSecret::verify`] accepts the code of the current step and of one
//! step either side (clock skew), compares in constant time and returns the
//! matched time step, so that callers can store the last step used by an
//! account and refuse a code for the same (or an earlier) step again.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::fmt;

use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Length of a generated secret, in bytes (RFC 4226 recommends 160 bits).
pub const SECRET_LEN: usize = 20;
/// Length of a time step, in seconds.
pub const STEP_SECONDS: i64 = 30;
/// Number of digits of a code.
pub const DIGITS: usize = 6;
/// Steps of clock skew accepted either side of the current step.
pub const SKEW_STEPS: i64 = 1;

const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A TOTP secret (normally [`SECRET_LEN`] random bytes). `Debug` is redacted
/// and the bytes are overwritten on drop.
pub struct TotpSecret(Vec<u8>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl Drop for TotpSecret {
    fn drop(&mut self) {
        for byte in self.0.iter_mut() {
            *byte = 0;
        }
        // Keep the stores from being optimised away as dead.
        std::hint::black_box(&mut self.0);
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl TotpSecret {
    /// A fresh random secret of [`SECRET_LEN`] bytes from the OS RNG.
    pub fn generate() -> TotpSecret {
        let mut bytes = vec![0u8; SECRET_LEN];
        OsRng.fill_bytes(&mut bytes);
        TotpSecret(bytes)
    }

    /// Wraps existing secret bytes (e.g. decrypted from storage).
    pub fn from_bytes(bytes: Vec<u8>) -> TotpSecret {
        TotpSecret(bytes)
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// RFC 4648 base32 of the secret: uppercase, no padding, as authenticator
    /// apps expect.
    pub fn to_base32(&self) -> String {
        base32_encode(&self.0)
    }

    /// The `otpauth://` URI for enrolment (usually shown as a QR code):
    /// `otpauth://totp/{issuer}:{account}?secret=..&issuer=..&algorithm=SHA1&digits=6&period=30`,
    /// with issuer and account percent-encoded.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let issuer = percent_encode(issuer);
        format!(
            "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
            account = percent_encode(account),
            secret = self.to_base32(),
        )
    }

    /// The 6-digit code for a unix time.
    pub fn code_at(&self, unix_seconds: i64) -> String {
        self.code_for_step(time_step(unix_seconds))
            .unwrap_or_default()
    }

    /// Checks a code with ±1 step of clock skew, comparing in constant time.
    /// Returns the matched time step (so callers can refuse reuse of the same
    /// step) or `None`. Codes that are not exactly 6 ASCII digits are refused.
    pub fn verify(&self, code: &str, unix_seconds: i64) -> Option<i64> {
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let current = time_step(unix_seconds);
        let mut matched = None;
        // Every candidate is computed and compared; the earliest match wins so
        // that a replayed code maps to the step it was first used for.
        for offset in -SKEW_STEPS..=SKEW_STEPS {
            let Some(step) = current.checked_add(offset) else {
                continue;
            };
            let Some(expected) = self.code_for_step(step) else {
                continue;
            };
            let equal: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
            if equal && matched.is_none() {
                matched = Some(step);
            }
        }
        matched
    }

    /// RFC 4226 HOTP value for a counter, as a zero-padded 6-digit string.
    fn code_for_step(&self, step: i64) -> Option<String> {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(&self.0).ok()?;
        // Steps before the epoch wrap around like the RFC's unsigned counter.
        mac.update(&step.to_be_bytes());
        let hash = mac.finalize().into_bytes();
        // Dynamic truncation (RFC 4226 section 5.3).
        let offset = usize::from(hash.last()? & 0x0f);
        let window: [u8; 4] = hash.get(offset..offset + 4)?.try_into().ok()?;
        let binary = u32::from_be_bytes(window) & 0x7fff_ffff;
        Some(format!("{:06}", binary % 1_000_000))
    }
}

/// The RFC 6238 time step of a Unix time (floor division by 30 seconds).
fn time_step(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(STEP_SECONDS)
}

fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits: u32 = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            push_base32(&mut out, (buffer >> bits) & 0x1f);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        push_base32(&mut out, (buffer << (5 - bits)) & 0x1f);
    }
    out
}

fn push_base32(out: &mut String, index: u32) {
    if let Some(&c) = usize::try_from(index)
        .ok()
        .and_then(|i| BASE32_ALPHABET.get(i))
    {
        out.push(char::from(c));
    }
}

/// Decodes RFC 4648 base32. Letters may be upper or lower case; `=` padding
/// is accepted at the end (then the text must be a multiple of 8 characters)
/// but not required. Returns `None` for other characters, impossible lengths
/// or non-zero trailing bits.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let data = text.trim_end_matches('=');
    if data.len() != text.len() && !text.len().is_multiple_of(8) {
        return None;
    }
    // 1, 3 and 6 trailing characters cannot come from whole bytes.
    if matches!(data.len() % 8, 1 | 3 | 6) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits: u32 = 0;
    for c in data.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
            buffer &= (1 << bits) - 1;
        }
    }
    // Leftover bits are padding and must be zero (canonical encoding).
    (buffer == 0).then_some(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
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

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890".to_vec())
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 Appendix B (SHA-1), 8-digit values truncated to 6 digits.
        let vectors: [(i64, &str, &str); 6] = [
            (59, "94287082", "287082"),
            (1_111_111_109, "07081804", "081804"),
            (1_111_111_111, "14050471", "050471"),
            (1_234_567_890, "89005924", "005924"),
            (2_000_000_000, "69279037", "279037"),
            (20_000_000_000, "65353130", "353130"),
        ];
        let secret = rfc_secret();
        for (t, eight, six) in vectors {
            assert_eq!(&eight[2..], six);
            assert_eq!(secret.code_at(t), six, "T = {t}");
            assert_eq!(secret.verify(six, t), Some(t / 30), "T = {t}");
        }
    }

    #[test]
    fn skew_window() {
        let secret = rfc_secret();
        let t = 1_111_111_111; // step 37037037 starts at 1111111110
        let step = t / 30;
        let code = secret.code_at(t);
        assert_eq!(secret.verify(&code, t), Some(step));
        // Same step, any second within it.
        assert_eq!(secret.verify(&code, step * 30), Some(step));
        assert_eq!(secret.verify(&code, step * 30 + 29), Some(step));
        // One step either side of the verifier's clock is accepted.
        assert_eq!(secret.verify(&code, t + 30), Some(step));
        assert_eq!(secret.verify(&code, t - 30), Some(step));
        assert_eq!(secret.verify(&code, step * 30 + 59), Some(step));
        assert_eq!(secret.verify(&code, step * 30 - 30), Some(step));
        // Two steps away is refused.
        assert_eq!(secret.verify(&code, t + 60), None);
        assert_eq!(secret.verify(&code, t - 60), None);
        assert_eq!(secret.verify(&code, step * 30 + 60), None);
        assert_eq!(secret.verify(&code, step * 30 - 31), None);
        // The returned step is that of the code, not of the clock.
        let next = secret.code_at(t + 30);
        assert_eq!(secret.verify(&next, t), Some(step + 1));
        let previous = secret.code_at(t - 30);
        assert_eq!(secret.verify(&previous, t), Some(step - 1));
    }

    #[test]
    fn malformed_codes_refused() {
        let secret = rfc_secret();
        let t = 59;
        assert_eq!(secret.code_at(t), "287082");
        for bad in [
            "",
            "28708",
            "2870820",
            "94287082",
            "28708a",
            "287 82",
            " 287082",
            "287082 ",
            "+87082",
            "-87082",
            "２８７０８２",
            "287082\n",
        ] {
            assert_eq!(secret.verify(bad, t), None, "accepted {bad:?}");
        }
        // A wrong 6-digit code.
        assert_eq!(secret.verify("287083", t), None);
    }

    #[test]
    fn generated_secrets() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_eq!(a.as_bytes().len(), SECRET_LEN);
        assert_ne!(a.as_bytes(), b.as_bytes());
        let code = a.code_at(1_700_000_000);
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(a.verify(&code, 1_700_000_000), Some(1_700_000_000 / 30));
        assert_eq!(a.to_base32().len(), 32);
        assert_eq!(base32_decode(&a.to_base32()).unwrap(), a.as_bytes());
        // Times before the epoch still produce codes.
        assert_eq!(a.code_at(-1).len(), 6);
        assert_eq!(a.verify(&a.code_at(-1), -1), Some(-1));
    }

    #[test]
    fn base32_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, encoded) in vectors {
            let secret = TotpSecret::from_bytes(plain.as_bytes().to_vec());
            assert_eq!(secret.to_base32(), encoded);
            assert_eq!(base32_decode(encoded).unwrap(), plain.as_bytes());
            assert_eq!(
                base32_decode(&encoded.to_lowercase()).unwrap(),
                plain.as_bytes()
            );
        }
        // With padding, as printed in RFC 4648.
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert_eq!(base32_decode("MY======").unwrap(), b"f");
        assert_eq!(rfc_secret().to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        // Refused: bad characters, impossible lengths, bad padding, non-zero
        // trailing bits.
        for bad in [
            "MZXW6YTBO1",
            "MZX",
            "M",
            "MZXW6Y",
            "MY=",
            "M=Y",
            "MZ",
            "MZXW6YTBOI==",
        ] {
            assert_eq!(base32_decode(bad), None, "accepted {bad:?}");
        }
        // Round trip of every length up to 64 bytes.
        for len in 0..64u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
            let encoded = TotpSecret::from_bytes(bytes.clone()).to_base32();
            assert!(!encoded.contains('='));
            assert_eq!(base32_decode(&encoded).unwrap(), bytes);
        }
    }

    #[test]
    fn otpauth_uri() {
        let uri = rfc_secret().otpauth_uri("Custos", "alice@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/Custos:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Custos&algorithm=SHA1&digits=6&period=30"
        );
        let uri = rfc_secret().otpauth_uri("Acme Corp: Vault", "bob/ops&x=1");
        assert!(uri.starts_with("otpauth://totp/Acme%20Corp%3A%20Vault:bob%2Fops%26x%3D1?secret="));
        assert!(uri.contains("&issuer=Acme%20Corp%3A%20Vault&"));
        assert!(uri.ends_with("&algorithm=SHA1&digits=6&period=30"));
        assert_eq!(percent_encode("é~"), "%C3%A9~");
    }

    #[test]
    fn debug_is_redacted() {
        let secret = rfc_secret();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "TotpSecret(<redacted>)");
        assert!(!debug.contains("1234"));
        assert!(!debug.contains("GEZDGNBV"));
        assert!(!format!("{secret:#?}").contains("1234"));
    }
}
