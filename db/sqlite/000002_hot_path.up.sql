-- Hot path: jobs carry a version that every applied change bumps (optimistic compare-and-set).
ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0);

CREATE INDEX outbox_created_at_idx ON outbox (created_at);
