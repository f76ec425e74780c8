//! Subscription patterns: `*`, `order.created`, `order.*`, `order.>`.
//!
//! The semantics are the same on every bus backend:
//!
//! | pattern | matches |
//! |---|---|
//! | `*` (alone) | every event type |
//! | `order.created` | exactly `order.created` |
//! | `order.*` | `order.` followed by exactly one token (`order.created`, not `order.line.added`) |
//! | `order.>` | `order.` followed by one or more tokens |
//! | `*.created` | any one token, then `created` |
//!
//! `*` stands for one whole token and may appear in any position; `>` only as the last token.

use std::fmt;

use crate::error::{Error, Result};
use crate::event::MAX_EVENT_TYPE_LEN;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens (last segment only).
    Rest,
}

/// A parsed, validated subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: Box<str>,
    /// `None` for the catch-all `*`.
    segments: Option<Box<[Segment]>>,
}

impl Pattern {
    /// Parses `pattern`.
    ///
    /// # Errors
    /// [`Error::InvalidPattern`] naming the pattern when it is empty, too long, has an empty
    /// token, a token mixing a wildcard with other characters, `>` before the last token, or a
    /// character outside `[a-z0-9_-]`.
    pub fn parse(pattern: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if pattern.len() > MAX_EVENT_TYPE_LEN {
            return Err(invalid("longer than 255 bytes"));
        }
        if pattern == "*" {
            return Ok(Pattern {
                raw: pattern.into(),
                segments: None,
            });
        }
        let tokens: Vec<&str> = pattern.split('.').collect();
        let last = tokens.len() - 1;
        let mut segments = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.into_iter().enumerate() {
            let segment = match token {
                "" => return Err(invalid("empty token (leading, trailing or double dot)")),
                "*" => Segment::One,
                ">" if i == last => Segment::Rest,
                ">" => return Err(invalid("`>` is only allowed as the last token")),
                t if t.bytes().all(|b| {
                    b == b'_' || b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit()
                }) =>
                {
                    Segment::Literal(t.into())
                }
                _ => {
                    return Err(invalid(
                        "tokens are `*`, `>` or lower-case ASCII letters, digits, `_` and `-`",
                    ));
                }
            };
            segments.push(segment);
        }
        Ok(Pattern {
            raw: pattern.into(),
            segments: Some(segments.into_boxed_slice()),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True for the catch-all pattern `*`.
    pub fn is_all(&self) -> bool {
        self.segments.is_none()
    }

    /// True when the pattern has no wildcard (it names one event type).
    pub fn is_exact(&self) -> bool {
        self.segments
            .as_deref()
            .is_some_and(|s| s.iter().all(|s| matches!(s, Segment::Literal(_))))
    }

    /// The equivalent NATS subject filter below `prefix` (`*` becomes `prefix.>`).
    ///
    /// An empty prefix gives the bare filter (`*` becomes `>`).
    pub fn to_subject(&self, prefix: &str) -> String {
        let tail = if self.is_all() { ">" } else { &self.raw };
        if prefix.is_empty() {
            tail.to_owned()
        } else {
            format!("{prefix}.{tail}")
        }
    }

    /// Whether `event_type` matches this pattern.
    pub fn matches(&self, event_type: &str) -> bool {
        let Some(segments) = self.segments.as_deref() else {
            return true;
        };
        let mut tokens = event_type.split('.');
        for segment in segments {
            match segment {
                Segment::Rest => return tokens.next().is_some(),
                Segment::One => {
                    if tokens.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if tokens.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        tokens.next().is_none()
    }
}

/// The patterns of one subscription: an event is delivered when any of them matches.
///
/// Built by [`EventBus::subscribe_with`](crate::bus::EventBus::subscribe_with) from the
/// caller's patterns; backends map the whole set onto one ordered consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternSet {
    patterns: Box<[Pattern]>,
    label: Box<str>,
}

impl PatternSet {
    /// Parses every pattern of `patterns` (duplicates are dropped).
    ///
    /// # Errors
    /// [`Error::InvalidPattern`] for the first invalid pattern, or for an empty list.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self> {
        if patterns.is_empty() {
            return Err(Error::InvalidPattern {
                pattern: String::new(),
                reason: "a subscription needs at least one pattern",
            });
        }
        let mut parsed: Vec<Pattern> = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = Pattern::parse(p.as_ref())?;
            if !parsed.contains(&p) {
                parsed.push(p);
            }
        }
        let label = parsed
            .iter()
            .map(Pattern::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(PatternSet {
            patterns: parsed.into_boxed_slice(),
            label: label.into(),
        })
    }

    /// Whether any pattern matches `event_type`.
    pub fn matches(&self, event_type: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(event_type))
    }

    /// The patterns, in the caller's order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// The patterns joined by `, ` (for logs, errors and subscription descriptions).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// True when one pattern is the catch-all `*`.
    pub fn is_all(&self) -> bool {
        self.patterns.iter().any(Pattern::is_all)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Pattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Pattern::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, event_type: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(event_type)
    }

    #[test]
    fn matching_follows_the_documented_table() {
        assert!(m("*", "a"));
        assert!(m("*", "a.b.c"));
        assert!(m("order.created", "order.created"));
        assert!(!m("order.created", "order.created.v2"));
        assert!(!m("order.created", "order"));
        assert!(m("order.*", "order.created"));
        assert!(!m("order.*", "order"));
        assert!(!m("order.*", "order.line.added"));
        assert!(!m("order.*", "orders.created"));
        assert!(m("order.>", "order.created"));
        assert!(m("order.>", "order.line.added"));
        assert!(!m("order.>", "order"));
        assert!(m("*.created", "user.created"));
        assert!(!m("*.created", "user.updated"));
        assert!(!m("*.created", "a.b.created"));
        assert!(m("a.*.c", "a.b.c"));
        assert!(m("a.*.>", "a.b.c.d"));
        assert!(!m("a.*.>", "a.b"));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for p in [
            "", ".", "a.", ".a", "a..b", "a.>.b", "a*", "a.b*", "A.b", "a b", "a.>>", "**",
        ] {
            assert!(
                matches!(Pattern::parse(p), Err(Error::InvalidPattern { ref pattern, .. }) if pattern == p),
                "{p:?} accepted"
            );
        }
        assert!(Pattern::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn pattern_sets_match_any_and_reject_empty() {
        let set = PatternSet::parse(&["a.*", "b.>", "a.*"]).unwrap();
        assert_eq!(set.label(), "a.*, b.>");
        assert!(set.matches("a.x") && set.matches("b.x.y") && !set.matches("c.x"));
        assert!(PatternSet::parse::<&str>(&[]).is_err());
        assert!(PatternSet::parse(&["a.*", "A"]).is_err());
    }

    #[test]
    fn subjects_map_to_nats_wildcards() {
        assert_eq!(Pattern::parse("*").unwrap().to_subject("ef"), "ef.>");
        assert_eq!(
            Pattern::parse("order.*").unwrap().to_subject("ef"),
            "ef.order.*"
        );
        assert_eq!(Pattern::parse("order.>").unwrap().to_subject(""), "order.>");
        assert!(Pattern::parse("a.b").unwrap().is_exact());
        assert!(!Pattern::parse("a.*").unwrap().is_exact());
    }
}
