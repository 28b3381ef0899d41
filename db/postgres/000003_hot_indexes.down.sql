ALTER TABLE job_steps RESET (fillfactor);
ALTER TABLE jobs RESET (fillfactor);
DROP INDEX IF EXISTS job_steps_waiting_updated_idx;
DROP INDEX IF EXISTS job_steps_running_lease_idx;
CREATE INDEX job_steps_status_updated_at_idx ON job_steps (status, updated_at);
CREATE INDEX job_steps_status_lease_expires_at_idx ON job_steps (status, lease_expires_at);
CREATE INDEX jobs_status_updated_at_idx ON jobs (status, updated_at);
