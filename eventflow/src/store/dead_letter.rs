//! Dead letters: events that delivery gave up on, parked so nothing is dropped in silence.
//!
//! When the relay, a saga's outbox or a projection runner meets a failure that retrying cannot
//! fix (a [permanent](crate::error::FailureClass::Permanent) one, such as an event larger than
//! the bus accepts), it **parks** the event here, with who gave up on it (`source`), why, the
//! error and the attempt count, reports it, and moves on. Transient failures are retried in
//! order and never parked.
//!
//! [`DeadLetterStore`] lists, takes and discards parked events; re-publishing them needs a bus,
//! so it lives one layer up, in [`relay::retry_parked`](crate::relay::retry_parked) (and
//! [`Relayed::retry_parked`](crate::relay::Relayed::retry_parked) for a store's relay).
//! [`InMemoryDeadLetterStore`] keeps them in a map; `eventflow::postgres::PostgresDeadLetterStore`
//! keeps them in the `dead_letters` table of a store's schema.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::sync;

/// An event parked in a [`DeadLetterStore`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedEvent {
    /// The id of this dead letter (not the event's id: one event may be parked by several
    /// consumers).
    pub id: Uuid,
    /// Who gave up on it: the relay's name, `saga:<name>` for a saga's outbox,
    /// `saga:<name>:deadlines` for a saga's deadlines that kept failing, the projection's name,
    /// `store:undecodable` for a stored PostgreSQL row no reader can decode.
    pub source: String,
    /// The event, as it was to be delivered.
    pub event: Event,
    /// Why it was parked, e.g. `"permanent: publish rejected"` or `"handler failed"`.
    pub reason: String,
    /// The error's message (with its causes, `: `-separated).
    pub error: String,
    /// How many times delivery was tried before parking.
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

impl ParkedEvent {
    /// A dead letter for `event`, parked now by `source` with a fresh id.
    pub fn new(
        source: impl Into<String>,
        event: Event,
        reason: impl Into<String>,
        error: &(dyn std::error::Error + 'static),
        attempts: u32,
    ) -> Self {
        let mut text = error.to_string();
        let mut cause = error.source();
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        ParkedEvent {
            id: Uuid::new_v4(),
            source: source.into(),
            event,
            reason: reason.into(),
            error: text,
            attempts,
            parked_at: Utc::now(),
        }
    }
}

/// Where delivery parks the events it gave up on (see the [module docs](self)).
///
/// Contract (checked by `eventflow::testing::conformance::dead_letters` on every implementation):
/// `park` is durable when it returns; `list` returns a source's dead letters oldest first;
/// `take` removes one and returns it (`None` when it is not there, e.g. already taken);
/// `discard` removes one and says whether it was there; `count` counts a source's dead letters.
#[async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Parks `event`.
    ///
    /// # Errors
    /// Backend errors; [`Error::InvalidArgument`] for an empty source.
    async fn park(&self, event: ParkedEvent) -> Result<()>;

    /// Up to `limit` dead letters of `source`, oldest first.
    ///
    /// # Errors
    /// Backend errors.
    async fn list(&self, source: &str, limit: usize) -> Result<Vec<ParkedEvent>>;

    /// Removes the dead letter `id` and returns it, to deliver it again.
    ///
    /// # Errors
    /// Backend errors.
    async fn take(&self, id: Uuid) -> Result<Option<ParkedEvent>>;

    /// Removes the dead letter `id` for good; `false` when there was none.
    ///
    /// # Errors
    /// Backend errors.
    async fn discard(&self, id: Uuid) -> Result<bool>;

    /// How many dead letters `source` has.
    ///
    /// # Errors
    /// Backend errors.
    async fn count(&self, source: &str) -> Result<u64>;
}

pub(crate) fn validate_source(source: &str) -> Result<()> {
    if source.is_empty() || source.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "invalid dead-letter source {source:?}: must be non-empty without NUL"
        )));
    }
    Ok(())
}

/// Keeps dead letters in memory (lost with the process, like the in-memory store's events).
/// Cheap to clone: clones share the same map.
#[derive(Debug, Clone, Default)]
pub struct InMemoryDeadLetterStore {
    /// By parking order (a sequence number), so `list` is oldest first.
    parked: Arc<Mutex<BTreeMap<u64, ParkedEvent>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl InMemoryDeadLetterStore {
    /// An empty dead-letter store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl DeadLetterStore for InMemoryDeadLetterStore {
    async fn park(&self, event: ParkedEvent) -> Result<()> {
        validate_source(&event.source)?;
        crate::metrics::parked(&event.source);
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sync::lock(&self.parked).insert(seq, event);
        Ok(())
    }

    async fn list(&self, source: &str, limit: usize) -> Result<Vec<ParkedEvent>> {
        Ok(sync::lock(&self.parked)
            .values()
            .filter(|p| p.source == source)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn take(&self, id: Uuid) -> Result<Option<ParkedEvent>> {
        let mut parked = sync::lock(&self.parked);
        let seq = parked.iter().find(|(_, p)| p.id == id).map(|(s, _)| *s);
        Ok(seq.and_then(|s| parked.remove(&s)))
    }

    async fn discard(&self, id: Uuid) -> Result<bool> {
        Ok(self.take(id).await?.is_some())
    }

    async fn count(&self, source: &str) -> Result<u64> {
        Ok(sync::lock(&self.parked)
            .values()
            .filter(|p| p.source == source)
            .count() as u64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_store_passes_the_kit() {
        crate::testing::conformance::dead_letters::run(&InMemoryDeadLetterStore::new(), "kit")
            .await
            .unwrap();
    }
}
