//! Transit: encryption as a service with named keys per org.
//!
//! `crypto` is the engine (key types, `vault:v<N>:` ciphertexts bound to
//! org, key name, version and context, sign/verify, HMAC); `store` keeps the
//! keys under the keyring and opened versions in memory. The HTTP routes,
//! Custos' own and the Vault-compatible ones, are in `api::transit`.

pub mod crypto;
pub mod store;
