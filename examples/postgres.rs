//! Bank account on PostgreSQL: the aggregate and `Repository` of the `bank_account` example, with
//! the events kept in the PostgreSQL event store, snapshots in PostgreSQL, a store subscription
//! that prints every event as it is committed (no projection), and the relay (transactional
//! outbox) publishing every committed event to an in-memory bus.
//!
//! It shows
//! - `PostgresEventStore::connect` + an explicit `migrate()` (into the schema
//!   `eventflow_example`; constructors never change the schema);
//! - commands through a `Repository` with optimistic concurrency, and a rejected command;
//! - `subscribe`: catch up from a position, then follow live (woken by LISTEN/NOTIFY);
//! - `with_bus`: every committed event reaches the bus at least once, in global order.
//!
//! Needs only a PostgreSQL server: run it with
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p eventflow-examples --features postgres --example postgres`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::aggregate::{Aggregate, Repository};
use eventflow::bus::memory::InMemoryBus;
use eventflow::postgres::PostgresEventStore;
use eventflow::{
    CommandContext, Event, EventBusExt, EventCriteria, EventStore, EventStoreExt, Metadata,
    WithBus, sync_handler,
};
use serde::{Deserialize, Serialize};

/// What can happen to an account. Event types: `account.opened`, `account.deposited`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, eventflow::DomainEvent)]
#[event(prefix = "account")]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

/// The state, rebuilt from the events; a snapshot every 3 events.
#[derive(Debug, Default, Serialize, Deserialize, eventflow::Aggregate)]
#[aggregate(name = "account", event = AccountEvent, snapshot_every = 3, state_version = 1)]
struct Account {
    owner: Option<String>,
    balance: u64,
}

impl ApplyAccountEvent for Account {
    fn opened(&mut self, owner: String) {
        self.owner = Some(owner);
    }
    fn deposited(&mut self, amount: u64) {
        self.balance += amount;
    }
    fn withdrawn(&mut self, amount: u64) {
        self.balance -= amount;
    }
}

#[derive(Debug)]
enum AccountError {
    AlreadyOpen,
    NotOpen,
    InsufficientFunds { balance: u64, wanted: u64 },
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccountError::AlreadyOpen => f.write_str("the account is already open"),
            AccountError::NotOpen => f.write_str("the account is not open"),
            AccountError::InsufficientFunds { balance, wanted } => {
                write!(f, "insufficient funds: balance {balance}, wanted {wanted}")
            }
        }
    }
}

impl std::error::Error for AccountError {}

impl Account {
    fn open(&self, owner: &str) -> Result<Vec<AccountEvent>, AccountError> {
        if self.owner.is_some() {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(vec![AccountEvent::Opened {
            owner: owner.to_owned(),
        }])
    }

    fn deposit(&self, amount: u64) -> Result<Vec<AccountEvent>, AccountError> {
        self.owner.as_ref().ok_or(AccountError::NotOpen)?;
        Ok(vec![AccountEvent::Deposited { amount }])
    }

    fn withdraw(&self, amount: u64) -> Result<Vec<AccountEvent>, AccountError> {
        self.owner.as_ref().ok_or(AccountError::NotOpen)?;
        if amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                wanted: amount,
            });
        }
        Ok(vec![AccountEvent::Withdrawn { amount }])
    }
}

fn describe(event: &Event) -> String {
    format!(
        "#{:<16} {:<20} v{} {:<18} {}",
        event.position.unwrap_or_default(),
        event.stream_id.as_deref().unwrap_or("?"),
        event.stream_version.unwrap_or_default(),
        event.event_type,
        event.payload
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let connected = PostgresEventStore::connect(&url).await?;
    let store = PostgresEventStore::builder(connected.pool().clone())
        .schema("eventflow_example")
        .build()?;
    store.migrate().await?;

    // The relay: every committed event of this schema goes to the bus, from a durable checkpoint.
    let bus = Arc::new(InMemoryBus::new());
    let published = Arc::new(AtomicUsize::new(0));
    let counter = published.clone();
    let _on_bus = bus
        .on(
            "account.>",
            sync_handler(move |_event| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        )
        .await?;
    let store = store.with_bus(bus.clone());

    // A projection-free subscriber: print what gets committed from now on.
    let start = store.head_position().await?;
    let printed = Arc::new(AtomicUsize::new(0));
    let seen = printed.clone();
    let _subscription = store
        .subscribe(
            EventCriteria::all().after_position(start).event_types([
                "account.opened",
                "account.deposited",
                "account.withdrawn",
            ]),
            sync_handler(move |event| {
                println!("  subscriber: {}", describe(event));
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        )
        .await?;

    let accounts = Repository::<Account>::new(Arc::new(store.clone()))
        .snapshots(Arc::new(store.snapshots()))
        .conflict_retries(3);
    // A new account per run, so the example can run again against the same database.
    let id = format!(
        "alice-{}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
    );
    let ctx = CommandContext::new()
        .with_metadata(Metadata::default().user("teller-1").tenant("acme-bank"))
        .with_correlation(format!("visit-{id}"))
        .with_source("postgres example");

    println!("== commands on {} ==", Account::stream_id(&id));
    accounts
        .execute_with(&id, &ctx, |a| a.open("Alice"))
        .await?;
    accounts.execute_with(&id, &ctx, |a| a.deposit(100)).await?;
    accounts.execute_with(&id, &ctx, |a| a.deposit(30)).await?;
    match accounts.execute_with(&id, &ctx, |a| a.withdraw(500)).await {
        Err(e) => println!("withdraw 500 rejected: {e}"),
        Ok(_) => println!("withdraw 500 unexpectedly accepted"),
    }
    accounts.execute_with(&id, &ctx, |a| a.withdraw(80)).await?;
    let loaded = accounts.load(&id).await?;
    println!(
        "loaded: version {}, balance {}, from snapshot {:?}",
        loaded.version, loaded.state.balance, loaded.snapshot_version
    );

    // Wait (bounded) for the subscriber and the relay to see the four events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while printed.load(Ordering::SeqCst) < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.flush(Duration::from_secs(10)).await?;
    println!(
        "subscriber printed {} events; the relay published {} account events to the bus",
        printed.load(Ordering::SeqCst),
        published.load(Ordering::SeqCst)
    );
    println!("\n== the stream, as stored ==");
    for event in store.load_stream(&Account::stream_id(&id), 0).await? {
        println!("  {}", describe(&event));
    }
    Ok(())
}
