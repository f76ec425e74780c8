//! The one schema-name rule of the PostgreSQL backend, used by the event store, the snapshot,
//! checkpoint and saga stores and the projection runner alike.

use crate::error::{Error, Result};

/// The schema used when none is configured.
pub const DEFAULT_SCHEMA: &str = "eventflow";

/// A validated schema name and its quoted SQL form.
///
/// Table names cannot be bind parameters, so the schema is spliced into SQL text; it is checked
/// as a plain identifier first: 1 to 63 bytes of `[a-z0-9_]`, not starting with a digit or
/// `pg_` (PostgreSQL reserves that prefix for system schemas). Lower case only, so the name
/// means the same quoted or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schema {
    name: String,
    quoted: String,
}

impl Schema {
    /// Checks `name` and quotes it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the schema.
    pub(crate) fn new(name: &str) -> Result<Self> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && !name.starts_with("pg_")
            && name
                .bytes()
                .all(|b| b == b'_' || b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Schema {
                name: name.to_owned(),
                quoted: format!("\"{name}\""),
            })
        } else {
            Err(Error::InvalidArgument(format!(
                "invalid schema name {name:?}: use 1 to 63 characters of [a-z0-9_], not \
                 starting with a digit or `pg_`"
            )))
        }
    }

    /// The [`DEFAULT_SCHEMA`].
    pub(crate) fn default_schema() -> Self {
        Self::new(DEFAULT_SCHEMA).unwrap_or_else(|_| unreachable!("the default schema is valid"))
    }

    /// The name as given.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The name quoted for SQL (`"name"`).
    pub(crate) fn quoted(&self) -> &str {
        &self.quoted
    }

    /// The `LISTEN`/`NOTIFY` channel of this schema: a fixed-length name derived from it, so it
    /// stays under PostgreSQL's 63-byte identifier limit.
    pub(crate) fn channel(&self) -> String {
        format!("eventflow_{:016x}", fnv1a(self.name.bytes()))
    }

    /// The key of the advisory lock held while this schema is migrated: the same in every
    /// process, distinct per schema (and from sqlx's own migration lock, derived from the
    /// database name with another hash).
    pub(crate) fn migration_lock_key(&self) -> i64 {
        let hash = fnv1a(
            b"eventflow migrate "
                .iter()
                .copied()
                .chain(self.name.bytes()),
        );
        i64::from_ne_bytes(hash.to_ne_bytes())
    }
}

/// FNV-1a: stable across processes and Rust versions, unlike `DefaultHasher`.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(Schema::new("eventflow").is_ok());
        assert!(Schema::new("t_abc_123").is_ok());
        for bad in [
            "",
            "1abc",
            "pg_x",
            "a-b",
            "A",
            "a\"b",
            "a;drop",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(Schema::new(bad), Err(Error::InvalidArgument(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn channels_are_short_and_distinct() {
        let channel = |name| Schema::new(name).map(|s| s.channel()).unwrap_or_default();
        assert_eq!(channel("s1").len(), "eventflow_".len() + 16);
        assert_ne!(channel("s1"), channel("s2"));
    }
}
