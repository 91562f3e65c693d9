//! The clean-up of uploads that never became videos.
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

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::db::{Database, DbError};
use crate::domain::VideoId;
use crate::storage::{ObjectKey, Storage, StorageError, VideoKeys};

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

/// Why a sweep stopped early (what it removed before stays removed).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// One pass of the clean-up: removes what uploads left behind for longer
/// than `grace` (see the module documentation). Safe to run from several
/// processes at once.
pub async fn sweep(
    db: &Database,
    storage: &Storage,
    grace: Duration,
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

    // Folders nothing names, untouched for the grace period.
    let videos = ObjectKey::parse("videos").expect("a valid key");
    let mut newest: HashMap<VideoId, SystemTime> = HashMap::new();
    for object in storage.list(&videos).await? {
        let Some(id) = object
            .key
            .as_str()
            .split('/')
            .nth(1)
            .and_then(|segment| segment.parse::<VideoId>().ok())
        else {
            continue;
        };
        let at = newest.entry(id).or_insert(object.modified);
        *at = (*at).max(object.modified);
    }
    for (id, modified) in newest {
        if modified >= cutoff || db.video_folder_in_use(id).await? {
            continue;
        }
        storage
            .delete_prefix(VideoKeys::new(id.as_uuid()).folder())
            .await?;
        tracing::info!(video_id = %id, "removed a stored upload that never became a video");
        report.orphaned_folders += 1;
    }

    report.expired_answers = db.prune_upload_answers().await?;
    Ok(report)
}
