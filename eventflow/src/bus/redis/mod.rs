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
//! | the consumer group of a named subscription | its name ([`SubscriptionOptions::named`](crate::bus::SubscriptionOptions::named)) |
//! | the patterns each consumer group filters on | hash `P:filters` (group → patterns; a subscription with other patterns under that group name is refused) |
//! | the consumer group of an unnamed subscription | `ephemeral:<random uuid>`, one per subscription, destroyed when it stops |
//! | the lease of an unnamed subscription's group | `P:lease:ephemeral:<uuid>` (expires 60 s after its process stopped renewing it) |
//!
//! # Pub/sub mode (at most once)
//!
//! A subscription with several patterns has one connection and `PSUBSCRIBE`s the glob of every
//! channel under the prefix, filtering exactly on the client (one glob per pattern would deliver
//! an event matching two of them twice). A name is a label only: every subscription gets every
//! event.
//!
//! `publish` is one `PUBLISH P:T <envelope JSON>`; `publish_batch` pipelines them in one round
//! trip. Each subscription has its own connection and `PSUBSCRIBE`s a Redis glob derived from the
//! pattern (`order.*` and `order.>` both become `P:order.*`). Redis's `*` also matches dots, so
//! the glob is only a coarse filter: every message is checked with [`Pattern::matches`](crate::bus::Pattern::matches), which
//! gives exactly the in-memory semantics. `subscribe` returns after Redis confirmed the
//! `PSUBSCRIBE`, so an event published after it returns is delivered.
//!
//! A handler error or panic is reported on [`errors`](crate::bus::EventBus::errors) (there is no
//! redelivery). When the connection drops, the subscription reports
//! [`Disconnected`](crate::bus::BusErrorKind::Disconnected), reconnects with backoff, subscribes again and
//! reports [`Reconnected`](crate::bus::BusErrorKind::Reconnected) and [`Dropped`](crate::bus::BusErrorKind::Dropped):
//! events published during the gap are lost, which is what at most once means. An idle
//! subscription pings its connection every 5 s, so a half-open connection is noticed too.
//! While a handler is busy, messages wait in a buffer of the subscription's own, bounded by
//! [`RedisConfig::max_buffered_messages`] (default 4096) and [`RedisConfig::max_buffered_bytes`]
//! (default 16 MiB): the connection is read promptly into it (redis-rs itself would queue
//! without bound), and when it is full the newest messages are dropped and reported as one
//! [`Dropped`](crate::bus::BusErrorKind::Dropped) per burst, whose message names how many
//! (`dropped N message(s) (B bytes) ...`). Keep pub/sub handlers quick, or use Streams mode,
//! where Redis holds the backlog: it reads [`RedisConfig::batch_size`] entries at a time and
//! reads again only once they are handled, so a slow handler applies back-pressure and nothing
//! is dropped.
//!
//! # Streams mode (at least once)
//!
//! **One stream per bus prefix** (`P:stream`) carries every event type; each entry has the
//! fields `type` (the event type) and `data` (the envelope JSON). `publish` is one
//! `XADD P:stream * type T data J`; `publish_batch` pipelines them. The stream is never trimmed
//! by length, which would drop entries a slow or offline group has not read: every
//! [`RedisConfig::stream_max_len`] publishes the bus trims only the entries every group has
//! read and acked ([`RedisBus::trim_stream`]: `XTRIM MINID ~` below the slowest group), and a
//! consumer that finds entries deleted before its group read them (a manual `XTRIM`, a server
//! that lost data) reports [`Dropped`](crate::bus::BusErrorKind::Dropped). One stream rather than one per type because it keeps the
//! semantics exact and the code small: a wildcard subscription (`*`, `order.>`) never has to
//! discover streams created later, events of different types stay in publish order, and the
//! pattern filter is [`Pattern::matches`](crate::bus::Pattern::matches) on the `type` field, the same function the in-memory
//! bus uses. The cost is that each subscription's group reads (and acks, without decoding) the
//! entries of types it does not want; Redis reads are cheap next to handler work.
//!
//! **Named subscriptions** ([`EventBus::subscribe_with`](crate::bus::EventBus::subscribe_with)
//! with [`SubscriptionOptions::named`](crate::bus::SubscriptionOptions::named)): the name is
//! the consumer group, the patterns only a filter. Two services with different names each get
//! every event; subscriptions with the same name, in one process or several (each with its own
//! [`RedisConfig::consumer_name`]), share the group and split the events. A subscription with
//! several patterns is one group reading the one stream with one `XREADGROUP`, so its handler
//! sees every matching entry in stream order, one at a time. Sagas and projections fed from the
//! bus subscribe this way, named after themselves.
//!
//! A named group is created at the end of the stream (`$`) by its first subscription (or at
//! `0`, the retained history, with [`RedisConfig::start_from_beginning`]); an existing one
//! keeps its position, so a restarted service resumes where it stopped and gets what was
//! published meanwhile. Groups of named subscriptions are durable: unsubscribing does not
//! delete them (`XGROUP DESTROY` forgets one).
//!
//! **Unnamed subscriptions: live from now, at least once while subscribed, nothing shared,
//! nothing resumed.** An unnamed subscription reads through a consumer group of its own,
//! `ephemeral:<random uuid>`, created at the end of the stream (`$`, whatever
//! `start_from_beginning` says) before `subscribe` returns: like an in-memory subscription it
//! sees every event published after it subscribed, with redelivery and dead letters as below
//! while it lives. Two unnamed subscriptions, in one process or in two services on the same
//! configuration, each get every event; none takes over another's position. The group is
//! destroyed (`XGROUP DESTROY`, with its pending entries) when the subscription stops
//! (unsubscribe, drop, `close`), so events published while no unnamed subscription runs are
//! never delivered to a later one. A process that dies cannot destroy its groups; each
//! ephemeral group has a lease key (`P:lease:<group>`, renewed every 20 s, expiring after 60 s),
//! and the next trim ([`RedisBus::trim_stream`]) destroys the groups whose lease is gone, so
//! they do not hold back trimming.

//! The consumer (named [`RedisConfig::consumer_name`]) loop:
//! 1. on start, and after any connection error, it first re-reads **its own pending entries**
//!    (`XREADGROUP ... 0`), so a consumer restarted under the same name resumes them first;
//! 2. it reads new entries with `XREADGROUP ... COUNT n BLOCK ms ... >`, runs the handler on
//!    each (in stream order, one at a time) and `XACK`s the batch of those that succeeded;
//! 3. a failed (or panicking) entry is not acked: it is reported, stays pending, and is re-read
//!    after [`RedisConfig::retry_delay`] while later entries keep flowing. Redis counts the
//!    deliveries; once an entry has been delivered [`RedisConfig::max_deliveries`] times and
//!    failed, it is copied to the dead-letter stream, acked and reported as
//!    [`DeadLettered`](crate::bus::BusErrorKind::DeadLettered);
//! 4. every half [`RedisConfig::claim_idle`] it runs `XAUTOCLAIM ... JUSTID` to take over
//!    entries that another consumer of the group left pending for longer than `claim_idle`
//!    (a consumer that died), and processes them like its own pending entries. `claim_idle`
//!    must exceed the longest time a handler takes, or a slow but live consumer's entry is
//!    taken over and handled twice;
//! 5. an entry that does not decode (no `type`, bad JSON) is reported as
//!    [`Decode`](crate::bus::BusErrorKind::Decode), dead-lettered and acked at once: never retried forever,
//!    and the consumer goes on.
//!
//! Dead-letter entries carry `id` (the original entry id), `group`, `consumer`, `reason`,
//! `deliveries`, and the original `type` and `data` fields when present.
//!
//! If the server loses the stream (a restart without persistence), the consumer sees `NOGROUP`,
//! recreates its group at `0` (everything in the new stream) and carries on. A lost connection
//! is reported as [`Disconnected`](crate::bus::BusErrorKind::Disconnected), retried with backoff, and
//! [`Reconnected`](crate::bus::BusErrorKind::Reconnected) once reads work again; nothing is lost, since
//! unacked entries stay in the group.
//!
//! `close` stops every subscription and waits for handlers already running for at most
//! [`RedisConfig::drain_timeout`]; then it cancels them and reports
//! [`Cancelled`](crate::bus::BusErrorKind::Cancelled). An entry whose handler was cancelled
//! is not acked, so it stays pending and is delivered again (Streams mode).
//!
//! [`RedisBus::group_status`] reads a group's consumers, pending count and lag (`XINFO GROUPS`)
//! for health checks.
//!
//! # Connections, timeouts, auth, TLS
//!
//! [`RedisBus::connect`] tries each of [`RedisConfig::addrs`] in order and keeps the first that
//! answers; the whole attempt is bounded by [`RedisConfig::connect_timeout`] per address and
//! fails with [`Error::Connect`](crate::Error::Connect). Publishing goes through one multiplexed connection that
//! reconnects by itself; a failed publish returns [`Error::Backend`](crate::Error::Backend) (or [`Error::Timeout`](crate::Error::Timeout)),
//! and the bus also reports [`Disconnected`](crate::bus::BusErrorKind::Disconnected) /
//! [`Reconnected`](crate::bus::BusErrorKind::Reconnected) on the error stream when the state changes.
//! Credentials come from the URL (`redis://user:pass@host:6379/0`) or from
//! [`RedisConfig::username`] / [`RedisConfig::password`] (ACL user). TLS is asked for with a
//! `rediss://` URL (rustls with the ring provider, installed as the process default unless the
//! application installed one); the server certificate is checked against the system's roots,
//! or against [`RedisConfig::tls_ca_cert`] for a private CA.
//!
//! # Cluster and Sentinel
//!
//! [`RedisConfig::topology`] says what [`RedisConfig::addrs`] are ([`RedisTopology`]):
//!
//! - **One server** (the default): the first address that answers.
//! - **Redis Cluster** ([`RedisConfig::cluster`]): the addresses are seeds. Commands go through
//!   redis-rs's cluster client, which follows the slot map across failovers. Every key of a bus
//!   carries the hash tag `{<key_prefix>}` (`{events}:stream`, `{events}:dead-letter`,
//!   `{events}:filters`, `{events}:lease:...`), so they share one slot and the bus's pipelines
//!   stay on one node; a custom [`RedisConfig::dead_letter_stream`] must carry the same tag.
//!   Consumer groups, claiming and dead letters work as on one node. One bus's stream lives on
//!   one primary: spread load over several buses (key prefixes), not within one. Pub/sub is
//!   classic pub/sub, which a cluster carries to subscribers on every node: a bus publishes
//!   from the primary of its key slot (so one publisher's events keep their order) and
//!   subscribes on the first seed that answers. Sharded pub/sub (`SSUBSCRIBE`) is not used: it
//!   has no pattern subscriptions, and a subscription here is a pattern.
//! - **Sentinel** ([`RedisConfig::sentinel`]): the addresses are the sentinels, the service
//!   the name they monitor. The bus connects to the primary they name; when that connection
//!   fails, or answers `READONLY` (the old primary came back as a replica), it asks them again,
//!   and a new primary is reported as [`Failover`](crate::bus::BusErrorKind::Failover);
//!   [`RedisBus::server`] names the current one and [`RedisBus::health`] counts the moves.
//!   In pub/sub mode each subscription subscribes on the primary the sentinels name and asks
//!   them again when its connection is lost.
//!
//! **Durability.** Redis replicates asynchronously: a publish returns once the primary stored
//! the entry, and a failover can promote a replica that does not have it. With
//! [`RedisConfig::wait_replicas`] the publish also waits for `WAIT numreplicas timeout` and
//! fails unless that many replicas acknowledged the write; see there for what that does and
//! does not guarantee.

mod bus;
mod config;
mod conn;
mod connect;
mod dead_letters;
mod publish;
mod pubsub;
mod reply;
mod sentinel;
mod status;
mod streams;
mod subscribe;
mod trim;

pub use bus::RedisBus;
pub use config::{RedisConfig, RedisTopology};
pub use dead_letters::RedisDeadLetter;
pub use status::{GroupStatus, RedisHealth};

/// The backend name in [`Error::Backend`](crate::Error::Backend)(crate::Error::Backend) and
/// [`Error::Connect`](crate::Error::Connect)(crate::Error::Connect).
const BACKEND: &str = "redis";
