//! [`PostgresConfig`]: where the PostgreSQL store connects, with which limits and TLS, and in
//! which schema.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::PgSslMode;

use super::schema::DEFAULT_SCHEMA;
use crate::error::{Error, Result};
use crate::redact::{REDACTED, redact_url};

/// Configuration of a [`PostgresEventStore`](super::PostgresEventStore) opened with
/// [`connect_with`](super::PostgresEventStore::connect_with), like `NatsConfig` and
/// `RedisConfig` for the buses.
///
/// Start from the default (or [`new`](Self::new) with a URL) and change what differs; the fields
/// are public, so `PostgresConfig { .., ..Default::default() }` works too:
///
/// ```
/// use std::time::Duration;
/// use eventflow::postgres::{PgSslMode, PostgresConfig};
///
/// let mut config = PostgresConfig::new("postgres://app@db.example.com:5432/app");
/// config.password = Some("from-a-secret-store".into());
/// config.ssl_mode = Some(PgSslMode::VerifyFull);
/// config.ssl_root_cert = Some("/etc/ssl/private-ca.pem".into());
/// config.statement_timeout = Some(Duration::from_secs(30));
/// config.schema = "orders".into();
/// // `Debug` never shows a password, neither the field nor one in the URL.
/// assert!(!format!("{config:?}").contains("from-a-secret-store"));
/// ```
///
/// # TLS
/// TLS is rustls (with the `ring` provider, as the NATS and Redis buses) through sqlx.
/// [`ssl_mode`](Self::ssl_mode) (or the URL's `sslmode=`) is one of:
/// - `disable`: never TLS;
/// - `prefer` (the default): TLS when the server offers it, without verifying its certificate,
///   else clear text;
/// - `require`: TLS or fail, without verifying the certificate;
/// - `verify-ca`: TLS, and the certificate must chain to a trusted root (the system's, or
///   [`ssl_root_cert`](Self::ssl_root_cert)). With sqlx 0.8.6 and rustls 0.23.24 or later it
///   also checks the host name, as `verify-full` does (sqlx issue 3793: its name-ignoring
///   verifier misses rustls's newer error variant): stricter, never weaker;
/// - `verify-full`: as `verify-ca`, and the certificate must name the host connected to.
///
/// A server that asks for a client certificate (`hostssl ... cert` in `pg_hba.conf`) gets
/// [`ssl_client_cert`](Self::ssl_client_cert) and [`ssl_client_key`](Self::ssl_client_key)
/// (PEM files, given together). Production should use `verify-full`.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host[:port]/database[?options]`; any libpq-style option
    /// sqlx understands (`sslmode`, `sslrootcert`, `options`, ...) may be given here, and the
    /// fields below override it. Default `postgres://postgres@127.0.0.1:5432/postgres`.
    pub url: String,
    /// Password (overrides the URL's; keeps it out of the URL). Default none.
    pub password: Option<String>,
    /// Most connections the pool opens. Default 10.
    pub max_connections: u32,
    /// How long [`connect_with`](super::PostgresEventStore::connect_with) waits for the first
    /// connection before it fails with [`Error::Connect`], and how long a later call waits
    /// for a connection (a new one, or a free one of a busy pool) before it does. Default 5 s.
    pub connect_timeout: Duration,
    /// The server's `statement_timeout` for every connection of the pool: a statement running
    /// longer is cancelled (SQLSTATE `57014`). Default none (the server's setting).
    pub statement_timeout: Option<Duration>,
    /// TLS mode (overrides the URL's `sslmode`); see [TLS](#tls). Default none: the URL's, or
    /// `prefer`.
    pub ssl_mode: Option<PgSslMode>,
    /// PEM file of the certificate authorities to trust, besides the system's roots, for
    /// `verify-ca` and `verify-full`. Default none.
    pub ssl_root_cert: Option<PathBuf>,
    /// PEM file of the client certificate (with [`ssl_client_key`](Self::ssl_client_key)).
    /// Default none.
    pub ssl_client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key. Default none.
    pub ssl_client_key: Option<PathBuf>,
    /// Schema holding the tables; see
    /// [`PostgresEventStoreBuilder::schema`](super::PostgresEventStoreBuilder::schema). Default
    /// [`DEFAULT_SCHEMA`].
    pub schema: String,
    /// `application_name` of every connection, as `pg_stat_activity` shows it. Default
    /// `eventflow`.
    pub application_name: String,
    /// Ping every pooled connection before handing it out (sqlx's `test_before_acquire`).
    /// Default `false`: an append or a read is then one round trip, and a connection the
    /// server dropped while idle fails the one call that meets it with [`Error::Connect`]
    /// (transient: retry it) and is discarded. `true` trades a round trip per call for not
    /// seeing that error.
    pub test_before_acquire: bool,
    /// See [`PostgresEventStoreBuilder::poll_interval`](super::PostgresEventStoreBuilder::poll_interval).
    /// Default 500 ms.
    pub poll_interval: Duration,
    /// Scope the store to this tenant: every connection sets `eventflow.tenant`, and the
    /// row-level security policy lets the role (a role per tenant that does not own the tables,
    /// see [`PostgresEventStore::tenant`](super::PostgresEventStore::tenant) and
    /// [`grant_tenant`](super::PostgresEventStore::grant_tenant)) read and append only this
    /// tenant's events. Default none (an operator's handle).
    pub tenant: Option<String>,
}

impl PostgresConfig {
    /// The default configuration with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks the values that cannot work.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field.
    pub(super) fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("PostgresConfig: {m}")));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive");
        }
        if self.statement_timeout.is_some_and(|t| t.as_millis() == 0) {
            return bad("statement_timeout must be at least 1 ms (None for the server's)");
        }
        if self.ssl_client_cert.is_some() != self.ssl_client_key.is_some() {
            return bad("ssl_client_cert and ssl_client_key are given together");
        }
        super::schema::Schema::new(&self.schema)?;
        if let Some(tenant) = &self.tenant {
            super::tenant::validate_tenant(tenant)?;
        }
        Ok(())
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            password: None,
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: None,
            ssl_mode: None,
            ssl_root_cert: None,
            ssl_client_cert: None,
            ssl_client_key: None,
            schema: DEFAULT_SCHEMA.to_owned(),
            application_name: "eventflow".to_owned(),
            test_before_acquire: false,
            poll_interval: Duration::from_millis(500),
            tenant: None,
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_client_cert", &self.ssl_client_cert)
            .field("ssl_client_key", &self.ssl_client_key)
            .field("schema", &self.schema)
            .field("application_name", &self.application_name)
            .field("test_before_acquire", &self.test_before_acquire)
            .field("poll_interval", &self.poll_interval)
            .field("tenant", &self.tenant)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_debug_hides_passwords() {
        assert!(PostgresConfig::default().validate().is_ok());
        let mut config = PostgresConfig::new("postgres://app:url-secret@db:5432/app");
        config.password = Some("field-secret".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("url-secret"), "{shown}");
        assert!(!shown.contains("field-secret"), "{shown}");
        assert!(shown.contains("db:5432"), "{shown}");
    }

    #[test]
    fn impossible_values_are_rejected() {
        let invalid = |change: fn(&mut PostgresConfig)| {
            let mut config = PostgresConfig::default();
            change(&mut config);
            matches!(config.validate(), Err(Error::InvalidArgument(_)))
        };
        assert!(invalid(|c| c.max_connections = 0));
        assert!(invalid(|c| c.connect_timeout = Duration::ZERO));
        assert!(invalid(
            |c| c.statement_timeout = Some(Duration::from_micros(10))
        ));
        assert!(invalid(|c| c.ssl_client_cert = Some("c.pem".into())));
        assert!(invalid(|c| c.schema = "Bad".into()));
    }
}
