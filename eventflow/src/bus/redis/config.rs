//! [`RedisConfig`]: where the Redis bus connects and how it behaves.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::redact::{REDACTED, redact_url};

/// Configuration of a [`RedisBus`](super::RedisBus). `Default` mirrors the Go package's `DefaultRedisConfig`.
///
/// Build it from the default and change what differs (fields are public, so a struct literal
/// with `..RedisConfig::default()` works too):
///
/// ```
/// use eventflow::bus::redis::RedisConfig;
/// let mut config = RedisConfig::new("redis://redis.example.com:6379");
/// config.use_streams = true;
/// config.consumer_name = "billing-1".into(); // stable across restarts: resume pending at once
/// ```
///
/// There is no configured consumer group: a subscription's group is the name its caller gives
/// it ([`SubscriptionOptions::named`](crate::bus::SubscriptionOptions::named)). An unnamed
/// subscription has a group of its own under a random name (see the [module docs](super)),
/// so two services on this default configuration never share, or take over, each other's
/// events.
///
/// Its `Debug` output redacts the password and any credentials in the addresses, so a
/// `tracing::info!(?config)` does not leak them.
#[derive(Clone)]
pub struct RedisConfig {
    /// Servers to try, in order: `redis://host:port[/db]`, `rediss://...` (TLS) or a bare
    /// `host:port`. Default `["redis://127.0.0.1:6379"]`. What they are depends on
    /// [`topology`](Self::topology): one server's candidates, a cluster's seed nodes, or the
    /// sentinels.
    pub addrs: Vec<String>,
    /// Which deployment [`addrs`](Self::addrs) name: one server (default), a Redis Cluster,
    /// or the sentinels of a Sentinel-monitored primary. See [`RedisTopology`].
    pub topology: RedisTopology,
    /// Streams mode: after each `XADD` (or batch of them), wait until this many replicas
    /// acknowledged the write (`WAIT numreplicas timeout`, in the same pipeline, on the
    /// primary that took the write) before the publish counts as done; fewer within
    /// [`wait_timeout`](Self::wait_timeout) fails the publish with
    /// [`Error::Backend`](crate::Error::Backend) (the entry is stored on the primary and may
    /// still be delivered: publish again with the same event if in doubt, handlers being
    /// idempotent under at least once). 0 (the default) does not wait: a publish counts once
    /// the primary stored it, and a failover before the primary replicated it loses it.
    ///
    /// What it does **not** guarantee: `WAIT` makes an acknowledged entry exist on that many
    /// replicas' memory; it does not make Redis consistent. A failover normally promotes the
    /// most up-to-date replica, so with one replica and `wait_replicas: 1` an acknowledged
    /// entry survives the loss of its primary; but a replica that was not caught up can still
    /// be promoted (e.g. by a manual failover, or when the acknowledged replica is itself
    /// lost), and without `appendfsync always` the copies are in memory only, so losing the
    /// primary and the replicas together loses acknowledged entries. Consumer group state
    /// (`XACK`, the group's position) is not waited for: after a failover an entry may be
    /// delivered again (at least once, as always). Pub/sub mode ignores it.
    pub wait_replicas: usize,
    /// How long `WAIT` may take (see [`wait_replicas`](Self::wait_replicas)). Default 1 s.
    pub wait_timeout: Duration,
    /// Streams (at least once, consumer groups) instead of pub/sub (at most once). Default
    /// `false`.
    pub use_streams: bool,
    /// Prefix of every channel and key the bus uses. Default `events`.
    pub key_prefix: String,
    /// This process's consumer name inside the groups (Streams mode). Default
    /// `<HOSTNAME or "eventflow">-<pid>-<random>`; set a name that is stable across restarts so
    /// a restarted consumer resumes its own pending entries at once instead of waiting for
    /// another consumer to claim them after `claim_idle`.
    pub consumer_name: String,
    /// Streams mode: every this many publishes of this bus, the entries that every consumer
    /// group has read and acked are trimmed ([`RedisBus::trim_stream`](super::RedisBus::trim_stream),
    /// `XTRIM MINID ~` below the slowest group). It is not a hard bound: entries a group has
    /// not read (an offline or slow group) are never trimmed, so the stream grows while a
    /// group lags, and nothing is lost. 0 disables trimming. Default 100 000.
    pub stream_max_len: usize,
    /// How long an entry must sit pending with another consumer before it is claimed
    /// (`XAUTOCLAIM` min-idle-time). Default 30 s.
    pub claim_idle: Duration,
    /// Deliveries after which a failing entry is dead-lettered and acked. Default 5.
    pub max_deliveries: u32,
    /// How soon a failed entry is read again. Default 200 ms.
    pub retry_delay: Duration,
    /// Dead-letter stream key. Default `None`: `<key_prefix>:dead-letter`.
    pub dead_letter_stream: Option<String>,
    /// Let the new consumer group of a named subscription start at the beginning of the stream
    /// (`0`, the retained history) instead of its end (`$`). An unnamed subscription always
    /// starts at the end. Default `false`.
    pub start_from_beginning: bool,
    /// Entries read per `XREADGROUP`. Default 100.
    pub batch_size: usize,
    /// How long one `XREADGROUP` blocks waiting for new entries. Default 1 s.
    pub block: Duration,
    /// Limit for establishing a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Limit for one command's answer. Default 5 s.
    pub response_timeout: Duration,
    /// ACL user name (overrides the URL's). Default none.
    pub username: Option<String>,
    /// Password (overrides the URL's). Default none.
    pub password: Option<String>,
    /// For `rediss://` addresses: a PEM file of the certificate authority to trust instead of
    /// the system's roots (e.g. a private CA). Default none (system roots).
    pub tls_ca_cert: Option<std::path::PathBuf>,
    /// Pub/sub mode (at most once): messages received but not yet handled that one
    /// subscription keeps while its handler is busy. The subscription reads its connection
    /// promptly (redis-rs would otherwise queue them without bound); when this or
    /// [`max_buffered_bytes`](Self::max_buffered_bytes) is reached, newly arriving messages
    /// are dropped (the queued, older ones are still handled) and the error stream reports
    /// [`Dropped`](crate::bus::BusErrorKind::Dropped) once per burst, naming how many messages
    /// (and bytes) were dropped. Default 4096. Streams mode does not use it: it reads at most
    /// [`batch_size`](Self::batch_size) entries at a time and reads again only when they are
    /// handled, so a slow handler applies back-pressure (entries wait in Redis) and nothing is
    /// dropped.
    pub max_buffered_messages: usize,
    /// Pub/sub mode: payload bytes one subscription keeps while its handler is busy (see
    /// [`max_buffered_messages`](Self::max_buffered_messages)); one message is always accepted
    /// into an empty buffer, however large. Default 16 MiB.
    pub max_buffered_bytes: usize,
    /// Failures kept for slow readers of the error stream. Default 1024.
    pub error_capacity: usize,
    /// How long `close` waits for handlers still running before it cancels them (and reports
    /// [`BusErrorKind::Cancelled`](crate::bus::BusErrorKind::Cancelled)). Default 5 s.
    pub drain_timeout: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self.addrs.iter().map(|a| redact_url(a)).collect();
        f.debug_struct("RedisConfig")
            .field("addrs", &addrs)
            .field("topology", &self.topology)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .field("use_streams", &self.use_streams)
            .field("key_prefix", &self.key_prefix)
            .field("consumer_name", &self.consumer_name)
            .field("stream_max_len", &self.stream_max_len)
            .field("claim_idle", &self.claim_idle)
            .field("max_deliveries", &self.max_deliveries)
            .field("retry_delay", &self.retry_delay)
            .field("dead_letter_stream", &self.dead_letter_stream)
            .field("start_from_beginning", &self.start_from_beginning)
            .field("batch_size", &self.batch_size)
            .field("block", &self.block)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("tls_ca_cert", &self.tls_ca_cert)
            .field("max_buffered_messages", &self.max_buffered_messages)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("error_capacity", &self.error_capacity)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "eventflow".to_owned());
        let random = &uuid::Uuid::new_v4().simple().to_string()[..8];
        RedisConfig {
            addrs: vec!["redis://127.0.0.1:6379".to_owned()],
            topology: RedisTopology::Single,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            use_streams: false,
            key_prefix: "events".to_owned(),
            consumer_name: format!("{host}-{}-{random}", std::process::id()),
            stream_max_len: 100_000,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            retry_delay: Duration::from_millis(200),
            dead_letter_stream: None,
            start_from_beginning: false,
            batch_size: 100,
            block: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            username: None,
            password: None,
            tls_ca_cert: None,
            max_buffered_messages: 4096,
            max_buffered_bytes: 16 << 20,
            error_capacity: 1024,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl RedisConfig {
    /// The default configuration for one server address.
    pub fn new(addr: impl Into<String>) -> Self {
        RedisConfig {
            addrs: vec![addr.into()],
            ..RedisConfig::default()
        }
    }

    /// The default configuration for a Redis Cluster reached through `seeds` (any of its
    /// nodes; the client learns the others).
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> Self {
        RedisConfig {
            addrs: seeds.into_iter().map(Into::into).collect(),
            topology: RedisTopology::Cluster,
            ..RedisConfig::default()
        }
    }

    /// The default configuration for the primary of `service`, found through `sentinels`.
    pub fn sentinel<S: Into<String>>(
        sentinels: impl IntoIterator<Item = S>,
        service: impl Into<String>,
    ) -> Self {
        RedisConfig {
            addrs: sentinels.into_iter().map(Into::into).collect(),
            topology: RedisTopology::Sentinel {
                service: service.into(),
            },
            ..RedisConfig::default()
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("RedisConfig: {m}")));
        if self.addrs.is_empty() {
            return bad("addrs is empty");
        }
        if let RedisTopology::Sentinel { service } = &self.topology
            && service.is_empty()
        {
            return bad("the Sentinel service name is empty");
        }
        if self.wait_replicas > 0 && self.wait_timeout.is_zero() {
            return bad(
                "wait_timeout must be positive with wait_replicas (WAIT 0 blocks for ever)",
            );
        }
        if self.topology == RedisTopology::Cluster
            && let Some(dead_letters) = &self.dead_letter_stream
        {
            let base = super::conn::key_base(&self.key_prefix, true);
            if super::conn::hash_tag(dead_letters) != super::conn::hash_tag(&base) {
                return Err(Error::InvalidArgument(format!(
                    "RedisConfig: on a cluster the dead_letter_stream must share the stream's \
                     hash tag {{{}}} (one slot), e.g. {base}:dead-letter, not {dead_letters:?}",
                    super::conn::hash_tag(&base)
                )));
            }
        }
        if self.key_prefix.is_empty() {
            return bad("key_prefix is empty");
        }
        if self.consumer_name.is_empty() {
            return bad("consumer_name must not be empty");
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.max_buffered_messages == 0 || self.max_buffered_bytes == 0 {
            return bad("max_buffered_messages and max_buffered_bytes must be at least 1");
        }
        Ok(())
    }
}

/// Which Redis deployment a [`RedisConfig`] connects to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RedisTopology {
    /// One server: the first of `addrs` that answers. It fails over to nothing; the others
    /// are only tried at connect.
    #[default]
    Single,
    /// A Redis Cluster; `addrs` are seed nodes. Every key of the bus carries the hash tag
    /// `{<key_prefix>}` (one slot, so one primary at a time serves a bus), commands follow
    /// the slot map across failovers, and pub/sub is classic (cluster-wide) pub/sub.
    Cluster,
    /// A primary with replicas monitored by Redis Sentinel; `addrs` are the sentinels and
    /// `service` the name they monitor (`sentinel monitor <service> ...`). The bus connects to
    /// the primary they name and asks again when it is lost.
    Sentinel {
        /// The monitored service (master) name.
        service: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_dead_letters_share_the_slot() {
        let mut c = RedisConfig::cluster(["redis://127.0.0.1:7000"]);
        c.dead_letter_stream = Some("{events}:dlq".into());
        c.validate().unwrap();
        assert!(
            RedisConfig::sentinel(["redis://127.0.0.1:26379"], "mymaster")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn default_config_is_valid() {
        let c = RedisConfig::default();
        c.validate().unwrap();
        assert!(!c.use_streams);
        assert_eq!(c.addrs, vec!["redis://127.0.0.1:6379".to_owned()]);
        assert_ne!(c.consumer_name, RedisConfig::default().consumer_name);
    }

    #[test]
    fn bad_configs_are_rejected() {
        for change in [
            (|c: &mut RedisConfig| c.addrs.clear()) as fn(&mut RedisConfig),
            |c| c.key_prefix.clear(),
            |c| c.consumer_name.clear(),
            |c| c.max_deliveries = 0,
            |c| c.batch_size = 0,
            |c| c.max_buffered_messages = 0,
            |c| c.max_buffered_bytes = 0,
            |c| c.topology = RedisTopology::Sentinel { service: "".into() },
            |c| {
                c.wait_replicas = 1;
                c.wait_timeout = Duration::ZERO;
            },
            |c| {
                c.topology = RedisTopology::Cluster;
                c.dead_letter_stream = Some("elsewhere".into());
            },
        ] {
            let mut c = RedisConfig::default();
            change(&mut c);
            assert!(matches!(c.validate(), Err(Error::InvalidArgument(_))));
        }
    }
}
