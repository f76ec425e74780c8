// The payload is the variant's content; a serde representation that moves the tag into the
// payload cannot work, and the error points at `tag`.
use eventflow::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, DomainEvent)]
#[serde(tag = "kind")]
enum OrderEvent {
    Placed { id: String },
}

fn main() {}
