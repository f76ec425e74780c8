//! Reading: by stream and by criteria (point-in-time reads of committed rows, never waiting),
//! and in global order (below the safe horizon, waiting, bounded, at the head for committed
//! events held back behind a slower transaction).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::rows::{EventRow, StoredRow, to_i64};
use super::sql;
use super::store::PostgresEventStore;
use crate::error::Result;
use crate::event::Event;
use crate::store::{EventCriteria, Snapshot, StoredEvent, StoredPayload};

impl PostgresEventStore {
    /// The safe head and the highest committed position (see `sql::HEAD_AND_TOP`).
    pub(super) async fn head_and_top(&self) -> Result<(i64, i64)> {
        sqlx::query_as(&self.inner.sql.head_and_top)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))
    }

    /// Waits (at most the settle timeout) until no committed event is held back behind a
    /// slower transaction, and returns the safe head.
    async fn settle(&self) -> Result<i64> {
        let deadline = tokio::time::Instant::now() + self.inner.settle_timeout;
        let mut delay = Duration::from_millis(1);
        loop {
            let (head, top) = self.head_and_top().await?;
            if top <= head || tokio::time::Instant::now() >= deadline {
                return Ok(head);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(10));
        }
    }

    /// One page of the global order: its events, `(top, head)` of its snapshot when it was not
    /// empty, the position of its last row, and whether the page was full.
    ///
    /// Rows that cannot be decoded are parked and skipped (see `undecodable.rs`); a page of
    /// nothing but such rows is read past, so a reader never stops in front of one.
    async fn read_all_once(
        &self,
        mut after: i64,
        limit: i64,
    ) -> Result<(Vec<Event>, Option<(i64, i64)>, i64, bool)> {
        loop {
            let rows: Vec<EventRow> = sqlx::query_as(&self.inner.sql.read_all)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.inner.pool)
                .await
                .map_err(|e| self.map(e))?;
            let top_head = rows.first().and_then(|r| r.top_head);
            let last = rows.last().map_or(after, |r| r.position);
            let full = rows.len() as i64 >= limit;
            let events = self.decoded(rows).await;
            if events.is_empty() && last > after && full {
                after = last;
                continue;
            }
            return Ok((events, top_head, last, full));
        }
    }

    /// [`EventStore::load_stream`](crate::store::EventStore::load_stream).
    pub(super) async fn load_stream_now(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<Event>> {
        if stream_id.contains('\0') {
            // No stored stream id can hold NUL (they are validated on append).
            return Ok(Vec::new());
        }
        let rows: Vec<EventRow> = sqlx::query_as(&self.inner.sql.load_stream)
            .bind(stream_id)
            .bind(to_i64(from_version, "stream version")?)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(self.decoded(rows).await)
    }

    /// [`EventStore::load_stream_stored`](crate::store::EventStore::load_stream_stored): the
    /// payload as JSON text for the repository to decode once; [`Self::stream_stored`]
    /// collected.
    pub(super) async fn load_stream_stored_now(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<StoredEvent>> {
        self.stream_stored(stream_id, from_version)
            .try_collect()
            .await
    }

    /// The events of `stream_id` from stream version `from_version` on, in stream order, as a
    /// stream of rows: each [`StoredEvent`] is yielded as its row arrives from the server, so
    /// the caller decodes one while the next ones are still on the wire. The payload stays JSON
    /// text until the caller decodes it (once); metadata, correlation, causation, source and
    /// timestamp are not read. [`load_stream_stored`](crate::store::EventStore::load_stream_stored)
    /// is this stream collected.
    ///
    /// Like `load_stream`, a point-in-time read of committed rows that never waits. The stream
    /// holds one pooled connection until it ends or is dropped.
    ///
    /// # Errors
    /// Items are [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a version over
    /// `i64::MAX`, [`Error::Connect`](crate::Error::Connect) or
    /// [`Error::Backend`](crate::Error::Backend); the stream ends after its first error.
    pub fn stream_stored(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> impl Stream<Item = Result<StoredEvent>> + Send + '_ {
        if stream_id.contains('\0') {
            // No stored stream id can hold NUL (they are validated on append).
            return stream::empty().boxed();
        }
        let from = match to_i64(from_version, "stream version") {
            Ok(from) => from,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        sqlx::query_as::<_, StoredRow>(&self.inner.sql.load_stream_stored)
            .bind(stream_id.to_owned())
            .bind(from)
            .fetch(&self.inner.pool)
            .map(move |row| row.map(|r| r.event).map_err(|e| self.map(e)))
            .boxed()
    }

    /// The global order after `after_position` as a stream of rows, read in pages of
    /// `page_size` (keyset, one statement per page), each [`StoredEvent`] yielded as its row
    /// arrives: the caller decodes one while the next ones are still on the wire. The typed
    /// catch-up: payloads stay JSON text until the caller decodes them (once).
    ///
    /// Gap safety as [`read_all_stored`](Self::read_all_stored): every page reads only below
    /// the safe horizon, and its statement carries the horizon check (two extra columns), so a
    /// full page costs one round trip and the next page follows at once. The stream ends at
    /// the first page that is not full and saw everything up to the safe head; when committed
    /// events wait there behind a slower transaction, it waits for that one (at most the settle
    /// timeout, once), reads on, and ends at the next page that is not full. It never yields an
    /// event before one that could still commit below it.
    ///
    /// A `page_size` of 0 reads pages of 10,000. The stream holds one pooled connection while a
    /// page is read. `read_all_stored(after, limit)` is this stream with pages of `limit`, cut
    /// after `limit` events.
    ///
    /// # Errors
    /// Items are [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a position over
    /// `i64::MAX`, [`Error::Connect`](crate::Error::Connect) or
    /// [`Error::Backend`](crate::Error::Backend); the stream ends after its first error.
    pub fn stream_all_stored(
        &self,
        after_position: u64,
        page_size: usize,
    ) -> impl Stream<Item = Result<StoredEvent>> + Send + '_ {
        let after = match to_i64(after_position, "position") {
            Ok(after) => after,
            Err(e) => return stream::once(async move { Err(e) }).boxed(),
        };
        let page = if page_size == 0 {
            10_000
        } else {
            i64::try_from(page_size).unwrap_or(i64::MAX)
        };
        let state = GlobalPages {
            store: self,
            rows: None,
            after,
            page,
            in_page: 0,
            top_head: None,
            settled: false,
            done: false,
        };
        stream::unfold(state, |mut s| async move {
            loop {
                if s.done {
                    return None;
                }
                let Some(rows) = s.rows.as_mut() else {
                    s.rows = Some(
                        sqlx::query_as::<_, StoredRow>(&s.store.inner.sql.read_all_stored)
                            .bind(s.after)
                            .bind(s.page)
                            .fetch(&s.store.inner.pool),
                    );
                    s.in_page = 0;
                    s.top_head = None;
                    continue;
                };
                match rows.next().await {
                    Some(Ok(row)) => {
                        if s.in_page == 0 {
                            s.top_head = row.top_head;
                        }
                        s.in_page += 1;
                        s.after = row.position;
                        return Some((Ok(row.event), s));
                    }
                    Some(Err(e)) => {
                        s.done = true;
                        let e = s.store.map(e);
                        return Some((Err(e), s));
                    }
                    None => {
                        s.rows = None;
                        if s.in_page >= s.page {
                            // A full page: everything in it was below the safe horizon; on.
                            continue;
                        }
                        if s.settled {
                            return None;
                        }
                        // At the head: complete if nothing committed waits behind a slower
                        // transaction and the page saw everything up to the safe head.
                        let (top, head) = match s.top_head {
                            Some(top_head) => top_head,
                            None => match s.store.head_and_top().await {
                                Ok((head, top)) => (top, head),
                                Err(e) => {
                                    s.done = true;
                                    return Some((Err(e), s));
                                }
                            },
                        };
                        if top <= head && head <= s.after {
                            return None;
                        }
                        if let Err(e) = s.store.settle().await {
                            s.done = true;
                            return Some((Err(e), s));
                        }
                        s.settled = true;
                    }
                }
            }
        })
        .boxed()
    }

    /// [`read_all`](crate::store::EventStore::read_all) as [`StoredEvent`]s: the same global
    /// order, the same wait at the head (at most the settle timeout), but each payload stays
    /// JSON text until the caller decodes it into its own type (once), and metadata,
    /// correlation, causation, source and timestamp are not read. The fast path of a typed
    /// catch-up; `read_all` (full [`Event`]s, payload as a `Value`) is the general one.
    ///
    /// A page's safe-horizon check travels in the page's own statement (two extra columns):
    /// a full page costs one round trip; only a read at the head that finds committed events
    /// held back waits and reads again.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a position over
    /// `i64::MAX`, [`Error::Connect`](crate::Error::Connect) or
    /// [`Error::Backend`](crate::Error::Backend).
    pub async fn read_all_stored(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.stream_all_stored(after_position, limit)
            .take(limit)
            .try_collect()
            .await
    }

    /// The latest snapshot of `stream_id` taken at state schema version `state_version` (from
    /// this store's own `snapshots` table, the one [`snapshots`](Self::snapshots) writes) and
    /// the events after it, in stream order, in ONE statement and one round trip: what loading
    /// an aggregate from a snapshot needs. Without such a snapshot, every event of the stream.
    /// A point-in-time read of committed rows that never waits.
    ///
    /// `Repository::load` reads through this (via
    /// [`EventStore::load_snapshot_and_tail`](crate::store::EventStore::load_snapshot_and_tail))
    /// when its snapshot store is this store's [`snapshots`](Self::snapshots), or another
    /// [`PostgresSnapshotStore`](super::PostgresSnapshotStore) on the same schema of the same
    /// database.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a state version over
    /// `i32::MAX`, [`Error::Connect`](crate::Error::Connect) or
    /// [`Error::Backend`](crate::Error::Backend).
    pub async fn load_snapshot_and_tail(
        &self,
        stream_id: &str,
        state_version: u32,
    ) -> Result<(Option<Snapshot>, Vec<StoredEvent>)> {
        if stream_id.contains('\0') {
            return Ok((None, Vec::new()));
        }
        let state_version = i32::try_from(state_version).map_err(|_| {
            crate::Error::InvalidArgument(format!(
                "state schema version {state_version} is over {}",
                i32::MAX
            ))
        })?;
        type Row = (
            i32,
            Option<i64>,
            Option<Uuid>,
            i64,
            Option<String>,
            i32,
            Option<String>,
            Option<Json<serde_json::Value>>,
            Option<DateTime<Utc>>,
        );
        let mut rows = sqlx::query_as::<_, Row>(&self.inner.sql.load_snapshot_and_tail)
            .bind(stream_id)
            .bind(state_version)
            .fetch(&self.inner.pool);
        let mut snapshot = None;
        let mut events = Vec::new();
        while let Some(row) = rows.next().await {
            let (kind, position, id, version, event_type, schema_version, payload, state, at) =
                row.map_err(|e| self.map(e))?;
            let version = u64::try_from(version).unwrap_or(0);
            let schema_version = u32::try_from(schema_version).unwrap_or(0);
            match (kind, id, event_type, payload, state, at) {
                (0, _, _, _, Some(Json(state)), Some(taken_at)) => {
                    snapshot = Some(Snapshot {
                        stream_id: stream_id.to_owned(),
                        version,
                        schema_version,
                        state,
                        taken_at,
                    });
                }
                (_, Some(id), Some(event_type), Some(payload), _, _) => {
                    events.push(StoredEvent {
                        id,
                        stream_id: Some(stream_id.to_owned()),
                        position: position.and_then(|p| u64::try_from(p).ok()),
                        event_type,
                        version: schema_version,
                        stream_version: Some(version),
                        payload: StoredPayload::Text(payload),
                    });
                }
                _ => {
                    return Err(self.map(sqlx::Error::Protocol(
                        "load_snapshot_and_tail: a row that is neither a snapshot nor an event"
                            .into(),
                    )));
                }
            }
        }
        Ok((snapshot, events))
    }

    /// [`EventStore::stream_version`](crate::store::EventStore::stream_version).
    pub(super) async fn stream_version_now(&self, stream_id: &str) -> Result<u64> {
        if stream_id.contains('\0') {
            return Ok(0);
        }
        let version: i64 = sqlx::query_scalar(&self.inner.sql.stream_version)
            .bind(stream_id)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(u64::try_from(version).unwrap_or(0))
    }

    /// [`EventStore::load`](crate::store::EventStore::load).
    pub(super) async fn load_now(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        // Text can never hold NUL in PostgreSQL, so a criterion containing one matches nothing
        // (and would only make the server reject the query).
        let has_nul = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
        if has_nul(&criteria.correlation_id)
            || has_nul(&criteria.tenant_id)
            || has_nul(&criteria.stream_id)
        {
            return Ok(Vec::new());
        }
        if criteria.limit == Some(0) {
            return Ok(Vec::new());
        }
        // By default a criteria query is a point-in-time read of committed rows: it never
        // waits. `strict_load` restricts it to the safe horizon and waits there (bounded), as a
        // global-order reader does.
        let strict = self.inner.strict_load;
        let select = if strict {
            &self.inner.sql.criteria_select_safe
        } else {
            &self.inner.sql.criteria_select
        };
        let mut q = QueryBuilder::<Postgres>::new(select);
        if !criteria.event_types.is_empty() {
            let types: Vec<&str> = criteria
                .event_types
                .iter()
                .map(String::as_str)
                .filter(|t| !t.contains('\0'))
                .collect();
            if types.is_empty() {
                return Ok(Vec::new());
            }
            q.push(sql::CRITERIA_EVENT_TYPES).push_bind(types).push(")");
        }
        if let Some(since) = criteria.since {
            q.push(sql::CRITERIA_SINCE).push_bind(since);
        }
        if let Some(until) = criteria.until {
            q.push(sql::CRITERIA_UNTIL).push_bind(until);
        }
        if let Some(c) = &criteria.correlation_id {
            q.push(sql::CRITERIA_CORRELATION).push_bind(c.as_str());
        }
        if let Some(t) = &criteria.tenant_id {
            q.push(sql::CRITERIA_TENANT).push_bind(t.as_str());
        }
        if let Some(s) = &criteria.stream_id {
            q.push(sql::CRITERIA_STREAM).push_bind(s.as_str());
        }
        if let Some(after) = criteria.after_position {
            q.push(sql::CRITERIA_AFTER)
                .push_bind(to_i64(after, "position")?);
        }
        q.push(sql::CRITERIA_ORDER);
        if let Some(limit) = criteria.limit {
            q.push(sql::CRITERIA_LIMIT)
                .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if strict {
            // Let committed events held back by a slower transaction through first (bounded).
            self.settle().await?;
        }
        let rows: Vec<EventRow> = q
            .build_query_as()
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(self.decoded(rows).await)
    }

    /// [`EventStore::read_all`](crate::store::EventStore::read_all).
    pub(super) async fn read_all_now(
        &self,
        after_position: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = to_i64(after_position, "position")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (events, top_head, seen, full) = self.read_all_once(after, limit).await?;
        if full {
            return Ok(events);
        }
        // At the head: if nothing committed waits behind a slower transaction and the read saw
        // everything up to the safe head, it is complete. Otherwise wait for the slower one (at
        // most the settle timeout) and read again.
        let (top, head) = match top_head {
            Some(top_head) => top_head,
            None => {
                let (head, top) = self.head_and_top().await?;
                (top, head)
            }
        };
        if top <= head && head <= seen {
            return Ok(events);
        }
        self.settle().await?;
        Ok(self.read_all_once(after, limit).await?.0)
    }

    /// [`EventStore::head_position`](crate::store::EventStore::head_position).
    pub(super) async fn head_position_now(&self) -> Result<u64> {
        Ok(u64::try_from(self.settle().await?).unwrap_or(0))
    }
}

/// The state of [`PostgresEventStore::stream_all_stored`] between two rows.
struct GlobalPages<'a> {
    store: &'a PostgresEventStore,
    /// The rows of the page being read, if one is.
    rows: Option<BoxStream<'a, std::result::Result<StoredRow, sqlx::Error>>>,
    /// The position of the last row yielded: the next page starts after it.
    after: i64,
    page: i64,
    /// Rows of the current page so far.
    in_page: i64,
    /// `(top, head)` of the current page's snapshot, from its first row.
    top_head: Option<(i64, i64)>,
    /// Whether the stream already waited at the head (it does at most once).
    settled: bool,
    done: bool,
}
