//! End-to-end tests of Custos live in `tests/`: each starts a whole
//! deployment with `custos-testnet up` (the control plane and signer nodes
//! as separate processes on loopback) and talks to it over HTTP. This
//! library is empty; the tests need the binaries built first
//! (`cargo build --bins`, which `scripts/test` does).
