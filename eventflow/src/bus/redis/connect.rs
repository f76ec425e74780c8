//! Connecting: [`RedisBus::connect`], per-address attempts with TLS and ACL credentials, the
//! state shared with subscription tasks, and connection error classification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::SentinelNodeConnectionInfo;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};

use super::bus::{Inner, RedisBus};
use super::config::RedisTopology;
use super::conn::{Conn, key_base};
use super::sentinel::{SentinelConn, SentinelTarget};
use super::{BACKEND, RedisConfig};
use crate::bus::{ErrorSender, ErrorStream};
use crate::error::{Error, Result};
use crate::redact::redact_url;

/// How the bus makes the connections of its subscriptions, per topology.
pub(crate) enum Backend {
    /// One server.
    Single(Client),
    /// A Redis Cluster: a client whose response timeout allows blocking reads, and one client
    /// per seed for pub/sub connections.
    Cluster {
        /// Boxed: a cluster client is much larger than the other variants.
        dedicated: Box<ClusterClient>,
        nodes: Vec<Client>,
    },
    /// The primary named by the sentinels.
    Sentinel(SentinelTarget),
}

/// Names derived from the config, shared by the bus and its subscription tasks.
pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    pub(crate) backend: Backend,
    /// The server we connected to, without credentials.
    pub(crate) target: String,
    /// The start of every key: the key prefix, in a cluster within a hash tag (`{events}`).
    pub(crate) key_base: String,
    pub(crate) stream_key: String,
    pub(crate) dead_letter_key: String,
    /// `<prefix>:`, the start of every pub/sub channel.
    pub(crate) channel_prefix: String,
}

/// Holds the client (whose `Debug` would show the password): print only what is safe.
impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("target", &self.target)
            .field("stream_key", &self.stream_key)
            .field("dead_letter_key", &self.dead_letter_key)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn channel(&self, event_type: &str) -> String {
        format!("{}{event_type}", self.channel_prefix)
    }

    /// Settings for the dedicated connection of a subscription: blocking reads must not hit
    /// the response timeout.
    pub(crate) fn dedicated_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.block + self.config.response_timeout))
    }

    pub(crate) async fn dedicated_connection(&self) -> Result<Conn> {
        let config = self.dedicated_config();
        let attempt = async {
            Ok::<_, RedisError>(match &self.backend {
                Backend::Single(client) => Conn::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ),
                Backend::Cluster { dedicated, .. } => {
                    Conn::Cluster(dedicated.get_async_connection().await?)
                }
                Backend::Sentinel(target) => {
                    Conn::Sentinel(SentinelConn::connect(target.clone(), config, None).await?)
                }
            })
        };
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(&self.target, e)),
            Err(_) => Err(Error::Timeout {
                operation: "redis connect",
                after: self.config.connect_timeout,
            }),
        }
    }

    /// A pub/sub connection: to the one server, to the first cluster node that answers
    /// (classic pub/sub messages reach every node of a cluster), or to the current primary.
    pub(crate) async fn pubsub(&self) -> std::result::Result<PubSub, RedisError> {
        match &self.backend {
            Backend::Single(client) => client.get_async_pubsub().await,
            Backend::Cluster { nodes, .. } => {
                let mut last = None;
                for client in nodes {
                    match client.get_async_pubsub().await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    RedisError::from((redis::ErrorKind::Io, "no cluster node to subscribe on"))
                }))
            }
            Backend::Sentinel(target) => target.primary().await?.get_async_pubsub().await,
        }
    }
}

impl RedisBus {
    /// Connects to the deployment [`RedisConfig::topology`] names: the first of
    /// `config.addrs` that answers (one server), the cluster they are seeds of, or the primary
    /// the sentinels at `config.addrs` name.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad config; [`Error::Connect`] when no address answers
    /// within [`RedisConfig::connect_timeout`] (each), naming the addresses tried.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let errors = ErrorStream::new(config.error_capacity);
        let cluster = config.topology == RedisTopology::Cluster;
        let connected = match &config.topology {
            RedisTopology::Single => connect_single(&config).await,
            RedisTopology::Cluster => connect_cluster(&config).await,
            RedisTopology::Sentinel { service } => {
                connect_sentinel(&config, service, errors.sender()).await
            }
        };
        let (backend, conn, target) = connected.map_err(|failure| Error::Connect {
            backend: BACKEND,
            target: config
                .addrs
                .iter()
                .map(|a| redact_url(a))
                .collect::<Vec<_>>()
                .join(", "),
            source: failure.into(),
        })?;
        let base = key_base(&config.key_prefix, cluster);
        let shared = Shared {
            backend,
            target,
            stream_key: format!("{base}:stream"),
            dead_letter_key: config
                .dead_letter_stream
                .clone()
                .unwrap_or_else(|| format!("{base}:dead-letter")),
            key_base: base,
            channel_prefix: format!("{}:", config.key_prefix),
            config: config.clone(),
        };
        tracing::debug!(target = %shared.target, streams = config.use_streams, "redis bus connected");
        Ok(RedisBus {
            inner: Arc::new(Inner {
                shared: Arc::new(shared),
                conn,
                errors,
                closed: AtomicBool::new(false),
                connected: AtomicBool::new(true),
                tasks: Mutex::new(HashMap::new()),
                next_task: AtomicU64::new(0),
                published: AtomicU64::new(0),
            }),
        })
    }
}

/// The first of `config.addrs` that answers.
async fn connect_single(
    config: &RedisConfig,
) -> std::result::Result<(Backend, Conn, String), String> {
    let mut failures = Vec::new();
    for addr in &config.addrs {
        match connect_one(config, addr).await {
            Ok((client, conn)) => {
                return Ok((
                    Backend::Single(client),
                    Conn::Manager(conn),
                    redact_url(addr),
                ));
            }
            Err(e) => failures.push(format!("{}: {e}", redact_url(addr))),
        }
    }
    Err(failures.join("; "))
}

/// Connection info for `addr` with the configured credentials.
fn connection_info(
    config: &RedisConfig,
    addr: &str,
) -> std::result::Result<redis::ConnectionInfo, String> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    };
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| e.to_string())?;
    let mut redis_info = info.redis_settings().clone();
    if let Some(user) = &config.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(password) = &config.password {
        redis_info = redis_info.set_password(password);
    }
    Ok(info.set_redis_settings(redis_info))
}

fn tls_certificates(
    config: &RedisConfig,
) -> std::result::Result<Option<redis::TlsCertificates>, String> {
    if !config.addrs.iter().any(|a| a.starts_with("rediss://")) {
        return Ok(None);
    }
    ensure_crypto_provider();
    let root_cert = match &config.tls_ca_cert {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read tls_ca_cert {}: {e}", path.display()))?,
        ),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert,
    }))
}

/// A cluster client over every seed, with `response_timeout`.
fn cluster_client(
    config: &RedisConfig,
    response_timeout: Duration,
) -> std::result::Result<ClusterClient, String> {
    let seeds = config
        .addrs
        .iter()
        .map(|a| connection_info(config, a))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(config.connect_timeout)
        .response_timeout(response_timeout)
        // Few, short retries (on MOVED, a lost node): a publish during a failover fails in
        // bounded time rather than wait out a long backoff; the next call tries again.
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if let Some(user) = &config.username {
        builder = builder.username(user);
    }
    if let Some(password) = &config.password {
        builder = builder.password(password);
    }
    if let Some(certs) = tls_certificates(config)? {
        builder = builder.certs(certs);
    }
    builder.build().map_err(|e| e.to_string())
}

/// The cluster the seeds belong to, checked with `PING` (on every primary).
async fn connect_cluster(
    config: &RedisConfig,
) -> std::result::Result<(Backend, Conn, String), String> {
    let client = cluster_client(config, config.response_timeout)?;
    let dedicated = cluster_client(config, config.block + config.response_timeout)?;
    let nodes = config
        .addrs
        .iter()
        .map(|a| {
            let info = connection_info(config, a)?;
            match tls_certificates(config)? {
                Some(certs) => Client::build_with_tls(info, certs),
                None => Client::open(info),
            }
            .map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let attempt = async {
        let mut conn = client.get_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, RedisError>(conn)
    };
    let conn = match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {:?}", config.connect_timeout)),
    };
    let seeds: Vec<String> = config.addrs.iter().map(|a| redact_url(a)).collect();
    Ok((
        Backend::Cluster {
            dedicated: Box::new(dedicated),
            nodes,
        },
        Conn::Cluster(conn),
        format!("cluster [{}]", seeds.join(", ")),
    ))
}

/// The primary the sentinels name for `service`.
async fn connect_sentinel(
    config: &RedisConfig,
    service: &str,
    errors: Option<ErrorSender>,
) -> std::result::Result<(Backend, Conn, String), String> {
    // The sentinels are reached with their URLs as given; the primary with the configured
    // credentials (`username`, `password`) and the database of the first URL.
    let sentinels = config
        .addrs
        .iter()
        .map(|a| {
            let url = if a.contains("://") {
                a.clone()
            } else {
                format!("redis://{a}")
            };
            url.as_str()
                .into_connection_info()
                .map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let first = sentinels.first().ok_or("no sentinel address")?;
    let db = first.redis_settings().db();
    let mut redis_settings = redis::RedisConnectionInfo::default().set_db(db);
    if let Some(user) = &config.username {
        redis_settings = redis_settings.set_username(user);
    }
    if let Some(password) = &config.password {
        redis_settings = redis_settings.set_password(password);
    }
    let target = SentinelTarget {
        sentinels,
        service: service.to_owned(),
        node: SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_settings),
        db,
    };
    let publish_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout));
    let attempt = async {
        let mut conn = SentinelConn::connect(target.clone(), publish_config, errors).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, RedisError>(conn)
    };
    let conn = match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {:?}", config.connect_timeout)),
    };
    let seeds: Vec<String> = config.addrs.iter().map(|a| redact_url(a)).collect();
    Ok((
        Backend::Sentinel(target),
        Conn::Sentinel(conn),
        format!("sentinel service {service:?} via [{}]", seeds.join(", ")),
    ))
}

/// Opens a client for `addr` and checks it answers (bounded by the connect timeout).
async fn connect_one(
    config: &RedisConfig,
    addr: &str,
) -> std::result::Result<(Client, ConnectionManager), String> {
    let info = connection_info(config, addr)?;
    let client = if addr.starts_with("rediss://") {
        ensure_crypto_provider();
        let root_cert = match &config.tls_ca_cert {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read tls_ca_cert {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert,
        };
        Client::build_with_tls(info, certs).map_err(|e| e.to_string())?
    } else {
        Client::open(info).map_err(|e| e.to_string())?
    };
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        // Few, short retries: a publish during an outage should fail in bounded time rather
        // than wait out a long backoff; the next call tries again.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let attempt = async {
        let mut conn = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, RedisError>(conn)
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(Ok(conn)) => Ok((client, conn)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", config.connect_timeout)),
    }
}

/// rustls needs a process-wide crypto provider; install ring's unless the application already
/// chose one (installing fails harmlessly when another thread won the race).
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

pub(crate) fn connect_error(target: &str, e: RedisError) -> Error {
    Error::Connect {
        backend: BACKEND,
        target: target.to_owned(),
        source: Box::new(e),
    }
}

/// True when `e` means the connection is gone (as opposed to a command the server refused).
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}
