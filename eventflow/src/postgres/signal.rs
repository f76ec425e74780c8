//! The commit signal behind [`commit_signal`](crate::store::EventStore::commit_signal):
//! in-process bumps plus `LISTEN`/`NOTIFY` between processes.
//!
//! Other processes learn of an append from its own statement, and two small background tasks
//! per store, started on first use and stopped when the store is dropped, do the rest:
//! - an append's own statement sends the notification when a session of another process listens
//!   for the store (every listener registers its pid; see `sql::APPEND_NOTIFY`): it is
//!   delivered at commit, with no second connection or round trip, and nothing is sent when
//!   nobody listens elsewhere (a notifying transaction holds a database-wide lock through its
//!   commit, which serializes notifying writers: paid only when someone listens).
//! - the **notifier** (started by the first append that did not notify) sends one payload-free
//!   `NOTIFY` after such appends commit, and after a pending append rolls back, in case a
//!   listener connected meanwhile; it too sends nothing when nobody listens elsewhere. Requests
//!   coalesce (a `Notify` permit, and one notification in flight at most). If the process dies
//!   between commit and notify, other processes' followers still find the events by polling.
//! - the **listener** (started by the first `commit_signal`) holds one connection in `LISTEN`
//!   and bumps the signal on every notification and on every reconnect (notifications sent
//!   meanwhile are lost, so followers should look).
//!
//! Appends of this process bump the signal directly, without a round trip. Events that wait
//! behind a slower transaction are handled by the readers themselves (they wait for it, see
//! `settle` in `mod.rs`), and followers poll as a last resort.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::sql::Sql;

/// Handles to background tasks; aborted on drop.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The shared state behind the commit signal.
#[derive(Debug)]
pub(crate) struct Signal {
    sender: watch::Sender<u64>,
    /// The server pid of this store's listener connection (0 when none): appends need not
    /// notify it, its followers are woken directly.
    own_listener: Arc<AtomicI32>,
    notify: Arc<Notify>,
    /// The notifier, started by the first append.
    notifier: std::sync::Mutex<Option<Tasks>>,
    /// The listener, started by the first `commit_signal` (only followers need it).
    listener: std::sync::Mutex<Option<Tasks>>,
}

impl Signal {
    pub(crate) fn new() -> Self {
        Signal {
            sender: watch::channel(0).0,
            own_listener: Arc::new(AtomicI32::new(0)),
            notify: Arc::new(Notify::new()),
            notifier: std::sync::Mutex::new(None),
            listener: std::sync::Mutex::new(None),
        }
    }

    /// A receiver of the signal; starts the listener if needed.
    pub(crate) fn subscribe(&self, pool: &PgPool, sql: &Sql) -> watch::Receiver<u64> {
        start_once(&self.listener, || {
            vec![tokio::spawn(listener(
                pool.clone(),
                sql.channel(),
                sql.register_listener.clone(),
                self.own_listener.clone(),
                self.sender.clone(),
            ))]
        });
        self.sender.subscribe()
    }

    /// The server pid of this store's listener connection, 0 when none.
    pub(crate) fn own_listener(&self) -> i32 {
        self.own_listener.load(Ordering::Relaxed)
    }

    /// Called after an append of this process committed (or a pending one rolled back): wakes
    /// local followers at once. Other processes were told by the append's own statement when
    /// `notified`; otherwise (nobody listened when it ran, or a rollback) the notifier tells
    /// them, in case a listener connected meanwhile.
    pub(crate) fn committed(&self, pool: &PgPool, sql: &Sql, notified: bool) {
        bump(&self.sender);
        if notified {
            return;
        }
        start_once(&self.notifier, || {
            vec![tokio::spawn(notifier(
                pool.clone(),
                sql.channel(),
                sql.notify.clone(),
                self.own_listener.clone(),
                self.notify.clone(),
            ))]
        });
        self.notify.notify_one();
    }
}

/// Runs `spawn` once, inside a tokio runtime (outside one it does nothing and a later call
/// retries).
fn start_once(slot: &std::sync::Mutex<Option<Tasks>>, spawn: impl FnOnce() -> Vec<JoinHandle<()>>) {
    let Ok(mut slot) = slot.lock() else {
        return;
    };
    if slot.is_none() && tokio::runtime::Handle::try_current().is_ok() {
        *slot = Some(Tasks(spawn()));
    }
}

/// Registers the listener connection's pid in the store's `listeners` table (see
/// `sql::APPEND_NOTIFY`).
async fn register_listener(
    listener: &mut PgListener,
    statement: &str,
    own: &AtomicI32,
) -> Result<(), sqlx::Error> {
    let pid: i32 = sqlx::query_scalar(statement).fetch_one(listener).await?;
    own.store(pid, Ordering::Relaxed);
    Ok(())
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|v| *v = v.wrapping_add(1));
}

async fn notifier(
    pool: PgPool,
    channel: String,
    statement: String,
    own_listener: Arc<AtomicI32>,
    wake: Arc<Notify>,
) {
    loop {
        wake.notified().await;
        // One notification in flight at most: commits during its round trip leave one permit,
        // so they share the next notification (no fixed pause, which only added lag).
        if let Err(error) = sqlx::query(&statement)
            .bind(&channel)
            .bind(own_listener.load(Ordering::Relaxed))
            .execute(&pool)
            .await
        {
            // Followers elsewhere fall back to polling; nothing is lost.
            tracing::debug!(%error, channel, "postgres event store: NOTIFY failed");
        }
    }
}

async fn listener(
    pool: PgPool,
    channel: String,
    register: String,
    own_listener: Arc<AtomicI32>,
    sender: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "postgres event store: cannot LISTEN, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(error) = listener.listen(&channel).await {
            tracing::warn!(%error, channel, "postgres event store: LISTEN failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        // Registered, so appends see that someone listens and notify in their own statement.
        if let Err(error) = register_listener(&mut listener, &register, &own_listener).await {
            tracing::warn!(%error, "postgres event store: cannot register the listener, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(50);
        // Anything committed before the LISTEN took effect was not notified.
        bump(&sender);
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => bump(&sender),
                // The connection was lost and is re-established by the next call; whatever was
                // notified in between is gone, so look. The new connection registers again.
                Ok(None) => {
                    if let Err(error) =
                        register_listener(&mut listener, &register, &own_listener).await
                    {
                        tracing::warn!(%error, "postgres event store: cannot register the listener");
                    }
                    bump(&sender);
                }
                Err(error) => {
                    tracing::warn!(%error, "postgres event store: listener failed, reconnecting");
                    bump(&sender);
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}
