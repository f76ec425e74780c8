//! The kit must catch a broken bus: each test runs one check against a bus with one fault.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::FutureExt;

use super::*;
use crate::bus::memory::InMemoryBus;
use crate::bus::{BusError, BusErrorKind, ErrorReceiver, ErrorSender, Handler, Subscription};
use crate::error::Result;
use crate::event::Event;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Swaps every pair of published events.
    Reorders,
    /// `unsubscribe`/drop does nothing.
    IgnoresUnsubscribe,
    /// An invalid event type is silently accepted (and dropped).
    AcceptsInvalidTypes,
    /// A batch is sent event by event, so events before an invalid one go out.
    SendsBatchBeforeValidating,
    /// `close` does nothing.
    IgnoresClose,
    /// `order.*` behaves like `order.>` (a glob translated carelessly).
    WidensOneTokenWildcard,
    /// A handler that failed once is never called again.
    DropsFailingSubscription,
    /// Custom metadata is lost in transit.
    LosesCustomMetadata,
    /// `errors()` is a stream that has ended: nothing is ever reported.
    ReportsNothing,
    /// A subscription to several patterns is one independent subscription per pattern (what
    /// sagas and projections did before issue 11), on an async bus.
    SplitsPatterns,
}

struct Faulty {
    inner: InMemoryBus,
    fault: Fault,
    held: Mutex<Option<Event>>,
}

fn faulty(fault: Fault) -> Faulty {
    let inner = if fault == Fault::SplitsPatterns {
        InMemoryBus::builder().async_dispatch(1024).build()
    } else {
        InMemoryBus::new()
    };
    Faulty {
        inner,
        fault,
        held: Mutex::new(None),
    }
}

#[async_trait]
impl EventBus for Faulty {
    fn guarantee(&self) -> crate::bus::Delivery {
        crate::bus::Delivery::AtMostOnce
    }

    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: crate::bus::SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        match patterns {
            [one] if options.name.is_none() => self.subscribe(one, handler).await,
            _ if self.fault == Fault::SplitsPatterns => {
                let mut subs = Vec::new();
                for p in patterns {
                    subs.push(self.inner.subscribe(p, handler.clone()).await?);
                }
                Ok(Subscription::new("split", move || drop(subs)))
            }
            _ => self.inner.subscribe_with(patterns, options, handler).await,
        }
    }
    async fn publish(&self, mut event: Event) -> Result<()> {
        match self.fault {
            Fault::Reorders => {
                event.validate()?;
                let held = self.held.lock().unwrap().take();
                match held {
                    None => *self.held.lock().unwrap() = Some(event),
                    Some(first) => {
                        self.inner.publish(event).await?;
                        self.inner.publish(first).await?;
                    }
                }
                return Ok(());
            }
            Fault::AcceptsInvalidTypes if event.validate().is_err() => return Ok(()),
            Fault::LosesCustomMetadata => event.metadata.custom.clear(),
            _ => {}
        }
        self.inner.publish(event).await
    }

    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        if self.fault == Fault::SendsBatchBeforeValidating {
            for e in events {
                self.inner.publish(e).await?;
            }
            return Ok(());
        }
        for e in events {
            self.publish(e).await?;
        }
        Ok(())
    }

    async fn subscribe(&self, pattern: &str, handler: Arc<dyn Handler>) -> Result<Subscription> {
        match self.fault {
            Fault::IgnoresUnsubscribe => {
                self.inner.subscribe(pattern, handler).await?.detach();
                Ok(Subscription::new(pattern, || {}))
            }
            Fault::WidensOneTokenWildcard if pattern.ends_with(".*") => {
                let widened = format!("{}>", &pattern[..pattern.len() - 1]);
                self.inner.subscribe(&widened, handler).await
            }
            Fault::DropsFailingSubscription => {
                let dead = Arc::new(AtomicBool::new(false));
                let wrapped = move |event: Arc<Event>| {
                    let (handler, dead) = (handler.clone(), dead.clone());
                    async move {
                        if dead.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        let result = handler.handle(event).await;
                        if result.is_err() {
                            dead.store(true, Ordering::SeqCst);
                        }
                        result
                    }
                };
                self.inner.subscribe(pattern, Arc::new(wrapped)).await
            }
            _ => self.inner.subscribe(pattern, handler).await,
        }
    }

    async fn close(&self) -> Result<()> {
        if self.fault == Fault::IgnoresClose {
            return Ok(());
        }
        self.inner.close().await
    }

    fn errors(&self) -> ErrorReceiver {
        if self.fault == Fault::ReportsNothing {
            // Its sender is dropped at once.
            return ErrorSender::new(1).subscribe();
        }
        self.inner.errors()
    }
}

#[tokio::test]
#[should_panic(expected = "in publish order (publish)")]
async fn catches_reordering() {
    publish_order(&faulty(Fault::Reorders)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "a saga fed from the bus sees each follow-up after its start event")]
async fn catches_a_saga_split_over_subscriptions() {
    saga_follow_ups_after_slow_start(&faulty(Fault::SplitsPatterns)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "a projection fed from the bus handles its patterns' events")]
async fn catches_a_projection_split_over_subscriptions() {
    projection_patterns_in_order(&faulty(Fault::SplitsPatterns)).await;
}

#[tokio::test]
async fn saga_and_projection_checks_pass_on_an_async_bus() {
    let bus = InMemoryBus::builder().async_dispatch(1024).build();
    saga_follow_ups_after_slow_start(&bus).await;
    projection_patterns_in_order(&bus).await;
    at_most_once_refused_without_opt_in(&bus).await;
    different_names_each_get_every_event(&bus).await;
}

#[tokio::test]
#[should_panic(expected = "Subscription::unsubscribe stops its delivery")]
async fn catches_an_unsubscribe_that_does_nothing() {
    unsubscribe_stops_delivery(&faulty(Fault::IgnoresUnsubscribe)).await;
}

#[tokio::test]
#[should_panic(expected = "dropping a Subscription stops its delivery")]
async fn catches_a_drop_that_does_nothing() {
    drop_stops_delivery(&faulty(Fault::IgnoresUnsubscribe)).await;
}

#[tokio::test]
#[should_panic(expected = "publish rejects an invalid event type")]
async fn catches_an_accepted_invalid_type() {
    invalid_event_type(&faulty(Fault::AcceptsInvalidTypes)).await;
}

#[tokio::test]
#[should_panic(expected = "validated before anything is sent")]
async fn catches_a_batch_sent_before_validation() {
    invalid_event_type_in_batch(&faulty(Fault::SendsBatchBeforeValidating)).await;
}

#[tokio::test]
#[should_panic(expected = "publish after close succeeded")]
async fn catches_a_close_that_does_nothing() {
    closed_bus_rejects(&faulty(Fault::IgnoresClose)).await;
}

#[tokio::test]
#[should_panic(expected = "pattern \"order.*\" delivers exactly")]
async fn catches_a_widened_wildcard() {
    pattern_one_token(&faulty(Fault::WidensOneTokenWildcard)).await;
}

#[tokio::test]
#[should_panic(expected = "a handler that returns Err neither stops")]
async fn catches_a_subscription_killed_by_a_handler_error() {
    handler_error_isolated(&faulty(Fault::DropsFailingSubscription)).await;
}

#[tokio::test]
#[should_panic(expected = "field metadata changed in transit")]
async fn catches_lost_metadata() {
    envelope_intact(&faulty(Fault::LosesCustomMetadata)).await;
}

// ---------------------------------------------------------------------------------------------
// At-least-once promises, on an in-memory bus that retries in the handler

#[derive(Clone, Copy, PartialEq)]
enum RetryFault {
    /// Retries until the handler succeeds, dead-letters after `MAX` attempts.
    None,
    /// Reports a failure, never delivers again.
    DropsRedeliveries,
    /// Keeps delivering a failing event once more than the maximum before dead-lettering it.
    OneDeliveryTooMany,
    /// Gives up after the maximum without reporting `DeadLettered`.
    SilentDeadLetter,
}

const MAX: u32 = 3;

/// An at-least-once bus in miniature: every handler call retries a failing handler (at once,
/// on the same task), reports each failure, and dead-letters after [`MAX`] attempts.
struct Retrying {
    inner: InMemoryBus,
    errors: ErrorSender,
    fault: RetryFault,
}

fn retrying(fault: RetryFault) -> Retrying {
    Retrying {
        inner: InMemoryBus::new(),
        errors: ErrorSender::new(256),
        fault,
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[async_trait]
impl EventBus for Retrying {
    fn guarantee(&self) -> crate::bus::Delivery {
        crate::bus::Delivery::AtLeastOnce
    }

    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: crate::bus::SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        match patterns {
            [one] if options.name.is_none() => self.subscribe(one, handler).await,
            _ => self.inner.subscribe_with(patterns, options, handler).await,
        }
    }
    async fn publish(&self, event: Event) -> Result<()> {
        self.inner.publish(event).await
    }

    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        self.inner.publish_batch(events).await
    }

    async fn subscribe(&self, pattern: &str, handler: Arc<dyn Handler>) -> Result<Subscription> {
        let (errors, fault, owned) = (self.errors.clone(), self.fault, pattern.to_owned());
        let limit = if fault == RetryFault::OneDeliveryTooMany {
            MAX + 1
        } else {
            MAX
        };
        let wrapped = move |event: Arc<Event>| {
            let (handler, errors, pattern) = (handler.clone(), errors.clone(), owned.clone());
            async move {
                for attempt in 1..=limit {
                    let outcome = AssertUnwindSafe(handler.handle(event.clone()))
                        .catch_unwind()
                        .await;
                    let failure = match outcome {
                        Ok(Ok(())) => return Ok(()),
                        Ok(Err(e)) => BusError::new(BusErrorKind::HandlerFailed, e.to_string()),
                        Err(panic) => {
                            BusError::new(BusErrorKind::HandlerPanicked, panic_text(&*panic))
                        }
                    };
                    errors.report(failure.for_event(&event).for_pattern(pattern.clone()));
                    if fault == RetryFault::DropsRedeliveries {
                        return Ok(());
                    }
                    if attempt == limit && fault != RetryFault::SilentDeadLetter {
                        let dead = BusError::new(BusErrorKind::DeadLettered, "max deliveries");
                        errors.report(dead.for_event(&event).for_pattern(pattern.clone()));
                    }
                }
                Ok(())
            }
        };
        self.inner.subscribe(pattern, Arc::new(wrapped)).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn errors(&self) -> ErrorReceiver {
        self.errors.subscribe()
    }
}

#[tokio::test]
async fn an_at_least_once_bus_passes_the_at_least_once_checks() {
    redelivery_after_error_and_panic(&retrying(RetryFault::None)).await;
    dead_letter_after_max_deliveries(&retrying(RetryFault::None), MAX).await;
    handler_failures_reported(&retrying(RetryFault::None)).await;
}

#[tokio::test]
#[should_panic(expected = "redelivered until it succeeds")]
async fn catches_a_bus_that_drops_redeliveries() {
    redelivery_after_error_and_panic(&retrying(RetryFault::DropsRedeliveries)).await;
}

#[tokio::test]
#[should_panic(expected = "attempted 4 times, expected 3")]
async fn catches_a_dead_letter_one_delivery_late() {
    dead_letter_after_max_deliveries(&retrying(RetryFault::OneDeliveryTooMany), MAX).await;
}

#[tokio::test]
#[should_panic(expected = "no DeadLettered for the poison event reported")]
async fn catches_a_dead_letter_that_is_not_reported() {
    dead_letter_after_max_deliveries(&retrying(RetryFault::SilentDeadLetter), MAX).await;
}

#[tokio::test]
#[should_panic(expected = "the error stream ended before HandlerFailed")]
async fn catches_handler_failures_that_are_not_reported() {
    handler_failures_reported(&faulty(Fault::ReportsNothing)).await;
}

// ---------------------------------------------------------------------------------------------
// Durable and shared subscriptions

#[tokio::test]
#[should_panic(expected = "went to both subscribers")]
async fn catches_subscribers_that_do_not_compete() {
    // Both "processes" of a scope get the same in-memory bus: every subscriber sees every event.
    let buses: Mutex<HashMap<Scope, Arc<InMemoryBus>>> = Mutex::default();
    let make = |scope: Scope| {
        let bus = buses
            .lock()
            .unwrap()
            .entry(scope)
            .or_insert_with(|| Arc::new(InMemoryBus::new()))
            .clone();
        async move { bus as Arc<dyn EventBus> }
    };
    same_name_shares_work(&make).await;
}

#[tokio::test]
async fn unnamed_subscriber_checks_pass_on_the_reference_bus() {
    // Two "services" of a scope share one in-memory bus: unnamed subscribers each see all.
    let buses: Mutex<HashMap<Scope, Arc<InMemoryBus>>> = Mutex::default();
    let shared = |scope: Scope| {
        let bus = buses
            .lock()
            .unwrap()
            .entry(scope)
            .or_insert_with(|| Arc::new(InMemoryBus::new()))
            .clone();
        async move { bus as Arc<dyn EventBus> }
    };
    unnamed_subscribers_each_get_every_event(&shared).await;
    unnamed_subscriptions_do_not_resume(&|_scope| async {
        Arc::new(InMemoryBus::new()) as Arc<dyn EventBus>
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "a restarted durable subscriber gets what was published")]
async fn catches_a_subscriber_that_does_not_resume() {
    durable_subscriber_resumes(&|_scope| async {
        Arc::new(InMemoryBus::new()) as Arc<dyn EventBus>
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "had run when publish returned")]
async fn catches_an_async_bus_declaring_sync_dispatch() {
    handlers_ran_when_publish_returns(&InMemoryBus::builder().async_dispatch(16).build()).await;
}
