//! Publishing: one `PUBLISH` (pub/sub) or `XADD` (Streams) per event, pipelined for a batch.

use tracing::Instrument;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};

use super::RedisBus;
use super::conn::Conn;
use crate::error::{Error, Result};
use crate::event::Event;

impl RedisBus {
    /// The command that publishes `event` (already encoded as `data`).
    pub(super) fn publish_cmd(&self, event: &Event, data: &[u8]) -> redis::Cmd {
        let shared = &self.inner.shared;
        if shared.config.use_streams {
            let mut cmd = redis::cmd("XADD");
            // No MAXLEN: trimming by length would drop entries a group has not read. Read
            // entries are trimmed by `trim_after_publish`.
            cmd.arg(&shared.stream_key);
            cmd.arg("*")
                .arg("type")
                .arg(&event.event_type)
                .arg("data")
                .arg(data);
            cmd
        } else {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(shared.channel(&event.event_type)).arg(data);
            cmd
        }
    }

    /// [`EventBus::publish`](crate::bus::EventBus::publish).
    pub(super) async fn publish_one(&self, mut event: Event) -> Result<()> {
        event.validate_owned()?;
        self.ensure_open()?;
        let data = event.to_json()?;
        let cmd = self.publish_cmd(&event, &data);
        let mut conn = self.inner.conn.clone();
        let span = tracing::debug_span!(
            "publish",
            event_id = %event.id,
            event_type = %event.event_type,
            correlation_id = event.correlation_id.as_deref(),
        );
        if let Some(conn) = self.pubsub_on_cluster() {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd);
            self.publish_routed(conn, pipe, 1).instrument(span).await?;
        } else if let Some(wait) = self.wait_cmd() {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd).ignore().add_command(wait);
            let (acked,): (usize,) = self
                .command(
                    "redis publish",
                    async move { pipe.query_async(&mut conn).await },
                )
                .instrument(span)
                .await?;
            self.check_replicas(acked)?;
        } else {
            self.command("redis publish", async move {
                cmd.query_async::<()>(&mut conn).await
            })
            .instrument(span)
            .await?;
        }
        self.trim_after_publish(1).await;
        Ok(())
    }

    /// [`EventBus::publish_batch`](crate::bus::EventBus::publish_batch): one pipeline, one round
    /// trip.
    pub(super) async fn publish_all(&self, mut events: Vec<Event>) -> Result<()> {
        crate::event::validate_owned(&mut events)?;
        self.ensure_open()?;
        if events.is_empty() {
            return Ok(());
        }
        // One pipeline, one round trip; Redis runs the commands in order.
        let mut pipe = redis::pipe();
        for event in &events {
            let data = event.to_json()?;
            pipe.add_command(self.publish_cmd(event, &data)).ignore();
        }
        let mut conn = self.inner.conn.clone();
        let count = events.len();
        let span = tracing::debug_span!("publish_batch", events = count);
        if let Some(conn) = self.pubsub_on_cluster() {
            self.publish_routed(conn, pipe, count)
                .instrument(span)
                .await?;
        } else if let Some(wait) = self.wait_cmd() {
            // One WAIT after the last XADD covers every write before it on this connection.
            pipe.add_command(wait);
            let (acked,): (usize,) = self
                .command("redis publish_batch", async move {
                    pipe.query_async(&mut conn).await
                })
                .instrument(span)
                .await?;
            self.check_replicas(acked)?;
        } else {
            self.command("redis publish_batch", async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .instrument(span)
            .await?;
        }
        self.trim_after_publish(count).await;
        Ok(())
    }

    /// Pub/sub on a cluster: the connection to publish through, to one node.
    fn pubsub_on_cluster(&self) -> Option<ClusterConnection> {
        match &self.inner.conn {
            Conn::Cluster(conn) if !self.inner.shared.config.use_streams => Some(conn.clone()),
            _ => None,
        }
    }

    /// Sends the `PUBLISH`es of `pipe` to the primary of the bus's key slot. A cluster routes
    /// a `PUBLISH` by its channel (or at random), so events of different types would leave
    /// from different nodes and could arrive out of publish order; from one node they keep
    /// it, and classic pub/sub carries them to subscribers on every node.
    async fn publish_routed(
        &self,
        mut conn: ClusterConnection,
        pipe: redis::Pipeline,
        count: usize,
    ) -> Result<()> {
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            self.inner.shared.key_base.as_bytes(),
            SlotAddr::Master,
        ));
        self.command("redis publish", async move {
            conn.route_pipeline(pipe, 0, count, route).await.map(drop)
        })
        .await
    }

    /// `WAIT <wait_replicas> <wait_timeout ms>` in Streams mode when configured. It goes in the
    /// pipeline of the `XADD`s, so it runs on the same connection to the same primary (in a
    /// cluster, the pipeline is routed by the stream key's slot) right after them.
    fn wait_cmd(&self) -> Option<redis::Cmd> {
        let config = &self.inner.shared.config;
        if !config.use_streams || config.wait_replicas == 0 {
            return None;
        }
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(config.wait_replicas)
            .arg(config.wait_timeout.as_millis().max(1) as u64);
        Some(cmd)
    }

    /// Fails the publish when fewer replicas than `wait_replicas` acknowledged it in time.
    fn check_replicas(&self, acked: usize) -> Result<()> {
        let config = &self.inner.shared.config;
        if acked >= config.wait_replicas {
            return Ok(());
        }
        Err(Error::backend(
            super::BACKEND,
            format!(
                "WAIT: {acked} of the {} replica(s) asked for acknowledged the write within \
                 {:?}; it is stored on the primary but may not survive a failover",
                config.wait_replicas, config.wait_timeout
            ),
        ))
    }
}
