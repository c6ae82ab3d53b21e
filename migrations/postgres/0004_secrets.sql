-- Pending operations, secrets and webhook deliveries.
--
-- `operations` holds a request that a policy sent to an approval (deleting
-- or destroying a secret, rotating a transit key, ...): the exact request
-- is stored sealed by the org's keyring (kind `operation`, record id = the
-- operation's id) and executed as stored once approved, at most once.
-- `approvals.subject` says which table `approvals.request_id` points to.

ALTER TABLE approvals ADD COLUMN subject TEXT NOT NULL DEFAULT 'signing';

CREATE TABLE operations (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    action       TEXT NOT NULL,
    resource     TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    body         BYTEA NOT NULL,
    request_hash TEXT NOT NULL,
    status       TEXT NOT NULL,
    approval_id  TEXT,
    result       TEXT,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX operations_status ON operations (status);

-- A secret is (org, environment, name); every write is a version. Values
-- are sealed by the org's keyring (kind `secret`, record id
-- `<secret id>/<version>`). `deleted_at` marks a soft delete (restorable);
-- a destroyed version keeps its row with `value` NULL.
CREATE TABLE secrets (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs(id),
    environment     TEXT NOT NULL,
    name            TEXT NOT NULL,
    tags            TEXT NOT NULL,
    current_version BIGINT NOT NULL,
    deleted_at      BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (org_id, environment, name)
);

CREATE TABLE secret_versions (
    secret_id    TEXT NOT NULL REFERENCES secrets(id),
    version      BIGINT NOT NULL,
    value        BYTEA,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    destroyed_at BIGINT,
    PRIMARY KEY (secret_id, version)
);

-- Webhook deliveries (secret rotation notices): retried with backoff by
-- the control plane; every attempt is audited.
CREATE TABLE webhook_deliveries (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    url          TEXT NOT NULL,
    event        TEXT NOT NULL,
    body         TEXT NOT NULL,
    status       TEXT NOT NULL,
    attempts     BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt);

-- The org's webhook signing secret (HMAC-SHA256 key), sealed by the org's
-- keyring (kind `webhook_key`, record id = the org's id).
CREATE TABLE webhook_keys (
    org_id     TEXT PRIMARY KEY REFERENCES orgs(id),
    secret     BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
