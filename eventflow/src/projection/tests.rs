//! Unit tests of the projection runner's pieces.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::{Filter, guarded};

#[test]
fn filter_matches_patterns_and_rejects_bad_ones() {
    let f = Filter::parse(&["order.*".into(), "payment.>".into()]).unwrap();
    assert!(f.matches("order.placed"));
    assert!(f.matches("payment.card.declined"));
    assert!(!f.matches("order.item.added"));
    assert!(!f.matches("user.created"));
    assert!(
        Filter::parse(&["*".into()])
            .unwrap()
            .matches("anything.at.all")
    );
    assert!(Filter::parse(&["Order".into()]).is_err());
}

#[tokio::test]
async fn a_panicking_handler_becomes_an_error() {
    let err = guarded(async { panic!("boom") }).await.unwrap_err();
    assert!(err.to_string().contains("boom"));
    assert!(guarded(async { Ok(()) }).await.is_ok());
}

/// Fails on every `bad.*` event.
struct FailsOnBad(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl super::Projection for FailsOnBad {
    fn name(&self) -> &str {
        "fails-on-bad"
    }
    async fn handle(&self, event: &crate::Event) -> crate::HandlerResult {
        if event.event_type.starts_with("bad.") {
            return Err("bad event".into());
        }
        self.0.lock().unwrap().push(event.event_type.clone());
        Ok(())
    }
}

#[tokio::test]
async fn options_set_on_a_clone_of_a_started_runner_apply_without_panicking() {
    use std::sync::Arc;

    use crate::store::memory::{InMemoryCheckpointStore, InMemoryEventStore};
    use crate::{Event, EventStore, ExpectedVersion};

    let store = InMemoryEventStore::new();
    for t in ["good.one", "bad.one", "good.two"] {
        let event = Event::new(t, serde_json::json!({})).unwrap();
        store
            .append("s", ExpectedVersion::Any, event)
            .await
            .unwrap();
    }
    let runner = super::ProjectionRunner::new(
        Arc::new(store.clone()),
        Arc::new(InMemoryCheckpointStore::new()),
        FailsOnBad(std::sync::Mutex::default()),
    )
    .unwrap()
    .failure_policy(super::FailurePolicy::Stop);
    let task = runner.start();
    // Configured through another handle while the live loop runs: this used to panic.
    let _same_runner = runner
        .clone()
        .batch_size(1)
        .poll_interval(Duration::from_millis(10))
        .failure_policy(super::FailurePolicy::Skip);
    task.abort().await;
    runner.resume();
    // The options belong to the runner, so this handle skips the bad event now.
    assert_eq!(runner.catch_up().await.unwrap(), 3);
    let status = runner.status().await.unwrap();
    assert_eq!(status.skipped, 1);
    assert_eq!(
        status.failure.map(|f| f.event_type).as_deref(),
        Some("bad.one")
    );
}
