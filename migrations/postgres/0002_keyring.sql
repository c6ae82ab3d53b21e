-- The keyring (control-plane/src/keyring): one root key per org, versioned,
-- each version wrapped by the master key. `encryptions` counts the data keys
-- a version wrapped; the keyring moves to a new version long before the
-- AES-GCM random-nonce bound. The keyring's own description (seal mode,
-- share counts, the master key's check value) is the `meta` row `keyring`.

CREATE TABLE org_root_keys (
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    version     BIGINT NOT NULL,
    wrapped     BYTEA NOT NULL,
    encryptions BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, version)
);
