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
use serde_json::Value;

use crate::aggregate::upcast::upcast_payload;
use crate::error::{Error, Result};
use crate::event::{DomainEvent, Event};

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
    fn dispatch_envelope(event: &Event, handler: &mut H) -> Result<()>;
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
