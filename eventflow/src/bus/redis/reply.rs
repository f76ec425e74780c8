//! Parsing the stream replies redis-rs hands back as raw [`Value`]s (`XREADGROUP`, `XPENDING`,
//! `XAUTOCLAIM`). Parsed by hand so that a malformed or trimmed entry is data to report, never a
//! reason for the consumer to stop.

use std::collections::HashMap;

use redis::{RedisError, RedisResult, Value};

/// One stream entry as read: its id and fields (`None` when the entry was trimmed away while
/// pending).
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Entry {
    pub(super) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

pub(super) fn protocol_error(message: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, message))
}

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

pub(super) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// Parses an `XREADGROUP` reply for one stream (RESP2 array or RESP3 map; `Nil` on timeout).
pub(super) fn parse_read(reply: Value) -> RedisResult<Vec<Entry>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        _ => return Err(protocol_error("XREADGROUP reply is not an array")),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(entries) = stream else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else {
                return Err(protocol_error("stream entry is not an array"));
            };
            let mut parts = parts.into_iter();
            let id = parts
                .next()
                .as_ref()
                .and_then(text)
                .ok_or_else(|| protocol_error("stream entry without id"))?;
            let fields = match parts.next() {
                Some(Value::Array(flat)) => {
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        if let (Some(k), Some(v)) = (bytes(k), bytes(v)) {
                            fields.push((k, v));
                        }
                    }
                    Some(fields)
                }
                Some(Value::Map(pairs)) => Some(
                    pairs
                        .into_iter()
                        .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                        .collect(),
                ),
                _ => None,
            };
            out.push(Entry { id, fields });
        }
    }
    Ok(out)
}

/// Parses an extended `XPENDING` reply into entry id -> delivery count.
pub(super) fn parse_pending_counts(reply: &Value) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    if let Value::Array(rows) = reply {
        for row in rows {
            if let Value::Array(cols) = row
                && let (Some(id), Some(Value::Int(n))) = (cols.first().and_then(text), cols.get(3))
            {
                counts.insert(id, u64::try_from(*n).unwrap_or(1));
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_read_replies() {
        assert!(parse_read(Value::Nil).unwrap().is_empty());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("type"), bulk("a.b")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].field("type"), Some(&b"a.b"[..]));
        assert!(entries[1].fields.is_none());
    }

    #[test]
    fn parses_pending_counts() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            bulk("c"),
            Value::Int(10),
            Value::Int(3),
        ])]);
        assert_eq!(parse_pending_counts(&reply).get("1-0"), Some(&3));
    }
}
