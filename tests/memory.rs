//! Integration tests of the in-memory backends: the store conformance kit on
//! `InMemoryEventStore`, and a store built with a bus.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::bus::memory::InMemoryBus;
use eventflow::store::memory::InMemoryEventStore;
use eventflow::testing::conformance;
use eventflow::{Event, EventBus, EventBusExt, EventStore, ExpectedVersion, WithBus, sync_handler};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conformance() {
    // Not durable, and an append cannot be held open (it takes the store's lock).
    let caps = conformance::store::Capabilities::default();
    conformance::store::run(caps, |_scope| async {
        conformance::store::TestStore::new(Arc::new(InMemoryEventStore::new()))
    })
    .await;
}

/// 8 writers append concurrently to a store built with `bus`; a subscriber on the bus must see
/// every committed event exactly once, in commit (global position) order.
async fn writers_reach_a_bus_subscriber_in_commit_order(bus: Arc<dyn EventBus>) {
    let store = InMemoryEventStore::new().with_bus(Arc::clone(&bus));
    let seen = Arc::new(Mutex::new(Vec::<(u64, uuid::Uuid)>::new()));
    let sink = Arc::clone(&seen);
    let _sub = bus
        .on(
            "order.>",
            sync_handler(move |e: &Event| {
                sink.lock().unwrap().push((e.position.unwrap_or(0), e.id));
                Ok(())
            }),
        )
        .await
        .unwrap();

    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..50u64 {
                    let event =
                        Event::new("order.line_added", json!({ "writer": w, "n": n })).unwrap();
                    // Batches of two every tenth append, single events otherwise.
                    if n % 10 == 0 {
                        let second = Event::new("order.line_added", json!({ "extra": n })).unwrap();
                        store
                            .append_batch(
                                &format!("order-{w}"),
                                ExpectedVersion::Any,
                                vec![event, second],
                            )
                            .await
                            .unwrap();
                    } else {
                        store
                            .append(&format!("order-{w}"), ExpectedVersion::Any, event)
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    store.flush(Duration::from_secs(30)).await.unwrap();
    let committed: Vec<(u64, uuid::Uuid)> = store
        .read_all(0, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.position.unwrap(), e.id))
        .collect();
    assert_eq!(committed.len(), 8 * 55);
    // The async bus may still be delivering what it accepted.
    tokio::time::timeout(Duration::from_secs(30), async {
        while seen.lock().unwrap().len() < committed.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        committed,
        "the subscriber must see every committed event once, in commit order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_with_sync_bus_delivers_concurrent_writers_in_commit_order() {
    writers_reach_a_bus_subscriber_in_commit_order(Arc::new(InMemoryBus::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_with_async_bus_delivers_concurrent_writers_in_commit_order() {
    let bus = InMemoryBus::builder().async_dispatch(64).build();
    writers_reach_a_bus_subscriber_in_commit_order(Arc::new(bus)).await;
}

/// Partitioned projections and sagas on the in-memory lease store, with workers as tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_partitions_conformance() {
    use eventflow::lease::MemoryLeaseStore;
    use eventflow::saga::InMemorySagaStore;
    use eventflow::store::memory::InMemoryCheckpointStore;
    conformance::partitions::run(|_scope| async {
        let leases = MemoryLeaseStore::new();
        conformance::partitions::Stores {
            store: Arc::new(InMemoryEventStore::new()),
            checkpoints: Arc::new(InMemoryCheckpointStore::shared_with(&leases)),
            leases: Arc::new(leases),
            sagas: Arc::new(InMemorySagaStore::new()),
        }
    })
    .await
    .unwrap();
}
