//! Shared support for the integration tests: service URLs, unique names, private servers.
//!
//! Tests that need a service fail with a message naming the URL they tried and how to start
//! the service; they never pass silently without it.

use std::sync::atomic::{AtomicU64, Ordering};

pub mod child;
#[cfg(feature = "nats")]
pub mod nats_cluster;
#[cfg(feature = "nats")]
pub mod nats_server;
#[cfg(feature = "postgres")]
pub mod pg_server;
#[cfg(feature = "redis")]
pub mod redis_cluster;
#[cfg(feature = "redis")]
pub mod redis_server;
#[cfg(any(feature = "nats", feature = "redis", feature = "postgres"))]
pub mod tls;

/// PostgreSQL URL (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Redis URL (`REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// NATS URL (`NATS_URL`, default `nats://127.0.0.1:4222`).
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A name unique to this process and call, safe as a schema name, key prefix or subject token:
/// `<prefix>_<pid>_<counter>_<random>` in `[a-z0-9_]`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}_{}_{n}_{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

/// A free TCP port on 127.0.0.1 (for private servers).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address: {e}"))
        .port()
}

/// Panics with a message that names the service, the URL tried and how to start it.
pub fn service_unavailable(service: &str, url: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "{service} is not reachable at {url}: {error}\n\
         start the services with `scripts/test` (it starts any that is installed but down), \
         or point the test at another server with the matching *_URL variable"
    )
}

/// How long [`eventually`] waits before it fails the test.
pub const EVENTUALLY: std::time::Duration = std::time::Duration::from_secs(20);

/// Waits (at most [`EVENTUALLY`]) until `f` holds, polling every 5 ms.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The events a [`recorder`] handled, in the order it handled them.
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<eventflow::Event>>>;

/// A handler that records every event it handles, and the list it fills.
pub fn recorder() -> (Seen, std::sync::Arc<dyn eventflow::Handler>) {
    let seen: Seen = std::sync::Arc::default();
    let sink = seen.clone();
    let handler = move |event: std::sync::Arc<eventflow::Event>| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("recorder lock").push((*event).clone());
            eventflow::HandlerResult::Ok(())
        }
    };
    (seen, std::sync::Arc::new(handler))
}
