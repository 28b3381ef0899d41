-- Indexes that a step's transitions do not touch. A change of a running job rewrites its row (version,
-- last_seq, updated_at): with no index on those columns Postgres can do it as a HOT update, without a
-- new entry in every index of the table, and the free space left by fillfactor keeps the new version
-- on the same page. Steps are indexed only while the reaper may look for them (RUNNING with a lease,
-- or waiting), in partial indexes that stay as small as the work in flight.

-- ListIdleJobs scans active jobs through jobs_status_created_at_idx (status IN ...) instead.
DROP INDEX jobs_status_updated_at_idx;

DROP INDEX job_steps_status_lease_expires_at_idx;
DROP INDEX job_steps_status_updated_at_idx;
CREATE INDEX job_steps_running_lease_idx ON job_steps (lease_expires_at) WHERE status = 'RUNNING';
CREATE INDEX job_steps_waiting_updated_idx ON job_steps (updated_at) WHERE status IN ('QUEUED', 'RETRYING');

ALTER TABLE jobs SET (fillfactor = 85);
ALTER TABLE job_steps SET (fillfactor = 85);
