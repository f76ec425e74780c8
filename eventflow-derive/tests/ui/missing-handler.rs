// A variant without a handler: the aggregate's handler-trait impl does not compile, and the
// error names the missing handler (and points at the variant it belongs to).
use eventflow::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
}

#[derive(Default, Aggregate)]
#[aggregate(event = AccountEvent)]
struct Account {
    balance: u64,
}

impl ApplyAccountEvent for Account {
    fn opened(&mut self, _owner: String) {}
    fn deposited(&mut self, amount: u64) {
        self.balance += amount;
    }
}

fn main() {}
