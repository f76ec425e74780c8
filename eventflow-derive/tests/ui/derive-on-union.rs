// DomainEvent needs an enum: the error points at `union`.
use eventflow::DomainEvent;

#[derive(DomainEvent)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
