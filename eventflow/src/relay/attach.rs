//! Attaching a relay to a store: [`WithBus::with_bus`] on every store that keeps reader
//! checkpoints ([`ReaderCheckpoints`]), so stores themselves know nothing of the relay.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{DEFAULT_RELAY_NAME, Relay, RelayHandle, RelayStatus, RetryOutcome, retry_parked};
use crate::bus::{EventBus, Handler, Subscription};
use crate::error::Result;
use crate::event::Event;
use crate::store::dead_letter::{DeadLetterStore, ParkedEvent};
use crate::store::{
    EventCriteria, EventStore, ExpectedVersion, ReaderCheckpoints, SubscribeOptions,
};

/// A bus to publish to: any [`EventBus`] value, an `Arc` of one, or an `Arc<dyn EventBus>`.
pub trait IntoBus {
    /// The bus as a shared trait object.
    fn into_bus(self) -> Arc<dyn EventBus>;
}

impl<B: EventBus> IntoBus for B {
    fn into_bus(self) -> Arc<dyn EventBus> {
        Arc::new(self)
    }
}

impl<B: EventBus> IntoBus for Arc<B> {
    fn into_bus(self) -> Arc<dyn EventBus> {
        self
    }
}

impl IntoBus for Arc<dyn EventBus> {
    fn into_bus(self) -> Arc<dyn EventBus> {
        self
    }
}

/// `with_bus` on every store that keeps reader checkpoints (the in-memory and the PostgreSQL
/// store): the store, also publishing every committed event to a bus through a [`Relay`].
///
/// ```
/// # async fn demo() -> eventflow::Result<()> {
/// use std::time::Duration;
/// use eventflow::{Event, EventStore, ExpectedVersion, InMemoryBus, InMemoryEventStore, WithBus};
///
/// let bus = InMemoryBus::new();
/// let store = InMemoryEventStore::new().with_bus(bus.clone());
/// store.append("order-1", ExpectedVersion::NoStream, Event::new("order.placed", ())?).await?;
/// store.flush(Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
pub trait WithBus: ReaderCheckpoints + Sized {
    /// This store, also publishing every committed event to `bus`: the transactional outbox.
    ///
    /// A [`Relay`] follows the store in global order from the store's own checkpoint store
    /// (name [`DEFAULT_RELAY_NAME`]), publishes with [`EventBus::publish_batch`] and moves its
    /// checkpoint only after the bus accepted the batch, retrying with backoff on a bus error.
    /// So the bus sees **every committed event, in commit order, at least once**, and never an
    /// event of a batch that failed. An event the bus will never take (too large, invalid) is
    /// parked in the store's dead-letter store
    /// ([`reader_dead_letters`](ReaderCheckpoints::reader_dead_letters)) and the relay moves on
    /// (see [`Relayed::parked`]). Publishing happens shortly *after* `append` returns; call
    /// [`Relayed::flush`] to wait for it. The relay starts here when called inside a Tokio
    /// runtime (else with the first append, so the store can be built outside one) and stops
    /// when the last clone of the returned store is dropped.
    fn with_bus(self, bus: impl IntoBus) -> Relayed<Self> {
        self.with_bus_named(bus, DEFAULT_RELAY_NAME)
    }

    /// [`with_bus`](Self::with_bus) with the relay's checkpoint under `name` (one per relay
    /// that must not share progress with another).
    fn with_bus_named(self, bus: impl IntoBus, name: impl Into<String>) -> Relayed<Self> {
        self.with_relay(bus, RelayOptions::default().name(name))
    }

    /// [`with_bus`](Self::with_bus) with the relay's name, lease time-to-live and heartbeat
    /// given by `options`.
    fn with_relay(self, bus: impl IntoBus, options: RelayOptions) -> Relayed<Self> {
        let dead_letters = self.reader_dead_letters();
        let store = Relayed {
            store: self,
            relay: Arc::new(RelayCell {
                bus: bus.into_bus(),
                dead_letters,
                name: options.name.clone(),
                options,
                handle: OnceLock::new(),
            }),
        };
        let _ = store.relay();
        store
    }
}

/// How [`WithBus::with_relay`] runs the relay: its name, and the timing of its lease.
///
/// Where the store has leases ([`ReaderCheckpoints::reader_leases`]: PostgreSQL, memory), the
/// relay of every process attached to one store schema holds the lease `relay:<name>`: exactly
/// one publishes, the others stand by and claim it every heartbeat; when the holder dies,
/// another takes over within the time-to-live plus one heartbeat (see
/// [`Relay::leased`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// The relay's checkpoint name ([`DEFAULT_RELAY_NAME`] by default).
    pub name: String,
    /// The lease's time-to-live ([`crate::lease::DEFAULT_TTL`], 10 s, by default).
    pub lease_ttl: Duration,
    /// How often the holder renews and a standby relay claims
    /// ([`crate::lease::DEFAULT_HEARTBEAT`], 3 s, by default; at most a third of the
    /// time-to-live).
    pub heartbeat: Duration,
    /// The relay's owner id in its lease (default: `relay-<pid>-<random>`, unique per relay;
    /// never give two running relays the same one).
    pub owner: Option<String>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            name: DEFAULT_RELAY_NAME.to_owned(),
            lease_ttl: crate::lease::DEFAULT_TTL,
            heartbeat: crate::lease::DEFAULT_HEARTBEAT,
            owner: None,
        }
    }
}

impl RelayOptions {
    /// The relay's checkpoint name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The lease's time-to-live and the heartbeat (see [`Relay::lease_timing`]).
    pub fn lease_timing(mut self, ttl: Duration, heartbeat: Duration) -> Self {
        self.lease_ttl = ttl;
        self.heartbeat = heartbeat;
        self
    }

    /// The relay's owner id in its lease (unique per running relay).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
}

/// The status of the relay `name` of `store` as stored, readable from any process (a health
/// check, a command line) without running or owning the relay: the checkpoint, the store's
/// head and the lag, the parked events, and the relay's lease (owner, epoch, expiry) with
/// whether it is live.
///
/// # Errors
/// The store's, checkpoint store's, dead-letter store's or lease store's errors.
pub async fn read_status<S: ReaderCheckpoints>(store: &S, name: &str) -> Result<RelayStatus> {
    let position = store.reader_checkpoints().load_checkpoint(name).await?;
    let head = store.head_position().await?;
    let parked = store.reader_dead_letters().count(name).await?;
    let lease = match store.reader_leases() {
        Some(leases) => {
            let lease_name = Relay::lease_name(name);
            leases
                .list(Some(&lease_name))
                .await?
                .into_iter()
                .find(|l| l.partition == 0)
        }
        None => None,
    };
    let active = lease
        .as_ref()
        .is_some_and(|l| !l.is_expired_at(chrono::Utc::now()));
    Ok(RelayStatus {
        position,
        head,
        lag: head.saturating_sub(position),
        parked,
        active,
        lease,
    })
}

impl<S: ReaderCheckpoints> WithBus for S {}

/// A store with a relay attached (see [`WithBus::with_bus`]). Cheap to clone when the store is;
/// clones share the relay. Derefs to the store for its own methods.
#[derive(Clone)]
pub struct Relayed<S> {
    store: S,
    relay: Arc<RelayCell>,
}

/// A bus and the relay publishing to it, started on first use inside a runtime.
struct RelayCell {
    bus: Arc<dyn EventBus>,
    /// Taken once at `with_bus`, so the relay and the caller see the same dead letters.
    dead_letters: Arc<dyn DeadLetterStore>,
    name: String,
    options: RelayOptions,
    handle: OnceLock<RelayHandle>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Relayed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relayed")
            .field("store", &self.store)
            .field("relay", &self.relay.name)
            .finish_non_exhaustive()
    }
}

impl<S> Deref for Relayed<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.store
    }
}

impl<S: ReaderCheckpoints> Relayed<S> {
    /// The store the relay reads (without the relay).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The relay, started on first use inside a Tokio runtime (`None` outside one, before it
    /// started).
    fn relay(&self) -> Option<&RelayHandle> {
        if let Some(handle) = self.relay.handle.get() {
            return Some(handle);
        }
        tokio::runtime::Handle::try_current().ok()?;
        Some(self.relay.handle.get_or_init(|| {
            // The relay reads the bare store: it must not own the relay that owns it.
            let relay = Relay::new(
                Arc::new(self.store.clone()),
                Arc::clone(&self.relay.bus),
                self.store.reader_checkpoints(),
            )
            .name(self.relay.name.clone())
            .dead_letters(Arc::clone(&self.relay.dead_letters))
            .poll_interval(self.store.reader_poll_interval());
            let options = &self.relay.options;
            let relay = match self.store.reader_leases() {
                Some(leases) => relay
                    .leased(leases)
                    .lease_timing(options.lease_ttl, options.heartbeat),
                None => relay,
            };
            let relay = match &options.owner {
                Some(owner) => relay.owner(owner.clone()),
                None => relay,
            };
            relay.spawn()
        }))
    }

    fn started(&self) -> Result<&RelayHandle> {
        self.relay()
            .ok_or(crate::error::Error::Closed("relay (no Tokio runtime)"))
    }

    /// Waits until the bus has accepted every event that was readable when called.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout` (for example while the bus
    /// keeps failing; the relay keeps retrying); backend errors reading the head.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let head = self.store.head_position().await?;
        let relay = self.started()?;
        if head > 0 {
            relay.wait_for(head, timeout).await
        } else {
            Ok(())
        }
    }

    /// The relay's position, the store's head and the lag between them.
    ///
    /// # Errors
    /// Backend errors reading the head.
    pub async fn relay_status(&self) -> Result<RelayStatus> {
        self.started()?.status().await
    }

    /// The relay's error stream: every event it parks is reported there (see
    /// [`RelayHandle::errors`]).
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) outside a Tokio runtime.
    pub fn relay_errors(&self) -> Result<crate::handler::ErrorReceiver> {
        Ok(self.started()?.errors())
    }

    /// Where the relay parks the events the bus will never take.
    pub fn dead_letters(&self) -> &Arc<dyn DeadLetterStore> {
        &self.relay.dead_letters
    }

    /// Up to `limit` events the relay parked, oldest first.
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn parked(&self, limit: usize) -> Result<Vec<ParkedEvent>> {
        self.relay.dead_letters.list(&self.relay.name, limit).await
    }

    /// Publishes up to `limit` parked events again through the relay's bus, removing each once
    /// the bus took it (see [`retry_parked`](super::retry_parked)).
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn retry_parked(&self, limit: usize) -> Result<RetryOutcome> {
        retry_parked(
            self.relay.dead_letters.as_ref(),
            self.relay.bus.as_ref(),
            &self.relay.name,
            limit,
        )
        .await
    }

    /// Drops the parked event `id` for good; `false` when there was none.
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn discard_parked(&self, id: uuid::Uuid) -> Result<bool> {
        self.relay.dead_letters.discard(id).await
    }
}

#[async_trait]
impl<S: ReaderCheckpoints> EventStore for Relayed<S> {
    async fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        let recorded = self.store.append_batch(stream_id, expected, events).await?;
        let _ = self.relay();
        Ok(recorded)
    }

    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        event: Event,
    ) -> Result<Event> {
        let recorded = self.store.append(stream_id, expected, event).await?;
        let _ = self.relay();
        Ok(recorded)
    }

    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>> {
        self.store.load_stream(stream_id, from_version).await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        self.store.stream_version(stream_id).await
    }

    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        self.store.load(criteria).await
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>> {
        self.store.read_all(after_position, limit).await
    }

    async fn head_position(&self) -> Result<u64> {
        self.store.head_position().await
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.store.commit_signal()
    }

    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        self.store.subscribe_dyn(criteria, options, handler).await
    }
}
