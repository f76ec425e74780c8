//! The store conformance kit: every [`EventStore`] backend runs these checks.
//!
//! Each check takes a fresh, empty store (`&dyn EventStore`) — or, for the checks that need
//! several instances, the factory — and panics with a message that starts with
//! `store promise broken: <promise>` when the backend breaks it. [`run`] runs every check
//! every store must pass plus those the store's [`Capabilities`] imply, each on a new store from
//! a factory that takes a [`Scope`] (stores made for one scope share their storage), and
//! returns a [`Report`] of what ran and what was skipped:
//!
//! ```
//! # async fn demo() {
//! use std::sync::Arc;
//! use eventflow::store::memory::InMemoryEventStore;
//! use eventflow::testing::conformance::store::{self, Capabilities, TestStore};
//!
//! let report = store::run(Capabilities::default(), |_scope| async {
//!     TestStore::new(Arc::new(InMemoryEventStore::new()))
//! })
//! .await;
//! assert!(!report.has_run("open_append_is_not_passed_over"));
//! # }
//! ```
//!
//! The checks do not assume positions start at 1 or have no holes (a PostgreSQL sequence may
//! skip numbers); they assume only that positions increase in commit order and that the store
//! holds nothing but what the check wrote. Timestamps are kept at microsecond precision, the
//! finest PostgreSQL stores.

/// Panics naming the broken promise.
macro_rules! ensure {
    ($cond:expr, $promise:expr, $($detail:tt)+) => {
        if !$cond {
            panic!("store promise broken: {}: {}", $promise, format_args!($($detail)+));
        }
    };
}

mod append;
mod durable;
mod gap;
mod read;
mod subscribe;
mod support;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

pub use append::{
    append_and_load_stream, batch_atomicity, claimed_store_fields_are_overwritten,
    expected_version_semantics, idempotent_retry, invalid_stream_ids, large_batch,
    partial_duplicate, racing_writers,
};
pub use durable::committed_events_survive_a_new_instance;
pub use gap::{open_append_is_not_passed_over, reader_never_skips_under_concurrent_writes};
pub use read::{
    concurrent_streams_global_order, head_position, load_criteria, load_stream_from_version,
    read_all_paging,
};
pub use subscribe::subscribe_catch_up_then_live;

use crate::error::Result;
use crate::event::Event;
use crate::store::{EventStore, ExpectedVersion};
pub use crate::testing::conformance::{Report, Scope};

/// What a store promises beyond what every store must do; each capability turns on the checks
/// that hold it to that promise. `Capabilities::default()` declares nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The store can begin an append and hold its transaction open while others commit (the
    /// factory's [`TestStore`] carries the [`HoldsAppendOpen`] hook). Check:
    /// [`open_append_is_not_passed_over`].
    pub can_hold_append_open: bool,
    /// Stores made for the same scope share durable storage: a new instance reads and follows
    /// what another committed. Check: [`committed_events_survive_a_new_instance`].
    pub durable: bool,
}

/// What a factory hands the kit: the store under test and, for `can_hold_append_open`, the hook
/// that holds an append of that store open.
#[derive(Clone)]
pub struct TestStore {
    /// The store under test.
    pub store: Arc<dyn EventStore>,
    /// Begins appends on `store` and holds them open.
    pub hold_open: Option<Arc<dyn HoldsAppendOpen>>,
}

impl TestStore {
    /// A store without hooks.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        TestStore {
            store,
            hold_open: None,
        }
    }

    /// Adds the hook that holds appends of this store open.
    pub fn with_hold_open(mut self, hook: Arc<dyn HoldsAppendOpen>) -> Self {
        self.hold_open = Some(hook);
        self
    }
}

impl fmt::Debug for TestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestStore")
            .field("hold_open", &self.hold_open.is_some())
            .finish_non_exhaustive()
    }
}

/// The hook behind capability `can_hold_append_open`: begins an append and holds its
/// transaction open (as `PostgresEventStore::begin_append` does), so the kit can check that no
/// reader passes over it.
#[async_trait]
pub trait HoldsAppendOpen: Send + Sync {
    /// Appends like [`EventStore::append_batch`] but leaves the append open: nothing of it is
    /// visible until [`OpenAppend::commit`].
    ///
    /// # Errors
    /// As [`EventStore::append_batch`].
    async fn begin_append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Box<dyn OpenAppend>>;

    /// A store over the same storage that the check reads through while an append is open;
    /// `None` (the default) reads through the store under test. PostgreSQL gives one that
    /// waits only briefly for open transactions, since every global reader on the server waits
    /// for them.
    fn reader(&self) -> Option<Arc<dyn EventStore>> {
        None
    }
}

/// An append held open by [`HoldsAppendOpen::begin_append`].
#[async_trait]
pub trait OpenAppend: Send {
    /// The events as they will be recorded (positions and versions assigned).
    fn events(&self) -> &[Event];

    /// Commits the append and returns the recorded events.
    ///
    /// # Errors
    /// When the backend fails; the append may then not have happened.
    async fn commit(self: Box<Self>) -> Result<Vec<Event>>;

    /// Rolls the append back: none of its events is ever visible.
    ///
    /// # Errors
    /// When the backend fails.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// Runs every check every store must pass, plus those `capabilities` imply, each on a fresh
/// store from `make_store` for a fresh [`Scope`].
///
/// # Panics
/// When a check fails (the message names the broken promise), or when `capabilities` declares
/// `can_hold_append_open` and the factory's [`TestStore`] has no hook.
pub async fn run<F, Fut>(capabilities: Capabilities, make_store: F) -> Report
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = TestStore>,
{
    let mut report = Report::default();
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$(
            let store = make_store(Scope::new(stringify!($check))).await.store;
            tracing::debug!(check = stringify!($check), "store conformance check");
            $check(&*store).await;
            report.record(stringify!($check), None, true);
        )*};
    }
    run!(
        append_and_load_stream,
        load_stream_from_version,
        expected_version_semantics,
        racing_writers,
        concurrent_streams_global_order,
        reader_never_skips_under_concurrent_writes,
        batch_atomicity,
        idempotent_retry,
        partial_duplicate,
        load_criteria,
        read_all_paging,
        head_position,
        subscribe_catch_up_then_live,
        invalid_stream_ids,
        large_batch,
        claimed_store_fields_are_overwritten,
    );
    let gap = "open_append_is_not_passed_over";
    if capabilities.can_hold_append_open {
        let under_test = make_store(Scope::new(gap)).await;
        let Some(hook) = under_test.hold_open else {
            panic!(
                "store conformance: the store declares can_hold_append_open, but its TestStore \
                 has no hold_open hook"
            );
        };
        open_append_is_not_passed_over(&*under_test.store, &*hook).await;
    }
    report.record(
        gap,
        Some("can_hold_append_open"),
        capabilities.can_hold_append_open,
    );
    if capabilities.durable {
        committed_events_survive_a_new_instance(&make_store).await;
    }
    report.record(
        "committed_events_survive_a_new_instance",
        Some("durable"),
        capabilities.durable,
    );
    tracing::info!(%report, "store conformance kit passed");
    report
}
