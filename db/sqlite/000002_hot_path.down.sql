DROP INDEX IF EXISTS outbox_created_at_idx;
ALTER TABLE jobs DROP COLUMN version;
