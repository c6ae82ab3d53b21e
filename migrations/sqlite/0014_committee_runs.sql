-- Aux-info preparation of a committee as operators follow it: runs tried
-- so far, the last run's failure, and since when the preparation runs
-- (control-plane/src/nodes.rs, `GET /api/v1/nodes/committees`).
ALTER TABLE committees ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE committees ADD COLUMN last_error TEXT;
ALTER TABLE committees ADD COLUMN preparing_since INTEGER;
