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
use eventflow::bus::redis::{RedisBus, RedisConfig};
use eventflow::bus::{BusError, BusErrorKind, ErrorReceiver, SubscriptionOptions};
use eventflow::testing::conformance::{self, bus::Capabilities};
use eventflow::{Event, EventBus, HandlerResult};
use eventflow_tests::nats_cluster::NatsCluster;
use eventflow_tests::redis_cluster::{
    RedisCluster, RedisSentinels, SENTINEL_SERVICE, cli, wait_until,
};
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

/// Max deliveries of the kit's JetStream buses.
const KIT_MAX_DELIVER: u32 = 3;

/// The bus conformance kit against R3 streams on `cluster`, each bus with every node as a
/// seed.
async fn jetstream_kit(cluster: &NatsCluster) {
    let caps = Capabilities::at_least_once(KIT_MAX_DELIVER);
    let report = conformance::bus::run(caps, |scope| {
        let mut config = cluster_config(cluster);
        config.subject_prefix = scope.name().to_owned();
        config.stream_name = scope.name().to_owned();
        config.max_deliver = i64::from(KIT_MAX_DELIVER);
        config.ack_wait = Duration::from_secs(2);
        config.retry_backoff = Duration::from_millis(20);
        config.max_retry_backoff = Duration::from_millis(200);
        async move { Arc::new(nats_connect(config).await) as Arc<dyn EventBus> }
    })
    .await;
    for check in [
        "redelivery_after_error_and_panic",
        "dead_letter_after_max_deliveries",
        "durable_subscriber_resumes",
        "same_name_shares_work",
    ] {
        assert!(report.has_run(check), "{check}: {report}");
    }
}

const EVENTS: usize = 10_000;
const PUBLISHERS: usize = 8;

/// One private 3-node cluster for the whole scenario: the conformance kit on R3 streams; then
/// an R3 stream keeps taking publishes and feeding a durable consumer while its leader is
/// SIGKILLed and later restarted: every publish that returned `Ok` reaches the durable
/// subscriber, and the bus reports the leader change and the server it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_r3_cluster_passes_the_kit_and_survives_a_killed_leader() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    jetstream_kit(&cluster).await;
    let kit = started.elapsed();
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

    // The durable consumer's leader steps down: the subscriber counts and reports it.
    let consumer_changes = subscriber.health().consumer_leader_changes;
    let admin = async_nats::connect(cluster.url(0)).await.unwrap();
    let reply = admin
        .request(
            format!(
                "$JS.API.CONSUMER.LEADER.STEPDOWN.{}.durable-across-leaders",
                config.stream_name
            ),
            "".into(),
        )
        .await
        .unwrap();
    let reply = String::from_utf8_lossy(&reply.payload).into_owned();
    assert!(
        reply.contains("\"success\":true"),
        "consumer stepdown: {reply}"
    );
    let deadline = Instant::now() + WAIT;
    while subscriber.health().consumer_leader_changes <= consumer_changes {
        assert!(
            Instant::now() < deadline,
            "the consumer leader change is never counted: {:?}",
            subscriber.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reported = Vec::new();
    drain(&mut sub_errors, &mut reported);
    assert!(
        reported.iter().any(|e| e.kind == BusErrorKind::Failover
            && e.message.contains("consumer \"durable-across-leaders\"")),
        "the consumer leader change is reported: {reported:?}"
    );
    eprintln!(
        "jetstream R3: kit {kit:?}; leader {leader} killed: {} published Ok, {failed} failed, \
         all Ok delivered; {} publish retries; {} leader change(s); publisher on {:?}; {:?} in \
         all",
        acked.len(),
        health.publish_retries,
        health.leader_changes,
        health.server,
        started.elapsed()
    );
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Redis Cluster

/// Max deliveries of the kit's Streams buses.
const KIT_MAX_DELIVERIES: u32 = 3;

fn redis_cluster_config(cluster: &RedisCluster, prefix: &str, streams: bool) -> RedisConfig {
    let mut c = RedisConfig::cluster(cluster.urls());
    c.use_streams = streams;
    c.key_prefix = prefix.to_owned();
    c.retry_delay = Duration::from_millis(50);
    c.block = Duration::from_millis(200);
    c.connect_timeout = Duration::from_secs(2);
    c.response_timeout = Duration::from_secs(2);
    c
}

async fn redis_connect(config: RedisConfig) -> RedisBus {
    match RedisBus::connect(config.clone()).await {
        Ok(bus) => bus,
        Err(e) => panic!(
            "cannot connect to the private Redis deployment {:?}: {e}",
            config.addrs
        ),
    }
}

/// The event ids stored in `key` now (read through a cluster connection).
async fn stream_ids(cluster: &RedisCluster, key: &str) -> HashSet<Uuid> {
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            let data = fields.into_iter().find(|(k, _)| k == "data")?.1;
            Some(Event::from_json(data.as_bytes()).ok()?.id)
        })
        .collect()
}

/// Publishes from four tasks while the primary serving the bus's stream is SIGKILLed, its
/// replica takes over and the killed node comes back (as a replica); returns how many
/// acknowledged entries the stream lost. Checks that publishing and consuming go on.
async fn redis_failover_round(cluster: &mut RedisCluster, wait_replicas: usize) -> usize {
    let prefix = unique("ef");
    let mut config = redis_cluster_config(cluster, &prefix, true);
    config.wait_replicas = wait_replicas;
    config.wait_timeout = Duration::from_millis(500);
    let publisher = redis_connect(config.clone()).await;
    let subscriber = redis_connect(config).await;
    let key = publisher.stream_key().to_owned();
    assert!(key.starts_with(&format!("{{{prefix}}}")), "{key}");
    let (primary, replicas) = tokio::task::block_in_place(|| {
        let mut found = None;
        wait_until("a primary with an in-sync replica", || {
            found = cluster.primary_of(&key).filter(|(_, r)| {
                r.iter().any(|p| {
                    cli(*p, &["INFO", "replication"])
                        .is_some_and(|i| i.contains("master_link_status:up"))
                })
            });
            found.is_some()
        });
        found.unwrap()
    });
    let mut errors = subscriber.errors();
    let (seen, handler) = id_recorder();
    let _sub = subscriber
        .subscribe_with(&["e.*"], SubscriptionOptions::named("failover"), handler)
        .await
        .unwrap();

    let acked: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (bus, acked, failed, stop) = (
            publisher.clone(),
            acked.clone(),
            failed.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let event = Event::new("e.created", json!({})).unwrap();
                let id = event.id;
                match bus.publish(event).await {
                    Ok(()) => acked.lock().unwrap().push(id),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let acked_len = || acked.lock().unwrap().len();
    let wait_acked = |n: usize| async move {
        let deadline = Instant::now() + WAIT;
        while acked_len() < n {
            assert!(
                Instant::now() < deadline,
                "publishing stalled before {n} acks"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    wait_acked(1000).await;
    // The replication link is cut just before the kill, as a slow or congested link would
    // leave it: the replica is frozen (so it cannot reconnect at once), the primary drops the
    // link, and for 150 ms it acknowledges writes (without WAIT) that no replica has; then it
    // is killed and the replica thawed, and the replica takes over without them.
    let replica = replicas[0];
    tokio::task::block_in_place(|| {
        cluster.signal(replica, true);
        cli(primary, &["CLIENT", "KILL", "TYPE", "replica"]);
        std::thread::sleep(Duration::from_millis(150));
        cluster.kill(primary);
        cluster.signal(replica, false);
    });
    let at_kill = acked_len();
    // The replica takes over; then the killed node comes back as a replica of it (which
    // `WAIT 1` needs to succeed again).
    tokio::task::block_in_place(|| {
        wait_until("a replica to take over", || {
            cluster
                .primary_of(&key)
                .is_some_and(|(p, _)| p != primary && replicas.contains(&p))
        });
        cluster.restart(primary);
    });
    wait_acked(at_kill + 1000).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let stored = stream_ids(cluster, &key).await;
    let lost = acked.iter().filter(|id| !stored.contains(id)).count();
    // Consuming went on across the failover: everything the stream holds is delivered.
    let deadline = Instant::now() + WAIT;
    loop {
        let missing = {
            let seen = seen.lock().unwrap();
            stored.iter().filter(|id| !seen.contains(id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} stored entries never reached the subscriber after the failover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reported = Vec::new();
    drain(&mut errors, &mut reported);
    eprintln!(
        "redis cluster failover (wait_replicas {wait_replicas}): {} acknowledged, {} failed \
         during the failover, {lost} acknowledged entries lost; subscriber reported {:?}",
        acked.len(),
        failed.load(Ordering::Relaxed),
        reported.iter().map(|e| e.kind).collect::<Vec<_>>()
    );
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
    lost
}

/// One private cluster (3 primaries, 3 replicas) for the whole scenario: the conformance kit
/// in both modes, then two failovers of the stream's primary, without and with `WAIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_passes_the_kit_and_survives_primary_failovers() {
    let started = Instant::now();
    let mut cluster = tokio::task::block_in_place(|| RedisCluster::start(3, 1));

    let report = conformance::bus::run(Capabilities::at_least_once(KIT_MAX_DELIVERIES), |scope| {
        let mut config = redis_cluster_config(&cluster, scope.name(), true);
        config.max_deliveries = KIT_MAX_DELIVERIES;
        async move { Arc::new(redis_connect(config).await) as Arc<dyn EventBus> }
    })
    .await;
    for check in [
        "redelivery_after_error_and_panic",
        "dead_letter_after_max_deliveries",
        "durable_subscriber_resumes",
        "same_name_shares_work",
    ] {
        assert!(report.has_run(check), "{check}: {report}");
    }
    let report = conformance::bus::run(Capabilities::at_most_once(), |scope| {
        let config = redis_cluster_config(&cluster, scope.name(), false);
        async move { Arc::new(redis_connect(config).await) as Arc<dyn EventBus> }
    })
    .await;
    assert!(report.has_run("handler_failures_reported"), "{report}");
    let kit = started.elapsed();

    let lost_without_wait = redis_failover_round(&mut cluster, 0).await;
    let lost_with_wait = redis_failover_round(&mut cluster, 1).await;
    assert!(
        lost_without_wait > 0,
        "the scenario loses acknowledged entries without WAIT (else it proves nothing)"
    );
    assert_eq!(
        lost_with_wait, 0,
        "with WAIT 1 no acknowledged entry is lost in a failover"
    );
    eprintln!(
        "redis cluster: kit {kit:?}; acknowledged entries lost in a failover: {lost_without_wait} \
         without WAIT, {lost_with_wait} with WAIT 1; {:?} in all",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Redis Sentinel

fn redis_sentinel_config(set: &RedisSentinels, prefix: &str, streams: bool) -> RedisConfig {
    let mut config = RedisConfig::sentinel(set.sentinel_urls(), SENTINEL_SERVICE);
    config.use_streams = streams;
    config.key_prefix = prefix.to_owned();
    config.retry_delay = Duration::from_millis(50);
    config.block = Duration::from_millis(200);
    config.connect_timeout = Duration::from_secs(2);
    config.response_timeout = Duration::from_secs(2);
    config
}

/// One private Sentinel set (a primary, a replica, three sentinels) for the whole scenario:
/// the conformance kit in both modes, then the primary is SIGKILLed; the sentinels promote its
/// replica; the bus (Streams mode) reconnects to the new primary, reports the switch, and publishing and consuming go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_passes_the_kit_and_moves_the_bus_to_the_new_primary() {
    let started = Instant::now();
    let mut set = tokio::task::block_in_place(RedisSentinels::start);

    let report = conformance::bus::run(Capabilities::at_least_once(KIT_MAX_DELIVERIES), |scope| {
        let mut config = redis_sentinel_config(&set, scope.name(), true);
        config.max_deliveries = KIT_MAX_DELIVERIES;
        async move { Arc::new(redis_connect(config).await) as Arc<dyn EventBus> }
    })
    .await;
    for check in [
        "redelivery_after_error_and_panic",
        "dead_letter_after_max_deliveries",
        "durable_subscriber_resumes",
        "same_name_shares_work",
    ] {
        assert!(report.has_run(check), "{check}: {report}");
    }
    let report = conformance::bus::run(Capabilities::at_most_once(), |scope| {
        let config = redis_sentinel_config(&set, scope.name(), false);
        async move { Arc::new(redis_connect(config).await) as Arc<dyn EventBus> }
    })
    .await;
    assert!(report.has_run("handler_failures_reported"), "{report}");
    let kit = started.elapsed();

    let config = redis_sentinel_config(&set, &unique("ef"), true);
    let bus = redis_connect(config).await;
    let first = bus.server();
    assert!(
        first.ends_with(&format!(":{}", set.servers[0].port)),
        "connected to the first primary: {first}"
    );
    let health = bus.health();
    assert!(
        health.connected && health.server == first && health.failovers == 0,
        "{health:?}"
    );
    let mut errors = bus.errors();
    let (seen, handler) = id_recorder();
    let _sub = bus
        .subscribe_with(&["e.*"], SubscriptionOptions::named("sentinel"), handler)
        .await
        .unwrap();
    let before = Event::new("e.created", json!({ "n": 0 })).unwrap();
    bus.publish(before.clone()).await.unwrap();
    // A pub/sub bus on the same set: its subscription must move to the new primary too.
    let pubsub = redis_connect(redis_sentinel_config(&set, &unique("ps"), false)).await;
    let mut pubsub_errors = pubsub.errors();
    let (pubsub_seen, pubsub_handler) = id_recorder();
    let _pubsub_sub = pubsub
        .subscribe_with(&["e.*"], SubscriptionOptions::default(), pubsub_handler)
        .await
        .unwrap();

    tokio::task::block_in_place(|| set.kill_server(0));
    // Publishing fails while there is no primary, and works again once the replica is
    // promoted and the bus has asked the sentinels for it.
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let event = Event::new("e.created", json!({ "n": 1 })).unwrap();
        if bus.publish(event.clone()).await.is_ok() {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "publishing never resumed after the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let now = bus.server();
    assert!(
        now.ends_with(&format!(":{}", set.servers[1].port)),
        "moved to the promoted replica: {now} (was {first})"
    );
    let deadline = Instant::now() + WAIT;
    while !seen.lock().unwrap().contains(&after.id) {
        assert!(
            Instant::now() < deadline,
            "the subscriber never got an event published after the failover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = bus.health();
    assert!(
        health.connected && health.server == now && health.failovers == 1,
        "health names the new primary and counts the failover: {health:?}"
    );
    let mut reported = Vec::new();
    drain(&mut errors, &mut reported);
    assert!(
        reported.iter().any(|e| e.kind == BusErrorKind::Failover
            && e.message.contains(&first)
            && e.message.contains(&now)),
        "the switch of primary is reported: {reported:?}"
    );
    // Pub/sub is at most once: events published while the subscription reconnects may be
    // lost, so publish markers until one arrives.
    let deadline = Instant::now() + WAIT;
    loop {
        let marker = Event::new("e.marker", json!({})).unwrap();
        let id = marker.id;
        if pubsub.publish(marker).await.is_ok() {
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until && !pubsub_seen.lock().unwrap().contains(&id) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if pubsub_seen.lock().unwrap().contains(&id) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pub/sub subscription never got an event after the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pubsub_reported = Vec::new();
    drain(&mut pubsub_errors, &mut pubsub_reported);
    assert!(
        pubsub_reported
            .iter()
            .any(|e| e.kind == BusErrorKind::Reconnected),
        "the pub/sub subscription reports its reconnect: {pubsub_reported:?}"
    );
    assert!(
        pubsub
            .server()
            .ends_with(&format!(":{}", set.servers[1].port)),
        "the pub/sub bus publishes to the new primary: {}",
        pubsub.server()
    );
    eprintln!(
        "redis sentinel: kit {kit:?}; moved from {first} to {now}; event before the kill \
         delivered: {}; {:?} in all",
        seen.lock().unwrap().contains(&before.id),
        started.elapsed()
    );
    bus.close().await.unwrap();
    pubsub.close().await.unwrap();
}
