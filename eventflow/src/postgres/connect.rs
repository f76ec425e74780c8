//! Reaching the server: the pool a [`PostgresConfig`] opens, how a pool is named in errors
//! (never with its password), and the embedded migrations, applied under one advisory lock.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

use super::config::PostgresConfig;
use super::error::{BACKEND, map_sqlx};
use super::sql::Sql;
use crate::error::{Error, Result};

/// The embedded migrations: the workspace's top-level `migrations/`, reached through the
/// `eventflow/migrations` link so the packaged crate carries them too.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The embedded migrations' versions and descriptions, oldest first.
pub(crate) fn embedded_migrations() -> impl Iterator<Item = (i64, String)> {
    MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| (m.version, m.description.to_string()))
}

/// `postgres://user@host:port/db`, without the password.
pub(crate) fn describe(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// The connect options `config` describes: its URL with the fields that override it.
///
/// # Errors
/// [`Error::InvalidArgument`] for a bad URL (the message never repeats the URL, which may hold
/// a password).
pub(crate) fn connect_options(config: &PostgresConfig) -> Result<PgConnectOptions> {
    let mut options = PgConnectOptions::from_str(&config.url).map_err(|e| {
        Error::InvalidArgument(format!(
            "invalid PostgreSQL URL {}: {e}",
            crate::redact::redact_url(&config.url)
        ))
    })?;
    options = options.application_name(&config.application_name);
    if let Some(password) = &config.password {
        options = options.password(password);
    }
    if let Some(mode) = config.ssl_mode {
        options = options.ssl_mode(mode);
    }
    if let Some(ca) = &config.ssl_root_cert {
        options = options.ssl_root_cert(ca);
    }
    if let (Some(cert), Some(key)) = (&config.ssl_client_cert, &config.ssl_client_key) {
        options = options.ssl_client_cert(cert).ssl_client_key(key);
    }
    if let Some(tenant) = &config.tenant {
        options = super::tenant::with_tenant(options, tenant);
    }
    if let Some(timeout) = config.statement_timeout {
        options = options.options([("statement_timeout", timeout.as_millis().to_string())]);
    }
    Ok(options)
}

/// Opens the pool `config` describes. One connection is made first, directly and within
/// `connect_timeout`, so that a server that is down, refuses TLS or the credentials fails here
/// with its own reason (the pool would retry until its timeout and report only that); it is
/// closed again, and the pool connects on demand.
///
/// # Errors
/// [`Error::Connect`] when no connection is made within `connect_timeout`,
/// [`Error::InvalidArgument`] for a bad URL or configuration.
pub(crate) async fn connect_pool(config: &PostgresConfig) -> Result<PgPool> {
    config.validate()?;
    let options = connect_options(config)?;
    let target = describe(&options);
    let connect_error = |source: crate::error::BoxError| Error::Connect {
        backend: BACKEND,
        target: target.clone(),
        source,
    };
    match tokio::time::timeout(config.connect_timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(connect_error(Box::new(e))),
        Err(_) => {
            return Err(connect_error(
                format!("no connection within {:?}", config.connect_timeout).into(),
            ));
        }
    }
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.connect_timeout)
        .test_before_acquire(config.test_before_acquire)
        .connect_lazy_with(options))
}

/// Applies the embedded migrations to the schema of `sql` over `pool`, creating the schema if
/// needed.
///
/// Everything, `CREATE SCHEMA` included, runs on one connection of its own holding a
/// session-level advisory lock keyed by the schema name, so any number of processes may
/// migrate the same schema at once: one applies, the others wait and then find nothing to do.
/// (sqlx's own migration lock is taken only after `CREATE SCHEMA` would have run, and two
/// concurrent `CREATE SCHEMA IF NOT EXISTS` of one new schema can fail with `23505`.)
pub(crate) async fn migrate_schema(pool: &PgPool, sql: &Sql) -> Result<()> {
    let target = describe(&pool.connect_options());
    let map = |e| map_sqlx(&target, e);
    // A connection of its own, closed afterwards, so neither the `search_path` set for the
    // unqualified names in the migrations nor the lock ever reaches the pool.
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(map)?;
    let result = async {
        // Waiting for another process's migration, or a long one, is not a slow statement.
        conn.execute(super::sql::NO_STATEMENT_TIMEOUT)
            .await
            .map_err(map)?;
        sqlx::query(super::sql::ADVISORY_LOCK)
            .bind(sql.schema.migration_lock_key())
            .execute(&mut conn)
            .await
            .map_err(map)?;
        conn.execute(sql.create_schema().as_str())
            .await
            .map_err(map)?;
        conn.execute(sql.set_search_path().as_str())
            .await
            .map_err(map)?;
        MIGRATOR
            .run_direct(&mut conn)
            .await
            .map_err(|e| Error::backend(BACKEND, e))?;
        // After a restore into another cluster: move new positions above the stored ones.
        super::continuity::continue_positions(&mut conn, sql)
            .await
            .map_err(map)?;
        Ok(())
    }
    .await;
    // Closing the session releases the lock, whatever happened above.
    let _ = conn.close().await;
    result
}
