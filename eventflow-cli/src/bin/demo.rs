//! `eventflow-cli-demo`: the `eventflow` command line with one registered transactional
//! projection, `type-counts` (events counted per type in the table `cli_type_counts` of the
//! store's schema), so the tests can run `projections rebuild` as a process.

use eventflow::postgres::{PgProjection, PgTransaction};
use eventflow::{Event, HandlerResult};

struct TypeCounts;

#[async_trait::async_trait]
impl PgProjection for TypeCounts {
    fn name(&self) -> &str {
        "type-counts"
    }

    async fn handle(&self, tx: &mut PgTransaction, event: &Event) -> HandlerResult {
        sqlx::query(
            "INSERT INTO cli_type_counts (event_type, n) VALUES ($1, 1) \
             ON CONFLICT (event_type) DO UPDATE SET n = cli_type_counts.n + 1",
        )
        .bind(&event.event_type)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTransaction) -> HandlerResult {
        sqlx::query("DELETE FROM cli_type_counts")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    eventflow_cli::App::new().projection(TypeCounts).main()
}
