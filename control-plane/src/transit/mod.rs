//! Transit: encryption as a service with named keys per org.
//!
//! `crypto` is the engine (key types, `vault:v<N>:` ciphertexts bound to
//! org, key name, version and context, sign/verify, HMAC). The HTTP routes,
//! the key store under the keyring and the Vault-compatible routes build on
//! it (issue 5, in progress).

pub mod crypto;
