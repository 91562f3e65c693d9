//! Uploads: the use case that stores an original and records its video
//! with its job ([`store_upload`]), its direct variant where the client
//! stores the original itself ([`begin_direct_upload`], then
//! [`complete_direct_upload`] once the API has checked the stored object),
//! and the clean-up of uploads that never became videos ([`sweep`]).
//!
//! Both kinds end in the same transaction (video row, job, answer, end of
//! the record). A direct upload is recorded as in progress from its
//! creation, with an expiry: the clean-up leaves it alone until a grace
//! period after that expiry, then removes it with whatever was stored.
//!
//! An upload is recorded as in progress before its original is stored, and
//! the record goes in the transaction that records its video
//! ([`Database::begin_upload`], [`Transaction::finish_upload`]). So once a
//! grace period has passed (longer than any upload takes to go from storage
//! to commit), a stored original is garbage when nothing in the database
//! names its video: no video row (live, or deleted and waiting for its purge)
//! and no upload in progress. [`sweep`] removes those, and the uploads in
//! progress older than the grace period with their originals (their process
//! died, or their commit failed and the object could not be removed then).
//!
//! [`Transaction::finish_upload`]: crate::db::Transaction::finish_upload

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::db::{
    Database, DbError, DirectUpload, FinishedUpload, IdempotencyKey, NewVideo, PendingUpload,
    UploadAnswer, UploadBegun, UploadStart,
};
use crate::domain::{VideoId, VideoTitle};
use crate::jobs::TranscodeVideo;
use crate::storage::{ObjectKey, Storage, StorageError, VideoKeys};

/// How a job reaches the queue from the transaction that writes the row it
/// is about: either way it commits or rolls back with that row.
#[derive(Debug, Clone)]
pub enum JobDelivery {
    /// The queue lives in the application's database: the job is enqueued
    /// in the transaction itself.
    SameDatabase,
    /// The queue is elsewhere (SQS, Redis, another database): the job is
    /// written into this outbox in the transaction, and a relay
    /// ([`anb_queue::Outbox::relay`]) publishes it, retrying while the queue
    /// is unreachable.
    Outbox(anb_queue::Outbox),
}

/// Where an upload's video and job go.
#[derive(Debug, Clone, Copy)]
pub struct UploadTargets<'a> {
    pub db: &'a Database,
    pub storage: &'a Storage,
    pub queue: &'a anb_queue::Queue,
    pub delivery: &'a JobDelivery,
}

/// A checked upload, ready to be stored.
#[derive(Debug, Clone)]
pub struct CheckedUpload<'a> {
    /// Who, which video, how large, under which key and quota.
    pub start: UploadStart,
    /// The file, already checked.
    pub file: &'a Path,
    pub title: VideoTitle,
    pub is_public: bool,
    /// How long the answer is kept for retries under the start's key.
    pub answer_ttl: Duration,
}

/// How [`store_upload`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored, recorded and queued.
    Created(UploadAnswer),
    /// The same request under the same key was answered before: its answer,
    /// with nothing stored.
    Replayed(UploadAnswer),
}

/// Why [`store_upload`] failed. Nothing it wrote is left but what the
/// clean-up removes (an original or a record it could not remove at once).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Queue(#[from] anb_queue::QueueError),
}

/// Records the upload as in progress (or finds its earlier answer), stores
/// the original, then commits its video row, its transcode job and its
/// answer in one transaction that ends the record (`record_video`). A
/// failure after the record removes the stored original, then the record;
/// what cannot be removed then, [`sweep`] removes after its grace period.
pub async fn store_upload(
    to: UploadTargets<'_>,
    upload: CheckedUpload<'_>,
) -> Result<Stored, UploadError> {
    let start = &upload.start;
    if let UploadBegun::Replay(answer) = to.db.begin_upload(start).await? {
        return Ok(Stored::Replayed(answer));
    }
    let original = ObjectKey::parse(start.original_key.clone())?;
    let recorded = async {
        to.storage.upload_file(&original, upload.file).await?;
        record_video(
            to,
            &VideoRecord {
                video_id: start.video_id,
                owner_id: start.owner_id,
                original_key: &start.original_key,
                original_bytes: start.original_bytes,
                title: &upload.title,
                is_public: upload.is_public,
                idempotency: start.idempotency.as_ref(),
                answer_ttl: upload.answer_ttl,
            },
        )
        .await
    }
    .await;
    match recorded {
        Ok(answer) => Ok(Stored::Created(answer)),
        Err(error) => {
            abandon(to, start.video_id, &original).await;
            Err(error)
        }
    }
}

/// An upload whose original is stored and checked, to record as a video.
#[derive(Debug, Clone, Copy)]
struct VideoRecord<'a> {
    video_id: VideoId,
    owner_id: crate::domain::UserId,
    original_key: &'a str,
    original_bytes: u64,
    title: &'a VideoTitle,
    is_public: bool,
    idempotency: Option<&'a IdempotencyKey>,
    answer_ttl: Duration,
}

/// The commit both kinds of upload end with: the video row, its transcode
/// job and its answer in one transaction that ends the upload's record.
async fn record_video(
    to: UploadTargets<'_>,
    record: &VideoRecord<'_>,
) -> Result<UploadAnswer, UploadError> {
    let job = TranscodeVideo {
        video_id: record.video_id,
        original_key: record.original_key.to_owned(),
    };
    let mut tx = to.db.begin().await?;
    let task_id = match to.delivery {
        // Unique per video where the queue can enforce it in this transaction;
        // through the outbox the worker's own check (a processed video is not
        // encoded again) covers a repeated job.
        JobDelivery::SameDatabase => tx
            .enqueue_unique(to.queue, &job, job.unique())
            .await?
            .id
            .to_string(),
        JobDelivery::Outbox(outbox) => tx.enqueue_via_outbox(outbox, &job).await?.to_string(),
    };
    tx.finish_upload(&FinishedUpload {
        video: NewVideo {
            id: record.video_id,
            owner_id: record.owner_id,
            title: record.title.clone(),
            is_public: record.is_public,
            original_key: record.original_key.to_owned(),
        },
        original_bytes: record.original_bytes,
        task_id: task_id.clone(),
        idempotency: record
            .idempotency
            .cloned()
            .map(|key| (key, crate::db::now() + record.answer_ttl)),
    })
    .await?;
    tx.commit().await?;
    Ok(UploadAnswer {
        video_id: record.video_id,
        task_id,
    })
}

/// Records a direct upload as in progress when it is created: its quota is
/// checked as a multipart upload's is (announced bytes count from now on),
/// and its record keeps what it announced until [`complete_direct_upload`]
/// or the clean-up ends it.
pub async fn begin_direct_upload(
    db: &Database,
    start: &UploadStart,
    direct: &DirectUpload,
) -> Result<(), DbError> {
    match db.begin_direct_upload(start, direct).await? {
        UploadBegun::Started => Ok(()),
        // Its key names a fresh video id: only a bug could meet an answer.
        UploadBegun::Replay(_) => Err(DbError::IdempotencyKeyInProgress),
    }
}

/// Records the video of a direct upload whose stored original passed its
/// checks, in the same transaction as a multipart upload's. Two completions
/// racing both get the one answer; a failure that leaves no answer removes
/// the original and the record (the client starts again).
pub async fn complete_direct_upload(
    to: UploadTargets<'_>,
    pending: &PendingUpload,
    answer_ttl: Duration,
) -> Result<UploadAnswer, UploadError> {
    let recorded = record_video(
        to,
        &VideoRecord {
            video_id: pending.video_id,
            owner_id: pending.owner_id,
            original_key: &pending.original_key,
            original_bytes: pending.original_bytes,
            title: &pending.title,
            is_public: pending.is_public,
            idempotency: Some(&pending.idempotency),
            answer_ttl,
        },
    )
    .await;
    match recorded {
        Ok(answer) => Ok(answer),
        Err(error) => {
            if let Ok(Some(answer)) = to
                .db
                .upload_answer(pending.owner_id, &pending.idempotency.key)
                .await
            {
                return Ok(answer);
            }
            discard_upload(to, pending).await;
            Err(error)
        }
    }
}

/// Ends a direct upload that will not become a video: its stored object
/// (if any) goes, then its record, as after a failed multipart upload.
pub async fn discard_upload(to: UploadTargets<'_>, pending: &PendingUpload) {
    match ObjectKey::parse(pending.original_key.clone()) {
        Ok(original) => abandon(to, pending.video_id, &original).await,
        Err(error) => tracing::error!(%error, "direct upload with an invalid key"),
    }
}

/// Removes what a failed upload stored, then its record in progress.
async fn abandon(to: UploadTargets<'_>, video_id: VideoId, original: &ObjectKey) {
    if let Err(error) = to.storage.delete(original).await {
        tracing::error!(%error, key = %original, "original of a failed upload left for the clean-up");
        return;
    }
    if let Err(error) = to.db.abandon_upload(video_id).await {
        tracing::warn!(%error, "record of a failed upload left for the clean-up");
    }
}

/// How many stale uploads one pass handles at most (the next pass takes the rest).
const STALE_BATCH: u32 = 500;

/// What one [`sweep`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Uploads in progress older than the grace period, with their originals.
    pub stale_uploads: u64,
    /// Video folders in storage that nothing in the database names.
    pub orphaned_folders: u64,
    /// Expired `Idempotency-Key` answers.
    pub expired_answers: u64,
}

/// Removes the folder of `id` when nothing names it and nothing in it was
/// written since `cutoff`.
async fn remove_if_orphaned(
    db: &Database,
    storage: &Storage,
    id: VideoId,
    newest: SystemTime,
    cutoff: SystemTime,
    report: &mut SweepReport,
) -> Result<(), SweepError> {
    if newest >= cutoff || db.video_folder_in_use(id).await? {
        return Ok(());
    }
    storage
        .delete_prefix(VideoKeys::new(id.as_uuid()).folder())
        .await?;
    tracing::info!(video_id = %id, "removed a stored upload that never became a video");
    report.orphaned_folders += 1;
    Ok(())
}

/// Why a sweep stopped early (what it removed before stays removed).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Objects listed per page when [`sweep`] reads the store (S3's largest page).
pub const SWEEP_PAGE_SIZE: usize = 1000;

/// One pass of the clean-up: removes what uploads left behind for longer
/// than `grace` (see the module documentation). Safe to run from several
/// processes at once. The store is read [`SWEEP_PAGE_SIZE`] objects at a time.
pub async fn sweep(
    db: &Database,
    storage: &Storage,
    grace: Duration,
) -> Result<SweepReport, SweepError> {
    sweep_in_pages(db, storage, grace, SWEEP_PAGE_SIZE).await
}

/// [`sweep`] reading the store `page_size` objects at a time (tests use
/// small pages to cross page boundaries).
pub async fn sweep_in_pages(
    db: &Database,
    storage: &Storage,
    grace: Duration,
    page_size: usize,
) -> Result<SweepReport, SweepError> {
    let mut report = SweepReport::default();
    let cutoff = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);

    // Uploads in progress for too long: the record goes first, so a commit
    // arriving late finds it gone and fails instead of recording a video
    // whose original is being removed; the original goes next (if that
    // fails, the folder is an orphan the next step finds).
    let started_before = crate::db::now() - grace;
    for stale in db.stale_uploads(started_before, STALE_BATCH).await? {
        if !db.abandon_upload(stale.video_id).await? {
            continue;
        }
        report.stale_uploads += 1;
        match ObjectKey::parse(stale.original_key.clone()) {
            Ok(key) => storage.delete(&key).await?,
            Err(error) => tracing::warn!(%error, "stale upload with an invalid key"),
        }
        storage
            .delete_prefix(VideoKeys::new(stale.video_id.as_uuid()).folder())
            .await?;
    }

    // Folders nothing names, untouched for the grace period. The store is
    // read a page at a time; a folder's objects come one after the other, so
    // a folder is decided once the listing moves past it (or ends), and only
    // the folder being read is held across pages.
    let videos = ObjectKey::parse("videos").expect("a valid key");
    let mut pages = storage.list_pages(&videos, page_size);
    let mut current: Option<(VideoId, SystemTime)> = None;
    loop {
        let page = pages.next_page().await?;
        let done = page.is_none();
        for object in page.into_iter().flatten() {
            let Some(id) = object
                .key
                .as_str()
                .split('/')
                .nth(1)
                .and_then(|segment| segment.parse::<VideoId>().ok())
            else {
                continue;
            };
            match &mut current {
                Some((folder, newest)) if *folder == id => {
                    *newest = (*newest).max(object.modified);
                }
                _ => {
                    if let Some((folder, newest)) = current.replace((id, object.modified)) {
                        remove_if_orphaned(db, storage, folder, newest, cutoff, &mut report)
                            .await?;
                    }
                }
            }
        }
        if done {
            break;
        }
    }
    if let Some((folder, newest)) = current {
        remove_if_orphaned(db, storage, folder, newest, cutoff, &mut report).await?;
    }

    report.expired_answers = db.prune_upload_answers().await?;
    Ok(report)
}
