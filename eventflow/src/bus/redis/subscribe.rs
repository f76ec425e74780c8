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
    /// every pattern. Streams: one consumer group (named `options.name`, or a random
    /// `ephemeral:<uuid>` of this subscription alone when unnamed) reading the bus's one stream with one
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
            // another): they split its entries. An unnamed subscription gets a group of its
            // own, under a random name, destroyed when it stops.
            let (group, ephemeral) = match &name {
                Some(name) => (name.clone(), false),
                None => (ephemeral_group(), true),
            };
            let consumer = streams::Consumer::start(
                shared.clone(),
                group.clone(),
                ephemeral,
                patterns.clone(),
                handler,
                errors,
                cancel_rx.clone(),
            )
            .await?;
            if ephemeral {
                tokio::spawn(keep_lease(
                    self.inner.conn.clone(),
                    shared.key_base.clone(),
                    group.clone(),
                    cancel_rx,
                ));
            }
            Task {
                cancel: cancel_tx,
                handle: tokio::spawn(consumer.run()),
                ephemeral_group: ephemeral.then_some(group),
            }
        } else {
            let listener =
                pubsub::Listener::start(shared, patterns.clone(), handler, errors, cancel_rx)
                    .await?;
            Task {
                cancel: cancel_tx,
                handle: tokio::spawn(listener.run()),
                ephemeral_group: None,
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

    fn subscription(&self, description: String, id: u64) -> Subscription {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Subscription::new(description, move || {
            if let Some(inner) = weak.upgrade() {
                let task = lock(&inner.tasks).remove(&id);
                if let Some(task) = task {
                    // The task destroys its ephemeral group itself once it has stopped.
                    let _ = task.cancel.send(true);
                }
            }
        })
    }

    fn error_sender(&self) -> Result<ErrorSender> {
        self.inner.errors.sender().ok_or(Error::Closed("redis bus"))
    }
}

/// The prefix of every unnamed subscription's consumer group.
pub(super) const EPHEMERAL_GROUP_PREFIX: &str = "ephemeral:";

/// How long an unnamed subscription's lease lives unless renewed; renewed every third of it.
/// A group whose lease is gone belongs to a process that died without destroying it, and the
/// next trim destroys it (see [`super::trim`]).
pub(super) const EPHEMERAL_LEASE: Duration = Duration::from_secs(60);

/// The key whose presence says that the ephemeral group `group` is still read:
/// `<key_prefix>:lease:<group>`.
pub(super) fn lease_key(key_prefix: &str, group: &str) -> String {
    format!("{key_prefix}:lease:{group}")
}

/// `SET <lease key> 1 PX <lease>`.
pub(super) async fn renew_lease(
    conn: &mut impl redis::aio::ConnectionLike,
    key_prefix: &str,
    group: &str,
) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(lease_key(key_prefix, group))
        .arg(1)
        .arg("PX")
        .arg(EPHEMERAL_LEASE.as_millis() as u64)
        .query_async(conn)
        .await
}

/// Renews the lease of an ephemeral group until its subscription stops. A task of its own, so
/// a handler that runs long does not let the lease lapse.
async fn keep_lease(
    mut conn: super::conn::Conn,
    key_prefix: String,
    group: String,
    mut cancel: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = cancel.changed() => {}
            () = tokio::time::sleep(EPHEMERAL_LEASE / 3) => {}
        }
        if cancelled(&cancel) {
            return;
        }
        if let Err(e) = renew_lease(&mut conn, &key_prefix, &group).await {
            tracing::debug!(%group, "redis: cannot renew the lease of an ephemeral group: {e}");
        }
    }
}

/// A fresh consumer group name for one unnamed subscription: `ephemeral:<random uuid>`, so no
/// other subscription, in this process or another, ever reads through it.
fn ephemeral_group() -> String {
    format!("{EPHEMERAL_GROUP_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_groups_are_unique() {
        let (a, b) = (ephemeral_group(), ephemeral_group());
        assert_ne!(a, b);
        assert!(a.starts_with(EPHEMERAL_GROUP_PREFIX), "{a}");
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
