// A misspelled aggregate key: the error points at it.
use eventflow::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened,
}

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent, snapshots_every = 10)]
struct Account;

fn main() {}
