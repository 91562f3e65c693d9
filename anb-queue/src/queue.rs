//! The handle applications hold: connect from a URL, enqueue, inspect.

#[cfg(any(feature = "postgres", feature = "sqlite"))]
use std::future::Future;
use std::{sync::Arc, time::Duration};

#[cfg(feature = "postgres")]
use sqlx::{PgConnection, PgPool, postgres::PgPoolOptions};
#[cfg(feature = "sqlite")]
use sqlx::{SqliteConnection, SqlitePool};

#[cfg(feature = "postgres")]
use crate::postgres::{self, PostgresBackend};
#[cfg(feature = "redis")]
use crate::redis;
#[cfg(feature = "sqlite")]
use crate::sqlite::{self, SqliteBackend};
#[cfg(feature = "sqs")]
use crate::sqs::{self, SqsBackend};
use crate::{
    backend::{Backend, BackendKind, Cancelled, DeadJob, JobId, JobInfo, NewJob, SharedBackend},
    error::QueueError,
    job::Job,
    priority::Priority,
    stats::{PollCounter, PollCounts, QueueStats},
    unique::{Enqueued, Unique},
};

/// A job queue over the backend named by a URL.
///
/// Cheap to clone: clones share the backend's connection pool. `Queue` never exposes which
/// backend it runs on in its types, so code holding one works with all of them.
#[derive(Debug, Clone)]
pub struct Queue {
    backend: SharedBackend,
    polls: Arc<PollCounter>,
}

impl Queue {
    /// Connects to the backend named by `url` and creates or upgrades the queue's tables.
    ///
    /// - `postgres://user@host/db` (or `postgresql://`): jobs in table `anb_queue_jobs`;
    /// - `sqlite://path/to/file.db`: the file is created if missing and switched to WAL;
    /// - `redis://host:6379/0?queue=name`: keys under `anb_queue:{name}:` (default `default`);
    /// - `sqs://queue-name` (resolved with `GetQueueUrl`) or a full queue URL
    ///   (`https://sqs.<region>.amazonaws.com/<account>/<name>`, or an SQS-compatible server's
    ///   `http://host:port/<account>/<name>`, which is then also the endpoint), configured
    ///   like any AWS SDK client (`AWS_REGION`, `AWS_ENDPOINT_URL`, credentials). The queue
    ///   needs a redrive policy: its dead-letter queue holds the dead jobs. `?wait_seconds=`
    ///   sets the long-poll wait (default 20).
    ///
    /// The tables can share a database with an application's own: their schema is versioned
    /// in `anb_queue_schema`, apart from sqlx's migration history.
    ///
    /// Each backend is behind the cargo feature of its name (`postgres`, `sqlite`, `redis`,
    /// `sqs`); a URL for one this build leaves out is refused with
    /// [`QueueError::BackendNotEnabled`].
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .ok_or_else(|| QueueError::InvalidUrl {
                url: redact(url),
                reason: "no scheme (expected postgres://, sqlite://, redis://, sqs:// or an SQS queue URL)".to_owned(),
            })?;
        match scheme.as_str() {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let pool = PgPoolOptions::new()
                    .max_connections(10)
                    .connect(url)
                    .await
                    .map_err(QueueError::from_sqlx)?;
                Self::from_postgres_pool(pool).await
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => Self::from_sqlite_pool(sqlite::connect(url).await?).await,
            #[cfg(feature = "redis")]
            "redis" | "rediss" => Ok(Self::with_backend(redis::connect(url).await?)),
            #[cfg(feature = "sqs")]
            "sqs" | "http" | "https" => Ok(Self::with_backend(sqs::connect(url).await?)),
            other => Err(match feature_of_scheme(other) {
                Some(feature) => QueueError::BackendNotEnabled { feature },
                None => QueueError::UnsupportedUrl { scheme },
            }),
        }
    }

    #[cfg(feature = "postgres")]
    /// Uses an existing PostgreSQL pool (e.g. the application's own) and sets up the tables.
    ///
    /// Enqueues and statistics use this pool. Workers also open up to four connections of
    /// their own for lease operations (tuned for them: asynchronous commit, index-only plans)
    /// and one `LISTEN` connection, with the same connect options.
    pub async fn from_postgres_pool(pool: PgPool) -> Result<Self, QueueError> {
        postgres::setup(&pool).await?;
        Ok(Self::with_backend(PostgresBackend::new(pool)))
    }

    #[cfg(feature = "sqlite")]
    /// Uses an existing SQLite pool and sets up the tables. Prefer [`Queue::connect`], which
    /// opens the file with the settings the queue is tuned for (WAL, one writer).
    pub async fn from_sqlite_pool(pool: SqlitePool) -> Result<Self, QueueError> {
        sqlite::setup(&pool).await?;
        Ok(Self::with_backend(SqliteBackend::new(pool)))
    }

    #[cfg(feature = "sqs")]
    /// Uses an already configured SQS client (region, endpoint, credentials) for the queue
    /// at `queue_url`, which needs a redrive policy (see [`Queue::connect`]).
    pub async fn from_sqs_client(
        client: aws_sdk_sqs::Client,
        queue_url: &str,
    ) -> Result<Self, QueueError> {
        Ok(Self::with_backend(
            SqsBackend::from_client(client, queue_url).await?,
        ))
    }

    /// How many requests the queue has sent to a service that bills per request (SQS), or
    /// `None` for the other backends.
    pub fn requests_sent(&self) -> Option<u64> {
        self.backend.requests_sent()
    }

    /// [`Queue::requests_sent`] by operation (for SQS: `SendMessageBatch`, `ReceiveMessage`,
    /// `DeleteMessageBatch`, ...), or `None` where requests are not counted.
    pub fn requests_by_operation(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        self.backend.requests_by_operation()
    }

    /// A queue over a backend built by the caller: one of another crate, implementing
    /// [`Backend`] by its contract (see the [`backend`](crate::backend) module), or one of
    /// this crate's configured by hand. Workers and the operator calls work on it as on the
    /// built-in ones.
    pub fn with_backend(backend: impl Backend) -> Self {
        Self {
            backend: Arc::new(backend),
            polls: Arc::default(),
        }
    }

    /// The storage engine under this queue, for tools and tests that drive leases directly
    /// (claims, lease operations; see [`Backend`]). Applications use the queue's own methods
    /// and [`Worker`](crate::Worker)s.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub(crate) fn poll_counter(&self) -> &Arc<PollCounter> {
        &self.polls
    }

    /// How often the workers on this queue handle (and its clones) have claimed, found
    /// nothing, and looked up the next due job: an idle worker claims about once per poll
    /// interval (also published as `anb_queue_claims_total{result}`).
    pub fn poll_counts(&self) -> PollCounts {
        self.polls.snapshot()
    }

    /// Which engine the queue runs on.
    pub fn kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Whether the backend enforces unique keys ([`Queue::enqueue_unique`]), which periodic
    /// jobs ([`Worker::periodic`](crate::Worker::periodic)) need: PostgreSQL, SQLite and
    /// Redis do; SQS does not.
    pub fn supports_unique_jobs(&self) -> bool {
        self.backend.supports_unique()
    }

    /// Whether the backend takes due jobs highest priority first ([`Priority`]): PostgreSQL,
    /// SQLite and Redis do; SQS does not, and refuses jobs of any priority but the default.
    pub fn supports_priorities(&self) -> bool {
        self.backend.supports_priorities()
    }

    /// Enqueues a job to run as soon as a worker is free.
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<JobId, QueueError> {
        self.enqueue_in(job, Duration::ZERO).await
    }

    /// Enqueues a job to run once `delay` has passed (millisecond precision).
    pub async fn enqueue_in<J: Job>(&self, job: &J, delay: Duration) -> Result<JobId, QueueError> {
        let enqueued = self
            .enqueue_with(job, EnqueueOptions::new().delay(delay))
            .await?;
        Ok(enqueued.id)
    }

    /// Enqueues a job unless a job of its name holds the same unique key: returns the new
    /// job's id, or the holder's with `duplicate` set (nothing is enqueued then). Enforced
    /// by the backend atomically, across processes. PostgreSQL, SQLite and Redis; SQS
    /// answers [`QueueError::UnsupportedByBackend`] (a standard queue cannot deduplicate).
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
    /// # impl anb_queue::Job for Transcode { const NAME: &'static str = "transcode"; }
    /// # async fn example(queue: anb_queue::Queue) -> Result<(), anb_queue::QueueError> {
    /// use anb_queue::Unique;
    ///
    /// let first = queue.enqueue_unique(&Transcode { video_id: 1 }, Unique::key("video:1")).await?;
    /// let again = queue.enqueue_unique(&Transcode { video_id: 1 }, Unique::key("video:1")).await?;
    /// assert!(again.duplicate && again.id == first.id);
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_unique<J: Job>(
        &self,
        job: &J,
        unique: Unique,
    ) -> Result<Enqueued, QueueError> {
        self.enqueue_unique_in(job, unique, Duration::ZERO).await
    }

    /// Like [`Queue::enqueue_unique`], to run once `delay` has passed.
    pub async fn enqueue_unique_in<J: Job>(
        &self,
        job: &J,
        unique: Unique,
        delay: Duration,
    ) -> Result<Enqueued, QueueError> {
        self.enqueue_with(job, EnqueueOptions::new().delay(delay).unique(unique))
            .await
    }

    /// Enqueues a job with options ([`EnqueueOptions`]): a delay, a priority other than its
    /// type's ([`Job::PRIORITY`]), a unique key. Returns the job's id, with `duplicate` set
    /// when a unique key's holder answered instead (never without a key).
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
    /// # impl anb_queue::Job for Transcode { const NAME: &'static str = "transcode"; }
    /// # async fn example(queue: anb_queue::Queue) -> Result<(), anb_queue::QueueError> {
    /// use std::time::Duration;
    /// use anb_queue::{EnqueueOptions, Priority, Unique};
    ///
    /// let backfill = EnqueueOptions::new()
    ///     .priority(Priority::new(7))
    ///     .delay(Duration::from_secs(60))
    ///     .unique(Unique::key("video:1"));
    /// let enqueued = queue.enqueue_with(&Transcode { video_id: 1 }, backfill).await?;
    /// # let _ = enqueued; Ok(()) }
    /// ```
    pub async fn enqueue_with<J: Job>(
        &self,
        job: &J,
        options: EnqueueOptions,
    ) -> Result<Enqueued, QueueError> {
        let new_job = options.apply(new_job(job, Duration::ZERO)?);
        self.check_priority(&new_job)?;
        if new_job.unique.is_some() {
            return self.backend.enqueue_unique(&new_job).await;
        }
        let mut ids = self.backend.enqueue(std::slice::from_ref(&new_job)).await?;
        Ok(Enqueued {
            id: ids.remove(0),
            duplicate: false,
        })
    }

    /// Refuses a priority the backend cannot honour (SQS has no ordering to give).
    fn check_priority(&self, job: &NewJob) -> Result<(), QueueError> {
        if job.priority == Priority::HIGHEST || self.backend.supports_priorities() {
            return Ok(());
        }
        Err(QueueError::UnsupportedByBackend {
            backend: self.backend.kind().as_str(),
            operation: "job priorities",
        })
    }

    /// Enqueues many jobs at once and returns their ids in order.
    ///
    /// On PostgreSQL and SQLite the jobs are stored all or none. Redis stores a batch of
    /// more than 1,000 jobs 1,000 per script call, so one call never holds the server for
    /// long, each chunk all or none. SQS takes or refuses each message of a batch on its own.
    /// When some jobs were stored and others not, the error is
    /// [`QueueError::PartlyEnqueued`], whose `ids` say which were (enqueue only the others
    /// again); any other error means none was.
    pub async fn enqueue_bulk<J: Job>(&self, jobs: &[J]) -> Result<Vec<JobId>, QueueError> {
        let new_jobs = jobs
            .iter()
            .map(|job| new_job(job, Duration::ZERO))
            .collect::<Result<Vec<_>, _>>()?;
        if new_jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.check_priority(&new_jobs[0])?;
        self.backend.enqueue(&new_jobs).await
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    /// Enqueues a job on the caller's connection, typically inside its transaction, so the
    /// job commits or rolls back with the caller's own writes:
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Transcode { video_id: i64 }
    /// # impl anb_queue::Job for Transcode { const NAME: &'static str = "transcode"; }
    /// # async fn example(pool: sqlx::PgPool, queue: anb_queue::Queue) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO videos (id) VALUES (1)").execute(&mut *tx).await?;
    /// queue.enqueue_tx(&mut *tx, &Transcode { video_id: 1 }).await?;
    /// tx.commit().await?; // the video and its job, or neither
    /// # Ok(()) }
    /// ```
    ///
    /// The connection must belong to the queue's own database and engine (a
    /// [`PgConnection`] for a PostgreSQL queue, a [`SqliteConnection`] for SQLite).
    pub async fn enqueue_tx<C, J>(&self, conn: &mut C, job: &J) -> Result<JobId, QueueError>
    where
        C: TransactionalConnection,
        J: Job,
    {
        let mut ids = self
            .enqueue_bulk_tx(conn, std::slice::from_ref(job))
            .await?;
        Ok(ids.remove(0))
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    /// Refuses a transaction on another engine than this queue's.
    fn check_connection<C: TransactionalConnection>(&self) -> Result<(), QueueError> {
        if self.backend.kind() == C::KIND {
            return Ok(());
        }
        Err(QueueError::TransactionMismatch {
            connection: C::KIND.as_str(),
            backend: self.backend.kind().as_str(),
        })
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    /// Like [`Queue::enqueue_tx`], for many jobs.
    pub async fn enqueue_bulk_tx<C, J>(
        &self,
        conn: &mut C,
        jobs: &[J],
    ) -> Result<Vec<JobId>, QueueError>
    where
        C: TransactionalConnection,
        J: Job,
    {
        self.check_connection::<C>()?;
        let new_jobs = jobs
            .iter()
            .map(|job| new_job(job, Duration::ZERO))
            .collect::<Result<Vec<_>, _>>()?;
        if new_jobs.is_empty() {
            return Ok(Vec::new());
        }
        conn.insert_jobs(&new_jobs).await
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    /// Like [`Queue::enqueue_unique`], on the caller's connection (see
    /// [`Queue::enqueue_tx`]): the job, or the answer that it is a duplicate, commits or rolls
    /// back with the caller's writes. A key held by a job another transaction is enqueueing
    /// makes this one wait for that transaction to end (PostgreSQL) or for the write lock
    /// (SQLite).
    pub async fn enqueue_unique_tx<C, J>(
        &self,
        conn: &mut C,
        job: &J,
        unique: Unique,
    ) -> Result<Enqueued, QueueError>
    where
        C: TransactionalConnection,
        J: Job,
    {
        self.check_connection::<C>()?;
        let new_job = EnqueueOptions::new()
            .unique(unique)
            .apply(new_job(job, Duration::ZERO)?);
        conn.insert_unique_job(&new_job).await
    }

    /// Counts jobs by state, and publishes the counts as gauges (`anb_queue_jobs{state}`,
    /// `anb_queue_oldest_ready_age_seconds`).
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let stats = self.backend.stats().await?;
        stats.record_gauges();
        Ok(stats)
    }

    /// Lists dead-lettered jobs with their last error, newest first.
    pub async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        self.backend.dead_jobs(limit).await
    }

    /// The next page of dead jobs, newest first: the `limit` after the job `after` (the last
    /// of the previous page), or the first page when `None`. Not on SQS.
    pub async fn dead_jobs_after(
        &self,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, QueueError> {
        self.backend.dead_jobs_after(after, limit).await
    }

    /// A stored job's state, attempts, last error and progress; `None` when the queue no
    /// longer holds it (finished jobs are deleted). Not on SQS, whose API has no lookup by
    /// id.
    pub async fn job(&self, id: &JobId) -> Result<Option<JobInfo>, QueueError> {
        self.backend.job(id).await
    }

    /// Cancels a job, from any process: a waiting job (due or delayed) is deleted and never
    /// runs; a running one is flagged, and its worker fires the handler's
    /// [`JobContext::cancelled`](crate::JobContext::cancelled) with
    /// [`CancelReason::Cancelled`](crate::CancelReason::Cancelled) at its next lease renewal
    /// (within a third of the lease), then removes the job whatever the handler returns.
    /// See [`Cancelled`] for the answers. PostgreSQL, SQLite and Redis; SQS answers
    /// [`QueueError::UnsupportedByBackend`] (its API deletes a message only through the
    /// receipt of the consumer holding it).
    ///
    /// ```no_run
    /// # async fn example(queue: anb_queue::Queue, id: anb_queue::JobId) -> Result<(), anb_queue::QueueError> {
    /// use anb_queue::Cancelled;
    ///
    /// match queue.cancel(&id).await? {
    ///     Cancelled::Removed => println!("it will not run"),
    ///     Cancelled::Requested => println!("its handler is told to stop"),
    ///     _ => println!("nothing to cancel: it finished, or is dead"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self, id: &JobId) -> Result<Cancelled, QueueError> {
        self.backend.cancel(id).await
    }

    /// Cancels the job of type `J` holding the unique key `key` (the key given to
    /// [`Unique::key`]; for [`Unique::by_args`], [`Unique::key_for`] computes it), as
    /// [`Queue::cancel`] does; [`Cancelled::NotFound`] when no job holds the key.
    pub async fn cancel_unique<J: Job>(&self, key: &str) -> Result<Cancelled, QueueError> {
        match self.backend.unique_holder(J::NAME, key).await? {
            Some(id) => self.backend.cancel(&id).await,
            None => Ok(Cancelled::NotFound),
        }
    }

    /// Whether the backend cancels jobs ([`Queue::cancel`]): PostgreSQL, SQLite and Redis do;
    /// SQS does not.
    pub fn supports_cancel(&self) -> bool {
        self.backend.supports_cancel()
    }

    /// Puts dead jobs back in the queue, due now, with a fresh set of attempts; ids that are
    /// not dead are skipped. Returns how many were requeued. Not on SQS: redrive its
    /// dead-letter queue instead (console, or `StartMessageMoveTask`).
    pub async fn requeue_dead(&self, ids: &[JobId]) -> Result<u64, QueueError> {
        self.backend.requeue_dead(ids).await
    }

    /// Deletes the dead jobs that died more than `older_than` ago; returns how many. Not on
    /// SQS, where the dead-letter queue's retention period does it.
    pub async fn prune_dead(&self, older_than: Duration) -> Result<u64, QueueError> {
        self.backend.prune_dead(older_than).await
    }
}

/// How one job is enqueued ([`Queue::enqueue_with`]): when it may run, its priority, its
/// unique key. The default runs it now, at its type's priority, without a key.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct EnqueueOptions {
    delay: Duration,
    priority: Option<Priority>,
    unique: Option<Unique>,
}

impl EnqueueOptions {
    /// Now, at the job type's priority, without a unique key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the job once `delay` has passed (millisecond precision).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Gives the job this priority instead of its type's ([`Job::PRIORITY`]).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Makes the enqueue unique (see [`Queue::enqueue_unique`]).
    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = Some(unique);
        self
    }

    /// The job as these options have it.
    fn apply(self, mut job: NewJob) -> NewJob {
        job.delay = self.delay;
        if let Some(priority) = self.priority {
            job.priority = priority;
        }
        job.unique = self.unique.map(|unique| unique.resolve(&job.payload));
        job
    }
}

/// The cargo feature that builds the backend of a URL scheme.
fn feature_of_scheme(scheme: &str) -> Option<&'static str> {
    match scheme {
        "postgres" | "postgresql" => Some("postgres"),
        "sqlite" => Some("sqlite"),
        "redis" | "rediss" => Some("redis"),
        "sqs" | "http" | "https" => Some("sqs"),
        _ => None,
    }
}

fn new_job<J: Job>(job: &J, delay: Duration) -> Result<NewJob, QueueError> {
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

/// Removes a password from a URL before it appears in an error.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable>".to_owned(),
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::PgConnection {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::SqliteConnection {}
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
/// A database connection a job can be enqueued on, in a queue's table or in an
/// [`Outbox`](crate::Outbox): [`PgConnection`] or [`SqliteConnection`] (pass `&mut *tx` for a
/// transaction).
pub trait TransactionalConnection: sealed::Sealed + Send {
    /// The engine this connection talks to.
    const KIND: BackendKind;

    #[doc(hidden)]
    fn insert_jobs(
        &mut self,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<JobId>, QueueError>> + Send;

    #[doc(hidden)]
    fn insert_unique_job(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<Enqueued, QueueError>> + Send;

    #[doc(hidden)]
    fn insert_outbox(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<i64, QueueError>> + Send;

    #[doc(hidden)]
    fn insert_outbox_unique(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<crate::outbox::OutboxEnqueued, QueueError>> + Send;
}

#[cfg(feature = "postgres")]
impl TransactionalConnection for PgConnection {
    const KIND: BackendKind = BackendKind::Postgres;

    fn insert_jobs(
        &mut self,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<JobId>, QueueError>> + Send {
        postgres::insert_jobs(self, jobs)
    }

    fn insert_unique_job(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<Enqueued, QueueError>> + Send {
        postgres::insert_unique_job(self, job)
    }

    fn insert_outbox(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<i64, QueueError>> + Send {
        crate::outbox::insert_postgres(self, job)
    }

    fn insert_outbox_unique(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<crate::outbox::OutboxEnqueued, QueueError>> + Send {
        crate::outbox::insert_unique_postgres(self, job)
    }
}

#[cfg(feature = "sqlite")]
impl TransactionalConnection for SqliteConnection {
    const KIND: BackendKind = BackendKind::Sqlite;

    fn insert_jobs(
        &mut self,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<JobId>, QueueError>> + Send {
        sqlite::insert_jobs(self, jobs)
    }

    fn insert_unique_job(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<Enqueued, QueueError>> + Send {
        sqlite::insert_unique_job(self, job)
    }

    fn insert_outbox(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<i64, QueueError>> + Send {
        crate::outbox::insert_sqlite(self, job)
    }

    fn insert_outbox_unique(
        &mut self,
        job: &NewJob,
    ) -> impl Future<Output = Result<crate::outbox::OutboxEnqueued, QueueError>> + Send {
        crate::outbox::insert_unique_sqlite(self, job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unknown_scheme_is_refused_by_name() {
        let error = Queue::connect("amqp://broker:5672").await.unwrap_err();
        assert!(
            matches!(&error, QueueError::UnsupportedUrl { scheme } if scheme == "amqp"),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_url_without_scheme_is_invalid() {
        let error = Queue::connect("just-a-name").await.unwrap_err();
        assert!(matches!(error, QueueError::InvalidUrl { .. }), "{error:?}");
    }

    /// Store errors are opaque, yet tell an outage from a mistake, and keep the driver's
    /// error as their source.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn a_database_out_of_reach_is_unreachable_and_a_missing_one_is_not() {
        let refused = Queue::connect("postgres://postgres@127.0.0.1:1/anything")
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, QueueError::Database(_)) && refused.is_unreachable(),
            "{refused:?}"
        );
        let Ok(server) = std::env::var("ANB_TEST_POSTGRES_URL") else {
            panic!("ANB_TEST_POSTGRES_URL is not set (see the README's test command)");
        };
        let mut missing = url::Url::parse(&server).unwrap();
        missing.set_path("anb_queue_no_such_database");
        let error = Queue::connect(missing.as_str()).await.unwrap_err();
        let QueueError::Database(store) = &error else {
            panic!("{error:?}");
        };
        assert!(!error.is_unreachable(), "{error:?}");
        let driver = std::error::Error::source(store).expect("the driver's error");
        let driver = driver.downcast_ref::<sqlx::Error>().expect("an sqlx error");
        assert_eq!(
            driver
                .as_database_error()
                .and_then(|db| db.code())
                .as_deref(),
            Some("3D000"),
            "{driver:?}"
        );
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_redis_out_of_reach_is_unreachable() {
        let error = Queue::connect("redis://127.0.0.1:1/0").await.unwrap_err();
        assert!(
            matches!(&error, QueueError::Redis(_)) && error.is_unreachable(),
            "{error:?}"
        );
    }

    #[test]
    fn passwords_never_reach_error_messages() {
        let shown = redact("postgres://app:s3cret@db.internal/app");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
    }
}
