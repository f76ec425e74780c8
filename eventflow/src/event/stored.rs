//! [`StoredEvent`]: what an aggregate folds, with the payload as the store holds it, so it is
//! decoded once, straight into the typed event.

use serde_json::Value;
use uuid::Uuid;

use super::Event;
use crate::error::{Error, Result};

/// A stored event reduced to what folding an aggregate or a typed catch-up needs (no metadata,
/// correlation, causation, source or timestamp), its payload still as the store delivered it:
/// [`EventStore::load_stream_stored`](crate::store::EventStore::load_stream_stored) returns
/// these (and `PostgresEventStore::read_all_stored` / `stream_all_stored`, for a typed
/// catch-up decoded with
/// [`DomainEvent::from_stored`](super::DomainEvent::from_stored)), and `Repository::load`
/// decodes each payload once, straight into the aggregate's typed event (the derive's fused
/// decode), with no `serde_json::Value` in between when the store hands over JSON text
/// (PostgreSQL does).
///
/// This is the fast path. [`Event`] (with `payload: Value`, built by `load_stream`, `read_all`,
/// subscriptions and projections) is the general one: every field, a payload any code can
/// inspect.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The event's id.
    pub id: Uuid,
    /// The stream the store recorded it in.
    pub stream_id: Option<String>,
    /// Its global position in the store.
    pub position: Option<u64>,
    /// The event type name.
    pub event_type: String,
    /// The payload's schema version.
    pub version: u32,
    /// Its version within its stream, when the store recorded one.
    pub stream_version: Option<u64>,
    /// The payload, as JSON text or as a value.
    pub payload: StoredPayload,
}

/// The payload of a [`StoredEvent`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StoredPayload {
    /// JSON text, decoded only by whoever knows the target type.
    Text(String),
    /// A value already built (stores that keep values, upcast payloads).
    Value(Value),
}

impl StoredPayload {
    /// The payload as a value (parsing text).
    ///
    /// # Errors
    /// [`Error::Decode`] naming `event_type` for text that is not JSON.
    pub fn into_value(self, event_type: &str) -> Result<Value> {
        match self {
            StoredPayload::Text(text) => {
                serde_json::from_str(&text).map_err(|e| Error::decode(event_type, e))
            }
            StoredPayload::Value(value) => Ok(value),
        }
    }
}

impl StoredEvent {
    /// The fold's view of `event` (its payload kept as a value).
    pub fn from_event(event: Event) -> Self {
        StoredEvent {
            id: event.id,
            stream_id: event.stream_id,
            position: event.position,
            event_type: event.event_type,
            version: event.version,
            stream_version: event.stream_version,
            payload: StoredPayload::Value(event.payload),
        }
    }

    /// An envelope holding this event's id, type, schema version, stream, stream version,
    /// position and payload (the other fields are fresh: now, no metadata), for code that
    /// decodes envelopes.
    ///
    /// # Errors
    /// [`Error::Decode`] for payload text that is not JSON, [`Error::InvalidEventType`].
    pub fn to_envelope(&self) -> Result<Event> {
        let payload = self.payload.clone().into_value(&self.event_type)?;
        let mut event = Event::new(self.event_type.clone(), payload)?;
        event.id = self.id;
        event.version = self.version;
        event.stream_id.clone_from(&self.stream_id);
        event.stream_version = self.stream_version;
        event.position = self.position;
        Ok(event)
    }
}
