//! Appending: versions, optimistic concurrency, atomic batches, idempotent retries, stream
//! id validation, large batches.

use std::collections::HashSet;

use serde_json::json;
use uuid::Uuid;

use super::support::{
    ev, expect_conflict, ids, need, positions, read_everything, strictly_increasing,
};
use crate::error::Error;
use crate::event::{Event, Metadata};
use crate::store::{EventCriteria, EventStore, ExpectedVersion, MAX_STREAM_ID_LEN};

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

/// Store-owned fields are the store's: an event whose caller filled in `stream_id`,
/// `stream_version` and `position` (as one decoded from a bus can claim anything) is recorded
/// with the store's values, in what the append returns, in what `load_stream` and `read_all`
/// return and in the stream's version; nothing is recorded in the claimed stream.
pub async fn claimed_store_fields_are_overwritten(store: &dyn EventStore) {
    const P: &str = "the store assigns stream_id, stream_version and position itself";
    let prior = need(
        store
            .append(
                "claim-prior",
                ExpectedVersion::NoStream,
                ev("claim.prior", 0),
            )
            .await,
        P,
        "append",
    );
    let prior_position = prior.position.unwrap_or(0);
    let mut claimed = ev("claim.forged", 1);
    claimed.stream_id = Some("claim-other".into());
    claimed.stream_version = Some(999);
    // A position already taken: the store can never assign it to this event.
    claimed.position = Some(prior_position);
    let recorded = need(
        store
            .append_batch("claim-s", ExpectedVersion::NoStream, vec![claimed.clone()])
            .await,
        P,
        "append_batch",
    );
    let loaded = need(store.load_stream("claim-s", 1).await, P, "load_stream");
    let everything = read_everything(store, P).await;
    let read = everything.iter().find(|e| e.id == claimed.id);
    for (what, got) in [
        ("append_batch", recorded.first()),
        ("load_stream", loaded.first()),
        ("read_all", read),
    ] {
        let Some(got) = got else {
            panic!("store promise broken: {P}: {what} did not return the event");
        };
        ensure!(
            got.stream_id.as_deref() == Some("claim-s")
                && got.stream_version == Some(1)
                && got.position.is_some_and(|p| p > prior_position),
            P,
            "{what} returned the caller's claim: stream_id {:?}, stream_version {:?}, \
             position {:?} (the prior event is at {prior_position})",
            got.stream_id,
            got.stream_version,
            got.position
        );
    }
    let version = need(store.stream_version("claim-s").await, P, "stream_version");
    ensure!(version == 1, P, "stream_version is {version}, expected 1");
    let other = need(store.load_stream("claim-other", 0).await, P, "load_stream");
    ensure!(
        other.is_empty(),
        P,
        "the claimed stream holds {} events",
        other.len()
    );
}
