// A misspelled attribute key: the error points at it and lists the known keys.
use eventflow::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[event(prefx = "order")]
enum OrderEvent {
    Placed,
}

fn main() {}
