#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

#[cfg(feature = "apalis")]
pub mod apalis;
pub mod backend;
mod error;
mod job;
pub mod middleware;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod outbox;
mod periodic;
#[cfg(feature = "postgres")]
mod postgres;
mod priority;
mod queue;
mod rate_limit;
#[cfg(feature = "redis")]
mod redis;
mod runtime;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqs")]
mod sqs;
mod stats;
mod unique;
mod worker;

#[cfg(feature = "apalis")]
pub use apalis::ApalisBackend;
pub use backend::{BackendKind, Cancelled, DeadJob, JobId, JobInfo, JobState};
pub use error::{JobError, QueueError};
pub use job::{CancelReason, DEFAULT_QUEUE, Job, JobContext};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use outbox::{Outbox, OutboxEnqueued, OutboxEntry, OutboxPool, Relay};
pub use periodic::{CatchUp, MIN_KEY_HOLD, PeriodicJob, Schedule, ScheduleError, Tick};
pub use priority::{Priority, PriorityOutOfRange};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use queue::TransactionalConnection;
pub use queue::{EnqueueOptions, Queue};
pub use rate_limit::{Permits, RateLimit};
pub use stats::{PollCounts, QueueStats};
pub use unique::{Enqueued, Unique, UniqueKey};
pub use worker::{RetryBackoff, Worker, shutdown_signal};
