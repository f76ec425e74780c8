//! [`NatsBus`] itself: its state, accessors and the [`EventBus`] implementation, which
//! delegates to [`publish`](super::publish) and [`subscribe`](super::subscribe).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::NatsConfig;
use super::jetstream;
use super::publish::round_trip;
use super::status::{NatsHealth, NatsStatus, Reporter, describe_server};
use crate::bus::{
    BusError, BusErrorKind, Delivery, ErrorReceiver, EventBus, Handler, SubscriptionOptions,
};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::sync::lock;

/// The event bus over NATS; see the [module docs](super) for the delivery guarantees.
///
/// Cloning is cheap and shares the connection; [`close`](EventBus::close) closes it for every
/// clone. Dropping the last clone stops every subscription.
#[derive(Clone)]
pub struct NatsBus {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: NatsConfig,
    pub(super) client: async_nats::Client,
    pub(super) js: Option<jetstream::JetStream>,
    pub(super) reporter: Arc<Reporter>,
    pub(super) closed: AtomicBool,
    /// Set to `true` by `close`; dropped with the bus, which also ends every task.
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.inner.config.redacted_url())
            .field("subject_prefix", &self.inner.config.subject_prefix)
            .field("jetstream", &self.inner.config.enable_jetstream)
            .field("status", &self.status())
            .finish()
    }
}

impl NatsBus {
    /// The configuration the bus was connected with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// True while connected to a server (and not closed).
    pub fn is_connected(&self) -> bool {
        self.status() == NatsStatus::Connected
    }

    /// The connection state, for health checks. [`health`](NatsBus::health) adds the server
    /// the client is on and the leader changes (stream and consumers) seen since connect.
    pub fn status(&self) -> NatsStatus {
        if self.inner.closed.load(Ordering::Acquire) || self.inner.reporter.gave_up() {
            return NatsStatus::Closed;
        }
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => NatsStatus::Connected,
            async_nats::connection::State::Disconnected => NatsStatus::Disconnected,
            async_nats::connection::State::Pending => NatsStatus::Connecting,
        }
    }

    /// The server the client is connected to (or was last), as `<server name> (<host:port>)`.
    /// With several seed URLs or a cluster it tells which member the bus is on; it changes
    /// when the client moves to another server after losing its own.
    pub fn server(&self) -> Option<String> {
        self.inner
            .client
            .try_server_info()
            .map(|info| describe_server(&info))
    }

    /// The connection state with where the bus is in a cluster: its server, the JetStream
    /// stream's leader, stream and consumer leader changes and publish retries seen since
    /// connect.
    pub fn health(&self) -> NatsHealth {
        let cluster = self.inner.js.as_ref().map(|js| &js.cluster);
        NatsHealth {
            status: self.status(),
            server: self.server(),
            stream_leader: cluster.and_then(|c| c.leader()),
            leader_changes: cluster.map_or(0, |c| c.leader_changes()),
            consumer_leader_changes: cluster.map_or(0, |c| c.consumer_leader_changes()),
            publish_retries: cluster.map_or(0, |c| c.publish_retries()),
        }
    }

    /// Waits until the server has processed everything this bus sent so far (every event
    /// published, every subscription made). Core `publish` returns once the client has queued
    /// the event; call this where you need to know the server has it.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `request_timeout` (e.g. while disconnected), [`Error::Backend`].
    pub async fn flush(&self) -> Result<()> {
        round_trip(&self.inner.client, self.inner.config.request_timeout).await
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed("nats bus"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, mut event: Event) -> Result<()> {
        self.check_open()?;
        event.validate_owned()?;
        let out = self.encode(&event)?;
        tracing::trace!(
            event_id = %event.id,
            event_type = %event.event_type,
            correlation_id = event.correlation_id.as_deref(),
            "nats publish"
        );
        match &self.inner.js {
            None => self.publish_core(out).await,
            // Boxed: the JetStream future (publish + PubAck) is large, and inline it would size
            // every core publish's future too (measured: 1,952 bytes, past the allocator's fast
            // path; core publish ran at about half the raw rate). One more allocation next to a
            // server round trip is noise.
            Some(js) => Box::pin(js.publish(out)).await,
        }
    }

    async fn publish_batch(&self, mut events: Vec<Event>) -> Result<()> {
        self.check_open()?;
        crate::event::validate_owned(&mut events)?;
        // Everything is validated and size-checked before anything is sent.
        let encoded = events
            .iter()
            .map(|e| self.encode(e))
            .collect::<Result<VecDeque<_>>>()?;
        match &self.inner.js {
            None => {
                for out in encoded {
                    self.publish_core(out).await?;
                }
                Ok(())
            }
            Some(js) => {
                js.publish_pipelined(encoded, self.inner.config.publish_window)
                    .await
            }
        }
    }

    /// At least once with JetStream, at most once in core mode.
    fn guarantee(&self) -> Delivery {
        if self.inner.js.is_some() {
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
    ) -> Result<crate::Subscription> {
        self.subscribe_as(patterns, options, handler).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.inner.shutdown.send(true);
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        // Handlers already running finish; a stuck one does not hold `close` for ever: after
        // `request_timeout` (over all tasks) it is cancelled, and that is reported. Its message
        // is not acked, so JetStream delivers it again.
        let drain = self.inner.config.request_timeout;
        let deadline = tokio::time::Instant::now() + drain;
        let mut cancelled = 0usize;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                cancelled += 1;
            }
        }
        if cancelled > 0 {
            self.inner.reporter.report(BusError::new(
                BusErrorKind::Cancelled,
                format!(
                    "close: {cancelled} subscription(s) still busy after the drain timeout of \
                     {drain:?}; their handlers were cancelled"
                ),
            ));
        }
        let flushed = self.flush().await;
        let _ = self.inner.client.drain().await;
        self.inner.reporter.close();
        flushed
    }

    fn errors(&self) -> ErrorReceiver {
        self.inner.reporter.subscribe()
    }
}
