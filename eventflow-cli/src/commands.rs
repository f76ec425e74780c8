//! What each command does, through the library's public API (`eventflow::postgres`'s store,
//! its operator reads, dead-letter store and projection runners; the NATS and Redis buses).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use eventflow::bus::PatternSet;
use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::bus::redis::{RedisBus, RedisConfig};
use eventflow::lease::{Lease, LeaseStore as _};
use eventflow::postgres::{PgConnectOptions, PgPoolOptions, PostgresEventStore};
use eventflow::projection as partitioned;
use eventflow::store::{DeadLetterStore, EventCriteria, ParkedEvent};
use eventflow::{Event, EventBus, EventStore, EventStoreExt, HandlerResult};
use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use std::str::FromStr as _;

use crate::RunnerFactory;
use crate::cli::{
    BusKind, Cli, Command, DeadLetterAction, DeadLetterBus, Global, ProjectionAction, RelayAction,
    TraceFormat,
};
use crate::output::{compact, print, print_json, print_table, table, time};
use crate::trace;

type Result<T> = anyhow::Result<T>;

/// Runs one parsed command line.
pub(crate) async fn run(cli: Cli, projections: HashMap<String, RunnerFactory>) -> Result<ExitCode> {
    let global = cli.global;
    let store = || connect(&global);
    match cli.command {
        Command::Migrate { check, output } => migrate(&store().await?, check, output.json).await,
        Command::Streams {
            prefix,
            limit,
            output,
        } => {
            let streams = store().await?.streams(&prefix, limit).await?;
            if output.json {
                print_json(&streams)?;
            } else {
                let mut t = table(["STREAM", "VERSION", "LAST TYPE", "LAST TIME"]);
                for s in &streams {
                    t.add_row([
                        s.stream_id.clone(),
                        s.version.to_string(),
                        s.last_event_type.clone(),
                        time(&s.last_occurred_at),
                    ]);
                }
                print_table(&t)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stream { id, from, output } => {
            let events = store().await?.load_stream(&id, from).await?;
            if events.is_empty() {
                bail!("unknown stream {id:?} (or no events from version {from})");
            }
            if output.json {
                print_json(&events)?;
            } else {
                let mut t = table(["VERSION", "TYPE", "TIME", "CORRELATION", "PAYLOAD"]);
                for e in &events {
                    t.add_row([
                        e.stream_version.map(|v| v.to_string()).unwrap_or_default(),
                        e.event_type.clone(),
                        time(&e.timestamp),
                        e.correlation_id.clone().unwrap_or_default(),
                        compact(&e.payload, 60),
                    ]);
                }
                print_table(&t)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            event_type,
            correlation,
            tenant,
            since,
            limit,
            output,
        } => {
            let mut criteria = EventCriteria::all().event_types(event_type).limit(limit);
            criteria.correlation_id = correlation;
            criteria.tenant_id = tenant;
            if let Some(since) = since {
                let since = chrono::Duration::from_std(since).context("--since is too long")?;
                criteria = criteria.since(chrono::Utc::now() - since);
            }
            let events = store().await?.load(&criteria).await?;
            print_events(&events, output.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail {
            pattern,
            bus,
            count,
            output,
        } => {
            tail(&global, pattern, bus, count, output.json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace {
            correlation_id,
            format,
            output,
        } => {
            let events = store()
                .await?
                .load(&EventCriteria::all().correlation_id(&correlation_id))
                .await?;
            if events.is_empty() {
                bail!("no events with correlation id {correlation_id:?}");
            }
            if output.json {
                print_json(&events)?;
            } else {
                print(&match format {
                    TraceFormat::Tree => trace::tree(&events),
                    TraceFormat::Mermaid => trace::mermaid(&events),
                    TraceFormat::Dot => trace::dot(&events),
                })?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Projections {
            action,
            relay_names,
            output,
        } => match action.unwrap_or(ProjectionAction::List) {
            ProjectionAction::List => {
                list_projections(&store().await?, &relay_names, output.json).await
            }
            ProjectionAction::Rebuild { name, quiet } => {
                rebuild(&store().await?, projections, &name, quiet).await
            }
            ProjectionAction::Pause { name } => {
                store().await?.set_projection_paused(&name, true).await?;
                print(&format!("paused {name}\n"))?;
                Ok(ExitCode::SUCCESS)
            }
            ProjectionAction::Resume { name } => {
                store().await?.set_projection_paused(&name, false).await?;
                print(&format!("resumed {name}\n"))?;
                Ok(ExitCode::SUCCESS)
            }
            ProjectionAction::Reset { name } => {
                let runner = registered(projections, &name)?(&store().await?)?;
                runner.reset().await?;
                print(&format!("reset {name}: read model cleared, checkpoint 0\n"))?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Relay {
            action: RelayAction::Status { name, output },
        } => relay_status(&store().await?, &name, output.json).await,
        Command::DeadLetters {
            action:
                DeadLetterAction::List {
                    bus: Some(DeadLetterBus::Redis),
                    limit,
                    output,
                    ..
                },
        } => redis_dead_letters(&global, limit, output.json).await,
        Command::DeadLetters {
            action:
                DeadLetterAction::List {
                    bus: Some(DeadLetterBus::Nats),
                    dead_letter_subject,
                    limit,
                    output,
                    ..
                },
        } => nats_dead_letters(&global, dead_letter_subject, limit, output.json).await,
        Command::DeadLetters { action } => dead_letters(&global, &store().await?, action).await,
        Command::Sagas {
            correlation_id,
            output,
        } => sagas(&store().await?, &correlation_id, output.json).await,
    }
}

/// How long reaching a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

async fn connect(global: &Global) -> Result<PostgresEventStore> {
    let url = global
        .database_url
        .as_deref()
        .ok_or_else(|| anyhow!("no database: pass --database-url or set DATABASE_URL"))?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("invalid PostgreSQL URL: it must start with postgres:// or postgresql://");
    }
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| anyhow!("invalid PostgreSQL URL: {}", first_line(&e.to_string())))?;
    let target = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    // One connection first, so an unreachable server fails at once with its real cause (a
    // pool would retry until its acquire timeout).
    let first = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| anyhow!("cannot connect to PostgreSQL at {target}: timed out"))?
        .map_err(|e| anyhow!("cannot connect to PostgreSQL at {target}: {e}"))?;
    let _ = first.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options);
    Ok(PostgresEventStore::builder(pool)
        .schema(&global.schema)
        .build()?)
}

async fn migrate(store: &PostgresEventStore, check: bool, json: bool) -> Result<ExitCode> {
    let pending = store.pending_migrations().await?;
    if check {
        if json {
            let list: Vec<_> = pending
                .iter()
                .map(|(v, d)| json!({ "version": v, "description": d }))
                .collect();
            print_json(&json!({ "schema": store.schema(), "pending": list }))?;
        } else if pending.is_empty() {
            print(&format!("schema {}: up to date\n", store.schema()))?;
        } else {
            let mut text = format!("schema {}: {} pending\n", store.schema(), pending.len());
            for (version, description) in &pending {
                text.push_str(&format!("  {version:04} {description}\n"));
            }
            print(&text)?;
        }
        return Ok(if pending.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    store.migrate().await?;
    if json {
        let list: Vec<_> = pending
            .iter()
            .map(|(v, d)| json!({ "version": v, "description": d }))
            .collect();
        print_json(&json!({ "schema": store.schema(), "applied": list }))?;
    } else {
        let mut text = format!("schema {}: applied {}\n", store.schema(), pending.len());
        for (version, description) in &pending {
            text.push_str(&format!("  {version:04} {description}\n"));
        }
        print(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_events(events: &[Event], json: bool) -> Result<()> {
    if json {
        return print_json(events);
    }
    let mut t = table(["TIME", "TYPE", "STREAM", "VERSION", "CORRELATION", "SOURCE"]);
    for e in events {
        t.add_row([
            time(&e.timestamp),
            e.event_type.clone(),
            e.stream_id.clone().unwrap_or_default(),
            e.stream_version.map(|v| v.to_string()).unwrap_or_default(),
            e.correlation_id.clone().unwrap_or_default(),
            e.source.clone().unwrap_or_default(),
        ]);
    }
    print_table(&t)?;
    Ok(())
}

/// One line per event as it arrives (JSON Lines with `--json`).
fn tail_line(event: &Event, json: bool) -> Result<String> {
    if json {
        return Ok(serde_json::to_string(event)?);
    }
    Ok(format!(
        "{}  {}  {}  {}  {}",
        time(&event.timestamp),
        event.event_type,
        match (&event.stream_id, event.stream_version) {
            (Some(s), Some(v)) => format!("{s} v{v}"),
            _ => "-".to_owned(),
        },
        event.correlation_id.as_deref().unwrap_or("-"),
        compact(&event.payload, 80)
    ))
}

async fn tail(
    global: &Global,
    pattern: Option<String>,
    bus: Option<BusKind>,
    count: Option<u64>,
    json: bool,
) -> Result<()> {
    let pattern = pattern.unwrap_or_else(|| "*".to_owned());
    let patterns = PatternSet::parse(std::slice::from_ref(&pattern))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Arc<Event>>();
    let handler = move |event: Arc<Event>| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
            HandlerResult::Ok(())
        }
    };
    // Kept alive while tailing (the bus too: dropping it closes it); dropped on return.
    let (_subscription, _bus) = match bus {
        None => {
            let store = connect(global).await?;
            let head = store.head_position().await?;
            let filter = patterns.clone();
            let tx_filtered = move |event: Arc<Event>| {
                let forward = filter.matches(&event.event_type);
                let handler = handler.clone();
                async move {
                    if forward {
                        handler(event).await
                    } else {
                        Ok(())
                    }
                }
            };
            let subscription = store
                .subscribe(EventCriteria::all().after_position(head), tx_filtered)
                .await?;
            // Ready: the first event committed from now on is shown.
            eprintln!("following {} (pattern {pattern})", store.schema());
            (subscription, None)
        }
        Some(kind) => {
            let bus = connect_bus(global, kind).await?;
            let subscription = bus.subscribe(&pattern, Arc::new(handler)).await?;
            eprintln!("following the {kind:?} bus (pattern {pattern})");
            (subscription, Some(bus))
        }
    };
    let mut seen = 0u64;
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { bail!("the subscription ended") };
                print(&format!("{}\n", tail_line(&event, json)?))?;
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn connect_bus(global: &Global, kind: BusKind) -> Result<Arc<dyn EventBus>> {
    Ok(match kind {
        BusKind::Nats => {
            let url = global
                .nats_url
                .as_deref()
                .ok_or_else(|| anyhow!("no NATS server: pass --nats-url or set NATS_URL"))?;
            let mut config = NatsConfig::new(url);
            config.subject_prefix.clone_from(&global.bus_prefix);
            Arc::new(NatsBus::connect(config).await?)
        }
        BusKind::Redis => {
            let url = global
                .redis_url
                .as_deref()
                .ok_or_else(|| anyhow!("no Redis server: pass --redis-url or set REDIS_URL"))?;
            let mut config = RedisConfig::new(url);
            config.key_prefix.clone_from(&global.bus_prefix);
            Arc::new(RedisBus::connect(config).await?)
        }
    })
}

/// A stored lease as JSON: owner, epoch, expiry and whether it is live (`null` for none).
fn lease_json(lease: Option<&Lease>, now: chrono::DateTime<chrono::Utc>) -> serde_json::Value {
    lease.map_or(serde_json::Value::Null, |l| {
        json!({
            "owner": l.owner,
            "epoch": l.epoch,
            "expires_at": l.expires_at,
            "active": !l.is_expired_at(now),
        })
    })
}

/// The lease columns of a table row: owner (`(expired)` after it when it is not live), epoch,
/// expiry; `-` for none.
fn lease_cells(lease: Option<&Lease>, now: chrono::DateTime<chrono::Utc>) -> [String; 3] {
    match lease {
        None => ["-".to_owned(), "-".to_owned(), "-".to_owned()],
        Some(l) => [
            if l.is_expired_at(now) {
                format!("{} (expired)", l.owner)
            } else {
                l.owner.clone()
            },
            l.epoch.to_string(),
            time(&l.expires_at),
        ],
    }
}

fn status_of(paused: bool, behind: u64) -> &'static str {
    if paused {
        "paused"
    } else if behind == 0 {
        "caught up"
    } else {
        "behind"
    }
}

async fn list_projections(
    store: &PostgresEventStore,
    relay_names: &[String],
    json: bool,
) -> Result<ExitCode> {
    let head = store.head_position().await?;
    let dead_letters = store.dead_letters();
    let checkpoints = store.list_checkpoints().await?;
    let leases = store.leases().list(None).await?;
    let now = chrono::Utc::now();
    let lease_of = |projection: &str, partition: u32| {
        let name = partitioned::lease_name(projection);
        leases
            .iter()
            .find(|l| l.name == name && l.partition == partition)
    };
    // A partitioned projection records its partition count in `<name>#partitions`; its
    // partitions' checkpoints are `<name>#<p>`.
    let partitioned: std::collections::BTreeMap<&str, u64> = checkpoints
        .iter()
        .filter_map(|c| {
            c.name
                .strip_suffix("#partitions")
                .map(|name| (name, c.position))
        })
        .collect();
    let is_partition = |name: &str| {
        name.rsplit_once('#')
            .is_some_and(|(base, _)| partitioned.contains_key(base))
    };
    let mut rows = Vec::new();
    for checkpoint in &checkpoints {
        if relay_names.contains(&checkpoint.name) || is_partition(&checkpoint.name) {
            continue;
        }
        let behind = store.count_events(checkpoint.position, head).await?;
        let parked = dead_letters.count(&checkpoint.name).await?;
        rows.push(json!({
            "name": checkpoint.name,
            "partitioned": false,
            "status": status_of(checkpoint.paused, behind),
            "position": checkpoint.position,
            "head": head,
            "lag_events": behind,
            "parked": parked,
            "updated_at": checkpoint.updated_at,
            "lease": lease_json(lease_of(&checkpoint.name, 0), now),
        }));
    }
    for (&name, &count) in &partitioned {
        let paused = checkpoints
            .iter()
            .find(|c| c.name == format!("{name}#partitions"))
            .is_some_and(|c| c.paused);
        let mut parts = Vec::new();
        let (mut lowest, mut most_behind, mut all_parked) = (u64::MAX, 0, 0);
        let mut updated: Option<chrono::DateTime<chrono::Utc>> = None;
        for p in 0..u32::try_from(count).unwrap_or(u32::MAX) {
            let checkpoint_name = partitioned::partition_checkpoint(name, p);
            let checkpoint = checkpoints.iter().find(|c| c.name == checkpoint_name);
            let position = checkpoint.map_or(0, |c| c.position);
            let behind = store.count_events(position, head).await?;
            let parked = dead_letters.count(&checkpoint_name).await?;
            lowest = lowest.min(position);
            most_behind = most_behind.max(behind);
            all_parked += parked;
            if let Some(c) = checkpoint {
                updated = updated.max(Some(c.updated_at));
            }
            parts.push(json!({
                "partition": p,
                "checkpoint": checkpoint_name,
                "status": status_of(paused, behind),
                "position": position,
                "lag_events": behind,
                "parked": parked,
                "updated_at": checkpoint.map(|c| c.updated_at),
                "lease": lease_json(lease_of(name, p), now),
            }));
        }
        rows.push(json!({
            "name": name,
            "partitioned": true,
            "status": status_of(paused, most_behind),
            "position": if lowest == u64::MAX { 0 } else { lowest },
            "head": head,
            "lag_events": most_behind,
            "parked": all_parked,
            "updated_at": updated,
            "partitions": parts,
        }));
    }
    rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table([
        "PROJECTION",
        "STATUS",
        "LAG",
        "PARKED",
        "OWNER",
        "EPOCH",
        "EXPIRES",
        "UPDATED",
    ]);
    let cell = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let updated_cell = |v: &serde_json::Value| -> Result<String> {
        Ok(
            serde_json::from_value::<Option<chrono::DateTime<chrono::Utc>>>(v.clone())?
                .map_or_else(|| "-".to_owned(), |at| time(&at)),
        )
    };
    for row in &rows {
        let name = cell(&row["name"]);
        let partitions = row["partitions"].as_array();
        let [owner, epoch, expires] = match partitions {
            // A partitioned projection's own row: how many partitions are leased.
            Some(parts) => {
                let live = parts
                    .iter()
                    .filter(|p| p["lease"]["active"] == json!(true))
                    .count();
                [
                    format!("{live}/{} leased", parts.len()),
                    "-".to_owned(),
                    "-".to_owned(),
                ]
            }
            None => lease_cells(lease_of(&name, 0), now),
        };
        t.add_row([
            name.clone(),
            cell(&row["status"]),
            row["lag_events"].to_string(),
            row["parked"].to_string(),
            owner,
            epoch,
            expires,
            updated_cell(&row["updated_at"])?,
        ]);
        for part in partitions.into_iter().flatten() {
            let p = u32::try_from(part["partition"].as_u64().unwrap_or(0)).unwrap_or(0);
            let [owner, epoch, expires] = lease_cells(lease_of(&name, p), now);
            t.add_row([
                cell(&part["checkpoint"]),
                cell(&part["status"]),
                part["lag_events"].to_string(),
                part["parked"].to_string(),
                owner,
                epoch,
                expires,
                updated_cell(&part["updated_at"])?,
            ]);
        }
    }
    print_table(&t)?;
    Ok(ExitCode::SUCCESS)
}

/// The runner factory of the registered projection `name`.
fn registered(
    mut projections: HashMap<String, RunnerFactory>,
    name: &str,
) -> Result<RunnerFactory> {
    let Some(make) = projections.remove(name) else {
        let mut known: Vec<_> = projections.keys().cloned().collect();
        known.sort();
        bail!(
            "projection {name:?} is not registered in this binary (registered: {}); rebuilding \
             needs its code: build a binary with eventflow_cli::App::projection",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    Ok(make)
}

async fn rebuild(
    store: &PostgresEventStore,
    projections: HashMap<String, RunnerFactory>,
    name: &str,
    quiet: bool,
) -> Result<ExitCode> {
    let runner = registered(projections, name)?(store)?;
    let head = store.head_position().await?;
    let total = store.count_events(0, head).await?;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} events, {per_sec}, ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.set_message(format!("rebuilding {name}"));
    let task = tokio::spawn({
        let runner = runner.clone();
        async move { runner.rebuild().await }
    });
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    while !task.is_finished() {
        ticks.tick().await;
        let position = runner.position().min(head);
        bar.set_position(store.count_events(0, position).await?);
    }
    let reached = task.await.context("rebuild task")??;
    let handled = store.count_events(0, reached).await?;
    bar.finish_and_clear();
    print(&format!(
        "rebuilt {name}: {handled} events replayed, position {reached}\n"
    ))?;
    Ok(ExitCode::SUCCESS)
}

async fn relay_status(store: &PostgresEventStore, name: &str, json: bool) -> Result<ExitCode> {
    let checkpoints = store.list_checkpoints().await?;
    let Some(checkpoint) = checkpoints.into_iter().find(|c| c.name == name) else {
        bail!(
            "no relay {name:?} in schema {}: it never saved a checkpoint",
            store.schema()
        );
    };
    // Position, head, parked and the relay's lease, as any process reads them.
    let status = eventflow::relay::read_status(store, name).await?;
    let behind = store.count_events(status.position, status.head).await?;
    let now = chrono::Utc::now();
    if json {
        print_json(&json!({
            "name": name,
            "active": status.active,
            "position": status.position,
            "head": status.head,
            "lag_events": behind,
            "parked": status.parked,
            "updated_at": checkpoint.updated_at,
            "lease": lease_json(status.lease.as_ref(), now),
        }))?;
    } else {
        let mut t = table([
            "RELAY", "ACTIVE", "STATUS", "LAG", "PARKED", "OWNER", "EPOCH", "EXPIRES", "UPDATED",
        ]);
        let [owner, epoch, expires] = lease_cells(status.lease.as_ref(), now);
        t.add_row([
            name.to_owned(),
            if status.active { "yes" } else { "no" }.to_owned(),
            if behind == 0 { "caught up" } else { "behind" }.to_owned(),
            behind.to_string(),
            status.parked.to_string(),
            owner,
            epoch,
            expires,
            time(&checkpoint.updated_at),
        ]);
        print_table(&t)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parked_json(p: &ParkedEvent) -> serde_json::Value {
    json!({
        "id": p.id,
        "source": p.source,
        "reason": p.reason,
        "error": p.error,
        "attempts": p.attempts,
        "parked_at": p.parked_at,
        "event": p.event,
    })
}

async fn dead_letters(
    global: &Global,
    store: &PostgresEventStore,
    action: DeadLetterAction,
) -> Result<ExitCode> {
    let dead_letters = store.dead_letters();
    match action {
        DeadLetterAction::List {
            source,
            limit,
            output,
            ..
        } => {
            let parked = match source {
                Some(source) => dead_letters.list(&source, limit).await?,
                None => dead_letters.list_all(limit).await?,
            };
            if output.json {
                print_json(&parked.iter().map(parked_json).collect::<Vec<_>>())?;
            } else {
                let mut t = table(["ID", "SOURCE", "TYPE", "ATTEMPTS", "PARKED", "REASON"]);
                for p in &parked {
                    t.add_row([
                        p.id.to_string(),
                        p.source.clone(),
                        p.event.event_type.clone(),
                        p.attempts.to_string(),
                        time(&p.parked_at),
                        p.reason.clone(),
                    ]);
                }
                print_table(&t)?;
            }
        }
        DeadLetterAction::Show { id, output } => {
            let parked = dead_letters
                .get(id)
                .await?
                .ok_or_else(|| anyhow!("no dead letter {id}"))?;
            if output.json {
                print_json(&parked_json(&parked))?;
            } else {
                let e = &parked.event;
                print(&format!(
                    "id:          {}\nsource:      {}\nreason:      {}\nerror:       {}\n\
                     attempts:    {}\nparked at:   {}\nevent:       {} {}\nstream:      {}\n\
                     correlation: {}\npayload:     {}\n",
                    parked.id,
                    parked.source,
                    parked.reason,
                    parked.error,
                    parked.attempts,
                    time(&parked.parked_at),
                    e.event_type,
                    e.id,
                    match (&e.stream_id, e.stream_version) {
                        (Some(s), Some(v)) => format!("{s} v{v}"),
                        _ => "-".to_owned(),
                    },
                    e.correlation_id.as_deref().unwrap_or("-"),
                    e.payload
                ))?;
            }
        }
        DeadLetterAction::Retry { id, bus } => {
            let parked = dead_letters
                .get(id)
                .await?
                .ok_or_else(|| anyhow!("no dead letter {id}"))?;
            if parked.source == eventflow::postgres::UNDECODABLE_SOURCE {
                bail!(
                    "dead letter {id} is a stored row no reader can decode: it cannot be \
                     published; repair the row, then discard the dead letter"
                );
            }
            if parked.source.starts_with("saga:") && parked.source.ends_with(":deadlines") {
                bail!(
                    "dead letter {id} is a saga deadline: it is delivered to the saga, not \
                     published; retry it with SagaManager::retry_parked_deadlines in the service"
                );
            }
            let bus = connect_bus(global, bus).await?;
            // Published first, removed after: a crash in between publishes it again on the
            // next retry (at least once, never lost), as `relay::retry_parked` does.
            bus.publish(parked.event.clone())
                .await
                .with_context(|| format!("the bus rejected dead letter {id}; it stays parked"))?;
            // Closing delivers what the client still buffers (core NATS) before the dead
            // letter goes.
            bus.close().await.with_context(|| {
                format!("flushing dead letter {id} to the bus; it stays parked")
            })?;
            dead_letters.discard(id).await?;
            print(&format!(
                "published {} {} from {}; dead letter {id} removed\n",
                parked.event.event_type, parked.event.id, parked.source
            ))?;
        }
        DeadLetterAction::Discard { id } => {
            if !dead_letters.discard(id).await? {
                bail!("no dead letter {id}");
            }
            print(&format!("discarded dead letter {id}\n"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The messages of a JetStream bus's dead-letter subject.
async fn nats_dead_letters(
    global: &Global,
    subject: Option<String>,
    limit: usize,
    json: bool,
) -> Result<ExitCode> {
    let subject = subject.ok_or_else(|| {
        anyhow!(
            "--bus nats needs --dead-letter-subject (the bus's NatsConfig::dead_letter_subject)"
        )
    })?;
    let url = global
        .nats_url
        .as_deref()
        .ok_or_else(|| anyhow!("no NATS server: pass --nats-url or set NATS_URL"))?;
    // Core mode: reading creates no stream.
    let mut config = NatsConfig::new(url);
    config.enable_jetstream = false;
    let bus = NatsBus::connect(config).await?;
    let messages = bus.dead_letters(&subject, limit).await?;
    if json {
        print_json(&messages)?;
    } else {
        let mut t = table(["SEQ", "CONSUMER", "SUBJECT", "DELIVERIES", "ERROR", "EVENT"]);
        for m in &messages {
            t.add_row([
                m.sequence.to_string(),
                m.consumer.clone(),
                m.subject.clone(),
                m.deliveries.to_string(),
                m.error.clone(),
                m.event
                    .as_ref()
                    .map_or_else(|| "(undecodable)".to_owned(), |ev| ev.id.to_string()),
            ]);
        }
        print_table(&t)?;
    }
    bus.close().await?;
    Ok(ExitCode::SUCCESS)
}

/// The entries of a Redis Streams bus's dead-letter stream.
async fn redis_dead_letters(global: &Global, limit: usize, json: bool) -> Result<ExitCode> {
    let url = global
        .redis_url
        .as_deref()
        .ok_or_else(|| anyhow!("no Redis server: pass --redis-url or set REDIS_URL"))?;
    let mut config = RedisConfig::new(url);
    config.key_prefix.clone_from(&global.bus_prefix);
    let bus = RedisBus::connect(config).await?;
    let entries = bus.dead_letters(limit).await?;
    if json {
        print_json(&entries)?;
    } else {
        let mut t = table(["ID", "GROUP", "TYPE", "DELIVERIES", "REASON", "EVENT"]);
        for e in &entries {
            t.add_row([
                e.id.clone(),
                e.group.clone(),
                e.event_type.clone(),
                e.deliveries.to_string(),
                e.reason.clone(),
                e.event
                    .as_ref()
                    .map_or_else(|| "(undecodable)".to_owned(), |ev| ev.id.to_string()),
            ]);
        }
        print_table(&t)?;
    }
    bus.close().await?;
    Ok(ExitCode::SUCCESS)
}

async fn sagas(store: &PostgresEventStore, correlation_id: &str, json: bool) -> Result<ExitCode> {
    let instances = store.saga_instances(correlation_id).await?;
    if instances.is_empty() {
        bail!("no saga instance for correlation id {correlation_id:?}");
    }
    if json {
        print_json(&instances)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    for s in &instances {
        text.push_str(&format!(
            "saga {}  {}  version {}  updated {}\n  state: {}\n",
            s.saga,
            if s.completed { "completed" } else { "running" },
            s.version,
            time(&s.updated_at),
            s.state
        ));
        text.push_str(&format!("  handled ({}):\n", s.handled.len()));
        for h in &s.handled {
            text.push_str(&format!(
                "    {}  {}  {}\n",
                time(&h.handled_at),
                h.event_type.as_deref().unwrap_or("?"),
                h.event_id
            ));
        }
        text.push_str(&format!("  deadlines ({}):\n", s.deadlines.len()));
        for d in &s.deadlines {
            text.push_str(&format!(
                "    {}  due {}  fires {}\n",
                d.name,
                time(&d.due_at),
                d.event.event_type
            ));
        }
    }
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}
