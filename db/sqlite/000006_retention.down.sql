DROP INDEX IF EXISTS idempotency_keys_job_id_idx;
DROP INDEX IF EXISTS jobs_finished_at_idx;
