//! Shared helpers for the benchmarks: timing and the report line that puts our figure next to
//! its raw baseline.

use std::time::{Duration, Instant};

/// Runs `f` (which processes `n` events) and returns events per second.
pub async fn rate<F, Fut>(n: u64, f: F) -> f64
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    f().await;
    per_second(n, start.elapsed())
}

/// Events per second for `n` events in `elapsed`.
pub fn per_second(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Prints one result line: `name  ours/s  raw/s  ratio`, and returns the ratio.
#[allow(clippy::print_stdout)]
pub fn report(name: &str, ours: f64, raw: f64) -> f64 {
    let ratio = ours / raw.max(1e-9);
    println!("{name:<48} eventflow {ours:>12.0} ev/s   raw {raw:>12.0} ev/s   ratio {ratio:>5.2}x");
    ratio
}

/// Prints a header for a group of results.
#[allow(clippy::print_stdout)]
pub fn header(title: &str) {
    println!("\n== {title} ==");
}
