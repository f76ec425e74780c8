//! Failures that have no caller: [`BusError`], and the error stream that carries them.

use std::fmt;
use std::sync::RwLock;

use tokio::sync::broadcast;
use uuid::Uuid;

use super::sync;
use crate::event::Event;

/// What went wrong, for a [`BusError`] on a bus's error stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BusErrorKind {
    /// A handler returned an error.
    HandlerFailed,
    /// A handler panicked.
    HandlerPanicked,
    /// The connection to the server was lost.
    Disconnected,
    /// The connection was re-established.
    Reconnected,
    /// Messages were dropped because a subscriber could not keep up, or events may have been
    /// missed during an outage (at-most-once backends).
    Dropped,
    /// A message was given up on after too many deliveries (and dead-lettered if configured).
    DeadLettered,
    /// A received message could not be decoded.
    Decode,
    /// `close` gave up waiting for a handler after its drain timeout and cancelled it.
    Cancelled,
    /// A clustered broker moved what the bus uses to another node (a new JetStream stream
    /// leader, a Redis replica promoted to primary) and the bus followed; the message names
    /// the old and new node where known. Nothing was lost by the bus itself; what the broker
    /// kept across the switch is the broker's guarantee (see each bus's docs).
    Failover,
    /// Anything else.
    Other,
}

impl BusErrorKind {
    /// The kind's `snake_case` name, the `kind` label of `eventflow_bus_errors_total` (see
    /// [`metrics`](crate::metrics)).
    pub fn metric_label(self) -> &'static str {
        match self {
            BusErrorKind::HandlerFailed => "handler_failed",
            BusErrorKind::HandlerPanicked => "handler_panicked",
            BusErrorKind::Disconnected => "disconnected",
            BusErrorKind::Reconnected => "reconnected",
            BusErrorKind::Dropped => "dropped",
            BusErrorKind::DeadLettered => "dead_lettered",
            BusErrorKind::Decode => "decode",
            BusErrorKind::Cancelled => "cancelled",
            BusErrorKind::Failover => "failover",
            BusErrorKind::Other => "other",
        }
    }
}

/// A failure that has no caller to return to: a handler error or panic, a lost connection, a
/// dropped or dead-lettered message. Read them from
/// [`EventBus::errors`](crate::bus::EventBus::errors).
#[derive(Debug, Clone)]
pub struct BusError {
    /// What went wrong.
    pub kind: BusErrorKind,
    /// The event concerned, when there is one.
    pub event_id: Option<Uuid>,
    /// Its type, when known.
    pub event_type: Option<String>,
    /// The subscription pattern concerned, when there is one.
    pub pattern: Option<String>,
    /// Human-readable detail.
    pub message: String,
}

impl BusError {
    /// A failure of `kind` with a message.
    pub fn new(kind: BusErrorKind, message: impl Into<String>) -> Self {
        BusError {
            kind,
            event_id: None,
            event_type: None,
            pattern: None,
            message: message.into(),
        }
    }

    /// Attaches the event concerned.
    pub fn for_event(mut self, event: &Event) -> Self {
        self.event_id = Some(event.id);
        self.event_type = Some(event.event_type.clone());
        self
    }

    /// Attaches the subscription pattern concerned.
    pub fn for_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(t) = &self.event_type {
            write!(f, " [{t}]")?;
        }
        if let Some(id) = &self.event_id {
            write!(f, " event {id}")?;
        }
        if let Some(p) = &self.pattern {
            write!(f, " (subscription {p})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for BusError {}

/// Receives a bus's [`BusError`]s. It is a broadcast receiver: every call to
/// [`EventBus::errors`](crate::bus::EventBus::errors) gets its own, a slow reader loses the
/// oldest entries (and is told so by `RecvError::Lagged`), and `recv` returns `Closed` once the
/// bus is closed.
pub type ErrorReceiver = broadcast::Receiver<BusError>;

/// The sending side of a bus's error stream, for bus implementations.
#[derive(Debug, Clone)]
pub struct ErrorSender(broadcast::Sender<BusError>);

impl ErrorSender {
    /// An error stream that keeps the last `capacity` failures for slow readers.
    pub fn new(capacity: usize) -> Self {
        ErrorSender(broadcast::channel(capacity.max(1)).0)
    }

    /// Reports a failure; also emits it as a `tracing` warning.
    pub fn report(&self, error: BusError) {
        crate::metrics::bus_error(
            error.kind.metric_label(),
            error.kind == BusErrorKind::Reconnected,
            error.kind == BusErrorKind::DeadLettered,
        );
        tracing::warn!(
            kind = ?error.kind,
            event_id = ?error.event_id,
            event_type = error.event_type.as_deref(),
            pattern = error.pattern.as_deref(),
            "event bus: {}",
            error.message
        );
        // No receiver is fine: nobody is listening for errors.
        let _ = self.0.send(error);
    }

    /// A new receiver.
    pub fn subscribe(&self) -> ErrorReceiver {
        self.0.subscribe()
    }
}

impl Default for ErrorSender {
    fn default() -> Self {
        ErrorSender::new(1024)
    }
}

/// A bus's error stream that can be closed: after [`close`](Self::close) every receiver sees
/// `Closed` once the last [`ErrorSender`] handed out by [`sender`](Self::sender) is dropped, and
/// new receivers see it at once.
///
/// Bus implementations hold one of these and give each subscription task a
/// [`sender`](Self::sender), so readers of the stream learn the bus is closed when its last task
/// has ended.
#[derive(Debug)]
pub struct ErrorStream {
    sender: RwLock<Option<ErrorSender>>,
}

impl ErrorStream {
    /// An open stream that keeps the last `capacity` failures for slow readers.
    pub fn new(capacity: usize) -> Self {
        ErrorStream {
            sender: RwLock::new(Some(ErrorSender::new(capacity))),
        }
    }

    /// Reports a failure; after `close` it is only logged.
    pub fn report(&self, error: BusError) {
        match sync::read(&self.sender).as_ref() {
            Some(sender) => sender.report(error),
            None => tracing::warn!("event bus (closed): {error}"),
        }
    }

    /// A new receiver; after `close`, one that answers `Closed` at once.
    pub fn subscribe(&self) -> ErrorReceiver {
        match sync::read(&self.sender).as_ref() {
            Some(sender) => sender.subscribe(),
            // A receiver whose sender is already gone: `recv` returns `Closed`.
            None => ErrorSender::new(1).subscribe(),
        }
    }

    /// A sender for a subscription task, or `None` once closed.
    pub fn sender(&self) -> Option<ErrorSender> {
        sync::read(&self.sender).clone()
    }

    /// Closes the stream (idempotent).
    pub fn close(&self) {
        sync::write(&self.sender).take();
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        sync::read(&self.sender).is_none()
    }
}

impl Default for ErrorStream {
    fn default() -> Self {
        ErrorStream::new(1024)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::broadcast::error::TryRecvError;

    use super::*;

    #[test]
    fn a_closed_stream_closes_its_receivers() {
        let stream = ErrorStream::new(4);
        let mut before = stream.subscribe();
        stream.report(BusError::new(BusErrorKind::Other, "one"));
        assert_eq!(
            before.try_recv().map(|e| e.message).ok().as_deref(),
            Some("one")
        );
        let task = stream.sender();
        assert!(task.is_some());
        stream.close();
        assert!(stream.is_closed());
        assert!(stream.sender().is_none());
        // Still open while a task holds a sender.
        assert_eq!(before.try_recv().err(), Some(TryRecvError::Empty));
        drop(task);
        assert_eq!(before.try_recv().err(), Some(TryRecvError::Closed));
        let mut after = stream.subscribe();
        assert_eq!(after.try_recv().err(), Some(TryRecvError::Closed));
        // Reporting after close is harmless.
        stream.report(BusError::new(BusErrorKind::Other, "late"));
    }
}
