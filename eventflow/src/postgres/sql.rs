//! Every SQL statement of the PostgreSQL backend, in one place: the event store, snapshots,
//! checkpoints, transactional projections, sagas and dead letters.
//!
//! Table names cannot be bind parameters, so each statement is a template with `{events}`,
//! `{snapshots}`, `{checkpoints}` and `{schema}` placeholders that [`Sql::new`] fills in once,
//! at construction, with the schema-qualified and quoted names (the schema name is validated by
//! [`Schema`] first). Every value is a bind parameter; nothing a caller passes at run time is
//! ever spliced into SQL text.

use super::schema::Schema;

/// Bits of `position` that hold the index of an event within its transaction: the rest hold the
/// transaction id. 20 bits allow 1,048,575 events per transaction and transaction ids up to
/// 2^43, which is decades of transactions even at tens of thousands per second.
pub(crate) const TX_SHIFT: u32 = 20;

/// Most events one transaction may append.
pub(crate) const MAX_EVENTS_PER_TX: usize = (1 << TX_SHIFT) - 1;

/// The highest position no running or future transaction can still write below: rows under it
/// are final. `pg_snapshot_xmin` is the oldest transaction still running when the statement's
/// snapshot was taken; every transaction below it has committed or rolled back. Positions
/// count transaction ids plus the schema's `position_base.xid_offset` (0 unless a restore
/// moved them forward, see `migrations/0007_positions_tenants.sql`), read in the same statement.
const SAFE_CUTOFF: &str = "((pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
     + (SELECT xid_offset FROM {schema}.position_base)) << 20)";

/// The writing transaction's position base: its id plus the schema's offset (the `tx` of every
/// append statement).
const TX_ID: &str = "(SELECT pg_current_xact_id()::text::bigint + o.xid_offset AS id \
     FROM {schema}.position_base o) tx";

/// Columns read back into an `Event`, in the order `EventRow` expects.
pub(crate) const EVENT_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, \
     schema_version, payload, metadata, correlation_id, causation_id, source, occurred_at";

/// Appends a batch in one statement.
///
/// The transaction id is taken first (`pg_current_xact_id()` assigns one if needed) and becomes
/// the high bits of every position; the low bits number the events of the batch from 1. The
/// store runs exactly one append per transaction (`append_batch` in its own, `begin_append` holds
/// one open), so positions never collide; a second append in one transaction would fail on
/// `events_pkey`. The stream's current version is read in the same statement and the rows are
/// only inserted when it matches `$2` (`-1` = any version); a concurrent writer that got there
/// first makes the insert fail on `events_stream_version_key`. One array per column keeps the
/// bind count at 12 whatever the batch size. Positions and versions of a batch are consecutive
/// (both count the same ordinality), so one row comes back: the first of each and the count
/// (NULLs and 0 when the version condition did not hold).
const APPEND: &str = "
WITH ins AS (
INSERT INTO {events} (position, transaction_id, event_id, stream_id, stream_version, event_type,
                      schema_version, payload, metadata, tenant_id, correlation_id, causation_id,
                      source, occurred_at)
SELECT (tx.id << 20) + b.n, tx.id, b.event_id, $1, cur.version + b.n, b.event_type,
       b.schema_version, b.payload::jsonb, b.metadata::jsonb, b.tenant_id, b.correlation_id,
       b.causation_id, b.source, b.occurred_at
  FROM {tx},
       (SELECT coalesce(max(stream_version), 0) AS version FROM {events} WHERE stream_id = $1) cur,
       unnest($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::text[], $9::text[],
              $10::text[], $11::text[], $12::timestamptz[])
       WITH ORDINALITY AS b(event_id, event_type, schema_version, payload, metadata, tenant_id,
                            correlation_id, causation_id, source, occurred_at, n)
 WHERE $2::bigint < 0 OR cur.version = $2::bigint
RETURNING position, stream_version
)
SELECT min(position), min(stream_version), count(*), {notify} FROM ins";

/// [`APPEND`] for a single event, with one value per column instead of arrays: the common case
/// (`append`, most commands) skips the array encoding and the `unnest`.
const APPEND_ONE: &str = "
WITH ins AS (
INSERT INTO {events} (position, transaction_id, event_id, stream_id, stream_version, event_type,
                      schema_version, payload, metadata, tenant_id, correlation_id, causation_id,
                      source, occurred_at)
SELECT (tx.id << 20) + 1, tx.id, $3::uuid, $1, cur.version + 1, $4::text, $5::int4,
       $6::text::jsonb, $7::text::jsonb, $8::text, $9::text, $10::text, $11::text,
       $12::timestamptz
  FROM {tx},
       (SELECT coalesce(max(stream_version), 0) AS version FROM {events} WHERE stream_id = $1) cur
 WHERE $2::bigint < 0 OR cur.version = $2::bigint
RETURNING position, stream_version
)
SELECT position, stream_version, {notify} FROM ins";

/// The append's notification, in the append's own statement (so its transaction: delivered at
/// commit, never before, no second connection or round trip), sent only when some session of
/// another process listens for this store: listeners register their server pid in `listeners`
/// (`migrations/0008_listeners.sql`), and `$14` is this process's own listener (its followers
/// are woken directly). Nobody listening: no `NOTIFY`, so appends do not take the lock a
/// notifying transaction holds through its commit (which serializes the commits of notifying
/// writers: the price of a remote follower's low latency). `NULL` when not sent. Evaluated once,
/// and only when the statement inserted rows.
const APPEND_NOTIFY: &str = "(SELECT pg_notify($13, '')::text \
     WHERE EXISTS (SELECT 1 FROM ins) \
       AND EXISTS (SELECT 1 FROM {schema}.listeners l WHERE l.pid <> $14))";

/// [`APPEND`] inside a caller's transaction (`append_in`), which may append more than once:
/// the events are numbered after those this transaction appended already (the highest
/// position in its range `[xid << 20, (xid + 1) << 20)`, found on the primary key), so a
/// second append of the same transaction continues its positions instead of colliding.
const APPEND_IN_TX: &str = "
WITH ins AS (
INSERT INTO {events} (position, transaction_id, event_id, stream_id, stream_version, event_type,
                      schema_version, payload, metadata, tenant_id, correlation_id, causation_id,
                      source, occurred_at)
SELECT base.p + b.n, tx.id, b.event_id, $1, cur.version + b.n, b.event_type,
       b.schema_version, b.payload::jsonb, b.metadata::jsonb, b.tenant_id, b.correlation_id,
       b.causation_id, b.source, b.occurred_at
  FROM {tx}
       CROSS JOIN LATERAL (SELECT coalesce(max(position), tx.id << 20) AS p FROM {events}
                            WHERE position >= tx.id << 20 AND position < (tx.id + 1) << 20) base,
       (SELECT coalesce(max(stream_version), 0) AS version FROM {events} WHERE stream_id = $1) cur,
       unnest($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::text[], $9::text[],
              $10::text[], $11::text[], $12::timestamptz[])
       WITH ORDINALITY AS b(event_id, event_type, schema_version, payload, metadata, tenant_id,
                            correlation_id, causation_id, source, occurred_at, n)
 WHERE $2::bigint < 0 OR cur.version = $2::bigint
RETURNING position, stream_version
)
SELECT min(position), min(stream_version), count(*) FROM ins";

/// Whether new positions would fall at or below the stored ones: the highest stored position,
/// and the lowest position a transaction that starts now can write (`pg_snapshot_xmax` is the
/// first transaction id not yet assigned). In normal operation the second is always higher;
/// after a restore into a cluster with a younger transaction-id counter it is not.
const POSITIONS_CHECK: &str = "SELECT (SELECT coalesce(max(position), 0) FROM {events}), \
     (pg_snapshot_xmax(pg_current_snapshot())::text::bigint \
      + (SELECT xid_offset FROM {schema}.position_base)) << 20";

/// Locks `events` against every reader and writer for the rest of the transaction: appends in
/// flight finish first, and none starts until the offset is raised.
const LOCK_EVENTS: &str = "LOCK TABLE {events} IN ACCESS EXCLUSIVE MODE";

/// Raises the offset (under [`LOCK_EVENTS`]) so that every transaction still running or yet to
/// start (ids from `pg_snapshot_xmin` on) writes above the highest stored position; only when
/// new positions would not be above it already. Returns the new offset (no row: unchanged).
const POSITIONS_RAISE: &str = "UPDATE {schema}.position_base SET \
     xid_offset = ((SELECT max(position) FROM {events}) >> 20) + 1 \
                  - pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
     updated_at = now() \
     WHERE (SELECT coalesce(max(position), 0) FROM {events}) >= \
           (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + xid_offset) << 20 \
     RETURNING xid_offset";

/// The migration's own connection waits for other processes' migrations, and runs long ones:
/// no statement timeout there.
pub(crate) const NO_STATEMENT_TIMEOUT: &str = "SET statement_timeout = 0";

/// The savepoint `append_in` takes inside the caller's transaction, so a failed append leaves
/// that transaction usable.
pub(crate) const SAVEPOINT: &str = "SAVEPOINT eventflow_append";

/// Undoes a failed `append_in` (back to its savepoint, which is then released).
pub(crate) const ROLLBACK_TO_SAVEPOINT: &str =
    "ROLLBACK TO SAVEPOINT eventflow_append; RELEASE SAVEPOINT eventflow_append";

/// Records that a role may use tenant handles for a tenant (`grant_tenant`).
const GRANT_TENANT: &str = "INSERT INTO {schema}.tenant_roles (role_name, tenant_id) \
     VALUES ($1, $2) ON CONFLICT DO NOTHING";

const STREAM_VERSION: &str =
    "SELECT coalesce(max(stream_version), 0) FROM {events} WHERE stream_id = $1";

const LOAD_STREAM: &str = "SELECT {columns} FROM {events} \
     WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version";

/// What folding an aggregate needs of a stream, the payload as text (`load_stream_stored`):
/// decoded once, by the repository, into the typed event.
const LOAD_STREAM_STORED: &str = "SELECT {stored_columns} FROM {events} \
     WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version";

/// The latest snapshot of a stream taken at a state schema version, and the events after it
/// (after version 0 without one), in one statement: the snapshot row first (kind 0, no event
/// columns), then the events in stream order (kind 1, no snapshot columns).
const LOAD_SNAPSHOT_AND_TAIL: &str = "WITH s AS (SELECT version, schema_version, state, taken_at \
     FROM {snapshots} WHERE stream_id = $1 AND schema_version = $2) \
     SELECT 0 AS kind, NULL::bigint AS position, NULL::uuid AS event_id, version, \
     NULL::text AS event_type, schema_version, NULL::text AS payload, state, taken_at FROM s \
     UNION ALL \
     SELECT 1, position, event_id, stream_version, event_type, schema_version, payload::text, \
     NULL::jsonb, NULL::timestamptz FROM {events} \
     WHERE stream_id = $1 AND stream_version > coalesce((SELECT version FROM s), 0) \
     ORDER BY 1, 4";

/// Columns read back into a `StoredEvent`, in the order `StoredRow` expects.
const STORED_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, \
     schema_version, payload::text";

/// [`READ_ALL`] for `StoredEvent`s: the payload as text, no metadata.
const READ_ALL_STORED: &str = "SELECT {stored_columns}, \
     (SELECT max(position) FROM {events}) AS top, \
     (SELECT coalesce(max(position), 0) FROM {events} WHERE position < {cutoff}) AS head \
     FROM {events} WHERE position > $1 AND position < {cutoff} ORDER BY position LIMIT $2";

/// The stored copies of some event ids (the idempotency check, on the error path only).
const EVENTS_BY_ID: &str = "SELECT {columns} FROM {events} WHERE event_id = ANY($1::uuid[]) \
     ORDER BY position";

/// A page of the global order, with the highest committed position and the safe head of the
/// same snapshot as two extra columns: a reader that got less than a full page learns from them
/// whether it saw everything, or committed events wait behind a slower transaction.
const READ_ALL: &str = "SELECT {columns}, (SELECT max(position) FROM {events}) AS top, \
     (SELECT coalesce(max(position), 0) FROM {events} WHERE position < {cutoff}) AS head \
     FROM {events} WHERE position > $1 AND position < {cutoff} ORDER BY position LIMIT $2";

/// The safe head and the highest committed position: when the second is larger, committed
/// events wait behind a slower transaction (the change watcher then polls until they do not).
const HEAD_AND_TOP: &str = "SELECT \
     (SELECT coalesce(max(position), 0) FROM {events} WHERE position < {cutoff}), \
     (SELECT coalesce(max(position), 0) FROM {events})";

/// Start of a criteria query; `load` appends the `CRITERIA_*` fragments for the fields that are
/// set, each with its value bound, then `CRITERIA_ORDER` and, with a limit, `CRITERIA_LIMIT`.
///
/// `load` reads every committed row (a point-in-time query that never waits);
/// [`CRITERIA_SELECT_SAFE`] is the strict form (`strict_load`), below the safe horizon only.
const CRITERIA_SELECT: &str = "SELECT {columns} FROM {events} WHERE true";

/// [`CRITERIA_SELECT`] restricted to rows below the safe horizon (opt-in strict loads).
const CRITERIA_SELECT_SAFE: &str = "SELECT {columns} FROM {events} WHERE position < {cutoff}";
pub(crate) const CRITERIA_EVENT_TYPES: &str = " AND event_type = ANY(";
pub(crate) const CRITERIA_SINCE: &str = " AND occurred_at >= ";
pub(crate) const CRITERIA_UNTIL: &str = " AND occurred_at < ";
pub(crate) const CRITERIA_CORRELATION: &str = " AND correlation_id = ";
pub(crate) const CRITERIA_TENANT: &str = " AND tenant_id = ";
pub(crate) const CRITERIA_STREAM: &str = " AND stream_id = ";
pub(crate) const CRITERIA_AFTER: &str = " AND position > ";
pub(crate) const CRITERIA_ORDER: &str = " ORDER BY position";
pub(crate) const CRITERIA_LIMIT: &str = " LIMIT ";

/// Wakes listeners of other processes after an append that did not notify in its own
/// statement (nobody listened then) or a rollback; sent by one background task per store, only
/// when some session of another process listens (`$2`: this process's own listener, which
/// needs no notification). A notification needs no durability, so its transaction commits
/// without waiting for the WAL flush.
const NOTIFY: &str = "SELECT set_config('synchronous_commit', 'off', true), \
     pg_notify($1, '') WHERE EXISTS (SELECT 1 FROM {schema}.listeners l WHERE l.pid <> $2)";

/// Registers the listener's connection (see [`APPEND_NOTIFY`]) after removing the rows of
/// sessions that are gone, and returns its server pid.
const REGISTER_LISTENER: &str = "WITH gone AS ( \
        DELETE FROM {schema}.listeners l \
         WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid)) \
     INSERT INTO {schema}.listeners (pid) VALUES (pg_backend_pid()) \
     ON CONFLICT (pid) DO UPDATE SET since = now() RETURNING pid";

const LOAD_SNAPSHOT: &str = "SELECT stream_id, version, schema_version, state, taken_at \
     FROM {snapshots} WHERE stream_id = $1";

/// Replaces the stored snapshot unless it is newer than the one being saved.
const SAVE_SNAPSHOT: &str = "INSERT INTO {snapshots} AS s \
     (stream_id, version, schema_version, state, taken_at) VALUES ($1, $2, $3, $4::jsonb, $5) \
     ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, \
     schema_version = EXCLUDED.schema_version, state = EXCLUDED.state, \
     taken_at = EXCLUDED.taken_at WHERE s.version <= EXCLUDED.version";

const LOAD_CHECKPOINT: &str = "SELECT position FROM {checkpoints} WHERE name = $1";

/// Saves a checkpoint; never moves it backwards (a lower position leaves the row alone).
const SAVE_CHECKPOINT: &str = "INSERT INTO {checkpoints} AS c (name, position) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now() \
     WHERE c.position < EXCLUDED.position";

/// Sets a checkpoint back to 0: a rebuild, the one way a checkpoint moves backwards.
const RESET_CHECKPOINT: &str = "INSERT INTO {checkpoints} (name, position) VALUES ($1, 0) \
     ON CONFLICT (name) DO UPDATE SET position = 0, updated_at = now()";

/// Columns read back into a `Lease`, in the order the lease store expects.
const LEASE_COLUMNS: &str = "name, partition, owner, epoch, expires_at";

/// Claims a lease (`migrations/0006_leases.sql`): inserts it at epoch 1, or takes over a row
/// that expired (epoch + 1), or renews the caller's own live lease (same epoch). A row another
/// owner holds live matches the `WHERE` of the update and nothing comes back. Racing claimants
/// of a new row meet on the primary key: one inserts, the others see its row and find it live.
/// `$4` is the time-to-live in microseconds; expiry is the database's clock.
const LEASE_ACQUIRE: &str = "INSERT INTO {schema}.leases AS l \
        (name, partition, owner, epoch, expires_at) \
     VALUES ($1, $2, $3, 1, now() + $4::bigint * interval '1 microsecond') \
     ON CONFLICT (name, partition) DO UPDATE SET \
        owner = EXCLUDED.owner, \
        epoch = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > now() \
                     THEN l.epoch ELSE l.epoch + 1 END, \
        acquired_at = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > now() \
                           THEN l.acquired_at ELSE now() END, \
        expires_at = EXCLUDED.expires_at, \
        renewed_at = now() \
     WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner \
     RETURNING {lease_columns}";

/// Extends a live lease still held by `$3` at epoch `$4`.
const LEASE_RENEW: &str = "UPDATE {schema}.leases \
     SET expires_at = now() + $5::bigint * interval '1 microsecond', renewed_at = now() \
     WHERE name = $1 AND partition = $2 AND owner = $3 AND epoch = $4 AND expires_at > now() \
     RETURNING {lease_columns}";

/// Gives a lease up: it expires now and keeps its epoch, so the next claim increments it.
const LEASE_RELEASE: &str = "UPDATE {schema}.leases SET expires_at = least(expires_at, now()) \
     WHERE name = $1 AND partition = $2 AND owner = $3 AND epoch = $4";

/// Every lease, or those of one name (`$1` NULL: all), in byte order of name, then partition.
const LEASE_LIST: &str = "SELECT {lease_columns} FROM {schema}.leases \
     WHERE $1::text IS NULL OR name = $1 ORDER BY name COLLATE \"C\", partition";

/// The fenced checkpoint write: saves checkpoint `$5` at `$6` only while lease (`$1`, `$2`) is
/// held by `$3` at epoch `$4`, and never backwards. `FOR SHARE` keeps the lease row locked until
/// the caller's transaction ends, so a takeover (an update of that row) waits for the commit
/// and its new owner reads the checkpoint after it; a takeover that committed first is seen by
/// the lock's recheck of the row, and nothing is written. The count of matching lease rows
/// comes back: 0 means the lease was lost.
const FENCED_CHECKPOINT: &str = "WITH held AS ( \
        SELECT 1 FROM {schema}.leases \
         WHERE name = $1 AND partition = $2 AND owner = $3 AND epoch = $4 FOR SHARE), \
     saved AS ( \
        INSERT INTO {checkpoints} AS c (name, position) SELECT $5, $6 FROM held \
        ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now() \
        WHERE c.position < EXCLUDED.position RETURNING 1) \
     SELECT count(*) FROM held";

/// Adds a member to a group, or extends it, for `$3` microseconds; drops the group's expired
/// members on the way, so workers that died without leaving do not pile up.
const MEMBER_JOIN: &str = "WITH gone AS ( \
        DELETE FROM {schema}.lease_members \
         WHERE group_name = $1 AND member <> $2 AND expires_at <= now()) \
     INSERT INTO {schema}.lease_members (group_name, member, expires_at) \
     VALUES ($1, $2, now() + $3::bigint * interval '1 microsecond') \
     ON CONFLICT (group_name, member) DO UPDATE SET expires_at = EXCLUDED.expires_at";

/// The live members of a group, in byte order.
const MEMBERS: &str = "SELECT member FROM {schema}.lease_members \
     WHERE group_name = $1 AND expires_at > now() ORDER BY member COLLATE \"C\"";

const MEMBER_LEAVE: &str =
    "DELETE FROM {schema}.lease_members WHERE group_name = $1 AND member = $2";

/// Creates a projection's checkpoint row if missing, so its batches can lock it.
const CREATE_CHECKPOINT: &str = "INSERT INTO {checkpoints} (name, position) VALUES ($1, 0) \
     ON CONFLICT (name) DO NOTHING";

/// Opens a projection batch, in one statement: lets the handler name its read-model tables
/// unqualified (`set_config(.., true)` is `SET LOCAL`: this transaction only, `$1` the quoted
/// schema) and takes the projection's transaction-scoped advisory lock (`$2` its key), so a
/// second runner of the same projection waits here, then sees the position moved (read by the
/// next statement, with a snapshot taken after the lock). Unlike a row lock (`FOR UPDATE`), an
/// advisory lock assigns no transaction id: the batch holds none until its handler's first
/// write, or the checkpoint write at the end, so it holds back no global reader meanwhile.
const BEGIN_PROJECTION_BATCH: &str = "SELECT set_config('search_path', $1, true), \
     pg_advisory_xact_lock(hashtextextended($2, 0))::text";

/// A projection batch's starting point, read after [`BEGIN_PROJECTION_BATCH`] took the lock:
/// the checkpoint `$1` (0 when none), and whether an operator paused the projection `$2`
/// (`migrations/0009_projection_controls.sql`; a partition's checkpoint is paused with its
/// projection).
const LOAD_PROJECTION_CHECKPOINT: &str = "SELECT \
     coalesce((SELECT position FROM {checkpoints} WHERE name = $1), 0), \
     coalesce((SELECT paused FROM {schema}.projection_controls WHERE name = $2), false)";

/// Ends a partition batch's transaction on the server if it sits idle longer than the lease's
/// time-to-live (its worker paused), so it never holds the checkpoint row or the readers' bound
/// for long. `set_config(.., true)` is `SET LOCAL` with a bound value.
const SET_LOCAL_IDLE_TIMEOUT: &str =
    "SELECT set_config('idle_in_transaction_session_timeout', $1, true)";

/// Whether a read on this connection would pin the safe horizon at itself: its transaction
/// holds a transaction id (it wrote), or a transaction snapshot (repeatable read or
/// serializable inside a transaction block; `now()` is the block's start, so it differs from
/// the statement's time there).
pub(crate) const PINS_HORIZON: &str = "SELECT pg_current_xact_id_if_assigned()::text, \
     current_setting('transaction_isolation') <> 'read committed' \
     AND now() <> statement_timestamp()";

/// The oldest running transaction holding a transaction id (not this session's), and the oldest
/// prepared (two-phase) transaction, oldest first: what holds the safe horizon back.
pub(crate) const HORIZON_HOLDERS: &str = "SELECT kind, pid, xid, age_seconds, database, \
        application_name, detail FROM ( \
     (SELECT 'running'::text AS kind, a.pid, a.backend_xid::text::bigint AS xid, \
             extract(epoch FROM now() - a.xact_start)::float8 AS age_seconds, \
             a.datname::text AS database, a.application_name::text AS application_name, \
             a.state::text AS detail, age(a.backend_xid) AS xid_age \
        FROM pg_stat_activity a \
       WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid() \
       ORDER BY age(a.backend_xid) DESC LIMIT 1) \
     UNION ALL \
     (SELECT 'prepared', NULL::int, p.transaction::text::bigint, \
             extract(epoch FROM now() - p.prepared)::float8, p.database::text, NULL::text, \
             p.gid, age(p.transaction) \
        FROM pg_prepared_xacts p ORDER BY age(p.transaction) DESC LIMIT 1) \
     ) h ORDER BY xid_age DESC";

const SAGA_INSTANCE_COUNT: &str = "SELECT count(*) FROM {schema}.saga_instances WHERE saga = $1";

/// One round trip: the instance (if any), whether the event is recorded as handled, and whether
/// the instance was pruned (a tombstone).
const SAGA_LOAD: &str = "SELECT i.state, i.version, i.completed, i.deadlines, \
        EXISTS (SELECT 1 FROM {schema}.saga_handled h \
                WHERE h.saga = $1 AND h.correlation_id = $2 AND h.event_id = $3), \
        EXISTS (SELECT 1 FROM {schema}.saga_tombstones t \
                WHERE t.saga = $1 AND t.correlation_id = $2) \
     FROM (SELECT 1) AS one \
     LEFT JOIN {schema}.saga_instances i ON i.saga = $1 AND i.correlation_id = $2";

/// Records a handled event id; a redelivered event finds it (primary key) and inserts nothing.
const SAGA_RECORD_HANDLED: &str = "INSERT INTO {schema}.saga_handled \
     (saga, correlation_id, event_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

/// Creates an instance; the primary key decides a creation race: the loser inserts nothing. A
/// pruned instance (its tombstone) is not created again: nothing is inserted either.
const SAGA_CREATE: &str = "INSERT INTO {schema}.saga_instances \
        (saga, correlation_id, state, version, completed, deadlines, next_deadline) \
     SELECT $1::text, $2::text, $3::jsonb, 1, $4::bool, $5::jsonb, $6::timestamptz \
      WHERE NOT EXISTS (SELECT 1 FROM {schema}.saga_tombstones t \
                        WHERE t.saga = $1 AND t.correlation_id = $2) \
     ON CONFLICT DO NOTHING";

/// Updates an instance only at the expected version (`$7`).
const SAGA_UPDATE: &str = "UPDATE {schema}.saga_instances \
     SET state = $3, version = version + 1, completed = $4, deadlines = $5, \
         next_deadline = $6, updated_at = now() \
     WHERE saga = $1 AND correlation_id = $2 AND version = $7";

const SAGA_VERSION: &str =
    "SELECT version FROM {schema}.saga_instances WHERE saga = $1 AND correlation_id = $2";

/// Writes the outbox in the order given.
const SAGA_OUTBOX_INSERT: &str = "INSERT INTO {schema}.saga_outbox (saga, event_id, event) \
     SELECT $1, id, event FROM UNNEST($2::uuid[], $3::jsonb[]) WITH ORDINALITY \
         AS t(id, event, n) ORDER BY n \
     ON CONFLICT (saga, event_id) DO NOTHING";

const SAGA_DUE_DEADLINES: &str = "SELECT correlation_id, deadlines FROM {schema}.saga_instances \
     WHERE saga = $1 AND next_deadline IS NOT NULL AND next_deadline <= $2 \
     ORDER BY next_deadline LIMIT $3";

const SAGA_PENDING_OUTBOX: &str =
    "SELECT event FROM {schema}.saga_outbox WHERE saga = $1 ORDER BY seq LIMIT $2";

const SAGA_ACK_OUTBOX: &str =
    "DELETE FROM {schema}.saga_outbox WHERE saga = $1 AND event_id = ANY($2)";

/// Removes up to `$3` instances that completed before `$2`, oldest first, with their handled
/// ids, and leaves a tombstone for each: one statement, so one short transaction per batch.
/// `SKIP LOCKED` lets two pruners (two processes) take different batches.
const SAGA_PRUNE: &str = "WITH done AS ( \
        SELECT correlation_id FROM {schema}.saga_instances \
         WHERE saga = $1 AND completed AND updated_at < $2 \
         ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
     removed AS ( \
        DELETE FROM {schema}.saga_instances i USING done \
         WHERE i.saga = $1 AND i.correlation_id = done.correlation_id \
        RETURNING i.correlation_id, i.updated_at), \
     handled AS ( \
        DELETE FROM {schema}.saga_handled h USING removed \
         WHERE h.saga = $1 AND h.correlation_id = removed.correlation_id), \
     tombstones AS ( \
        INSERT INTO {schema}.saga_tombstones (saga, correlation_id, completed_at) \
        SELECT $1, correlation_id, updated_at FROM removed \
        ON CONFLICT (saga, correlation_id) DO UPDATE SET completed_at = EXCLUDED.completed_at) \
     SELECT count(*) FROM removed";

/// Removes up to `$3` tombstones of instances that completed before `$2`, oldest first.
const SAGA_PRUNE_TOMBSTONES: &str = "DELETE FROM {schema}.saga_tombstones t USING ( \
        SELECT correlation_id FROM {schema}.saga_tombstones \
         WHERE saga = $1 AND completed_at < $2 \
         ORDER BY completed_at LIMIT $3 FOR UPDATE SKIP LOCKED) old \
     WHERE t.saga = $1 AND t.correlation_id = old.correlation_id";

const SAGA_HANDLED_COUNT: &str = "SELECT count(*) FROM {schema}.saga_handled WHERE saga = $1";

const SAGA_TOMBSTONE_COUNT: &str = "SELECT count(*) FROM {schema}.saga_tombstones WHERE saga = $1";

/// Parks an event (see `DeadLetterStore`).
const DEAD_LETTER_PARK: &str = "INSERT INTO {schema}.dead_letters \
     (id, source, event_id, event, reason, error, attempts, parked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Columns read back into a `ParkedEvent`, in the order the dead-letter store expects.
const DEAD_LETTER_LIST: &str = "SELECT id, source, event, reason, error, attempts, parked_at \
     FROM {schema}.dead_letters WHERE source = $1 ORDER BY seq LIMIT $2";

/// Removes one dead letter and returns it (`take`, `discard`).
const DEAD_LETTER_TAKE: &str = "DELETE FROM {schema}.dead_letters WHERE id = $1 \
     RETURNING id, source, event, reason, error, attempts, parked_at";

const DEAD_LETTER_COUNT: &str = "SELECT count(*) FROM {schema}.dead_letters WHERE source = $1";

/// The stored text of an undecodable row, unless it is parked already (then no row): what
/// `jsonb` keeps, as PostgreSQL prints it, which serde_json need not parse.
const UNDECODABLE_TEXT: &str = "SELECT e.payload::text, e.metadata::text, e.tenant_id \
     FROM {events} e WHERE e.event_id = $1 AND NOT EXISTS \
     (SELECT 1 FROM {schema}.undecodable_events u WHERE u.event_id = $1)";

/// Parks an undecodable row once (`migrations/0005_undecodable_events.sql`): the marker's
/// primary key decides, in the same statement, so a second reader, poll or process inserts
/// neither row; the dead letter's id comes back only when this call parked it.
const PARK_UNDECODABLE: &str = "WITH marked AS ( \
        INSERT INTO {schema}.undecodable_events (event_id, position, dead_letter_id) \
        VALUES ($3, $9, $1) ON CONFLICT DO NOTHING RETURNING event_id) \
     INSERT INTO {schema}.dead_letters \
        (id, source, event_id, event, reason, error, attempts, parked_at) \
     SELECT $1, $2, event_id, $4, $5, $6, $7, $8 FROM marked RETURNING id";

/// Takes the session-level advisory lock of a schema's migrations (`$1`, see
/// `Schema::migration_lock_key`); closing the session releases it.
pub(crate) const ADVISORY_LOCK: &str = "SELECT pg_advisory_lock($1)";

// Operator reads (`inspect.rs`, the `eventflow` command line): filled on use with
// [`Sql::fill`], since they run rarely and need not be kept per store.

/// Every stream with its version, last event type and time; `$1` a prefix (`''` for all).
pub(crate) const INSPECT_STREAMS: &str = "SELECT DISTINCT ON (stream_id) stream_id, \
     stream_version, event_type, occurred_at FROM {events} \
     WHERE starts_with(stream_id, $1) ORDER BY stream_id, stream_version DESC LIMIT $2";

/// Every checkpoint (the relay's, projections'), with whether an operator paused it (a
/// partition's checkpoint `<projection>#<p>` is paused with its projection).
pub(crate) const INSPECT_CHECKPOINTS: &str = "SELECT c.name, c.position, c.updated_at, \
     coalesce((SELECT bool_or(p.paused) FROM {schema}.projection_controls p \
       WHERE p.name IN (c.name, split_part(c.name, '#', 1))), false) \
     FROM {checkpoints} c ORDER BY c.name";

/// Pauses or resumes a transactional projection.
pub(crate) const INSPECT_SET_PAUSED: &str = "INSERT INTO {schema}.projection_controls \
     (name, paused) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, updated_at = now()";

/// Events in `($1, $2]` of the global order (a rebuild's progress).
pub(crate) const INSPECT_COUNT_EVENTS: &str =
    "SELECT count(*) FROM {events} WHERE position > $1 AND position <= $2";

/// Dead letters of every source, oldest first.
pub(crate) const INSPECT_DEAD_LETTERS: &str = "SELECT id, source, event, reason, error, \
     attempts, parked_at FROM {schema}.dead_letters ORDER BY seq LIMIT $1";

/// One dead letter, left in place.
pub(crate) const INSPECT_DEAD_LETTER: &str = "SELECT id, source, event, reason, error, \
     attempts, parked_at FROM {schema}.dead_letters WHERE id = $1";

/// The saga instances of one correlation id, with what they handled (event ids and types).
pub(crate) const INSPECT_SAGAS: &str = "SELECT i.saga, i.state, i.version, i.completed, \
     i.deadlines, i.created_at, i.updated_at, \
     coalesce((SELECT json_agg(json_build_object('event_id', h.event_id, \
         'event_type', e.event_type, 'handled_at', h.handled_at) ORDER BY h.handled_at, e.position) \
       FROM {schema}.saga_handled h LEFT JOIN {events} e ON e.event_id = h.event_id \
      WHERE h.saga = i.saga AND h.correlation_id = i.correlation_id), '[]'::json)::text \
     FROM {schema}.saga_instances i WHERE i.correlation_id = $1 ORDER BY i.saga";

/// The migrations applied to a schema (sqlx's table, in the schema `migrate` set as
/// `search_path`).
pub(crate) const INSPECT_APPLIED_MIGRATIONS: &str =
    "SELECT version FROM {schema}._sqlx_migrations WHERE success ORDER BY version";

/// The backend's statements with the table names of one schema filled in.
#[derive(Clone)]
pub(crate) struct Sql {
    pub(crate) schema: Schema,
    /// The `LISTEN`/`NOTIFY` channel of this schema.
    pub(crate) channel: String,
    pub(crate) notify: String,
    pub(crate) register_listener: String,
    pub(crate) append: String,
    pub(crate) append_one: String,
    pub(crate) append_in_tx: String,
    pub(crate) grant_tenant: String,
    pub(crate) positions_check: String,
    pub(crate) lock_events: String,
    pub(crate) positions_raise: String,
    pub(crate) stream_version: String,
    pub(crate) load_stream: String,
    pub(crate) load_stream_stored: String,
    pub(crate) read_all_stored: String,
    pub(crate) load_snapshot_and_tail: String,
    pub(crate) events_by_id: String,
    pub(crate) read_all: String,
    pub(crate) head_and_top: String,
    pub(crate) criteria_select: String,
    pub(crate) criteria_select_safe: String,
    pub(crate) load_snapshot: String,
    pub(crate) save_snapshot: String,
    pub(crate) load_checkpoint: String,
    pub(crate) save_checkpoint: String,
    pub(crate) reset_checkpoint: String,
    pub(crate) lease_acquire: String,
    pub(crate) lease_renew: String,
    pub(crate) lease_release: String,
    pub(crate) lease_list: String,
    pub(crate) fenced_checkpoint: String,
    pub(crate) member_join: String,
    pub(crate) members: String,
    pub(crate) member_leave: String,
    pub(crate) create_checkpoint: String,
    pub(crate) set_local_idle_timeout: String,
    pub(crate) begin_projection_batch: String,
    pub(crate) load_projection_checkpoint: String,
    pub(crate) saga_instance_count: String,
    pub(crate) saga_load: String,
    pub(crate) saga_record_handled: String,
    pub(crate) saga_create: String,
    pub(crate) saga_update: String,
    pub(crate) saga_version: String,
    pub(crate) saga_outbox_insert: String,
    pub(crate) saga_due_deadlines: String,
    pub(crate) saga_pending_outbox: String,
    pub(crate) saga_ack_outbox: String,
    pub(crate) saga_prune: String,
    pub(crate) saga_prune_tombstones: String,
    pub(crate) saga_handled_count: String,
    pub(crate) saga_tombstone_count: String,
    pub(crate) dead_letter_park: String,
    pub(crate) dead_letter_list: String,
    pub(crate) dead_letter_take: String,
    pub(crate) dead_letter_count: String,
    pub(crate) undecodable_text: String,
    pub(crate) park_undecodable: String,
}

impl std::fmt::Debug for Sql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The statements are derived from the schema; printing them would drown the rest.
        f.debug_struct("Sql")
            .field("schema", &self.schema.name())
            .finish_non_exhaustive()
    }
}

impl Sql {
    /// The statements for tables in `schema`.
    pub(crate) fn new(schema: Schema) -> Self {
        let quoted = schema.quoted();
        let fill = |template: &str| {
            template
                .replace("{columns}", EVENT_COLUMNS)
                .replace("{lease_columns}", LEASE_COLUMNS)
                .replace("{stored_columns}", STORED_COLUMNS)
                .replace("{notify}", APPEND_NOTIFY)
                .replace("{cutoff}", SAFE_CUTOFF)
                .replace("{tx}", TX_ID)
                .replace("{events}", &format!("{quoted}.events"))
                .replace("{snapshots}", &format!("{quoted}.snapshots"))
                .replace("{checkpoints}", &format!("{quoted}.checkpoints"))
                .replace("{schema}", quoted)
        };
        let channel = schema.channel();
        Sql {
            channel,
            notify: fill(NOTIFY),
            register_listener: fill(REGISTER_LISTENER),
            append: fill(APPEND),
            append_one: fill(APPEND_ONE),
            append_in_tx: fill(APPEND_IN_TX),
            grant_tenant: fill(GRANT_TENANT),
            positions_check: fill(POSITIONS_CHECK),
            lock_events: fill(LOCK_EVENTS),
            positions_raise: fill(POSITIONS_RAISE),
            stream_version: fill(STREAM_VERSION),
            load_stream: fill(LOAD_STREAM),
            load_stream_stored: fill(LOAD_STREAM_STORED),
            read_all_stored: fill(READ_ALL_STORED),
            load_snapshot_and_tail: fill(LOAD_SNAPSHOT_AND_TAIL),
            events_by_id: fill(EVENTS_BY_ID),
            read_all: fill(READ_ALL),
            head_and_top: fill(HEAD_AND_TOP),
            criteria_select: fill(CRITERIA_SELECT),
            criteria_select_safe: fill(CRITERIA_SELECT_SAFE),
            load_snapshot: fill(LOAD_SNAPSHOT),
            save_snapshot: fill(SAVE_SNAPSHOT),
            load_checkpoint: fill(LOAD_CHECKPOINT),
            save_checkpoint: fill(SAVE_CHECKPOINT),
            reset_checkpoint: fill(RESET_CHECKPOINT),
            lease_acquire: fill(LEASE_ACQUIRE),
            lease_renew: fill(LEASE_RENEW),
            lease_release: fill(LEASE_RELEASE),
            lease_list: fill(LEASE_LIST),
            fenced_checkpoint: fill(FENCED_CHECKPOINT),
            member_join: fill(MEMBER_JOIN),
            members: fill(MEMBERS),
            member_leave: fill(MEMBER_LEAVE),
            create_checkpoint: fill(CREATE_CHECKPOINT),
            set_local_idle_timeout: fill(SET_LOCAL_IDLE_TIMEOUT),
            begin_projection_batch: fill(BEGIN_PROJECTION_BATCH),
            load_projection_checkpoint: fill(LOAD_PROJECTION_CHECKPOINT),
            saga_instance_count: fill(SAGA_INSTANCE_COUNT),
            saga_load: fill(SAGA_LOAD),
            saga_record_handled: fill(SAGA_RECORD_HANDLED),
            saga_create: fill(SAGA_CREATE),
            saga_update: fill(SAGA_UPDATE),
            saga_version: fill(SAGA_VERSION),
            saga_outbox_insert: fill(SAGA_OUTBOX_INSERT),
            saga_due_deadlines: fill(SAGA_DUE_DEADLINES),
            saga_pending_outbox: fill(SAGA_PENDING_OUTBOX),
            saga_ack_outbox: fill(SAGA_ACK_OUTBOX),
            saga_prune: fill(SAGA_PRUNE),
            saga_prune_tombstones: fill(SAGA_PRUNE_TOMBSTONES),
            saga_handled_count: fill(SAGA_HANDLED_COUNT),
            saga_tombstone_count: fill(SAGA_TOMBSTONE_COUNT),
            dead_letter_park: fill(DEAD_LETTER_PARK),
            dead_letter_list: fill(DEAD_LETTER_LIST),
            dead_letter_take: fill(DEAD_LETTER_TAKE),
            dead_letter_count: fill(DEAD_LETTER_COUNT),
            undecodable_text: fill(UNDECODABLE_TEXT),
            park_undecodable: fill(PARK_UNDECODABLE),
            schema,
        }
    }

    /// `template` with this schema's names filled in (the operator reads, filled on use).
    pub(crate) fn fill(&self, template: &str) -> String {
        let quoted = self.schema.quoted();
        template
            .replace("{columns}", EVENT_COLUMNS)
            .replace("{cutoff}", SAFE_CUTOFF)
            .replace("{events}", &format!("{quoted}.events"))
            .replace("{checkpoints}", &format!("{quoted}.checkpoints"))
            .replace("{schema}", quoted)
    }

    /// `CREATE SCHEMA IF NOT EXISTS` for this schema (run by `migrate` only).
    pub(crate) fn create_schema(&self) -> String {
        format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema.quoted())
    }

    /// `SET search_path` to this schema (on the migration's own connection only).
    pub(crate) fn set_search_path(&self) -> String {
        format!("SET search_path TO {}", self.schema.quoted())
    }

    /// Releases `append_in`'s savepoint and sends `NOTIFY` on this schema's channel inside the
    /// caller's transaction, so it is delivered when that transaction commits and never when it
    /// rolls back (one round trip, simple protocol).
    pub(crate) fn release_and_notify(&self) -> String {
        format!(
            "RELEASE SAVEPOINT eventflow_append; NOTIFY \"{}\"",
            self.channel()
        )
    }

    /// What a tenant handle's role needs (`grant_tenant`), for the quoted role name `role`
    /// (validated as a plain identifier first).
    pub(crate) fn grant_tenant_privileges(&self, role: &str) -> [String; 4] {
        let schema = self.schema.quoted();
        [
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!("GRANT SELECT, INSERT ON {schema}.events TO {role}"),
            format!("GRANT SELECT ON {schema}.position_base, {schema}.tenant_roles TO {role}"),
            // Appends look for other processes' listeners; a tenant's subscription registers
            // its own (and clears the rows of sessions that are gone).
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.listeners TO {role}"),
        ]
    }

    /// The `LISTEN`/`NOTIFY` channel of this schema.
    pub(crate) fn channel(&self) -> String {
        self.channel.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled() {
        let sql = Sql::new(Schema::new("s1").unwrap_or_else(|e| panic!("{e}")));
        for text in [
            &sql.append,
            &sql.append_one,
            &sql.append_in_tx,
            &sql.grant_tenant,
            &sql.positions_check,
            &sql.lock_events,
            &sql.positions_raise,
            &sql.stream_version,
            &sql.load_stream,
            &sql.load_stream_stored,
            &sql.read_all_stored,
            &sql.load_snapshot_and_tail,
            &sql.notify,
            &sql.register_listener,
            &sql.events_by_id,
            &sql.read_all,
            &sql.head_and_top,
            &sql.criteria_select,
            &sql.criteria_select_safe,
            &sql.load_snapshot,
            &sql.save_snapshot,
            &sql.load_checkpoint,
            &sql.save_checkpoint,
            &sql.reset_checkpoint,
            &sql.lease_acquire,
            &sql.lease_renew,
            &sql.lease_release,
            &sql.lease_list,
            &sql.fenced_checkpoint,
            &sql.member_join,
            &sql.members,
            &sql.member_leave,
            &sql.create_checkpoint,
            &sql.load_projection_checkpoint,
            &sql.saga_instance_count,
            &sql.saga_load,
            &sql.saga_record_handled,
            &sql.saga_create,
            &sql.saga_update,
            &sql.saga_version,
            &sql.saga_outbox_insert,
            &sql.saga_due_deadlines,
            &sql.saga_pending_outbox,
            &sql.saga_ack_outbox,
            &sql.saga_prune,
            &sql.saga_prune_tombstones,
            &sql.saga_handled_count,
            &sql.saga_tombstone_count,
            &sql.dead_letter_park,
            &sql.dead_letter_list,
            &sql.dead_letter_take,
            &sql.dead_letter_count,
            &sql.undecodable_text,
            &sql.park_undecodable,
        ] {
            assert!(!text.contains('{'), "unfilled template: {text}");
            assert!(text.contains("\"s1\""), "schema missing: {text}");
        }
    }
}
