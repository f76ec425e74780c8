//! Example: postgres_nats (placeholder until its issue fills it).
fn main() {}
