-- Completion webhooks: a job may name a webhook_url; each time it becomes COMPLETED, FAILED or
-- CANCELLED, the change that ends it also inserts one delivery here (the payload as it will be sent),
-- and workers deliver it at least once, with retries, until delivered_at or gave_up_at is set.
ALTER TABLE jobs ADD COLUMN webhook_url text;

CREATE TABLE webhook_deliveries (
    id              uuid        PRIMARY KEY,            -- the webhook-id header, the same on every retry
    job_id          uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    url             text        NOT NULL,
    type            text        NOT NULL,               -- job.completed | job.failed | job.cancelled
    payload         text        NOT NULL,               -- the exact body sent (signed as is)
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_status     integer     NOT NULL DEFAULT 0,     -- HTTP status of the last attempt (0: none or no answer)
    last_error      text        NOT NULL DEFAULT '',
    next_attempt_at timestamptz NOT NULL,               -- due time; a claimed delivery's claim expiry
    delivered_at    timestamptz,
    gave_up_at      timestamptz,
    created_at      timestamptz NOT NULL
);

-- Deliverers claim due deliveries oldest first; a job's deliveries are read with the job.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, created_at);
