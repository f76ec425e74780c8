//! Integration tests of aggregates: `Repository` over the in-memory event and snapshot stores
//! (new aggregate, load with and without snapshot, racing executes, metadata on appended
//! events, upcasting), and the given/when/then fixture.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use eventflow::aggregate::{Aggregate, ExecuteError, Repository};
use eventflow::store::memory::{InMemoryEventStore, InMemorySnapshotStore};
use eventflow::testing::AggregateTest;
use eventflow::{
    BoxError, CommandContext, DomainEvent, Error, Event, EventStore, ExpectedVersion, Metadata,
    Snapshot, SnapshotStore,
};
use eventflow_tests::unique;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, eventflow::DomainEvent)]
#[event(prefix = "account")]
pub enum AccountEvent {
    Opened {
        owner: String,
    },
    /// Version 2 renamed v1's `value` to `amount`.
    #[event(version = 2)]
    Deposited {
        amount: u64,
    },
    Withdrawn {
        amount: u64,
    },
    Closed,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, eventflow::Aggregate)]
#[aggregate(event = AccountEvent, snapshot_every = 3, state_version = 1)]
pub struct Account {
    owner: Option<String>,
    balance: u64,
    closed: bool,
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
    fn closed(&mut self) {
        self.closed = true;
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum AccountError {
    NotOpen,
    AlreadyOpen,
    Insufficient { balance: u64, wanted: u64 },
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for AccountError {}

impl Account {
    fn open(&self, owner: &str) -> Result<Vec<AccountEvent>, AccountError> {
        if self.owner.is_some() {
            return Err(AccountError::AlreadyOpen);
        }
        Ok(vec![AccountEvent::Opened {
            owner: owner.into(),
        }])
    }

    fn deposit(&self, amount: u64) -> Result<Vec<AccountEvent>, AccountError> {
        if self.owner.is_none() || self.closed {
            return Err(AccountError::NotOpen);
        }
        Ok(vec![AccountEvent::Deposited { amount }])
    }

    fn withdraw(&self, amount: u64) -> Result<Vec<AccountEvent>, AccountError> {
        if self.owner.is_none() || self.closed {
            return Err(AccountError::NotOpen);
        }
        if amount > self.balance {
            return Err(AccountError::Insufficient {
                balance: self.balance,
                wanted: amount,
            });
        }
        Ok(vec![AccountEvent::Withdrawn { amount }])
    }
}

fn repo() -> (Repository<Account>, Arc<InMemoryEventStore>) {
    let store = Arc::new(InMemoryEventStore::new());
    (Repository::new(store.clone()), store)
}

#[tokio::test]
async fn a_new_aggregate_loads_as_default_state_at_version_zero() {
    let (repo, _) = repo();
    let loaded = repo.load(&unique("acct")).await.unwrap();
    assert_eq!(loaded.state, Account::default());
    assert_eq!(loaded.version, 0);
    assert_eq!(loaded.snapshot_version, None);
}

#[tokio::test]
async fn execute_appends_to_the_aggregate_stream_and_load_replays_it() {
    let (repo, store) = repo();
    let id = unique("acct");
    let opened = repo.execute(&id, |a| a.open("ada")).await.unwrap();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].event_type, "account.opened");
    assert_eq!(opened[0].stream_version, Some(1));
    repo.execute(&id, |a| a.deposit(50)).await.unwrap();
    let withdrawn = repo.execute(&id, |a| a.withdraw(20)).await.unwrap();
    assert_eq!(
        withdrawn[0].stream_id.as_deref(),
        Some(&*Account::stream_id(&id))
    );
    assert_eq!(withdrawn[0].stream_version, Some(3));

    let stream = store
        .load_stream(&format!("account-{id}"), 1)
        .await
        .unwrap();
    assert_eq!(stream.len(), 3);
    assert_eq!(
        stream[1].version, 2,
        "Deposited is stored with its schema version"
    );

    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(loaded.version, 3);
    assert_eq!(loaded.snapshot_version, None);
    assert_eq!(
        loaded.state,
        Account {
            owner: Some("ada".into()),
            balance: 30,
            closed: false
        }
    );
}

#[tokio::test]
async fn a_rejected_command_appends_nothing() {
    let (repo, store) = repo();
    let id = unique("acct");
    let err = repo.execute(&id, |a| a.deposit(5)).await.unwrap_err();
    assert_eq!(err.rejected(), Some(&AccountError::NotOpen));
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    let err = repo.execute(&id, |a| a.withdraw(5)).await.unwrap_err();
    assert!(matches!(
        err,
        ExecuteError::Rejected(AccountError::Insufficient {
            balance: 0,
            wanted: 5
        })
    ));
    assert_eq!(
        store
            .stream_version(&Account::stream_id(&id))
            .await
            .unwrap(),
        1
    );
    // A command that decides nothing appends nothing.
    let none = repo
        .execute(&id, |_| Ok::<_, AccountError>(vec![]))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        store
            .stream_version(&Account::stream_id(&id))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn appended_events_carry_metadata_correlation_causation_and_source() {
    let (repo, store) = repo();
    let id = unique("acct");
    let trigger = Event::new("signup.completed", json!({})).unwrap();
    let ctx = CommandContext::caused_by(&trigger)
        .with_metadata(
            Metadata::default()
                .user("u-7")
                .tenant("acme")
                .with("ip", "10.0.0.1"),
        )
        .with_correlation("checkout-9")
        .with_source("accounts");
    let committed = repo
        .execute_with(&id, &ctx, |a| a.open("ada"))
        .await
        .unwrap();
    let stored = store
        .load_stream(&Account::stream_id(&id), 1)
        .await
        .unwrap();
    assert_eq!(committed, stored);
    let e = &stored[0];
    assert_eq!(e.metadata.user_id.as_deref(), Some("u-7"));
    assert_eq!(e.metadata.tenant_id.as_deref(), Some("acme"));
    assert_eq!(e.metadata.custom["ip"], json!("10.0.0.1"));
    assert_eq!(e.correlation_id.as_deref(), Some("checkout-9"));
    assert_eq!(e.causation_id, Some(trigger.id.to_string()));
    assert_eq!(e.source.as_deref(), Some("accounts"));
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_loads_start_from_them() {
    let store = Arc::new(InMemoryEventStore::new());
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let repo = Repository::<Account>::new(store.clone()).snapshots(snapshots.clone());
    let id = unique("acct");
    let stream = Account::stream_id(&id);
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    repo.execute(&id, |a| a.deposit(10)).await.unwrap();
    assert!(snapshots.load_snapshot(&stream).await.unwrap().is_none());
    repo.execute(&id, |a| a.deposit(10)).await.unwrap(); // version 3: every 3 events
    let snap = snapshots.load_snapshot(&stream).await.unwrap().unwrap();
    assert_eq!((snap.version, snap.schema_version), (3, 1));
    repo.execute(&id, |a| a.withdraw(5)).await.unwrap(); // version 4: tail of one event

    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(loaded.snapshot_version, Some(3));
    assert_eq!((loaded.version, loaded.state.balance), (4, 15));

    // The snapshot really is the starting point: a load without snapshots replays everything
    // and agrees.
    let plain = Repository::<Account>::new(store.clone())
        .load(&id)
        .await
        .unwrap();
    assert_eq!(plain.snapshot_version, None);
    assert_eq!(plain.state, loaded.state);
    assert_eq!(plain.version, loaded.version);

    // A (deliberately wrong) snapshot with the current schema version is what the load starts
    // from: proof that loads use the snapshot instead of replaying.
    let mut tampered = snap.clone();
    tampered.version = 4;
    tampered.state = json!({ "owner": "ada", "balance": 999, "closed": false });
    snapshots.save_snapshot(tampered).await.unwrap();
    assert_eq!(repo.load(&id).await.unwrap().state.balance, 999);
}

#[tokio::test]
async fn a_snapshot_of_another_state_version_or_shape_is_ignored() {
    let store = Arc::new(InMemoryEventStore::new());
    let snapshots = Arc::new(InMemorySnapshotStore::new());
    let repo = Repository::<Account>::new(store.clone())
        .snapshots(snapshots.clone())
        .snapshot_every(1000);
    let id = unique("acct");
    let stream = Account::stream_id(&id);
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    repo.execute(&id, |a| a.deposit(7)).await.unwrap();

    // Same shape, other schema version: ignored even though it decodes.
    snapshots
        .save_snapshot(Snapshot {
            stream_id: stream.clone(),
            version: 2,
            schema_version: 99,
            state: json!({ "owner": "mallory", "balance": 1_000_000, "closed": false }),
            taken_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(loaded.snapshot_version, None);
    assert_eq!(loaded.state.balance, 7);
    assert_eq!(loaded.state.owner.as_deref(), Some("ada"));

    // Current schema version but a state that does not decode: ignored, not an error.
    snapshots
        .save_snapshot(Snapshot {
            stream_id: stream.clone(),
            version: 2,
            schema_version: 1,
            state: json!({ "balance": "lots" }),
            taken_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(loaded.snapshot_version, None);
    assert_eq!(loaded.state.balance, 7);

    // snapshot_now replaces it with a good one that is used.
    assert_eq!(repo.snapshot_now(&id).await.unwrap(), Some(2));
    assert_eq!(repo.load(&id).await.unwrap().snapshot_version, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_executes_one_conflict_is_retried_to_success() {
    let (repo, store) = repo();
    let repo = repo.conflict_retries(3);
    let id = unique("acct");
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    repo.execute(&id, |a| a.deposit(100)).await.unwrap();

    // While our command is deciding (after its load), a second writer commits a withdrawal
    // of 80. Our withdrawal of 50 then loses the race, is re-decided on the fresh state, and
    // is rejected because the balance is now 20: the retry really re-decides.
    let rival = repo.clone();
    let calls = AtomicU32::new(0);
    let seen = std::sync::Mutex::new(Vec::new());
    let result = repo
        .execute(&id, |a| {
            seen.lock().unwrap().push(a.balance);
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let handle = tokio::runtime::Handle::current();
                tokio::task::block_in_place(|| {
                    handle
                        .block_on(rival.execute(&id, |a| a.withdraw(80)))
                        .unwrap();
                });
            }
            a.withdraw(50)
        })
        .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "decided once, retried once"
    );
    assert_eq!(*seen.lock().unwrap(), vec![100, 20]);
    assert_eq!(
        result.unwrap_err().rejected(),
        Some(&AccountError::Insufficient {
            balance: 20,
            wanted: 50
        })
    );

    // Same race, but the re-decided command succeeds on the fresh state.
    let calls = AtomicU32::new(0);
    let committed = repo
        .execute(&id, |a| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let handle = tokio::runtime::Handle::current();
                tokio::task::block_in_place(|| {
                    handle
                        .block_on(rival.execute(&id, |a| a.deposit(5)))
                        .unwrap();
                });
            }
            a.withdraw(20)
        })
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(committed[0].stream_version, Some(5));
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (5, 5));
    assert_eq!(
        store
            .stream_version(&Account::stream_id(&id))
            .await
            .unwrap(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_without_retries_is_a_typed_error_and_appends_nothing() {
    let (repo, store) = repo();
    let id = unique("acct");
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    let rival = repo.clone();
    let err = repo
        .execute(&id, |a| {
            let handle = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| {
                handle
                    .block_on(rival.execute(&id, |a| a.deposit(1)))
                    .unwrap();
            });
            a.deposit(2)
        })
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    match err {
        ExecuteError::Store(Error::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, Account::stream_id(&id));
            assert_eq!(expected, ExpectedVersion::Exact(1));
            assert_eq!(actual, 2);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(repo.load(&id).await.unwrap().state.balance, 1);
    assert_eq!(
        store
            .stream_version(&Account::stream_id(&id))
            .await
            .unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_executes_all_commit_with_enough_retries() {
    let (repo, _) = repo();
    let repo = repo.conflict_retries(64);
    let id = unique("acct");
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let repo = repo.clone();
            let id = id.clone();
            tokio::spawn(async move { repo.execute(&id, |a| a.deposit(1)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (17, 16));
}

/// Appends a v1 `account.deposited` (`{"value": n}`) directly, as an old deployment did.
async fn append_v1_deposit(store: &InMemoryEventStore, id: &str, expected: u64, value: u64) {
    let v1 = Event::new("account.deposited", json!({ "value": value }))
        .unwrap()
        .with_version(1);
    store
        .append(
            &Account::stream_id(id),
            ExpectedVersion::Exact(expected),
            v1,
        )
        .await
        .unwrap();
}

fn deposited_v1_to_v2(mut payload: Value) -> Result<Value, BoxError> {
    let value = payload
        .as_object_mut()
        .and_then(|o| o.remove("value"))
        .ok_or("v1 deposit without `value`")?;
    payload["amount"] = value;
    Ok(payload)
}

#[tokio::test]
async fn a_v1_event_is_upcast_at_load_time() {
    let (repo, store) = repo();
    let repo = repo.upcaster("account.deposited", 1, deposited_v1_to_v2);
    let id = unique("acct");
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    append_v1_deposit(&store, &id, 1, 40).await;
    repo.execute(&id, |a| a.deposit(2)).await.unwrap(); // a current v2 event next to it
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (3, 42));
    // Commands see the upcast state too.
    repo.execute(&id, |a| a.withdraw(42)).await.unwrap();
}

#[tokio::test]
async fn a_missing_upcaster_is_a_typed_error_naming_type_and_version() {
    let (repo, store) = repo();
    let id = unique("acct");
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    append_v1_deposit(&store, &id, 1, 40).await;
    match repo.load(&id).await {
        Err(Error::MissingUpcaster {
            event_type,
            version,
            current,
        }) => {
            assert_eq!(event_type, "account.deposited");
            assert_eq!((version, current), (1, 2));
        }
        other => panic!("expected MissingUpcaster, got {other:?}"),
    }
    let err = repo.execute(&id, |a| a.deposit(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::Store(Error::MissingUpcaster { version: 1, .. })
        ),
        "{err:?}"
    );
    let message = Error::MissingUpcaster {
        event_type: "account.deposited".into(),
        version: 1,
        current: 2,
    }
    .to_string();
    assert!(
        message.contains("account.deposited") && message.contains('1'),
        "{message}"
    );
}

#[tokio::test]
async fn an_event_of_an_unknown_type_in_the_stream_is_a_typed_error() {
    let (repo, store) = repo();
    let id = unique("acct");
    store
        .append(
            &Account::stream_id(&id),
            ExpectedVersion::NoStream,
            Event::new("account.frozen", json!({})).unwrap(),
        )
        .await
        .unwrap();
    assert!(matches!(
        repo.load(&id).await,
        Err(Error::UnknownEventType { .. })
    ));
}

#[test]
fn fixture_given_when_then_events() {
    let state = AggregateTest::<Account>::given([
        AccountEvent::Opened {
            owner: "ada".into(),
        },
        AccountEvent::Deposited { amount: 10 },
    ])
    .when(|a| a.withdraw(4))
    .then_expect_events([AccountEvent::Withdrawn { amount: 4 }]);
    assert_eq!(state.balance, 6);

    AggregateTest::<Account>::given_no_previous_events()
        .when(|a| a.open("ada"))
        .then_expect_events([AccountEvent::Opened {
            owner: "ada".into(),
        }]);
}

#[test]
fn fixture_given_when_then_error() {
    AggregateTest::<Account>::given([AccountEvent::Opened {
        owner: "ada".into(),
    }])
    .when(|a| a.withdraw(1))
    .then_expect_error(AccountError::Insufficient {
        balance: 0,
        wanted: 1,
    });
    AggregateTest::<Account>::given([
        AccountEvent::Opened {
            owner: "ada".into(),
        },
        AccountEvent::Closed,
    ])
    .when(|a| a.deposit(1))
    .then_expect_error_matching(|e| *e == AccountError::NotOpen);
    AggregateTest::<Account>::given_no_previous_events()
        .when(|_| Ok::<_, AccountError>(vec![]))
        .then_expect_no_events();
}

#[test]
#[should_panic(expected = "the command decided other events than expected")]
fn fixture_fails_when_events_differ() {
    AggregateTest::<Account>::given([AccountEvent::Opened {
        owner: "ada".into(),
    }])
    .when(|a| a.deposit(1))
    .then_expect_events([AccountEvent::Deposited { amount: 2 }]);
}

#[test]
#[should_panic(expected = "but the command decided")]
fn fixture_fails_when_an_expected_error_does_not_happen() {
    AggregateTest::<Account>::given([AccountEvent::Opened {
        owner: "ada".into(),
    }])
    .when(|a| a.deposit(1))
    .then_expect_error(AccountError::NotOpen);
}

#[test]
fn fixture_given_envelopes_decodes_stored_events() {
    let stored = [
        Event::from_domain(&AccountEvent::Opened {
            owner: "ada".into(),
        })
        .unwrap(),
        Event::from_domain(&AccountEvent::Deposited { amount: 3 }).unwrap(),
    ];
    let test = AggregateTest::<Account>::given_envelopes(&stored);
    assert_eq!(test.state().balance, 3);
    assert_eq!(AccountEvent::event_types().len(), 4);
}

#[tokio::test]
async fn the_event_type_list_filters_loads() {
    let (repo, store) = repo();
    let id = unique("acct");
    repo.execute(&id, |a| a.open("ada")).await.unwrap();
    store
        .append(
            "other-stream",
            ExpectedVersion::Any,
            Event::new("audit.logged", json!({})).unwrap(),
        )
        .await
        .unwrap();
    let criteria =
        eventflow::EventCriteria::all().event_types(AccountEvent::event_types().iter().copied());
    let events = store.load(&criteria).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "account.opened");
}
