//! [`ExpectedVersion`], the optimistic-concurrency condition of an append.
//!
//! It sits below [`error`](crate::error) (whose [`Error::Conflict`](crate::Error::Conflict)
//! carries one) so that `error.rs` imports nothing above it. The store re-exports it as
//! [`store::ExpectedVersion`](crate::store::ExpectedVersion) and adds
//! [`check`](ExpectedVersion::check), which returns that error.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The optimistic-concurrency condition of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be at exactly this version (0 = does not exist).
    Exact(u64),
}

impl ExpectedVersion {
    /// True when a stream at version `actual` (0 when it does not exist) meets the condition.
    pub fn allows(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_and_displays() {
        assert!(ExpectedVersion::Any.allows(7));
        assert!(ExpectedVersion::NoStream.allows(0));
        assert!(!ExpectedVersion::NoStream.allows(1));
        assert!(ExpectedVersion::Exact(3).allows(3));
        assert!(!ExpectedVersion::Exact(3).allows(2));
        assert_eq!(ExpectedVersion::Exact(3).to_string(), "version 3");
    }
}
