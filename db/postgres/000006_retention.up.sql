-- Retention (CAO_RETENTION): the maintenance leader deletes terminal jobs finished before a cutoff,
-- oldest first, in small batches, with the Idempotency-Keys bound to them.
CREATE INDEX jobs_finished_at_idx ON jobs (finished_at)
    WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED');
CREATE INDEX idempotency_keys_job_id_idx ON idempotency_keys (job_id) WHERE job_id IS NOT NULL;
