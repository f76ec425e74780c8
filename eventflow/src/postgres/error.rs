//! The one mapping of sqlx errors to eventflow's, used by every path of the PostgreSQL backend
//! (event store, snapshots, checkpoints, projections, sagas), classified by SQLSTATE and
//! constraint name, never by message text.

use sqlx::error::ErrorKind;

use crate::error::Error;

/// The backend name in [`Error::Connect`] and [`Error::Backend`].
pub(crate) const BACKEND: &str = "postgres";

/// The unique constraint a database error violated, if it is a unique violation (`23505`).
pub(crate) fn unique_violation(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation => {
            Some(db.constraint().unwrap_or(""))
        }
        _ => None,
    }
}

/// Maps a sqlx error to eventflow's, classified by SQLSTATE (never by message text):
/// - a lost or refused connection (class 08, `57P01`-`57P03` admin shutdown / crash / cannot
///   connect now, I/O errors, pool timeouts) is [`Error::Connect`] naming `target`;
/// - a value the server rejects (class 22 "data exception", e.g. `22P05` for `\u0000` in
///   JSONB, `22021` for a NUL byte in text) is [`Error::InvalidArgument`] with the server's
///   explanation;
/// - a row that cannot be decoded is [`Error::Decode`];
/// - an append past the last position (`events_position_bound`, 2^43 transactions) is
///   [`Error::PositionsExhausted`];
/// - a closed pool is [`Error::Closed`];
/// - anything else (a unique violation the caller did not resolve first with
///   [`unique_violation`], a serialization failure `40001`, a deadlock `40P01`) is
///   [`Error::Backend`] with the sqlx error, whose SQLSTATE stays readable through `source()`.
pub(crate) fn map_sqlx(target: &str, error: sqlx::Error) -> Error {
    let connect = |error: sqlx::Error| Error::Connect {
        backend: BACKEND,
        target: target.to_owned(),
        source: Box::new(error),
    };
    match &error {
        sqlx::Error::PoolClosed => Error::Closed("postgres connection pool"),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            Error::decode("<event row>", error)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => connect(error),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db.constraint() == Some("events_position_bound") {
                return Error::PositionsExhausted(format!(
                    "transaction ids plus the schema's offset reached 2^43 (SQLSTATE {code}); \
                     copy the events into a new store"
                ));
            }
            if code.starts_with("08") || matches!(code.as_str(), "57P01" | "57P02" | "57P03") {
                connect(error)
            } else if code.starts_with("22") {
                Error::InvalidArgument(format!(
                    "postgres rejected a value (SQLSTATE {code}): {}",
                    db.message()
                ))
            } else {
                Error::backend(BACKEND, error)
            }
        }
        _ => Error::backend(BACKEND, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_losses_are_connect_errors() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        for error in [io, sqlx::Error::PoolTimedOut, sqlx::Error::WorkerCrashed] {
            match map_sqlx("postgres://u@h:5432/db", error) {
                Error::Connect {
                    backend, target, ..
                } => {
                    assert_eq!(backend, BACKEND);
                    assert_eq!(target, "postgres://u@h:5432/db");
                }
                other => panic!("not a connect error: {other:?}"),
            }
        }
        assert!(matches!(
            map_sqlx("t", sqlx::Error::PoolClosed),
            Error::Closed(_)
        ));
        assert!(matches!(
            map_sqlx("t", sqlx::Error::RowNotFound),
            Error::Backend { .. }
        ));
        assert_eq!(unique_violation(&sqlx::Error::RowNotFound), None);
    }
}
