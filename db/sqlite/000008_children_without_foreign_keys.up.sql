-- Postgres drops the foreign keys of job_steps, job_inputs and webhook_deliveries in this version
-- (see its 000008). SQLite keeps them: there a check is an in-process index probe. Retention deletes
-- these rows with their job explicitly on both (DeleteFinishedJobs), so the schemas behave alike.
SELECT 1;
