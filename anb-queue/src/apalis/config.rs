//! How an `ApalisBackend` claims and holds jobs.

use super::*;

/// How an [`ApalisBackend`] claims and holds jobs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApalisConfig {
    /// How long a claimed job stays leased without a heartbeat; leases are renewed every
    /// third of it while jobs run (default 30 s).
    pub lease: Duration,
    /// The most jobs claimed in one round trip (default 10). Claimed jobs wait in the backend
    /// (leased, renewed) until apalis has a free slot for them, so keep this at or below the
    /// worker's `.concurrency(..)`.
    pub batch_size: usize,
    /// How failed attempts are spaced (default: 1 s doubling up to 10 min, with jitter).
    pub retry_backoff: RetryBackoff,
    /// How long running jobs get once the apalis worker begins to stop (default 30 s), as
    /// [`Worker::shutdown_grace`](crate::Worker::shutdown_grace): handlers are told at once,
    /// cancelled with [`CancelReason::Shutdown`](crate::CancelReason) near the end, aborted
    /// at the end, and such jobs are released without counting the attempt.
    pub shutdown_grace: Duration,
    /// How long one attempt may run for job types without their own
    /// [`Job::TIMEOUT`] (default: no limit), as [`Worker::timeout`](crate::Worker::timeout).
    pub timeout: Option<Duration>,
}

impl Default for ApalisConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            batch_size: 10,
            retry_backoff: RetryBackoff::default(),
            shutdown_grace: Duration::from_secs(30),
            timeout: None,
        }
    }
}
