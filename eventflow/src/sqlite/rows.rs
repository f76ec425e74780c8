//! Conversion between events and rows: timestamps as microseconds since the epoch (they compare
//! as numbers, and PostgreSQL keeps the same precision), ids as 16-byte blobs, JSON as text.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{Event, Metadata};

/// One event, encoded for the append statement.
#[derive(Debug)]
pub(crate) struct EncodedEvent {
    pub(crate) id: Uuid,
    pub(crate) event_type: String,
    pub(crate) schema_version: i64,
    pub(crate) payload: String,
    pub(crate) metadata: String,
    pub(crate) tenant_id: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) occurred_at: i64,
}

/// Encodes `events`, truncating their timestamps to microseconds first (in place) so the
/// events an append returns equal the ones loaded later.
///
/// # Errors
/// [`Error::Encode`] for JSON that cannot be encoded.
pub(crate) fn encode(events: &mut [Event]) -> Result<Vec<EncodedEvent>> {
    events
        .iter_mut()
        .map(|event| {
            event.timestamp = event.timestamp.trunc_subsecs(6);
            let encode = |source| Error::Encode {
                event_type: event.event_type.clone(),
                source,
            };
            Ok(EncodedEvent {
                id: event.id,
                event_type: event.event_type.clone(),
                schema_version: i64::from(event.version),
                payload: serde_json::to_string(&event.payload).map_err(encode)?,
                metadata: serde_json::to_string(&event.metadata).map_err(encode)?,
                tenant_id: event.metadata.tenant_id.clone(),
                correlation_id: event.correlation_id.clone(),
                causation_id: event.causation_id.clone(),
                source: event.source.clone(),
                occurred_at: micros(event.timestamp),
            })
        })
        .collect()
}

/// Microseconds since the Unix epoch.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// The instant `micros` microseconds after the Unix epoch.
pub(crate) fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// A `u64` position, version or limit as the `INTEGER` SQLite stores.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} {value} is over {}", i64::MAX)))
}

/// A row of the event columns (in the order of `sql::READ_ALL`) as an event.
///
/// # Errors
/// [`Error::Decode`] when the payload or metadata is not what eventflow wrote.
pub(crate) fn decode_event(row: &SqliteRow) -> Result<Event> {
    let column = |e: sqlx::Error| Error::decode("<sqlite event row>", e);
    let event_type: String = row.try_get(4).map_err(column)?;
    let payload: &str = row.try_get(6).map_err(column)?;
    let metadata: &str = row.try_get(7).map_err(column)?;
    let payload = serde_json::from_str(payload).map_err(|e| Error::decode(&event_type, e))?;
    let metadata: Metadata =
        serde_json::from_str(metadata).map_err(|e| Error::decode(&event_type, e))?;
    let position: i64 = row.try_get(0).map_err(column)?;
    let stream_version: i64 = row.try_get(3).map_err(column)?;
    let schema_version: i64 = row.try_get(5).map_err(column)?;
    Ok(Event {
        id: row.try_get(1).map_err(column)?,
        event_type,
        payload,
        metadata,
        timestamp: from_micros(row.try_get(11).map_err(column)?),
        source: row.try_get(10).map_err(column)?,
        correlation_id: row.try_get(8).map_err(column)?,
        causation_id: row.try_get(9).map_err(column)?,
        version: u32::try_from(schema_version).unwrap_or(0),
        stream_id: Some(row.try_get(2).map_err(column)?),
        stream_version: u64::try_from(stream_version).ok(),
        position: u64::try_from(position).ok(),
    })
}

/// Every row as an event.
pub(crate) fn decode_events(rows: &[SqliteRow]) -> Result<Vec<Event>> {
    rows.iter().map(decode_event).collect()
}
