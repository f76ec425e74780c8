//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`, on by
//! default): eventflow records; the application installs whichever recorder or exporter it
//! wants (Prometheus, StatsD, OpenTelemetry, ...). With no recorder installed every call is a
//! no-op; without the feature nothing is compiled in.
//!
//! The names and labels below are stable (a rename is a breaking change):
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `eventflow_store_append_seconds` | histogram | `store` | time an `append_batch` took, successful or not |
//! | `eventflow_store_appended_events_total` | counter | `store` | events in successful appends (an idempotent retry, which writes nothing, counts them again) |
//! | `eventflow_relay_published_events_total` | counter | `relay` | events a relay published on its bus |
//! | `eventflow_relay_lag_seconds` | gauge | `relay` | age (now − event `timestamp`) of the newest event of the relay's last published batch |
//! | `eventflow_projection_lag_seconds` | gauge | `projection`, `partition` (partitioned projections only) | age of the newest event of the projection runner's last applied batch; a partitioned projection's worker sets one gauge per partition it runs (`partition` = `0`, `1`, ...) |
//! | `eventflow_saga_lag_seconds` | gauge | `saga` | age of the event a saga manager last handled |
//! | `eventflow_handler_failures_total` | counter | `outcome` (`error` or `panic`) | handler runs that failed, in every bus, store subscription, projection and saga |
//! | `eventflow_parked_events_total` | counter | `source` | events parked in a dead-letter store (see [`store::dead_letter`](crate::store::dead_letter)) |
//! | `eventflow_bus_reconnects_total` | counter | — | connections to a NATS or Redis server re-established |
//! | `eventflow_bus_dead_letters_total` | counter | — | messages given up on after too many deliveries (JetStream, Redis Streams) or parked by a relay |
//! | `eventflow_bus_errors_total` | counter | `kind` | every failure reported on an error stream, by [`BusErrorKind`](crate::bus::BusErrorKind) (`handler_failed`, `disconnected`, `dropped`, ...) |
//! | `eventflow_leases_held` | gauge | `lease` | leases this process holds, by lease name: `relay:<name>` (0 or 1) and `projection:<name>` (the partitions this worker runs) |
//! | `eventflow_leases_lost_total` | counter | `lease` | leases found lost by their holder (expired or taken over before a renewal, or a fenced write refused) |
//!
//! `store` is `memory` or `postgres`. The `*_lag_seconds` gauges are set each time a batch is
//! handled: they say how far behind real time the reader is while it works, and stay at the
//! last value while it is idle; a reader that stopped shows as a counter that no longer moves.
//!
//! [`describe`] registers a one-line description of each, for exporters that print them.

/// `eventflow_store_append_seconds`.
pub const STORE_APPEND_SECONDS: &str = "eventflow_store_append_seconds";
/// `eventflow_store_appended_events_total`.
pub const STORE_APPENDED_EVENTS: &str = "eventflow_store_appended_events_total";
/// `eventflow_relay_published_events_total`.
pub const RELAY_PUBLISHED_EVENTS: &str = "eventflow_relay_published_events_total";
/// `eventflow_relay_lag_seconds`.
pub const RELAY_LAG_SECONDS: &str = "eventflow_relay_lag_seconds";
/// `eventflow_projection_lag_seconds`.
pub const PROJECTION_LAG_SECONDS: &str = "eventflow_projection_lag_seconds";
/// `eventflow_saga_lag_seconds`.
pub const SAGA_LAG_SECONDS: &str = "eventflow_saga_lag_seconds";
/// `eventflow_handler_failures_total`.
pub const HANDLER_FAILURES: &str = "eventflow_handler_failures_total";
/// `eventflow_parked_events_total`.
pub const PARKED_EVENTS: &str = "eventflow_parked_events_total";
/// `eventflow_bus_reconnects_total`.
pub const BUS_RECONNECTS: &str = "eventflow_bus_reconnects_total";
/// `eventflow_bus_dead_letters_total`.
pub const BUS_DEAD_LETTERS: &str = "eventflow_bus_dead_letters_total";
/// `eventflow_bus_errors_total`.
pub const BUS_ERRORS: &str = "eventflow_bus_errors_total";

/// `eventflow_leases_held`.
pub const LEASES_HELD: &str = "eventflow_leases_held";
/// `eventflow_leases_lost_total`.
pub const LEASES_LOST: &str = "eventflow_leases_lost_total";

/// Every metric name above, for tests and dashboards.
pub const ALL: [&str; 13] = [
    STORE_APPEND_SECONDS,
    STORE_APPENDED_EVENTS,
    RELAY_PUBLISHED_EVENTS,
    RELAY_LAG_SECONDS,
    PROJECTION_LAG_SECONDS,
    SAGA_LAG_SECONDS,
    HANDLER_FAILURES,
    PARKED_EVENTS,
    BUS_RECONNECTS,
    BUS_DEAD_LETTERS,
    BUS_ERRORS,
    LEASES_HELD,
    LEASES_LOST,
];

/// Registers the description and unit of every eventflow metric with the installed recorder.
/// Call it once after installing one (optional: exporters then print `# HELP` lines).
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_histogram!(
            STORE_APPEND_SECONDS,
            Unit::Seconds,
            "Time an event store append took."
        );
        describe_counter!(STORE_APPENDED_EVENTS, "Events appended to the event store.");
        describe_counter!(
            RELAY_PUBLISHED_EVENTS,
            "Events a relay published on its bus."
        );
        describe_gauge!(
            RELAY_LAG_SECONDS,
            Unit::Seconds,
            "Age of the newest event of the relay's last published batch."
        );
        describe_gauge!(
            PROJECTION_LAG_SECONDS,
            Unit::Seconds,
            "Age of the newest event of a projection's last applied batch."
        );
        describe_gauge!(
            SAGA_LAG_SECONDS,
            Unit::Seconds,
            "Age of the event a saga last handled."
        );
        describe_counter!(HANDLER_FAILURES, "Handler runs that failed or panicked.");
        describe_counter!(PARKED_EVENTS, "Events parked in a dead-letter store.");
        describe_counter!(BUS_RECONNECTS, "Bus connections re-established.");
        describe_counter!(
            BUS_DEAD_LETTERS,
            "Messages given up on after too many deliveries, or parked by a relay."
        );
        describe_counter!(BUS_ERRORS, "Failures reported on an error stream, by kind.");
        describe_gauge!(LEASES_HELD, "Leases this process holds, by lease name.");
        describe_counter!(LEASES_LOST, "Leases found lost by their holder.");
    }
}

/// Seconds from `timestamp` to now (0 for a timestamp in the future).
#[cfg(feature = "metrics")]
fn age(timestamp: chrono::DateTime<chrono::Utc>) -> f64 {
    (chrono::Utc::now() - timestamp)
        .to_std()
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn appended(store: &'static str, started: std::time::Instant, appended: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!(STORE_APPEND_SECONDS, "store" => store).record(started.elapsed());
        if appended > 0 {
            metrics::counter!(STORE_APPENDED_EVENTS, "store" => store).increment(appended as u64);
        }
    }
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn relay_published(
    relay: &str,
    count: usize,
    newest: Option<chrono::DateTime<chrono::Utc>>,
) {
    #[cfg(feature = "metrics")]
    {
        let relay = relay.to_owned();
        metrics::counter!(RELAY_PUBLISHED_EVENTS, "relay" => relay.clone()).increment(count as u64);
        if let Some(newest) = newest {
            metrics::gauge!(RELAY_LAG_SECONDS, "relay" => relay).set(age(newest));
        }
    }
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn projection_applied(
    projection: &str,
    partition: Option<u32>,
    newest: chrono::DateTime<chrono::Utc>,
) {
    #[cfg(feature = "metrics")]
    match partition {
        None => metrics::gauge!(PROJECTION_LAG_SECONDS, "projection" => projection.to_owned())
            .set(age(newest)),
        Some(p) => metrics::gauge!(
            PROJECTION_LAG_SECONDS,
            "projection" => projection.to_owned(),
            "partition" => p.to_string()
        )
        .set(age(newest)),
    }
}

/// `held` leases of `lease` held by this process.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn leases_held(lease: &str, held: usize) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(LEASES_HELD, "lease" => lease.to_owned()).set(held as f64);
}

/// A lease of `lease` found lost by its holder.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn lease_lost(lease: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(LEASES_LOST, "lease" => lease.to_owned()).increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn saga_handled(saga: &str, timestamp: chrono::DateTime<chrono::Utc>) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(SAGA_LAG_SECONDS, "saga" => saga.to_owned()).set(age(timestamp));
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn handler_failed(panicked: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(HANDLER_FAILURES, "outcome" => if panicked { "panic" } else { "error" })
        .increment(1);
}

#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn parked(source: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(PARKED_EVENTS, "source" => source.to_owned()).increment(1);
}

/// A failure reported on an error stream, by its kind's `snake_case` name.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn bus_error(kind: &'static str, reconnected: bool, dead_lettered: bool) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(BUS_ERRORS, "kind" => kind).increment(1);
        if reconnected {
            metrics::counter!(BUS_RECONNECTS).increment(1);
        }
        if dead_lettered {
            metrics::counter!(BUS_DEAD_LETTERS).increment(1);
        }
    }
}
