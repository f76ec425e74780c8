//! Feeding a [`SagaManager`] from a bus subscription or, as a projection, from the store.

use std::sync::Arc;

use async_trait::async_trait;

use super::{IgnoreReason, Saga, SagaManager, SagaOutcome};
use crate::bus::{
    Delivery, EventBus, FeedOptions, Subscription, SubscriptionOptions, subscription_name,
};
use crate::error::{BoxError, Result};
use crate::event::Event;

impl<S: Saga> SagaManager<S> {
    /// Subscribes the manager to every type it listens to on `bus`, through one ordered
    /// subscription named `saga-<saga name>` ([`subscribe_with`](Self::subscribe_with) with
    /// the default [`FeedOptions`]).
    ///
    /// # Errors
    /// [`Error::AtMostOnceBus`](crate::Error::AtMostOnceBus) when `bus` delivers at most once
    /// (in-memory, NATS core, Redis pub/sub): feed the saga from the store instead
    /// ([`SagaProjection`] in a [`ProjectionRunner`](crate::projection::ProjectionRunner)), or
    /// opt in with [`FeedOptions::allow_at_most_once`]. The bus's subscribe errors.
    pub async fn subscribe(self: &Arc<Self>, bus: &dyn EventBus) -> Result<Subscription> {
        self.subscribe_with(bus, FeedOptions::default()).await
    }

    /// Subscribes the manager to every type it listens to on `bus`, through ONE subscription
    /// (all its types, named after the saga: `saga-<name>` with every byte outside
    /// `[A-Za-z0-9_-]` as `_`, or `options.name`), so it sees one publisher's events in order,
    /// one at a time: a follow-up never overtakes the event that starts its instance.
    ///
    /// A handler error makes the bus redeliver where it can. On an at-least-once bus, a
    /// follow-up for which no instance exists yet ([`IgnoreReason::NoInstance`]) is not
    /// acknowledged either: the handler fails, so the bus redelivers it (its start event may
    /// come from another publisher and still be on its way), until the bus's maximum
    /// deliveries, after which the bus dead-letters it. On an at-most-once bus (with
    /// [`FeedOptions::allow_at_most_once`]) it is ignored, as there is no redelivery.
    /// Dropping the subscription stops delivery; running the same saga in several processes
    /// splits its events between them (same subscription name). The manager never reads a
    /// received event's `stream_id`, `stream_version` or `position`, which on a bus are the
    /// publisher's claim (see [store-owned fields](Event#store-owned-fields)).
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn subscribe_with(
        self: &Arc<Self>,
        bus: &dyn EventBus,
        options: FeedOptions,
    ) -> Result<Subscription> {
        options.check(bus, &format!("saga {}", self.name))?;
        let retry_no_instance = bus.guarantee() == Delivery::AtLeastOnce;
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| subscription_name(&format!("saga-{}", self.name)));
        let types = self.event_types();
        let patterns: Vec<&str> = types.iter().map(String::as_str).collect();
        let manager = Arc::clone(self);
        let handler = move |event: Arc<Event>| {
            let manager = Arc::clone(&manager);
            async move {
                match manager.handle(&event).await {
                    Ok(SagaOutcome::Ignored(IgnoreReason::NoInstance)) if retry_no_instance => {
                        Err(BoxError::from(format!(
                            "saga {}: no instance yet for correlation id {:?} of {} {}; not \
                             acknowledged, so the bus delivers it again",
                            manager.name,
                            event.correlation_id.as_deref().unwrap_or_default(),
                            event.event_type,
                            event.id
                        )))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(BoxError::from(e)),
                }
            }
        };
        bus.subscribe_with(
            &patterns,
            SubscriptionOptions::named(name),
            Arc::new(handler),
        )
        .await
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
