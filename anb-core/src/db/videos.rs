//! Videos: upload records, the owner's actions, the worker's status changes
//! and the public list.

use uuid::Uuid;

use super::time::{DbTime, now};
use super::users::on_missing_user;
use super::{Conn, DbError, DeletedVideo, NewVideo, Page, ProcessedOutputs, PublicVideo, Video};
use crate::domain::{FailureReason, IllegalTransition, Pagination, UserId, VideoId, VideoStatus};

/// The columns [`VideoRow`] reads, as a literal for `concat!`.
macro_rules! video_columns {
    () => {
        "id, owner_id, title, status, failure_reason, progress_percent, is_public, uploaded_at, \
         processed_at, published_at, original_key, processed_key, thumbnail_key, vote_count"
    };
}

const FIND_VIDEO: &str = concat!(
    "SELECT ",
    video_columns!(),
    " FROM videos WHERE id = $1 AND deleted_at IS NULL"
);

/// How often a status change is retried when another writer changed the
/// status between our read and our update. Each retry re-reads, so the
/// second attempt normally settles it; the bound only guards against a bug.
const STATUS_CHANGE_ATTEMPTS: usize = 3;

#[derive(sqlx::FromRow)]
struct VideoRow {
    id: Uuid,
    owner_id: Uuid,
    title: String,
    status: String,
    failure_reason: Option<String>,
    progress_percent: i32,
    is_public: bool,
    uploaded_at: DbTime,
    processed_at: Option<DbTime>,
    published_at: Option<DbTime>,
    original_key: String,
    processed_key: Option<String>,
    thumbnail_key: Option<String>,
    vote_count: i64,
}

impl TryFrom<VideoRow> for Video {
    type Error = DbError;

    fn try_from(row: VideoRow) -> Result<Self, DbError> {
        let status = row
            .status
            .parse::<VideoStatus>()
            .map_err(|error| DbError::CorruptData(format!("video {}: {error}", row.id)))?;
        let progress_percent = u8::try_from(row.progress_percent)
            .ok()
            .filter(|percent| *percent <= 100)
            .ok_or_else(|| {
                DbError::CorruptData(format!(
                    "video {}: progress {}",
                    row.id, row.progress_percent
                ))
            })?;
        Ok(Self {
            id: VideoId::from_uuid(row.id),
            owner_id: UserId::from_uuid(row.owner_id),
            title: row.title,
            status,
            failure_reason: row.failure_reason,
            progress_percent,
            is_public: row.is_public,
            uploaded_at: row.uploaded_at.into(),
            processed_at: row.processed_at.map(Into::into),
            published_at: row.published_at.map(Into::into),
            original_key: row.original_key,
            processed_key: row.processed_key,
            thumbnail_key: row.thumbnail_key,
            votes: row.vote_count,
        })
    }
}

#[derive(sqlx::FromRow)]
struct DeletedVideoRow {
    id: Uuid,
    original_key: String,
    processed_key: Option<String>,
    thumbnail_key: Option<String>,
}

impl From<DeletedVideoRow> for DeletedVideo {
    fn from(row: DeletedVideoRow) -> Self {
        Self {
            id: VideoId::from_uuid(row.id),
            original_key: row.original_key,
            processed_key: row.processed_key,
            thumbnail_key: row.thumbnail_key,
        }
    }
}

#[derive(sqlx::FromRow)]
struct PublicVideoRow {
    id: Uuid,
    title: String,
    owner_id: Uuid,
    first_name: String,
    last_name: String,
    city: String,
    published_at: DbTime,
    processed_key: Option<String>,
    thumbnail_key: Option<String>,
    vote_count: i64,
}

impl From<PublicVideoRow> for PublicVideo {
    fn from(row: PublicVideoRow) -> Self {
        Self {
            id: VideoId::from_uuid(row.id),
            title: row.title,
            player_id: UserId::from_uuid(row.owner_id),
            player_first_name: row.first_name,
            player_last_name: row.last_name,
            player_city: row.city,
            published_at: row.published_at.into(),
            processed_key: row.processed_key,
            thumbnail_key: row.thumbnail_key,
            votes: row.vote_count,
        }
    }
}

impl Conn<'_> {
    pub(crate) async fn insert_video(&mut self, video: &NewVideo) -> Result<Video, DbError> {
        let row = fetch!(
            self,
            fetch_one,
            VideoRow,
            concat!(
                "INSERT INTO videos \
                     (id, owner_id, title, status, progress_percent, is_public, uploaded_at, original_key, vote_count) \
                 VALUES ($1, $2, $3, 'uploaded', 0, $4, $5, $6, 0) \
                 RETURNING ",
                video_columns!()
            ),
            video.id.as_uuid(),
            video.owner_id.as_uuid(),
            video.title.as_str(),
            video.is_public,
            DbTime(now()),
            video.original_key.as_str(),
        )
        .map_err(on_missing_user)?;
        row.try_into()
    }

    pub(crate) async fn find_video(&mut self, id: VideoId) -> Result<Option<Video>, DbError> {
        fetch!(self, fetch_optional, VideoRow, FIND_VIDEO, id.as_uuid())?
            .map(Video::try_from)
            .transpose()
    }

    pub(crate) async fn list_user_videos(&mut self, owner: UserId) -> Result<Vec<Video>, DbError> {
        fetch!(
            self,
            fetch_all,
            VideoRow,
            concat!(
                "SELECT ",
                video_columns!(),
                " FROM videos WHERE owner_id = $1 AND deleted_at IS NULL \
                 ORDER BY uploaded_at DESC, id DESC"
            ),
            owner.as_uuid(),
        )?
        .into_iter()
        .map(Video::try_from)
        .collect()
    }

    /// The owner's live video, or why not.
    async fn owned_video(&mut self, owner: UserId, id: VideoId) -> Result<Video, DbError> {
        let video = self.find_video(id).await?.ok_or(DbError::VideoNotFound)?;
        if video.owner_id != owner {
            return Err(DbError::NotVideoOwner);
        }
        Ok(video)
    }

    pub(crate) async fn publish_video(
        &mut self,
        owner: UserId,
        id: VideoId,
    ) -> Result<Video, DbError> {
        let video = self.owned_video(owner, id).await?;
        if video.is_published() {
            return Ok(video);
        }
        if video.status == VideoStatus::Failed {
            return Err(DbError::NotPublishable {
                status: video.status,
            });
        }
        // Two steps so that a worker finishing at the same moment cannot
        // lose the request: the first marks the wish (a worker committing
        // later sees it and publishes); the second publishes only if the
        // video is already processed and still unpublished, and tells us
        // whether we did, so the player is counted once.
        execute!(
            self,
            "UPDATE videos SET is_public = TRUE WHERE id = $1 AND deleted_at IS NULL",
            id.as_uuid(),
        )?;
        let published = execute!(
            self,
            "UPDATE videos SET published_at = $2 \
             WHERE id = $1 AND status = 'processed' AND published_at IS NULL AND deleted_at IS NULL",
            id.as_uuid(),
            DbTime(now()),
        )?;
        if published == 1 {
            self.count_published_video(owner).await?;
        }
        self.find_video(id).await?.ok_or(DbError::VideoNotFound)
    }

    pub(crate) async fn delete_video(
        &mut self,
        owner: UserId,
        id: VideoId,
    ) -> Result<DeletedVideo, DbError> {
        let video = self.owned_video(owner, id).await?;
        if video.is_published() {
            return Err(DbError::VideoPublished);
        }
        if let Some(deleted) = self.take_down(id, false).await? {
            return Ok(deleted);
        }
        // Published or deleted between the read and the update.
        match self.find_video(id).await? {
            Some(video) if video.is_published() => Err(DbError::VideoPublished),
            _ => Err(DbError::VideoNotFound),
        }
    }

    pub(crate) async fn remove_video(&mut self, id: VideoId) -> Result<DeletedVideo, DbError> {
        self.take_down(id, true)
            .await?
            .ok_or(DbError::VideoNotFound)
    }

    /// Hides a live video (a published one only if `allow_published`),
    /// removes its votes and takes them, and the publication, off its
    /// player's ranking row. `None` when there was no such video to hide.
    async fn take_down(
        &mut self,
        id: VideoId,
        allow_published: bool,
    ) -> Result<Option<DeletedVideo>, DbError> {
        // The update decides, so a concurrent publication or deletion
        // cannot slip between a check and the change.
        let row = fetch!(
            self,
            fetch_optional,
            VideoRow,
            concat!(
                "UPDATE videos SET deleted_at = $2 \
                 WHERE id = $1 AND deleted_at IS NULL AND (published_at IS NULL OR $3) RETURNING ",
                video_columns!()
            ),
            id.as_uuid(),
            DbTime(now()),
            allow_published,
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        let video = Video::try_from(row)?;
        let removed_votes = execute!(self, "DELETE FROM votes WHERE video_id = $1", id.as_uuid())?;
        let removed_votes = i64::try_from(removed_votes).expect("vote counts fit in i64");
        if removed_votes > 0 {
            execute!(
                self,
                "UPDATE videos SET vote_count = 0 WHERE id = $1",
                id.as_uuid()
            )?;
        }
        if removed_votes > 0 || video.is_published() {
            execute!(
                self,
                "UPDATE player_rankings \
                 SET votes = votes - $2, published_videos = published_videos - $3 \
                 WHERE player_id = $1",
                video.owner_id.as_uuid(),
                removed_votes,
                i64::from(video.is_published()),
            )?;
        }
        Ok(Some(DeletedVideo {
            id,
            original_key: video.original_key,
            processed_key: video.processed_key,
            thumbnail_key: video.thumbnail_key,
        }))
    }

    pub(crate) async fn videos_awaiting_purge(
        &mut self,
        limit: u32,
    ) -> Result<Vec<DeletedVideo>, DbError> {
        let rows = fetch!(
            self,
            fetch_all,
            DeletedVideoRow,
            "SELECT id, original_key, processed_key, thumbnail_key FROM videos \
             WHERE deleted_at IS NOT NULL ORDER BY deleted_at, id LIMIT $1",
            i64::from(limit),
        )?;
        Ok(rows.into_iter().map(DeletedVideo::from).collect())
    }

    pub(crate) async fn purge_video(&mut self, id: VideoId) -> Result<bool, DbError> {
        let purged = execute!(
            self,
            "DELETE FROM videos WHERE id = $1 AND deleted_at IS NOT NULL",
            id.as_uuid()
        )?;
        Ok(purged == 1)
    }

    /// Reads the live video and checks that the machine allows `to`.
    async fn status_allowing(
        &mut self,
        id: VideoId,
        to: VideoStatus,
    ) -> Result<VideoStatus, DbError> {
        let video = self.find_video(id).await?.ok_or(DbError::VideoNotFound)?;
        video.status.transition_to(to)?;
        Ok(video.status)
    }

    pub(crate) async fn start_processing(&mut self, id: VideoId) -> Result<Video, DbError> {
        for _ in 0..STATUS_CHANGE_ATTEMPTS {
            let from = self.status_allowing(id, VideoStatus::Processing).await?;
            // Compare-and-set on the status read above: a concurrent change
            // makes this update miss, and the loop re-reads.
            let row = fetch!(
                self,
                fetch_optional,
                VideoRow,
                concat!(
                    "UPDATE videos SET status = 'processing', progress_percent = 0 \
                     WHERE id = $1 AND status = $2 AND deleted_at IS NULL RETURNING ",
                    video_columns!()
                ),
                id.as_uuid(),
                from.as_str(),
            )?;
            if let Some(row) = row {
                return row.try_into();
            }
        }
        Err(self.missed_status_change(id, VideoStatus::Processing).await)
    }

    pub(crate) async fn release_processing(&mut self, id: VideoId) -> Result<Video, DbError> {
        self.status_allowing(id, VideoStatus::Uploaded).await?;
        // Only `processing` may go back, so the compare-and-set names it directly.
        let row = fetch!(
            self,
            fetch_optional,
            VideoRow,
            concat!(
                "UPDATE videos SET status = 'uploaded', progress_percent = 0 \
                 WHERE id = $1 AND status = 'processing' AND deleted_at IS NULL RETURNING ",
                video_columns!()
            ),
            id.as_uuid(),
        )?;
        match row {
            Some(row) => row.try_into(),
            None => Err(self.missed_status_change(id, VideoStatus::Uploaded).await),
        }
    }

    pub(crate) async fn update_progress(
        &mut self,
        id: VideoId,
        percent: u8,
    ) -> Result<(), DbError> {
        let updated = execute!(
            self,
            "UPDATE videos SET progress_percent = $2 \
             WHERE id = $1 AND status = 'processing' AND deleted_at IS NULL",
            id.as_uuid(),
            i32::from(percent.min(100)),
        )?;
        if updated == 0 {
            return Err(self.missed_status_change(id, VideoStatus::Processing).await);
        }
        Ok(())
    }

    pub(crate) async fn mark_processed(
        &mut self,
        id: VideoId,
        outputs: &ProcessedOutputs,
    ) -> Result<Video, DbError> {
        for _ in 0..STATUS_CHANGE_ATTEMPTS {
            let from = self.status_allowing(id, VideoStatus::Processed).await?;
            let processed_at = DbTime(now());
            // `is_public` is read by the update itself, so an owner's publish
            // request that committed first is honoured.
            let row = fetch!(
                self,
                fetch_optional,
                VideoRow,
                concat!(
                    "UPDATE videos SET status = 'processed', progress_percent = 100, \
                         processed_key = $3, thumbnail_key = $4, processed_at = $5, \
                         published_at = CASE WHEN is_public THEN $5 ELSE NULL END \
                     WHERE id = $1 AND status = $2 AND deleted_at IS NULL RETURNING ",
                    video_columns!()
                ),
                id.as_uuid(),
                from.as_str(),
                outputs.processed_key.as_str(),
                outputs.thumbnail_key.as_str(),
                processed_at,
            )?;
            if let Some(row) = row {
                let video = Video::try_from(row)?;
                if video.is_published() {
                    self.count_published_video(video.owner_id).await?;
                }
                return Ok(video);
            }
        }
        Err(self.missed_status_change(id, VideoStatus::Processed).await)
    }

    pub(crate) async fn mark_failed(
        &mut self,
        id: VideoId,
        reason: &FailureReason,
    ) -> Result<Video, DbError> {
        for _ in 0..STATUS_CHANGE_ATTEMPTS {
            let from = self.status_allowing(id, VideoStatus::Failed).await?;
            let row = fetch!(
                self,
                fetch_optional,
                VideoRow,
                concat!(
                    "UPDATE videos SET status = 'failed', failure_reason = $3 \
                     WHERE id = $1 AND status = $2 AND deleted_at IS NULL RETURNING ",
                    video_columns!()
                ),
                id.as_uuid(),
                from.as_str(),
                reason.as_str(),
            )?;
            if let Some(row) = row {
                return row.try_into();
            }
        }
        Err(self.missed_status_change(id, VideoStatus::Failed).await)
    }

    /// Why a status update touched no row: the video is gone, or its
    /// current status does not allow `to`.
    async fn missed_status_change(&mut self, id: VideoId, to: VideoStatus) -> DbError {
        match self.find_video(id).await {
            Ok(None) => DbError::VideoNotFound,
            Ok(Some(video)) => DbError::IllegalTransition(IllegalTransition {
                from: video.status,
                to,
            }),
            Err(error) => error,
        }
    }

    /// Adds one published video to the player's ranking row (creating the
    /// row on the first), so the player appears in the rankings.
    async fn count_published_video(&mut self, player: UserId) -> Result<(), DbError> {
        execute!(
            self,
            "INSERT INTO player_rankings (player_id, city_key, votes, published_videos) \
             SELECT id, city_key, 0, 1 FROM users WHERE id = $1 \
             ON CONFLICT (player_id) DO UPDATE \
                 SET published_videos = player_rankings.published_videos + 1",
            player.as_uuid(),
        )?;
        Ok(())
    }

    pub(crate) async fn list_public_videos(
        &mut self,
        page: Pagination,
    ) -> Result<Page<PublicVideo>, DbError> {
        let rows = fetch!(
            self,
            fetch_all,
            PublicVideoRow,
            "SELECT v.id, v.title, v.owner_id, u.first_name, u.last_name, u.city, v.published_at, \
                    v.processed_key, v.thumbnail_key, v.vote_count \
             FROM videos v JOIN users u ON u.id = v.owner_id \
             WHERE v.published_at IS NOT NULL AND v.deleted_at IS NULL \
             ORDER BY v.published_at DESC, v.id DESC \
             LIMIT $1 OFFSET $2",
            i64::from(page.limit()),
            offset(page),
        )?;
        let total = fetch_scalar!(
            self,
            fetch_one,
            i64,
            "SELECT COUNT(*) FROM videos WHERE published_at IS NOT NULL AND deleted_at IS NULL",
        )?;
        Ok(Page {
            items: rows.into_iter().map(PublicVideo::from).collect(),
            pagination: page,
            total: u64::try_from(total).unwrap_or_default(),
        })
    }
}

/// The page's offset as the engines take it (`BIGINT`). Pages are at most
/// `u32::MAX` × 100 rows deep, far below `i64::MAX`.
pub(crate) fn offset(page: Pagination) -> i64 {
    i64::try_from(page.offset()).unwrap_or(i64::MAX)
}
