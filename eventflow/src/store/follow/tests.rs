//! Unit tests of the follower, on the in-memory store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::watch;

use super::*;
use crate::bus::Handler;
use crate::store::ExpectedVersion;
use crate::store::memory::InMemoryEventStore;

fn ev(event_type: &str, n: u64) -> Event {
    Event::new(event_type, json!({ "n": n })).unwrap()
}

/// The in-memory store with a commit signal that never fires (as when a NOTIFY is lost).
struct Deaf {
    inner: InMemoryEventStore,
    // Kept so the receiver stays open but silent.
    _signal: watch::Sender<u64>,
    rx: watch::Receiver<u64>,
}

#[async_trait]
impl EventStore for Deaf {
    async fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        self.inner.append_batch(stream_id, expected, events).await
    }
    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>> {
        self.inner.load_stream(stream_id, from_version).await
    }
    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        self.inner.stream_version(stream_id).await
    }
    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        self.inner.load(criteria).await
    }
    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.read_all(after_position, limit).await
    }
    async fn head_position(&self) -> Result<u64> {
        self.inner.head_position().await
    }
    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.rx.clone()
    }
    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: crate::store::SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<crate::bus::Subscription> {
        self.inner.subscribe_dyn(criteria, options, handler).await
    }
}

#[tokio::test]
async fn batches_advance_past_events_that_do_not_match() {
    let store = InMemoryEventStore::new();
    for n in 0..5 {
        let t = if n == 3 { "wanted.one" } else { "other.one" };
        store
            .append("s", ExpectedVersion::Any, ev(t, n))
            .await
            .unwrap();
    }
    let mut follower = Follower::new(Arc::new(store.clone()), 0)
        .batch_size(2)
        .criteria(EventCriteria::all().event_types(["wanted.one"]));
    let first = follower.next_batch().await.unwrap();
    assert!(first.events.is_empty());
    assert_eq!(first.position, 2);
    let second = follower.next_batch().await.unwrap();
    assert_eq!(second.events.len(), 1);
    assert_eq!(second.events[0].position, Some(4));
    assert_eq!(second.position, 4);
    let third = follower.next_batch().await.unwrap();
    assert!(third.events.is_empty());
    assert_eq!(follower.position(), 5);
    assert!(follower.try_next_batch().await.unwrap().is_none());
}

#[tokio::test]
async fn a_caught_up_follower_wakes_on_commit() {
    let store = InMemoryEventStore::new();
    let mut follower =
        Follower::new(Arc::new(store.clone()), 0).poll_interval(Duration::from_secs(3600));
    let waiting = tokio::spawn(async move { follower.next_batch().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .append("s", ExpectedVersion::Any, ev("a.b", 0))
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the commit signal must wake the follower")
        .unwrap();
    assert_eq!(batch.events.len(), 1);
}

#[tokio::test]
async fn a_lost_signal_only_delays_the_follower() {
    let inner = InMemoryEventStore::new();
    let (tx, rx) = watch::channel(0);
    let store = Arc::new(Deaf {
        inner: inner.clone(),
        _signal: tx,
        rx,
    });
    let mut follower = Follower::new(store, 0).poll_interval(Duration::from_millis(50));
    let waiting = tokio::spawn(async move { follower.next_batch().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(20)).await;
    inner
        .append("s", ExpectedVersion::Any, ev("a.b", 0))
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("polling must find the event without a signal")
        .unwrap();
    assert_eq!(batch.events.len(), 1);
}

#[tokio::test]
async fn a_panicking_handler_does_not_end_a_subscription() {
    let store = InMemoryEventStore::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = crate::bus::sync_handler(move |e: &Event| {
        if e.payload["n"] == 0 {
            panic!("handler panics on purpose");
        }
        tx.send(e.id).unwrap();
        Ok(())
    });
    let _sub = subscribe(
        Arc::new(store.clone()),
        EventCriteria::all(),
        crate::store::SubscribeOptions::default(),
        Arc::new(handler),
    );
    let first = store
        .append("s", ExpectedVersion::Any, ev("a.b", 0))
        .await
        .unwrap();
    let second = store
        .append("s", ExpectedVersion::Any, ev("a.b", 1))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, second.id);
    assert_ne!(got, first.id);
}
