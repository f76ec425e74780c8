//! Subscribing: consumer group names, the task registry, and what subscription tasks share.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::bus::{Inner, RedisBus, Task};
use super::{pubsub, streams};
use crate::backoff::Backoff;
use crate::bus::{ErrorSender, Handler, PatternSet, Subscription, SubscriptionOptions};
use crate::error::{Error, Result};
use crate::handler::sync::lock;

/// Pauses between reconnect attempts of a subscription: 50 ms doubling to 1 s, with jitter.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// The pause before reconnect attempt `attempt` (0-based).
pub(super) fn backoff(attempt: u32) -> Duration {
    RECONNECT.next_delay(attempt.saturating_add(1))
}

/// True once the subscription was cancelled (or its bus dropped).
pub(super) fn cancelled(cancel: &watch::Receiver<bool>) -> bool {
    *cancel.borrow() || cancel.has_changed().is_err()
}

impl RedisBus {
    /// [`EventBus::subscribe_with`](crate::bus::EventBus::subscribe_with): one consumer for
    /// every pattern. Streams: one consumer group (named `options.name`, or derived from the
    /// patterns, see [`claim_group`](Self::claim_group)) reading the bus's one stream with one
    /// `XREADGROUP`, in entry order, filtering by type. Pub/sub: one connection, one glob.
    pub(super) async fn subscribe_patterns(
        &self,
        patterns: &[&str],
        options: SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        let patterns = PatternSet::parse(patterns)?;
        let name = options.checked_name()?.map(str::to_owned);
        self.ensure_open()?;
        let errors = self.error_sender()?;
        let shared = self.inner.shared.clone();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let task = if shared.config.use_streams {
            // A named group is shared by every subscription with that name (in this process or
            // another): they split its entries. An unnamed one is claimed per subscription.
            let (group, claimed) = match &name {
                Some(name) => (name.clone(), None),
                None => {
                    let group = self.claim_group(patterns.label());
                    (group.clone(), Some(group))
                }
            };
            let started = streams::Consumer::start(
                shared,
                group,
                patterns.clone(),
                handler,
                errors,
                cancel_rx,
            )
            .await;
            let consumer = match started {
                Ok(consumer) => consumer,
                Err(e) => {
                    if let Some(group) = &claimed {
                        lock(&self.inner.groups).remove(group);
                    }
                    return Err(e);
                }
            };
            Task {
                cancel: cancel_tx,
                handle: tokio::spawn(consumer.run()),
                group: claimed,
            }
        } else {
            let listener =
                pubsub::Listener::start(shared, patterns.clone(), handler, errors, cancel_rx)
                    .await?;
            Task {
                cancel: cancel_tx,
                handle: tokio::spawn(listener.run()),
                group: None,
            }
        };
        let id = self.register(task);
        let description = match name {
            Some(name) => format!("{name} [{}]", patterns.label()),
            None => patterns.label().to_owned(),
        };
        Ok(self.subscription(description, id))
    }

    fn register(&self, task: Task) -> u64 {
        let id = self.inner.next_task.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.tasks).insert(id, task);
        id
    }

    /// The group for a new unnamed subscription to `pattern` (the patterns joined by `, `):
    /// `G:<pattern>`, or `G:<pattern>#n` with the smallest `n` not read by another live
    /// unnamed subscription of this bus. Reusing freed names keeps group names the same across
    /// restarts and resubscriptions (so they resume), and keeps them from piling up in Redis;
    /// a named subscription does not depend on this order.
    fn claim_group(&self, pattern: &str) -> String {
        let prefix = &self.inner.shared.config.consumer_group;
        let mut groups = lock(&self.inner.groups);
        let mut ordinal = 1;
        loop {
            let name = group_name(prefix, pattern, ordinal);
            if !groups.contains(&name) {
                groups.insert(name.clone());
                return name;
            }
            ordinal += 1;
        }
    }

    fn subscription(&self, description: String, id: u64) -> Subscription {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Subscription::new(description, move || {
            if let Some(inner) = weak.upgrade() {
                let task = lock(&inner.tasks).remove(&id);
                if let Some(task) = task {
                    let _ = task.cancel.send(true);
                    if let Some(group) = &task.group {
                        lock(&inner.groups).remove(group);
                    }
                }
            }
        })
    }

    fn error_sender(&self) -> Result<ErrorSender> {
        self.inner.errors.sender().ok_or(Error::Closed("redis bus"))
    }
}

pub(crate) fn group_name(prefix: &str, pattern: &str, ordinal: u32) -> String {
    if ordinal <= 1 {
        format!("{prefix}:{pattern}")
    } else {
        format!("{prefix}:{pattern}#{ordinal}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_carry_pattern_and_ordinal() {
        assert_eq!(group_name("g", "order.*", 1), "g:order.*");
        assert_eq!(group_name("g", "order.*", 2), "g:order.*#2");
    }

    #[test]
    fn reconnect_backoff_is_bounded() {
        for attempt in [0, 1, 5, 30, u32::MAX] {
            let d = backoff(attempt);
            assert!(
                d >= Duration::from_millis(25) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
    }
}
