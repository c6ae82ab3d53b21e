-- The keyring (control-plane/src/keyring): one root key per org, versioned,
-- each version wrapped by the master key. `encryptions` counts the data keys
-- a version wrapped; the keyring moves to a new version long before the
-- AES-GCM random-nonce bound. The keyring's own description (seal mode,
-- share counts, the master key's check value) is the `meta` row `keyring`.

CREATE TABLE org_root_keys (
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    version     INTEGER NOT NULL,
    wrapped     BLOB NOT NULL,
    encryptions INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (org_id, version)
);
