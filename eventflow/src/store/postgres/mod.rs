//! The PostgreSQL event store (feature `postgres`): the production [`EventStore`], with
//! [`PostgresSnapshotStore`] and [`PostgresCheckpointStore`] in the same schema.
//!
//! ```no_run
//! use eventflow::store::postgres::PostgresEventStore;
//! use eventflow::{Event, EventStore, ExpectedVersion};
//! use serde_json::json;
//!
//! # async fn run() -> eventflow::Result<()> {
//! let store = PostgresEventStore::connect("postgres://postgres@127.0.0.1:5432/app").await?;
//! store.migrate().await?; // explicit: constructors never change the schema
//! let placed = Event::new("order.placed", json!({ "order_id": "o-1" }))?;
//! store.append("order-o-1", ExpectedVersion::NoStream, placed).await?;
//! let history = store.load_stream("order-o-1", 0).await?;
//! # Ok(()) }
//! ```
//!
//! # Tables
//! The migrations in the workspace's `migrations/` folder (sqlx format, embedded in the library)
//! create `events`, `snapshots` and `checkpoints` in one schema, `eventflow` unless
//! [`PostgresEventStoreBuilder::schema`] names another. [`PostgresEventStore::migrate`] applies
//! them; nothing else changes the schema.
//!
//! # Global order without gaps, without a global lock
//! A plain `bigserial` position has a hole: a transaction that took position 7 may commit after
//! one that took position 8, and a reader that already moved past 8 never sees 7. Here a
//! position is `(transaction id << 20) + index in the transaction`, and every reader (`read_all`,
//! `load`, `head_position`, subscriptions, the relay) only reads positions below
//! `pg_snapshot_xmin(pg_current_snapshot()) << 20`: rows of transactions that have all
//! finished. A transaction still running has a transaction id at or above that bound, so every
//! position it may still commit is above what any reader has seen; one that rolls back leaves
//! nothing. Writers to different streams take no common lock and proceed in parallel.
//!
//! The price: a transaction that stays open holds back readers (not writers) until it ends, and
//! that includes any write transaction on the same server, since transaction ids are
//! server-wide. Keep transactions short. A read at the head (`read_all` returning less than its
//! limit, `load`, `head_position`) that finds committed events waiting behind such a transaction
//! waits for it, at most [`PostgresEventStoreBuilder::settle_timeout`] (1 s by default), so an
//! append is normally visible to the next global read of the same process. Positions increase in
//! transaction-id order; they are large and not dense (never compute a count from them).
//!
//! # Appends
//! A batch is one statement and one round trip: `unnest` of one array per column (so 10,000
//! events take 12 bind parameters, far below the 65,535 limit), with the stream's version check
//! in the same statement; a single event uses the same statement with plain values. Conflicts
//! are recognized by SQLSTATE `23505` and the constraint name (`events_stream_version_key`,
//! `events_event_id_key`), never by message text. The idempotency rule of [`EventStore`] (every
//! id already stored in this stream: the stored copies come back; some: [`Error::DuplicateEvent`])
//! is checked on the failure path only, so a successful append stays one round trip. A value the
//! server rejects (`\u0000` in JSON, NUL in text) fails the whole batch with
//! [`Error::InvalidArgument`] naming the SQLSTATE; a lost connection is [`Error::Connect`].
//!
//! # Following the store
//! [`subscribe`](EventStore::subscribe), the relay and projection runners follow the global
//! order with [`follow`](crate::store::follow). They are woken by [`EventStore::commit_signal`]:
//! at once for appends of this process, through `LISTEN`/`NOTIFY` (one payload-free notification
//! per channel at most every 2 ms, sent after commit) for other processes, and by polling every
//! [`poll_interval`](PostgresEventStoreBuilder::poll_interval) should a notification be lost.
//! Following uses one pooled connection for `LISTEN` while the store lives.
//!
//! # Store to bus
//! [`with_bus`](PostgresEventStore::with_bus) runs a [`Relay`] (transactional outbox) with its
//! checkpoint in this schema: every committed event reaches the bus at least once, in global
//! order, and nothing of a rolled-back transaction ever does.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool, Postgres, QueryBuilder};
use tokio::sync::watch;

use crate::bus::{EventBus, Handler, Subscription};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::relay::{DEFAULT_RELAY_NAME, Relay, RelayHandle, RelayStatus};
use crate::store::{EventCriteria, EventStore, ExpectedVersion, validate_stream_id};

mod checkpoint;
mod rows;
mod signal;
mod snapshot;
mod sql;

pub use checkpoint::PostgresCheckpointStore;
pub use snapshot::PostgresSnapshotStore;

use rows::{Columns, EventRow, events as row_events, map_sqlx, to_i64, unique_violation};
use signal::Signal;
use sql::{MAX_EVENTS_PER_TX, Sql};

/// The schema used when none is configured.
pub const DEFAULT_SCHEMA: &str = "eventflow";

/// How often followers look for new events when no notification arrives.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a read at the head waits for committed events held back by a slower transaction.
const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times an append with [`ExpectedVersion::Any`] retries after losing a race for the
/// next version of its stream.
const ANY_VERSION_RETRIES: usize = 64;

/// The embedded migrations (`migrations/` at the workspace top).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The PostgreSQL event store. Cheap to clone (shares one pool and one set of background tasks).
#[derive(Clone)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
    /// The relay of a store built [`with_bus`](Self::with_bus).
    relay: Option<Arc<RelayCell>>,
}

/// A bus and the relay publishing to it, started on first use inside a runtime.
struct RelayCell {
    bus: Arc<dyn EventBus>,
    name: String,
    handle: OnceLock<RelayHandle>,
}

struct Inner {
    pool: PgPool,
    sql: Sql,
    target: String,
    poll_interval: Duration,
    settle_timeout: Duration,
    signal: Signal,
}

impl std::fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("target", &self.inner.target)
            .field("schema", &self.inner.sql.schema)
            .finish_non_exhaustive()
    }
}

/// Configures a [`PostgresEventStore`]; from [`PostgresEventStore::builder`].
#[derive(Debug)]
pub struct PostgresEventStoreBuilder {
    pool: PgPool,
    schema: String,
    poll_interval: Duration,
    settle_timeout: Duration,
}

impl PostgresEventStoreBuilder {
    /// Keeps the tables in `schema` (default [`DEFAULT_SCHEMA`]): 1 to 63 characters of
    /// `[a-z0-9_]`, not starting with a digit. Checked by [`build`](Self::build).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How often followers look for new events when no notification arrives (default 500 ms).
    /// Notifications normally wake them at once; this only bounds the delay of a lost one.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a read at the head of the global order (`read_all`, `load`, `head_position`)
    /// waits for events that are committed but held back behind a slower, still open
    /// transaction (default 1 s); see the module docs. Waiting makes an append visible to the
    /// same process's next global read whenever the slower transaction ends in time; after the
    /// timeout the read returns what is safe. Zero never waits.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }

    /// Builds the store. Does not touch the database.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name.
    pub fn build(self) -> Result<PostgresEventStore> {
        let sql = Sql::new(&self.schema)?;
        let target = describe(&self.pool.connect_options());
        Ok(PostgresEventStore {
            relay: None,
            inner: Arc::new(Inner {
                pool: self.pool,
                sql,
                target,
                poll_interval: self.poll_interval,
                settle_timeout: self.settle_timeout,
                signal: Signal::new(),
            }),
        })
    }
}

/// `postgres://user@host:port/db`, without the password.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

impl PostgresEventStore {
    /// A store over `pool` with the tables in the [`DEFAULT_SCHEMA`]. Does not touch the
    /// database; call [`migrate`](Self::migrate) once to create the tables.
    pub fn new(pool: PgPool) -> Self {
        Self::builder(pool)
            .build()
            .unwrap_or_else(|_| unreachable!("the default schema name is valid"))
    }

    /// A builder for a store over `pool` (schema, poll interval).
    pub fn builder(pool: PgPool) -> PostgresEventStoreBuilder {
        PostgresEventStoreBuilder {
            pool,
            schema: DEFAULT_SCHEMA.to_owned(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            settle_timeout: DEFAULT_SETTLE_TIMEOUT,
        }
    }

    /// Connects a pool of up to 10 connections to `url` and returns a store over it, in the
    /// [`DEFAULT_SCHEMA`].
    ///
    /// # Errors
    /// [`Error::Connect`] when the server cannot be reached, [`Error::InvalidArgument`] for a bad
    /// URL.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("invalid PostgreSQL URL: {e}")))?;
        let target = describe(&options);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options)
            .await
            .map_err(|e| Error::Connect {
                backend: rows::BACKEND,
                target,
                source: Box::new(e),
            })?;
        Ok(Self::new(pool))
    }

    /// Applies the embedded migrations to this store's schema, creating the schema if needed.
    /// Safe to call again and from several processes at once (sqlx takes an advisory lock).
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`].
    pub async fn migrate(&self) -> Result<()> {
        migrate_schema(&self.inner.pool, &self.inner.sql).await
    }

    /// Applies the embedded migrations to `schema` over `pool`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name, [`Error::Connect`] or
    /// [`Error::Backend`].
    pub async fn migrate_schema(pool: &PgPool, schema: &str) -> Result<()> {
        migrate_schema(pool, &Sql::new(schema)?).await
    }

    /// This store, also publishing every committed event to `bus`: the transactional outbox.
    ///
    /// A [`Relay`] follows the store in global order from a durable checkpoint (named
    /// [`DEFAULT_RELAY_NAME`], in this schema's `checkpoints` table), publishes with
    /// [`EventBus::publish_batch`] and advances the checkpoint only after the bus accepted the
    /// batch. So every committed event reaches the bus **at least once, in global order**, also
    /// when the process dies between commit and publish (the next relay publishes it), and an
    /// event of a rolled-back transaction never does. The relay starts here when called inside a
    /// Tokio runtime (else with the first append) and stops when the last clone of this store
    /// is dropped. Run one relay per schema and checkpoint name; for other setups build a
    /// [`Relay`] over [`checkpoints`](Self::checkpoints) yourself.
    pub fn with_bus(self, bus: Arc<dyn EventBus>) -> Self {
        self.with_bus_named(bus, DEFAULT_RELAY_NAME)
    }

    /// [`with_bus`](Self::with_bus) with the relay's checkpoint under `name`.
    pub fn with_bus_named(self, bus: Arc<dyn EventBus>, name: impl Into<String>) -> Self {
        let store = PostgresEventStore {
            inner: self.inner,
            relay: Some(Arc::new(RelayCell {
                bus,
                name: name.into(),
                handle: OnceLock::new(),
            })),
        };
        let _ = store.relay();
        store
    }

    /// The relay of a store built with a bus, started on first use inside a runtime.
    fn relay(&self) -> Option<&RelayHandle> {
        let cell = self.relay.as_ref()?;
        if let Some(handle) = cell.handle.get() {
            return Some(handle);
        }
        tokio::runtime::Handle::try_current().ok()?;
        Some(cell.handle.get_or_init(|| {
            // The relay reads through a bus-less handle on the same tables: it must not own
            // the relay that owns it.
            let reader = PostgresEventStore {
                inner: Arc::clone(&self.inner),
                relay: None,
            };
            Relay::new(
                Arc::new(reader),
                Arc::clone(&cell.bus),
                Arc::new(self.checkpoints()),
            )
            .name(cell.name.clone())
            .poll_interval(self.inner.poll_interval)
            .spawn()
        }))
    }

    /// The relay's position, the store's head and the lag (`None` without a bus).
    ///
    /// # Errors
    /// Backend errors reading the head.
    pub async fn relay_status(&self) -> Result<Option<RelayStatus>> {
        match self.relay() {
            Some(relay) => relay.status().await.map(Some),
            None => Ok(None),
        }
    }

    /// Waits until the bus (see [`with_bus`](Self::with_bus)) has accepted every event that was
    /// readable when called. Returns at once for a store without a bus.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout` (for example while the bus keeps failing; the relay
    /// keeps retrying).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let head = self.head_position().await?;
        match self.relay() {
            Some(relay) if head > 0 => relay.wait_for(head, timeout).await,
            _ => Ok(()),
        }
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.sql.schema
    }

    /// A snapshot store over the same pool and schema.
    pub fn snapshots(&self) -> PostgresSnapshotStore {
        PostgresSnapshotStore::from_parts(self.inner.pool.clone(), self.inner.sql.clone())
    }

    /// A checkpoint store over the same pool and schema.
    pub fn checkpoints(&self) -> PostgresCheckpointStore {
        PostgresCheckpointStore::from_parts(self.inner.pool.clone(), self.inner.sql.clone())
    }

    /// Appends like [`append_batch`](EventStore::append_batch) but leaves the transaction open:
    /// nothing is visible to others (and readers of the global order wait at this append's
    /// position) until [`PendingAppend::commit`]; [`PendingAppend::rollback`] or dropping it
    /// undoes it.
    ///
    /// Meant for tests of concurrent readers and for callers coordinating an append with other
    /// work; keep it short, since every global reader waits for it. A conflict or duplicate is
    /// reported as an error without the idempotent retry handling of `append_batch`.
    ///
    /// # Errors
    /// As [`append_batch`](EventStore::append_batch).
    pub async fn begin_append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<PendingAppend> {
        let columns = self.prepare(stream_id, &mut events)?;
        let expected_bind = expected_bind(expected)?;
        let map = |e| map_sqlx(&self.inner.target, e);
        let mut tx = self.inner.pool.begin().await.map_err(map)?;
        let recorded = insert(&self.inner.sql, &mut tx, stream_id, expected_bind, &columns).await;
        match recorded {
            Ok(Some(positions)) => {
                fill(stream_id, &mut events, &positions);
                Ok(PendingAppend {
                    tx,
                    events,
                    store: self.clone(),
                })
            }
            Ok(None) => {
                drop(tx);
                let actual = self.stream_version(stream_id).await?;
                Err(Error::Conflict {
                    stream: stream_id.to_owned(),
                    expected,
                    actual,
                })
            }
            Err(e) => Err(map(e)),
        }
    }

    /// Validates and encodes a batch.
    fn prepare(&self, stream_id: &str, events: &mut [Event]) -> Result<Columns> {
        validate_stream_id(stream_id)?;
        for event in events.iter() {
            event.validate()?;
        }
        if events.len() > MAX_EVENTS_PER_TX {
            return Err(Error::InvalidArgument(format!(
                "a batch holds at most {MAX_EVENTS_PER_TX} events, got {}",
                events.len()
            )));
        }
        let mut ids = std::collections::HashSet::with_capacity(events.len());
        if let Some(dup) = events.iter().find(|e| !ids.insert(e.id)) {
            return Err(Error::InvalidArgument(format!(
                "event id {} appears twice in one batch",
                dup.id
            )));
        }
        Columns::encode(events)
    }

    fn map(&self, error: sqlx::Error) -> Error {
        map_sqlx(&self.inner.target, error)
    }

    fn committed(&self) {
        let _ = self.relay();
        self.inner
            .signal
            .committed(&self.inner.pool, &self.inner.sql);
    }

    /// The safe head and the highest committed position (see `sql::HEAD_AND_TOP`).
    async fn head_and_top(&self) -> Result<(i64, i64)> {
        sqlx::query_as(&self.inner.sql.head_and_top)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))
    }

    /// Waits (at most the settle timeout) until no committed event is held back behind a
    /// slower transaction, and returns the safe head.
    async fn settle(&self) -> Result<i64> {
        let deadline = tokio::time::Instant::now() + self.inner.settle_timeout;
        let mut delay = Duration::from_millis(1);
        loop {
            let (head, top) = self.head_and_top().await?;
            if top <= head || tokio::time::Instant::now() >= deadline {
                return Ok(head);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(10));
        }
    }

    /// One page of the global order, and `(top, head)` of its snapshot when it was not empty.
    async fn read_all_once(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<(Vec<Event>, Option<(i64, i64)>)> {
        let rows: Vec<EventRow> = sqlx::query_as(&self.inner.sql.read_all)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        let top_head = rows.first().and_then(|r| r.top_head);
        Ok((row_events(rows), top_head))
    }

    /// After an append wrote nothing: the idempotency rule first, then the version check.
    /// `Ok(Some(events))` returns the stored copies; `Ok(None)` means "try again" (the version
    /// condition holds now).
    async fn resolve_failure(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        columns: &Columns,
    ) -> Result<Option<Vec<Event>>> {
        let stored: Vec<EventRow> = sqlx::query_as(&self.inner.sql.events_by_id)
            .bind(&columns.ids)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        let stored = row_events(stored);
        if let Some(first) = stored.first() {
            let all_here = stored.len() == columns.ids.len()
                && stored
                    .iter()
                    .all(|e| e.stream_id.as_deref() == Some(stream_id));
            if all_here {
                // Same order as the batch: they were appended together, in order.
                let mut by_id: std::collections::HashMap<_, _> =
                    stored.into_iter().map(|e| (e.id, e)).collect();
                let copies = columns
                    .ids
                    .iter()
                    .filter_map(|id| by_id.remove(id))
                    .collect();
                return Ok(Some(copies));
            }
            let clash = stored
                .iter()
                .find(|e| e.stream_id.as_deref() != Some(stream_id))
                .unwrap_or(first);
            return Err(Error::DuplicateEvent {
                id: clash.id,
                stream: clash.stream_id.clone().unwrap_or_default(),
            });
        }
        let actual = self.stream_version(stream_id).await?;
        expected.check(stream_id, actual).inspect_err(|_| {
            tracing::debug!(
                stream = stream_id,
                %expected,
                actual,
                "postgres event store: version conflict"
            );
        })?;
        Ok(None)
    }
}

/// `-1` for any version, else the version the stream must be at.
fn expected_bind(expected: ExpectedVersion) -> Result<i64> {
    match expected {
        ExpectedVersion::Any => Ok(-1),
        ExpectedVersion::NoStream => Ok(0),
        ExpectedVersion::Exact(v) => to_i64(v, "expected version"),
    }
}

/// Runs the append statement on `conn`. `Ok(None)` when the version condition did not hold.
async fn insert(
    sql: &Sql,
    conn: &mut PgConnection,
    stream_id: &str,
    expected: i64,
    c: &Columns,
) -> std::result::Result<Option<Vec<(i64, i64)>>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = if c.ids.len() == 1 {
        sqlx::query_as(&sql.append_one)
            .bind(stream_id)
            .bind(expected)
            .bind(c.ids[0])
            .bind(&c.event_types[0])
            .bind(c.schema_versions[0])
            .bind(&c.payloads[0])
            .bind(&c.metadata[0])
            .bind(&c.tenant_ids[0])
            .bind(&c.correlation_ids[0])
            .bind(&c.causation_ids[0])
            .bind(&c.sources[0])
            .bind(c.occurred_at[0])
            .fetch_all(conn)
            .await?
    } else {
        let (first_position, first_version, count): (Option<i64>, Option<i64>, i64) =
            sqlx::query_as(&sql.append)
                .bind(stream_id)
                .bind(expected)
                .bind(&c.ids)
                .bind(&c.event_types)
                .bind(&c.schema_versions)
                .bind(&c.payloads)
                .bind(&c.metadata)
                .bind(&c.tenant_ids)
                .bind(&c.correlation_ids)
                .bind(&c.causation_ids)
                .bind(&c.sources)
                .bind(&c.occurred_at)
                .fetch_one(conn)
                .await?;
        match (first_position, first_version) {
            (Some(position), Some(version)) if count > 0 => {
                (0..count).map(|i| (position + i, version + i)).collect()
            }
            _ => Vec::new(),
        }
    };
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(rows))
}

/// Sets `stream_id`, `stream_version` and `position` on the appended events.
fn fill(stream_id: &str, events: &mut [Event], positions: &[(i64, i64)]) {
    for (event, &(position, version)) in events.iter_mut().zip(positions) {
        event.stream_id = Some(stream_id.to_owned());
        event.stream_version = u64::try_from(version).ok();
        event.position = u64::try_from(position).ok();
    }
}

async fn migrate_schema(pool: &PgPool, sql: &Sql) -> Result<()> {
    let target = describe(&pool.connect_options());
    let map = |e| map_sqlx(&target, e);
    // A connection of its own, closed afterwards, so the `search_path` set for the unqualified
    // names in the migrations never leaks into the pool.
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(map)?;
    let result = async {
        conn.execute(sql.create_schema().as_str())
            .await
            .map_err(map)?;
        conn.execute(sql.set_search_path().as_str())
            .await
            .map_err(map)?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| Error::backend(rows::BACKEND, e))
    }
    .await;
    let _ = conn.close().await;
    result
}

/// An append whose transaction is still open; see [`PostgresEventStore::begin_append`].
pub struct PendingAppend {
    tx: sqlx::Transaction<'static, Postgres>,
    events: Vec<Event>,
    store: PostgresEventStore,
}

impl std::fmt::Debug for PendingAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAppend")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl PendingAppend {
    /// The events as they will be recorded (positions and versions already assigned).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Commits the append and returns the recorded events.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`]; the append may then not have happened.
    pub async fn commit(self) -> Result<Vec<Event>> {
        let store = self.store;
        self.tx.commit().await.map_err(|e| store.map(e))?;
        store.committed();
        Ok(self.events)
    }

    /// Rolls the append back: none of its events is ever visible.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`] (the server rolls back a lost transaction
    /// anyway).
    pub async fn rollback(self) -> Result<()> {
        let store = self.store;
        self.tx.rollback().await.map_err(|e| store.map(e))?;
        // Readers held back by this transaction may move on now.
        store.committed();
        Ok(())
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        let columns = self.prepare(stream_id, &mut events)?;
        let expected_bind = expected_bind(expected)?;
        if events.is_empty() {
            let actual = self.stream_version(stream_id).await?;
            expected.check(stream_id, actual)?;
            return Ok(Vec::new());
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut conn = self.inner.pool.acquire().await.map_err(|e| self.map(e))?;
            let result = insert(
                &self.inner.sql,
                &mut conn,
                stream_id,
                expected_bind,
                &columns,
            )
            .await;
            drop(conn);
            let retry = match result {
                Ok(Some(positions)) => {
                    self.committed();
                    fill(stream_id, &mut events, &positions);
                    tracing::debug!(
                        stream = stream_id,
                        count = events.len(),
                        first_position = positions.first().map(|p| p.0),
                        "postgres event store: appended"
                    );
                    return Ok(events);
                }
                Ok(None) => true,
                Err(error) => match unique_violation(&error) {
                    Some("events_stream_version_key" | "events_event_id_key") => true,
                    _ => return Err(self.map(error)),
                },
            };
            debug_assert!(retry);
            if let Some(copies) = self.resolve_failure(stream_id, expected, &columns).await? {
                return Ok(copies);
            }
            // The version condition holds now (we lost a race under `Any`, or the winner rolled
            // back): try again, a bounded number of times.
            if attempts >= ANY_VERSION_RETRIES {
                let actual = self.stream_version(stream_id).await?;
                return Err(Error::Conflict {
                    stream: stream_id.to_owned(),
                    expected,
                    actual,
                });
            }
        }
    }

    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>> {
        if stream_id.contains('\0') {
            // No stored stream id can hold NUL (they are validated on append).
            return Ok(Vec::new());
        }
        let rows: Vec<EventRow> = sqlx::query_as(&self.inner.sql.load_stream)
            .bind(stream_id)
            .bind(to_i64(from_version, "stream version")?)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(row_events(rows))
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        if stream_id.contains('\0') {
            return Ok(0);
        }
        let version: i64 = sqlx::query_scalar(&self.inner.sql.stream_version)
            .bind(stream_id)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(u64::try_from(version).unwrap_or(0))
    }

    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        // Text can never hold NUL in PostgreSQL, so a criterion containing one matches nothing
        // (and would only make the server reject the query).
        let has_nul = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
        if has_nul(&criteria.correlation_id)
            || has_nul(&criteria.tenant_id)
            || has_nul(&criteria.stream_id)
        {
            return Ok(Vec::new());
        }
        if criteria.limit == Some(0) {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Postgres>::new(&self.inner.sql.criteria_select);
        if !criteria.event_types.is_empty() {
            let types: Vec<&str> = criteria
                .event_types
                .iter()
                .map(String::as_str)
                .filter(|t| !t.contains('\0'))
                .collect();
            if types.is_empty() {
                return Ok(Vec::new());
            }
            q.push(sql::CRITERIA_EVENT_TYPES).push_bind(types).push(")");
        }
        if let Some(since) = criteria.since {
            q.push(sql::CRITERIA_SINCE).push_bind(since);
        }
        if let Some(until) = criteria.until {
            q.push(sql::CRITERIA_UNTIL).push_bind(until);
        }
        if let Some(c) = &criteria.correlation_id {
            q.push(sql::CRITERIA_CORRELATION).push_bind(c.as_str());
        }
        if let Some(t) = &criteria.tenant_id {
            q.push(sql::CRITERIA_TENANT).push_bind(t.as_str());
        }
        if let Some(s) = &criteria.stream_id {
            q.push(sql::CRITERIA_STREAM).push_bind(s.as_str());
        }
        if let Some(after) = criteria.after_position {
            q.push(sql::CRITERIA_AFTER)
                .push_bind(to_i64(after, "position")?);
        }
        q.push(sql::CRITERIA_ORDER);
        if let Some(limit) = criteria.limit {
            q.push(sql::CRITERIA_LIMIT)
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        // Let committed events held back by a slower transaction through first (bounded).
        self.settle().await?;
        let rows: Vec<EventRow> = q
            .build_query_as()
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(row_events(rows))
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = to_i64(after_position, "position")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (events, top_head) = self.read_all_once(after, limit).await?;
        if events.len() as i64 >= limit {
            return Ok(events);
        }
        // At the head: if nothing committed waits behind a slower transaction and the read saw
        // everything up to the safe head, it is complete. Otherwise wait for the slower one (at
        // most the settle timeout) and read again.
        let (top, head) = match top_head {
            Some(top_head) => top_head,
            None => {
                let (head, top) = self.head_and_top().await?;
                (top, head)
            }
        };
        let seen = events
            .last()
            .and_then(|e| e.position)
            .map_or(after, |p| i64::try_from(p).unwrap_or(i64::MAX));
        if top <= head && head <= seen {
            return Ok(events);
        }
        self.settle().await?;
        Ok(self.read_all_once(after, limit).await?.0)
    }

    async fn head_position(&self) -> Result<u64> {
        Ok(u64::try_from(self.settle().await?).unwrap_or(0))
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner
            .signal
            .subscribe(&self.inner.pool, &self.inner.sql)
    }

    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: crate::store::SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        Ok(crate::store::follow::subscribe_with(
            Arc::new(self.clone()),
            criteria,
            options,
            handler,
            self.inner.poll_interval,
        ))
    }
}
