//! Given/when/then tests for aggregates, without a store.
//!
//! ```
//! use eventflow::testing::AggregateTest;
//! use eventflow::{Aggregate, DomainEvent};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
//! enum LampEvent {
//!     SwitchedOn,
//!     SwitchedOff,
//! }
//!
//! #[derive(Default, Aggregate)]
//! #[aggregate(event = LampEvent)]
//! struct Lamp {
//!     on: bool,
//! }
//!
//! impl ApplyLampEvent for Lamp {
//!     fn switched_on(&mut self) {
//!         self.on = true;
//!     }
//!     fn switched_off(&mut self) {
//!         self.on = false;
//!     }
//! }
//!
//! impl Lamp {
//!     fn switch_on(&self) -> Result<Vec<LampEvent>, &'static str> {
//!         if self.on {
//!             return Err("already on");
//!         }
//!         Ok(vec![LampEvent::SwitchedOn])
//!     }
//! }
//!
//! AggregateTest::<Lamp>::given_no_previous_events()
//!     .when(|lamp| lamp.switch_on())
//!     .then_expect_events(vec![LampEvent::SwitchedOn]);
//!
//! AggregateTest::<Lamp>::given([LampEvent::SwitchedOn])
//!     .when(|lamp| lamp.switch_on())
//!     .then_expect_error("already on");
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;
use crate::event::{DomainEvent, Event};

/// A test of one command: *given* past events, *when* the command runs, *then* it decides
/// these events (or fails with this error). The `then_*` methods panic with a message that
/// shows what was expected and what happened.
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the default state with `events` applied, in order.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(event);
        }
        AggregateTest { state }
    }

    /// Starts from the default state (a new aggregate).
    pub fn given_no_previous_events() -> Self {
        Self::given([])
    }

    /// Starts from stored envelopes, decoded the way a repository would (with the upcasters
    /// declared on the event enum).
    ///
    /// # Panics
    /// When an envelope does not decode.
    #[track_caller]
    pub fn given_envelopes<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        Self::given(events.into_iter().map(|e| {
            A::Event::from_envelope(e)
                .unwrap_or_else(|err| panic!("given envelope {} does not decode: {err}", e.id))
        }))
    }

    /// The state the command will see.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Runs the command against the given state.
    pub fn when<E>(
        self,
        command: impl FnOnce(&A) -> Result<Vec<A::Event>, E>,
    ) -> AggregateTestOutcome<A, E> {
        let result = command(&self.state);
        AggregateTestOutcome {
            state: self.state,
            result,
        }
    }
}

/// What a command decided in an [`AggregateTest`]; check it with the `then_*` methods.
pub struct AggregateTestOutcome<A: Aggregate, E> {
    state: A,
    result: Result<Vec<A::Event>, E>,
}

impl<A: Aggregate, E: Debug> AggregateTestOutcome<A, E> {
    /// Asserts the command decided exactly `expected` (same events, same order) and returns the
    /// state with them applied, for further checks.
    ///
    /// # Panics
    /// When the command failed or decided other events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        let events = match self.result {
            Ok(events) => events,
            Err(error) => {
                panic!("expected events {expected:?}, but the command failed with {error:?}")
            }
        };
        assert_eq!(
            events, expected,
            "the command decided other events than expected"
        );
        let mut state = self.state;
        for event in events {
            state.apply(event);
        }
        state
    }

    /// Asserts the command succeeded without deciding any event.
    ///
    /// # Panics
    /// When it failed or decided events.
    #[track_caller]
    pub fn then_expect_no_events(self)
    where
        A::Event: Debug,
    {
        match self.result {
            Ok(events) if events.is_empty() => {}
            Ok(events) => panic!("expected no events, but the command decided {events:?}"),
            Err(error) => panic!("expected no events, but the command failed with {error:?}"),
        }
    }

    /// Asserts the command failed with `expected`.
    ///
    /// # Panics
    /// When it succeeded or failed with another error.
    #[track_caller]
    pub fn then_expect_error(self, expected: E)
    where
        E: PartialEq,
        A::Event: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, but the command decided {events:?}"),
            Err(error) => assert_eq!(error, expected, "the command failed with another error"),
        }
    }

    /// Asserts the command failed with an error that satisfies `check`.
    ///
    /// # Panics
    /// When it succeeded, or `check` returns false.
    #[track_caller]
    pub fn then_expect_error_matching(self, check: impl FnOnce(&E) -> bool)
    where
        A::Event: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected an error, but the command decided {events:?}"),
            Err(error) => assert!(check(&error), "unexpected error {error:?}"),
        }
    }

    /// The raw result, for checks the methods above do not cover.
    pub fn into_result(self) -> Result<Vec<A::Event>, E> {
        self.result
    }
}
