#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::*;
use crate::testing::conformance;

#[tokio::test]
async fn sync_bus_passes_the_conformance_kit() {
    conformance::bus::run_all(|| async { Arc::new(InMemoryBus::new()) as Arc<dyn EventBus> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_bus_passes_the_conformance_kit() {
    conformance::bus::run_all(|| async {
        Arc::new(InMemoryBus::builder().async_dispatch(16).build()) as Arc<dyn EventBus>
    })
    .await;
}
