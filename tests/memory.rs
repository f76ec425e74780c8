//! Integration tests of the in-memory backends: the store conformance kit on
//! `InMemoryEventStore`, and a store built with a bus.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use eventflow::EventStore;
use eventflow::store::memory::InMemoryEventStore;
use eventflow::testing::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conformance() {
    conformance::store::run_all(|| async {
        Arc::new(InMemoryEventStore::new()) as Arc<dyn EventStore>
    })
    .await;
}
