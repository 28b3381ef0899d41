-- CAO initial schema (Postgres). Times are timestamptz written by the application in UTC with
-- microsecond precision; JSON is jsonb. Status values are fixed by the public contract.

CREATE TABLE jobs (
    id              uuid        PRIMARY KEY,
    feature_name    text        NOT NULL,
    status          text        NOT NULL
        CONSTRAINT jobs_status_check
        CHECK (status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    input           jsonb       NOT NULL,
    input_version   integer     NOT NULL DEFAULT 1 CHECK (input_version > 0),
    output          jsonb,
    error           text        NOT NULL DEFAULT '',
    last_seq        bigint      NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    stuck_at        timestamptz,
    stuck_reason    text        NOT NULL DEFAULT '',
    idempotency_key text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz
);

-- GET /jobs: newest first, keyset pagination on (created_at, id), optional status or feature filter.
CREATE INDEX jobs_created_at_id_idx ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_created_at_idx ON jobs (status, created_at DESC, id DESC);
CREATE INDEX jobs_feature_created_at_idx ON jobs (feature_name, created_at DESC, id DESC);
-- Reaper: active jobs without progress since a given time, and jobs marked stuck.
CREATE INDEX jobs_status_updated_at_idx ON jobs (status, updated_at);
CREATE INDEX jobs_stuck_at_idx ON jobs (stuck_at) WHERE stuck_at IS NOT NULL;

CREATE TABLE job_steps (
    job_id           uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name             text        NOT NULL,
    position         integer     NOT NULL,
    service          text        NOT NULL,
    queue            text        NOT NULL,
    needs            jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(needs) = 'array'),
    status           text        NOT NULL
        CONSTRAINT job_steps_status_check
        CHECK (status IN ('PENDING', 'QUEUED', 'RUNNING', 'RETRYING', 'SUCCEEDED', 'FAILED', 'SKIPPED', 'CANCELLED')),
    run              integer     NOT NULL DEFAULT 1 CHECK (run > 0),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lost             integer     NOT NULL DEFAULT 0 CHECK (lost >= 0),
    lease_owner      text        NOT NULL DEFAULT '',
    lease_expires_at timestamptz,
    next_attempt_at  timestamptz,
    output           jsonb,
    error            text        NOT NULL DEFAULT '',
    error_class      text        NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (job_id, name)
);

-- Reaper: RUNNING steps whose lease expired, and QUEUED/RETRYING steps waiting too long.
CREATE INDEX job_steps_status_lease_expires_at_idx ON job_steps (status, lease_expires_at);
CREATE INDEX job_steps_status_updated_at_idx ON job_steps (status, updated_at);

CREATE TABLE step_attempts (
    job_id      uuid        NOT NULL,
    step        text        NOT NULL,
    run         integer     NOT NULL CHECK (run > 0),
    attempt     integer     NOT NULL CHECK (attempt > 0),
    worker_id   text        NOT NULL DEFAULT '',
    status      text        NOT NULL
        CONSTRAINT step_attempts_status_check
        CHECK (status IN ('running', 'succeeded', 'failed', 'lost', 'cancelled', 'interrupted')),
    error_class text        NOT NULL DEFAULT '',
    error       text        NOT NULL DEFAULT '',
    http_status integer     NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    PRIMARY KEY (job_id, step, run, attempt),
    FOREIGN KEY (job_id, step) REFERENCES job_steps (job_id, name) ON DELETE CASCADE
);

CREATE TABLE job_events (
    job_id  uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     bigint      NOT NULL CHECK (seq > 0),
    type    text        NOT NULL CONSTRAINT job_events_type_check CHECK (type IN ('job', 'step')),
    step    text        NOT NULL DEFAULT '',
    status  text        NOT NULL,
    attempt integer     NOT NULL DEFAULT 0,
    run     integer     NOT NULL DEFAULT 0,
    error   text        NOT NULL DEFAULT '',
    reason  text        NOT NULL DEFAULT '',
    at      timestamptz NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_inputs (
    job_id     uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    version    integer     NOT NULL CHECK (version > 0),
    input      jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, version)
);

-- Tasks a committed state change requires; the relay moves them to Redis and deletes them.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    task_id    text        NOT NULL,
    queue      text        NOT NULL,
    type_name  text        NOT NULL,
    payload    bytea       NOT NULL,
    process_at timestamptz,
    created_at timestamptz NOT NULL
);

-- job_id has no foreign key: a key is stored before the job it guards is created.
CREATE TABLE idempotency_keys (
    "key"        text        PRIMARY KEY,
    request_hash text        NOT NULL,
    job_id       uuid,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
