//! [`RedisBus::dead_letters`]: what the dead-letter stream holds (Streams mode), for operators
//! (the `eventflow dead-letters list --bus redis` command).

use redis::Value;

use super::RedisBus;
use super::reply::{Entry, parse_read};
use super::streams::decode;
use crate::error::Result;
use crate::event::Event;

/// One entry of the dead-letter stream: an event a consumer group gave up on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RedisDeadLetter {
    /// The entry's id in the dead-letter stream.
    pub id: String,
    /// The original entry's id in the event stream.
    pub original_id: String,
    /// The event stream's key.
    pub stream: String,
    /// The consumer group that gave up.
    pub group: String,
    /// The consumer that dead-lettered it.
    pub consumer: String,
    /// Why (`max deliveries`, `decode: ...`).
    pub reason: String,
    /// Deliveries before it was given up on.
    pub deliveries: u64,
    /// The event type field of the original entry.
    pub event_type: String,
    /// The event, when the entry's `data` decodes (`None` for an undecodable one).
    pub event: Option<Event>,
}

fn field(entry: &Entry, name: &str) -> String {
    entry
        .field(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

impl RedisBus {
    /// Up to `limit` entries of the dead-letter stream ([`dead_letter_key`](Self::dead_letter_key)),
    /// oldest first. Empty when nothing was dead-lettered (or in pub/sub mode, which has none).
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) or [`Error::Timeout`](crate::Error::Timeout)
    /// when Redis cannot be reached.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<RedisDeadLetter>> {
        let key = self.dead_letter_key().to_owned();
        let mut conn = self.inner.conn.clone();
        let reply: Value = self
            .command("redis dead letters", {
                let key = key.clone();
                async move {
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit.max(1))
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        // An `XRANGE` reply is the entry list of one stream of an `XREADGROUP` reply.
        let entries = parse_read(Value::Array(vec![Value::Array(vec![
            Value::BulkString(key.into_bytes()),
            reply,
        ])]))
        .map_err(|e| crate::Error::backend(super::BACKEND, e))?;
        Ok(entries
            .into_iter()
            .take(limit)
            .map(|entry| RedisDeadLetter {
                original_id: field(&entry, "id"),
                stream: field(&entry, "stream"),
                group: field(&entry, "group"),
                consumer: field(&entry, "consumer"),
                reason: field(&entry, "reason"),
                deliveries: field(&entry, "deliveries").parse().unwrap_or(0),
                event_type: field(&entry, "type"),
                event: decode(&entry).ok(),
                id: entry.id,
            })
            .collect())
    }
}
