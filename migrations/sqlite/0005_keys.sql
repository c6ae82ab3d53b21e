-- The key registry (control-plane/src/keys): keys with one usage each, and
-- their versions. A software version's material is sealed by the org's
-- keyring (kind `registry_key`, record id `<key id>/<version>`); an HSM
-- version names its non-extractable token object (`hsm_id`, the CKA_ID).
-- Destroying a key removes both: `material` and `hsm_id` become NULL and
-- the token object is deleted (crypto-shredding).
--
-- Client-side-encryption keys (`purpose = 'client_side_encryption'`)
-- carry a subject (a device), an expiry after which they are deprecated
-- (they still decrypt) and a destruction time after the retention period.

CREATE TABLE registry_keys (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES orgs(id),
    name           TEXT NOT NULL,
    key_type       TEXT NOT NULL,
    usage          TEXT NOT NULL,
    backend        TEXT NOT NULL,
    state          TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    rotation_days  INTEGER,
    next_rotation  INTEGER,
    purpose        TEXT,
    subject        TEXT,
    expires_at     INTEGER,
    destroy_at     INTEGER,
    created_by     TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    destroyed_at   INTEGER,
    UNIQUE (org_id, name)
);
CREATE INDEX registry_keys_subject ON registry_keys (org_id, subject, created_at);

CREATE TABLE registry_key_versions (
    key_id      TEXT NOT NULL REFERENCES registry_keys(id),
    version     INTEGER NOT NULL,
    material    BLOB,
    hsm_id      TEXT,
    public_key  BLOB,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (key_id, version)
);
