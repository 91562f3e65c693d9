//! Finishing deletions: the stored objects of deleted videos, then their rows.
//!
//! Deleting a video takes it out of service at once and then removes its objects and its row
//! (`anb-api` does both in the request). When storage fails at that moment the row stays behind,
//! marked deleted, so nothing is forgotten; a purge pass finishes it with the same routine
//! ([`anb_core::videos::finish_deletion`]).
//!
//! The pass is a periodic job of the worker's queue ([`PurgeDeletedVideos`], [`periodic_job`]):
//! every worker registers it, and the queue's unique key per tick lets one enqueue through, so
//! with several workers a pass runs once per interval, on whichever worker claims it. On a queue
//! without unique keys (SQS) the worker falls back to [`run_periodically`], a pass per interval
//! in each worker. Every step is idempotent either way, so passes that overlap (two workers of
//! the fallback, a deletion the API is still finishing) are harmless.

use std::time::Duration;

use anb_core::db::Database;
use anb_core::jobs::PurgeDeletedVideos;
use anb_core::storage::Storage;
/// The pass itself lives in `anb-core`, on the routine the API's delete uses too.
pub use anb_core::videos::{PurgeReport, purge_deleted_videos};
use anb_queue::{CatchUp, JobError, PeriodicJob, Schedule};

/// The purge as a periodic job: a [`PurgeDeletedVideos`] every `interval` (aligned to the Unix
/// epoch, so every worker computes the same ticks). A worker starting after a tick nobody ran
/// (all workers were down) runs that one at once, as a worker used to run a pass at start.
pub fn periodic_job(interval: Duration) -> PeriodicJob {
    PeriodicJob::new(Schedule::every(interval), |_tick| PurgeDeletedVideos {})
        .catch_up(CatchUp::Latest)
}

/// The handler of [`PurgeDeletedVideos`]: one pass. A failed pass is retried by the queue (then
/// dead-lettered; the next tick runs a new pass anyway).
pub async fn handle(db: &Database, storage: &Storage) -> Result<(), JobError> {
    pass(db, storage)
        .await
        .map(drop)
        .map_err(JobError::retryable)
}

/// One pass, logged and counted (`anb_worker_purge_passes_total{result}`).
async fn pass(db: &Database, storage: &Storage) -> Result<PurgeReport, anb_core::db::DbError> {
    let outcome = purge_deleted_videos(db, storage).await;
    match &outcome {
        Ok(report) if *report == PurgeReport::default() => {}
        Ok(report) => {
            tracing::info!(
                purged = report.purged,
                deferred = report.deferred,
                "deleted videos purged"
            );
        }
        Err(error) => tracing::warn!(%error, "purging deleted videos failed"),
    }
    crate::observability::purge_pass(outcome.as_ref().ok());
    outcome
}

/// Runs a pass every `interval` until `shutdown` completes, the first at once: the fallback for
/// a queue without unique keys, where every worker runs its own passes. Failures are logged and
/// retried at the next tick.
pub async fn run_periodically(
    db: Database,
    storage: Storage,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {
                // A pass is short; it is not interrupted by the shutdown signal.
                let _ = pass(&db, &storage).await;
            }
        }
    }
}
