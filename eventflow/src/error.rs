//! Error types shared by every part of eventflow.
//!
//! Backend errors (sqlx, async-nats, redis) are mapped at the edge of their module into
//! [`Error::Backend`], so none of their types appear in the public API.
//!
//! An error's `Display` says what failed; the cause is its [`source`](std::error::Error::source),
//! never repeated in the message. Print the whole chain with a reporter (`anyhow`'s `{:#}`,
//! `tracing`'s error fields) or by walking `source()`.

use crate::version::ExpectedVersion;

/// A boxed error as returned by handlers and carried as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with eventflow's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in eventflow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event type name is not a valid dot-separated name.
    #[error("invalid event type {name:?}: {reason}")]
    InvalidEventType {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A subscription pattern is not valid.
    #[error("invalid subscription pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The rejected pattern.
        pattern: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A stream id is empty or too long.
    #[error("invalid stream id {stream:?}: {reason}")]
    InvalidStreamId {
        /// The rejected stream id.
        stream: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// Optimistic concurrency check failed: the stream is not at the expected version.
    #[error("version conflict on stream {stream:?}: expected {expected}, actual version {actual}")]
    Conflict {
        /// The stream that was appended to.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's current version (0 when the stream does not exist).
        actual: u64,
    },

    /// Some, but not all, events of a batch are already stored (see
    /// [`EventStore::append_batch`](crate::store::EventStore::append_batch) for the idempotency
    /// rule). Nothing was written.
    #[error("event {id} is already stored (in stream {stream:?}); nothing was written")]
    DuplicateEvent {
        /// The id of an event that is already stored.
        id: uuid::Uuid,
        /// The stream that holds the stored copy.
        stream: String,
    },

    /// An event payload could not be encoded to JSON.
    #[error("cannot encode payload of event type {event_type:?}")]
    Encode {
        /// The event type being encoded.
        event_type: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// An event payload (or a whole envelope) could not be decoded.
    #[error("cannot decode event of type {event_type:?}")]
    Decode {
        /// The event type being decoded.
        event_type: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// An envelope of an event type the target type does not know.
    #[error("unknown event type {event_type:?} for {target}")]
    UnknownEventType {
        /// The envelope's event type.
        event_type: String,
        /// The Rust type that was asked to decode it.
        target: &'static str,
    },

    /// A stored event has a schema version that no upcaster brings to the current one.
    #[error(
        "no upcaster for event type {event_type:?} from schema version {version} \
         (current version {current})"
    )]
    MissingUpcaster {
        /// The event type.
        event_type: String,
        /// The version that has no upcaster to the next one.
        version: u32,
        /// The version the event type is at now.
        current: u32,
    },

    /// An event is larger than the backend accepts.
    #[error("event {id} is {size} bytes, over the limit of {limit} bytes")]
    EventTooLarge {
        /// The event id.
        id: uuid::Uuid,
        /// Its encoded size.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },

    /// An event's payload (or its metadata's `custom` map) nests arrays and objects deeper than
    /// [`MAX_PAYLOAD_DEPTH`](crate::event::MAX_PAYLOAD_DEPTH) levels: rejected where events are
    /// built, appended and published, so every reader can decode what was written.
    #[error(
        "{field} of event type {event_type:?} is nested {depth} levels deep, over the limit of {limit}"
    )]
    PayloadTooDeep {
        /// The event type.
        event_type: String,
        /// `"payload"` or `"metadata"`.
        field: &'static str,
        /// The depth found.
        depth: usize,
        /// The limit it exceeded.
        limit: usize,
    },

    /// The bus (or store) was closed; the call was not carried out.
    #[error("{0} is closed")]
    Closed(&'static str),

    /// A call did not finish in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        operation: &'static str,
        /// The limit.
        after: std::time::Duration,
    },

    /// The PostgreSQL event store has no positions left for new events: a position is the
    /// writing transaction's id (plus the schema's offset) shifted left by 20 bits, and it has
    /// reached 2^43. Nothing was appended. The fix: copy the events into a new store (a new
    /// schema or database; `read_all` and `append_batch`), whose positions start low again.
    #[error("no positions left for new events: {0}")]
    PositionsExhausted(String),

    /// A connection to a backend could not be made or was lost.
    #[error("{backend}: cannot connect to {target}")]
    Connect {
        /// The backend ("postgres", "nats", "redis").
        backend: &'static str,
        /// What we tried to reach (URL with credentials removed).
        target: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A backend call failed.
    #[error("{backend} backend call failed")]
    Backend {
        /// The backend ("postgres", "nats", "redis").
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A handler returned an error (used where the caller is waiting on the handler).
    #[error("handler failed for event {event_id} ({event_type})")]
    Handler {
        /// The event being handled.
        event_id: uuid::Uuid,
        /// Its type.
        event_type: String,
        /// The handler's error.
        #[source]
        source: BoxError,
    },

    /// Invalid configuration or argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A read of the global order was asked on a connection whose own transaction pins the
    /// safe horizon (PostgreSQL: it holds a transaction id because it wrote, or a
    /// repeatable-read snapshot): the read could never see a commit later than that transaction,
    /// and waiting for it would wait for itself. Read before writing, outside the transaction,
    /// or through the store's pool.
    #[error("cannot read the global order inside this transaction: {reason}")]
    ReadInTransaction {
        /// What pins the horizon.
        reason: &'static str,
    },

    /// A saga or projection was to be fed from a bus that delivers at most once, which loses
    /// events on a crash, a disconnect or a full queue, without an explicit opt-in. Feed it from
    /// the event store instead (a `ProjectionRunner`, with `SagaProjection` for a saga), or opt
    /// in with `FeedOptions::allow_at_most_once`.
    #[error(
        "{consumer} refuses an at-most-once bus; catch up from the event store instead, \
         or opt in with FeedOptions::allow_at_most_once()"
    )]
    AtMostOnceBus {
        /// The saga or projection (as `saga <name>` / `projection <name>`).
        consumer: String,
    },

    /// Leased work was fenced off: the lease `(name, partition)` is no longer held by `owner`
    /// at `epoch` (it expired and another worker took it over, or it was released), so the
    /// write was refused and nothing was committed. The worker must stop that work; it may
    /// claim the lease again.
    #[error("lease {name:?} partition {partition} is no longer held by {owner:?} at epoch {epoch}")]
    LeaseLost {
        /// What was leased.
        name: String,
        /// Which partition.
        partition: u32,
        /// The owner that lost it.
        owner: String,
        /// The epoch it held.
        epoch: i64,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// Wraps a decode error for `event_type`.
    pub fn decode(event_type: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Decode {
            event_type: event_type.into(),
            source: source.into(),
        }
    }

    /// True for an optimistic-concurrency [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// Whether retrying the same call can succeed: the one classification the relay, the saga
    /// outbox and projection runners use to choose between retrying with backoff and parking
    /// the event (see [`FailureClass`]).
    pub fn failure_class(&self) -> FailureClass {
        match self {
            // The event itself is wrong for the target: the same bytes fail the same way.
            Error::EventTooLarge { .. }
            | Error::PayloadTooDeep { .. }
            | Error::InvalidEventType { .. }
            | Error::InvalidStreamId { .. }
            | Error::InvalidPattern { .. }
            | Error::Encode { .. }
            | Error::Decode { .. }
            | Error::UnknownEventType { .. }
            | Error::MissingUpcaster { .. }
            | Error::AtMostOnceBus { .. }
            | Error::ReadInTransaction { .. }
            | Error::InvalidArgument(_)
            | Error::PositionsExhausted(_) => FailureClass::Permanent,
            // Connections, timeouts, backend calls, races and handlers may do better next time.
            Error::Conflict { .. }
            | Error::DuplicateEvent { .. }
            | Error::Closed(_)
            | Error::Timeout { .. }
            | Error::Connect { .. }
            | Error::Backend { .. }
            | Error::Handler { .. }
            | Error::LeaseLost { .. } => FailureClass::Transient,
        }
    }

    /// True when retrying cannot fix this failure ([`FailureClass::Permanent`]).
    pub fn is_permanent(&self) -> bool {
        self.failure_class() == FailureClass::Permanent
    }
}

/// Whether a failure is worth retrying; see [`Error::failure_class`].
///
/// | class | errors | what delivery does |
/// |---|---|---|
/// | `Permanent` | `EventTooLarge`, `PayloadTooDeep`, `InvalidEventType`, `InvalidStreamId`, `InvalidPattern`, `Encode`, `Decode`, `UnknownEventType`, `MissingUpcaster`, `AtMostOnceBus`, `ReadInTransaction`, `InvalidArgument` (a value the backend rejects) | park the event in a dead-letter store, report it, move on |
/// | `Transient` | `Connect`, `Timeout`, `Backend`, `Closed`, `Conflict`, `DuplicateEvent`, `Handler`, `LeaseLost` | retry with backoff, in order |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Retrying the same event cannot succeed (it is too large, invalid or undecodable).
    Permanent,
    /// The failure may pass (a lost connection, a timeout, a busy backend, a lost race).
    Transient,
}

impl FailureClass {
    /// A short lowercase name (`"permanent"`, `"transient"`), for logs and stored reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Permanent => "permanent",
            FailureClass::Transient => "transient",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A cause with a cause of its own, to check a three-link chain.
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("protocol step failed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn cause() -> BoxError {
        Box::new(Outer(std::io::Error::other("connection reset by peer")))
    }

    /// Walks the chain: no message repeats the text of the error after it.
    fn assert_no_repeats(error: &(dyn std::error::Error + 'static)) {
        let mut links = vec![error.to_string()];
        let mut next = error.source();
        while let Some(e) = next {
            links.push(e.to_string());
            next = e.source();
        }
        assert!(links.len() >= 2, "no cause to check: {links:?}");
        for pair in links.windows(2) {
            assert!(
                !pair[0].contains(&pair[1]),
                "{:?} repeats its cause {:?} (chain {links:?})",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn display_does_not_repeat_the_source() {
        let encode = serde_json::from_str::<u8>("x").unwrap_err();
        let errors = [
            Error::Encode {
                event_type: "order.placed".into(),
                source: encode,
            },
            Error::decode("order.placed", cause()),
            Error::Connect {
                backend: "nats",
                target: "nats://127.0.0.1:4222".into(),
                source: cause(),
            },
            Error::backend("redis", cause()),
            Error::Handler {
                event_id: uuid::Uuid::nil(),
                event_type: "order.placed".into(),
                source: cause(),
            },
        ];
        for error in &errors {
            assert_no_repeats(error);
        }
        // The command error wrapper is transparent for store errors.
        let wrapped: crate::aggregate::ExecuteError<String> =
            Error::backend("redis", cause()).into();
        assert_eq!(wrapped.to_string(), "redis backend call failed");
        assert_no_repeats(&wrapped);
    }

    #[test]
    fn failures_are_classified_in_one_place() {
        let permanent = [
            Error::EventTooLarge {
                id: uuid::Uuid::nil(),
                size: 2 << 20,
                limit: 1 << 20,
            },
            Error::InvalidEventType {
                name: "Bad Type".into(),
                reason: "spaces",
            },
            Error::Encode {
                event_type: "order.placed".into(),
                source: serde_json::from_str::<u8>("x").unwrap_err(),
            },
            Error::decode("order.placed", cause()),
            Error::InvalidArgument("NUL in text".into()),
            Error::PayloadTooDeep {
                event_type: "order.placed".into(),
                field: "payload",
                depth: 120,
                limit: 100,
            },
        ];
        for e in &permanent {
            assert!(e.is_permanent(), "{e} should be permanent");
            assert_eq!(e.failure_class(), FailureClass::Permanent);
        }
        let transient = [
            Error::Connect {
                backend: "nats",
                target: "nats://127.0.0.1:4222".into(),
                source: cause(),
            },
            Error::Timeout {
                operation: "publish",
                after: std::time::Duration::from_secs(1),
            },
            Error::backend("redis", cause()),
            Error::Conflict {
                stream: "s".into(),
                expected: ExpectedVersion::Exact(1),
                actual: 2,
            },
            Error::Closed("bus"),
        ];
        for e in &transient {
            assert!(!e.is_permanent(), "{e} should be transient");
            assert_eq!(e.failure_class().as_str(), "transient");
        }
    }

    #[test]
    fn display_says_what_failed() {
        let e = Error::Connect {
            backend: "redis",
            target: "redis://h:6379".into(),
            source: cause(),
        };
        assert_eq!(e.to_string(), "redis: cannot connect to redis://h:6379");
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "protocol step failed"
        );
    }
}
