//! Gap safety: a reader following positions never passes over an event that commits later,
//! under concurrent writers (every store) and across an append held open (capability
//! `can_hold_append_open`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::HoldsAppendOpen;
use super::support::{channel_handler, ev, ids, need, read_everything, recv_n};
use crate::event::Event;
use crate::store::{EventCriteria, EventStore, EventStoreExt, ExpectedVersion};

/// A reader paging through `read_all` while eight writers append never passes over an event:
/// what it collected equals the final global order, each event once.
pub async fn reader_never_skips_under_concurrent_writes(store: &dyn EventStore) {
    const P: &str = "a reader following positions never passes over a later-committed event";
    let writers = 8u64;
    let per_writer = 15u64;
    let done = std::sync::atomic::AtomicBool::new(false);
    let write = async {
        futures_util::future::join_all((0..writers).map(|w| async move {
            for n in 0..per_writer {
                let batch = vec![ev("follow.wrote", n), ev("follow.wrote", n + 1000)];
                need(
                    store
                        .append_batch(&format!("follow-{w}"), ExpectedVersion::Any, batch)
                        .await,
                    P,
                    "append_batch",
                );
            }
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let read = async {
        let mut seen: Vec<Event> = Vec::new();
        let mut after = 0;
        loop {
            // Read the flag first: a read that starts after every writer finished and comes back
            // empty means the reader has everything.
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let page = need(store.read_all(after, 16).await, P, "read_all");
            match page.last() {
                Some(last) => {
                    after = last.position.unwrap_or(u64::MAX);
                    seen.extend(page);
                }
                None if finished => break,
                None => tokio::task::yield_now().await,
            }
        }
        seen
    };
    let ((), seen) = tokio::join!(write, read);
    let all = read_everything(store, P).await;
    ensure!(
        all.len() == (writers * per_writer * 2) as usize,
        P,
        "the store holds {} events, expected {}",
        all.len(),
        writers * per_writer * 2
    );
    let missed: Vec<u64> = {
        let got: HashSet<Uuid> = seen.iter().map(|e| e.id).collect();
        all.iter()
            .filter(|e| !got.contains(&e.id))
            .map(|e| e.position.unwrap_or(0))
            .collect()
    };
    ensure!(
        missed.is_empty(),
        P,
        "the reader passed over {} events (positions {:?})",
        missed.len(),
        missed
    );
    ensure!(
        ids(&seen) == ids(&all),
        P,
        "the reader saw {} events, not the global order once each",
        seen.len()
    );
}

/// Reads `read_all` pages from where `after` points until an empty page, as a follower does.
async fn follow(reader: &dyn EventStore, after: &mut u64, seen: &mut Vec<Event>, promise: &str) {
    loop {
        let page = need(reader.read_all(*after, 100).await, promise, "read_all");
        let Some(last) = page.last() else { return };
        *after = last.position.unwrap_or(u64::MAX);
        seen.extend(page);
    }
}

/// Waits, at most [`OTHER_WRITERS_WAIT`], for writes that may be queued behind an open append.
async fn wait_for_writers(done: &AtomicBool) {
    let deadline = tokio::time::Instant::now() + OTHER_WRITERS_WAIT;
    while !done.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long the check lets other writers commit while an append is held open (a store that
/// serializes writers makes them wait for it; that is fine, and the check moves on).
const OTHER_WRITERS_WAIT: Duration = Duration::from_millis(500);

/// Capability `can_hold_append_open`: while an append is held open, other writers commit
/// after it (in another store, at higher positions); a follower reading then — and a store
/// subscription — must not pass over the open append. Once it commits they get it, in global
/// order; once one rolls back they move on without it. What the follower and the subscription
/// collected equals the final global order, each event once.
pub async fn open_append_is_not_passed_over(store: &dyn EventStore, hold: &dyn HoldsAppendOpen) {
    const P: &str = "a reader following positions never passes over an append held open";
    let owned = hold.reader();
    let reader: &dyn EventStore = owned.as_deref().unwrap_or(store);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = need(
        reader
            .subscribe(EventCriteria::all(), channel_handler(tx))
            .await,
        P,
        "subscribe",
    );
    need(
        store
            .append("gap-0", ExpectedVersion::NoStream, ev("gap.before", 0))
            .await,
        P,
        "append",
    );
    let (mut after, mut followed) = (0, Vec::new());

    for (round, commits) in [(1u64, true), (2, false)] {
        let held = need(
            hold.begin_append(
                &format!("gap-held-{round}"),
                ExpectedVersion::NoStream,
                vec![ev("gap.held", round), ev("gap.held", round + 100)],
            )
            .await,
            P,
            "begin_append",
        );
        let done = AtomicBool::new(false);
        let others = async {
            for i in 0..3u64 {
                need(
                    store
                        .append(
                            &format!("gap-other-{round}-{i}"),
                            ExpectedVersion::NoStream,
                            ev("gap.other", round * 10 + i),
                        )
                        .await,
                    P,
                    "append while another append is held open",
                );
            }
            done.store(true, Ordering::SeqCst);
        };
        let read_then_finish = async {
            wait_for_writers(&done).await;
            // Readers now: the held append's events are not visible, and nothing after them
            // may be passed over.
            follow(reader, &mut after, &mut followed, P).await;
            if commits {
                need(held.commit().await, P, "commit of the held append");
            } else {
                need(held.rollback().await, P, "rollback of the held append");
            }
        };
        tokio::join!(others, read_then_finish);
        follow(reader, &mut after, &mut followed, P).await;
    }

    let all = read_everything(store, P).await;
    ensure!(
        all.len() == 9,
        P,
        "the store holds {} events, expected 9 (1 before, 2 committed held, 6 others; the \
         rolled-back append none)",
        all.len()
    );
    ensure!(
        all.iter()
            .all(|e| e.stream_id.as_deref() != Some("gap-held-2")),
        P,
        "an event of the rolled-back append is stored"
    );
    let missed: Vec<&str> = {
        let got: HashSet<Uuid> = followed.iter().map(|e| e.id).collect();
        all.iter()
            .filter(|e| !got.contains(&e.id))
            .filter_map(|e| e.stream_id.as_deref())
            .collect()
    };
    ensure!(
        missed.is_empty(),
        P,
        "a follower passed over events of streams {missed:?}"
    );
    ensure!(
        ids(&followed) == ids(&all),
        P,
        "a follower read {} events, not the global order once each",
        followed.len()
    );
    let delivered = recv_n(&mut rx, all.len(), P).await;
    ensure!(
        ids(&delivered) == ids(&all),
        P,
        "a subscription delivered {:?}, not the global order {:?}",
        delivered.iter().map(|e| &e.stream_id).collect::<Vec<_>>(),
        all.iter().map(|e| &e.stream_id).collect::<Vec<_>>()
    );
}
