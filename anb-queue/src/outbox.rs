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
//!
//! One row the queue refuses never holds up the others:
//! - a batch the queue refuses is split in halves, and each half published on its own, so
//!   the rows it accepts go through and only the refused ones are left (a half that fails as
//!   a whole for a reason other than the row, such as the queue being down, ends the split:
//!   the rest is not tried);
//! - a row that failed waits before it is tried again (exponential backoff with jitter,
//!   [`Relay::retry_backoff`]), keeping its error and the count of attempts;
//! - a row the queue refuses for good (larger than its message size limit), or that failed
//!   [`Relay::max_publish_attempts`] times, moves to the outbox's dead state with the reason.
//!   [`Outbox::dead_entries`] lists dead rows and [`Outbox::requeue_dead`] gives them back
//!   to the relay, for instance after raising the queue's limit.
//!
//! Unique jobs go through [`Outbox::enqueue_unique_tx`], and what is guaranteed depends on
//! how long the key is held and where the relay publishes:
//!
//! | queue the relay publishes to | key held for a period | key held while unfinished |
//! |---|---|---|
//! | SQS | enforced by the outbox, in the producer's database | refused: the entry dies with the reason |
//! | Redis, PostgreSQL, SQLite | enforced by the outbox, and by the queue | enforced by the queue |
//!
//! - A key held **for a period** ([`Unique::for_period`]) is taken in the caller's
//!   transaction, in `anb_queue_outbox_unique` (primary key: job name and key), by an upsert
//!   that replaces only an expired key: a duplicate within the period writes nothing and
//!   answers the id of the entry that took the key, on any queue. Concurrent enqueues of a
//!   key wait for each other (PostgreSQL: the conflicting insert's transaction; SQLite: the
//!   write lock), so one entry is written. The period runs by the producer's clock from the
//!   enqueue, whatever becomes of the entry (published, dead). The next enqueue of a key
//!   replaces it once expired, and relays delete expired keys when they start and every
//!   minute. A queue with unique jobs is also given the key, for what is left of the period,
//!   so that producers with outboxes in different databases meet there.
//! - A key held **while unfinished** (the default) cannot be judged by the producer's
//!   database, which never learns when the job finishes: the entry is always written, with
//!   its key, and the relay publishes it with a unique enqueue, so Redis (or a SQL queue)
//!   enforces the key with its own semantics, and a duplicate it reports counts as published
//!   (the entry is deleted; the job holding the key stays the only one). A standard SQS
//!   queue cannot deduplicate: the relay moves such an entry to the dead state at its first
//!   attempt with the reason (`anb_queue_outbox_dead_total{reason="unique"}`), and never
//!   publishes it without its key.
//!
//! Keyed entries are published one at a time (one unique enqueue each), the others in
//! batches.
//!
//! An entry keeps its job's priority ([`Job::PRIORITY`](crate::Job::PRIORITY)) and is
//! published at it; a queue without priorities (SQS) never gets a job out of its order: the
//! relay moves an entry of any priority but the default to the dead state with the reason
//! (`anb_queue_outbox_dead_total{reason="priority"}`).
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
//! # impl anb_queue::Job for Transcode { const NAME: &'static str = "transcode"; }
//! # async fn example(pool: sqlx::PgPool, outbox: anb_queue::Outbox) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use anb_queue::Unique;
//!
//! let mut tx = pool.begin().await?;
//! // At most one transcode of video 1 an hour, even published to SQS.
//! let hourly = Unique::key("video:1").for_period(Duration::from_secs(3600));
//! let enqueued = outbox.enqueue_unique_tx(&mut *tx, &Transcode { video_id: 1 }, hourly).await?;
//! // One unfinished transcode of video 2 at a time: the relay's queue must have unique
//! // jobs (Redis); on SQS the entry dies.
//! outbox.enqueue_unique_tx(&mut *tx, &Transcode { video_id: 2 }, Unique::key("video:2")).await?;
//! tx.commit().await?;
//! # let _ = enqueued; Ok(()) }
//! ```
//!
//! The table's schema is versioned (`anb_queue_outbox_schema`) and upgraded by
//! [`Outbox::setup`]. Each upgrade keeps the table usable by the relays of the release
//! before it, which run beside new ones during a rolling deploy: columns are only added,
//! and a row waiting for its retry or dead keeps `claimed_until_ms` in the future (for ever,
//! when dead), which older relays already respect. A row with a unique key keeps it in the
//! future for ever too (its claim lives in a column of its own), since an older relay would
//! publish it without its key; an older release's `requeue_dead` would clear that, so
//! requeue keyed entries with this release.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
#[cfg(feature = "postgres")]
use sqlx::{PgConnection, PgPool, postgres::PgListener};
#[cfg(feature = "sqlite")]
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::watch;

use crate::{
    Priority, RetryBackoff,
    backend::{BackendKind, NewJob, now_ms},
    error::QueueError,
    job::Job,
    queue::{Queue, TransactionalConnection},
    sql::millis,
    unique::{Unique, UniqueKey},
};

#[cfg(feature = "postgres")]
const CHANNEL: &str = "anb_queue_outbox";

/// One step of the outbox's schema, applied once per database, in order, by
/// [`Outbox::setup`]. A step must leave the table usable by the relays of the release before
/// it (see the module documentation): add nullable columns and indexes, never drop or rename.
struct Migration {
    version: i64,
    // Both dialects are written down whichever engines a build has.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    postgres: &'static [&'static str],
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    sqlite: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    // The table as the first release created it (without a version table): every statement
    // is idempotent, so a database set up by that release passes through it unchanged.
    Migration {
        version: 1,
        postgres: &[
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
        ],
        sqlite: &[
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
        ],
    },
    // The dead state. A dead row also keeps `claimed_until_ms` at its largest value, so the
    // first release's relays, which know nothing of `dead_at_ms`, never claim it either.
    Migration {
        version: 2,
        postgres: &[
            "ALTER TABLE anb_queue_outbox ADD COLUMN IF NOT EXISTS dead_at_ms BIGINT",
            "CREATE INDEX IF NOT EXISTS anb_queue_outbox_live ON anb_queue_outbox (id)
             WHERE dead_at_ms IS NULL",
            "CREATE INDEX IF NOT EXISTS anb_queue_outbox_dead ON anb_queue_outbox (id)
             WHERE dead_at_ms IS NOT NULL",
        ],
        sqlite: &[
            "ALTER TABLE anb_queue_outbox ADD COLUMN dead_at_ms INTEGER",
            "CREATE INDEX IF NOT EXISTS anb_queue_outbox_live ON anb_queue_outbox (id)
             WHERE dead_at_ms IS NULL",
            "CREATE INDEX IF NOT EXISTS anb_queue_outbox_dead ON anb_queue_outbox (id)
             WHERE dead_at_ms IS NOT NULL",
        ],
    },
    // Unique keys. A keyed row carries its key (`unique_key`; `unique_until_ms` is the end of
    // a period key, `NULL` for a key held while unfinished) for the relay to publish it with.
    // Relays of version 2 and before would publish it without the key, so a keyed row keeps
    // `claimed_until_ms` at its largest, which they never claim, and this release's relays
    // keep its claim in `unique_claimed_until_ms` instead. Period keys are held in
    // `anb_queue_outbox_unique`, which older code never reads or writes.
    Migration {
        version: 3,
        postgres: &[
            "ALTER TABLE anb_queue_outbox ADD COLUMN IF NOT EXISTS unique_key TEXT",
            "ALTER TABLE anb_queue_outbox ADD COLUMN IF NOT EXISTS unique_until_ms BIGINT",
            "ALTER TABLE anb_queue_outbox ADD COLUMN IF NOT EXISTS unique_claimed_until_ms BIGINT",
            "CREATE TABLE IF NOT EXISTS anb_queue_outbox_unique (
                name TEXT NOT NULL,
                unique_key TEXT NOT NULL,
                entry_id BIGINT NOT NULL,
                unique_until_ms BIGINT NOT NULL,
                PRIMARY KEY (name, unique_key)
            )",
        ],
        sqlite: &[
            "ALTER TABLE anb_queue_outbox ADD COLUMN unique_key TEXT",
            "ALTER TABLE anb_queue_outbox ADD COLUMN unique_until_ms INTEGER",
            "ALTER TABLE anb_queue_outbox ADD COLUMN unique_claimed_until_ms INTEGER",
            "CREATE TABLE IF NOT EXISTS anb_queue_outbox_unique (
                name TEXT NOT NULL,
                unique_key TEXT NOT NULL,
                entry_id INTEGER NOT NULL,
                unique_until_ms INTEGER NOT NULL,
                PRIMARY KEY (name, unique_key)
            )",
        ],
    },
    // Priorities. A row keeps its job's priority for the relay to publish it with; relays of
    // version 3 and before ignore the column and publish at the default priority.
    Migration {
        version: 4,
        postgres: &[
            "ALTER TABLE anb_queue_outbox ADD COLUMN IF NOT EXISTS priority SMALLINT NOT NULL DEFAULT 0",
        ],
        sqlite: &["ALTER TABLE anb_queue_outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0"],
    },
];

/// A row's claim as this release reads it: `claimed_until_ms`, or for a keyed row (which
/// keeps that at its largest, so that older relays never take it) `unique_claimed_until_ms`.
macro_rules! claim_of_row {
    () => {
        "(CASE WHEN unique_key IS NULL THEN claimed_until_ms ELSE unique_claimed_until_ms END)"
    };
}

/// Sets a row's claim (see [`claim_of_row`]) to `$param`.
macro_rules! set_claim {
    ($param:literal) => {
        concat!(
            "claimed_until_ms = CASE WHEN unique_key IS NULL THEN ",
            $param,
            " ELSE claimed_until_ms END, unique_claimed_until_ms = CASE WHEN unique_key IS NULL THEN NULL ELSE ",
            $param,
            " END"
        )
    };
}

/// Gives a dead row back: no claim, and a keyed row still hidden from older relays.
macro_rules! requeue_set {
    () => {
        "dead_at_ms = NULL, publish_attempts = 0,
         claimed_until_ms = CASE WHEN unique_key IS NULL THEN NULL ELSE claimed_until_ms END,
         unique_claimed_until_ms = NULL"
    };
}

/// Which schema versions a database has; created by the first [`Outbox::setup`] of a
/// release that versions the schema.
const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS anb_queue_outbox_schema (
    version BIGINT PRIMARY KEY,
    applied_at_ms BIGINT NOT NULL
)";

/// Arbitrary constant key for the advisory lock that serializes concurrent `setup`s.
#[cfg(feature = "postgres")]
const SETUP_LOCK_KEY: i64 = 0x616e_625f_6f75_7462; // "anb_outb"

/// `claimed_until_ms` of a dead row, and of every keyed row: a claim that never runs out,
/// so older relays never take them.
const DEAD_CLAIM: i64 = i64::MAX;

/// How long a relay holds the batch it claimed: longer than a publish can take, so that
/// only a relay that died leaves its batch to another.
const CLAIM_LEASE: Duration = Duration::from_secs(60);

/// The longest a publish may take (half the claim) before it counts as failed; a batch split
/// after a refusal shares it.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest opening the queue may take before the relay tries again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first wait after a failed publish; it doubles up to [`Relay::max_backoff`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// How often a relay refreshes the `anb_queue_outbox_dead` gauge when nothing changed it.
const DEAD_GAUGE_REFRESH: Duration = Duration::from_secs(60);

mod sealed {
    /// Where the engine-specific store comes from; sealed so that only the two pools
    /// implement [`OutboxPool`](super::OutboxPool).
    pub trait Sealed {
        fn into_store(self) -> super::Store;
    }

    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::PgPool {
        fn into_store(self) -> super::Store {
            super::Store::Postgres(self)
        }
    }

    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::SqlitePool {
        fn into_store(self) -> super::Store {
            super::Store::Sqlite(self)
        }
    }
}

/// A database an [`Outbox`] can live in: a [`PgPool`] or a [`SqlitePool`].
pub trait OutboxPool: sealed::Sealed {}

#[cfg(feature = "postgres")]
impl OutboxPool for PgPool {}

#[cfg(feature = "sqlite")]
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

/// A job in the outbox as an operator sees it: waiting to be published, or dead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxEntry {
    /// The outbox entry's id (returned by [`Outbox::enqueue_tx`]).
    pub id: i64,
    /// The job's stable name.
    pub name: String,
    /// The JSON payload.
    pub payload: String,
    /// How many times a relay took it to publish it.
    pub publish_attempts: u32,
    /// Why the last publish failed; for a dead entry, why it died.
    pub last_error: Option<String>,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The earliest a relay takes it again (ms since the Unix epoch) while it waits for a
    /// retry or a relay is publishing it; `None` when it can be published at once or is dead.
    pub next_attempt_at_ms: Option<i64>,
    /// When it was moved to the dead state; `None` while it waits to be published.
    pub dead_at_ms: Option<i64>,
    /// The unique key it is published with ([`Outbox::enqueue_unique_tx`]), if any.
    pub unique_key: Option<String>,
}

/// What a unique enqueue into the outbox did ([`Outbox::enqueue_unique_tx`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxEnqueued {
    /// The new outbox entry's id, or, for a duplicate, the id of the entry holding the key.
    pub id: i64,
    /// Whether an entry already held the key (a period key), so nothing was written.
    pub duplicate: bool,
}

impl Outbox {
    /// Creates the outbox tables (`anb_queue_outbox`, and `anb_queue_outbox_unique` for
    /// period keys) in the database of `pool` if missing, or upgrades their schema to this
    /// release's version (see the module documentation).
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
        let entry = self.entry::<C, J>(job, delay)?;
        let id = conn.insert_outbox(&entry).await?;
        self.wake_on_sqlite::<C>();
        Ok(id)
    }

    /// Writes a job into the outbox on the caller's connection, like
    /// [`Outbox::enqueue_tx`], unless its unique key is taken: returns the new entry's id,
    /// or the holder's with `duplicate` set (and nothing written).
    ///
    /// What is enforced depends on how long the key is held (see the module documentation):
    /// - **for a period** ([`Unique::for_period`]): by the outbox itself, in the caller's
    ///   database and transaction, whatever queue the relay publishes to. A duplicate within
    ///   the period answers the id of the entry that took the key (which the relay may have
    ///   published and deleted since). A concurrent enqueue of the same key waits for this
    ///   transaction to end (PostgreSQL) or for the write lock (SQLite). The relay also
    ///   passes the key, for what is left of the period, to a queue that enforces unique keys.
    /// - **while unfinished** (the default): only the queue knows when the job finishes, so
    ///   the entry is always written, carrying its key, and the relay publishes it with
    ///   [`Queue::enqueue_unique`]'s semantics: a duplicate there counts as published. A
    ///   queue without unique keys (SQS) cannot hold such a key, so the relay moves the entry
    ///   to the dead state with the reason rather than publish it without its key.
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
    /// # impl anb_queue::Job for Transcode { const NAME: &'static str = "transcode"; }
    /// # async fn example(pool: sqlx::PgPool, outbox: anb_queue::Outbox) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use anb_queue::Unique;
    ///
    /// let hourly = Unique::key("video:1").for_period(Duration::from_secs(3600));
    /// let mut tx = pool.begin().await?;
    /// let first = outbox.enqueue_unique_tx(&mut *tx, &Transcode { video_id: 1 }, hourly.clone()).await?;
    /// let again = outbox.enqueue_unique_tx(&mut *tx, &Transcode { video_id: 1 }, hourly).await?;
    /// assert!(!first.duplicate && again.duplicate && again.id == first.id);
    /// tx.commit().await?; // one job reaches the queue, SQS or Redis alike
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_unique_tx<C, J>(
        &self,
        conn: &mut C,
        job: &J,
        unique: Unique,
    ) -> Result<OutboxEnqueued, QueueError>
    where
        C: TransactionalConnection,
        J: Job,
    {
        self.enqueue_unique_in_tx(conn, job, unique, Duration::ZERO)
            .await
    }

    /// Like [`Outbox::enqueue_unique_tx`], for a job to run once `delay` has passed. A period
    /// key's period counts from now, not from when the job runs.
    pub async fn enqueue_unique_in_tx<C, J>(
        &self,
        conn: &mut C,
        job: &J,
        unique: Unique,
        delay: Duration,
    ) -> Result<OutboxEnqueued, QueueError>
    where
        C: TransactionalConnection,
        J: Job,
    {
        let mut entry = self.entry::<C, J>(job, delay)?;
        entry.unique = Some(unique.resolve(&entry.payload));
        let enqueued = conn.insert_outbox_unique(&entry).await?;
        if !enqueued.duplicate {
            self.wake_on_sqlite::<C>();
        }
        Ok(enqueued)
    }

    /// The outbox row for `job`, once the connection is known to be of the outbox's engine.
    fn entry<C, J>(&self, job: &J, delay: Duration) -> Result<NewJob, QueueError>
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
        Ok(NewJob {
            name: J::NAME,
            payload,
            max_attempts: J::MAX_ATTEMPTS.max(1),
            delay,
            priority: J::PRIORITY,
            unique: None,
        })
    }

    /// After a write on SQLite, before the caller commits: the relay's claim waits for the
    /// commit (see the module documentation).
    fn wake_on_sqlite<C: TransactionalConnection>(&self) {
        if C::KIND == BackendKind::Sqlite {
            self.wake();
        }
    }

    /// Counts jobs written but not yet published, dead ones excepted.
    pub async fn pending(&self) -> Result<u64, QueueError> {
        Ok(count(self.store.count(false).await?))
    }

    /// Counts jobs in the dead state (see [`Outbox::dead_entries`]).
    pub async fn dead_count(&self) -> Result<u64, QueueError> {
        Ok(count(self.store.count(true).await?))
    }

    /// Lists up to `limit` jobs waiting to be published, with their attempts and last error,
    /// oldest first and from the entry after `after_id` (pass the last id of a page to get the
    /// next one).
    pub async fn pending_entries(
        &self,
        limit: usize,
        after_id: Option<i64>,
    ) -> Result<Vec<OutboxEntry>, QueueError> {
        self.store.entries(false, limit, after_id).await
    }

    /// Lists up to `limit` dead jobs with the reason each died, oldest first and from the
    /// entry after `after_id`.
    pub async fn dead_entries(
        &self,
        limit: usize,
        after_id: Option<i64>,
    ) -> Result<Vec<OutboxEntry>, QueueError> {
        self.store.entries(true, limit, after_id).await
    }

    /// Gives dead jobs back to the relays, as if just written (their attempt count starts
    /// again; the last error stays until the next attempt). Ids that are not dead are
    /// ignored. Returns how many were given back.
    pub async fn requeue_dead(&self, ids: &[i64]) -> Result<u64, QueueError> {
        let requeued = self.store.requeue(Some(ids)).await?;
        self.wake();
        Ok(requeued)
    }

    /// Gives every dead job back to the relays; see [`Outbox::requeue_dead`].
    pub async fn requeue_all_dead(&self) -> Result<u64, QueueError> {
        let requeued = self.store.requeue(None).await?;
        self.wake();
        Ok(requeued)
    }

    /// Wakes this process's relays (PostgreSQL's also learn of new rows by `NOTIFY`).
    fn wake(&self) {
        self.wake
            .send_modify(|count| *count = count.wrapping_add(1));
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
            max_publish_attempts: 20,
            retry_backoff: RetryBackoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
        }
    }
}

fn count(rows: i64) -> u64 {
    u64::try_from(rows).unwrap_or(0)
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
    max_publish_attempts: u32,
    retry_backoff: RetryBackoff,
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

    /// How many times a relay tries to publish a job before moving it to the dead state
    /// (default 20; at least 1). With the default [`Relay::retry_backoff`], 20 attempts take
    /// about an hour of failures. A job the queue refuses for good dies at the first attempt.
    pub fn max_publish_attempts(mut self, attempts: u32) -> Self {
        self.max_publish_attempts = attempts.max(1);
        self
    }

    /// How long a job whose publish failed waits before it is tried again: `base × 2^(n-1)`
    /// after attempt `n`, capped at `max`, with jitter (default 1 s, capped at 5 min).
    pub fn retry_backoff(mut self, backoff: RetryBackoff) -> Self {
        self.retry_backoff = backoff;
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
        let mut dead_gauge_due = Instant::now();
        let mut dead_known = None;
        // Claim at once on start (jobs may wait from before) and after a wake-up; otherwise
        // look before taking a write lock.
        let mut woken = true;
        loop {
            #[cfg(feature = "postgres")]
            #[allow(irrefutable_let_patterns)] // a build with PostgreSQL alone
            if let Store::Postgres(pool) = &self.store {
                listener.ensure(pool).await;
            }
            if Instant::now() >= dead_gauge_due {
                self.refresh_dead_gauge(&mut dead_known).await;
                match self.store.prune_unique_keys(now_ms()).await {
                    Ok(pruned) if pruned > 0 => {
                        tracing::debug!(pruned, "expired outbox unique keys deleted");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, "pruning outbox unique keys failed"),
                }
                dead_gauge_due = Instant::now() + DEAD_GAUGE_REFRESH;
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
                Some(connected) => {
                    match self.publish_batch(connected, woken, &mut dead_known).await {
                        Ok(round) => Ok(round.settled()),
                        Err(Failure::Outbox(error)) => Err(error),
                        Err(Failure::Queue(error)) => {
                            // Open the queue afresh next time: a client may stay stuck in its
                            // own reconnection schedule long after the broker is back.
                            queue = None;
                            Err(error)
                        }
                    }
                }
            };
            woken = false;
            let wait = match outcome {
                Ok(settled) if settled > 0 => {
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

    /// Sets the `anb_queue_outbox_dead` gauge, and logs the count when it changed (`known`
    /// is the last count logged).
    async fn refresh_dead_gauge(&self, known: &mut Option<i64>) {
        match self.store.count(true).await {
            Ok(dead) => {
                metrics::gauge!("anb_queue_outbox_dead").set(dead as f64);
                if *known != Some(dead) && (dead > 0 || known.is_some()) {
                    tracing::warn!(
                        dead,
                        "dead jobs in the outbox: list them with Outbox::dead_entries, give them back with Outbox::requeue_dead"
                    );
                }
                *known = Some(dead);
            }
            Err(error) => tracing::debug!(%error, "counting dead outbox rows failed"),
        }
    }

    /// Claims up to one batch of unpublished jobs and publishes it (splitting it when the
    /// queue refuses it); deletes what was published, and schedules a retry of, or kills,
    /// each job that was not.
    /// `dead_known` is the dead count last logged (see [`Relay::refresh_dead_gauge`]).
    async fn publish_batch(
        &self,
        queue: &Queue,
        woken: bool,
        dead_known: &mut Option<i64>,
    ) -> Result<Round, Failure> {
        let now = now_ms();
        if !woken
            && !self
                .store
                .any_claimable(now)
                .await
                .map_err(Failure::Outbox)?
        {
            return Ok(Round::default());
        }
        let mut entries = self
            .store
            .claim(now, now.saturating_add(millis(CLAIM_LEASE)), self.batch)
            .await
            .map_err(Failure::Outbox)?;
        if entries.is_empty() {
            return Ok(Round::default());
        }
        entries.sort_by_key(|entry| entry.id);
        // Bounded well within the claim, so no other relay takes the batch meanwhile.
        let deadline = tokio::time::Instant::now() + PUBLISH_TIMEOUT;
        let mut attempt = Attempt::default();
        let supports_unique = queue.backend().supports_unique();
        let supports_priorities = queue.backend().supports_priorities();
        let mut plain = Vec::with_capacity(entries.len());
        let mut keyed = Vec::new();
        for entry in entries {
            if entry.priority() != Priority::HIGHEST && !supports_priorities {
                let error = format!(
                    "the {} queue has no priorities, and the job of priority {} is never \
                     published out of its order (publish to a queue with priorities, or \
                     give jobs for this queue the default priority)",
                    queue.kind().as_str(),
                    entry.priority()
                );
                attempt.refuse(entry, error, "priority");
                continue;
            }
            match entry.route(supports_unique, now) {
                Route::Plain => plain.push(entry),
                Route::Keyed(key) => keyed.push((entry, key)),
                Route::Refused => {
                    let error = format!(
                        "the {} queue cannot hold the unique key {:?} while the job is unfinished, \
                         and the job is never published without its key (hold the key for a \
                         period instead, which the outbox enforces itself, or publish to a \
                         queue with unique jobs)",
                        queue.kind().as_str(),
                        entry.unique_key.as_deref().unwrap_or_default()
                    );
                    attempt.refuse(entry, error, "unique");
                }
            }
        }
        if !plain.is_empty() {
            publish_split(queue, plain, deadline, &mut attempt).await;
        }
        publish_keyed(queue, keyed, deadline, &mut attempt).await;

        let ids: Vec<i64> = attempt.published.iter().map(|entry| entry.id).collect();
        let mut round = Round {
            published: ids.len() as u64,
            ..Round::default()
        };
        let mut settle_error = None;
        if !ids.is_empty() {
            match self.store.delete(&ids).await {
                Ok(()) => {
                    metrics::counter!("anb_queue_outbox_published_total")
                        .increment(ids.len() as u64);
                }
                Err(error) => {
                    // Published, but still in the outbox: published again once the claim
                    // runs out (at-least-once).
                    tracing::warn!(%error, jobs = ids.len(), "published jobs could not be removed from the outbox; they will be published again");
                    settle_error = Some(error);
                }
            }
        }
        if !attempt.failed.is_empty() {
            let now = now_ms();
            let settlements: Vec<Settlement> = attempt
                .failed
                .iter()
                .map(|failed| self.settlement(failed, now))
                .collect();
            // If this fails, the claim runs out and the jobs are tried again then.
            match self.store.settle(&settlements).await {
                Ok(()) => {
                    for (failed, settlement) in attempt.failed.iter().zip(&settlements) {
                        if let Some(reason) = settlement.death {
                            round.dead += 1;
                            tracing::warn!(outbox_id = failed.entry.id, job = %failed.entry.name, attempts = failed.entry.publish_attempts, error = %failed.error, "outbox job moved to the dead state");
                            metrics::counter!("anb_queue_outbox_dead_total", "reason" => reason)
                                .increment(1);
                        } else {
                            metrics::counter!("anb_queue_outbox_retries_total").increment(1);
                        }
                    }
                }
                Err(error) => settle_error = settle_error.or(Some(error)),
            }
            if round.dead > 0 {
                self.refresh_dead_gauge(dead_known).await;
            }
        }
        if let Some(error) = settle_error {
            return Err(Failure::Outbox(error));
        }
        match attempt.queue_error {
            // Nothing went through: the queue is failing, not some job.
            Some(error) if round.published == 0 => Err(Failure::Queue(error)),
            _ => Ok(round),
        }
    }

    /// What becomes of a job whose publish failed: dead, or back after its backoff.
    fn settlement(&self, failed: &FailedEntry, now: i64) -> Settlement {
        let attempts = u32::try_from(failed.entry.publish_attempts).unwrap_or(u32::MAX);
        let death = if failed.permanent {
            Some(failed.reason)
        } else if attempts >= self.max_publish_attempts {
            Some("attempts")
        } else {
            None
        };
        Settlement {
            id: failed.entry.id,
            error: failed.error.clone(),
            death,
            retry_at_ms: now.saturating_add(millis(self.retry_backoff.delay(attempts.max(1)))),
            now_ms: now,
        }
    }
}

/// Publishes `rows` with one enqueue; when the queue refuses them, splits them in halves and
/// publishes each on its own, down to single rows, so that the rows the queue accepts go
/// through. A half that fails as a whole for a reason other than a row (the queue is down)
/// ends the split: the rest fails with the same error without being tried, so an outage
/// costs a few requests per batch, not one per row.
fn publish_split<'a>(
    queue: &'a Queue,
    mut rows: Vec<Entry>,
    deadline: tokio::time::Instant,
    attempt: &'a mut Attempt,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let result = if tokio::time::Instant::now() >= deadline {
            Err(publish_timeout())
        } else {
            let now = now_ms();
            let jobs: Vec<NewJob> = rows.iter().map(|entry| entry.job(now)).collect();
            tokio::time::timeout_at(deadline, queue.backend().enqueue(&jobs))
                .await
                .unwrap_or_else(|_| Err(publish_timeout()))
        };
        let error = match result {
            Ok(_) => {
                attempt.published.extend(rows);
                return;
            }
            // Some went out (SQS takes a batch message by message): those are published,
            // and only the others are tried again, so none is sent twice. Each such answer
            // leaves fewer rows, so this ends.
            Err(QueueError::PartlyEnqueued { ids, .. }) if ids.len() == rows.len() => {
                let mut rest = Vec::new();
                for (row, id) in rows.into_iter().zip(ids) {
                    if id.is_some() {
                        attempt.published.push(row);
                    } else {
                        rest.push(row);
                    }
                }
                if !rest.is_empty() {
                    publish_split(queue, rest, deadline, attempt).await;
                }
                return;
            }
            Err(error) => error,
        };
        if rows.len() == 1 {
            attempt.fail(rows, error);
            return;
        }
        let refused = refused_for_good(&error);
        let second = rows.split_off(rows.len() / 2);
        let progress = attempt.progress();
        publish_split(queue, rows, deadline, attempt).await;
        if !refused && attempt.progress() == progress {
            attempt.fail(second, error);
            return;
        }
        publish_split(queue, second, deadline, attempt).await;
    })
}

/// Publishes keyed rows one by one with a unique enqueue. A duplicate counts as published:
/// the queue holds the key for another job, as the key asks. A failure other than the row's
/// ends the run, the rest failing with the same error without being tried.
async fn publish_keyed(
    queue: &Queue,
    rows: Vec<(Entry, UniqueKey)>,
    deadline: tokio::time::Instant,
    attempt: &mut Attempt,
) {
    let mut rows = rows.into_iter();
    while let Some((entry, key)) = rows.next() {
        let result = if tokio::time::Instant::now() >= deadline {
            Err(publish_timeout())
        } else {
            let mut job = entry.job(now_ms());
            job.unique = Some(key);
            tokio::time::timeout_at(deadline, queue.backend().enqueue_unique(&job))
                .await
                .unwrap_or_else(|_| Err(publish_timeout()))
        };
        match result {
            Ok(enqueued) => {
                if enqueued.duplicate {
                    tracing::debug!(outbox_id = entry.id, job = %entry.name, holder = %enqueued.id, "the queue already holds the job's unique key");
                    metrics::counter!("anb_queue_outbox_duplicates_total").increment(1);
                }
                attempt.published.push(entry);
            }
            Err(error) if refused_for_good(&error) => attempt.fail(vec![entry], error),
            Err(error) => {
                let rest = std::iter::once(entry)
                    .chain(rows.map(|(entry, _)| entry))
                    .collect();
                attempt.fail(rest, error);
                return;
            }
        }
    }
}

fn publish_timeout() -> QueueError {
    QueueError::Timeout {
        operation: "publishing to the queue",
        after: PUBLISH_TIMEOUT,
    }
}

/// Whether the queue refuses this job whatever the number of attempts.
fn refused_for_good(error: &QueueError) -> bool {
    matches!(error, QueueError::MessageTooLarge { .. })
}

/// What one claimed batch came to.
#[derive(Debug, Default)]
struct Attempt {
    published: Vec<Entry>,
    failed: Vec<FailedEntry>,
    /// The first failure that was the queue's rather than a job's.
    queue_error: Option<QueueError>,
}

impl Attempt {
    fn fail(&mut self, rows: Vec<Entry>, error: QueueError) {
        let permanent = refused_for_good(&error);
        let message = error.to_string();
        self.failed
            .extend(rows.into_iter().map(|entry| FailedEntry {
                entry,
                error: message.clone(),
                permanent,
                reason: "refused",
            }));
        if !permanent && self.queue_error.is_none() {
            self.queue_error = Some(error);
        }
    }

    /// Refuses a row for good without trying it: it dies with `error`, counted under
    /// `reason`.
    fn refuse(&mut self, entry: Entry, error: String, reason: &'static str) {
        self.failed.push(FailedEntry {
            entry,
            error,
            permanent: true,
            reason,
        });
    }

    /// Rows settled for good so far: published, or refused for good.
    fn progress(&self) -> usize {
        self.published.len() + self.failed.iter().filter(|failed| failed.permanent).count()
    }
}

#[derive(Debug)]
struct FailedEntry {
    entry: Entry,
    error: String,
    permanent: bool,
    /// Why a permanent failure dies (the metric's `reason`).
    reason: &'static str,
}

/// How many jobs one round published or moved to the dead state.
#[derive(Debug, Default)]
struct Round {
    published: u64,
    dead: u64,
}

impl Round {
    /// Jobs that left the queue of work; the relay goes on at once while there are some.
    fn settled(&self) -> u64 {
        self.published + self.dead
    }
}

/// The fate of one job whose publish failed.
#[derive(Debug)]
struct Settlement {
    id: i64,
    error: String,
    /// Why it dies (the metric's `reason`), or `None` when it is retried.
    death: Option<&'static str>,
    retry_at_ms: i64,
    now_ms: i64,
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
    #[cfg(feature = "postgres")]
    Postgres(PgPool),
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to whichever pool the store holds, for statements whose
/// SQL is the same on both engines.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            #[cfg(feature = "postgres")]
            Store::Postgres($pool) => $body,
            #[cfg(feature = "sqlite")]
            Store::Sqlite($pool) => $body,
        }
    };
}

/// An outbox row claimed for publishing.
#[derive(Debug, sqlx::FromRow)]
struct Entry {
    id: i64,
    name: String,
    payload: String,
    max_attempts: i64,
    not_before_ms: i64,
    publish_attempts: i64,
    unique_key: Option<String>,
    unique_until_ms: Option<i64>,
    priority: i64,
}

impl Entry {
    fn job(&self, now: i64) -> NewJob {
        NewJob {
            name: intern(&self.name),
            payload: self.payload.clone(),
            max_attempts: u32::try_from(self.max_attempts).unwrap_or(1).max(1),
            delay: Duration::from_millis(u64::try_from(self.not_before_ms - now).unwrap_or(0)),
            priority: self.priority(),
            unique: None,
        }
    }

    /// The row's priority (a level out of range, written by hand, is the default).
    fn priority(&self) -> Priority {
        u8::try_from(self.priority)
            .ok()
            .and_then(|level| Priority::try_from(level).ok())
            .unwrap_or_default()
    }

    /// How this row goes to a queue that does (or does not) enforce unique keys, at `now`.
    fn route(&self, supports_unique: bool, now: i64) -> Route {
        let Some(key) = &self.unique_key else {
            return Route::Plain;
        };
        match self.unique_until_ms {
            // Only the queue can hold a key until the job finishes.
            None if supports_unique => Route::Keyed(UniqueKey {
                key: key.clone(),
                period: None,
            }),
            None => Route::Refused,
            // The outbox held the period key; a queue that enforces keys holds it too, for
            // what is left of the period (a key from another producer's outbox then meets it).
            Some(until) if supports_unique && until > now => Route::Keyed(UniqueKey {
                key: key.clone(),
                period: Some(Duration::from_millis(
                    u64::try_from(until - now).unwrap_or(0),
                )),
            }),
            Some(_) => Route::Plain,
        }
    }
}

/// How a claimed row is published.
#[derive(Debug)]
enum Route {
    /// With the batch, by a plain enqueue.
    Plain,
    /// On its own, by a unique enqueue with this key.
    Keyed(UniqueKey),
    /// Not at all: its key is held while unfinished and the queue cannot hold such a key.
    Refused,
}

/// An outbox row as listed for an operator.
#[derive(Debug, sqlx::FromRow)]
struct EntryRow {
    id: i64,
    name: String,
    payload: String,
    publish_attempts: i64,
    last_error: Option<String>,
    created_at_ms: i64,
    claimed_until_ms: Option<i64>,
    dead_at_ms: Option<i64>,
    unique_key: Option<String>,
}

impl From<EntryRow> for OutboxEntry {
    fn from(row: EntryRow) -> Self {
        let now = now_ms();
        Self {
            id: row.id,
            name: row.name,
            payload: row.payload,
            publish_attempts: u32::try_from(row.publish_attempts).unwrap_or(0),
            last_error: row.last_error,
            created_at_ms: row.created_at_ms,
            next_attempt_at_ms: row
                .claimed_until_ms
                .filter(|until| row.dead_at_ms.is_none() && *until > now),
            dead_at_ms: row.dead_at_ms,
            unique_key: row.unique_key,
        }
    }
}

impl Store {
    fn kind(&self) -> BackendKind {
        match self {
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => BackendKind::Postgres,
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => BackendKind::Sqlite,
        }
    }

    fn poll_interval(&self) -> Duration {
        match self {
            // Only covers a lost notification.
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => Duration::from_millis(500),
            // The latency for jobs written by another process on the same file.
            #[cfg(feature = "sqlite")]
            Store::Sqlite(_) => Duration::from_millis(200),
        }
    }

    /// Applies the schema versions the database does not have yet, in one transaction that
    /// concurrent setups wait for.
    async fn setup(&self) -> Result<(), QueueError> {
        const CURRENT: &str = "SELECT coalesce(max(version), 0) FROM anb_queue_outbox_schema";
        const RECORD: &str =
            "INSERT INTO anb_queue_outbox_schema (version, applied_at_ms) VALUES ($1, $2)";
        match self {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(QueueError::from_sqlx)?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(SETUP_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                sqlx::query(SCHEMA_TABLE)
                    .execute(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                let current: i64 = sqlx::query_scalar(CURRENT)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
                    for statement in migration.postgres {
                        sqlx::query(*statement)
                            .execute(&mut *tx)
                            .await
                            .map_err(QueueError::from_sqlx)?;
                    }
                    sqlx::query(RECORD)
                        .bind(migration.version)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await
                        .map_err(QueueError::from_sqlx)?;
                }
                tx.commit().await.map_err(QueueError::from_sqlx)?;
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                // IMMEDIATE takes the write lock up front, so two processes cannot
                // interleave the DDL.
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(QueueError::from_sqlx)?;
                sqlx::query(SCHEMA_TABLE)
                    .execute(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                let current: i64 = sqlx::query_scalar(CURRENT)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
                    for statement in migration.sqlite {
                        sqlx::query(*statement)
                            .execute(&mut *tx)
                            .await
                            .map_err(QueueError::from_sqlx)?;
                    }
                    sqlx::query(RECORD)
                        .bind(migration.version)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await
                        .map_err(QueueError::from_sqlx)?;
                }
                tx.commit().await.map_err(QueueError::from_sqlx)?;
            }
        }
        Ok(())
    }

    /// Deletes period keys whose period is over (an enqueue would replace them anyway; this
    /// keeps keys that are never used again from piling up). Returns how many.
    async fn prune_unique_keys(&self, now: i64) -> Result<u64, QueueError> {
        const SQL: &str = "DELETE FROM anb_queue_outbox_unique WHERE unique_until_ms <= $1";
        Ok(on_pool!(self, pool => sqlx::query(SQL)
            .bind(now)
            .execute(pool)
            .await
            .map_err(QueueError::from_sqlx)?
            .rows_affected()))
    }

    /// Counts dead jobs, or those waiting to be published.
    async fn count(&self, dead: bool) -> Result<i64, QueueError> {
        let sql = if dead {
            "SELECT count(*) FROM anb_queue_outbox WHERE dead_at_ms IS NOT NULL"
        } else {
            "SELECT count(*) FROM anb_queue_outbox WHERE dead_at_ms IS NULL"
        };
        Ok(
            on_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await.map_err(QueueError::from_sqlx)?),
        )
    }

    async fn entries(
        &self,
        dead: bool,
        limit: usize,
        after_id: Option<i64>,
    ) -> Result<Vec<OutboxEntry>, QueueError> {
        let sql = if dead {
            concat!(
                "SELECT id, name, payload, publish_attempts, last_error, created_at_ms, ",
                claim_of_row!(),
                " AS claimed_until_ms, dead_at_ms, unique_key
                 FROM anb_queue_outbox WHERE dead_at_ms IS NOT NULL AND id > $1
                 ORDER BY id LIMIT $2"
            )
        } else {
            concat!(
                "SELECT id, name, payload, publish_attempts, last_error, created_at_ms, ",
                claim_of_row!(),
                " AS claimed_until_ms, dead_at_ms, unique_key
                 FROM anb_queue_outbox WHERE dead_at_ms IS NULL AND id > $1
                 ORDER BY id LIMIT $2"
            )
        };
        let after = after_id.unwrap_or(0);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<EntryRow> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await.map_err(QueueError::from_sqlx)?);
        Ok(rows.into_iter().map(OutboxEntry::from).collect())
    }

    /// Whether any job waits unclaimed: a read, so polling takes no write lock.
    async fn any_claimable(&self, now: i64) -> Result<bool, QueueError> {
        const SQL: &str = concat!(
            "SELECT EXISTS (SELECT 1 FROM anb_queue_outbox WHERE dead_at_ms IS NULL AND coalesce(",
            claim_of_row!(),
            ", 0) < $1)"
        );
        Ok(
            on_pool!(self, pool => sqlx::query_scalar(SQL).bind(now).fetch_one(pool).await.map_err(QueueError::from_sqlx)?),
        )
    }

    /// Claims up to `batch` unclaimed jobs (or jobs whose claim or backoff ran out) until
    /// `until`, counting an attempt for each.
    async fn claim(&self, now: i64, until: i64, batch: i64) -> Result<Vec<Entry>, QueueError> {
        Ok(match self {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                // SKIP LOCKED: concurrent relays claim different rows instead of waiting.
                sqlx::query_as(concat!(
                    "UPDATE anb_queue_outbox SET ",
                    set_claim!("$2"),
                    ", publish_attempts = publish_attempts + 1
                     WHERE id IN (
                        SELECT id FROM anb_queue_outbox
                        WHERE dead_at_ms IS NULL AND coalesce(",
                    claim_of_row!(),
                    ", 0) < $1
                        ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED
                     )
                     RETURNING id, name, payload, max_attempts, not_before_ms, publish_attempts,
                        unique_key, unique_until_ms, priority::int8 AS priority"
                ))
                .bind(now)
                .bind(until)
                .bind(batch)
                .fetch_all(pool)
                .await
                .map_err(QueueError::from_sqlx)?
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                // One writer at a time: the statement itself is the lock.
                sqlx::query_as(concat!(
                    "UPDATE anb_queue_outbox SET ",
                    set_claim!("?2"),
                    ", publish_attempts = publish_attempts + 1
                     WHERE id IN (
                        SELECT id FROM anb_queue_outbox
                        WHERE dead_at_ms IS NULL AND coalesce(",
                    claim_of_row!(),
                    ", 0) < ?1
                        ORDER BY id LIMIT ?3
                     )
                     RETURNING id, name, payload, max_attempts, not_before_ms, publish_attempts,
                        unique_key, unique_until_ms, priority"
                ))
                .bind(now)
                .bind(until)
                .bind(batch)
                .fetch_all(pool)
                .await
                .map_err(QueueError::from_sqlx)?
            }
        })
    }

    /// Removes published jobs.
    async fn delete(&self, ids: &[i64]) -> Result<(), QueueError> {
        match self {
            #[cfg(feature = "postgres")]
            Store::Postgres(pool) => {
                sqlx::query("DELETE FROM anb_queue_outbox WHERE id = ANY($1)")
                    .bind(ids)
                    .execute(pool)
                    .await
                    .map_err(QueueError::from_sqlx)?;
            }
            #[cfg(feature = "sqlite")]
            Store::Sqlite(pool) => {
                sqlx::query(
                    "DELETE FROM anb_queue_outbox WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(json_ids(ids))
                .execute(pool)
                .await
                .map_err(QueueError::from_sqlx)?;
            }
        }
        Ok(())
    }

    /// Records failed publishes, in one transaction: each job keeps its error and is either
    /// claimed until its retry is due (so no relay, old or new, takes it earlier) or dead.
    async fn settle(&self, settlements: &[Settlement]) -> Result<(), QueueError> {
        const RETRY: &str = concat!(
            "UPDATE anb_queue_outbox SET ",
            set_claim!("$2"),
            ", last_error = $3 WHERE id = $1"
        );
        const DIE: &str = "UPDATE anb_queue_outbox
             SET claimed_until_ms = $2, last_error = $3, dead_at_ms = $4 WHERE id = $1";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(QueueError::from_sqlx)?;
            for settlement in settlements {
                let query = if settlement.death.is_some() {
                    sqlx::query(DIE)
                        .bind(settlement.id)
                        .bind(DEAD_CLAIM)
                        .bind(&settlement.error)
                        .bind(settlement.now_ms)
                } else {
                    sqlx::query(RETRY)
                        .bind(settlement.id)
                        .bind(settlement.retry_at_ms)
                        .bind(&settlement.error)
                };
                query.execute(&mut *tx).await.map_err(QueueError::from_sqlx)?;
            }
            tx.commit().await.map_err(QueueError::from_sqlx)?;
        });
        Ok(())
    }

    /// Gives dead jobs (those of `ids`, or all) back to the relays; returns how many.
    async fn requeue(&self, ids: Option<&[i64]>) -> Result<u64, QueueError> {
        let requeued = match (self, ids) {
            #[cfg(feature = "postgres")]
            (Store::Postgres(pool), ids) => {
                let mut tx = pool.begin().await.map_err(QueueError::from_sqlx)?;
                let done = match ids {
                    Some(ids) => sqlx::query(concat!(
                        "UPDATE anb_queue_outbox SET ",
                        requeue_set!(),
                        " WHERE dead_at_ms IS NOT NULL AND id = ANY($1)"
                    ))
                    .bind(ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?,
                    None => sqlx::query(concat!(
                        "UPDATE anb_queue_outbox SET ",
                        requeue_set!(),
                        " WHERE dead_at_ms IS NOT NULL"
                    ))
                    .execute(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?,
                };
                // The insert trigger does not see an update: wake the relays here, at commit.
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(CHANNEL)
                    .execute(&mut *tx)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                tx.commit().await.map_err(QueueError::from_sqlx)?;
                done.rows_affected()
            }
            #[cfg(feature = "sqlite")]
            (Store::Sqlite(pool), Some(ids)) => sqlx::query(concat!(
                "UPDATE anb_queue_outbox SET ",
                requeue_set!(),
                " WHERE dead_at_ms IS NOT NULL AND id IN (SELECT value FROM json_each(?1))"
            ))
            .bind(json_ids(ids))
            .execute(pool)
            .await
            .map_err(QueueError::from_sqlx)?
            .rows_affected(),
            #[cfg(feature = "sqlite")]
            (Store::Sqlite(pool), None) => sqlx::query(concat!(
                "UPDATE anb_queue_outbox SET ",
                requeue_set!(),
                " WHERE dead_at_ms IS NOT NULL"
            ))
            .execute(pool)
            .await
            .map_err(QueueError::from_sqlx)?
            .rows_affected(),
        };
        Ok(requeued)
    }
}

/// Writes one job into the outbox on a PostgreSQL connection.
#[cfg(feature = "postgres")]
pub(crate) async fn insert_postgres(
    conn: &mut PgConnection,
    job: &NewJob,
) -> Result<i64, QueueError> {
    let now = now_ms();
    let id = sqlx::query_scalar(
        "INSERT INTO anb_queue_outbox
             (name, payload, max_attempts, not_before_ms, created_at_ms, priority)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(job.name)
    .bind(&job.payload)
    .bind(i64::from(job.max_attempts))
    .bind(now.saturating_add(millis(job.delay)))
    .bind(now)
    .bind(i16::from(job.priority.level()))
    .fetch_one(conn)
    .await
    .map_err(QueueError::from_sqlx)?;
    Ok(id)
}

/// Writes one job into the outbox on a SQLite connection.
#[cfg(feature = "sqlite")]
pub(crate) async fn insert_sqlite(
    conn: &mut SqliteConnection,
    job: &NewJob,
) -> Result<i64, QueueError> {
    let now = now_ms();
    let id = sqlx::query_scalar(
        "INSERT INTO anb_queue_outbox
             (name, payload, max_attempts, not_before_ms, created_at_ms, priority)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
    )
    .bind(job.name)
    .bind(&job.payload)
    .bind(i64::from(job.max_attempts))
    .bind(now.saturating_add(millis(job.delay)))
    .bind(now)
    .bind(i64::from(job.priority.level()))
    .fetch_one(conn)
    .await
    .map_err(QueueError::from_sqlx)?;
    Ok(id)
}

/// Writes a keyed row (see the schema's version 3), whose claim `claimed_until_ms` keeps
/// from older relays.
#[cfg(feature = "postgres")]
const POSTGRES_INSERT_KEYED: &str = "INSERT INTO anb_queue_outbox
        (name, payload, max_attempts, not_before_ms, created_at_ms, unique_key, claimed_until_ms,
         priority)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id";

/// Takes a period key (a fresh one, or one whose period is over) for a new entry's id drawn
/// from the outbox's sequence, and writes the entry only if the key was taken; else reads
/// the holder. `ON CONFLICT` waits for a concurrent transaction that took the key to end;
/// the holder is read in the statement's snapshot, so one committed meanwhile reads as no
/// row: try again (the next statement sees it).
#[cfg(feature = "postgres")]
const POSTGRES_INSERT_FOR_PERIOD: &str = "WITH new_entry AS (
        SELECT nextval(pg_get_serial_sequence('anb_queue_outbox', 'id')) AS id
     ),
     taken AS (
        INSERT INTO anb_queue_outbox_unique AS k (name, unique_key, entry_id, unique_until_ms)
        SELECT $1, $6, id, $7 FROM new_entry
        ON CONFLICT (name, unique_key) DO UPDATE
        SET entry_id = EXCLUDED.entry_id, unique_until_ms = EXCLUDED.unique_until_ms
        WHERE k.unique_until_ms <= $5
        RETURNING entry_id
     ),
     inserted AS (
        INSERT INTO anb_queue_outbox (id, name, payload, max_attempts, not_before_ms,
            created_at_ms, unique_key, unique_until_ms, claimed_until_ms, priority)
        OVERRIDING SYSTEM VALUE
        SELECT entry_id, $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM taken
        RETURNING id
     )
     SELECT id, false AS duplicate FROM inserted
     UNION ALL
     SELECT entry_id, true FROM anb_queue_outbox_unique
     WHERE name = $1 AND unique_key = $6 AND NOT EXISTS (SELECT 1 FROM taken)";

/// Writes one job with a unique key into the outbox on a PostgreSQL connection.
#[cfg(feature = "postgres")]
pub(crate) async fn insert_unique_postgres(
    conn: &mut PgConnection,
    job: &NewJob,
) -> Result<OutboxEnqueued, QueueError> {
    let Some(unique) = &job.unique else {
        let id = insert_postgres(conn, job).await?;
        return Ok(OutboxEnqueued {
            id,
            duplicate: false,
        });
    };
    let now = now_ms();
    let not_before = now.saturating_add(millis(job.delay));
    let Some(period) = unique.period else {
        let id = sqlx::query_scalar(POSTGRES_INSERT_KEYED)
            .bind(job.name)
            .bind(&job.payload)
            .bind(i64::from(job.max_attempts))
            .bind(not_before)
            .bind(now)
            .bind(&unique.key)
            .bind(DEAD_CLAIM)
            .bind(i16::from(job.priority.level()))
            .fetch_one(conn)
            .await
            .map_err(QueueError::from_sqlx)?;
        return Ok(OutboxEnqueued {
            id,
            duplicate: false,
        });
    };
    for _ in 0..crate::backend::UNIQUE_ATTEMPTS {
        let row: Option<(i64, bool)> = sqlx::query_as(POSTGRES_INSERT_FOR_PERIOD)
            .bind(job.name)
            .bind(&job.payload)
            .bind(i64::from(job.max_attempts))
            .bind(not_before)
            .bind(now)
            .bind(&unique.key)
            .bind(now.saturating_add(millis(period)))
            .bind(DEAD_CLAIM)
            .bind(i16::from(job.priority.level()))
            .fetch_optional(&mut *conn)
            .await
            .map_err(QueueError::from_sqlx)?;
        if let Some((id, duplicate)) = row {
            return Ok(OutboxEnqueued { id, duplicate });
        }
    }
    Err(QueueError::UniqueKeyContended {
        job: job.name,
        key: unique.key.clone(),
    })
}

/// Writes one job with a unique key into the outbox on a SQLite connection, within a
/// savepoint in the caller's transaction. Its first statement writes, so the transaction
/// holds the file's write lock before it reads who holds a period key: no other writer can
/// take the key in between.
#[cfg(feature = "sqlite")]
pub(crate) async fn insert_unique_sqlite(
    conn: &mut SqliteConnection,
    job: &NewJob,
) -> Result<OutboxEnqueued, QueueError> {
    use sqlx::Connection as _;

    const INSERT_KEYED: &str = "INSERT INTO anb_queue_outbox (name, payload, max_attempts,
            not_before_ms, created_at_ms, unique_key, unique_until_ms, claimed_until_ms, priority)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id";
    let Some(unique) = &job.unique else {
        let id = insert_sqlite(conn, job).await?;
        return Ok(OutboxEnqueued {
            id,
            duplicate: false,
        });
    };
    let now = now_ms();
    let until = unique
        .period
        .map(|period| now.saturating_add(millis(period)));
    let mut tx = conn.begin().await.map_err(QueueError::from_sqlx)?;
    if let Some(until) = until {
        // The key first, with a placeholder holder, so the first statement is the write.
        let taken: Option<i64> = sqlx::query_scalar(
            "INSERT INTO anb_queue_outbox_unique (name, unique_key, entry_id, unique_until_ms)
             VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (name, unique_key) DO UPDATE
             SET entry_id = 0, unique_until_ms = excluded.unique_until_ms
             WHERE unique_until_ms <= ?4
             RETURNING 1",
        )
        .bind(job.name)
        .bind(&unique.key)
        .bind(until)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(QueueError::from_sqlx)?;
        if taken.is_none() {
            let holder: i64 = sqlx::query_scalar(
                "SELECT entry_id FROM anb_queue_outbox_unique WHERE name = ?1 AND unique_key = ?2",
            )
            .bind(job.name)
            .bind(&unique.key)
            .fetch_one(&mut *tx)
            .await
            .map_err(QueueError::from_sqlx)?;
            tx.commit().await.map_err(QueueError::from_sqlx)?;
            return Ok(OutboxEnqueued {
                id: holder,
                duplicate: true,
            });
        }
    }
    let id: i64 = sqlx::query_scalar(INSERT_KEYED)
        .bind(job.name)
        .bind(&job.payload)
        .bind(i64::from(job.max_attempts))
        .bind(now.saturating_add(millis(job.delay)))
        .bind(now)
        .bind(&unique.key)
        .bind(until)
        .bind(DEAD_CLAIM)
        .bind(i64::from(job.priority.level()))
        .fetch_one(&mut *tx)
        .await
        .map_err(QueueError::from_sqlx)?;
    if until.is_some() {
        sqlx::query(
            "UPDATE anb_queue_outbox_unique SET entry_id = ?3 WHERE name = ?1 AND unique_key = ?2",
        )
        .bind(job.name)
        .bind(&unique.key)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(QueueError::from_sqlx)?;
    }
    tx.commit().await.map_err(QueueError::from_sqlx)?;
    Ok(OutboxEnqueued {
        id,
        duplicate: false,
    })
}

/// The relay's `LISTEN` connection on PostgreSQL, reopened when it drops; while it is down
/// the relay only polls.
#[derive(Debug, Default)]
struct Listener(
    #[cfg(feature = "postgres")] Option<PgListener>,
    #[cfg(not(feature = "postgres"))] Option<std::convert::Infallible>,
);

impl Listener {
    #[cfg(feature = "postgres")]
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
        #[cfg(feature = "postgres")]
        if listener.recv().await.is_err() {
            // The connection dropped (notifications may be lost): poll once, then reopen.
            self.0 = None;
        }
        #[cfg(not(feature = "postgres"))]
        match *listener {}
    }
}

/// Ids as a JSON array, so one SQLite statement can take a whole batch through `json_each`.
#[cfg(feature = "sqlite")]
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
