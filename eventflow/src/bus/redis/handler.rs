//! Running handlers and small pieces shared by the subscription tasks.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tracing::Instrument;

use crate::bus::{BusError, BusErrorKind, Handler, Pattern};
use crate::event::Event;

/// What came of running a handler on one event.
pub(crate) enum Outcome {
    Handled,
    Failed(BusError),
}

/// Runs `handler` on `event`, turning an error or a panic into a [`BusError`] for `pattern`.
pub(crate) async fn run_handler(
    handler: &Arc<dyn Handler>,
    event: Arc<Event>,
    pattern: &Pattern,
) -> Outcome {
    let handler = handler.clone();
    let ev = event.clone();
    // Handler logs carry the event's id, type and correlation id.
    let span = tracing::debug_span!(
        "handle",
        event_id = %event.id,
        event_type = %event.event_type,
        correlation_id = event.correlation_id.as_deref(),
        pattern = pattern.as_str(),
    );
    // The call itself sits inside the async block so a panic in `handle` (before the future
    // exists) is caught as well as one while it runs.
    let result = std::panic::AssertUnwindSafe(async move { handler.handle(ev).await })
        .catch_unwind()
        .instrument(span)
        .await;
    match result {
        Ok(Ok(())) => Outcome::Handled,
        Ok(Err(e)) => Outcome::Failed(
            BusError::new(BusErrorKind::HandlerFailed, e.to_string())
                .for_event(&event)
                .for_pattern(pattern.as_str()),
        ),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            Outcome::Failed(
                BusError::new(BusErrorKind::HandlerPanicked, message)
                    .for_event(&event)
                    .for_pattern(pattern.as_str()),
            )
        }
    }
}

/// True once the subscription was cancelled (or its bus dropped).
pub(crate) fn cancelled(cancel: &watch::Receiver<bool>) -> bool {
    *cancel.borrow() || cancel.has_changed().is_err()
}

/// Backoff between reconnect attempts: 50 ms doubling to 1 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(5)).min(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(30), Duration::from_millis(1000));
    }
}
