//! Integration tests: postgres (placeholder until its issue fills it).
