-- HSM-wrapped key-share backups (control-plane/src/backups.rs).
--
-- A signer node seals its share under a one-time data key DK = K1 xor K2:
-- K2 is sealed inside `sealed` for the node operator's X25519 recovery key,
-- K1 comes to the control plane, which wraps it at once with the org's
-- AES-256 key inside the PKCS#11 token (`wrapped_k1`; the token object is
-- named by `share_backup_keys.hsm_id` and never leaves the token). Neither
-- this database with the token, nor the operator's recovery key, opens a
-- backup alone. No column holds a share, DK, K1 or K2 in the clear.

CREATE TABLE share_backup_keys (
    org_id     TEXT PRIMARY KEY REFERENCES orgs(id),
    hsm_id     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE share_backups (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    wallet_id   TEXT NOT NULL REFERENCES wallets(id),
    party       TEXT NOT NULL,
    node        TEXT NOT NULL,
    curve       TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    sealed      BLOB NOT NULL,
    wrapped_k1  BLOB NOT NULL,
    hsm_id      TEXT NOT NULL,
    meta_digest TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    restored_at INTEGER
);
CREATE INDEX share_backups_wallet ON share_backups (org_id, wallet_id, created_at);

-- Orgs created before this migration got a default policy without the
-- `wallet.restore` rule: restoring a share waits for one admin's approval
-- there too (a policy just before the default one, editable as any other).
INSERT INTO policies (id, org_id, name, priority, rules, created_at)
SELECT 'pol_' || lower(hex(randomblob(16))), id, 'share-restore', 999,
       '[{"action":"wallet.restore","resource":"*","effect":"require_approval","approvals":{"count":1,"roles":["admin"]}}]',
       CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
FROM orgs;
