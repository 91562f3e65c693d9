//! A transactional outbox, for queues that are not the application's database (SQS, Redis).
//!
//! The application writes a job into the outbox table (`anb_queue_outbox`) inside its own
//! PostgreSQL or SQLite transaction, so the job commits or rolls back with its business rows;
//! a [`Relay`] then publishes committed jobs to the queue and deletes them from the outbox.
//! While the queue is unreachable the relay keeps the jobs and retries with backoff, so a job
//! whose transaction committed is never lost. Delivery stays at-least-once: if the queue
//! accepted a batch but deleting it from the outbox failed, the batch is published again.
//! A publish is bounded to 30 s; after a failed one the relay opens the queue afresh.
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
//! # impl anb_queue::Job for Transcode { const NAME: &'static str = "transcode"; }
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use anb_queue::{Outbox, Queue};
//!
//! let outbox = Outbox::setup(pool.clone()).await?; // or a `SqlitePool`
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO videos (id) VALUES (1)").execute(&mut *tx).await?;
//! outbox.enqueue_tx(&mut *tx, &Transcode { video_id: 1 }).await?;
//! tx.commit().await?;
//!
//! // Somewhere in the service: publish to SQS until shutdown.
//! outbox
//!     .relay(|| Queue::connect("sqs://transcode"))
//!     .run_until(anb_queue::shutdown_signal())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! How the relay learns of new jobs:
//! - **PostgreSQL**: a trigger sends `NOTIFY` when a transaction that wrote to the outbox
//!   commits, and the relay `LISTEN`s; it also polls (every 500 ms) in case a notification
//!   was lost.
//! - **SQLite** has no `LISTEN`: [`Outbox::enqueue_tx`] wakes this process's relays at once,
//!   and the relay polls (every 200 ms) for jobs written by other processes. The wake-up comes
//!   before the caller commits, which is fine: the relay's claim is a write, and SQLite lets
//!   it through only once the caller's transaction has committed or rolled back.
//!
//! Several relays may publish one outbox (one per API instance): each claims a batch for a
//! while (a lease of 60 s) before publishing it, so two relays never publish the same rows
//! at once, and a batch claimed by a relay that died is published by another once the lease
//! runs out.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool, postgres::PgListener};
use tokio::sync::watch;

use crate::{
    backend::{BackendKind, NewJob},
    error::QueueError,
    job::Job,
    queue::{Queue, TransactionalConnection},
    sqlite::now_ms,
};

const CHANNEL: &str = "anb_queue_outbox";

const POSTGRES_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS anb_queue_outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        max_attempts BIGINT NOT NULL,
        not_before_ms BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        claimed_until_ms BIGINT,
        publish_attempts BIGINT NOT NULL DEFAULT 0,
        last_error TEXT
    )",
    "CREATE OR REPLACE FUNCTION anb_queue_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN PERFORM pg_notify('anb_queue_outbox', ''); RETURN NULL; END $$",
    // Statement level, delivered at commit: the relay wakes once the job is committed.
    "DROP TRIGGER IF EXISTS anb_queue_outbox_notify ON anb_queue_outbox",
    "CREATE TRIGGER anb_queue_outbox_notify AFTER INSERT ON anb_queue_outbox
     FOR EACH STATEMENT EXECUTE FUNCTION anb_queue_outbox_notify()",
];

const SQLITE_SCHEMA: &[&str] = &[
    // AUTOINCREMENT: ids of published (deleted) jobs are never handed out again.
    "CREATE TABLE IF NOT EXISTS anb_queue_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        max_attempts INTEGER NOT NULL,
        not_before_ms INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        claimed_until_ms INTEGER,
        publish_attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    )",
];

/// Arbitrary constant key for the advisory lock that serializes concurrent `setup`s.
const SETUP_LOCK_KEY: i64 = 0x616e_625f_6f75_7462; // "anb_outb"

/// How long a relay holds the batch it claimed: longer than a publish can take, so that
/// only a relay that died leaves its batch to another.
const CLAIM_LEASE: Duration = Duration::from_secs(60);

/// The longest a publish may take (half the claim) before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest opening the queue may take before the relay tries again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait after a failed publish; it doubles up to [`Relay::max_backoff`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);

mod sealed {
    /// Where the engine-specific store comes from; sealed so that only the two pools
    /// implement [`OutboxPool`](super::OutboxPool).
    pub trait Sealed {
        fn into_store(self) -> super::Store;
    }

    impl Sealed for sqlx::PgPool {
        fn into_store(self) -> super::Store {
            super::Store::Postgres(self)
        }
    }

    impl Sealed for sqlx::SqlitePool {
        fn into_store(self) -> super::Store {
            super::Store::Sqlite(self)
        }
    }
}

/// A database an [`Outbox`] can live in: a [`PgPool`] or a [`SqlitePool`].
pub trait OutboxPool: sealed::Sealed {}

impl OutboxPool for PgPool {}

impl OutboxPool for SqlitePool {}

/// The outbox table in an application's PostgreSQL or SQLite database.
///
/// Cheap to clone: clones share the pool and wake this process's relays.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Store,
    /// Bumped by every enqueue on SQLite, which has no `NOTIFY`.
    wake: Arc<watch::Sender<u64>>,
}

impl Outbox {
    /// Creates the outbox table (`anb_queue_outbox`) in the database of `pool` if missing.
    ///
    /// The pool is the application's own: enqueues happen on its transactions, and the relay
    /// uses one of its connections (plus, on PostgreSQL, one `LISTEN` connection with the
    /// same options).
    pub async fn setup(pool: impl OutboxPool) -> Result<Self, QueueError> {
        let store = sealed::Sealed::into_store(pool);
        store.setup().await?;
        Ok(Self {
            store,
            wake: Arc::new(watch::channel(0).0),
        })
    }

    /// Which engine the outbox lives in.
    pub fn kind(&self) -> BackendKind {
        self.store.kind()
    }

    /// Writes a job into the outbox on the caller's connection, typically inside its
    /// transaction: the job is published once that transaction commits, and never if it
    /// rolls back. Returns the outbox entry's id.
    ///
    /// The connection must belong to the outbox's own database and engine (a
    /// [`PgConnection`] for PostgreSQL, a [`SqliteConnection`] for SQLite), as with
    /// [`Queue::enqueue_tx`].
    pub async fn enqueue_tx<C, J>(&self, conn: &mut C, job: &J) -> Result<i64, QueueError>
    where
        C: TransactionalConnection,
        J: Job,
    {
        self.enqueue_in_tx(conn, job, Duration::ZERO).await
    }

    /// Like [`Outbox::enqueue_tx`], for a job to run once `delay` has passed (counted from
    /// now, however late the relay publishes it).
    pub async fn enqueue_in_tx<C, J>(
        &self,
        conn: &mut C,
        job: &J,
        delay: Duration,
    ) -> Result<i64, QueueError>
    where
        C: TransactionalConnection,
        J: Job,
    {
        if self.kind() != C::KIND {
            return Err(QueueError::TransactionMismatch {
                connection: C::KIND.as_str(),
                backend: self.kind().as_str(),
            });
        }
        let payload = serde_json::to_string(job).map_err(|source| QueueError::Serialize {
            job: J::NAME,
            source,
        })?;
        let entry = NewJob {
            name: J::NAME,
            payload,
            max_attempts: J::MAX_ATTEMPTS.max(1),
            delay,
        };
        let id = conn.insert_outbox(&entry).await?;
        if C::KIND == BackendKind::Sqlite {
            // Before the caller commits: the relay's claim waits for the commit (see the
            // module documentation).
            self.wake
                .send_modify(|count| *count = count.wrapping_add(1));
        }
        Ok(id)
    }

    /// Counts jobs written but not yet published.
    pub async fn pending(&self) -> Result<u64, QueueError> {
        let pending = self.store.pending().await?;
        Ok(u64::try_from(pending).unwrap_or(0))
    }

    /// A relay publishing this outbox to the queue that `connect` opens: called again until
    /// it succeeds (each call bounded to 10 s), so the relay can start while the queue is
    /// down, and again after a publish fails or takes over 30 s, so a client stuck in its own
    /// reconnection schedule is replaced by a fresh one.
    pub fn relay<C, Fut>(&self, connect: C) -> Relay<C>
    where
        C: FnMut() -> Fut,
        Fut: Future<Output = Result<Queue, QueueError>>,
    {
        Relay {
            store: self.store.clone(),
            wake: self.wake.clone(),
            connect,
            batch: 100,
            poll_interval: self.store.poll_interval(),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Publishes an outbox's committed jobs to a queue; see [`Outbox::relay`].
#[derive(Debug)]
pub struct Relay<C> {
    store: Store,
    /// Held so that the wake-up channel stays open while the relay runs.
    wake: Arc<watch::Sender<u64>>,
    connect: C,
    batch: i64,
    poll_interval: Duration,
    max_backoff: Duration,
}

impl<C, Fut> Relay<C>
where
    C: FnMut() -> Fut,
    Fut: Future<Output = Result<Queue, QueueError>>,
{
    /// The longest wait between retries while the queue is down (default 10 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max.max(Duration::from_millis(10));
        self
    }

    /// How often the relay looks for jobs when nothing woke it (default 500 ms on
    /// PostgreSQL, where it only covers a lost notification, and 200 ms on SQLite, the
    /// latency for jobs written by another process).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Runs until `shutdown` completes. A publish under way when it does is finished first.
    ///
    /// Neither the queue nor the database being down stops the relay: it logs, counts
    /// (`anb_queue_outbox_publish_failures_total`) and retries with backoff.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), QueueError> {
        tokio::pin!(shutdown);
        let mut listener = Listener::default();
        let mut wakeups = self.wake.subscribe();
        let mut queue: Option<Queue> = None;
        let mut backoff = MIN_BACKOFF;
        // Claim at once on start (jobs may wait from before) and after a wake-up; otherwise
        // look before taking a write lock.
        let mut woken = true;
        loop {
            if let Store::Postgres(pool) = &self.store {
                listener.ensure(pool).await;
            }
            let outcome = match &queue {
                None => match tokio::time::timeout(CONNECT_TIMEOUT, (self.connect)()).await {
                    Ok(Ok(connected)) => {
                        queue = Some(connected);
                        continue;
                    }
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(QueueError::Timeout {
                        operation: "connecting to the queue",
                        after: CONNECT_TIMEOUT,
                    }),
                },
                Some(connected) => match self.publish_batch(connected, woken).await {
                    Ok(published) => Ok(published),
                    Err(Failure::Outbox(error)) => Err(error),
                    Err(Failure::Queue(error)) => {
                        // Open the queue afresh next time: a client may stay stuck in its
                        // own reconnection schedule long after the broker is back.
                        queue = None;
                        Err(error)
                    }
                },
            };
            woken = false;
            let wait = match outcome {
                Ok(published) if published > 0 => {
                    backoff = MIN_BACKOFF;
                    woken = true;
                    continue;
                }
                Ok(_) => self.poll_interval,
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "publishing the outbox failed; retrying");
                    metrics::counter!("anb_queue_outbox_publish_failures_total").increment(1);
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.max_backoff);
                    wait
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                // A commit that wrote to the outbox notifies; polling covers a lost one.
                () = listener.notified() => woken = true,
                // This process enqueued on SQLite. The relay holds the sender: never closed.
                _ = wakeups.changed() => woken = true,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims up to one batch of unpublished jobs, publishes it, and deletes it from the
    /// outbox; on failure gives the batch back with the error. Returns how many were
    /// published.
    async fn publish_batch(&self, queue: &Queue, woken: bool) -> Result<u64, Failure> {
        let now = now_ms();
        if !woken
            && !self
                .store
                .any_claimable(now)
                .await
                .map_err(Failure::Outbox)?
        {
            return Ok(0);
        }
        let mut entries = self
            .store
            .claim(now, now.saturating_add(millis(CLAIM_LEASE)), self.batch)
            .await
            .map_err(Failure::Outbox)?;
        if entries.is_empty() {
            return Ok(0);
        }
        entries.sort_by_key(|entry| entry.id);
        let ids: Vec<i64> = entries.iter().map(|entry| entry.id).collect();
        let jobs: Vec<NewJob> = entries
            .into_iter()
            .map(|entry| NewJob {
                name: intern(&entry.name),
                payload: entry.payload,
                max_attempts: u32::try_from(entry.max_attempts).unwrap_or(1).max(1),
                delay: Duration::from_millis(u64::try_from(entry.not_before_ms - now).unwrap_or(0)),
            })
            .collect();
        // Bounded well within the claim, so no other relay takes the batch meanwhile.
        let published = tokio::time::timeout(PUBLISH_TIMEOUT, queue.backend().enqueue(&jobs))
            .await
            .unwrap_or(Err(QueueError::Timeout {
                operation: "publishing to the queue",
                after: PUBLISH_TIMEOUT,
            }));
        match published {
            Ok(_) => {
                if let Err(error) = self.store.delete(&ids).await {
                    // Published, but still in the outbox: published again once the claim
                    // runs out (at-least-once).
                    tracing::warn!(%error, jobs = ids.len(), "published jobs could not be removed from the outbox; they will be published again");
                    return Err(Failure::Outbox(error));
                }
                metrics::counter!("anb_queue_outbox_published_total").increment(ids.len() as u64);
                Ok(ids.len() as u64)
            }
            Err(error) => {
                // If this fails too, the claim runs out and the batch is retried then.
                let _ = self.store.release(&ids, &error.to_string()).await;
                Err(Failure::Queue(error))
            }
        }
    }
}

/// Why a publish failed: the outbox's database, or the queue (which is then opened again).
#[derive(Debug)]
enum Failure {
    Outbox(QueueError),
    Queue(QueueError),
}

/// The outbox's database, with the little SQL that differs between engines.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// An outbox row claimed for publishing.
#[derive(Debug, sqlx::FromRow)]
struct Entry {
    id: i64,
    name: String,
    payload: String,
    max_attempts: i64,
    not_before_ms: i64,
}

impl Store {
    fn kind(&self) -> BackendKind {
        match self {
            Store::Postgres(_) => BackendKind::Postgres,
            Store::Sqlite(_) => BackendKind::Sqlite,
        }
    }

    fn poll_interval(&self) -> Duration {
        match self {
            // Only covers a lost notification.
            Store::Postgres(_) => Duration::from_millis(500),
            // The latency for jobs written by another process on the same file.
            Store::Sqlite(_) => Duration::from_millis(200),
        }
    }

    async fn setup(&self) -> Result<(), QueueError> {
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(SETUP_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                for statement in POSTGRES_SCHEMA {
                    sqlx::query(*statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Store::Sqlite(pool) => {
                // IMMEDIATE takes the write lock up front, so two processes cannot
                // interleave the DDL.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                for statement in SQLITE_SCHEMA {
                    sqlx::query(*statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    async fn pending(&self) -> Result<i64, QueueError> {
        const SQL: &str = "SELECT count(*) FROM anb_queue_outbox";
        Ok(match self {
            Store::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
            Store::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        })
    }

    /// Whether any job waits unclaimed: a read, so polling takes no write lock.
    async fn any_claimable(&self, now: i64) -> Result<bool, QueueError> {
        const SQL: &str = "SELECT EXISTS (SELECT 1 FROM anb_queue_outbox
             WHERE claimed_until_ms IS NULL OR claimed_until_ms < $1)";
        Ok(match self {
            Store::Postgres(pool) => sqlx::query_scalar(SQL).bind(now).fetch_one(pool).await?,
            Store::Sqlite(pool) => sqlx::query_scalar(SQL).bind(now).fetch_one(pool).await?,
        })
    }

    /// Claims up to `batch` unclaimed jobs (or jobs whose claim ran out) until `until`.
    async fn claim(&self, now: i64, until: i64, batch: i64) -> Result<Vec<Entry>, QueueError> {
        Ok(match self {
            Store::Postgres(pool) => {
                // SKIP LOCKED: concurrent relays claim different rows instead of waiting.
                sqlx::query_as(
                    "UPDATE anb_queue_outbox
                     SET claimed_until_ms = $2, publish_attempts = publish_attempts + 1
                     WHERE id IN (
                        SELECT id FROM anb_queue_outbox
                        WHERE claimed_until_ms IS NULL OR claimed_until_ms < $1
                        ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED
                     )
                     RETURNING id, name, payload, max_attempts, not_before_ms",
                )
                .bind(now)
                .bind(until)
                .bind(batch)
                .fetch_all(pool)
                .await?
            }
            Store::Sqlite(pool) => {
                // One writer at a time: the statement itself is the lock.
                sqlx::query_as(
                    "UPDATE anb_queue_outbox
                     SET claimed_until_ms = ?2, publish_attempts = publish_attempts + 1
                     WHERE id IN (
                        SELECT id FROM anb_queue_outbox
                        WHERE claimed_until_ms IS NULL OR claimed_until_ms < ?1
                        ORDER BY id LIMIT ?3
                     )
                     RETURNING id, name, payload, max_attempts, not_before_ms",
                )
                .bind(now)
                .bind(until)
                .bind(batch)
                .fetch_all(pool)
                .await?
            }
        })
    }

    /// Removes published jobs.
    async fn delete(&self, ids: &[i64]) -> Result<(), QueueError> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query("DELETE FROM anb_queue_outbox WHERE id = ANY($1)")
                    .bind(ids)
                    .execute(pool)
                    .await?;
            }
            Store::Sqlite(pool) => {
                sqlx::query(
                    "DELETE FROM anb_queue_outbox WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(json_ids(ids))
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Gives claimed jobs back after a failed publish, keeping the error.
    async fn release(&self, ids: &[i64], error: &str) -> Result<(), QueueError> {
        match self {
            Store::Postgres(pool) => {
                sqlx::query(
                    "UPDATE anb_queue_outbox SET claimed_until_ms = NULL, last_error = $2
                     WHERE id = ANY($1)",
                )
                .bind(ids)
                .bind(error)
                .execute(pool)
                .await?;
            }
            Store::Sqlite(pool) => {
                sqlx::query(
                    "UPDATE anb_queue_outbox SET claimed_until_ms = NULL, last_error = ?2
                     WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(json_ids(ids))
                .bind(error)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }
}

/// Writes one job into the outbox on a PostgreSQL connection.
pub(crate) async fn insert_postgres(
    conn: &mut PgConnection,
    job: &NewJob,
) -> Result<i64, QueueError> {
    let now = now_ms();
    let id = sqlx::query_scalar(
        "INSERT INTO anb_queue_outbox (name, payload, max_attempts, not_before_ms, created_at_ms)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(job.name)
    .bind(&job.payload)
    .bind(i64::from(job.max_attempts))
    .bind(now.saturating_add(millis(job.delay)))
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// Writes one job into the outbox on a SQLite connection.
pub(crate) async fn insert_sqlite(
    conn: &mut SqliteConnection,
    job: &NewJob,
) -> Result<i64, QueueError> {
    let now = now_ms();
    let id = sqlx::query_scalar(
        "INSERT INTO anb_queue_outbox (name, payload, max_attempts, not_before_ms, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
    )
    .bind(job.name)
    .bind(&job.payload)
    .bind(i64::from(job.max_attempts))
    .bind(now.saturating_add(millis(job.delay)))
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// The relay's `LISTEN` connection on PostgreSQL, reopened when it drops; while it is down
/// the relay only polls.
#[derive(Debug, Default)]
struct Listener(Option<PgListener>);

impl Listener {
    async fn ensure(&mut self, pool: &PgPool) {
        if self.0.is_some() {
            return;
        }
        let listening = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(listener) => self.0 = Some(listener),
            Err(error) => tracing::warn!(%error, "outbox relay cannot LISTEN; polling meanwhile"),
        }
    }

    /// Completes on a notification; never while there is no connection.
    async fn notified(&mut self) {
        let Some(listener) = &mut self.0 else {
            return std::future::pending().await;
        };
        if listener.recv().await.is_err() {
            // The connection dropped (notifications may be lost): poll once, then reopen.
            self.0 = None;
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Ids as a JSON array, so one SQLite statement can take a whole batch through `json_each`.
fn json_ids(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned())
}

/// A job name read back from the outbox as the `&'static str` the backends take. Names are
/// few and fixed (one per job type), so each is leaked once and reused.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}
