//! The library's error type.

use std::time::Duration;

/// Errors raised by the queue library itself (connecting, enqueueing, claiming).
///
/// Errors raised by job handlers are [`JobError`](crate::JobError)s instead: they decide
/// whether a job is retried, not whether the queue works.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue URL could not be parsed.
    #[error("invalid queue URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials removed).
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The queue URL names no backend this build supports.
    #[error(
        "unsupported queue URL scheme {scheme:?} (expected postgres://, sqlite://, redis://, sqs:// or an SQS queue URL)"
    )]
    UnsupportedUrl {
        /// The scheme found in the URL.
        scheme: String,
    },
    /// The URL names a backend this build of the crate leaves out: turn on its cargo feature.
    #[error("this build has no {feature} backend: enable the anb-queue feature {feature:?}")]
    BackendNotEnabled {
        /// The cargo feature that builds the backend.
        feature: &'static str,
    },
    /// A database operation (PostgreSQL or SQLite) failed.
    #[error("queue database error: {0}")]
    Database(StoreError),
    /// A Redis operation failed.
    #[error("queue Redis error: {0}")]
    Redis(StoreError),
    /// An SQS request failed.
    #[error("queue SQS error in {operation}: {message}")]
    Sqs {
        /// The request or step that failed.
        operation: &'static str,
        /// The service's or SDK's explanation.
        message: String,
    },
    /// The SQS queue has no redrive policy, so dead jobs would have nowhere to go.
    #[error("the SQS queue {queue_url} has no redrive policy: give it a dead-letter queue")]
    NoDeadLetterQueue {
        /// The queue's URL.
        queue_url: String,
    },
    /// A job is larger than the queue accepts.
    #[error("job {job} is {size} bytes as a message, over the queue's limit of {limit} bytes")]
    MessageTooLarge {
        /// The job's stable name.
        job: String,
        /// The message size: payload plus attributes.
        size: usize,
        /// The queue's `MaximumMessageSize`.
        limit: usize,
    },
    /// A job payload could not be serialized.
    #[error("could not serialize the payload of job {job}: {source}")]
    Serialize {
        /// The job's stable name.
        job: &'static str,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// `enqueue_tx` was given a connection of another engine than the queue's backend, so the
    /// job would land in a database no worker of this queue reads.
    #[error(
        "transactional enqueue on a {connection} connection is not possible for a {backend} queue"
    )]
    TransactionMismatch {
        /// The engine of the connection given.
        connection: &'static str,
        /// The queue's backend.
        backend: &'static str,
    },
    /// The backend cannot do this operation (see the backend table in the crate's README).
    #[error("{operation} is not available on the {backend} backend")]
    UnsupportedByBackend {
        /// What was asked for.
        operation: &'static str,
        /// The backend's name.
        backend: &'static str,
    },
    /// The queue did not answer in time.
    #[error("{operation} took longer than {after:?}")]
    Timeout {
        /// What was attempted.
        operation: &'static str,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// A lease operation found the job no longer leased to this claim: its lease ran out,
    /// or another claim holds it now (see [`CancelReason::LeaseLost`](crate::CancelReason)).
    #[error("the lease of job {job} is lost: it expired or another claim holds the job")]
    LeaseLost {
        /// The job's id.
        job: String,
    },
    /// A bulk enqueue stored only some of its jobs (SQS accepts or refuses each message of a
    /// batch on its own). `ids` has one entry per job, in order: the id of each job that
    /// was enqueued, `None` for each that was not. Enqueue the `None` ones again; the others
    /// would run twice.
    #[error("{} of {} jobs were enqueued, the others were refused: {reason}", ids.iter().flatten().count(), ids.len())]
    PartlyEnqueued {
        /// Per job, in order: its id if it was enqueued.
        ids: Vec<Option<crate::JobId>>,
        /// Why the others were refused.
        reason: String,
    },
    /// A job with a unique key reached a plain enqueue, which would store it without
    /// enforcing the key: enqueue it with [`Queue::enqueue_unique`](crate::Queue::enqueue_unique).
    #[error("job {job} has a unique key: only enqueue_unique enforces it")]
    UniqueKeyNotEnforced {
        /// The job's stable name.
        job: &'static str,
    },
    /// A unique enqueue found its key held, then freed before it could read the holder,
    /// too many times in a row (holders of this key finish as fast as they are enqueued).
    #[error("the unique key {key:?} of job {job} kept changing hands; try again")]
    UniqueKeyContended {
        /// The job's stable name.
        job: &'static str,
        /// The key.
        key: String,
    },
    /// A cancel found the job changing state (claimed, given back) every time it looked, too
    /// many times in a row.
    #[error("job {job} kept changing state while being cancelled; try again")]
    CancelContended {
        /// The job's id.
        job: String,
    },
    /// A registered job type names a queue ([`Job::QUEUE`](crate::Job::QUEUE)) that the
    /// worker did not declare with [`Worker::queue`](crate::Worker::queue).
    #[error(
        "job {job} runs in queue {queue:?}, which this worker does not declare (Worker::queue)"
    )]
    UndeclaredQueue {
        /// The queue it names.
        queue: &'static str,
        /// The job's stable name.
        job: &'static str,
    },
    /// The worker was started without any handler.
    #[error("a worker needs at least one registered handler")]
    NoHandlers,
    /// A job asked for something the queue cannot do (such as an apalis idempotency key).
    #[error("{what} are not supported by anb-queue")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
}

impl QueueError {
    /// Whether the queue's store could not be reached or did not answer in time (a network
    /// error, a refused or dropped connection, a pool or request timeout), as opposed to an
    /// error in what was asked. Worth a retry later; an API can answer "unavailable".
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Database(error) | Self::Redis(error) => error.unreachable,
            Self::Sqs { .. } | Self::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// A failure of the store under a queue (the database driver's or the Redis client's error),
/// kept opaque so that this crate's API does not tie its users to the driver versions it
/// builds with. Its [`source`](std::error::Error::source) is the driver's error, for
/// logging or, with the same driver version, downcasting.
#[derive(Debug)]
pub struct StoreError {
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
    unreachable: bool,
}

impl StoreError {
    /// Whether the store could not be reached or did not answer (see
    /// [`QueueError::is_unreachable`]).
    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

// How driver errors become `QueueError`s inside the crate. Not `From` impls: those would be
// public and tie the API to the drivers' versions.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl QueueError {
    pub(crate) fn from_sqlx(error: sqlx::Error) -> Self {
        let unreachable = matches!(
            &error,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                // A connection cut mid-reply reads as a protocol error.
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        ) || error
            .as_database_error()
            .and_then(|db| db.code())
            // Connection exceptions (08), operator intervention such as a server shutting
            // down (57P0x), too many connections (53300); SQLite's busy and locked (5, 6).
            .is_some_and(|code| {
                code.starts_with("08")
                    || code.starts_with("57P0")
                    || code == "53300"
                    || code == "5"
                    || code == "6"
            });
        Self::Database(StoreError {
            source: Box::new(error),
            unreachable,
        })
    }
}

#[cfg(feature = "redis")]
impl QueueError {
    pub(crate) fn from_redis(error: ::redis::RedisError) -> Self {
        let unreachable = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error();
        Self::Redis(StoreError {
            source: Box::new(error),
            unreachable,
        })
    }
}

/// What a job handler returns when it fails: the error and whether a retry could help.
///
/// Any `std::error::Error` converts into a *retryable* `JobError` with `?`; use
/// [`JobError::permanent`] when retrying cannot succeed (invalid input, a rule the job breaks),
/// so the job goes straight to the dead letters. Two more ways out:
/// [`JobError::retry_after`] picks the time of the retry (the attempt counts), and
/// [`JobError::snooze`] puts the job off without counting an attempt (nothing failed: an
/// input is not ready yet, a partner service asked to come back later).
#[derive(Debug)]
pub struct JobError {
    message: String,
    retryable: bool,
    delay: Option<Duration>,
    snoozed: bool,
}

impl JobError {
    /// A failure that may pass on a later attempt (a service down, a timeout).
    pub fn retryable(error: impl std::fmt::Display) -> Self {
        Self {
            message: error.to_string(),
            retryable: true,
            delay: None,
            snoozed: false,
        }
    }

    /// A failure that no retry can fix: the job is dead-lettered at once.
    pub fn permanent(error: impl std::fmt::Display) -> Self {
        Self {
            message: error.to_string(),
            retryable: false,
            delay: None,
            snoozed: false,
        }
    }

    /// Runs the job again after `delay`, without counting this attempt: it goes back to the
    /// queue as if it had been enqueued with that delay, however often it snoozes. Not an
    /// error in the job's record (its last error is kept as it was).
    ///
    /// ```
    /// use std::time::Duration;
    /// use anb_queue::JobError;
    ///
    /// fn not_ready_yet() -> Result<(), JobError> {
    ///     Err(JobError::snooze(Duration::from_secs(30)))
    /// }
    /// # assert!(not_ready_yet().unwrap_err().is_snooze());
    /// ```
    pub fn snooze(delay: Duration) -> Self {
        Self {
            message: format!("snoozed for {delay:?}"),
            retryable: true,
            delay: Some(delay),
            snoozed: true,
        }
    }

    /// Retries this failure after `delay` instead of the worker's back-off (the attempt
    /// counts; a permanent failure stays permanent).
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Whether the job should be attempted again (while attempts remain).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether the handler put the job off with [`JobError::snooze`].
    pub fn is_snooze(&self) -> bool {
        self.snoozed
    }

    /// The delay the handler chose before the job runs again, if any.
    pub fn delay(&self) -> Option<Duration> {
        self.delay
    }

    /// The error message kept with the job.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.snoozed {
            return f.write_str(&self.message);
        }
        let kind = if self.retryable {
            "retryable"
        } else {
            "permanent"
        };
        write!(f, "{kind} job error: {}", self.message)
    }
}

// `JobError` deliberately does not implement `std::error::Error`, so that this blanket
// conversion (what makes `?` work in handlers) does not overlap with `From<T> for T`.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self {
            message,
            retryable: true,
            delay: None,
            snoozed: false,
        }
    }
}
