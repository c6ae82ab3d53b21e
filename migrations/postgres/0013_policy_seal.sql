-- An org's policies as a whole (ids, names, priorities, rules) sealed by
-- its keyring (`orgs.policy_seal`, record kind `policy_set`): a policy row
-- a database writer inserts, changes or deletes makes the org's policies
-- fail closed (everything denied) until a platform admin reviews and
-- reseals them (control-plane/src/orgs.rs). Existing orgs are sealed once
-- at the first start or unseal with this code.
ALTER TABLE orgs ADD COLUMN policy_seal BYTEA;
