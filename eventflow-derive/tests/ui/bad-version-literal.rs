// A schema version must be an integer literal: the error points at the string.
use eventflow::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    #[event(version = "2")]
    Placed,
}

fn main() {}
