//! Durability (capability `durable`): what one store instance committed, another instance over
//! the same storage (a restarted process, or another process) reads and follows.

use std::future::Future;

use tokio::sync::mpsc;

use super::TestStore;
use super::support::{channel_handler, ev, ids, need, read_everything, recv_n};
use crate::event::Event;
use crate::store::{EventCriteria, EventStoreExt, ExpectedVersion};
use crate::testing::conformance::Scope;

/// Capability `durable`: a store made again for the same scope (after the first one was
/// dropped) holds every event the first committed, with its versions and positions, continues
/// its streams, and a subscription on one instance receives what another instance appends.
pub async fn committed_events_survive_a_new_instance<F, Fut>(make_store: &F)
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = TestStore>,
{
    const P: &str = "a store made again over the same storage holds and follows what was committed";
    let scope = Scope::new("committed_events_survive_a_new_instance");
    let first = make_store(scope.clone()).await.store;
    let mut written: Vec<Event> = need(
        first
            .append_batch(
                "durable-1",
                ExpectedVersion::NoStream,
                vec![ev("durable.written", 0), ev("durable.written", 1)],
            )
            .await,
        P,
        "append_batch",
    );
    written.push(need(
        first
            .append(
                "durable-2",
                ExpectedVersion::NoStream,
                ev("durable.written", 2),
            )
            .await,
        P,
        "append",
    ));
    drop(first);

    let second = make_store(scope.clone()).await.store;
    let all = read_everything(&*second, P).await;
    ensure!(
        all == written,
        P,
        "the new instance reads {} events, not the {} committed ones unchanged",
        all.len(),
        written.len()
    );
    let version = need(
        second.stream_version("durable-1").await,
        P,
        "stream_version",
    );
    ensure!(
        version == 2,
        P,
        "durable-1 is at version {version}, expected 2"
    );
    let head = need(second.head_position().await, P, "head_position");
    let last = written.last().and_then(|e| e.position).unwrap_or(0);
    ensure!(head == last, P, "head is {head}, expected {last}");

    // Another instance follows what this one appends.
    let third = make_store(scope).await.store;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = need(
        third
            .subscribe(
                EventCriteria::all().after_position(last),
                channel_handler(tx),
            )
            .await,
        P,
        "subscribe",
    );
    let more = need(
        second
            .append(
                "durable-1",
                ExpectedVersion::Exact(2),
                ev("durable.written", 3),
            )
            .await,
        P,
        "append continuing the stream",
    );
    ensure!(
        more.stream_version == Some(3),
        P,
        "the stream continued at version {:?}, expected 3",
        more.stream_version
    );
    let got = recv_n(&mut rx, 1, P).await;
    ensure!(
        ids(&got) == [more.id],
        P,
        "a subscription on another instance did not get the appended event"
    );
}
