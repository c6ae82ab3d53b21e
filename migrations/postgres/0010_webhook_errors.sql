-- A webhook delivery's last_error is a fixed failure class (webhooks.rs,
-- `Failure::class`): http_status_<code>, timeout, connect_failed,
-- dns_failed, target_forbidden, request_failed. Earlier releases wrote the
-- only four phrases below instead (never the target's answer): rewrite
-- them, so that every delivery, old or new, reads in one vocabulary.
-- Rows already holding a class are left as they are.
UPDATE webhook_deliveries SET last_error = CASE
    WHEN last_error LIKE 'answered %' THEN 'http_status_' || substr(last_error, 10)
    WHEN last_error = 'timed out' THEN 'timeout'
    WHEN last_error = 'connection failed' THEN 'connect_failed'
    ELSE 'request_failed'
END
WHERE last_error LIKE 'answered %'
   OR last_error IN ('timed out', 'connection failed', 'request failed');
