-- eventflow leases: one owner at a time for the relay of a schema and for projection and saga
-- partitions, across processes (see `eventflow::lease`).
--
-- Applied by `PostgresEventStore::migrate` with `search_path` set to the store's schema, like
-- 0001. Expiry is always compared with the database's `now()`, so the clocks of the worker
-- processes do not matter.

-- One row per leased piece of work, kept after a release (expired at once) so the epoch only
-- ever grows: every change of hands increments it, and every checkpoint write of leased work
-- is fenced by `owner` and `epoch` (holding a share lock on this row until its transaction
-- ends, so a takeover waits for it).
CREATE TABLE leases (
    name            text        NOT NULL,
    -- A u32 in Rust.
    partition       bigint      NOT NULL,
    owner           text        NOT NULL,
    epoch           bigint      NOT NULL,
    expires_at      timestamptz NOT NULL,
    acquired_at     timestamptz NOT NULL DEFAULT now(),
    renewed_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT leases_pkey PRIMARY KEY (name, partition),
    CONSTRAINT leases_epoch_check CHECK (epoch > 0),
    CONSTRAINT leases_partition_check CHECK (partition >= 0 AND partition <= 4294967295)
);

-- Live workers of a group (those that share a projection's or saga's partitions), each until
-- its last heartbeat's time-to-live runs out.
CREATE TABLE lease_members (
    group_name      text        NOT NULL,
    member          text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT lease_members_pkey PRIMARY KEY (group_name, member)
);
