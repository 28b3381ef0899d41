-- Back to one Idempotency-Key namespace: where tenants share a key, the first tenant's record stays.
DELETE FROM idempotency_keys
WHERE EXISTS (SELECT 1 FROM idempotency_keys b WHERE b."key" = idempotency_keys."key" AND b.tenant < idempotency_keys.tenant);
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY ("key");
ALTER TABLE idempotency_keys DROP COLUMN tenant;

DROP INDEX IF EXISTS jobs_tenant_feature_created_at_idx;
DROP INDEX IF EXISTS jobs_tenant_status_created_at_idx;
DROP INDEX IF EXISTS jobs_tenant_created_at_idx;
CREATE INDEX jobs_feature_created_at_idx ON jobs (feature_name, created_at DESC, id DESC);
ALTER TABLE jobs DROP COLUMN tenant;
