//! Key shares and aux info as Custos stores them: the library's validated
//! share plus the wallet, committee and generation it belongs to.
//!
//! One DKG output serves every scheme of its curve: a secp256k1 share signs
//! ECDSA (with [`AuxInfo`] of its committee) and BIP-340/Taproot; an
//! edwards25519 share signs Ed25519. Resharing produces the same type.
//!
//! Secret material: the share's secret scalar is a `generic_ec::SecretScalar`,
//! which zeroizes on drop; Paillier primes in [`AuxInfo`] are GMP integers,
//! which GMP does not wipe (a limit of cggmp21 0.6, see ARCHITECTURE.md).
//! `Debug` never prints either. Serialised bytes ([`KeyShare::to_bytes`]) are
//! plaintext secrets: seal them ([`crate::seal`]) before they touch a disk.

use std::fmt;

use generic_ec::{Curve, NonZero, Point};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ids::{Committee, KeyGeneration, PartyId, ProtocolKind, WalletId};
use crate::{Error, Secp256k1, SecurityLevel};

/// The curves a Custos key can live on, with their protocol kinds.
pub trait KeyCurve: Curve {
    /// Name for logs and errors.
    const NAME: &'static str;
    /// Protocol kind of a DKG on this curve.
    const KEYGEN: ProtocolKind;
    /// Protocol kind of a resharing on this curve.
    const RESHARE: ProtocolKind;
    /// Non-hardened HD derivation: BIP-32 (SLIP-10) on secp256k1, the
    /// `hd-wallet` crate's Edwards scheme on edwards25519.
    type Hd: hd_wallet::HdWallet<Self>;
}

impl KeyCurve for generic_ec::curves::Secp256k1 {
    const NAME: &'static str = "secp256k1";
    const KEYGEN: ProtocolKind = ProtocolKind::KeygenSecp256k1;
    const RESHARE: ProtocolKind = ProtocolKind::ReshareSecp256k1;
    type Hd = hd_wallet::Slip10;
}

impl KeyCurve for generic_ec::curves::Ed25519 {
    const NAME: &'static str = "ed25519";
    const KEYGEN: ProtocolKind = ProtocolKind::KeygenEd25519;
    const RESHARE: ProtocolKind = ProtocolKind::ReshareEd25519;
    type Hd = hd_wallet::Edwards;
}

/// One party's share of a wallet key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct KeyShare<E: KeyCurve> {
    /// The wallet the key belongs to.
    pub wallet: WalletId,
    /// Which dealing of the key this share is from.
    pub generation: KeyGeneration,
    /// The holders of this generation, in keygen-index order.
    pub committee: Committee,
    /// The library's validated share: index, public data, secret scalar.
    pub(crate) core: cggmp21::IncompleteKeyShare<E>,
}

impl<E: KeyCurve> KeyShare<E> {
    /// Wraps a validated library share. Checks that the committee matches
    /// the share's number of parties.
    pub(crate) fn new(
        wallet: WalletId,
        generation: KeyGeneration,
        committee: Committee,
        core: cggmp21::IncompleteKeyShare<E>,
    ) -> Result<Self, Error> {
        if core.public_shares.len() != committee.members().len() {
            return Err(Error::InvalidArgument(
                "key share and committee disagree on the number of parties",
            ));
        }
        Ok(Self {
            wallet,
            generation,
            committee,
            core,
        })
    }

    /// This holder's keygen index.
    pub fn index(&self) -> u16 {
        self.core.i
    }

    /// This holder's identity.
    pub fn holder(&self) -> Option<PartyId> {
        self.committee.member(self.core.i)
    }

    /// Signers needed to sign.
    pub fn threshold(&self) -> u16 {
        self.core.min_signers()
    }

    /// The wallet's public key (the root of HD derivation).
    pub fn public_key(&self) -> NonZero<Point<E>> {
        self.core.shared_public_key
    }

    /// The public key of every holder, in keygen-index order.
    pub fn public_shares(&self) -> &[NonZero<Point<E>>] {
        &self.core.public_shares
    }

    /// The HD chain code (every Custos key has one).
    pub fn chain_code(&self) -> Option<[u8; 32]> {
        self.core.chain_code
    }

    /// The public key at a non-hardened derivation path (empty: the root).
    pub fn derive_public_key(&self, path: &[u32]) -> Result<NonZero<Point<E>>, Error> {
        derive_public_key(&self.core.key_info, path)
    }

    /// The public part of the key: what a new holder must learn, from an
    /// authenticated source, to join a resharing.
    pub fn public_info(&self) -> PublicKeyInfo<E> {
        PublicKeyInfo {
            wallet: self.wallet,
            generation: self.generation,
            committee: self.committee.clone(),
            key_info: self.core.key_info.clone(),
        }
    }

    /// Serialises the share, secret included. Seal the result.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        to_secret_bytes(self)
    }

    /// Parses and re-validates a share from [`KeyShare::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let share: Self = from_secret_bytes(bytes)?;
        Self::new(share.wallet, share.generation, share.committee, share.core)
    }
}

impl<E: KeyCurve> fmt::Debug for KeyShare<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyShare")
            .field("curve", &E::NAME)
            .field("wallet", &self.wallet)
            .field("generation", &self.generation)
            .field("index", &self.core.i)
            .field("threshold", &self.threshold())
            .field("n", &self.committee.n())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The public data of a key: shared public key, holders' public shares,
/// threshold setup and chain code.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PublicKeyInfo<E: KeyCurve> {
    /// The wallet.
    pub wallet: WalletId,
    /// The generation this data describes.
    pub generation: KeyGeneration,
    /// Its holders.
    pub committee: Committee,
    pub(crate) key_info: key_share::DirtyKeyInfo<E>,
}

impl<E: KeyCurve> PublicKeyInfo<E> {
    /// The wallet's public key.
    pub fn public_key(&self) -> NonZero<Point<E>> {
        self.key_info.shared_public_key
    }

    /// Signers needed to sign.
    pub fn threshold(&self) -> u16 {
        self.key_info
            .vss_setup
            .as_ref()
            .map(|setup| setup.min_signers)
            .unwrap_or_else(|| self.committee.n())
    }

    /// The HD chain code.
    pub fn chain_code(&self) -> Option<[u8; 32]> {
        self.key_info.chain_code
    }

    /// The public key at a non-hardened derivation path (empty: the root).
    pub fn derive_public_key(&self, path: &[u32]) -> Result<NonZero<Point<E>>, Error> {
        derive_public_key(&self.key_info, path)
    }

    /// Serialises the public data (CBOR). Not secret, but it must reach a new
    /// holder from an authenticated source: a resharing checks dealings
    /// against it.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        to_secret_bytes(self).map(|bytes| bytes.to_vec())
    }

    /// Parses public data from [`PublicKeyInfo::to_bytes`] and checks that
    /// it is consistent: public shares interpolate to the public key, the
    /// committee has one public share per member.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        use key_share::Validate;
        let info: Self = from_secret_bytes(bytes)?;
        info.key_info
            .is_valid()
            .map_err(|_| Error::InvalidArgument("key info is inconsistent"))?;
        if info.key_info.public_shares.len() != info.committee.members().len() {
            return Err(Error::InvalidArgument(
                "key info and committee disagree on the number of parties",
            ));
        }
        Ok(info)
    }
}

impl<E: KeyCurve> PartialEq for PublicKeyInfo<E> {
    fn eq(&self, other: &Self) -> bool {
        self.wallet == other.wallet
            && self.generation == other.generation
            && self.committee == other.committee
            && self.key_info.shared_public_key == other.key_info.shared_public_key
            && self.key_info.public_shares == other.key_info.public_shares
            && self.key_info.vss_setup == other.key_info.vss_setup
            && self.key_info.chain_code == other.key_info.chain_code
    }
}

/// Derives the child public key at `path`; every index must be non-hardened
/// (below 2^31).
pub(crate) fn derive_public_key<E: KeyCurve>(
    key_info: &key_share::DirtyKeyInfo<E>,
    path: &[u32],
) -> Result<NonZero<Point<E>>, Error> {
    key_info
        .derive_child_public_key::<E::Hd, _>(path.iter().copied())
        .map_err(|_| Error::InvalidArgument("derivation path must be non-hardened (< 2^31)"))
        .and_then(|child| {
            NonZero::from_point(child.public_key)
                .ok_or(Error::OutputCheck("derived public key is the identity"))
        })
}

/// CGGMP21 auxiliary info of one party for one committee: its Paillier
/// secret key and everyone's Paillier and ring-Pedersen public parameters.
/// Reusable for every secp256k1 key held by the same committee.
#[derive(Clone, Serialize, Deserialize)]
pub struct AuxInfo {
    /// The committee it was generated for.
    pub committee: Committee,
    /// This party's index in the committee.
    pub index: u16,
    pub(crate) aux: cggmp21::key_share::AuxInfo<SecurityLevel>,
}

impl AuxInfo {
    /// Serialises the aux info, Paillier secret key included. Seal the result.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        to_secret_bytes(self)
    }

    /// Parses and re-validates aux info from [`AuxInfo::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let aux: Self = from_secret_bytes(bytes)?;
        if aux.aux.parties.len() != aux.committee.members().len() || aux.index >= aux.committee.n()
        {
            return Err(Error::Sealing("aux info does not match its committee"));
        }
        Ok(aux)
    }

    /// Builds the full cggmp21 key share for ECDSA signing. Both must belong
    /// to the same committee and party.
    pub(crate) fn complete(
        &self,
        share: &KeyShare<Secp256k1>,
    ) -> Result<cggmp21::KeyShare<Secp256k1, SecurityLevel>, Error> {
        if self.committee != share.committee || self.index != share.index() {
            return Err(Error::InvalidArgument(
                "aux info belongs to another committee or party",
            ));
        }
        cggmp21::KeyShare::from_parts((share.core.clone(), self.aux.clone()))
            .map_err(|_| Error::InvalidArgument("aux info is inconsistent with the key share"))
    }

    /// Whether [`AuxInfo::precompute`] has run: every party's multiexp table
    /// is present.
    pub fn is_precomputed(&self) -> bool {
        self.aux
            .parties
            .iter()
            .all(|party| party.multiexp.is_some())
    }

    /// Precomputes multi-exponentiation tables and CRT parameters: faster
    /// signing for a much larger share (see ARCHITECTURE.md for the figures).
    pub fn precompute(&mut self) -> Result<(), Error> {
        let mut dirty = self.aux.clone().into_inner();
        dirty
            .precompute_multiexp_tables()
            .and_then(|()| dirty.precompute_crt(self.index))
            .map_err(|_| Error::OutputCheck("aux info precomputation failed"))?;
        self.aux = cggmp21::key_share::Valid::validate(dirty)
            .map_err(|_| Error::OutputCheck("aux info precomputation failed"))?;
        Ok(())
    }
}

impl fmt::Debug for AuxInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuxInfo")
            .field("n", &self.committee.n())
            .field("index", &self.index)
            .field("paillier_secret", &"<redacted>")
            .finish()
    }
}

/// Encodes a secret-bearing value for storage as CBOR. CBOR rather than
/// postcard: key-share's serde (generic-ec's `PreferCompact`) needs a
/// self-describing format to deserialise.
pub(crate) fn to_secret_bytes<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut bytes = Zeroizing::new(Vec::new());
    ciborium::into_writer(value, &mut *bytes)
        .map_err(|_| Error::Sealing("cannot serialise secret value"))?;
    Ok(bytes)
}

/// Decodes a value from [`to_secret_bytes`]; trailing bytes are an error.
pub(crate) fn from_secret_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut reader = bytes;
    let value = ciborium::from_reader(&mut reader)
        .map_err(|_| Error::Sealing("stored value does not decode"))?;
    if !reader.is_empty() {
        return Err(Error::Sealing("stored value has trailing bytes"));
    }
    Ok(value)
}
