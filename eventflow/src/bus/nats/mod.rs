//! [`NatsBus`]: the event bus over NATS, core (at most once) or JetStream (at least once).
//!
//! Every event travels as its JSON envelope ([`Event::to_json`]) on the subject
//! `<subject_prefix>.<event type>`, with the event id also in the `Nats-Msg-Id` header (which
//! JetStream uses to store an event published twice within the duplicate window once).
//! Subscription patterns map to NATS wildcards with the same meaning: `*` is
//! `<prefix>.>`, `order.*` is `<prefix>.order.*`, `order.>` is `<prefix>.order.>`.
//!
//! | | core (`enable_jetstream: false`) | JetStream (`enable_jetstream: true`) |
//! |---|---|---|
//! | delivery | at most once | at least once |
//! | `publish` returns | once the client has queued the event | once the server stored it (PubAck) |
//! | handler `Err` / panic | reported on [`errors`](EventBus::errors) | reported, then nak'ed and redelivered with backoff |
//! | after `max_deliver` failures | — | terminated, reported as `DeadLettered`, published to `dead_letter_subject` |
//! | restart | events published meanwhile are missed | a durable consumer resumes where it left off |
//!
//! **Publishing while disconnected.** Core: the client buffers the event and sends it once
//! reconnected; `publish` waits while that buffer is full, up to `request_timeout`, then fails
//! with [`Error::Timeout`]. JetStream: `publish` waits up to `request_timeout` for the PubAck and
//! otherwise fails with [`Error::Timeout`] — it never reports success for an event the server did
//! not acknowledge. Retrying with the same event (same id) inside the duplicate window is safe.
//!
//! ```no_run
//! use eventflow::bus::nats::{NatsBus, NatsConfig};
//! use eventflow::{Event, EventBus, EventBusExt, sync_handler};
//!
//! # async fn run() -> eventflow::Result<()> {
//! let bus = NatsBus::connect(NatsConfig::jetstream("nats://127.0.0.1:4222")).await?;
//! bus.on("order.*", sync_handler(|e| {
//!     tracing::info!(id = %e.id, "got {}", e.event_type);
//!     Ok(())
//! }))
//! .await?
//! .detach();
//! bus.publish(Event::new("order.created", serde_json::json!({ "id": 1 }))?).await?;
//! assert!(bus.is_connected());
//! bus.close().await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod core_mode;
mod jetstream;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use config::NatsConfig;

use crate::bus::{BusError, BusErrorKind, ErrorReceiver, ErrorSender, EventBus, Handler, Pattern};
use crate::error::{BoxError, Error, Result};
use crate::event::Event;

const BACKEND: &str = "nats";

/// The connection state reported by [`NatsBus::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NatsStatus {
    /// Connecting (or reconnecting) and not yet connected.
    Connecting,
    /// Connected to a server.
    Connected,
    /// The connection was lost; the client is reconnecting.
    Disconnected,
    /// [`close`](EventBus::close) was called, or the client gave up reconnecting.
    Closed,
}

impl fmt::Display for NatsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatsStatus::Connecting => "connecting",
            NatsStatus::Connected => "connected",
            NatsStatus::Disconnected => "disconnected",
            NatsStatus::Closed => "closed",
        })
    }
}

/// The event bus over NATS; see the [module docs](self) for the delivery guarantees.
///
/// Cloning is cheap and shares the connection; [`close`](EventBus::close) closes it for every
/// clone. Dropping the last clone stops every subscription.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsConfig,
    client: async_nats::Client,
    js: Option<jetstream::JetStream>,
    reporter: Arc<Reporter>,
    closed: AtomicBool,
    /// Set to `true` by `close`; dropped with the bus, which also ends every task.
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Subscriptions made per pattern, so the n-th one gets its own durable consumer.
    per_pattern: Mutex<HashMap<String, u32>>,
}

impl fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.inner.config.redacted_url())
            .field("subject_prefix", &self.inner.config.subject_prefix)
            .field("jetstream", &self.inner.config.enable_jetstream)
            .field("status", &self.status())
            .finish()
    }
}

impl NatsBus {
    /// Connects to the server(s) of `config.url` and, in JetStream mode, creates or updates the
    /// stream (idempotently).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad configuration; [`Error::Connect`] when no server can
    /// be reached, authentication fails, or the connection is not made within
    /// `connect_timeout`; [`Error::Backend`] when the stream cannot be created (for instance
    /// JetStream is not enabled on the server).
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        config.validate()?;
        let target = config.redacted_url();
        let connect_error = |source: BoxError| Error::Connect {
            backend: BACKEND,
            target: target.clone(),
            source,
        };

        let reporter = Arc::new(Reporter::new(config.error_capacity));
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .max_reconnects(config.max_reconnects)
            .require_tls(config.tls_required)
            .subscription_capacity(config.subscription_capacity)
            .event_callback({
                let reporter = reporter.clone();
                move |event| {
                    let reporter = reporter.clone();
                    async move { reporter.connection_event(event) }
                }
            });
        let wait = config.reconnect_wait;
        options = options.reconnect_delay_callback(move |attempts| {
            // The first attempt after a loss is immediate; then every `reconnect_wait`.
            if attempts <= 1 { Duration::ZERO } else { wait }
        });
        if let Some(name) = &config.connection_name {
            options = options.name(name);
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some(path) = &config.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| connect_error(e.into()))?;
        }
        let addrs = config
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| connect_error(e.into()))?;

        // The client bounds each attempt by `connection_timeout`; the outer bound also covers
        // DNS and several addresses.
        let limit = config.connect_timeout + Duration::from_millis(500);
        let client = match tokio::time::timeout(limit, options.connect(addrs)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(connect_error(e.into())),
            Err(_) => {
                return Err(connect_error(
                    format!("no connection within {limit:?}").into(),
                ));
            }
        };

        let js = if config.enable_jetstream {
            Some(jetstream::JetStream::setup(&client, &config).await?)
        } else {
            None
        };
        tracing::debug!(url = %target, jetstream = config.enable_jetstream, "nats bus connected");

        Ok(NatsBus {
            inner: Arc::new(Inner {
                config,
                client,
                js,
                reporter,
                closed: AtomicBool::new(false),
                shutdown: watch::channel(false).0,
                tasks: Mutex::new(Vec::new()),
                per_pattern: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The configuration the bus was connected with.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// True while connected to a server (and not closed).
    pub fn is_connected(&self) -> bool {
        self.status() == NatsStatus::Connected
    }

    /// The connection state, for health checks.
    pub fn status(&self) -> NatsStatus {
        if self.inner.closed.load(Ordering::Acquire) || self.inner.reporter.gave_up() {
            return NatsStatus::Closed;
        }
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => NatsStatus::Connected,
            async_nats::connection::State::Disconnected => NatsStatus::Disconnected,
            async_nats::connection::State::Pending => NatsStatus::Connecting,
        }
    }

    /// The subject events of `event_type` are published on.
    pub fn subject_for(&self, event_type: &str) -> String {
        subject_for(&self.inner.config.subject_prefix, event_type)
    }

    /// Waits until the server has processed everything this bus sent so far (every event
    /// published, every subscription made). Core `publish` returns once the client has queued
    /// the event; call this where you need to know the server has it.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `request_timeout` (e.g. while disconnected), [`Error::Backend`].
    pub async fn flush(&self) -> Result<()> {
        round_trip(&self.inner.client, self.inner.config.request_timeout).await
    }

    /// Subscribes `handler` to `pattern` through the durable consumer named `durable` instead
    /// of the derived name (JetStream); in core mode this is [`EventBus::subscribe`].
    ///
    /// # Errors
    /// As [`EventBus::subscribe`]; [`Error::InvalidArgument`] for a name outside
    /// `[A-Za-z0-9_-]`.
    pub async fn subscribe_durable(
        &self,
        pattern: &str,
        durable: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<crate::Subscription> {
        if durable.is_empty()
            || !durable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::InvalidArgument(format!(
                "nats: durable name {durable:?} must be non-empty [A-Za-z0-9_-]"
            )));
        }
        self.subscribe_as(pattern, Some(durable.to_owned()), handler)
            .await
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed("nats bus"))
        } else {
            Ok(())
        }
    }

    /// Validates, encodes and size-checks one event.
    fn encode(&self, event: &Event) -> Result<Outgoing> {
        event.validate()?;
        let payload = event.to_json()?;
        let id = event.id.to_string();
        // The server counts headers and payload against max_payload (HPUB total size):
        // "NATS/1.0\r\n" + "Nats-Msg-Id: <id>\r\n" + "\r\n".
        let size = payload.len() + 10 + "Nats-Msg-Id".len() + 2 + id.len() + 2 + 2;
        let limit = self.inner.client.max_payload();
        if size > limit {
            return Err(Error::EventTooLarge {
                id: event.id,
                size,
                limit,
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, id);
        Ok(Outgoing {
            id: event.id,
            subject: self.subject_for(&event.event_type),
            headers,
            payload,
        })
    }

    async fn publish_core(&self, out: Outgoing) -> Result<()> {
        let Outgoing {
            id,
            subject,
            headers,
            payload,
        } = out;
        let size = payload.len();
        let send = self
            .inner
            .client
            .publish_with_headers(subject, headers, payload.into());
        // The client only waits when its buffer is full (e.g. while disconnected). Poll once
        // first, so the common case pays for no timer; and keep the timer's future out of line,
        // so this future (boxed per call by `EventBus::publish`) stays small enough for the
        // allocator's fast path. Inline, the whole publish future was 1,952 bytes and core
        // publish ran at about half the raw rate.
        let mut send = Box::pin(send);
        let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
        let outcome = match first {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => {
                Box::pin(tokio::time::timeout(
                    self.inner.config.request_timeout,
                    send,
                ))
                .await
            }
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => Error::EventTooLarge {
                    id,
                    size,
                    limit: self.inner.client.max_payload(),
                },
                _ => Error::backend(BACKEND, e),
            }),
            Err(_) => Err(Error::Timeout {
                operation: "nats publish (client buffer full while disconnected)",
                after: self.inner.config.request_timeout,
            }),
        }
    }

    async fn subscribe_as(
        &self,
        pattern: &str,
        durable: Option<String>,
        handler: Arc<dyn Handler>,
    ) -> Result<crate::Subscription> {
        let pattern = Pattern::parse(pattern)?;
        self.check_open()?;
        let cancel = Arc::new(Cancel::default());
        let ctx = SubContext {
            pattern: pattern.clone(),
            handler,
            reporter: self.inner.reporter.clone(),
            cancel: cancel.clone(),
            shutdown: self.inner.shutdown.subscribe(),
        };
        let subject = pattern.to_subject(&self.inner.config.subject_prefix);
        let task = match &self.inner.js {
            None => {
                core_mode::subscribe(
                    &self.inner.client,
                    subject,
                    ctx,
                    self.inner.config.request_timeout,
                )
                .await?
            }
            Some(js) => {
                let name = durable.unwrap_or_else(|| self.consumer_name(&pattern));
                js.subscribe(&self.inner.config, &name, subject, ctx)
                    .await?
            }
        };
        {
            let mut tasks = lock(&self.inner.tasks);
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
        Ok(crate::Subscription::new(pattern.as_str(), move || {
            cancel.cancel()
        }))
    }

    /// `<durable_name>-<hash of the pattern>`, plus `-<n>` for the n-th further subscription to
    /// the same pattern on this bus: stable across restarts, distinct per subscription.
    fn consumer_name(&self, pattern: &Pattern) -> String {
        let n = {
            let mut per = lock(&self.inner.per_pattern);
            let n = per.entry(pattern.as_str().to_owned()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let base = format!(
            "{}-{:016x}",
            self.inner.config.durable_name,
            fnv1a(pattern.as_str())
        );
        if n == 0 { base } else { format!("{base}-{n}") }
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: Event) -> Result<()> {
        self.check_open()?;
        let out = self.encode(&event)?;
        tracing::trace!(
            event_id = %event.id,
            event_type = %event.event_type,
            correlation_id = event.correlation_id.as_deref(),
            "nats publish"
        );
        match &self.inner.js {
            None => self.publish_core(out).await,
            // Boxed: the JetStream future (publish + PubAck) is large, and inline it would size
            // every core publish's future too (measured: 1,952 bytes, past the allocator's fast
            // path; core publish ran at about half the raw rate). One more allocation next to a
            // server round trip is noise.
            Some(js) => Box::pin(js.publish(out)).await,
        }
    }

    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        self.check_open()?;
        // Everything is validated and size-checked before anything is sent.
        let encoded = events
            .iter()
            .map(|e| self.encode(e))
            .collect::<Result<VecDeque<_>>>()?;
        match &self.inner.js {
            None => {
                for out in encoded {
                    self.publish_core(out).await?;
                }
                Ok(())
            }
            Some(js) => {
                js.publish_pipelined(encoded, self.inner.config.publish_window)
                    .await
            }
        }
    }

    async fn subscribe(
        &self,
        pattern: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<crate::Subscription> {
        self.subscribe_as(pattern, None, handler).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.inner.shutdown.send(true);
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        // Handlers already running finish; a stuck one does not hold `close` for ever.
        for mut task in tasks {
            if tokio::time::timeout(self.inner.config.request_timeout, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        let flushed = self.flush().await;
        let _ = self.inner.client.drain().await;
        self.inner.reporter.close();
        flushed
    }

    fn errors(&self) -> ErrorReceiver {
        self.inner.reporter.subscribe()
    }
}

/// An encoded event, ready to send.
struct Outgoing {
    id: uuid::Uuid,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

/// A full round trip through the server, so everything sent before on this connection (PUB,
/// SUB) has been processed by it.
///
/// `Client::flush` only empties the client's socket buffer; it does not wait for the server. A
/// request to a fresh inbox nobody listens on is answered by the server itself ("no
/// responders") once it processed every earlier command of this connection.
pub(super) async fn round_trip(client: &async_nats::Client, limit: Duration) -> Result<()> {
    use async_nats::client::RequestErrorKind;
    let probe = client.request(client.new_inbox(), Vec::new().into());
    match tokio::time::timeout(limit, probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => Err(Error::Timeout {
            operation: "nats server round trip",
            after: limit,
        }),
        Ok(Err(e)) => Err(Error::backend(BACKEND, e)),
        Err(_) => Err(Error::Timeout {
            operation: "nats server round trip",
            after: limit,
        }),
    }
}

fn subject_for(prefix: &str, event_type: &str) -> String {
    if prefix.is_empty() {
        event_type.to_owned()
    } else {
        let mut s = String::with_capacity(prefix.len() + 1 + event_type.len());
        s.push_str(prefix);
        s.push('.');
        s.push_str(event_type);
        s
    }
}

/// FNV-1a, 64 bits: a hash that is stable across processes and Rust versions (consumer names
/// must not change when a service restarts).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The error stream, closable (so readers see `Closed` after `close`), plus what the connection
/// callback needs to tell a reconnect from the first connect.
struct Reporter {
    sender: RwLock<Option<ErrorSender>>,
    was_disconnected: AtomicBool,
    gave_up: AtomicBool,
}

impl Reporter {
    fn new(capacity: usize) -> Self {
        Reporter {
            sender: RwLock::new(Some(ErrorSender::new(capacity))),
            was_disconnected: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
        }
    }

    fn report(&self, error: BusError) {
        let sender = self
            .sender
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match sender.as_ref() {
            Some(s) => s.report(error),
            None => tracing::warn!("nats bus (closed): {error}"),
        }
    }

    fn subscribe(&self) -> ErrorReceiver {
        let sender = self
            .sender
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match sender.as_ref() {
            Some(s) => s.subscribe(),
            // A receiver whose sender is already gone: `recv` returns `Closed`.
            None => ErrorSender::new(1).subscribe(),
        }
    }

    fn close(&self) {
        self.sender
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::Acquire)
    }

    fn connection_event(&self, event: async_nats::Event) {
        use async_nats::Event as E;
        match event {
            E::Disconnected => {
                self.was_disconnected.store(true, Ordering::Release);
                self.report(BusError::new(
                    BusErrorKind::Disconnected,
                    "connection to the NATS server lost; reconnecting",
                ));
            }
            E::Connected => {
                if self.was_disconnected.swap(false, Ordering::AcqRel) {
                    self.report(BusError::new(
                        BusErrorKind::Reconnected,
                        "reconnected to the NATS server (core subscriptions may have missed \
                         events published meanwhile)",
                    ));
                }
            }
            E::SlowConsumer(sid) => self.report(BusError::new(
                BusErrorKind::Dropped,
                format!("slow consumer: the client dropped messages of subscription {sid}"),
            )),
            E::ClientError(async_nats::ClientError::MaxReconnects) => {
                self.gave_up.store(true, Ordering::Release);
                self.report(BusError::new(
                    BusErrorKind::Disconnected,
                    "gave up reconnecting after max_reconnects attempts; the bus is unusable",
                ));
            }
            E::ServerError(e) => self.report(BusError::new(
                BusErrorKind::Other,
                format!("server error: {e}"),
            )),
            E::ClientError(e) => {
                tracing::debug!("nats client error: {e}");
            }
            E::LameDuckMode => self.report(BusError::new(
                BusErrorKind::Other,
                "server entered lame duck mode; it will disconnect soon",
            )),
            E::Draining | E::Closed => {}
        }
    }
}

/// Stops one subscription: a flag checked before each handler call (so nothing is handled
/// after `unsubscribe` returns) and a wake-up for the task.
#[derive(Default)]
struct Cancel {
    flag: AtomicBool,
    notify: Notify,
}

impl Cancel {
    fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// What a subscription task needs.
struct SubContext {
    pattern: Pattern,
    handler: Arc<dyn Handler>,
    reporter: Arc<Reporter>,
    cancel: Arc<Cancel>,
    shutdown: watch::Receiver<bool>,
}

impl SubContext {
    /// True once the subscription was cancelled or the bus closed.
    fn stopped(&self) -> bool {
        self.cancel.is_cancelled() || *self.shutdown.borrow()
    }

    /// Resolves when the subscription is cancelled or the bus is closed (or dropped).
    async fn stopping(&mut self) {
        if self.stopped() {
            return;
        }
        tokio::select! {
            _ = self.cancel.notify.notified() => {}
            _ = self.shutdown.changed() => {}
        }
    }

    fn report(&self, kind: BusErrorKind, event: Option<&Event>, message: String) {
        let mut error = BusError::new(kind, message).for_pattern(self.pattern.as_str());
        if let Some(event) = event {
            error = error.for_event(event);
        }
        self.reporter.report(error);
    }

    /// Runs the handler, catching a panic (in creating or in polling its future).
    async fn run_handler(&self, event: Arc<Event>) -> Outcome {
        let handler = self.handler.clone();
        let span = tracing::debug_span!(
            "nats handle",
            event_id = %event.id,
            event_type = %event.event_type,
            correlation_id = event.correlation_id.as_deref(),
            pattern = %self.pattern,
        );
        match AssertUnwindSafe(async move { handler.handle(event).await }.instrument(span))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => Outcome::Handled,
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
        }
    }
}

enum Outcome {
    Handled,
    Failed(String),
    Panicked(String),
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("handler panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("handler panicked: {s}")
    } else {
        "handler panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_names_are_stable() {
        assert_eq!(subject_for("ef", "order.created"), "ef.order.created");
        assert_eq!(subject_for("", "order.created"), "order.created");
        // Pinned: a changed hash would orphan every durable consumer on upgrade.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a("a.*"), fnv1a("a.>"));
    }

    #[test]
    fn panic_messages_are_readable() {
        let p: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(p.as_ref()), "handler panicked: boom");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(p.as_ref()), "handler panicked: bang");
    }
}
