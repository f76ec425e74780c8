//! Transactional SQLite projections: the read model and the checkpoint commit together.
//!
//! A [`SqliteProjection`]'s handler receives the batch's transaction and writes its read model
//! in it; the runner checks the projection's checkpoint (the `checkpoints` table, the one
//! [`SqliteCheckpointStore`](super::SqliteCheckpointStore) reads) still holds the position the
//! batch was read from, advances it in the same transaction and commits once per batch. **A
//! crash at any point keeps the whole batch (read model and checkpoint) or none of it, so no
//! event is ever applied twice**, and two runners of one projection (two processes sharing the
//! file) never apply the same batch twice either: the batch's transaction is a write
//! transaction from its first statement (`BEGIN IMMEDIATE`), so the check and the commit see
//! the same checkpoint.
//!
//! ```no_run
//! use std::sync::Arc;
//! use eventflow::sqlite::{SqliteEventStore, SqliteProjection, SqliteTransaction, projection_runner};
//! use eventflow::{Event, HandlerResult};
//!
//! struct OrderCount;
//!
//! #[eventflow::async_trait]
//! impl SqliteProjection for OrderCount {
//!     fn name(&self) -> &str { "order-count" }
//!     fn patterns(&self) -> Vec<String> { vec!["order.placed".into()] }
//!     async fn handle(&self, tx: &mut SqliteTransaction, _event: &Event) -> HandlerResult {
//!         sqlx::query("UPDATE order_count SET n = n + 1").execute(&mut **tx).await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo(store: SqliteEventStore) -> eventflow::Result<()> {
//! let runner = projection_runner(store, OrderCount)?;
//! let _task = runner.start();
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Sqlite;

use super::rows::to_i64;
use super::side::validate_checkpoint_name;
use super::sql;
use super::store::{SqliteEventStore, WriteTx};
use crate::bus::HandlerResult;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::projection::{Applier, ApplyError, Filter, ProjectionRunner, guarded, position_of};

/// The transaction a [`SqliteProjection`] writes its read model in (`&mut **tx` is an
/// executor).
pub type SqliteTransaction = sqlx::Transaction<'static, Sqlite>;

/// A projection whose read model lives in the store's SQLite database and is written in the
/// runner's transaction (see the module docs).
///
/// Contract as [`Projection`](crate::projection::Projection), except delivery is exactly once:
/// an event's writes commit with the checkpoint that moves past it. On a handler error (or
/// panic) the batch's transaction is rolled back, the events before the failing one are
/// re-applied and committed in a new transaction, and the failure policy decides about the
/// failing one.
#[async_trait]
pub trait SqliteProjection: Send + Sync + 'static {
    /// The projection's name; it keys its checkpoint.
    fn name(&self) -> &str;

    /// The event patterns it wants; default all.
    fn patterns(&self) -> Vec<String> {
        vec!["*".to_owned()]
    }

    /// Applies one event to the read model, writing through `tx`.
    async fn handle(&self, tx: &mut SqliteTransaction, event: &Event) -> HandlerResult;

    /// Clears the read model; runs in the transaction that resets the checkpoint to 0.
    async fn reset(&self, tx: &mut SqliteTransaction) -> HandlerResult {
        let _ = tx;
        Ok(())
    }
}

/// A runner for a transactional SQLite projection reading `store`, with its checkpoint and read
/// model in the same database.
///
/// # Errors
/// [`Error::InvalidPattern`] for an invalid pattern, [`Error::InvalidArgument`] for an empty
/// name.
pub fn projection_runner<P: SqliteProjection>(
    store: SqliteEventStore,
    projection: P,
) -> Result<ProjectionRunner> {
    let filter = Filter::parse(&projection.patterns())?;
    validate_checkpoint_name(projection.name())?;
    let applier = TxApplier {
        name: projection.name().to_owned(),
        projection: Arc::new(projection),
        store: store.clone(),
        filter,
    };
    Ok(ProjectionRunner::from_applier(
        Arc::new(store),
        Arc::new(Detached(Arc::new(applier))),
    ))
}

struct TxApplier {
    name: String,
    projection: Arc<dyn SqliteProjection>,
    store: SqliteEventStore,
    filter: Filter,
}

fn to_u64(position: i64) -> u64 {
    u64::try_from(position).unwrap_or(0)
}

impl TxApplier {
    async fn begin_at(&self, from: u64) -> Result<WriteTx, ApplyError> {
        let mut write = self.store.begin_write().await?;
        let stored: Option<i64> = sqlx::query_scalar(sql::LOAD_CHECKPOINT)
            .bind(&self.name)
            .fetch_optional(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        let stored = to_u64(stored.unwrap_or(0));
        if stored != from {
            return Err(ApplyError::Moved(stored));
        }
        Ok(write)
    }

    async fn commit_at(&self, mut write: WriteTx, through: u64) -> Result<(), ApplyError> {
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(&self.name)
            .bind(to_i64(through, "checkpoint position")?)
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))?;
        Ok(())
    }

    async fn load_checkpoint(&self) -> Result<u64> {
        let position: Option<i64> = sqlx::query_scalar(sql::LOAD_CHECKPOINT)
            .bind(&self.name)
            .fetch_optional(self.store.pool())
            .await
            .map_err(|e| self.store.map(e))?;
        Ok(to_u64(position.unwrap_or(0)))
    }

    async fn apply(
        &self,
        from: u64,
        events: &[Arc<Event>],
        through: u64,
    ) -> Result<(), ApplyError> {
        let mut write = self.begin_at(from).await?;
        for (index, event) in events.iter().enumerate() {
            if !self.filter.matches(&event.event_type) {
                continue;
            }
            if let Err(error) = guarded(self.projection.handle(&mut write.tx, event)).await {
                // Roll back, then keep the events before the failing one in a transaction of
                // their own.
                drop(write);
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
        self.commit_at(write, through).await
    }

    async fn skip(&self, from: u64, to: u64) -> Result<(), ApplyError> {
        let write = self.begin_at(from).await?;
        self.commit_at(write, to).await
    }

    async fn reset(&self) -> Result<()> {
        let mut write = self.store.begin_write().await?;
        guarded(self.projection.reset(&mut write.tx))
            .await
            .map_err(|source| Error::Backend {
                backend: "projection reset",
                source,
            })?;
        sqlx::query(sql::RESET_CHECKPOINT)
            .bind(&self.name)
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }
}

/// Runs each transaction of a [`TxApplier`] in a task of its own, so cancelling the runner
/// never cancels a transaction half-way (as the PostgreSQL runner does).
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
