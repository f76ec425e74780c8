//! Core NATS subscriptions: at most once; handler failures go to the error stream.
//!
//! Two tasks per subscription: a reader drains the client's subscription promptly into a
//! [`Buffer`] bounded by [`max_buffered_messages`](super::NatsConfig::max_buffered_messages) and
//! [`max_buffered_bytes`](super::NatsConfig::max_buffered_bytes), dropping (and counting) new
//! messages when it is full; the handler task takes from it. A slow handler therefore holds at
//! most the configured bound, never the client's whole backlog.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::BACKEND;
use super::config::NatsConfig;
use super::publish::round_trip;
use super::subscribe::SubContext;
use crate::bus::BusErrorKind;
use crate::bus::buffer::{Buffer, DropTally, dropped_message, sleep_until};
use crate::error::{Error, Result};
use crate::event::Event;

/// Subscribes to `subject` (in queue group `queue` when given) and spawns the delivery task. The server has processed the
/// SUBSCRIBE before this returns, so an event published right after (from any connection) is
/// delivered.
pub(super) async fn subscribe(
    client: &async_nats::Client,
    subject: String,
    queue: Option<String>,
    ctx: SubContext,
    config: &NatsConfig,
) -> Result<JoinHandle<()>> {
    let subscribed = match queue {
        Some(queue) => client.queue_subscribe(subject, queue).await,
        None => client.subscribe(subject).await,
    };
    let subscriber = subscribed.map_err(|e| Error::backend(BACKEND, e))?;
    round_trip(client, config.request_timeout).await?;

    let buffer = Arc::new(Buffer::new(
        config.max_buffered_messages,
        config.max_buffered_bytes,
    ));
    let reader = read(
        subscriber,
        ctx.clone(),
        buffer.clone(),
        (config.max_buffered_messages, config.max_buffered_bytes),
    );
    Ok(tokio::spawn(async move {
        let reader = tokio::spawn(reader);
        handle(ctx, &buffer).await;
        // The handler loop ends when the subscription stops (the reader stops too) or the
        // reader closed the buffer; either way the reader is done or about to be.
        buffer.close();
        let _ = reader.await;
    }))
}

/// Moves messages from the client into `buffer` until the subscription stops or the client
/// closes, dropping and counting those that do not fit.
async fn read(
    mut subscriber: async_nats::Subscriber,
    mut ctx: SubContext,
    buffer: Arc<Buffer<async_nats::Message>>,
    (max_messages, max_bytes): (usize, usize),
) {
    let mut tally = DropTally::default();
    let report = |ctx: &SubContext, tally: &mut DropTally| {
        if let Some((messages, bytes)) = tally.take() {
            ctx.report(
                BusErrorKind::Dropped,
                None,
                dropped_message(messages, bytes, max_messages, max_bytes),
            );
        }
    };
    loop {
        let message = tokio::select! {
            biased;
            () = ctx.stopping() => break,
            () = sleep_until(tally.deadline()) => {
                report(&ctx, &mut tally);
                continue;
            }
            m = subscriber.next() => m,
        };
        // `None`: the client was closed (or drained).
        let Some(message) = message else { break };
        // Several patterns share one wider subscription: filter here, before buffering.
        if !ctx.wants_subject(&message.subject) {
            continue;
        }
        let mut message = message;
        let size = message.payload.len();
        // Only this task pushes, so a message that fits now still fits when pushed.
        let accepted = buffer.fits(size) && {
            // The client's payload is a slice of its read buffer and keeps that whole
            // allocation (other messages' bytes included) alive: a copy of its own makes the
            // byte bound hold.
            message.payload = message.payload.to_vec().into();
            buffer.push(message, size)
        };
        if accepted {
            // Room again: the burst of drops (if any) is over.
            report(&ctx, &mut tally);
        } else {
            tally.record(size);
            if tally.due() {
                report(&ctx, &mut tally);
            }
        }
    }
    report(&ctx, &mut tally);
    buffer.close();
    // Dropping the subscriber sends UNSUB.
    drop(subscriber);
}

/// Hands buffered messages to the handler until the subscription stops or the buffer closes.
async fn handle(ctx: SubContext, buffer: &Buffer<async_nats::Message>) {
    while let Some(message) = buffer.pop().await {
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
        if !ctx.patterns.matches(&event.event_type) {
            continue;
        }
        let outcome = ctx.run_handler(event.clone()).await;
        if let Some(mut error) = outcome.to_bus_error(&event, ctx.patterns.label()) {
            error.message.push_str(" (core NATS does not redeliver)");
            ctx.reporter.report(error);
        }
    }
}
