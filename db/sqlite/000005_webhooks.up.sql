-- Same as Postgres 000005: completion webhooks and their durable deliveries.
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;

CREATE TABLE webhook_deliveries (
    id              TEXT      NOT NULL PRIMARY KEY,
    job_id          TEXT      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    url             TEXT      NOT NULL,
    type            TEXT      NOT NULL,
    payload         TEXT      NOT NULL,
    attempts        INTEGER   NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_status     INTEGER   NOT NULL DEFAULT 0,
    last_error      TEXT      NOT NULL DEFAULT '',
    next_attempt_at TIMESTAMP NOT NULL CHECK (typeof(next_attempt_at) = 'integer'),
    delivered_at    TIMESTAMP CHECK (typeof(delivered_at) IN ('integer', 'null')),
    gave_up_at      TIMESTAMP CHECK (typeof(gave_up_at) IN ('integer', 'null')),
    created_at      TIMESTAMP NOT NULL CHECK (typeof(created_at) = 'integer')
);

CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, created_at);
