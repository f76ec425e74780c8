// An event type name that would not be a valid NATS subject token: the error points at it.
use eventflow::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
enum OrderEvent {
    Placed,
    #[event(name = "Order Shipped")]
    Shipped,
}

fn main() {}
