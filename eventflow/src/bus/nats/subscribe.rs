//! Subscribing: durable consumer names, cancellation, and what a subscription task needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, watch};

use super::status::Reporter;
use super::{NatsBus, core_mode};
use crate::bus::{BusError, BusErrorKind, Handler, Pattern};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::delivery::{self, Outcome};
use crate::handler::sync::lock;

impl NatsBus {
    /// Subscribes `handler` to `pattern` through the durable consumer named `durable` instead
    /// of the derived name (JetStream); in core mode this is [`EventBus::subscribe`](crate::bus::EventBus::subscribe).
    ///
    /// # Errors
    /// As [`EventBus::subscribe`](crate::bus::EventBus::subscribe); [`Error::InvalidArgument`] for a name outside
    /// `[A-Za-z0-9_-]`.
    pub async fn subscribe_durable(
        &self,
        pattern: &str,
        durable: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<crate::Subscription> {
        if durable.is_empty()
            || !durable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::InvalidArgument(format!(
                "nats: durable name {durable:?} must be non-empty [A-Za-z0-9_-]"
            )));
        }
        self.subscribe_as(pattern, Some(durable.to_owned()), handler)
            .await
    }

    pub(super) async fn subscribe_as(
        &self,
        pattern: &str,
        durable: Option<String>,
        handler: Arc<dyn Handler>,
    ) -> Result<crate::Subscription> {
        let pattern = Pattern::parse(pattern)?;
        self.check_open()?;
        let cancel = Arc::new(Cancel::default());
        let ctx = SubContext {
            pattern: pattern.clone(),
            handler,
            reporter: self.inner.reporter.clone(),
            cancel: cancel.clone(),
            shutdown: self.inner.shutdown.subscribe(),
        };
        let subject = pattern.to_subject(&self.inner.config.subject_prefix);
        let task = match &self.inner.js {
            None => {
                core_mode::subscribe(
                    &self.inner.client,
                    subject,
                    ctx,
                    self.inner.config.request_timeout,
                )
                .await?
            }
            Some(js) => {
                let name = durable.unwrap_or_else(|| self.consumer_name(&pattern));
                js.subscribe(&self.inner.config, &name, subject, ctx)
                    .await?
            }
        };
        {
            let mut tasks = lock(&self.inner.tasks);
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
        Ok(crate::Subscription::new(pattern.as_str(), move || {
            cancel.cancel()
        }))
    }

    /// `<durable_name>-<hash of the pattern>`, plus `-<n>` for the n-th further subscription to
    /// the same pattern on this bus: stable across restarts, distinct per subscription.
    fn consumer_name(&self, pattern: &Pattern) -> String {
        let n = {
            let mut per = lock(&self.inner.per_pattern);
            let n = per.entry(pattern.as_str().to_owned()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let base = format!(
            "{}-{:016x}",
            self.inner.config.durable_name,
            fnv1a(pattern.as_str())
        );
        if n == 0 { base } else { format!("{base}-{n}") }
    }
}

/// FNV-1a, 64 bits: a hash that is stable across processes and Rust versions (consumer names
/// must not change when a service restarts).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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
pub(super) struct SubContext {
    pub(super) pattern: Pattern,
    pub(super) handler: Arc<dyn Handler>,
    pub(super) reporter: Arc<Reporter>,
    pub(super) cancel: Arc<Cancel>,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl SubContext {
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
        let mut error = BusError::new(kind, message).for_pattern(self.pattern.as_str());
        if let Some(event) = event {
            error = error.for_event(event);
        }
        self.reporter.report(error);
    }

    /// Runs the handler through the shared delivery core.
    pub(super) async fn run_handler(&self, event: Arc<Event>) -> Outcome {
        delivery::run(&*self.handler, event, self.pattern.as_str()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_name_hash_is_stable() {
        // Pinned: a changed hash would orphan every durable consumer on upgrade.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a("a.*"), fnv1a("a.>"));
    }
}
