//! Integration tests: memory backends (placeholder until filled).
