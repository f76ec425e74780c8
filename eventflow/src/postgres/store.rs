//! [`PostgresEventStore`]: construction and configuration, the handles it shares (pool,
//! schema, snapshot and checkpoint stores) and its [`EventStore`] implementation, whose bodies
//! live beside it by concern (`append.rs`, `read.rs`, `subscribe.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::watch;

use super::checkpoint::PostgresCheckpointStore;
use super::config::PostgresConfig;
use super::connect::{connect_pool, describe, migrate_schema};
use super::error::map_sqlx;
use super::schema::{DEFAULT_SCHEMA, Schema};
use super::signal::Signal;
use super::snapshot::PostgresSnapshotStore;
use super::sql::Sql;
use crate::bus::{Handler, Subscription};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::{EventCriteria, EventStore, ExpectedVersion, SubscribeOptions};

/// How often followers look for new events when no notification arrives.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a read at the head waits for committed events held back by a slower transaction.
const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The PostgreSQL event store. Cheap to clone (shares one pool and one set of background tasks).
#[derive(Clone)]
pub struct PostgresEventStore {
    pub(super) inner: Arc<Inner>,
}

/// What every clone of a store shares.
pub(super) struct Inner {
    pub(super) pool: PgPool,
    pub(super) sql: Sql,
    /// The server, for errors (no password).
    pub(super) target: String,
    pub(super) poll_interval: Duration,
    pub(super) settle_timeout: Duration,
    /// Whether `load` reads only below the safe horizon and waits for it (opt-in).
    pub(super) strict_load: bool,
    pub(super) signal: Signal,
    /// Whether this store checked that new positions continue above the stored ones
    /// (`continuity.rs`).
    pub(super) positions_checked: std::sync::atomic::AtomicBool,
    /// The tenant of a tenant handle (`tenant.rs`).
    pub(super) tenant: Option<String>,
}

impl std::fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("target", &self.inner.target)
            .field("schema", &self.inner.sql.schema.name())
            .field("tenant", &self.inner.tenant)
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
    strict_load: bool,
    tenant: Option<String>,
}

impl PostgresEventStoreBuilder {
    /// The tenant of a handle whose pool sets `eventflow.tenant` (see `tenant.rs`).
    pub(super) fn tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }

    /// Keeps the tables in `schema` (default [`DEFAULT_SCHEMA`]): 1 to 63 characters of
    /// `[a-z0-9_]`, not starting with a digit or `pg_`. Checked by [`build`](Self::build).
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

    /// How long a read at the head of the global order (`read_all`, `head_position`, and
    /// `load` with [`strict_load`](Self::strict_load)) waits for events that are committed but
    /// held back behind a slower, still open transaction (default 1 s); see the module docs.
    /// Waiting makes an append visible to the same process's next global read whenever the
    /// slower transaction ends in time; after the timeout the read returns what is safe. Zero
    /// never waits. `load_stream` and (by default) `load` never wait.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }

    /// Makes [`load`](EventStore::load) a global-order reader (default off): it then reads only
    /// below the safe horizon and first waits (at most the
    /// [`settle_timeout`](Self::settle_timeout)) for committed events held back behind a slower
    /// transaction, so a caller that pages through `load` with
    /// [`after_position`](crate::store::EventCriteria::after_position) never skips an event
    /// committed late. By default `load` reads every committed row at once and never waits (a
    /// point-in-time query); follow the store with `subscribe` or `read_all` instead.
    pub fn strict_load(mut self, strict: bool) -> Self {
        self.strict_load = strict;
        self
    }

    /// Builds the store. Does not touch the database.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name.
    pub fn build(self) -> Result<PostgresEventStore> {
        let sql = Sql::new(Schema::new(&self.schema)?);
        let target = describe(&self.pool.connect_options());
        Ok(PostgresEventStore {
            inner: Arc::new(Inner {
                pool: self.pool,
                sql,
                target,
                poll_interval: self.poll_interval,
                settle_timeout: self.settle_timeout,
                strict_load: self.strict_load,
                signal: Signal::new(),
                positions_checked: std::sync::atomic::AtomicBool::new(false),
                tenant: self.tenant,
            }),
        })
    }
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
            strict_load: false,
            tenant: None,
        }
    }

    /// Connects to `url` with the default [`PostgresConfig`] (a pool of up to 10 connections,
    /// 5 s connect timeout) and returns a store over it, in the [`DEFAULT_SCHEMA`].
    ///
    /// # Errors
    /// [`Error::Connect`] when the server cannot be reached within 5 s,
    /// [`Error::InvalidArgument`] for a bad URL.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(PostgresConfig::new(url)).await
    }

    /// Connects as `config` says (pool size, timeouts, TLS, application name) and returns a
    /// store over the pool, in `config.schema`. One connection is made and closed to check the
    /// server is reachable; the pool then connects on demand.
    ///
    /// # Errors
    /// [`Error::Connect`] when no connection is made within `config.connect_timeout` (a server
    /// that is down, refuses TLS or the credentials), [`Error::InvalidArgument`] for a bad URL
    /// or configuration. Neither ever shows the password.
    pub async fn connect_with(config: PostgresConfig) -> Result<Self> {
        let pool = connect_pool(&config).await?;
        Self::builder(pool)
            .schema(config.schema)
            .poll_interval(config.poll_interval)
            .tenant(config.tenant)
            .build()
    }

    /// Applies the embedded migrations to this store's schema, creating the schema if needed.
    /// Safe to call again and from any number of processes at once: the whole migration, the
    /// schema's creation included, runs on a connection of its own under one advisory lock per
    /// schema, so one process applies and the others wait, then find nothing left to do.
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
        migrate_schema(pool, &Sql::new(Schema::new(schema)?)).await
    }

    /// The pool this store uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        self.inner.sql.schema.name()
    }

    /// A snapshot store over the same pool and schema.
    pub fn snapshots(&self) -> PostgresSnapshotStore {
        PostgresSnapshotStore::from_parts(self.inner.pool.clone(), self.inner.sql.clone())
    }

    /// A checkpoint store over the same pool and schema.
    pub fn checkpoints(&self) -> PostgresCheckpointStore {
        PostgresCheckpointStore::from_parts(self.inner.pool.clone(), self.inner.sql.clone())
    }

    /// A lease store over the same pool and schema: leases, worker membership, and fenced
    /// writes to this schema's checkpoints (see [`crate::lease`]).
    pub fn leases(&self) -> super::PostgresLeaseStore {
        super::PostgresLeaseStore::from_parts(self.inner.pool.clone(), self.inner.sql.clone())
    }

    /// A dead-letter store over the same pool and schema (where a relay attached with
    /// [`with_bus`](crate::relay::WithBus::with_bus) parks events the bus will never take, and
    /// readers park stored rows they cannot decode, under [`UNDECODABLE_SOURCE`](super::UNDECODABLE_SOURCE)).
    pub fn dead_letters(&self) -> super::PostgresDeadLetterStore {
        super::PostgresDeadLetterStore::from_parts(self.inner.pool.clone(), self.inner.sql.clone())
    }

    pub(super) fn map(&self, error: sqlx::Error) -> Error {
        map_sqlx(&self.inner.target, error)
    }

    /// After an append of this process committed (or a pending one rolled back); `notified`
    /// when its statement sent the notification to other processes itself.
    pub(super) fn committed(&self, notified: bool) {
        self.inner
            .signal
            .committed(&self.inner.pool, &self.inner.sql, notified);
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        let started = std::time::Instant::now();
        let result = self.append_batch_now(stream_id, expected, events).await;
        crate::metrics::appended("postgres", started, result.as_ref().map_or(0, Vec::len));
        result
    }

    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>> {
        self.load_stream_now(stream_id, from_version).await
    }

    async fn load_stream_stored(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<crate::store::StoredEvent>> {
        self.load_stream_stored_now(stream_id, from_version).await
    }

    async fn load_snapshot_and_tail(
        &self,
        snapshots: &dyn crate::store::SnapshotStore,
        stream_id: &str,
        state_version: u32,
    ) -> Result<
        Option<(
            Option<crate::store::Snapshot>,
            Vec<crate::store::StoredEvent>,
        )>,
    > {
        let ours = super::snapshot::colocation(&self.inner.target, self.schema());
        if snapshots.colocation().as_deref() != Some(ours.as_str()) {
            return Ok(None);
        }
        Ok(Some(
            PostgresEventStore::load_snapshot_and_tail(self, stream_id, state_version).await?,
        ))
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        self.stream_version_now(stream_id).await
    }

    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        self.load_now(criteria).await
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>> {
        self.read_all_now(after_position, limit).await
    }

    async fn head_position(&self) -> Result<u64> {
        self.head_position_now().await
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.commit_signal_now()
    }

    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        self.subscribe_now(criteria, options, handler).await
    }
}
