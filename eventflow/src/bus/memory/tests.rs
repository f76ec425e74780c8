#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Semaphore, broadcast::error::RecvError};
use tokio::time::timeout;

use super::*;
use crate::bus::BusErrorKind;
use crate::bus::{EventBusExt, HandlerResult, must_publish, publish_error, sync_handler};
use crate::event::Metadata;
use crate::testing::RecordingBus;
use crate::testing::conformance;

const WAIT: Duration = Duration::from_secs(10);

fn ev(t: &str) -> Event {
    Event::new(t, json!({ "t": t })).unwrap()
}

fn seq(t: &str, publisher: usize, n: usize) -> Event {
    Event::new(t, json!({ "p": publisher, "n": n })).unwrap()
}

fn async_bus(buffer: usize) -> InMemoryBus {
    InMemoryBus::builder().async_dispatch(buffer).build()
}

/// A handler counting its calls.
fn counter() -> (Arc<AtomicUsize>, Arc<dyn Handler>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let handler = Arc::new(sync_handler(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }));
    (count, handler)
}

/// A handler that counts, then waits for a permit of `gate` before finishing.
fn gated(gate: &Arc<Semaphore>) -> (Arc<AtomicUsize>, Arc<dyn Handler>) {
    let count = Arc::new(AtomicUsize::new(0));
    let (c, gate) = (count.clone(), gate.clone());
    let handler = Arc::new(move |_event: Arc<Event>| {
        let (c, gate) = (c.clone(), gate.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            HandlerResult::Ok(())
        }
    });
    (count, handler)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sync_bus_passes_the_conformance_kit() {
    let caps = conformance::bus::Capabilities::in_memory_sync();
    let report = conformance::bus::run(caps, |_scope| async {
        Arc::new(InMemoryBus::new()) as Arc<dyn EventBus>
    })
    .await;
    assert!(
        report.has_run("handlers_ran_when_publish_returns"),
        "{report}"
    );
    assert!(report.has_run("publish_order"), "{report}");
    for check in [
        "saga_follow_ups_after_slow_start",
        "projection_patterns_in_order",
        "at_most_once_refused_without_opt_in",
        "different_names_each_get_every_event",
    ] {
        assert!(report.has_run(check), "{report}");
    }
    for (check, needs) in [
        ("redelivery_after_error_and_panic", "redelivers"),
        ("dead_letter_after_max_deliveries", "dead_letters"),
        ("durable_subscriber_resumes", "persistent"),
        ("unnamed_subscriptions_do_not_resume", "persistent"),
        (
            "unnamed_subscribers_each_get_every_event",
            "competing_consumers",
        ),
        ("same_name_shares_work", "competing_consumers"),
    ] {
        assert!(report.skipped().contains(&(check, needs)), "{report}");
    }
    assert!(
        report
            .to_string()
            .contains("redelivery_after_error_and_panic (needs redelivers)"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_bus_passes_the_conformance_kit() {
    let caps = conformance::bus::Capabilities::at_most_once();
    let report = conformance::bus::run(caps, |_scope| async {
        Arc::new(async_bus(16)) as Arc<dyn EventBus>
    })
    .await;
    // Issue 11: a saga's follow-ups and a two-pattern projection on the async bus.
    assert!(
        report.has_run("saga_follow_ups_after_slow_start"),
        "{report}"
    );
    assert!(report.has_run("projection_patterns_in_order"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_bus_with_a_buffer_of_one_passes_the_conformance_kit() {
    let caps = conformance::bus::Capabilities::at_most_once();
    conformance::bus::run(caps, |_scope| async {
        Arc::new(async_bus(1)) as Arc<dyn EventBus>
    })
    .await;
}

#[tokio::test]
async fn sync_handlers_have_run_when_publish_returns() {
    let bus = InMemoryBus::new();
    assert!(!bus.is_async());
    let (a, ha) = counter();
    let (b, hb) = counter();
    // An async handler that yields before counting still finishes inside publish.
    let c = Arc::new(AtomicUsize::new(0));
    let c2 = c.clone();
    let _s1 = bus.subscribe("order.*", ha).await.unwrap();
    let _s2 = bus.subscribe("*", hb).await.unwrap();
    let _s3 = bus
        .on("order.created", move |_e: Arc<Event>| {
            let c = c2.clone();
            async move {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                c.fetch_add(1, Ordering::SeqCst);
                HandlerResult::Ok(())
            }
        })
        .await
        .unwrap();
    for i in 1..=3 {
        bus.publish(ev("order.created")).await.unwrap();
        assert_eq!(a.load(Ordering::SeqCst), i);
        assert_eq!(b.load(Ordering::SeqCst), i);
        assert_eq!(c.load(Ordering::SeqCst), i);
    }
    bus.publish_batch(vec![ev("user.created"), ev("order.paid")])
        .await
        .unwrap();
    assert_eq!(a.load(Ordering::SeqCst), 4);
    assert_eq!(b.load(Ordering::SeqCst), 5);
    assert_eq!(bus.subscriber_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_publish_waits_while_the_buffer_is_full() {
    const BUFFER: usize = 4;
    const TOTAL: usize = 40;
    let bus = Arc::new(async_bus(BUFFER));
    let gate = Arc::new(Semaphore::new(0));
    let (handled, handler) = gated(&gate);
    let _sub = bus.subscribe("job.*", handler).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (bus, accepted) = (bus.clone(), accepted.clone());
        tokio::spawn(async move {
            for i in 0..TOTAL {
                bus.publish(seq("job.run", 0, i)).await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // The (blocked) dispatcher holds at most BUFFER events it took from the queue, and BUFFER
    // more wait in the queue; the next publish must wait.
    eventually("the handler to start", || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("the queue to fill", || {
        accepted.load(Ordering::SeqCst) > BUFFER
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = accepted.load(Ordering::SeqCst);
    assert!(
        before <= 2 * BUFFER,
        "publish returned {before} times although the buffer of {BUFFER} was full"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before,
        "publish did not wait"
    );
    assert!(!publisher.is_finished());
    assert_eq!(handled.load(Ordering::SeqCst), 1);

    gate.add_permits(TOTAL);
    timeout(WAIT, publisher).await.unwrap().unwrap();
    bus.close().await.unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_every_accepted_event() {
    let bus = async_bus(1000);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let _slow = bus
        .on("work.>", move |_e: Arc<Event>| {
            let c = c.clone();
            async move {
                tokio::time::sleep(Duration::from_micros(200)).await;
                c.fetch_add(1, Ordering::SeqCst);
                HandlerResult::Ok(())
            }
        })
        .await
        .unwrap();
    let (fast, fast_handler) = counter();
    let _fast = bus.subscribe("*", fast_handler).await.unwrap();
    for i in 0..500 {
        bus.publish(seq("work.item", 0, i)).await.unwrap();
    }
    assert!(count.load(Ordering::SeqCst) < 500, "the test needs a queue");
    timeout(WAIT, bus.close()).await.unwrap().unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 500);
    assert_eq!(fast.load(Ordering::SeqCst), 500);
    assert!(matches!(
        bus.publish(ev("work.item")).await,
        Err(Error::Closed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_publishers_wait_delivers_what_it_accepted() {
    let bus = Arc::new(async_bus(4));
    let gate = Arc::new(Semaphore::new(0));
    let (handled, handler) = gated(&gate);
    let _sub = bus.subscribe("*", handler).await.unwrap();
    let ok = Arc::new(AtomicUsize::new(0));
    let publisher = {
        let (bus, ok) = (bus.clone(), ok.clone());
        tokio::spawn(async move {
            for i in 0..50 {
                match bus.publish(seq("x.y", 0, i)).await {
                    Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(Error::Closed(_)) => break,
                    Err(e) => panic!("unexpected error {e}"),
                };
            }
        })
    };
    eventually("the queue to fill", || ok.load(Ordering::SeqCst) > 4).await;
    let closer = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.close().await })
    };
    eventually("close to start", || bus.is_closed()).await;
    // A second close waits for the first one's drain as well.
    let second = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.close().await })
    };
    gate.add_permits(1000);
    timeout(WAIT, closer).await.unwrap().unwrap().unwrap();
    timeout(WAIT, second).await.unwrap().unwrap().unwrap();
    timeout(WAIT, publisher).await.unwrap().unwrap();
    let accepted = ok.load(Ordering::SeqCst);
    assert!(accepted < 50, "publish must fail once the bus is closed");
    assert_eq!(handled.load(Ordering::SeqCst), accepted);
}

async fn check_failure_reported(bus: InMemoryBus, panics: bool) {
    let mut errors = bus.errors();
    let bad: Arc<dyn Handler> = if panics {
        Arc::new(sync_handler(|e| panic!("boom on {}", e.event_type)))
    } else {
        Arc::new(sync_handler(|e| {
            Err(format!("nope on {}", e.event_type).into())
        }))
    };
    let _bad = bus.subscribe("order.*", bad).await.unwrap();
    let (good, good_handler) = counter();
    let _good = bus.subscribe("order.*", good_handler).await.unwrap();
    let event = ev("order.created");
    let id = event.id;
    bus.publish(event).await.unwrap();
    let error = timeout(WAIT, errors.recv()).await.unwrap().unwrap();
    let (kind, text) = if panics {
        (BusErrorKind::HandlerPanicked, "boom on order.created")
    } else {
        (BusErrorKind::HandlerFailed, "nope on order.created")
    };
    assert_eq!(error.kind, kind);
    assert_eq!(error.event_id, Some(id));
    assert_eq!(error.event_type.as_deref(), Some("order.created"));
    assert_eq!(error.pattern.as_deref(), Some("order.*"));
    assert!(error.message.contains(text), "{}", error.message);
    // The bus and the other handler go on.
    bus.publish(ev("order.paid")).await.unwrap();
    let second = timeout(WAIT, errors.recv()).await.unwrap().unwrap();
    assert_eq!(second.event_type.as_deref(), Some("order.paid"));
    eventually("the good handler", || good.load(Ordering::SeqCst) == 2).await;
    bus.close().await.unwrap();
    assert!(matches!(
        timeout(WAIT, errors.recv()).await.unwrap(),
        Err(RecvError::Closed)
    ));
    assert!(matches!(bus.errors().recv().await, Err(RecvError::Closed)));
}

#[tokio::test]
async fn sync_panic_is_reported_with_the_event_id() {
    check_failure_reported(InMemoryBus::new(), true).await;
}

#[tokio::test]
async fn sync_handler_error_is_reported_with_the_event_id() {
    check_failure_reported(InMemoryBus::new(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_panic_is_reported_with_the_event_id() {
    check_failure_reported(async_bus(8), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handler_error_is_reported_with_the_event_id() {
    check_failure_reported(async_bus(8), false).await;
}

async fn check_concurrent_publishers(bus: InMemoryBus) {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 2000;
    let bus = Arc::new(bus);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _sub = bus
        .on(
            "load.*",
            sync_handler(move |e| {
                let p = e.payload["p"].as_u64().unwrap() as usize;
                let n = e.payload["n"].as_u64().unwrap() as usize;
                s.lock().unwrap().push((p, n));
                Ok(())
            }),
        )
        .await
        .unwrap();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    bus.publish(seq("load.tick", p, n)).await.unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        timeout(WAIT, p).await.unwrap().unwrap();
    }
    timeout(WAIT, bus.close()).await.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), PUBLISHERS * EACH);
    let mut next = [0usize; PUBLISHERS];
    for &(p, n) in seen.iter() {
        assert_eq!(n, next[p], "publisher {p}: event {n} arrived out of order");
        next[p] += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_keep_their_order_sync() {
    check_concurrent_publishers(InMemoryBus::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_keep_their_order_async() {
    check_concurrent_publishers(async_bus(64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_shares_one_event_allocation() {
    for bus in [InMemoryBus::new(), async_bus(8)] {
        let got = Arc::new(Mutex::new(Vec::<Arc<Event>>::new()));
        let mut subs = Vec::new();
        for _ in 0..3 {
            let g = got.clone();
            subs.push(
                bus.on("*", move |e: Arc<Event>| {
                    g.lock().unwrap().push(e);
                    std::future::ready(HandlerResult::Ok(()))
                })
                .await
                .unwrap(),
            );
        }
        bus.publish(ev("shared.event")).await.unwrap();
        bus.close().await.unwrap();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 3);
        assert!(Arc::ptr_eq(&got[0], &got[1]) && Arc::ptr_eq(&got[1], &got[2]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_unsubscribe_discards_what_is_still_queued() {
    let bus = async_bus(16);
    let gate = Arc::new(Semaphore::new(0));
    let (handled, handler) = gated(&gate);
    let sub = bus.subscribe("q.*", handler).await.unwrap();
    for i in 0..5 {
        bus.publish(seq("q.item", 0, i)).await.unwrap();
    }
    eventually("the handler to start", || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    sub.unsubscribe();
    assert_eq!(bus.subscriber_count(), 0);
    gate.add_permits(100);
    timeout(WAIT, bus.close()).await.unwrap().unwrap();
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_sync_handler_can_publish_follow_up_events() {
    let bus = Arc::new(InMemoryBus::new());
    let weak = Arc::downgrade(&bus);
    let _sub = bus
        .on("order.placed", move |e: Arc<Event>| {
            let weak = weak.clone();
            async move {
                if let Some(bus) = weak.upgrade() {
                    let next = Event::new("order.confirmed", json!({}))?.caused_by(&e);
                    bus.publish(next).await?;
                }
                HandlerResult::Ok(())
            }
        })
        .await
        .unwrap();
    let (confirmed, handler) = counter();
    let _c = bus.subscribe("order.confirmed", handler).await.unwrap();
    bus.publish(ev("order.placed")).await.unwrap();
    assert_eq!(confirmed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn works_as_arc_dyn_event_bus() {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let (count, handler) = counter();
    let _sub = bus.subscribe("a.>", handler).await.unwrap();
    let _sub2 = bus.on("a.b", sync_handler(|_| Ok(()))).await.unwrap();
    bus.publish(ev("a.b")).await.unwrap();
    must_publish(&*bus, ev("a.b.c")).await;
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let shared = bus.clone();
    tokio::spawn(async move { shared.publish(ev("a.z")).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn publish_error_publishes_a_system_error_event() {
    let bus = RecordingBus::new();
    let err = Error::decode("order.created", std::io::Error::other("bad bytes"));
    publish_error(
        &bus,
        "order-service",
        &err,
        Metadata::default().tenant("acme").request("r-1"),
    )
    .await
    .unwrap();
    let events = bus.events_of_type(crate::event_types::SYSTEM_ERROR);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.source.as_deref(), Some("order-service"));
    assert_eq!(e.metadata.tenant_id.as_deref(), Some("acme"));
    assert_eq!(e.metadata.request_id.as_deref(), Some("r-1"));
    assert_eq!(e.payload["source"], "order-service");
    assert_eq!(e.payload["error"], err.to_string());
    assert_eq!(e.payload["chain"], json!(["bad bytes"]));
}

#[tokio::test]
async fn must_publish_publishes_on_an_open_bus() {
    let bus = InMemoryBus::new();
    let (count, handler) = counter();
    let _sub = bus.subscribe("*", handler).await.unwrap();
    must_publish(&bus, ev("critical.event")).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
#[should_panic(expected = "must_publish")]
async fn must_publish_panics_on_a_closed_bus() {
    let bus = InMemoryBus::new();
    bus.close().await.unwrap();
    must_publish(&bus, ev("critical.event")).await;
}

#[tokio::test]
async fn closing_an_idle_bus_twice_is_fine() {
    for bus in [InMemoryBus::new(), async_bus(4)] {
        bus.close().await.unwrap();
        bus.close().await.unwrap();
        assert!(bus.is_closed());
        assert!(matches!(
            bus.subscribe("*", counter().1).await,
            Err(Error::Closed(_))
        ));
    }
}

#[tokio::test]
async fn close_cancels_a_stuck_handler_after_the_drain_timeout() {
    let bus = InMemoryBus::builder()
        .async_dispatch(16)
        .drain_timeout(Duration::from_millis(200))
        .build();
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let handler = Arc::new(move |_event: Arc<Event>| {
        let s = s.clone();
        async move {
            s.notify_one();
            std::future::pending::<()>().await;
            HandlerResult::Ok(())
        }
    });
    let _sub = bus.subscribe("stuck.*", handler).await.unwrap();
    let mut errors = bus.errors();
    bus.publish(ev("stuck.one")).await.unwrap();
    bus.publish(ev("stuck.two")).await.unwrap();
    timeout(WAIT, started.notified()).await.unwrap();
    timeout(WAIT, bus.close())
        .await
        .expect("close returns after the drain timeout")
        .unwrap();
    let reported = timeout(WAIT, async {
        loop {
            match errors.recv().await {
                Ok(e) if e.kind == BusErrorKind::Cancelled => return e,
                Ok(_) => {}
                Err(e) => panic!("no cancellation reported: {e}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(reported.message.contains("drain timeout"), "{reported:?}");
}
