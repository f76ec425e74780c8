//! What the kit hands to factories ([`Scope`]) and what it hands back ([`Report`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

/// The namespace of one check: backends a factory makes for the same scope share their storage
/// (subject or key prefix, stream, schema, durable or consumer-group names), backends made for
/// different scopes share nothing.
///
/// [`name`](Scope::name) is unique to the process and the check, and safe as a subject token, a
/// key prefix, a stream, schema or durable name (`[a-z0-9_]`, starting with a letter).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    check: &'static str,
    name: String,
}

impl Scope {
    /// A fresh scope for `check`.
    pub fn new(check: &'static str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // The low bits of a v7 uuid are random.
        let random = Uuid::now_v7().as_u128() as u32;
        Scope {
            check,
            name: format!("kit_{}_{n}_{random:08x}", std::process::id()),
        }
    }

    /// A name unique to this scope (`kit_<pid>_<n>_<random>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The check the scope was made for.
    pub fn check(&self) -> &'static str {
        self.check
    }
}

/// Which checks a kit run ran, and which it skipped because the backend lacks the capability
/// they need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    ran: Vec<&'static str>,
    skipped: Vec<(&'static str, &'static str)>,
}

impl Report {
    pub(crate) fn record(&mut self, check: &'static str, needs: Option<&'static str>, ran: bool) {
        if ran {
            self.ran.push(check);
        } else {
            self.skipped.push((check, needs.unwrap_or("?")));
        }
    }

    /// The checks that ran (and passed: a failing check panics), in order.
    pub fn ran(&self) -> &[&'static str] {
        &self.ran
    }

    /// The checks that did not run, each with the capability it needs.
    pub fn skipped(&self) -> &[(&'static str, &'static str)] {
        &self.skipped
    }

    /// Whether `check` ran.
    pub fn has_run(&self, check: &str) -> bool {
        self.ran.contains(&check)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ran {} checks ({})", self.ran.len(), self.ran.join(", "))?;
        if !self.skipped.is_empty() {
            let skipped: Vec<String> = self
                .skipped
                .iter()
                .map(|(check, needs)| format!("{check} (needs {needs})"))
                .collect();
            write!(
                f,
                "; skipped {} ({})",
                self.skipped.len(),
                skipped.join(", ")
            )?;
        }
        Ok(())
    }
}
