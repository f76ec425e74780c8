//! The safe horizon: what holds global-order readers back ([`PostgresEventStore::horizon`]), and
//! reading the global order on a caller's connection, refused with a typed error when that
//! connection's own transaction would pin the horizon
//! ([`PostgresEventStore::read_all_on`]).

use std::time::Duration;

use sqlx::PgConnection;

use super::rows::{EventRow, to_i64};
use super::sql::{HORIZON_HOLDERS, PINS_HORIZON};
use super::store::PostgresEventStore;
use crate::error::{Error, Result};
use crate::event::Event;

/// What [`PostgresEventStore::horizon`] reports: how far global-order readers (subscriptions,
/// the relay, projection runners, `read_all`) can read, and what holds them back.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HorizonStatus {
    /// The safe head: the highest position global readers can read now.
    pub safe_head: u64,
    /// The highest committed position (above `safe_head` when committed events wait).
    pub newest: u64,
    /// True when committed events wait behind an older transaction still open
    /// (`newest > safe_head`): global readers do not see them until it ends.
    pub held_back: bool,
    /// The oldest running transaction holding a transaction id (another session's) and the
    /// oldest prepared (two-phase) transaction, oldest first; either may be missing. The first
    /// is what sets the horizon. Transaction ids are server-wide, so a holder may be in another
    /// database or have nothing to do with events.
    pub holders: Vec<HorizonHolder>,
}

/// A transaction that holds the safe horizon back; see [`HorizonStatus`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HorizonHolder {
    /// Running, or prepared (two-phase: it outlives its session until `COMMIT PREPARED` or
    /// `ROLLBACK PREPARED`).
    pub kind: HolderKind,
    /// The server process (`pg_stat_activity.pid`) of a running transaction; `None` for a
    /// prepared one.
    pub pid: Option<i32>,
    /// Its transaction id (32-bit, as the server shows it).
    pub xid: i64,
    /// How long it has been open (running: since its start; prepared: since `PREPARE`).
    pub age: Duration,
    /// Its database.
    pub database: Option<String>,
    /// The session's `application_name` (running only).
    pub application_name: Option<String>,
    /// The session's state (`active`, `idle in transaction`, ...) or the prepared
    /// transaction's global id.
    pub detail: Option<String>,
}

/// See [`HorizonHolder::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HolderKind {
    /// A session's open transaction.
    Running,
    /// A prepared (two-phase) transaction.
    Prepared,
}

type HolderRow = (
    String,
    Option<i32>,
    i64,
    Option<f64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl PostgresEventStore {
    /// What holds global-order readers back: the safe head, the newest committed position, and
    /// the oldest running and prepared transactions (with their age and server pid), for
    /// status pages and alerts. Two queries; never waits.
    ///
    /// A transaction left open (an idle session in a transaction, a forgotten prepared
    /// transaction) keeps every subscription, relay and projection of the server from seeing
    /// events committed after it started; `load` and `load_stream` are not affected. End it
    /// (`pg_terminate_backend(pid)`, `ROLLBACK PREPARED 'gid'`) to release them.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`].
    pub async fn horizon(&self) -> Result<HorizonStatus> {
        let (head, top) = self.head_and_top().await?;
        let rows: Vec<HolderRow> = sqlx::query_as(HORIZON_HOLDERS)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        let holders = rows
            .into_iter()
            .map(
                |(kind, pid, xid, age, database, application_name, detail)| HorizonHolder {
                    kind: if kind == "prepared" {
                        HolderKind::Prepared
                    } else {
                        HolderKind::Running
                    },
                    pid,
                    xid,
                    age: Duration::from_secs_f64(age.unwrap_or(0.0).max(0.0)),
                    database,
                    application_name,
                    detail,
                },
            )
            .collect();
        Ok(HorizonStatus {
            safe_head: u64::try_from(head).unwrap_or(0),
            newest: u64::try_from(top).unwrap_or(0),
            held_back: top > head,
            holders,
        })
    }

    /// [`read_all`](crate::store::EventStore::read_all) on the caller's connection (for
    /// example inside a transaction of its own, or a [`PgProjection`](super::PgProjection)
    /// handler's), without waiting: up to `limit` events after `after_position` below the
    /// safe horizon of this connection's snapshot.
    ///
    /// # Errors
    /// [`Error::ReadInTransaction`] when the connection's transaction holds a transaction id
    /// (it wrote something) or a repeatable-read snapshot: the horizon would then be pinned at
    /// or before that transaction, and the read would never see a later commit (nothing is
    /// read; read before writing, or outside the transaction). [`Error::Connect`] or
    /// [`Error::Backend`] otherwise.
    pub async fn read_all_on(
        &self,
        conn: &mut PgConnection,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let (xid, snapshot): (Option<String>, bool) = sqlx::query_as(PINS_HORIZON)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.map(e))?;
        if xid.is_some() {
            return Err(Error::ReadInTransaction {
                reason: "it holds a transaction id (it wrote), so the safe horizon stops at it",
            });
        }
        if snapshot {
            return Err(Error::ReadInTransaction {
                reason: "it holds a repeatable-read snapshot, which never sees later commits",
            });
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<EventRow> = sqlx::query_as(&self.inner.sql.read_all)
            .bind(to_i64(after_position, "position")?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.map(e))?;
        Ok(self.decoded(rows).await)
    }
}
