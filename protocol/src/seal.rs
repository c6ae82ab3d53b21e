//! Sealing of shares at rest: AES-256-GCM under a caller-supplied key.
//!
//! Sealed layout: `version (1 byte) || nonce (12 bytes) || ciphertext || tag
//! (16 bytes)`. The associated data binds the ciphertext to what it is
//! (share, aux info or prime pool), the wallet, the holder, the key
//! generation and the format version, so a sealed blob moved to another
//! wallet, party, generation or purpose fails to open instead of loading.
//!
//! Nonces are random (96 bits). The signer node seals each share under its
//! own data key (wrapped by the node master key), so one key seals a handful
//! of values, far below the 2^32 random-nonce bound of GCM.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ids::{KeyGeneration, PartyId, WalletId};
use crate::Error;

/// The sealed format this build writes and reads.
pub const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A 256-bit sealing key. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SealingKey([u8; 32]);

impl SealingKey {
    /// Wraps key bytes (for instance unwrapped from an HSM).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key bytes, for wrapping under a master key.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

/// What a sealed blob holds. Codes are part of the associated data: never
/// renumber one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SealedKind {
    /// A [`crate::share::KeyShare`].
    KeyShare = 1,
    /// A [`crate::share::AuxInfo`].
    AuxInfo = 2,
    /// A [`crate::primes::PrimePool`].
    PrimePool = 3,
    /// A node's own record (job results, replay records); its name is bound
    /// by the wrap context of its data key.
    NodeRecord = 4,
}

/// The context a sealed blob is bound to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SealContext {
    /// What the blob holds.
    pub kind: SealedKind,
    /// The wallet (all-zero for per-committee or per-node data).
    pub wallet: WalletId,
    /// The holder.
    pub party: PartyId,
    /// The key generation (0 where it does not apply).
    pub generation: KeyGeneration,
}

impl SealContext {
    fn associated_data(&self, version: u8) -> Vec<u8> {
        const DOMAIN: &[u8] = b"custos/sealed/v1";
        let mut aad = Vec::with_capacity(DOMAIN.len() + 1 + 1 + 16 + 32 + 4);
        aad.extend_from_slice(DOMAIN);
        aad.push(version);
        aad.push(self.kind as u8);
        aad.extend_from_slice(&self.wallet.0);
        aad.extend_from_slice(&self.party.0);
        aad.extend_from_slice(&self.generation.0.to_be_bytes());
        aad
    }
}

/// Encrypts `plaintext` under `key`, bound to `context`.
pub fn seal(
    key: &SealingKey,
    context: &SealContext,
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new((&key.0).into());
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &context.associated_data(SEAL_VERSION),
            },
        )
        .map_err(|_| Error::Sealing("encryption failed"))?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    sealed.push(SEAL_VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// Decrypts a blob from [`seal`]. Any change to the blob, the key or the
/// context gives [`Error::Sealing`]; the error does not say which.
pub fn open(
    key: &SealingKey,
    context: &SealContext,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let (&version, rest) = sealed
        .split_first()
        .ok_or(Error::Sealing("sealed blob is empty"))?;
    if version != SEAL_VERSION {
        return Err(Error::Sealing("unsupported sealed format version"));
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::Sealing("sealed blob is truncated"));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new((&key.0).into());
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &context.associated_data(version),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| Error::Sealing("sealed blob does not open under this key and context"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn context() -> SealContext {
        SealContext {
            kind: SealedKind::KeyShare,
            wallet: WalletId([1; 16]),
            party: PartyId([2; 32]),
            generation: KeyGeneration(3),
        }
    }

    #[test]
    fn sealed_share_opens_with_same_key_and_context() {
        let key = SealingKey::generate(&mut OsRng);
        let sealed = seal(&key, &context(), b"share bytes", &mut OsRng).unwrap();
        assert_eq!(
            open(&key, &context(), &sealed).unwrap().as_slice(),
            b"share bytes"
        );
        assert!(!sealed.windows(11).any(|window| window == b"share bytes"));
    }

    #[test]
    fn sealed_share_refuses_any_other_context_or_key() {
        let key = SealingKey::generate(&mut OsRng);
        let sealed = seal(&key, &context(), b"share bytes", &mut OsRng).unwrap();
        let others = [
            SealContext {
                kind: SealedKind::AuxInfo,
                ..context()
            },
            SealContext {
                wallet: WalletId([9; 16]),
                ..context()
            },
            SealContext {
                party: PartyId([9; 32]),
                ..context()
            },
            SealContext {
                generation: KeyGeneration(4),
                ..context()
            },
        ];
        for other in others {
            assert!(open(&key, &other, &sealed).is_err(), "{other:?}");
        }
        let other_key = SealingKey::generate(&mut OsRng);
        assert!(open(&other_key, &context(), &sealed).is_err());
    }

    #[test]
    fn tampered_or_truncated_blobs_are_refused() {
        let key = SealingKey::generate(&mut OsRng);
        let sealed = seal(&key, &context(), b"share bytes", &mut OsRng).unwrap();
        for position in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[position] ^= 0x01;
            assert!(
                open(&key, &context(), &tampered).is_err(),
                "bit flip at {position}"
            );
        }
        for len in 0..sealed.len() {
            assert!(
                open(&key, &context(), &sealed[..len]).is_err(),
                "prefix {len}"
            );
        }
    }

    #[test]
    fn nonces_are_fresh() {
        let key = SealingKey::generate(&mut OsRng);
        let a = seal(&key, &context(), b"x", &mut OsRng).unwrap();
        let b = seal(&key, &context(), b"x", &mut OsRng).unwrap();
        assert_ne!(a[1..13], b[1..13]);
    }

    #[test]
    fn sealing_key_debug_is_redacted() {
        let key = SealingKey::from_bytes([0xAB; 32]);
        let printed = format!("{key:?}");
        assert!(!printed.to_lowercase().contains("ab, ") && !printed.contains("171"));
        assert_eq!(printed, "SealingKey(<redacted>)");
    }
}
