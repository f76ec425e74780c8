//! Transactional PostgreSQL projections (feature `postgres`): the read model and the checkpoint
//! commit together.
//!
//! A [`PgProjection`]'s handler receives the batch's transaction and writes its read model in
//! it; the runner advances the projection's checkpoint (the `checkpoints` table of the event
//! store's schema, the one `PostgresCheckpointStore` reads) in the same transaction and commits
//! once per batch. **A crash at any point either keeps the whole batch
//! (read model and checkpoint) or none of it, so no event is ever applied twice.**
//!
//! The runner also locks the checkpoint row (`SELECT ... FOR UPDATE`) and checks it still holds
//! the position the batch was read from, so two runners of one projection (two processes, or a
//! live loop and a rebuild) never apply the same batch twice either.
//!
//! Each batch's transaction runs with `search_path` set to the schema (`SET LOCAL`), so the
//! handler's SQL can name its read-model tables unqualified and they live next to the store's.
//!
//! ```no_run
//! use std::sync::Arc;
//! use eventflow::postgres::{PgProjection, PgTransaction, PostgresEventStore, projection_runner};
//! use eventflow::{Event, HandlerResult};
//!
//! struct OrderTotals;
//!
//! #[async_trait::async_trait]
//! impl PgProjection for OrderTotals {
//!     fn name(&self) -> &str { "order-totals" }
//!     fn patterns(&self) -> Vec<String> { vec!["order.placed".into()] }
//!     async fn handle(&self, tx: &mut PgTransaction, event: &Event) -> HandlerResult {
//!         let total = event.payload["total"].as_i64().unwrap_or(0);
//!         sqlx::query("INSERT INTO order_totals (day, total) VALUES (current_date, $1)
//!                      ON CONFLICT (day) DO UPDATE SET total = order_totals.total + $1")
//!             .bind(total)
//!             .execute(&mut **tx)
//!             .await?;
//!         Ok(())
//!     }
//!     async fn reset(&self, tx: &mut PgTransaction) -> HandlerResult {
//!         sqlx::query("TRUNCATE order_totals").execute(&mut **tx).await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo(store: PostgresEventStore) -> eventflow::Result<()> {
//! store.migrate().await?; // events, checkpoints, saga tables
//! let (pool, schema) = (store.pool().clone(), store.schema().to_owned());
//! let runner = projection_runner(Arc::new(store), pool, &schema, OrderTotals)?;
//! let _task = runner.start();
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{PgPool, Postgres};

use super::connect::describe;
use super::error::map_sqlx;
use super::schema::Schema;
use super::sql::Sql;
use crate::bus::HandlerResult;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::projection::{Applier, ApplyError, Filter, ProjectionRunner, guarded, position_of};
use crate::store::EventStore;

/// The transaction a [`PgProjection`] writes its read model in.
pub type PgTransaction = sqlx::Transaction<'static, Postgres>;

/// A projection whose read model lives in PostgreSQL and is written in the runner's
/// transaction (see the module docs).
///
/// Contract as [`Projection`](crate::projection::Projection), except delivery is exactly once:
/// an event's writes commit with the checkpoint that moves past it. On a handler error (or
/// panic) the batch's transaction is rolled back, the events before the failing one are
/// re-applied and committed in a new transaction, and the failure policy decides about the
/// failing one.
#[async_trait]
pub trait PgProjection: Send + Sync + 'static {
    /// The projection's name; it keys its checkpoint.
    fn name(&self) -> &str;

    /// The event patterns it wants; default all.
    fn patterns(&self) -> Vec<String> {
        vec!["*".to_owned()]
    }

    /// Applies one event to the read model, writing through `tx` (`&mut **tx` is an executor).
    async fn handle(&self, tx: &mut PgTransaction, event: &Event) -> HandlerResult;

    /// Clears the read model; runs in the transaction that resets the checkpoint to 0.
    async fn reset(&self, tx: &mut PgTransaction) -> HandlerResult {
        let _ = tx;
        Ok(())
    }
}

/// A runner for a transactional PostgreSQL projection reading `store`. The checkpoint lives in
/// the `checkpoints` table of `schema` over `pool` (created by `PostgresEventStore::migrate`),
/// and the handler's transaction has `search_path` set to `schema`.
///
/// # Errors
/// [`Error::InvalidPattern`] for an invalid pattern, [`Error::InvalidArgument`] for an invalid
/// schema name.
pub fn projection_runner<P: PgProjection>(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    schema: &str,
    projection: P,
) -> Result<ProjectionRunner> {
    let filter = Filter::parse(&projection.patterns())?;
    let sql = Sql::new(Schema::new(schema)?);
    let applier = TxApplier {
        name: projection.name().to_owned(),
        projection: Arc::new(projection),
        target: describe(&pool.connect_options()),
        pool,
        filter,
        sql,
    };
    Ok(ProjectionRunner::from_applier(
        store,
        Arc::new(Detached(Arc::new(applier))),
    ))
}

struct TxApplier {
    name: String,
    projection: Arc<dyn PgProjection>,
    pool: PgPool,
    /// The server, for errors (no password).
    target: String,
    filter: Filter,
    sql: Sql,
}

impl TxApplier {
    fn map(&self, error: sqlx::Error) -> Error {
        map_sqlx(&self.target, error)
    }

    async fn begin(&self) -> Result<PgTransaction> {
        let mut tx = self.pool.begin().await.map_err(|e| self.map(e))?;
        sqlx::query(&self.sql.set_local_search_path)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        Ok(tx)
    }

    /// Locks the checkpoint row in a new transaction; checks it is still at `from` and, when
    /// `applying`, that no operator paused the projection.
    async fn begin_at(&self, from: u64, applying: bool) -> Result<PgTransaction, ApplyError> {
        let mut tx = self.begin().await?;
        let row: Option<(i64, bool)> = sqlx::query_as(&self.sql.lock_checkpoint)
            .bind(&self.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        let (stored, paused) = row.unwrap_or((0, false));
        let stored = to_u64(stored);
        if stored != from {
            return Err(ApplyError::Moved(stored));
        }
        if paused && applying {
            return Err(ApplyError::Paused);
        }
        Ok(tx)
    }

    async fn commit_at(&self, mut tx: PgTransaction, through: u64) -> Result<(), ApplyError> {
        let through = i64::try_from(through)
            .map_err(|_| Error::InvalidArgument(format!("position {through} over i64")))?;
        sqlx::query(&self.sql.save_checkpoint)
            .bind(&self.name)
            .bind(through)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        tx.commit().await.map_err(|e| self.map(e))?;
        Ok(())
    }
}

fn to_u64(position: i64) -> u64 {
    u64::try_from(position).unwrap_or(0)
}

/// Runs each transaction of a [`TxApplier`] in a task of its own, so cancelling the runner (a
/// dropped [`ProjectionTask`](crate::projection::ProjectionTask)) never cancels a transaction
/// half-way: a future dropped inside sqlx's `BEGIN` can hand the pool a connection that is
/// still in a transaction, where other users' writes would then be trapped. The batch in flight
/// ends with its commit or rollback; a real crash ends it with the server's rollback.
struct Detached(Arc<TxApplier>);

async fn detached<T, F>(work: F) -> Result<T, ApplyError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, ApplyError>> + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(e) => Err(ApplyError::Store(Error::backend("projection", e))),
    }
}

#[async_trait]
impl Applier for Detached {
    fn name(&self) -> &str {
        &self.0.name
    }

    async fn load_checkpoint(&self) -> Result<u64> {
        self.0.load_checkpoint().await
    }

    async fn apply(
        &self,
        from: u64,
        events: &[Arc<Event>],
        through: u64,
    ) -> Result<(), ApplyError> {
        let applier = Arc::clone(&self.0);
        let events = events.to_vec();
        detached(async move { applier.apply(from, &events, through).await }).await
    }

    async fn skip(&self, from: u64, to: u64) -> Result<(), ApplyError> {
        let applier = Arc::clone(&self.0);
        detached(async move { applier.skip(from, to).await }).await
    }

    async fn reset(&self) -> Result<()> {
        let applier = Arc::clone(&self.0);
        detached(async move { applier.reset().await.map_err(ApplyError::Store) })
            .await
            .map_err(|e| match e {
                ApplyError::Store(e) => e,
                _ => Error::InvalidArgument("unexpected reset outcome".into()),
            })
    }
}

impl TxApplier {
    async fn load_checkpoint(&self) -> Result<u64> {
        // Create the row so batches can lock it.
        sqlx::query(&self.sql.create_checkpoint)
            .bind(&self.name)
            .execute(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        let position: i64 = sqlx::query_scalar(&self.sql.load_checkpoint)
            .bind(&self.name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(to_u64(position))
    }

    async fn apply(
        &self,
        from: u64,
        events: &[Arc<Event>],
        through: u64,
    ) -> Result<(), ApplyError> {
        let mut tx = self.begin_at(from, true).await?;
        for (index, event) in events.iter().enumerate() {
            if !self.filter.matches(&event.event_type) {
                continue;
            }
            if let Err(error) = guarded(self.projection.handle(&mut tx, event)).await {
                // The transaction may be aborted by the failed statement: roll it back, then
                // keep the events before the failing one in a transaction of their own.
                drop(tx);
                let handled_through = match index.checked_sub(1) {
                    Some(prev) => {
                        let p = position_of(&events[prev])?;
                        Box::pin(self.apply(from, &events[..index], p)).await?;
                        Some(p)
                    }
                    None => None,
                };
                return Err(ApplyError::Handler {
                    index,
                    handled_through,
                    error,
                });
            }
        }
        self.commit_at(tx, through).await
    }

    async fn skip(&self, from: u64, to: u64) -> Result<(), ApplyError> {
        let tx = self.begin_at(from, false).await?;
        self.commit_at(tx, to).await
    }

    async fn reset(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        guarded(self.projection.reset(&mut tx))
            .await
            .map_err(|source| Error::Backend {
                backend: "projection reset",
                source,
            })?;
        sqlx::query(&self.sql.save_checkpoint)
            .bind(&self.name)
            .bind(0i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        tx.commit().await.map_err(|e| self.map(e))
    }
}
