-- Encryption budgets of the key registry's AES-256 keys
-- (control-plane/src/keys): every encryption or wrap is counted on the
-- version that made it, in the transaction of the operation and its audit
-- record. A version that reached `[keys] encryptions_per_version` (2^30)
-- makes nothing more; the call that reaches it rotates the key.
--
-- Destruction passes through the state `destroying` (a TEXT value of
-- `registry_keys.state`, no schema change): committed first, then the
-- token objects are deleted, then the material is wiped and the state is
-- `destroyed`.

ALTER TABLE registry_key_versions ADD COLUMN encryptions INTEGER NOT NULL DEFAULT 0;
