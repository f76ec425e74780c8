//! The embedded, durable SQLite backend (feature `sqlite`): [`SqliteEventStore`] with its
//! snapshot, checkpoint and dead-letter stores, transactional projections
//! ([`SqliteProjection`], [`projection_runner`]), saga state ([`SqliteSagaStore`]) and leases
//! with fencing for the processes of one node ([`SqliteLeaseStore`]), all in
//! one database file. For a service that must keep its events across restarts without a
//! database server, and for edge nodes that forward their events to a central store when their
//! link returns ([`Forwarder`](crate::relay::Forwarder)).
//!
//! ```
//! use eventflow::sqlite::SqliteEventStore;
//! use eventflow::{Event, EventStore, ExpectedVersion};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eventflow::Result<()> {
//! let dir = std::env::temp_dir().join(format!("eventflow-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).ok();
//! let store = SqliteEventStore::open(dir.join("events.db")).await?; // created if missing
//! let placed = Event::new("order.placed", json!({ "order_id": "o-1" }))?;
//! store.append("order-o-1", ExpectedVersion::Any, placed).await?;
//! assert!(!store.load_stream("order-o-1", 0).await?.is_empty());
//! # store.close().await;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
//!
//! # The file
//! [`SqliteEventStore::open`] creates the file if missing, sets WAL mode (readers never wait
//! for the writer) and `synchronous = FULL` (an acknowledged append survives a power cut; see
//! [`SqliteEventStoreBuilder::synchronous_normal`] to trade that for speed), and applies the
//! embedded migrations (`migrations/sqlite/` of the workspace, sqlx format, carried by the
//! packaged crate through the `eventflow/migrations` link). `":memory:"` ([`IN_MEMORY`]) opens
//! a private in-memory database over a single connection, gone with the store.
//!
//! # Global order without gaps
//! SQLite runs one write transaction at a time, for every process sharing the file. Each
//! append opens its transaction with `BEGIN IMMEDIATE`, which takes the write lock before it
//! reads anything (this process's writers also queue on an async mutex first, instead of
//! spinning in SQLite's busy handler), and a position is the row id, assigned inside that
//! transaction. So a transaction that commits later always holds higher positions than every
//! one that committed before it, a rolled-back one leaves nothing, and a reader's snapshot is
//! always a prefix of the global order: a reader following positions can never pass over an
//! event that commits later. Positions are dense, so a lag in positions is a count of events.
//!
//! # Appends
//! A batch is one `INSERT ... SELECT` (chunks of 2,000 rows, below SQLite's bind limit) that
//! reads the stream's version and inserts only when it matches. A unique violation (SQLite's
//! extended code, through sqlx's `ErrorKind`) or a version mismatch leads to the idempotency
//! rule of [`EventStore`](crate::EventStore), checked inside the same transaction.
//!
//! # Following the store
//! Subscriptions, relays, forwarders and projection runners follow the global order with
//! [`follow`](crate::store::follow); this process's appends wake them at once, appends of
//! other processes within the poll interval (100 ms by default).
//!
//! # Code map
//! `store.rs` (opening, the writer lock, the `EventStore` impl), `append.rs`, `read.rs`,
//! `side.rs` (snapshots, checkpoints, dead letters), `lease.rs` (leases of one node's processes),
//! `projection.rs`, `saga.rs`, `rows.rs`
//! (row codecs), `sql.rs` (every statement), `error.rs` (the one sqlx error mapper). Nothing
//! outside this module and `postgres` imports sqlx.

mod append;
mod error;
mod lease;
mod projection;
mod read;
mod rows;
mod saga;
mod side;
mod sql;
mod store;

/// The connection pool a store uses (see [`SqliteEventStore::pool`]), re-exported so a read
/// model's queries need no `sqlx` line of their own.
pub use sqlx::sqlite::SqlitePool;

pub use append::SqlitePendingAppend;
pub use lease::SqliteLeaseStore;
pub use projection::{SqliteProjection, SqliteTransaction, projection_runner};
pub use saga::SqliteSagaStore;
pub use side::{SqliteCheckpointStore, SqliteDeadLetterStore, SqliteSnapshotStore};
pub use store::{IN_MEMORY, SqliteEventStore, SqliteEventStoreBuilder};
