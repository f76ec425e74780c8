//! Benchmark: aggregate (placeholder until its issue fills it).
fn main() {}
