//! The bus conformance kit: every [`EventBus`] backend runs these checks.
//!
//! Each check is a public async function that takes a fresh bus (`&dyn EventBus`, with its own
//! subject or key prefix) — or, for the checks that need several buses, the factory — and
//! panics with a message naming the broken promise. [`run`] runs every check the bus's
//! [`Capabilities`] imply, each on fresh buses from a factory that takes a [`Scope`]
//! (buses made for one scope share their subjects, keys, streams and durable names), closes
//! them afterwards, and returns a [`Report`] of what ran and what was skipped:
//!
//! ```
//! use std::sync::Arc;
//! use eventflow::bus::{EventBus, memory::InMemoryBus};
//! use eventflow::testing::conformance::bus::{self, Capabilities};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let report = bus::run(Capabilities::in_memory_sync(), |_scope| async {
//!     Arc::new(InMemoryBus::new()) as Arc<dyn EventBus>
//! })
//! .await;
//! assert!(report.has_run("handlers_ran_when_publish_returns"));
//! assert!(!report.has_run("redelivery_after_error_and_panic"));
//! # }
//! ```
//!
//! # Written for networked, asynchronous buses
//!
//! The checks make no assumption that delivery has happened when `publish` returns (except
//! under `sync_dispatch`). Handlers collect deliveries into shared state, and a check waits for
//! the expected deliveries with a bounded timeout ([`DELIVERY_TIMEOUT`]). A check that something
//! is *not* delivered (or not delivered again) publishes a marker event that *is* delivered,
//! waits for it, and then waits a further grace period ([`QUIET_PERIOD`]) before looking.
//!
//! At-least-once backends (JetStream, Redis Streams) may redeliver: the checks compare sets of
//! distinct event ids, and ordering checks look at the order of *first* deliveries.
//!
//! # What every backend must do to pass
//!
//! - `subscribe` is effective before it returns: an event published right after `subscribe`
//!   returns is delivered to it. A networked backend must make sure the server knows about the
//!   subscription first (flush the SUBSCRIBE / PSUBSCRIBE to the server, create the consumer or
//!   group before returning).
//! - Once `Subscription::unsubscribe` returns or the `Subscription` is dropped, no handler call
//!   starts for an event published afterwards (check a local flag if the server-side
//!   unsubscribe is asynchronous).
//! - A handler's error or panic neither ends its own subscription nor affects others, and is
//!   reported on [`errors`](EventBus::errors).
//! - After `close`, `publish`, `publish_batch` and `subscribe` fail with
//!   [`Error::Closed`](crate::Error::Closed); closing twice is not an error.
//!
//! What a backend promises beyond that, it declares in [`Capabilities`].

mod delivery;
mod durable;
mod errors;
mod feeds;
mod ordering;
mod redelivery;
mod support;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

pub use delivery::{
    drop_stops_delivery, envelope_intact, exact_type, handlers_ran_when_publish_returns,
    multiple_subscribers, pattern_all, pattern_leading_wildcard, pattern_one_or_more,
    pattern_one_token, subscribe_effective_on_return, unsubscribe_stops_delivery,
};
pub use durable::{
    different_names_each_get_every_event, durable_subscriber_resumes, same_name_shares_work,
    unnamed_subscribers_each_get_every_event, unnamed_subscriptions_do_not_resume,
};
pub use errors::{
    closed_bus_rejects, handler_error_isolated, handler_failures_reported, handler_panic_isolated,
    invalid_event_type, invalid_event_type_in_batch, invalid_pattern,
};
pub use feeds::{
    at_most_once_refused_without_opt_in, projection_patterns_in_order,
    saga_follow_up_before_start_is_redelivered, saga_follow_ups_after_slow_start,
};
pub use ordering::{concurrent_publishers_order, publish_batch_order, publish_order};
pub use redelivery::{dead_letter_after_max_deliveries, redelivery_after_error_and_panic};
pub use support::{DELIVERY_TIMEOUT, QUIET_PERIOD};

use crate::bus::EventBus;
pub use crate::testing::conformance::{Report, Scope};

/// What a bus promises beyond what every bus must do; each capability turns on the checks that
/// hold it to that promise (as Watermill's `Features` do).
///
/// `Capabilities::default()` declares nothing; the constructors name the usual sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// A subscriber sees one publisher's events in publish order (also within a batch, with
    /// several concurrent publishers, and across the patterns of one subscription). Checks:
    /// [`publish_order`], [`publish_batch_order`], [`concurrent_publishers_order`],
    /// [`saga_follow_ups_after_slow_start`], [`projection_patterns_in_order`].
    pub ordered: bool,
    /// Every matching handler has run when `publish` / `publish_batch` returns. Check:
    /// [`handlers_ran_when_publish_returns`].
    pub sync_dispatch: bool,
    /// A handler's `Err` or panic leads to the event being delivered again to that
    /// subscription, until the handler succeeds. Checks: [`redelivery_after_error_and_panic`],
    /// [`saga_follow_up_before_start_is_redelivered`].
    pub redelivers: bool,
    /// After this many failed deliveries an event is terminated (not delivered again) and
    /// reported as `DeadLettered`, while later events keep flowing; the factory's buses must be
    /// configured with this maximum. Check: [`dead_letter_after_max_deliveries`].
    pub dead_letters: Option<u32>,
    /// Named subscriptions are durable: a named subscriber that starts (on a bus made again
    /// for the same scope, as after a restart) after events were published still gets them,
    /// and resumes after what its predecessor handled. Unnamed ones are not: they start at new
    /// events and resume nothing, whatever the order they are made in. Checks:
    /// [`durable_subscriber_resumes`], [`unnamed_subscriptions_do_not_resume`].
    pub persistent: bool,
    /// Subscribers on different buses of the same scope that subscribe the same pattern with
    /// the same name share its events (each event goes to one of them); unnamed ones each get
    /// every event. Checks: [`same_name_shares_work`],
    /// [`unnamed_subscribers_each_get_every_event`].
    pub competing_consumers: bool,
}

impl Capabilities {
    /// At most once, in order, dispatched on the caller's task: [`InMemoryBus`] with
    /// synchronous dispatch.
    ///
    /// [`InMemoryBus`]: crate::bus::memory::InMemoryBus
    pub const fn in_memory_sync() -> Self {
        Capabilities {
            ordered: true,
            sync_dispatch: true,
            redelivers: false,
            dead_letters: None,
            persistent: false,
            competing_consumers: false,
        }
    }

    /// At most once, in order: the in-memory bus with async dispatch, NATS core, Redis
    /// pub/sub.
    pub const fn at_most_once() -> Self {
        Capabilities {
            sync_dispatch: false,
            ..Self::in_memory_sync()
        }
    }

    /// At least once with durable, shared subscriptions and dead letters after
    /// `max_deliveries`: JetStream, Redis Streams.
    pub const fn at_least_once(max_deliveries: u32) -> Self {
        Capabilities {
            ordered: true,
            sync_dispatch: false,
            redelivers: true,
            dead_letters: Some(max_deliveries),
            persistent: true,
            competing_consumers: true,
        }
    }
}

/// Runs every check every bus must pass, plus those `capabilities` imply; each check gets
/// fresh buses from `make_bus` for a fresh [`Scope`], and its buses are closed afterwards.
///
/// # Panics
/// When a check fails; the message names the broken promise.
pub async fn run<F, Fut>(capabilities: Capabilities, make_bus: F) -> Report
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    let caps = capabilities;
    let mut report = Report::default();
    // One bus per check; `needs` names the capability a check needs, if any.
    macro_rules! needs {
        () => {
            (None, true)
        };
        ($needs:literal $cond:expr) => {
            (Some($needs), $cond)
        };
    }
    macro_rules! run {
        ($($check:ident $(if $needs:literal $cond:expr)?),* $(,)?) => {$(
            let (needs, enabled): (Option<&'static str>, bool) = needs!($($needs $cond)?);
            if enabled {
                let bus = make_bus(Scope::new(stringify!($check))).await;
                tracing::debug!(check = stringify!($check), "bus conformance check");
                $check(&*bus).await;
                // Some checks close the bus themselves; a second close must be harmless anyway.
                let _ = bus.close().await;
            }
            report.record(stringify!($check), needs, enabled);
        )*};
    }
    run!(
        exact_type,
        subscribe_effective_on_return,
        pattern_all,
        pattern_one_token,
        pattern_one_or_more,
        pattern_leading_wildcard,
        invalid_pattern,
        invalid_event_type,
        invalid_event_type_in_batch,
        multiple_subscribers,
        unsubscribe_stops_delivery,
        drop_stops_delivery,
        handler_error_isolated,
        handler_panic_isolated,
        handler_failures_reported,
        envelope_intact,
        closed_bus_rejects,
        different_names_each_get_every_event,
        at_most_once_refused_without_opt_in,
        publish_order if "ordered" caps.ordered,
        saga_follow_ups_after_slow_start if "ordered" caps.ordered,
        projection_patterns_in_order if "ordered" caps.ordered,
        publish_batch_order if "ordered" caps.ordered,
        concurrent_publishers_order if "ordered" caps.ordered,
        handlers_ran_when_publish_returns if "sync_dispatch" caps.sync_dispatch,
        redelivery_after_error_and_panic if "redelivers" caps.redelivers,
        saga_follow_up_before_start_is_redelivered if "redelivers" caps.redelivers,
    );
    let dead_letters = "dead_letter_after_max_deliveries";
    if let Some(max) = caps.dead_letters {
        let bus = make_bus(Scope::new(dead_letters)).await;
        dead_letter_after_max_deliveries(&*bus, max).await;
        let _ = bus.close().await;
    }
    report.record(
        dead_letters,
        Some("dead_letters"),
        caps.dead_letters.is_some(),
    );
    if caps.persistent {
        durable_subscriber_resumes(&make_bus).await;
        unnamed_subscriptions_do_not_resume(&make_bus).await;
    }
    report.record(
        "durable_subscriber_resumes",
        Some("persistent"),
        caps.persistent,
    );
    report.record(
        "unnamed_subscriptions_do_not_resume",
        Some("persistent"),
        caps.persistent,
    );
    if caps.competing_consumers {
        unnamed_subscribers_each_get_every_event(&make_bus).await;
        same_name_shares_work(&make_bus).await;
    }
    report.record(
        "unnamed_subscribers_each_get_every_event",
        Some("competing_consumers"),
        caps.competing_consumers,
    );
    report.record(
        "same_name_shares_work",
        Some("competing_consumers"),
        caps.competing_consumers,
    );
    tracing::info!(%report, "bus conformance kit passed");
    report
}
