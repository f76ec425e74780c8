//! Core NATS subscriptions: at most once; handler failures go to the error stream.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::BACKEND;
use super::publish::round_trip;
use super::subscribe::SubContext;
use crate::bus::BusErrorKind;
use crate::error::{Error, Result};
use crate::event::Event;

/// Subscribes to `subject` and spawns the delivery task. The server has processed the
/// SUBSCRIBE before this returns, so an event published right after (from any connection) is
/// delivered.
pub(super) async fn subscribe(
    client: &async_nats::Client,
    subject: String,
    mut ctx: SubContext,
    timeout: Duration,
) -> Result<JoinHandle<()>> {
    let mut subscriber = client
        .subscribe(subject)
        .await
        .map_err(|e| Error::backend(BACKEND, e))?;
    round_trip(client, timeout).await?;

    Ok(tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                biased;
                () = ctx.stopping() => break,
                m = subscriber.next() => m,
            };
            // `None`: the client was closed (or drained).
            let Some(message) = message else { break };
            if ctx.stopped() {
                break;
            }
            let event = match Event::from_json(&message.payload) {
                Ok(event) => Arc::new(event),
                Err(e) => {
                    ctx.report(
                        BusErrorKind::Decode,
                        None,
                        format!("undecodable message on {}: {e}", message.subject),
                    );
                    continue;
                }
            };
            // The subject already matched; this guards against an envelope whose type
            // disagrees with the subject it was published on.
            if !ctx.pattern.matches(&event.event_type) {
                continue;
            }
            let outcome = ctx.run_handler(event.clone()).await;
            if let Some(mut error) = outcome.to_bus_error(&event, ctx.pattern.as_str()) {
                error.message.push_str(" (core NATS does not redeliver)");
                ctx.reporter.report(error);
            }
        }
        // Dropping the subscriber sends UNSUB.
        drop(subscriber);
    }))
}
