//! The commit signal: `LISTEN`/`NOTIFY` plus a watcher that tells followers when new events
//! became safe to read.
//!
//! Three small background tasks per store, started on first use and stopped when the store is
//! dropped:
//! - the **notifier** sends one payload-free `NOTIFY` after this process's appends commit.
//!   Requests coalesce (a `Notify` permit, and at most one notification every 2 ms), so there
//!   is at most one notification per transaction and usually fewer. It runs outside the append's transaction on purpose: a
//!   `NOTIFY` takes a database-wide lock that is held through commit, which would serialize every
//!   writer. If the process dies between commit and notify, other processes' followers still
//!   find the events by polling.
//! - the **listener** holds one connection in `LISTEN` and kicks the watcher on every
//!   notification and on every reconnect (notifications sent meanwhile are lost).
//! - the **watcher** reads the safe head (and the highest committed position) when kicked, and
//!   at least every poll interval. It bumps the watch channel when the safe head moved. When
//!   committed events wait behind a slower transaction (perhaps of another application, which
//!   would never notify us), it re-checks every few milliseconds until they are released, so a
//!   follower waits for the slow transaction and not for the next poll.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::sql::{NOTIFY, Sql};

/// Handles to the background tasks; aborted on drop.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The shared state behind [`commit_signal`](crate::store::EventStore::commit_signal).
#[derive(Debug)]
pub(crate) struct Signal {
    sender: watch::Sender<u64>,
    notify: Arc<Notify>,
    kick: Arc<Notify>,
    /// The notifier, started by the first append.
    notifier: std::sync::Mutex<Option<Tasks>>,
    /// The listener and the watcher, started by the first `commit_signal` (only followers need
    /// them).
    followers: std::sync::Mutex<Option<Tasks>>,
}

impl Signal {
    pub(crate) fn new() -> Self {
        Signal {
            sender: watch::channel(0).0,
            notify: Arc::new(Notify::new()),
            kick: Arc::new(Notify::new()),
            notifier: std::sync::Mutex::new(None),
            followers: std::sync::Mutex::new(None),
        }
    }

    /// A receiver of the signal; starts the listener and watcher if needed.
    pub(crate) fn subscribe(
        &self,
        pool: &PgPool,
        sql: &Sql,
        poll: Duration,
    ) -> watch::Receiver<u64> {
        start_once(&self.followers, || {
            let channel = sql.channel();
            vec![
                tokio::spawn(listener(pool.clone(), channel, self.kick.clone())),
                tokio::spawn(watcher(
                    pool.clone(),
                    sql.head_and_top.clone(),
                    self.sender.clone(),
                    self.kick.clone(),
                    poll,
                )),
            ]
        });
        self.sender.subscribe()
    }

    /// Called after an append of this process committed (or a pending one rolled back): wakes
    /// local followers at once and has the notifier tell other processes. Our own notification
    /// comes back through the listener and has the watcher re-check the safe head, which
    /// matters when this commit waits behind a slower transaction.
    pub(crate) fn committed(&self, pool: &PgPool, sql: &Sql) {
        start_once(&self.notifier, || {
            vec![tokio::spawn(notifier(
                pool.clone(),
                sql.channel(),
                self.notify.clone(),
            ))]
        });
        bump(&self.sender);
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

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|v| *v = v.wrapping_add(1));
}

/// At most one `NOTIFY` per this interval: the first commit after a quiet spell is notified at
/// once, later ones within the interval share the next notification. Keeps a busy writer from
/// paying a second transaction per append, for at most this much extra lag elsewhere.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(2);

async fn notifier(pool: PgPool, channel: String, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        if let Err(error) = sqlx::query(NOTIFY).bind(&channel).execute(&pool).await {
            // Followers elsewhere fall back to polling; nothing is lost.
            tracing::debug!(%error, channel, "postgres event store: NOTIFY failed");
        }
        tokio::time::sleep(NOTIFY_INTERVAL).await;
    }
}

async fn listener(pool: PgPool, channel: String, kick: Arc<Notify>) {
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
        backoff = Duration::from_millis(50);
        // Anything committed before the LISTEN took effect was not notified.
        kick.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => kick.notify_one(),
                // The connection was lost and is re-established by the next call; whatever was
                // notified in between is gone, so look.
                Ok(None) => kick.notify_one(),
                Err(error) => {
                    tracing::warn!(%error, "postgres event store: listener failed, reconnecting");
                    kick.notify_one();
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}

async fn watcher(
    pool: PgPool,
    head_and_top: String,
    sender: watch::Sender<u64>,
    kick: Arc<Notify>,
    poll: Duration,
) {
    let mut last_head: Option<i64> = None;
    loop {
        // `Notify::notified` is cancel safe; a kick that arrives while we read is kept as a
        // permit and handled on the next turn.
        let _ = tokio::time::timeout(poll, kick.notified()).await;
        let mut delay = Duration::from_millis(1);
        loop {
            let row: Result<(i64, i64), _> = sqlx::query_as(&head_and_top).fetch_one(&pool).await;
            let Ok((head, top)) = row else {
                break;
            };
            if last_head != Some(head) {
                last_head = Some(head);
                bump(&sender);
            }
            if top <= head {
                break;
            }
            // Committed events wait behind a slower transaction: look again soon.
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }
}
