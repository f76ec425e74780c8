//! Running a projection from a bus subscription instead of the store.

use std::sync::Arc;

use super::{Filter, Projection, guarded};
use crate::bus::{EventBus, FeedOptions, Subscription, SubscriptionOptions, subscription_name};
use crate::error::Result;
use crate::event::Event;

/// Runs `projection` from a bus subscription instead of the store: for consumers in other
/// processes that read the bus (NATS JetStream, Redis Streams) rather than the database.
/// [`subscribe_with`] with the default [`FeedOptions`].
///
/// # Errors
/// [`Error::AtMostOnceBus`](crate::Error::AtMostOnceBus) when `bus` delivers at most once
/// (in-memory, NATS core, Redis pub/sub): run the projection from the store with a
/// [`ProjectionRunner`](super::ProjectionRunner) instead, or opt in with
/// [`FeedOptions::allow_at_most_once`]. Invalid patterns, and the bus's subscribe errors.
pub async fn subscribe<P: Projection>(bus: &dyn EventBus, projection: P) -> Result<Subscription> {
    subscribe_with(bus, projection, FeedOptions::default()).await
}

/// Runs `projection` from ONE bus subscription to all its patterns, named after it (its name
/// with every byte outside `[A-Za-z0-9_-]` as `_`, or `options.name`): [`Projection::handle`]
/// runs one event at a time, in the bus's order (one publisher's events in publish order),
/// whatever pattern each matched.
///
/// The handler returns the projection's result, so a durable backend redelivers an event the
/// projection failed on. There is no checkpoint here: the bus's acknowledgement is the
/// checkpoint, delivery is at least once, and the handler should be idempotent. Processes
/// running the same projection share one subscription name, so they split its events.
///
/// The event's `stream_id`, `stream_version` and `position` are whatever its publisher wrote
/// (see [store-owned fields](Event#store-owned-fields)): nothing here reads them, and a
/// projection should not make them its checkpoint or deduplication key unless the bus is
/// written only by this store's relay. A projection that needs a trustworthy position runs
/// from the store in a [`ProjectionRunner`](super::ProjectionRunner).
///
/// # Errors
/// As [`subscribe`].
pub async fn subscribe_with<P: Projection>(
    bus: &dyn EventBus,
    projection: P,
    options: FeedOptions,
) -> Result<Subscription> {
    let projection: Arc<dyn Projection> = Arc::new(projection);
    let patterns = projection.patterns();
    Filter::parse(&patterns)?;
    options.check(bus, &format!("projection {}", projection.name()))?;
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| subscription_name(projection.name()));
    let handler = move |event: Arc<Event>| {
        let projection = Arc::clone(&projection);
        async move { guarded(projection.handle(&event)).await }
    };
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    bus.subscribe_with(
        &patterns,
        SubscriptionOptions::named(name),
        Arc::new(handler),
    )
    .await
}
