//! Reading: by stream, by criteria and in global order. No read waits for anything: SQLite
//! commits one write transaction at a time, in position order, so whatever a reader's snapshot
//! holds is a prefix of the global order.

use sqlx::{QueryBuilder, Sqlite};

use super::rows::{decode_events, micros, to_i64};
use super::sql;
use super::store::SqliteEventStore;
use crate::error::Result;
use crate::event::Event;
use crate::store::EventCriteria;

impl SqliteEventStore {
    /// [`EventStore::load_stream`](crate::store::EventStore::load_stream).
    pub(super) async fn load_stream_now(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<Event>> {
        let rows = sqlx::query(sql::LOAD_STREAM)
            .bind(stream_id)
            .bind(to_i64(from_version, "stream version")?)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        decode_events(&rows)
    }

    /// [`EventStore::stream_version`](crate::store::EventStore::stream_version).
    pub(super) async fn stream_version_now(&self, stream_id: &str) -> Result<u64> {
        let version: i64 = sqlx::query_scalar(sql::STREAM_VERSION)
            .bind(stream_id)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(u64::try_from(version).unwrap_or(0))
    }

    /// [`EventStore::load`](crate::store::EventStore::load).
    pub(super) async fn load_now(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        if criteria.limit == Some(0) {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(sql::CRITERIA_SELECT);
        if !criteria.event_types.is_empty() {
            q.push(sql::CRITERIA_EVENT_TYPES);
            let mut types = q.separated(", ");
            for t in &criteria.event_types {
                types.push_bind(t.as_str());
            }
            q.push(")");
        }
        if let Some(since) = criteria.since {
            q.push(sql::CRITERIA_SINCE).push_bind(micros(since));
        }
        if let Some(until) = criteria.until {
            q.push(sql::CRITERIA_UNTIL).push_bind(micros(until));
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
        let rows = q
            .build()
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        decode_events(&rows)
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
        let rows = sqlx::query(sql::READ_ALL)
            .bind(to_i64(after_position, "position")?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        decode_events(&rows)
    }

    /// [`EventStore::head_position`](crate::store::EventStore::head_position).
    pub(super) async fn head_position_now(&self) -> Result<u64> {
        let head: i64 = sqlx::query_scalar(sql::HEAD)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(u64::try_from(head).unwrap_or(0))
    }
}
