-- Projections and sagas (eventflow::projection::postgres, eventflow::saga::postgres).
-- Idempotent (IF NOT EXISTS) so it can be applied by the sqlx migrator and by
-- `eventflow::projection::postgres::migrate` alike. Unqualified names: the tables live in the
-- schema on the connection's search_path (one schema per test).

-- Checkpoints of transactional projections: advanced in the same transaction as the read model.
CREATE TABLE IF NOT EXISTS eventflow_projection_checkpoints (
    name        text        PRIMARY KEY,
    position    bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per saga instance. The primary key is the promise that two events with the same
-- correlation id never create two instances.
CREATE TABLE IF NOT EXISTS eventflow_saga_instances (
    saga            text        NOT NULL,
    correlation_id  text        NOT NULL,
    state           jsonb       NOT NULL,
    version         bigint      NOT NULL CHECK (version > 0),
    completed       boolean     NOT NULL DEFAULT false,
    deadlines       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- The earliest deadline, so due instances are found with an index scan.
    next_deadline   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, correlation_id)
);

CREATE INDEX IF NOT EXISTS eventflow_saga_instances_due
    ON eventflow_saga_instances (saga, next_deadline)
    WHERE next_deadline IS NOT NULL;

-- Event ids each instance has handled: a redelivered event is ignored.
CREATE TABLE IF NOT EXISTS eventflow_saga_handled (
    saga            text        NOT NULL,
    correlation_id  text        NOT NULL,
    event_id        uuid        NOT NULL,
    handled_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, correlation_id, event_id)
);

-- Events a saga emitted, written with its state and removed once published.
CREATE TABLE IF NOT EXISTS eventflow_saga_outbox (
    seq         bigserial   PRIMARY KEY,
    saga        text        NOT NULL,
    event_id    uuid        NOT NULL,
    event       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (saga, event_id)
);
