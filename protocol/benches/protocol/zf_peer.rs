//! The peer to compare Custos' FROST Taproot signing with: the Zcash
//! Foundation's `frost-secp256k1-tr`, BIP-340 with the same BIP-341 key-path
//! tweak (no script tree).
//!
//! The key comes from its trusted dealer, once, outside the timing. A
//! signing is what one request costs in that library: every signer's round 1
//! commitment, the coordinator's signing package, every signer's round 2
//! share, and aggregation (which verifies the signature). All of it runs in
//! one thread with no transport, no serialisation and no per-party checks of
//! the final signature, so the comparison shows what Custos' driver, network
//! and extra checks cost on top of the cryptography.

use std::collections::BTreeMap;

use frost_secp256k1_tr as frost;
use rand_core::OsRng;

/// A dealt key: every holder's key package and the group's public data.
pub struct ZfTaprootKey {
    key_packages: BTreeMap<frost::Identifier, frost::keys::KeyPackage>,
    public_key_package: frost::keys::PublicKeyPackage,
}

impl ZfTaprootKey {
    /// A `threshold`-of-`n_parties` key from the library's trusted dealer.
    pub fn from_trusted_dealer(n_parties: u16, threshold: u16) -> Self {
        let (secret_shares, public_key_package) = frost::keys::generate_with_dealer(
            n_parties,
            threshold,
            frost::keys::IdentifierList::Default,
            OsRng,
        )
        .expect("the ZF dealer accepts the parameters");
        let key_packages = secret_shares
            .into_iter()
            .map(|(identifier, secret_share)| {
                let key_package = frost::keys::KeyPackage::try_from(secret_share)
                    .expect("the dealer's share verifies");
                (identifier, key_package)
            })
            .collect();
        Self {
            key_packages,
            public_key_package,
        }
    }

    /// Signs `sighash` with the holders at keygen indices `quorum` (0-based,
    /// as in Custos; ZF identifiers are 1-based).
    pub fn sign(&self, quorum: &[u16], sighash: &[u8; 32]) -> frost::Signature {
        // Round 1: every signer commits to a fresh pair of nonces.
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for &keygen_index in quorum {
            let identifier =
                frost::Identifier::try_from(keygen_index + 1).expect("identifiers start at 1");
            let key_package = &self.key_packages[&identifier];
            let (signer_nonces, signer_commitments) =
                frost::round1::commit(key_package.signing_share(), &mut OsRng);
            nonces.insert(identifier, signer_nonces);
            commitments.insert(identifier, signer_commitments);
        }
        let signing_package = frost::SigningPackage::new(commitments, sighash);

        // Round 2: every signer signs with its tweaked share.
        let signature_shares: BTreeMap<_, _> = nonces
            .iter()
            .map(|(identifier, signer_nonces)| {
                let share = frost::round2::sign_with_tweak(
                    &signing_package,
                    signer_nonces,
                    &self.key_packages[identifier],
                    None,
                )
                .expect("an honest signer signs");
                (*identifier, share)
            })
            .collect();

        // The coordinator aggregates; this verifies the group signature.
        frost::aggregate_with_tweak(
            &signing_package,
            &signature_shares,
            &self.public_key_package,
            None,
        )
        .expect("honest shares aggregate into a valid signature")
    }
}
