//! Connecting: [`RedisBus::connect`], per-address attempts with TLS and ACL credentials, the
//! state shared with subscription tasks, and connection error classification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};

use super::bus::{Inner, RedisBus};
use super::{BACKEND, RedisConfig};
use crate::bus::ErrorStream;
use crate::error::{Error, Result};
use crate::redact::redact_url;

/// Names derived from the config, shared by the bus and its subscription tasks.
pub(crate) struct Shared {
    pub(crate) config: RedisConfig,
    pub(crate) client: Client,
    /// The server we connected to, without credentials.
    pub(crate) target: String,
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

    pub(crate) async fn dedicated_connection(&self) -> Result<MultiplexedConnection> {
        let config = self.dedicated_config();
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connect_error(&self.target, e)),
            Err(_) => Err(Error::Timeout {
                operation: "redis connect",
                after: self.config.connect_timeout,
            }),
        }
    }
}

impl RedisBus {
    /// Connects to the first of `config.addrs` that answers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad config; [`Error::Connect`] when no address answers
    /// within [`RedisConfig::connect_timeout`] (each), naming the addresses tried.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let mut failures = Vec::new();
        for addr in &config.addrs {
            match connect_one(&config, addr).await {
                Ok((client, conn)) => {
                    let prefix = &config.key_prefix;
                    let shared = Shared {
                        client,
                        target: redact_url(addr),
                        stream_key: format!("{prefix}:stream"),
                        dead_letter_key: config
                            .dead_letter_stream
                            .clone()
                            .unwrap_or_else(|| format!("{prefix}:dead-letter")),
                        channel_prefix: format!("{prefix}:"),
                        config: config.clone(),
                    };
                    tracing::debug!(target = %shared.target, streams = config.use_streams, "redis bus connected");
                    return Ok(RedisBus {
                        inner: Arc::new(Inner {
                            shared: Arc::new(shared),
                            conn,
                            errors: ErrorStream::new(config.error_capacity),
                            closed: AtomicBool::new(false),
                            connected: AtomicBool::new(true),
                            tasks: Mutex::new(HashMap::new()),
                            next_task: AtomicU64::new(0),
                            published: AtomicU64::new(0),
                        }),
                    });
                }
                Err(e) => failures.push(format!("{}: {e}", redact_url(addr))),
            }
        }
        Err(Error::Connect {
            backend: BACKEND,
            target: config
                .addrs
                .iter()
                .map(|a| redact_url(a))
                .collect::<Vec<_>>()
                .join(", "),
            source: failures.join("; ").into(),
        })
    }
}

/// Opens a client for `addr` and checks it answers (bounded by the connect timeout).
async fn connect_one(
    config: &RedisConfig,
    addr: &str,
) -> std::result::Result<(Client, ConnectionManager), String> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    };
    let mut info = url
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
    info = info.set_redis_settings(redis_info);
    let client = if url.starts_with("rediss://") {
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
