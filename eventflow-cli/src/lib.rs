//! The `eventflow` command line: look into an eventflow PostgreSQL store and operate it without
//! writing SQL.
//!
//! ```text
//! eventflow migrate [--check]            apply (or check for) pending migrations
//! eventflow streams [--prefix P]         streams with version, last type, last time
//! eventflow stream <id> [--from V]       the events of one stream
//! eventflow events --type T --correlation C --tenant X --since 1h --limit N
//! eventflow tail [PATTERN] [--bus nats|redis] [--count N]
//! eventflow trace <correlation-id> [--format tree|mermaid|dot]
//! eventflow projections [rebuild <name>] eventflow relay status
//! eventflow dead-letters list|show|retry|discard    (list --bus redis|nats: the bus's own)
//! eventflow sagas <correlation-id>
//! ```
//!
//! Every command takes `--database-url` (or `DATABASE_URL`) and `--schema` (or
//! `EVENTFLOW_SCHEMA`, default `eventflow`); the bus commands `--nats-url` / `--redis-url` (or
//! `NATS_URL` / `REDIS_URL`). Read commands print a table, or JSON with `--json`. An error is
//! one line on stderr and exit status 1 (2 for a command line clap rejects); `migrate --check`
//! exits 1 when migrations are pending.
//!
//! # Your own binary, with your projections
//! Rebuilding a projection needs its code (its handler writes the read model). The `eventflow`
//! binary knows none; a service builds its own with [`App`]:
//!
//! ```no_run
//! # struct OrderTotals;
//! # #[async_trait::async_trait]
//! # impl eventflow::postgres::PgProjection for OrderTotals {
//! #     fn name(&self) -> &str { "order-totals" }
//! #     async fn handle(&self, _: &mut eventflow::postgres::PgTransaction, _: &eventflow::Event)
//! #         -> eventflow::HandlerResult { Ok(()) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     eventflow_cli::App::new().projection(OrderTotals).main()
//! }
//! ```

mod cli;
mod commands;
mod output;
mod trace;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use eventflow::postgres::{PgProjection, PostgresEventStore, projection_runner};
use eventflow::projection::ProjectionRunner;

pub use cli::Cli;

/// Makes a projection's runner over a store.
type RunnerFactory =
    Box<dyn FnOnce(&PostgresEventStore) -> eventflow::Result<ProjectionRunner> + Send>;

/// The command line, with the projections it may rebuild.
#[derive(Default)]
pub struct App {
    projections: HashMap<String, RunnerFactory>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("projections", &self.projections.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl App {
    /// A command line with no projections registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a transactional projection, so `projections rebuild <name>` can rebuild it.
    pub fn projection<P: PgProjection>(mut self, projection: P) -> Self {
        let name = projection.name().to_owned();
        self.projections.insert(
            name,
            Box::new(move |store: &PostgresEventStore| {
                projection_runner(
                    Arc::new(store.clone()),
                    store.pool().clone(),
                    store.schema(),
                    projection,
                )
            }),
        );
        self
    }

    /// Parses the process's arguments, runs the command and returns its exit code; errors are
    /// printed as one line on stderr.
    pub fn main(self) -> ExitCode {
        // A panic is a bug, but the operator still gets one line, not a backtrace.
        std::panic::set_hook(Box::new(|info| {
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("error: internal error: {}", one_line(&message));
        }));
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            Err(error) => return clap_error(&error),
        };
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime,
            Err(error) => return fail(&anyhow::Error::new(error)),
        };
        match runtime.block_on(commands::run(cli, self.projections)) {
            Ok(code) => code,
            Err(error) => fail(&error),
        }
    }
}

/// `text` on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", one_line(&format!("{error:#}")));
    ExitCode::FAILURE
}

/// Help and version go to stdout as clap renders them; a usage error is one line.
fn clap_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // The message is what comes before the usage (for a missing argument, the
            // argument is on the second line).
            let rendered = error.render().to_string();
            let message = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("  tip:"))
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.trim().strip_prefix("error: ").unwrap_or(&message);
            eprintln!("error: {} (see --help)", one_line(message));
            ExitCode::from(2)
        }
    }
}
