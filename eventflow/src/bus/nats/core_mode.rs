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

/// Subscribes to `subject` (in queue group `queue` when given) and spawns the delivery task. The server has processed the
/// SUBSCRIBE before this returns, so an event published right after (from any connection) is
/// delivered.
pub(super) async fn subscribe(
    client: &async_nats::Client,
    subject: String,
    queue: Option<String>,
    mut ctx: SubContext,
    timeout: Duration,
) -> Result<JoinHandle<()>> {
    let subscribed = match queue {
        Some(queue) => client.queue_subscribe(subject, queue).await,
        None => client.subscribe(subject).await,
    };
    let mut subscriber = subscribed.map_err(|e| Error::backend(BACKEND, e))?;
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
            // Several patterns share one wider subscription: filter here.
            if !ctx.wants_subject(&message.subject) {
                continue;
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
            if !ctx.patterns.matches(&event.event_type) {
                continue;
            }
            let outcome = ctx.run_handler(event.clone()).await;
            if let Some(mut error) = outcome.to_bus_error(&event, ctx.patterns.label()) {
                error.message.push_str(" (core NATS does not redeliver)");
                ctx.reporter.report(error);
            }
        }
        // Dropping the subscriber sends UNSUB.
        drop(subscriber);
    }))
}
