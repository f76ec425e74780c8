//! Benchmark: `NatsBus` next to raw async-nats doing the same work in the same run.
//!
//! Both sides publish the same events: the JSON envelope (`serde_json`) on
//! `<prefix>.<event type>` with the event id in the `Nats-Msg-Id` header. Runs against
//! `NATS_URL` (default `nats://127.0.0.1:4222`, JetStream enabled); every stream it creates is
//! deleted at the end.
//!
//! `cargo bench --workspace --all-features --bench nats`
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, consumer::pull, context::PublishAckFuture, stream};
use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::{Event, EventBus, EventBusExt, sync_handler};
use eventflow_benches::{header, per_second, report};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Notify;

const CORE_N: usize = 100_000;
const JS_SYNC_N: usize = 3_000;
const JS_PIPE_N: usize = 30_000;
const E2E_N: usize = 20_000;
const WINDOW: usize = 256;
const ROUNDS: usize = 5;

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        uuid::Uuid::new_v4().as_u128() as u32
    )
}

fn events(n: usize, event_type: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                event_type,
                json!({ "order_id": format!("o-{i}"), "amount": 1234, "currency": "EUR" }),
            )
            .unwrap()
            .with_correlation("bench")
        })
        .collect()
}

/// What the raw side sends: the same envelope, subject and header as the bus.
fn raw_message(prefix: &str, event: &Event) -> (String, HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, event.id.to_string());
    (
        format!("{prefix}.{}", event.event_type),
        headers,
        serde_json::to_vec(event).unwrap(),
    )
}

fn config(jetstream: bool) -> NatsConfig {
    let mut c = NatsConfig::new(url());
    c.subject_prefix = unique("bench");
    c.enable_jetstream = jetstream;
    c.stream_name = unique("BENCH");
    c.publish_window = WINDOW;
    c.request_timeout = Duration::from_secs(10);
    c
}

async fn bus(config: NatsConfig) -> NatsBus {
    NatsBus::connect(config).await.unwrap_or_else(|e| {
        panic!(
            "NATS is not reachable at {} (start it, or set NATS_URL): {e}",
            url()
        )
    })
}

/// A raw stream with the same settings as the bus creates.
async fn raw_stream(js: &jetstream::Context, prefix: &str) -> String {
    let name = unique("RAW");
    js.create_or_update_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    name
}

/// Runs `ours` and `raw` `rounds` times each, alternating which goes first (so neither always
/// meets a server still busy with the other's work), and returns the best rate of each.
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

/// Raw pipelined JetStream publish with at most `WINDOW` acks outstanding (what
/// `NatsBus::publish_batch` does).
async fn raw_pipelined(js: &jetstream::Context, prefix: &str, batch: &[Event]) {
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for e in batch {
        if in_flight.len() >= WINDOW {
            in_flight.pop_front().unwrap().await.unwrap();
        }
        let (subject, headers, payload) = raw_message(prefix, e);
        in_flight.push_back(
            js.publish_with_headers(subject, headers, payload.into())
                .await
                .unwrap(),
        );
    }
    while let Some(ack) = in_flight.pop_front() {
        ack.await.unwrap();
    }
}

#[tokio::main]
async fn main() {
    let raw_client = async_nats::connect(url()).await.unwrap_or_else(|e| {
        panic!(
            "NATS is not reachable at {} (start it, or set NATS_URL): {e}",
            url()
        )
    });
    let raw_js = jetstream::new(raw_client.clone());

    // -- core publish ------------------------------------------------------------------------
    header(&format!(
        "core publish ({CORE_N} events, then a server round trip; best of {ROUNDS})"
    ));
    let core_bus = bus(config(false)).await;
    let raw_prefix = unique("rawcore");
    let (ours, raw) = compare(
        ROUNDS,
        async || {
            let batch = events(CORE_N, "order.created");
            let start = Instant::now();
            for e in batch {
                core_bus.publish(e).await.unwrap();
            }
            core_bus.flush().await.unwrap();
            per_second(CORE_N as u64, start.elapsed())
        },
        async || {
            let batch = events(CORE_N, "order.created");
            let start = Instant::now();
            // By value, like `publish`: freeing each event is part of the work on both sides.
            for e in batch {
                let (subject, headers, payload) = raw_message(&raw_prefix, &e);
                raw_client
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .unwrap();
            }
            // The same server round trip as `NatsBus::flush` (a request nobody answers).
            let _ = raw_client
                .request(raw_client.new_inbox(), Vec::new().into())
                .await;
            per_second(CORE_N as u64, start.elapsed())
        },
    )
    .await;
    report("core publish", ours, raw);
    core_bus.close().await.unwrap();

    // -- JetStream publish, one ack at a time --------------------------------------------------
    let js_config = config(true);
    let bus_stream = js_config.stream_name.clone();
    let js_bus = bus(js_config).await;
    let raw_prefix = unique("rawjs");
    let raw_stream_name = raw_stream(&raw_js, &raw_prefix).await;

    header(&format!(
        "JetStream publish, await each ack ({JS_SYNC_N} events; best of {ROUNDS})"
    ));
    let (ours, raw) = compare(
        ROUNDS,
        async || {
            let batch = events(JS_SYNC_N, "order.created");
            let start = Instant::now();
            for e in batch {
                js_bus.publish(e).await.unwrap();
            }
            per_second(JS_SYNC_N as u64, start.elapsed())
        },
        async || {
            let batch = events(JS_SYNC_N, "order.created");
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
    report("JetStream publish (sync acks)", ours, raw);

    // -- JetStream publish, pipelined ---------------------------------------------------------
    header(&format!(
        "JetStream publish_batch, {WINDOW} acks in flight ({JS_PIPE_N} events; best of {ROUNDS})"
    ));
    let (ours, raw) = compare(
        ROUNDS,
        async || {
            let batch = events(JS_PIPE_N, "order.created");
            let start = Instant::now();
            js_bus.publish_batch(batch).await.unwrap();
            per_second(JS_PIPE_N as u64, start.elapsed())
        },
        async || {
            let batch = events(JS_PIPE_N, "order.created");
            let start = Instant::now();
            raw_pipelined(&raw_js, &raw_prefix, &batch).await;
            per_second(JS_PIPE_N as u64, start.elapsed())
        },
    )
    .await;
    report("JetStream publish (pipelined)", ours, raw);

    // -- end to end through a durable consumer ------------------------------------------------
    header(&format!(
        "JetStream end to end: publish_batch -> durable consumer -> handler -> ack ({E2E_N} events; best of 4)"
    ));
    let mut raw_round = 0;
    let (ours, raw) = compare(
        4,
        async || {
            let handled = Arc::new(AtomicUsize::new(0));
            let done = Arc::new(Notify::new());
            let sub = {
                let (handled, done) = (handled.clone(), done.clone());
                js_bus
                    .on(
                        "e2e.*",
                        sync_handler(move |_e: &Event| {
                            if handled.fetch_add(1, Ordering::Relaxed) + 1 == E2E_N {
                                done.notify_one();
                            }
                            Ok(())
                        }),
                    )
                    .await
                    .unwrap()
            };
            let batch = events(E2E_N, "e2e.tick");
            let start = Instant::now();
            js_bus.publish_batch(batch).await.unwrap();
            tokio::time::timeout(Duration::from_secs(60), done.notified())
                .await
                .expect("ours: not every event was handled");
            let rate = per_second(E2E_N as u64, start.elapsed());
            drop(sub);
            rate
        },
        async || {
            // The same: a durable pull consumer; decode the envelope, ack.
            raw_round += 1;
            let consumer_name = format!("raw-e2e-{raw_round}");
            let consumer: jetstream::consumer::PullConsumer = raw_js
                .get_stream(&raw_stream_name)
                .await
                .unwrap()
                .get_or_create_consumer(
                    &consumer_name,
                    pull::Config {
                        durable_name: Some(consumer_name.clone()),
                        filter_subject: format!("{raw_prefix}.e2e.*"),
                        deliver_policy: jetstream::consumer::DeliverPolicy::New,
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let reader = tokio::spawn(async move {
                let mut n = 0;
                while n < E2E_N {
                    let m = messages.next().await.unwrap().unwrap();
                    let e: Event = serde_json::from_slice(&m.payload).unwrap();
                    std::hint::black_box(&e);
                    m.ack().await.unwrap();
                    n += 1;
                }
            });
            let batch = events(E2E_N, "e2e.tick");
            let start = Instant::now();
            raw_pipelined(&raw_js, &raw_prefix, &batch).await;
            tokio::time::timeout(Duration::from_secs(60), reader)
                .await
                .expect("raw: not every event was handled")
                .unwrap();
            per_second(E2E_N as u64, start.elapsed())
        },
    )
    .await;
    report("JetStream end to end (durable consumer)", ours, raw);

    js_bus.close().await.unwrap();
    for name in [bus_stream, raw_stream_name] {
        let _ = raw_js.delete_stream(&name).await;
    }
}
