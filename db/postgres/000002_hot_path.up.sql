-- Hot path: jobs carry a version that every applied change bumps (optimistic compare-and-set in one
-- statement instead of a locking transaction of many), and a function that aborts such a statement
-- when one of its compare-and-sets failed, so that nothing of it is written.

ALTER TABLE jobs ADD COLUMN version bigint NOT NULL DEFAULT 0 CHECK (version >= 0);

CREATE FUNCTION cao_conflict(what text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'cao: compare-and-set conflict: %', what USING ERRCODE = 'CA409';
END
$$;

-- The outbox relay only picks up tasks the committing process did not dispatch itself (crashed).
CREATE INDEX outbox_created_at_idx ON outbox (created_at);
