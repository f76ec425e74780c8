//! Benchmark: the buses on clustered brokers, next to the raw clients doing the same work on
//! the same cluster in the same run.
//!
//! - JetStream on a private 3-node cluster, streams with 1 and 3 replicas: publish awaiting
//!   each PubAck, and pipelined (`publish_batch`, 256 acks in flight).
//! - Redis Streams, pipelined `XADD` (batches of 100): one node (`REDIS_URL`, default
//!   `redis://127.0.0.1:6379`) and a private 3-primary Redis Cluster.
//!
//! `cargo bench -p eventflow-benches --all-features --bench clusters`
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::bus::redis::{RedisBus, RedisConfig};
use eventflow::{Event, EventBus};
use eventflow_benches::{header, per_second, report};
use eventflow_tests::nats_cluster::NatsCluster;
use eventflow_tests::redis_cluster::RedisCluster;
use serde_json::json;

const JS_SYNC_N: usize = 2_000;
const JS_PIPE_N: usize = 20_000;
const WINDOW: usize = 256;
const XADD_N: usize = 50_000;
const BATCH: usize = 100;
const ROUNDS: usize = 3;

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        uuid::Uuid::new_v4().as_u128() as u32
    )
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                "order.created",
                json!({ "order_id": format!("o-{i}"), "amount": 1234, "currency": "EUR" }),
            )
            .unwrap()
            .with_correlation("bench")
        })
        .collect()
}

/// Runs `ours` and `raw` `rounds` times each, alternating which goes first, and returns the
/// best rate of each.
async fn compare(
    rounds: usize,
    mut ours: impl AsyncFnMut() -> f64,
    mut raw: impl AsyncFnMut() -> f64,
) -> (f64, f64) {
    let (mut o, mut r) = (0.0_f64, 0.0_f64);
    for round in 0..rounds {
        if round % 2 == 0 {
            o = o.max(ours().await);
            r = r.max(raw().await);
        } else {
            r = r.max(raw().await);
            o = o.max(ours().await);
        }
    }
    (o, r)
}

/// The raw JetStream message: the same envelope, subject and header as the bus.
fn raw_message(prefix: &str, event: &Event) -> (String, HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, event.id.to_string());
    (
        format!("{prefix}.{}", event.event_type),
        headers,
        serde_json::to_vec(event).unwrap(),
    )
}

async fn jetstream(cluster: &NatsCluster, replicas: usize) {
    let mut config = NatsConfig::jetstream(cluster.urls());
    config.subject_prefix = unique("bench");
    config.stream_name = unique("BENCH");
    config.stream_replicas = replicas;
    config.publish_window = WINDOW;
    config.request_timeout = Duration::from_secs(10);
    let deadline = Instant::now() + Duration::from_secs(30);
    let bus = loop {
        match NatsBus::connect(config.clone()).await {
            Ok(bus) => break bus,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the private NATS cluster never became ready: {e}"),
        }
    };
    let seeds: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
    let raw_client = async_nats::connect(seeds).await.unwrap();
    let raw_js = jetstream::new(raw_client);
    let raw_prefix = unique("raw");
    let raw_stream = unique("RAW");
    raw_js
        .create_or_update_stream(stream::Config {
            name: raw_stream.clone(),
            subjects: vec![format!("{raw_prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .unwrap();

    header(&format!(
        "JetStream R{replicas} on a 3-node cluster, await each ack ({JS_SYNC_N} events; best of {ROUNDS})"
    ));
    let (ours, raw) = compare(
        ROUNDS,
        async || {
            let batch = events(JS_SYNC_N);
            let start = Instant::now();
            for e in batch {
                bus.publish(e).await.unwrap();
            }
            per_second(JS_SYNC_N as u64, start.elapsed())
        },
        async || {
            let batch = events(JS_SYNC_N);
            let start = Instant::now();
            for e in &batch {
                let (subject, headers, payload) = raw_message(&raw_prefix, e);
                raw_js
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            per_second(JS_SYNC_N as u64, start.elapsed())
        },
    )
    .await;
    report(
        &format!("JetStream R{replicas} publish (sync acks)"),
        ours,
        raw,
    );

    header(&format!(
        "JetStream R{replicas} on a 3-node cluster, {WINDOW} acks in flight ({JS_PIPE_N} events; best of {ROUNDS})"
    ));
    let (ours, raw) = compare(
        ROUNDS,
        async || {
            let batch = events(JS_PIPE_N);
            let start = Instant::now();
            bus.publish_batch(batch).await.unwrap();
            per_second(JS_PIPE_N as u64, start.elapsed())
        },
        async || {
            let batch = events(JS_PIPE_N);
            let start = Instant::now();
            let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
            for e in &batch {
                if in_flight.len() >= WINDOW {
                    in_flight.pop_front().unwrap().await.unwrap();
                }
                let (subject, headers, payload) = raw_message(&raw_prefix, e);
                in_flight.push_back(
                    raw_js
                        .publish_with_headers(subject, headers, payload.into())
                        .await
                        .unwrap(),
                );
            }
            while let Some(ack) = in_flight.pop_front() {
                ack.await.unwrap();
            }
            per_second(JS_PIPE_N as u64, start.elapsed())
        },
    )
    .await;
    report(
        &format!("JetStream R{replicas} publish (pipelined)"),
        ours,
        raw,
    );
    let stream = bus.config().stream_name.clone();
    bus.close().await.unwrap();
    for name in [stream, raw_stream] {
        let _ = raw_js.delete_stream(&name).await;
    }
}

/// Pipelined XADD through the bus and through the raw connection `raw`, `BATCH` at a time.
async fn xadd(name: &str, config: RedisConfig, mut raw: impl redis::aio::ConnectionLike) {
    let bus = RedisBus::connect(config.clone())
        .await
        .unwrap_or_else(|e| panic!("Redis is not reachable at {:?}: {e}", config.addrs));
    let cluster = config.addrs.len() > 1;
    let raw_key = if cluster {
        format!("{{{}}}:stream", unique("raw"))
    } else {
        format!("{}:stream", unique("raw"))
    };
    header(&format!(
        "Redis Streams {name}, publish_batch ({BATCH} XADD pipelined; {XADD_N} events; best of {ROUNDS})"
    ));
    let (ours, theirs) = compare(
        ROUNDS,
        async || {
            let batch = events(XADD_N);
            let start = Instant::now();
            let mut batch = batch.into_iter();
            loop {
                let chunk: Vec<Event> = batch.by_ref().take(BATCH).collect();
                if chunk.is_empty() {
                    break;
                }
                bus.publish_batch(chunk).await.unwrap();
            }
            per_second(XADD_N as u64, start.elapsed())
        },
        async || {
            let batch = events(XADD_N);
            let start = Instant::now();
            for chunk in batch.chunks(BATCH) {
                let mut pipe = redis::pipe();
                for e in chunk {
                    pipe.cmd("XADD")
                        .arg(&raw_key)
                        .arg("*")
                        .arg("type")
                        .arg(&e.event_type)
                        .arg("data")
                        .arg(serde_json::to_vec(e).unwrap())
                        .ignore();
                }
                pipe.query_async::<()>(&mut raw).await.unwrap();
            }
            drop(batch);
            per_second(XADD_N as u64, start.elapsed())
        },
    )
    .await;
    report(&format!("Redis XADD pipelined ({name})"), ours, theirs);
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(bus.stream_key())
        .query_async(&mut raw)
        .await;
    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&raw_key).query_async(&mut raw).await;
    bus.close().await.unwrap();
}

#[tokio::main]
async fn main() {
    let nats = tokio::task::spawn_blocking(|| NatsCluster::start(3))
        .await
        .unwrap();
    jetstream(&nats, 1).await;
    jetstream(&nats, 3).await;
    drop(nats);

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let mut config = RedisConfig::new(url.clone());
    config.use_streams = true;
    config.key_prefix = unique("bench");
    config.stream_max_len = 0;
    let raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis is not reachable at {url}: {e}"));
    xadd("one node", config, raw).await;

    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap();
    let mut config = RedisConfig::cluster(cluster.urls());
    config.use_streams = true;
    config.key_prefix = unique("bench");
    config.stream_max_len = 0;
    let raw = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    xadd("3-primary cluster", config, raw).await;
}
