//! Queue statistics for monitoring and autoscaling.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// A snapshot of a queue's jobs by state.
///
/// On PostgreSQL and SQLite each count is read from an index and is exact up to 10,000 jobs
/// per job name and state (per state for `in_flight` and `dead`); beyond that it means "at
/// least that many", so the stats every worker reads cost the same over any backlog. On
/// Redis the counts are exact; on SQS they are the service's approximate attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs due now and waiting for a worker.
    pub ready: u64,
    /// Jobs leased to a worker.
    pub in_flight: u64,
    /// Jobs waiting for their run time (delayed or backing off before a retry).
    pub delayed: u64,
    /// Jobs in the dead letters.
    pub dead: u64,
    /// How long the oldest ready job has been due (zero when none is ready).
    pub oldest_ready_age: Duration,
}

impl QueueStats {
    /// Publishes the snapshot as gauges through the `metrics` facade.
    pub fn record_gauges(&self) {
        metrics::gauge!("anb_queue_jobs", "state" => "ready").set(self.ready as f64);
        metrics::gauge!("anb_queue_jobs", "state" => "in_flight").set(self.in_flight as f64);
        metrics::gauge!("anb_queue_jobs", "state" => "delayed").set(self.delayed as f64);
        metrics::gauge!("anb_queue_jobs", "state" => "dead").set(self.dead as f64);
        metrics::gauge!("anb_queue_oldest_ready_age_seconds")
            .set(self.oldest_ready_age.as_secs_f64());
    }
}

/// How often workers on a queue asked their backend for work: counted, so an idle worker's
/// cost can be checked (an idle worker should claim about once per poll interval, not in a
/// loop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PollCounts {
    /// Claims sent to the backend.
    pub claims: u64,
    /// Claims that came back without a job.
    pub empty_claims: u64,
    /// Look-ups of when the next delayed job is due (made after an empty claim).
    pub due_checks: u64,
}

/// The counters behind [`PollCounts`], shared by a queue handle, its clones and its workers.
#[derive(Debug, Default)]
pub(crate) struct PollCounter {
    claims: AtomicU64,
    empty_claims: AtomicU64,
    due_checks: AtomicU64,
}

impl PollCounter {
    pub(crate) fn claimed(&self, jobs: usize) {
        self.claims.fetch_add(1, Ordering::Relaxed);
        if jobs == 0 {
            self.empty_claims.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("anb_queue_claims_total", "result" => "empty").increment(1);
        } else {
            metrics::counter!("anb_queue_claims_total", "result" => "jobs").increment(1);
        }
    }

    pub(crate) fn checked_due(&self) {
        self.due_checks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PollCounts {
        PollCounts {
            claims: self.claims.load(Ordering::Relaxed),
            empty_claims: self.empty_claims.load(Ordering::Relaxed),
            due_checks: self.due_checks.load(Ordering::Relaxed),
        }
    }
}
