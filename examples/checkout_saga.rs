//! Example: checkout_saga (placeholder until its issue fills it).
fn main() {}
