//! Queue statistics for monitoring and autoscaling.

use std::time::Duration;

/// A snapshot of a queue's jobs by state.
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
