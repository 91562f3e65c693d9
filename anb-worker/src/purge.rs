//! Finishing deletions: the stored objects of deleted videos, then their rows.
//!
//! Deleting a video takes it out of service at once and then removes its objects and its row
//! (`anb-api` does both in the request). When storage fails at that moment the row stays behind,
//! marked deleted, so nothing is forgotten; this task, run periodically by the worker, removes
//! what is left and then the row. Every step is idempotent, so several workers may run it at
//! the same time, and a deletion the API is still finishing is harmless to repeat.

use std::time::Duration;

use anb_core::db::{Database, DbError, DeletedVideo};
use anb_core::storage::{ObjectKey, Storage, StorageError, VideoKeys};

/// Deleted videos handled per database query.
const BATCH: u32 = 100;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Videos whose objects were removed and whose row was dropped.
    pub purged: usize,
    /// Videos left for a later pass because storage refused a removal.
    pub deferred: usize,
}

/// Removes the objects and then the rows of every deleted video still waiting, oldest deletion
/// first. A video whose objects cannot all be removed keeps its row for the next pass; a
/// database failure stops the pass.
pub async fn purge_deleted_videos(
    db: &Database,
    storage: &Storage,
) -> Result<PurgeReport, DbError> {
    let mut report = PurgeReport::default();
    loop {
        let waiting = db.videos_awaiting_purge(BATCH).await?;
        let full_batch = waiting.len() == BATCH as usize;
        let mut progress = false;
        for video in &waiting {
            match remove_objects(storage, video).await {
                Ok(()) => {
                    if db.purge_video(video.id).await? {
                        report.purged += 1;
                    }
                    progress = true;
                }
                Err(error) => {
                    tracing::warn!(video_id = %video.id, %error, "objects of a deleted video not removed yet");
                    report.deferred += 1;
                }
            }
        }
        // Deferred videos come back in the next query: without progress it would return the
        // same batch again.
        if !full_batch || !progress {
            return Ok(report);
        }
    }
}

/// Removes every object of a deleted video: the keys its row names and anything else under
/// its folder.
async fn remove_objects(storage: &Storage, video: &DeletedVideo) -> Result<(), StorageError> {
    for key in video.storage_keys() {
        match ObjectKey::parse(key.to_owned()) {
            Ok(key) => storage.delete(&key).await?,
            // A key that cannot be stored cannot be there either.
            Err(error) => tracing::warn!(video_id = %video.id, key, %error, "invalid stored key"),
        }
    }
    storage
        .delete_prefix(VideoKeys::new(video.id.into()).folder())
        .await
}

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
