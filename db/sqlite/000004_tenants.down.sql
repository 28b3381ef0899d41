CREATE TABLE idempotency_keys_old (
    "key"        TEXT      NOT NULL PRIMARY KEY,
    request_hash TEXT      NOT NULL,
    job_id       TEXT,
    created_at   TIMESTAMP NOT NULL CHECK (typeof(created_at) = 'integer'),
    expires_at   TIMESTAMP NOT NULL CHECK (typeof(expires_at) = 'integer')
);
-- Where tenants share a key, the first tenant's record stays.
INSERT OR IGNORE INTO idempotency_keys_old ("key", request_hash, job_id, created_at, expires_at)
    SELECT "key", request_hash, job_id, created_at, expires_at FROM idempotency_keys ORDER BY tenant;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_old RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);

DROP INDEX IF EXISTS jobs_tenant_feature_created_at_idx;
DROP INDEX IF EXISTS jobs_tenant_status_created_at_idx;
DROP INDEX IF EXISTS jobs_tenant_created_at_idx;
CREATE INDEX jobs_feature_created_at_idx ON jobs (feature_name, created_at DESC, id DESC);
ALTER TABLE jobs DROP COLUMN tenant;
