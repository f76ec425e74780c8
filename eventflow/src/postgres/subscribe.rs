//! Following the store: the commit signal and subscriptions (through
//! [`follow`](crate::store::follow)), and the relay that carries every committed event to a bus
//! (the transactional outbox of [`with_bus`](PostgresEventStore::with_bus)).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use super::store::{PostgresEventStore, RelayCell};
use crate::bus::{EventBus, Handler, Subscription};
use crate::error::Result;
use crate::relay::{DEFAULT_RELAY_NAME, Relay, RelayHandle, RelayStatus};
use crate::store::{EventCriteria, EventStore};

impl PostgresEventStore {
    /// This store, also publishing every committed event to `bus`: the transactional outbox.
    ///
    /// A [`Relay`] follows the store in global order from a durable checkpoint (named
    /// [`DEFAULT_RELAY_NAME`], in this schema's `checkpoints` table), publishes with
    /// [`EventBus::publish_batch`] and advances the checkpoint only after the bus accepted the
    /// batch. So every committed event reaches the bus **at least once, in global order**, also
    /// when the process dies between commit and publish (the next relay publishes it), and an
    /// event of a rolled-back transaction never does. The relay starts here when called inside a
    /// Tokio runtime (else with the first append) and stops when the last clone of this store
    /// is dropped. Run one relay per schema and checkpoint name; for other setups build a
    /// [`Relay`] over [`checkpoints`](Self::checkpoints) yourself.
    pub fn with_bus(self, bus: Arc<dyn EventBus>) -> Self {
        self.with_bus_named(bus, DEFAULT_RELAY_NAME)
    }

    /// [`with_bus`](Self::with_bus) with the relay's checkpoint under `name`.
    pub fn with_bus_named(self, bus: Arc<dyn EventBus>, name: impl Into<String>) -> Self {
        let store = PostgresEventStore {
            inner: self.inner,
            relay: Some(Arc::new(RelayCell {
                bus,
                name: name.into(),
                handle: OnceLock::new(),
            })),
        };
        let _ = store.relay();
        store
    }

    /// The relay of a store built with a bus, started on first use inside a runtime.
    pub(super) fn relay(&self) -> Option<&RelayHandle> {
        let cell = self.relay.as_ref()?;
        if let Some(handle) = cell.handle.get() {
            return Some(handle);
        }
        tokio::runtime::Handle::try_current().ok()?;
        Some(cell.handle.get_or_init(|| {
            // The relay reads through a bus-less handle on the same tables: it must not own
            // the relay that owns it.
            let reader = PostgresEventStore {
                inner: Arc::clone(&self.inner),
                relay: None,
            };
            Relay::new(
                Arc::new(reader),
                Arc::clone(&cell.bus),
                Arc::new(self.checkpoints()),
            )
            .name(cell.name.clone())
            .poll_interval(self.inner.poll_interval)
            .spawn()
        }))
    }

    /// The relay's position, the store's head and the lag (`None` without a bus).
    ///
    /// # Errors
    /// Backend errors reading the head.
    pub async fn relay_status(&self) -> Result<Option<RelayStatus>> {
        match self.relay() {
            Some(relay) => relay.status().await.map(Some),
            None => Ok(None),
        }
    }

    /// Waits until the bus (see [`with_bus`](Self::with_bus)) has accepted every event that was
    /// readable when called. Returns at once for a store without a bus.
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout` (for example while the bus keeps
    /// failing; the relay keeps retrying).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let head = self.head_position().await?;
        match self.relay() {
            Some(relay) if head > 0 => relay.wait_for(head, timeout).await,
            _ => Ok(()),
        }
    }

    /// [`EventStore::commit_signal`].
    pub(super) fn commit_signal_now(&self) -> watch::Receiver<u64> {
        self.inner
            .signal
            .subscribe(&self.inner.pool, &self.inner.sql)
    }

    /// [`EventStore::subscribe`].
    pub(super) async fn subscribe_now(
        &self,
        criteria: EventCriteria,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        Ok(crate::store::follow::subscribe_with(
            Arc::new(self.clone()),
            criteria,
            handler,
            self.inner.poll_interval,
        ))
    }
}
