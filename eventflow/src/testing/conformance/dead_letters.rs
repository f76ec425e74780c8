//! The checks every [`DeadLetterStore`] passes: park, list (oldest first, per source), count,
//! take (remove and return) and discard.

use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::dead_letter::{DeadLetterStore, ParkedEvent};

fn parked(source: &str, n: u32) -> Result<ParkedEvent> {
    let event = Event::new("kit.parked", serde_json::json!({ "n": n }))?;
    let error = Error::EventTooLarge {
        id: event.id,
        size: 2 << 20,
        limit: 1 << 20,
    };
    Ok(ParkedEvent::new(
        source,
        event,
        "permanent: kit",
        &error,
        n + 1,
    ))
}

/// Runs every check against `store`, using sources that start with `prefix` (unique per run,
/// so the checks can share a store with other runs).
///
/// # Errors
/// The store's errors.
///
/// # Panics
/// When the store breaks a promise of [`DeadLetterStore`].
pub async fn run(store: &dyn DeadLetterStore, prefix: &str) -> Result<()> {
    let a = format!("{prefix}-a");
    let b = format!("{prefix}-b");
    assert!(
        matches!(
            store.park(parked("", 0)?).await,
            Err(Error::InvalidArgument(_))
        ),
        "an empty source must be rejected"
    );
    let mut mine = Vec::new();
    for n in 0..3 {
        let p = parked(&a, n)?;
        mine.push(p.clone());
        store.park(p).await?;
    }
    store.park(parked(&b, 9)?).await?;
    assert_eq!(store.count(&a).await?, 3, "count of source a");
    assert_eq!(store.count(&b).await?, 1, "count of source b");

    let listed = store.list(&a, 10).await?;
    assert_eq!(
        listed.len(),
        3,
        "list returns every dead letter of a source"
    );
    for (got, want) in listed.iter().zip(&mine) {
        assert_eq!(got.id, want.id, "list is oldest first");
        assert_eq!(got.event.id, want.event.id, "the event is kept");
        assert_eq!(got.event.payload, want.event.payload, "the payload is kept");
        assert_eq!(got.reason, want.reason, "the reason is kept");
        assert_eq!(got.error, want.error, "the error is kept");
        assert_eq!(got.attempts, want.attempts, "the attempt count is kept");
        assert_eq!(got.source, a, "the source is kept");
    }
    assert_eq!(store.list(&a, 2).await?.len(), 2, "list honours its limit");

    let taken = store.take(mine[0].id).await?;
    assert_eq!(
        taken.map(|t| t.event.id),
        Some(mine[0].event.id),
        "take returns the dead letter"
    );
    assert!(store.take(mine[0].id).await?.is_none(), "take removes it");
    assert!(store.discard(mine[1].id).await?, "discard finds it");
    assert!(!store.discard(mine[1].id).await?, "discard removes it");
    let left = store.list(&a, 10).await?;
    assert_eq!(
        left.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![mine[2].id],
        "only the untouched dead letter is left"
    );
    assert_eq!(store.count(&a).await?, 1);
    assert_eq!(store.count(&b).await?, 1, "other sources are untouched");
    Ok(())
}
