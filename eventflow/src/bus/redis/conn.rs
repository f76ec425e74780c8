//! One connection type over every topology ([`Conn`]), the clients that make them
//! ([`Backend`]), and where keys go in a Redis Cluster (hash tags).
//!
//! - **Single node**: the publishing connection is a `ConnectionManager` (reconnects by
//!   itself); each subscription has a `MultiplexedConnection` of its own.
//! - **Cluster**: redis-rs's cluster client (`cluster-async`): it learns the slot map from
//!   the seeds, routes each command by its key, follows `MOVED`/`ASK` and refreshes the map
//!   after a failover. Every key of one bus carries the hash tag `{<key_prefix>}`, so the
//!   stream, its dead-letter stream, the filters hash and the leases share one slot: the
//!   bus's pipelines (`XADD`+`WAIT`, `XADD`+`XACK` of a dead letter, `XREADGROUP`+`XPENDING`)
//!   stay on one node, as the cluster requires.

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::sentinel::SentinelConn;

/// A connection of the bus, whatever the topology. Cheap to clone (every variant is a handle
/// to a shared, multiplexed connection).
#[derive(Clone)]
pub(crate) enum Conn {
    /// Single node, publishing: reconnects by itself.
    Manager(ConnectionManager),
    /// Single node, a subscription's own connection.
    Multiplexed(MultiplexedConnection),
    /// Redis Cluster.
    Cluster(ClusterConnection),
    /// The primary named by Redis Sentinel, followed across failovers.
    Sentinel(SentinelConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// The hash tag of `key` as Redis Cluster computes slots: the part between the first `{` and
/// the next `}` when it is not empty, else the whole key.
pub(crate) fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The base of every key of a bus: the prefix itself on one node; on a cluster, the prefix
/// wrapped in a hash tag (`{events}`) unless it already has one, so every key of the bus lands
/// on one slot.
pub(crate) fn key_base(prefix: &str, cluster: bool) -> String {
    if !cluster || hash_tag(prefix) != prefix {
        prefix.to_owned()
    } else {
        format!("{{{prefix}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_keys_share_the_prefix_slot() {
        assert_eq!(key_base("events", false), "events");
        assert_eq!(key_base("events", true), "{events}");
        assert_eq!(key_base("app{x}", true), "app{x}");
        assert_eq!(hash_tag("{events}:stream"), "events");
        assert_eq!(hash_tag("{events}:dead-letter"), "events");
        assert_eq!(hash_tag("a{}b"), "a{}b");
        assert_eq!(hash_tag("plain"), "plain");
    }
}
