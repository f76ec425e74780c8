-- Position continuity (and, below, tenant isolation).
--
-- A position is `(transaction_id << 20) + index`, where `transaction_id` is the writing
-- transaction's id plus `position_base.xid_offset` (0 until it is needed). After a dump and
-- restore into another cluster, or a logical-replication upgrade, the new cluster's transaction
-- ids start low again, so new positions would fall below the stored ones and every reader with
-- a checkpoint would skip them. The store detects that (its first append in each process, and
-- `migrate()`) and raises the offset, under an exclusive lock on `events`, so that every
-- position written afterwards is above every stored one.
CREATE TABLE position_base (
    singleton   boolean     NOT NULL DEFAULT true,
    xid_offset  bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT position_base_pkey PRIMARY KEY (singleton),
    CONSTRAINT position_base_singleton CHECK (singleton),
    CONSTRAINT position_base_offset_check CHECK (xid_offset >= 0)
);
INSERT INTO position_base DEFAULT VALUES;

-- `transaction_id << 20` must stay below 2^63: past 2^43 the shift would wrap silently. An
-- append that would pass it fails on this constraint (the store reports
-- `Error::PositionsExhausted`). Named to sort before `events_position_check`, which a wrapped
-- position would violate too: PostgreSQL checks a table's CHECK constraints in name order, so
-- this one names the cause. NOT VALID: existing rows are below it by construction, and a
-- large store need not be scanned.
ALTER TABLE events ADD CONSTRAINT events_position_bound
    CHECK (transaction_id < 8796093022208) NOT VALID;
