//! Appending: one statement per batch with the version check inside it, the idempotency rule
//! on the failure path only, and [`PendingAppend`], an append whose transaction is still open.

use sqlx::{PgConnection, Postgres};

use super::error::{map_sqlx, unique_violation};
use super::rows::{Columns, EventRow, to_i64};
use super::sql::{MAX_EVENTS_PER_TX, Sql};
use super::store::PostgresEventStore;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::{EventStore, ExpectedVersion, validate_stream_id};

/// How many times an append with [`ExpectedVersion::Any`] retries after losing a race for the
/// next version of its stream.
pub(super) const ANY_VERSION_RETRIES: usize = 64;

impl PostgresEventStore {
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
        self.ensure_positions_continue().await?;
        let map = |e| map_sqlx(&self.inner.target, e);
        let mut tx = self.inner.pool.begin().await.map_err(map)?;
        let recorded = insert(
            &self.inner.sql,
            self.inner.signal.own_listener(),
            &mut tx,
            stream_id,
            expected_bind,
            &columns,
        )
        .await;
        match recorded {
            Ok(Some((positions, notified))) => {
                fill(stream_id, &mut events, &positions);
                Ok(PendingAppend {
                    tx,
                    events,
                    notified,
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
    pub(super) fn prepare(&self, stream_id: &str, events: &mut [Event]) -> Result<Columns> {
        validate_stream_id(stream_id)?;
        self.stamp_tenant(events)?;
        crate::event::validate_owned(events)?;
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
        // A stored copy that cannot be decoded cannot be handed back as the idempotent result:
        // the id is taken all the same.
        if let Some(bad) = stored.iter().find_map(|row| row.event.as_ref().err()) {
            return Err(Error::DuplicateEvent {
                id: bad.id,
                stream: bad.stream_id.clone(),
            });
        }
        let stored: Vec<Event> = stored
            .into_iter()
            .filter_map(|row| row.event.ok())
            .collect();
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
pub(super) fn expected_bind(expected: ExpectedVersion) -> Result<i64> {
    match expected {
        ExpectedVersion::Any => Ok(-1),
        ExpectedVersion::NoStream => Ok(0),
        ExpectedVersion::Exact(v) => to_i64(v, "expected version"),
    }
}

/// What an append statement recorded: `(position, stream version)` per event, and whether the
/// statement queued the notification for other processes (someone listens).
type Recorded = (Vec<(i64, i64)>, bool);

/// Runs the append statement on `conn`. `Ok(None)` when the version condition did not hold.
async fn insert(
    sql: &Sql,
    own_listener: i32,
    conn: &mut PgConnection,
    stream_id: &str,
    expected: i64,
    c: &Columns,
) -> std::result::Result<Option<Recorded>, sqlx::Error> {
    let (rows, notified): (Vec<(i64, i64)>, bool) = if c.ids.len() == 1 {
        let rows: Vec<(i64, i64, Option<String>)> = sqlx::query_as(&sql.append_one)
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
            .bind(&sql.channel)
            .bind(own_listener)
            .fetch_all(conn)
            .await?;
        let notified = rows.iter().any(|r| r.2.is_some());
        (rows.into_iter().map(|(p, v, _)| (p, v)).collect(), notified)
    } else {
        let (first_position, first_version, count, notified): (
            Option<i64>,
            Option<i64>,
            i64,
            Option<String>,
        ) = sqlx::query_as(&sql.append)
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
            .bind(&sql.channel)
            .bind(own_listener)
            .fetch_one(conn)
            .await?;
        let rows = match (first_position, first_version) {
            (Some(position), Some(version)) if count > 0 => {
                (0..count).map(|i| (position + i, version + i)).collect()
            }
            _ => Vec::new(),
        };
        (rows, notified.is_some())
    };
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some((rows, notified)))
}

/// Sets `stream_id`, `stream_version` and `position` on the appended events, replacing whatever
/// the caller (or a bus message) put there: they are store-owned, and the rows never hold the
/// caller's values (the append does not write them).
pub(super) fn fill(stream_id: &str, events: &mut [Event], positions: &[(i64, i64)]) {
    for (event, &(position, version)) in events.iter_mut().zip(positions) {
        event.stream_id = Some(stream_id.to_owned());
        event.stream_version = u64::try_from(version).ok();
        event.position = u64::try_from(position).ok();
    }
}

/// An append whose transaction is still open; see [`PostgresEventStore::begin_append`].
pub struct PendingAppend {
    tx: sqlx::Transaction<'static, Postgres>,
    events: Vec<Event>,
    /// Whether its statement queued the notification (delivered at commit).
    notified: bool,
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
        store.committed(self.notified);
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
        store.committed(false);
        Ok(())
    }
}

impl PostgresEventStore {
    /// [`EventStore::append_batch`].
    pub(super) async fn append_batch_now(
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
        self.ensure_positions_continue().await?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut conn = self.inner.pool.acquire().await.map_err(|e| self.map(e))?;
            let result = insert(
                &self.inner.sql,
                self.inner.signal.own_listener(),
                &mut conn,
                stream_id,
                expected_bind,
                &columns,
            )
            .await;
            drop(conn);
            let retry = match result {
                Ok(Some((positions, notified))) => {
                    self.committed(notified);
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
}
