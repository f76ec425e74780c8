//! [`SqliteEventStore`]: opening the database (WAL, migrations), the writer lock, and the
//! [`EventStore`] implementation, whose bodies live beside it (`append.rs`, `read.rs`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqliteConnection, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::error::{BACKEND, map_sqlx};
use super::sql;
use crate::bus::{Handler, Subscription};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::{
    CheckpointStore, DeadLetterStore, EventCriteria, EventStore, ExpectedVersion,
    ReaderCheckpoints, SubscribeOptions,
};

/// The embedded migrations: `migrations/sqlite/` of the workspace, reached through the
/// `eventflow/migrations` link so the packaged crate carries them too.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The name that opens a private in-memory database.
pub const IN_MEMORY: &str = ":memory:";

/// How often followers look for events committed by other processes (this process's appends
/// wake them at once).
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a writer waits for another process's write transaction before failing.
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite event store. Cheap to clone (shares one pool and one writer lock).
#[derive(Clone)]
pub struct SqliteEventStore {
    pub(super) inner: Arc<Inner>,
}

/// What every clone of a store shares.
pub(super) struct Inner {
    pub(super) pool: SqlitePool,
    /// The file, for errors.
    pub(super) target: String,
    /// Serializes this process's write transactions, so they queue here instead of spinning in
    /// SQLite's busy handler (`BEGIN IMMEDIATE` serializes them across processes).
    pub(super) writer: Arc<Mutex<()>>,
    /// Bumped to the last appended position after every commit of this process.
    pub(super) signal: watch::Sender<u64>,
    pub(super) poll_interval: Duration,
    /// For `:memory:`: a connection held open for the store's life, so the database (a named,
    /// shared-cache one) lives exactly as long as the store.
    _anchor: Option<std::sync::Mutex<SqliteConnection>>,
}

impl std::fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventStore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// Configures a [`SqliteEventStore`]; from [`SqliteEventStore::builder`].
#[derive(Debug, Clone)]
pub struct SqliteEventStoreBuilder {
    path: PathBuf,
    poll_interval: Duration,
    busy_timeout: Duration,
    max_connections: u32,
    synchronous_full: bool,
}

impl SqliteEventStoreBuilder {
    /// How often followers look for events appended by *other processes* (default 100 ms);
    /// appends of this process wake them at once.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a write waits for another process's write transaction (default 10 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Connections in the pool (default 4; readers run in parallel with the one writer in WAL
    /// mode). An in-memory database always uses one.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// `synchronous = NORMAL` instead of `FULL`: a commit no longer waits for the disk, so a
    /// power cut (not a process crash) may lose the last commits. The default, `FULL`, keeps
    /// every acknowledged append through a power cut.
    pub fn synchronous_normal(mut self) -> Self {
        self.synchronous_full = false;
        self
    }

    /// Opens (creating it if missing) the database and applies the embedded migrations.
    ///
    /// # Errors
    /// [`Error::Connect`] when the file cannot be opened or created; [`Error::Backend`] when a
    /// migration fails.
    pub async fn open(self) -> Result<SqliteEventStore> {
        let in_memory = self.path.as_os_str() == IN_MEMORY;
        let target = format!("sqlite:{}", self.path.display());
        let connect = |e: sqlx::Error| Error::Connect {
            backend: BACKEND,
            target: target.clone(),
            source: Box::new(e),
        };
        let options = if in_memory {
            // A uniquely named, shared-cache in-memory database: every connection of this store
            // sees the same one, and no other store does.
            SqliteConnectOptions::from_str("sqlite::memory:").map_err(connect)?
        } else {
            SqliteConnectOptions::new()
                .filename(&self.path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
        };
        let options = options
            .synchronous(if self.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(self.busy_timeout);
        let (anchor, pool_options) = if in_memory {
            let anchor = SqliteConnection::connect_with(&options)
                .await
                .map_err(connect)?;
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            (Some(std::sync::Mutex::new(anchor)), pool)
        } else {
            (
                None,
                SqlitePoolOptions::new().max_connections(self.max_connections),
            )
        };
        let pool = pool_options.connect_with(options).await.map_err(connect)?;
        migrate(&pool, &target).await?;
        let head: i64 = sqlx::query_scalar(sql::HEAD)
            .fetch_one(&pool)
            .await
            .map_err(|e| map_sqlx(&target, e))?;
        Ok(SqliteEventStore {
            inner: Arc::new(Inner {
                pool,
                target,
                writer: Arc::new(Mutex::new(())),
                signal: watch::channel(u64::try_from(head).unwrap_or(0)).0,
                poll_interval: self.poll_interval,
                _anchor: anchor,
            }),
        })
    }
}

/// Applies the embedded migrations. Two processes opening a new file at once may race on
/// them; the loser finds them applied when it tries again.
async fn migrate(pool: &SqlitePool, target: &str) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt < 3 => {
                tracing::debug!(%error, target, "sqlite: migration raced another process; retrying");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(error) => return Err(Error::backend(BACKEND, error)),
        }
    }
}

impl SqliteEventStore {
    /// Opens the database at `path` (creating the file if missing; [`IN_MEMORY`], `":memory:"`,
    /// for a private in-memory database) in WAL mode with `synchronous = FULL`, and applies the
    /// embedded migrations.
    ///
    /// # Errors
    /// As [`SqliteEventStoreBuilder::open`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open().await
    }

    /// A private in-memory store (gone when the last clone is dropped).
    ///
    /// # Errors
    /// As [`SqliteEventStoreBuilder::open`].
    pub async fn in_memory() -> Result<Self> {
        Self::open(IN_MEMORY).await
    }

    /// A builder for a store at `path` (poll interval, busy timeout, pool size, durability).
    pub fn builder(path: impl AsRef<Path>) -> SqliteEventStoreBuilder {
        SqliteEventStoreBuilder {
            path: path.as_ref().to_path_buf(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_connections: 4,
            synchronous_full: true,
        }
    }

    /// The pool this store uses (for a [`SqliteProjection`](super::SqliteProjection)'s own
    /// queries, or reads of a read model).
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// A snapshot store in the same database.
    pub fn snapshots(&self) -> super::SqliteSnapshotStore {
        super::SqliteSnapshotStore::new(self.clone())
    }

    /// A checkpoint store in the same database.
    pub fn checkpoints(&self) -> super::SqliteCheckpointStore {
        super::SqliteCheckpointStore::new(self.clone())
    }

    /// A dead-letter store in the same database.
    pub fn dead_letters(&self) -> super::SqliteDeadLetterStore {
        super::SqliteDeadLetterStore::new(self.clone())
    }

    /// A lease store in the same database (its fenced checkpoints are the ones
    /// [`checkpoints`](Self::checkpoints) reads).
    pub fn leases(&self) -> super::SqliteLeaseStore {
        super::SqliteLeaseStore::new(self.clone())
    }

    /// A saga store in the same database.
    pub fn sagas(&self) -> super::SqliteSagaStore {
        super::SqliteSagaStore::new(self.clone())
    }

    /// Closes the pool: later calls fail with [`Error::Closed`].
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    pub(super) fn map(&self, error: sqlx::Error) -> Error {
        map_sqlx(&self.inner.target, error)
    }

    /// Begins a write transaction: this process's writer lock, then `BEGIN IMMEDIATE`, which
    /// takes SQLite's write lock at once (waiting up to the busy timeout for another process).
    /// Holding the write lock from the start means no other writer commits between this
    /// transaction's reads and its writes.
    pub(super) async fn begin_write(&self) -> Result<WriteTx> {
        let guard = Arc::clone(&self.inner.writer).lock_owned().await;
        let tx = self
            .inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.map(e))?;
        Ok(WriteTx { tx, _guard: guard })
    }

    /// Wakes this process's followers after a commit that wrote up to `position`.
    pub(super) fn committed(&self, position: u64) {
        self.inner.signal.send_if_modified(|head| {
            let moved = position > *head;
            *head = (*head).max(position);
            moved
        });
    }
}

/// A write transaction and the writer lock it holds (see [`SqliteEventStore::begin_write`]).
pub(super) struct WriteTx {
    pub(super) tx: Transaction<'static, Sqlite>,
    _guard: OwnedMutexGuard<()>,
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        self.append_batch_now(stream_id, expected, events).await
    }

    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>> {
        self.load_stream_now(stream_id, from_version).await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        self.stream_version_now(stream_id).await
    }

    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        self.load_now(criteria).await
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>> {
        self.read_all_now(after_position, limit).await
    }

    async fn head_position(&self) -> Result<u64> {
        self.head_position_now().await
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner.signal.subscribe()
    }

    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        Ok(crate::store::follow::subscribe_with(
            Arc::new(self.clone()),
            criteria,
            options,
            handler,
            self.inner.poll_interval,
        ))
    }
}

/// A relay or forwarder attached to this store keeps its checkpoint in the `checkpoints` table,
/// parks in `dead_letters`, and polls at this store's interval.
impl ReaderCheckpoints for SqliteEventStore {
    fn reader_checkpoints(&self) -> Arc<dyn CheckpointStore> {
        Arc::new(self.checkpoints())
    }

    fn reader_dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(self.dead_letters())
    }

    fn reader_poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }
}
