//! Runtime support for `#[derive(DomainEvent)]` and `#[derive(Aggregate)]`, re-exported to the
//! generated code through `crate::__private`.
//!
//! The envelope's `event_type` already says which variant an event is, so the payload holds only
//! the variant's content. Encoding runs the user's own `Serialize` derive on the enum (so every
//! serde attribute keeps working) and strips the external enum tag here. Decoding is generated
//! per variant: a `match` on the type name and
//! a private payload struct (the variant's fields with their serde attributes) deserialized
//! straight from the borrowed JSON value, the same work a hand-written `match` would do.

use serde::ser::{self, Impossible, Serialize};
use serde_json::{Map, Value};

use crate::aggregate::upcast::upcast_payload;
use crate::error::{Error, Result};
use crate::event::{DomainEvent, Event};

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

/// Serializes an externally tagged enum value as the content of its variant.
struct VariantSerializer;

fn not_a_variant(kind: &str) -> serde_json::Error {
    ser::Error::custom(format_args!(
        "a DomainEvent enum must serialize as an externally tagged enum variant (serde's \
         default), but it serialized as {kind}"
    ))
}

impl ser::Serializer for VariantSerializer {
    type Ok = Value;
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<Value, serde_json::Error>;
    type SerializeTuple = Impossible<Value, serde_json::Error>;
    type SerializeTupleStruct = Impossible<Value, serde_json::Error>;
    type SerializeTupleVariant = TupleVariant;
    type SerializeMap = Impossible<Value, serde_json::Error>;
    type SerializeStruct = Impossible<Value, serde_json::Error>;
    type SerializeStructVariant = StructVariant;

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<Value, Self::Error> {
        Ok(Value::Object(Map::new()))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<Value, Self::Error> {
        value.serialize(serde_json::value::Serializer)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        len: usize,
    ) -> Result<TupleVariant, Self::Error> {
        Ok(TupleVariant(Vec::with_capacity(len)))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<StructVariant, Self::Error> {
        Ok(StructVariant(Map::new()))
    }

    fn serialize_bool(self, _: bool) -> Result<Value, Self::Error> {
        Err(not_a_variant("a bool"))
    }
    fn serialize_i8(self, _: i8) -> Result<Value, Self::Error> {
        Err(not_a_variant("an integer"))
    }
    fn serialize_i16(self, _: i16) -> Result<Value, Self::Error> {
        Err(not_a_variant("an integer"))
    }
    fn serialize_i32(self, _: i32) -> Result<Value, Self::Error> {
        Err(not_a_variant("an integer"))
    }
    fn serialize_i64(self, _: i64) -> Result<Value, Self::Error> {
        Err(not_a_variant("an integer"))
    }
    fn serialize_u8(self, _: u8) -> Result<Value, Self::Error> {
        Err(not_a_variant("an integer"))
    }
    fn serialize_u16(self, _: u16) -> Result<Value, Self::Error> {
        Err(not_a_variant("an integer"))
    }
    fn serialize_u32(self, _: u32) -> Result<Value, Self::Error> {
        Err(not_a_variant("an integer"))
    }
    fn serialize_u64(self, _: u64) -> Result<Value, Self::Error> {
        Err(not_a_variant("an integer"))
    }
    fn serialize_f32(self, _: f32) -> Result<Value, Self::Error> {
        Err(not_a_variant("a float"))
    }
    fn serialize_f64(self, _: f64) -> Result<Value, Self::Error> {
        Err(not_a_variant("a float"))
    }
    fn serialize_char(self, _: char) -> Result<Value, Self::Error> {
        Err(not_a_variant("a char"))
    }
    fn serialize_str(self, _: &str) -> Result<Value, Self::Error> {
        Err(not_a_variant("a string"))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Value, Self::Error> {
        Err(not_a_variant("bytes"))
    }
    fn serialize_none(self) -> Result<Value, Self::Error> {
        Err(not_a_variant("an option"))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Value, Self::Error> {
        Err(not_a_variant("an option"))
    }
    fn serialize_unit(self) -> Result<Value, Self::Error> {
        Err(not_a_variant("a unit"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, Self::Error> {
        Err(not_a_variant("a unit struct"))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Value, Self::Error> {
        Err(not_a_variant("a newtype struct"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        Err(not_a_variant("a sequence"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Self::Error> {
        Err(not_a_variant("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        Err(not_a_variant("a tuple struct"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        Err(not_a_variant(
            "a map (is the enum internally tagged or untagged?)",
        ))
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        Err(not_a_variant(
            "a struct (is the enum internally tagged or untagged?)",
        ))
    }
}

/// Collects the fields of a tuple variant into a JSON array.
struct TupleVariant(Vec<Value>);

impl ser::SerializeTupleVariant for TupleVariant {
    type Ok = Value;
    type Error = serde_json::Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        self.0.push(value.serialize(serde_json::value::Serializer)?);
        Ok(())
    }

    fn end(self) -> Result<Value, Self::Error> {
        Ok(Value::Array(self.0))
    }
}

/// Collects the fields of a struct variant into a JSON object.
struct StructVariant(Map<String, Value>);

impl ser::SerializeStructVariant for StructVariant {
    type Ok = Value;
    type Error = serde_json::Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        self.0.insert(
            key.to_owned(),
            value.serialize(serde_json::value::Serializer)?,
        );
        Ok(())
    }

    fn end(self) -> Result<Value, Self::Error> {
        Ok(Value::Object(self.0))
    }
}
