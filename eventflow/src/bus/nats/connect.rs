//! [`NatsBus::connect`]: options, authentication, TLS, and the JetStream stream.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::bus::{Inner, NatsBus};
use super::status::{Reporter, describe_server};
use super::{BACKEND, NatsConfig, jetstream};
use crate::error::{BoxError, Error, Result};

impl NatsBus {
    /// Connects to the server(s) of `config.url` and, in JetStream mode, creates or updates the
    /// stream (idempotently).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad configuration; [`Error::Connect`] when no server can
    /// be reached, authentication fails, or the connection is not made within
    /// `connect_timeout`; [`Error::Backend`] when the stream cannot be created (for instance
    /// JetStream is not enabled on the server).
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        config.validate()?;
        let target = config.redacted_url();
        let connect_error = |source: BoxError| Error::Connect {
            backend: BACKEND,
            target: target.clone(),
            source,
        };

        let reporter = Arc::new(Reporter::new(config.error_capacity));
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .max_reconnects(config.max_reconnects)
            .require_tls(config.tls_required)
            .subscription_capacity(config.subscription_capacity)
            .event_callback({
                let reporter = reporter.clone();
                move |event| {
                    let reporter = reporter.clone();
                    async move { reporter.connection_event(event).await }
                }
            });
        let wait = config.reconnect_wait;
        options = options.reconnect_delay_callback(move |attempts| {
            // The first attempt after a loss is immediate; then every `reconnect_wait`.
            if attempts <= 1 { Duration::ZERO } else { wait }
        });
        if let Some(name) = &config.connection_name {
            options = options.name(name);
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &config.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some(path) = &config.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| connect_error(e.into()))?;
        }
        let addrs = config
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| connect_error(e.into()))?;

        // The client bounds each attempt by `connection_timeout`; the outer bound also covers
        // DNS and several addresses.
        let limit = config.connect_timeout + Duration::from_millis(500);
        let client = match tokio::time::timeout(limit, options.connect(addrs)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(connect_error(e.into())),
            Err(_) => {
                return Err(connect_error(
                    format!("no connection within {limit:?}").into(),
                ));
            }
        };

        let _ = reporter.client.set(client.clone());
        let shutdown = watch::channel(false).0;
        let mut tasks = Vec::new();
        let js = if config.enable_jetstream {
            let js = jetstream::JetStream::setup(&client, &config).await?;
            tasks.push(
                js.watch_leader(&config, reporter.clone(), shutdown.subscribe())
                    .await?,
            );
            Some(js)
        } else {
            None
        };
        tracing::debug!(
            url = %target,
            server = %describe_server(&client.server_info()),
            jetstream = config.enable_jetstream,
            "nats bus connected"
        );

        Ok(NatsBus {
            inner: Arc::new(Inner {
                config,
                client,
                js,
                reporter,
                closed: AtomicBool::new(false),
                shutdown,
                tasks: Mutex::new(tasks),
            }),
        })
    }
}
