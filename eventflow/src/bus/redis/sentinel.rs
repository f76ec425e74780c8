//! Redis Sentinel: a connection to the primary the sentinels name, that asks them again when
//! the primary is lost or turns out to be a replica (after a failover), and reports the switch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::connect::is_connection_error;
use crate::bus::{BusError, BusErrorKind, ErrorSender};
use crate::handler::sync::lock;

/// How to reach the primary of one Sentinel-monitored service.
#[derive(Clone)]
pub(crate) struct SentinelTarget {
    pub(crate) sentinels: Vec<redis::ConnectionInfo>,
    pub(crate) service: String,
    pub(crate) node: SentinelNodeConnectionInfo,
    pub(crate) db: i64,
}

impl SentinelTarget {
    /// A client for the primary the sentinels name now (checked with `ROLE` by redis-rs).
    pub(crate) async fn primary(&self) -> redis::RedisResult<Client> {
        let mut sentinel = SentinelClient::build(
            self.sentinels.clone(),
            &self.service,
            Some(self.node.clone()),
            SentinelServerType::Master,
        )?;
        sentinel.async_get_client().await
    }
}

/// A multiplexed connection to the current primary. A connection error or a `READONLY` reply
/// (the old primary came back as a replica) drops it; the next command asks the sentinels for
/// the primary again and, when it moved, reports [`BusErrorKind::Failover`].
#[derive(Clone)]
pub(crate) struct SentinelConn {
    state: Arc<State>,
}

struct State {
    target: SentinelTarget,
    config: AsyncConnectionConfig,
    current: Mutex<Option<MultiplexedConnection>>,
    /// The primary's address, as last connected to.
    primary: Mutex<Option<String>>,
    /// Switches of primary seen by this connection.
    failovers: AtomicU64,
    /// Where a switch of primary is reported (the publishing connection's only).
    errors: Option<ErrorSender>,
}

impl SentinelConn {
    /// Connects to the current primary.
    pub(crate) async fn connect(
        target: SentinelTarget,
        config: AsyncConnectionConfig,
        errors: Option<ErrorSender>,
    ) -> redis::RedisResult<Self> {
        let conn = SentinelConn {
            state: Arc::new(State {
                target,
                config,
                current: Mutex::new(None),
                primary: Mutex::new(None),
                failovers: AtomicU64::new(0),
                errors,
            }),
        };
        conn.connection().await?;
        Ok(conn)
    }

    /// The address of the primary last connected to.
    pub(crate) fn primary(&self) -> Option<String> {
        lock(&self.state.primary).clone()
    }

    /// How many times this connection found the primary moved (each reported as
    /// [`BusErrorKind::Failover`] on the publishing connection).
    pub(crate) fn failovers(&self) -> u64 {
        self.state.failovers.load(Ordering::Relaxed)
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = lock(&self.state.current).clone() {
            return Ok(conn);
        }
        let client = self.state.target.primary().await?;
        let address = client.get_connection_info().addr().to_string();
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.state.config)
            .await?;
        let previous = lock(&self.state.primary).replace(address.clone());
        if let Some(previous) = previous
            && previous != address
        {
            self.state.failovers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%previous, primary = %address, service = %self.state.target.service, "redis: sentinel primary switched");
            if let Some(errors) = &self.state.errors {
                errors.report(BusError::new(
                    BusErrorKind::Failover,
                    format!(
                        "Sentinel service {:?}: the primary moved from {previous} to {address}; \
                         reconnected to the new primary",
                        self.state.target.service
                    ),
                ));
            }
        }
        *lock(&self.state.current) = Some(conn.clone());
        Ok(conn)
    }

    /// After `e`: forget the connection when the primary may have changed.
    fn observe(&self, e: &RedisError) {
        if is_connection_error(e) || e.code() == Some("READONLY") {
            lock(&self.state.current).take();
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let result = conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.observe(e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.observe(e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.state.target.db
    }
}
