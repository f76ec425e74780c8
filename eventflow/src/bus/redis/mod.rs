//! [`RedisBus`]: the event bus over Redis, in pub/sub mode (at most once) or Streams mode (at
//! least once, consumer groups). Feature `redis`.
//!
//! ```no_run
//! use eventflow::bus::redis::{RedisBus, RedisConfig};
//! use eventflow::{Event, EventBus, EventBusExt};
//! use serde_json::json;
//!
//! # async fn run() -> eventflow::Result<()> {
//! let config = RedisConfig {
//!     addrs: vec!["redis://127.0.0.1:6379".into()],
//!     use_streams: true, // or false for plain pub/sub
//!     ..RedisConfig::default()
//! };
//! let bus = RedisBus::connect(config).await?;
//! bus.ping().await?;
//! let sub = bus
//!     .on("order.*", |event: std::sync::Arc<Event>| async move {
//!         tracing::info!(id = %event.id, "got {}", event.event_type);
//!         Ok(())
//!     })
//!     .await?;
//! bus.publish(Event::new("order.created", json!({ "order_id": "o-1" }))?).await?;
//! # drop(sub);
//! bus.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Keys and channels
//!
//! Everything lives under [`RedisConfig::key_prefix`] (`P`, default `events`):
//!
//! | what | name |
//! |---|---|
//! | pub/sub channel of event type `T` | `P:T` (e.g. `events:order.created`) |
//! | the event stream (Streams mode) | `P:stream` |
//! | the dead-letter stream | `P:dead-letter` (or [`RedisConfig::dead_letter_stream`]) |
//! | the consumer group of a subscription | `G:<pattern>` (`G` = [`RedisConfig::consumer_group`]) |
//!
//! # Pub/sub mode (at most once)
//!
//! `publish` is one `PUBLISH P:T <envelope JSON>`; `publish_batch` pipelines them in one round
//! trip. Each subscription has its own connection and `PSUBSCRIBE`s a Redis glob derived from the
//! pattern (`order.*` and `order.>` both become `P:order.*`). Redis's `*` also matches dots, so
//! the glob is only a coarse filter: every message is checked with [`Pattern::matches`], which
//! gives exactly the in-memory semantics. `subscribe` returns after Redis confirmed the
//! `PSUBSCRIBE`, so an event published after it returns is delivered.
//!
//! A handler error or panic is reported on [`errors`](EventBus::errors) (there is no
//! redelivery). When the connection drops, the subscription reports
//! [`Disconnected`](BusErrorKind::Disconnected), reconnects with backoff, subscribes again and
//! reports [`Reconnected`](BusErrorKind::Reconnected) and [`Dropped`](BusErrorKind::Dropped):
//! events published during the gap are lost, which is what at most once means. An idle
//! subscription pings its connection every 5 s, so a half-open connection is noticed too.
//! Messages wait in memory (unbounded, inside redis-rs) while a handler is busy: keep pub/sub
//! handlers quick, or use Streams mode, where Redis holds the backlog.
//!
//! # Streams mode (at least once)
//!
//! **One stream per bus prefix** (`P:stream`) carries every event type; each entry has the
//! fields `type` (the event type) and `data` (the envelope JSON). `publish` is one
//! `XADD P:stream MAXLEN ~ N * type T data J` ([`RedisConfig::stream_max_len`]);
//! `publish_batch` pipelines them. One stream rather than one per type because it keeps the
//! semantics exact and the code small: a wildcard subscription (`*`, `order.>`) never has to
//! discover streams created later, events of different types stay in publish order, and the
//! pattern filter is [`Pattern::matches`] on the `type` field, the same function the in-memory
//! bus uses. The cost is that each subscription's group reads (and acks, without decoding) the
//! entries of types it does not want; Redis reads are cheap next to handler work.
//!
//! Each subscription reads through its own consumer group, `G:<pattern>`, created with
//! `XGROUP CREATE P:stream G:<pattern> $ MKSTREAM` before `subscribe` returns: a new group
//! starts at the end of the stream (like an in-memory subscription it sees events published
//! after it subscribed; set [`RedisConfig::start_from_beginning`] to read the retained history
//! instead), and an existing group keeps its position, so a restarted service resumes where it
//! stopped. Several processes that subscribe the same pattern with the same
//! `consumer_group` share the group and so share the work (competing consumers). Inside one bus,
//! a second live subscription to the same pattern gets its own group (`G:<pattern>#2`, then
//! `#3`, ...) so that, as on the in-memory bus, every subscription sees every event; the name of
//! an ended subscription is reused by the next one, so a resubscription resumes its group and
//! groups do not pile up. Groups are durable: unsubscribing does not delete them (delete the
//! key, or `XGROUP DESTROY`, to forget them).
//!
//! The consumer (named [`RedisConfig::consumer_name`]) loop:
//! 1. on start, and after any connection error, it first re-reads **its own pending entries**
//!    (`XREADGROUP ... 0`), so a consumer restarted under the same name resumes them first;
//! 2. it reads new entries with `XREADGROUP ... COUNT n BLOCK ms ... >`, runs the handler on
//!    each (in stream order, one at a time) and `XACK`s the batch of those that succeeded;
//! 3. a failed (or panicking) entry is not acked: it is reported, stays pending, and is re-read
//!    after [`RedisConfig::retry_delay`] while later entries keep flowing. Redis counts the
//!    deliveries; once an entry has been delivered [`RedisConfig::max_deliveries`] times and
//!    failed, it is copied to the dead-letter stream, acked and reported as
//!    [`DeadLettered`](BusErrorKind::DeadLettered);
//! 4. every half [`RedisConfig::claim_idle`] it runs `XAUTOCLAIM ... JUSTID` to take over
//!    entries that another consumer of the group left pending for longer than `claim_idle`
//!    (a consumer that died), and processes them like its own pending entries. `claim_idle`
//!    must exceed the longest time a handler takes, or a slow but live consumer's entry is
//!    taken over and handled twice;
//! 5. an entry that does not decode (no `type`, bad JSON) is reported as
//!    [`Decode`](BusErrorKind::Decode), dead-lettered and acked at once: never retried forever,
//!    and the consumer goes on.
//!
//! Dead-letter entries carry `id` (the original entry id), `group`, `consumer`, `reason`,
//! `deliveries`, and the original `type` and `data` fields when present.
//!
//! If the server loses the stream (a restart without persistence), the consumer sees `NOGROUP`,
//! recreates its group at `0` (everything in the new stream) and carries on. A lost connection
//! is reported as [`Disconnected`](BusErrorKind::Disconnected), retried with backoff, and
//! [`Reconnected`](BusErrorKind::Reconnected) once reads work again; nothing is lost, since
//! unacked entries stay in the group.
//!
//! [`RedisBus::group_status`] reads a group's consumers, pending count and lag (`XINFO GROUPS`)
//! for health checks.
//!
//! # Connections, timeouts, auth, TLS
//!
//! [`RedisBus::connect`] tries each of [`RedisConfig::addrs`] in order and keeps the first that
//! answers; the whole attempt is bounded by [`RedisConfig::connect_timeout`] per address and
//! fails with [`Error::Connect`]. Publishing goes through one multiplexed connection that
//! reconnects by itself; a failed publish returns [`Error::Backend`] (or [`Error::Timeout`]),
//! and the bus also reports [`Disconnected`](BusErrorKind::Disconnected) /
//! [`Reconnected`](BusErrorKind::Reconnected) on the error stream when the state changes.
//! Credentials come from the URL (`redis://user:pass@host:6379/0`) or from
//! [`RedisConfig::username`] / [`RedisConfig::password`] (ACL user). TLS is asked for with a
//! `rediss://` URL (rustls with the ring provider, installed as the process default unless the
//! application installed one); the server certificate is checked against the system's roots,
//! or against [`RedisConfig::tls_ca_cert`] for a private CA. Redis Cluster and Sentinel are not
//! supported.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{BusError, BusErrorKind, ErrorReceiver, ErrorSender, EventBus, Handler, Pattern};
use crate::error::{Error, Result};
use crate::event::Event;

mod config;
mod handler;
mod pubsub;
mod reply;
mod status;
mod streams;

pub use config::RedisConfig;
pub(crate) use handler::{Outcome, backoff, cancelled, run_handler};
pub use status::GroupStatus;

const BACKEND: &str = "redis";

/// Names derived from the config, shared by the bus and its subscription tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    pub(crate) client: Client,
    /// The server we connected to, without credentials.
    pub(crate) target: String,
    pub(crate) stream_key: String,
    pub(crate) dead_letter_key: String,
    /// `<prefix>:`, the start of every pub/sub channel.
    pub(crate) channel_prefix: String,
}

impl Shared {
    fn channel(&self, event_type: &str) -> String {
        format!("{}{event_type}", self.channel_prefix)
    }

    /// Settings for the dedicated connection of a subscription: blocking reads must not hit
    /// the response timeout.
    pub(crate) fn dedicated_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.block + self.config.response_timeout))
    }

    pub(crate) async fn dedicated_connection(&self) -> Result<MultiplexedConnection> {
        let config = self.dedicated_config();
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(&self.target, e)),
            Err(_) => Err(Error::Timeout {
                operation: "redis connect",
                after: self.config.connect_timeout,
            }),
        }
    }
}

/// A running subscription task and the switch that stops it.
struct Task {
    cancel: watch::Sender<bool>,
    handle: JoinHandle<()>,
    /// The consumer group it reads (Streams mode), released when it ends.
    group: Option<String>,
}

struct Inner {
    shared: Arc<Shared>,
    conn: ConnectionManager,
    /// `None` once closed: dropping the last sender ends every error receiver.
    errors: Mutex<Option<ErrorSender>>,
    closed: AtomicBool,
    /// Whether the last command on the publishing connection succeeded.
    connected: AtomicBool,
    tasks: Mutex<HashMap<u64, Task>>,
    next_task: AtomicU64,
    /// Consumer groups read by this bus's live subscriptions (for the `#n` group suffix).
    groups: Mutex<HashSet<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the senders stops every subscription task between two events.
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.clear();
        }
    }
}

/// The Redis event bus (pub/sub or Streams, see the [module docs](self)).
///
/// Cloning is cheap and gives another handle to the same bus.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("target", &self.inner.shared.target)
            .field("use_streams", &self.inner.shared.config.use_streams)
            .field("key_prefix", &self.inner.shared.config.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects to the first of `config.addrs` that answers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad config; [`Error::Connect`] when no address answers
    /// within [`RedisConfig::connect_timeout`] (each), naming the addresses tried.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let mut failures = Vec::new();
        for addr in &config.addrs {
            match connect_one(&config, addr).await {
                Ok((client, conn)) => {
                    let prefix = &config.key_prefix;
                    let shared = Shared {
                        client,
                        target: redact(addr),
                        stream_key: format!("{prefix}:stream"),
                        dead_letter_key: config
                            .dead_letter_stream
                            .clone()
                            .unwrap_or_else(|| format!("{prefix}:dead-letter")),
                        channel_prefix: format!("{prefix}:"),
                        config: config.clone(),
                    };
                    tracing::debug!(target = %shared.target, streams = config.use_streams, "redis bus connected");
                    return Ok(RedisBus {
                        inner: Arc::new(Inner {
                            shared: Arc::new(shared),
                            conn,
                            errors: Mutex::new(Some(ErrorSender::new(config.error_capacity))),
                            closed: AtomicBool::new(false),
                            connected: AtomicBool::new(true),
                            tasks: Mutex::new(HashMap::new()),
                            next_task: AtomicU64::new(0),
                            groups: Mutex::new(HashSet::new()),
                        }),
                    });
                }
                Err(e) => failures.push(format!("{}: {e}", redact(addr))),
            }
        }
        Err(Error::Connect {
            backend: BACKEND,
            target: config
                .addrs
                .iter()
                .map(|a| redact(a))
                .collect::<Vec<_>>()
                .join(", "),
            source: failures.join("; ").into(),
        })
    }

    /// Sends `PING` and waits for the answer.
    ///
    /// # Errors
    /// [`Error::Backend`] when the server does not answer, [`Error::Timeout`] after
    /// `connect_timeout + response_timeout`.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.inner.conn.clone();
        self.command("redis ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(drop)
    }

    /// Whether the last command on the publishing connection reached the server. Subscriptions
    /// track their own connections and report changes on [`errors`](EventBus::errors).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// The configuration the bus runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.shared.config
    }

    /// The Streams key (`<key_prefix>:stream`).
    pub fn stream_key(&self) -> &str {
        &self.inner.shared.stream_key
    }

    /// The dead-letter stream key.
    pub fn dead_letter_key(&self) -> &str {
        &self.inner.shared.dead_letter_key
    }

    /// Progress of consumer group `group` on this bus's stream (Streams mode), for health
    /// checks: consumers, entries pending (delivered, not acked) and lag (entries not yet
    /// delivered). `None` when the stream or the group does not exist.
    ///
    /// # Errors
    /// [`Error::Backend`] or [`Error::Timeout`] when Redis does not answer.
    pub async fn group_status(&self, group: &str) -> Result<Option<GroupStatus>> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.shared.stream_key.clone();
        let reply = self
            .command("redis xinfo", async move {
                match redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async::<redis::Value>(&mut conn)
                    .await
                {
                    // `ERR no such key`: no stream yet, so no group either (a key of another
                    // type answers WRONGTYPE, which stays an error).
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
                    {
                        Ok(redis::Value::Nil)
                    }
                    other => other,
                }
            })
            .await?;
        Ok(GroupStatus::find(reply, group))
    }

    /// The pub/sub channel of `event_type` (`<key_prefix>:<event_type>`).
    pub fn channel(&self, event_type: &str) -> String {
        self.inner.shared.channel(event_type)
    }

    /// The consumer group the first subscription of this bus to `pattern` reads through
    /// (`<consumer_group>:<pattern>`); a second live subscription to the same pattern gets
    /// `#2` appended, and so on.
    pub fn consumer_group_for(&self, pattern: &str) -> String {
        group_name(&self.inner.shared.config.consumer_group, pattern, 1)
    }

    fn report(&self, error: BusError) {
        report(&self.inner.errors, error);
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed("redis bus"))
        } else {
            Ok(())
        }
    }

    /// Runs a command on the publishing connection with an overall bound, maps its error, and
    /// tracks the connection state for the error stream.
    async fn command<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let limit =
            self.inner.shared.config.connect_timeout + self.inner.shared.config.response_timeout;
        let outcome = tokio::time::timeout(limit, fut).await;
        let (result, reachable) = match outcome {
            Ok(Ok(v)) => (Ok(v), true),
            Ok(Err(e)) => {
                let lost = is_connection_error(&e);
                (Err(Error::backend(BACKEND, e)), !lost)
            }
            Err(_) => (
                Err(Error::Timeout {
                    operation,
                    after: limit,
                }),
                false,
            ),
        };
        let was = self.inner.connected.swap(reachable, Ordering::AcqRel);
        if was && !reachable {
            self.report(BusError::new(
                BusErrorKind::Disconnected,
                format!("lost the connection to {}", self.inner.shared.target),
            ));
        } else if !was && reachable {
            self.report(BusError::new(
                BusErrorKind::Reconnected,
                format!("connected again to {}", self.inner.shared.target),
            ));
        }
        result
    }

    /// The command that publishes `event` (already encoded as `data`).
    fn publish_cmd(&self, event: &Event, data: &[u8]) -> redis::Cmd {
        let shared = &self.inner.shared;
        if shared.config.use_streams {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&shared.stream_key);
            if shared.config.stream_max_len > 0 {
                cmd.arg("MAXLEN").arg("~").arg(shared.config.stream_max_len);
            }
            cmd.arg("*")
                .arg("type")
                .arg(&event.event_type)
                .arg("data")
                .arg(data);
            cmd
        } else {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(shared.channel(&event.event_type)).arg(data);
            cmd
        }
    }

    fn register(&self, task: Task) -> u64 {
        let id = self.inner.next_task.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.tasks).insert(id, task);
        id
    }

    /// The group for a new subscription to `pattern`: `G:<pattern>`, or `G:<pattern>#n` with
    /// the smallest `n` not read by another live subscription of this bus. Reusing freed names
    /// keeps group names the same across restarts and resubscriptions (so they resume), and
    /// keeps them from piling up in Redis.
    fn claim_group(&self, pattern: &Pattern) -> String {
        let prefix = &self.inner.shared.config.consumer_group;
        let mut groups = lock(&self.inner.groups);
        let mut ordinal = 1;
        loop {
            let name = group_name(prefix, pattern.as_str(), ordinal);
            if !groups.contains(&name) {
                groups.insert(name.clone());
                return name;
            }
            ordinal += 1;
        }
    }

    fn subscription(&self, pattern: &Pattern, id: u64) -> super::Subscription {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        super::Subscription::new(pattern.as_str(), move || {
            if let Some(inner) = weak.upgrade() {
                let task = lock(&inner.tasks).remove(&id);
                if let Some(task) = task {
                    let _ = task.cancel.send(true);
                    if let Some(group) = &task.group {
                        lock(&inner.groups).remove(group);
                    }
                }
            }
        })
    }

    fn error_sender(&self) -> Result<ErrorSender> {
        lock(&self.inner.errors)
            .clone()
            .ok_or(Error::Closed("redis bus"))
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, event: Event) -> Result<()> {
        event.validate()?;
        self.ensure_open()?;
        let data = event.to_json()?;
        let cmd = self.publish_cmd(&event, &data);
        let mut conn = self.inner.conn.clone();
        let span = tracing::debug_span!(
            "publish",
            event_id = %event.id,
            event_type = %event.event_type,
            correlation_id = event.correlation_id.as_deref(),
        );
        self.command("redis publish", async move {
            cmd.query_async::<()>(&mut conn).await
        })
        .instrument(span)
        .await
    }

    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        for event in &events {
            event.validate()?;
        }
        self.ensure_open()?;
        if events.is_empty() {
            return Ok(());
        }
        // One pipeline, one round trip; Redis runs the commands in order.
        let mut pipe = redis::pipe();
        for event in &events {
            let data = event.to_json()?;
            pipe.add_command(self.publish_cmd(event, &data)).ignore();
        }
        let mut conn = self.inner.conn.clone();
        let span = tracing::debug_span!("publish_batch", events = events.len());
        self.command("redis publish_batch", async move {
            pipe.query_async::<()>(&mut conn).await
        })
        .instrument(span)
        .await
    }

    async fn subscribe(
        &self,
        pattern: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<super::Subscription> {
        let pattern = Pattern::parse(pattern)?;
        self.ensure_open()?;
        let errors = self.error_sender()?;
        let shared = self.inner.shared.clone();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let task = if shared.config.use_streams {
            let group = self.claim_group(&pattern);
            let started = streams::Consumer::start(
                shared,
                group.clone(),
                pattern.clone(),
                handler,
                errors,
                cancel_rx,
            )
            .await;
            let consumer = match started {
                Ok(consumer) => consumer,
                Err(e) => {
                    lock(&self.inner.groups).remove(&group);
                    return Err(e);
                }
            };
            Task {
                cancel: cancel_tx,
                handle: tokio::spawn(consumer.run()),
                group: Some(group),
            }
        } else {
            let listener =
                pubsub::Listener::start(shared, pattern.clone(), handler, errors, cancel_rx)
                    .await?;
            Task {
                cancel: cancel_tx,
                handle: tokio::spawn(listener.run()),
                group: None,
            }
        };
        let id = self.register(task);
        Ok(self.subscription(&pattern, id))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let tasks: Vec<Task> = lock(&self.inner.tasks).drain().map(|(_, t)| t).collect();
        for task in &tasks {
            let _ = task.cancel.send(true);
        }
        for task in tasks {
            // A handler already running finishes; a task that panicked has nothing to drain.
            let _ = task.handle.await;
        }
        lock(&self.inner.groups).clear();
        lock(&self.inner.errors).take();
        Ok(())
    }

    fn errors(&self) -> ErrorReceiver {
        match lock(&self.inner.errors).as_ref() {
            Some(sender) => sender.subscribe(),
            // A receiver whose sender is already gone: `recv` answers `Closed`.
            None => ErrorSender::new(1).subscribe(),
        }
    }
}

/// Opens a client for `addr` and checks it answers (bounded by the connect timeout).
async fn connect_one(
    config: &RedisConfig,
    addr: &str,
) -> std::result::Result<(Client, ConnectionManager), String> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    };
    let mut info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    let mut redis_info = info.redis_settings().clone();
    if let Some(user) = &config.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(password) = &config.password {
        redis_info = redis_info.set_password(password);
    }
    info = info.set_redis_settings(redis_info);
    let client = if url.starts_with("rediss://") {
        ensure_crypto_provider();
        let root_cert = match &config.tls_ca_cert {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read tls_ca_cert {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert,
        };
        Client::build_with_tls(info, certs).map_err(|e| e.to_string())?
    } else {
        Client::open(info).map_err(|e| e.to_string())?
    };
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        // Few, short retries: a publish during an outage should fail in bounded time rather
        // than wait out a long backoff; the next call tries again.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let attempt = async {
        let mut conn = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, RedisError>(conn)
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(Ok(conn)) => Ok((client, conn)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", config.connect_timeout)),
    }
}

/// rustls needs a process-wide crypto provider; install ring's unless the application already
/// chose one (installing fails harmlessly when another thread won the race).
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

pub(crate) fn group_name(prefix: &str, pattern: &str, ordinal: u32) -> String {
    if ordinal <= 1 {
        format!("{prefix}:{pattern}")
    } else {
        format!("{prefix}:{pattern}#{ordinal}")
    }
}

/// `addr` without the password (for errors and logs).
fn redact(addr: &str) -> String {
    match (addr.find("://"), addr.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &addr[..scheme], &addr[at + 1..])
        }
        _ => addr.to_owned(),
    }
}

pub(crate) fn connect_error(target: &str, e: RedisError) -> Error {
    Error::Connect {
        backend: BACKEND,
        target: target.to_owned(),
        source: Box::new(e),
    }
}

/// True when `e` means the connection is gone (as opposed to a command the server refused).
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the data consistent (plain inserts and
    // removes), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn report(errors: &Mutex<Option<ErrorSender>>, error: BusError) {
    if let Some(sender) = lock(errors).as_ref() {
        sender.report(error);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_credentials() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact("host:6379"), "host:6379");
    }

    #[test]
    fn group_names_carry_pattern_and_ordinal() {
        assert_eq!(group_name("g", "order.*", 1), "g:order.*");
        assert_eq!(group_name("g", "order.*", 2), "g:order.*#2");
    }
}
