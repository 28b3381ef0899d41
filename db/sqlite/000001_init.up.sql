-- CAO initial schema (SQLite, embedded mode). It mirrors the Postgres schema with these equivalents:
--   uuid -> TEXT (canonical lowercase form, written by the application)
--   jsonb -> TEXT holding valid JSON (checked with json_valid)
--   timestamptz -> TIMESTAMP holding INTEGER microseconds since the Unix epoch (UTC). The store opens
--     SQLite with _time_integer_format=unix_micro, so times compare and sort exactly, with the same
--     precision as Postgres; the CHECKs reject a connection that would write them as text.
--   bigint -> INTEGER, bytea -> BLOB, bigserial -> INTEGER PRIMARY KEY AUTOINCREMENT

CREATE TABLE jobs (
    id              TEXT      NOT NULL PRIMARY KEY,
    feature_name    TEXT      NOT NULL,
    status          TEXT      NOT NULL
        CONSTRAINT jobs_status_check
        CHECK (status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    input           TEXT      NOT NULL CHECK (json_valid(input)),
    input_version   INTEGER   NOT NULL DEFAULT 1 CHECK (input_version > 0),
    output          TEXT      CHECK (output IS NULL OR json_valid(output)),
    error           TEXT      NOT NULL DEFAULT '',
    last_seq        INTEGER   NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    stuck_at        TIMESTAMP CHECK (typeof(stuck_at) IN ('integer', 'null')),
    stuck_reason    TEXT      NOT NULL DEFAULT '',
    idempotency_key TEXT,
    created_at      TIMESTAMP NOT NULL CHECK (typeof(created_at) = 'integer'),
    updated_at      TIMESTAMP NOT NULL CHECK (typeof(updated_at) = 'integer'),
    started_at      TIMESTAMP CHECK (typeof(started_at) IN ('integer', 'null')),
    finished_at     TIMESTAMP CHECK (typeof(finished_at) IN ('integer', 'null'))
);

CREATE INDEX jobs_created_at_id_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_created_at_idx ON jobs (status, created_at DESC, id DESC);
CREATE INDEX jobs_feature_created_at_idx ON jobs (feature_name, created_at DESC, id DESC);
CREATE INDEX jobs_status_updated_at_idx ON jobs (status, updated_at);
CREATE INDEX jobs_stuck_at_idx ON jobs (stuck_at) WHERE stuck_at IS NOT NULL;

CREATE TABLE job_steps (
    job_id           TEXT      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name             TEXT      NOT NULL,
    position         INTEGER   NOT NULL,
    service          TEXT      NOT NULL,
    queue            TEXT      NOT NULL,
    needs            TEXT      NOT NULL DEFAULT '[]' CHECK (json_valid(needs) AND json_type(needs) = 'array'),
    status           TEXT      NOT NULL
        CONSTRAINT job_steps_status_check
        CHECK (status IN ('PENDING', 'QUEUED', 'RUNNING', 'RETRYING', 'SUCCEEDED', 'FAILED', 'SKIPPED', 'CANCELLED')),
    run              INTEGER   NOT NULL DEFAULT 1 CHECK (run > 0),
    attempts         INTEGER   NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lost             INTEGER   NOT NULL DEFAULT 0 CHECK (lost >= 0),
    lease_owner      TEXT      NOT NULL DEFAULT '',
    lease_expires_at TIMESTAMP CHECK (typeof(lease_expires_at) IN ('integer', 'null')),
    next_attempt_at  TIMESTAMP CHECK (typeof(next_attempt_at) IN ('integer', 'null')),
    output           TEXT      CHECK (output IS NULL OR json_valid(output)),
    error            TEXT      NOT NULL DEFAULT '',
    error_class      TEXT      NOT NULL DEFAULT '',
    created_at       TIMESTAMP NOT NULL CHECK (typeof(created_at) = 'integer'),
    updated_at       TIMESTAMP NOT NULL CHECK (typeof(updated_at) = 'integer'),
    started_at       TIMESTAMP CHECK (typeof(started_at) IN ('integer', 'null')),
    finished_at      TIMESTAMP CHECK (typeof(finished_at) IN ('integer', 'null')),
    PRIMARY KEY (job_id, name)
);

CREATE INDEX job_steps_status_lease_expires_at_idx ON job_steps (status, lease_expires_at);
CREATE INDEX job_steps_status_updated_at_idx ON job_steps (status, updated_at);

CREATE TABLE step_attempts (
    job_id      TEXT      NOT NULL,
    step        TEXT      NOT NULL,
    run         INTEGER   NOT NULL CHECK (run > 0),
    attempt     INTEGER   NOT NULL CHECK (attempt > 0),
    worker_id   TEXT      NOT NULL DEFAULT '',
    status      TEXT      NOT NULL
        CONSTRAINT step_attempts_status_check
        CHECK (status IN ('running', 'succeeded', 'failed', 'lost', 'cancelled', 'interrupted')),
    error_class TEXT      NOT NULL DEFAULT '',
    error       TEXT      NOT NULL DEFAULT '',
    http_status INTEGER   NOT NULL DEFAULT 0,
    started_at  TIMESTAMP NOT NULL CHECK (typeof(started_at) = 'integer'),
    finished_at TIMESTAMP CHECK (typeof(finished_at) IN ('integer', 'null')),
    PRIMARY KEY (job_id, step, run, attempt),
    FOREIGN KEY (job_id, step) REFERENCES job_steps (job_id, name) ON DELETE CASCADE
);

CREATE TABLE job_events (
    job_id  TEXT      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     INTEGER   NOT NULL CHECK (seq > 0),
    type    TEXT      NOT NULL CONSTRAINT job_events_type_check CHECK (type IN ('job', 'step')),
    step    TEXT      NOT NULL DEFAULT '',
    status  TEXT      NOT NULL,
    attempt INTEGER   NOT NULL DEFAULT 0,
    run     INTEGER   NOT NULL DEFAULT 0,
    error   TEXT      NOT NULL DEFAULT '',
    reason  TEXT      NOT NULL DEFAULT '',
    at      TIMESTAMP NOT NULL CHECK (typeof(at) = 'integer'),
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_inputs (
    job_id     TEXT      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    version    INTEGER   NOT NULL CHECK (version > 0),
    input      TEXT      NOT NULL CHECK (json_valid(input)),
    created_at TIMESTAMP NOT NULL CHECK (typeof(created_at) = 'integer'),
    PRIMARY KEY (job_id, version)
);

CREATE TABLE outbox (
    id         INTEGER   PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT      NOT NULL,
    queue      TEXT      NOT NULL,
    type_name  TEXT      NOT NULL,
    payload    BLOB      NOT NULL,
    process_at TIMESTAMP CHECK (typeof(process_at) IN ('integer', 'null')),
    created_at TIMESTAMP NOT NULL CHECK (typeof(created_at) = 'integer')
);

-- job_id has no foreign key: a key is stored before the job it guards is created.
CREATE TABLE idempotency_keys (
    "key"        TEXT      NOT NULL PRIMARY KEY,
    request_hash TEXT      NOT NULL,
    job_id       TEXT,
    created_at   TIMESTAMP NOT NULL CHECK (typeof(created_at) = 'integer'),
    expires_at   TIMESTAMP NOT NULL CHECK (typeof(expires_at) = 'integer')
);

CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
