//! Issue 18: a slow at-most-once subscriber (core NATS, Redis pub/sub) holds a bounded amount
//! of memory however much is published, and reports what it dropped with a count.
//!
//! Each measurement runs in a process of its own (this test binary re-run on one ignored
//! test), so nothing else allocates in the process whose resident memory is measured, with
//! glibc's `mmap` threshold pinned at 128 KiB (`MALLOC_MMAP_THRESHOLD_`): by default glibc
//! raises that threshold after the first freed 1 MiB block and then keeps freed 1 MiB blocks
//! in its arenas, so the resident size would measure the allocator's slack (anywhere from 0
//! to ~200 MiB from run to run) rather than what the bus holds. Each uses a private server so
//! the flood does not slow other tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::bus::redis::{RedisBus, RedisConfig};
use eventflow::bus::{BusErrorKind, ErrorReceiver};
use eventflow::{Event, EventBus, EventBusExt, HandlerResult};
use eventflow_tests::nats_server::NatsServer;
use eventflow_tests::redis_server::RedisServer;
use eventflow_tests::unique;
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Messages published while the handler sleeps.
const MESSAGES: u64 = 210;
/// Payload characters per message: just under NATS's default `max_payload` of 1 MiB, so
/// `MESSAGES` of them are about 200 MiB.
const BLOB: usize = 1_000_000;
/// Allowed growth of resident memory beyond the subscription's byte bound (the default
/// `max_buffered_bytes`, 16 MiB): the clients' read and write buffers (the publisher runs in
/// this process too), the few messages the client holds before the reader takes them, decoding
/// of the message being handled. Observed: 20-65 MiB in all. Without the bound the growth is
/// 200-275 MiB (every published message is held).
const MARGIN: u64 = 96 << 20;
const WAIT: Duration = Duration::from_secs(20);

/// Runs the ignored test `test` of this binary in a process of its own (see the module docs)
/// and fails when it fails.
fn run_alone(test: &str) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(exe)
        .args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running the measurement in its own process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- {test} ---\n{stdout}{stderr}");
    assert!(output.status.success(), "{test} failed: {}", output.status);
    assert!(stdout.contains("1 passed"), "{test} did not run: {stdout}");
}

#[test]
fn slow_core_nats_subscriber_holds_bounded_memory_and_counts_drops() {
    run_alone("measure_core_nats");
}

#[test]
fn slow_redis_pubsub_subscriber_holds_bounded_memory_and_counts_drops() {
    run_alone("measure_redis_pubsub");
}

/// The resident set size of this process, from `/proc/self/status`.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Samples [`rss`] every few milliseconds on its own thread and keeps the highest.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss()));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        PeakRss {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("sampler thread");
        }
        self.peak.load(Ordering::Relaxed).max(rss())
    }
}

/// The JSON of one big event, encoded once and shared by every publish.
fn blob() -> Vec<u8> {
    let event = Event::new("big.blob", json!({ "blob": "x".repeat(BLOB) })).expect("event");
    let bytes = event.to_json().expect("encode");
    assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
    bytes
}

fn marker() -> Vec<u8> {
    Event::new("big.marker", json!({}))
        .expect("event")
        .to_json()
        .expect("encode")
}

/// A handler that sleeps until `gate` opens, counts `big.blob` events and announces the marker.
fn slow_handler(
    gate: watch::Receiver<bool>,
    seen: Arc<AtomicU64>,
    marker: mpsc::UnboundedSender<()>,
) -> impl Fn(Arc<Event>) -> futures_util::future::BoxFuture<'static, HandlerResult> + Send + Sync + 'static
{
    move |event: Arc<Event>| {
        let mut gate = gate.clone();
        let seen = seen.clone();
        let marker = marker.clone();
        Box::pin(async move {
            let _ = gate.wait_for(|open| *open).await;
            match event.event_type.as_str() {
                "big.blob" => {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                "big.marker" => {
                    let _ = marker.send(());
                }
                other => panic!("unexpected event type {other}"),
            }
            Ok(())
        })
    }
}

/// Sums the counts of the `Dropped` reports received so far; panics on a `Dropped` report
/// without a count.
fn drain_dropped(errors: &mut ErrorReceiver) -> u64 {
    let mut total = 0;
    loop {
        match errors.try_recv() {
            Ok(e) if e.kind == BusErrorKind::Dropped => {
                let count = e
                    .message
                    .strip_prefix("dropped ")
                    .and_then(|m| m.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("a Dropped report without a count: {e:?}"));
                total += count;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => return total,
            Err(e) => panic!("error stream: {e}"),
        }
    }
}

/// Publishes the flood with `publish` while the subscribed handler sleeps, then checks memory
/// and that every message was either handled or counted as dropped.
async fn flood(
    what: &str,
    mut errors: ErrorReceiver,
    gate: watch::Sender<bool>,
    seen: Arc<AtomicU64>,
    mut marker_seen: mpsc::UnboundedReceiver<()>,
    max_buffered_bytes: usize,
    mut publish: impl AsyncFnMut(&[u8]),
) {
    let payload = blob();
    let started = Instant::now();
    let before = rss();
    let peak = PeakRss::start();
    for _ in 0..MESSAGES {
        publish(&payload).await;
    }
    // The handler wakes up; the marker, published after everything, comes through once the
    // buffer has drained, so every earlier message has been handled or counted by then.
    gate.send_replace(true);
    publish(&marker()).await;
    tokio::time::timeout(WAIT, marker_seen.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: marker not handled within {WAIT:?}"));
    let peak = peak.finish();
    let growth = peak.saturating_sub(before);
    let bound = max_buffered_bytes as u64 + MARGIN;
    let handled = seen.load(Ordering::Relaxed);
    // The report of the last burst goes out when the marker is queued, racing its handling.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut dropped = drain_dropped(&mut errors);
    while handled + dropped < MESSAGES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        dropped += drain_dropped(&mut errors);
    }
    eprintln!(
        "{what}: rss {} MiB -> peak {} MiB (growth {} MiB, bound {} MiB); handled {handled}, \
         dropped {dropped} of {MESSAGES}; {:?}",
        before >> 20,
        peak >> 20,
        growth >> 20,
        bound >> 20,
        started.elapsed()
    );
    assert!(
        growth < bound,
        "{what}: resident memory grew by {} MiB, more than {} MiB",
        growth >> 20,
        bound >> 20
    );
    assert!(dropped > 0, "{what}: nothing was dropped");
    assert_eq!(
        handled + dropped,
        MESSAGES,
        "{what}: handled {handled} + dropped {dropped} != published {MESSAGES}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a process of its own by the test above"]
async fn measure_core_nats() {
    let server = NatsServer::start();
    let mut config = NatsConfig::new(server.url());
    config.subject_prefix = unique("mem");
    let prefix = config.subject_prefix.clone();
    let max_buffered_bytes = config.max_buffered_bytes;
    let bus = NatsBus::connect(config).await.expect("connect");
    let errors = bus.errors();
    let (gate, gate_rx) = watch::channel(false);
    let seen = Arc::new(AtomicU64::new(0));
    let (marker_tx, marker_rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("big.*", slow_handler(gate_rx, seen.clone(), marker_tx))
        .await
        .expect("subscribe");

    let client = async_nats::connect(server.url()).await.expect("raw client");
    let payload_subject = format!("{prefix}.big.blob");
    let marker_subject = format!("{prefix}.big.marker");
    let marker_bytes = marker();
    let mut sent = 0u64;
    flood(
        "core NATS",
        errors,
        gate,
        seen,
        marker_rx,
        max_buffered_bytes,
        async |bytes: &[u8]| {
            let subject = if bytes == marker_bytes.as_slice() {
                marker_subject.clone()
            } else {
                payload_subject.clone()
            };
            client
                .publish(subject, bytes.to_vec().into())
                .await
                .expect("publish");
            sent += 1;
            // Keeps the publisher's own buffer small: at most a few messages in flight.
            if sent.is_multiple_of(4) || bytes == marker_bytes.as_slice() {
                client.flush().await.expect("flush");
            }
        },
    )
    .await;
    bus.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a process of its own by the test above"]
async fn measure_redis_pubsub() {
    let server = RedisServer::start();
    let mut config = RedisConfig::new(server.url());
    config.key_prefix = unique("mem");
    let prefix = config.key_prefix.clone();
    let max_buffered_bytes = config.max_buffered_bytes;
    let bus = RedisBus::connect(config).await.expect("connect");
    let errors = bus.errors();
    let (gate, gate_rx) = watch::channel(false);
    let seen = Arc::new(AtomicU64::new(0));
    let (marker_tx, marker_rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("big.*", slow_handler(gate_rx, seen.clone(), marker_tx))
        .await
        .expect("subscribe");

    let client = redis::Client::open(server.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let payload_channel = format!("{prefix}:big.blob");
    let marker_channel = format!("{prefix}:big.marker");
    let marker_bytes = marker();
    flood(
        "Redis pub/sub",
        errors,
        gate,
        seen,
        marker_rx,
        max_buffered_bytes,
        async |bytes: &[u8]| {
            let channel = if bytes == marker_bytes.as_slice() {
                &marker_channel
            } else {
                &payload_channel
            };
            let receivers: i64 = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(bytes)
                .query_async(&mut conn)
                .await
                .expect("publish");
            assert_eq!(receivers, 1, "the subscriber is not subscribed");
        },
    )
    .await;
    bus.close().await.expect("close");
}
