//! [`NatsStatus`] and the [`Reporter`] that turns connection events into the error stream.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::bus::{BusError, BusErrorKind, ErrorReceiver, ErrorStream};

/// The connection state reported by [`NatsBus::status`](super::NatsBus::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NatsStatus {
    /// Connecting (or reconnecting) and not yet connected.
    Connecting,
    /// Connected to a server.
    Connected,
    /// The connection was lost; the client is reconnecting.
    Disconnected,
    /// [`close`](crate::bus::EventBus::close) was called, or the client gave up reconnecting.
    Closed,
}

impl fmt::Display for NatsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatsStatus::Connecting => "connecting",
            NatsStatus::Connected => "connected",
            NatsStatus::Disconnected => "disconnected",
            NatsStatus::Closed => "closed",
        })
    }
}

/// The bus's error stream, plus what the connection callback needs to tell a reconnect from the
/// first connect.
pub(super) struct Reporter {
    errors: ErrorStream,
    was_disconnected: AtomicBool,
    gave_up: AtomicBool,
}

impl Reporter {
    pub(super) fn new(capacity: usize) -> Self {
        Reporter {
            errors: ErrorStream::new(capacity),
            was_disconnected: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
        }
    }

    pub(super) fn report(&self, error: BusError) {
        self.errors.report(error);
    }

    pub(super) fn subscribe(&self) -> ErrorReceiver {
        self.errors.subscribe()
    }

    pub(super) fn close(&self) {
        self.errors.close();
    }

    pub(super) fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::Acquire)
    }

    pub(super) fn connection_event(&self, event: async_nats::Event) {
        use async_nats::Event as E;
        match event {
            E::Disconnected => {
                self.was_disconnected.store(true, Ordering::Release);
                self.report(BusError::new(
                    BusErrorKind::Disconnected,
                    "connection to the NATS server lost; reconnecting",
                ));
            }
            E::Connected => {
                if self.was_disconnected.swap(false, Ordering::AcqRel) {
                    self.report(BusError::new(
                        BusErrorKind::Reconnected,
                        "reconnected to the NATS server (core subscriptions may have missed \
                         events published meanwhile)",
                    ));
                }
            }
            E::SlowConsumer(sid) => self.report(BusError::new(
                BusErrorKind::Dropped,
                format!("slow consumer: the client dropped messages of subscription {sid}"),
            )),
            E::ClientError(async_nats::ClientError::MaxReconnects) => {
                self.gave_up.store(true, Ordering::Release);
                self.report(BusError::new(
                    BusErrorKind::Disconnected,
                    "gave up reconnecting after max_reconnects attempts; the bus is unusable",
                ));
            }
            E::ServerError(e) => self.report(BusError::new(
                BusErrorKind::Other,
                format!("server error: {e}"),
            )),
            E::ClientError(e) => {
                tracing::debug!("nats client error: {e}");
            }
            E::LameDuckMode => self.report(BusError::new(
                BusErrorKind::Other,
                "server entered lame duck mode; it will disconnect soon",
            )),
            E::Draining | E::Closed => {}
        }
    }
}
