//! A transactional outbox, for queues that are not the application's database (SQS, Redis).
//!
//! The application writes a job into the outbox table inside its own PostgreSQL
//! transaction, so the job commits or rolls back with its business rows; a [`Relay`] then
//! publishes committed jobs to the queue and marks them sent. While the queue is unreachable
//! the relay keeps the jobs and retries with backoff, so a job whose transaction committed is
//! never lost. Delivery stays at-least-once: if the queue accepted a batch but marking it sent
//! failed, the batch is published again.
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
//! # impl anb_queue::Job for Transcode { const NAME: &'static str = "transcode"; }
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use anb_queue::{Outbox, Queue};
//!
//! let outbox = Outbox::setup(pool.clone()).await?;
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO videos (id) VALUES (1)").execute(&mut *tx).await?;
//! Outbox::enqueue_tx(&mut *tx, &Transcode { video_id: 1 }).await?;
//! tx.commit().await?;
//!
//! // Somewhere in the service: publish to SQS until shutdown.
//! outbox
//!     .relay(|| Queue::connect("sqs://transcode"))
//!     .run_until(anb_queue::shutdown_signal())
//!     .await?;
//! # Ok(()) }
//! ```

use std::{
    collections::HashSet,
    future::Future,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use sqlx::{PgConnection, PgPool, Row, postgres::PgListener};

use crate::{backend::NewJob, error::QueueError, job::Job, queue::Queue, sqlite::now_ms};

const CHANNEL: &str = "anb_queue_outbox";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS anb_queue_outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        payload TEXT NOT NULL,
        max_attempts INT NOT NULL,
        not_before_ms BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        sent_at TIMESTAMPTZ,
        publish_attempts INT NOT NULL DEFAULT 0,
        last_error TEXT
    )",
    "CREATE INDEX IF NOT EXISTS anb_queue_outbox_unsent ON anb_queue_outbox (id) WHERE sent_at IS NULL",
    "CREATE OR REPLACE FUNCTION anb_queue_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN PERFORM pg_notify('anb_queue_outbox', ''); RETURN NULL; END $$",
    // Statement level, delivered at commit: the relay wakes once the job is committed.
    "DROP TRIGGER IF EXISTS anb_queue_outbox_notify ON anb_queue_outbox",
    "CREATE TRIGGER anb_queue_outbox_notify AFTER INSERT ON anb_queue_outbox
     FOR EACH STATEMENT EXECUTE FUNCTION anb_queue_outbox_notify()",
];

/// Arbitrary constant key for the advisory lock that serializes concurrent `setup`s.
const SETUP_LOCK_KEY: i64 = 0x616e_625f_6f75_7462; // "anb_outb"

/// The outbox table in an application's PostgreSQL database.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: PgPool,
}

impl Outbox {
    /// Creates the outbox table (`anb_queue_outbox`) if missing.
    pub async fn setup(pool: PgPool) -> Result<Self, QueueError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SETUP_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Self { pool })
    }

    /// Writes a job into the outbox on the caller's connection, typically inside its
    /// transaction: the job is published once that transaction commits, and never if it
    /// rolls back. Returns the outbox row's id.
    pub async fn enqueue_tx<J: Job>(conn: &mut PgConnection, job: &J) -> Result<i64, QueueError> {
        Self::enqueue_in_tx(conn, job, Duration::ZERO).await
    }

    /// Like [`Outbox::enqueue_tx`], for a job to run once `delay` has passed (counted from
    /// now, however late the relay publishes it).
    pub async fn enqueue_in_tx<J: Job>(
        conn: &mut PgConnection,
        job: &J,
        delay: Duration,
    ) -> Result<i64, QueueError> {
        let payload = serde_json::to_string(job).map_err(|source| QueueError::Serialize {
            job: J::NAME,
            source,
        })?;
        let not_before =
            now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO anb_queue_outbox (name, payload, max_attempts, not_before_ms)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(J::NAME)
        .bind(payload)
        .bind(i32::try_from(J::MAX_ATTEMPTS.max(1)).unwrap_or(i32::MAX))
        .bind(not_before)
        .fetch_one(conn)
        .await?;
        Ok(id)
    }

    /// Counts jobs written but not yet published.
    pub async fn pending(&self) -> Result<u64, QueueError> {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM anb_queue_outbox WHERE sent_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(pending).unwrap_or(0))
    }

    /// A relay publishing this outbox to the queue that `connect` opens (called again
    /// until it succeeds, so the relay can start while the queue is down).
    pub fn relay<C, Fut>(&self, connect: C) -> Relay<C>
    where
        C: FnMut() -> Fut,
        Fut: Future<Output = Result<Queue, QueueError>>,
    {
        Relay {
            pool: self.pool.clone(),
            connect,
            batch: 100,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Publishes an outbox's committed jobs to a queue; see [`Outbox::relay`].
#[derive(Debug)]
pub struct Relay<C> {
    pool: PgPool,
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

    /// Runs until `shutdown` completes.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), QueueError> {
        tokio::pin!(shutdown);
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let mut queue: Option<Queue> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            let outcome = match &queue {
                None => match (self.connect)().await {
                    Ok(connected) => {
                        queue = Some(connected);
                        continue;
                    }
                    Err(error) => Err(error),
                },
                Some(queue) => self.publish_batch(queue).await,
            };
            let wait = match outcome {
                Ok(published) if published > 0 => {
                    backoff = Duration::from_millis(50);
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
                _ = listener.recv() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes up to one batch of unsent jobs and marks them sent, in one transaction
    /// that locks them so relays on several hosts never publish the same rows at once.
    async fn publish_batch(&self, queue: &Queue) -> Result<u64, QueueError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, name, payload, max_attempts, not_before_ms FROM anb_queue_outbox
             WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut ids = Vec::with_capacity(rows.len());
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.try_get::<i64, _>("id")?);
            let name: String = row.try_get("name")?;
            let not_before: i64 = row.try_get("not_before_ms")?;
            jobs.push((
                name,
                row.try_get::<String, _>("payload")?,
                u32::try_from(row.try_get::<i32, _>("max_attempts")?).unwrap_or(1),
                Duration::from_millis(u64::try_from(not_before - now).unwrap_or(0)),
            ));
        }
        let new_jobs: Vec<NewJob> = jobs
            .iter()
            .map(|(name, payload, max_attempts, delay)| NewJob {
                name: intern(name),
                payload: payload.clone(),
                max_attempts: *max_attempts,
                delay: *delay,
            })
            .collect();
        match queue.backend().enqueue(&new_jobs).await {
            Ok(_) => {
                sqlx::query("UPDATE anb_queue_outbox SET sent_at = now(), publish_attempts = publish_attempts + 1 WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                metrics::counter!("anb_queue_outbox_published_total").increment(ids.len() as u64);
                Ok(ids.len() as u64)
            }
            Err(error) => {
                sqlx::query("UPDATE anb_queue_outbox SET publish_attempts = publish_attempts + 1, last_error = $2 WHERE id = ANY($1)")
                    .bind(&ids)
                    .bind(error.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Err(error)
            }
        }
    }
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
