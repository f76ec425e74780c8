//! [`Subscription`]: the handle that keeps a bus or store subscription alive.

use std::fmt;

/// A live subscription. Delivery stops when it is dropped or [`unsubscribe`](Self::unsubscribe)d;
/// call [`detach`](Self::detach) to keep it for the life of the bus.
#[must_use = "dropping a Subscription unsubscribes it; call .detach() to keep it running"]
pub struct Subscription {
    pattern: String,
    cancel: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// A subscription to `pattern` that runs `cancel` when it ends.
    pub fn new(pattern: impl Into<String>, cancel: impl FnOnce() + Send + Sync + 'static) -> Self {
        Subscription {
            pattern: pattern.into(),
            cancel: Some(Box::new(cancel)),
        }
    }

    /// The pattern (or, for store subscriptions, a description of the criteria).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Stops delivery. Handlers already running finish.
    pub fn unsubscribe(mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }

    /// Keeps the subscription running until the bus (or store) is closed.
    pub fn detach(mut self) {
        self.cancel = None;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .field("active", &self.cancel.is_some())
            .finish()
    }
}
