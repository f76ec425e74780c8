//! Every SQL statement of the PostgreSQL store, in one place.
//!
//! Table names cannot be bind parameters, so each statement is a template with `{events}`,
//! `{snapshots}` and `{checkpoints}` placeholders that [`Sql::new`] fills in once, at
//! construction, with the schema-qualified and quoted names (the schema name is validated as a
//! plain identifier first). Every value is a bind parameter; nothing a caller passes at run time
//! is ever spliced into SQL text.

use crate::error::{Error, Result};

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

const SAVE_CHECKPOINT: &str = "INSERT INTO {checkpoints} (name, position) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()";

/// The store's statements with its table names filled in.
#[derive(Debug, Clone)]
pub(crate) struct Sql {
    pub(crate) schema: String,
    pub(crate) quoted_schema: String,
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
}

impl Sql {
    /// The statements for tables in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `schema` is not a plain identifier.
    pub(crate) fn new(schema: &str) -> Result<Self> {
        validate_schema(schema)?;
        let quoted = format!("\"{schema}\"");
        let fill = |template: &str| {
            template
                .replace("{columns}", EVENT_COLUMNS)
                .replace("{cutoff}", SAFE_CUTOFF)
                .replace("{events}", &format!("{quoted}.events"))
                .replace("{snapshots}", &format!("{quoted}.snapshots"))
                .replace("{checkpoints}", &format!("{quoted}.checkpoints"))
        };
        Ok(Sql {
            schema: schema.to_owned(),
            quoted_schema: quoted.clone(),
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
        })
    }

    /// `CREATE SCHEMA IF NOT EXISTS` for this schema (run by `migrate` only).
    pub(crate) fn create_schema(&self) -> String {
        format!("CREATE SCHEMA IF NOT EXISTS {}", self.quoted_schema)
    }

    /// `SET search_path` to this schema (on the migration's own connection only).
    pub(crate) fn set_search_path(&self) -> String {
        format!("SET search_path TO {}", self.quoted_schema)
    }

    /// The `LISTEN`/`NOTIFY` channel of this schema: a fixed-length name derived from it, so it
    /// stays under PostgreSQL's 63-byte identifier limit.
    pub(crate) fn channel(&self) -> String {
        // FNV-1a: stable across processes and Rust versions, unlike `DefaultHasher`.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.schema.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("eventflow_{hash:016x}")
    }
}

/// Checks a schema name: 1 to 63 bytes of `[a-z0-9_]`, not starting with a digit or `pg_`. Lower case
/// only, so the name means the same quoted or not.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the schema.
pub(crate) fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        // PostgreSQL reserves the `pg_` prefix for system schemas.
        && !schema.starts_with("pg_")
        && schema
            .bytes()
            .all(|b| b == b'_' || b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid schema name {schema:?}: use 1 to 63 characters of [a-z0-9_], not starting \
             with a digit or `pg_`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(Sql::new("eventflow").is_ok());
        assert!(Sql::new("t_abc_123").is_ok());
        for bad in [
            "",
            "1abc",
            "pg_x",
            "a-b",
            "A",
            "a\"b",
            "a;drop",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(Sql::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn templates_are_filled() {
        let sql = Sql::new("s1").unwrap_or_else(|e| panic!("{e}"));
        for text in [
            &sql.append,
            &sql.read_all,
            &sql.head_and_top,
            &sql.criteria_select,
        ] {
            assert!(!text.contains('{'), "unfilled template: {text}");
            assert!(text.contains("\"s1\".events"));
        }
        assert_eq!(sql.channel().len(), "eventflow_".len() + 16);
        assert_ne!(
            sql.channel(),
            Sql::new("s2").map(|s| s.channel()).unwrap_or_default()
        );
    }
}
