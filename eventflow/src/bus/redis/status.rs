//! Health: [`RedisBus::ping`], [`RedisBus::is_connected`], [`RedisBus::health`] (with
//! [`RedisHealth`]), and [`GroupStatus`], the progress of a consumer group.

use std::sync::atomic::Ordering;

use super::RedisBus;
use super::conn::Conn;
use crate::error::Result;

impl RedisBus {
    /// Sends `PING` and waits for the answer.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) when the server does not answer,
    /// [`Error::Timeout`](crate::Error::Timeout) after `connect_timeout + response_timeout`.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.inner.conn.clone();
        self.command("redis ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(drop)
    }

    /// Whether the last command on the publishing connection reached the server. Subscriptions
    /// track their own connections and report changes on [`errors`](crate::bus::EventBus::errors).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// The bus's state for health checks: whether the publishing connection is up, which
    /// server it publishes to ([`server`](RedisBus::server)), and how many failovers moved it
    /// since connect. Reads local state only (no command is sent).
    pub fn health(&self) -> RedisHealth {
        RedisHealth {
            connected: self.is_connected(),
            server: self.server(),
            failovers: match &self.inner.conn {
                Conn::Sentinel(conn) => conn.failovers(),
                _ => 0,
            },
        }
    }

    /// Progress of consumer group `group` on this bus's stream (Streams mode), for health
    /// checks: consumers, entries pending (delivered, not acked) and lag (entries not yet
    /// delivered). `None` when the stream or the group does not exist.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) or [`Error::Timeout`](crate::Error::Timeout)
    /// when Redis does not answer.
    pub async fn group_status(&self, group: &str) -> Result<Option<GroupStatus>> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.shared.stream_key.clone();
        let reply = self
            .command("redis xinfo", async move {
                match redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async::<redis::Value>(&mut conn)
                    .await
                {
                    // `ERR no such key`: no stream yet, so no group either (a key of another
                    // type answers WRONGTYPE, which stays an error).
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                    {
                        Ok(redis::Value::Nil)
                    }
                    other => other,
                }
            })
            .await?;
        Ok(GroupStatus::find(reply, group))
    }
}

/// The state of a [`RedisBus`], from [`RedisBus::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisHealth {
    /// Whether the last command on the publishing connection reached the server
    /// ([`RedisBus::is_connected`]).
    pub connected: bool,
    /// The server the bus publishes to ([`RedisBus::server`]): the address it connected to
    /// (one server), the cluster's seeds, or the primary the sentinels named last.
    pub server: String,
    /// Sentinel: how many times the publishing connection found the primary moved since
    /// connect (each also reported on the error stream as
    /// [`Failover`](crate::bus::BusErrorKind::Failover)). Always 0 for one server, and for a
    /// cluster, whose client follows the slot map by itself.
    pub failovers: u64,
}

/// Progress of one consumer group (see [`RedisBus::group_status`](super::RedisBus::group_status)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStatus {
    /// The group's name.
    pub group: String,
    /// Consumers known to the group.
    pub consumers: u64,
    /// Entries delivered to a consumer and not acked yet.
    pub pending: u64,
    /// Entries in the stream not yet delivered to the group; `None` when Redis cannot tell
    /// (after trimming or deletions it may not know).
    pub lag: Option<u64>,
    /// The id of the last entry delivered to the group.
    pub last_delivered_id: String,
}

impl GroupStatus {
    /// Picks `group` out of an `XINFO GROUPS` reply (RESP2 flat arrays or RESP3 maps).
    pub(super) fn find(reply: redis::Value, group: &str) -> Option<Self> {
        use redis::Value;
        let redis::Value::Array(groups) = reply else {
            return None;
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        groups.into_iter().find_map(|g| {
            let pairs: Vec<(Value, Value)> = match g {
                Value::Array(flat) => {
                    let mut it = flat.into_iter();
                    std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
                }
                Value::Map(pairs) => pairs,
                _ => return None,
            };
            let field = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| text(k).as_deref() == Some(name))
                    .map(|(_, v)| v)
            };
            let number = |name: &str| match field(name) {
                Some(Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            let name = field("name").and_then(text)?;
            (name == group).then(|| GroupStatus {
                consumers: number("consumers").unwrap_or(0),
                pending: number("pending").unwrap_or(0),
                lag: number("lag"),
                last_delivered_id: field("last-delivered-id")
                    .and_then(text)
                    .unwrap_or_default(),
                group: name,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_status_is_read_from_xinfo_groups() {
        use redis::Value;
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g:a.*"),
            bulk("consumers"),
            Value::Int(2),
            bulk("pending"),
            Value::Int(5),
            bulk("last-delivered-id"),
            bulk("7-0"),
            bulk("entries-read"),
            Value::Int(7),
            bulk("lag"),
            Value::Nil,
        ])]);
        let status = GroupStatus::find(reply.clone(), "g:a.*").unwrap();
        assert_eq!(status.consumers, 2);
        assert_eq!(status.pending, 5);
        assert_eq!(status.lag, None);
        assert_eq!(status.last_delivered_id, "7-0");
        assert!(GroupStatus::find(reply, "other").is_none());
        assert!(GroupStatus::find(Value::Nil, "g").is_none());
    }
}
