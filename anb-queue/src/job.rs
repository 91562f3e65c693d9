//! The job model: what a job is, and what a handler sees while running one.

use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    backend::{JobId, SharedBackend},
    error::QueueError,
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
}

/// What a handler knows about the job it runs, and how it talks back to the queue.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) name: &'static str,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) owner: String,
    pub(crate) lease: Duration,
    pub(crate) backend: SharedBackend,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
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
    /// before a step known to outlast the configured lease, or to check the job is still ours.
    pub async fn extend_lease(&self, by: Duration) -> Result<(), QueueError> {
        self.backend
            .extend(&self.owner, std::slice::from_ref(&self.id), by)
            .await
    }

    /// Records the job's progress (0–100) where the backend can keep it, and renews the lease.
    pub async fn report_progress(&self, percent: u8) -> Result<(), QueueError> {
        self.backend
            .progress(&self.owner, &self.id, percent.min(100), self.lease)
            .await
    }

    /// Whether the worker is shutting down: a long handler may stop early and return a
    /// retryable error, so the job is picked up again later.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Completes when the worker begins to shut down.
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await;
    }
}
