//! The kit must catch broken stores: each test wraps the in-memory store in a decorator that
//! breaks one promise and expects the matching check to panic naming it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::*;
use crate::bus::{Handler, Subscription};
use crate::store::memory::InMemoryEventStore;
use crate::store::{EventCriteria, SubscribeOptions};
use uuid::Uuid;

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
    /// Returns the caller's `stream_version` and `position` from an append where it set them.
    KeepsClaims,
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
            Fault::KeepsClaims => {
                let claims: Vec<_> = events
                    .iter()
                    .map(|e| (e.stream_version, e.position))
                    .collect();
                let mut recorded = self.inner.append_batch(stream_id, expected, events).await?;
                for (e, (version, position)) in recorded.iter_mut().zip(claims) {
                    e.stream_version = version.or(e.stream_version);
                    e.position = position.or(e.position);
                }
                Ok(recorded)
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
#[should_panic(
    expected = "store promise broken: the store assigns stream_id, stream_version and position \
                itself: append_batch returned the caller's claim"
)]
async fn catches_a_store_that_keeps_claimed_positions() {
    claimed_store_fields_are_overwritten(&broken(Fault::KeepsClaims)).await;
}

#[tokio::test]
async fn the_kit_passes_on_the_unbroken_store() {
    let report = run(Capabilities::default(), |_scope| async {
        TestStore::new(Arc::new(InMemoryEventStore::new()))
    })
    .await;
    assert!(report.has_run("reader_never_skips_under_concurrent_writes"));
    assert_eq!(
        report.skipped(),
        [
            ("open_append_is_not_passed_over", "can_hold_append_open"),
            ("committed_events_survive_a_new_instance", "durable"),
        ]
    );
}

#[tokio::test]
#[should_panic(expected = "declares can_hold_append_open, but its TestStore has no hold_open hook")]
async fn a_declared_capability_needs_its_hook() {
    let caps = Capabilities {
        can_hold_append_open: true,
        ..Capabilities::default()
    };
    run(caps, |_scope| async {
        TestStore::new(Arc::new(InMemoryEventStore::new()))
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "a store made again over the same storage holds")]
async fn catches_a_store_that_forgets() {
    // Each instance is a new, empty in-memory store.
    committed_events_survive_a_new_instance(&|_scope| async {
        TestStore::new(Arc::new(InMemoryEventStore::new()))
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Gap safety: a tiny store whose positions are taken when an append begins

/// What a position holds.
#[derive(Clone, PartialEq)]
enum Slot {
    Open(Event),
    Committed(Event),
    RolledBack,
}

/// A store that assigns positions when an append begins (as PostgreSQL does), so a held-open
/// append leaves a hole below later commits. Only what the gap check uses is real; with
/// `skips_open` its readers pass over the hole.
#[derive(Clone)]
struct Holding {
    slots: Arc<std::sync::Mutex<Vec<Slot>>>,
    signal: Arc<watch::Sender<u64>>,
    skips_open: bool,
}

fn holding(skips_open: bool) -> Holding {
    Holding {
        slots: Arc::default(),
        signal: Arc::new(watch::channel(0).0),
        skips_open,
    }
}

impl Holding {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap()
    }

    /// Takes positions for `events`, as an open append.
    fn begin(&self, stream_id: &str, events: Vec<Event>) -> Vec<Event> {
        let mut slots = self.slots();
        let version = slots
            .iter()
            .filter(|s| match s {
                Slot::Open(e) | Slot::Committed(e) => e.stream_id.as_deref() == Some(stream_id),
                Slot::RolledBack => false,
            })
            .count() as u64;
        let mut recorded = Vec::new();
        for (n, mut e) in events.into_iter().enumerate() {
            e.stream_id = Some(stream_id.to_owned());
            e.stream_version = Some(version + n as u64 + 1);
            e.position = Some(slots.len() as u64 + 1);
            slots.push(Slot::Open(e.clone()));
            recorded.push(e);
        }
        recorded
    }

    fn finish(&self, events: &[Event], commit: bool) {
        let mut slots = self.slots();
        for e in events {
            let slot = &mut slots[e.position.unwrap() as usize - 1];
            *slot = if commit {
                Slot::Committed(e.clone())
            } else {
                Slot::RolledBack
            };
        }
        let head = slots.len() as u64;
        drop(slots);
        self.signal.send_replace(head);
    }

    /// Committed events after `after`, stopping at an open append unless `skips_open`.
    fn visible(&self, after: u64) -> Vec<Event> {
        let mut out = Vec::new();
        for slot in self.slots().iter().skip(after as usize) {
            match slot {
                Slot::Committed(e) => out.push(e.clone()),
                Slot::Open(_) if !self.skips_open => break,
                Slot::Open(_) | Slot::RolledBack => {}
            }
        }
        out
    }
}

struct HeldAppend {
    store: Holding,
    events: Vec<Event>,
}

#[async_trait]
impl OpenAppend for HeldAppend {
    fn events(&self) -> &[Event] {
        &self.events
    }

    async fn commit(self: Box<Self>) -> Result<Vec<Event>> {
        self.store.finish(&self.events, true);
        Ok(self.events)
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.store.finish(&self.events, false);
        Ok(())
    }
}

#[async_trait]
impl HoldsAppendOpen for Holding {
    async fn begin_append(
        &self,
        stream_id: &str,
        _expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Box<dyn OpenAppend>> {
        let events = self.begin(stream_id, events);
        Ok(Box::new(HeldAppend {
            store: self.clone(),
            events,
        }))
    }
}

#[async_trait]
impl EventStore for Holding {
    async fn append_batch(
        &self,
        stream_id: &str,
        _expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        let events = self.begin(stream_id, events);
        self.finish(&events, true);
        Ok(events)
    }

    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>> {
        Ok(self
            .visible(0)
            .into_iter()
            .filter(|e| {
                e.stream_id.as_deref() == Some(stream_id)
                    && e.stream_version.unwrap_or(0) >= from_version
            })
            .collect())
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        Ok(self.load_stream(stream_id, 0).await?.len() as u64)
    }

    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        Ok(self
            .visible(0)
            .into_iter()
            .filter(|e| criteria.matches(e))
            .collect())
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>> {
        let mut events = self.visible(after_position);
        events.truncate(limit);
        Ok(events)
    }

    async fn head_position(&self) -> Result<u64> {
        Ok(self.visible(0).last().and_then(|e| e.position).unwrap_or(0))
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        Ok(crate::store::follow::subscribe(
            Arc::new(self.clone()),
            criteria,
            options,
            handler,
        ))
    }
}

#[tokio::test]
async fn the_gap_check_passes_on_a_store_that_waits_for_open_appends() {
    let store = holding(false);
    open_append_is_not_passed_over(&store, &store).await;
}

#[tokio::test]
#[should_panic(
    expected = "store promise broken: a reader following positions never passes over an append held open"
)]
async fn catches_a_reader_that_skips_an_open_append() {
    let store = holding(true);
    open_append_is_not_passed_over(&store, &store).await;
}
