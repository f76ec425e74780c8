//! Pub/sub mode: one connection per subscription, `PSUBSCRIBE` to a coarse glob, exact filter
//! with [`Pattern::matches`], reconnect with backoff and report the gap.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::watch;

use super::connect::{Shared, connect_error};
use super::subscribe::{backoff, cancelled};
use crate::bus::buffer::{Buffer, DropTally, dropped_message, sleep_until};
use crate::bus::{BusError, BusErrorKind, ErrorSender, Handler, Pattern, PatternSet};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::delivery;

/// How often an idle subscription checks that its connection is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);

pub(super) struct Listener {
    shared: Arc<Shared>,
    patterns: PatternSet,
    glob: String,
    handler: Arc<dyn Handler>,
    errors: ErrorSender,
    cancel: watch::Receiver<bool>,
    sink: PubSubSink,
    stream: PubSubStream,
}

impl Listener {
    /// Connects and subscribes; returns once Redis confirmed the `PSUBSCRIBE`.
    ///
    /// One connection and one glob per subscription: the pattern's glob, or with several
    /// patterns the glob of every channel under the prefix (Redis sends a message once per
    /// matching glob, so one glob per pattern would deliver some events twice), filtered
    /// exactly here.
    pub(super) async fn start(
        shared: Arc<Shared>,
        patterns: PatternSet,
        handler: Arc<dyn Handler>,
        errors: ErrorSender,
        cancel: watch::Receiver<bool>,
    ) -> Result<Self> {
        let glob = match patterns.patterns() {
            [one] => glob_for(&shared.channel_prefix, one),
            _ => format!("{}*", escape_glob(&shared.channel_prefix)),
        };
        let (sink, stream) = connect(&shared, &glob).await?;
        Ok(Listener {
            shared,
            patterns,
            glob,
            handler,
            errors,
            cancel,
            sink,
            stream,
        })
    }

    /// Runs the subscription: this task drains the connection promptly into a bounded
    /// [`Buffer`] (redis-rs queues pub/sub messages without bound until they are read), and a
    /// second task hands them to the handler. Messages that do not fit are dropped, counted and
    /// reported once per burst.
    pub(super) async fn run(mut self) {
        let config = &self.shared.config;
        let limits = (config.max_buffered_messages, config.max_buffered_bytes);
        let buffer: Arc<Buffer<redis::Msg>> = Arc::new(Buffer::new(limits.0, limits.1));
        let deliverer = Deliverer {
            prefix: self.shared.channel_prefix.clone(),
            patterns: self.patterns.clone(),
            handler: self.handler.clone(),
            errors: self.errors.clone(),
            cancel: self.cancel.clone(),
        };
        // Aborted with this task (by `close` after its drain timeout), so the handler is too.
        let mut handling = AbortOnDrop(tokio::spawn({
            let buffer = buffer.clone();
            async move {
                while let Some(msg) = buffer.pop().await {
                    deliverer
                        .deliver(msg.get_channel_name(), msg.get_payload_bytes())
                        .await;
                }
            }
        }));
        self.read(&buffer, limits).await;
        buffer.close();
        let _ = (&mut handling.0).await;
    }

    async fn read(&mut self, buffer: &Buffer<redis::Msg>, limits: (usize, usize)) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut tally = DropTally::default();
        let report = |errors: &ErrorSender, patterns: &PatternSet, tally: &mut DropTally| {
            if let Some((messages, bytes)) = tally.take() {
                errors.report(
                    BusError::new(
                        BusErrorKind::Dropped,
                        dropped_message(messages, bytes, limits.0, limits.1),
                    )
                    .for_pattern(patterns.label()),
                );
            }
        };
        loop {
            if cancelled(&self.cancel) {
                break;
            }
            let alive = tokio::select! {
                _ = self.cancel.changed() => continue,
                () = sleep_until(tally.deadline()) => {
                    report(&self.errors, &self.patterns, &mut tally);
                    true
                }
                msg = self.stream.next() => match msg {
                    Some(msg) => {
                        let size = msg.get_payload_bytes().len();
                        let ours = wanted(
                            &self.shared.channel_prefix,
                            &self.patterns,
                            msg.get_channel_name(),
                        );
                        if !ours {
                            // Not ours (the glob over-matches): takes no room.
                        } else if buffer.push(msg, size) {
                            // Room again: the burst of drops (if any) is over.
                            report(&self.errors, &self.patterns, &mut tally);
                        } else {
                            tally.record(size);
                            if tally.due() {
                                report(&self.errors, &self.patterns, &mut tally);
                            }
                        }
                        true
                    }
                    None => false,
                },
                _ = heartbeat.tick() => {
                    // A half-open TCP connection never ends the message stream; a ping does.
                    let ping = tokio::time::timeout(
                        self.shared.config.response_timeout,
                        self.sink.ping::<redis::Value>(),
                    );
                    matches!(ping.await, Ok(Ok(_)))
                }
            };
            if !alive && !self.reconnect().await {
                break;
            }
        }
        report(&self.errors, &self.patterns, &mut tally);
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a message on `channel` is for a subscription to `patterns`: the glob over-matches
/// (Redis `*` crosses dots); this is the exact filter.
fn wanted(prefix: &str, patterns: &PatternSet, channel: &str) -> bool {
    channel
        .strip_prefix(prefix)
        .is_some_and(|event_type| patterns.matches(event_type))
}

/// What the handler task needs to deliver a buffered message.
struct Deliverer {
    prefix: String,
    patterns: PatternSet,
    handler: Arc<dyn Handler>,
    errors: ErrorSender,
    cancel: watch::Receiver<bool>,
}

impl Deliverer {
    async fn deliver(&self, channel: &str, payload: &[u8]) {
        let Some(event_type) = channel.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        // The glob over-matches (Redis `*` crosses dots); this is the exact filter.
        if !self.patterns.matches(event_type) || cancelled(&self.cancel) {
            return;
        }
        let event = match Event::from_json(payload) {
            Ok(event) => event,
            Err(e) => {
                let mut error = BusError::new(
                    BusErrorKind::Decode,
                    format!("message on {channel} does not decode as an event: {e}"),
                )
                .for_pattern(self.patterns.label());
                error.event_type = Some(event_type.to_owned());
                self.errors.report(error);
                return;
            }
        };
        let _ = delivery::deliver(
            &*self.handler,
            &Arc::new(event),
            self.patterns.label(),
            &self.errors,
        )
        .await;
    }
}

impl Listener {
    /// Reconnects until it works or the subscription is cancelled (then returns `false`).
    async fn reconnect(&mut self) -> bool {
        self.errors.report(
            BusError::new(
                BusErrorKind::Disconnected,
                format!(
                    "pub/sub connection to {} lost; reconnecting",
                    self.shared.target
                ),
            )
            .for_pattern(self.patterns.label()),
        );
        let mut attempt = 0;
        loop {
            tokio::select! {
                _ = self.cancel.changed() => {}
                _ = tokio::time::sleep(backoff(attempt)) => {}
            }
            if cancelled(&self.cancel) {
                return false;
            }
            match connect(&self.shared, &self.glob).await {
                Ok((sink, stream)) => {
                    self.sink = sink;
                    self.stream = stream;
                    let pattern = self.patterns.label();
                    self.errors.report(
                        BusError::new(
                            BusErrorKind::Reconnected,
                            format!("pub/sub connection to {} is back", self.shared.target),
                        )
                        .for_pattern(pattern),
                    );
                    self.errors.report(
                        BusError::new(
                            BusErrorKind::Dropped,
                            "events published while the subscription was disconnected were \
                             missed (pub/sub is at most once)",
                        )
                        .for_pattern(pattern),
                    );
                    return true;
                }
                Err(e) => {
                    tracing::debug!(
                        pattern = self.patterns.label(),
                        "redis pub/sub reconnect failed: {e}"
                    );
                    attempt += 1;
                }
            }
        }
    }
}

async fn connect(shared: &Shared, glob: &str) -> Result<(PubSubSink, PubSubStream)> {
    let limit = shared.config.connect_timeout + shared.config.response_timeout;
    let attempt = async {
        let mut pubsub = shared.pubsub().await?;
        // Waits for Redis's confirmation: once this returns, messages are ours.
        pubsub.psubscribe(glob).await?;
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(parts)) => Ok(parts),
        Ok(Err(e)) => Err(connect_error(&shared.target, e)),
        Err(_) => Err(Error::Timeout {
            operation: "redis psubscribe",
            after: limit,
        }),
    }
}

/// The Redis glob that covers `pattern` under `prefix`: each `*` or `>` token becomes a glob
/// `*`. It over-matches (a glob `*` also crosses dots), never under-matches.
pub(super) fn glob_for(prefix: &str, pattern: &Pattern) -> String {
    let mut glob = escape_glob(prefix);
    if pattern.is_all() {
        glob.push('*');
        return glob;
    }
    for (i, token) in pattern.as_str().split('.').enumerate() {
        if i > 0 {
            glob.push('.');
        }
        match token {
            "*" | ">" => glob.push('*'),
            literal => glob.push_str(literal),
        }
    }
    glob
}

/// Escapes Redis glob metacharacters (event-type tokens have none; a prefix might).
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn g(pattern: &str) -> String {
        glob_for("ef:", &Pattern::parse(pattern).unwrap())
    }

    #[test]
    fn globs_cover_patterns() {
        assert_eq!(g("*"), "ef:*");
        assert_eq!(g("order.created"), "ef:order.created");
        assert_eq!(g("order.*"), "ef:order.*");
        assert_eq!(g("order.>"), "ef:order.*");
        assert_eq!(g("*.created"), "ef:*.created");
        assert_eq!(
            glob_for("a*b?:", &Pattern::parse("x").unwrap()),
            "a\\*b\\?:x"
        );
    }
}
