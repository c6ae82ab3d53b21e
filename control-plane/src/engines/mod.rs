//! # The engines
//!
//! The one place that names every engine: what each registers with the
//! core (see [`crate::kernel::engine`]). Adding an engine adds its line here.

use crate::http::ApiRouter;
use crate::kernel::engine::Engines;

pub mod keys;
pub mod secrets;
pub mod transit;
pub mod wallets;

/// Every engine's subjects of approvals, executors of stored operations
/// and background jobs.
pub fn registry() -> Engines {
    Engines::default()
        // The core's own: changes that waited for an approval.
        .subject(crate::kernel::operations::Operations)
        .executor(crate::kernel::identities::StoredOperations)
        .executor(crate::kernel::orgs::StoredOperations)
        // Wallets: signing requests, unfreezing, share restores.
        .subject(crate::engines::wallets::signing::Requests)
        .executor(crate::engines::wallets::StoredOperations)
        .executor(crate::engines::wallets::backups::StoredOperations)
        .job(crate::engines::wallets::signing::Worker)
        // Secrets, transit, the key registry.
        .executor(crate::engines::secrets::StoredOperations)
        .executor(crate::engines::transit::StoredOperations)
        .executor(crate::engines::keys::StoredOperations)
}

/// Every engine's routes (the kernel's own are in [`crate::http`]).
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .merge(transit::routes())
        .merge(secrets::routes())
        .merge(keys::routes())
        .merge(wallets::routes())
}
