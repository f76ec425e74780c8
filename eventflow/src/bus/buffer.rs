//! The bounded queue between an at-most-once broker client (core NATS, Redis pub/sub) and a
//! subscription's handler.
//!
//! A reader task drains the client's receive side promptly into a [`Buffer`], bounded in
//! messages and in bytes; the handler task takes from it. When a bound is hit the newest
//! message is dropped (the ones already queued are older and will be handled first, as the
//! broker itself does for a slow consumer), and a [`DropTally`] counts the drops so that one
//! `Dropped` report per burst names how many.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// After a drop, a report waits for this long without further drops (the burst is over)...
const QUIET: Duration = Duration::from_millis(50);
/// ...or at most this long after the first unreported drop (a flood is reported as it goes).
const MAX_DELAY: Duration = Duration::from_secs(1);

/// A single-consumer queue bounded by a message count and a byte total.
pub(crate) struct Buffer<T> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
    max_messages: usize,
    max_bytes: usize,
}

struct Inner<T> {
    queue: VecDeque<(T, usize)>,
    bytes: usize,
    closed: bool,
}

impl<T> Buffer<T> {
    /// A buffer holding at most `max_messages` messages and `max_bytes` bytes (but always at
    /// least one message, however large, so a message the broker accepted can be handled).
    pub(crate) fn new(max_messages: usize, max_bytes: usize) -> Self {
        Buffer {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            notify: Notify::new(),
            max_messages: max_messages.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn room(&self, inner: &Inner<T>, size: usize) -> bool {
        !inner.closed
            && (inner.queue.is_empty()
                || (inner.queue.len() < self.max_messages
                    && inner.bytes.saturating_add(size) <= self.max_bytes))
    }

    /// Whether a message of `size` bytes would be accepted now (with a single producer, it
    /// still is when pushed: the consumer only makes room).
    pub(crate) fn fits(&self, size: usize) -> bool {
        self.room(&self.lock(), size)
    }

    /// Queues `item` of `size` bytes; `false` (and `item` dropped) when a bound is hit.
    pub(crate) fn push(&self, item: T, size: usize) -> bool {
        {
            let mut inner = self.lock();
            if !self.room(&inner, size) {
                return false;
            }
            inner.bytes += size;
            inner.queue.push_back((item, size));
        }
        self.notify.notify_one();
        true
    }

    /// The oldest message; waits for one. `None` once [`close`](Self::close)d and empty.
    pub(crate) async fn pop(&self) -> Option<T> {
        loop {
            {
                let mut inner = self.lock();
                if let Some((item, size)) = inner.queue.pop_front() {
                    inner.bytes -= size;
                    return Some(item);
                }
                if inner.closed {
                    return None;
                }
            }
            // `notify_one` leaves a permit when nobody waits, so a push between the unlock
            // and this wait is not missed.
            self.notify.notified().await;
        }
    }

    /// No more messages will be pushed; [`pop`](Self::pop) returns the queued ones, then `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }
}

/// Drops not yet reported, batched so that a burst gives one report.
#[derive(Default)]
pub(crate) struct DropTally {
    messages: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl DropTally {
    /// Counts one dropped message of `size` bytes.
    pub(crate) fn record(&mut self, size: usize) {
        let now = Instant::now();
        self.messages += 1;
        self.bytes += size as u64;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending drops should be reported if nothing else happens: after a quiet
    /// moment, or a bounded delay into a flood. `None` when nothing is pending.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        Some((self.last? + QUIET).min(self.first? + MAX_DELAY))
    }

    /// Whether the pending drops are due now (a flood that has gone on for a while).
    pub(crate) fn due(&self) -> bool {
        self.deadline().is_some_and(|d| d <= Instant::now())
    }

    /// Takes the pending drops, as `(messages, bytes)`, when there are any.
    pub(crate) fn take(&mut self) -> Option<(u64, u64)> {
        if self.messages == 0 {
            return None;
        }
        let taken = (self.messages, self.bytes);
        *self = DropTally::default();
        Some(taken)
    }
}

/// The message of a `Dropped` report for `messages` dropped messages of `bytes` bytes in all.
pub(crate) fn dropped_message(
    messages: u64,
    bytes: u64,
    max_messages: usize,
    max_bytes: usize,
) -> String {
    format!(
        "dropped {messages} message(s) ({bytes} bytes): the handler could not keep up and the \
         subscription's buffer was full (max_buffered_messages {max_messages}, \
         max_buffered_bytes {max_bytes}; at most once)"
    )
}

/// Resolves at `deadline`, or never when there is none.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_by_count_and_bytes() {
        let b = Buffer::new(3, 100);
        assert!(b.push(1, 60));
        assert!(!b.fits(60));
        assert!(!b.push(2, 60), "over the byte bound");
        assert!(b.push(3, 20));
        assert!(b.push(4, 20));
        assert!(!b.push(5, 0), "over the count bound");
        assert_eq!(b.pop().await, Some(1));
        assert!(b.push(6, 50));
        b.close();
        assert!(!b.push(7, 0));
        for want in [3, 4, 6] {
            assert_eq!(b.pop().await, Some(want));
        }
        assert_eq!(b.pop().await, None);
        // One message always fits into an empty buffer, however large.
        let b = Buffer::new(1, 10);
        assert!(b.push((), 1000));
    }

    #[test]
    fn tally_batches() {
        let mut t = DropTally::default();
        assert!(t.deadline().is_none() && t.take().is_none());
        t.record(10);
        t.record(5);
        assert!(t.deadline().is_some());
        assert_eq!(t.take(), Some((2, 15)));
        assert!(t.take().is_none());
    }
}
