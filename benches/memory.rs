//! Benchmark: memory (placeholder).
fn main() {}
