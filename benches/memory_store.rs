//! Benchmark: the in-memory event store, each figure next to a raw baseline doing the same
//! work with a plain `Mutex<Vec<Event>>` in the same run.
//!
//! Run with `cargo bench --workspace --all-features --bench memory_store`.
//!
//! - append (single events, and batches of 100) vs pushing clones onto a `Mutex<Vec<Event>>`;
//! - load_stream vs cloning a stream's events out of a `Vec<Event>`;
//! - read_all (pages of 1,000) vs cloning slices of a `Vec<Event>`.
//!
//! Events are built before timing starts, so both sides measure only storing and reading.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use eventflow::store::memory::InMemoryEventStore;
use eventflow::{Event, EventStore, ExpectedVersion};
use eventflow_benches::{header, per_second, report};
use serde_json::json;

const STREAMS: usize = 100;
const APPENDS: usize = 100_000;
const BATCH: usize = 100;
/// Each measurement is repeated this many times, ours and raw alternating, and the best of each
/// is reported: on a shared, busy machine the best run is the one least disturbed.
const ROUNDS: usize = 5;

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                "order.line_added",
                json!({ "order": i % STREAMS, "sku": format!("sku-{i}"), "qty": 1 }),
            )
            .expect("valid event type")
        })
        .collect()
}

fn stream_names() -> Vec<String> {
    (0..STREAMS).map(|s| format!("order-{s}")).collect()
}

/// One timed run of `f`, in events per second.
async fn best<F, Fut>(n: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    best_with(n, || (), |()| f()).await
}

/// One timed run of `run` on an untimed `setup()`, in events per second.
async fn best_with<S, Setup, F, Fut>(n: usize, mut setup: Setup, mut run: F) -> f64
where
    Setup: FnMut() -> S,
    F: FnMut(S) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let input = setup();
    let start = Instant::now();
    run(input).await;
    per_second(n as u64, start.elapsed())
}

/// Keeps the best figures per measurement across rounds.
#[derive(Default)]
struct Best(Vec<(&'static str, f64, f64)>);

impl Best {
    fn record(&mut self, name: &'static str, ours: f64, raw: f64) {
        match self.0.iter_mut().find(|(n, _, _)| *n == name) {
            Some(entry) => {
                entry.1 = entry.1.max(ours);
                entry.2 = entry.2.max(raw);
            }
            None => self.0.push((name, ours, raw)),
        }
    }
}

async fn append_single(names: &[String], best_of: &mut Best) {
    let input = events(APPENDS);
    let ours = best_with(
        APPENDS,
        || input.clone(),
        |input| async move {
            let store = InMemoryEventStore::new();
            for (i, event) in input.into_iter().enumerate() {
                let recorded = store
                    .append(&names[i % STREAMS], ExpectedVersion::Any, event)
                    .await
                    .expect("append");
                black_box(recorded);
            }
        },
    )
    .await;
    let raw = best_with(
        APPENDS,
        || input.clone(),
        |input| {
            async move {
                let log = Mutex::new(Vec::new());
                for event in input {
                    // The store also hands back the recorded copy: clone here too.
                    black_box(event.clone());
                    log.lock().expect("lock").push(event);
                }
                black_box(log);
            }
        },
    )
    .await;
    best_of.record("append, single events", ours, raw);
}

async fn append_batches(names: &[String], best_of: &mut Best) {
    let input = events(APPENDS);
    let ours = best_with(
        APPENDS,
        || input.clone(),
        |input| async move {
            let store = InMemoryEventStore::new();
            let mut input = input.into_iter();
            let mut i = 0;
            loop {
                let batch: Vec<Event> = input.by_ref().take(BATCH).collect();
                if batch.is_empty() {
                    break;
                }
                let recorded = store
                    .append_batch(&names[i % STREAMS], ExpectedVersion::Any, batch)
                    .await
                    .expect("append_batch");
                black_box(recorded);
                i += 1;
            }
        },
    )
    .await;
    let raw = best_with(
        APPENDS,
        || input.clone(),
        |input| async move {
            let log = Mutex::new(Vec::new());
            let mut input = input.into_iter();
            loop {
                let batch: Vec<Event> = input.by_ref().take(BATCH).collect();
                if batch.is_empty() {
                    break;
                }
                black_box(batch.clone());
                log.lock().expect("lock").extend(batch);
            }
            black_box(log);
        },
    )
    .await;
    best_of.record("append_batch, 100 events per batch", ours, raw);
}

async fn reads(names: &[String], best_of: &mut Best) {
    // One store of APPENDS events over STREAMS streams, and the same events in plain vectors.
    let store = InMemoryEventStore::new();
    let mut per_stream: Vec<Vec<Event>> = vec![Vec::new(); STREAMS];
    for (i, event) in events(APPENDS).into_iter().enumerate() {
        let recorded = store
            .append(&names[i % STREAMS], ExpectedVersion::Any, event)
            .await
            .expect("append");
        per_stream[i % STREAMS].push(recorded);
    }
    let all = store.read_all(0, usize::MAX).await.expect("read_all");

    let ours = best(APPENDS, || async {
        for name in names {
            black_box(store.load_stream(name, 1).await.expect("load_stream"));
        }
    })
    .await;
    let raw = best(APPENDS, || async {
        for stream in &per_stream {
            black_box(stream.to_vec());
        }
    })
    .await;
    best_of.record("load_stream (1,000-event streams)", ours, raw);

    let page = 1000;
    let ours = best(APPENDS, || async {
        let mut after = 0;
        loop {
            let events = store.read_all(after, page).await.expect("read_all");
            let Some(last) = events.last() else { break };
            after = last.position.expect("position");
            black_box(events);
        }
    })
    .await;
    let raw = best(APPENDS, || async {
        for chunk in all.chunks(page) {
            black_box(chunk.to_vec());
        }
    })
    .await;
    best_of.record("read_all (pages of 1,000)", ours, raw);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let names = stream_names();
    let mut best_of = Best::default();
    for _ in 0..ROUNDS {
        append_single(&names, &mut best_of).await;
        append_batches(&names, &mut best_of).await;
        reads(&names, &mut best_of).await;
    }
    header("in-memory event store (vs Mutex<Vec<Event>>)");
    for (name, ours, raw) in best_of.0 {
        report(name, ours, raw);
    }
}
