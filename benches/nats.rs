//! Benchmark: nats (placeholder until its issue fills it).
fn main() {}
