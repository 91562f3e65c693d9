//! Videos whose job ended in the dead letters without its handler saying so.
//!
//! The handler marks a video `failed` when its last attempt fails. Some jobs never get that far:
//! a worker killed mid-encode (out of memory, a crash, a lost instance) stops renewing the lease,
//! and after the last attempt the queue dead-letters the job itself (SQL and Redis backends when
//! they recover the expired lease, SQS through the redrive policy), so no handler runs to mark the
//! video. This pass, run periodically by the worker, reads the dead letters and marks every video
//! still waiting on one of them `failed` with a reason. It is idempotent, so several workers may
//! run it at the same time.

use std::time::Duration;

use anb_core::db::{Database, DbError};
use anb_core::domain::{FailureReason, VideoStatus};
use anb_core::jobs::TranscodeVideo;
use anb_queue::{DeadJob, Job, Queue, QueueError};

/// Dead letters read per pass, newest first: a job that died since the last pass is among them.
const BATCH: usize = 100;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Videos marked failed because their job was dead-lettered.
    pub failed: usize,
}

/// Why a reconcile pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
}

/// The reason shown to the player for a job the queue gave up on. The last error is the queue's
/// or the handler's text; the common case, a worker that died each time, is put in plain words.
pub fn dead_letter_reason(attempts: u32, last_error: Option<&str>) -> FailureReason {
    let lease_expired = last_error.is_some_and(|error| error.contains("lease expired"));
    let mut reason = format!("processing failed after {attempts} attempts");
    if lease_expired || last_error.is_none() {
        reason.push_str(": the worker stopped before finishing (it crashed or ran out of time)");
    }
    FailureReason::new(reason)
}

/// Marks `failed` every video that is still `uploaded` or `processing` while its transcode job
/// is among the newest dead letters.
pub async fn fail_dead_lettered(
    db: &Database,
    queue: &Queue,
) -> Result<ReconcileReport, ReconcileError> {
    let mut report = ReconcileReport::default();
    for dead in queue.dead_jobs(BATCH).await? {
        let Some(job) = transcode_job(&dead) else {
            continue;
        };
        let Some(video) = db.find_video(job.video_id).await? else {
            continue;
        };
        if !matches!(
            video.status,
            VideoStatus::Uploaded | VideoStatus::Processing
        ) {
            continue;
        }
        let reason = dead_letter_reason(dead.attempts, dead.last_error.as_deref());
        match db.mark_failed(job.video_id, &reason).await {
            Ok(_) => {
                tracing::warn!(video_id = %job.video_id, attempts = dead.attempts, last_error = ?dead.last_error, "video of a dead-lettered job marked failed");
                report.failed += 1;
            }
            // Finished, failed or deleted meanwhile: nothing left to reconcile.
            Err(DbError::VideoNotFound | DbError::IllegalTransition(_)) => {}
            Err(other) => return Err(other.into()),
        }
    }
    Ok(report)
}

fn transcode_job(dead: &DeadJob) -> Option<TranscodeVideo> {
    (dead.name == TranscodeVideo::NAME)
        .then(|| serde_json::from_str(&dead.payload).ok())
        .flatten()
}

/// Runs [`fail_dead_lettered`] every `interval` until `shutdown` completes. Failures are logged
/// and retried at the next tick.
pub async fn run_periodically(
    db: Database,
    queue: Queue,
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
                if let Err(error) = fail_dead_lettered(&db, &queue).await {
                    tracing::warn!(%error, "reconciling dead-lettered jobs failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_the_other_failure_reasons() {
        assert_eq!(
            dead_letter_reason(
                5,
                Some("lease expired: the worker stopped renewing it (crashed or stalled)")
            )
            .as_str(),
            "processing failed after 5 attempts: the worker stopped before finishing (it crashed or ran out of time)"
        );
        assert_eq!(
            dead_letter_reason(3, Some("storage: timed out")).as_str(),
            "processing failed after 3 attempts"
        );
    }
}
