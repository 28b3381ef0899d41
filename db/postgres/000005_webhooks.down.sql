DROP TABLE IF EXISTS webhook_deliveries;
ALTER TABLE jobs DROP COLUMN IF EXISTS webhook_url;
