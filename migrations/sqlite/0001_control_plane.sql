-- Control plane schema (SQLite). Flags are INTEGER 0/1 so that both
-- dialects read them the same way through sqlx::Any. Times are unix milliseconds (INTEGER);
-- JSON documents are TEXT written and read by the application; ids are
-- prefixed random strings. Every org-owned table carries org_id, and every
-- query of the application filters by it.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE orgs (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE identities (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs(id),
    name            TEXT NOT NULL,
    role            TEXT NOT NULL,
    platform_admin  INTEGER NOT NULL,
    client_id       TEXT NOT NULL UNIQUE,
    secret_hash     TEXT NOT NULL,
    failed_attempts INTEGER NOT NULL,
    locked_until    INTEGER NOT NULL,
    totp_secret     BLOB,
    totp_last_step  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE tokens (
    token_hash  BLOB PRIMARY KEY,
    identity_id TEXT NOT NULL REFERENCES identities(id),
    org_id      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX tokens_expiry ON tokens (expires_at);

CREATE TABLE policies (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES orgs(id),
    name       TEXT NOT NULL,
    priority   INTEGER NOT NULL,
    rules      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

-- One hash chain per org; the head row is locked while appending.
CREATE TABLE audit_heads (
    org_id TEXT PRIMARY KEY,
    seq    INTEGER NOT NULL,
    hash   BLOB NOT NULL
);

CREATE TABLE audit_log (
    org_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    timestamp   INTEGER NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    ip          TEXT NOT NULL,
    approved    TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL,
    PRIMARY KEY (org_id, seq)
);
CREATE INDEX audit_log_action ON audit_log (org_id, action);

CREATE TABLE nodes (
    name      TEXT PRIMARY KEY,
    party_id  TEXT NOT NULL UNIQUE,
    address   TEXT NOT NULL,
    http      TEXT NOT NULL,
    status    TEXT NOT NULL,
    last_seen INTEGER NOT NULL
);

CREATE TABLE committees (
    id         TEXT PRIMARY KEY,
    members    TEXT NOT NULL,
    aux_ready  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE wallets (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    name        TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    chain       TEXT NOT NULL,
    public_key  BLOB NOT NULL,
    chain_code  BLOB NOT NULL,
    key_info    BLOB NOT NULL,
    threshold   INTEGER NOT NULL,
    committee   TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE approvals (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    request_id   TEXT NOT NULL,
    action       TEXT NOT NULL,
    resource     TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    required     INTEGER NOT NULL,
    roles        TEXT NOT NULL,
    require_mfa  INTEGER NOT NULL,
    rule         TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    status       TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX approvals_status ON approvals (status, expires_at);

CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL REFERENCES approvals(id),
    identity_id TEXT NOT NULL,
    decision    TEXT NOT NULL,
    mfa         INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (approval_id, identity_id)
);

-- Signing and resharing requests. `status` moves
-- pending_approval -> queued -> signing -> signed | failed, or
-- pending_approval -> rejected. A row in `signing` is leased to one replica
-- until lease_until; `attempts` numbers the coordinator attempts so that a
-- retry after a crash never reuses an attempt the nodes already started.
CREATE TABLE signing_requests (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs(id),
    wallet_id       TEXT NOT NULL REFERENCES wallets(id),
    kind            TEXT NOT NULL,
    requested_by    TEXT NOT NULL,
    body            TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    payload         BLOB NOT NULL,
    status          TEXT NOT NULL,
    approval_id     TEXT,
    idempotency_key TEXT,
    result          TEXT,
    error           TEXT,
    attempts        INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (org_id, requested_by, idempotency_key)
);
CREATE INDEX signing_requests_work ON signing_requests (status, lease_until);
