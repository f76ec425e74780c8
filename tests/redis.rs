//! Integration tests: the Redis bus (pub/sub and Streams) against a real Redis server
//! (`REDIS_URL`, default `redis://127.0.0.1:6379`), plus fault tests on a private
//! `redis-server` that is killed and restarted.
//!
//! Every test uses its own key prefix and deletes its keys at the end (even when it fails).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::bus::redis::{RedisBus, RedisConfig};
use eventflow::bus::{
    BusError, BusErrorKind, ErrorReceiver, Handler, HandlerResult, SubscriptionOptions,
};
use eventflow::testing::conformance::{self, Report, bus::Capabilities};
use eventflow::{Error, Event, EventBus, Subscription, sync_handler};
use eventflow_tests::child::{self, ChildProcess};
use eventflow_tests::redis_server::RedisServer;
use eventflow_tests::{redis_url, service_unavailable, unique};
use futures_util::future::BoxFuture;
use redis::Value;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Mode {
    PubSub,
    Streams,
}

/// Deletes every key under the prefix when dropped (also when the test panics).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

fn config(mode: Mode, prefix: &str) -> RedisConfig {
    let mut config = RedisConfig::new(redis_url());
    config.use_streams = matches!(mode, Mode::Streams);
    config.key_prefix = prefix.to_owned();
    config.retry_delay = Duration::from_millis(50);
    config.block = Duration::from_millis(200);
    config
}

/// Subscribes `handler` to `pattern` as `name` (its consumer group in Streams mode).
async fn named(
    bus: &RedisBus,
    pattern: &str,
    name: &str,
    handler: Arc<dyn Handler>,
) -> Subscription {
    bus.subscribe_with(&[pattern], SubscriptionOptions::named(name), handler)
        .await
        .unwrap()
}

async fn connect(config: RedisConfig) -> RedisBus {
    let url = config.addrs[0].clone();
    match RedisBus::connect(config).await {
        Ok(bus) => bus,
        Err(e) => service_unavailable("Redis", &url, e),
    }
}

async fn raw() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => service_unavailable("Redis", &url, e),
    }
}

/// A handler that records what it sees; `fail` decides (by event) whether to fail instead.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Event>>>,
    attempts: Arc<Mutex<Vec<uuid::Uuid>>>,
    #[allow(clippy::type_complexity)]
    fail: Option<Arc<dyn Fn(&Event, usize) -> bool + Send + Sync>>,
}

impl Recorder {
    fn failing(fail: impl Fn(&Event, usize) -> bool + Send + Sync + 'static) -> Self {
        Recorder {
            fail: Some(Arc::new(fail)),
            ..Recorder::default()
        }
    }

    fn types(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(self.clone())
    }
}

impl Handler for Recorder {
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(event.id);
            attempts.iter().filter(|id| **id == event.id).count()
        };
        if let Some(fail) = &self.fail
            && fail(&event, attempt)
        {
            return Box::pin(async move { Err(format!("refusing {}", event.event_type).into()) });
        }
        self.seen.lock().unwrap().push((*event).clone());
        Box::pin(async { Ok(()) })
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for an error of `kind` on `errors` (skipping others).
async fn expect_error(errors: &mut ErrorReceiver, kind: BusErrorKind) -> BusError {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Ok(e)) if e.kind == kind => return e,
            Ok(Ok(other)) => eprintln!("(while waiting for {kind:?}) {other}"),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("error stream ended while waiting for {kind:?}: {e}"),
            Err(_) => panic!("no {kind:?} reported within {WAIT:?}"),
        }
    }
}

fn ev(event_type: &str, n: u64) -> Event {
    Event::new(event_type, json!({ "n": n })).unwrap()
}

async fn pending_count(key: &str, group: &str) -> i64 {
    let reply: Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    match reply {
        Value::Array(parts) => match parts.first() {
            Some(Value::Int(n)) => *n,
            other => panic!("unexpected XPENDING reply {other:?}"),
        },
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

async fn stream_len(key: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut raw().await)
        .await
        .unwrap()
}

/// Entries of a stream as field maps.
async fn stream_entries(key: &str) -> Vec<std::collections::HashMap<String, String>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|id| {
            id.map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Delivery specific to Redis

/// The kit checks invalid input and `Error::Closed`; this checks that the error stream ends
/// with the bus.
async fn error_stream_ends_on_close(mode: Mode) {
    let prefix = unique("ef_redis_close");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(config(mode, &prefix)).await;
    bus.ping().await.unwrap();
    let mut errors = bus.errors();
    bus.close().await.unwrap();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = errors.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "{mode:?}: error stream still open after close");
}

#[tokio::test]
async fn pubsub_error_stream_ends_on_close() {
    error_stream_ends_on_close(Mode::PubSub).await;
}

#[tokio::test]
async fn streams_error_stream_ends_on_close() {
    error_stream_ends_on_close(Mode::Streams).await;
}

#[tokio::test]
async fn streams_resubscription_resumes_its_durable_group() {
    let prefix = unique("ef_redis_durable");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(config(Mode::Streams, &prefix)).await;
    let rec = Recorder::default();
    let sub = named(&bus, "d.*", "d-svc", rec.handler()).await;
    bus.publish(ev("d.one", 1)).await.unwrap();
    wait_until("the first event", || rec.len() == 1).await;
    sub.unsubscribe();
    // Published while nobody listens: the group keeps it for the next subscription.
    bus.publish(ev("d.two", 2)).await.unwrap();
    let again = Recorder::default();
    let _sub = named(&bus, "d.*", "d-svc", again.handler()).await;
    bus.publish(ev("d.three", 3)).await.unwrap();
    wait_until("the missed and the new event", || again.len() == 2).await;
    assert_eq!(again.types(), ["d.two", "d.three"]);
    assert_eq!(rec.len(), 1);
    bus.close().await.unwrap();
}

/// The consumer groups of stream `key` (`XINFO GROUPS`); none when the stream does not exist.
async fn group_names(key: &str) -> Vec<String> {
    let reply: redis::RedisResult<Vec<std::collections::HashMap<String, Value>>> =
        redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(&mut raw().await)
            .await;
    let Ok(groups) = reply else {
        return Vec::new();
    };
    groups
        .iter()
        .map(|g| match &g["name"] {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            other => panic!("unexpected group name {other:?}"),
        })
        .collect()
}

/// An unnamed subscription's consumer group is its own and is gone once the subscription
/// stops: on unsubscribe, on close, and on close after cancelling a stuck handler. A named
/// one stays (it is durable).
#[tokio::test]
async fn streams_unnamed_subscription_leaves_no_group_behind() {
    let prefix = unique("ef_redis_ephemeral");
    let _cleanup = Cleanup(prefix.clone());
    let mut cfg = config(Mode::Streams, &prefix);
    cfg.drain_timeout = Duration::from_millis(300);
    let bus = connect(cfg).await;
    let key = bus.stream_key().to_owned();
    let (a, b) = (Recorder::default(), Recorder::default());
    let sub_a = bus.subscribe("e.*", a.handler()).await.unwrap();
    let _sub_b = bus.subscribe("e.*", b.handler()).await.unwrap();
    let _named = named(&bus, "e.*", "e-svc", Recorder::default().handler()).await;
    bus.publish(ev("e.one", 1)).await.unwrap();
    wait_until("both unnamed subscriptions", || {
        a.len() == 1 && b.len() == 1
    })
    .await;
    let mut groups = group_names(&key).await;
    groups.sort();
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert!(groups.contains(&"e-svc".to_owned()), "{groups:?}");
    let unnamed: Vec<String> = groups.into_iter().filter(|g| g != "e-svc").collect();
    assert_ne!(
        unnamed[0], unnamed[1],
        "two unnamed subscriptions share a group"
    );

    sub_a.unsubscribe();
    let deadline = Instant::now() + WAIT;
    while group_names(&key).await.len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the group of an unsubscribed unnamed subscription is still there: {:?}",
            group_names(&key).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A stuck handler: close cancels it after the drain timeout and still destroys its group.
    let started = Arc::new(tokio::sync::Notify::new());
    let _stuck = bus
        .subscribe("s.*", Arc::new(Stuck(started.clone())))
        .await
        .unwrap();
    bus.publish(ev("s.one", 1)).await.unwrap();
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the handler started");
    bus.close().await.unwrap();
    assert_eq!(group_names(&key).await, ["e-svc"], "after close");
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:lease:*"))
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert!(leases.is_empty(), "leases left behind: {leases:?}");
}

/// A process that died left its unnamed subscription's group (no lease any more): the next trim
/// destroys it, so it does not hold back trimming, and leaves a live unnamed group alone.
#[tokio::test]
async fn streams_trim_destroys_the_group_of_a_dead_unnamed_subscription() {
    let prefix = unique("ef_redis_abandoned");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(config(Mode::Streams, &prefix)).await;
    let key = bus.stream_key().to_owned();
    let rec = Recorder::default();
    let _live = bus.subscribe("l.*", rec.handler()).await.unwrap();
    // The dead process's group: created at the start, read nothing, no lease.
    let dead = "ephemeral:0123456789abcdef0123456789abcdef";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(dead)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    bus.publish_batch((0..10).map(|n| ev("l.item", n)).collect())
        .await
        .unwrap();
    wait_until("the live subscription read everything", || rec.len() == 10).await;
    let deadline = Instant::now() + WAIT;
    // Acked by the live group once its next read ran; the dead group alone holds entries back.
    while bus.trim_stream().await.unwrap() == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing trimmed: {:?}",
            group_names(&key).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let groups = group_names(&key).await;
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert!(
        groups[0].starts_with("ephemeral:") && groups[0] != dead,
        "{groups:?}"
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn streams_length_is_bounded_by_stream_max_len() {
    let prefix = unique("ef_redis_maxlen");
    let _cleanup = Cleanup(prefix.clone());
    let mut cfg = config(Mode::Streams, &prefix);
    cfg.stream_max_len = 100;
    let bus = connect(cfg).await;
    for _ in 0..10 {
        bus.publish_batch((0..100).map(|n| ev("m.item", n)).collect())
            .await
            .unwrap();
    }
    bus.publish(ev("m.item", 1000)).await.unwrap();
    let len = stream_len(bus.stream_key()).await;
    // `MAXLEN ~` trims whole radix-tree nodes (100 entries each by default), so the length
    // stays within one node of the bound.
    assert!(
        (100..=200).contains(&len),
        "stream length {len} after 1,001 XADDs"
    );
    bus.close().await.unwrap();
}

#[tokio::test]
async fn streams_offline_group_reads_all_200k_events_published_meanwhile() {
    const N: usize = 200_000;
    let prefix = unique("ef_redis_offline");
    let _cleanup = Cleanup(prefix.clone());
    let cfg = config(Mode::Streams, &prefix);
    // The default trims every 100,000 publishes: twice during this test, never unread entries.
    assert_eq!(cfg.stream_max_len, 100_000);
    let bus = connect(cfg).await;
    // A durable group with no consumer running (a service that is down). Created directly:
    // a subscription that just ended may still be handed entries by a read in flight.
    let group = create_group(&bus, "off-svc").await;

    // The group is offline (it exists, nobody reads it) while N events are published.
    for chunk in 0..(N / 10_000) {
        let events = (0..10_000)
            .map(|n| ev("off.item", (chunk * 10_000 + n) as u64))
            .collect();
        bus.publish_batch(events).await.unwrap();
    }
    assert_eq!(
        stream_len(bus.stream_key()).await,
        N as i64,
        "nothing trimmed"
    );

    // Read the whole group back (raw, NOACK: decoding 200,000 events through a handler in a
    // debug build takes longer than the rest of the suite; the consumer loop is covered by the
    // other tests).
    let mut conn = raw().await;
    let mut read = 0;
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg("checker")
            .arg("COUNT")
            .arg(10_000)
            .arg("NOACK")
            .arg("STREAMS")
            .arg(bus.stream_key())
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        // [[key, [[id, fields], ...]]], or nil when nothing is left.
        let batch = match reply {
            Value::Array(streams) => streams
                .iter()
                .map(|s| match s {
                    Value::Array(kv) => match kv.get(1) {
                        Some(Value::Array(entries)) => entries.len(),
                        other => panic!("unexpected entries {other:?}"),
                    },
                    other => panic!("unexpected stream {other:?}"),
                })
                .sum(),
            Value::Nil => 0,
            other => panic!("unexpected XREADGROUP reply {other:?}"),
        };
        if batch == 0 {
            break;
        }
        read += batch;
    }
    assert_eq!(
        read, N,
        "the offline group reads every event published meanwhile"
    );
    let status = bus.group_status(&group).await.unwrap().unwrap();
    assert_eq!((status.lag, status.pending), (Some(0), 0), "{status:?}");
    // Once read and acked by every group, the entries can go.
    bus.trim_stream().await.unwrap();
    assert!(stream_len(bus.stream_key()).await < 1_000);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn streams_entries_deleted_before_the_group_read_them_are_reported_as_dropped() {
    let prefix = unique("ef_redis_lost");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(config(Mode::Streams, &prefix)).await;
    let mut errors = bus.errors();
    // A durable group with no consumer running (as after a service stopped): nothing is
    // delivered to it, so nothing is pending.
    create_group(&bus, "lost-svc").await;
    bus.publish_batch((1..=10).map(|n| ev("lost.item", n)).collect())
        .await
        .unwrap();
    // Trimmed by someone else while the group was offline.
    let _: i64 = redis::cmd("XTRIM")
        .arg(bus.stream_key())
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    let again = Recorder::default();
    let _sub = named(&bus, "lost.*", "lost-svc", again.handler()).await;
    let dropped = expect_error(&mut errors, BusErrorKind::Dropped).await;
    assert!(dropped.message.contains("deleted before"), "{dropped}");
    assert_eq!(dropped.pattern.as_deref(), Some("lost.*"));
    bus.publish(ev("lost.next", 11)).await.unwrap();
    wait_until("the next event", || again.len() == 1).await;
    bus.close().await.unwrap();
}

/// A handler that signals it started, then never returns.
struct Stuck(Arc<tokio::sync::Notify>);

impl Handler for Stuck {
    fn handle(&self, _event: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
        let started = self.0.clone();
        Box::pin(async move {
            started.notify_one();
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

async fn close_cancels_a_stuck_handler(mode: Mode) {
    let prefix = unique("ef_redis_stuck");
    let _cleanup = Cleanup(prefix.clone());
    let mut cfg = config(mode, &prefix);
    cfg.drain_timeout = Duration::from_millis(300);
    let bus = connect(cfg).await;
    let mut errors = bus.errors();
    let started = Arc::new(tokio::sync::Notify::new());
    // Named, so that its group (and the entry pending in it) outlives the bus.
    let _sub = named(
        &bus,
        "stuck.*",
        "stuck-svc",
        Arc::new(Stuck(started.clone())),
    )
    .await;
    bus.publish(ev("stuck.one", 1)).await.unwrap();
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the handler started");
    tokio::time::timeout(WAIT, bus.close())
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: close waited past its drain timeout"))
        .unwrap();
    let cancelled = expect_error(&mut errors, BusErrorKind::Cancelled).await;
    assert!(cancelled.message.contains("drain timeout"), "{cancelled}");
    if let Mode::Streams = mode {
        // Not acked: the entry stays pending and is delivered again later.
        assert_eq!(pending_count(bus.stream_key(), "stuck-svc").await, 1);
    }
}

#[tokio::test]
async fn pubsub_close_cancels_a_stuck_handler_after_the_drain_timeout() {
    close_cancels_a_stuck_handler(Mode::PubSub).await;
}

#[tokio::test]
async fn streams_close_cancels_a_stuck_handler_after_the_drain_timeout() {
    close_cancels_a_stuck_handler(Mode::Streams).await;
}

// ---------------------------------------------------------------------------------------------
// Handler failures

/// The kit checks the dead-lettering itself (attempts, report, later events flowing); this
/// checks what only Redis Streams has: the dead-letter stream's entry, and nothing left pending.
#[tokio::test]
async fn streams_dead_letter_entry_records_the_event_and_why() {
    let prefix = unique("ef_redis_poison");
    let _cleanup = Cleanup(prefix.clone());
    let mut cfg = config(Mode::Streams, &prefix);
    cfg.max_deliveries = 3;
    let bus = connect(cfg).await;
    let mut errors = bus.errors();
    let rec = Recorder::failing(|e, _| e.payload["poison"] == json!(true));
    let _sub = named(&bus, "p.>", "p-svc", rec.handler()).await;
    let poison = Event::new("p.item", json!({ "poison": true })).unwrap();
    bus.publish(poison.clone()).await.unwrap();
    let dead = expect_error(&mut errors, BusErrorKind::DeadLettered).await;
    assert_eq!(dead.event_id, Some(poison.id));
    let dlq = stream_entries(bus.dead_letter_key()).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["reason"], "max deliveries");
    assert_eq!(dlq[0]["deliveries"], "3");
    assert_eq!(dlq[0]["type"], "p.item");
    assert_eq!(dlq[0]["group"], "p-svc");
    let stored: Event = serde_json::from_str(&dlq[0]["data"]).unwrap();
    assert_eq!(stored.id, poison.id);
    assert_eq!(pending_count(bus.stream_key(), "p-svc").await, 0);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn streams_undecodable_entry_is_reported_and_dead_lettered() {
    let prefix = unique("ef_redis_undecodable");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(config(Mode::Streams, &prefix)).await;
    let mut errors = bus.errors();
    let rec = Recorder::default();
    let _sub = named(&bus, "u.*", "u-svc", rec.handler()).await;
    let mut conn = raw().await;
    for fields in [
        vec![("type", "u.broken"), ("data", "{not json")],
        vec![("data", "{}")],
    ] {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(bus.stream_key()).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        let _: String = cmd.query_async(&mut conn).await.unwrap();
    }
    bus.publish(ev("u.fine", 1)).await.unwrap();
    wait_until("the valid event after the broken ones", || rec.len() == 1).await;
    let decode = expect_error(&mut errors, BusErrorKind::Decode).await;
    assert_eq!(decode.event_type.as_deref(), Some("u.broken"));
    expect_error(&mut errors, BusErrorKind::Decode).await;
    let dlq = stream_entries(bus.dead_letter_key()).await;
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(dlq[0]["reason"].starts_with("decode"), "{dlq:?}");
    assert_eq!(dlq[0]["data"], "{not json");
    assert!(dlq[1]["reason"].contains("type"), "{dlq:?}");
    assert_eq!(pending_count(bus.stream_key(), "u-svc").await, 0);
    bus.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Consumers that die

#[tokio::test]
async fn streams_entries_of_a_dead_consumer_are_claimed_and_nothing_stays_pending() {
    let prefix = unique("ef_redis_crash");
    let _cleanup = Cleanup(prefix.clone());
    let mut cfg = config(Mode::Streams, &prefix);
    cfg.claim_idle = Duration::from_millis(500);
    cfg.consumer_name = "survivor".into();
    let bus = connect(cfg).await;
    let key = bus.stream_key().to_owned();
    let group = "c-svc".to_owned();
    let mut conn = raw().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(&group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let events: Vec<Event> = (0..1000).map(|n| ev("c.item", n)).collect();
    bus.publish_batch(events.clone()).await.unwrap();

    // The doomed consumer reads all 1,000, acks every other one, and dies (never acks again).
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("doomed")
        .arg("COUNT")
        .arg(1000)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<String> = reply.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 1000);
    let acked: Vec<&String> = ids.iter().step_by(2).collect();
    let _: i64 = redis::cmd("XACK")
        .arg(&key)
        .arg(&group)
        .arg(&acked)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending_count(&key, &group).await, 500);
    let status = bus.group_status(&group).await.unwrap().unwrap();
    assert_eq!((status.pending, status.consumers), (500, 1));
    assert!(bus.group_status("no-such-group").await.unwrap().is_none());
    let expected: HashSet<uuid::Uuid> = events.iter().skip(1).step_by(2).map(|e| e.id).collect();

    // A second consumer of the group claims the rest after the idle time and handles them.
    let rec = Recorder::default();
    let _sub = named(&bus, "c.*", &group, rec.handler()).await;
    wait_until("the 500 unacked entries to be handled", || rec.len() >= 500).await;
    let deadline = Instant::now() + WAIT;
    while pending_count(&key, &group).await != 0 {
        assert!(Instant::now() < deadline, "entries left pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen: HashSet<uuid::Uuid> = rec.seen.lock().unwrap().iter().map(|e| e.id).collect();
    assert_eq!(seen, expected, "exactly the unacked entries were handled");
    assert_eq!(rec.len(), 500, "no entry handled twice");
    let status = bus.group_status(&group).await.unwrap().unwrap();
    assert_eq!(status.pending, 0);
    assert_eq!(status.lag, Some(0));
    bus.close().await.unwrap();
}

/// Creates the group of a subscription named `group`, at the end of the stream.
async fn create_group(bus: &RedisBus, group: &str) -> String {
    let group = group.to_owned();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(bus.stream_key())
        .arg(&group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    group
}

/// Reads (delivers) every new entry to `consumer` of `group`, then `extra` more times from its
/// pending list; returns the entry ids.
async fn deliver_raw(bus: &RedisBus, group: &str, consumer: &str, extra: usize) -> Vec<String> {
    let mut conn = raw().await;
    let mut ids = Vec::new();
    for round in 0..=extra {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("STREAMS")
            .arg(bus.stream_key())
            .arg(if round == 0 { ">" } else { "0" })
            .query_async(&mut conn)
            .await
            .unwrap();
        if round == 0 {
            ids = reply.keys[0].ids.iter().map(|e| e.id.clone()).collect();
        }
    }
    ids
}

#[tokio::test]
async fn streams_entry_that_crashed_consumers_is_dead_lettered_without_another_try() {
    let prefix = unique("ef_redis_crashloop");
    let _cleanup = Cleanup(prefix.clone());
    let mut cfg = config(Mode::Streams, &prefix);
    cfg.max_deliveries = 3;
    cfg.claim_idle = Duration::from_millis(200);
    let bus = connect(cfg).await;
    let mut errors = bus.errors();
    let group = create_group(&bus, "k-svc").await;
    let deadly = ev("k.deadly", 1);
    bus.publish(deadly.clone()).await.unwrap();
    // Consumers that died while handling it: delivered 4 times, never acked.
    deliver_raw(&bus, &group, "crashed", 3).await;
    let rec = Recorder::default();
    let _sub = named(&bus, "k.*", &group, rec.handler()).await;
    bus.publish(ev("k.fine", 2)).await.unwrap();
    let dead = expect_error(&mut errors, BusErrorKind::DeadLettered).await;
    assert_eq!(dead.event_id, Some(deadly.id));
    wait_until("the later event", || rec.len() == 1).await;
    assert_eq!(
        rec.types(),
        ["k.fine"],
        "the deadly entry reached the handler"
    );
    assert!(
        rec.attempts
            .lock()
            .unwrap()
            .iter()
            .all(|id| *id != deadly.id)
    );
    let dlq = stream_entries(bus.dead_letter_key()).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["deliveries"], "5");
    assert_eq!(pending_count(bus.stream_key(), &group).await, 0);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn streams_pending_entry_deleted_from_the_stream_is_reported_and_acked() {
    let prefix = unique("ef_redis_trimmed");
    let _cleanup = Cleanup(prefix.clone());
    let mut cfg = config(Mode::Streams, &prefix);
    cfg.consumer_name = "worker".into();
    cfg.claim_idle = Duration::from_secs(3600);
    let bus = connect(cfg).await;
    let mut errors = bus.errors();
    let group = create_group(&bus, "z-svc").await;
    bus.publish(ev("z.gone", 1)).await.unwrap();
    let ids = deliver_raw(&bus, &group, "worker", 0).await;
    // Trimmed away (here: deleted) while pending with "worker".
    let _: i64 = redis::cmd("XDEL")
        .arg(bus.stream_key())
        .arg(&ids)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    let rec = Recorder::default();
    let _sub = named(&bus, "z.*", &group, rec.handler()).await;
    let dropped = expect_error(&mut errors, BusErrorKind::Dropped).await;
    assert!(dropped.message.contains(&ids[0]), "{dropped}");
    bus.publish(ev("z.next", 2)).await.unwrap();
    wait_until("the next event", || rec.len() == 1).await;
    assert_eq!(pending_count(bus.stream_key(), &group).await, 0);
    bus.close().await.unwrap();
}

#[tokio::test]
async fn streams_restarted_consumer_resumes_its_own_pending_entries_first() {
    let prefix = unique("ef_redis_resume");
    let _cleanup = Cleanup(prefix.clone());
    let mut cfg = config(Mode::Streams, &prefix);
    // Claiming would take an hour: only the own-pending read can deliver these.
    cfg.claim_idle = Duration::from_secs(3600);
    cfg.consumer_name = "worker-1".into();
    let first = connect(cfg.clone()).await;
    let key = first.stream_key().to_owned();
    let group = "job-svc".to_owned();
    let mut conn = raw().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(&group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let events: Vec<Event> = (0..10).map(|n| ev("job.run", n)).collect();
    first.publish_batch(events.clone()).await.unwrap();
    // "worker-1" took the entries and crashed before acking.
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("worker-1")
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    first.close().await.unwrap();
    // Restarted under the same name: its pending entries come first, then new ones.
    let bus = connect(cfg).await;
    let rec = Recorder::default();
    let _sub = named(&bus, "job.*", &group, rec.handler()).await;
    bus.publish(ev("job.run", 10)).await.unwrap();
    wait_until("the 11 entries", || rec.len() == 11).await;
    let seen: Vec<_> = rec.seen.lock().unwrap().iter().map(|e| e.id).collect();
    let expected: Vec<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(&seen[..10], &expected[..]);
    let deadline = Instant::now() + WAIT;
    while pending_count(&key, &group).await != 0 {
        assert!(Instant::now() < deadline, "entries left pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Bad servers

#[tokio::test]
async fn group_status_of_a_missing_stream_is_none() {
    let prefix = unique("ef_redis_status");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(config(Mode::Streams, &prefix)).await;
    assert!(bus.group_status("g").await.unwrap().is_none());
    bus.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_is_a_typed_error_within_the_timeout() {
    for addr in [
        // Nothing listens there.
        format!("redis://127.0.0.1:{}", eventflow_tests::free_port()),
        // Not routable: the connect attempt hangs until our timeout.
        "redis://10.255.255.1:6379".to_owned(),
    ] {
        let mut cfg = RedisConfig::new(addr.clone());
        cfg.connect_timeout = Duration::from_millis(500);
        let started = Instant::now();
        let result = RedisBus::connect(cfg).await;
        let took = started.elapsed();
        match result {
            Err(Error::Connect {
                backend, target, ..
            }) => {
                assert_eq!(backend, "redis");
                assert!(target.contains(&addr[8..]), "{target} names {addr}");
            }
            other => panic!("{addr}: expected Error::Connect, got {other:?}"),
        }
        assert!(
            took < Duration::from_secs(5),
            "{addr}: took {took:?}, over the timeout"
        );
    }
    // So does a bad config.
    let mut cfg = RedisConfig::default();
    cfg.addrs.clear();
    assert!(matches!(
        RedisBus::connect(cfg).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn wrong_password_is_a_connect_error() {
    let mut cfg = RedisConfig::new(redis_url());
    cfg.username = Some(unique("nobody"));
    cfg.password = Some("wrong".into());
    cfg.connect_timeout = Duration::from_secs(2);
    assert!(matches!(
        RedisBus::connect(cfg).await,
        Err(Error::Connect { .. })
    ));
}

async fn server_killed_and_restarted(mode: Mode) {
    let mut server = RedisServer::start();
    let mut cfg = RedisConfig::new(server.url());
    cfg.use_streams = matches!(mode, Mode::Streams);
    cfg.key_prefix = "fault".into();
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.response_timeout = Duration::from_millis(500);
    cfg.block = Duration::from_millis(200);
    let bus = RedisBus::connect(cfg).await.unwrap();
    let mut errors = bus.errors();
    let rec = Recorder::default();
    let _sub = bus.subscribe("f.*", rec.handler()).await.unwrap();
    bus.publish(ev("f.before", 0)).await.unwrap();
    wait_until("the first event", || rec.len() == 1).await;

    server.kill();
    let outage = expect_error(&mut errors, BusErrorKind::Disconnected).await;
    assert!(!outage.message.is_empty());
    let failed = bus.publish(ev("f.during", 1)).await;
    assert!(
        matches!(failed, Err(Error::Backend { .. } | Error::Timeout { .. })),
        "{mode:?}: publish during the outage: {failed:?}"
    );
    assert!(bus.ping().await.is_err());

    server.restart();
    expect_error(&mut errors, BusErrorKind::Reconnected).await;
    if matches!(mode, Mode::PubSub) {
        // At most once: the subscription says it may have missed events during the gap.
        let gap = expect_error(&mut errors, BusErrorKind::Dropped).await;
        assert_eq!(gap.pattern.as_deref(), Some("f.*"));
    }
    // Publishing works again, and a subscriber receives events again (pub/sub may miss those
    // published before it resubscribed, so keep publishing until one arrives).
    let deadline = Instant::now() + WAIT;
    let mut n = 2;
    while !rec.types().iter().any(|t| t == "f.after") {
        assert!(
            Instant::now() < deadline,
            "{mode:?}: no delivery after restart"
        );
        if bus.publish(ev("f.after", n)).await.is_ok() {
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bus.publish(ev("f.final", n)).await.unwrap();
    bus.ping().await.unwrap();
    assert!(bus.is_connected());
    wait_until("an event published after recovery", || {
        rec.types().iter().any(|t| t == "f.final")
    })
    .await;
    assert!(!rec.types().iter().any(|t| t == "f.during"));
    bus.close().await.unwrap();
}

#[tokio::test]
async fn pubsub_private_server_killed_and_restarted() {
    server_killed_and_restarted(Mode::PubSub).await;
}

#[tokio::test]
async fn streams_private_server_killed_and_restarted() {
    server_killed_and_restarted(Mode::Streams).await;
}

// ---------------------------------------------------------------------------------------------
// The shared bus conformance kit, in both modes (patterns, ordering, invalid input, handler
// failures, unsubscribe, redelivery, dead letters, durable and competing subscribers: see
// `eventflow::testing::conformance::bus`)

/// Max deliveries of the kit's Streams buses.
const KIT_MAX_DELIVERIES: u32 = 3;

/// Runs the kit; buses of one scope share their key prefix (each has its own consumer name),
/// so they are one deployment's processes.
async fn conformance(mode: Mode) -> Report {
    let cleanups = Arc::new(Mutex::new(Vec::new()));
    let caps = match mode {
        Mode::PubSub => Capabilities::at_most_once(),
        Mode::Streams => Capabilities::at_least_once(KIT_MAX_DELIVERIES),
    };
    let c = cleanups.clone();
    let report = conformance::bus::run(caps, move |scope| {
        let prefix = format!("ef_redis_{}", scope.name());
        c.lock().unwrap().push(Cleanup(prefix.clone()));
        let mut config = config(mode, &prefix);
        config.max_deliveries = KIT_MAX_DELIVERIES;
        async move { Arc::new(connect(config).await) as Arc<dyn EventBus> }
    })
    .await;
    drop(cleanups);
    report
}

#[tokio::test]
async fn pubsub_passes_the_bus_conformance_kit() {
    conformance(Mode::PubSub).await;
}

#[tokio::test]
async fn streams_passes_the_bus_conformance_kit() {
    let report = conformance(Mode::Streams).await;
    for check in [
        "redelivery_after_error_and_panic",
        "dead_letter_after_max_deliveries",
        "durable_subscriber_resumes",
        "unnamed_subscribers_each_get_every_event",
        "unnamed_subscriptions_do_not_resume",
        // Issue 11: one ordered, named subscription per saga and projection.
        "saga_follow_ups_after_slow_start",
        "projection_patterns_in_order",
        "at_most_once_refused_without_opt_in",
        "different_names_each_get_every_event",
        "same_name_shares_work",
        "saga_follow_up_before_start_is_redelivered",
    ] {
        assert!(report.has_run(check), "{check}: {report}");
    }
}

// ---------------------------------------------------------------------------------------------
// TLS (`rediss://`) against a private server with a throw-away CA

#[tokio::test]
async fn tls_connection_with_a_private_ca() {
    let server = RedisServer::start_tls();
    for mode in [Mode::PubSub, Mode::Streams] {
        let mut cfg = RedisConfig::new(server.tls_url());
        cfg.use_streams = matches!(mode, Mode::Streams);
        cfg.tls_ca_cert = Some(server.ca_cert());
        cfg.key_prefix = "tls".into();
        let bus = RedisBus::connect(cfg).await.unwrap();
        bus.ping().await.unwrap();
        let rec = Recorder::default();
        let _sub = bus.subscribe("t.*", rec.handler()).await.unwrap();
        bus.publish(ev("t.secure", 1)).await.unwrap();
        wait_until("an event over TLS", || rec.len() == 1).await;
        bus.close().await.unwrap();
    }
    // The certificate is checked: without the private CA it is not trusted.
    let mut cfg = RedisConfig::new(server.tls_url());
    cfg.connect_timeout = Duration::from_secs(2);
    assert!(matches!(
        RedisBus::connect(cfg).await,
        Err(Error::Connect { .. })
    ));
    // A missing CA file is a connect error that names it.
    let mut cfg = RedisConfig::new(server.tls_url());
    cfg.tls_ca_cert = Some("/nonexistent/ca.pem".into());
    match RedisBus::connect(cfg).await {
        // The path is in the cause (`source()`), not repeated in the top-level message.
        Err(e @ Error::Connect { .. }) => {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            assert!(
                cause
                    .as_deref()
                    .is_some_and(|c| c.contains("/nonexistent/ca.pem")),
                "{e}: {cause:?}"
            );
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn pubsub_idle_subscription_stays_connected_past_its_heartbeat() {
    let prefix = unique("ef_redis_idle");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(config(Mode::PubSub, &prefix)).await;
    let mut errors = bus.errors();
    let rec = Recorder::default();
    let _sub = bus.subscribe("i.*", rec.handler()).await.unwrap();
    // The subscription pings its connection every 5 s while idle; the answer must be taken as
    // a sign of life, not as a broken connection.
    tokio::time::sleep(Duration::from_secs(6)).await;
    bus.publish(ev("i.late", 1)).await.unwrap();
    wait_until("an event after the idle period", || rec.len() == 1).await;
    while let Ok(e) = errors.try_recv() {
        assert!(
            !matches!(e.kind, BusErrorKind::Disconnected | BusErrorKind::Dropped),
            "idle subscription reported {e}"
        );
    }
    bus.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Named subscriptions across processes (issue 11): the name is the consumer group, the pattern
// only a filter

/// The helper test a second process runs for [`one_name_in_two_processes_splits_the_events`].
const SPLIT_CHILD: &str = "named_subscription_second_process";

#[tokio::test]
#[ignore = "the second process of one_name_in_two_processes_splits_the_events"]
async fn named_subscription_second_process() {
    let Some(out) = child::child_out() else {
        return;
    };
    let mut second = config(Mode::Streams, &std::env::var("EF_SPLIT_PREFIX").unwrap());
    // Another process: another consumer inside the group.
    second.consumer_name = "second-process".to_owned();
    let bus = connect(second).await;
    let o = out.clone();
    let _sub = bus
        .subscribe_with(
            &["split.*"],
            SubscriptionOptions::named("split-service"),
            Arc::new(sync_handler(move |e| {
                child::report(&o, &e.id.to_string());
                Ok(())
            })),
        )
        .await
        .unwrap();
    child::report(&out, child::READY);
    tokio::time::sleep(child::CHILD_LIFETIME).await;
}

/// A set of event ids, filled by a handler.
#[tokio::test]
async fn one_name_in_two_processes_splits_the_events() {
    let prefix = unique("ef_split");
    let _cleanup = Cleanup(prefix.clone());
    let mut first = config(Mode::Streams, &prefix);
    first.consumer_name = "first-process".to_owned();
    let bus = connect(first).await;
    let (mine, handler) = child::id_collector();
    let _shared = bus
        .subscribe_with(
            &["split.*"],
            SubscriptionOptions::named("split-service"),
            handler,
        )
        .await
        .unwrap();
    // Another service on the same pattern, with the same configuration (so the same derived
    // group, were the name ignored): its own group, every event.
    let mut other_config = config(Mode::Streams, &prefix);
    other_config.consumer_name = "other-process".to_owned();
    let other_bus = connect(other_config).await;
    let (other, handler) = child::id_collector();
    let _other = other_bus
        .subscribe_with(
            &["split.*"],
            SubscriptionOptions::named("other-service"),
            handler,
        )
        .await
        .unwrap();
    let mut second = ChildProcess::spawn(SPLIT_CHILD, &[("EF_SPLIT_PREFIX", prefix.clone())]);
    second.wait_ready(Duration::from_secs(20)).await;
    child::publish_and_check_split(&bus, &mine, &second, &other, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_name_bound_to_other_patterns_is_refused() {
    let prefix = unique("ef_bound");
    let _cleanup = Cleanup(prefix.clone());
    let bus = connect(config(Mode::Streams, &prefix)).await;
    let (_, handler) = child::id_collector();
    let _first = bus
        .subscribe_with(
            &["name.a.*"],
            SubscriptionOptions::named("bound"),
            handler.clone(),
        )
        .await
        .unwrap();
    // Sharing the group with other patterns would ack, unhandled, what the first one wants.
    let refused = bus
        .subscribe_with(
            &["name.b.*"],
            SubscriptionOptions::named("bound"),
            handler.clone(),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument(ref m)) if m.contains("bound")),
        "{refused:?}"
    );
    // The same patterns under the same name are welcome (they share the work).
    let _second = bus
        .subscribe_with(&["name.a.*"], SubscriptionOptions::named("bound"), handler)
        .await
        .unwrap();
}
