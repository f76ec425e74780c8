//! Benchmark: the in-memory bus, publish to delivery, next to raw tokio channels.
//!
//! For 1 and 4 subscribers, sync and async dispatch, `InMemoryBus` delivers 200,000 pre-built
//! events to counting handlers. The raw baseline does the same fan-out with tokio `mpsc`
//! channels carrying `Arc<Event>` (one channel and one counting consumer task per subscriber,
//! capacity 1000), measured in the same run. Each figure is the median of 7 runs.
//!
//! Run: `cargo bench -p eventflow-benches --all-features --bench memory`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use eventflow::Event;
use eventflow::bus::memory::InMemoryBus;
use eventflow::bus::{EventBus, sync_handler};
use eventflow_benches::{header, per_second, report};
use serde_json::json;
use tokio::sync::mpsc;

const EVENTS: usize = 200_000;
const BUFFER: usize = 1000;
const RUNS: usize = 7;

fn events() -> Vec<Event> {
    (0..EVENTS)
        .map(|i| {
            Event::new("order.created", json!({ "order_id": i, "total": 42 }))
                .expect("valid event")
                .with_correlation("bench")
        })
        .collect()
}

/// Raw baseline: one bounded channel and one counting consumer task per subscriber; the
/// producer wraps each event in an `Arc` and sends a clone to every channel.
async fn raw(template: &[Event], subscribers: usize) -> f64 {
    let events = template.to_vec();
    let count = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(subscribers);
    let mut consumers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (tx, mut rx) = mpsc::channel::<Arc<Event>>(BUFFER);
        let count = count.clone();
        senders.push(tx);
        consumers.push(tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                std::hint::black_box(&event);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for event in events {
        let event = Arc::new(event);
        for tx in &senders {
            tx.send(event.clone()).await.expect("consumer alive");
        }
    }
    drop(senders);
    for c in consumers {
        c.await.expect("consumer");
    }
    let elapsed = start.elapsed();
    assert_eq!(count.load(Ordering::Relaxed), (EVENTS * subscribers) as u64);
    per_second(EVENTS as u64, elapsed)
}

/// eventflow: `subscribers` counting handlers on `*`; publish every event, then `close` (which,
/// in async mode, returns once every queue is drained).
async fn ours(template: &[Event], subscribers: usize, bus: InMemoryBus) -> f64 {
    let events = template.to_vec();
    let count = Arc::new(AtomicU64::new(0));
    for _ in 0..subscribers {
        let count = count.clone();
        bus.subscribe(
            "order.*",
            Arc::new(sync_handler(move |event| {
                std::hint::black_box(event);
                count.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })),
        )
        .await
        .expect("subscribe")
        .detach();
    }
    let start = Instant::now();
    for event in events {
        bus.publish(event).await.expect("publish");
    }
    bus.close().await.expect("close");
    let elapsed = start.elapsed();
    assert_eq!(count.load(Ordering::Relaxed), (EVENTS * subscribers) as u64);
    per_second(EVENTS as u64, elapsed)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        // `cargo bench ... -- <filter>` runs only the cases whose name contains the filter.
        let filter: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let template = events();
        header(&format!(
            "in-memory bus: publish to delivery, {EVENTS} events (raw: tokio mpsc of Arc<Event>)"
        ));
        for (mode, make) in [
            ("sync", (|| InMemoryBus::new()) as fn() -> InMemoryBus),
            ("async(1000)", || {
                InMemoryBus::builder().async_dispatch(BUFFER).build()
            }),
        ] {
            for subscribers in [1, 4] {
                let name = format!("{mode}, {subscribers} subscriber(s)");
                if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
                    continue;
                }
                let (mut o, mut r) = (Vec::new(), Vec::new());
                // Interleaved, so that machine noise hits both sides alike.
                for _ in 0..RUNS {
                    o.push(ours(&template, subscribers, make()).await);
                    r.push(raw(&template, subscribers).await);
                }
                report(&name, median(o), median(r));
            }
        }
    });
}
