//! Example: bank_account (placeholder until its issue fills it).
fn main() {}
