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

-- Tenant isolation by row-level security.
--
-- A tenant handle (`PostgresEventStore::tenant`, or `PostgresConfig::tenant`) sets the session
-- setting `eventflow.tenant` on each of its connections. For a role that does not own the
-- tables (the owner, which migrates and runs the operator's handles and the relay, and
-- superusers bypass row-level security), the policy below lets a session see and write only
-- the events of that tenant, and only if the operator granted the role that tenant
-- (`PostgresEventStore::grant_tenant`, one row here): a raw `SET eventflow.tenant` to another
-- tenant through the same connection sees nothing.
CREATE TABLE tenant_roles (
    role_name   text NOT NULL,
    tenant_id   text NOT NULL,
    CONSTRAINT tenant_roles_pkey PRIMARY KEY (role_name, tenant_id)
);
-- A role reads only its own grants (the policy below reads them as the current role).
ALTER TABLE tenant_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_roles_own ON tenant_roles USING (role_name = current_user);

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
CREATE POLICY events_tenant ON events
    USING (tenant_id = current_setting('eventflow.tenant', true)
           AND EXISTS (SELECT 1 FROM tenant_roles r
                        WHERE r.role_name = current_user AND r.tenant_id = events.tenant_id))
    WITH CHECK (tenant_id = current_setting('eventflow.tenant', true)
                AND EXISTS (SELECT 1 FROM tenant_roles r
                             WHERE r.role_name = current_user AND r.tenant_id = events.tenant_id));
