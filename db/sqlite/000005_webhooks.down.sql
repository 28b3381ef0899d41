DROP TABLE IF EXISTS webhook_deliveries;
ALTER TABLE jobs DROP COLUMN webhook_url;
