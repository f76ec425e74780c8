//! [`SagaContext`]: what a saga's handler can do besides changing its state.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Deadline;
use crate::error::BoxError;
use crate::event::Event;

#[cfg(doc)]
use super::Saga;

/// What a saga's handler can do besides changing its state.
#[derive(Debug)]
pub struct SagaContext {
    correlation_id: String,
    started: bool,
    now: DateTime<Utc>,
    pub(super) emitted: Vec<Event>,
    pub(super) deadlines: Vec<Deadline>,
    pub(super) completed: bool,
}

impl SagaContext {
    pub(super) fn new(correlation_id: String, started: bool, deadlines: Vec<Deadline>) -> Self {
        SagaContext {
            correlation_id,
            started,
            now: Utc::now(),
            emitted: Vec::new(),
            deadlines,
            completed: false,
        }
    }

    /// The instance's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// True when this event creates the instance.
    pub fn is_start(&self) -> bool {
        self.started
    }

    /// Emits `event`; it will carry this instance's correlation id and the trigger's id as
    /// causation.
    pub fn emit(&mut self, event: Event) {
        self.emitted.push(event);
    }

    /// Emits a new event of `event_type` with `payload`.
    ///
    /// # Errors
    /// Invalid event type, payload that does not serialize.
    pub fn emit_new(
        &mut self,
        event_type: &str,
        payload: impl Serialize,
    ) -> std::result::Result<(), BoxError> {
        self.emit(Event::new(event_type, payload)?);
        Ok(())
    }

    /// Marks the instance complete: later events for it are ignored and its deadlines dropped.
    pub fn complete(&mut self) {
        self.completed = true;
    }

    /// Sets (or replaces) the deadline `name`: after `after`, `event` is delivered to this saga
    /// and published. The saga should list `event`'s type in [`Saga::handles`] to react to it.
    pub fn set_deadline(&mut self, name: &str, after: Duration, event: Event) {
        let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        let due_at = self
            .now
            .checked_add_signed(after)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.set_deadline_at(name, due_at, event);
    }

    /// Sets (or replaces) the deadline `name` to fire at `due_at`.
    pub fn set_deadline_at(&mut self, name: &str, due_at: DateTime<Utc>, event: Event) {
        self.cancel_deadline(name);
        self.deadlines.push(Deadline {
            name: name.to_owned(),
            due_at,
            event,
        });
    }

    /// Cancels the deadline `name` if it is set.
    pub fn cancel_deadline(&mut self, name: &str) {
        self.deadlines.retain(|d| d.name != name);
    }

    /// The instance's pending deadlines.
    pub fn deadlines(&self) -> &[Deadline] {
        &self.deadlines
    }
}
