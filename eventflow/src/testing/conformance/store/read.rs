//! Reading: `load_stream` from a version, `load` by criteria, `read_all` paging, the head
//! position, and the global order under concurrent writers.

use std::collections::HashSet;

use uuid::Uuid;

use super::support::{at_second, ev, ids, need, positions, read_everything, strictly_increasing};
use crate::event::{Event, Metadata};
use crate::store::{EventCriteria, EventStore, ExpectedVersion};

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
