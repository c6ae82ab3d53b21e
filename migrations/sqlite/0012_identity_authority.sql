-- What an identity may do (org, role, platform admin, status, creator,
-- creation time) sealed by the org's keyring (control-plane/src/authority.rs):
-- an identity whose row no longer matches its seal is refused. Existing
-- identities are sealed once at the first start or unseal with this code.
ALTER TABLE identities ADD COLUMN authority BLOB;
