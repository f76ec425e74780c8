//! Publishing: one `PUBLISH` (pub/sub) or `XADD` (Streams) per event, pipelined for a batch.

use tracing::Instrument;

use super::RedisBus;
use crate::error::Result;
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
        self.command("redis publish", async move {
            cmd.query_async::<()>(&mut conn).await
        })
        .instrument(span)
        .await?;
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
        self.command("redis publish_batch", async move {
            pipe.query_async::<()>(&mut conn).await
        })
        .instrument(span)
        .await?;
        self.trim_after_publish(count).await;
        Ok(())
    }
}
