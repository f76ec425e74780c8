//! Store and forward from an edge node's SQLite file to the far side, with the link down at
//! the start and dropped again mid-forward: a private `nats-server -js` (killed with SIGKILL and
//! restarted on the same store) and the shared PostgreSQL server behind a TCP proxy the test
//! cuts and restores. Before each run, the far side already holds the first 1,234 events (a
//! previous run whose acknowledgements were lost, cut inside a batch). Each of the 5,000 events must be on the far side exactly once, in
//! per-stream order.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::postgres::{PgPoolOptions, PostgresEventStore};
use eventflow::relay::{ForwardTarget, Forwarder, RelayHandle};
use eventflow::sqlite::SqliteEventStore;
use eventflow::{Event, EventBus, EventStore, ExpectedVersion};
use eventflow_tests::nats_server::NatsServer;
use eventflow_tests::{database_url, free_port, service_unavailable, unique};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const STREAMS: u64 = 10;
const PER_STREAM: u64 = 500;
const TOTAL: u64 = STREAMS * PER_STREAM;
const WAIT: Duration = Duration::from_secs(60);

/// A local store holding 5,000 events: 10 streams of 500, appended in batches of 25,
/// interleaved; payload `{"stream": s, "n": n}` with `n` the event's place in its stream.
async fn local_store(dir: &std::path::Path) -> SqliteEventStore {
    let store = SqliteEventStore::builder(dir.join("edge.db"))
        .synchronous_normal()
        .open()
        .await
        .unwrap();
    for chunk in 0..PER_STREAM / 25 {
        for s in 0..STREAMS {
            let batch = (0..25)
                .map(|i| {
                    let n = chunk * 25 + i;
                    Event::new("meter.read", json!({ "stream": s, "n": n })).unwrap()
                })
                .collect();
            store
                .append_batch(&format!("meter-{s}"), ExpectedVersion::Any, batch)
                .await
                .unwrap();
        }
    }
    assert_eq!(store.head_position().await.unwrap(), TOTAL);
    store
}

/// How many events "a previous run" delivered before its acknowledgement was lost: the far side
/// holds them, the forwarder's checkpoint does not know. Not a multiple of the local batches
/// (25) nor of the forwarder's (50), so the far side holds part of a batch.
const SEEDED: usize = 1_234;

/// The first [`SEEDED`] local events as the far side would hold them.
async fn seeded(local: &SqliteEventStore) -> Vec<Event> {
    let mut events = local.read_all(0, SEEDED).await.unwrap();
    for e in &mut events {
        e.stream_id = Some(format!("node-7/{}", e.stream_id.as_deref().unwrap()));
    }
    events
}

/// Waits until the forwarder has delivered through `position`, or panics with its status.
async fn wait_position(forwarder: &RelayHandle, position: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while forwarder.position() < position {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the forwarder is at {} of {position}",
            forwarder.position()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Checks the far side's events: each local event exactly once, and per stream in order.
fn check_exactly_once_in_order(far: &[Event], local: &[Event], prefix: &str) {
    let local_ids: HashSet<_> = local.iter().map(|e| e.id).collect();
    let far_ids: HashSet<_> = far.iter().map(|e| e.id).collect();
    assert_eq!(far_ids.len(), far.len(), "an event arrived twice");
    assert_eq!(
        far.len() as u64,
        TOTAL,
        "the far side holds {} events",
        far.len()
    );
    assert_eq!(far_ids, local_ids, "the far side holds other events");
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    for e in far {
        per_stream
            .entry(e.stream_id.clone().unwrap())
            .or_default()
            .push(e.payload["n"].as_u64().unwrap());
    }
    assert_eq!(per_stream.len() as u64, STREAMS);
    for (stream, ns) in per_stream {
        assert!(stream.starts_with(prefix), "stream {stream} not mapped");
        assert_eq!(
            ns,
            (0..PER_STREAM).collect::<Vec<_>>(),
            "{stream} out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_jetstream_exactly_once_across_outages() {
    let dir = tempfile::tempdir().unwrap();
    let local = local_store(dir.path()).await;
    let mut server = NatsServer::start();
    let mut config = NatsConfig::jetstream(server.url());
    config.stream_name = unique("FWD");
    config.subject_prefix = unique("fwd");
    config.connect_timeout = Duration::from_millis(300);
    config.request_timeout = Duration::from_secs(1);
    config.reconnect_wait = Duration::from_millis(50);
    config.max_reconnects = None;
    // A previous run delivered the first events, then the link dropped before their acks came
    // back: the far side holds them, the checkpoint is still 0.
    let seeder = NatsBus::connect(config.clone()).await.unwrap();
    seeder.publish_batch(seeded(&local).await).await.unwrap();
    seeder.close().await.unwrap();
    drop(seeder);
    // The link is down.
    server.kill();
    let connect = {
        let config = config.clone();
        move || {
            let config = config.clone();
            async move { Ok(Arc::new(NatsBus::connect(config).await?) as Arc<dyn EventBus>) }
        }
    };
    let forwarder = Forwarder::new(local.clone(), ForwardTarget::bus(connect))
        .name("to-jetstream")
        .prefix_streams("node-7/")
        .batch_size(50)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .spawn();
    // Down: the forwarder keeps trying, and its status shows the whole backlog.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = forwarder.status().await.unwrap();
    assert_eq!((status.position, status.lag), (0, TOTAL));

    // The link comes back (the forwarder resends the seeded events); kill it again mid-forward, then bring it back once more.
    server.restart();
    wait_position(&forwarder, 1_000, "before the kill").await;
    let at_kill = forwarder.position();
    server.kill();
    assert!(at_kill < TOTAL, "the forwarder finished before the kill");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    wait_position(&forwarder, TOTAL, "after the restart").await;
    assert_eq!(forwarder.status().await.unwrap().lag, 0);
    forwarder.stop().await;

    // The far side: read the JetStream stream back with a plain client.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(&config.stream_name).await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    let mut far = Vec::new();
    for seq in 1..=messages {
        let raw = stream.get_raw_message(seq).await.unwrap();
        far.push(Event::from_json(&raw.payload).unwrap());
    }
    let local_events = local.read_all(0, TOTAL as usize).await.unwrap();
    check_exactly_once_in_order(&far, &local_events, "node-7/");
}

/// A TCP proxy to the PostgreSQL server that the test can cut (every connection dropped, no
/// new ones accepted) and restore, on the same port.
struct Link {
    port: u16,
    up: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
    upstream: String,
}

impl Link {
    fn down(upstream: String) -> Self {
        Link {
            port: free_port(),
            up: Arc::new(AtomicBool::new(false)),
            task: None,
            upstream,
        }
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let upstream = self.upstream.clone();
        self.up.store(true, Ordering::SeqCst);
        self.task = Some(tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                pipes.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            // Dropping the JoinSet (when this task is aborted) aborts every pipe: the link
            // drops mid-stream.
        }));
    }

    fn cut(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_postgres_exactly_once_across_outages() {
    let url = database_url();
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e));
    let schema = unique("fwd");
    PostgresEventStore::migrate_schema(&admin, &schema)
        .await
        .unwrap();
    let options: eventflow::postgres::PgConnectOptions = url.parse().unwrap();
    let upstream = format!("{}:{}", options.get_host(), options.get_port());

    let dir = tempfile::tempdir().unwrap();
    let local = local_store(dir.path()).await;
    // A previous run delivered the first events, then the link dropped before their acks came
    // back: the far side holds them (each stream's run appended as one batch), the checkpoint
    // is still 0.
    {
        let far = PostgresEventStore::builder(admin.clone())
            .schema(&schema)
            .build()
            .unwrap();
        let seeded = seeded(&local).await;
        let mut rest = seeded.as_slice();
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .take_while(|e| e.stream_id == first.stream_id)
                .count();
            far.append_batch(
                first.stream_id.as_deref().unwrap(),
                ExpectedVersion::Any,
                rest[..run].to_vec(),
            )
            .await
            .unwrap();
            rest = &rest[run..];
        }
    }
    let mut link = Link::down(upstream);
    let proxied = options.clone().port(link.port);
    let connect = {
        let schema = schema.clone();
        move || {
            let (proxied, schema) = (proxied.clone(), schema.clone());
            async move {
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_with(proxied)
                    .await
                    .map_err(|e| eventflow::Error::Connect {
                        backend: "postgres",
                        target: "proxy".into(),
                        source: Box::new(e),
                    })?;
                let store = PostgresEventStore::builder(pool).schema(&schema).build()?;
                Ok(Arc::new(store) as Arc<dyn EventStore>)
            }
        }
    };
    let forwarder = Forwarder::new(local.clone(), ForwardTarget::store(connect))
        .name("to-postgres")
        .prefix_streams("node-7/")
        .batch_size(50)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = forwarder.status().await.unwrap();
    assert_eq!((status.position, status.lag), (0, TOTAL));

    link.restore().await;
    wait_position(&forwarder, 1_000, "before the cut").await;
    link.cut();
    let at_cut = forwarder.position();
    assert!(at_cut < TOTAL, "the forwarder finished before the cut");
    tokio::time::sleep(Duration::from_millis(300)).await;
    link.restore().await;
    wait_position(&forwarder, TOTAL, "after the link returned").await;
    forwarder.stop().await;

    let far_store = PostgresEventStore::builder(admin.clone())
        .schema(&schema)
        .build()
        .unwrap();
    let far = far_store.read_all(0, 100_000).await.unwrap();
    let local_events = local.read_all(0, TOTAL as usize).await.unwrap();
    check_exactly_once_in_order(&far, &local_events, "node-7/");
    // Versions on the far side are contiguous too.
    for s in 0..STREAMS {
        let stream = far_store
            .load_stream(&format!("node-7/meter-{s}"), 0)
            .await
            .unwrap();
        let versions: Vec<u64> = stream.iter().map(|e| e.stream_version.unwrap()).collect();
        assert_eq!(versions, (1..=PER_STREAM).collect::<Vec<_>>());
    }
    drop(far_store);
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
