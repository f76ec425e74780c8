//! Benchmark: projections (placeholder until its issue fills it).
fn main() {}
