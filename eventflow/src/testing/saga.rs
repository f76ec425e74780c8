//! A given/when/then fixture for sagas.
//!
//! The fixture runs a real [`SagaManager`] over an [`InMemorySagaStore`], so what it checks
//! (routing, state, emitted events with correlation and causation, deduplication, deadlines)
//! is what a service gets.
//!
//! ```
//! use eventflow::saga::{Saga, SagaContext};
//! use eventflow::testing::saga::SagaFixture;
//! use eventflow::{BoxError, Event};
//! use serde_json::json;
//!
//! struct Greeter;
//! impl Saga for Greeter {
//!     type State = u32;
//!     fn name(&self) -> &str { "greeter" }
//!     fn starts_on(&self) -> Vec<String> { vec!["user.registered".into()] }
//!     fn handles(&self) -> Vec<String> { vec![] }
//!     fn handle(&self, greeted: &mut u32, _e: &Event, ctx: &mut SagaContext) -> Result<(), BoxError> {
//!         *greeted += 1;
//!         ctx.emit_new("email.send", json!({ "template": "welcome" }))?;
//!         ctx.complete();
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! SagaFixture::new(Greeter)
//!     .when(Event::new("user.registered", json!({ "user": "u-1" }))?)
//!     .await
//!     .then_emits(&["email.send"])
//!     .then_state(|greeted| assert_eq!(*greeted, 1))
//!     .then_completed();
//! # Ok::<(), eventflow::Error>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::event::Event;
use crate::saga::{InMemorySagaStore, Saga, SagaManager, SagaOutcome};

/// The correlation id the fixture gives events that have none.
pub const FIXTURE_CORRELATION: &str = "saga-fixture";

/// Given events, when an event, then expectations (see the module docs).
pub struct SagaFixture<S: Saga> {
    manager: SagaManager<S>,
    correlation_id: String,
    given: Vec<Event>,
}

impl<S: Saga> std::fmt::Debug for SagaFixture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaFixture")
            .field("correlation_id", &self.correlation_id)
            .field("given", &self.given.len())
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaFixture<S> {
    /// A fixture for `saga` with correlation id [`FIXTURE_CORRELATION`].
    ///
    /// # Panics
    /// When the saga declares an invalid event type.
    pub fn new(saga: S) -> Self {
        let manager = SagaManager::new(saga, Arc::new(InMemorySagaStore::new()))
            .unwrap_or_else(|e| panic!("saga fixture: invalid saga: {e}"));
        SagaFixture {
            manager,
            correlation_id: FIXTURE_CORRELATION.to_owned(),
            given: Vec::new(),
        }
    }

    /// Uses `correlation_id` for events that have none.
    #[must_use]
    pub fn correlation(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = correlation_id.into();
        self
    }

    /// Events the saga has already seen (handled in order before the `when` event).
    #[must_use]
    pub fn given(mut self, events: impl IntoIterator<Item = Event>) -> Self {
        self.given.extend(events);
        self
    }

    fn correlate(&self, event: Event) -> Event {
        if event.correlation_id.is_some() {
            event
        } else {
            event.with_correlation(self.correlation_id.clone())
        }
    }

    async fn run_given(&mut self) {
        for event in std::mem::take(&mut self.given) {
            let event = self.correlate(event);
            if let Err(e) = self.manager.handle(&event).await {
                panic!(
                    "saga fixture: given event {} ({}) failed: {e}",
                    event.id, event.event_type
                );
            }
        }
    }

    /// Handles the `given` events, then `event`, and returns what happened.
    pub async fn when(mut self, event: Event) -> SagaThen<S> {
        self.run_given().await;
        let event = self.correlate(event);
        let outcome = self.manager.handle(&event).await;
        SagaThen::new(self, vec![event], outcome.map(|o| vec![o])).await
    }

    /// Handles the `given` events, then lets `elapsed` pass: every deadline due by then fires.
    pub async fn when_time_passes(mut self, elapsed: Duration) -> SagaThen<S> {
        self.run_given().await;
        let now = chrono::Utc::now()
            + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX);
        let due = self
            .manager
            .store_due(now)
            .await
            .unwrap_or_else(|e| panic!("saga fixture: cannot read deadlines: {e}"));
        let mut outcomes = Vec::new();
        let mut triggers = Vec::new();
        for (name, event) in due {
            triggers.push(event.clone());
            match self.manager.fire_one(&name, &event).await {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    return SagaThen::new(self, triggers, Err(e)).await;
                }
            }
        }
        SagaThen::new(self, triggers, Ok(outcomes)).await
    }
}

/// What a [`SagaFixture`] observed; each `then_*` asserts and returns `self` for chaining.
pub struct SagaThen<S: Saga> {
    fixture: SagaFixture<S>,
    triggers: Vec<Event>,
    outcome: Result<Vec<SagaOutcome>>,
    state: Option<(S::State, bool)>,
}

impl<S: Saga> std::fmt::Debug for SagaThen<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaThen")
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaThen<S> {
    async fn new(
        fixture: SagaFixture<S>,
        triggers: Vec<Event>,
        outcome: Result<Vec<SagaOutcome>>,
    ) -> Self {
        let mut then = SagaThen {
            fixture,
            triggers,
            outcome,
            state: None,
        };
        let correlation = then.correlation();
        then.state = then
            .fixture
            .manager
            .instance(&correlation)
            .await
            .unwrap_or_else(|e| panic!("saga fixture: cannot load state: {e}"));
        then
    }

    fn outcomes(&self) -> &[SagaOutcome] {
        match &self.outcome {
            Ok(o) => o,
            Err(e) => panic!("saga fixture: the saga failed: {e}"),
        }
    }

    /// The events emitted by the `when` step (every fired deadline's, for `when_time_passes`).
    ///
    /// # Panics
    /// When the step failed.
    pub fn emitted(&self) -> Vec<Event> {
        self.outcomes()
            .iter()
            .flat_map(|o| match o {
                SagaOutcome::Handled { emitted, .. } => emitted.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Asserts the emitted event types, in order, and that each emitted event carries the
    /// instance's correlation id and its trigger's id as causation.
    ///
    /// # Panics
    /// When they differ.
    pub fn then_emits(self, event_types: &[&str]) -> Self {
        let emitted = self.emitted();
        let types: Vec<&str> = emitted.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types, event_types,
            "saga fixture: emitted event types differ"
        );
        for event in &emitted {
            let cause = event.causation_id.as_deref();
            let trigger = self
                .triggers
                .iter()
                .find(|t| Some(t.id.to_string().as_str()) == cause);
            let Some(trigger) = trigger else {
                panic!(
                    "saga fixture: emitted {} has causation {cause:?}, not the triggering event's id",
                    event.event_type
                );
            };
            assert_eq!(
                event.correlation_id, trigger.correlation_id,
                "saga fixture: emitted {} does not carry the trigger's correlation id",
                event.event_type
            );
        }
        self
    }

    /// Asserts that nothing was emitted.
    ///
    /// # Panics
    /// When something was.
    pub fn then_emits_nothing(self) -> Self {
        self.then_emits(&[])
    }

    fn load_state(&self) -> &(S::State, bool) {
        match &self.state {
            Some(state) => state,
            None => panic!(
                "saga fixture: no instance exists for correlation id {:?}",
                self.correlation()
            ),
        }
    }

    fn correlation(&self) -> String {
        self.triggers
            .first()
            .and_then(|e| e.correlation_id.clone())
            .unwrap_or_else(|| self.fixture.correlation_id.clone())
    }

    /// Runs `check` on the instance's state after the step.
    ///
    /// # Panics
    /// When no instance exists, or `check` panics.
    pub fn then_state(self, check: impl FnOnce(&S::State)) -> Self {
        check(&self.load_state().0);
        self
    }

    /// Asserts the instance completed.
    ///
    /// # Panics
    /// When it did not.
    pub fn then_completed(self) -> Self {
        assert!(
            self.load_state().1,
            "saga fixture: the saga did not complete"
        );
        self
    }

    /// Asserts the instance is still running.
    ///
    /// # Panics
    /// When it completed.
    pub fn then_running(self) -> Self {
        assert!(!self.load_state().1, "saga fixture: the saga completed");
        self
    }

    /// Asserts the step was ignored (not interested, no instance, completed) or a duplicate.
    ///
    /// # Panics
    /// When the saga handled it.
    pub fn then_ignored(self) -> Self {
        for outcome in self.outcomes() {
            assert!(
                !matches!(outcome, SagaOutcome::Handled { .. }),
                "saga fixture: expected the event to be ignored, got {outcome:?}"
            );
        }
        self
    }

    /// Asserts the saga's handler failed, and returns the error message with its causes
    /// (`message: cause: cause ...`).
    ///
    /// # Panics
    /// When it did not fail.
    pub fn then_error(self) -> String {
        match &self.outcome {
            Err(e) => {
                let mut message = e.to_string();
                let mut cause = std::error::Error::source(e);
                while let Some(c) = cause {
                    message.push_str(": ");
                    message.push_str(&c.to_string());
                    cause = c.source();
                }
                message
            }
            Ok(o) => panic!("saga fixture: expected an error, got {o:?}"),
        }
    }

    /// The raw outcome of the step.
    pub fn outcome(&self) -> &Result<Vec<SagaOutcome>> {
        &self.outcome
    }
}
