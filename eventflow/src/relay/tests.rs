//! Unit tests of the relay, on the in-memory store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::bus::{ErrorReceiver, Handler, Subscription};
use crate::event::Event;
use crate::lease::LeaseStore;
use crate::store::memory::{InMemoryCheckpointStore, InMemoryEventStore};
use crate::store::{CheckpointStore, EventStore, ExpectedVersion};
use crate::testing::RecordingBus;

const WAIT: Duration = Duration::from_secs(10);

fn ev(n: u64) -> Event {
    Event::new("relay.tested", json!({ "n": n })).unwrap()
}

/// A bus that rejects every publish while `failing` is set, then records like a RecordingBus.
struct FlakyBus {
    failing: AtomicBool,
    attempts: AtomicU64,
    inner: RecordingBus,
}

impl FlakyBus {
    fn new(failing: bool) -> Arc<Self> {
        Arc::new(FlakyBus {
            failing: AtomicBool::new(failing),
            attempts: AtomicU64::new(0),
            inner: RecordingBus::new(),
        })
    }
}

#[async_trait]
impl EventBus for FlakyBus {
    async fn publish(&self, event: Event) -> Result<()> {
        self.publish_batch(vec![event]).await
    }
    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::backend("flaky", "bus is down"));
        }
        self.inner.publish_batch(events).await
    }
    fn guarantee(&self) -> crate::bus::Delivery {
        self.inner.guarantee()
    }
    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: crate::bus::SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        self.inner.subscribe_with(patterns, options, handler).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    fn errors(&self) -> ErrorReceiver {
        self.inner.errors()
    }
}

/// A checkpoint store whose saves fail while `failing` is set (reads always work).
struct FlakyCheckpoints {
    failing: AtomicBool,
    inner: InMemoryCheckpointStore,
}

#[async_trait]
impl CheckpointStore for FlakyCheckpoints {
    async fn load_checkpoint(&self, name: &str) -> Result<u64> {
        self.inner.load_checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::backend("flaky", "checkpoint store is down"));
        }
        self.inner.save_checkpoint(name, position).await
    }
    async fn reset_checkpoint(&self, name: &str) -> Result<()> {
        self.inner.reset_checkpoint(name).await
    }
}

fn ids(events: &[Event]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

async fn everything(store: &InMemoryEventStore) -> Vec<Event> {
    store.read_all(0, usize::MAX).await.unwrap()
}

fn fast(relay: Relay) -> Relay {
    relay.backoff(Duration::from_millis(5), Duration::from_millis(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_reaches_the_bus_in_commit_order() {
    let store = InMemoryEventStore::new();
    let bus = Arc::new(RecordingBus::new());
    let checkpoints = Arc::new(InMemoryCheckpointStore::new());
    let relay = fast(Relay::new(
        Arc::new(store.clone()),
        bus.clone(),
        checkpoints.clone(),
    ))
    .name("orders")
    .batch_size(7)
    .spawn();

    let writers = (0..4u64).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..25 {
                store
                    .append(&format!("w-{w}"), ExpectedVersion::Any, ev(n))
                    .await
                    .unwrap();
            }
        })
    });
    for w in writers.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    store
        .append_batch(
            "batch",
            ExpectedVersion::NoStream,
            (0..30).map(ev).collect(),
        )
        .await
        .unwrap();

    let head = store.head_position().await.unwrap();
    assert_eq!(head, 130);
    relay.wait_for(head, WAIT).await.unwrap();
    assert_eq!(
        ids(&bus.events()),
        ids(&everything(&store).await),
        "the bus must see every committed event once, in commit order"
    );
    assert!(bus.events().iter().all(|e| e.position.is_some()));
    assert_eq!(checkpoints.load_checkpoint("orders").await.unwrap(), head);
    let status = relay.status().await.unwrap();
    assert_eq!(
        status,
        RelayStatus {
            position: head,
            head,
            lag: 0,
            parked: 0,
            active: true,
            lease: None,
        }
    );
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_wakes_on_the_commit_signal_not_the_poll() {
    let store = InMemoryEventStore::new();
    let bus = Arc::new(RecordingBus::new());
    // A poll interval far beyond the wait: only the commit signal can wake the relay in time.
    let relay = Relay::new(
        Arc::new(store.clone()),
        bus.clone(),
        Arc::new(InMemoryCheckpointStore::new()),
    )
    .poll_interval(Duration::from_secs(3600))
    .spawn();
    tokio::time::sleep(Duration::from_millis(50)).await;
    store
        .append("s", ExpectedVersion::Any, ev(1))
        .await
        .unwrap();
    relay.wait_for(1, WAIT).await.unwrap();
    assert_eq!(bus.len(), 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_bus_does_not_advance_the_checkpoint_and_nothing_is_skipped() {
    let store = InMemoryEventStore::new();
    let bus = FlakyBus::new(true);
    let checkpoints = Arc::new(InMemoryCheckpointStore::new());
    let relay = fast(Relay::new(
        Arc::new(store.clone()),
        bus.clone(),
        checkpoints.clone(),
    ))
    .batch_size(4)
    .spawn();
    for n in 0..10 {
        store
            .append("s", ExpectedVersion::Any, ev(n))
            .await
            .unwrap();
    }
    // Wait until the relay has tried (and failed) a few times.
    tokio::time::timeout(WAIT, async {
        while bus.attempts.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        checkpoints
            .load_checkpoint(DEFAULT_RELAY_NAME)
            .await
            .unwrap(),
        0
    );
    assert_eq!(relay.position(), 0);
    let status = relay.status().await.unwrap();
    assert_eq!((status.position, status.lag), (0, 10));
    assert!(bus.inner.is_empty());

    bus.failing.store(false, Ordering::SeqCst);
    relay.wait_for(10, WAIT).await.unwrap();
    assert_eq!(
        ids(&bus.inner.events()),
        ids(&everything(&store).await),
        "after the bus recovers every event arrives, in order, none skipped"
    );
    assert_eq!(
        checkpoints
            .load_checkpoint(DEFAULT_RELAY_NAME)
            .await
            .unwrap(),
        10
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_before_publishing_is_resumed_by_a_new_one() {
    let store = InMemoryEventStore::new();
    let checkpoints = Arc::new(InMemoryCheckpointStore::new());

    // The first relay never gets a batch through, then is stopped.
    let down = FlakyBus::new(true);
    let first = fast(Relay::new(
        Arc::new(store.clone()),
        down.clone(),
        checkpoints.clone(),
    ))
    .spawn();
    for n in 0..5 {
        store
            .append("s", ExpectedVersion::Any, ev(n))
            .await
            .unwrap();
    }
    tokio::time::timeout(WAIT, async {
        while down.attempts.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    first.stop().await;

    // Events committed while no relay runs.
    for n in 5..8 {
        store
            .append("s", ExpectedVersion::Any, ev(n))
            .await
            .unwrap();
    }

    let bus = Arc::new(RecordingBus::new());
    let second = Relay::new(Arc::new(store.clone()), bus.clone(), checkpoints.clone()).spawn();
    second.wait_for(8, WAIT).await.unwrap();
    assert_eq!(ids(&bus.events()), ids(&everything(&store).await));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_after_publishing_before_checkpointing_republishes() {
    let store = InMemoryEventStore::new();
    let bus = Arc::new(RecordingBus::new());
    let checkpoints = Arc::new(FlakyCheckpoints {
        failing: AtomicBool::new(true),
        inner: InMemoryCheckpointStore::new(),
    });
    for n in 0..6 {
        store
            .append("s", ExpectedVersion::Any, ev(n))
            .await
            .unwrap();
    }
    let first = fast(Relay::new(
        Arc::new(store.clone()),
        bus.clone(),
        checkpoints.clone(),
    ))
    .spawn();
    // Published, but the checkpoint cannot be saved: then the process "dies".
    tokio::time::timeout(WAIT, async {
        while bus.len() < 6 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    first.abort();
    assert_eq!(
        checkpoints
            .load_checkpoint(DEFAULT_RELAY_NAME)
            .await
            .unwrap(),
        0
    );

    checkpoints.failing.store(false, Ordering::SeqCst);
    let second = Relay::new(Arc::new(store.clone()), bus.clone(), checkpoints.clone()).spawn();
    second.wait_for(6, WAIT).await.unwrap();
    let stored = ids(&everything(&store).await);
    let mut twice = stored.clone();
    twice.extend(stored);
    assert_eq!(
        ids(&bus.events()),
        twice,
        "at least once: the unacknowledged batch is published again, in order"
    );
    assert_eq!(
        checkpoints
            .load_checkpoint(DEFAULT_RELAY_NAME)
            .await
            .unwrap(),
        6
    );
    second.stop().await;
}

#[tokio::test]
async fn wait_for_times_out_while_the_bus_is_down() {
    let store = InMemoryEventStore::new();
    let bus = FlakyBus::new(true);
    let relay = fast(Relay::new(
        Arc::new(store.clone()),
        bus,
        Arc::new(InMemoryCheckpointStore::new()),
    ))
    .spawn();
    store
        .append("s", ExpectedVersion::Any, ev(0))
        .await
        .unwrap();
    let err = relay
        .wait_for(1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    relay.stop().await;
}

/// Rejects events marked `poison` for good (too large) and fails event 7 three times (a
/// transient outage), recording the rest.
struct PickyBus {
    transient_left: AtomicU64,
    inner: RecordingBus,
}

#[async_trait]
impl EventBus for PickyBus {
    async fn publish(&self, event: Event) -> Result<()> {
        self.publish_batch(vec![event]).await
    }
    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        for e in &events {
            if e.payload["poison"] == true {
                return Err(Error::EventTooLarge {
                    id: e.id,
                    size: 2 << 20,
                    limit: 1 << 20,
                });
            }
            if e.payload["n"] == 7
                && self
                    .transient_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(Error::backend("picky", "connection reset"));
            }
        }
        self.inner.publish_batch(events).await
    }
    fn guarantee(&self) -> crate::bus::Delivery {
        self.inner.guarantee()
    }
    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: crate::bus::SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        self.inner.subscribe_with(patterns, options, handler).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    fn errors(&self) -> ErrorReceiver {
        self.inner.errors()
    }
}

#[tokio::test]
async fn a_permanent_failure_parks_the_event_and_a_transient_one_is_retried_in_order() {
    let store = InMemoryEventStore::new();
    let bus = Arc::new(PickyBus {
        transient_left: AtomicU64::new(3),
        inner: RecordingBus::new(),
    });
    let dead_letters = Arc::new(InMemoryDeadLetterStore::new());
    let relay = Relay::new(
        Arc::new(store.clone()),
        bus.clone(),
        Arc::new(InMemoryCheckpointStore::new()),
    )
    .name("picky")
    .dead_letters(dead_letters.clone())
    .backoff(Duration::from_millis(1), Duration::from_millis(5))
    .spawn();
    let mut errors = relay.errors();
    let events: Vec<Event> = (0..20)
        .map(|n| Event::new("relay.tested", json!({ "n": n, "poison": n == 12 })).unwrap())
        .collect();
    store
        .append_batch("s", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    relay.wait_for(head, WAIT).await.unwrap();

    let published: Vec<u64> = bus
        .inner
        .events()
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (0..20).filter(|n| *n != 12).collect();
    assert_eq!(
        published, expected,
        "all but the poison event, in order, once"
    );
    let parked = relay.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1, "only the permanent failure is parked");
    assert_eq!(parked[0].event.payload["n"], 12);
    assert_eq!(parked[0].source, "picky");
    assert!(
        parked[0].error.contains("over the limit"),
        "{}",
        parked[0].error
    );
    assert_eq!(relay.status().await.unwrap().parked, 1);
    let reported = errors.try_recv().unwrap();
    assert_eq!(reported.kind, crate::handler::BusErrorKind::DeadLettered);
    assert_eq!(reported.event_id, Some(parked[0].event.id));

    // Still rejected: it stays parked. Discarded: it is gone.
    let again = relay.retry_parked(10).await.unwrap();
    assert_eq!((again.published, again.failed), (0, 1));
    assert!(relay.discard_parked(parked[0].id).await.unwrap());
    assert_eq!(relay.status().await.unwrap().parked, 0);
    relay.stop().await;
}

/// A bus that holds every publish until `open` is notified, recording what it was given.
struct GatedBus {
    open: tokio::sync::Semaphore,
    calls: AtomicU64,
    inner: RecordingBus,
}

#[async_trait]
impl EventBus for GatedBus {
    async fn publish(&self, event: Event) -> Result<()> {
        self.publish_batch(vec![event]).await
    }
    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let permit = self.open.acquire().await;
        drop(permit);
        self.inner.publish_batch(events).await
    }
    fn guarantee(&self) -> crate::bus::Delivery {
        self.inner.guarantee()
    }
    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: crate::bus::SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        self.inner.subscribe_with(patterns, options, handler).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    fn errors(&self) -> ErrorReceiver {
        self.inner.errors()
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_relays_on_one_memory_store_one_publishes_and_the_other_takes_over() {
    let store = InMemoryEventStore::new();
    let bus = Arc::new(RecordingBus::new());
    let options =
        RelayOptions::default().lease_timing(Duration::from_secs(5), Duration::from_millis(20));
    let first = store
        .clone()
        .with_relay(bus.clone(), options.clone().owner("first"));
    let second = store
        .clone()
        .with_relay(bus.clone(), options.owner("second"));
    for n in 0..50 {
        store
            .append("s", ExpectedVersion::Any, ev(n))
            .await
            .unwrap();
    }
    first.flush(WAIT).await.unwrap();
    second.flush(WAIT).await.unwrap();
    let one = first.relay_status().await.unwrap();
    let two = second.relay_status().await.unwrap();
    assert!(
        one.active != two.active,
        "exactly one relay is active: {one:?} {two:?}"
    );
    assert_eq!(bus.len(), 50, "every event once: only the holder published");
    let (active, standby) = if one.active {
        (first, second)
    } else {
        (second, first)
    };
    let holder = active.relay_status().await.unwrap().lease.unwrap();

    // The holder stops (its store's last clone is dropped): the lease is released and the
    // standby relay takes over at its next heartbeat, from the shared checkpoint.
    drop(active);
    for n in 50..80 {
        store
            .append("s", ExpectedVersion::Any, ev(n))
            .await
            .unwrap();
    }
    standby.flush(WAIT).await.unwrap();
    let status = standby.relay_status().await.unwrap();
    assert!(status.active);
    assert_eq!(status.lease.unwrap().epoch, holder.epoch + 1);
    assert_eq!(
        ids(&bus.events()),
        ids(&everything(&store).await),
        "each event once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_lost_its_lease_mid_publish_never_moves_the_checkpoint() {
    let store = InMemoryEventStore::new();
    let leases = crate::lease::MemoryLeaseStore::new();
    let checkpoints = Arc::new(InMemoryCheckpointStore::shared_with(&leases));
    let bus = Arc::new(GatedBus {
        open: tokio::sync::Semaphore::new(0),
        calls: AtomicU64::new(0),
        inner: RecordingBus::new(),
    });
    let relay = fast(Relay::new(
        Arc::new(store.clone()),
        bus.clone(),
        checkpoints.clone(),
    ))
    .leased(Arc::new(leases.clone()))
    .lease_timing(Duration::from_secs(30), Duration::from_millis(20))
    .owner("slow")
    .spawn();
    store
        .append("s", ExpectedVersion::Any, ev(1))
        .await
        .unwrap();
    until("the relay's publish", || {
        bus.calls.load(Ordering::SeqCst) > 0
    })
    .await;

    // While the publish hangs, the lease changes hands (released by an operator, claimed by
    // another worker).
    let held = leases.list(Some("relay:relay")).await.unwrap().remove(0);
    assert_eq!(held.owner, "slow");
    assert!(leases.release(&held).await.unwrap());
    let thief = leases
        .try_acquire("relay:relay", 0, "thief", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(thief.epoch, held.epoch + 1);

    // The publish completes; the checkpoint write is fenced off and the relay stands by.
    bus.open.add_permits(1000);
    until("the relay to stand by", || relay.lease().is_none()).await;
    assert_eq!(
        bus.inner.len(),
        1,
        "the publish under way completed (at least once)"
    );
    assert_eq!(
        checkpoints.load_checkpoint("relay").await.unwrap(),
        0,
        "a relay that lost its lease moved the checkpoint"
    );
    assert!(!relay.status().await.unwrap().active);
    relay.stop().await;
}
