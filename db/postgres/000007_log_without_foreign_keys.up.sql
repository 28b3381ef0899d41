-- The event log and the attempts are written only by the hot statements, which write (and so lock)
-- their job's row in the same statement and write the children only if that row was written: no
-- statement can add an event or an attempt for a job that does not exist. Their foreign keys only
-- repeated that check, one trigger and one index probe per row (23 of a five-step job's 29 rows),
-- about a sixth of Postgres's CPU on the hot path (session 9). Retention deletes these rows with
-- their job (DeleteFinishedJobs) instead of ON DELETE CASCADE. The SQLite schema keeps its foreign
-- keys: there a check is an in-process index probe.
ALTER TABLE job_events DROP CONSTRAINT job_events_job_id_fkey;
ALTER TABLE step_attempts DROP CONSTRAINT step_attempts_job_id_step_fkey;
