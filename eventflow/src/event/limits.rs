//! The payload depth limit: measuring, checking and disposing of nested JSON without recursion.
//!
//! serde_json stops parsing at 128 levels of nesting, and `serde_json::Value`'s `Drop`, `Clone`
//! and `Serialize` recurse once per level. So a value a writer accepts must stay well below
//! what every reader parses, and code that meets a value of unknown depth must walk it with an
//! explicit stack. Everything here does.

use std::cell::Cell;
use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::Value;

use super::{Event, MAX_PAYLOAD_DEPTH};
use crate::error::{Error, Result};

/// How deeply nested a JSON value is: 0 for a scalar, 1 for an array or object of scalars
/// (`[]`, `{"a": 1}`), one more per level of arrays and objects inside.
///
/// Iterative (an explicit stack), so any depth is measured without growing the call stack.
///
/// ```
/// use eventflow::event::payload_depth;
/// use serde_json::json;
///
/// assert_eq!(payload_depth(&json!(7)), 0);
/// assert_eq!(payload_depth(&json!({ "order": { "lines": [1, 2] } })), 3);
/// ```
pub fn payload_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0_usize)];
    while let Some((value, level)) = stack.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(level + 1);
                stack.extend(items.iter().map(|item| (item, level + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(level + 1);
                stack.extend(map.values().map(|item| (item, level + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Drops a JSON value of any depth without recursion.
///
/// Dropping a `serde_json::Value` recurses once per level of nesting: on a 2 MiB thread stack
/// (the size of test threads and Tokio workers) a few thousand levels already overflow it and
/// abort the process. Call this instead of letting such a value go out of scope. eventflow does
/// it itself for the payloads it rejects as too deep.
///
/// ```
/// use serde_json::Value;
///
/// let mut deep = Value::Null;
/// for _ in 0..100_000 {
///     deep = Value::Array(vec![deep]);
/// }
/// eventflow::event::dismantle(deep);
/// ```
pub fn dismantle(value: Value) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        // Each value is dropped here once its children were moved out: shallow drops only.
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// The depth of the metadata's `custom` map as one JSON object (0 when it is empty).
fn custom_depth(event: &Event) -> usize {
    let custom = &event.metadata.custom;
    if custom.is_empty() {
        return 0;
    }
    1 + custom.values().map(payload_depth).max().unwrap_or(0)
}

/// Checks the payload and the metadata's `custom` map against [`MAX_PAYLOAD_DEPTH`].
pub(super) fn check_depth(event: &Event) -> Result<()> {
    let too_deep = |field, depth| Error::PayloadTooDeep {
        event_type: event.event_type.clone(),
        field,
        depth,
        limit: MAX_PAYLOAD_DEPTH,
    };
    let depth = payload_depth(&event.payload);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(too_deep("payload", depth));
    }
    let depth = custom_depth(event);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(too_deep("metadata", depth));
    }
    Ok(())
}

/// Validates every event of `events` (see [`Event::validate`]); when one fails, dismantles every
/// payload and `custom` map over the depth limit first, so the caller can drop the rejected
/// events whatever their depth. This is the check every append and publish path runs on the
/// events it owns.
///
/// # Errors
/// The first event's error.
pub(crate) fn validate_owned(events: &mut [Event]) -> Result<()> {
    let Some(error) = events.iter().find_map(|e| e.validate().err()) else {
        return Ok(());
    };
    for event in events.iter_mut() {
        if payload_depth(&event.payload) > MAX_PAYLOAD_DEPTH {
            dismantle(std::mem::take(&mut event.payload));
        }
        if custom_depth(event) > MAX_PAYLOAD_DEPTH {
            dismantle(Value::Object(std::mem::take(&mut event.metadata.custom)));
        }
    }
    Err(error)
}

/// Deepest nesting [`probe_depth`] walks through a Rust value before it stops: serde_json's own
/// parsing limit, so what it walks was also small enough to drop normally.
pub(super) const PROBE_LIMIT: usize = 128;

/// The nesting depth the JSON form of `value` would have, found by serializing it into nothing.
///
/// Returns `Ok(depth)` up to [`PROBE_LIMIT`], `Err(PROBE_LIMIT + 1)` when it is deeper (the walk
/// stops there, so the recursion of `value`'s own `Serialize` stays bounded). A value whose
/// `Serialize` fails for another reason returns the depth seen so far: serializing it for real
/// reports that error.
pub(super) fn probe_depth<T: Serialize + ?Sized>(value: &T) -> std::result::Result<usize, usize> {
    let deepest = Cell::new(0);
    match value.serialize(Probe {
        level: 0,
        deepest: &deepest,
    }) {
        Err(ProbeError::TooDeep) => Err(PROBE_LIMIT + 1),
        Ok(()) | Err(ProbeError::Other) => Ok(deepest.get()),
    }
}

#[derive(Debug)]
enum ProbeError {
    TooDeep,
    Other,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeError::TooDeep => "nested too deeply",
            ProbeError::Other => "serialization failed",
        })
    }
}

impl std::error::Error for ProbeError {}

impl ser::Error for ProbeError {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        ProbeError::Other
    }
}

/// A serializer that writes nothing and tracks how deep the JSON form would nest, counting
/// levels as serde_json lays them out (an enum variant with data adds an object around it).
#[derive(Clone, Copy)]
struct Probe<'a> {
    /// Arrays and objects around the value being serialized.
    level: usize,
    deepest: &'a Cell<usize>,
}

impl<'a> Probe<'a> {
    /// Enters `levels` more arrays or objects.
    fn enter(self, levels: usize) -> std::result::Result<Probe<'a>, ProbeError> {
        let level = self.level + levels;
        if level > PROBE_LIMIT {
            return Err(ProbeError::TooDeep);
        }
        self.deepest.set(self.deepest.get().max(level));
        Ok(Probe { level, ..self })
    }
}

type Done = std::result::Result<(), ProbeError>;

impl<'a> ser::Serializer for Probe<'a> {
    type Ok = ();
    type Error = ProbeError;
    type SerializeSeq = Probe<'a>;
    type SerializeTuple = Probe<'a>;
    type SerializeTupleStruct = Probe<'a>;
    type SerializeTupleVariant = Probe<'a>;
    type SerializeMap = Probe<'a>;
    type SerializeStruct = Probe<'a>;
    type SerializeStructVariant = Probe<'a>;

    fn serialize_bool(self, _: bool) -> Done {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Done {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Done {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Done {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Done {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Done {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Done {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Done {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Done {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Done {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Done {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Done {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Done {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Done {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Done {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Done {
        // serde_json writes bytes as an array of numbers.
        self.enter(1).map(drop)
    }
    fn serialize_none(self) -> Done {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Done {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Done {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Done {
        value.serialize(self.enter(1)?)
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Self, ProbeError> {
        self.enter(1)
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self, ProbeError> {
        self.enter(1)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, ProbeError> {
        self.enter(1)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, ProbeError> {
        self.enter(2)
    }
    fn serialize_map(self, _: Option<usize>) -> std::result::Result<Self, ProbeError> {
        self.enter(1)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> std::result::Result<Self, ProbeError> {
        self.enter(1)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self, ProbeError> {
        self.enter(2)
    }
}

impl ser::SerializeSeq for Probe<'_> {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(*self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeTuple for Probe<'_> {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(*self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Probe<'_> {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(*self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Probe<'_> {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(*self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeMap for Probe<'_> {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Done {
        // JSON keys are strings; serde_json rejects any other key when serializing for real.
        key.serialize(KeyProbe)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Done {
        value.serialize(*self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeStruct for Probe<'_> {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, value: &T) -> Done {
        value.serialize(*self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Probe<'_> {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, value: &T) -> Done {
        value.serialize(*self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

/// Map keys: scalars pass, anything nested is left to serde_json to reject.
struct KeyProbe;

impl ser::Serializer for KeyProbe {
    type Ok = ();
    type Error = ProbeError;
    type SerializeSeq = Impossible<(), ProbeError>;
    type SerializeTuple = Impossible<(), ProbeError>;
    type SerializeTupleStruct = Impossible<(), ProbeError>;
    type SerializeTupleVariant = Impossible<(), ProbeError>;
    type SerializeMap = Impossible<(), ProbeError>;
    type SerializeStruct = Impossible<(), ProbeError>;
    type SerializeStructVariant = Impossible<(), ProbeError>;

    fn serialize_bool(self, _: bool) -> Done {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Done {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Done {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Done {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Done {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Done {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Done {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Done {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Done {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Done {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Done {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Done {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Done {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Done {
        Err(ProbeError::Other)
    }
    fn serialize_none(self) -> Done {
        Err(ProbeError::Other)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Done {
        Err(ProbeError::Other)
    }
    fn serialize_unit(self) -> Done {
        Err(ProbeError::Other)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        Err(ProbeError::Other)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Done {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Done {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Done {
        Err(ProbeError::Other)
    }
    fn serialize_seq(
        self,
        _: Option<usize>,
    ) -> std::result::Result<Self::SerializeSeq, ProbeError> {
        Err(ProbeError::Other)
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Self::SerializeTuple, ProbeError> {
        Err(ProbeError::Other)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleStruct, ProbeError> {
        Err(ProbeError::Other)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeTupleVariant, ProbeError> {
        Err(ProbeError::Other)
    }
    fn serialize_map(
        self,
        _: Option<usize>,
    ) -> std::result::Result<Self::SerializeMap, ProbeError> {
        Err(ProbeError::Other)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStruct, ProbeError> {
        Err(ProbeError::Other)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Self::SerializeStructVariant, ProbeError> {
        Err(ProbeError::Other)
    }
}

/// Where an envelope that serde_json could not parse nests deepest, found by scanning its bytes
/// (iteratively). Returns the type name (when it is a plain string), and the field
/// (`"payload"` or `"metadata"`) with its depth when one is over [`MAX_PAYLOAD_DEPTH`].
///
/// Depths are counted as [`payload_depth`] counts them: the payload's own nesting, and for the
/// metadata the nesting of its `custom` map.
pub(super) fn scan_envelope(bytes: &[u8]) -> Option<(String, &'static str, usize)> {
    let mut level = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut has_escape = false;
    let mut string_start = 0;
    // Top-level object state: whether the next string is a key, and the current key.
    let mut expect_key = false;
    let mut key: &[u8] = b"";
    let mut event_type = None;
    let (mut payload, mut metadata) = (0_usize, 0_usize);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
                has_escape = true;
            } else if b == b'"' {
                in_string = false;
                if level == 1 {
                    let text = &bytes[string_start..i];
                    if expect_key {
                        key = text;
                    } else if key == b"type" && !has_escape {
                        event_type = std::str::from_utf8(text).ok().map(str::to_owned);
                    }
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                has_escape = false;
                string_start = i + 1;
            }
            b'[' | b'{' => {
                level += 1;
                if level == 1 {
                    expect_key = b == b'{';
                } else if key == b"payload" {
                    payload = payload.max(level - 1);
                } else if key == b"metadata" {
                    metadata = metadata.max(level.saturating_sub(2));
                }
            }
            b']' | b'}' => level = level.saturating_sub(1),
            b',' if level == 1 => expect_key = true,
            b':' if level == 1 => expect_key = false,
            _ => {}
        }
    }
    let event_type = event_type.unwrap_or_else(|| "<envelope>".to_owned());
    if payload > MAX_PAYLOAD_DEPTH {
        Some((event_type, "payload", payload))
    } else if metadata > MAX_PAYLOAD_DEPTH {
        Some((event_type, "metadata", metadata))
    } else {
        None
    }
}
