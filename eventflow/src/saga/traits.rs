//! The [`Saga`] trait: what a process manager implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::SagaContext;
use crate::error::BoxError;
use crate::event::{DomainEvent, Event};

#[cfg(doc)]
use super::SagaManager;
#[cfg(doc)]
use crate::error::Error;

/// A process manager: reacts to events of one business transaction (one correlation id).
///
/// `handle` must be a pure decision over `state` and the event: it may run more than once for
/// the same event when two writers race (only one result is committed), so side effects belong
/// in the events it emits through the [`SagaContext`].
pub trait Saga: Send + Sync + 'static {
    /// The state kept per correlation id (serialized as JSON in the store).
    type State: Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// The saga's name; it keys its instances in the store, so it must be stable.
    fn name(&self) -> &str;

    /// Event types that start a new instance when none exists for the correlation id. (For a
    /// typed event set, `E::event_types()`.)
    fn starts_on(&self) -> Vec<String>;

    /// Event types handled by an existing instance. A starting type seen again for an existing
    /// instance is handled too.
    fn handles(&self) -> Vec<String>;

    /// Handles `event` for the instance whose state is `state`.
    ///
    /// # Errors
    /// Any error: nothing is committed, the event is not marked handled, and
    /// [`SagaManager::handle`] returns [`Error::Handler`].
    fn handle(
        &self,
        state: &mut Self::State,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> std::result::Result<(), BoxError>;
}

/// The event types of a typed event set, for [`Saga::starts_on`] and [`Saga::handles`].
pub fn event_types_of<E: DomainEvent>() -> Vec<String> {
    crate::projection::event_types_of::<E>()
}
