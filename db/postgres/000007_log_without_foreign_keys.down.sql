DELETE FROM job_events e WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id);
DELETE FROM step_attempts a WHERE NOT EXISTS (SELECT 1 FROM job_steps s WHERE s.job_id = a.job_id AND s.name = a.step);
ALTER TABLE job_events ADD CONSTRAINT job_events_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;
ALTER TABLE step_attempts ADD CONSTRAINT step_attempts_job_id_step_fkey
    FOREIGN KEY (job_id, step) REFERENCES job_steps (job_id, name) ON DELETE CASCADE;
