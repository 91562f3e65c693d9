//! The job model: what a job is, and what a handler sees while running one.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{JobId, Lease, SharedBackend},
    error::QueueError,
    priority::Priority,
};

/// A typed background job: a serde payload with a stable name.
///
/// The name is stored with every enqueued job and routes it to its handler, so it must stay
/// the same across releases (do not derive it from the Rust type path).
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendWelcomeEmail {
///     user_id: u64,
/// }
///
/// impl anb_queue::Job for SendWelcomeEmail {
///     const NAME: &'static str = "send_welcome_email";
///     // Optional: how many times the job may run before it is dead-lettered.
///     const MAX_ATTEMPTS: u32 = 3;
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The job's stable name.
    const NAME: &'static str;
    /// How many attempts the job gets before it goes to the dead letters.
    const MAX_ATTEMPTS: u32 = 5;
    /// How long one attempt may run before its handler is cancelled with
    /// [`CancelReason::Timeout`] and the attempt fails (retryably). `None` (the default)
    /// leaves it to the worker's [`Worker::timeout`](crate::Worker::timeout), if any.
    const TIMEOUT: Option<Duration> = None;
    /// The named queue the job runs in: a worker runs each named queue with its own
    /// concurrency ([`Worker::queue`](crate::Worker::queue)). Jobs are stored by name, so
    /// moving a job type to another queue needs no migration.
    const QUEUE: &'static str = DEFAULT_QUEUE;
    /// Which due job a worker takes first: [`Priority::HIGHEST`] (the default) first, then
    /// each lower level (see [`Priority`]). An enqueue may give another
    /// ([`EnqueueOptions::priority`](crate::EnqueueOptions::priority)).
    const PRIORITY: Priority = Priority::HIGHEST;
}

/// The queue of jobs that name none ([`Job::QUEUE`]); its concurrency is
/// [`Worker::concurrency`](crate::Worker::concurrency).
pub const DEFAULT_QUEUE: &str = "default";

/// Why the runtime wants a handler to stop ([`JobContext::cancel_reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelReason {
    /// The worker is shutting down and the grace period is nearly over. Return soon: the job
    /// is then released without counting the attempt, whatever the handler returns, and a
    /// handler still running when the grace ends is aborted and released the same way.
    Shutdown,
    /// The job's lease is gone (it ran out, or another claim holds the job now): another
    /// worker may already run it. The outcome of this attempt is not recorded; the handler
    /// is aborted after a short moment.
    LeaseLost,
    /// The job ran longer than its timeout ([`Job::TIMEOUT`] or
    /// [`Worker::timeout`](crate::Worker::timeout)). The attempt counts as a retryable
    /// failure; the handler is aborted after a short moment.
    Timeout,
    /// The job was cancelled ([`Queue::cancel`](crate::Queue::cancel), from any process).
    /// The handler decides how to stop (clean up, return early): it is not aborted, and
    /// whatever it returns the job is removed, not retried.
    Cancelled,
}

/// A running job's cancellation: a token and the reason it fired with (the first wins).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancellation {
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl Cancellation {
    /// Fires the token with `reason`, unless it already fired for another one.
    pub(crate) fn fire(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub(crate) fn reason(&self) -> Option<CancelReason> {
        self.reason.get().copied()
    }

    pub(crate) async fn fired(&self) {
        self.token.cancelled().await;
    }
}

/// What a handler knows about the job it runs, and how it talks back to the queue.
///
/// Two signals reach a running handler:
/// - [`JobContext::shutdown_requested`]: the worker stopped claiming and is shutting down.
///   Informational: finish if you can, the grace period is there for it;
/// - [`JobContext::cancelled`]: the runtime wants the handler to stop now, for the
///   [`CancelReason`] given by [`JobContext::cancel_reason`]. Return promptly (the result no
///   longer decides much, see [`CancelReason`]); a handler that does not is aborted.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) name: &'static str,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) owner: String,
    pub(crate) lease: Lease,
    pub(crate) duration: Duration,
    pub(crate) backend: SharedBackend,
    pub(crate) stopping: CancellationToken,
    pub(crate) cancel: Cancellation,
}

impl JobContext {
    /// The job's id in its backend.
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// The job's stable name ([`Job::NAME`]).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempt after which a failure dead-letters the job.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether this is the job's last attempt (a failure now dead-letters it).
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// Extends the job's lease to `by` from now.
    ///
    /// The worker already renews the lease of every running job in the background; call this
    /// before a step known to outlast the configured lease, or to check the job is still
    /// ours: a lease that is gone is [`QueueError::LeaseLost`], and fires
    /// [`JobContext::cancelled`] with [`CancelReason::LeaseLost`]. A job cancelled meanwhile
    /// keeps its lease, and fires it with [`CancelReason::Cancelled`].
    pub async fn extend_lease(&self, by: Duration) -> Result<(), QueueError> {
        let renewal = self
            .backend
            .renew(&self.owner, std::slice::from_ref(&self.lease), by)
            .await?;
        if !renewal.lost.is_empty() {
            self.cancel.fire(CancelReason::LeaseLost);
            return Err(QueueError::LeaseLost {
                job: self.id.to_string(),
            });
        }
        if !renewal.cancelled.is_empty() {
            self.cancel.fire(CancelReason::Cancelled);
        }
        Ok(())
    }

    /// Records the job's progress (0–100) where the backend can keep it, and renews the lease.
    pub async fn report_progress(&self, percent: u8) -> Result<(), QueueError> {
        self.backend
            .progress(&self.owner, &self.lease, percent.min(100), self.duration)
            .await
    }

    /// Whether the worker is shutting down (it no longer claims jobs). Informational: the
    /// handler may go on, and should finish within the grace period if it can; it is told by
    /// [`JobContext::cancelled`] when it must stop.
    pub fn is_shutting_down(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Completes when the worker begins to shut down (see [`JobContext::is_shutting_down`]).
    pub async fn shutdown_requested(&self) {
        self.stopping.cancelled().await;
    }

    /// Completes when the runtime wants this handler to stop: near the end of the shutdown
    /// grace period, when the lease was lost, on timeout, or when the job was cancelled
    /// ([`JobContext::cancel_reason`] says which). Race long steps against it with `tokio::select!`.
    pub async fn cancelled(&self) {
        self.cancel.fired().await;
    }

    /// Whether [`JobContext::cancelled`] has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.reason().is_some()
    }

    /// Why the handler was asked to stop, once it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.cancel.reason()
    }
}
