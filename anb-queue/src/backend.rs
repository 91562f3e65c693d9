//! The seam between the queue front-end ([`Queue`](crate::Queue), [`Worker`](crate::Worker)) and a
//! storage engine.
//!
//! A backend stores jobs and leases them to workers; everything else (typed payloads,
//! handlers, retry policy, metrics, tracing, shutdown) lives above this trait and is shared
//! by every backend. To add a backend:
//!
//! 1. implement [`Backend`] (see `sql/backend.rs` for the SQL engines, `redis.rs`, or the
//!    in-memory example in `anb-queue-testkit/tests/memory_backend.rs`), in this crate or your
//!    own, returning [`BackendKind::Other`] from `kind` if it lives outside;
//! 2. hand it to [`Queue::with_backend`](crate::Queue::with_backend) (or, in this crate,
//!    accept its URL scheme in [`Queue::connect`](crate::Queue::connect));
//! 3. run the conformance suite over it with the `anb-queue-testkit` crate: a `Fixture` and
//!    one `conformance_suite!` line.
//!
//! Contract, for every backend:
//! - a claimed job is leased to one `owner` until `now + lease`; a lease that runs out makes
//!   the job claimable again ([`Backend::recover_expired`]), so delivery is at-least-once;
//! - every lease operation (`complete`, `retry`, `dead_letter`, `release`, `extend`) names the
//!   owner and the claim's [`Lease`], and is a no-op for a job that claim no longer holds
//!   (its lease ran out, even if the same worker has claimed the job again since); `extend`
//!   reports such leases as lost;
//! - a claim counts an attempt; `release` and `snooze` give the attempt back;
//! - a unique key ([`Backend::enqueue_unique`]) held while unfinished is freed by the same
//!   operation that completes or dead-letters its job, so no finished job holds one;
//! - a job whose lease expires on its last attempt is dead-lettered rather than retried, so a
//!   job that kills its worker cannot loop forever.
//!
//! Notes for broker backends (Redis, SQS):
//! - [`JobId`] is opaque to the layers above: put whatever the lease operations need in it
//!   (an SQS receipt handle, a Redis stream entry id);
//! - `claim` may long-poll, but should return within about a second when nothing arrives, so
//!   a shutdown is noticed promptly; return `idle_poll_interval() == 0` then;
//! - a backend that cannot filter by `ClaimRequest::names` may return other jobs: the worker
//!   releases those for a worker that handles them;
//! - `next_due_in` may always return `None` when the broker schedules delayed jobs itself, and
//!   `subscribe` may return a signal that never fires when `claim` already waits for work;
//! - `retry` may be implemented as "make visible again after `delay`" (SQS
//!   `ChangeMessageVisibility`) and `dead_letter` as a move to the dead-letter queue.

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{
    error::QueueError,
    priority::Priority,
    rate_limit::{Permits, RateLimit},
    stats::QueueStats,
    unique::{Enqueued, UniqueKey},
};

/// A fresh claim's lease token.
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "redis"))]
pub(crate) fn claim_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Milliseconds since the Unix epoch, the clock of SQLite rows (SQLite has no clock type, and
/// all writers of one file share the host's clock) and of enqueue times in job envelopes.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Refuses jobs with a unique key in a plain enqueue, which would store them without
/// enforcing it.
#[cfg(any(
    feature = "postgres",
    feature = "sqlite",
    feature = "redis",
    feature = "sqs"
))]
pub(crate) fn refuse_unique(jobs: &[NewJob]) -> Result<(), QueueError> {
    match jobs.iter().find(|job| job.unique.is_some()) {
        Some(job) => Err(QueueError::UniqueKeyNotEnforced { job: job.name }),
        None => Ok(()),
    }
}

/// How many times a unique enqueue on PostgreSQL tries again when the key's holder finished
/// between finding the key held and reading who held it.
#[cfg(feature = "postgres")]
pub(crate) const UNIQUE_ATTEMPTS: usize = 20;

/// A job's id in its backend (a row id for SQL backends, a message id for brokers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub(crate) String);

impl JobId {
    /// A job id as a backend printed it (for operator tools that take ids as text).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which storage engine a backend runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendKind {
    /// PostgreSQL (`postgres://`).
    Postgres,
    /// SQLite (`sqlite://`).
    Sqlite,
    /// Redis (`redis://`).
    Redis,
    /// Amazon SQS (`sqs://` or a queue URL).
    Sqs,
    /// A backend implemented outside this crate, by its name (see [`Queue::with_backend`](crate::Queue::with_backend)).
    Other(&'static str),
}

impl BackendKind {
    /// The engine's name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Postgres => "postgres",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Redis => "redis",
            BackendKind::Sqs => "sqs",
            BackendKind::Other(name) => name,
        }
    }
}

/// A job ready to be stored: the serialized payload and its scheduling.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The job's stable name ([`Job::NAME`](crate::Job::NAME)).
    pub name: &'static str,
    /// The payload, serialized as JSON.
    pub payload: String,
    /// Attempts allowed before dead-lettering.
    pub max_attempts: u32,
    /// How long to wait before the job may run.
    pub delay: Duration,
    /// Which due job runs first ([`Priority`]).
    pub priority: Priority,
    /// The job's unique key, if it has one: such a job goes through
    /// [`Backend::enqueue_unique`], never [`Backend::enqueue`].
    pub unique: Option<UniqueKey>,
}

/// A job leased to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job's id.
    pub id: JobId,
    /// The job's stable name.
    pub name: String,
    /// The JSON payload.
    pub payload: String,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// Attempts allowed before dead-lettering.
    pub max_attempts: u32,
    /// When the job was enqueued, in milliseconds since the Unix epoch.
    pub enqueued_at_ms: i64,
    /// The token of this claim, for [`Lease`].
    pub token: String,
    /// Whether the job was cancelled while it ran before ([`Backend::cancel`] found it
    /// running, and its attempt then ended in a retry or a release): the worker removes it
    /// instead of running it.
    pub cancel_requested: bool,
}

impl ClaimedJob {
    /// This claim's hold on the job.
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id.clone(),
            token: self.token.clone(),
        }
    }
}

/// One claim's hold on a job: the job's id and the token its claim was given. Every lease
/// operation names the lease, and is a no-op when the job is no longer held by that claim
/// (so a worker that re-claims its own expired job cannot have the old attempt touch the
/// new one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job's id.
    pub id: JobId,
    /// The claim's token (a row's lease token, a Redis lease owner, an SQS receipt handle).
    pub token: String,
}

/// What a worker asks for when it claims.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The job names this worker has handlers for.
    pub names: &'a [&'static str],
    /// The most jobs to lease at once.
    pub max: usize,
    /// Who will hold the leases.
    pub owner: &'a str,
    /// How long the leases last unless extended.
    pub lease: Duration,
}

/// What a lease renewal ([`Backend::renew`]) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewal {
    /// Leases that are lost (expired, or the job is held by another claim now): not extended.
    pub lost: Vec<Lease>,
    /// Leases extended whose job was cancelled ([`Backend::cancel`]) while it runs.
    pub cancelled: Vec<Lease>,
}

/// What a cancel request ([`Backend::cancel`], [`Queue::cancel`](crate::Queue::cancel)) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cancelled {
    /// The job was waiting (due or delayed): it is deleted and will not run, and a unique
    /// key it held while unfinished is free.
    Removed,
    /// The job is running. Its worker learns it at its next lease renewal (every third of
    /// the lease), fires the handler's [`JobContext::cancelled`](crate::JobContext::cancelled)
    /// with [`CancelReason::Cancelled`](crate::CancelReason::Cancelled), and removes the
    /// job whatever the handler returns. An attempt that ended before (in a retry, or a
    /// release at shutdown) leaves the job to be removed by the claim that next finds it.
    Requested,
    /// No waiting or running job has this id: it finished, is dead, or never existed.
    NotFound,
}

impl Cancelled {
    /// The outcome's name: `removed`, `requested` or `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::Requested => "requested",
            Self::NotFound => "not_found",
        }
    }
}

/// A signal that new work may be available: a counter bumped on every wake-up.
pub type WorkSignal = watch::Receiver<u64>;

/// A backend shared by the queue handle and its workers.
pub(crate) type SharedBackend = Arc<dyn Backend>;

/// A storage engine for jobs. See the module documentation for the contract.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Which engine this is.
    fn kind(&self) -> BackendKind;

    /// Stores jobs and returns their ids in order: all or none, or, where the store takes
    /// them one by one (SQS batches), [`QueueError::PartlyEnqueued`] naming those stored.
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError>;

    /// Stores a job with a unique key ([`NewJob::unique`]) unless a job of its name holds
    /// the key, atomically however many processes enqueue it at once: returns the new job's
    /// id, or the holder's with `duplicate` set. A key held while unfinished is freed when
    /// its job completes, is dead-lettered or is deleted; a key held for a period stays held
    /// until the period (from the enqueue, by the backend's clock) has passed.
    async fn enqueue_unique(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        let _ = job;
        Err(self.unsupported("unique jobs"))
    }

    /// Whether [`Backend::enqueue_unique`] is implemented (periodic jobs need it to enqueue
    /// each tick once). The default is `false`: a backend that implements unique enqueues says so.
    fn supports_unique(&self) -> bool {
        false
    }

    /// Whether claims honour [`NewJob::priority`]: of the due jobs, the highest priority
    /// first, then the oldest due. `false` by default; the queue then refuses jobs of any
    /// priority but [`Priority::HIGHEST`] rather than run them out of order.
    fn supports_priorities(&self) -> bool {
        false
    }

    /// Leases up to `request.max` due jobs, highest priority first (where
    /// [`Backend::supports_priorities`]), then oldest due first. Returns an empty list when
    /// none is due.
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ClaimedJob>, QueueError>;

    /// Deletes finished jobs.
    async fn complete(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError>;

    /// Makes a failed job claimable again after `delay`, keeping `error` as its last error.
    async fn retry(
        &self,
        owner: &str,
        lease: &Lease,
        delay: Duration,
        error: &str,
    ) -> Result<(), QueueError>;

    /// Moves a job to the dead letters, keeping `error`.
    async fn dead_letter(&self, owner: &str, lease: &Lease, error: &str) -> Result<(), QueueError>;

    /// Gives leased, unfinished jobs back at once, without counting the attempt.
    async fn release(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError>;

    /// Makes a leased job claimable again after `delay` without counting the attempt (its
    /// handler snoozed it) and without touching its last error. A backend that cannot give
    /// an attempt back answers [`QueueError::UnsupportedByBackend`], and the worker retries
    /// the job instead.
    async fn snooze(&self, owner: &str, lease: &Lease, delay: Duration) -> Result<(), QueueError> {
        let _ = (owner, lease, delay);
        Err(self.unsupported("snoozing a job"))
    }

    /// Extends leases to `lease` from now. Returns the leases that are lost (expired, or
    /// the job is held by another claim now), which were not extended.
    async fn extend(
        &self,
        owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError>;

    /// Extends leases like [`Backend::extend`], and also reports the jobs among them that
    /// were cancelled while running ([`Backend::cancel`]). The worker's heartbeat calls this.
    /// The default reports no cancellations: a backend that implements `cancel` overrides it.
    async fn renew(
        &self,
        owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Renewal, QueueError> {
        Ok(Renewal {
            lost: self.extend(owner, leases, lease).await?,
            cancelled: Vec::new(),
        })
    }

    /// Cancels a job, from any process: a waiting job is deleted, a running one is flagged
    /// for its worker (see [`Cancelled`]). A backend that implements this also overrides
    /// [`Backend::renew`], [`Backend::supports_cancel`] and [`Backend::unique_holder`], and
    /// sets [`ClaimedJob::cancel_requested`]. The default refuses.
    async fn cancel(&self, id: &JobId) -> Result<Cancelled, QueueError> {
        let _ = id;
        Err(self.unsupported("cancelling a job"))
    }

    /// Takes up to `want` job starts from the current window of the rate limit of the named
    /// queue `queue` (see [`Worker::rate_limit`](crate::Worker::rate_limit)), atomically
    /// however many workers ask at once: windows are `limit.period()` long, aligned to the
    /// Unix epoch by the backend's clock, and each grants at most `limit.permits()` in all.
    /// A backend that implements this also overrides [`Backend::return_permits`] and
    /// [`Backend::supports_global_rate_limit`]. The default refuses.
    async fn take_permits(
        &self,
        queue: &str,
        want: u32,
        limit: RateLimit,
    ) -> Result<Permits, QueueError> {
        let _ = (queue, want, limit);
        Err(self.unsupported("a global rate limit"))
    }

    /// Gives back `unused` permits of `permits` (a claim found fewer jobs than it was granted),
    /// if their window is still the current one; permits of a window that ended are lost.
    /// The default does nothing.
    async fn return_permits(
        &self,
        queue: &str,
        permits: Permits,
        unused: u32,
    ) -> Result<(), QueueError> {
        let _ = (queue, permits, unused);
        Ok(())
    }

    /// Whether [`Backend::take_permits`] is implemented: a counter every worker process
    /// shares. `false` by default.
    fn supports_global_rate_limit(&self) -> bool {
        false
    }

    /// Whether a claim returns only jobs of [`ClaimRequest::names`] (`true` by default), so
    /// a worker may run several named queues, each claiming its own names. A broker that
    /// receives whatever comes next (SQS) says `false`.
    fn claims_by_name(&self) -> bool {
        true
    }

    /// Whether [`Backend::cancel`] is implemented. `false` by default.
    fn supports_cancel(&self) -> bool {
        false
    }

    /// The job holding the unique key `key` of the job name `name`, if one does (for
    /// cancelling a job by its key). The default refuses.
    async fn unique_holder(&self, name: &str, key: &str) -> Result<Option<JobId>, QueueError> {
        let _ = (name, key);
        Err(self.unsupported("finding a job by its unique key"))
    }

    /// Stores a running job's progress (0–100) and extends its lease.
    async fn progress(
        &self,
        owner: &str,
        lease: &Lease,
        percent: u8,
        duration: Duration,
    ) -> Result<(), QueueError>;

    /// Returns jobs whose lease ran out to the queue (or to the dead letters on their last
    /// attempt). Returns how many were recovered.
    async fn recover_expired(&self) -> Result<u64, QueueError>;

    /// How long until the next delayed job of these names becomes due, if any is waiting.
    async fn next_due_in(&self, names: &[&'static str]) -> Result<Option<Duration>, QueueError>;

    /// A signal bumped when new jobs may be claimable (a push notification from the engine).
    async fn subscribe(&self) -> Result<WorkSignal, QueueError>;

    /// How long a worker idles between claims when no signal arrives.
    fn idle_poll_interval(&self) -> Duration;

    /// For services billed per request: how many completions make a full batch, and how
    /// long a worker may hold fewer to fill one. `None` settles whatever is at hand at once.
    fn completion_batching(&self) -> Option<(usize, Duration)> {
        None
    }

    /// Counts jobs by state.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// How often a worker refreshes the queue depth gauges unless told otherwise.
    fn stats_interval(&self) -> Duration {
        Duration::from_secs(15)
    }

    /// Lists dead-lettered jobs with their last error, newest first.
    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, QueueError>;

    /// A job's state as the queue holds it now, or `None` when no such job is stored
    /// (never enqueued, finished and deleted, or pruned).
    async fn job(&self, id: &JobId) -> Result<Option<JobInfo>, QueueError> {
        let _ = id;
        Err(self.unsupported("looking a job up by id"))
    }

    /// Dead-lettered jobs, newest first, starting after the job `after` of an earlier page
    /// (from the first when `None`).
    async fn dead_jobs_after(
        &self,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, QueueError> {
        match after {
            None => self.dead_jobs(limit).await,
            Some(_) => Err(self.unsupported("paging through dead jobs")),
        }
    }

    /// Puts dead jobs back in the queue, due now, with their attempts counted from zero
    /// (their last error is kept). Ids that are not dead are skipped. Returns how many
    /// were requeued.
    async fn requeue_dead(&self, ids: &[JobId]) -> Result<u64, QueueError> {
        let _ = ids;
        Err(self.unsupported("requeueing dead jobs"))
    }

    /// Deletes dead jobs that died more than `older_than` ago. Returns how many.
    async fn prune_dead(&self, older_than: Duration) -> Result<u64, QueueError> {
        let _ = older_than;
        Err(self.unsupported("pruning dead jobs"))
    }

    /// The error for an operation this backend does not offer.
    fn unsupported(&self, operation: &'static str) -> QueueError {
        QueueError::UnsupportedByBackend {
            operation,
            backend: self.kind().as_str(),
        }
    }

    /// How many requests this backend has sent to a metered service (SQS bills per
    /// request), or `None` where that is not counted.
    fn requests_sent(&self) -> Option<u64> {
        None
    }

    /// [`Backend::requests_sent`] by the service's operation name (`ReceiveMessage`, ...).
    fn requests_by_operation(&self) -> Option<BTreeMap<String, u64>> {
        None
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting, due now.
    Ready,
    /// Waiting for its time (a delay or a retry's back-off).
    Delayed,
    /// Leased by a worker.
    Running,
    /// In the dead letters.
    Dead,
}

impl JobState {
    /// The state's name: `ready`, `delayed`, `running` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Delayed => "delayed",
            Self::Running => "running",
            Self::Dead => "dead",
        }
    }
}

/// A stored job as an operator sees it ([`crate::Queue::job`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// The job's id.
    pub id: JobId,
    /// The job's stable name.
    pub name: String,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far (a running job's current attempt included).
    pub attempts: u32,
    /// The most attempts it gets.
    pub max_attempts: u32,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// The progress its handler last reported (0–100), where the backend keeps it.
    pub progress: Option<u8>,
    /// Its priority ([`Priority::HIGHEST`] where the backend has none).
    pub priority: Priority,
}

/// A job in the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJob {
    /// The job's id.
    pub id: JobId,
    /// The job's stable name.
    pub name: String,
    /// The JSON payload.
    pub payload: String,
    /// How many attempts it had.
    pub attempts: u32,
    /// The error of the last attempt.
    pub last_error: Option<String>,
    /// When it died, in milliseconds since the Unix epoch (on SQS: when our worker moved it,
    /// or, for a message the redrive policy moved, when it was enqueued).
    pub dead_at_ms: i64,
}
