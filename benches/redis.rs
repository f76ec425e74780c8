//! Benchmark: the Redis bus next to raw redis-rs sending the same commands in the same run.
//!
//! Needs Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`). Run with
//! `cargo bench --workspace --all-features --bench redis`. Each figure is events per second;
//! the raw side encodes the same `Event`s with serde_json and sends the same commands
//! (`PUBLISH`, `XADD MAXLEN ~`, pipelined `XADD`, `XREADGROUP` + `XACK`) over the same redis-rs
//! connection types with the same settings. The ratio is the result.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventflow::bus::redis::{RedisBus, RedisConfig};
use eventflow::{Event, EventBus};
use eventflow_benches::{header, per_second, report};
use redis::Value;
use redis::aio::ConnectionManager;
use serde_json::json;

const SEQUENTIAL: usize = 10_000;
const PIPELINED: usize = 100_000;
const BATCH: usize = 100;
const END_TO_END: usize = 20_000;
/// Slices per publishing figure (see [`interleaved`]).
const ROUNDS: usize = 40;
/// Rounds of the end-to-end figure; each side's rate is the total over its rounds.
const END_TO_END_ROUNDS: usize = 6;
const MAX_LEN: usize = 100_000;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                "bench.order.created",
                json!({ "order_id": format!("o-{i}"), "total": 42.5, "lines": [1, 2, 3] }),
            )
            .unwrap()
            .with_correlation("bench")
        })
        .collect()
}

fn prefix(name: &str) -> String {
    format!(
        "ef_bench_{name}_{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

async fn bus(streams: bool, prefix: &str) -> RedisBus {
    let mut config = RedisConfig::new(redis_url());
    config.use_streams = streams;
    config.key_prefix = prefix.to_owned();
    config.stream_max_len = MAX_LEN;
    RedisBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("Redis is not reachable at {}: {e}", redis_url()))
}

async fn raw_conn() -> ConnectionManager {
    let client = redis::Client::open(redis_url()).unwrap();
    // The same connection type and response timeout the bus uses, so the ratio measures the
    // bus's own work.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(RedisConfig::default().response_timeout));
    ConnectionManager::new_with_config(client, config)
        .await
        .unwrap()
}

async fn cleanup(conn: &mut ConnectionManager, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(conn).await.unwrap();
    }
}

fn raw_xadd(key: &str, event: &Event) -> redis::Cmd {
    let data = serde_json::to_vec(event).unwrap();
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key)
        .arg("MAXLEN")
        .arg("~")
        .arg(MAX_LEN)
        .arg("*")
        .arg("type")
        .arg(&event.event_type)
        .arg("data")
        .arg(data);
    cmd
}

/// Rates of ours and raw over `n` events each, run in `ROUNDS` alternating slices (who goes
/// first takes turns), each side's rate from the sum of its slices' times. Fine interleaving
/// spreads bursts of other work on the (shared) machine evenly over both sides.
async fn interleaved<O, OF, R, RF>(n: usize, mut ours: O, mut raw: R) -> (f64, f64)
where
    O: FnMut(Vec<Event>) -> OF,
    OF: Future<Output = ()>,
    R: FnMut(Vec<Event>) -> RF,
    RF: Future<Output = ()>,
{
    let slice = n / ROUNDS;
    let (mut o, mut r) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        for side in 0..2 {
            let batch = events(slice);
            let start = Instant::now();
            if (round + side) % 2 == 0 {
                ours(batch).await;
                o += start.elapsed();
            } else {
                raw(batch).await;
                r += start.elapsed();
            }
        }
    }
    let total = (slice * ROUNDS) as u64;
    (per_second(total, o), per_second(total, r))
}

async fn pubsub_publish() {
    let p = prefix("pub");
    let bus = bus(false, &p).await;
    let mut raw = raw_conn().await;
    let channel = format!("{p}:bench.order.created");
    let (ours, theirs) = interleaved(
        SEQUENTIAL,
        |events| {
            let bus = bus.clone();
            async move {
                for e in events {
                    bus.publish(e).await.unwrap();
                }
            }
        },
        |events| {
            let mut raw = raw.clone();
            let channel = channel.clone();
            async move {
                for e in events {
                    let data = serde_json::to_vec(&e).unwrap();
                    let _: () = redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(data)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                }
            }
        },
    )
    .await;
    report("pub/sub publish (sequential PUBLISH)", ours, theirs);
    bus.close().await.unwrap();
    cleanup(&mut raw, &p).await;
}

async fn xadd_sequential() {
    let p = prefix("xadd");
    let bus = bus(true, &p).await;
    let mut raw = raw_conn().await;
    let key = format!("{p}:raw");
    let (ours, theirs) = interleaved(
        SEQUENTIAL,
        |events| {
            let bus = bus.clone();
            async move {
                for e in events {
                    bus.publish(e).await.unwrap();
                }
            }
        },
        |events| {
            let mut raw = raw.clone();
            let key = key.clone();
            async move {
                for e in events {
                    let _: () = raw_xadd(&key, &e).query_async(&mut raw).await.unwrap();
                }
            }
        },
    )
    .await;
    report("streams publish (sequential XADD)", ours, theirs);
    bus.close().await.unwrap();
    cleanup(&mut raw, &p).await;
}

async fn xadd_pipelined() {
    let p = prefix("xaddp");
    let bus = bus(true, &p).await;
    let mut raw = raw_conn().await;
    let key = format!("{p}:raw");
    let (ours, theirs) = interleaved(
        PIPELINED,
        |events| {
            let bus = bus.clone();
            async move {
                let mut events = events.into_iter();
                loop {
                    let chunk: Vec<Event> = events.by_ref().take(BATCH).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    bus.publish_batch(chunk).await.unwrap();
                }
            }
        },
        |events| {
            let mut raw = raw.clone();
            let key = key.clone();
            async move {
                for chunk in events.chunks(BATCH) {
                    let mut pipe = redis::pipe();
                    for e in chunk {
                        pipe.add_command(raw_xadd(&key, e)).ignore();
                    }
                    let _: () = pipe.query_async(&mut raw).await.unwrap();
                }
            }
        },
    )
    .await;
    report(
        &format!("streams publish_batch ({BATCH} XADD pipelined)"),
        ours,
        theirs,
    );
    bus.close().await.unwrap();
    cleanup(&mut raw, &p).await;
}

/// Publishes `events` in pipelined batches of XADD on `conn` (the raw publisher).
async fn feed(conn: &mut ConnectionManager, key: &str, events: &[Event]) {
    for chunk in events.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for e in chunk {
            pipe.add_command(raw_xadd(key, e)).ignore();
        }
        let _: () = pipe.query_async(conn).await.unwrap();
    }
}

async fn wait_for(count: &AtomicU64, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::Acquire) < n as u64 {
        assert!(Instant::now() < deadline, "end-to-end run stalled");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Ours: a RedisBus publishes in pipelined batches; a RedisBus subscription (consumer group)
/// hands every event to a handler.
async fn end_to_end_ours(raw: &mut ConnectionManager) -> Duration {
    let p = prefix("e2e");
    let bus = bus(true, &p).await;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let sub = bus
        .subscribe(
            "bench.>",
            Arc::new(move |e: Arc<Event>| {
                std::hint::black_box(&e.payload);
                c.fetch_add(1, Ordering::Release);
                async { Ok(()) }
            }),
        )
        .await
        .unwrap();
    let mut batch = events(END_TO_END).into_iter();
    let start = Instant::now();
    loop {
        let chunk: Vec<Event> = batch.by_ref().take(BATCH).collect();
        if chunk.is_empty() {
            break;
        }
        bus.publish_batch(chunk).await.unwrap();
    }
    wait_for(&count, END_TO_END).await;
    let took = start.elapsed();
    drop(sub);
    bus.close().await.unwrap();
    cleanup(raw, &p).await;
    took
}

/// Raw: pipelined XADD, and a redis-rs consumer reading a group the same way (XREADGROUP COUNT
/// BLOCK, decode the envelope, XACK the batch).
async fn end_to_end_raw(raw: &mut ConnectionManager) -> Duration {
    let p = prefix("e2e_raw");
    let key = format!("{p}:stream");
    let group = "raw";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(raw)
        .await
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let k = key.clone();
    let consumer = tokio::spawn(async move {
        while c.load(Ordering::Acquire) < END_TO_END as u64 {
            let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg("c")
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS")
                .arg(&k)
                .arg(">")
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut acks = Vec::new();
            for key in reply.keys {
                for entry in key.ids {
                    if let Some(Value::BulkString(data)) = entry.map.get("data") {
                        let e: Event = serde_json::from_slice(data).unwrap();
                        std::hint::black_box(&e.payload);
                        c.fetch_add(1, Ordering::Release);
                    }
                    acks.push(entry.id);
                }
            }
            if !acks.is_empty() {
                let _: () = redis::cmd("XACK")
                    .arg(&k)
                    .arg(group)
                    .arg(&acks)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
    });
    let batch = events(END_TO_END);
    let start = Instant::now();
    feed(raw, &key, &batch).await;
    wait_for(&count, END_TO_END).await;
    let took = start.elapsed();
    consumer.await.unwrap();
    cleanup(raw, &p).await;
    took
}

async fn end_to_end() {
    let mut raw = raw_conn().await;
    let (mut ours, mut theirs) = (Duration::ZERO, Duration::ZERO);
    for round in 0..END_TO_END_ROUNDS {
        if round % 2 == 0 {
            ours += end_to_end_ours(&mut raw).await;
            theirs += end_to_end_raw(&mut raw).await;
        } else {
            theirs += end_to_end_raw(&mut raw).await;
            ours += end_to_end_ours(&mut raw).await;
        }
    }
    let total = (END_TO_END * END_TO_END_ROUNDS) as u64;
    let (ours, theirs) = (per_second(total, ours), per_second(total, theirs));
    report(
        "streams end-to-end (XADD -> group -> handler)",
        ours,
        theirs,
    );
}

#[tokio::main]
async fn main() {
    header("redis bus vs raw redis-rs");
    pubsub_publish().await;
    xadd_sequential().await;
    xadd_pipelined().await;
    end_to_end().await;
}
