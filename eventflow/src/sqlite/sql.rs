//! Every SQL statement of the SQLite backend, in one place. Every value is a bind parameter;
//! nothing a caller passes is ever spliced into SQL text (batch appends and criteria build
//! their placeholders with sqlx's `QueryBuilder`).

/// The append statement, in four parts around its bind parameters (the stream id, the
/// expected version, the stream id again, then one `VALUES` row of 11 per event, the 11th being
/// the event's index in the batch from 1). The stream's current version is read in the same
/// statement, and rows are only inserted when it matches the expected version (`-1` = any):
/// zero rows back means a version conflict. Runs inside a `BEGIN IMMEDIATE` transaction, so no
/// other writer can move the stream in between.
pub(crate) const APPEND_HEAD: &str = "INSERT INTO events (event_id, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, tenant_id, correlation_id, causation_id, \
     source, occurred_at) \
     SELECT b.column1, p.sid, cur.version + b.column11, b.column2, b.column3, b.column4, \
            b.column5, b.column6, b.column7, b.column8, b.column9, b.column10 \
       FROM (SELECT ";
/// After the stream id and the expected version.
pub(crate) const APPEND_CURRENT: &str = " AS expected) AS p, \
     (SELECT coalesce(max(stream_version), 0) AS version FROM events WHERE stream_id = ";
/// After the stream id, before the `VALUES`.
pub(crate) const APPEND_VALUES: &str = ") AS cur, (";
/// After the `VALUES`.
pub(crate) const APPEND_TAIL: &str = ") AS b WHERE p.expected < 0 OR cur.version = p.expected \
     ORDER BY b.column11 RETURNING position, stream_version";

pub(crate) const STREAM_VERSION: &str =
    "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = ?";

pub(crate) const LOAD_STREAM: &str = "SELECT position, event_id, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, correlation_id, causation_id, source, \
     occurred_at FROM events WHERE stream_id = ? AND stream_version >= ? \
     ORDER BY stream_version";

/// The stored copy of one event id (the idempotency check, on the failure path only).
pub(crate) const EVENT_BY_ID: &str = "SELECT position, event_id, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, correlation_id, causation_id, source, \
     occurred_at FROM events WHERE event_id = ?";

pub(crate) const READ_ALL: &str = "SELECT position, event_id, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, correlation_id, causation_id, source, \
     occurred_at FROM events WHERE position > ? ORDER BY position LIMIT ?";

pub(crate) const HEAD: &str = "SELECT coalesce(max(position), 0) FROM events";

/// Start of a criteria query; `load` appends the `CRITERIA_*` fragments for the fields that are
/// set, each with its value bound.
pub(crate) const CRITERIA_SELECT: &str = "SELECT position, event_id, stream_id, stream_version, \
     event_type, schema_version, payload, metadata, correlation_id, causation_id, source, \
     occurred_at FROM events WHERE 1 = 1";
pub(crate) const CRITERIA_EVENT_TYPES: &str = " AND event_type IN (";
pub(crate) const CRITERIA_SINCE: &str = " AND occurred_at >= ";
pub(crate) const CRITERIA_UNTIL: &str = " AND occurred_at < ";
pub(crate) const CRITERIA_CORRELATION: &str = " AND correlation_id = ";
pub(crate) const CRITERIA_TENANT: &str = " AND tenant_id = ";
pub(crate) const CRITERIA_STREAM: &str = " AND stream_id = ";
pub(crate) const CRITERIA_AFTER: &str = " AND position > ";
pub(crate) const CRITERIA_ORDER: &str = " ORDER BY position";
pub(crate) const CRITERIA_LIMIT: &str = " LIMIT ";

pub(crate) const LOAD_SNAPSHOT: &str = "SELECT stream_id, version, schema_version, state, \
     taken_at FROM snapshots WHERE stream_id = ?";

/// Replaces the stored snapshot unless it is newer than the one being saved.
pub(crate) const SAVE_SNAPSHOT: &str = "INSERT INTO snapshots \
     (stream_id, version, schema_version, state, taken_at) VALUES (?, ?, ?, ?, ?) \
     ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
     schema_version = excluded.schema_version, state = excluded.state, \
     taken_at = excluded.taken_at WHERE snapshots.version <= excluded.version";

pub(crate) const LOAD_CHECKPOINT: &str = "SELECT position FROM checkpoints WHERE name = ?";

/// Saves a checkpoint; never moves it backwards (a lower position leaves the row alone).
pub(crate) const SAVE_CHECKPOINT: &str = "INSERT INTO checkpoints (name, position) \
     VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET position = excluded.position \
     WHERE checkpoints.position < excluded.position";

/// Sets a checkpoint back to 0: a rebuild, the one way a checkpoint moves backwards.
pub(crate) const RESET_CHECKPOINT: &str = "INSERT INTO checkpoints (name, position) \
     VALUES (?, 0) ON CONFLICT (name) DO UPDATE SET position = 0";

pub(crate) const DEAD_LETTER_PARK: &str = "INSERT INTO dead_letters \
     (id, source, event_id, event, reason, error, attempts, parked_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)";

pub(crate) const DEAD_LETTER_LIST: &str = "SELECT id, source, event, reason, error, attempts, \
     parked_at FROM dead_letters WHERE source = ? ORDER BY seq LIMIT ?";

pub(crate) const DEAD_LETTER_TAKE: &str = "DELETE FROM dead_letters WHERE id = ? \
     RETURNING id, source, event, reason, error, attempts, parked_at";

pub(crate) const DEAD_LETTER_COUNT: &str = "SELECT count(*) FROM dead_letters WHERE source = ?";

pub(crate) const SAGA_INSTANCE_COUNT: &str = "SELECT count(*) FROM saga_instances WHERE saga = ?";

/// The instance (if any), whether the event is recorded as handled, and whether the instance
/// was pruned (a tombstone).
pub(crate) const SAGA_LOAD: &str = "SELECT i.state, i.version, i.completed, i.deadlines, \
        EXISTS (SELECT 1 FROM saga_handled h \
                WHERE h.saga = ?1 AND h.correlation_id = ?2 AND h.event_id = ?3), \
        EXISTS (SELECT 1 FROM saga_tombstones t \
                WHERE t.saga = ?1 AND t.correlation_id = ?2) \
     FROM (SELECT 1) AS one \
     LEFT JOIN saga_instances i ON i.saga = ?1 AND i.correlation_id = ?2";

pub(crate) const SAGA_IS_HANDLED: &str = "SELECT EXISTS (SELECT 1 FROM saga_handled \
     WHERE saga = ? AND correlation_id = ? AND event_id = ?)";

pub(crate) const SAGA_RECORD_HANDLED: &str =
    "INSERT INTO saga_handled (saga, correlation_id, event_id) VALUES (?, ?, ?)";

pub(crate) const SAGA_IS_TOMBSTONED: &str = "SELECT EXISTS (SELECT 1 FROM saga_tombstones \
     WHERE saga = ? AND correlation_id = ?)";

/// Creates an instance; the primary key decides a creation race (the loser inserts nothing).
pub(crate) const SAGA_CREATE: &str = "INSERT INTO saga_instances \
     (saga, correlation_id, state, version, completed, deadlines, next_deadline, updated_at) \
     VALUES (?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT DO NOTHING";

/// Updates an instance only at the expected version (the last parameter).
pub(crate) const SAGA_UPDATE: &str = "UPDATE saga_instances \
     SET state = ?, version = version + 1, completed = ?, deadlines = ?, next_deadline = ?, \
         updated_at = ? \
     WHERE saga = ? AND correlation_id = ? AND version = ?";

pub(crate) const SAGA_VERSION: &str =
    "SELECT version FROM saga_instances WHERE saga = ? AND correlation_id = ?";

pub(crate) const SAGA_OUTBOX_INSERT: &str = "INSERT INTO saga_outbox (saga, event_id, event) \
     VALUES (?, ?, ?) ON CONFLICT (saga, event_id) DO NOTHING";

pub(crate) const SAGA_DUE_DEADLINES: &str = "SELECT correlation_id, deadlines \
     FROM saga_instances WHERE saga = ? AND next_deadline IS NOT NULL AND next_deadline <= ? \
     ORDER BY next_deadline LIMIT ?";

pub(crate) const SAGA_PENDING_OUTBOX: &str =
    "SELECT event FROM saga_outbox WHERE saga = ? ORDER BY seq LIMIT ?";

pub(crate) const SAGA_ACK_OUTBOX: &str = "DELETE FROM saga_outbox WHERE saga = ? AND event_id = ?";

/// Up to `?3` completed instances of saga `?1` last updated before `?2`, oldest first.
pub(crate) const SAGA_PRUNABLE: &str = "SELECT correlation_id, updated_at FROM saga_instances \
     WHERE saga = ? AND completed = 1 AND updated_at < ? ORDER BY updated_at LIMIT ?";

pub(crate) const SAGA_DELETE_INSTANCE: &str =
    "DELETE FROM saga_instances WHERE saga = ? AND correlation_id = ?";

pub(crate) const SAGA_DELETE_HANDLED: &str =
    "DELETE FROM saga_handled WHERE saga = ? AND correlation_id = ?";

pub(crate) const SAGA_TOMBSTONE: &str = "INSERT INTO saga_tombstones \
     (saga, correlation_id, completed_at) VALUES (?, ?, ?) \
     ON CONFLICT (saga, correlation_id) DO UPDATE SET completed_at = excluded.completed_at";

pub(crate) const SAGA_PRUNE_TOMBSTONES: &str = "DELETE FROM saga_tombstones \
     WHERE rowid IN (SELECT rowid FROM saga_tombstones WHERE saga = ? AND completed_at < ? \
                     ORDER BY completed_at LIMIT ?)";

pub(crate) const SAGA_HANDLED_COUNT: &str = "SELECT count(*) FROM saga_handled WHERE saga = ?";

pub(crate) const SAGA_TOMBSTONE_COUNT: &str = "SELECT count(*) FROM saga_tombstones WHERE saga = ?";

pub(crate) const LEASE_GET: &str =
    "SELECT owner, epoch, expires_at FROM leases WHERE name = ? AND partition = ?";

pub(crate) const LEASE_PUT: &str = "INSERT INTO leases (name, partition, owner, epoch, \
     expires_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name, partition) DO UPDATE SET \
     owner = excluded.owner, epoch = excluded.epoch, expires_at = excluded.expires_at";

pub(crate) const LEASE_LIST: &str = "SELECT name, partition, owner, epoch, expires_at \
     FROM leases WHERE ?1 IS NULL OR name = ?1 ORDER BY name, partition";

pub(crate) const MEMBER_JOIN: &str = "INSERT INTO lease_members (group_name, member, \
     expires_at) VALUES (?, ?, ?) ON CONFLICT (group_name, member) DO UPDATE SET \
     expires_at = excluded.expires_at";

pub(crate) const MEMBERS: &str = "SELECT member FROM lease_members \
     WHERE group_name = ? AND expires_at > ? ORDER BY member";

pub(crate) const MEMBER_LEAVE: &str =
    "DELETE FROM lease_members WHERE group_name = ? AND member = ?";
