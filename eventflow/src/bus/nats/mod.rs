//! [`NatsBus`]: the event bus over NATS, core (at most once) or JetStream (at least once).
//!
//! Every event travels as its JSON envelope ([`Event::to_json`](crate::Event::to_json)) on the subject
//! `<subject_prefix>.<event type>`, with the event id also in the `Nats-Msg-Id` header (which
//! JetStream uses to store an event published twice within the duplicate window once).
//! Subscription patterns map to NATS wildcards with the same meaning: `*` is
//! `<prefix>.>`, `order.*` is `<prefix>.order.*`, `order.>` is `<prefix>.order.>`.
//!
//! | | core (`enable_jetstream: false`) | JetStream (`enable_jetstream: true`) |
//! |---|---|---|
//! | delivery | at most once | at least once |
//! | `publish` returns | once the client has queued the event | once the server stored it (PubAck) |
//! | handler `Err` / panic | reported on [`errors`](crate::bus::EventBus::errors) | reported, then nak'ed and redelivered with backoff |
//! | after `max_deliver` failures | — | published to `dead_letter_subject` through JetStream (PubAck awaited), then terminated and reported as `DeadLettered` |
//! | a slow handler | messages wait in a buffer of the subscription's own, bounded by [`max_buffered_messages`](NatsConfig::max_buffered_messages) (4096) and [`max_buffered_bytes`](NatsConfig::max_buffered_bytes) (16 MiB); when it is full the newest are dropped and reported as one [`Dropped`](crate::bus::BusErrorKind::Dropped) per burst naming how many | back-pressure: nothing more is pulled until the handler catches up; in-progress acks every `ack_wait / 2` for the message handled and those pulled and waiting, so none is redelivered while the process holds it |
//! | flow control | — | at most [`max_ack_pending`](NatsConfig::max_ack_pending) unacked messages per consumer, pulled [`pull_batch`](NatsConfig::pull_batch) at a time |
//! | stop (`unsubscribe`, `close`) | — | pulled messages are nak'd for another subscriber; one on its last allowed delivery is dead-lettered, terminated and reported instead |
//! | given up by the server (the process died on the last delivery) | — | the MaxDeliveries advisory reaches one live subscriber of the consumer, which dead-letters and reports it |
//! | `close` | handlers get up to `request_timeout`, then are cancelled and reported as `Cancelled` | the same; a cancelled message is not acked, so it is delivered again |
//! | restart | events published meanwhile are missed | a named subscription (durable consumer) resumes where it left off; an unnamed one starts again at new events |
//! | [`guarantee`](crate::bus::EventBus::guarantee) | `AtMostOnce` | `AtLeastOnce` |
//! | subscription name ([`SubscriptionOptions`](crate::bus::SubscriptionOptions)) | the queue group: subscribers with one name split the events | the durable consumer: different names each get every event, one name (in any number of processes) splits them |
//! | no name | a plain subscription: every event | an ephemeral consumer of its own: every event published while it lives, shared with nobody, deleted when it stops |
//! | several patterns ([`subscribe_with`](crate::bus::EventBus::subscribe_with)) | one subscription to `<prefix>.>`, filtered on the client | one consumer filtering on `<prefix>.>` (NATS 2.9 allows one filter subject per consumer), acking unmatched messages unhandled |
//!
//! **Named and unnamed subscriptions (JetStream).** The identity of a subscription is the name
//! its caller gives it ([`SubscriptionOptions::named`](crate::bus::SubscriptionOptions::named),
//! [`NatsBus::subscribe_durable`]); the patterns are only a filter, and nothing in the
//! configuration or the order of subscribing contributes to it.
//!
//! - **Named: durable, resumable, shared.** The name is the durable consumer. It outlives the
//!   process: a subscription made again with that name resumes after the last acknowledged
//!   event and gets what was published meanwhile. Subscriptions with one name, in one process
//!   or several, split the events (competing consumers); two services with different names
//!   each get every event. A service that must not miss events while it is down, or that runs
//!   several instances, names its subscriptions (sagas and projections fed from a bus do,
//!   after themselves).
//! - **Unnamed: live from now, at least once while subscribed, nothing shared, nothing
//!   resumed.** Each unnamed subscription creates an ephemeral consumer with a random name
//!   that starts at new messages (`DeliverPolicy::New`), so it gets every event published
//!   after `subscribe` returns, with redelivery and dead letters as above while it lives. Two
//!   unnamed subscriptions, in one process or in two services, each get every event. The
//!   consumer is deleted when the subscription stops (unsubscribe, drop, `close`); one left
//!   behind by a process that died is deleted by the server after 5 minutes without a pull
//!   (`inactive_threshold`). Events published while no unnamed subscription runs are never
//!   delivered to a later one.
//!
//! **Publishing while disconnected.** Core: the client buffers the event and sends it once
//! reconnected; `publish` waits while that buffer is full, up to `request_timeout`, then fails
//! with [`Error::Timeout`](crate::Error::Timeout). JetStream: `publish` waits up to `request_timeout` for the PubAck and
//! otherwise fails with [`Error::Timeout`](crate::Error::Timeout) — it never reports success for an event the server did
//! not acknowledge. Retrying with the same event (same id) inside the duplicate window is safe.
//!
//! **Clusters and durability (JetStream).** [`NatsConfig::url`] takes several seed URLs; the
//! client learns the other members from the server and moves to another one when its server is
//! lost ([`NatsBus::server`] names the one it is on; the move is reported as
//! [`Reconnected`](crate::bus::BusErrorKind::Reconnected) with the new server's name). The
//! stream is created with [`stream_replicas`](NatsConfig::stream_replicas) copies (R1 by
//! default; R3 on a cluster keeps every acknowledged event through the loss of any one server)
//! and an optional placement ([`placement_cluster`](NatsConfig::placement_cluster),
//! [`placement_tags`](NatsConfig::placement_tags)). What "acknowledged" means:
//!
//! - a publish returns `Ok` once the stream leader sent its PubAck, which on R3 it does after
//!   a majority of the replicas stored the message (in memory or file, per
//!   [`memory_storage`](NatsConfig::memory_storage); by default the server does not fsync file
//!   storage per message, so losing every replica at once can lose the newest messages);
//! - consumers use `AckPolicy::Explicit`: a message is done when its handler succeeded and the
//!   ack reached the consumer's leader; the consumer (R3 like its stream) survives a leader
//!   change, and an ack lost in one only means a redelivery (at least once).
//!
//! While a stream leader is elected (a few seconds after its server died) publishes get no
//! PubAck or no responder: `publish` and `publish_batch` retry such transient failures with
//! backoff for up to [`publish_retry_for`](NatsConfig::publish_retry_for) (10 s), sending the
//! same message with the same `Nats-Msg-Id`, so one that was stored before its PubAck was lost
//! is stored once. Every leader change of the stream is reported as
//! [`Failover`](crate::bus::BusErrorKind::Failover) (from the server's leader-election
//! advisories); [`NatsBus::health`] gives the current leader, the number of leader changes and
//! of publish retries.
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

mod bus;
mod config;
mod connect;
mod core_mode;
mod dead_letters;
mod jetstream;
mod publish;
mod status;
mod subscribe;

pub use bus::NatsBus;
pub use config::NatsConfig;
pub use dead_letters::NatsDeadLetter;
pub use status::{NatsHealth, NatsStatus};

/// The backend name in [`Error::Backend`](crate::Error::Backend) and
/// [`Error::Connect`](crate::Error::Connect).
const BACKEND: &str = "nats";
