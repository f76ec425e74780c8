//! Sagas and projections fed from the bus (capability `ordered`): one subscription for all
//! their types or patterns, so a follow-up never overtakes its start event and a projection
//! runs one event at a time in publish order; and the refusal of an at-most-once bus without
//! an explicit opt-in (every bus).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::support::{fail, publish};
use crate::bus::{Delivery, EventBus, FeedOptions, HandlerResult};
use crate::error::{BoxError, Error, Result};
use crate::event::Event;
use crate::handler::sync;
use crate::projection::{self, Projection};
use crate::saga::{
    CommitOutcome, Deadline, InMemorySagaStore, LoadedSaga, Saga, SagaCommit, SagaContext,
    SagaManager, SagaStore,
};

/// Correlation ids in [`saga_follow_ups_after_slow_start`].
const SAGAS: usize = 200;
/// How long the start step of each saga instance takes.
const START_DELAY: Duration = Duration::from_millis(2);
/// How long the start step of the first saga instance takes.
const WARMUP_DELAY: Duration = Duration::from_millis(300);
/// Events in [`projection_patterns_in_order`].
const PROJECTED: usize = 200;

fn feed_options(bus: &dyn EventBus) -> FeedOptions {
    // These checks are about order, not about the refusal: accept an at-most-once bus.
    match bus.guarantee() {
        Delivery::AtMostOnce => FeedOptions::new().allow_at_most_once(),
        Delivery::AtLeastOnce => FeedOptions::new(),
    }
}

/// A saga started by `kit.saga.started` that counts its `kit.saga.next` events.
struct CountingSaga;

impl Saga for CountingSaga {
    type State = u32;

    fn name(&self) -> &str {
        "kit-counting"
    }

    fn starts_on(&self) -> Vec<String> {
        vec!["kit.saga.started".to_owned()]
    }

    fn handles(&self) -> Vec<String> {
        vec!["kit.saga.next".to_owned()]
    }

    fn handle(
        &self,
        state: &mut u32,
        event: &Event,
        _ctx: &mut SagaContext,
    ) -> std::result::Result<(), BoxError> {
        if event.event_type == "kit.saga.next" {
            *state += 1;
        }
        Ok(())
    }
}

/// The in-memory saga store, with a slow first commit of every instance: the start step
/// takes a few milliseconds (and yields), and that of the instance `warmup` much longer, time
/// in which follow-ups on an independent subscription overtake their start events. (The
/// manager serializes the steps of one correlation id, so without the long first step a
/// follow-up would only overtake its start when it wins a race for that lock.)
#[derive(Default)]
struct SlowStartStore {
    inner: InMemorySagaStore,
    warmup: String,
}

#[async_trait]
impl SagaStore for SlowStartStore {
    async fn load(&self, saga: &str, correlation_id: &str, event_id: Uuid) -> Result<LoadedSaga> {
        self.inner.load(saga, correlation_id, event_id).await
    }

    async fn commit(&self, saga: &str, commit: SagaCommit) -> Result<CommitOutcome> {
        if commit.correlation_id == self.warmup {
            tokio::time::sleep(WARMUP_DELAY).await;
        } else if commit.expected_version == 0 {
            tokio::time::sleep(START_DELAY).await;
        }
        self.inner.commit(saga, commit).await
    }

    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Deadline)>> {
        self.inner.due_deadlines(saga, now, limit).await
    }

    async fn pending_outbox(&self, saga: &str, limit: usize) -> Result<Vec<Event>> {
        self.inner.pending_outbox(saga, limit).await
    }

    async fn ack_outbox(&self, saga: &str, event_ids: &[Uuid]) -> Result<()> {
        self.inner.ack_outbox(saga, event_ids).await
    }

    async fn prune(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        self.inner.prune(saga, completed_before, limit).await
    }

    async fn prune_tombstones(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        self.inner
            .prune_tombstones(saga, completed_before, limit)
            .await
    }
}

/// A saga fed from the bus whose start step is slow receives the follow-up of every one of
/// 200 correlation ids, each published right after its start event.
pub async fn saga_follow_ups_after_slow_start(bus: &dyn EventBus) {
    let promise = "a saga fed from the bus sees each follow-up after its start event";
    let warmup = format!("kit-warmup-{}", Uuid::new_v4());
    let store = SlowStartStore {
        inner: InMemorySagaStore::new(),
        warmup: warmup.clone(),
    };
    let manager = match SagaManager::new(CountingSaga, Arc::new(store)) {
        Ok(m) => Arc::new(m),
        Err(e) => fail(promise, format!("cannot build the saga manager: {e}")),
    };
    let _sub = match manager.subscribe_with(bus, feed_options(bus)).await {
        Ok(s) => s,
        Err(e) => fail(promise, format!("subscribe failed: {e}")),
    };
    let ids: Vec<String> = (0..SAGAS)
        .map(|i| format!("kit-{i}-{}", Uuid::new_v4()))
        .collect();
    // One batch, so publishing outpaces the slow start steps.
    let mut events = Vec::with_capacity(2 * SAGAS + 1);
    match Event::new("kit.saga.started", json!({})) {
        Ok(e) => events.push(e.with_correlation(warmup)),
        Err(e) => fail(promise, format!("cannot build the warm-up event: {e}")),
    }
    for id in &ids {
        for t in ["kit.saga.started", "kit.saga.next"] {
            match Event::new(t, json!({})) {
                Ok(e) => events.push(e.with_correlation(id.clone())),
                Err(e) => fail(promise, format!("cannot build {t}: {e}")),
            }
        }
    }
    if let Err(e) = bus.publish_batch(events).await {
        fail(promise, format!("publish_batch failed: {e}"));
    }
    let deadline = tokio::time::Instant::now() + super::DELIVERY_TIMEOUT;
    let mut pending = ids;
    loop {
        let mut still = Vec::new();
        for id in pending {
            match manager.instance(&id).await {
                Ok(Some((1, _))) => {}
                Ok(Some((n, _))) if n > 1 => {
                    fail(promise, format!("saga {id} counted {n} follow-ups, not 1"))
                }
                Ok(_) => still.push(id),
                Err(e) => fail(promise, format!("cannot read saga {id}: {e}")),
            }
        }
        pending = still;
        if pending.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            fail(
                promise,
                format!(
                    "{} of {SAGAS} sagas never got their follow-up within {:?}",
                    pending.len(),
                    super::DELIVERY_TIMEOUT
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Capability `redelivers`: a saga's follow-up published before its start event (by another
/// publisher, say) is not acknowledged while no instance exists: the bus delivers it again,
/// and the saga handles it once the start event has created the instance.
pub async fn saga_follow_up_before_start_is_redelivered(bus: &dyn EventBus) {
    let promise = "a saga's follow-up that finds no instance yet is delivered again";
    let manager = match SagaManager::new(CountingSaga, Arc::new(InMemorySagaStore::new())) {
        Ok(m) => Arc::new(m),
        Err(e) => fail(promise, format!("cannot build the saga manager: {e}")),
    };
    let _sub = match manager.subscribe_with(bus, feed_options(bus)).await {
        Ok(s) => s,
        Err(e) => fail(promise, format!("subscribe failed: {e}")),
    };
    let id = format!("kit-early-{}", Uuid::new_v4());
    for t in ["kit.saga.next", "kit.saga.started"] {
        let event = match Event::new(t, json!({})) {
            Ok(e) => e.with_correlation(id.clone()),
            Err(e) => fail(promise, format!("cannot build {t}: {e}")),
        };
        publish(bus, event, promise).await;
    }
    let deadline = tokio::time::Instant::now() + super::DELIVERY_TIMEOUT;
    loop {
        match manager.instance(&id).await {
            Ok(Some((1, _))) => return,
            Ok(_) => {}
            Err(e) => fail(promise, format!("cannot read saga {id}: {e}")),
        }
        if tokio::time::Instant::now() >= deadline {
            fail(
                promise,
                format!(
                    "the follow-up was not handled within {:?}",
                    super::DELIVERY_TIMEOUT
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A projection of two patterns that records the publish sequence of what it handles and
/// whether two `handle` calls ever overlapped.
#[derive(Default)]
struct SequenceProjection {
    seen: std::sync::Mutex<Vec<u64>>,
    in_flight: AtomicUsize,
    overlapped: AtomicBool,
}

#[async_trait]
impl Projection for SequenceProjection {
    fn name(&self) -> &str {
        "kit-sequence"
    }

    fn patterns(&self) -> Vec<String> {
        vec!["kit.proj.a.*".to_owned(), "kit.proj.b.>".to_owned()]
    }

    async fn handle(&self, event: &Event) -> HandlerResult {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
            self.overlapped.store(true, Ordering::SeqCst);
        }
        let seq = event.payload["seq"].as_u64().unwrap_or(u64::MAX);
        // Yield now and then, so that another delivery could start meanwhile.
        if seq.is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
        sync::lock(&self.seen).push(seq);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A projection of two patterns fed from the bus sees strictly increasing publish positions
/// and never runs two `handle` calls at once.
pub async fn projection_patterns_in_order(bus: &dyn EventBus) {
    let promise =
        "a projection fed from the bus handles its patterns' events one at a time, in order";
    let seq = Arc::new(SequenceProjection::default());
    let _sub = match projection::subscribe_with(bus, seq.clone(), feed_options(bus)).await {
        Ok(s) => s,
        Err(e) => fail(promise, format!("subscribe failed: {e}")),
    };
    for i in 0..PROJECTED {
        let t = if i % 2 == 0 {
            "kit.proj.a.x"
        } else {
            "kit.proj.b.y.z"
        };
        let event = match Event::new(t, json!({ "seq": i })) {
            Ok(e) => e,
            Err(e) => fail(promise, format!("cannot build {t}: {e}")),
        };
        publish(bus, event, promise).await;
    }
    let deadline = tokio::time::Instant::now() + super::DELIVERY_TIMEOUT;
    loop {
        let seen = sync::lock(&seq.seen).clone();
        // At-least-once buses may redeliver: look at first deliveries.
        let mut firsts = Vec::with_capacity(seen.len());
        let mut got = std::collections::HashSet::new();
        for s in seen {
            if got.insert(s) {
                firsts.push(s);
            }
        }
        if let Some(w) = firsts.windows(2).find(|w| w[0] >= w[1]) {
            fail(
                promise,
                format!("position {} was handled after {}", w[1], w[0]),
            );
        }
        if seq.overlapped.load(Ordering::SeqCst) {
            fail(promise, "two handle calls ran at the same time");
        }
        if firsts.len() == PROJECTED {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            fail(
                promise,
                format!(
                    "{} of {PROJECTED} events handled within {:?}",
                    firsts.len(),
                    super::DELIVERY_TIMEOUT
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A saga manager and a projection refuse to be fed from an at-most-once bus unless the caller
/// opts in ([`FeedOptions::allow_at_most_once`]); an at-least-once bus is accepted as it is.
pub async fn at_most_once_refused_without_opt_in(bus: &dyn EventBus) {
    let promise = "sagas and projections refuse an at-most-once bus unless opted in";
    let manager = match SagaManager::new(CountingSaga, Arc::new(InMemorySagaStore::new())) {
        Ok(m) => Arc::new(m),
        Err(e) => fail(promise, format!("cannot build the saga manager: {e}")),
    };
    let saga = manager.subscribe(bus).await;
    let proj = projection::subscribe(bus, SequenceProjection::default()).await;
    match bus.guarantee() {
        Delivery::AtMostOnce => {
            for (what, result) in [("saga", saga), ("projection", proj)] {
                match result {
                    Err(Error::AtMostOnceBus { .. }) => {}
                    Err(e) => fail(promise, format!("{what}: wrong error {e}")),
                    Ok(_) => fail(promise, format!("{what} accepted an at-most-once bus")),
                }
            }
            let opt_in = FeedOptions::new().allow_at_most_once();
            if let Err(e) = manager.subscribe_with(bus, opt_in.clone()).await {
                fail(promise, format!("saga refused despite the opt-in: {e}"));
            }
            if let Err(e) =
                projection::subscribe_with(bus, SequenceProjection::default(), opt_in).await
            {
                fail(
                    promise,
                    format!("projection refused despite the opt-in: {e}"),
                );
            }
        }
        Delivery::AtLeastOnce => {
            for (what, result) in [("saga", saga), ("projection", proj)] {
                if let Err(e) = result {
                    fail(promise, format!("{what} refused an at-least-once bus: {e}"));
                }
            }
        }
    }
}
