//! Unit tests of the in-memory stores.
