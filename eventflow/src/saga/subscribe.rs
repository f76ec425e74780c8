//! Feeding a [`SagaManager`] from a bus subscription or, as a projection, from the store.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Saga, SagaManager};
use crate::bus::{EventBus, Subscription};
use crate::error::{BoxError, Result};
use crate::event::Event;

impl<S: Saga> SagaManager<S> {
    /// Subscribes the manager to every type it listens to on `bus`. A handler error makes the
    /// bus redeliver where it can. Dropping the subscription stops delivery.
    ///
    /// # Errors
    /// The bus's subscribe errors.
    pub async fn subscribe(self: &Arc<Self>, bus: &dyn EventBus) -> Result<Subscription> {
        let mut subscriptions = Vec::new();
        for event_type in self.event_types() {
            let manager = Arc::clone(self);
            let handler = move |event: Arc<Event>| {
                let manager = Arc::clone(&manager);
                async move {
                    manager
                        .handle(&event)
                        .await
                        .map(|_| ())
                        .map_err(BoxError::from)
                }
            };
            subscriptions.push(bus.subscribe(&event_type, Arc::new(handler)).await?);
        }
        let description = format!("saga {}", self.name);
        Ok(Subscription::new(description, move || drop(subscriptions)))
    }
}

/// A [`SagaManager`] as a [`Projection`](crate::projection::Projection), so a
/// [`ProjectionRunner`](crate::projection::ProjectionRunner) can feed the saga from the event
/// store in global order, with a checkpoint. Redelivered events (after a crash before the
/// checkpoint) are ignored by the saga's handled-event record, so each is acted on once.
pub struct SagaProjection<S: Saga> {
    name: String,
    manager: Arc<SagaManager<S>>,
}

impl<S: Saga> SagaProjection<S> {
    /// Wraps `manager`; the projection (and its checkpoint) is named `saga-<saga name>`.
    pub fn new(manager: Arc<SagaManager<S>>) -> Self {
        SagaProjection {
            name: format!("saga-{}", manager.name()),
            manager,
        }
    }
}

impl<S: Saga> std::fmt::Debug for SagaProjection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaProjection")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: Saga> crate::projection::Projection for SagaProjection<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn patterns(&self) -> Vec<String> {
        self.manager.event_types()
    }

    async fn handle(&self, event: &Event) -> crate::bus::HandlerResult {
        self.manager.handle(event).await?;
        Ok(())
    }
}
