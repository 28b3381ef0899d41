-- Same as Postgres 000004: jobs and Idempotency-Keys belong to a tenant. SQLite cannot change a
-- primary key in place, so idempotency_keys is rebuilt.
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';

DROP INDEX jobs_feature_created_at_idx;
CREATE INDEX jobs_tenant_created_at_idx ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_tenant_status_created_at_idx ON jobs (tenant, status, created_at DESC, id DESC);
CREATE INDEX jobs_tenant_feature_created_at_idx ON jobs (tenant, feature_name, created_at DESC, id DESC);

CREATE TABLE idempotency_keys_new (
    tenant       TEXT      NOT NULL DEFAULT 'default',
    "key"        TEXT      NOT NULL,
    request_hash TEXT      NOT NULL,
    job_id       TEXT,
    created_at   TIMESTAMP NOT NULL CHECK (typeof(created_at) = 'integer'),
    expires_at   TIMESTAMP NOT NULL CHECK (typeof(expires_at) = 'integer'),
    PRIMARY KEY (tenant, "key")
);
INSERT INTO idempotency_keys_new (tenant, "key", request_hash, job_id, created_at, expires_at)
    SELECT 'default', "key", request_hash, job_id, created_at, expires_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_new RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
