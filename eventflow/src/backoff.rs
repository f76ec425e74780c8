//! The one retry policy of the crate: exponential backoff with jitter.
//!
//! Used by the [relay](crate::relay) between retries of a failed publish or checkpoint save, by
//! JetStream for the delay of a nak'ed (failed) event, and by Redis subscriptions between
//! reconnect attempts. Jitter spreads the retries of many subscribers that failed at the same
//! moment (a server restart), so they do not all come back at once.
//!
//! ```
//! use std::time::Duration;
//! use eventflow::backoff::{Backoff, Jitter};
//!
//! let policy = Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
//!     .with_jitter(Jitter::None)
//!     .with_max_attempts(Some(4));
//! assert_eq!(policy.next_delay(1), Duration::from_millis(100));
//! assert_eq!(policy.next_delay(3), Duration::from_millis(400));
//! let all: Vec<_> = policy.delays().collect();
//! assert_eq!(all.len(), 4);
//! assert!(policy.exhausted(4));
//! ```

use std::time::Duration;

/// How a delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: exactly the exponential delay.
    None,
    /// Uniform in `[delay / 2, delay]`: keeps at least half of the wait, spreads the rest.
    #[default]
    Equal,
    /// Uniform in `[0, delay]`: spreads the most, may retry at once.
    Full,
}

/// An exponential backoff policy: the delay before retry `n` (1-based) is
/// `min * factor^(n-1)`, capped at `max`, then randomised by [`jitter`](Self::jitter).
///
/// Every delay is at most `max`; with [`Jitter::None`] it is also at least `min`, with
/// [`Jitter::Equal`] at least `min / 2`.
///
/// `Backoff::default()` is 50 ms doubling to 5 s with equal jitter, retrying for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backoff {
    /// Delay before the first retry.
    pub min: Duration,
    /// Largest delay (before jitter); never exceeded.
    pub max: Duration,
    /// Growth per attempt (2 doubles the delay each time; 1 keeps it constant).
    pub factor: u32,
    /// How each delay is randomised.
    pub jitter: Jitter,
    /// Give up after this many failed attempts; `None` retries for ever. The policy only
    /// answers [`exhausted`](Self::exhausted); what giving up means is the caller's.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

impl Backoff {
    /// `min` doubling up to `max` (raised to `min` if smaller), with equal jitter, no limit on
    /// attempts.
    pub const fn new(min: Duration, max: Duration) -> Self {
        let max = if max.as_nanos() < min.as_nanos() {
            min
        } else {
            max
        };
        Backoff {
            min,
            max,
            factor: 2,
            jitter: Jitter::Equal,
            max_attempts: None,
        }
    }

    /// The same policy with another growth factor (at least 1).
    pub const fn with_factor(mut self, factor: u32) -> Self {
        self.factor = if factor == 0 { 1 } else { factor };
        self
    }

    /// The same policy with another jitter.
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same policy with a limit on attempts (`None`: retry for ever).
    pub const fn with_max_attempts(mut self, max_attempts: Option<u32>) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The delay before retry `attempt` (1-based; 0 counts as 1), before jitter:
    /// `min * factor^(attempt-1)`, capped at `max`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let mut delay = self.min;
        for _ in 1..attempt.max(1) {
            if delay >= self.max {
                break;
            }
            delay = delay.saturating_mul(self.factor.max(1));
        }
        delay.min(self.max)
    }

    /// The delay before retry `attempt` (1-based; 0 counts as 1), with jitter applied.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        match self.jitter {
            Jitter::None => base,
            Jitter::Equal => random_between(base / 2, base),
            Jitter::Full => random_between(Duration::ZERO, base),
        }
    }

    /// True once `attempts` failed attempts reach [`max_attempts`](Self::max_attempts).
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_attempts.is_some_and(|max| attempts >= max)
    }

    /// The delays of successive retries, as an iterator that ends after
    /// [`max_attempts`](Self::max_attempts) (never, without a limit).
    pub fn delays(&self) -> Delays {
        Delays {
            policy: *self,
            attempt: 0,
        }
    }
}

/// The delays of a [`Backoff`], one per retry; see [`Backoff::delays`]. Call
/// [`reset`](Self::reset) after a success to start again from `min`.
#[derive(Debug, Clone)]
pub struct Delays {
    policy: Backoff,
    attempt: u32,
}

impl Delays {
    /// Starts again from the first delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Retries taken since the start or the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next delay, also past `max_attempts` (for callers that retry for ever).
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.policy.next_delay(self.attempt)
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.policy.exhausted(self.attempt) {
            return None;
        }
        Some(self.next_delay())
    }
}

/// A uniformly random duration in `[low, high]`.
fn random_between(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return high;
    }
    let (lo, hi) = (as_nanos(low), as_nanos(high));
    Duration::from_nanos(fastrand::u64(lo..=hi))
}

fn as_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let b = Backoff::new(100 * MS, 1000 * MS).with_jitter(Jitter::None);
        assert_eq!(b.next_delay(0), 100 * MS);
        assert_eq!(b.next_delay(1), 100 * MS);
        assert_eq!(b.next_delay(2), 200 * MS);
        assert_eq!(b.next_delay(4), 800 * MS);
        assert_eq!(b.next_delay(5), 1000 * MS);
        assert_eq!(b.next_delay(u32::MAX), 1000 * MS);
        let tripling = b.with_factor(3);
        assert_eq!(tripling.next_delay(3), 900 * MS);
        let constant = b.with_factor(1);
        assert_eq!(constant.next_delay(10), 100 * MS);
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX)
            .with_jitter(Jitter::None);
        assert_eq!(b.next_delay(100), Duration::MAX);
        let b = Backoff::new(MS, Duration::MAX).with_factor(u32::MAX);
        assert!(b.next_delay(40) <= Duration::MAX);
    }

    #[test]
    fn max_below_min_is_raised() {
        let b = Backoff::new(500 * MS, 100 * MS).with_jitter(Jitter::None);
        assert_eq!(b.max, 500 * MS);
        assert_eq!(b.next_delay(3), 500 * MS);
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let equal = Backoff::new(100 * MS, 1000 * MS);
        let full = equal.with_jitter(Jitter::Full);
        let mut seen = std::collections::HashSet::new();
        for attempt in 1..=8 {
            let base = equal.base_delay(attempt);
            for _ in 0..200 {
                let d = equal.next_delay(attempt);
                assert!(
                    d >= base / 2 && d <= base,
                    "{d:?} outside [{:?}, {base:?}]",
                    base / 2
                );
                seen.insert(d);
                let d = full.next_delay(attempt);
                assert!(d <= base, "{d:?} over {base:?}");
            }
        }
        // Random, not constant.
        assert!(seen.len() > 100, "only {} distinct delays", seen.len());
        assert!(equal.next_delay(100) <= equal.max);
    }

    #[test]
    fn delays_end_after_max_attempts_and_reset() {
        let b = Backoff::new(10 * MS, 40 * MS)
            .with_jitter(Jitter::None)
            .with_max_attempts(Some(3));
        assert_eq!(b.delays().collect::<Vec<_>>(), [10 * MS, 20 * MS, 40 * MS]);
        assert!(!b.exhausted(2));
        assert!(b.exhausted(3));
        let mut delays = Backoff::new(10 * MS, 40 * MS)
            .with_jitter(Jitter::None)
            .delays();
        assert_eq!(delays.next_delay(), 10 * MS);
        assert_eq!(delays.next_delay(), 20 * MS);
        assert_eq!(delays.attempt(), 2);
        delays.reset();
        assert_eq!(delays.next(), Some(10 * MS));
        assert!(!Backoff::default().exhausted(u32::MAX));
    }
}
