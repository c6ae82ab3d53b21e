-- Signed checkpoints of the audit chains (control-plane/src/audit/checkpoints.rs).
--
-- A checkpoint says "the record at `seq` of `org_id`'s chain had `hash`
-- at `created_at`", signed with the control plane's Ed25519 audit key
-- (kept under the keyring, `meta` row `secret/audit-checkpoint-key`).
-- Each org's checkpoints are numbered from 1 and each signature covers the
-- previous checkpoint's signature (`prev_signature`, empty for number 1),
-- so checkpoints form a chain of their own. `audit verify` checks them
-- against the records: a deleted tail of records, or a rewritten record
-- and head, no longer matches a checkpoint. `reason`: `interval` (the
-- background task, when the head moved) or `seal` (every org, at every
-- seal). Two replicas never both write one number: the primary key.
CREATE TABLE audit_checkpoints (
    org_id         TEXT NOT NULL,
    number         INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    hash           BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    prev_signature BLOB NOT NULL,
    signature      BLOB NOT NULL,
    PRIMARY KEY (org_id, number)
);
