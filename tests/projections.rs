//! Integration tests: projections (placeholder until its issue fills it).
