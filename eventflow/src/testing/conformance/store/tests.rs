//! The kit must catch broken stores: each test wraps the in-memory store in a decorator that
//! breaks one promise and expects the matching check to panic naming it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::*;
use crate::bus::{Handler, Subscription};
use crate::store::memory::InMemoryEventStore;

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Ignores the expected version.
    NoConcurrencyCheck,
    /// Gives every appended event a fresh id, so retries write again.
    NotIdempotent,
    /// Appends a batch one event at a time, keeping what went in before a failure.
    NotAtomic,
    /// Returns `load` results newest first.
    LoadReversed,
    /// Ignores the tenant filter of `load`.
    LoadIgnoresTenant,
    /// `load_stream` skips the `from_version` event itself.
    LoadStreamExclusive,
    /// `read_all` leaves out every seventh event.
    ReadAllSkips,
    /// Subscriptions keep delivering after they are dropped.
    SubscriptionLeaks,
    /// Stream ids are not validated (bad ones are replaced by a valid one).
    NoStreamIdCheck,
}

struct Broken {
    inner: InMemoryEventStore,
    fault: Fault,
}

fn broken(fault: Fault) -> Broken {
    Broken {
        inner: InMemoryEventStore::new(),
        fault,
    }
}

#[async_trait]
impl EventStore for Broken {
    async fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        let stream_id = if self.fault == Fault::NoStreamIdCheck
            && crate::store::validate_stream_id(stream_id).is_err()
        {
            "replaced"
        } else {
            stream_id
        };
        match self.fault {
            Fault::NoConcurrencyCheck => {
                self.inner
                    .append_batch(stream_id, ExpectedVersion::Any, events)
                    .await
            }
            Fault::NotIdempotent => {
                for e in &mut events {
                    e.id = Uuid::now_v7();
                }
                self.inner.append_batch(stream_id, expected, events).await
            }
            Fault::NotAtomic => {
                let mut out = Vec::new();
                for (n, e) in events.into_iter().enumerate() {
                    let expected = if n == 0 {
                        expected
                    } else {
                        ExpectedVersion::Any
                    };
                    out.push(self.inner.append(stream_id, expected, e).await?);
                }
                Ok(out)
            }
            _ => self.inner.append_batch(stream_id, expected, events).await,
        }
    }

    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>> {
        let from = if self.fault == Fault::LoadStreamExclusive {
            from_version.max(1) + 1
        } else {
            from_version
        };
        self.inner.load_stream(stream_id, from).await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        self.inner.stream_version(stream_id).await
    }

    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        match self.fault {
            Fault::LoadReversed => {
                let mut all = self.inner.load(criteria).await?;
                all.reverse();
                Ok(all)
            }
            Fault::LoadIgnoresTenant => {
                let mut c = criteria.clone();
                c.tenant_id = None;
                self.inner.load(&c).await
            }
            _ => self.inner.load(criteria).await,
        }
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>> {
        let mut events = self.inner.read_all(after_position, limit).await?;
        if self.fault == Fault::ReadAllSkips {
            events.retain(|e| e.position.unwrap_or(0) % 7 != 0);
        }
        Ok(events)
    }

    async fn head_position(&self) -> Result<u64> {
        self.inner.head_position().await
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner.commit_signal()
    }

    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: crate::store::SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        let sub = self.inner.subscribe_dyn(criteria, options, handler).await?;
        if self.fault == Fault::SubscriptionLeaks {
            sub.detach();
            return Ok(Subscription::new("leaky", || {}));
        }
        Ok(sub)
    }
}

#[tokio::test]
#[should_panic(expected = "store promise broken: a failed expected-version check is Conflict")]
async fn catches_a_missing_version_check() {
    expected_version_semantics(&broken(Fault::NoConcurrencyCheck)).await;
}

#[tokio::test]
#[should_panic(expected = "store promise broken: of two writers racing")]
async fn catches_racing_writers_both_winning() {
    racing_writers(&broken(Fault::NoConcurrencyCheck)).await;
}

#[tokio::test]
#[should_panic(expected = "store promise broken: a retried append of stored event ids")]
async fn catches_a_retry_that_writes_again() {
    idempotent_retry(&broken(Fault::NotIdempotent)).await;
}

#[tokio::test]
#[should_panic(expected = "store promise broken: a batch is all or nothing")]
async fn catches_a_half_written_batch() {
    batch_atomicity(&broken(Fault::NotAtomic)).await;
}

#[tokio::test]
#[should_panic(
    expected = "store promise broken: load(criteria) returns exactly the matching events"
)]
async fn catches_load_out_of_order() {
    load_criteria(&broken(Fault::LoadReversed)).await;
}

#[tokio::test]
#[should_panic(expected = "tenant_id \"acme\": got 24 events")]
async fn catches_load_ignoring_a_filter() {
    load_criteria(&broken(Fault::LoadIgnoresTenant)).await;
}

#[tokio::test]
#[should_panic(expected = "store promise broken: load_stream(stream, from_version) starts at")]
async fn catches_load_stream_off_by_one() {
    load_stream_from_version(&broken(Fault::LoadStreamExclusive)).await;
}

#[tokio::test]
#[should_panic(expected = "store promise broken: read_all pages through the global order")]
async fn catches_read_all_skipping_events() {
    read_all_paging(&broken(Fault::ReadAllSkips)).await;
}

#[tokio::test]
#[should_panic(expected = "store promise broken: a reader following positions never passes over")]
async fn catches_a_follower_passing_over_events() {
    reader_never_skips_under_concurrent_writes(&broken(Fault::ReadAllSkips)).await;
}

#[tokio::test]
#[should_panic(
    expected = "store promise broken: a dropped store subscription delivers nothing more"
)]
async fn catches_a_subscription_that_outlives_its_drop() {
    subscribe_catch_up_then_live(&broken(Fault::SubscriptionLeaks)).await;
}

#[tokio::test]
#[should_panic(expected = "store promise broken: invalid stream ids are rejected")]
async fn catches_unvalidated_stream_ids() {
    invalid_stream_ids(&broken(Fault::NoStreamIdCheck)).await;
}

#[tokio::test]
async fn the_kit_passes_on_the_unbroken_store() {
    run_all(|| async { Arc::new(InMemoryEventStore::new()) as Arc<dyn EventStore> }).await;
}
