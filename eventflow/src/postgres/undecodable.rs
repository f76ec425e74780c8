//! Stored rows that cannot be decoded (payload or metadata nested past what serde_json parses,
//! written by an older version or another tool): every reader skips them and goes on, and the
//! first one to meet a row parks it in the store's `dead_letters` table under
//! [`UNDECODABLE_SOURCE`], once per row, logging it once.
//!
//! What a parked row looks like and how to repair it: see [`UNDECODABLE_SOURCE`].

use serde_json::json;
use uuid::Uuid;

use super::dead_letter::text;
use super::rows::{EventRow, Undecodable};
use super::store::PostgresEventStore;
use crate::error::{Error, Result};
use crate::event::{Event, Metadata};
use crate::store::dead_letter::ParkedEvent;

/// The dead-letter source under which PostgreSQL readers park stored rows they cannot decode
/// (see [`PostgresEventStore::dead_letters`]), once per row, with the reason
/// `undecodable: the stored payload cannot be decoded` (or `metadata`), serde_json's error
/// and one attempt.
///
/// The parked [`Event`] keeps what the row holds besides its JSON (id, type, schema version,
/// stream id and version, position, timestamp, correlation, causation and source, and the
/// metadata when only the payload is undecodable, else metadata with only the row's
/// `tenant_id`); its payload holds the stored text of both JSON columns as JSON strings, as
/// PostgreSQL prints `jsonb`, so nothing is lost and nothing deep is ever parsed:
///
/// ```json
/// { "undecodable_payload": "<payload as stored>", "undecodable_metadata": "<metadata as stored>" }
/// ```
///
/// To repair one: list it (`store.dead_letters().list(UNDECODABLE_SOURCE, n)`), fix the
/// text, append a corrected event with a new id (the row keeps its own), and discard the dead
/// letter. The row stays in the append-only `events` table, marked in `undecodable_events`, so
/// it is never parked again.
pub const UNDECODABLE_SOURCE: &str = "store:undecodable";

impl PostgresEventStore {
    /// The events of `rows`, in order; each row that cannot be decoded is parked (once) and
    /// skipped, so no reader stops on it. Parking never fails a read: if it fails, the row is
    /// reported and skipped all the same, and the next read tries again.
    pub(super) async fn decoded(&self, rows: Vec<EventRow>) -> Vec<Event> {
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            match row.event {
                Ok(event) => events.push(event),
                Err(bad) => self.park_undecodable(row.position, &bad).await,
            }
        }
        events
    }

    async fn park_undecodable(&self, position: i64, bad: &Undecodable) {
        match self.try_park(position, bad).await {
            Ok(Some(dead_letter_id)) => tracing::error!(
                position,
                event_id = %bad.id,
                stream_id = %bad.stream_id,
                stream_version = bad.stream_version,
                event_type = %bad.event_type,
                column = bad.column,
                %dead_letter_id,
                source = UNDECODABLE_SOURCE,
                error = &bad.error as &(dyn std::error::Error + 'static),
                "postgres store: stored event cannot be decoded; parked it, readers skip it"
            ),
            // Parked before (by this reader, another one or another process): reported then.
            Ok(None) => tracing::debug!(
                position,
                event_id = %bad.id,
                "postgres store: skipping a parked undecodable event"
            ),
            Err(park_error) => tracing::error!(
                position,
                event_id = %bad.id,
                stream_id = %bad.stream_id,
                stream_version = bad.stream_version,
                event_type = %bad.event_type,
                column = bad.column,
                error = &bad.error as &(dyn std::error::Error + 'static),
                park_error = &park_error as &(dyn std::error::Error + 'static),
                "postgres store: stored event cannot be decoded nor parked; skipping it"
            ),
        }
    }

    /// Parks `bad`; the dead letter's id when this call parked it, `None` when it was parked
    /// already.
    async fn try_park(&self, position: i64, bad: &Undecodable) -> Result<Option<Uuid>> {
        let stored: Option<(String, String, Option<String>)> =
            sqlx::query_as(&self.inner.sql.undecodable_text)
                .bind(bad.id)
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(|e| self.map(e))?;
        let Some((payload, metadata, tenant_id)) = stored else {
            return Ok(None);
        };
        let event = Event {
            id: bad.id,
            event_type: bad.event_type.clone(),
            payload: json!({ "undecodable_payload": payload, "undecodable_metadata": metadata }),
            metadata: bad.metadata.clone().unwrap_or(Metadata {
                tenant_id,
                ..Metadata::default()
            }),
            timestamp: bad.occurred_at,
            source: bad.source.clone(),
            correlation_id: bad.correlation_id.clone(),
            causation_id: bad.causation_id.clone(),
            version: u32::try_from(bad.schema_version).unwrap_or(0),
            stream_id: Some(bad.stream_id.clone()),
            stream_version: Some(u64::try_from(bad.stream_version).unwrap_or(0)),
            position: Some(u64::try_from(position).unwrap_or(0)),
        };
        let parked = ParkedEvent::new(
            UNDECODABLE_SOURCE,
            event,
            format!("undecodable: the stored {} cannot be decoded", bad.column),
            &bad.error,
            1,
        );
        let event = serde_json::to_string(&parked.event).map_err(|source| Error::Encode {
            event_type: parked.event.event_type.clone(),
            source,
        })?;
        sqlx::query_scalar(&self.inner.sql.park_undecodable)
            .bind(parked.id)
            .bind(&parked.source)
            .bind(parked.event.id)
            .bind(event)
            .bind(text(&parked.reason))
            .bind(text(&parked.error))
            .bind(i32::try_from(parked.attempts).unwrap_or(i32::MAX))
            .bind(parked.parked_at)
            .bind(position)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))
            .inspect(|id: &Option<Uuid>| {
                if id.is_some() {
                    crate::metrics::parked(UNDECODABLE_SOURCE);
                }
            })
    }
}
