-- Tenants: every job belongs to the tenant of the key that created it, and Idempotency-Keys are
-- scoped per tenant. Jobs created before this migration belong to the tenant "default".
ALTER TABLE jobs ADD COLUMN tenant text NOT NULL DEFAULT 'default';

-- GET /jobs lists one tenant's jobs: newest first, optionally by status or feature. Admins listing
-- every tenant use jobs_created_at_id_idx and jobs_status_created_at_idx (also the reaper's).
DROP INDEX jobs_feature_created_at_idx;
CREATE INDEX jobs_tenant_created_at_idx ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_tenant_status_created_at_idx ON jobs (tenant, status, created_at DESC, id DESC);
CREATE INDEX jobs_tenant_feature_created_at_idx ON jobs (tenant, feature_name, created_at DESC, id DESC);

ALTER TABLE idempotency_keys ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (tenant, "key");
