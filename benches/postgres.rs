//! Benchmark: postgres (placeholder until its issue fills it).
fn main() {}
