//! The one mapping of sqlx errors to eventflow's for the SQLite backend, classified by sqlx's
//! `ErrorKind` and SQLite's result codes, never by message text.

use sqlx::error::ErrorKind;

use crate::error::Error;

/// The backend name in [`Error::Connect`] and [`Error::Backend`].
pub(crate) const BACKEND: &str = "sqlite";

/// Whether a database error is a unique violation.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation)
}

/// Maps a sqlx error to eventflow's: a file that cannot be opened or an I/O error is
/// [`Error::Connect`] naming `target`; a row that cannot be decoded is [`Error::Decode`]; a
/// closed pool is [`Error::Closed`]; anything else (`SQLITE_BUSY` after the busy timeout, a
/// full disk) is [`Error::Backend`], whose SQLite code stays readable through `source()`.
pub(crate) fn map_sqlx(target: &str, error: sqlx::Error) -> Error {
    match &error {
        sqlx::Error::PoolClosed => Error::Closed("sqlite connection pool"),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            Error::decode("<event row>", error)
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => {
            Error::Connect {
                backend: BACKEND,
                target: target.to_owned(),
                source: Box::new(error),
            }
        }
        _ => Error::backend(BACKEND, error),
    }
}
