//! Subscribing: which consumer a subscription reads through, cancellation, and what a subscription task needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, watch};

use super::status::Reporter;
use super::{NatsBus, core_mode};
use crate::bus::{BusError, BusErrorKind, Handler, PatternSet, SubscriptionOptions};
use crate::error::Result;
use crate::event::Event;
use crate::handler::delivery::{self, Outcome};
use crate::handler::sync::lock;

impl NatsBus {
    /// Subscribes `handler` to `pattern` through the durable consumer named `durable`
    /// (JetStream); in core mode `durable` is the queue group. The same as
    /// [`EventBus::subscribe_with`](crate::bus::EventBus::subscribe_with) with that name.
    ///
    /// # Errors
    /// As [`EventBus::subscribe`](crate::bus::EventBus::subscribe); [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a name outside
    /// `[A-Za-z0-9_-]`.
    pub async fn subscribe_durable(
        &self,
        pattern: &str,
        durable: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<crate::Subscription> {
        self.subscribe_as(&[pattern], SubscriptionOptions::named(durable), handler)
            .await
    }

    /// [`EventBus::subscribe_with`](crate::bus::EventBus::subscribe_with): one consumer for
    /// every pattern.
    ///
    /// - JetStream: one pull consumer: the durable consumer `options.name` when named, else an
    ///   ephemeral consumer of this subscription alone (see
    ///   [`JetStream::subscribe`](super::jetstream::JetStream::subscribe)). With
    ///   one pattern its filter subject is that pattern's subject. With several, NATS 2.9 allows one filter subject per consumer
    ///   (2.10 added `filter_subjects`), so the consumer filters on `<prefix>.>` (the whole
    ///   stream when the prefix is empty or the stream has its own subjects) and the client
    ///   acknowledges, without handling, every message no pattern matches.
    /// - Core: one subscription (a queue subscription in group `options.name` when named), to
    ///   the pattern's subject, or to `<prefix>.>` filtered on the client when there are
    ///   several patterns, so one connection-ordered stream feeds the handler.
    pub(super) async fn subscribe_as(
        &self,
        patterns: &[&str],
        options: SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<crate::Subscription> {
        let patterns = PatternSet::parse(patterns)?;
        let name = options.checked_name()?.map(str::to_owned);
        self.check_open()?;
        let cancel = Arc::new(Cancel::default());
        let ctx = SubContext {
            prefix: self.inner.config.subject_prefix.clone(),
            patterns: patterns.clone(),
            handler,
            reporter: self.inner.reporter.clone(),
            cancel: cancel.clone(),
            shutdown: self.inner.shutdown.subscribe(),
        };
        let config = &self.inner.config;
        let task = match &self.inner.js {
            None => {
                let subject = match patterns.patterns() {
                    [one] => one.to_subject(&config.subject_prefix),
                    _ => wide_subject(&config.subject_prefix),
                };
                core_mode::subscribe(&self.inner.client, subject, name.clone(), ctx, config).await?
            }
            Some(js) => {
                let subject = match patterns.patterns() {
                    [one] => one.to_subject(&config.subject_prefix),
                    _ if config.stream_subjects.is_empty() && !config.subject_prefix.is_empty() => {
                        wide_subject(&config.subject_prefix)
                    }
                    // The whole stream.
                    _ => String::new(),
                };
                js.subscribe(config, name.as_deref(), subject, ctx).await?
            }
        };
        {
            let mut tasks = lock(&self.inner.tasks);
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
        let description = match name {
            Some(name) => format!("{name} [{}]", patterns.label()),
            None => patterns.label().to_owned(),
        };
        Ok(crate::Subscription::new(description, move || {
            cancel.cancel()
        }))
    }
}

/// Every subject below `prefix` (`>` without one).
fn wide_subject(prefix: &str) -> String {
    if prefix.is_empty() {
        ">".to_owned()
    } else {
        format!("{prefix}.>")
    }
}

/// Stops one subscription: a flag checked before each handler call (so nothing is handled
/// after `unsubscribe` returns) and a wake-up for the task.
#[derive(Default)]
pub(super) struct Cancel {
    flag: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub(super) fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// What a subscription task needs.
#[derive(Clone)]
pub(super) struct SubContext {
    /// The bus's subject prefix (empty: none).
    pub(super) prefix: String,
    pub(super) patterns: PatternSet,
    pub(super) handler: Arc<dyn Handler>,
    pub(super) reporter: Arc<Reporter>,
    pub(super) cancel: Arc<Cancel>,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl SubContext {
    /// Whether a message on `subject` is for this subscription (its event type, the subject
    /// below the prefix, matches a pattern).
    pub(super) fn wants_subject(&self, subject: &str) -> bool {
        let event_type = if self.prefix.is_empty() {
            Some(subject)
        } else {
            subject
                .strip_prefix(self.prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
        };
        event_type.is_some_and(|t| self.patterns.matches(t))
    }

    /// True once the subscription was cancelled or the bus closed.
    pub(super) fn stopped(&self) -> bool {
        self.cancel.is_cancelled() || *self.shutdown.borrow()
    }

    /// Resolves when the subscription is cancelled or the bus is closed (or dropped).
    pub(super) async fn stopping(&mut self) {
        if self.stopped() {
            return;
        }
        tokio::select! {
            _ = self.cancel.notify.notified() => {}
            _ = self.shutdown.changed() => {}
        }
    }

    /// Reports a failure of this subscription (for `event`, when there is one).
    pub(super) fn report(&self, kind: BusErrorKind, event: Option<&Event>, message: String) {
        let mut error = BusError::new(kind, message).for_pattern(self.patterns.label());
        if let Some(event) = event {
            error = error.for_event(event);
        }
        self.reporter.report(error);
    }

    /// Runs the handler through the shared delivery core.
    pub(super) async fn run_handler(&self, event: Arc<Event>) -> Outcome {
        delivery::run(&*self.handler, event, self.patterns.label()).await
    }
}
