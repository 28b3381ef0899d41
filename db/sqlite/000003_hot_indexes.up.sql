-- Same index layout as Postgres 000003: steps are indexed only while the reaper may look for them.
DROP INDEX jobs_status_updated_at_idx;

DROP INDEX job_steps_status_lease_expires_at_idx;
DROP INDEX job_steps_status_updated_at_idx;
CREATE INDEX job_steps_running_lease_idx ON job_steps (lease_expires_at) WHERE status = 'RUNNING';
CREATE INDEX job_steps_waiting_updated_idx ON job_steps (updated_at) WHERE status IN ('QUEUED', 'RETRYING');
