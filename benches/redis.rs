//! Benchmark: redis (placeholder until its issue fills it).
fn main() {}
