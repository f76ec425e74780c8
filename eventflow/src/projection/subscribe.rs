//! Running a projection from a bus subscription instead of the store.

use std::sync::Arc;

use super::{Filter, Projection, guarded};
use crate::bus::{EventBus, Subscription};
use crate::error::Result;
use crate::event::Event;

/// Runs `projection` from a bus subscription instead of the store: for consumers in other
/// processes that read the bus (NATS JetStream, Redis Streams) rather than the database.
///
/// Every pattern of the projection is subscribed with a handler that calls
/// [`Projection::handle`] and returns its result, so a durable backend redelivers an event the
/// projection failed on. There is no checkpoint here: the bus's acknowledgement is the
/// checkpoint, delivery is at least once, and the handler should be idempotent. Dropping the
/// returned subscription ends every underlying one.
///
/// # Errors
/// Invalid patterns, and the bus's subscribe errors.
pub async fn subscribe<P: Projection>(bus: &dyn EventBus, projection: P) -> Result<Subscription> {
    let projection: Arc<dyn Projection> = Arc::new(projection);
    let patterns = projection.patterns();
    Filter::parse(&patterns)?;
    let mut subscriptions = Vec::with_capacity(patterns.len());
    for pattern in &patterns {
        let projection = Arc::clone(&projection);
        let handler = move |event: Arc<Event>| {
            let projection = Arc::clone(&projection);
            async move { guarded(projection.handle(&event)).await }
        };
        subscriptions.push(bus.subscribe(pattern, Arc::new(handler)).await?);
    }
    let description = format!("projection {} [{}]", projection.name(), patterns.join(", "));
    Ok(Subscription::new(description, move || drop(subscriptions)))
}
