//! Publishing parked events again: [`retry_parked`], for any dead-letter store and bus.

use crate::bus::EventBus;
use crate::error::Result;
use crate::store::dead_letter::DeadLetterStore;

/// What [`retry_parked`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryOutcome {
    /// Events the bus took; they are no longer parked.
    pub published: usize,
    /// Events the bus rejected again; they stay parked.
    pub failed: usize,
}

/// Publishes up to `limit` dead letters of `source` on `bus` again, oldest first, one at a time
/// and in order, and removes each from `dead_letters` once the bus took it. An event the bus
/// rejects stays parked (logged and counted in [`RetryOutcome::failed`]), and the next is tried.
///
/// The event is removed only after the publish succeeded, so a crash in between publishes it
/// again on the next retry: at least once, never lost. The relay, a saga's outbox and a
/// projection runner all park with this in mind: `source` is the relay's name, `saga:<name>`,
/// or the projection's name.
///
/// # Errors
/// The dead-letter store's errors.
pub async fn retry_parked(
    dead_letters: &dyn DeadLetterStore,
    bus: &dyn EventBus,
    source: &str,
    limit: usize,
) -> Result<RetryOutcome> {
    let mut outcome = RetryOutcome::default();
    for parked in dead_letters.list(source, limit).await? {
        match bus.publish(parked.event.clone()).await {
            Ok(()) => {
                dead_letters.discard(parked.id).await?;
                outcome.published += 1;
                tracing::info!(source, event_id = %parked.event.id, "re-published a parked event");
            }
            Err(error) => {
                outcome.failed += 1;
                tracing::warn!(source, event_id = %parked.event.id, %error, "a parked event was rejected again; it stays parked");
            }
        }
    }
    Ok(outcome)
}
