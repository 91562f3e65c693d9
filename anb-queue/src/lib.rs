#![doc = include_str!("../README.md")]

#[cfg(feature = "apalis")]
pub mod apalis;
pub mod backend;
mod error;
mod job;
mod outbox;
mod postgres;
mod queue;
mod redis;
mod runtime;
mod sqlite;
mod sqs;
mod stats;
mod worker;

#[cfg(feature = "apalis")]
pub use apalis::ApalisBackend;
pub use backend::{BackendKind, DeadJob, JobId, JobInfo, JobState};
pub use error::{JobError, QueueError};
pub use job::{CancelReason, Job, JobContext};
pub use outbox::{Outbox, OutboxEntry, OutboxPool, Relay};
pub use queue::{Queue, TransactionalConnection};
pub use stats::{PollCounts, QueueStats};
pub use worker::{RetryBackoff, Worker, shutdown_signal};
