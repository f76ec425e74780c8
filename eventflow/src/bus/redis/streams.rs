//! Streams mode: one consumer-group reader per subscription (see the module docs of
//! [`super`] for the protocol).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, RedisResult, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::Conn;
use super::connect::{Shared, is_connection_error};
use super::reply::{Entry, parse_pending_counts, parse_read, protocol_error, text};
use super::subscribe::{backoff, cancelled, lease_key, renew_lease};
use super::trim::{StreamId, unread_deleted};
use crate::bus::{BusError, BusErrorKind, ErrorSender, Handler, PatternSet};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::delivery;

/// Rounds of `XAUTOCLAIM` per claim pass (each takes up to `batch_size` entries); the rest wait
/// for the next pass so new entries are not starved.
const CLAIM_ROUNDS: usize = 10;

pub(super) struct Consumer {
    shared: Arc<Shared>,
    conn: Conn,
    group: String,
    /// An unnamed subscription's group: created at `$` whatever the configuration, shared by
    /// nobody, destroyed when the subscription stops.
    ephemeral: bool,
    patterns: PatternSet,
    handler: Arc<dyn Handler>,
    errors: ErrorSender,
    cancel: watch::Receiver<bool>,
    /// When to re-read our own pending entries (after a failure, a claim or a reconnect).
    pending_due: Option<Instant>,
    next_claim: Instant,
    /// The greatest deleted-before-read id already reported as a loss.
    loss_reported: Option<StreamId>,
}

impl Consumer {
    /// Opens the dedicated connection and creates the group (at `$`, or for a named group `0`
    /// when configured), so that entries added after this returns are delivered.
    pub(super) async fn start(
        shared: Arc<Shared>,
        group: String,
        ephemeral: bool,
        patterns: PatternSet,
        handler: Arc<dyn Handler>,
        errors: ErrorSender,
        cancel: watch::Receiver<bool>,
    ) -> Result<Self> {
        let mut conn = shared.dedicated_connection().await?;
        if ephemeral {
            // Before the group exists, so that no trim takes it for a dead process's group.
            renew_lease(&mut conn, &shared.key_base, &group)
                .await
                .map_err(|e| Error::backend(super::BACKEND, e))?;
        }
        let start = if shared.config.start_from_beginning && !ephemeral {
            "0"
        } else {
            "$"
        };
        create_group(&mut conn, &shared.stream_key, &group, start)
            .await
            .map_err(|e| Error::backend(super::BACKEND, e))?;
        // An ephemeral group has one subscription, so no other patterns to guard against.
        if !ephemeral {
            claim_filter(&mut conn, &shared, &group, patterns.label()).await?;
        }
        Ok(Consumer {
            shared,
            conn,
            group,
            ephemeral,
            patterns,
            handler,
            errors,
            cancel,
            // Resume our own pending entries first (a restart under the same name).
            pending_due: Some(Instant::now()),
            // Claim at once: a dead consumer's entries may already be idle long enough (the
            // first claim pass also checks for entries deleted before the group read them).
            next_claim: Instant::now(),
            loss_reported: None,
        })
    }

    /// Reports entries deleted from the stream before this group read them (see
    /// [`super::trim`]), once per range.
    async fn check_loss(&mut self) -> RedisResult<()> {
        let found = unread_deleted(&mut self.conn, &self.shared.stream_key, &self.group).await?;
        if let Some(loss) = found
            && self.loss_reported.is_none_or(|r| r < loss.upto)
        {
            self.loss_reported = Some(loss.upto);
            let count = loss
                .count
                .map_or_else(|| "entries".to_owned(), |n| format!("{n} entries"));
            self.report(
                BusError::new(
                    BusErrorKind::Dropped,
                    format!(
                        "{count} of {} after {} up to {} were deleted before consumer group {} \
                         read them",
                        self.shared.stream_key, loss.after, loss.upto, self.group
                    ),
                )
                .for_pattern(self.patterns.label()),
            );
        }
        Ok(())
    }

    fn claim_interval(&self) -> Duration {
        (self.shared.config.claim_idle / 2).max(Duration::from_millis(50))
    }

    pub(super) async fn run(mut self) {
        let mut lost = false;
        let mut attempt = 0u32;
        while !cancelled(&self.cancel) {
            match self.step().await {
                Ok(()) => {
                    if lost {
                        lost = false;
                        attempt = 0;
                        self.report(BusError::new(
                            BusErrorKind::Reconnected,
                            format!("stream consumer reconnected to {}", self.shared.target),
                        ));
                    }
                }
                Err(e) if has_code(&e, "NOGROUP") => {
                    // The stream or group vanished (server restarted without persistence, key
                    // deleted): recreate it at 0 so nothing added since is skipped.
                    tracing::info!(group = %self.group, "redis consumer group missing; recreating");
                    if let Err(e) =
                        create_group(&mut self.conn, &self.shared.stream_key, &self.group, "0")
                            .await
                    {
                        self.report(BusError::new(
                            BusErrorKind::Other,
                            format!("cannot recreate consumer group {}: {e}", self.group),
                        ));
                        self.pause(backoff(attempt)).await;
                        attempt += 1;
                    }
                }
                Err(e) if is_connection_error(&e) => {
                    if !lost {
                        lost = true;
                        self.report(BusError::new(
                            BusErrorKind::Disconnected,
                            format!(
                                "stream consumer lost its connection to {}: {e}",
                                self.shared.target
                            ),
                        ));
                    }
                    self.pause(backoff(attempt)).await;
                    attempt += 1;
                    if let Ok(conn) = self.shared.dedicated_connection().await {
                        self.conn = conn;
                    }
                    // A read may have been delivered to us without reaching us.
                    self.pending_due = Some(Instant::now());
                }
                Err(e) => {
                    self.report(BusError::new(
                        BusErrorKind::Other,
                        format!("stream consumer error: {e}"),
                    ));
                    self.pause(backoff(attempt)).await;
                    attempt += 1;
                    self.pending_due = Some(Instant::now());
                }
            }
        }
        if self.ephemeral {
            // Nobody else reads it and nobody will resume it: leaving it would only hold back
            // trimming. Its pending entries go with it (at least once while subscribed).
            let destroyed = destroy_ephemeral(
                &mut self.conn,
                &self.shared.stream_key,
                &self.shared.key_base,
                &self.group,
            )
            .await;
            if let Err(e) = destroyed {
                tracing::debug!(group = %self.group, "redis: cannot destroy ephemeral consumer group: {e}");
            }
        }
    }

    async fn pause(&mut self, d: Duration) {
        tokio::select! {
            _ = self.cancel.changed() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    /// One round: pending entries when due, a claim pass when due, then one blocking read.
    async fn step(&mut self) -> RedisResult<()> {
        let now = Instant::now();
        if self.pending_due.is_some_and(|due| due <= now) {
            self.pending_due = None;
            self.pending_pass().await?;
        }
        if self.next_claim <= now {
            self.next_claim = now + self.claim_interval();
            self.check_loss().await?;
            if self.claim_pass().await? > 0 {
                self.pending_pass().await?;
            }
        }
        if cancelled(&self.cancel) {
            return Ok(());
        }
        // Block no longer than the next scheduled pending or claim pass.
        let mut wake = self.next_claim;
        if let Some(due) = self.pending_due {
            wake = wake.min(due);
        }
        let block = wake
            .saturating_duration_since(Instant::now())
            .min(self.shared.config.block)
            .max(Duration::from_millis(1));
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.shared.config.consumer_name)
            .arg("COUNT")
            .arg(self.shared.config.batch_size)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.shared.stream_key)
            .arg(">");
        let reply: Value = tokio::select! {
            // Stop waiting at once on unsubscribe; anything the server hands us meanwhile stays
            // pending and is recovered by a restart or a claim.
            _ = self.cancel.changed() => return Ok(()),
            reply = cmd.query_async(&mut self.conn) => reply?,
        };
        let entries = parse_read(reply)?;
        if !entries.is_empty() {
            self.process(entries, &HashMap::new()).await?;
        }
        Ok(())
    }

    /// Re-reads our own pending entries (`XREADGROUP ... <cursor>`), with their delivery counts
    /// (`XPENDING`) in the same round trip, and processes them.
    async fn pending_pass(&mut self) -> RedisResult<()> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let mut cursor = "0".to_owned();
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&config.consumer_name)
                .arg("COUNT")
                .arg(config.batch_size)
                .arg("STREAMS")
                .arg(&self.shared.stream_key)
                .arg(&cursor);
            let start = if cursor == "0" {
                "-".to_owned()
            } else {
                format!("({cursor}")
            };
            pipe.cmd("XPENDING")
                .arg(&self.shared.stream_key)
                .arg(&self.group)
                .arg(start)
                .arg("+")
                .arg(config.batch_size)
                .arg(&config.consumer_name);
            let (read, pending): (Value, Value) = pipe.query_async(&mut self.conn).await?;
            let entries = parse_read(read)?;
            let Some(last) = entries.last() else {
                return Ok(());
            };
            cursor = last.id.clone();
            let counts = parse_pending_counts(&pending);
            self.process(entries, &counts).await?;
            if cancelled(&self.cancel) {
                return Ok(());
            }
        }
    }

    /// Takes over entries idle for longer than `claim_idle` (`XAUTOCLAIM ... JUSTID`, which does
    /// not count as a delivery; the pending pass that follows does). Returns how many.
    async fn claim_pass(&mut self) -> RedisResult<usize> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let mut cursor = "0-0".to_owned();
        let mut claimed = 0;
        for _ in 0..CLAIM_ROUNDS {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.shared.stream_key)
                .arg(&self.group)
                .arg(&config.consumer_name)
                .arg(config.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(config.batch_size)
                .arg("JUSTID")
                .query_async(&mut self.conn)
                .await?;
            let Value::Array(parts) = reply else {
                return Err(protocol_error("XAUTOCLAIM reply is not an array"));
            };
            let mut parts = parts.into_iter();
            let next = parts.next().and_then(|v| text(&v)).unwrap_or_default();
            if let Some(Value::Array(ids)) = parts.next() {
                claimed += ids.len();
            }
            if next.is_empty() || next == "0-0" {
                break;
            }
            cursor = next;
        }
        if claimed > 0 {
            tracing::debug!(group = %self.group, claimed, "redis consumer claimed idle entries");
        }
        Ok(claimed)
    }

    /// Runs the handler on each entry in order, dead-letters what must be, and acks in one
    /// `XACK` what succeeded or was filtered out. `deliveries` holds the delivery counts of
    /// re-read entries (absent: first delivery).
    async fn process(
        &mut self,
        entries: Vec<Entry>,
        deliveries: &HashMap<String, u64>,
    ) -> RedisResult<()> {
        let max = u64::from(self.shared.config.max_deliveries);
        let mut acks: Vec<String> = Vec::with_capacity(entries.len());
        let mut failed = false;
        for entry in entries {
            if entry.fields.is_none() {
                // Trimmed by MAXLEN while pending: nothing left to deliver.
                self.report(BusError::new(
                    BusErrorKind::Dropped,
                    format!(
                        "stream entry {} was trimmed before it was processed",
                        entry.id
                    ),
                ));
                acks.push(entry.id);
                continue;
            }
            let count = deliveries.get(&entry.id).copied().unwrap_or(1);
            let event_type = entry
                .field("type")
                .and_then(|t| std::str::from_utf8(t).ok());
            if let Some(t) = event_type
                && !self.patterns.matches(t)
            {
                acks.push(entry.id);
                continue;
            }
            let event = match decode(&entry) {
                Ok(event) => event,
                Err(reason) => {
                    let mut error = BusError::new(
                        BusErrorKind::Decode,
                        format!("stream entry {} does not decode: {reason}", entry.id),
                    )
                    .for_pattern(self.patterns.label());
                    error.event_type = event_type.map(str::to_owned);
                    self.report(error);
                    self.dead_letter(&entry, &format!("decode: {reason}"), count)
                        .await?;
                    continue;
                }
            };
            if count > max {
                // Delivered too often already (e.g. by consumers that crashed on it).
                self.give_up(&entry, &event, count).await?;
                continue;
            }
            if cancelled(&self.cancel) {
                // Unsubscribed: leave the rest pending, ack what was handled.
                break;
            }
            let event = Arc::new(event);
            let outcome = delivery::run(&*self.handler, event.clone(), self.patterns.label()).await;
            match outcome.to_bus_error(&event, self.patterns.label()) {
                None => acks.push(entry.id),
                Some(error) => {
                    let message = error.message.clone();
                    self.report(error);
                    if count >= max {
                        self.give_up(&entry, &event, count).await?;
                    } else {
                        tracing::debug!(id = %event.id, entry = %entry.id, deliveries = count, "handler failed; entry stays pending: {message}");
                        failed = true;
                    }
                }
            }
        }
        if !acks.is_empty() {
            redis::cmd("XACK")
                .arg(&self.shared.stream_key)
                .arg(&self.group)
                .arg(&acks)
                .query_async::<()>(&mut self.conn)
                .await?;
        }
        if failed {
            let due = Instant::now() + self.shared.config.retry_delay;
            self.pending_due = Some(self.pending_due.map_or(due, |d| d.min(due)));
        }
        Ok(())
    }

    async fn give_up(&mut self, entry: &Entry, event: &Event, count: u64) -> RedisResult<()> {
        self.report(
            BusError::new(
                BusErrorKind::DeadLettered,
                format!(
                    "stream entry {} failed {count} deliveries; moved to {}",
                    entry.id, self.shared.dead_letter_key
                ),
            )
            .for_event(event)
            .for_pattern(self.patterns.label()),
        );
        self.dead_letter(entry, "max deliveries", count).await
    }

    /// Copies `entry` to the dead-letter stream and acks it, in one round trip.
    async fn dead_letter(&mut self, entry: &Entry, reason: &str, count: u64) -> RedisResult<()> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let mut pipe = redis::pipe();
        let xadd = pipe.cmd("XADD").arg(&self.shared.dead_letter_key);
        if config.stream_max_len > 0 {
            xadd.arg("MAXLEN").arg("~").arg(config.stream_max_len);
        }
        xadd.arg("*")
            .arg("id")
            .arg(&entry.id)
            .arg("stream")
            .arg(&self.shared.stream_key)
            .arg("group")
            .arg(&self.group)
            .arg("consumer")
            .arg(&config.consumer_name)
            .arg("reason")
            .arg(reason)
            .arg("deliveries")
            .arg(count);
        for name in ["type", "data"] {
            if let Some(value) = entry.field(name) {
                xadd.arg(name).arg(value);
            }
        }
        pipe.ignore();
        pipe.cmd("XACK")
            .arg(&self.shared.stream_key)
            .arg(&self.group)
            .arg(&entry.id)
            .ignore();
        pipe.query_async::<()>(&mut self.conn).await
    }

    fn report(&self, error: BusError) {
        let error = if error.pattern.is_none() {
            error.for_pattern(self.patterns.label())
        } else {
            error
        };
        self.errors.report(error);
    }
}

/// Records the patterns the group `group` filters on in the hash `P:filters` (the first
/// subscription of a group sets them), and refuses a subscription with other patterns: it
/// would acknowledge, unhandled, the entries the group's other subscribers are there for.
async fn claim_filter(conn: &mut Conn, shared: &Shared, group: &str, patterns: &str) -> Result<()> {
    let key = format!("{}:filters", shared.key_base);
    let backend = |e: RedisError| Error::backend(super::BACKEND, e);
    redis::cmd("HSETNX")
        .arg(&key)
        .arg(group)
        .arg(patterns)
        .query_async::<()>(conn)
        .await
        .map_err(backend)?;
    let bound: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg(group)
        .query_async(conn)
        .await
        .map_err(backend)?;
    match bound {
        Some(bound) if bound != patterns => Err(Error::InvalidArgument(format!(
            "redis: consumer group {group:?} filters on [{bound}], not [{patterns}]: its name \
             belongs to other patterns (use another name, or delete the group and its field \
             in {key})"
        ))),
        _ => Ok(()),
    }
}

async fn create_group(conn: &mut Conn, key: &str, group: &str, start: &str) -> RedisResult<()> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await;
    match created {
        // An existing group keeps its position: a restarted service resumes where it stopped.
        Err(e) if has_code(&e, "BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// `XGROUP DESTROY`: harmless when the group (or the stream) is already gone.
pub(super) async fn destroy_group(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    group: &str,
) -> RedisResult<()> {
    let destroyed = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(key)
        .arg(group)
        .query_async::<()>(conn)
        .await;
    match destroyed {
        // `ERR The XGROUP subcommand requires the key to exist`: no stream, so no group.
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            Ok(())
        }
        other => other,
    }
}

/// Destroys an unnamed subscription's group, then its lease.
pub(super) async fn destroy_ephemeral(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    key_prefix: &str,
    group: &str,
) -> RedisResult<()> {
    destroy_group(conn, key, group).await?;
    redis::cmd("DEL")
        .arg(lease_key(key_prefix, group))
        .query_async(conn)
        .await
}

pub(super) fn decode(entry: &Entry) -> std::result::Result<Event, String> {
    let Some(event_type) = entry.field("type") else {
        return Err("no `type` field".to_owned());
    };
    let Some(data) = entry.field("data") else {
        return Err("no `data` field".to_owned());
    };
    let event = Event::from_json(data).map_err(|e| e.to_string())?;
    if event.event_type.as_bytes() != event_type {
        return Err(format!(
            "`type` field {:?} differs from the envelope's {:?}",
            String::from_utf8_lossy(event_type),
            event.event_type
        ));
    }
    Ok(event)
}

/// Whether `e` is (or, for a pipeline, contains) a server error with `code`.
fn has_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code)
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, err)| err.code() == code))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_entries_say_why() {
        let entry = |fields: &[(&str, &str)]| Entry {
            id: "1-0".into(),
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        };
        assert!(
            decode(&entry(&[("data", "{}")]))
                .unwrap_err()
                .contains("type")
        );
        assert!(
            decode(&entry(&[("type", "a.b")]))
                .unwrap_err()
                .contains("data")
        );
        assert!(decode(&entry(&[("type", "a.b"), ("data", "nope")])).is_err());
        let event = Event::new("a.b", serde_json::json!({})).unwrap();
        let json = serde_json::to_string(&event).unwrap();
        assert!(decode(&entry(&[("type", "a.c"), ("data", &json)])).is_err());
        assert_eq!(
            decode(&entry(&[("type", "a.b"), ("data", &json)])).unwrap(),
            event
        );
    }
}
