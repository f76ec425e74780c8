//! JetStream: the stream (created or updated at connect), publish with PubAck (pipelined for
//! batches), and pull consumers (durable for named subscriptions, ephemeral otherwise) that ack on success, nak with backoff on failure, and
//! terminate (dead-letter) after `max_deliver` deliveries.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self as js, AckKind};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::publish::Outgoing;
use super::status::Reporter;
use super::subscribe::SubContext;
use super::{BACKEND, NatsConfig};
use crate::backoff::Backoff;
use crate::bus::{BusError, BusErrorKind};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::sync::lock;

/// How long the server keeps an unnamed subscription's ephemeral consumer without a pull
/// request before deleting it (`inactive_threshold`). A live subscription pulls far more often
/// (the pull stream renews its request every 30 s, and while a handler works); this only
/// cleans up after a process that stopped without deleting its consumer.
pub(super) const EPHEMERAL_INACTIVE_THRESHOLD: Duration = Duration::from_secs(300);

/// Pauses between attempts to restart a pull stream: 100 ms doubling to 5 s, with jitter.
const RESTART: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Pauses between retries of a JetStream publish that failed transiently: 50 ms doubling to
/// 1 s, with jitter.
const PUBLISH_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// The JetStream side of a bus.
pub(super) struct JetStream {
    context: js::Context,
    stream: stream::Stream,
    timeout: Duration,
    retry_for: Duration,
    /// The stream's leader as last seen, and counters for [`NatsHealth`](super::NatsHealth).
    pub(super) cluster: Arc<ClusterView>,
}

/// What the bus knows about the stream's place in a JetStream cluster.
#[derive(Default)]
pub(super) struct ClusterView {
    leader: Mutex<Option<String>>,
    leader_changes: AtomicU64,
    publish_retries: AtomicU64,
    /// The consumers this bus pulls from, with their leader as last seen (`None` without a
    /// cluster).
    consumers: Mutex<HashMap<String, Option<String>>>,
    consumer_leader_changes: AtomicU64,
}

impl ClusterView {
    pub(super) fn leader(&self) -> Option<String> {
        lock(&self.leader).clone()
    }

    pub(super) fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    pub(super) fn publish_retries(&self) -> u64 {
        self.publish_retries.load(Ordering::Relaxed)
    }

    pub(super) fn consumer_leader_changes(&self) -> u64 {
        self.consumer_leader_changes.load(Ordering::Relaxed)
    }

    /// Records a consumer this bus pulls from, with its leader at creation.
    fn consumer_created(&self, consumer: &str, leader: Option<String>) {
        lock(&self.consumers)
            .entry(consumer.to_owned())
            .or_insert(leader);
    }

    /// Records `leader` as elected for `consumer`; returns the previous leader when this
    /// bus pulls from the consumer and its leader changed.
    fn consumer_elected(&self, consumer: &str, leader: &str) -> Option<Option<String>> {
        let mut consumers = lock(&self.consumers);
        let current = consumers.get_mut(consumer)?;
        if current.as_deref() == Some(leader) {
            return None;
        }
        self.consumer_leader_changes.fetch_add(1, Ordering::Relaxed);
        Some(current.replace(leader.to_owned()))
    }

    /// Records `leader` as elected; returns the previous leader when it differs.
    fn elected(&self, leader: String) -> Option<Option<String>> {
        let mut current = lock(&self.leader);
        if current.as_deref() == Some(leader.as_str()) {
            return None;
        }
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
        Some(current.replace(leader))
    }
}

/// The part of a stream leader election advisory
/// (`$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.<stream>`) we use.
#[derive(serde::Deserialize)]
struct LeaderElected {
    leader: String,
}

/// The part of a consumer leader election advisory
/// (`$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.<stream>.<consumer>`) we use.
#[derive(serde::Deserialize)]
struct ConsumerLeaderElected {
    consumer: String,
    leader: String,
}

/// An event ready for (re)sending to JetStream: cheap to send again.
struct Pending {
    id: uuid::Uuid,
    subject: async_nats::Subject,
    payload: bytes::Bytes,
    /// The headers of the first attempt; retries rebuild them from `id`.
    headers: Option<async_nats::HeaderMap>,
}

impl Pending {
    fn new(out: Outgoing) -> Self {
        Pending {
            id: out.id,
            subject: out.subject.into(),
            payload: out.payload.into(),
            headers: Some(out.headers),
        }
    }

    fn message(&mut self) -> PublishMessage {
        let headers = self.headers.take().unwrap_or_else(|| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, self.id.to_string());
            headers
        });
        PublishMessage::build()
            .payload(self.payload.clone())
            .headers(headers)
    }
}

/// Reports a leader change of a consumer this bus pulls from, told by `payload` (a consumer
/// leader election advisory).
fn consumer_elected(cluster: &ClusterView, reporter: &Reporter, stream: &str, payload: &[u8]) {
    let Ok(elected) = serde_json::from_slice::<ConsumerLeaderElected>(payload) else {
        tracing::debug!("nats: unreadable consumer leader election advisory");
        return;
    };
    let Some(previous) = cluster.consumer_elected(&elected.consumer, &elected.leader) else {
        return;
    };
    let previous = previous.unwrap_or_else(|| "unknown".to_owned());
    let consumer = &elected.consumer;
    tracing::info!(%stream, %consumer, %previous, leader = %elected.leader, "nats: JetStream consumer leader changed");
    reporter.report(BusError::new(
        BusErrorKind::Failover,
        format!(
            "JetStream consumer {consumer:?} of stream {stream:?}: leader changed from \
             {previous} to {} (unacked messages are redelivered after ack_wait)",
            elected.leader
        ),
    ));
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
        let placement = (config.placement_cluster.is_some() || !config.placement_tags.is_empty())
            .then(|| stream::Placement {
                cluster: config.placement_cluster.clone(),
                tags: config.placement_tags.clone(),
            });
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
            num_replicas: config.stream_replicas,
            placement,
            ..Default::default()
        };
        context
            .create_or_update_stream(stream_config)
            .await
            .map_err(|e| {
                Error::backend(
                    BACKEND,
                    format!(
                        "cannot create or update JetStream stream {:?} with {} replica(s) (is \
                         JetStream enabled on the server, with enough servers?): {e}",
                        config.stream_name, config.stream_replicas
                    ),
                )
            })?;
        let stream = context
            .get_stream(&config.stream_name)
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        if let Some(subject) = &config.dead_letter_subject {
            ensure_dead_letter_stream(&context, config, subject).await?;
        }
        let cluster = Arc::new(ClusterView::default());
        if let Some(leader) = stream
            .cached_info()
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
        {
            *lock(&cluster.leader) = Some(leader);
        }
        Ok(JetStream {
            context,
            stream,
            timeout: config.request_timeout,
            retry_for: config.publish_retry_for,
            cluster,
        })
    }

    /// Subscribes to the stream's leader elections, before `connect` returns (so none after it
    /// is missed), and returns the task that reports them until `shutdown`.
    pub(super) async fn watch_leader(
        &self,
        config: &NatsConfig,
        reporter: Arc<Reporter>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<JoinHandle<()>> {
        let subject = format!(
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}",
            config.stream_name
        );
        let mut advisories = self
            .context
            .client()
            .subscribe(subject)
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        let mut consumer_advisories = self
            .context
            .client()
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{}.*",
                config.stream_name
            ))
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        let cluster = self.cluster.clone();
        let stream = config.stream_name.clone();
        Ok(tokio::spawn(async move {
            loop {
                let advisory = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    advisory = consumer_advisories.next() => match advisory {
                        Some(advisory) => {
                            consumer_elected(&cluster, &reporter, &stream, &advisory.payload);
                            continue;
                        }
                        None => return,
                    },
                    advisory = advisories.next() => match advisory {
                        Some(advisory) => advisory,
                        None => return,
                    },
                };
                let Ok(elected) = serde_json::from_slice::<LeaderElected>(&advisory.payload) else {
                    tracing::debug!("nats: unreadable leader election advisory");
                    continue;
                };
                if let Some(previous) = cluster.elected(elected.leader.clone()) {
                    let previous = previous.unwrap_or_else(|| "unknown".to_owned());
                    tracing::info!(%stream, %previous, leader = %elected.leader, "nats: JetStream stream leader changed");
                    reporter.report(BusError::new(
                        BusErrorKind::Failover,
                        format!(
                            "JetStream stream {stream:?}: leader changed from {previous} to {} \
                             (publishes in flight are retried for up to publish_retry_for; \
                             consumers resume on the new leader)",
                            elected.leader
                        ),
                    ));
                }
            }
        }))
    }

    /// Every subscription's consumer, for its leader changes.
    fn consumer_created(&self, consumer: &PullConsumer, name: &str) {
        let leader = consumer
            .cached_info()
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone());
        self.cluster.consumer_created(name, leader);
    }

    async fn send(&self, pending: &mut Pending) -> Result<PublishAckFuture, PublishError> {
        self.context
            .send_publish(pending.subject.clone(), pending.message())
            .await
    }

    fn acked(ack: PublishAck, id: uuid::Uuid) {
        if ack.duplicate {
            tracing::debug!(event_id = %id, seq = ack.sequence, "nats: duplicate event stored once");
        }
    }

    /// Publishes one event and waits for the server to store it, retrying transient failures
    /// for up to `publish_retry_for`.
    pub(super) async fn publish(&self, out: Outgoing) -> Result<()> {
        let mut pending = Pending::new(out);
        let first = match self.send(&mut pending).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match first {
            Ok(ack) => {
                Self::acked(ack, pending.id);
                Ok(())
            }
            Err(e) => self.retry(pending, e).await,
        }
    }

    /// After a failed attempt: sends `pending` again (same `Nats-Msg-Id`) while the failure is
    /// transient and `publish_retry_for` has not passed.
    async fn retry(&self, mut pending: Pending, mut error: PublishError) -> Result<()> {
        let size = pending.payload.len();
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut attempt = 0u32;
        while is_transient(&error) && tokio::time::Instant::now() < deadline {
            attempt += 1;
            self.cluster.publish_retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(event_id = %pending.id, attempt, "nats: retrying JetStream publish after: {error}");
            tokio::time::sleep(PUBLISH_RETRY.next_delay(attempt)).await;
            let outcome = match self.send(&mut pending).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(ack) => {
                    Self::acked(ack, pending.id);
                    return Ok(());
                }
                Err(e) => error = e,
            }
        }
        Err(self.map_publish_error(error, pending.id, size))
    }

    /// Publishes in order with at most `window` acknowledgements outstanding. An event whose
    /// acknowledgement failed transiently is sent again before the next one is waited for, so
    /// it may be stored after events that followed it in the batch.
    pub(super) async fn publish_pipelined(
        &self,
        events: VecDeque<Outgoing>,
        window: usize,
    ) -> Result<()> {
        let mut in_flight: VecDeque<(Pending, PublishAckFuture)> =
            VecDeque::with_capacity(window.min(events.len()));
        for out in events {
            if in_flight.len() >= window
                && let Some((pending, ack)) = in_flight.pop_front()
            {
                self.settle(pending, ack, &mut in_flight).await?;
            }
            let mut pending = Pending::new(out);
            match self.send(&mut pending).await {
                Ok(ack) => in_flight.push_back((pending, ack)),
                Err(e) => self.retry(pending, e).await?,
            }
        }
        while let Some((pending, ack)) = in_flight.pop_front() {
            self.settle(pending, ack, &mut in_flight).await?;
        }
        Ok(())
    }

    /// Waits for one acknowledgement. When it failed, the publishes still in flight most likely
    /// failed with it (a server restart, a leader change), and each of their acknowledgements
    /// would only time out in turn (an acknowledgement's timeout starts when it is awaited): so
    /// once this one went through again, the others are sent again at once (same
    /// `Nats-Msg-Id`: one the server did store is stored once), without waiting for them.
    async fn settle(
        &self,
        pending: Pending,
        ack: PublishAckFuture,
        in_flight: &mut VecDeque<(Pending, PublishAckFuture)>,
    ) -> Result<()> {
        match ack.await {
            Ok(ack) => {
                Self::acked(ack, pending.id);
                Ok(())
            }
            Err(e) => {
                self.retry(pending, e).await?;
                for (pending, _lost) in std::mem::take(in_flight) {
                    self.resend(pending).await?;
                }
                Ok(())
            }
        }
    }

    /// Sends `pending` again and waits for its acknowledgement, retrying transient failures.
    async fn resend(&self, mut pending: Pending) -> Result<()> {
        let outcome = match self.send(&mut pending).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(ack) => {
                Self::acked(ack, pending.id);
                Ok(())
            }
            Err(e) => self.retry(pending, e).await,
        }
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

    /// Creates the subscription's consumer, then spawns the delivery task.
    ///
    /// - Named: creates (or binds to) the durable consumer `name`. A new one starts at the
    ///   stream's end (`DeliverPolicy::New`): it sees every event published after `subscribe`
    ///   returns, none from before. An existing one resumes after its last acknowledged event;
    ///   one whose filter subject differs from `filter_subject` is refused with
    ///   [`Error::InvalidArgument`].
    /// - Unnamed: creates an ephemeral consumer with a fresh random name, for this
    ///   subscription alone, starting at the stream's end. It is deleted when the subscription
    ///   stops (unsubscribe, drop, `close`), and the server deletes it by itself after
    ///   [`EPHEMERAL_INACTIVE_THRESHOLD`] without a pull (a process that died). Nothing shares
    ///   it and nothing resumes it.
    pub(super) async fn subscribe(
        &self,
        config: &NatsConfig,
        name: Option<&str>,
        filter_subject: String,
        ctx: SubContext,
    ) -> Result<JoinHandle<()>> {
        let base = pull::Config {
            filter_subject: filter_subject.clone(),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            max_ack_pending: config.max_ack_pending,
            ..Default::default()
        };
        let (consumer, name, ephemeral): (PullConsumer, String, bool) = match name {
            Some(name) => {
                let consumer = self
                    .stream
                    .get_or_create_consumer(
                        name,
                        pull::Config {
                            durable_name: Some(name.to_owned()),
                            ..base
                        },
                    )
                    .await
                    .map_err(|e| {
                        Error::backend(
                            BACKEND,
                            format!("cannot create durable consumer {name:?}: {e}"),
                        )
                    })?;
                // A consumer of that name may exist with another filter (the same name
                // subscribed to other patterns): binding to it would silently miss events
                // outside its filter.
                let bound = &consumer.cached_info().config.filter_subject;
                if *bound != filter_subject {
                    return Err(Error::InvalidArgument(format!(
                        "nats: durable consumer {name:?} exists with filter subject {bound:?}, \
                         not {filter_subject:?}: its name belongs to other patterns (use another \
                         name, or delete the consumer)"
                    )));
                }
                (consumer, name.to_owned(), false)
            }
            None => {
                // Named by us (not by the server) so that it can be deleted on stop and its
                // MaxDeliveries advisories subscribed to before the first delivery.
                let name = format!("ephemeral-{}", uuid::Uuid::new_v4().simple());
                let consumer = self
                    .stream
                    .create_consumer(pull::Config {
                        name: Some(name.clone()),
                        inactive_threshold: EPHEMERAL_INACTIVE_THRESHOLD,
                        ..base
                    })
                    .await
                    .map_err(|e| {
                        Error::backend(BACKEND, format!("cannot create ephemeral consumer: {e}"))
                    })?;
                (consumer, name, true)
            }
        };
        self.consumer_created(&consumer, &name);
        // Subscribed before the first pull: a pull may make the server give up on a message
        // whose deliveries are used up, and that advisory must not be missed.
        // Messages the server gives up on without a verdict from us (a process that died or
        // stopped during the last delivery): one subscriber of the consumer (a queue group)
        // hears of each and reports and dead-letters it.
        let advisory_subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{name}",
            config.stream_name
        );
        let advisories = self
            .context
            .client()
            .queue_subscribe(advisory_subject, format!("{name}-max-deliveries"))
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        let pull_batch = config.pull_batch.max(1);
        let messages = pull_messages(&consumer, pull_batch)
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        let worker = Worker {
            ctx,
            context: self.context.clone(),
            stream: self.stream.clone(),
            max_deliver: config.max_deliver,
            redelivery: Backoff::new(config.retry_backoff, config.max_retry_backoff),
            dead_letter_subject: config.dead_letter_subject.clone(),
            consumer_name: name,
            ephemeral,
            progress_every: (config.ack_wait / 2).max(Duration::from_millis(10)),
            pull_batch,
            waiting: VecDeque::new(),
        };
        Ok(tokio::spawn(worker.run(consumer, messages, advisories)))
    }
}

/// The pull stream of a subscription: at most `batch` messages asked for at once.
async fn pull_messages(
    consumer: &PullConsumer,
    batch: usize,
) -> std::result::Result<pull::Stream, async_nats::jetstream::consumer::StreamError> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
}

/// True for the publish failures a leader change, a lost server or a reconnect cause, which a
/// retry of the same message (same `Nats-Msg-Id`) may cure: no PubAck in time, no responder
/// for the subject (no stream leader at that moment), a broken connection, and the JetStream
/// cluster errors "not available", "not leader" and "no peers".
fn is_transient(e: &PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => true,
        PublishErrorKind::Other => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<js::Error>())
            .is_some_and(|e| {
                use js::ErrorCode as C;
                [
                    C::CLUSTER_NOT_AVAILABLE,
                    C::CLUSTER_NOT_LEADER,
                    C::CLUSTER_NO_PEERS,
                    C::CLUSTER_NOT_ACTIVE,
                ]
                .contains(&e.error_code())
            }),
        _ => false,
    }
}

/// Makes sure a stream stores `subject`: the one that captures it already, or a new one.
async fn ensure_dead_letter_stream(
    context: &js::Context,
    config: &NatsConfig,
    subject: &str,
) -> Result<()> {
    if context.stream_by_subject(subject).await.is_ok() {
        return Ok(());
    }
    let name = config
        .dead_letter_stream
        .clone()
        .unwrap_or_else(|| format!("{}-DLQ", config.stream_name));
    context
        .create_or_update_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.to_owned()],
            storage: if config.memory_storage {
                StorageType::Memory
            } else {
                StorageType::File
            },
            duplicate_window: config.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            Error::backend(
                BACKEND,
                format!("cannot create dead-letter stream {name:?} for {subject:?}: {e}"),
            )
        })?;
    Ok(())
}

/// The fail point between a dead letter's PubAck and the original's Term (test-only).
#[cfg(feature = "testing")]
const AFTER_DEAD_LETTER: &str = "jetstream.after_dead_letter";

/// Test-only, compiled with the `testing` feature alone: when the variable
/// `EVENTFLOW_FAILPOINT` equals `name`, writes `eventflow: fail point <name> reached` to
/// stderr (past the test harness's capture) and never returns, so that a test can SIGKILL the
/// process at exactly this point (only this task stops; nothing after the point is sent).
/// Without the variable, or in a build without `testing`, nothing happens.
#[cfg(feature = "testing")]
async fn fail_point(name: &str) {
    if std::env::var("EVENTFLOW_FAILPOINT").is_ok_and(|v| v == name) {
        use std::io::Write;
        let mut stderr = std::io::stderr();
        let _ = writeln!(stderr, "eventflow: fail point {name} reached");
        let _ = stderr.flush();
        std::future::pending::<()>().await;
    }
}

/// The part of a MaxDeliveries advisory we use.
#[derive(serde::Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: i64,
}

struct Worker {
    ctx: SubContext,
    context: js::Context,
    stream: stream::Stream,
    max_deliver: i64,
    /// The nak delay after a failed delivery.
    redelivery: Backoff,
    dead_letter_subject: Option<String>,
    consumer_name: String,
    /// An unnamed subscription's consumer, deleted when the subscription stops.
    ephemeral: bool,
    /// How often the messages held (handled or waiting) get an in-progress ack.
    progress_every: Duration,
    pull_batch: usize,
    /// Pulled, not yet handled, in order.
    waiting: VecDeque<js::Message>,
}

/// Why a dead letter is written.
struct Verdict<'a> {
    delivered: i64,
    failure: &'a str,
}

impl Worker {
    async fn run(
        mut self,
        consumer: PullConsumer,
        mut messages: pull::Stream,
        mut advisories: async_nats::Subscriber,
    ) {
        let mut ended = false;
        loop {
            if ended {
                // The pull stream ended (terminal error): start a new one.
                tracing::debug!(consumer = %self.consumer_name, "nats: pull stream ended");
                match self.restart(&consumer).await {
                    Some(m) => {
                        messages = m;
                        ended = false;
                    }
                    None => break,
                }
            }
            let message = match self.waiting.pop_front() {
                Some(m) => m,
                None => {
                    let next = tokio::select! {
                        biased;
                        () = self.ctx.stopping() => break,
                        Some(advisory) = advisories.next() => {
                            self.on_advisory(&advisory).await;
                            continue;
                        }
                        next = messages.next() => next,
                    };
                    match next {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => {
                            if self.pull_error(&e) {
                                break;
                            }
                            continue;
                        }
                        None => {
                            ended = true;
                            continue;
                        }
                    }
                }
            };
            if self.ctx.stopped() {
                self.waiting.push_front(message);
                break;
            }
            ended |= self.process(message, &mut messages).await;
        }
        // Return what was already pulled so another subscriber gets it without waiting for
        // ack_wait.
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            self.waiting.push_back(message);
        }
        while let Some(message) = self.waiting.pop_front() {
            self.hand_back(message).await;
        }
        if self.ephemeral {
            // Nobody else reads it, and nobody will resume it. Should this fail (server
            // unreachable), the server deletes it after the inactive threshold.
            if let Err(e) = self.stream.delete_consumer(&self.consumer_name).await {
                tracing::debug!(consumer = %self.consumer_name, "nats: cannot delete ephemeral consumer: {e}");
            }
        }
    }

    /// Handles a pull stream error; true when the subscription has ended.
    fn pull_error(&self, e: &pull::MessagesError) -> bool {
        match e.kind() {
            // The pull stream re-issues its request itself (also after a reconnect).
            MessagesErrorKind::MissingHeartbeat => {
                tracing::debug!(consumer = %self.consumer_name, "nats: missed heartbeat");
                false
            }
            MessagesErrorKind::ConsumerDeleted => {
                self.ctx.report(
                    BusErrorKind::Other,
                    None,
                    format!(
                        "consumer {:?} was deleted on the server; the subscription has ended",
                        self.consumer_name
                    ),
                );
                true
            }
            _ => {
                tracing::debug!(consumer = %self.consumer_name, "nats: pull error: {e}");
                false
            }
        }
    }

    /// Gives a pulled message back on stop: a nak, so another subscriber gets it at once;
    /// unless its deliveries are used up, when a nak would leave it to the server's
    /// MaxDeliveries and nobody would handle it: then it is dead-lettered, terminated and
    /// reported.
    async fn hand_back(&self, message: js::Message) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        if self.max_deliver > 0 && delivered >= self.max_deliver {
            let failure = "its last delivery was handed back unhandled when the subscription \
                           stopped";
            let event = Event::from_json(&message.payload).ok();
            self.give_up(&message, event.as_ref(), Verdict { delivered, failure })
                .await;
        } else {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// A fresh pull stream, retried until it works or the subscription stops.
    async fn restart(&mut self, consumer: &PullConsumer) -> Option<pull::Stream> {
        let mut delays = RESTART.delays();
        loop {
            match pull_messages(consumer, self.pull_batch).await {
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

    /// Handles one message; while the handler runs, every `progress_every` it moves what the
    /// pull stream has received into `waiting` and sends an in-progress ack for the message
    /// and every waiting one, so none of them is redelivered while this process holds it.
    /// Returns true when the pull stream ended meanwhile.
    async fn process(&mut self, message: js::Message, messages: &mut pull::Stream) -> bool {
        // A consumer of several patterns filters on a wider subject (NATS 2.9 has one filter
        // subject per consumer): what none of them matches is acknowledged unhandled.
        if !self.ctx.wants_subject(&message.subject) {
            let _ = message.ack().await;
            return false;
        }
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let event = match Event::from_json(&message.payload) {
            Ok(event) => Arc::new(event),
            Err(e) => {
                // Redelivering bytes that do not decode cannot help.
                let failure = format!("undecodable message on {}: {e}", message.subject);
                self.give_up_as(
                    BusErrorKind::Decode,
                    &message,
                    None,
                    Verdict {
                        delivered,
                        failure: &failure,
                    },
                )
                .await;
                return false;
            }
        };
        if !self.ctx.patterns.matches(&event.event_type) {
            let _ = message.ack().await;
            return false;
        }
        let mut ended = false;
        let outcome = {
            let handler = self.ctx.run_handler(event.clone());
            tokio::pin!(handler);
            let mut tick = tokio::time::interval(self.progress_every);
            tick.tick().await; // the first tick is immediate
            loop {
                tokio::select! {
                    outcome = &mut handler => break outcome,
                    _ = tick.tick() => {
                        while !ended {
                            match messages.next().now_or_never() {
                                Some(Some(Ok(m))) => self.waiting.push_back(m),
                                Some(Some(Err(_))) => {}
                                Some(None) => ended = true,
                                None => break,
                            }
                        }
                        let _ = message.ack_with(AckKind::Progress).await;
                        for waiting in &self.waiting {
                            let _ = waiting.ack_with(AckKind::Progress).await;
                        }
                    }
                }
            }
        };
        let (Some(kind), Some(failure)) = (outcome.kind(), outcome.failure()) else {
            if let Err(e) = message.ack().await {
                // The server will redeliver after ack_wait: at least once.
                tracing::debug!(event_id = %event.id, "nats: ack failed: {e}");
            }
            return ended;
        };
        if self.max_deliver > 0 && delivered >= self.max_deliver {
            self.give_up(
                &message,
                Some(&event),
                Verdict {
                    delivered,
                    failure: &failure,
                },
            )
            .await;
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
        ended
    }

    async fn give_up(&self, message: &js::Message, event: Option<&Event>, verdict: Verdict<'_>) {
        self.give_up_as(BusErrorKind::DeadLettered, message, event, verdict)
            .await;
    }

    /// Dead-letters (published through JetStream, PubAck awaited) and only then terminates
    /// and reports. When the dead letter cannot be stored the message is not terminated: a
    /// nak hands it back (redelivered, or given up on by the server and then seen here as a
    /// MaxDeliveries advisory), and the failure is reported.
    async fn give_up_as(
        &self,
        kind: BusErrorKind,
        message: &js::Message,
        event: Option<&Event>,
        verdict: Verdict<'_>,
    ) {
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let headers = message.headers.clone().unwrap_or_default();
        let stored = self
            .dead_letter(
                headers,
                message.payload.to_vec(),
                &message.subject,
                sequence,
                &verdict,
            )
            .await;
        if let Err(e) = stored {
            let _ = message.ack_with(AckKind::Nak(None)).await;
            self.ctx.report(
                BusErrorKind::Other,
                event,
                format!("not terminated: cannot store the dead letter: {e}"),
            );
            return;
        }
        #[cfg(feature = "testing")]
        fail_point(AFTER_DEAD_LETTER).await;
        let _ = message.ack_with(AckKind::Term).await;
        self.ctx
            .report(kind, event, self.given_up_message(&verdict));
    }

    fn given_up_message(&self, verdict: &Verdict<'_>) -> String {
        format!(
            "given up after {} deliveries{}: {}",
            verdict.delivered,
            match &self.dead_letter_subject {
                Some(s) => format!(" (published to {s})"),
                None => String::new(),
            },
            verdict.failure
        )
    }

    /// A message the server gave up on by itself (MaxDeliver reached with no ack and no
    /// term): read it from the stream, dead-letter it and report it.
    async fn on_advisory(&self, advisory: &async_nats::Message) {
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveriesAdvisory>(&advisory.payload)
        else {
            tracing::debug!(consumer = %self.consumer_name, "nats: unreadable advisory");
            return;
        };
        let failure = "the server gave up after MaxDeliver deliveries without an ack (the \
                       handling process died or stopped during the last delivery)";
        let verdict = Verdict {
            delivered: advisory.deliveries,
            failure,
        };
        let original = match self.stream.get_raw_message(advisory.stream_seq).await {
            Ok(m) => m,
            Err(e) => {
                self.ctx.report(
                    BusErrorKind::DeadLettered,
                    None,
                    format!(
                        "{} (stream sequence {}; the message is no longer readable: {e})",
                        self.given_up_message(&verdict),
                        advisory.stream_seq
                    ),
                );
                return;
            }
        };
        let event = Event::from_json(&original.payload).ok();
        let stored = self
            .dead_letter(
                original.headers.clone(),
                original.payload.to_vec(),
                &original.subject,
                original.sequence,
                &verdict,
            )
            .await;
        let mut message = self.given_up_message(&verdict);
        if let Err(e) = stored {
            message.push_str(&format!(" (the dead letter could not be stored: {e})"));
        }
        self.ctx
            .report(BusErrorKind::DeadLettered, event.as_ref(), message);
    }

    /// Publishes the original bytes to the dead-letter subject through JetStream, with the
    /// failure in headers, and waits for its PubAck. `Nats-Msg-Id` is
    /// `<consumer>:<stream sequence>`, so a retry (or a second report of the same message)
    /// stores it once. Nothing to do without a dead-letter subject.
    async fn dead_letter(
        &self,
        mut headers: async_nats::HeaderMap,
        payload: Vec<u8>,
        subject: &str,
        sequence: u64,
        verdict: &Verdict<'_>,
    ) -> Result<()> {
        let Some(dead_letters) = &self.dead_letter_subject else {
            return Ok(());
        };
        // Header values cannot hold line breaks.
        let failure: String = verdict
            .failure
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1024)
            .collect();
        headers.insert("Eventflow-Error", failure);
        headers.insert("Eventflow-Deliveries", verdict.delivered.to_string());
        headers.insert("Eventflow-Subject", subject);
        headers.insert("Eventflow-Consumer", self.consumer_name.as_str());
        headers.insert("Eventflow-Stream-Sequence", sequence.to_string());
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{sequence}", self.consumer_name).as_str(),
        );
        let ack = self
            .context
            .publish_with_headers(dead_letters.clone(), headers, payload.into())
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        ack.await.map_err(|e| Error::backend(BACKEND, e))?;
        Ok(())
    }
}
