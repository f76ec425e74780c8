//! Appending inside the caller's transaction ([`PostgresEventStore::append_in`]): the outbox
//! pattern for a service that is not event-sourced, writing its own rows and the events that
//! announce them in one commit.

use sqlx::{Executor, PgConnection};

use super::append::{ANY_VERSION_RETRIES, expected_bind, fill};
use super::error::unique_violation;
use super::rows::{Columns, EventRow};
use super::store::PostgresEventStore;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::ExpectedVersion;

use super::sql::{ROLLBACK_TO_SAVEPOINT as ROLLBACK_TO, SAVEPOINT};

impl PostgresEventStore {
    /// Appends `event` to `stream_id` inside the caller's open transaction on `conn` (a
    /// `&mut *tx` of an `sqlx::Transaction`, or a connection after `BEGIN`), with the rules of
    /// [`append`](crate::EventStore::append): the version check, the idempotency rule for
    /// event ids already stored, a [`Conflict`](Error::Conflict) or
    /// [`DuplicateEvent`](Error::DuplicateEvent) otherwise. See
    /// [`append_batch_in`](Self::append_batch_in).
    ///
    /// # Errors
    /// As [`append_batch_in`](Self::append_batch_in).
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        event: Event,
    ) -> Result<Event> {
        let mut stored = self
            .append_batch_in(conn, stream_id, expected, vec![event])
            .await?;
        stored
            .pop()
            .ok_or_else(|| Error::InvalidArgument("append_in stored nothing".into()))
    }

    /// Appends `events` to `stream_id` inside the caller's open transaction on `conn`: they
    /// become visible, and reach the relay, subscriptions and projections, when the caller
    /// commits, and never if it rolls back. The outbox pattern without an outbox table:
    ///
    /// ```no_run
    /// # use eventflow::postgres::PostgresEventStore;
    /// # use eventflow::{Event, ExpectedVersion};
    /// # async fn demo(store: PostgresEventStore) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = store.pool().begin().await?;
    /// // ... the service's own writes on `&mut *tx` ...
    /// let created = Event::new("customer.created", serde_json::json!({ "id": "c-1" }))?;
    /// store
    ///     .append_in(&mut tx, "customer-c-1", ExpectedVersion::NoStream, created)
    ///     .await?;
    /// tx.commit().await?; // the row and the event, or neither
    /// # Ok(()) }
    /// ```
    ///
    /// The rules are those of [`append_batch`](crate::EventStore::append_batch): the version
    /// check, and for event ids already stored (committed, or earlier in this transaction) the
    /// idempotency rule. The append runs under a savepoint, so a conflict leaves the caller's
    /// transaction usable: it may retry, do something else, or roll back. Several appends in
    /// one transaction are fine (their positions follow each other).
    ///
    /// Costs, compared with [`append_batch`](crate::EventStore::append_batch): two more round
    /// trips (the savepoint), and a `NOTIFY` inside the caller's transaction so that followers
    /// are woken when it commits (PostgreSQL serializes the commits of notifying transactions).
    /// Readers of the global order wait for the caller's transaction as for any other, so keep
    /// it short.
    ///
    /// # Errors
    /// [`Error::Conflict`], [`Error::DuplicateEvent`], [`Error::InvalidArgument`] for a bad
    /// batch or when `conn` is not inside a transaction; [`Error::Connect`] or
    /// [`Error::Backend`] when the statement fails (the caller's transaction stays usable,
    /// unless the connection is lost).
    pub async fn append_batch_in(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        let columns = self.prepare(stream_id, &mut events)?;
        let expected_bind = expected_bind(expected)?;
        if events.is_empty() {
            let actual = version_on(self, conn, stream_id).await?;
            expected.check(stream_id, actual)?;
            return Ok(Vec::new());
        }
        self.ensure_positions_continue().await?;
        let sql = &self.inner.sql;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if let Err(e) = conn.execute(SAVEPOINT).await {
                if e.as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "25P01")
                {
                    return Err(Error::InvalidArgument(
                        "append_in needs a connection inside a transaction (pool.begin(), or \
                         BEGIN first)"
                            .into(),
                    ));
                }
                return Err(self.map(e));
            }
            let result: std::result::Result<(Option<i64>, Option<i64>, i64), sqlx::Error> =
                sqlx::query_as(&sql.append_in_tx)
                    .bind(stream_id)
                    .bind(expected_bind)
                    .bind(&columns.ids)
                    .bind(&columns.event_types)
                    .bind(&columns.schema_versions)
                    .bind(&columns.payloads)
                    .bind(&columns.metadata)
                    .bind(&columns.tenant_ids)
                    .bind(&columns.correlation_ids)
                    .bind(&columns.causation_ids)
                    .bind(&columns.sources)
                    .bind(&columns.occurred_at)
                    .fetch_one(&mut *conn)
                    .await;
            match result {
                Ok((Some(position), Some(version), count)) if count > 0 => {
                    let release = sql.release_and_notify();
                    conn.execute(release.as_str())
                        .await
                        .map_err(|e| self.map(e))?;
                    let positions: Vec<(i64, i64)> =
                        (0..count).map(|i| (position + i, version + i)).collect();
                    fill(stream_id, &mut events, &positions);
                    return Ok(events);
                }
                // The version condition did not hold: nothing was written.
                Ok(_) => {
                    conn.execute(ROLLBACK_TO).await.map_err(|e| self.map(e))?;
                }
                Err(error) => {
                    // Back to the savepoint: the caller's transaction is usable again.
                    let undone = conn.execute(ROLLBACK_TO).await;
                    let known = matches!(
                        unique_violation(&error),
                        Some("events_stream_version_key" | "events_event_id_key")
                    );
                    if !known {
                        return Err(self.map(error));
                    }
                    undone.map_err(|e| self.map(e))?;
                }
            }
            if let Some(copies) = resolve_on(self, conn, stream_id, expected, &columns).await? {
                return Ok(copies);
            }
            if attempts >= ANY_VERSION_RETRIES {
                let actual = version_on(self, conn, stream_id).await?;
                return Err(Error::Conflict {
                    stream: stream_id.to_owned(),
                    expected,
                    actual,
                });
            }
        }
    }
}

/// The stream's version as the caller's transaction sees it.
async fn version_on(
    store: &PostgresEventStore,
    conn: &mut PgConnection,
    stream_id: &str,
) -> Result<u64> {
    let version: i64 = sqlx::query_scalar(&store.inner.sql.stream_version)
        .bind(stream_id)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| store.map(e))?;
    Ok(u64::try_from(version).unwrap_or(0))
}

/// After an append wrote nothing, on the caller's connection (so events of its own
/// transaction count): the idempotency rule first, then the version check. `Ok(Some(copies))`
/// is the idempotent result, `Ok(None)` means "try again".
async fn resolve_on(
    store: &PostgresEventStore,
    conn: &mut PgConnection,
    stream_id: &str,
    expected: ExpectedVersion,
    columns: &Columns,
) -> Result<Option<Vec<Event>>> {
    let rows: Vec<EventRow> = sqlx::query_as(&store.inner.sql.events_by_id)
        .bind(&columns.ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| store.map(e))?;
    if let Some(bad) = rows.iter().find_map(|row| row.event.as_ref().err()) {
        return Err(Error::DuplicateEvent {
            id: bad.id,
            stream: bad.stream_id.clone(),
        });
    }
    let stored: Vec<Event> = rows.into_iter().filter_map(|row| row.event.ok()).collect();
    if let Some(first) = stored.first() {
        let all_here = stored.len() == columns.ids.len()
            && stored
                .iter()
                .all(|e| e.stream_id.as_deref() == Some(stream_id));
        if all_here {
            let mut by_id: std::collections::HashMap<_, _> =
                stored.into_iter().map(|e| (e.id, e)).collect();
            return Ok(Some(
                columns
                    .ids
                    .iter()
                    .filter_map(|id| by_id.remove(id))
                    .collect(),
            ));
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
    let actual = version_on(store, conn, stream_id).await?;
    expected.check(stream_id, actual)?;
    Ok(None)
}
