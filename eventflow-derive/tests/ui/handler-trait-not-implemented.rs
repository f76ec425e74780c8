// The aggregate never implements its event enum's handler trait: the error points at the
// `event = ..` that binds them.
use eventflow::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened,
}

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent)]
struct Account;

fn main() {}
