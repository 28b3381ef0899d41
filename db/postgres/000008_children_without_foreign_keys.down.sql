DELETE FROM webhook_deliveries w WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = w.job_id);
DELETE FROM job_inputs i WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = i.job_id);
DELETE FROM job_steps s WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = s.job_id);
ALTER TABLE job_steps ADD CONSTRAINT job_steps_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;
ALTER TABLE job_inputs ADD CONSTRAINT job_inputs_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;
