//! Finishing deletions: the stored objects of deleted videos, then their rows.
//!
//! Deleting a video takes it out of service at once and then removes its objects and its row
//! (`anb-api` does both in the request). When storage fails at that moment the row stays behind,
//! marked deleted, so nothing is forgotten; this task, run periodically by the worker, finishes
//! it with the same routine ([`anb_core::videos::finish_deletion`]). Every step is idempotent, so
//! several workers may run it at the same time, and a deletion the API is still finishing is
//! harmless to repeat.

use std::time::Duration;

use anb_core::db::Database;
use anb_core::storage::Storage;
/// The pass itself lives in `anb-core`, on the routine the API's delete uses too.
pub use anb_core::videos::{PurgeReport, purge_deleted_videos};

/// Runs [`purge_deleted_videos`] every `interval` until `shutdown` completes. Failures are
/// logged and retried at the next tick.
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
                match purge_deleted_videos(&db, &storage).await {
                    Ok(report) if report == PurgeReport::default() => {}
                    Ok(report) => tracing::info!(purged = report.purged, deferred = report.deferred, "deleted videos purged"),
                    Err(error) => tracing::warn!(%error, "purging deleted videos failed"),
                }
            }
        }
    }
}
