//! Following the store: the commit signal, subscriptions (through [`follow`](crate::store::follow)), and where a
//! relay attached with [`with_bus`](crate::relay::WithBus::with_bus) keeps its checkpoint.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::store::PostgresEventStore;
use crate::bus::{Handler, Subscription};
use crate::error::Result;
use crate::lease::LeaseStore;
use crate::store::{
    CheckpointStore, DeadLetterStore, EventCriteria, ReaderCheckpoints, SubscribeOptions,
};

impl PostgresEventStore {
    /// [`EventStore::commit_signal`](crate::store::EventStore::commit_signal).
    pub(super) fn commit_signal_now(&self) -> watch::Receiver<u64> {
        self.inner
            .signal
            .subscribe(&self.inner.pool, &self.inner.sql)
    }

    /// [`EventStore::subscribe_dyn`](crate::store::EventStore::subscribe_dyn).
    pub(super) async fn subscribe_now(
        &self,
        criteria: EventCriteria,
        options: SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        Ok(crate::store::follow::subscribe_with(
            Arc::new(self.clone()),
            criteria,
            options,
            handler,
            self.inner.poll_interval,
        ))
    }
}

/// A relay attached with [`with_bus`](crate::relay::WithBus::with_bus) keeps its checkpoint in
/// this schema's `checkpoints` table, parks in its `dead_letters` table, holds its lease in its
/// `leases` table and polls at this store's interval.
impl ReaderCheckpoints for PostgresEventStore {
    fn reader_checkpoints(&self) -> Arc<dyn CheckpointStore> {
        Arc::new(self.checkpoints())
    }

    fn reader_dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(self.dead_letters())
    }

    fn reader_poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }

    /// The relay of every process attached to this schema holds one lease in its `leases`
    /// table: exactly one publishes.
    fn reader_leases(&self) -> Option<Arc<dyn LeaseStore>> {
        Some(Arc::new(self.leases()))
    }
}
