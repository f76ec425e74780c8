//! Clustered brokers with node failures: a private 3-node NATS JetStream cluster, a private
//! Redis Cluster and a Redis Sentinel set-up, each started by the tests on free loopback ports
//! in temporary directories, with nodes killed by SIGKILL.
//!
//! Every test is bounded (well under a minute) and kills only the processes it started.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::bus::{BusError, BusErrorKind, ErrorReceiver, SubscriptionOptions};
use eventflow::{Event, EventBus, HandlerResult};
use eventflow_tests::nats_cluster::NatsCluster;
use eventflow_tests::unique;
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Retries `connect` until the cluster is ready (it elects its JetStream meta leader, then the
/// stream's, a moment after its nodes accept clients).
async fn nats_connect(config: NatsConfig) -> NatsBus {
    let deadline = Instant::now() + WAIT;
    loop {
        match NatsBus::connect(config.clone()).await {
            Ok(bus) => return bus,
            Err(e) if Instant::now() < deadline => {
                tracing_note(&format!("cluster not ready yet: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the NATS cluster at {} never became ready: {e}", config.url),
        }
    }
}

fn tracing_note(_what: &str) {}

/// Event ids a handler has seen.
type Ids = Arc<Mutex<HashSet<Uuid>>>;

fn id_recorder() -> (Ids, Arc<dyn eventflow::Handler>) {
    let seen: Ids = Arc::default();
    let sink = seen.clone();
    let handler = move |event: Arc<Event>| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().insert(event.id);
            HandlerResult::Ok(())
        }
    };
    (seen, Arc::new(handler))
}

/// Drains what the error stream holds so far.
fn drain(rx: &mut ErrorReceiver, into: &mut Vec<BusError>) {
    while let Ok(e) = rx.try_recv() {
        into.push(e);
    }
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream cluster

fn cluster_config(cluster: &NatsCluster) -> NatsConfig {
    let mut c = NatsConfig::jetstream(cluster.urls());
    c.subject_prefix = unique("t");
    c.stream_name = unique("S");
    c.stream_replicas = 3;
    c.placement_cluster = Some(cluster.name().to_owned());
    c.max_reconnects = None;
    c.reconnect_wait = Duration::from_millis(50);
    c.connect_timeout = Duration::from_secs(2);
    c.request_timeout = Duration::from_secs(2);
    c.publish_retry_for = Duration::from_secs(20);
    c.ack_wait = Duration::from_secs(5);
    c
}

const EVENTS: usize = 10_000;
const PUBLISHERS: usize = 8;

/// An R3 stream keeps taking publishes and feeding a durable consumer while its leader is
/// SIGKILLed and later restarted: every publish that returned `Ok` reaches the durable
/// subscriber, and the bus reports the leader change and the server it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_r3_stream_survives_its_leader_being_killed() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    let config = cluster_config(&cluster);
    let subscriber = nats_connect(config.clone()).await;
    let leader = subscriber
        .health()
        .stream_leader
        .expect("an R3 stream has a leader");
    let leader_index = cluster.index_of(&leader).unwrap();
    // The publisher has the leader as its only seed (it learns the other members from it),
    // so killing the leader also moves it to another server.
    let mut publisher_config = config.clone();
    publisher_config.url = cluster.url(leader_index);
    let publisher = nats_connect(publisher_config).await;
    let mut errors = publisher.errors();
    let mut sub_errors = subscriber.errors();
    let on = publisher.server().unwrap();
    assert!(on.starts_with(&format!("{leader} ")), "{on}");

    let (seen, handler) = id_recorder();
    let _sub = subscriber
        .subscribe_with(
            &["e.*"],
            SubscriptionOptions::named("durable-across-leaders"),
            handler,
        )
        .await
        .unwrap();

    let acked: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (bus, acked, failed, done) = (
            publisher.clone(),
            acked.clone(),
            failed.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for n in (p..EVENTS).step_by(PUBLISHERS) {
                let event = Event::new("e.created", json!({ "n": n })).unwrap();
                let id = event.id;
                match bus.publish(event).await {
                    Ok(()) => acked.lock().unwrap().push(id),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let wait_done = |n: usize| {
        let done = done.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while done.load(Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "publishing stalled before {n}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_done(EVENTS / 5).await;
    tokio::task::block_in_place(|| cluster.kill(leader_index));
    let acked_at_kill = acked.lock().unwrap().len();
    wait_done(EVENTS * 3 / 5).await;
    // A new leader is elected (and announced) while the old one is down.
    let deadline = Instant::now() + WAIT;
    while publisher.health().stream_leader.as_deref() == Some(leader.as_str()) {
        assert!(Instant::now() < deadline, "no new leader announced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| cluster.restart(leader_index));
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let failed = failed.load(Ordering::Relaxed);
    assert!(
        acked.len() > acked_at_kill,
        "publishing went on after the leader was killed ({} acked at the kill, {} in all)",
        acked_at_kill,
        acked.len()
    );

    let deadline = Instant::now() + WAIT;
    loop {
        let missing = {
            let seen = seen.lock().unwrap();
            acked.iter().filter(|id| !seen.contains(id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events never reached the durable subscriber",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(failed, 0, "publishes are retried across the leader change");
    let health = publisher.health();
    assert!(health.leader_changes >= 1, "{health:?}");
    assert!(health.publish_retries >= 1, "{health:?}");
    let mut reported = Vec::new();
    drain(&mut errors, &mut reported);
    assert!(
        reported.iter().any(|e| e.kind == BusErrorKind::Reconnected
            && !e.message.contains(&format!("server {leader} "))
            && e.message.contains("reconnected to the NATS server n")),
        "the move to another server is reported with its name: {reported:?}"
    );
    drain(&mut sub_errors, &mut reported);
    assert!(
        reported
            .iter()
            .any(|e| e.kind == BusErrorKind::Failover && e.message.contains(&leader)),
        "the leader change is reported: {reported:?}"
    );
    eprintln!(
        "jetstream R3, leader {leader} killed: {} published Ok, {failed} failed, all Ok \
         delivered; {} publish retries; {} leader change(s); publisher on {:?}; {:?} in all",
        acked.len(),
        health.publish_retries,
        health.leader_changes,
        health.server,
        started.elapsed()
    );
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}
