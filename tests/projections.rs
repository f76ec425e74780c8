//! Integration tests: projections (runner, checkpoints, failure policies, rebuild, bus adapter)
//! and sagas (routing, causation, deduplication, restart, races, deadlines, outbox), on the
//! in-memory backends and, with feature `postgres`, on the real PostgreSQL server (including the
//! crash test of transactional projections and the 1,000-race test of saga creation).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventflow::backoff::Jitter;
use eventflow::bus::memory::InMemoryBus;
use eventflow::projection::{self, Backoff, FailurePolicy, Projection, ProjectionRunner, RunState};
use eventflow::saga::{
    IgnoreReason, InMemorySagaStore, Pruned, Saga, SagaCommit, SagaContext, SagaManager,
    SagaOutcome, SagaStore,
};
use eventflow::store::DeadLetterStore;
use eventflow::store::memory::{InMemoryCheckpointStore, InMemoryEventStore};
use eventflow::testing::RecordingBus;
use eventflow::{
    BoxError, CheckpointStore, Event, EventBus, EventStore, ExpectedVersion, HandlerResult,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A projection: order totals per customer, and a count of every event it saw.

#[derive(Default)]
struct OrderTotals {
    totals: Mutex<BTreeMap<String, i64>>,
    handled: AtomicU64,
    resets: AtomicU32,
    /// Fail on events whose payload has this `n` while `fail_times` > 0.
    fail_on: Option<u64>,
    fail_times: AtomicU32,
    panic_instead: bool,
}

impl OrderTotals {
    fn failing_on(n: u64, times: u32) -> Self {
        OrderTotals {
            fail_on: Some(n),
            fail_times: AtomicU32::new(times),
            ..Default::default()
        }
    }
    fn snapshot(&self) -> BTreeMap<String, i64> {
        self.totals.lock().unwrap().clone()
    }
}

#[async_trait]
impl Projection for OrderTotals {
    fn name(&self) -> &str {
        "order-totals"
    }
    fn patterns(&self) -> Vec<String> {
        vec!["order.*".into()]
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        if self.fail_on == event.payload["n"].as_u64()
            && self
                .fail_times
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| t.checked_sub(1))
                .is_ok()
        {
            if self.panic_instead {
                panic!("injected panic on event {}", event.payload["n"]);
            }
            return Err(format!("injected failure on event {}", event.payload["n"]).into());
        }
        let customer = event.payload["customer"].as_str().unwrap_or("?").to_owned();
        let amount = event.payload["amount"].as_i64().unwrap_or(0);
        *self.totals.lock().unwrap().entry(customer).or_default() += amount;
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn reset(&self) -> HandlerResult {
        self.totals.lock().unwrap().clear();
        self.handled.store(0, Ordering::SeqCst);
        self.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn order_event(n: u64) -> Event {
    Event::new(
        "order.placed",
        json!({ "n": n, "customer": format!("c{}", n % 7), "amount": (n % 13) as i64 + 1 }),
    )
    .unwrap()
}

fn expected_totals(range: std::ops::RangeInclusive<u64>) -> BTreeMap<String, i64> {
    let mut totals = BTreeMap::new();
    for n in range {
        *totals.entry(format!("c{}", n % 7)).or_default() += (n % 13) as i64 + 1;
    }
    totals
}

/// Appends orders `from..=to`, one stream per 10 orders, with a non-matching event every 10;
/// returns the position of the last event appended.
async fn append_orders(store: &dyn EventStore, from: u64, to: u64) -> u64 {
    let mut last = 0;
    let mut n = from;
    while n <= to {
        let end = (n + 9).min(to);
        let mut batch: Vec<Event> = (n..=end).map(order_event).collect();
        batch.push(Event::new("audit.noted", json!({ "n": end })).unwrap());
        let recorded = store
            .append_batch(&format!("orders-{n}"), ExpectedVersion::Any, batch)
            .await
            .unwrap();
        last = last.max(recorded.last().unwrap().position.unwrap());
        n = end + 1;
    }
    last
}

/// Catches up until the runner has passed `position`. (On PostgreSQL a reader only sees events
/// below the oldest running transaction on the server, so one `catch_up` may stop short while
/// other tests hold transactions open.)
async fn catch_up_to(runner: &ProjectionRunner, position: u64) -> eventflow::Result<()> {
    tokio::time::timeout(WAIT, async {
        loop {
            if runner.catch_up().await? >= position {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the runner did not reach the position in time")
}

/// A checkpoint store that counts saves, around the real in-memory one.
#[derive(Default)]
struct CountingCheckpoints {
    inner: InMemoryCheckpointStore,
    saves: AtomicU64,
}

#[async_trait]
impl CheckpointStore for CountingCheckpoints {
    async fn load_checkpoint(&self, name: &str) -> eventflow::Result<u64> {
        self.inner.load_checkpoint(name).await
    }
    async fn save_checkpoint(&self, name: &str, position: u64) -> eventflow::Result<()> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        self.inner.save_checkpoint(name, position).await
    }
    async fn reset_checkpoint(&self, name: &str) -> eventflow::Result<()> {
        self.inner.reset_checkpoint(name).await
    }
}

fn memory_runner(
    store: &Arc<InMemoryEventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    projection: Arc<OrderTotals>,
) -> ProjectionRunner {
    ProjectionRunner::new(store.clone(), checkpoints, projection).unwrap()
}

#[tokio::test]
async fn projection_catches_up_in_batches_then_follows_live() {
    let store = Arc::new(InMemoryEventStore::new());
    append_orders(store.as_ref(), 1, 1000).await;
    let checkpoints = Arc::new(CountingCheckpoints::default());
    let totals = Arc::new(OrderTotals::default());
    let runner = memory_runner(&store, checkpoints.clone(), totals.clone()).batch_size(100);

    let task = runner.start();
    runner.wait_caught_up(WAIT).await.unwrap();
    assert_eq!(totals.snapshot(), expected_totals(1..=1000));
    // 1,100 events (1,000 orders + 100 audit events) in batches of 100: one save per batch.
    assert_eq!(
        checkpoints.saves.load(Ordering::SeqCst),
        11,
        "checkpoint once per batch"
    );
    let status = runner.status().await.unwrap();
    assert_eq!(status.lag, 0);
    assert_eq!(status.position, store.head_position().await.unwrap());
    assert_eq!(
        checkpoints.load_checkpoint("order-totals").await.unwrap(),
        status.position
    );

    // Live: new commits are picked up without calling anything.
    append_orders(store.as_ref(), 1001, 1050).await;
    runner.wait_caught_up(WAIT).await.unwrap();
    assert_eq!(totals.snapshot(), expected_totals(1..=1050));
    let status = runner.status().await.unwrap();
    assert_eq!((status.lag, status.state), (0, RunState::Live));
    task.stop().await;
}

#[tokio::test]
async fn projection_status_reports_lag_before_it_runs() {
    let store = Arc::new(InMemoryEventStore::new());
    append_orders(store.as_ref(), 1, 30).await;
    let runner = memory_runner(
        &store,
        Arc::new(InMemoryCheckpointStore::new()),
        Arc::new(OrderTotals::default()),
    );
    let status = runner.status().await.unwrap();
    assert_eq!(status.position, 0);
    assert_eq!(status.lag, status.head);
    assert!(status.lag > 0);
    runner.catch_up().await.unwrap();
    assert_eq!(runner.status().await.unwrap().lag, 0);
}

#[tokio::test]
async fn projection_resumes_from_its_checkpoint() {
    let store = Arc::new(InMemoryEventStore::new());
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(InMemoryCheckpointStore::new());
    append_orders(store.as_ref(), 1, 100).await;
    let first = Arc::new(OrderTotals::default());
    memory_runner(&store, checkpoints.clone(), first.clone())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(first.handled.load(Ordering::SeqCst), 100);

    append_orders(store.as_ref(), 101, 150).await;
    // A restarted process: a fresh read model instance, same checkpoint store.
    let second = Arc::new(OrderTotals::default());
    memory_runner(&store, checkpoints, second.clone())
        .catch_up()
        .await
        .unwrap();
    assert_eq!(
        second.handled.load(Ordering::SeqCst),
        50,
        "only events after the checkpoint"
    );
    assert_eq!(second.snapshot(), expected_totals(101..=150));
}

#[tokio::test]
async fn projection_rebuild_resets_and_replays_everything() {
    let store = Arc::new(InMemoryEventStore::new());
    append_orders(store.as_ref(), 1, 300).await;
    let totals = Arc::new(OrderTotals::default());
    let runner = memory_runner(
        &store,
        Arc::new(InMemoryCheckpointStore::new()),
        totals.clone(),
    )
    .batch_size(64);
    runner.catch_up().await.unwrap();
    // Corrupt the read model, then rebuild from scratch.
    totals.totals.lock().unwrap().insert("c0".into(), -1);
    let position = runner.rebuild().await.unwrap();
    assert_eq!(totals.resets.load(Ordering::SeqCst), 1, "reset hook called");
    assert_eq!(totals.snapshot(), expected_totals(1..=300));
    assert_eq!(totals.handled.load(Ordering::SeqCst), 300);
    assert_eq!(position, store.head_position().await.unwrap());
}

#[tokio::test]
async fn projection_rebuild_while_running_live() {
    let store = Arc::new(InMemoryEventStore::new());
    append_orders(store.as_ref(), 1, 200).await;
    let totals = Arc::new(OrderTotals::default());
    let runner = memory_runner(
        &store,
        Arc::new(InMemoryCheckpointStore::new()),
        totals.clone(),
    )
    .batch_size(16);
    let task = runner.start();
    runner.wait_caught_up(WAIT).await.unwrap();
    runner.rebuild().await.unwrap();
    append_orders(store.as_ref(), 201, 250).await;
    runner.wait_caught_up(WAIT).await.unwrap();
    assert_eq!(totals.snapshot(), expected_totals(1..=250));
    task.stop().await;
}

#[tokio::test]
async fn failure_policy_stop_keeps_the_checkpoint_before_the_failed_event() {
    let store = Arc::new(InMemoryEventStore::new());
    append_orders(store.as_ref(), 1, 100).await;
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(InMemoryCheckpointStore::new());
    let totals = Arc::new(OrderTotals::failing_on(57, u32::MAX));
    let runner = memory_runner(&store, checkpoints.clone(), totals.clone())
        .batch_size(25)
        .failure_policy(FailurePolicy::Stop);
    let err = runner.catch_up().await.unwrap_err();
    assert!(matches!(err, eventflow::Error::Handler { .. }), "{err}");

    let failed = store
        .read_all(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.payload["n"] == 57 && e.event_type == "order.placed")
        .unwrap();
    let status = runner.status().await.unwrap();
    assert_eq!(status.state, RunState::Failed);
    let failure = status.failure.unwrap();
    assert_eq!(failure.event_id, failed.id);
    let checkpoint = checkpoints.load_checkpoint("order-totals").await.unwrap();
    assert!(
        checkpoint < failed.position.unwrap(),
        "never past the failed event"
    );
    assert_eq!(checkpoint, status.position);
    assert_eq!(totals.snapshot(), expected_totals(1..=56));
    // Stopped stays stopped, until resumed; then (handler fixed) it goes on.
    assert!(runner.catch_up().await.is_err());
    totals.fail_times.store(0, Ordering::SeqCst);
    runner.resume();
    runner.catch_up().await.unwrap();
    assert_eq!(totals.snapshot(), expected_totals(1..=100));
}

#[tokio::test]
async fn failure_policy_skip_reports_the_event_and_moves_on() {
    let store = Arc::new(InMemoryEventStore::new());
    append_orders(store.as_ref(), 1, 60).await;
    let totals = Arc::new(OrderTotals::failing_on(33, u32::MAX));
    let runner = memory_runner(
        &store,
        Arc::new(InMemoryCheckpointStore::new()),
        totals.clone(),
    )
    .failure_policy(FailurePolicy::Skip);
    runner.catch_up().await.unwrap();
    let status = runner.status().await.unwrap();
    assert_eq!(status.skipped, 1);
    assert_eq!(status.lag, 0);
    assert!(
        status
            .failure
            .unwrap()
            .error
            .contains("injected failure on event 33")
    );
    let mut expected = expected_totals(1..=60);
    *expected.get_mut("c5").unwrap() -= 33 % 13 + 1; // 33 % 7 == 5
    assert_eq!(totals.snapshot(), expected);
}

#[tokio::test]
async fn failure_policy_retry_with_backoff_until_handled() {
    let store = Arc::new(InMemoryEventStore::new());
    append_orders(store.as_ref(), 1, 40).await;
    let totals = Arc::new(OrderTotals {
        panic_instead: true,
        ..OrderTotals::failing_on(12, 3)
    });
    let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
    let runner = memory_runner(
        &store,
        Arc::new(InMemoryCheckpointStore::new()),
        totals.clone(),
    )
    .failure_policy(FailurePolicy::Retry(backoff));
    runner.catch_up().await.unwrap();
    assert_eq!(
        totals.fail_times.load(Ordering::SeqCst),
        0,
        "failed 3 times, panics caught"
    );
    assert_eq!(
        totals.snapshot(),
        expected_totals(1..=40),
        "each event applied once"
    );
}

#[tokio::test]
async fn failure_policy_retry_gives_up_after_max_attempts() {
    let store = Arc::new(InMemoryEventStore::new());
    append_orders(store.as_ref(), 1, 20).await;
    let totals = Arc::new(OrderTotals::failing_on(5, u32::MAX));
    let backoff =
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2)).with_max_attempts(Some(3));
    let runner = memory_runner(
        &store,
        Arc::new(InMemoryCheckpointStore::new()),
        totals.clone(),
    )
    .failure_policy(FailurePolicy::Retry(backoff));
    assert!(runner.catch_up().await.is_err());
    assert_eq!(totals.fail_times.load(Ordering::SeqCst), u32::MAX - 3);
    assert_eq!(runner.status().await.unwrap().state, RunState::Failed);
    assert_eq!(totals.snapshot(), expected_totals(1..=4));
}

#[tokio::test]
async fn projection_runs_from_a_bus_subscription() {
    let bus = InMemoryBus::new();
    let totals = Arc::new(OrderTotals::default());
    // The in-memory bus delivers at most once: feeding a projection from it needs an opt-in.
    let refused = projection::subscribe(&bus, totals.clone()).await;
    assert!(matches!(
        refused,
        Err(eventflow::Error::AtMostOnceBus { .. })
    ));
    let subscription = projection::subscribe_with(
        &bus,
        totals.clone(),
        eventflow::FeedOptions::new().allow_at_most_once(),
    )
    .await
    .unwrap();
    for n in 1..=20 {
        bus.publish(order_event(n)).await.unwrap();
    }
    bus.publish(Event::new("audit.noted", json!({})).unwrap())
        .await
        .unwrap();
    assert_eq!(totals.snapshot(), expected_totals(1..=20));
    assert_eq!(totals.handled.load(Ordering::SeqCst), 20);
    drop(subscription);
    bus.publish(order_event(21)).await.unwrap();
    assert_eq!(
        totals.handled.load(Ordering::SeqCst),
        20,
        "dropped subscription stops"
    );
}

#[tokio::test]
async fn projection_rejects_an_invalid_pattern() {
    struct Bad;
    #[async_trait]
    impl Projection for Bad {
        fn name(&self) -> &str {
            "bad"
        }
        fn patterns(&self) -> Vec<String> {
            vec!["Order Placed".into()]
        }
        async fn handle(&self, _: &Event) -> HandlerResult {
            Ok(())
        }
    }
    let store = Arc::new(InMemoryEventStore::new());
    let err =
        ProjectionRunner::new(store, Arc::new(InMemoryCheckpointStore::new()), Bad).unwrap_err();
    assert!(matches!(err, eventflow::Error::InvalidPattern { .. }));
}

/// A typed event set (derive); a projection can ask for exactly its types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, eventflow::DomainEvent)]
#[event(prefix = "shop")]
enum ShopEvent {
    OrderPlaced { customer: String, amount: i64 },
    OrderCancelled { customer: String, amount: i64 },
}

#[derive(Default)]
struct ShopTotals(Mutex<BTreeMap<String, i64>>);

#[async_trait]
impl Projection for ShopTotals {
    fn name(&self) -> &str {
        "shop-totals"
    }
    fn patterns(&self) -> Vec<String> {
        projection::event_types_of::<ShopEvent>()
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        let mut totals = self.0.lock().unwrap();
        match event.decode::<ShopEvent>()? {
            ShopEvent::OrderPlaced { customer, amount } => {
                *totals.entry(customer).or_default() += amount;
            }
            ShopEvent::OrderCancelled { customer, amount } => {
                *totals.entry(customer).or_default() -= amount;
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn projection_of_a_typed_event_set_sees_only_its_types() {
    let store = Arc::new(InMemoryEventStore::new());
    let events = vec![
        Event::from_domain(&ShopEvent::OrderPlaced {
            customer: "ada".into(),
            amount: 30,
        })
        .unwrap(),
        // Same prefix, not in the set: must not reach the handler (it would fail to decode).
        Event::new("shop.order_archived", json!({})).unwrap(),
        Event::from_domain(&ShopEvent::OrderPlaced {
            customer: "ada".into(),
            amount: 12,
        })
        .unwrap(),
        Event::from_domain(&ShopEvent::OrderCancelled {
            customer: "ada".into(),
            amount: 30,
        })
        .unwrap(),
    ];
    store
        .append_batch("shop-1", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let totals = Arc::new(ShopTotals::default());
    let runner = ProjectionRunner::new(
        store.clone(),
        Arc::new(InMemoryCheckpointStore::new()),
        totals.clone(),
    )
    .unwrap()
    .failure_policy(FailurePolicy::Stop);
    runner.catch_up().await.unwrap();
    assert_eq!(totals.0.lock().unwrap().get("ada"), Some(&12));
    assert_eq!(runner.status().await.unwrap().lag, 0);
}

// ---------------------------------------------------------------------------------------------
// Sagas

/// Counts the events of each correlation id; starts on `race.start`, completes on `race.done`,
/// and on `race.start` sets a deadline that fires `race.timeout`.
struct Counter;

#[derive(Debug, Default, Serialize, Deserialize)]
struct CounterState {
    seen: Vec<String>,
    timed_out: bool,
}

impl Saga for Counter {
    type State = CounterState;
    fn name(&self) -> &str {
        "counter"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["race.start".into()]
    }
    fn handles(&self) -> Vec<String> {
        vec![
            "race.step".into(),
            "race.done".into(),
            "race.timeout".into(),
        ]
    }
    fn handle(
        &self,
        state: &mut CounterState,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> Result<(), BoxError> {
        state.seen.push(event.event_type.clone());
        match event.event_type.as_str() {
            "race.start" if ctx.is_start() => {
                ctx.set_deadline(
                    "expire",
                    Duration::from_millis(200),
                    Event::new("race.timeout", json!({}))?,
                );
                ctx.emit_new("race.started", json!({}))?;
            }
            "race.done" => ctx.complete(),
            "race.timeout" => {
                state.timed_out = true;
                ctx.emit_new("race.expired", json!({}))?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn race(event_type: &str, correlation: &str) -> Event {
    Event::new(event_type, json!({}))
        .unwrap()
        .with_correlation(correlation)
}

async fn saga_routes_dedups_and_sets_causation(store: Arc<dyn SagaStore>) {
    let bus = Arc::new(RecordingBus::new());
    let manager = SagaManager::new(Counter, store)
        .unwrap()
        .with_bus(bus.clone());
    let start = race("race.start", "k-1");
    let SagaOutcome::Handled {
        started, emitted, ..
    } = manager.handle(&start).await.unwrap()
    else {
        panic!("start not handled")
    };
    assert!(started);
    assert_eq!(emitted.len(), 1);
    assert_eq!(emitted[0].correlation_id.as_deref(), Some("k-1"));
    assert_eq!(emitted[0].causation_id, Some(start.id.to_string()));
    // Published with the same ids.
    assert_eq!(bus.events_of_type("race.started")[0].id, emitted[0].id);

    assert_eq!(
        manager.handle(&start).await.unwrap(),
        SagaOutcome::Duplicate,
        "redelivered start"
    );
    let step = race("race.step", "k-1");
    assert!(matches!(
        manager.handle(&step).await.unwrap(),
        SagaOutcome::Handled { started: false, .. }
    ));
    assert_eq!(manager.handle(&step).await.unwrap(), SagaOutcome::Duplicate);
    assert_eq!(
        manager.handle(&race("race.step", "nobody")).await.unwrap(),
        SagaOutcome::Ignored(IgnoreReason::NoInstance)
    );
    assert_eq!(
        manager.handle(&race("other.thing", "k-1")).await.unwrap(),
        SagaOutcome::Ignored(IgnoreReason::NotInterested)
    );
    let (state, completed) = manager.instance("k-1").await.unwrap().unwrap();
    assert_eq!(state.seen, ["race.start", "race.step"]);
    assert!(!completed);

    assert!(matches!(
        manager.handle(&race("race.done", "k-1")).await.unwrap(),
        SagaOutcome::Handled {
            completed: true,
            ..
        }
    ));
    assert_eq!(
        manager.handle(&race("race.step", "k-1")).await.unwrap(),
        SagaOutcome::Ignored(IgnoreReason::Completed)
    );
    // Completion cancels the deadline.
    let far = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(manager.fire_deadlines_at(far).await.unwrap(), 0);
    assert!(bus.events_of_type("race.timeout").is_empty());
}

/// Two managers (two "processes") over one store; for each of `n` correlation ids, two
/// different starting events arrive at the same time, one at each manager.
async fn saga_creation_races(store_a: Arc<dyn SagaStore>, store_b: Arc<dyn SagaStore>, n: usize) {
    let a = Arc::new(SagaManager::new(Counter, store_a).unwrap());
    let b = Arc::new(SagaManager::new(Counter, store_b).unwrap());
    let mut tasks = Vec::with_capacity(2 * n);
    for i in 0..n {
        let correlation = format!("race-{i}");
        for manager in [&a, &b] {
            let manager = Arc::clone(manager);
            let event = race("race.start", &correlation);
            tasks.push(tokio::spawn(async move { manager.handle(&event).await }));
        }
    }
    let mut started = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            SagaOutcome::Handled { started: true, .. } => started += 1,
            SagaOutcome::Handled { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(started, n, "exactly one creation per correlation id");
    for i in 0..n {
        let (state, _) = a.instance(&format!("race-{i}")).await.unwrap().unwrap();
        assert_eq!(
            state.seen.len(),
            2,
            "both events handled by the one instance"
        );
    }
}

/// `before` and `after` are the same store as seen by the process before and after a restart.
async fn saga_resumes_and_fires_deadlines_after_restart(
    before_store: Arc<dyn SagaStore>,
    after_store: Arc<dyn SagaStore>,
) {
    let bus = Arc::new(RecordingBus::new());
    {
        let before = SagaManager::new(Counter, before_store)
            .unwrap()
            .with_bus(bus.clone());
        before.handle(&race("race.start", "d-1")).await.unwrap();
        before.handle(&race("race.step", "d-1")).await.unwrap();
        // Not yet due.
        assert_eq!(before.fire_due_deadlines().await.unwrap(), 0);
    } // the process "dies" with a deadline pending

    let after = Arc::new(
        SagaManager::new(Counter, after_store)
            .unwrap()
            .with_bus(bus.clone()),
    );
    let (state, _) = after.instance("d-1").await.unwrap().unwrap();
    assert_eq!(state.seen, ["race.start", "race.step"], "state resumed");

    let timer = after.start_timer(Duration::from_millis(20));
    tokio::time::timeout(WAIT, async {
        while !bus.has_event("race.expired") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("deadline fired after the restart");
    drop(timer);
    let (state, _) = after.instance("d-1").await.unwrap().unwrap();
    assert!(state.timed_out);
    assert_eq!(state.seen, ["race.start", "race.step", "race.timeout"]);
    let timeout = bus.events_of_type("race.timeout");
    assert_eq!(timeout.len(), 1, "the timeout event is published once");
    assert_eq!(timeout[0].correlation_id.as_deref(), Some("d-1"));
    let expired = &bus.events_of_type("race.expired")[0];
    assert_eq!(expired.causation_id, Some(timeout[0].id.to_string()));
    // Fired once: the deadline is consumed.
    let far = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(after.fire_deadlines_at(far).await.unwrap(), 0);
}

async fn saga_outbox_survives_a_failed_publish(store: Arc<dyn SagaStore>) {
    let closed = Arc::new(InMemoryBus::new());
    closed.close().await.unwrap();
    let broken = SagaManager::new(Counter, store.clone())
        .unwrap()
        .with_bus(closed);
    let start = race("race.start", "o-1");
    assert!(matches!(
        broken.handle(&start).await.unwrap(),
        SagaOutcome::Handled { .. }
    ));
    let bus = Arc::new(RecordingBus::new());
    let fixed = SagaManager::new(Counter, store)
        .unwrap()
        .with_bus(bus.clone());
    assert_eq!(fixed.flush_outbox().await.unwrap(), 1);
    let started = bus.events_of_type("race.started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].causation_id, Some(start.id.to_string()));
    assert_eq!(fixed.flush_outbox().await.unwrap(), 0, "acknowledged");
}

#[tokio::test]
async fn memory_saga_routes_dedups_and_sets_causation() {
    saga_routes_dedups_and_sets_causation(Arc::new(InMemorySagaStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_saga_1000_creation_races_make_one_instance_each() {
    let store = Arc::new(InMemorySagaStore::new());
    saga_creation_races(store.clone(), store.clone(), 1000).await;
    assert_eq!(store.instance_count("counter"), 1000);
}

#[tokio::test]
async fn memory_saga_resumes_and_fires_deadlines_after_restart() {
    let store = Arc::new(InMemorySagaStore::new());
    saga_resumes_and_fires_deadlines_after_restart(store.clone(), store).await;
}

/// Sets one deadline on start; its timeout fails for the correlation id `poison` until
/// `poison_fixed` is set. Clones share the counters.
#[derive(Clone, Default)]
struct Timeouts {
    /// Timeouts handled, per correlation id.
    fired: Arc<Mutex<BTreeMap<String, u32>>>,
    /// Calls of the handler with the `poison` timeout, failed or not.
    poison_calls: Arc<AtomicU32>,
    poison_fixed: Arc<AtomicBool>,
}

impl Saga for Timeouts {
    type State = ();
    fn name(&self) -> &str {
        "timeouts"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["job.started".into()]
    }
    fn handles(&self) -> Vec<String> {
        vec!["job.timed_out".into()]
    }
    fn handle(&self, _: &mut (), e: &Event, ctx: &mut SagaContext) -> Result<(), BoxError> {
        let correlation = e.correlation_id.clone().unwrap_or_default();
        match e.event_type.as_str() {
            "job.started" => ctx.set_deadline(
                "limit",
                Duration::from_secs(60),
                Event::new("job.timed_out", json!({}))?,
            ),
            "job.timed_out" => {
                if correlation == "poison" {
                    self.poison_calls.fetch_add(1, Ordering::SeqCst);
                    if !self.poison_fixed.load(Ordering::SeqCst) {
                        return Err("this deadline always fails".into());
                    }
                }
                *self.fired.lock().unwrap().entry(correlation).or_default() += 1;
                ctx.complete();
            }
            other => return Err(format!("unexpected {other}").into()),
        }
        Ok(())
    }
}

/// 300 deadlines due at once, one of which always fails: the other 299 fire once, the failing
/// one is retried alone after its backoff.
async fn saga_deadlines_fail_one_by_one(store: Arc<dyn SagaStore>) {
    let saga = Timeouts::default();
    let manager = SagaManager::new(saga.clone(), store).unwrap();
    // The poison deadline is the earliest, so it comes first.
    for id in std::iter::once("poison".to_owned()).chain((0..299).map(|i| format!("job-{i}"))) {
        let start = Event::new("job.started", json!({}))
            .unwrap()
            .with_correlation(&id);
        manager.handle(&start).await.unwrap();
    }
    let far = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(manager.fire_deadlines_at(far).await.unwrap(), 299);
    assert_eq!(
        manager.fire_deadlines_at(far).await.unwrap(),
        0,
        "each once"
    );
    let failing = manager.failing_deadlines();
    assert_eq!(failing.len(), 1);
    assert_eq!(
        (failing[0].correlation_id.as_str(), failing[0].attempts),
        ("poison", 1)
    );
    let later = far + chrono::Duration::minutes(10);
    assert_eq!(manager.fire_deadlines_at(later).await.unwrap(), 0);
    assert_eq!(
        manager.failing_deadlines()[0].attempts,
        2,
        "retried after its backoff"
    );
    let fired = saga.fired.lock().unwrap();
    assert_eq!(fired.len(), 299);
    assert!(fired.values().all(|&n| n == 1), "the others fired once");
}

fn job_started(correlation: &str) -> Event {
    Event::new("job.started", json!({}))
        .unwrap()
        .with_correlation(correlation)
}

/// 300 deadlines, one of which fails until its handler is fixed: it is parked after 3 failed
/// attempts with its reason and removed from its instance, while the other 299 fire once (150
/// in the tick of its first failure, 149 set later in the tick of its second); it never fires
/// again by itself, in this process or a restarted one (the handler's call count stays put);
/// once fixed, a retry delivers it once. `restarted` is `store` as a restarted process sees it.
async fn saga_failing_deadline_is_parked(
    store: Arc<dyn SagaStore>,
    restarted: Arc<dyn SagaStore>,
    dead_letters: Arc<dyn DeadLetterStore>,
) {
    let saga = Timeouts::default();
    let bus = Arc::new(RecordingBus::new());
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1))
        .with_jitter(Jitter::None)
        .with_max_attempts(Some(3));
    let manager = SagaManager::new(saga.clone(), store.clone())
        .unwrap()
        .with_bus(bus.clone())
        .dead_letters(dead_letters.clone())
        .with_deadline_backoff(backoff);
    // The poison deadline is the earliest, so every tick meets it first.
    manager.handle(&job_started("poison")).await.unwrap();
    for i in 0..150 {
        manager
            .handle(&job_started(&format!("job-{i}")))
            .await
            .unwrap();
    }
    let t0 = chrono::Utc::now() + chrono::Duration::hours(1);
    let tick = |n: i64| t0 + chrono::Duration::minutes(n);

    assert_eq!(manager.fire_deadlines_at(tick(1)).await.unwrap(), 150);
    for i in 150..299 {
        manager
            .handle(&job_started(&format!("job-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(manager.fire_deadlines_at(tick(2)).await.unwrap(), 149);
    assert_eq!(manager.failing_deadlines()[0].attempts, 2);
    assert_eq!(manager.parked_deadline_count().await.unwrap(), 0);
    // The third failure parks it.
    assert_eq!(manager.fire_deadlines_at(tick(3)).await.unwrap(), 0);
    assert_eq!(saga.poison_calls.load(Ordering::SeqCst), 3);
    assert!(
        manager.failing_deadlines().is_empty(),
        "parked, not failing"
    );
    let parked = manager.parked_deadlines(10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let parked = &parked[0];
    assert_eq!(parked.source, "saga:timeouts:deadlines");
    assert_eq!(parked.source, manager.parked_deadline_source());
    assert_eq!(
        parked.reason,
        r#"deadline "limit" of instance "poison" failed 3 times"#
    );
    assert_eq!(parked.attempts, 3);
    assert!(
        parked.error.contains("this deadline always fails"),
        "{}",
        parked.error
    );
    assert_eq!(parked.event.event_type, "job.timed_out");
    assert_eq!(parked.event.correlation_id.as_deref(), Some("poison"));
    assert_eq!(
        manager.parked_count().await.unwrap(),
        0,
        "not an outbox event"
    );
    let loaded = store
        .load("timeouts", "poison", parked.event.id)
        .await
        .unwrap();
    assert!(!loaded.already_handled);
    assert!(
        loaded.instance.unwrap().deadlines.is_empty(),
        "removed from its instance in the store"
    );

    // Later ticks never fire it, here or after a restart (which forgets the retry counts).
    assert_eq!(manager.fire_deadlines_at(tick(60)).await.unwrap(), 0);
    assert_eq!(manager.fire_deadlines_at(tick(60 * 24)).await.unwrap(), 0);
    let after = SagaManager::new(saga.clone(), restarted)
        .unwrap()
        .with_bus(bus.clone())
        .dead_letters(dead_letters)
        .with_deadline_backoff(backoff);
    assert_eq!(after.fire_deadlines_at(tick(60 * 48)).await.unwrap(), 0);
    assert_eq!(
        saga.poison_calls.load(Ordering::SeqCst),
        3,
        "a parked deadline never fires by itself"
    );

    // Retried while still failing: it stays parked.
    let outcome = after.retry_parked_deadlines(10).await.unwrap();
    assert_eq!((outcome.delivered, outcome.failed), (0, 1));
    assert_eq!(after.parked_deadline_count().await.unwrap(), 1);
    // Fixed: one retry delivers it, once.
    saga.poison_fixed.store(true, Ordering::SeqCst);
    let outcome = after.retry_parked_deadlines(10).await.unwrap();
    assert_eq!((outcome.delivered, outcome.failed), (1, 0));
    assert_eq!(after.parked_deadline_count().await.unwrap(), 0);
    assert_eq!(after.retry_parked_deadlines(10).await.unwrap().delivered, 0);
    assert_eq!(after.fire_deadlines_at(tick(60 * 72)).await.unwrap(), 0);
    let (_, completed) = after.instance("poison").await.unwrap().unwrap();
    assert!(completed, "its timeout was handled");

    let fired = saga.fired.lock().unwrap();
    assert_eq!(fired.len(), 300);
    assert!(fired.values().all(|&n| n == 1), "every deadline fired once");
    let published = bus.events_of_type("job.timed_out");
    assert_eq!(published.len(), 300, "each timeout published once");
    assert!(published.iter().any(|e| e.id == parked.event.id));
}

#[tokio::test]
async fn memory_saga_deadlines_fail_one_by_one() {
    saga_deadlines_fail_one_by_one(Arc::new(InMemorySagaStore::new())).await;
}

#[tokio::test]
async fn memory_saga_failing_deadline_is_parked() {
    let store = Arc::new(InMemorySagaStore::new());
    let dead_letters = Arc::new(eventflow::store::InMemoryDeadLetterStore::new());
    saga_failing_deadline_is_parked(store.clone(), store, dead_letters).await;
}

#[tokio::test]
async fn memory_saga_outbox_survives_a_failed_publish() {
    saga_outbox_survives_a_failed_publish(Arc::new(InMemorySagaStore::new())).await;
}

// ---------------------------------------------------------------------------------------------
// Saga retention

/// Starts on `job.run` and completes at once, unless the payload says `"keep": true`.
struct OneShot;

impl Saga for OneShot {
    type State = u32;
    fn name(&self) -> &str {
        "oneshot"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["job.run".into()]
    }
    fn handles(&self) -> Vec<String> {
        vec!["job.late".into()]
    }
    fn handle(&self, runs: &mut u32, e: &Event, ctx: &mut SagaContext) -> Result<(), BoxError> {
        *runs += 1;
        if e.payload.get("keep") != Some(&json!(true)) {
            ctx.complete();
        }
        Ok(())
    }
}

/// (instances, handled ids, tombstones) of the `oneshot` saga in a store.
type Counts = Box<dyn Fn() -> futures_util::future::BoxFuture<'static, (u64, u64, u64)>>;

/// Completed sagas ending up bounded. `seeded` completed `oneshot` instances (one handled id
/// each, correlation ids `bulk-*`) are already in `store`; this starts and completes 1,000 more
/// through a manager, keeps 10 running, prunes after each window, and redelivers the old
/// events.
async fn saga_retention_bounds_bookkeeping(store: Arc<dyn SagaStore>, seeded: u64, counts: Counts) {
    const REAL: u64 = 1_000;
    const LIVE: u64 = 10;
    let manager = SagaManager::new(OneShot, store.clone()).unwrap();
    let run = |c: String| {
        Event::new("job.run", json!({}))
            .unwrap()
            .with_correlation(c)
    };
    let starts: Vec<Event> = (0..REAL).map(|i| run(format!("real-{i}"))).collect();
    for start in &starts {
        assert!(matches!(
            manager.handle(start).await.unwrap(),
            SagaOutcome::Handled {
                started: true,
                completed: true,
                ..
            }
        ));
    }
    for i in 0..LIVE {
        let keep = Event::new("job.run", json!({ "keep": true }))
            .unwrap()
            .with_correlation(format!("live-{i}"));
        manager.handle(&keep).await.unwrap();
    }
    let total = seeded + REAL;
    assert_eq!(counts().await, (total + LIVE, total + LIVE, 0));

    // Inside the retention window nothing goes, and a redelivery is a duplicate.
    let now = chrono::Utc::now();
    assert_eq!(manager.prune_at(now).await.unwrap(), Pruned::default());
    assert_eq!(
        manager.handle(&starts[0]).await.unwrap(),
        SagaOutcome::Duplicate
    );

    // After the retention window (default 24 h): only tombstones are left of completed ones.
    let pruned = manager
        .prune_at(now + chrono::Duration::hours(25))
        .await
        .unwrap();
    assert_eq!((pruned.instances, pruned.tombstones), (total, 0));
    assert_eq!(
        counts().await,
        (LIVE, LIVE, total),
        "completed instances pruned"
    );
    // Every old event redelivered, a late one and a fresh start with an old correlation id:
    // none restarts a saga.
    for start in &starts {
        assert_eq!(
            manager.handle(start).await.unwrap(),
            SagaOutcome::Ignored(IgnoreReason::Completed),
            "a redelivered start after the window"
        );
    }
    let late = Event::new("job.late", json!({}))
        .unwrap()
        .with_correlation("real-1");
    assert_eq!(
        manager.handle(&late).await.unwrap(),
        SagaOutcome::Ignored(IgnoreReason::Completed)
    );
    assert_eq!(
        manager.handle(&run("bulk-7".into())).await.unwrap(),
        SagaOutcome::Ignored(IgnoreReason::Completed)
    );
    assert_eq!(manager.instance("real-0").await.unwrap(), None);
    // The store itself refuses to create a tombstoned instance again.
    let again = SagaCommit {
        correlation_id: "real-0".into(),
        expected_version: 0,
        state: json!(1),
        completed: false,
        deadlines: Vec::new(),
        handled_event: uuid::Uuid::new_v4(),
        outbox: Vec::new(),
    };
    let refused = store.commit("oneshot", again).await.unwrap_err();
    assert!(refused.is_conflict(), "{refused}");
    assert_eq!(counts().await, (LIVE, LIVE, total), "nothing restarted");

    // After the tombstone window (default 7 days) only the running instances are left.
    let pruned = manager
        .prune_at(now + chrono::Duration::days(8))
        .await
        .unwrap();
    assert_eq!((pruned.instances, pruned.tombstones), (0, total));
    assert_eq!(counts().await, (LIVE, LIVE, 0), "bounded by what runs");
    // As documented: past both windows the correlation id is unknown again.
    assert!(matches!(
        manager.handle(&starts[0]).await.unwrap(),
        SagaOutcome::Handled { started: true, .. }
    ));
}

#[tokio::test]
async fn memory_saga_100000_completed_instances_are_pruned_to_tombstones_then_gone() {
    const SEEDED: u64 = 99_000;
    let store = Arc::new(InMemorySagaStore::new());
    // In bulk through the store API: one commit per instance, as the manager makes them.
    for i in 0..SEEDED {
        let commit = SagaCommit {
            correlation_id: format!("bulk-{i}"),
            expected_version: 0,
            state: json!(1),
            completed: true,
            deadlines: Vec::new(),
            handled_event: uuid::Uuid::new_v4(),
            outbox: Vec::new(),
        };
        store.commit("oneshot", commit).await.unwrap();
    }
    let counted = store.clone();
    let counts: Counts = Box::new(move || {
        let s = counted.clone();
        Box::pin(async move {
            (
                s.instance_count("oneshot") as u64,
                s.handled_count("oneshot") as u64,
                s.tombstone_count("oneshot") as u64,
            )
        })
    });
    saga_retention_bounds_bookkeeping(store, SEEDED, counts).await;
}

#[tokio::test]
async fn saga_subscribed_to_a_bus_drives_a_flow() {
    let bus = Arc::new(InMemoryBus::new());
    let recording = Arc::new(RecordingBus::forwarding(bus.clone()));
    let manager = Arc::new(
        SagaManager::new(Counter, Arc::new(InMemorySagaStore::new()))
            .unwrap()
            .with_bus(recording.clone()),
    );
    let refused = manager.subscribe(bus.as_ref()).await;
    assert!(matches!(
        refused,
        Err(eventflow::Error::AtMostOnceBus { .. })
    ));
    let _subscription = manager
        .subscribe_with(
            bus.as_ref(),
            eventflow::FeedOptions::new().allow_at_most_once(),
        )
        .await
        .unwrap();
    bus.publish(race("race.start", "b-1")).await.unwrap();
    bus.publish(race("race.done", "b-1")).await.unwrap();
    tokio::time::timeout(WAIT, async {
        while !manager
            .instance("b-1")
            .await
            .unwrap()
            .is_some_and(|(_, c)| c)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(recording.has_event("race.started"));
}

#[tokio::test]
async fn saga_fed_from_the_store_by_a_projection_runner() {
    use eventflow::saga::SagaProjection;
    let store = Arc::new(InMemoryEventStore::new());
    let checkpoints: Arc<dyn CheckpointStore> = Arc::new(InMemoryCheckpointStore::new());
    let sagas = Arc::new(InMemorySagaStore::new());
    let manager = Arc::new(SagaManager::new(Counter, sagas.clone()).unwrap());
    store
        .append_batch(
            "flow-s-1",
            ExpectedVersion::NoStream,
            vec![race("race.start", "s-1"), race("race.step", "s-1")],
        )
        .await
        .unwrap();
    let runner = ProjectionRunner::new(
        store.clone(),
        checkpoints.clone(),
        SagaProjection::new(manager.clone()),
    )
    .unwrap();
    runner.catch_up().await.unwrap();
    // A crash before the checkpoint: everything is delivered again, and ignored as handled.
    checkpoints
        .save_checkpoint("saga-counter", 0)
        .await
        .unwrap();
    store
        .append(
            "flow-s-1",
            ExpectedVersion::Exact(2),
            race("race.done", "s-1"),
        )
        .await
        .unwrap();
    let again = ProjectionRunner::new(
        store.clone(),
        checkpoints,
        SagaProjection::new(manager.clone()),
    )
    .unwrap();
    again.catch_up().await.unwrap();
    let (state, completed) = manager.instance("s-1").await.unwrap().unwrap();
    assert_eq!(state.seen, ["race.start", "race.step", "race.done"]);
    assert!(completed);
    assert_eq!(sagas.instance_count("counter"), 1);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use eventflow::postgres::{
        PgProjection, PgTransaction, PostgresEventStore, PostgresSagaStore, projection_runner,
    };
    use eventflow_tests::{database_url, service_unavailable, unique};
    use sqlx::PgPool;
    use sqlx::postgres::PgPoolOptions;

    async fn pool(max: u32) -> PgPool {
        let url = database_url();
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(60))
            .connect(&url)
            .await
            .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e))
    }

    /// Keeps the injected panics (expected, caught by the runner) out of the test output.
    fn quiet_injected_panics() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let injected = info
                    .payload()
                    .downcast_ref::<&str>()
                    .is_some_and(|m| m.starts_with("injected crash"));
                if !injected {
                    default(info);
                }
            }));
        });
    }

    /// A small pool whose connections carry `application_name`, so a test can kill them.
    async fn named_pool(application_name: &str) -> PgPool {
        let url = database_url();
        let options = url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap()
            .application_name(application_name);
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e))
    }

    /// A migrated store in a schema of its own.
    async fn store(max: u32) -> PostgresEventStore {
        let store = PostgresEventStore::builder(pool(max).await)
            .schema(unique("proj"))
            .poll_interval(Duration::from_millis(50))
            .build()
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    /// A pool of one connection that is never tested before use: after
    /// [`kill_connection_of`], the next call on the pool meets the dead connection.
    async fn killable_pool() -> PgPool {
        let url = database_url();
        PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect(&url)
            .await
            .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e))
    }

    /// Terminates the one connection of `pool` from `admin` and waits until it is gone.
    async fn kill_connection_of(pool: &PgPool, admin: &PgPool) {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(pool)
            .await
            .unwrap();
        // sqlx pings a connection when it comes back to the pool, in a task of its own: kill it
        // only once it is idle in the pool, or that ping would find it dead and replace it.
        tokio::time::timeout(WAIT, async {
            while pool.num_idle() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(admin)
            .await
            .unwrap();
        assert!(killed);
        // `pg_terminate_backend` only signals the backend: wait until it is gone.
        tokio::time::timeout(WAIT, async {
            loop {
                let alive: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                )
                .bind(pid)
                .fetch_one(admin)
                .await
                .unwrap();
                if !alive {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn saga_and_projection_paths_classify_a_killed_connection_like_the_store() {
        let store = store(4).await;
        let schema = store.schema().to_owned();
        create_table(&store, "killed_totals").await;
        let pool = killable_pool().await;

        // The saga store: a terminated backend is a typed connection error naming the server
        // (no password), not a generic backend error; the next call works.
        let sagas = PostgresSagaStore::new(pool.clone(), &schema).unwrap();
        assert_eq!(sagas.instance_count("checkout").await.unwrap(), 0);
        kill_connection_of(&pool, store.pool()).await;
        match sagas.instance_count("checkout").await {
            Err(eventflow::Error::Connect {
                backend, target, ..
            }) => {
                assert_eq!(backend, "postgres");
                assert!(target.starts_with("postgres://"), "{target}");
            }
            other => panic!("saga store: expected Error::Connect, got {other:?}"),
        }
        assert_eq!(sagas.instance_count("checkout").await.unwrap(), 0);

        // The transactional projection: the batch's transaction meets the dead connection.
        let runner = projection_runner(
            Arc::new(store.clone()),
            pool.clone(),
            &schema,
            PgTotals {
                table: "killed_totals",
                panic_one_in: 0,
            },
        )
        .unwrap();
        assert_eq!(runner.catch_up().await.unwrap(), 0);
        let last = append_orders(&store, 1, 3).await;
        // Wait until the batch is readable (other tests' open transactions may hold it back),
        // so the next catch-up does reach the projection's transaction.
        tokio::time::timeout(WAIT, async {
            while store.head_position().await.unwrap() < last {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        kill_connection_of(&pool, store.pool()).await;
        match runner.catch_up().await {
            Err(eventflow::Error::Connect { backend, .. }) => assert_eq!(backend, "postgres"),
            other => panic!("projection: expected Error::Connect, got {other:?}"),
        }
        // Nothing was applied; the next catch-up applies the batch once.
        catch_up_to(&runner, last).await.unwrap();
        let expected: i64 = (1..=3)
            .map(|n| order_event(n).payload["amount"].as_i64().unwrap())
            .sum();
        assert_eq!(
            read_model(&store, "killed_totals")
                .await
                .values()
                .sum::<i64>(),
            expected
        );

        pool.close().await;
        drop_schema(&store).await;
    }

    async fn drop_schema(store: &PostgresEventStore) {
        let _ = sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", store.schema()))
            .execute(store.pool())
            .await;
    }

    /// Totals per customer in a table; `UPDATE ... + amount` is not idempotent, so an event
    /// applied twice shows.
    struct PgTotals {
        table: &'static str,
        /// Inject a panic in about one in `panic_one_in` handler calls (0: never).
        panic_one_in: u32,
    }

    #[async_trait]
    impl PgProjection for PgTotals {
        fn name(&self) -> &str {
            self.table
        }
        fn patterns(&self) -> Vec<String> {
            vec!["order.placed".into()]
        }
        async fn handle(&self, tx: &mut PgTransaction, event: &Event) -> HandlerResult {
            let customer = event.payload["customer"].as_str().unwrap_or("?");
            let amount = event.payload["amount"].as_i64().unwrap_or(0);
            sqlx::query(&format!(
                "INSERT INTO {} (customer, total, events) VALUES ($1, $2, 1) \
                 ON CONFLICT (customer) DO UPDATE SET total = {0}.total + $2, \
                 events = {0}.events + 1",
                self.table
            ))
            .bind(customer)
            .bind(amount)
            .execute(&mut **tx)
            .await?;
            if self.panic_one_in > 0 && fastrand::u32(..self.panic_one_in) == 0 {
                panic!("injected crash after the handler wrote, before the checkpoint");
            }
            Ok(())
        }
        async fn reset(&self, tx: &mut PgTransaction) -> HandlerResult {
            sqlx::query(&format!("TRUNCATE {}", self.table))
                .execute(&mut **tx)
                .await?;
            Ok(())
        }
    }

    async fn create_table(store: &PostgresEventStore, table: &str) {
        sqlx::query(&format!(
            "CREATE TABLE \"{}\".{table} (customer text PRIMARY KEY, total bigint NOT NULL, \
             events bigint NOT NULL)",
            store.schema()
        ))
        .execute(store.pool())
        .await
        .unwrap();
    }

    async fn read_model(store: &PostgresEventStore, table: &str) -> BTreeMap<String, i64> {
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT customer, total FROM \"{}\".{table}",
            store.schema()
        ))
        .fetch_all(store.pool())
        .await
        .unwrap();
        rows.into_iter().collect()
    }

    #[tokio::test]
    async fn pg_projection_catches_up_and_follows_live_in_one_transaction_per_batch() {
        let store = store(8).await;
        create_table(&store, "totals").await;
        let last = append_orders(&store, 1, 500).await;
        let runner = projection_runner(
            Arc::new(store.clone()),
            store.pool().clone(),
            store.schema(),
            PgTotals {
                table: "totals",
                panic_one_in: 0,
            },
        )
        .unwrap()
        .batch_size(128);
        let task = runner.start();
        runner.wait_for(last, WAIT).await.unwrap();
        assert_eq!(read_model(&store, "totals").await, expected_totals(1..=500));
        let last = append_orders(&store, 501, 620).await;
        runner.wait_for(last, WAIT).await.unwrap();
        assert_eq!(read_model(&store, "totals").await, expected_totals(1..=620));
        let status = runner.status().await.unwrap();
        assert!(status.position >= last);
        // The checkpoint is the shared `checkpoints` table, readable by the checkpoint store.
        assert_eq!(
            store.checkpoints().load_checkpoint("totals").await.unwrap(),
            status.position
        );
        task.stop().await;
        drop_schema(&store).await;
    }

    /// Crash between handler and checkpoint 50 times (the runner's connections killed at a
    /// random moment, mid-batch included, and injected panics after the handler wrote): no
    /// event is ever applied twice or lost, and the read model equals a fresh rebuild.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_projection_crash_50_times_read_model_equals_rebuild() {
        quiet_injected_panics();
        let store = store(8).await;
        create_table(&store, "crashy").await;
        create_table(&store, "fresh").await;
        let source: Arc<dyn EventStore> = Arc::new(store.clone());
        let mut appended = 0u64;
        let mut last = 0;
        let mut crashes = 0;
        for round in 0..50 {
            // New events keep arriving between crashes.
            last = append_orders(&store, appended + 1, appended + 60).await;
            appended += 60;
            // The "process" that crashes has connections of its own, which the crash cuts.
            let app = unique("crashy");
            let process_pool = named_pool(&app).await;
            let process_store = PostgresEventStore::builder(process_pool.clone())
                .schema(store.schema())
                .build()
                .unwrap();
            let runner = projection_runner(
                Arc::new(process_store),
                process_pool.clone(),
                store.schema(),
                PgTotals {
                    table: "crashy",
                    panic_one_in: 100,
                },
            )
            .unwrap()
            .batch_size(1 + fastrand::usize(..50))
            .failure_policy(FailurePolicy::Retry(Backoff::new(
                Duration::from_millis(1),
                Duration::from_millis(2),
            )));
            let task = runner.start();
            tokio::time::sleep(Duration::from_micros(fastrand::u64(1_000..60_000))).await;
            // The crash: the server loses the process's connections wherever they are (inside a
            // batch's transaction included), and the process's task is gone.
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1",
            )
            .bind(&app)
            .execute(store.pool())
            .await
            .unwrap();
            task.abort().await;
            drop(runner);
            process_pool.close().await;
            crashes += 1;
            // After every crash, the read model matches exactly what its checkpoint says.
            // Checkpoint and read model in one statement (one snapshot): an aborted task's
            // COMMIT may still be landing.
            let (checkpoint, counted): (i64, i64) = sqlx::query_as(&format!(
                "SELECT coalesce((SELECT position FROM \"{0}\".checkpoints \
                                  WHERE name = 'crashy'), 0), \
                        (SELECT coalesce(sum(events), 0)::bigint FROM \"{0}\".crashy)",
                store.schema()
            ))
            .fetch_one(store.pool())
            .await
            .unwrap();
            let applied = store
                .read_all(0, 100_000)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| {
                    e.position.unwrap() <= checkpoint as u64 && e.event_type == "order.placed"
                })
                .count() as i64;
            assert_eq!(
                counted, applied,
                "round {round}: no event applied twice or lost"
            );
        }
        assert_eq!(crashes, 50);
        // Finish without crashes, then compare with a fresh rebuild into another table.
        let finisher = projection_runner(
            source.clone(),
            store.pool().clone(),
            store.schema(),
            PgTotals {
                table: "crashy",
                panic_one_in: 0,
            },
        )
        .unwrap();
        catch_up_to(&finisher, last).await.unwrap();
        let fresh = projection_runner(
            source.clone(),
            store.pool().clone(),
            store.schema(),
            PgTotals {
                table: "fresh",
                panic_one_in: 0,
            },
        )
        .unwrap();
        fresh.rebuild().await.unwrap();
        catch_up_to(&fresh, last).await.unwrap();
        let crashy = read_model(&store, "crashy").await;
        assert_eq!(crashy, read_model(&store, "fresh").await);
        assert_eq!(crashy, expected_totals(1..=appended));
        // And rebuilding the crashed one gives the same again.
        finisher.rebuild().await.unwrap();
        catch_up_to(&finisher, last).await.unwrap();
        assert_eq!(read_model(&store, "crashy").await, crashy);
        drop_schema(&store).await;
    }

    #[tokio::test]
    async fn pg_projection_stop_policy_rolls_back_the_failed_event() {
        struct FailsOn7;
        #[async_trait]
        impl PgProjection for FailsOn7 {
            fn name(&self) -> &str {
                "fails"
            }
            async fn handle(&self, tx: &mut PgTransaction, event: &Event) -> HandlerResult {
                if event.event_type != "order.placed" {
                    return Ok(());
                }
                sqlx::query(
                    "INSERT INTO fails (customer, total, events) VALUES ($1, 0, 1) \
                     ON CONFLICT (customer) DO UPDATE SET events = fails.events + 1",
                )
                .bind(event.payload["n"].to_string())
                .execute(&mut **tx)
                .await?;
                if event.payload["n"] == 7 {
                    return Err("cannot handle 7".into());
                }
                Ok(())
            }
        }
        let store = store(4).await;
        create_table(&store, "fails").await;
        let last = append_orders(&store, 1, 20).await;
        let runner = projection_runner(
            Arc::new(store.clone()),
            store.pool().clone(),
            store.schema(),
            FailsOn7,
        )
        .unwrap()
        .failure_policy(FailurePolicy::Stop);
        assert!(catch_up_to(&runner, last).await.is_err());
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT customer, events FROM \"{}\".fails ORDER BY customer::int",
            store.schema()
        ))
        .fetch_all(store.pool())
        .await
        .unwrap();
        let expected: Vec<(String, i64)> = (1..=6).map(|n| (n.to_string(), 1)).collect();
        assert_eq!(
            rows, expected,
            "events before 7 kept once, 7's write rolled back"
        );
        let failed = runner.status().await.unwrap().failure.unwrap();
        assert!(store.checkpoints().load_checkpoint("fails").await.unwrap() < failed.position);
        drop_schema(&store).await;
    }

    fn saga_store(store: &PostgresEventStore) -> Arc<PostgresSagaStore> {
        Arc::new(PostgresSagaStore::for_store(store).unwrap())
    }

    #[tokio::test]
    async fn pg_saga_routes_dedups_and_sets_causation() {
        let store = store(4).await;
        saga_routes_dedups_and_sets_causation(saga_store(&store)).await;
        drop_schema(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pg_saga_1000_creation_races_make_one_instance_each() {
        let store = store(8).await;
        // The second "process" has a pool of its own.
        let other = PostgresSagaStore::new(pool(8).await, store.schema()).unwrap();
        let saga_store = saga_store(&store);
        saga_creation_races(saga_store.clone(), Arc::new(other), 1000).await;
        assert_eq!(saga_store.instance_count("counter").await.unwrap(), 1000);
        drop_schema(&store).await;
    }

    #[tokio::test]
    async fn pg_saga_resumes_and_fires_deadlines_after_restart() {
        let store = store(4).await;
        // The restarted process connects anew.
        let restarted = PostgresSagaStore::new(pool(2).await, store.schema()).unwrap();
        let first = saga_store(&store);
        saga_resumes_and_fires_deadlines_after_restart(first, Arc::new(restarted)).await;
        drop_schema(&store).await;
    }

    #[tokio::test]
    async fn pg_saga_deadlines_fail_one_by_one() {
        let store = store(4).await;
        saga_deadlines_fail_one_by_one(saga_store(&store)).await;
        drop_schema(&store).await;
    }

    #[tokio::test]
    async fn pg_saga_failing_deadline_is_parked() {
        let store = store(4).await;
        // The restarted process connects anew; the dead letters are the store's table.
        let restarted = PostgresSagaStore::new(pool(2).await, store.schema()).unwrap();
        saga_failing_deadline_is_parked(
            saga_store(&store),
            Arc::new(restarted),
            Arc::new(store.dead_letters()),
        )
        .await;
        drop_schema(&store).await;
    }

    #[tokio::test]
    async fn pg_saga_100000_completed_instances_are_pruned_to_tombstones_then_gone() {
        const SEEDED: u64 = 99_000;
        let store = store(4).await;
        // In bulk with SQL: the rows `commit` writes for a saga that started and completed in
        // one step (one instance at version 1, one handled id).
        let schema = store.schema().to_owned();
        for statement in [
            "INSERT INTO \"{s}\".saga_instances (saga, correlation_id, state, version, completed) \
             SELECT 'oneshot', 'bulk-' || g, '1'::jsonb, 1, true FROM generate_series(0, $1 - 1) g",
            "INSERT INTO \"{s}\".saga_handled (saga, correlation_id, event_id) \
             SELECT 'oneshot', 'bulk-' || g, gen_random_uuid() FROM generate_series(0, $1 - 1) g",
        ] {
            sqlx::query(&statement.replace("{s}", &schema))
                .bind(i64::try_from(SEEDED).unwrap())
                .execute(store.pool())
                .await
                .unwrap();
        }
        let sagas = saga_store(&store);
        let counted = sagas.clone();
        let counts: Counts = Box::new(move || {
            let s = counted.clone();
            Box::pin(async move {
                (
                    s.instance_count("oneshot").await.unwrap(),
                    s.handled_count("oneshot").await.unwrap(),
                    s.tombstone_count("oneshot").await.unwrap(),
                )
            })
        });
        saga_retention_bounds_bookkeeping(sagas, SEEDED, counts).await;
        drop_schema(&store).await;
    }

    #[tokio::test]
    async fn pg_saga_outbox_survives_a_failed_publish() {
        let store = store(4).await;
        saga_outbox_survives_a_failed_publish(saga_store(&store)).await;
        drop_schema(&store).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The same saga checks on the SQLite saga store (feature `sqlite`).

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use eventflow::sqlite::{SqliteEventStore, SqliteSagaStore};

    async fn open(dir: &tempfile::TempDir) -> SqliteEventStore {
        SqliteEventStore::open(dir.path().join("sagas.db"))
            .await
            .unwrap()
    }

    fn saga_store(store: &SqliteEventStore) -> Arc<SqliteSagaStore> {
        Arc::new(store.sagas())
    }

    #[tokio::test]
    async fn sqlite_saga_routes_dedups_and_sets_causation() {
        let dir = tempfile::tempdir().unwrap();
        saga_routes_dedups_and_sets_causation(saga_store(&open(&dir).await)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_saga_1000_creation_races_make_one_instance_each() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        // The second "process" opens the file anew: its own pool and writer lock.
        let other = open(&dir).await;
        let sagas = saga_store(&store);
        saga_creation_races(sagas.clone(), saga_store(&other), 1000).await;
        assert_eq!(sagas.instance_count("counter").await.unwrap(), 1000);
    }

    #[tokio::test]
    async fn sqlite_saga_resumes_and_fires_deadlines_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = saga_store(&open(&dir).await);
        let restarted = saga_store(&open(&dir).await);
        saga_resumes_and_fires_deadlines_after_restart(first, restarted).await;
    }

    #[tokio::test]
    async fn sqlite_saga_deadlines_fail_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        saga_deadlines_fail_one_by_one(saga_store(&open(&dir).await)).await;
    }

    #[tokio::test]
    async fn sqlite_saga_failing_deadline_is_parked() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let restarted = open(&dir).await;
        saga_failing_deadline_is_parked(
            saga_store(&store),
            saga_store(&restarted),
            Arc::new(store.dead_letters()),
        )
        .await;
    }

    #[tokio::test]
    async fn sqlite_saga_10000_completed_instances_are_pruned_to_tombstones_then_gone() {
        const SEEDED: u64 = 9_000;
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        // In bulk with SQL: the rows `commit` writes for a saga that started and completed in
        // one step (one instance at version 1, one handled id).
        for statement in [
            "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < ?) \
             INSERT INTO saga_instances (saga, correlation_id, state, version, completed, \
                                         deadlines, updated_at) \
             SELECT 'oneshot', 'bulk-' || n, '1', 1, 1, '[]', ? FROM g",
            "WITH RECURSIVE g(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM g WHERE n + 1 < ?) \
             INSERT INTO saga_handled (saga, correlation_id, event_id) \
             SELECT 'oneshot', 'bulk-' || n, randomblob(16) FROM g WHERE ? IS NOT NULL",
        ] {
            // Completed now, as `commit` would stamp them (microseconds since the epoch).
            sqlx::query(statement)
                .bind(i64::try_from(SEEDED).unwrap())
                .bind(chrono::Utc::now().timestamp_micros())
                .execute(store.pool())
                .await
                .unwrap();
        }
        let sagas = saga_store(&store);
        let counted = sagas.clone();
        let counts: Counts = Box::new(move || {
            let s = counted.clone();
            Box::pin(async move {
                (
                    s.instance_count("oneshot").await.unwrap(),
                    s.handled_count("oneshot").await.unwrap(),
                    s.tombstone_count("oneshot").await.unwrap(),
                )
            })
        });
        saga_retention_bounds_bookkeeping(sagas, SEEDED, counts).await;
    }

    #[tokio::test]
    async fn sqlite_saga_outbox_survives_a_failed_publish() {
        let dir = tempfile::tempdir().unwrap();
        saga_outbox_survives_a_failed_publish(saga_store(&open(&dir).await)).await;
    }
}
