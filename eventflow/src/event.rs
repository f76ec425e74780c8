//! The event envelope, its metadata, builders and typed conversion.
//!
//! # Limits
//!
//! Every limit on an event, in one place. eventflow checks each where events are built
//! ([`Event::new`], [`Event::from_json`]), appended (every store, before anything is written) and
//! published (every bus, before anything is sent), so what a writer accepts every reader decodes.
//!
//! | what | limit | error |
//! | --- | --- | --- |
//! | event type name | [`MAX_EVENT_TYPE_LEN`] (255) bytes of dot-separated `[a-z0-9_-]` tokens | [`Error::InvalidEventType`] |
//! | payload nesting | [`MAX_PAYLOAD_DEPTH`] (100) levels of arrays and objects (see [`payload_depth`]) | [`Error::PayloadTooDeep`] |
//! | metadata `custom` nesting | [`MAX_PAYLOAD_DEPTH`] levels, counting the `custom` map itself | [`Error::PayloadTooDeep`] |
//! | encoded size on NATS | the server's `max_payload` (1 MiB by default), headers included | [`Error::EventTooLarge`], before sending |
//! | encoded size elsewhere | none of eventflow's own: Redis takes values up to its `proto-max-bulk-len` (512 MiB by default), PostgreSQL a `jsonb` value up to 255 MiB, the in-memory bus and store any size | the backend's error |
//!
//! Why 100 levels: serde_json, which decodes every envelope, parses at most 127 levels. The
//! envelope adds one level around the payload and two around the `custom` map, so an accepted
//! event nests at most 102 levels, which leaves 25 for whatever wraps an envelope (a dead-letter
//! record, a consumer's own message). No real payload comes near it.
//!
//! **Deep values and the stack.** Dropping, cloning or serializing a `serde_json::Value`
//! recurses once per level: a value a few thousand levels deep overflows a 2 MiB thread stack
//! and aborts the process. eventflow measures depth iteratively, and the append and publish
//! paths dismantle a too-deep payload they reject (see [`dismantle`]) rather than drop it. What
//! the caller must not do: build such a value and let it go out of scope (pass it to
//! [`dismantle`]), or hand one *by value* to [`Event::new`], which can only reject a Rust value
//! of unknown type, not take it apart: past 128 levels it is leaked rather than dropped. Pass a
//! value of unknown depth by reference instead.
//!
//! Stored rows that break these limits (written by an older version or another tool) are not
//! decoded by readers: a PostgreSQL reader reports and parks such a row (once, in the store's
//! dead letters under the source `store:undecodable`, with its stored text) and skips it, so
//! global readers go on past it.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};

mod limits;
mod stored;
pub mod traceparent;

pub(crate) use limits::validate_owned;
pub use limits::{dismantle, payload_depth};
pub use stored::{StoredEvent, StoredPayload};

/// Longest accepted event type name, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

/// Deepest accepted nesting of an event's payload, and of its metadata's `custom` map, in levels
/// of JSON arrays and objects (see [`payload_depth`] and the [module docs](self#limits)).
pub const MAX_PAYLOAD_DEPTH: usize = 100;

/// Context that travels with an event: who, for which tenant, in which request and trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// The user who triggered the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The tenant the event belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The request (e.g. HTTP request id) that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The distributed trace id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Anything else, as JSON.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub custom: Map<String, Value>,
}

impl Metadata {
    /// Sets the user id.
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }
    /// Sets the tenant id.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }
    /// Sets the request id.
    pub fn request(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
    /// Sets the trace id.
    pub fn trace(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }
    /// Adds a custom entry.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.custom.insert(key.into(), value.into());
        self
    }
}

/// One event: what happened (`event_type`, `payload`), with context and tracing ids.
///
/// Built with [`Event::new`] and the `with_*` builders. The `stream_id`, `stream_version` and
/// `position` fields are `None` until an [`EventStore`](crate::store::EventStore) records the
/// event; the store fills them in on the events it returns.
///
/// # Store-owned fields
///
/// `stream_id`, `stream_version` and `position` belong to the store. They are public so they
/// can be read, but a value a caller puts there means nothing: every store of this crate
/// overwrites all three on append (the stream is the one named in the call, the version and
/// position the ones the store assigns), in what the append returns and in what it records,
/// and the store conformance kit holds every store to it (the check
/// `testing::conformance::store::claimed_store_fields_are_overwritten`, feature `testing`).
///
/// On the wire they travel as they are, so an event received from a bus carries whatever its
/// publisher wrote: the store's values when the publisher is this store's relay
/// ([`WithBus`](crate::WithBus)), anything at all when it is someone else, since anyone who can
/// publish on the bus can write any JSON. Treat them on a received event as a claim: do not
/// base checkpoints, ordering, deduplication or lag on them unless the bus is written only by
/// this store's relay. eventflow's own bus consumers do not read them: a projection fed by a
/// bus ([`projection::subscribe`](crate::projection::subscribe)) and a saga fed by a bus
/// ([`SagaManager::subscribe`](crate::saga::SagaManager::subscribe)) keep no checkpoint (the
/// bus's acknowledgement is theirs), and every checkpoint, position and lag eventflow keeps
/// (relay, [`ProjectionRunner`](crate::projection::ProjectionRunner)) comes from events read
/// from the store. Appending a received event to a store is safe: the store assigns its own.
///
/// The JSON form (used on every bus and in the store) names the type field `type`; fields that
/// are `None` are left out.
///
/// ```
/// use eventflow::{Event, Metadata};
/// use serde_json::json;
///
/// let placed = Event::new("order.placed", json!({ "order_id": "o-1", "total": 42 }))?
///     .with_metadata(Metadata::default().tenant("acme").user("u-7"))
///     .with_correlation("checkout-9")
///     .with_source("order-service");
/// let paid = Event::new("payment.received", json!({ "order_id": "o-1" }))?.caused_by(&placed);
/// assert_eq!(paid.correlation_id.as_deref(), Some("checkout-9"));
/// assert_eq!(paid.causation_id, Some(placed.id.to_string()));
/// # Ok::<(), eventflow::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id, a UUID v7 so ids sort by creation time.
    pub id: Uuid,
    /// Dot-separated type name, e.g. `order.created` (see [`validate_event_type`]).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's data.
    pub payload: Value,
    /// Context (user, tenant, request, trace, custom).
    #[serde(default)]
    pub metadata: Metadata,
    /// When the event occurred.
    pub timestamp: DateTime<Utc>,
    /// The component that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Links every event of one business transaction or request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the event (or command) that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Schema version of the payload (starts at 1).
    #[serde(default = "default_version")]
    pub version: u32,
    /// The stream the store recorded it in. Store-owned: set by the store on append, whatever
    /// the caller put here; on an event from a bus, the publisher's claim (see
    /// [store-owned fields](Event#store-owned-fields)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
    /// Its version within that stream (1, 2, 3, ... with no gaps). Store-owned: set by the
    /// store on append, whatever the caller put here; on an event from a bus, the publisher's
    /// claim (see [store-owned fields](Event#store-owned-fields)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_version: Option<u64>,
    /// Its global position in the store (increasing in commit order). Store-owned: set by the
    /// store on append, whatever the caller put here; on an event from a bus, the publisher's
    /// claim, never a checkpoint (see [store-owned fields](Event#store-owned-fields)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

fn default_version() -> u32 {
    1
}

impl Event {
    /// Creates an event of `event_type` whose payload is `payload` serialized to JSON.
    ///
    /// The payload's nesting is measured before it is converted, so a payload of any depth is
    /// rejected without overflowing the stack. One nested more than 128 levels and passed by
    /// value is then leaked, not dropped (dropping it could overflow the stack, and its type is
    /// unknown here, so it cannot be taken apart): pass such a value by reference and
    /// [`dismantle`] it.
    ///
    /// # Errors
    /// [`Error::InvalidEventType`] when the name is not valid, [`Error::PayloadTooDeep`] when the
    /// payload nests more than [`MAX_PAYLOAD_DEPTH`] levels (its `depth` is counted up to 129),
    /// [`Error::Encode`] when the payload does not serialize.
    pub fn new(event_type: impl Into<String>, payload: impl Serialize) -> Result<Self> {
        let event_type = event_type.into();
        validate_event_type(&event_type)?;
        let too_deep = |event_type, depth| Error::PayloadTooDeep {
            event_type,
            field: "payload",
            depth,
            limit: MAX_PAYLOAD_DEPTH,
        };
        match limits::probe_depth(&payload) {
            Ok(depth) if depth > MAX_PAYLOAD_DEPTH => return Err(too_deep(event_type, depth)),
            Ok(_) => {}
            Err(depth) => {
                // Too deep to drop safely, and of a type we cannot take apart.
                std::mem::forget(payload);
                return Err(too_deep(event_type, depth));
            }
        }
        let payload = serde_json::to_value(payload).map_err(|source| Error::Encode {
            event_type: event_type.clone(),
            source,
        })?;
        let mut event = Self::from_parts(event_type, payload);
        traceparent::inject(&mut event);
        Ok(event)
    }

    /// Creates an event from an already valid type name and a JSON payload without checking the
    /// name. Used by stores and buses that re-validate on the way in.
    pub(crate) fn from_parts(event_type: String, payload: Value) -> Self {
        Event {
            id: Uuid::now_v7(),
            event_type,
            payload,
            metadata: Metadata::default(),
            timestamp: Utc::now(),
            source: None,
            correlation_id: None,
            causation_id: None,
            version: 1,
            stream_id: None,
            stream_version: None,
            position: None,
        }
    }

    /// Creates the envelope for a typed domain event (see [`DomainEvent`]).
    ///
    /// # Errors
    /// [`Error::Encode`] when the payload does not serialize, [`Error::PayloadTooDeep`] when it
    /// nests more than [`MAX_PAYLOAD_DEPTH`] levels.
    pub fn from_domain<E: DomainEvent>(event: &E) -> Result<Self> {
        let event_type = event.event_type();
        let payload = event.to_payload()?;
        let mut envelope = Self::from_parts(event_type.to_owned(), payload);
        envelope.version = E::schema_version(event_type);
        limits::check_depth(&envelope)?;
        traceparent::inject(&mut envelope);
        Ok(envelope)
    }

    /// Replaces the metadata.
    ///
    /// The trace context recorded at creation ([`traceparent`](traceparent::TRACEPARENT)) is
    /// kept unless `metadata` brings its own.
    pub fn with_metadata(mut self, mut metadata: Metadata) -> Self {
        if let Some(trace) = self.metadata.custom.remove(traceparent::TRACEPARENT) {
            metadata
                .custom
                .entry(traceparent::TRACEPARENT)
                .or_insert(trace);
        }
        self.metadata = metadata;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    /// Marks this event as caused by `parent`: the causation id becomes the parent's id, the
    /// correlation id the parent's correlation id (or the parent's id when it has none), and the
    /// parent's tenant and trace ids are carried over where this event has none.
    pub fn caused_by(mut self, parent: &Event) -> Self {
        self.causation_id = Some(parent.id.to_string());
        self.correlation_id = Some(parent.correlation_or_id().into_owned());
        if self.metadata.tenant_id.is_none() {
            self.metadata
                .tenant_id
                .clone_from(&parent.metadata.tenant_id);
        }
        if self.metadata.trace_id.is_none() {
            self.metadata.trace_id.clone_from(&parent.metadata.trace_id);
        }
        self
    }

    /// Sets the source component.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the payload schema version.
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Sets the event id (for example to make a retried publish idempotent).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// The correlation id, or the event's own id when it starts a new correlation.
    pub fn correlation_or_id(&self) -> Cow<'_, str> {
        match &self.correlation_id {
            Some(c) => Cow::Borrowed(c),
            None => Cow::Owned(self.id.to_string()),
        }
    }

    /// Deserializes the payload into `T`.
    ///
    /// # Errors
    /// [`Error::Decode`] naming the event type when the payload does not match `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.payload).map_err(|e| Error::decode(&self.event_type, e))
    }

    /// Decodes the envelope into a typed domain event.
    ///
    /// # Errors
    /// [`Error::UnknownEventType`] when `E` has no variant for this type, [`Error::Decode`] when
    /// the payload does not match it.
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        E::from_envelope(self)
    }

    /// Checks the event before it is published or stored: a valid type name, and a payload and
    /// metadata `custom` map nested at most [`MAX_PAYLOAD_DEPTH`] levels (measured
    /// iteratively, so any depth is checked safely). Every store's append and every bus's
    /// publish run this check before anything is written or sent.
    ///
    /// # Errors
    /// [`Error::InvalidEventType`], [`Error::PayloadTooDeep`].
    pub fn validate(&self) -> Result<()> {
        validate_event_type(&self.event_type)?;
        limits::check_depth(self)
    }

    /// [`validate`](Self::validate) for an event the caller owns and drops when it is rejected:
    /// a too-deep payload or `custom` map is [dismantled](dismantle) first, so that drop cannot
    /// overflow the stack.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub(crate) fn validate_owned(&mut self) -> Result<()> {
        validate_owned(std::slice::from_mut(self))
    }

    /// The envelope as JSON bytes (the wire form on every bus).
    ///
    /// # Errors
    /// [`Error::Encode`] (only for payloads holding non-string map keys, which JSON cannot hold).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::Encode {
            event_type: self.event_type.clone(),
            source,
        })
    }

    /// Parses an envelope from its JSON form and validates its type name.
    ///
    /// # Errors
    /// [`Error::Decode`] when the bytes are not an envelope, [`Error::InvalidEventType`] when the
    /// type name is not valid, [`Error::PayloadTooDeep`] when the payload or metadata nests more
    /// than [`MAX_PAYLOAD_DEPTH`] levels (found without building the value, at any depth).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let mut event: Event = serde_json::from_slice(bytes).map_err(|e| {
            // serde_json gives up at 128 levels; say what was too deep rather than how it failed.
            match limits::scan_envelope(bytes) {
                Some((event_type, field, depth)) => Error::PayloadTooDeep {
                    event_type,
                    field,
                    depth,
                    limit: MAX_PAYLOAD_DEPTH,
                },
                None => Error::decode("<envelope>", e),
            }
        })?;
        event.validate_owned()?;
        Ok(event)
    }
}

/// A typed set of events, usually an enum with `#[derive(DomainEvent)]`.
///
/// Each variant has a stable event type name and a schema version, and converts to and from the
/// [`Event`] envelope.
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// Every event type name this set can hold.
    fn event_types() -> &'static [&'static str];

    /// The event type name of this value.
    fn event_type(&self) -> &'static str;

    /// The current schema version of `event_type` (1 unless declared otherwise).
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// The payload of this value as JSON.
    ///
    /// # Errors
    /// [`Error::Encode`].
    fn to_payload(&self) -> Result<Value>;

    /// Decodes an envelope.
    ///
    /// # Errors
    /// [`Error::UnknownEventType`] for a type this set does not hold, [`Error::Decode`] for a
    /// payload that does not match.
    fn from_envelope(event: &Event) -> Result<Self>;

    /// Decodes a [`StoredEvent`] (the payload still as the store delivered it). The default
    /// builds an envelope and calls [`from_envelope`](Self::from_envelope); the derive decodes
    /// the payload text once, straight into the variant (no `Value` in between).
    ///
    /// # Errors
    /// As [`from_envelope`](Self::from_envelope).
    fn from_stored(event: &StoredEvent) -> Result<Self> {
        Self::from_envelope(&event.to_envelope()?)
    }

    /// The upcaster declared for `event_type` that upgrades a payload of `from_version` to
    /// `from_version + 1` (`#[event(upcast(v1 = path))]` in the derive), if any. Runtime
    /// upcasters registered on a [`Repository`](crate::aggregate::Repository) take precedence.
    fn upcaster(event_type: &str, from_version: u32) -> Option<Upcaster> {
        let _ = (event_type, from_version);
        None
    }
}

/// Upgrades an event payload from one schema version to the next.
///
/// # Errors
/// Whatever the function reports; it becomes [`Error::Decode`] naming the event type.
pub type Upcaster = fn(Value) -> std::result::Result<Value, crate::error::BoxError>;

/// Checks that `name` is a valid event type: dot-separated tokens of `[a-z0-9_-]`, at most
/// [`MAX_EVENT_TYPE_LEN`] bytes.
///
/// Event types become NATS subjects and Redis keys, so anything else (empty, spaces, `*`, `>`,
/// control characters, upper case, leading, trailing or double dots) is rejected.
///
/// # Errors
/// [`Error::InvalidEventType`] naming the input and the rule it broke.
pub fn validate_event_type(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_EVENT_TYPE_LEN {
        Some("longer than 255 bytes")
    } else if name.starts_with('.') || name.ends_with('.') {
        Some("must not start or end with a dot")
    } else if name.contains("..") {
        Some("must not contain an empty token (double dot)")
    } else if name.contains(['*', '>']) {
        Some("wildcards `*` and `>` are only allowed in subscription patterns")
    } else if name.chars().any(char::is_whitespace) {
        Some("must not contain whitespace")
    } else if name.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if !name.bytes().all(|b| {
        b == b'.' || b == b'_' || b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit()
    }) {
        Some("tokens may only hold lower-case ASCII letters, digits, `_` and `-`")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidEventType {
            name: name.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests;
