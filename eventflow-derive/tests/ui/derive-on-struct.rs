// DomainEvent needs an enum (one variant per event type): the error points at `struct`.
use eventflow::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
struct OrderPlaced {
    order_id: String,
}

fn main() {}
