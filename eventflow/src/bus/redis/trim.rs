//! Streams mode: trimming only what every consumer group has read, and noticing entries that
//! were removed before a group read them.
//!
//! The stream is never trimmed by length (`XADD MAXLEN`): that removes entries an offline or
//! slow group has not read, silently. Instead [`RedisBus::trim_stream`] (run every
//! [`RedisConfig::stream_max_len`](super::RedisConfig::stream_max_len) publishes) trims with
//! `XTRIM MINID <id>`, where `<id>` is the smallest of, over every group, its oldest pending
//! entry (delivered, not acked) or, with nothing pending, its last delivered entry. `MINID`
//! never removes an entry at or above that id, so nothing unread or unacked goes. A stream
//! without any group is trimmed to its newest `stream_max_len` entries (`MAXLEN`): there is
//! no reader to protect. The groups are read, then the stream trimmed, in two commands: a
//! group created in between at `0` (reading the retained history) may find that history
//! shorter, never a group's unread entries.
//!
//! An unnamed subscription's group (`ephemeral:<uuid>`) is destroyed when the subscription
//! stops; one left by a process that died would hold trimming back for ever, so each such group
//! has a lease key, `<key_prefix>:lease:<group>`, set before the group is created and renewed
//! every 20 s (expiring after 60 s) by a task of the subscription, independent of its handler.
//! A trim destroys every ephemeral group whose lease is gone before it computes the minimum.
//!
//! Entries can still disappear by other means (a manual `XTRIM`/`XDEL`, a server that lost its
//! data). Each consumer checks, when it starts and at every claim pass, whether entries after
//! its group's last delivered id are gone ([`unread_deleted`]: `XINFO STREAM` and `XINFO
//! GROUPS`), and reports [`BusErrorKind::Dropped`](crate::bus::BusErrorKind::Dropped) once for
//! that range. The check runs before the group reads new entries, so an offline group that
//! comes back always notices; a live group that reads past a gap between two checks may not.

use std::fmt;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use super::RedisBus;
use super::reply::text;
use super::streams::destroy_group;
use super::subscribe::{EPHEMERAL_GROUP_PREFIX, lease_key};
use crate::error::Result;

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    pub(super) fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    fn is_zero(self) -> bool {
        self.ms == 0 && self.seq == 0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: Value) -> Vec<(String, Value)> {
    let raw: Vec<(Value, Value)> = match v {
        Value::Array(flat) => {
            let mut it = flat.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        _ => Vec::new(),
    };
    raw.into_iter()
        .filter_map(|(k, v)| Some((text(&k)?, v)))
        .collect()
}

fn field<'a>(pairs: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn id_field(pairs: &[(String, Value)], name: &str) -> Option<StreamId> {
    field(pairs, name)
        .and_then(text)
        .and_then(|s| StreamId::parse(&s))
}

/// One group as `XINFO GROUPS` describes it.
struct GroupInfo {
    name: String,
    pending: u64,
    last_delivered: StreamId,
    /// `entries-read`, when Redis knows it.
    entries_read: Option<u64>,
}

/// `XINFO GROUPS key`; empty when the stream does not exist.
async fn groups(conn: &mut impl ConnectionLike, key: &str) -> RedisResult<Vec<GroupInfo>> {
    let reply: Value = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        // `ERR no such key`.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let Value::Array(list) = reply else {
        return Ok(Vec::new());
    };
    Ok(list
        .into_iter()
        .filter_map(|g| {
            let p = pairs(g);
            Some(GroupInfo {
                name: field(&p, "name").and_then(text)?,
                pending: match field(&p, "pending") {
                    Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                },
                last_delivered: id_field(&p, "last-delivered-id")?,
                entries_read: match field(&p, "entries-read") {
                    Some(Value::Int(n)) => u64::try_from(*n).ok(),
                    _ => None,
                },
            })
        })
        .collect())
}

/// The smallest id every group still needs (see the module docs); `None` when there is no
/// group, so no reader to protect. An unnamed subscription's group whose lease is gone (its
/// process died without destroying it) is destroyed instead: nobody will read it again.
async fn safe_min_id(
    conn: &mut impl ConnectionLike,
    key: &str,
    key_prefix: &str,
) -> RedisResult<Option<StreamId>> {
    let groups = groups(conn, key).await?;
    let mut min: Option<StreamId> = None;
    for group in &groups {
        if group.name.starts_with(EPHEMERAL_GROUP_PREFIX) {
            let live: bool = redis::cmd("EXISTS")
                .arg(lease_key(key_prefix, &group.name))
                .query_async(conn)
                .await?;
            if !live {
                tracing::debug!(group = %group.name, "redis: destroying an abandoned ephemeral group");
                destroy_group(conn, key, &group.name).await?;
                continue;
            }
        }
        let mut needed = group.last_delivered;
        if group.pending > 0 {
            // `XPENDING key group`: [count, smallest id, greatest id, consumers].
            let summary: Value = redis::cmd("XPENDING")
                .arg(key)
                .arg(&group.name)
                .query_async(conn)
                .await?;
            if let Value::Array(items) = summary
                && let Some(oldest) = items
                    .get(1)
                    .and_then(text)
                    .and_then(|s| StreamId::parse(&s))
            {
                needed = needed.min(oldest);
            }
        }
        min = Some(min.map_or(needed, |m| m.min(needed)));
    }
    Ok(min)
}

/// Entries removed from the stream before a group read them, as found by [`unread_deleted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loss {
    /// The group's last delivered id: the lost entries come after it.
    pub(super) after: StreamId,
    /// The greatest id that may be lost.
    pub(super) upto: StreamId,
    /// How many, when Redis can tell.
    pub(super) count: Option<u64>,
}

/// Entries removed from the stream that group `group` had not read yet, if any:
/// - a deleted entry (`XDEL`, `max-deleted-entry-id`) above the group's last delivered id;
/// - or the group's last delivered entry is gone and the stream's first entry (or, when the
///   stream is empty, its last generated id) is above it: the entries in between were trimmed.
///   Our own trimming always keeps the slowest group's last delivered entry, so this only
///   happens when something else trimmed. When the group's `entries-read` counter is known the
///   count is exact, and zero means nothing was lost.
///
/// A group at `0-0` that never read anything counts every entry ever added and gone as lost
/// (also one created with [`start_from_beginning`](super::RedisConfig::start_from_beginning)
/// on a stream whose history was trimmed before it existed).
pub(super) async fn unread_deleted(
    conn: &mut impl ConnectionLike,
    key: &str,
    group: &str,
) -> RedisResult<Option<Loss>> {
    let reply: Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(conn)
        .await
    {
        Ok(v) => v,
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let stream = pairs(reply);
    let number = |p: &[(String, Value)], name: &str| match field(p, name) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let length = number(&stream, "length").unwrap_or(0);
    let added = number(&stream, "entries-added");
    let last_generated = id_field(&stream, "last-generated-id");
    let max_deleted = id_field(&stream, "max-deleted-entry-id");
    let first = match field(&stream, "first-entry") {
        Some(Value::Array(entry)) => entry
            .first()
            .and_then(text)
            .and_then(|s| StreamId::parse(&s)),
        _ => None,
    };
    let Some(ours) = groups(conn, key)
        .await?
        .into_iter()
        .find(|g| g.name == group)
    else {
        return Ok(None);
    };
    let after = ours.last_delivered;
    if after.is_zero() {
        // The group never read anything (created on an empty stream, or at `0`): every entry
        // ever added and no longer there was lost to it.
        let gone = added.unwrap_or(0).saturating_sub(length);
        return Ok((gone > 0).then(|| Loss {
            after,
            upto: first.or(last_generated).unwrap_or(after),
            count: Some(gone),
        }));
    }
    if let Some(deleted) = max_deleted
        && deleted > after
    {
        return Ok(Some(Loss {
            after,
            upto: deleted,
            count: None,
        }));
    }
    // Everything still in the stream is after the group's position (or nothing is left).
    let gap_upto = match first {
        Some(first) if first > after => first,
        Some(_) => return Ok(None),
        None => match last_generated {
            Some(last) if last > after => last,
            _ => return Ok(None),
        },
    };
    let count = match (added, ours.entries_read) {
        // Every entry added after the group's position, minus those still there.
        (Some(added), Some(read)) => Some(added.saturating_sub(read).saturating_sub(length)),
        _ => None,
    };
    if count == Some(0) {
        return Ok(None);
    }
    Ok(Some(Loss {
        after,
        upto: gap_upto,
        count,
    }))
}

impl RedisBus {
    /// Streams mode: removes the entries every consumer group has read and acknowledged
    /// (`XTRIM MINID` below the slowest group's oldest pending or last delivered entry) and
    /// returns how many went. First it destroys the groups of unnamed subscriptions whose
    /// process died (their lease expired), which would otherwise hold trimming back for ever. Entries some group has not read, or not acked, are never removed.
    /// Without any group (no reader could miss anything) it keeps the newest
    /// [`stream_max_len`](super::RedisConfig::stream_max_len) entries. Run automatically every
    /// [`RedisConfig::stream_max_len`](super::RedisConfig::stream_max_len) publishes of this
    /// bus; call it yourself to trim on your own schedule.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) or [`Error::Timeout`](crate::Error::Timeout)
    /// when Redis does not answer.
    pub async fn trim_stream(&self) -> Result<u64> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.shared.stream_key.clone();
        let max_len = self.inner.shared.config.stream_max_len;
        let key_prefix = self.inner.shared.key_base.clone();
        self.command("redis xtrim", async move {
            let mut cmd = redis::cmd("XTRIM");
            cmd.arg(&key);
            match safe_min_id(&mut conn, &key, &key_prefix).await? {
                // Exact, not `~`: an approximate trim removes at most 10 nodes' worth per call.
                Some(min) => cmd.arg("MINID").arg(min.to_string()),
                // No group, so no reader that could miss anything: keep the newest entries.
                None if max_len > 0 => cmd.arg("MAXLEN").arg(max_len),
                None => return Ok(0),
            };
            cmd.query_async::<u64>(&mut conn).await
        })
        .await
    }

    /// Counts published entries and trims when another `stream_max_len` went by. A failed
    /// trim is only logged: the publish itself succeeded, and the next round trims.
    pub(super) async fn trim_after_publish(&self, published: usize) {
        let every = self.inner.shared.config.stream_max_len as u64;
        if every == 0 || !self.inner.shared.config.use_streams {
            return;
        }
        let before = self
            .inner
            .published
            .fetch_add(published as u64, std::sync::atomic::Ordering::Relaxed);
        if before / every == (before + published as u64) / every {
            return;
        }
        match self.trim_stream().await {
            Ok(n) => tracing::debug!(trimmed = n, "redis stream trimmed below the slowest group"),
            Err(e) => tracing::warn!(error = %e, "redis stream trim failed"),
        }
    }
}
