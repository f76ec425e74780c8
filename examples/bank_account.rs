//! Bank account: typed events and an aggregate with the derives, driven through a `Repository`
//! on the in-memory store.
//!
//! It shows
//! - `#[derive(DomainEvent)]` on the event enum and `#[derive(Aggregate)]` on the state, with
//!   one handler per event in the generated `ApplyAccountEvent` trait;
//! - commands as plain methods returning `Result<Vec<AccountEvent>, AccountError>`, a rejected
//!   command, and the metadata / correlation carried onto every appended event;
//! - an optimistic-concurrency conflict (another teller commits between our load and our
//!   append) that the repository retries by reloading and deciding again;
//! - a snapshot taken every 3 events, and a load that starts from it;
//! - rebuilding the state from the raw stream, event by event.
//!
//! Run it with `cargo run -p eventflow-examples --example bank_account`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use eventflow::aggregate::{Aggregate, Repository};
use eventflow::store::memory::{InMemoryEventStore, InMemorySnapshotStore};
use eventflow::{CommandContext, EventStore, Metadata, SnapshotStore};
use serde::{Deserialize, Serialize};

/// What can happen to an account. Event types: `account.opened`, `account.deposited`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, eventflow::DomainEvent)]
#[event(prefix = "account")]
enum AccountEvent {
    Opened {
        owner: String,
    },
    Deposited {
        amount: u64,
    },
    Withdrawn {
        amount: u64,
    },
    /// A renamed type and a newer payload schema, both declared on the variant.
    #[event(name = "account.closed", version = 2)]
    Closed {
        reason: String,
    },
}

/// The state, rebuilt from the events. Streams are named `account-<id>`.
#[derive(Debug, Default, Serialize, Deserialize, eventflow::Aggregate)]
#[aggregate(name = "account", event = AccountEvent, snapshot_every = 3, state_version = 1)]
struct Account {
    owner: Option<String>,
    balance: u64,
    closed: bool,
}

// One method per event; leaving one out is a compile error naming it.
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
    fn closed(&mut self, _reason: String) {
        self.closed = true;
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

// Commands: read the state, check the rules, decide events. No I/O, no mutation.
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
        self.ensure_open()?;
        Ok(vec![AccountEvent::Deposited { amount }])
    }

    fn withdraw(&self, amount: u64) -> Result<Vec<AccountEvent>, AccountError> {
        self.ensure_open()?;
        if amount > self.balance {
            return Err(AccountError::InsufficientFunds {
                balance: self.balance,
                wanted: amount,
            });
        }
        Ok(vec![AccountEvent::Withdrawn { amount }])
    }

    fn close(&self, reason: &str) -> Result<Vec<AccountEvent>, AccountError> {
        self.ensure_open()?;
        let mut events = Vec::new();
        if self.balance > 0 {
            events.push(AccountEvent::Withdrawn {
                amount: self.balance,
            });
        }
        events.push(AccountEvent::Closed {
            reason: reason.to_owned(),
        });
        Ok(events)
    }

    fn ensure_open(&self) -> Result<(), AccountError> {
        if self.owner.is_none() || self.closed {
            return Err(AccountError::NotOpen);
        }
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(InMemoryEventStore::new());
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let accounts = Repository::<Account>::new(store.clone())
        .snapshots(snapshots.clone())
        .conflict_retries(3);
    let id = "alice-checking";
    let stream = Account::stream_id(id);

    println!("== commands ==");
    let ctx = CommandContext::new()
        .with_metadata(Metadata::default().user("teller-1").tenant("acme-bank"))
        .with_correlation("branch-visit-42")
        .with_source("bank_account example");
    let opened = accounts.execute_with(id, &ctx, |a| a.open("Alice")).await?;
    println!(
        "opened {stream}: {} v{} (user {:?}, correlation {:?})",
        opened[0].event_type,
        opened[0].stream_version.unwrap_or_default(),
        opened[0].metadata.user_id,
        opened[0].correlation_id
    );
    accounts.execute_with(id, &ctx, |a| a.deposit(100)).await?;
    match accounts.execute(id, |a| a.withdraw(500)).await {
        Err(e) => println!("withdraw 500 rejected: {e}"),
        Ok(_) => println!("withdraw 500 unexpectedly accepted"),
    }

    println!("\n== a conflict, retried ==");
    // Another teller deposits 50 while our withdrawal is being decided: our append then finds
    // the stream one version ahead (a Conflict), and the repository reloads and decides again.
    let other_teller = accounts.clone();
    let attempts = AtomicU32::new(0);
    let committed = accounts
        .execute(id, |a| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            println!("attempt {attempt}: deciding on balance {}", a.balance);
            if attempt == 1 {
                let handle = tokio::runtime::Handle::current();
                let other = tokio::task::block_in_place(|| {
                    handle.block_on(other_teller.execute(id, |a| a.deposit(50)))
                });
                assert!(
                    other.is_ok(),
                    "the other teller's deposit failed: {other:?}"
                );
                println!("  (meanwhile another teller deposited 50)");
            }
            a.withdraw(80)
        })
        .await?;
    println!(
        "withdrawal committed as version {} after {} attempts",
        committed[0].stream_version.unwrap_or_default(),
        attempts.load(Ordering::SeqCst)
    );

    println!("\n== snapshots ==");
    // Every 3 events: version 3 was crossed by the deposit of 50, so a snapshot exists.
    if let Some(snapshot) = snapshots.load_snapshot(&stream).await? {
        println!(
            "snapshot of {} at version {} (state schema v{}): {}",
            snapshot.stream_id, snapshot.version, snapshot.schema_version, snapshot.state
        );
    }
    let loaded = accounts.load(id).await?;
    println!(
        "load: version {}, balance {}, started from snapshot {:?}",
        loaded.version, loaded.state.balance, loaded.snapshot_version
    );
    let closed = accounts.execute(id, |a| a.close("moving abroad")).await?;
    for event in &closed {
        println!(
            "close -> {} (payload schema v{}) {}",
            event.event_type, event.version, event.payload
        );
    }

    println!("\n== rebuilding from the stream ==");
    let mut rebuilt = Account::default();
    for event in store.load_stream(&stream, 1).await? {
        rebuilt.apply_envelope(&event)?;
        println!(
            "v{} {:<18} -> balance {:>3}, closed {}",
            event.stream_version.unwrap_or_default(),
            event.event_type,
            rebuilt.balance,
            rebuilt.closed
        );
    }
    let loaded = accounts.load(id).await?;
    assert_eq!(
        (rebuilt.balance, rebuilt.closed),
        (loaded.state.balance, loaded.state.closed)
    );
    println!(
        "repository load agrees: version {}, balance {}, closed {}",
        loaded.version, loaded.state.balance, loaded.state.closed
    );
    Ok(())
}
