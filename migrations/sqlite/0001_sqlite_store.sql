-- eventflow's embedded SQLite store (feature `sqlite`): events, snapshots, reader checkpoints,
-- dead letters and saga state, in one database file.
--
-- Applied by `SqliteEventStore::open` (sqlx migrate format, embedded in the library through the
-- `eventflow/migrations` link). The PostgreSQL migrator reads only the files of `migrations/`
-- itself, never this folder.

-- One row per event. `position` is the rowid: SQLite runs one write transaction at a time (the
-- store opens each append with `BEGIN IMMEDIATE`), so a transaction that commits later always
-- has higher positions than every one that committed before it, and a reader never passes over
-- an event that commits later.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    event_id        BLOB    NOT NULL,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL CHECK (stream_version > 0),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    tenant_id       TEXT,
    correlation_id  TEXT,
    causation_id    TEXT,
    source          TEXT,
    -- Microseconds since the Unix epoch (UTC): compares as a number.
    occurred_at     INTEGER NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_event_type_idx ON events (event_type, position);
CREATE INDEX events_correlation_id_idx ON events (correlation_id, position)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX events_tenant_id_idx ON events (tenant_id, position) WHERE tenant_id IS NOT NULL;

-- The latest snapshot per stream (see `SnapshotStore`).
CREATE TABLE snapshots (
    stream_id       TEXT    NOT NULL PRIMARY KEY,
    version         INTEGER NOT NULL,
    schema_version  INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    taken_at        INTEGER NOT NULL
);

-- Durable positions of named readers: the relay, forwarders, projections.
CREATE TABLE checkpoints (
    name        TEXT    NOT NULL PRIMARY KEY,
    position    INTEGER NOT NULL
);

-- Events delivery gave up on (see `DeadLetterStore`); `seq` keeps parking order.
CREATE TABLE dead_letters (
    seq         INTEGER PRIMARY KEY,
    id          BLOB    NOT NULL UNIQUE,
    source      TEXT    NOT NULL,
    event_id    BLOB    NOT NULL,
    event       TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    error       TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    parked_at   INTEGER NOT NULL
);

CREATE INDEX dead_letters_source_idx ON dead_letters (source, seq);

-- Saga state (see `SagaStore`): one row per instance, the ids it handled, its outbox, and the
-- tombstones of pruned instances.
CREATE TABLE saga_instances (
    saga            TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    completed       INTEGER NOT NULL,
    deadlines       TEXT    NOT NULL,
    next_deadline   INTEGER,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (saga, correlation_id)
);

CREATE INDEX saga_instances_deadline_idx ON saga_instances (saga, next_deadline)
    WHERE next_deadline IS NOT NULL;

CREATE TABLE saga_handled (
    saga            TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    event_id        BLOB    NOT NULL,
    PRIMARY KEY (saga, correlation_id, event_id)
);

CREATE TABLE saga_outbox (
    seq         INTEGER PRIMARY KEY,
    saga        TEXT    NOT NULL,
    event_id    BLOB    NOT NULL,
    event       TEXT    NOT NULL,
    UNIQUE (saga, event_id)
);

CREATE TABLE saga_tombstones (
    saga            TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    completed_at    INTEGER NOT NULL,
    PRIMARY KEY (saga, correlation_id)
);
