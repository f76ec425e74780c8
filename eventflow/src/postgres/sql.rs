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
/// snapshot was taken; every transaction below it has committed or rolled back.
const SAFE_CUTOFF: &str = "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)";

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
  FROM (SELECT pg_current_xact_id()::text::bigint AS id) tx,
       (SELECT coalesce(max(stream_version), 0) AS version FROM {events} WHERE stream_id = $1) cur,
       unnest($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::text[], $9::text[],
              $10::text[], $11::text[], $12::timestamptz[])
       WITH ORDINALITY AS b(event_id, event_type, schema_version, payload, metadata, tenant_id,
                            correlation_id, causation_id, source, occurred_at, n)
 WHERE $2::bigint < 0 OR cur.version = $2::bigint
RETURNING position, stream_version
)
SELECT min(position), min(stream_version), count(*) FROM ins";

/// [`APPEND`] for a single event, with one value per column instead of arrays: the common case
/// (`append`, most commands) skips the array encoding and the `unnest`.
const APPEND_ONE: &str = "
INSERT INTO {events} (position, transaction_id, event_id, stream_id, stream_version, event_type,
                      schema_version, payload, metadata, tenant_id, correlation_id, causation_id,
                      source, occurred_at)
SELECT (tx.id << 20) + 1, tx.id, $3::uuid, $1, cur.version + 1, $4::text, $5::int4,
       $6::text::jsonb, $7::text::jsonb, $8::text, $9::text, $10::text, $11::text,
       $12::timestamptz
  FROM (SELECT pg_current_xact_id()::text::bigint AS id) tx,
       (SELECT coalesce(max(stream_version), 0) AS version FROM {events} WHERE stream_id = $1) cur
 WHERE $2::bigint < 0 OR cur.version = $2::bigint
RETURNING position, stream_version";

const STREAM_VERSION: &str =
    "SELECT coalesce(max(stream_version), 0) FROM {events} WHERE stream_id = $1";

const LOAD_STREAM: &str = "SELECT {columns} FROM {events} \
     WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version";

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
const CRITERIA_SELECT: &str = "SELECT {columns} FROM {events} WHERE position < {cutoff}";
pub(crate) const CRITERIA_EVENT_TYPES: &str = " AND event_type = ANY(";
pub(crate) const CRITERIA_SINCE: &str = " AND occurred_at >= ";
pub(crate) const CRITERIA_UNTIL: &str = " AND occurred_at < ";
pub(crate) const CRITERIA_CORRELATION: &str = " AND correlation_id = ";
pub(crate) const CRITERIA_TENANT: &str = " AND tenant_id = ";
pub(crate) const CRITERIA_STREAM: &str = " AND stream_id = ";
pub(crate) const CRITERIA_AFTER: &str = " AND position > ";
pub(crate) const CRITERIA_ORDER: &str = " ORDER BY position";
pub(crate) const CRITERIA_LIMIT: &str = " LIMIT ";

/// Wakes listeners of other processes; sent after commit by one background task per store,
/// never inside the append (a `NOTIFY` holds a database-wide lock through commit, which would
/// serialize every writer). A notification needs no durability, so its transaction commits
/// without waiting for the WAL flush.
pub(crate) const NOTIFY: &str =
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')";

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

/// Locks a projection's checkpoint row for the batch's transaction: a second runner of the same
/// projection waits, then sees the position moved.
const LOCK_CHECKPOINT: &str = "SELECT position FROM {checkpoints} WHERE name = $1 FOR UPDATE";

/// Ends a partition batch's transaction on the server if it sits idle longer than the lease's
/// time-to-live (its worker paused), so it never holds the checkpoint row or the readers' bound
/// for long. `set_config(.., true)` is `SET LOCAL` with a bound value.
const SET_LOCAL_IDLE_TIMEOUT: &str =
    "SELECT set_config('idle_in_transaction_session_timeout', $1, true)";

/// Lets a projection's handler name its read-model tables unqualified (`SET LOCAL`: this
/// transaction only).
const SET_LOCAL_SEARCH_PATH: &str = "SET LOCAL search_path TO {schema}";

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

/// The backend's statements with the table names of one schema filled in.
#[derive(Clone)]
pub(crate) struct Sql {
    pub(crate) schema: Schema,
    pub(crate) append: String,
    pub(crate) append_one: String,
    pub(crate) stream_version: String,
    pub(crate) load_stream: String,
    pub(crate) events_by_id: String,
    pub(crate) read_all: String,
    pub(crate) head_and_top: String,
    pub(crate) criteria_select: String,
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
    pub(crate) lock_checkpoint: String,
    pub(crate) set_local_idle_timeout: String,
    pub(crate) set_local_search_path: String,
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
                .replace("{cutoff}", SAFE_CUTOFF)
                .replace("{events}", &format!("{quoted}.events"))
                .replace("{snapshots}", &format!("{quoted}.snapshots"))
                .replace("{checkpoints}", &format!("{quoted}.checkpoints"))
                .replace("{schema}", quoted)
        };
        Sql {
            append: fill(APPEND),
            append_one: fill(APPEND_ONE),
            stream_version: fill(STREAM_VERSION),
            load_stream: fill(LOAD_STREAM),
            events_by_id: fill(EVENTS_BY_ID),
            read_all: fill(READ_ALL),
            head_and_top: fill(HEAD_AND_TOP),
            criteria_select: fill(CRITERIA_SELECT),
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
            lock_checkpoint: fill(LOCK_CHECKPOINT),
            set_local_idle_timeout: fill(SET_LOCAL_IDLE_TIMEOUT),
            set_local_search_path: fill(SET_LOCAL_SEARCH_PATH),
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

    /// `CREATE SCHEMA IF NOT EXISTS` for this schema (run by `migrate` only).
    pub(crate) fn create_schema(&self) -> String {
        format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema.quoted())
    }

    /// `SET search_path` to this schema (on the migration's own connection only).
    pub(crate) fn set_search_path(&self) -> String {
        format!("SET search_path TO {}", self.schema.quoted())
    }

    /// The `LISTEN`/`NOTIFY` channel of this schema.
    pub(crate) fn channel(&self) -> String {
        self.schema.channel()
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
            &sql.stream_version,
            &sql.load_stream,
            &sql.events_by_id,
            &sql.read_all,
            &sql.head_and_top,
            &sql.criteria_select,
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
            &sql.lock_checkpoint,
            &sql.set_local_idle_timeout,
            &sql.set_local_search_path,
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
