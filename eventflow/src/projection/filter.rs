//! The projection's patterns, parsed once.

use crate::bus::Pattern;
use crate::error::Result;

/// A parsed set of patterns; `*` short-circuits.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    patterns: Vec<Pattern>,
    all: bool,
}

impl Filter {
    pub(crate) fn parse(patterns: &[String]) -> Result<Self> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>>>()?;
        let all = patterns.iter().any(Pattern::is_all);
        Ok(Filter { patterns, all })
    }

    pub(crate) fn matches(&self, event_type: &str) -> bool {
        self.all || self.patterns.iter().any(|p| p.matches(event_type))
    }
}
