// Two variants with the same event type name: the error points at the second name.
use eventflow::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(prefix = "order")]
enum OrderEvent {
    Placed,
    #[event(name = "order.placed")]
    PlacedAgain,
}

fn main() {}
