//! Reaching the server: the pool a URL opens, how a pool is named in errors (never with its
//! password), and the embedded migrations.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

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

/// Connects a pool of up to 10 connections to `url`.
///
/// # Errors
/// [`Error::Connect`] when the server cannot be reached, [`Error::InvalidArgument`] for a bad
/// URL.
pub(crate) async fn connect_pool(url: &str) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::InvalidArgument(format!("invalid PostgreSQL URL: {e}")))?;
    let target = describe(&options);
    PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await
        .map_err(|e| Error::Connect {
            backend: BACKEND,
            target,
            source: Box::new(e),
        })
}

/// Applies the embedded migrations to the schema of `sql` over `pool`, creating the schema if
/// needed.
pub(crate) async fn migrate_schema(pool: &PgPool, sql: &Sql) -> Result<()> {
    let target = describe(&pool.connect_options());
    let map = |e| map_sqlx(&target, e);
    // A connection of its own, closed afterwards, so the `search_path` set for the unqualified
    // names in the migrations never leaks into the pool.
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(map)?;
    let result = async {
        conn.execute(sql.create_schema().as_str())
            .await
            .map_err(map)?;
        conn.execute(sql.set_search_path().as_str())
            .await
            .map_err(map)?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| Error::backend(BACKEND, e))
    }
    .await;
    let _ = conn.close().await;
    result
}
