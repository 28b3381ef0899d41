-- The steps, inputs and webhook deliveries of a job lose their foreign keys, as the event log and the
-- attempts did in 000007. Only the hot statements write them, in the statement that writes (and so
-- locks) their job's row, and only if that row was written; the store's transactions check the job
-- themselves (txn.needJobs). The keys cost more than their probes: every step and input inserted ran
-- the key's check query (which locks the job's row FOR KEY SHARE), and every UPDATE of a jobs row or
-- a step went through the keys' triggers (RI_FKey_noaction_upd, RI_FKey_check_upd). With them gone, a
-- one-worker chain run's Postgres CPU fell by a fifth (session 15, docs/benchmarks.md). Retention
-- deletes these rows with their job (DeleteFinishedJobs) instead of ON DELETE CASCADE. The SQLite
-- schema keeps its foreign keys.
ALTER TABLE job_steps DROP CONSTRAINT job_steps_job_id_fkey;
ALTER TABLE job_inputs DROP CONSTRAINT job_inputs_job_id_fkey;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_job_id_fkey;
