-- eventflow event store: events, snapshots and reader checkpoints.
--
-- Applied by `PostgresEventStore::migrate` with `search_path` set to the store's schema, so the
-- names below are unqualified and one database can hold several independent stores.

-- One row per event. `position` is the global order: the writing transaction's id shifted left
-- by 20 bits plus the event's index within that transaction. Readers only read positions below
-- `pg_snapshot_xmin(pg_current_snapshot()) << 20`, i.e. rows of transactions that can no longer
-- change, so a slow transaction can never commit "behind" a reader (see store/postgres/mod.rs).
CREATE TABLE events (
    position        bigint      NOT NULL,
    transaction_id  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    tenant_id       text,
    correlation_id  text,
    causation_id    text,
    source          text,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_stream_version_check CHECK (stream_version > 0),
    CONSTRAINT events_position_check CHECK (transaction_id = position >> 20)
);

CREATE INDEX events_event_type_idx ON events (event_type, position);
CREATE INDEX events_correlation_id_idx ON events (correlation_id, position)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX events_causation_id_idx ON events (causation_id) WHERE causation_id IS NOT NULL;
CREATE INDEX events_tenant_id_idx ON events (tenant_id, position) WHERE tenant_id IS NOT NULL;

-- The latest snapshot per stream (see `SnapshotStore`).
CREATE TABLE snapshots (
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    schema_version  integer     NOT NULL,
    state           jsonb       NOT NULL,
    taken_at        timestamptz NOT NULL,
    CONSTRAINT snapshots_pkey PRIMARY KEY (stream_id)
);

-- Durable positions of named readers: the relay, projections (see `CheckpointStore`).
CREATE TABLE checkpoints (
    name        text        NOT NULL,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkpoints_pkey PRIMARY KEY (name)
);
