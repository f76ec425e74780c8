//! Store and forward: a [`Forwarder`] follows a local store (an edge node's SQLite file) from a
//! durable checkpoint kept in that store, and delivers every event to a far side that is
//! idempotent by event id: another store (PostgreSQL, through the idempotent append) or a
//! durable bus that deduplicates by id (JetStream, whose `Nats-Msg-Id` is the event id).
//!
//! It is a [`Relay`] whose "bus" is the far side, so it keeps every property of the relay: it
//! reads in global order, moves its checkpoint only after the far side accepted a batch, retries
//! transient failures (an unreachable server) with backoff, in order, and parks an event the
//! far side will never take. The far side may be down when the forwarder starts: it connects
//! on first use and again after a failed connection. **A link that drops mid-batch and comes
//! back delivers every event exactly once on the far side**: the batch is sent again from the
//! checkpoint, and the far side drops what it already holds by id.
//!
//! | far side | how a resent event is dropped | exactly once as long as |
//! |---|---|---|
//! | an [`EventStore`] | the idempotent append: a batch whose ids are all stored in the stream returns the stored copies; a batch that partly landed is resent event by event | always (the store keeps every id) |
//! | JetStream (`NatsBus` in JetStream mode) | `Nats-Msg-Id` = event id | the outage is shorter than the stream's duplicate window (`NatsConfig::duplicate_window`; raise it to the longest outage you plan for) |
//!
//! A bus without deduplication (Redis Streams, NATS core) still gets every event, at least
//! once. Stream ids can be mapped on the way ([`Forwarder::prefix_streams`] puts the node's id in
//! front, so nodes never collide in a central store). [`RelayHandle::status`] says how far
//! behind the far side is (`lag`, in the local store's positions: in SQLite, events).
//!
//! ```
//! # async fn demo() -> eventflow::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use eventflow::relay::{ForwardTarget, Forwarder};
//! use eventflow::{Event, EventStore, ExpectedVersion, InMemoryEventStore};
//!
//! let local = InMemoryEventStore::new(); // an edge node would use SqliteEventStore
//! let central = InMemoryEventStore::new(); // e.g. PostgresEventStore::connect(url)
//! let target = {
//!     let central = central.clone();
//!     ForwardTarget::store(move || {
//!         let central = central.clone();
//!         async move { Ok(Arc::new(central) as Arc<dyn EventStore>) }
//!     })
//! };
//! let forwarder = Forwarder::new(local.clone(), target).prefix_streams("node-7/").spawn();
//! local.append("meter-1", ExpectedVersion::Any, Event::new("meter.read", ())?).await?;
//! forwarder.wait_for(local.head_position().await?, Duration::from_secs(5)).await?;
//! assert_eq!(central.load_stream("node-7/meter-1", 0).await?.len(), 1);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::Mutex;

use super::{Relay, RelayHandle};
use crate::bus::{Delivery, EventBus, SubscriptionOptions};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::{ErrorReceiver, ErrorSender, Handler, Subscription};
use crate::store::{EventStore, ExpectedVersion, ReaderCheckpoints};

/// The default checkpoint name of a forwarder.
pub const DEFAULT_FORWARDER_NAME: &str = "forwarder";

type Connect<T> = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<T>>> + Send + Sync>;

/// A connection made on first use and made again after a failed attempt.
struct Lazy<T: ?Sized> {
    connect: Connect<T>,
    connected: Mutex<Option<Arc<T>>>,
}

impl<T: ?Sized + Send + Sync + 'static> Lazy<T> {
    fn new<F, Fut>(connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<T>>> + Send + 'static,
    {
        Lazy {
            connect: Arc::new(move || Box::pin(connect())),
            connected: Mutex::new(None),
        }
    }

    fn ready(value: Arc<T>) -> Self {
        Lazy {
            connect: {
                let value = Arc::clone(&value);
                Arc::new(move || {
                    let value = Arc::clone(&value);
                    Box::pin(async move { Ok(value) })
                })
            },
            connected: Mutex::new(Some(value)),
        }
    }

    async fn get(&self) -> Result<Arc<T>> {
        let mut connected = self.connected.lock().await;
        if let Some(value) = &*connected {
            return Ok(Arc::clone(value));
        }
        let value = (self.connect)().await?;
        *connected = Some(Arc::clone(&value));
        Ok(value)
    }
}

enum Far {
    Store(Lazy<dyn EventStore>),
    Bus(Lazy<dyn EventBus>),
}

/// Where a [`Forwarder`] delivers: a store or a bus, idempotent by event id (see the
/// [module docs](self)), connected on first use.
pub struct ForwardTarget {
    far: Far,
}

impl std::fmt::Debug for ForwardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.far {
            Far::Store(_) => "store",
            Far::Bus(_) => "bus",
        };
        f.debug_struct("ForwardTarget")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl ForwardTarget {
    /// A store reached by `connect`, called on first use and again after it failed (so the
    /// store's server may be down when the forwarder starts). Events are appended with
    /// [`ExpectedVersion::Any`], one batch per run of events of one stream.
    pub fn store<F, Fut>(connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn EventStore>>> + Send + 'static,
    {
        ForwardTarget {
            far: Far::Store(Lazy::new(connect)),
        }
    }

    /// A store already connected.
    pub fn connected_store(store: Arc<dyn EventStore>) -> Self {
        ForwardTarget {
            far: Far::Store(Lazy::ready(store)),
        }
    }

    /// A bus reached by `connect`, called on first use and again after it failed. Exactly once
    /// only on a bus that deduplicates by event id (JetStream); at least once elsewhere.
    pub fn bus<F, Fut>(connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn EventBus>>> + Send + 'static,
    {
        ForwardTarget {
            far: Far::Bus(Lazy::new(connect)),
        }
    }

    /// A bus already connected.
    pub fn connected_bus(bus: Arc<dyn EventBus>) -> Self {
        ForwardTarget {
            far: Far::Bus(Lazy::ready(bus)),
        }
    }
}

type StreamMap = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Builds a forwarder; see the [module docs](self).
pub struct Forwarder {
    relay: Relay,
    sink: Sink,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder from `local` to `target`, keeping its checkpoint and parking in `local`'s
    /// own stores ([`ReaderCheckpoints`]: in SQLite, the same file), under the name
    /// [`DEFAULT_FORWARDER_NAME`].
    pub fn new<S: ReaderCheckpoints>(local: S, target: ForwardTarget) -> Self {
        let checkpoints = local.reader_checkpoints();
        let dead_letters = local.reader_dead_letters();
        let poll = local.reader_poll_interval();
        let sink = Sink {
            far: Arc::new(target.far),
            map: None,
            errors: ErrorSender::default(),
        };
        let relay = Relay::new(Arc::new(local), Arc::new(sink.clone()), checkpoints)
            .name(DEFAULT_FORWARDER_NAME)
            .dead_letters(dead_letters)
            .poll_interval(poll);
        Forwarder { relay, sink }
    }

    /// The checkpoint name (one per far side).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.relay = self.relay.name(name);
        self
    }

    /// Maps each stream id on the way (the local stream id in, the far one out).
    pub fn map_streams(mut self, map: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.sink.map = Some(Arc::new(map));
        self
    }

    /// Puts `prefix` in front of each stream id (e.g. the node's id), so the streams of several
    /// nodes never collide on the far side.
    pub fn prefix_streams(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.map_streams(move |s| format!("{prefix}{s}"))
    }

    /// Events read and delivered per batch (at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.relay = self.relay.batch_size(size);
        self
    }

    /// The first and the largest pause between retries while the far side is unreachable.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.relay = self.relay.backoff(min, max);
        self
    }

    /// Starts the forwarder in a Tokio task. The handle's [`status`](RelayHandle::status) says
    /// how far behind the far side is; [`stop`](RelayHandle::stop) ends it.
    pub fn spawn(self) -> RelayHandle {
        let sink = self.sink;
        let relay = Relay {
            bus: Arc::new(sink),
            ..self.relay
        };
        relay.spawn()
    }
}

/// The far side, seen by the relay as a bus it publishes to.
#[derive(Clone)]
struct Sink {
    far: Arc<Far>,
    map: Option<StreamMap>,
    errors: ErrorSender,
}

impl Sink {
    fn mapped(&self, mut events: Vec<Event>) -> Result<Vec<Event>> {
        for event in &mut events {
            let local = event.stream_id.as_deref().ok_or_else(|| {
                Error::InvalidArgument(format!("event {} to forward has no stream id", event.id))
            })?;
            if let Some(map) = &self.map {
                event.stream_id = Some(map(local));
            }
        }
        Ok(events)
    }

    async fn forward(&self, events: Vec<Event>) -> Result<()> {
        let events = self.mapped(events)?;
        match &*self.far {
            Far::Bus(bus) => bus.get().await?.publish_batch(events).await,
            Far::Store(store) => {
                let store = store.get().await?;
                // One append per run of events of one stream, in order.
                let mut rest = events.as_slice();
                while let Some(first) = rest.first() {
                    let stream = first.stream_id.clone().unwrap_or_default();
                    let run = rest
                        .iter()
                        .take_while(|e| e.stream_id.as_deref() == Some(stream.as_str()))
                        .count();
                    let (now, later) = rest.split_at(run);
                    append_idempotently(&*store, &stream, now).await?;
                    rest = later;
                }
                Ok(())
            }
        }
    }
}

/// Appends `events` to `stream`; when some of them are already there (a batch that partly
/// landed before the link dropped, read again in other batches), event by event, each already
/// stored one being skipped by the store's idempotent append.
async fn append_idempotently(store: &dyn EventStore, stream: &str, events: &[Event]) -> Result<()> {
    match store
        .append_batch(stream, ExpectedVersion::Any, events.to_vec())
        .await
    {
        Ok(_) => Ok(()),
        Err(Error::DuplicateEvent { .. }) if events.len() > 1 => {
            for event in events {
                match store
                    .append_batch(stream, ExpectedVersion::Any, vec![event.clone()])
                    .await
                {
                    Ok(_) => {}
                    Err(Error::DuplicateEvent { id, stream: other }) => {
                        // The id is on the far side already, under another stream: delivered.
                        tracing::warn!(event_id = %id, stream, other, "forwarder: event id already stored in another stream; skipped");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(Error::DuplicateEvent { id, stream: other }) => {
            tracing::warn!(event_id = %id, stream, other, "forwarder: event id already stored in another stream; skipped");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[async_trait]
impl EventBus for Sink {
    fn guarantee(&self) -> Delivery {
        Delivery::AtLeastOnce
    }

    async fn publish(&self, event: Event) -> Result<()> {
        self.forward(vec![event]).await
    }

    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        self.forward(events).await
    }

    async fn subscribe_with(
        &self,
        _patterns: &[&str],
        _options: SubscriptionOptions,
        _handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        Err(Error::InvalidArgument(
            "a forwarder's far side is not subscribed through the forwarder".into(),
        ))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    fn errors(&self) -> ErrorReceiver {
        self.errors.subscribe()
    }
}
