//! Unit tests of the saga manager.
