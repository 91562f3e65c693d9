//! The use cases on a player's videos once uploaded — delete, publish, vote —
//! and the one routine that finishes a deletion.
//!
//! A deletion takes the video out of service at once (its row is marked
//! deleted, its votes leave the ranking) and then [`finish_deletion`] removes
//! its stored objects and its row. The API's delete runs it in the request;
//! when storage fails then, the row waits, marked deleted, and
//! [`purge_deleted_videos`] (which the worker runs periodically) finishes it
//! with the same routine, so both paths leave the same state: no object and
//! no row. Every step is idempotent, so a deletion finished twice at once is
//! harmless.

use anb_queue::{Cancelled, Queue};

use crate::db::{Database, DbError, DeletedVideo, Video};
use crate::domain::{UserId, VideoId};
use crate::jobs::TranscodeVideo;
use crate::storage::{ObjectKey, Storage, StorageError, VideoKeys};

/// How a [`finish_deletion`] ended.
#[derive(Debug)]
pub enum DeletionFinished {
    /// Every object is gone and the row was dropped.
    Purged,
    /// Every object is gone; the row had already been dropped (another
    /// finish of the same deletion ran first).
    AlreadyPurged,
    /// Storage refused a removal: the row stays, marked deleted, for a later
    /// [`purge_deleted_videos`].
    ObjectsLeft(StorageError),
}

/// Removes every stored object of a deleted video — the keys its row names
/// (original, processed, thumbnail, whichever exist) and anything else under
/// its folder (an output written before the deletion but never recorded) —
/// and then its row. A database failure is returned; the row then stays for a
/// later pass too.
pub async fn finish_deletion(
    db: &Database,
    storage: &Storage,
    video: &DeletedVideo,
) -> Result<DeletionFinished, DbError> {
    if let Err(error) = remove_objects(storage, video).await {
        return Ok(DeletionFinished::ObjectsLeft(error));
    }
    Ok(if db.purge_video(video.id).await? {
        DeletionFinished::Purged
    } else {
        DeletionFinished::AlreadyPurged
    })
}

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

/// The owner deletes one of their videos (not while it is published): it is
/// out of service when this returns, whatever happens to its objects. Errors:
/// [`DbError::VideoNotFound`], [`DbError::NotVideoOwner`],
/// [`DbError::VideoPublished`], or an outage before the video was taken out
/// of service. A failure while removing its objects or its row is logged and
/// left to [`purge_deleted_videos`]: the player's deletion has happened.
///
/// A transcode of the video still waiting in the queue is cancelled, and a
/// running one told to stop, through the queue (on the queues that cancel:
/// PostgreSQL, SQLite, Redis; the worker watches the row where the queue
/// cannot, see [`cancel_transcode`]).
pub async fn delete_video(
    db: &Database,
    storage: &Storage,
    queue: &Queue,
    owner: UserId,
    id: VideoId,
) -> Result<(), DbError> {
    let deleted = db.delete_video(owner, id).await?;
    cancel_transcode(queue, id).await;
    match finish_deletion(db, storage, &deleted).await {
        Ok(DeletionFinished::Purged | DeletionFinished::AlreadyPurged) => {}
        Ok(DeletionFinished::ObjectsLeft(error)) => {
            tracing::warn!(video_id = %id, %error, "objects of a deleted video not removed yet");
        }
        Err(error) => tracing::warn!(video_id = %id, %error, "deleted video row not purged yet"),
    }
    Ok(())
}

/// Cancels the transcode of a deleted video through the queue: a job still
/// waiting is removed, a running one is told to stop (its worker then finds
/// the video deleted and removes what it wrote). Best effort: a queue that
/// cannot cancel (SQS), a job enqueued without its key (through the outbox)
/// or a failure leaves it to the worker, which skips a deleted video's job
/// and, where the queue cannot cancel, watches the row while it encodes.
pub async fn cancel_transcode(queue: &Queue, id: VideoId) {
    if !queue.supports_cancel() {
        return;
    }
    match queue
        .cancel_unique::<TranscodeVideo>(&TranscodeVideo::unique_key(id))
        .await
    {
        Ok(Cancelled::NotFound) => {}
        Ok(outcome) => {
            tracing::info!(video_id = %id, outcome = outcome.as_str(), "transcode of a deleted video cancelled")
        }
        Err(error) => {
            tracing::warn!(video_id = %id, %error, "transcode of a deleted video not cancelled; the worker skips it")
        }
    }
}

/// The owner publishes one of their videos for voting: now if it is
/// processed, otherwise as soon as it is; publishing it again changes
/// nothing. Errors: [`DbError::VideoNotFound`], [`DbError::NotVideoOwner`],
/// [`DbError::NotPublishable`] (its processing failed).
pub async fn publish(db: &Database, owner: UserId, id: VideoId) -> Result<Video, DbError> {
    db.publish_video(owner, id).await
}

/// A player votes for a published video, once: the vote and the ranking it
/// changes are recorded in one transaction. Errors: [`DbError::VideoNotFound`]
/// (unknown, deleted or unpublished), [`DbError::OwnVideo`],
/// [`DbError::AlreadyVoted`] (also when two votes race: exactly one counts),
/// [`DbError::UserNotFound`].
pub async fn vote(db: &Database, voter: UserId, id: VideoId) -> Result<(), DbError> {
    db.cast_vote(voter, id).await
}

/// Deleted videos handled per database query by [`purge_deleted_videos`].
const PURGE_BATCH: u32 = 100;

/// What one [`purge_deleted_videos`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Videos whose objects were removed and whose row was dropped.
    pub purged: usize,
    /// Videos left for a later pass because storage refused a removal.
    pub deferred: usize,
}

/// Finishes every deletion still waiting, oldest first, with
/// [`finish_deletion`]. A video whose objects cannot all be removed keeps its
/// row for the next pass; a database failure stops the pass.
pub async fn purge_deleted_videos(
    db: &Database,
    storage: &Storage,
) -> Result<PurgeReport, DbError> {
    let mut report = PurgeReport::default();
    loop {
        let waiting = db.videos_awaiting_purge(PURGE_BATCH).await?;
        let full_batch = waiting.len() == PURGE_BATCH as usize;
        let mut progress = false;
        for video in &waiting {
            match finish_deletion(db, storage, video).await? {
                DeletionFinished::Purged => {
                    report.purged += 1;
                    progress = true;
                }
                DeletionFinished::AlreadyPurged => progress = true,
                DeletionFinished::ObjectsLeft(error) => {
                    tracing::warn!(video_id = %video.id, %error, "objects of a deleted video not removed yet");
                    report.deferred += 1;
                }
            }
        }
        // Deferred videos come back in the next query: without progress it
        // would return the same batch again.
        if !full_batch || !progress {
            return Ok(report);
        }
    }
}
