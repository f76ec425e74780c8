//! [`NatsStatus`] and the [`Reporter`] that turns connection events into the error stream.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::bus::{BusError, BusErrorKind, ErrorReceiver, ErrorStream};
use crate::handler::sync::lock;

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

/// Where the bus is in a NATS cluster, from [`NatsBus::health`](super::NatsBus::health).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsHealth {
    /// The connection state.
    pub status: NatsStatus,
    /// The server the client is connected to (or was last), as `<server name> (<host:port>)`.
    pub server: Option<String>,
    /// JetStream: the server name of the stream's leader, as last seen (at connect, then from
    /// the server's leader election advisories); `None` in core mode or on one server without
    /// a cluster.
    pub stream_leader: Option<String>,
    /// JetStream: stream leader changes seen since connect (each also reported on the error
    /// stream as [`Failover`](crate::bus::BusErrorKind::Failover)).
    pub leader_changes: u64,
    /// JetStream: leader changes of the consumers this bus's subscriptions pull from, seen
    /// since connect (from the server's consumer leader election advisories; each also
    /// reported on the error stream as [`Failover`](crate::bus::BusErrorKind::Failover),
    /// naming the consumer). Not counted in `leader_changes`.
    pub consumer_leader_changes: u64,
    /// JetStream: publish attempts repeated after a transient failure (a leader change, a
    /// lost server) since connect.
    pub publish_retries: u64,
}

/// `<server name> (<host:port>)` of the server `client` is connected to.
pub(super) fn describe_server(info: &async_nats::ServerInfo) -> String {
    format!("{} ({}:{})", info.server_name, info.host, info.port)
}

/// The bus's error stream, plus what the connection callback needs to tell a reconnect from the
/// first connect.
pub(super) struct Reporter {
    errors: ErrorStream,
    was_disconnected: AtomicBool,
    gave_up: AtomicBool,
    /// The client, once connected: to name the server after a reconnect.
    pub(super) client: OnceLock<async_nats::Client>,
    /// The server id connected to before the connection was lost.
    last_server_id: Mutex<Option<String>>,
}

impl Reporter {
    pub(super) fn new(capacity: usize) -> Self {
        Reporter {
            errors: ErrorStream::new(capacity),
            was_disconnected: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
            client: OnceLock::new(),
            last_server_id: Mutex::new(None),
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

    /// The server the client is on, and its id.
    fn server(&self) -> Option<(String, String)> {
        let info = self.client.get()?.server_info();
        Some((info.server_id.clone(), describe_server(&info)))
    }

    /// The client announces `Connected` just before it stores the new server's INFO: wait
    /// (briefly) for the INFO of a server other than the one that was lost.
    async fn new_server(&self, previous: Option<&str>) -> Option<String> {
        for _ in 0..50 {
            if let Some((id, name)) = self.server()
                && Some(id.as_str()) != previous
            {
                return Some(name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.server().map(|(_, name)| name)
    }

    pub(super) async fn connection_event(&self, event: async_nats::Event) {
        use async_nats::Event as E;
        match event {
            E::Disconnected => {
                self.was_disconnected.store(true, Ordering::Release);
                let lost = self.server();
                let message = match &lost {
                    Some((_, name)) => {
                        format!("connection to the NATS server {name} lost; reconnecting")
                    }
                    None => "connection to the NATS server lost; reconnecting".to_owned(),
                };
                *lock(&self.last_server_id) = lost.map(|(id, _)| id);
                self.report(BusError::new(BusErrorKind::Disconnected, message));
            }
            E::Connected => {
                if self.was_disconnected.swap(false, Ordering::AcqRel) {
                    let previous = lock(&self.last_server_id).clone();
                    let server = self
                        .new_server(previous.as_deref())
                        .await
                        .unwrap_or_else(|| "?".to_owned());
                    self.report(BusError::new(
                        BusErrorKind::Reconnected,
                        format!(
                            "reconnected to the NATS server {server} (core subscriptions may \
                             have missed events published meanwhile)"
                        ),
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
