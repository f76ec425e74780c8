//! [`RedisBus`] itself: its state, accessors, the publishing connection's state tracking, and
//! the [`EventBus`] implementation, which delegates to [`publish`](super::publish) and
//! [`subscribe`](super::subscribe).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::conn::Conn;
use super::connect::{Shared, is_connection_error};
use super::{BACKEND, RedisConfig};
use crate::bus::{
    BusError, BusErrorKind, Delivery, ErrorReceiver, ErrorStream, EventBus, Handler, Subscription,
    SubscriptionOptions,
};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::sync::lock;

/// A running subscription task and the switch that stops it.
pub(super) struct Task {
    pub(super) cancel: watch::Sender<bool>,
    pub(super) handle: JoinHandle<()>,
    /// The consumer group of an unnamed subscription (Streams mode), destroyed when it ends.
    pub(super) ephemeral_group: Option<String>,
}

pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: Conn,
    /// Closed by `close`: every error receiver then ends once the last task is gone.
    pub(super) errors: ErrorStream,
    pub(super) closed: AtomicBool,
    /// Whether the last command on the publishing connection succeeded.
    pub(super) connected: AtomicBool,
    pub(super) tasks: Mutex<HashMap<u64, Task>>,
    pub(super) next_task: AtomicU64,
    /// Entries published to the stream by this bus, for trimming every `stream_max_len`.
    pub(super) published: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the senders stops every subscription task between two events.
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.clear();
        }
    }
}

/// The Redis event bus (pub/sub or Streams, see the [module docs](super)).
///
/// Cloning is cheap and gives another handle to the same bus.
#[derive(Clone)]
pub struct RedisBus {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("target", &self.inner.shared.target)
            .field("use_streams", &self.inner.shared.config.use_streams)
            .field("key_prefix", &self.inner.shared.config.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// The configuration the bus runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.shared.config
    }

    /// The server the bus publishes to: the address it connected to (one server), the
    /// cluster's seeds, or the primary the sentinels named last (it changes after a
    /// failover, which is also reported as [`Failover`](crate::bus::BusErrorKind::Failover)).
    pub fn server(&self) -> String {
        match &self.inner.conn {
            Conn::Sentinel(conn) => conn
                .primary()
                .unwrap_or_else(|| self.inner.shared.target.clone()),
            _ => self.inner.shared.target.clone(),
        }
    }

    /// The Streams key (`<key_prefix>:stream`; in a cluster `{<key_prefix>}:stream`).
    pub fn stream_key(&self) -> &str {
        &self.inner.shared.stream_key
    }

    /// The dead-letter stream key.
    pub fn dead_letter_key(&self) -> &str {
        &self.inner.shared.dead_letter_key
    }

    /// The pub/sub channel of `event_type` (`<key_prefix>:<event_type>`).
    pub fn channel(&self, event_type: &str) -> String {
        self.inner.shared.channel(event_type)
    }

    /// Reports on the bus's error stream.
    pub(super) fn report(&self, error: BusError) {
        self.inner.errors.report(error);
    }

    pub(super) fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed("redis bus"))
        } else {
            Ok(())
        }
    }

    /// Runs a command on the publishing connection with an overall bound, maps its error, and
    /// tracks the connection state for the error stream.
    pub(super) async fn command<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let limit =
            self.inner.shared.config.connect_timeout + self.inner.shared.config.response_timeout;
        let outcome = tokio::time::timeout(limit, fut).await;
        let (result, reachable) = match outcome {
            Ok(Ok(v)) => (Ok(v), true),
            Ok(Err(e)) => {
                let lost = is_connection_error(&e);
                (Err(Error::backend(BACKEND, e)), !lost)
            }
            Err(_) => (
                Err(Error::Timeout {
                    operation,
                    after: limit,
                }),
                false,
            ),
        };
        let was = self.inner.connected.swap(reachable, Ordering::AcqRel);
        if was && !reachable {
            self.report(BusError::new(
                BusErrorKind::Disconnected,
                format!("lost the connection to {}", self.inner.shared.target),
            ));
        } else if !was && reachable {
            self.report(BusError::new(
                BusErrorKind::Reconnected,
                format!("connected again to {}", self.inner.shared.target),
            ));
        }
        result
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, event: Event) -> Result<()> {
        self.publish_one(event).await
    }

    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        self.publish_all(events).await
    }

    /// At least once in Streams mode, at most once in pub/sub mode.
    fn guarantee(&self) -> Delivery {
        if self.inner.shared.config.use_streams {
            Delivery::AtLeastOnce
        } else {
            Delivery::AtMostOnce
        }
    }

    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        self.subscribe_patterns(patterns, options, handler).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let tasks: Vec<Task> = lock(&self.inner.tasks).drain().map(|(_, t)| t).collect();
        for task in &tasks {
            let _ = task.cancel.send(true);
        }
        // A handler already running may finish within the drain timeout; after it, the tasks
        // still running are cancelled. An entry whose handler was cancelled is not acked, so
        // it stays pending in its group and is delivered again.
        let drain = self.inner.shared.config.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain;
        let mut cancelled = 0usize;
        let mut orphans = Vec::new();
        for mut task in tasks {
            // A task that panicked has nothing to drain.
            if tokio::time::timeout_at(deadline, &mut task.handle)
                .await
                .is_err()
            {
                task.handle.abort();
                cancelled += 1;
                // A stopped task destroys its own ephemeral group; a cancelled one cannot.
                orphans.extend(task.ephemeral_group);
            }
        }
        for group in orphans {
            let mut conn = self.inner.conn.clone();
            let key = self.inner.shared.stream_key.clone();
            let key_base = self.inner.shared.key_base.clone();
            let destroyed = self
                .command("redis xgroup destroy", async move {
                    super::streams::destroy_ephemeral(&mut conn, &key, &key_base, &group).await
                })
                .await;
            if let Err(e) = destroyed {
                tracing::debug!("redis: cannot destroy an ephemeral consumer group: {e}");
            }
        }
        if cancelled > 0 {
            self.report(BusError::new(
                BusErrorKind::Cancelled,
                format!(
                    "close: {cancelled} subscription(s) still busy after the drain timeout of \
                     {drain:?}; their handlers were cancelled"
                ),
            ));
        }
        self.inner.errors.close();
        Ok(())
    }

    fn errors(&self) -> ErrorReceiver {
        self.inner.errors.subscribe()
    }
}
