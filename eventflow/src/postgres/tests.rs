//! Unit tests of the backend that need no server: every constructor taking a schema name
//! applies the one rule of `schema.rs`, with the same error.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::*;
use crate::bus::HandlerResult;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::memory::InMemoryEventStore;

/// A pool that never connects unless used (these tests never use it).
fn lazy_pool() -> PgPool {
    PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:5432/test")
        .unwrap_or_else(|e| panic!("lazy pool: {e}"))
}

struct Noop;

#[async_trait]
impl PgProjection for Noop {
    fn name(&self) -> &str {
        "noop"
    }

    async fn handle(&self, _tx: &mut PgTransaction, _event: &Event) -> HandlerResult {
        Ok(())
    }
}

/// The `InvalidArgument` message of each constructor for `schema`, or `None` where it was
/// accepted.
fn rejections(schema: &str) -> Vec<(&'static str, Option<String>)> {
    let message = |result: Result<()>| match result {
        Ok(()) => None,
        Err(Error::InvalidArgument(message)) => Some(message),
        Err(other) => panic!("{schema:?}: not InvalidArgument: {other:?}"),
    };
    let pool = lazy_pool();
    let store = Arc::new(InMemoryEventStore::new());
    vec![
        (
            "event store",
            message(
                PostgresEventStore::builder(pool.clone())
                    .schema(schema)
                    .build()
                    .map(drop),
            ),
        ),
        (
            "snapshot store",
            message(PostgresSnapshotStore::in_schema(pool.clone(), schema).map(drop)),
        ),
        (
            "checkpoint store",
            message(PostgresCheckpointStore::in_schema(pool.clone(), schema).map(drop)),
        ),
        (
            "saga store",
            message(PostgresSagaStore::new(pool.clone(), schema).map(drop)),
        ),
        (
            "projection runner",
            message(projection_runner(store, pool, schema, Noop).map(drop)),
        ),
    ]
}

#[tokio::test]
async fn every_constructor_applies_the_one_schema_rule() {
    for good in ["eventflow", "t_abc_123", "_x"] {
        for (who, rejected) in rejections(good) {
            assert_eq!(rejected, None, "{who} rejected {good:?}");
        }
    }
    // `pg_x` and `A` were accepted by the projection and saga paths before they shared the
    // store's rule.
    for bad in [
        "",
        "1abc",
        "pg_x",
        "A",
        "a-b",
        "a\"b",
        "a;drop",
        &"x".repeat(64),
    ] {
        let expected = Some(format!(
            "invalid schema name {bad:?}: use 1 to 63 characters of [a-z0-9_], not starting \
             with a digit or `pg_`"
        ));
        for (who, rejected) in rejections(bad) {
            assert_eq!(rejected, expected, "{who} on {bad:?}");
        }
    }
}

#[tokio::test]
async fn debug_output_names_the_schema_not_the_statements() {
    let pool = lazy_pool();
    let saga = PostgresSagaStore::new(pool.clone(), "s1").unwrap_or_else(|e| panic!("{e}"));
    let debug = format!("{saga:?}");
    assert!(debug.contains("\"s1\""), "{debug}");
    assert!(!debug.contains("SELECT"), "{debug}");
    let store = PostgresEventStore::new(pool);
    assert!(format!("{store:?}").contains(DEFAULT_SCHEMA));
}
