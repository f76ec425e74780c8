//! The store conformance kit: every [`EventStore`] backend runs these checks.
//!
//! Each check takes a fresh, empty store (`&dyn EventStore`) and panics with a message that
//! starts with `store promise broken: <promise>` when the backend breaks it. [`run_all`] runs
//! every check, each on a new store from the factory:
//!
//! ```
//! # async fn demo() {
//! use std::sync::Arc;
//! use eventflow::EventStore;
//! use eventflow::store::memory::InMemoryEventStore;
//! use eventflow::testing::conformance::store;
//!
//! store::run_all(|| async { Arc::new(InMemoryEventStore::new()) as Arc<dyn EventStore> }).await;
//! # }
//! ```
//!
//! The checks do not assume positions start at 1 or have no holes (a PostgreSQL sequence may
//! skip numbers); they assume only that positions increase in commit order and that the store
//! holds nothing but what the check wrote. Timestamps are kept at microsecond precision, the
//! finest PostgreSQL stores.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::bus::HandlerResult;
use crate::error::{Error, Result};
use crate::event::{Event, Metadata};
use crate::store::{
    EventCriteria, EventStore, EventStoreExt, ExpectedVersion, MAX_STREAM_ID_LEN, SubscribeOptions,
};

/// How long a check waits for a subscription to deliver before failing.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Panics naming the broken promise.
macro_rules! ensure {
    ($cond:expr, $promise:expr, $($detail:tt)+) => {
        if !$cond {
            panic!("store promise broken: {}: {}", $promise, format_args!($($detail)+));
        }
    };
}

/// Unwraps a result the check needs, panicking with the promise it was checking.
fn need<T>(result: Result<T>, promise: &str, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("store promise broken: {promise}: {what} failed: {e}"))
}

/// An event of `event_type` with payload `{"n": n}` and a microsecond-precision timestamp.
fn ev(event_type: &str, n: u64) -> Event {
    let mut event = Event::new(event_type, json!({ "n": n }))
        .unwrap_or_else(|e| panic!("conformance kit: cannot build event {event_type}: {e}"));
    event.timestamp = micros(event.timestamp);
    event
}

fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

fn at_second(s: i64) -> DateTime<Utc> {
    // 2021-01-01T00:00:00Z plus `s` seconds.
    DateTime::from_timestamp(1_609_459_200 + s, 0).unwrap_or_default()
}

fn ids(events: &[Event]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

fn positions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.position.unwrap_or(0)).collect()
}

fn strictly_increasing(values: &[u64]) -> bool {
    values.windows(2).all(|w| w[0] < w[1])
}

/// Reads the whole store in global order.
async fn read_everything(store: &dyn EventStore, promise: &str) -> Vec<Event> {
    need(store.read_all(0, 1_000_000).await, promise, "read_all")
}

/// Runs every check of this kit, each on a fresh store from `make_store`.
pub async fn run_all<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventStore>>,
{
    append_and_load_stream(&*make_store().await).await;
    load_stream_from_version(&*make_store().await).await;
    expected_version_semantics(&*make_store().await).await;
    racing_writers(&*make_store().await).await;
    concurrent_streams_global_order(&*make_store().await).await;
    reader_never_skips_under_concurrent_writes(&*make_store().await).await;
    batch_atomicity(&*make_store().await).await;
    idempotent_retry(&*make_store().await).await;
    partial_duplicate(&*make_store().await).await;
    load_criteria(&*make_store().await).await;
    read_all_paging(&*make_store().await).await;
    head_position(&*make_store().await).await;
    subscribe_catch_up_then_live(&*make_store().await).await;
    invalid_stream_ids(&*make_store().await).await;
    large_batch(&*make_store().await).await;
}

/// Appends one at a time and as a batch; `load_stream` returns the events in order with
/// versions 1..n, increasing positions and every envelope field intact.
pub async fn append_and_load_stream(store: &dyn EventStore) {
    const P: &str = "append then load_stream returns the events in order, versions 1..n";
    let stream = "order-1";
    let first = ev("order.placed", 0)
        .with_metadata(
            Metadata::default()
                .tenant("acme")
                .user("u-1")
                .request("r-1")
                .trace("t-1")
                .with("k", json!({"nested": [1, 2]})),
        )
        .with_correlation("corr-1")
        .with_causation("cause-1")
        .with_source("orders")
        .with_version(3);
    let second = ev("order.paid", 1).caused_by(&first);
    let third = ev("order.shipped", 2);
    let batch = vec![ev("order.delivered", 3), ev("order.closed", 4)];
    let mut sent = vec![first.clone(), second.clone(), third.clone()];
    sent.extend(batch.iter().cloned());

    let mut recorded = Vec::new();
    recorded.push(need(
        store.append(stream, ExpectedVersion::NoStream, first).await,
        P,
        "append with NoStream",
    ));
    recorded.push(need(
        store
            .append(stream, ExpectedVersion::Exact(1), second)
            .await,
        P,
        "append with Exact(1)",
    ));
    recorded.push(need(
        store.append(stream, ExpectedVersion::Exact(2), third).await,
        P,
        "append with Exact(2)",
    ));
    recorded.extend(need(
        store
            .append_batch(stream, ExpectedVersion::Exact(3), batch)
            .await,
        P,
        "append_batch with Exact(3)",
    ));

    for (n, (got, sent)) in recorded.iter().zip(&sent).enumerate() {
        let version = n as u64 + 1;
        ensure!(
            got.id == sent.id,
            P,
            "append returned id {} for {}",
            got.id,
            sent.id
        );
        ensure!(
            got.stream_id.as_deref() == Some(stream),
            P,
            "append returned stream_id {:?}",
            got.stream_id
        );
        ensure!(
            got.stream_version == Some(version),
            P,
            "append returned stream_version {:?}, expected {version}",
            got.stream_version
        );
        ensure!(got.position.is_some(), P, "append returned no position");
    }
    ensure!(
        strictly_increasing(&positions(&recorded)),
        P,
        "positions do not increase in commit order: {:?}",
        positions(&recorded)
    );

    for from in [0, 1] {
        let loaded = need(store.load_stream(stream, from).await, P, "load_stream");
        ensure!(
            loaded.len() == sent.len(),
            P,
            "load_stream({stream}, {from}) returned {} events, expected {}",
            loaded.len(),
            sent.len()
        );
        for ((got, sent), rec) in loaded.iter().zip(&sent).zip(&recorded) {
            let mut expected = sent.clone();
            expected.stream_id = rec.stream_id.clone();
            expected.stream_version = rec.stream_version;
            expected.position = rec.position;
            ensure!(
                *got == expected,
                "the envelope round-trips through the store unchanged",
                "loaded {got:?}, expected {expected:?}"
            );
        }
    }
    let version = need(store.stream_version(stream).await, P, "stream_version");
    ensure!(version == 5, P, "stream_version is {version}, expected 5");

    let unknown = need(
        store.load_stream("no-such-stream", 0).await,
        P,
        "load_stream",
    );
    ensure!(
        unknown.is_empty(),
        "an unknown stream loads as empty",
        "got {} events",
        unknown.len()
    );
    let version = need(
        store.stream_version("no-such-stream").await,
        P,
        "stream_version",
    );
    ensure!(
        version == 0,
        "an unknown stream is at version 0",
        "got {version}"
    );
}

/// `load_stream(stream, from)` starts at version `from` (inclusive); 0 and 1 mean the start.
pub async fn load_stream_from_version(store: &dyn EventStore) {
    const P: &str = "load_stream(stream, from_version) starts at from_version, inclusive";
    let events: Vec<Event> = (0..10).map(|n| ev("counter.incremented", n)).collect();
    need(
        store
            .append_batch("counter", ExpectedVersion::NoStream, events.clone())
            .await,
        P,
        "append_batch",
    );
    for (from, first) in [(0u64, 1u64), (1, 1), (4, 4), (10, 10)] {
        let loaded = need(store.load_stream("counter", from).await, P, "load_stream");
        let versions: Vec<u64> = loaded.iter().filter_map(|e| e.stream_version).collect();
        let expected: Vec<u64> = (first..=10).collect();
        ensure!(
            versions == expected,
            P,
            "from {from}: versions {versions:?}, expected {expected:?}"
        );
        let expected_ids = ids(&events[(first - 1) as usize..]);
        ensure!(ids(&loaded) == expected_ids, P, "from {from}: wrong events");
    }
    let past = need(store.load_stream("counter", 11).await, P, "load_stream");
    ensure!(
        past.is_empty(),
        P,
        "from 11 (past the end) returned {} events",
        past.len()
    );
}

fn expect_conflict(
    result: Result<Vec<Event>>,
    stream: &str,
    expected: ExpectedVersion,
    actual: u64,
) {
    const P: &str = "a failed expected-version check is Conflict { stream, expected, actual }";
    match result {
        Err(Error::Conflict {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            ensure!(
                s == stream && e == expected && a == actual,
                P,
                "got Conflict {{ stream: {s:?}, expected: {e:?}, actual: {a} }}, \
                 expected Conflict {{ stream: {stream:?}, expected: {expected:?}, actual: {actual} }}"
            );
        }
        Err(other) => panic!("store promise broken: {P}: got error {other:?}"),
        Ok(events) => panic!(
            "store promise broken: {P}: append to {stream:?} at {actual} with {expected:?} \
             succeeded and wrote {} events",
            events.len()
        ),
    }
}

/// `NoStream`, `Exact(n)` and `Any`; a conflict writes nothing and names stream, expected and
/// actual version.
pub async fn expected_version_semantics(store: &dyn EventStore) {
    const P: &str = "ExpectedVersion semantics (Any, NoStream, Exact)";
    let one = |n| vec![ev("account.changed", n)];

    need(
        store
            .append_batch("acc-1", ExpectedVersion::NoStream, one(0))
            .await,
        P,
        "NoStream on a new stream",
    );
    expect_conflict(
        store
            .append_batch("acc-1", ExpectedVersion::NoStream, one(1))
            .await,
        "acc-1",
        ExpectedVersion::NoStream,
        1,
    );
    expect_conflict(
        store
            .append_batch("acc-1", ExpectedVersion::Exact(0), one(1))
            .await,
        "acc-1",
        ExpectedVersion::Exact(0),
        1,
    );
    expect_conflict(
        store
            .append_batch("acc-1", ExpectedVersion::Exact(5), one(1))
            .await,
        "acc-1",
        ExpectedVersion::Exact(5),
        1,
    );
    expect_conflict(
        store
            .append_batch("acc-missing", ExpectedVersion::Exact(3), one(1))
            .await,
        "acc-missing",
        ExpectedVersion::Exact(3),
        0,
    );
    need(
        store
            .append_batch("acc-1", ExpectedVersion::Exact(1), one(2))
            .await,
        P,
        "Exact(1) on a stream at version 1",
    );
    need(
        store
            .append_batch("acc-1", ExpectedVersion::Any, one(3))
            .await,
        P,
        "Any on an existing stream",
    );
    need(
        store
            .append_batch("acc-2", ExpectedVersion::Any, one(4))
            .await,
        P,
        "Any on a new stream",
    );
    need(
        store
            .append_batch("acc-3", ExpectedVersion::Exact(0), one(5))
            .await,
        P,
        "Exact(0) on a new stream",
    );

    let versions: Vec<u64> = need(store.load_stream("acc-1", 0).await, P, "load_stream")
        .iter()
        .filter_map(|e| e.stream_version)
        .collect();
    ensure!(
        versions == [1, 2, 3],
        "a conflicting append writes nothing",
        "acc-1 has versions {versions:?}, expected [1, 2, 3]"
    );
    let missing = need(
        store.stream_version("acc-missing").await,
        P,
        "stream_version",
    );
    ensure!(
        missing == 0,
        "a conflicting append writes nothing",
        "acc-missing is at version {missing}"
    );
}

/// Two writers racing with the same expected version, 20 times: exactly one wins, the other
/// gets `Conflict`, and the stream's versions stay contiguous.
pub async fn racing_writers(store: &dyn EventStore) {
    const P: &str = "of two writers racing with the same expected version, exactly one wins";
    for round in 0..20u64 {
        let stream = format!("race-{round}");
        // Round 0..9 race on a new stream (NoStream), 10..19 on an existing one (Exact(1)).
        let (expected, actual_after) = if round < 10 {
            (ExpectedVersion::NoStream, 1)
        } else {
            need(
                store
                    .append(
                        &stream,
                        ExpectedVersion::NoStream,
                        ev("race.started", round),
                    )
                    .await,
                P,
                "first append",
            );
            (ExpectedVersion::Exact(1), 2)
        };
        let a = ev("race.won", round);
        let b = ev("race.won", round + 100);
        let (ra, rb) = tokio::join!(
            store.append_batch(&stream, expected, vec![a.clone()]),
            store.append_batch(&stream, expected, vec![b.clone()]),
        );
        let winner = match (ra, rb) {
            (Ok(_), Err(e)) => {
                expect_conflict(Err(e), &stream, expected, actual_after);
                a.id
            }
            (Err(e), Ok(_)) => {
                expect_conflict(Err(e), &stream, expected, actual_after);
                b.id
            }
            (Ok(_), Ok(_)) => panic!("store promise broken: {P}: round {round}: both won"),
            (Err(ea), Err(eb)) => {
                panic!("store promise broken: {P}: round {round}: both failed: {ea}; {eb}")
            }
        };
        let loaded = need(store.load_stream(&stream, 0).await, P, "load_stream");
        let versions: Vec<u64> = loaded.iter().filter_map(|e| e.stream_version).collect();
        let expected_versions: Vec<u64> = (1..=actual_after).collect();
        ensure!(
            versions == expected_versions,
            "versions in a stream are contiguous from 1",
            "round {round}: versions {versions:?}"
        );
        ensure!(
            loaded.last().map(|e| e.id) == Some(winner),
            P,
            "round {round}: the stored event is not the winner's"
        );
    }

    // Many writers with Any on one stream: all succeed, versions 1..n without gaps.
    let writers = 8u64;
    let results = futures_util::future::join_all(
        (0..writers).map(|n| store.append("race-any", ExpectedVersion::Any, ev("race.any", n))),
    )
    .await;
    for r in results {
        need(r, "concurrent Any appends all succeed", "append with Any");
    }
    let versions: Vec<u64> = need(store.load_stream("race-any", 0).await, P, "load_stream")
        .iter()
        .filter_map(|e| e.stream_version)
        .collect();
    ensure!(
        versions == (1..=writers).collect::<Vec<_>>(),
        "versions in a stream are contiguous from 1",
        "concurrent Any appends gave versions {versions:?}"
    );
}

/// Eight writers on their own streams at once: the global order holds each event exactly once,
/// positions strictly increase, and each stream's versions are contiguous.
pub async fn concurrent_streams_global_order(store: &dyn EventStore) {
    const P: &str = "concurrent appends get unique, increasing global positions";
    let writers = 8u64;
    let per_writer = 10u64;
    futures_util::future::join_all((0..writers).map(|w| async move {
        for n in 0..per_writer {
            let stream = format!("writer-{w}");
            need(
                store
                    .append(&stream, ExpectedVersion::Exact(n), ev("writer.wrote", n))
                    .await,
                P,
                "append",
            );
        }
    }))
    .await;
    let all = read_everything(store, P).await;
    ensure!(
        all.len() == (writers * per_writer) as usize,
        P,
        "read_all returned {} events, expected {}",
        all.len(),
        writers * per_writer
    );
    ensure!(
        strictly_increasing(&positions(&all)),
        P,
        "read_all positions are not strictly increasing"
    );
    let unique: HashSet<Uuid> = all.iter().map(|e| e.id).collect();
    ensure!(unique.len() == all.len(), P, "an event appears twice");
    for w in 0..writers {
        let stream = format!("writer-{w}");
        let versions: Vec<u64> = all
            .iter()
            .filter(|e| e.stream_id.as_deref() == Some(stream.as_str()))
            .filter_map(|e| e.stream_version)
            .collect();
        ensure!(
            versions == (1..=per_writer).collect::<Vec<_>>(),
            "versions in a stream are contiguous from 1, in global order",
            "{stream} has versions {versions:?} in global order"
        );
    }
}

/// A reader paging through `read_all` while eight writers append never passes over an event:
/// what it collected equals the final global order, each event once.
pub async fn reader_never_skips_under_concurrent_writes(store: &dyn EventStore) {
    const P: &str = "a reader following positions never passes over a later-committed event";
    let writers = 8u64;
    let per_writer = 15u64;
    let done = std::sync::atomic::AtomicBool::new(false);
    let write = async {
        futures_util::future::join_all((0..writers).map(|w| async move {
            for n in 0..per_writer {
                let batch = vec![ev("follow.wrote", n), ev("follow.wrote", n + 1000)];
                need(
                    store
                        .append_batch(&format!("follow-{w}"), ExpectedVersion::Any, batch)
                        .await,
                    P,
                    "append_batch",
                );
            }
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let read = async {
        let mut seen: Vec<Event> = Vec::new();
        let mut after = 0;
        loop {
            // Read the flag first: a read that starts after every writer finished and comes back
            // empty means the reader has everything.
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let page = need(store.read_all(after, 16).await, P, "read_all");
            match page.last() {
                Some(last) => {
                    after = last.position.unwrap_or(u64::MAX);
                    seen.extend(page);
                }
                None if finished => break,
                None => tokio::task::yield_now().await,
            }
        }
        seen
    };
    let ((), seen) = tokio::join!(write, read);
    let all = read_everything(store, P).await;
    ensure!(
        all.len() == (writers * per_writer * 2) as usize,
        P,
        "the store holds {} events, expected {}",
        all.len(),
        writers * per_writer * 2
    );
    let missed: Vec<u64> = {
        let got: HashSet<Uuid> = seen.iter().map(|e| e.id).collect();
        all.iter()
            .filter(|e| !got.contains(&e.id))
            .map(|e| e.position.unwrap_or(0))
            .collect()
    };
    ensure!(
        missed.is_empty(),
        P,
        "the reader passed over {} events (positions {:?})",
        missed.len(),
        missed
    );
    ensure!(
        ids(&seen) == ids(&all),
        P,
        "the reader saw {} events, not the global order once each",
        seen.len()
    );
}

/// A batch is all or nothing: an invalid event type in the middle, a version conflict or an
/// invalid stream id writes none of it.
pub async fn batch_atomicity(store: &dyn EventStore) {
    const P: &str = "a batch is all or nothing";
    need(
        store
            .append("cart-1", ExpectedVersion::NoStream, ev("cart.created", 0))
            .await,
        P,
        "first append",
    );
    let head = need(store.head_position().await, P, "head_position");

    let mut bad = ev("cart.item_added", 2);
    bad.event_type = "Cart Item Added".to_owned();
    let batch = vec![ev("cart.item_added", 1), bad, ev("cart.item_added", 3)];
    match store
        .append_batch("cart-1", ExpectedVersion::Exact(1), batch.clone())
        .await
    {
        Err(Error::InvalidEventType { name, .. }) => ensure!(
            name == "Cart Item Added",
            "an invalid event type is rejected naming it",
            "named {name:?}"
        ),
        other => panic!(
            "store promise broken: an invalid event type is rejected with InvalidEventType: \
             got {other:?}"
        ),
    }

    let after_invalid = need(store.head_position().await, P, "head_position");
    let version = need(store.stream_version("cart-1").await, P, "stream_version");
    ensure!(
        after_invalid == head && version == 1,
        P,
        "a batch with an invalid event type in the middle moved the head from {head} to \
         {after_invalid} and the stream to version {version}"
    );

    let conflicting = vec![ev("cart.item_added", 4), ev("cart.item_added", 5)];
    expect_conflict(
        store
            .append_batch("cart-1", ExpectedVersion::Exact(7), conflicting.clone())
            .await,
        "cart-1",
        ExpectedVersion::Exact(7),
        1,
    );

    let after = need(store.head_position().await, P, "head_position");
    ensure!(after == head, P, "head moved from {head} to {after}");
    let all = read_everything(store, P).await;
    ensure!(
        all.len() == 1,
        P,
        "{} events stored after two rejected batches, expected 1",
        all.len()
    );
    let rejected: HashSet<Uuid> = batch.iter().chain(&conflicting).map(|e| e.id).collect();
    let loaded = need(
        store.load(&EventCriteria::all().stream_id("cart-1")).await,
        P,
        "load",
    );
    ensure!(
        loaded.iter().all(|e| !rejected.contains(&e.id)),
        P,
        "an event of a rejected batch was stored"
    );

    // The stream carries on from where it was, without a gap.
    let good = need(
        store
            .append_batch(
                "cart-1",
                ExpectedVersion::Exact(1),
                vec![ev("cart.item_added", 6), ev("cart.item_added", 7)],
            )
            .await,
        P,
        "append after rejected batches",
    );
    let versions: Vec<u64> = good.iter().filter_map(|e| e.stream_version).collect();
    ensure!(
        versions == [2, 3],
        "versions in a stream are contiguous from 1",
        "after rejected batches the next versions were {versions:?}"
    );
}

/// Appending events whose ids are all stored in that stream returns the stored copies and
/// writes nothing, whatever the expected version.
pub async fn idempotent_retry(store: &dyn EventStore) {
    const P: &str =
        "a retried append of stored event ids returns the stored events, writes nothing";
    let batch: Vec<Event> = (0..3).map(|n| ev("payment.captured", n)).collect();
    let first = need(
        store
            .append_batch("pay-1", ExpectedVersion::NoStream, batch.clone())
            .await,
        P,
        "first append",
    );
    let single = ev("payment.refunded", 9);
    let single_first = need(
        store
            .append("pay-1", ExpectedVersion::Exact(3), single.clone())
            .await,
        P,
        "single append",
    );
    let head = need(store.head_position().await, P, "head_position");

    // The idempotency check comes before the version check: these expectations are all stale.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Any,
    ] {
        let again = need(
            store.append_batch("pay-1", expected, batch.clone()).await,
            P,
            &format!("retry with {expected:?}"),
        );
        ensure!(
            ids(&again) == ids(&first)
                && positions(&again) == positions(&first)
                && again.iter().map(|e| e.stream_version).collect::<Vec<_>>()
                    == first.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
            P,
            "retry with {expected:?} returned {:?}, not the stored events {:?}",
            positions(&again),
            positions(&first)
        );
        let again = need(
            store.append("pay-1", expected, single.clone()).await,
            P,
            "single retry",
        );
        ensure!(
            again.id == single_first.id
                && again.position == single_first.position
                && again.stream_version == Some(4),
            P,
            "single retry returned {again:?}"
        );
    }
    let after = need(store.head_position().await, P, "head_position");
    ensure!(after == head, P, "head moved from {head} to {after}");
    let loaded = need(store.load_stream("pay-1", 0).await, P, "load_stream");
    ensure!(
        loaded.len() == 4,
        P,
        "the stream holds {} events after retries, expected 4",
        loaded.len()
    );
}

/// A batch where only some ids are stored, or whose ids are stored in another stream, fails
/// with `DuplicateEvent` and writes nothing.
pub async fn partial_duplicate(store: &dyn EventStore) {
    const P: &str =
        "a batch with some already-stored ids fails with DuplicateEvent, writes nothing";
    let stored = ev("invoice.issued", 0);
    need(
        store
            .append("inv-1", ExpectedVersion::NoStream, stored.clone())
            .await,
        P,
        "first append",
    );
    let head = need(store.head_position().await, P, "head_position");

    let fresh = ev("invoice.paid", 1);
    let result = store
        .append_batch(
            "inv-1",
            ExpectedVersion::Any,
            vec![stored.clone(), fresh.clone()],
        )
        .await;
    match result {
        Err(Error::DuplicateEvent { id, stream }) => ensure!(
            id == stored.id && stream == "inv-1",
            P,
            "DuplicateEvent names id {id} in {stream:?}, expected {} in \"inv-1\"",
            stored.id
        ),
        other => panic!("store promise broken: {P}: got {other:?}"),
    }

    // The same id in another stream is not a retry.
    let result = store
        .append_batch("inv-2", ExpectedVersion::Any, vec![stored.clone()])
        .await;
    match result {
        Err(Error::DuplicateEvent { id, stream }) => ensure!(
            id == stored.id && stream == "inv-1",
            "an id stored in another stream fails with DuplicateEvent naming that stream",
            "DuplicateEvent names id {id} in {stream:?}"
        ),
        other => panic!(
            "store promise broken: an id stored in another stream fails with DuplicateEvent: \
             got {other:?}"
        ),
    }

    let after = need(store.head_position().await, P, "head_position");
    ensure!(after == head, P, "head moved from {head} to {after}");
    let all = read_everything(store, P).await;
    ensure!(
        ids(&all) == [stored.id],
        P,
        "the store holds {} events, expected only the first",
        all.len()
    );
    let v = need(store.stream_version("inv-2").await, P, "stream_version");
    ensure!(v == 0, P, "inv-2 was created (version {v})");
}

/// `load(criteria)`: every field alone and combined, with text that must match literally
/// (quotes, semicolons, `--`, SQL wildcards, non-ASCII).
pub async fn load_criteria(store: &dyn EventStore) {
    const P: &str = "load(criteria) returns exactly the matching events, in global order";
    let streams = ["ord-1", "ord-2'; DROP TABLE events; --", "strøm-ü-流"];
    let tenants = ["acme", "o'brien\"; --", "テナント", "acme%", "ACME"];
    let correlations = ["c-1", "c-'2';--", "c_%", "相関-4"];
    let types = ["order.placed", "order.paid", "user.created"];

    // 24 events over 3 streams, one second apart, with cycling tenants/correlations/types.
    let mut written: Vec<Event> = Vec::new();
    for i in 0..24u64 {
        let stream = streams[(i % 3) as usize];
        let mut event = ev(types[(i % 3 + i / 3) as usize % 3], i);
        event.timestamp = at_second(i as i64);
        event.metadata = Metadata::default().tenant(tenants[(i % 5) as usize]);
        if i % 6 != 5 {
            event = event.with_correlation(correlations[(i % 4) as usize]);
        }
        let recorded = need(
            store.append(stream, ExpectedVersion::Any, event).await,
            P,
            "append",
        );
        written.push(recorded);
    }

    type Case = (String, EventCriteria, Box<dyn Fn(&Event) -> bool>);
    let cases: Vec<Case> = {
        let since = at_second(10);
        let until = at_second(7);
        let pivot = written[9].position.unwrap_or(0);
        let mut cases: Vec<Case> = vec![("all".into(), EventCriteria::all(), Box::new(|_| true))];
        cases.push((
            "one event type".into(),
            EventCriteria::all().event_types(["order.paid"]),
            Box::new(|e| e.event_type == "order.paid"),
        ));
        cases.push((
            "two event types".into(),
            EventCriteria::all().event_types(["order.paid", "user.created"]),
            Box::new(|e| e.event_type == "order.paid" || e.event_type == "user.created"),
        ));
        cases.push((
            "an unknown event type".into(),
            EventCriteria::all().event_types(["order.refunded"]),
            Box::new(|_| false),
        ));
        cases.push((
            "since (inclusive)".into(),
            EventCriteria::all().since(since),
            Box::new(move |e| e.timestamp >= since),
        ));
        cases.push((
            "until (exclusive)".into(),
            EventCriteria::all().until(until),
            Box::new(move |e| e.timestamp < until),
        ));
        cases.push((
            "since and until".into(),
            EventCriteria::all().since(at_second(5)).until(at_second(9)),
            Box::new(move |e| e.timestamp >= at_second(5) && e.timestamp < at_second(9)),
        ));
        for c in correlations {
            cases.push((
                format!("correlation_id {c:?}"),
                EventCriteria::all().correlation_id(c),
                Box::new(move |e| e.correlation_id.as_deref() == Some(c)),
            ));
        }
        for t in tenants {
            cases.push((
                format!("tenant_id {t:?}"),
                EventCriteria::all().tenant_id(t),
                Box::new(move |e| e.metadata.tenant_id.as_deref() == Some(t)),
            ));
        }
        cases.push((
            "tenant_id matching none".into(),
            EventCriteria::all().tenant_id("acm_"),
            Box::new(|_| false),
        ));
        for s in streams {
            cases.push((
                format!("stream_id {s:?}"),
                EventCriteria::all().stream_id(s),
                Box::new(move |e| e.stream_id.as_deref() == Some(s)),
            ));
        }
        cases.push((
            "after_position (exclusive)".into(),
            EventCriteria::all().after_position(pivot),
            Box::new(move |e| e.position.unwrap_or(0) > pivot),
        ));
        cases.push((
            "stream_id and after_position".into(),
            EventCriteria::all()
                .stream_id(streams[1])
                .after_position(pivot),
            Box::new(move |e| {
                e.stream_id.as_deref() == Some(streams[1]) && e.position.unwrap_or(0) > pivot
            }),
        ));
        cases.push((
            "event type, tenant, since and until".into(),
            EventCriteria::all()
                .event_types(["order.placed", "order.paid"])
                .tenant_id("acme")
                .since(at_second(1))
                .until(at_second(22)),
            Box::new(|e| {
                (e.event_type == "order.placed" || e.event_type == "order.paid")
                    && e.metadata.tenant_id.as_deref() == Some("acme")
                    && e.timestamp >= at_second(1)
                    && e.timestamp < at_second(22)
            }),
        ));
        cases.push((
            "correlation and stream".into(),
            EventCriteria::all()
                .correlation_id(correlations[2])
                .stream_id(streams[1]),
            Box::new(move |e| {
                e.correlation_id.as_deref() == Some(correlations[2])
                    && e.stream_id.as_deref() == Some(streams[1])
            }),
        ));
        cases
    };

    for (name, criteria, keep) in &cases {
        let expected: Vec<Uuid> = written.iter().filter(|e| keep(e)).map(|e| e.id).collect();
        let got = need(store.load(criteria).await, P, &format!("load ({name})"));
        ensure!(
            ids(&got) == expected,
            P,
            "{name}: got {} events {:?}, expected {} {:?}",
            got.len(),
            positions(&got),
            expected.len(),
            written
                .iter()
                .filter(|e| keep(e))
                .map(|e| e.position.unwrap_or(0))
                .collect::<Vec<_>>()
        );
        // With a limit: the first `limit` of the same result.
        for limit in [1usize, 4] {
            let limited = criteria.clone().limit(limit);
            let got = need(store.load(&limited).await, P, &format!("load ({name})"));
            let want: Vec<Uuid> = expected.iter().take(limit).copied().collect();
            ensure!(
                ids(&got) == want,
                P,
                "{name} with limit {limit}: got {} events, expected {}",
                got.len(),
                want.len()
            );
        }
    }
}

/// `read_all` returns the global order; paging with `after` and `limit` covers every event
/// exactly once.
pub async fn read_all_paging(store: &dyn EventStore) {
    const P: &str = "read_all pages through the global order, every event exactly once";
    let mut written = Vec::new();
    for i in 0..75u64 {
        let stream = format!("page-{}", i % 3);
        written.push(need(
            store
                .append(&stream, ExpectedVersion::Any, ev("page.written", i))
                .await,
            P,
            "append",
        ));
    }
    let all = read_everything(store, P).await;
    ensure!(
        ids(&all) == ids(&written),
        P,
        "read_all(0, big) does not return the events in commit order"
    );
    ensure!(
        positions(&all) == positions(&written),
        P,
        "read_all positions differ from the positions append returned"
    );
    for limit in [1usize, 7, 75, 100] {
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = need(store.read_all(after, limit).await, P, "read_all");
            ensure!(
                page.len() <= limit,
                P,
                "read_all(_, {limit}) returned {}",
                page.len()
            );
            let Some(last) = page.last() else { break };
            after = last.position.unwrap_or(u64::MAX);
            seen.extend(page);
            ensure!(
                seen.len() <= 75,
                P,
                "paging returned more events than stored"
            );
        }
        ensure!(
            ids(&seen) == ids(&written),
            P,
            "paging with limit {limit} returned {} events, not each of the 75 once in order",
            seen.len()
        );
    }
    let last = written.last().and_then(|e| e.position).unwrap_or(0);
    let beyond = need(store.read_all(last, 10).await, P, "read_all");
    ensure!(
        beyond.is_empty(),
        P,
        "read_all after the last position returned {}",
        beyond.len()
    );
    let mid = written[40].position.unwrap_or(0);
    let tail = need(store.read_all(mid, 1000).await, P, "read_all");
    ensure!(
        ids(&tail) == ids(&written[41..]),
        P,
        "read_all(after = position of event 41) does not start at event 42"
    );
}

/// `head_position` is 0 for an empty store and the last committed position after appends.
pub async fn head_position(store: &dyn EventStore) {
    const P: &str = "head_position is the last committed position (0 when empty)";
    let head = need(store.head_position().await, P, "head_position");
    ensure!(head == 0, P, "empty store has head {head}");
    let mut last = 0;
    for i in 0..3u64 {
        let recorded = need(
            store
                .append_batch(
                    &format!("head-{i}"),
                    ExpectedVersion::NoStream,
                    vec![ev("head.moved", i), ev("head.moved", i + 10)],
                )
                .await,
            P,
            "append_batch",
        );
        last = recorded.last().and_then(|e| e.position).unwrap_or(0);
        let head = need(store.head_position().await, P, "head_position");
        ensure!(
            head == last,
            P,
            "after an append head is {head}, last position {last}"
        );
    }
    let all = read_everything(store, P).await;
    ensure!(
        all.last().and_then(|e| e.position) == Some(last),
        P,
        "the last event read_all returns is not at the head"
    );
}

async fn recv_n(
    rx: &mut mpsc::UnboundedReceiver<Arc<Event>>,
    n: usize,
    promise: &str,
) -> Vec<Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(DELIVERY_TIMEOUT, rx.recv()).await {
            Ok(Some(e)) => got.push(Event::clone(&e)),
            Ok(None) => panic!("store promise broken: {promise}: subscription ended early"),
            Err(_) => panic!(
                "store promise broken: {promise}: only {} of {n} events delivered within {:?}",
                got.len(),
                DELIVERY_TIMEOUT
            ),
        }
    }
    got
}

fn channel_handler(tx: mpsc::UnboundedSender<Arc<Event>>) -> Arc<dyn crate::bus::Handler> {
    Arc::new(move |event: Arc<Event>| {
        let tx = tx.clone();
        async move {
            // The receiver is gone only when the check has finished.
            let _ = tx.send(event);
            HandlerResult::Ok(())
        }
    })
}

/// `subscribe` catches up from `after_position` (in batches of `limit`), then delivers new
/// events live, in order, filtered by the criteria; a failing handler does not stop it; nothing
/// arrives after the subscription is dropped.
pub async fn subscribe_catch_up_then_live(store: &dyn EventStore) {
    const P: &str = "subscribe catches up from after_position, then follows live, in order";
    let mut written = Vec::new();
    for i in 0..6u64 {
        let t = if i % 2 == 0 { "sub.even" } else { "sub.odd" };
        written.push(need(
            store.append("sub-1", ExpectedVersion::Any, ev(t, i)).await,
            P,
            "append",
        ));
    }
    let start = written[1].position.unwrap_or(0);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let all_sub = need(
        store
            .subscribe_with(
                EventCriteria::all().after_position(start),
                SubscribeOptions::new().batch_size(2),
                channel_handler(tx),
            )
            .await,
        P,
        "subscribe",
    );
    let (even_tx, mut even_rx) = mpsc::unbounded_channel();
    let even_sub = need(
        store
            .subscribe(
                EventCriteria::all().event_types(["sub.even"]),
                channel_handler(even_tx),
            )
            .await,
        P,
        "subscribe",
    );
    // A handler that fails on every other event must still see every event.
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel::<Arc<Event>>();
    let failing = Arc::new(move |event: Arc<Event>| {
        let tx = fail_tx.clone();
        async move {
            let n = event.payload["n"].as_u64().unwrap_or(0);
            let _ = tx.send(event);
            if n.is_multiple_of(2) {
                HandlerResult::Err("conformance kit: handler fails on purpose".into())
            } else {
                Ok(())
            }
        }
    });
    let fail_sub = need(
        store.subscribe(EventCriteria::all(), failing).await,
        "a handler error does not stop a store subscription",
        "subscribe",
    );

    let caught_up = recv_n(&mut rx, 4, P).await;
    ensure!(
        ids(&caught_up) == ids(&written[2..]),
        P,
        "catch-up delivered {:?}, expected positions {:?}",
        positions(&caught_up),
        positions(&written[2..])
    );

    for i in 6..10u64 {
        let t = if i % 2 == 0 { "sub.even" } else { "sub.odd" };
        written.push(need(
            store.append("sub-2", ExpectedVersion::Any, ev(t, i)).await,
            P,
            "append",
        ));
    }
    let live = recv_n(&mut rx, 4, P).await;
    ensure!(
        ids(&live) == ids(&written[6..]),
        P,
        "live delivery gave positions {:?}, expected {:?}",
        positions(&live),
        positions(&written[6..])
    );
    let even = recv_n(&mut even_rx, 5, "subscribe filters by criteria").await;
    let want_even: Vec<Uuid> = written
        .iter()
        .filter(|e| e.event_type == "sub.even")
        .map(|e| e.id)
        .collect();
    ensure!(
        ids(&even) == want_even,
        "subscribe filters by criteria",
        "an event_types subscription got {:?}",
        even.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    let failed = recv_n(
        &mut fail_rx,
        10,
        "a handler error does not stop a store subscription",
    )
    .await;
    ensure!(
        ids(&failed) == ids(&written),
        "a handler error does not stop a store subscription",
        "a failing handler saw {} events in the wrong order",
        failed.len()
    );

    drop(all_sub);
    drop(even_sub);
    drop(fail_sub);
    for i in 10..13u64 {
        need(
            store
                .append("sub-3", ExpectedVersion::Any, ev("sub.even", i))
                .await,
            P,
            "append",
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        rx.try_recv().is_err() && even_rx.try_recv().is_err() && fail_rx.try_recv().is_err(),
        "a dropped store subscription delivers nothing more",
        "an event committed after the drop was delivered"
    );
}

/// Empty, too long and control-character stream ids are rejected and nothing is written; a
/// 255-byte id is accepted.
pub async fn invalid_stream_ids(store: &dyn EventStore) {
    const P: &str = "invalid stream ids are rejected before anything is written";
    let long = "x".repeat(MAX_STREAM_ID_LEN + 1);
    for bad in ["", long.as_str(), "a\nb", "tab\there", "nul\0byte"] {
        match store
            .append(bad, ExpectedVersion::Any, ev("stream.checked", 0))
            .await
        {
            Err(Error::InvalidStreamId { stream, .. }) => {
                ensure!(
                    stream == bad,
                    P,
                    "InvalidStreamId names {stream:?}, not {bad:?}"
                )
            }
            other => panic!("store promise broken: {P}: stream id {bad:?} gave {other:?}"),
        }
    }
    let head = need(store.head_position().await, P, "head_position");
    ensure!(head == 0, P, "head is {head} after rejected appends");
    let longest = "y".repeat(MAX_STREAM_ID_LEN);
    need(
        store
            .append(&longest, ExpectedVersion::NoStream, ev("stream.checked", 1))
            .await,
        "a 255-byte stream id is accepted",
        "append",
    );
    let loaded = need(store.load_stream(&longest, 0).await, P, "load_stream");
    ensure!(
        loaded.len() == 1,
        "a 255-byte stream id is accepted",
        "not loaded back"
    );
}

/// A batch of 1,000 events round-trips: versions 1..1000, in order, one read.
pub async fn large_batch(store: &dyn EventStore) {
    const P: &str = "a 1,000-event batch round-trips";
    let batch: Vec<Event> = (0..1000).map(|n| ev("bulk.imported", n)).collect();
    let recorded = need(
        store
            .append_batch("bulk", ExpectedVersion::NoStream, batch.clone())
            .await,
        P,
        "append_batch",
    );
    let versions: Vec<u64> = recorded.iter().filter_map(|e| e.stream_version).collect();
    ensure!(
        versions == (1..=1000).collect::<Vec<_>>(),
        P,
        "append_batch returned {} versions",
        versions.len()
    );
    ensure!(
        strictly_increasing(&positions(&recorded)),
        P,
        "positions of the batch do not increase"
    );
    let loaded = need(store.load_stream("bulk", 0).await, P, "load_stream");
    ensure!(
        ids(&loaded) == ids(&batch),
        P,
        "load_stream returned {} events, not the batch in order",
        loaded.len()
    );
    ensure!(
        loaded
            .iter()
            .zip(&batch)
            .all(|(a, b)| a.payload == b.payload),
        P,
        "payloads changed"
    );
    let all = read_everything(store, P).await;
    ensure!(all.len() == 1000, P, "read_all returned {}", all.len());
}

#[cfg(test)]
mod tests;
