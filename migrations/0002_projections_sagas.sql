-- eventflow sagas: instances per correlation id, handled event ids, and the outbox.
--
-- Applied by `PostgresEventStore::migrate` with `search_path` set to the store's schema, like
-- 0001. Transactional projections keep their checkpoints in 0001's `checkpoints` table (the same
-- table `PostgresCheckpointStore` uses), advanced in the transaction that writes the read model.

-- One row per saga instance. The primary key is the promise that two events with the same
-- correlation id never create two instances: of two racing creations, one finds the row.
CREATE TABLE saga_instances (
    saga            text        NOT NULL,
    correlation_id  text        NOT NULL,
    state           jsonb       NOT NULL,
    version         bigint      NOT NULL,
    completed       boolean     NOT NULL DEFAULT false,
    deadlines       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- The earliest pending deadline, so due instances are found with an index scan.
    next_deadline   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_instances_pkey PRIMARY KEY (saga, correlation_id),
    CONSTRAINT saga_instances_version_check CHECK (version > 0)
);

CREATE INDEX saga_instances_due_idx ON saga_instances (saga, next_deadline)
    WHERE next_deadline IS NOT NULL;

-- Event ids each instance has handled, written in the same transaction as its state: a
-- redelivered event finds its id and is ignored.
CREATE TABLE saga_handled (
    saga            text        NOT NULL,
    correlation_id  text        NOT NULL,
    event_id        uuid        NOT NULL,
    handled_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_handled_pkey PRIMARY KEY (saga, correlation_id, event_id)
);

-- Events a saga emitted, written with its state and deleted once published, so an emitted
-- event survives a crash between the commit and the publish.
CREATE TABLE saga_outbox (
    seq         bigserial   NOT NULL,
    saga        text        NOT NULL,
    event_id    uuid        NOT NULL,
    event       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_outbox_pkey PRIMARY KEY (seq),
    CONSTRAINT saga_outbox_event_key UNIQUE (saga, event_id)
);
