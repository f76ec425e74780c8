//! The PostgreSQL backend (feature `postgres`), in one home: the production
//! [`EventStore`](crate::EventStore) ([`PostgresEventStore`]), with [`PostgresSnapshotStore`],
//! [`PostgresCheckpointStore`], transactional projections ([`PgProjection`],
//! [`projection_runner`]) and saga state ([`PostgresSagaStore`]) in the same schema.
//!
//! Every statement lives in `sql.rs`, one schema-name rule in `schema.rs` (1 to 63 characters
//! of `[a-z0-9_]`, not starting with a digit or `pg_`; every constructor taking a schema checks
//! it the same way), and one mapping of sqlx errors in `error.rs`: whichever path fails, a lost
//! connection is [`Error::Connect`](crate::Error::Connect), a value the server rejects is
//! [`Error::InvalidArgument`](crate::Error::InvalidArgument), a closed pool is
//! [`Error::Closed`](crate::Error::Closed).
//!
//! ```no_run
//! use eventflow::postgres::PostgresEventStore;
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
//! The migrations in the workspace's `migrations/` folder (sqlx format, embedded in the library
//! through the `eventflow/migrations` link, so the published crate carries them) create
//! `events`, `snapshots`, `checkpoints`, the `saga_*` tables, `dead_letters`, `undecodable_events`, `leases`, `lease_members`, `position_base`, `tenant_roles`
//! and `projection_controls` (an operator's pause of a [`PgProjection`]) in one schema, `eventflow` unless
//! [`PostgresEventStoreBuilder::schema`] names another. [`PostgresEventStore::migrate`] applies
//! them; nothing else changes the schema.
//!
//! # Global order without gaps, without a global lock
//! A plain `bigserial` position has a hole: a transaction that took position 7 may commit after
//! one that took position 8, and a reader that already moved past 8 never sees 7. Here a
//! position is `(transaction id << 20) + index in the transaction`, and every reader of the
//! global order (`read_all`, `head_position`, subscriptions, the relay, projection runners) only
//! reads positions below `pg_snapshot_xmin(pg_current_snapshot()) << 20`: rows of transactions
//! that have all finished. A transaction still running has a transaction id at or above that bound, so every
//! position it may still commit is above what any reader has seen; one that rolls back leaves
//! nothing. Writers to different streams take no common lock and proceed in parallel.
//!
//! The price: a transaction that stays open holds back global-order readers (not writers) until
//! it ends, and that includes any write transaction on the same server, since transaction ids
//! are server-wide. Keep transactions short; [`PostgresEventStore::horizon`] shows what holds
//! readers back (the oldest running or prepared transaction, its age and pid). A read at the
//! head (`read_all` returning less than its limit, `head_position`) that finds committed events
//! waiting behind such a transaction waits for it, at most
//! [`PostgresEventStoreBuilder::settle_timeout`] (1 s by default), so an append is normally
//! visible to the next global read of the same process.
//!
//! Reads that are not global-order readers never wait: `load_stream` (and so
//! `Repository::load`) and `load` read every committed row of their query at once, whatever is
//! open elsewhere ([`PostgresEventStoreBuilder::strict_load`] makes `load` a global-order reader
//! again). The library holds no transaction id across user code: a projection batch takes an
//! advisory lock, not a row lock, and writes its checkpoint last (see [`PgProjection`]).
//! Reading the global order inside a transaction that pins the horizon at itself
//! ([`PostgresEventStore::read_all_on`]) fails with
//! [`Error::ReadInTransaction`](crate::Error::ReadInTransaction) instead of freezing. Positions increase in
//! transaction-id order; they are large and not dense (never compute a count from them).
//!
//! # Appends
//! A batch is one statement and one round trip: `unnest` of one array per column (so 10,000
//! events take 12 bind parameters, far below the 65,535 limit), with the stream's version check
//! in the same statement; a single event uses the same statement with plain values. Conflicts
//! are recognized by SQLSTATE `23505` and the constraint name (`events_stream_version_key`,
//! `events_event_id_key`), never by message text. The idempotency rule of
//! [`EventStore`](crate::EventStore) (every id already stored in this stream: the stored copies
//! come back; some: [`Error::DuplicateEvent`](crate::Error::DuplicateEvent)) is checked on the
//! failure path only, so a successful append stays one round trip. A value the server rejects
//! (`\u0000` in JSON, NUL in text) fails the whole batch with
//! [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the SQLSTATE; a lost
//! connection is [`Error::Connect`](crate::Error::Connect).
//!
//! # Following the store
//! [`subscribe`](crate::store::EventStoreExt::subscribe), the relay and projection runners follow the
//! global order with [`follow`](crate::store::follow). They are woken by
//! [`EventStore::commit_signal`](crate::EventStore::commit_signal): at once for appends of this
//! process, through `LISTEN`/`NOTIFY` (one payload-free notification in flight per store at
//! most, sent after commit; commits meanwhile share the next one) for other processes, and by polling every
//! [`poll_interval`](PostgresEventStoreBuilder::poll_interval) should a notification be lost.
//! Following uses one pooled connection for `LISTEN` while the store lives.
//!
//! # Rows no reader can decode
//! A stored row whose payload or metadata serde_json cannot parse (nested past 127 levels,
//! written by an older version or another tool) never stops a reader: `read_all`,
//! `load_stream`, `load`, subscriptions and the relay skip it, and the first to meet it parks
//! it, once, in [`dead_letters`](PostgresEventStore::dead_letters) under
//! [`UNDECODABLE_SOURCE`], with its stored text (the shape is documented there).
//!
//! # Store to bus
//! [`with_bus`](crate::relay::WithBus::with_bus) runs a [`Relay`](crate::Relay) (transactional
//! outbox) with its checkpoint in this schema: every committed event reaches the bus at least
//! once, in global order, and nothing of a rolled-back transaction ever does.
//!
//! # Production settings, the caller's transaction, tenants, restores
//! [`PostgresConfig`] and [`PostgresEventStore::connect_with`] set the pool, the connect and
//! statement timeouts, TLS (rustls: `sslmode`, a CA file, client certificates), the schema and
//! the application name. [`PostgresEventStore::append_in`] appends inside the caller's open
//! transaction (the outbox pattern). [`PostgresEventStore::tenant`] and
//! [`PostgresConfig::tenant`] scope a handle to one tenant, enforced by row-level security for
//! roles that do not own the tables ([`PostgresEventStore::grant_tenant`]). After a restore
//! into a cluster with a younger transaction-id counter, the store moves new positions above
//! the stored ones (a stored offset) before its first append and in `migrate()`; at 2^43
//! transactions an append fails with [`Error::PositionsExhausted`](crate::Error::PositionsExhausted).
//!
//! # Code map
//! `store.rs` (construction, the `EventStore` impl), `append.rs`, `read.rs`, `subscribe.rs`
//! (the relay too) by concern; `signal.rs` (`LISTEN`/`NOTIFY`), `rows.rs` (row codecs),
//! `undecodable.rs` (parking rows no reader can decode), `checkpoint.rs`, `snapshot.rs`,
//! `dead_letter.rs`, `projection.rs`, `saga.rs`; `inspect.rs` (operator reads for the
//! `eventflow` command line); `config.rs`, `connect.rs` (pools,
//! migrations), `in_transaction.rs`, `continuity.rs`, `tenant.rs`, `sql.rs`, `schema.rs`,
//! `error.rs`. Nothing outside this module imports sqlx.

mod append;
mod checkpoint;
mod config;
mod connect;
mod continuity;
mod dead_letter;
mod error;
mod horizon;
mod in_transaction;
mod inspect;
mod lease;
mod projection;
mod read;
mod rows;
mod saga;
mod schema;
mod signal;
mod snapshot;
mod sql;
mod store;
mod subscribe;
mod tenant;
mod undecodable;

#[cfg(test)]
mod tests;

/// The connection pool the constructors take (and its options), re-exported so a service needs
/// no `sqlx` line of its own in `Cargo.toml`: `PgPoolOptions::new().max_connections(20)
/// .connect(url)`, or [`PostgresEventStore::connect`] with a URL.
///
/// ```no_run
/// use eventflow::postgres::{PgPoolOptions, PostgresEventStore};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = PgPoolOptions::new()
///     .max_connections(20)
///     .connect("postgres://postgres@127.0.0.1:5432/test")
///     .await?;
/// let store = PostgresEventStore::builder(pool).schema("orders").build()?;
/// store.migrate().await?;
/// # Ok(())
/// # }
/// ```
pub use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgSslMode};

pub use append::PendingAppend;
pub use checkpoint::PostgresCheckpointStore;
pub use config::PostgresConfig;
pub use dead_letter::PostgresDeadLetterStore;
pub use horizon::{HolderKind, HorizonHolder, HorizonStatus};
pub use inspect::{CheckpointSummary, HandledEvent, SagaSummary, StreamSummary};
pub use lease::{PostgresLeaseStore, fenced_checkpoint};
pub use projection::{PgProjection, PgTransaction, partitioned_runner, projection_runner};
pub use saga::PostgresSagaStore;
pub use schema::DEFAULT_SCHEMA;
pub use snapshot::PostgresSnapshotStore;
pub use store::{PostgresEventStore, PostgresEventStoreBuilder};
pub use undecodable::UNDECODABLE_SOURCE;
