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
const ROUNDS: usize = 3;

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
    c.durable_name = unique("d");
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

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
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
    let mut cleanup: Vec<String> = Vec::new();

    // -- core publish ------------------------------------------------------------------------
    header(&format!(
        "core publish ({CORE_N} events, then flush; best of {ROUNDS})"
    ));
    let ours_bus = bus(config(false)).await;
    let raw_prefix = unique("rawcore");
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let batch = events(CORE_N, "order.created");
        let start = Instant::now();
        for e in batch {
            ours_bus.publish(e).await.unwrap();
        }
        ours_bus.flush().await.unwrap();
        ours.push(per_second(CORE_N as u64, start.elapsed()));

        let batch = events(CORE_N, "order.created");
        let start = Instant::now();
        for e in &batch {
            let (subject, headers, payload) = raw_message(&raw_prefix, e);
            raw_client
                .publish_with_headers(subject, headers, payload.into())
                .await
                .unwrap();
        }
        // The same server round trip as `NatsBus::flush` (a request nobody answers).
        let _ = raw_client
            .request(raw_client.new_inbox(), Vec::new().into())
            .await;
        raw.push(per_second(CORE_N as u64, start.elapsed()));
    }
    report("core publish", best(&ours), best(&raw));
    ours_bus.close().await.unwrap();

    // -- JetStream publish, one ack at a time --------------------------------------------------
    let js_config = config(true);
    cleanup.push(js_config.stream_name.clone());
    let js_bus = bus(js_config).await;
    let raw_prefix = unique("rawjs");
    let raw_stream_name = raw_stream(&raw_js, &raw_prefix).await;
    cleanup.push(raw_stream_name.clone());

    header(&format!(
        "JetStream publish, await each ack ({JS_SYNC_N} events; best of {ROUNDS})"
    ));
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let batch = events(JS_SYNC_N, "order.created");
        let start = Instant::now();
        for e in batch {
            js_bus.publish(e).await.unwrap();
        }
        ours.push(per_second(JS_SYNC_N as u64, start.elapsed()));

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
        raw.push(per_second(JS_SYNC_N as u64, start.elapsed()));
    }
    report("JetStream publish (sync acks)", best(&ours), best(&raw));

    // -- JetStream publish, pipelined ---------------------------------------------------------
    header(&format!(
        "JetStream publish_batch, {WINDOW} acks in flight ({JS_PIPE_N} events; best of {ROUNDS})"
    ));
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let batch = events(JS_PIPE_N, "order.created");
        let start = Instant::now();
        js_bus.publish_batch(batch).await.unwrap();
        ours.push(per_second(JS_PIPE_N as u64, start.elapsed()));

        let batch = events(JS_PIPE_N, "order.created");
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
        raw.push(per_second(JS_PIPE_N as u64, start.elapsed()));
    }
    report("JetStream publish (pipelined)", best(&ours), best(&raw));

    // -- end to end through a durable consumer ------------------------------------------------
    header(&format!(
        "JetStream end to end: publish_batch -> durable consumer -> handler -> ack ({E2E_N} events)"
    ));
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for round in 0..2 {
        // ours
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
        let batch: Vec<Event> = events(E2E_N, "e2e.tick");
        let start = Instant::now();
        js_bus.publish_batch(batch).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), done.notified())
            .await
            .expect("ours: not every event was handled");
        ours.push(per_second(E2E_N as u64, start.elapsed()));
        drop(sub);

        // raw: the same durable pull consumer, decode the envelope, ack
        let consumer_name = format!("raw-e2e-{round}");
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
        let batch: Vec<Event> = events(E2E_N, "e2e.tick");
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
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("raw: not every event was handled")
            .unwrap();
        raw.push(per_second(E2E_N as u64, start.elapsed()));
    }
    report(
        "JetStream end to end (durable consumer)",
        best(&ours),
        best(&raw),
    );

    js_bus.close().await.unwrap();
    for name in cleanup {
        let _ = raw_js.delete_stream(&name).await;
    }
}
