//! JetStream: the stream (created or updated at connect), publish with PubAck (pipelined for
//! batches), and durable pull consumers that ack on success, nak with backoff on failure, and
//! terminate (dead-letter) after `max_deliver` deliveries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self as js, AckKind};
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinHandle;

use super::publish::Outgoing;
use super::subscribe::SubContext;
use super::{BACKEND, NatsConfig};
use crate::backoff::Backoff;
use crate::bus::BusErrorKind;
use crate::error::{Error, Result};
use crate::event::Event;

/// Pauses between attempts to restart a pull stream: 100 ms doubling to 5 s, with jitter.
const RESTART: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// The JetStream side of a bus.
pub(super) struct JetStream {
    context: js::Context,
    stream: stream::Stream,
    timeout: Duration,
}

impl JetStream {
    /// Creates or updates the stream so that running `connect` twice (or from several
    /// processes) is harmless.
    pub(super) async fn setup(client: &async_nats::Client, config: &NatsConfig) -> Result<Self> {
        let context = js::context::ContextBuilder::new()
            .timeout(config.request_timeout)
            // Bounds acks in flight over all publishers of this bus; waits rather than fails.
            .max_ack_inflight(config.publish_window.max(4096))
            .backpressure_on_inflight(true)
            .build(client.clone());
        let stream_config = stream::Config {
            name: config.stream_name.clone(),
            subjects: config.effective_stream_subjects(),
            storage: if config.memory_storage {
                StorageType::Memory
            } else {
                StorageType::File
            },
            duplicate_window: config.duplicate_window,
            max_age: config.max_age,
            ..Default::default()
        };
        context
            .create_or_update_stream(stream_config)
            .await
            .map_err(|e| {
                Error::backend(
                    BACKEND,
                    format!(
                        "cannot create or update JetStream stream {:?} (is JetStream enabled on \
                         the server?): {e}",
                        config.stream_name
                    ),
                )
            })?;
        let stream = context
            .get_stream(&config.stream_name)
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        Ok(JetStream {
            context,
            stream,
            timeout: config.request_timeout,
        })
    }

    async fn send(&self, out: Outgoing) -> Result<PublishAckFuture> {
        let id = out.id;
        let size = out.payload.len();
        self.context
            .send_publish(
                out.subject,
                PublishMessage::build()
                    .payload(out.payload.into())
                    .headers(out.headers),
            )
            .await
            .map_err(|e| self.map_publish_error(e, id, size))
    }

    async fn wait(&self, ack: PublishAckFuture, id: uuid::Uuid) -> Result<()> {
        let ack = ack.await.map_err(|e| self.map_publish_error(e, id, 0))?;
        if ack.duplicate {
            tracing::debug!(event_id = %id, seq = ack.sequence, "nats: duplicate event stored once");
        }
        Ok(())
    }

    /// Publishes one event and waits for the server to store it.
    pub(super) async fn publish(&self, out: Outgoing) -> Result<()> {
        let id = out.id;
        let ack = self.send(out).await?;
        self.wait(ack, id).await
    }

    /// Publishes in order with at most `window` acknowledgements outstanding.
    pub(super) async fn publish_pipelined(
        &self,
        events: VecDeque<Outgoing>,
        window: usize,
    ) -> Result<()> {
        let mut in_flight = VecDeque::with_capacity(window.min(events.len()));
        for out in events {
            if in_flight.len() >= window
                && let Some((id, ack)) = in_flight.pop_front()
            {
                self.wait(ack, id).await?;
            }
            let id = out.id;
            in_flight.push_back((id, self.send(out).await?));
        }
        while let Some((id, ack)) = in_flight.pop_front() {
            self.wait(ack, id).await?;
        }
        Ok(())
    }

    fn map_publish_error(&self, e: PublishError, id: uuid::Uuid, size: usize) -> Error {
        match e.kind() {
            PublishErrorKind::TimedOut => Error::Timeout {
                operation: "nats JetStream publish acknowledgement",
                after: self.timeout,
            },
            PublishErrorKind::MaxPayloadExceeded => Error::EventTooLarge {
                id,
                size,
                limit: self.context.client().max_payload(),
            },
            _ => Error::backend(BACKEND, e),
        }
    }

    /// Creates (or binds to) the durable consumer `name`, then spawns the delivery task.
    ///
    /// A new consumer starts at the stream's end (`DeliverPolicy::New`): it sees every event
    /// published after `subscribe` returns, none from before. An existing one resumes after
    /// its last acknowledged event; one whose filter subject differs from `filter_subject` is
    /// refused with [`Error::InvalidArgument`].
    pub(super) async fn subscribe(
        &self,
        config: &NatsConfig,
        name: &str,
        filter_subject: String,
        ctx: SubContext,
    ) -> Result<JoinHandle<()>> {
        let consumer: PullConsumer = self
            .stream
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subject: filter_subject.clone(),
                    deliver_policy: DeliverPolicy::New,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_deliver: config.max_deliver,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                Error::backend(
                    BACKEND,
                    format!("cannot create durable consumer {name:?}: {e}"),
                )
            })?;
        // A consumer of that name may exist with another filter (the same name subscribed to
        // other patterns): binding to it would silently miss events outside its filter.
        let bound = &consumer.cached_info().config.filter_subject;
        if *bound != filter_subject {
            return Err(Error::InvalidArgument(format!(
                "nats: durable consumer {name:?} exists with filter subject {bound:?}, not \
                 {filter_subject:?}: its name belongs to other patterns (use another name, or \
                 delete the consumer)"
            )));
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        let worker = Worker {
            ctx,
            client: self.context.client(),
            max_deliver: config.max_deliver,
            redelivery: Backoff::new(config.retry_backoff, config.max_retry_backoff),
            dead_letter_subject: config.dead_letter_subject.clone(),
            consumer_name: name.to_owned(),
        };
        Ok(tokio::spawn(worker.run(consumer, messages)))
    }
}

struct Worker {
    ctx: SubContext,
    client: async_nats::Client,
    max_deliver: i64,
    /// The nak delay after a failed delivery.
    redelivery: Backoff,
    dead_letter_subject: Option<String>,
    consumer_name: String,
}

impl Worker {
    async fn run(mut self, consumer: PullConsumer, mut messages: pull::Stream) {
        loop {
            let next = tokio::select! {
                biased;
                () = self.ctx.stopping() => break,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    if self.ctx.stopped() {
                        // Hand it back now rather than after ack_wait.
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        break;
                    }
                    self.process(message).await;
                }
                Some(Err(e)) => match e.kind() {
                    // The pull stream re-issues its request itself (also after a reconnect).
                    MessagesErrorKind::MissingHeartbeat => {
                        tracing::debug!(consumer = %self.consumer_name, "nats: missed heartbeat");
                    }
                    MessagesErrorKind::ConsumerDeleted => {
                        self.ctx.report(
                            BusErrorKind::Other,
                            None,
                            format!(
                                "durable consumer {:?} was deleted on the server; the \
                                 subscription has ended",
                                self.consumer_name
                            ),
                        );
                        break;
                    }
                    _ => tracing::debug!(consumer = %self.consumer_name, "nats: pull error: {e}"),
                },
                None => {
                    // The pull stream ended (terminal error): start a new one.
                    tracing::debug!(consumer = %self.consumer_name, "nats: pull stream ended");
                    match self.restart(&consumer).await {
                        Some(m) => messages = m,
                        None => break,
                    }
                }
            }
        }
        // Return what was already pulled so another subscriber gets it without waiting for
        // ack_wait.
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// A fresh pull stream, retried until it works or the subscription stops.
    async fn restart(&mut self, consumer: &PullConsumer) -> Option<pull::Stream> {
        let mut delays = RESTART.delays();
        loop {
            match consumer.messages().await {
                Ok(m) => return Some(m),
                Err(e) => {
                    tracing::debug!(consumer = %self.consumer_name, "nats: cannot restart pull: {e}");
                }
            }
            tokio::select! {
                () = self.ctx.stopping() => return None,
                () = tokio::time::sleep(delays.next_delay()) => {}
            }
        }
    }

    async fn process(&self, message: js::Message) {
        // A consumer of several patterns filters on a wider subject (NATS 2.9 has one filter
        // subject per consumer): what none of them matches is acknowledged unhandled.
        if !self.ctx.wants_subject(&message.subject) {
            let _ = message.ack().await;
            return;
        }
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let event = match Event::from_json(&message.payload) {
            Ok(event) => Arc::new(event),
            Err(e) => {
                // Redelivering bytes that do not decode cannot help.
                let _ = message.ack_with(AckKind::Term).await;
                self.ctx.report(
                    BusErrorKind::Decode,
                    None,
                    format!("undecodable message on {} terminated: {e}", message.subject),
                );
                self.dead_letter(&message, delivered, &e.to_string()).await;
                return;
            }
        };
        if !self.ctx.patterns.matches(&event.event_type) {
            let _ = message.ack().await;
            return;
        }
        let outcome = self.ctx.run_handler(event.clone()).await;
        let (Some(kind), Some(failure)) = (outcome.kind(), outcome.failure()) else {
            if let Err(e) = message.ack().await {
                // The server will redeliver after ack_wait: at least once.
                tracing::debug!(event_id = %event.id, "nats: ack failed: {e}");
            }
            return;
        };
        if self.max_deliver > 0 && delivered >= self.max_deliver {
            let _ = message.ack_with(AckKind::Term).await;
            self.ctx.report(
                BusErrorKind::DeadLettered,
                Some(&event),
                format!(
                    "given up after {delivered} deliveries{}: {failure}",
                    match &self.dead_letter_subject {
                        Some(s) => format!(" (published to {s})"),
                        None => String::new(),
                    }
                ),
            );
            self.dead_letter(&message, delivered, &failure).await;
        } else {
            let attempt = u32::try_from(delivered).unwrap_or(u32::MAX);
            let delay = self.redelivery.next_delay(attempt);
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            self.ctx.report(
                kind,
                Some(&event),
                format!("{failure} (delivery {delivered}; redelivering in {delay:?})"),
            );
        }
    }

    /// Publishes the original bytes to the dead-letter subject with the failure in headers.
    async fn dead_letter(&self, message: &js::Message, delivered: i64, failure: &str) {
        let Some(subject) = &self.dead_letter_subject else {
            return;
        };
        let mut headers = message.headers.clone().unwrap_or_default();
        // Header values cannot hold line breaks.
        let failure: String = failure
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1024)
            .collect();
        headers.insert("Eventflow-Error", failure);
        headers.insert("Eventflow-Deliveries", delivered.to_string());
        headers.insert("Eventflow-Subject", message.subject.as_str());
        headers.insert("Eventflow-Consumer", self.consumer_name.as_str());
        if let Err(e) = self
            .client
            .publish_with_headers(subject.clone(), headers, message.payload.clone())
            .await
        {
            self.ctx.report(
                BusErrorKind::Other,
                None,
                format!("cannot publish to dead-letter subject {subject}: {e}"),
            );
        }
    }
}
