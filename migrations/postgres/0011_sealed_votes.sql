-- Approval votes carry a seal (`approval_votes.seal`): the vote's content
-- (approval, identity, decision, MFA, the request hash approved) sealed by
-- the org's keyring, record kind `approval_vote`, record id
-- `<approval>/<identity>`. A vote whose seal does not open to exactly its
-- row is not counted, so a database writer cannot add or change votes.
--
-- Votes cast before this migration have no seal and would never count:
-- those of approvals still pending are removed, so their approvers can vote
-- again. An approval already complete but not yet run is refused when it
-- runs (`approval_invalid`); its request must be made again.
ALTER TABLE approval_votes ADD COLUMN seal BYTEA;
DELETE FROM approval_votes
WHERE approval_id IN (SELECT id FROM approvals WHERE status = 'pending');
