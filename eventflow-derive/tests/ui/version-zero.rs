// Schema versions start at 1: the error points at the `0`.
use eventflow::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    #[event(version = 0)]
    Placed,
}

fn main() {}
