//! Unit tests of the projection runner.
