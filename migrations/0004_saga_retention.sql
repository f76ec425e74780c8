-- Retention of saga bookkeeping (see `SagaStore::prune`): completed instances and their handled
-- event ids are removed after a retention window, in short batches, leaving a compact tombstone
-- so an event redelivered later cannot start the saga again; tombstones are removed after a
-- second, longer window.
--
-- Applied by `PostgresEventStore::migrate` with `search_path` set to the store's schema, like
-- 0001. A completed instance is never updated again, so its `updated_at` is its completion time.

-- Completed instances, oldest first: what `prune` removes.
CREATE INDEX saga_instances_completed_idx ON saga_instances (saga, updated_at) WHERE completed;

-- One row per pruned instance: no state, no handled ids.
CREATE TABLE saga_tombstones (
    saga            text        NOT NULL,
    correlation_id  text        NOT NULL,
    completed_at    timestamptz NOT NULL,
    CONSTRAINT saga_tombstones_pkey PRIMARY KEY (saga, correlation_id)
);

CREATE INDEX saga_tombstones_completed_idx ON saga_tombstones (saga, completed_at);
