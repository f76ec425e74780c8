//! [`NatsConfig`]: where to connect, how to authenticate, core or JetStream, and the delivery
//! knobs of JetStream consumers.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::redact::{REDACTED, redact_url};

/// Configuration of a [`NatsBus`](super::NatsBus).
///
/// `NatsConfig::default()` mirrors the seed's `DefaultNATSConfig()`: a local server, the subject
/// prefix `events`, core NATS (at most once), and reconnecting up to 60 times, 2 seconds apart
/// (the Go client's defaults). Set [`enable_jetstream`](Self::enable_jetstream) for
/// at-least-once delivery through JetStream consumers.
///
/// There is no configured consumer name: a subscription's identity is the name the caller
/// gives it ([`SubscriptionOptions::named`](crate::bus::SubscriptionOptions::named)), which
/// becomes its durable consumer. An unnamed subscription has no identity at all (an ephemeral
/// consumer of its own; see the [module docs](super)), so two services on this default
/// configuration never share, or take over, each other's events.
///
/// ```
/// use std::time::Duration;
/// use eventflow::bus::nats::NatsConfig;
///
/// let mut config = NatsConfig::default();
/// config.url = "nats://nats.example.com:4222".into();
/// config.enable_jetstream = true;
/// config.max_reconnects = Some(10);
/// config.reconnect_wait = Duration::from_secs(2);
/// assert_eq!(config.subject_prefix, "events");
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server URL, or several separated by commas (`nats://a:4222,nats://b:4222`): the seeds
    /// of a cluster. The client connects to one of them (in random order), learns the other
    /// members from the server (`connect_urls`), and moves to another server when its server
    /// is lost; [`NatsBus::server`](super::NatsBus::server) names the one it is on.
    pub url: String,
    /// Every event is published on `<subject_prefix>.<event type>`. Dot-separated tokens of
    /// `[A-Za-z0-9_-]`; empty means no prefix.
    pub subject_prefix: String,
    /// JetStream (at least once, durable consumers) instead of core NATS (at most once).
    pub enable_jetstream: bool,
    /// The JetStream stream that stores the events (created or updated at connect).
    pub stream_name: String,
    /// The stream's subjects; empty means `<subject_prefix>.>`.
    pub stream_subjects: Vec<String>,
    /// Keep the stream in memory instead of files (JetStream).
    pub memory_storage: bool,
    /// Events with the same id published within this window are stored once (JetStream).
    pub duplicate_window: Duration,
    /// How long the stream keeps events; zero keeps them until other limits apply (JetStream).
    pub max_age: Duration,
    /// Copies of the stream kept by a JetStream cluster (`num_replicas`, 1 to 5; JetStream).
    /// With 3, a publish is acknowledged once a majority (2 of 3) stored it, so an
    /// acknowledged event survives the loss of any one server, and the stream (with its
    /// durable consumers, which inherit the replica count) stays available while a new leader
    /// is elected. 1 (the default) keeps a single copy: fine for one server, a loss of data
    /// and availability when its server dies in a cluster. Changing it on an existing stream
    /// is applied by the server (`create_or_update_stream`).
    pub stream_replicas: usize,
    /// Placement of a new stream: the JetStream cluster (by `--cluster_name`) that must hold
    /// it; `None` lets the server choose (JetStream).
    pub placement_cluster: Option<String>,
    /// Placement of a new stream: server tags (`server_tags` in the server configuration)
    /// every replica's server must have; empty means no constraint (JetStream).
    pub placement_tags: Vec<String>,
    /// How long a JetStream publish keeps retrying transient failures (no PubAck in time, no
    /// stream leader, a lost connection: what a leader change or a server restart looks like)
    /// before it returns the error. Each retry sends the same message with the same
    /// `Nats-Msg-Id`, so one stored before its ack was lost is not stored twice (within
    /// [`duplicate_window`](Self::duplicate_window)). Pauses follow
    /// [`Backoff`](crate::backoff::Backoff) from 50 ms doubling to 1 s. Zero retries nothing.
    /// Default 10 s.
    pub publish_retry_for: Duration,
    /// Reconnect attempts after a lost connection before giving up; `None` retries for ever.
    pub max_reconnects: Option<usize>,
    /// Wait between reconnect attempts (the first one is immediate).
    pub reconnect_wait: Duration,
    /// Limit for the initial connection (TCP, TLS and handshake).
    pub connect_timeout: Duration,
    /// Limit for one JetStream publish acknowledgement or API request.
    pub request_timeout: Duration,
    /// How long the server waits for a handler's ack before redelivering (JetStream).
    pub ack_wait: Duration,
    /// Deliveries of one event before it is given up on (terminated, reported and sent to the
    /// dead-letter subject); `-1` retries for ever (JetStream).
    pub max_deliver: i64,
    /// Delay before the first redelivery after a handler error; doubles on each further
    /// failure up to [`max_retry_backoff`](Self::max_retry_backoff), with jitter (each delay is
    /// between half and all of that; see [`Backoff`](crate::backoff::Backoff)) (JetStream).
    pub retry_backoff: Duration,
    /// Upper bound of the redelivery delay (JetStream).
    pub max_retry_backoff: Duration,
    /// Where terminated (poison) events are published, with the failure in headers; `None`
    /// only reports them on the error stream. Keep it outside `<subject_prefix>.>`.
    ///
    /// The dead letter is published through JetStream and its PubAck awaited before the
    /// original is terminated, so a crash in between leaves the original to be delivered
    /// again, never neither. The subject must be stored by a stream: the one that already
    /// captures it, or else [`dead_letter_stream`](Self::dead_letter_stream), created at
    /// connect.
    pub dead_letter_subject: Option<String>,
    /// Name of the stream created for [`dead_letter_subject`](Self::dead_letter_subject) when
    /// no stream captures it yet; `None` means `<stream_name>-DLQ`.
    pub dead_letter_stream: Option<String>,
    /// Unacknowledged messages the server hands out per consumer, over all processes
    /// sharing it (`max_ack_pending`); beyond that it waits for acks. Default 256 (JetStream).
    pub max_ack_pending: i64,
    /// Messages one subscription asks for per pull request (JetStream). Messages pulled but
    /// not yet handled are kept alive with in-progress acks while a slow handler works, so
    /// they are not redelivered; a small batch keeps a busy process from holding many.
    /// Default 16.
    pub pull_batch: usize,
    /// Publish acknowledgements `publish_batch` keeps in flight at once (JetStream).
    pub publish_window: usize,
    /// Client connection name, shown by the server's monitoring.
    pub connection_name: Option<String>,
    /// A `.creds` file (user JWT and NKey seed), for servers in operator (JWT) mode. A file
    /// that cannot be read or parsed is an [`Error::Connect`].
    pub credentials_file: Option<PathBuf>,
    /// Token authentication.
    pub token: Option<String>,
    /// User name for user/password authentication.
    pub user: Option<String>,
    /// Password for user/password authentication.
    pub password: Option<String>,
    /// Refuse to connect without TLS: the connection is upgraded to TLS even when the server
    /// does not ask for it, and fails (with [`Error::Connect`]) when the server cannot do TLS.
    pub tls_required: bool,
    /// A PEM file of root CA certificates to trust for the server's TLS certificate, for
    /// servers whose certificate is signed by a private CA. `None` trusts the usual public
    /// roots only. TLS is used when the server or [`tls_required`](Self::tls_required) asks
    /// for it; this field alone does not require it.
    pub tls_ca_file: Option<PathBuf>,
    /// Messages the NATS client itself holds per subscription between the socket and the
    /// subscription's reader (async-nats' `subscription_capacity`); beyond that the client
    /// drops them and the error stream reports `Dropped` (slow consumer, without a count).
    /// The reader moves them promptly into the subscription's own buffer
    /// ([`max_buffered_messages`](Self::max_buffered_messages),
    /// [`max_buffered_bytes`](Self::max_buffered_bytes)), so this stays nearly empty; it only
    /// absorbs bursts that arrive while the reader is not scheduled (a busy machine). Worst
    /// case it holds this many messages of up to the server's `max_payload` (1 MiB by default)
    /// each: lower it when messages are large and memory tight. Default 1024.
    pub subscription_capacity: usize,
    /// Core NATS (at most once): messages received but not yet handled that one subscription
    /// keeps while its handler is busy. When this or
    /// [`max_buffered_bytes`](Self::max_buffered_bytes) is reached, newly arriving messages are
    /// dropped (the queued, older ones are still handled) and the error stream reports
    /// [`Dropped`](crate::bus::BusErrorKind::Dropped) once per burst, naming how many messages
    /// (and bytes) were dropped. Default 4096. JetStream does not use it: it pulls at most
    /// [`pull_batch`](Self::pull_batch) messages at a time and asks for more only when they
    /// are handled, so a slow handler applies back-pressure and nothing is dropped.
    pub max_buffered_messages: usize,
    /// Core NATS: payload bytes one subscription keeps while its handler is busy (see
    /// [`max_buffered_messages`](Self::max_buffered_messages)); one message is always accepted
    /// into an empty buffer, however large. Default 16 MiB, so a slow subscriber holds at most
    /// about 16 MiB plus what the client holds (see
    /// [`subscription_capacity`](Self::subscription_capacity)).
    pub max_buffered_bytes: usize,
    /// Failures kept for slow readers of the error stream.
    pub error_capacity: usize,
}

/// Secrets (URL credentials, token, password) are redacted.
impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| REDACTED);
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("subject_prefix", &self.subject_prefix)
            .field("enable_jetstream", &self.enable_jetstream)
            .field("stream_name", &self.stream_name)
            .field("stream_subjects", &self.stream_subjects)
            .field("memory_storage", &self.memory_storage)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_age", &self.max_age)
            .field("stream_replicas", &self.stream_replicas)
            .field("placement_cluster", &self.placement_cluster)
            .field("placement_tags", &self.placement_tags)
            .field("publish_retry_for", &self.publish_retry_for)
            .field("max_reconnects", &self.max_reconnects)
            .field("reconnect_wait", &self.reconnect_wait)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_retry_backoff", &self.max_retry_backoff)
            .field("dead_letter_subject", &self.dead_letter_subject)
            .field("dead_letter_stream", &self.dead_letter_stream)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("pull_batch", &self.pull_batch)
            .field("publish_window", &self.publish_window)
            .field("connection_name", &self.connection_name)
            .field("credentials_file", &self.credentials_file)
            .field("token", &hidden(&self.token))
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("tls_required", &self.tls_required)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("max_buffered_messages", &self.max_buffered_messages)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("error_capacity", &self.error_capacity)
            .finish()
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            subject_prefix: "events".to_owned(),
            enable_jetstream: false,
            stream_name: "EVENTS".to_owned(),
            stream_subjects: Vec::new(),
            memory_storage: false,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::ZERO,
            stream_replicas: 1,
            placement_cluster: None,
            placement_tags: Vec::new(),
            publish_retry_for: Duration::from_secs(10),
            max_reconnects: Some(60),
            reconnect_wait: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            retry_backoff: Duration::from_millis(500),
            max_retry_backoff: Duration::from_secs(30),
            dead_letter_subject: None,
            dead_letter_stream: None,
            max_ack_pending: 256,
            pull_batch: 16,
            publish_window: 256,
            connection_name: Some("eventflow".to_owned()),
            credentials_file: None,
            token: None,
            user: None,
            password: None,
            tls_required: false,
            tls_ca_file: None,
            subscription_capacity: 1024,
            max_buffered_messages: 4096,
            max_buffered_bytes: 16 << 20,
            error_capacity: 1024,
        }
    }
}

impl NatsConfig {
    /// The default configuration for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            ..NatsConfig::default()
        }
    }

    /// The default configuration with JetStream enabled, for `url`.
    pub fn jetstream(url: impl Into<String>) -> Self {
        NatsConfig {
            enable_jetstream: true,
            ..NatsConfig::new(url)
        }
    }

    /// The stream's subjects: [`stream_subjects`](Self::stream_subjects) or `<prefix>.>`.
    pub fn effective_stream_subjects(&self) -> Vec<String> {
        if !self.stream_subjects.is_empty() {
            self.stream_subjects.clone()
        } else if self.subject_prefix.is_empty() {
            vec![">".to_owned()]
        } else {
            vec![format!("{}.>", self.subject_prefix)]
        }
    }

    /// The URL(s) with any credentials replaced by `<redacted>`, for error messages and logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Checks the fields a server would otherwise reject later, with a clearer message.
    pub(super) fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::InvalidArgument(msg));
        if self.url.trim().is_empty() {
            return invalid("nats: url must not be empty".into());
        }
        if !self.subject_prefix.is_empty() && !is_subject_literal(&self.subject_prefix) {
            return invalid(format!(
                "nats: subject_prefix {:?} must be dot-separated tokens of [A-Za-z0-9_-]",
                self.subject_prefix
            ));
        }
        if self.enable_jetstream {
            if !is_name(&self.stream_name) {
                return invalid(format!(
                    "nats: stream_name {:?} must be non-empty [A-Za-z0-9_-]",
                    self.stream_name
                ));
            }
            if self.max_deliver == 0 || self.max_deliver < -1 {
                return invalid("nats: max_deliver must be positive or -1".into());
            }
            if self.max_ack_pending < 1 {
                return invalid("nats: max_ack_pending must be at least 1".into());
            }
            if !(1..=5).contains(&self.stream_replicas) {
                return invalid(format!(
                    "nats: stream_replicas must be 1 to 5, not {}",
                    self.stream_replicas
                ));
            }
            if self.pull_batch == 0 {
                return invalid("nats: pull_batch must be at least 1".into());
            }
            if let Some(name) = &self.dead_letter_stream
                && !is_name(name)
            {
                return invalid(format!(
                    "nats: dead_letter_stream {name:?} must be non-empty [A-Za-z0-9_-]"
                ));
            }
        }
        if self.subscription_capacity == 0 {
            return invalid("nats: subscription_capacity must be at least 1".into());
        }
        if self.max_buffered_messages == 0 || self.max_buffered_bytes == 0 {
            return invalid(
                "nats: max_buffered_messages and max_buffered_bytes must be at least 1".into(),
            );
        }
        if self.publish_window == 0 {
            return invalid("nats: publish_window must be at least 1".into());
        }
        if self.user.is_some() != self.password.is_some() {
            return invalid("nats: user and password go together".into());
        }
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_subject_literal(s: &str) -> bool {
    s.split('.').all(is_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_core() {
        let c = NatsConfig::default();
        assert!(c.validate().is_ok());
        assert!(!c.enable_jetstream);
        assert_eq!(c.effective_stream_subjects(), vec!["events.>".to_owned()]);
        assert!(NatsConfig::jetstream("nats://x:1").validate().is_ok());
    }

    #[test]
    fn bad_fields_are_rejected() {
        for c in [
            NatsConfig {
                subject_prefix: "a.*".into(),
                ..NatsConfig::default()
            },
            NatsConfig {
                subject_prefix: "a..b".into(),
                ..NatsConfig::default()
            },
            NatsConfig {
                stream_name: "a.b".into(),
                ..NatsConfig::jetstream("nats://x:1")
            },
            NatsConfig {
                user: Some("u".into()),
                ..NatsConfig::default()
            },
            NatsConfig {
                stream_replicas: 0,
                ..NatsConfig::jetstream("nats://x:1")
            },
            NatsConfig {
                stream_replicas: 6,
                ..NatsConfig::jetstream("nats://x:1")
            },
            NatsConfig {
                max_buffered_messages: 0,
                ..NatsConfig::default()
            },
            NatsConfig {
                max_buffered_bytes: 0,
                ..NatsConfig::default()
            },
        ] {
            assert!(
                matches!(c.validate(), Err(Error::InvalidArgument(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = NatsConfig::new("nats://u:pw1@h:1");
        c.token = Some("tok2".into());
        c.user = Some("u".into());
        c.password = Some("pw3".into());
        let shown = format!("{c:?}");
        for secret in ["pw1", "tok2", "pw3"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn credentials_are_redacted() {
        let c = NatsConfig::new("nats://u:secret@host:4222, tls://tok@h2:1,nats://h3:2");
        assert_eq!(
            c.redacted_url(),
            "nats://<redacted>@host:4222,tls://<redacted>@h2:1,nats://h3:2"
        );
    }
}
