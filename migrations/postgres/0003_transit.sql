-- Transit (control-plane/src/transit): named keys per org and their
-- versions. Key material is stored sealed by the org's keyring
-- (kind `transit_key`, record id `<key id>/<version>`); `encryptions`
-- counts encryptions reserved against a version, in blocks, so that a
-- version is retired long before the AES-GCM random-nonce bound.

CREATE TABLE transit_keys (
    id                     TEXT PRIMARY KEY,
    org_id                 TEXT NOT NULL REFERENCES orgs(id),
    name                   TEXT NOT NULL,
    key_type               TEXT NOT NULL,
    latest_version         BIGINT NOT NULL,
    min_decryption_version BIGINT NOT NULL,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE transit_key_versions (
    key_id      TEXT NOT NULL REFERENCES transit_keys(id),
    version     BIGINT NOT NULL,
    material    BYTEA NOT NULL,
    encryptions BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);
