//! Upcasting: bringing payloads stored with an older schema version to the current one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{BoxError, Error, Result};
use crate::event::DomainEvent;

type UpcastFn = Arc<dyn Fn(Value) -> Result<Value, BoxError> + Send + Sync>;

/// Runtime upcasters, one per (event type, version): each upgrades a payload from that version
/// to the next. Registered with [`Repository::upcaster`](super::Repository::upcaster);
/// they take precedence over upcasters declared in the derive (`#[event(upcast(v1 = f))]`).
#[derive(Clone, Default)]
pub struct Upcasters {
    by_version: HashMap<(String, u32), UpcastFn>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_version.keys()).finish()
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` to upgrade payloads of `event_type` from `from_version` to
    /// `from_version + 1`, replacing an earlier registration for the same pair.
    pub fn register<F>(&mut self, event_type: impl Into<String>, from_version: u32, f: F)
    where
        F: Fn(Value) -> Result<Value, BoxError> + Send + Sync + 'static,
    {
        self.by_version
            .insert((event_type.into(), from_version), Arc::new(f));
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }
}

/// Upgrades `payload` of `event_type` from version `from` to `to`, one version at a time,
/// using `registry` first and the upcasters declared on `E` second.
///
/// # Errors
/// [`Error::MissingUpcaster`] naming the type and the first version without an upcaster (also
/// when `from` is newer than `to`: there is no downcasting); [`Error::Decode`] when an upcaster
/// fails.
pub(crate) fn upcast_payload<E: DomainEvent>(
    registry: Option<&Upcasters>,
    event_type: &str,
    from: u32,
    to: u32,
    mut payload: Value,
) -> Result<Value> {
    let missing = |version| Error::MissingUpcaster {
        event_type: event_type.to_owned(),
        version,
        current: to,
    };
    if from > to || from == 0 {
        return Err(missing(from));
    }
    for version in from..to {
        let runtime = registry.and_then(|r| r.by_version.get(&(event_type.to_owned(), version)));
        payload = match (runtime, E::upcaster(event_type, version)) {
            (Some(f), _) => f(payload),
            (None, Some(f)) => f(payload),
            (None, None) => return Err(missing(version)),
        }
        .map_err(|e| {
            Error::decode(
                event_type,
                format!("upcasting from version {version} failed: {e}"),
            )
        })?;
    }
    tracing::trace!(event_type, from, to, "upcast event payload");
    Ok(payload)
}
