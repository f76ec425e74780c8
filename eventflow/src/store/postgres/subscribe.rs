//! `subscribe`: catch up in batches, then follow the commit signal.

use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Handler, Subscription};
use crate::error::Result;
use crate::store::{EventCriteria, EventStore};

use super::PostgresEventStore;

/// Catch-up batch size when the criteria set no limit.
const DEFAULT_BATCH: usize = 1000;

pub(super) async fn subscribe(
    store: PostgresEventStore,
    criteria: EventCriteria,
    handler: Arc<dyn Handler>,
    poll: Duration,
) -> Result<Subscription> {
    let mut signal = store.commit_signal();
    let batch = criteria.limit.unwrap_or(DEFAULT_BATCH).max(1);
    let description = format!("postgres store subscription {criteria:?}");
    let task = tokio::spawn(async move {
        let mut position = criteria.after_position.unwrap_or(0);
        let mut query = criteria;
        query.limit = Some(batch);
        loop {
            // Mark the signal seen before reading, so a commit during the read wakes us again.
            signal.borrow_and_update();
            query.after_position = Some(position);
            let events = match store.load(&query).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(%error, "postgres store subscription: read failed, retrying");
                    tokio::time::sleep(poll.min(Duration::from_millis(200))).await;
                    continue;
                }
            };
            let full = events.len() >= batch;
            for event in events {
                position = event.position.unwrap_or(position);
                let (id, event_type) = (event.id, event.event_type.clone());
                if let Err(error) = handler.handle(Arc::new(event)).await {
                    tracing::warn!(%error, %id, event_type, "postgres store subscription: handler failed");
                }
            }
            if !full {
                let _ = tokio::time::timeout(poll, signal.changed()).await;
            }
        }
    });
    Ok(Subscription::new(description, move || task.abort()))
}
