//! Integration tests: redis (placeholder until its issue fills it).
