DROP INDEX IF EXISTS outbox_created_at_idx;
DROP FUNCTION IF EXISTS cao_conflict(text);
ALTER TABLE jobs DROP COLUMN IF EXISTS version;
