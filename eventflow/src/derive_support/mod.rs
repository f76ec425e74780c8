//! Runtime support for `#[derive(DomainEvent)]` and `#[derive(Aggregate)]`: what generated code
//! calls, reached only through the versioned `crate::__private_X_Y_Z` module of re-exports.
//!
//! The envelope's `event_type` already says which variant an event is, so the payload holds only
//! the variant's content. Encoding runs the user's own `Serialize` derive on the enum (so every
//! serde attribute keeps working) and strips the external enum tag here. Decoding is generated
//! per variant: a `match` on the type name and
//! a private payload struct (the variant's fields with their serde attributes) deserialized
//! straight from the borrowed JSON value, the same work a hand-written `match` would do.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::aggregate::upcast::upcast_payload;
use crate::error::{Error, Result};
use crate::event::{DomainEvent, Event};
use crate::event::{StoredEvent, StoredPayload};

mod variant_serializer;

use variant_serializer::VariantSerializer;

/// Calls the handler of one variant: implemented by `#[derive(DomainEvent)]` for every type that
/// implements the enum's generated handler trait.
pub trait Dispatch<H: ?Sized> {
    /// Passes the variant's fields to its handler method on `handler`.
    fn dispatch(self, handler: &mut H);

    /// Decodes `event` (upcasting with the declared upcasters) and passes its fields to the
    /// handler, without building the enum value in between.
    ///
    /// # Errors
    /// As [`DomainEvent::from_envelope`].
    fn dispatch_envelope<S: PayloadSource + ?Sized>(event: &S, handler: &mut H) -> Result<()>;
}

/// Where the derive's fused decode reads an event from: an [`Event`] envelope (payload already
/// a `Value`) or a [`StoredEvent`] (payload still JSON text, decoded once, straight into the
/// variant's payload struct).
pub trait PayloadSource {
    /// The event type name.
    fn event_type(&self) -> &str;
    /// The payload's schema version.
    fn schema_version(&self) -> u32;
    /// Decodes the payload into `T`.
    ///
    /// # Errors
    /// serde_json's.
    fn decode<T: DeserializeOwned>(&self) -> std::result::Result<T, serde_json::Error>;
    /// The payload as a value (for upcasting).
    ///
    /// # Errors
    /// serde_json's, for text that is not JSON.
    fn payload_value(&self) -> std::result::Result<Value, serde_json::Error>;
}

impl PayloadSource for Event {
    #[inline]
    fn event_type(&self) -> &str {
        &self.event_type
    }
    #[inline]
    fn schema_version(&self) -> u32 {
        self.version
    }
    #[inline]
    fn decode<T: DeserializeOwned>(&self) -> std::result::Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
    fn payload_value(&self) -> std::result::Result<Value, serde_json::Error> {
        Ok(self.payload.clone())
    }
}

impl PayloadSource for StoredEvent {
    #[inline]
    fn event_type(&self) -> &str {
        &self.event_type
    }
    #[inline]
    fn schema_version(&self) -> u32 {
        self.version
    }
    #[inline]
    fn decode<T: DeserializeOwned>(&self) -> std::result::Result<T, serde_json::Error> {
        match &self.payload {
            StoredPayload::Text(text) => serde_json::from_str(text),
            StoredPayload::Value(value) => T::deserialize(value),
        }
    }
    fn payload_value(&self) -> std::result::Result<Value, serde_json::Error> {
        match &self.payload {
            StoredPayload::Text(text) => serde_json::from_str(text),
            StoredPayload::Value(value) => Ok(value.clone()),
        }
    }
}

/// [`decode_payload`] for any [`PayloadSource`]: the payload decoded once into `T` (the
/// variant's payload struct), upcast first when stored with another schema version.
///
/// # Errors
/// [`Error::MissingUpcaster`], [`Error::Decode`] naming the event type.
#[inline]
pub fn decode_from<E, T, S>(event: &S, current: u32) -> Result<T>
where
    E: DomainEvent,
    T: DeserializeOwned,
    S: PayloadSource + ?Sized,
{
    let decoded = if event.schema_version() == current {
        event.decode::<T>()
    } else {
        let value = event
            .payload_value()
            .map_err(|e| Error::decode(event.event_type(), e))?;
        let payload = upcast_payload::<E>(
            None,
            event.event_type(),
            event.schema_version(),
            current,
            value,
        )?;
        T::deserialize(&payload)
    };
    decoded.map_err(|e| Error::decode(event.event_type(), e))
}

/// [`decode_unit`] for any [`PayloadSource`].
///
/// # Errors
/// [`Error::MissingUpcaster`].
#[inline]
pub fn decode_unit_from<E: DomainEvent, T, S: PayloadSource + ?Sized>(
    event: &S,
    current: u32,
    value: T,
) -> Result<T> {
    if event.schema_version() != current {
        upcast_payload::<E>(
            None,
            event.event_type(),
            event.schema_version(),
            current,
            Value::Null,
        )?;
    }
    Ok(value)
}

/// [`Error::UnknownEventType`] for an envelope the enum has no variant for.
#[cold]
pub fn unknown_event_type(event_type: &str, target: &'static str) -> Error {
    Error::UnknownEventType {
        event_type: event_type.to_owned(),
        target,
    }
}

/// The payload of an externally tagged enum value: its variant's content as JSON (an empty
/// object for a unit variant).
///
/// # Errors
/// [`Error::Encode`] naming `event_type`.
pub fn variant_to_payload<T: Serialize + ?Sized>(value: &T, event_type: &str) -> Result<Value> {
    value
        .serialize(VariantSerializer)
        .map_err(|source| Error::Encode {
            event_type: event_type.to_owned(),
            source,
        })
}

/// Decodes the payload of an envelope with `decode` (the derive's per-variant payload struct),
/// upcasting a payload of another schema version to `current` first (with the upcasters
/// declared on `E`).
///
/// # Errors
/// [`Error::MissingUpcaster`], [`Error::Decode`] naming the event type.
#[inline]
pub fn decode_payload<E, T, F>(event: &Event, current: u32, decode: F) -> Result<T>
where
    E: DomainEvent,
    F: FnOnce(&Value) -> Result<T, serde_json::Error>,
{
    let decoded = if event.version == current {
        decode(&event.payload)
    } else {
        let payload = upcast_payload::<E>(
            None,
            &event.event_type,
            event.version,
            current,
            event.payload.clone(),
        )?;
        decode(&payload)
    };
    decoded.map_err(|e| Error::decode(&event.event_type, e))
}

/// Decodes a unit variant: the payload is ignored, but the schema version is still checked.
///
/// # Errors
/// [`Error::MissingUpcaster`].
#[inline]
pub fn decode_unit<E: DomainEvent, T>(event: &Event, current: u32, value: T) -> Result<T> {
    if event.version != current {
        // Run the upcasters anyway: a missing one is an error for unit variants too.
        upcast_payload::<E>(None, &event.event_type, event.version, current, Value::Null)?;
    }
    Ok(value)
}
