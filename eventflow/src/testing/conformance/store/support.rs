//! What the store checks share: unwrapping with the promise at stake, building events,
//! reading everything, receiving from a subscription with a bound.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::bus::{Handler, HandlerResult};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::{EventStore, ExpectedVersion};

/// How long a check waits for a subscription to deliver before failing (4 s in this crate's
/// own unit tests, where every store is in memory).
pub(super) const DELIVERY_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_secs(4)
} else {
    Duration::from_secs(10)
};

/// Unwraps a result the check needs, panicking with the promise it was checking.
pub(super) fn need<T>(result: Result<T>, promise: &str, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("store promise broken: {promise}: {what} failed: {e}"))
}

/// An event of `event_type` with payload `{"n": n}` and a microsecond-precision timestamp.
pub(super) fn ev(event_type: &str, n: u64) -> Event {
    let mut event = Event::new(event_type, json!({ "n": n }))
        .unwrap_or_else(|e| panic!("conformance kit: cannot build event {event_type}: {e}"));
    event.timestamp = micros(event.timestamp);
    event
}

pub(super) fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

pub(super) fn at_second(s: i64) -> DateTime<Utc> {
    // 2021-01-01T00:00:00Z plus `s` seconds.
    DateTime::from_timestamp(1_609_459_200 + s, 0).unwrap_or_default()
}

pub(super) fn ids(events: &[Event]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

pub(super) fn positions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.position.unwrap_or(0)).collect()
}

pub(super) fn strictly_increasing(values: &[u64]) -> bool {
    values.windows(2).all(|w| w[0] < w[1])
}

/// Reads the whole store in global order.
pub(super) async fn read_everything(store: &dyn EventStore, promise: &str) -> Vec<Event> {
    need(store.read_all(0, 1_000_000).await, promise, "read_all")
}

pub(super) fn expect_conflict(
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

pub(super) async fn recv_n(
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

pub(super) fn channel_handler(tx: mpsc::UnboundedSender<Arc<Event>>) -> Arc<dyn Handler> {
    Arc::new(move |event: Arc<Event>| {
        let tx = tx.clone();
        async move {
            // The receiver is gone only when the check has finished.
            let _ = tx.send(event);
            HandlerResult::Ok(())
        }
    })
}
