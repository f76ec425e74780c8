//! Conversion between events and rows: one array per column for the append, one `Event` per
//! row for reads.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{Event, Metadata};
use crate::store::{StoredEvent, StoredPayload};

/// A batch of events as one array per column, bound to the `unnest` of the append statement.
#[derive(Debug, Default)]
pub(crate) struct Columns {
    pub(crate) ids: Vec<Uuid>,
    pub(crate) event_types: Vec<String>,
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) payloads: Vec<String>,
    pub(crate) metadata: Vec<String>,
    pub(crate) tenant_ids: Vec<Option<String>>,
    pub(crate) correlation_ids: Vec<Option<String>>,
    pub(crate) causation_ids: Vec<Option<String>>,
    pub(crate) sources: Vec<Option<String>>,
    pub(crate) occurred_at: Vec<DateTime<Utc>>,
}

impl Columns {
    /// Encodes `events`. Timestamps are truncated to microseconds first (in place), the
    /// precision PostgreSQL keeps, so the events an append returns equal the ones loaded later.
    ///
    /// # Errors
    /// [`Error::Encode`] for JSON that cannot be encoded, [`Error::InvalidArgument`] for a schema
    /// version over `i32::MAX`.
    pub(crate) fn encode(events: &mut [Event]) -> Result<Self> {
        let n = events.len();
        let mut c = Columns {
            ids: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            tenant_ids: Vec::with_capacity(n),
            correlation_ids: Vec::with_capacity(n),
            causation_ids: Vec::with_capacity(n),
            sources: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
        };
        for event in events.iter_mut() {
            event.timestamp = event.timestamp.trunc_subsecs(6);
            let encode = |source| Error::Encode {
                event_type: event.event_type.clone(),
                source,
            };
            c.payloads
                .push(serde_json::to_string(&event.payload).map_err(encode)?);
            c.metadata
                .push(serde_json::to_string(&event.metadata).map_err(encode)?);
            c.schema_versions
                .push(i32::try_from(event.version).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "event {}: schema version {} is over {}",
                        event.id,
                        event.version,
                        i32::MAX
                    ))
                })?);
            c.ids.push(event.id);
            c.event_types.push(event.event_type.clone());
            c.tenant_ids.push(event.metadata.tenant_id.clone());
            c.correlation_ids.push(event.correlation_id.clone());
            c.causation_ids.push(event.causation_id.clone());
            c.sources.push(event.source.clone());
            c.occurred_at.push(event.timestamp);
        }
        Ok(c)
    }
}

/// A row selected with [`EVENT_COLUMNS`](super::sql::EVENT_COLUMNS), decoded as it arrives;
/// reads at the head append the highest committed position and the safe head as two more
/// columns (see `sql::READ_ALL`).
pub(crate) struct EventRow {
    /// The event, or why its payload or metadata could not be decoded.
    pub(crate) event: std::result::Result<Event, Box<Undecodable>>,
    /// Its global position.
    pub(crate) position: i64,
    /// `(top, head)` when the query selected them.
    pub(crate) top_head: Option<(i64, i64)>,
}

/// A stored row whose payload or metadata JSON cannot be decoded: nested deeper than serde_json
/// parses (128 levels; eventflow writes at most
/// [`MAX_PAYLOAD_DEPTH`](crate::event::MAX_PAYLOAD_DEPTH)), or otherwise not what an envelope
/// holds. Written before the limit existed or by another tool. It is never turned into a
/// `serde_json::Value`: one thousands of levels deep would overflow the stack when dropped.
/// Everything else of the row is kept, to park it (see `undecodable.rs`).
pub(crate) struct Undecodable {
    pub(crate) id: Uuid,
    pub(crate) stream_id: String,
    pub(crate) stream_version: i64,
    pub(crate) event_type: String,
    pub(crate) schema_version: i32,
    /// The metadata, when only the payload is undecodable.
    pub(crate) metadata: Option<Metadata>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) occurred_at: DateTime<Utc>,
    /// Which column failed: `"payload"` or `"metadata"`.
    pub(crate) column: &'static str,
    pub(crate) error: sqlx::Error,
}

impl<'r> sqlx::FromRow<'r, PgRow> for EventRow {
    fn from_row(row: &'r PgRow) -> std::result::Result<Self, sqlx::Error> {
        let position: i64 = row.try_get(0)?;
        let schema_version: i32 = row.try_get(5)?;
        let stream_version: i64 = row.try_get(3)?;
        let top_head = if row.len() > 13 {
            let top: Option<i64> = row.try_get(12)?;
            let head: i64 = row.try_get(13)?;
            Some((top.unwrap_or(0), head))
        } else {
            None
        };
        // serde_json fails fast at its recursion limit, before building anything deeper, so
        // trying is safe at any depth. Both columns are tried, so a parked row keeps whichever
        // decodes.
        let payload = row.try_get::<Value, _>(6);
        let metadata = row.try_get::<Json<Metadata>, _>(7).map(|m| m.0);
        let (payload, metadata) = match (payload, metadata) {
            (Ok(payload), Ok(metadata)) => (payload, metadata),
            (payload, metadata) => {
                let (column, error, metadata) = match (payload, metadata) {
                    (Err(error), metadata) => ("payload", error, metadata.ok()),
                    (Ok(_), Err(error)) => ("metadata", error, None),
                    (Ok(_), Ok(_)) => unreachable!("matched above"),
                };
                let undecodable = Undecodable {
                    id: row.try_get(1)?,
                    stream_id: row.try_get(2)?,
                    stream_version,
                    event_type: row.try_get(4)?,
                    schema_version,
                    metadata,
                    correlation_id: row.try_get(8)?,
                    causation_id: row.try_get(9)?,
                    source: row.try_get(10)?,
                    occurred_at: row.try_get(11)?,
                    column,
                    error,
                };
                return Ok(EventRow {
                    event: Err(Box::new(undecodable)),
                    position,
                    top_head,
                });
            }
        };
        let event = Event {
            id: row.try_get(1)?,
            event_type: row.try_get(4)?,
            payload,
            metadata,
            timestamp: row.try_get(11)?,
            source: row.try_get(10)?,
            correlation_id: row.try_get(8)?,
            causation_id: row.try_get(9)?,
            version: u32::try_from(schema_version).unwrap_or(0),
            stream_id: Some(row.try_get(2)?),
            stream_version: Some(u64::try_from(stream_version).unwrap_or(0)),
            position: Some(u64::try_from(position).unwrap_or(0)),
        };
        Ok(EventRow {
            event: Ok(event),
            position,
            top_head,
        })
    }
}

/// A `u64` position, version or limit as the `bigint` PostgreSQL stores.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} {value} is over {}", i64::MAX)))
}

/// A row selected with `STORED_COLUMNS` (see `sql.rs`), the payload as JSON text; reads of the
/// global order append the highest committed position and the safe head.
pub(crate) struct StoredRow {
    pub(crate) event: StoredEvent,
    pub(crate) position: i64,
    pub(crate) top_head: Option<(i64, i64)>,
}

impl<'r> sqlx::FromRow<'r, PgRow> for StoredRow {
    fn from_row(row: &'r PgRow) -> std::result::Result<Self, sqlx::Error> {
        let position: i64 = row.try_get(0)?;
        let stream_version: i64 = row.try_get(3)?;
        let schema_version: i32 = row.try_get(5)?;
        let top_head = if row.len() > 8 {
            let top: Option<i64> = row.try_get(7)?;
            let head: i64 = row.try_get(8)?;
            Some((top.unwrap_or(0), head))
        } else {
            None
        };
        Ok(StoredRow {
            event: StoredEvent {
                id: row.try_get(1)?,
                stream_id: Some(row.try_get(2)?),
                position: u64::try_from(position).ok(),
                event_type: row.try_get(4)?,
                version: u32::try_from(schema_version).unwrap_or(0),
                stream_version: u64::try_from(stream_version).ok(),
                payload: StoredPayload::Text(row.try_get(6)?),
            },
            position,
            top_head,
        })
    }
}
