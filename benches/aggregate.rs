//! Benchmark: rehydrating an aggregate from 10, 1,000 and 100,000 events.
//!
//! Three comparisons per size, each against a raw baseline measured in the same run:
//! - `apply_envelope`: the derive's rehydration path over stored envelopes (what
//!   `Repository::load` runs per event), vs a hand-written `match` on the type name that
//!   deserializes the same payloads with serde_json into payload structs and applies them. This
//!   isolates the derive's cost. `from_envelope+apply` (decode to the typed enum, then apply) is
//!   shown too, for information.
//! - `Repository::load`: the whole load from `InMemoryEventStore` (stream read, decode, apply),
//!   vs the same `load_stream` followed by the hand-written loop.
//! - `Repository::load (snapshot)`: a load that starts from a snapshot 10 events before the end,
//!   vs the raw full replay it replaces.
//!
//! Run: `cargo bench --workspace --all-features --bench aggregate` (`AGGREGATE_BENCH_SIZES=10`
//! runs a subset). Each figure is the best of a
//! few rounds (the machine is shared), in events folded per second.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::aggregate::{Aggregate, Repository};
use eventflow::store::memory::{InMemoryEventStore, InMemorySnapshotStore};
use eventflow::{DomainEvent, Event, EventStore, ExpectedVersion};
use eventflow_benches::{header, per_second, report};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, eventflow::DomainEvent)]
#[event(prefix = "bench.account")]
pub enum AccountEvent {
    Deposited { amount: u64, memo: String },
    Withdrawn { amount: u64 },
    Renamed { name: String },
}

#[derive(Debug, Default, Serialize, Deserialize, eventflow::Aggregate)]
#[aggregate(name = "bench_account", event = AccountEvent, snapshot)]
pub struct Account {
    balance: u64,
    events: u64,
    name: String,
}

impl ApplyAccountEvent for Account {
    fn deposited(&mut self, amount: u64, memo: String) {
        self.balance += amount;
        self.events += memo.len() as u64 & 1;
    }
    fn withdrawn(&mut self, amount: u64) {
        self.balance = self.balance.saturating_sub(amount);
    }
    fn renamed(&mut self, name: String) {
        self.name = name;
    }
}

// The raw side: payload structs and a hand-written match, as one would write without eventflow.
#[derive(Deserialize)]
struct DepositedPayload {
    amount: u64,
    memo: String,
}
#[derive(Deserialize)]
struct WithdrawnPayload {
    amount: u64,
}
#[derive(Deserialize)]
struct RenamedPayload {
    name: String,
}

// Not inlined, like the other folds: each is measured as the same kind of call.
#[inline(never)]
fn raw_fold(events: &[Event]) -> Account {
    let mut state = Account::default();
    for e in events {
        match e.event_type.as_str() {
            "bench.account.deposited" => {
                let p = DepositedPayload::deserialize(&e.payload).unwrap();
                state.balance += p.amount;
                state.events += p.memo.len() as u64 & 1;
            }
            "bench.account.withdrawn" => {
                let p = WithdrawnPayload::deserialize(&e.payload).unwrap();
                state.balance = state.balance.saturating_sub(p.amount);
            }
            "bench.account.renamed" => {
                let p = RenamedPayload::deserialize(&e.payload).unwrap();
                state.name = p.name;
            }
            other => panic!("unknown event type {other}"),
        }
    }
    state
}

/// The derive's rehydration path (what `Repository::load` runs per event).
// Not inlined, like the other folds: each is measured as the same kind of call.
#[inline(never)]
fn derive_fold(events: &[Event]) -> Account {
    let mut state = Account::default();
    for e in events {
        state.apply_envelope(e).unwrap();
    }
    state
}

/// Decoding to the typed enum first, then applying it.
// Not inlined, like the other folds: each is measured as the same kind of call.
#[inline(never)]
fn typed_fold(events: &[Event]) -> Account {
    let mut state = Account::default();
    for e in events {
        state.apply(AccountEvent::from_envelope(e).unwrap());
    }
    state
}

fn sample(i: u64) -> AccountEvent {
    match i % 5 {
        0..=2 => AccountEvent::Deposited {
            amount: i % 100,
            memo: format!("deposit number {i}"),
        },
        3 => AccountEvent::Withdrawn { amount: i % 50 },
        _ => AccountEvent::Renamed {
            name: format!("holder-{}", i % 7),
        },
    }
}

/// Best times of `rounds` runs of `iterations` calls of `ours` and of `raw`, alternating so
/// that both see the same machine load, caches and allocator state.
fn best_of<F: FnMut(), G: FnMut()>(
    rounds: u32,
    iterations: u64,
    mut ours: F,
    mut raw: G,
) -> (Duration, Duration) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        start.elapsed()
    };
    let (mut best_ours, mut best_raw) = (Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        // Alternate which side goes first.
        if round % 2 == 0 {
            best_ours = best_ours.min(time(&mut ours));
            best_raw = best_raw.min(time(&mut raw));
        } else {
            best_raw = best_raw.min(time(&mut raw));
            best_ours = best_ours.min(time(&mut ours));
        }
    }
    (best_ours, best_raw)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Many short rounds, best of each: on a shared machine a short round has a fair chance to
    // run without being preempted, and the best one is the figure without interference.
    let rounds = 41;
    let mut ratios = Vec::new();
    // `AGGREGATE_BENCH_SIZES=10,1000` runs a subset (e.g. under a profiler).
    let sizes: Vec<u64> = std::env::var("AGGREGATE_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 1_000, 100_000]);
    for n in sizes {
        header(&format!("rehydrate from {n} events"));
        // Enough calls per round that small streams are measured over ~50k events.
        let iterations = (50_000 / n).max(1);
        let folded = n * iterations;

        let store = Arc::new(InMemoryEventStore::new());
        let snapshots = Arc::new(InMemorySnapshotStore::new());
        let plain = Repository::<Account>::new(store.clone());
        let with_snapshots = Repository::<Account>::new(store.clone()).snapshots(snapshots);
        let id = format!("acct-{n}");
        let stream = Account::stream_id(&id);
        let envelopes: Vec<Event> = (0..n)
            .map(|i| Event::from_domain(&sample(i)).unwrap())
            .collect();
        // The snapshot sits `tail` events before the end.
        let tail = if n > 10 { 10 } else { n / 2 };
        rt.block_on(async {
            let mut version = 0;
            for chunk in envelopes[..(n - tail) as usize].chunks(1000) {
                store
                    .append_batch(&stream, ExpectedVersion::Exact(version), chunk.to_vec())
                    .await
                    .unwrap();
                version += chunk.len() as u64;
            }
            with_snapshots.snapshot_now(&id).await.unwrap();
            store
                .append_batch(
                    &stream,
                    ExpectedVersion::Exact(version),
                    envelopes[(n - tail) as usize..].to_vec(),
                )
                .await
                .unwrap();
        });
        let stored = rt.block_on(store.load_stream(&stream, 1)).unwrap();
        assert_eq!(stored.len() as u64, n);

        // Both sides must compute the same state.
        let expected = raw_fold(&stored);
        let ours = derive_fold(&stored);
        let typed = typed_fold(&stored);
        assert_eq!(
            (typed.balance, &typed.name),
            (expected.balance, &expected.name)
        );
        assert_eq!(
            (ours.balance, ours.events, &ours.name),
            (expected.balance, expected.events, &expected.name)
        );
        let loaded = rt.block_on(with_snapshots.load(&id)).unwrap();
        assert_eq!(loaded.snapshot_version, Some(n - tail));
        assert_eq!(
            (loaded.version, loaded.state.balance),
            (n, expected.balance)
        );

        let (ours, raw) = best_of(
            rounds,
            iterations,
            || {
                black_box(derive_fold(black_box(&stored)));
            },
            || {
                black_box(raw_fold(black_box(&stored)));
            },
        );
        ratios.push(report(
            &format!("apply_envelope {n} events (derive vs match)"),
            per_second(folded, ours),
            per_second(folded, raw),
        ));

        let (ours, raw) = best_of(
            rounds,
            iterations,
            || {
                black_box(typed_fold(black_box(&stored)));
            },
            || {
                black_box(raw_fold(black_box(&stored)));
            },
        );
        report(
            &format!("from_envelope+apply {n} events (vs match)"),
            per_second(folded, ours),
            per_second(folded, raw),
        );

        let raw_load = || {
            let events = rt.block_on(store.load_stream(&stream, 1)).unwrap();
            black_box(raw_fold(&events));
        };
        let (ours, raw) = best_of(
            rounds,
            iterations,
            || {
                black_box(rt.block_on(plain.load(&id)).unwrap());
            },
            raw_load,
        );
        ratios.push(report(
            &format!("Repository::load {n} events"),
            per_second(folded, ours),
            per_second(folded, raw),
        ));

        let (ours, raw) = best_of(
            rounds,
            iterations,
            || {
                black_box(rt.block_on(with_snapshots.load(&id)).unwrap());
            },
            raw_load,
        );
        report(
            &format!("Repository::load {n}, snapshot + {tail} (raw: full replay)"),
            per_second(folded, ours),
            per_second(folded, raw),
        );
    }
    let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    header(&format!(
        "worst ratio without snapshot: {worst:.2}x (target >= 0.80x)"
    ));
}
