//! `VariantSerializer`: turns an externally tagged enum value (serde's default representation)
//! into the JSON content of its variant, dropping the tag the envelope's `event_type` already
//! carries.

use serde::ser::{self, Impossible, Serialize};
use serde_json::{Map, Value};

/// Serializes an externally tagged enum value as the content of its variant.
pub(super) struct VariantSerializer;

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
pub(super) struct TupleVariant(Vec<Value>);

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
pub(super) struct StructVariant(Map<String, Value>);

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
