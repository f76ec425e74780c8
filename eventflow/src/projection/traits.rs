//! The [`Projection`] trait: what a read model implements.

use std::sync::Arc;

use async_trait::async_trait;

use crate::bus::HandlerResult;
use crate::event::{DomainEvent, Event};

#[cfg(doc)]
use super::{FailurePolicy, ProjectionRunner};

/// A read model fed with events in global order.
///
/// Contract:
/// - `handle` is called for every stored event whose type matches one of
///   [`patterns`](Self::patterns), one at a time, in global position order.
/// - Delivery is at least once: after a crash, events since the last checkpoint are delivered
///   again, so `handle` should be idempotent (or use a transactional PostgreSQL projection).
/// - An error (or a panic) from `handle` means "not handled": the runner applies its
///   [`FailurePolicy`] and never checkpoints past that event unless the policy skips it.
/// - [`reset`](Self::reset) clears the read model before a [`rebuild`](ProjectionRunner::rebuild).
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The projection's name; it keys its checkpoint, so it must be stable.
    fn name(&self) -> &str;

    /// The event patterns it wants (`*`, `order.*`, `order.>` or exact types); default all.
    /// For a typed event set, return [`event_types_of::<E>()`](event_types_of).
    fn patterns(&self) -> Vec<String> {
        vec!["*".to_owned()]
    }

    /// Applies one event to the read model.
    async fn handle(&self, event: &Event) -> HandlerResult;

    /// Clears the read model (called by [`ProjectionRunner::rebuild`] before replaying).
    async fn reset(&self) -> HandlerResult {
        Ok(())
    }
}

#[async_trait]
impl<P: Projection + ?Sized> Projection for Arc<P> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn patterns(&self) -> Vec<String> {
        (**self).patterns()
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        (**self).handle(event).await
    }
    async fn reset(&self) -> HandlerResult {
        (**self).reset().await
    }
}

/// The event types of a typed event set, as exact patterns for [`Projection::patterns`].
pub fn event_types_of<E: DomainEvent>() -> Vec<String> {
    E::event_types().iter().map(|t| (*t).to_owned()).collect()
}
