//! Appending: one `INSERT ... SELECT` per batch (chunked past SQLite's bind limit) with the
//! version check inside it, in a `BEGIN IMMEDIATE` transaction; the idempotency rule on the
//! failure path only, in the same transaction; and [`SqlitePendingAppend`], an append whose
//! transaction is still open.

use std::collections::HashSet;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::error::is_unique_violation;
use super::rows::{EncodedEvent, decode_event, encode, to_i64};
use super::sql;
use super::store::{SqliteEventStore, WriteTx};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::{ExpectedVersion, validate_stream_id};

/// Rows per `INSERT`: 11 bind parameters each stays far below SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 2_000;

/// What an append statement found.
enum Inserted {
    /// Written: the positions and stream versions, ascending.
    Positions(Vec<(i64, i64)>),
    /// The version condition did not hold; nothing was written.
    VersionMismatch,
    /// An event id is already stored; nothing of the statement was written.
    DuplicateId,
}

impl SqliteEventStore {
    /// Validates and encodes a batch.
    fn prepare(&self, stream_id: &str, events: &mut [Event]) -> Result<Vec<EncodedEvent>> {
        validate_stream_id(stream_id)?;
        crate::event::validate_owned(events)?;
        let mut ids = HashSet::with_capacity(events.len());
        if let Some(dup) = events.iter().find(|e| !ids.insert(e.id)) {
            return Err(Error::InvalidArgument(format!(
                "batch for stream {stream_id:?} holds event id {} twice",
                dup.id
            )));
        }
        encode(events)
    }

    /// [`EventStore::append_batch`](crate::store::EventStore::append_batch).
    pub(super) async fn append_batch_now(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        let pending = self.begin_append(stream_id, expected, events).await?;
        pending.commit().await
    }

    /// Appends like [`append_batch`](crate::store::EventStore::append_batch) but leaves the
    /// transaction open: nothing is visible to others until [`SqlitePendingAppend::commit`];
    /// [`SqlitePendingAppend::rollback`] or dropping it undoes it. It holds SQLite's write lock,
    /// so every other writer (of any process) waits for it: keep it short.
    ///
    /// An idempotent retry (every event already stored in this stream) returns a pending
    /// append that commits nothing and hands back the stored copies.
    ///
    /// # Errors
    /// As [`append_batch`](crate::store::EventStore::append_batch).
    pub async fn begin_append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<SqlitePendingAppend> {
        let encoded = self.prepare(stream_id, &mut events)?;
        let expected_bind = match expected {
            ExpectedVersion::Any => -1,
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(v) => to_i64(v, "expected version")?,
        };
        let mut write = self.begin_write().await?;
        let conn: &mut SqliteConnection = &mut write.tx;
        let inserted = if encoded.is_empty() {
            let actual = self.version_in(conn, stream_id).await?;
            expected.check(stream_id, actual)?;
            Inserted::Positions(Vec::new())
        } else {
            self.insert(conn, stream_id, expected_bind, &encoded)
                .await?
        };
        match inserted {
            Inserted::Positions(positions) => {
                for (event, (position, version)) in events.iter_mut().zip(positions) {
                    event.stream_id = Some(stream_id.to_owned());
                    event.position = u64::try_from(position).ok();
                    event.stream_version = u64::try_from(version).ok();
                }
                Ok(SqlitePendingAppend {
                    write: Some(write),
                    events,
                    store: self.clone(),
                })
            }
            outcome => {
                // Idempotency first (in the same transaction: nobody can write meanwhile), then
                // the version check.
                let stored = self.stored_copies(conn, &encoded).await?;
                if !stored.is_empty() {
                    let foreign = stored
                        .iter()
                        .find(|e| e.stream_id.as_deref() != Some(stream_id));
                    if stored.len() == encoded.len() && foreign.is_none() {
                        drop(write);
                        return Ok(SqlitePendingAppend {
                            write: None,
                            events: stored,
                            store: self.clone(),
                        });
                    }
                    let clash = foreign.unwrap_or(&stored[0]);
                    return Err(Error::DuplicateEvent {
                        id: clash.id,
                        stream: clash.stream_id.clone().unwrap_or_default(),
                    });
                }
                let actual = self.version_in(conn, stream_id).await?;
                drop(write);
                match outcome {
                    Inserted::VersionMismatch => {
                        tracing::debug!(stream = stream_id, %expected, actual, "sqlite event store: version conflict");
                        Err(Error::Conflict {
                            stream: stream_id.to_owned(),
                            expected,
                            actual,
                        })
                    }
                    _ => Err(Error::InvalidArgument(format!(
                        "append to {stream_id:?}: a unique constraint failed, yet no event id \
                         of the batch is stored"
                    ))),
                }
            }
        }
    }

    /// The stream's version, on the transaction's connection.
    async fn version_in(&self, conn: &mut SqliteConnection, stream_id: &str) -> Result<u64> {
        let version: i64 = sqlx::query_scalar(sql::STREAM_VERSION)
            .bind(stream_id)
            .fetch_one(conn)
            .await
            .map_err(|e| self.map(e))?;
        Ok(u64::try_from(version).unwrap_or(0))
    }

    /// The stored copies of the batch's ids, in batch order (the failure path only).
    async fn stored_copies(
        &self,
        conn: &mut SqliteConnection,
        encoded: &[EncodedEvent],
    ) -> Result<Vec<Event>> {
        let mut stored = Vec::new();
        for e in encoded {
            let row = sqlx::query(sql::EVENT_BY_ID)
                .bind(e.id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.map(e))?;
            if let Some(row) = row {
                stored.push(decode_event(&row)?);
            }
        }
        Ok(stored)
    }

    /// Runs the append statement(s) on the write transaction's connection.
    async fn insert(
        &self,
        conn: &mut SqliteConnection,
        stream_id: &str,
        expected: i64,
        encoded: &[EncodedEvent],
    ) -> Result<Inserted> {
        let mut positions = Vec::with_capacity(encoded.len());
        for (chunk_index, chunk) in encoded.chunks(ROWS_PER_STATEMENT).enumerate() {
            // Later chunks continue the stream the first one checked.
            let expected = if chunk_index == 0 { expected } else { -1 };
            let mut q = QueryBuilder::<Sqlite>::new(sql::APPEND_HEAD);
            q.push_bind(stream_id)
                .push(" AS sid, ")
                .push_bind(expected)
                .push(sql::APPEND_CURRENT)
                .push_bind(stream_id)
                .push(sql::APPEND_VALUES);
            q.push_values(chunk.iter().zip(1i64..), |mut row, (e, n)| {
                row.push_bind(e.id)
                    .push_bind(e.event_type.as_str())
                    .push_bind(e.schema_version)
                    .push_bind(e.payload.as_str())
                    .push_bind(e.metadata.as_str())
                    .push_bind(e.tenant_id.as_deref())
                    .push_bind(e.correlation_id.as_deref())
                    .push_bind(e.causation_id.as_deref())
                    .push_bind(e.source.as_deref())
                    .push_bind(e.occurred_at)
                    .push_bind(n);
            });
            q.push(sql::APPEND_TAIL);
            match q.build_query_as::<(i64, i64)>().fetch_all(&mut *conn).await {
                Ok(mut rows) if rows.len() == chunk.len() => {
                    rows.sort_unstable();
                    positions.extend(rows);
                }
                Ok(rows) if rows.is_empty() && chunk_index == 0 => {
                    return Ok(Inserted::VersionMismatch);
                }
                Ok(rows) => {
                    return Err(Error::InvalidArgument(format!(
                        "append to {stream_id:?}: {} of {} rows written",
                        rows.len(),
                        chunk.len()
                    )));
                }
                Err(e) if is_unique_violation(&e) => return Ok(Inserted::DuplicateId),
                Err(e) => return Err(self.map(e)),
            }
        }
        Ok(Inserted::Positions(positions))
    }
}

/// An append whose transaction is still open; see [`SqliteEventStore::begin_append`].
pub struct SqlitePendingAppend {
    /// `None` for an idempotent retry: nothing to commit.
    write: Option<WriteTx>,
    events: Vec<Event>,
    store: SqliteEventStore,
}

impl std::fmt::Debug for SqlitePendingAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlitePendingAppend")
            .field("events", &self.events.len())
            .field("open", &self.write.is_some())
            .finish_non_exhaustive()
    }
}

impl SqlitePendingAppend {
    /// The events as they will be recorded (positions and versions already assigned).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Commits the append and returns the recorded events.
    ///
    /// # Errors
    /// [`Error::Backend`] (a full disk, an I/O error); the append then did not happen.
    pub async fn commit(self) -> Result<Vec<Event>> {
        let store = self.store;
        if let Some(write) = self.write {
            write.tx.commit().await.map_err(|e| store.map(e))?;
            if let Some(last) = self.events.last().and_then(|e| e.position) {
                store.committed(last);
                tracing::debug!(
                    stream = self.events[0].stream_id.as_deref().unwrap_or_default(),
                    count = self.events.len(),
                    position = last,
                    "sqlite event store: appended"
                );
            }
        }
        Ok(self.events)
    }

    /// Rolls the append back: none of its events is ever visible.
    ///
    /// # Errors
    /// [`Error::Backend`].
    pub async fn rollback(self) -> Result<()> {
        if let Some(write) = self.write {
            write.tx.rollback().await.map_err(|e| self.store.map(e))?;
        }
        Ok(())
    }
}
