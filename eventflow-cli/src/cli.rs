//! The command line's grammar (clap derive): every command, flag and environment variable.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect and operate an eventflow store: streams, live events, causation trees,
/// projections, the relay, dead letters and sagas.
#[derive(Debug, Parser)]
#[command(name = "eventflow", version, propagate_version = true)]
pub struct Cli {
    /// Where to connect.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection flags, accepted by every command.
#[derive(Debug, Args)]
pub struct Global {
    /// PostgreSQL URL of the store.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Schema holding the store's tables.
    #[arg(
        long,
        env = "EVENTFLOW_SCHEMA",
        global = true,
        default_value = "eventflow"
    )]
    pub schema: String,
    /// NATS URL (for `--bus nats`).
    #[arg(long, env = "NATS_URL", global = true, hide_env_values = true)]
    pub nats_url: Option<String>,
    /// Redis URL (for `--bus redis`).
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Subject prefix (NATS) or key prefix (Redis) of the bus.
    #[arg(long, global = true, default_value = "events")]
    pub bus_prefix: String,
}

/// A bus to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusKind {
    /// NATS (core subjects `<prefix>.<event type>`), at `--nats-url`.
    Nats,
    /// Redis pub/sub (channels `<prefix>:<event type>`), at `--redis-url`.
    Redis,
}

/// A bus whose own dead letters `dead-letters list --bus` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeadLetterBus {
    /// The dead-letter stream of Redis Streams (`<bus-prefix>:dead-letter`), at `--redis-url`.
    Redis,
    /// The JetStream dead-letter subject `--dead-letter-subject`, at `--nats-url`.
    Nats,
}

/// Diagram formats of `trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    /// A tree drawn with box characters.
    Tree,
    /// A Mermaid flowchart.
    Mermaid,
    /// A Graphviz digraph.
    Dot,
}

/// Output flag of the read commands.
#[derive(Debug, Clone, Copy, Args)]
pub struct Output {
    /// Print JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the store's migrations to the schema (or check for pending ones).
    Migrate {
        /// Apply nothing; list pending migrations and exit with status 1 when there are any.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        output: Output,
    },
    /// List streams with their version, last event type and last time.
    Streams {
        /// Only streams whose id starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many streams.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        output: Output,
    },
    /// Show the events of one stream.
    Stream {
        /// The stream's id.
        id: String,
        /// First stream version to show.
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[command(flatten)]
        output: Output,
    },
    /// Find events by type, correlation id, tenant and age, in global order.
    Events {
        /// Only these event types (repeatable).
        #[arg(long = "type")]
        event_type: Vec<String>,
        /// Only this correlation id.
        #[arg(long)]
        correlation: Option<String>,
        /// Only this tenant id.
        #[arg(long)]
        tenant: Option<String>,
        /// Only events that occurred within this long before now (`30s`, `15m`, `1h`, `2d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        output: Output,
    },
    /// Follow new events live: the store in global order, or a bus.
    Tail {
        /// Event type pattern (`order.*`, `order.>`, `*.failed`); all events by default.
        pattern: Option<String>,
        /// Follow this bus instead of the store.
        #[arg(long, value_enum)]
        bus: Option<BusKind>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        output: Output,
    },
    /// Draw every event of one correlation id as its causation tree.
    Trace {
        /// The correlation id.
        correlation_id: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "tree")]
        format: TraceFormat,
        #[command(flatten)]
        output: Output,
    },
    /// Projections: position, lag and parked events; rebuild, reset, pause or resume one.
    Projections {
        /// What to do (list them by default).
        #[command(subcommand)]
        action: Option<ProjectionAction>,
        /// Checkpoint names that belong to relays, not projections (repeatable).
        #[arg(long = "relay-name", default_value = eventflow::relay::DEFAULT_RELAY_NAME)]
        relay_names: Vec<String>,
        #[command(flatten)]
        output: Output,
    },
    /// The relay that publishes the store on a bus.
    Relay {
        /// What to do.
        #[command(subcommand)]
        action: RelayAction,
    },
    /// Events that delivery gave up on: list, show, retry, discard.
    #[command(name = "dead-letters")]
    DeadLetters {
        /// What to do.
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Saga instances of one correlation id: state, handled events, pending deadlines.
    Sagas {
        /// The correlation id.
        correlation_id: String,
        #[command(flatten)]
        output: Output,
    },
}

/// `projections` actions.
#[derive(Debug, Subcommand)]
pub enum ProjectionAction {
    /// List projections (the default).
    List,
    /// Clear a projection's read model and replay every stored event into it, with a progress
    /// bar. Needs the projection's code: only projections registered in this binary
    /// (`eventflow_cli::App::projection`) can be rebuilt.
    Rebuild {
        /// The projection's name.
        name: String,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Pause a transactional projection: its runners, in every process, apply nothing until
    /// it is resumed (from their next batch on).
    Pause {
        /// The projection's name.
        name: String,
    },
    /// Resume a paused projection.
    Resume {
        /// The projection's name.
        name: String,
    },
    /// Clear a projection's read model and set its checkpoint to 0 without replaying: its
    /// running service (a transactional PostgreSQL projection) sees the checkpoint moved and
    /// replays from the first event. Needs the projection's code, as `rebuild`.
    Reset {
        /// The projection's name.
        name: String,
    },
}

/// `relay` actions.
#[derive(Debug, Subcommand)]
pub enum RelayAction {
    /// Position, head, lag and parked events of a relay.
    Status {
        /// The relay's checkpoint name.
        #[arg(long, default_value = eventflow::relay::DEFAULT_RELAY_NAME)]
        name: String,
        #[command(flatten)]
        output: Output,
    },
}

/// `dead-letters` actions.
#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// List parked events, oldest first: the store's, or (`--bus redis`) the entries of a
    /// Redis Streams bus's dead-letter stream (`<bus-prefix>:dead-letter`), or (`--bus nats`)
    /// the messages of a JetStream bus's dead-letter subject.
    List {
        /// Only this source (the relay's name, a projection's, `saga:<name>`, ...).
        #[arg(long, conflicts_with = "bus")]
        source: Option<String>,
        /// List this bus's dead letters instead of the store's.
        #[arg(long, value_enum)]
        bus: Option<DeadLetterBus>,
        /// The JetStream dead-letter subject (the bus's `NatsConfig::dead_letter_subject`),
        /// for `--bus nats`.
        #[arg(long)]
        dead_letter_subject: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        output: Output,
    },
    /// Show one parked event in full.
    Show {
        /// The dead letter's id.
        id: uuid::Uuid,
        #[command(flatten)]
        output: Output,
    },
    /// Publish a parked event on the bus again and remove it once the bus took it.
    Retry {
        /// The dead letter's id.
        id: uuid::Uuid,
        /// The bus to publish on.
        #[arg(long, value_enum)]
        bus: BusKind,
    },
    /// Remove a parked event for good.
    Discard {
        /// The dead letter's id.
        id: uuid::Uuid,
    },
}
