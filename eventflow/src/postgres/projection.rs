//! Transactional PostgreSQL projections (feature `postgres`): the read model and the checkpoint
//! commit together.
//!
//! A [`PgProjection`]'s handler receives the batch's transaction and writes its read model in
//! it; the runner advances the projection's checkpoint (the `checkpoints` table of the event
//! store's schema, the one `PostgresCheckpointStore` reads) in the same transaction and commits
//! once per batch. **A crash at any point either keeps the whole batch
//! (read model and checkpoint) or none of it, so no event is ever applied twice.**
//!
//! The runner also takes the projection's advisory lock for the batch's transaction
//! (`pg_advisory_xact_lock`) and checks the checkpoint still holds the position the batch was
//! read from, so two runners of one projection (two processes, or a live loop and a rebuild)
//! never apply the same batch twice either.
//!
//! **No transaction id across handlers.** The global order's readers (subscriptions, the relay,
//! projections) wait for every transaction that holds a transaction id (see the parent module),
//! so the runner takes none of its own before the batch commits: an advisory lock assigns no
//! transaction id (a row lock would), and the checkpoint is written last, just before `COMMIT`.
//! A handler that writes its read model takes one at its first write, as any write does, and
//! holds it until the batch commits; a handler that only reads holds none. Readers of one stream
//! or of a criteria query never wait for any of it.
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
use crate::lease::LeaseStore;
use crate::projection::partition::PartitionKey;
use crate::projection::{
    Applier, ApplyError, Filter, PartitionAppliers, PartitionSpec, PartitionedOptions,
    PartitionedRunner, ProjectionRunner, guarded, position_of,
};
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
        lock_key: format!(
            "eventflow projection {}.{}",
            sql.schema.name(),
            projection.name()
        ),
        name: projection.name().to_owned(),
        projection: Arc::new(projection),
        target: describe(&pool.connect_options()),
        pool,
        filter,
        sql,
        part: None,
    };
    Ok(ProjectionRunner::from_applier(
        store,
        Arc::new(Detached(Arc::new(applier))),
    ))
}

/// A worker of a partitioned transactional PostgreSQL projection (see
/// [`PartitionedRunner`](crate::projection::PartitionedRunner)): start one in each process
/// (or several in one); they share the projection's partitions through `leases`, which must be
/// a [`PostgresLeaseStore`](super::PostgresLeaseStore) in the same database and schema, since
/// each batch's transaction checks the partition's lease (owner and epoch) in the statement that
/// advances the partition's checkpoint: **a batch commits its read-model writes and its
/// checkpoint together, and only while its worker holds the partition's lease**, so each event
/// is applied exactly once, whatever crashes or pauses.
///
/// A transaction of a worker paused mid-batch (a stopped process, a long GC-like stall) is
/// ended by the server once it has been idle for the lease time-to-live
/// (`idle_in_transaction_session_timeout`, set for the batch's transaction only), so it never
/// holds back the new owner, or the store's readers, for long.
///
/// # Errors
/// As [`projection_runner`], and [`Error::InvalidArgument`] for a partition count out of range.
pub fn partitioned_runner<P: PgProjection>(
    store: Arc<dyn EventStore>,
    pool: PgPool,
    schema: &str,
    projection: P,
    leases: Arc<dyn LeaseStore>,
    options: PartitionedOptions,
) -> Result<PartitionedRunner> {
    let filter = Filter::parse(&projection.patterns())?;
    let sql = Sql::new(Schema::new(schema)?);
    let name = projection.name().to_owned();
    let checkpoints = Arc::new(super::PostgresCheckpointStore::from_parts(
        pool.clone(),
        sql.clone(),
    ));
    let appliers = TxAppliers {
        projection: Arc::new(projection),
        target: describe(&pool.connect_options()),
        pool,
        filter,
        sql,
    };
    PartitionedRunner::from_appliers(
        name,
        store,
        checkpoints,
        leases,
        Arc::new(appliers),
        options,
        PartitionKey::Stream,
    )
}

struct TxAppliers {
    projection: Arc<dyn PgProjection>,
    pool: PgPool,
    target: String,
    filter: Filter,
    sql: Sql,
}

impl PartitionAppliers for TxAppliers {
    fn applier(&self, spec: PartitionSpec) -> Arc<dyn Applier> {
        Arc::new(Detached(Arc::new(TxApplier {
            // One lock per partition: partitions of one projection run in parallel.
            lock_key: format!(
                "eventflow projection {}.{}",
                self.sql.schema.name(),
                spec.checkpoint
            ),
            name: spec.checkpoint.clone(),
            projection: Arc::clone(&self.projection),
            pool: self.pool.clone(),
            target: self.target.clone(),
            filter: self.filter.clone(),
            sql: self.sql.clone(),
            part: Some(spec),
        })))
    }
}

struct TxApplier {
    /// The checkpoint's name: the projection's, or `<projection>#<partition>`.
    name: String,
    /// The key of the projection's advisory lock (hashed by the server).
    lock_key: String,
    projection: Arc<dyn PgProjection>,
    pool: PgPool,
    /// The server, for errors (no password).
    target: String,
    filter: Filter,
    sql: Sql,
    /// The partition and its lease, for a worker of a partitioned projection.
    part: Option<PartitionSpec>,
}

impl TxApplier {
    fn map(&self, error: sqlx::Error) -> Error {
        map_sqlx(&self.target, error)
    }

    /// Opens a batch's transaction: `search_path` set, the projection's advisory lock taken.
    /// No transaction id yet (see `sql::BEGIN_PROJECTION_BATCH`).
    async fn begin(&self) -> Result<PgTransaction> {
        let mut tx = self.pool.begin().await.map_err(|e| self.map(e))?;
        sqlx::query(&self.sql.begin_projection_batch)
            .bind(self.sql.schema.quoted())
            .bind(&self.lock_key)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        if let Some(part) = &self.part {
            // A paused worker's transaction must not outlive its lease (see
            // `partitioned_runner`).
            let ms = part
                .lease_ttl
                .as_millis()
                .clamp(1, i32::MAX.unsigned_abs().into());
            sqlx::query(&self.sql.set_local_idle_timeout)
                .bind(ms.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.map(e))?;
        }
        Ok(tx)
    }

    /// Opens a batch's transaction (the lock taken); checks the checkpoint is still at `from` and, when
    /// `applying`, that no operator paused the projection.
    async fn begin_at(&self, from: u64, applying: bool) -> Result<PgTransaction, ApplyError> {
        let mut tx = self.begin().await?;
        // A new statement, so a new snapshot: it sees the commit of a runner we waited for.
        let (stored, paused): (i64, bool) = sqlx::query_as(&self.sql.load_projection_checkpoint)
            .bind(&self.name)
            .bind(self.projection.name())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
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
        if let Some(part) = &self.part {
            let fenced = super::lease::fenced_write(
                &self.sql,
                &self.target,
                &mut tx,
                &part.lease,
                &self.name,
                through,
            )
            .await;
            match fenced {
                Ok(()) => {}
                Err(e @ Error::LeaseLost { .. }) => return Err(ApplyError::LeaseLost(e)),
                Err(e) => return Err(ApplyError::Store(e)),
            }
            tx.commit().await.map_err(|e| self.map(e))?;
            return Ok(());
        }
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
            if !self.filter.matches(&event.event_type)
                || self.part.as_ref().is_some_and(|p| !p.owns(event))
            {
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
        sqlx::query(&self.sql.reset_checkpoint)
            .bind(&self.name)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        tx.commit().await.map_err(|e| self.map(e))
    }
}
