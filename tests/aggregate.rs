//! Integration tests: aggregate (placeholder until its issue fills it).
