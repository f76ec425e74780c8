//! Integration tests: nats (placeholder until its issue fills it).
