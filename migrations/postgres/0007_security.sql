-- Security hardening (issue 14): identities that can be cut off, MFA that
-- is confirmed and rate limited, tokens that can be listed and revoked,
-- wallets that can be frozen, and what a request's policy is re-evaluated
-- with at execution.

-- `status`: `active` or `disabled` (a disabled identity neither logs in nor
-- uses a token; deleting an identity removes its row and its tokens).
-- `created_by`: the identity that created it (`system` for the bootstrap
-- root); approvals count identities one creator made during a request's
-- window once (see signing::count_votes).
-- `totp_pending`: an enrolment waiting for its first code (sealed like
-- `totp_secret`); `totp_failures` / `totp_locked_until`: wrong codes in a
-- row, and the lock they cause.
ALTER TABLE identities ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE identities ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE identities ADD COLUMN totp_pending BYTEA;
ALTER TABLE identities ADD COLUMN totp_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE identities ADD COLUMN totp_locked_until BIGINT NOT NULL DEFAULT 0;

-- A token's public id (for listing and revoking; the token itself is only
-- ever stored as its hash), when and from where it was issued.
ALTER TABLE tokens ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN ip TEXT NOT NULL DEFAULT '';
UPDATE tokens SET id = 'tok_' || md5(random()::text || token_hash::text) WHERE id = '';
CREATE INDEX tokens_identity ON tokens (identity_id);

-- A frozen wallet signs nothing, whatever was approved before.
ALTER TABLE wallets ADD COLUMN frozen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE wallets ADD COLUMN frozen_at BIGINT;
ALTER TABLE wallets ADD COLUMN frozen_by TEXT;
ALTER TABLE wallets ADD COLUMN frozen_reason TEXT;

-- What the policy is evaluated with again when a request executes: the
-- requester's address and whether the requester gave a TOTP code.
ALTER TABLE signing_requests ADD COLUMN ip TEXT NOT NULL DEFAULT '';
ALTER TABLE signing_requests ADD COLUMN mfa BIGINT NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN ip TEXT NOT NULL DEFAULT '';
ALTER TABLE operations ADD COLUMN mfa BIGINT NOT NULL DEFAULT 0;

-- Orgs created before this migration get the new approval defaults as a
-- policy just before the default one (editable as any other): changing
-- policies, creating or changing identities and resetting another's MFA
-- need one admin's approval; unfreezing a wallet too.
INSERT INTO policies (id, org_id, name, priority, rules, created_at)
SELECT 'pol_' || md5(random()::text || id), id, 'separation-of-duties', 998,
       '[{"action":"policy.create","resource":"*","effect":"require_approval","approvals":{"count":1,"roles":["admin"]}},{"action":"policy.update","resource":"*","effect":"require_approval","approvals":{"count":1,"roles":["admin"]}},{"action":"identity.create","resource":"*","effect":"require_approval","approvals":{"count":1,"roles":["admin"]}},{"action":"identity.update","resource":"*","effect":"require_approval","approvals":{"count":1,"roles":["admin"]}},{"action":"identity.mfa_reset","resource":"*","effect":"require_approval","approvals":{"count":1,"roles":["admin"]}},{"action":"wallet.unfreeze","resource":"*","effect":"require_approval","approvals":{"count":1,"roles":["admin"]}}]',
       (extract(epoch from now()) * 1000)::bigint
FROM orgs;
